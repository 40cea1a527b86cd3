"""Whether plain SGD can follow a plugin's penalty, checked before an epoch trains.

A quadratic penalty of curvature ``k`` along a parameter (EWC's ``λ·F``) makes SGD at learning rate ``lr`` multiply
that parameter's distance to the penalty's minimum by ``1 − lr·k`` at each step: past ``lr·k = 2`` each step
overshoots by more than it corrects, and the run diverges within a few batches, blamed on a penalty grown infinite.
Heavy-ball momentum ``μ`` moves the bound to ``2·(1 + μ)``, Nesterov's to ``2·(1 + μ) / (1 + 2μ)``, and dampening ``d``
scales the step by ``1 − d``; weight decay adds its own curvature. (Adam's steps are bounded by its learning rate: no
such bound.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.optim import SGD, Optimizer

from metaspike.checks import TrainingDiverged

__all__ = ["largest_stable_curvature", "refuse_overshooting_penalties"]


def largest_stable_curvature(group: dict[str, Any]) -> float:
    """The curvature past which plain SGD, with the settings of param group ``group``, overshoots a quadratic.

    Example:
        >>> largest_stable_curvature({"lr": 0.05, "momentum": 0.0, "dampening": 0.0, "nesterov": False})
        40.0
        >>> largest_stable_curvature({"lr": 0.1, "momentum": 0.5, "dampening": 0.0, "nesterov": False})
        30.0
    """
    lr, momentum = float(group["lr"]), float(group.get("momentum", 0.0))
    scale = lr * (1 - float(group.get("dampening", 0.0)))
    if scale <= 0:
        return float("inf")
    if group.get("nesterov", False):
        return 2 * (1 + momentum) / ((1 + 2 * momentum) * scale)
    return 2 * (1 + momentum) / scale


def refuse_overshooting_penalties(optimizer: Optimizer, plugins: Sequence[Any], model: nn.Module) -> None:
    """:class:`~metaspike.checks.TrainingDiverged` where a plugin's penalty is stiffer along a parameter than plain
    SGD (``torch.optim.SGD`` itself: another optimizer takes other steps) can follow at that parameter's learning rate,
    naming the plugin, the parameter and how far its strength must come down. Nothing for other optimizers. A plugin
    (:class:`metaspike.training.Plugin`) tells its curvatures by ``curvatures(model)``; one without it is not judged.

    Example:
        >>> import torch
        >>> from metaspike.continual.baselines import EWC
        >>> model = torch.nn.Linear(4, 2, bias=False)
        >>> ewc = EWC(lam=1e6)
        >>> ewc.task_done(model, torch.randn(16, 4), torch.randint(0, 2, (16,)), None)
        >>> refuse_overshooting_penalties(torch.optim.SGD(model.parameters(), lr=0.1), [ewc], model)
        Traceback (most recent call last):
        ...
        metaspike.checks.TrainingDiverged: plugin EWC: its penalty's curvature along weight reaches ...
    """
    if type(optimizer) is not SGD:
        return
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    names = {id(p): name for name, p in model.named_parameters()}
    for plugin in plugins:
        curvatures = getattr(plugin, "curvatures", None)  # (a plugin of one's own need not derive from Plugin)
        for parameter, curvature in ([] if curvatures is None else curvatures(model)):
            group = group_of.get(id(parameter))
            if group is None:
                continue
            limit = largest_stable_curvature(group)
            decay = float(group.get("weight_decay", 0.0))  # (its own curvature, added to the penalty's)
            if curvature + decay >= limit:
                momentum = f", momentum {group['momentum']:g}" if group.get("momentum") else ""
                factor = f"by more than {curvature / (limit - decay):.3g}" if limit > decay else "to 0"
                where = names.get(id(parameter), "a parameter")
                raise TrainingDiverged(f"plugin {type(plugin).__name__}: its penalty's curvature along {where} reaches "
                                 f"{curvature + decay:.3g}, where SGD at lr {group['lr']:g}{momentum} overshoots and "
                                 f"diverges (it follows a curvature below {limit:.3g}); divide the plugin's strength "
                                 f"{factor}, or lower the learning rate")
