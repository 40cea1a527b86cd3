"""Pure synapse steps: functions of tensors that return new tensors and never modify their arguments.

* :func:`consolidate`: one consolidation rule's step (the paper's tanh rule by default).
* :func:`mesu_step`: the MESU posterior update of a Gaussian synapse (mean, width).
* :func:`bimu_step`: the BiMU update of a binary Bayesian synapse's latent ``lambda``.

Example:
    >>> import torch
    >>> update, _ = consolidate(torch.tensor([1.0, -1.0]), torch.tensor([1.0, 1.0]), meta=1.0)
    >>> update
    tensor([0.4200, 1.0000])
"""

from __future__ import annotations

from torch import Tensor

from metaspike.bayesian.functional import bimu_step, mesu_step
from metaspike.rules import Rule, check_meta, check_update, get_rule

__all__ = ["consolidate", "mesu_step", "bimu_step"]


def consolidate(
    hidden: Tensor, update: Tensor, meta: float, rule: str | Rule = "tanh", state: tuple | None = None
) -> tuple[Tensor, tuple]:
    """Damp the parts of ``update`` that would move ``hidden`` toward zero; return ``(update, new state)``.

    ``update`` is what the optimizer subtracts from ``hidden`` (``W_h <- W_h - update``). ``state`` is
    the rule's state record (``rule.init_state(hidden)`` when ``None``); it is not modified.

    Example:
        >>> import torch
        >>> w = torch.tensor([1.0, 1.0, -1.0])
        >>> consolidate(w, torch.tensor([1.0, -1.0, -1.0]), meta=1.0)[0]
        tensor([ 0.4200, -1.0000, -0.4200])
    """
    rule = get_rule(rule)
    meta = check_meta(meta)
    if not isinstance(hidden, Tensor) or not isinstance(update, Tensor):
        raise ValueError(f"hidden and update must be tensors, got {type(hidden).__name__} and {type(update).__name__}")
    if update.shape != hidden.shape:
        raise ValueError(f"update must have the shape of hidden {tuple(hidden.shape)}, got {tuple(update.shape)}")
    if hidden.is_complex() or update.is_complex():
        raise ValueError("hidden and update must be real tensors; a complex hidden weight has no sign to keep")
    if not hidden.is_floating_point() or update.dtype != hidden.dtype:
        raise ValueError(f"hidden and update must be floating-point tensors of one dtype, got {hidden.dtype} and "
                         f"{update.dtype}")
    fresh = rule.init_state(hidden)
    if state is not None:
        _check_state(rule, state, fresh)
    step, new_state = rule.step(hidden, update, meta, fresh if state is None else state)
    step = check_update(rule, step, hidden)
    # (a rule may hand the update back as it is, at meta 0 or rule "none": a new tensor, so that changing the result
    # in place leaves the caller's update alone)
    return step.clone() if _shares_memory(step, update, hidden) else step, new_state


def _shares_memory(result: Tensor, *arguments: Tensor) -> bool:
    """Whether ``result`` lies in the memory of one of ``arguments`` (is one of them, or a view of one)."""
    where = result.untyped_storage().data_ptr()
    return any(where == argument.untyped_storage().data_ptr() for argument in arguments)


def _check_state(rule: Rule, state: object, fresh: tuple) -> None:
    """``state`` must be ``rule``'s state record, each field a tensor of the shape a new state of the weight has."""
    kind = rule.state_type()
    if not isinstance(state, kind):
        raise ValueError(f"state must be {type(rule).__name__}'s state record ({kind.__name__}, from "
                         f"rule.init_state(hidden) or a previous step), got {type(state).__name__}")
    for field, value, expected in zip(kind._fields, state, fresh):
        if isinstance(expected, Tensor) and (not isinstance(value, Tensor) or value.shape != expected.shape):
            found = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"state.{field} must be a tensor of shape {tuple(expected.shape)} for this hidden weight, "
                             f"got {found}")
