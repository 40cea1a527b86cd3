"""A model in evaluation mode for one call, and every module back in its own mode afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["evaluation_mode"]


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
