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

from metaspike.chained import ChainedOptimizer
from metaspike.checks import TrainingDiverged

__all__ = ["largest_stable_curvature", "PenaltyTooStiff", "follows_plain_sgd_steps", "refuse_overshooting_penalties"]


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


class PenaltyTooStiff(TrainingDiverged):
    """An epoch refused before it began: the plugins' penalties are stiffer along a parameter than SGD can follow;
    ``factor`` is what their strengths must be divided by, at least (``inf``: weight decay alone is past the bound);
    ``tasks_done``, where a trainer raised it, the tasks trained before (whose importances the penalties hold).

    Example:
        >>> PenaltyTooStiff("plugin EWC: ...", 2.5).factor
        2.5
    """

    def __init__(self, message: str, factor: float, tasks_done: int | None = None) -> None:
        super().__init__(message)
        self.factor, self.tasks_done = factor, tasks_done


def follows_plain_sgd_steps(optimizer: Optimizer) -> bool:
    """Whether ``optimizer`` steps as ``torch.optim.SGD`` does (it or a subclass keeping its ``step``): the steps the
    bound of :func:`largest_stable_curvature` is for.

    Example:
        >>> import torch
        >>> follows_plain_sgd_steps(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
        True
    """
    return isinstance(optimizer, SGD) and type(optimizer).step is SGD.step


def _sgd_parts(optimizer: Optimizer) -> list[Optimizer]:
    """The optimizers that step as SGD does: ``optimizer`` itself, or those inside a
    :class:`~metaspike.ChainedOptimizer`."""
    if follows_plain_sgd_steps(optimizer):
        return [optimizer]
    if isinstance(optimizer, ChainedOptimizer):
        return [part for inner in optimizer.optimizers for part in _sgd_parts(inner)]
    return []


def refuse_overshooting_penalties(optimizer: Optimizer, plugins: Sequence[Any], model: nn.Module) -> None:
    """:class:`PenaltyTooStiff` where the plugins' penalties, summed, are stiffer along a parameter SGD moves than
    SGD can follow at that parameter's learning rate (:func:`follows_plain_sgd_steps`, alone or inside a
    :class:`~metaspike.ChainedOptimizer`: another optimizer takes other steps; ``maximize``, which climbs the penalty,
    is not judged), naming the plugins, the parameter and how far their strengths must come down. A plugin
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
        metaspike.penalty_stability.PenaltyTooStiff: plugin EWC: its penalty's curvature along weight reaches ...
    """
    group_of = {id(p): group for part in _sgd_parts(optimizer) for group in part.param_groups for p in group["params"]
                if p.requires_grad and not group.get("maximize", False)}
    if not group_of:
        return
    summed: dict[int, tuple[Any, float, list[str]]] = {}  # (the parameter, its curvature, the plugins adding to it)
    for plugin in plugins:
        curvatures = getattr(plugin, "curvatures", None)  # (a plugin of one's own need not derive from Plugin)
        for parameter, curvature in ([] if curvatures is None else curvatures(model)):
            if id(parameter) in group_of:
                _, total, names = summed.get(id(parameter), (parameter, 0.0, []))
                summed[id(parameter)] = (parameter, total + curvature, [*names, type(plugin).__name__])
    past = []  # (the factor each parameter past its bound needs, its key, its bound, its group's weight decay)
    for key, (_, curvature, _) in summed.items():
        limit, decay = largest_stable_curvature(group_of[key]), float(group_of[key].get("weight_decay", 0.0))
        if curvature + decay >= limit:  # (weight decay: a curvature of its own)
            past.append((curvature / (limit - decay) if limit > decay else float("inf"), key, limit, decay))
    if not past:
        return
    factor, key, limit, decay = max(past, key=lambda entry: entry[0])  # (the stiffest: what every strength needs)
    _, curvature, names = summed[key]
    group = group_of[key]
    whose = (f"plugin {names[0]}: its penalty's" if len(names) == 1
             else f"plugins {', '.join(names)}: their penalties' summed")
    decayed = f" (with weight decay {decay:g})" if decay else ""
    steps = (f", momentum {group['momentum']:g}{' (Nesterov)' if group.get('nesterov') else ''}"
             if group.get("momentum") else "")
    fix = f"divide {'its strength' if len(names) == 1 else 'their strengths'} by more than {factor:.3g}"
    where = next((name for name, p in model.named_parameters() if id(p) == key), "a parameter")
    raise PenaltyTooStiff(f"{whose} curvature along {where} reaches {curvature + decay:.3g}{decayed}, where SGD at lr "
                          f"{group['lr']:g}{steps} overshoots and diverges (it follows a curvature below {limit:.3g}); "
                          f"{fix if limit > decay else 'lower the weight decay'}, or lower the learning rate", factor)
