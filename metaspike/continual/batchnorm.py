"""Per-task BatchNorm states: snapshot after each task, restored when that task is evaluated.

This is the paper's setting (BatchNorm parameters and statistics kept per task); the alternative
``"shared"`` keeps one BatchNorm state for all tasks. Works on any model.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["BATCHNORM_MODES", "batchnorm_state", "load_batchnorm_state"]

BATCHNORM_MODES = ("per-task", "shared")


def batchnorm_state(model: nn.Module) -> dict[str, Tensor]:
    """Copies of every BatchNorm parameter and buffer of ``model``, keyed by qualified name.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
        >>> sorted(batchnorm_state(net))
        ['1.bias', '1.weight']
    """
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            for key, value in module.state_dict().items():
                state[f"{name}.{key}" if name else key] = value.detach().clone()
    return state


def load_batchnorm_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Write a state from :func:`batchnorm_state` back into ``model`` (in place, no new tensors).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> load_batchnorm_state(net, batchnorm_state(net))
    """
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            prefix = f"{name}." if name else ""
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
            module.load_state_dict(own)
