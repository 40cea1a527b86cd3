"""A model in evaluation mode for one call, and every module back in its own mode (and state) afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

__all__ = ["evaluation_mode", "states_kept"]


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block; after it (raised or not) each module is back in the mode it had before.

    ``model.train(was_training)`` would put every module in the model's own mode: a BatchNorm frozen by ``.eval()``
    inside a training model went back to batch statistics, and a dropout kept on inside an evaluating one (Monte Carlo
    dropout) was switched off. The model's own ``train`` runs on the way in and out (an override of it is asked as
    before); then each module gets its recorded flag, once, also one shared by two parents in different modes.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> _ = net[1].eval()  # statistics frozen while the rest trains
        >>> with evaluation_mode(net):
        ...     net[0].training
        False
        >>> net.training, net[1].training
        (True, False)
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        model.train(modes[0][1])
        for module, training in modes:  # (flags, not train(): once per module, where train() recurses into each)
            module.training = training


#: What every ``nn.Module`` keeps in its ``__dict__`` (its parameters, buffers, children, hooks, mode): not a state.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


@contextlib.contextmanager
def states_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, the tensors that ``model``'s modules hold in their attributes and buffers may be replaced
    (a spiking neuron's membrane set by a forward pass: snnTorch's ``init_hidden=True``); afterwards (raised or not)
    each attribute that held a tensor before or after holds what it held before (a tensor, ``None``, or nothing), and
    the buffers are those of before. A state changed in place is not kept.

    Example:
        >>> import torch
        >>> class Counter(nn.Module):
        ...     def forward(self, x):
        ...         self.seen = x
        ...         return x
        >>> counter = Counter()
        >>> with states_kept(counter):
        ...     _ = counter(torch.ones(2))
        >>> hasattr(counter, "seen")
        False
    """
    absent = object()
    kept = [(module, {key: value for key, value in vars(module).items() if key not in _MODULE_INTERNALS},
             dict(module._buffers), set(module._non_persistent_buffers_set)) for module in model.modules()]
    try:
        yield model
    finally:
        for module, attributes, buffers, non_persistent in kept:
            for key, now in list(vars(module).items()):
                before = attributes.get(key, absent)
                if key in _MODULE_INTERNALS or not (isinstance(now, Tensor) or isinstance(before, Tensor)):
                    continue  # (a counter or flag the pass set: not a state it leaves)
                if before is absent:
                    del module.__dict__[key]
                else:
                    module.__dict__[key] = before
            for key, before in attributes.items():  # (a tensor the pass deleted)
                if isinstance(before, Tensor) and key not in vars(module):
                    module.__dict__[key] = before
            module._buffers.clear()
            module._buffers.update(buffers)
            module._non_persistent_buffers_set.clear()
            module._non_persistent_buffers_set.update(non_persistent)
