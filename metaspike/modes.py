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
    dropout) was switched off. Each module's own ``train`` runs, parents before children, so a module that overrides
    it is asked as ``model.train()`` asks it.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> _ = net[1].eval()  # statistics frozen while the rest trains
        >>> with evaluation_mode(net):
        ...     net[0].training
        False
        >>> net.training, net[1].training
        (True, False)
    """
    modes = [(module, module.training) for module in model.modules()]  # (parents first)
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.train(training)
