"""A torch optimizer that holds the tensors of Bayesian synapses trains them as plain weights: what names them.

``bayesianize`` turns the weights a torch optimizer built before it holds into BiMU's ``λ`` or MESU's ``μ``, and
``torch.optim.Adam(model.parameters())`` of a Bayesian model holds them too; such an optimizer went on training them as
plain weights without a word (Adam on a BiMU network: digits' first task at 35 %, then 26 %; on MESU a noisy float
network whose σ never trained). :func:`watch_plain_optimizers`, called whenever synapses are made, has the first step
of such an optimizer warn. The continual-learning trainer and :class:`metaspike.ChainedOptimizer` refuse such an
optimizer outright (:func:`metaspike.bayesian.optim.check_synapse_optimizers`).
"""

from __future__ import annotations

import warnings
from typing import Any

from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_pre_hook

from metaspike.caller import user_stacklevel
from metaspike.layer_selection import synapse_role

__all__ = ["BAYESIAN_ADVICE", "REFUSES_SYNAPSE_TENSORS", "ROLE_NAMES", "roles_held", "watch_plain_optimizers",
           "warn_of_synapse_tensors_before_step"]

ROLE_NAMES = {"latent": "BiMU latent weight", "mean": "MESU mean", "width": "MESU width"}
"""What each synapse role (:func:`~metaspike.layer_selection.synapse_role`) is called in messages."""
BAYESIAN_ADVICE = ("train them with their own optimizers, metaspike.BiMU(bimu_parameters(model)) or "
                   "metaspike.MESU(mesu_param_groups(model)), and the rest with metaspike.ChainedOptimizer")
"""What a message about synapse tensors in another optimizer advises."""
REFUSES_SYNAPSE_TENSORS = "_refuses_synapse_tensors"
"""The attribute (``True``) of an optimizer that refuses or trains synapse tensors itself (MESU, BiMU, MetaplasticAdam,
one :func:`metaspike.metaplastic` hooked), which :func:`warn_of_synapse_tensors_before_step` leaves alone."""

_CHECKED = "_metaspike_synapse_check"
"""The attribute in which :func:`warn_of_synapse_tensors_before_step` keeps what it last checked of an optimizer
(on the optimizer: a dictionary keyed by optimizers failed for an optimizer class with ``__eq__`` and no
``__hash__``)."""
_synapses_made = 0


def roles_held(optimizer: Optimizer) -> str:
    """What synapse tensors ``optimizer`` holds, e.g. ``"MESU mean and MESU width"``; ``""`` for none.

    Example:
        >>> import torch
        >>> roles_held(torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1))
        ''
    """
    roles = sorted({role for group in optimizer.param_groups for p in group["params"]
                    if (role := synapse_role(p)) is not None})
    return " and ".join(ROLE_NAMES[role] for role in roles)


def watch_plain_optimizers() -> None:
    """Called whenever Bayesian synapses are made: from the first call on, the first step of a torch optimizer that
    holds synapse tensors warns, once per optimizer (again after synapses are made again or its parameters changed).
    A warning, not a refusal: such a step may be meant (an ablation). A step pays two attribute lookups once its
    optimizer is checked; a process that never makes Bayesian synapses registers nothing.

    Example:
        >>> import torch, warnings
        >>> from metaspike.bayesian import bayesianize
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 2))
        >>> adam = torch.optim.Adam(net.parameters())  # built before bayesianize
        >>> net = bayesianize(net, "bimu", scale=None)
        >>> net(torch.randn(3, 4)).sum().backward()
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     adam.step()
        >>> print(caught[0].message)  # doctest: +ELLIPSIS
        Adam holds the BiMU latent weight tensors of Bayesian synapses (given model.parameters() of a ...
    """
    global _synapses_made
    if _synapses_made == 0:
        register_optimizer_step_pre_hook(warn_of_synapse_tensors_before_step)
    _synapses_made += 1


def warn_of_synapse_tensors_before_step(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """The step pre-hook of :func:`watch_plain_optimizers`, for every optimizer of the process.

    Example:
        >>> import torch
        >>> warn_of_synapse_tensors_before_step(torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1), (), {})
    """
    if getattr(optimizer, REFUSES_SYNAPSE_TENSORS, False):
        return
    seen = (_synapses_made, sum(len(group["params"]) for group in optimizer.param_groups))
    if getattr(optimizer, _CHECKED, None) == seen:
        return
    try:
        setattr(optimizer, _CHECKED, seen)
    except (AttributeError, TypeError):  # (a class that refuses new attributes: checked, and warned about, at every
        pass  # step; the default warnings filter shows the warning once)
    roles = roles_held(optimizer)
    if roles:
        warnings.warn(f"{type(optimizer).__name__} holds the {roles} tensors of Bayesian synapses (given "
                      "model.parameters() of a Bayesian model, or built before bayesianize made them of the weights it "
                      f"held) and trains them as plain weights; {BAYESIAN_ADVICE}", UserWarning,
                      stacklevel=user_stacklevel())
