"""Per-task BatchNorm states: snapshot after each task, restored when that task is evaluated.

This is the paper's setting: each task keeps its BatchNorm scale and shift (``weight``, ``bias``); the alternative
``"shared"`` keeps one for all tasks. A layer's running statistics, where it tracks them, are not kept per task: they
stay the model's own. Restoring a task's statistics after the weights (and a binarized layer's learned gains) had
moved on collapsed that task to chance: a binarized CNN of torch layers (BatchNorm with running statistics,
``MetaplasticAdam`` with m = 30, two permuted digits tasks) kept task 1 at 15.8 % with them restored and at 73.9 %
with one shared state (2-core Intel Xeon, seed 1). The paper's networks (``bnn``) normalise with batch statistics and
track none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["BATCHNORM_MODES", "batchnorm_parameters", "batchnorm_state", "load_batchnorm_state",
           "running_statistics_lag"]

BATCHNORM_MODES = ("per-task", "shared")


def batchnorm_parameters(model: nn.Module) -> dict[str, Tensor]:
    """Every BatchNorm layer's scale and shift (its parameters) in ``model``, keyed by qualified name: what per-task
    BatchNorm keeps per task.

    Example:
        >>> list(batchnorm_parameters(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))))
        ['1.weight', '1.bias']
    """
    return {f"{name}.{key}" if name else key: value
            for name, module in model.named_modules() if isinstance(module, _BatchNorm)
            for key, value in module.named_parameters(recurse=False)}


def batchnorm_state(model: nn.Module) -> dict[str, Tensor]:
    """Copies of every BatchNorm layer's scale and shift (its parameters) in ``model``, keyed by qualified name.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> sorted(batchnorm_state(net))  # (not its running statistics)
        ['1.bias', '1.weight']
    """
    return {name: value.detach().clone() for name, value in batchnorm_parameters(model).items()}


def load_batchnorm_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Write a state from :func:`batchnorm_state` back into ``model`` (in place, no new tensors). Entries it does not
    take (the running statistics an earlier version kept) are left alone.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> load_batchnorm_state(net, batchnorm_state(net))
    """
    for qualified, value in batchnorm_parameters(model).items():
        if qualified not in state:
            raise ValueError(f"the BatchNorm state lacks {qualified}")
        with torch.no_grad():
            value.copy_(state[qualified])


def running_statistics_lag(model: nn.Module, score: Callable[[], float], running: float) -> float | None:
    """How many points more ``score()`` (an accuracy of ``model`` in evaluation mode) gives when its BatchNorm layers
    that track running statistics normalise each batch by its own statistics instead, than ``running``, the score
    with the running ones; ``None`` where no layer tracks them, or one of them has a forward pass of its own (which
    may read the statistics itself). The running statistics are the model's again afterwards.

    A binary weight's sign flip changes its layer's output scale at once, and running statistics (momentum 0.1)
    follow a few batches behind: a binarized CNN of torch layers scored 71 % in evaluation mode where batch
    statistics gave 98 % (the paper's networks, ``bnn``'s, track none).

    Example:
        >>> from metaspike.training import evaluate
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        >>> x, y = torch.rand(50, 4), torch.randint(0, 3, (50,))
        >>> lag = running_statistics_lag(model, lambda: evaluate(model, x, y), evaluate(model, x, y))
        >>> isinstance(lag, float)
        True
    """
    tracked = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]
    if not tracked or any(type(m).forward is not _BatchNorm.forward for m in tracked):
        return None
    kept = [(m.running_mean, m.running_var) for m in tracked]
    try:
        for m in tracked:  # (without them, evaluation mode normalises by the batch and updates nothing)
            m.running_mean = m.running_var = None
        return score() - running
    finally:
        for m, (mean, var) in zip(tracked, kept):
            m.running_mean, m.running_var = mean, var
