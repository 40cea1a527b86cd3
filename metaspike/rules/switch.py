"""A stochastic bistable switch per synapse (use-dependent potentiation, as in *Lymnaea*)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from metaspike.checks import check_generator_state, check_seed, number_in
from metaspike.rules.base import toward_zero

__all__ = ["SwitchRule", "SwitchState"]


class SwitchState(NamedTuple):
    """Per synapse: the sign of its last non-zero update, the run length of same-sign updates, and
    whether it is consolidated (1.0) or plastic (0.0); ``rng``: the parameter's generator state."""

    sign: Tensor
    run: Tensor
    consolidated: Tensor
    rng: Tensor


@dataclass(frozen=True)
class SwitchRule:
    """Each synapse is *plastic* or *consolidated*. ``r`` counts its consecutive updates in the same
    direction after the first (``r = 0`` after a change of sign; a zero update changes nothing).
    After each update a plastic synapse becomes consolidated, for good, with probability::

        p = 1 - exp(-meta·r)

    so alternating updates never consolidate it and ``meta = 0`` gives the plain optimizer. A
    consolidated synapse's updates toward zero are multiplied by ``damping`` (``0``: blocked); other
    updates pass. An update is damped according to the state *before* it. The draws come from one
    ``torch.Generator`` per parameter, seeded from ``seed`` and the parameter's shape and weights when its
    state is made (so two layers draw different numbers unless their weights are equal), whose state is
    part of the rule's state, so runs (and resumed runs) repeat exactly. That state lives in the optimizer state
    (``"rule_state"``): the continual trainer hands it on to each task's new optimizer under ``optimizer="per-task"``
    (:func:`metaspike.optim.inherit_rule_states`), so a synapse consolidated in one task stays so in the next; a new
    optimizer made by hand starts every synapse plastic again unless given the states the same way.

    Args:
        damping: factor in ``[0, 1]`` for a consolidated synapse's updates toward zero.
        seed: the seed that each parameter's generator's seed is derived from.

    Example:
        >>> rule, w = SwitchRule(), torch.tensor([1.0])
        >>> state = rule.init_state(w)
        >>> for _ in range(3):  # pushed away from zero again and again: r = 0, 1, 2
        ...     _, state = rule.step(w, torch.tensor([-0.1]), 50.0, state)
        >>> rule.step(w, torch.tensor([0.1]), 50.0, state)[0]  # consolidated: toward zero is blocked
        tensor([0.])
    """

    damping: float = 0.0
    seed: int = 0
    name: str = "switch"
    elementwise: bool = False
    plain_at_zero: ClassVar[bool] = True

    def __post_init__(self) -> None:
        number_in("SwitchRule damping", self.damping, 0.0, 1.0)
        check_seed("SwitchRule seed", self.seed)  # (torch's generators take 64-bit seeds)

    def init_state(self, hidden: Tensor) -> SwitchState:
        zeros = torch.zeros_like(hidden, memory_format=torch.preserve_format)
        generator = torch.Generator(hidden.device).manual_seed(self._parameter_seed(hidden))
        return SwitchState(zeros, zeros.clone(), zeros.clone(), generator.get_state())

    def state_type(self) -> type:
        return SwitchState

    def check_state(self, state: SwitchState, hidden: Tensor) -> None:
        """One ``ValueError`` beginning with the field's name where a state of the weight ``hidden`` read from a file
        holds a generator state that torch's generator of ``hidden``'s device refuses (which failed, after the rest
        was loaded, at the first step), and, where the step is this class's own (a subclass's step may keep other
        values), a sign outside {-1, 0, 1}, a run that is no whole number >= 0 or a mark other than 0 or 1.

        Example:
            >>> rule, w = SwitchRule(), torch.zeros(2)
            >>> rule.check_state(rule.init_state(w)._replace(consolidated=torch.tensor([0.5, 1.0])), w)
            Traceback (most recent call last):
            ...
            ValueError: consolidated holds values other than 0 (plastic) and 1 (consolidated)
        """
        check_generator_state(state.rng.to("cpu", torch.uint8), "rng", hidden.device)
        if type(self).step is not SwitchRule.step:
            return
        if not bool(((state.sign == -1) | (state.sign == 0) | (state.sign == 1)).all()):
            raise ValueError("sign holds values other than -1, 0 and 1")
        if not bool(((state.run >= 0) & (state.run == state.run.round())).all()):
            raise ValueError("run holds values that are not whole numbers >= 0 (a count of updates)")
        if not bool(((state.consolidated == 0) | (state.consolidated == 1)).all()):
            raise ValueError("consolidated holds values other than 0 (plastic) and 1 (consolidated)")

    def _parameter_seed(self, hidden: Tensor) -> int:
        """A 63-bit seed from ``seed``, the shape and the bytes of ``hidden``: the same on every machine."""
        digest = hashlib.blake2b(digest_size=8)
        digest.update(f"{self.seed}:{tuple(hidden.shape)}:{hidden.dtype}".encode())
        digest.update(hidden.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return int.from_bytes(digest.digest(), "little") >> 1

    def step(self, hidden: Tensor, update: Tensor, meta: float, state: SwitchState) -> tuple[Tensor, SwitchState]:
        consolidated = state.consolidated.to(hidden.dtype) > 0
        kept = torch.where(toward_zero(hidden, update) & consolidated, update * self.damping, update)
        sign = torch.sign(update).to(hidden.dtype)
        moved = sign != 0
        last_sign, last_run = state.sign.to(hidden.dtype), state.run.to(hidden.dtype)
        run = torch.where(moved, torch.where(sign == last_sign, last_run + 1, 0.0), last_run)
        generator = torch.Generator(hidden.device)
        generator.set_state(state.rng.to("cpu", torch.uint8))  # (a state moved to the weight's device or dtype by hand)
        draw = torch.rand(hidden.shape, generator=generator, device=hidden.device, dtype=hidden.dtype)
        switched = moved & (draw < -torch.expm1(-meta * run))  # (a zero update changes nothing)
        new = SwitchState(torch.where(moved, sign, last_sign), run, (consolidated | switched).to(hidden.dtype),
                          generator.get_state())
        return kept, new
