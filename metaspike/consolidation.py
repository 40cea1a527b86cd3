"""Consolidation rules: how much an update that pushes a hidden weight toward zero is kept.

A rule is a pure function of the hidden weights ``W_h`` and the metaplasticity strength ``meta``
that returns a factor in ``[0, 1]``. :func:`consolidate` applies it only where an update would move
``W_h`` toward zero (toward a sign flip); updates away from zero pass unchanged. The optimizer
(:mod:`metaspike.optim`), the wrapper for any torch optimizer and the spiking backends all call
these functions, so there is one implementation of the rule.

The paper's rule (Laborieux et al., Nat. Commun. 2021) is ``f_meta(m, W_h) = 1 - tanh²(m·W_h)``.

Stateful rules (:class:`StatefulRule`: :class:`CascadeRule`, :class:`SwitchRule`) keep per-synapse
variables between steps: ``init_state(param)`` creates them and ``apply(hidden, update, meta, state)``
returns the update to use and advances ``state``. :func:`consolidate` takes that ``state``; the
optimizers keep it in their own state, so ``state_dict()`` saves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "ConsolidationRule",
    "StatefulRule",
    "Rule",
    "TanhRule",
    "NoConsolidation",
    "CascadeRule",
    "SwitchRule",
    "is_stateful",
    "consolidate",
    "get_rule",
    "available_rules",
    "check_meta",
]


class ConsolidationRule(Protocol):
    """A rule maps hidden weights and ``meta`` to a damping factor in ``[0, 1]``.

    Example:
        >>> rule = get_rule("tanh")
        >>> rule.factor(torch.tensor([0.0, 1.0]), meta=1.0)
        tensor([1.0000, 0.4200])
    """

    name: str

    def factor(self, hidden: Tensor, meta: float) -> Tensor:
        """Return the factor by which an update toward zero is multiplied."""
        ...


class StatefulRule(Protocol):
    """A rule with per-synapse state: it rewrites the update and advances its state each step.

    Example:
        >>> rule = get_rule("cascade")
        >>> state = rule.init_state(torch.zeros(2))
        >>> sorted(state)
        ['u2', 'u3']
    """

    name: str

    def init_state(self, param: Tensor) -> dict[str, Tensor]:
        """Return the rule's fresh state for the parameter ``param`` (tensors of any dtype)."""
        ...

    def apply(self, hidden: Tensor, update: Tensor, meta: float, state: dict[str, Tensor]) -> Tensor:
        """Return the update to subtract from ``hidden`` in place of ``update``; store the new state
        in ``state`` (whose tensors may come back from ``load_state_dict`` cast to ``hidden``'s dtype)."""
        ...


Rule = ConsolidationRule | StatefulRule


@dataclass(frozen=True)
class TanhRule:
    """The paper's rule ``f_meta(m, W_h) = 1 - tanh²(m·W_h)``.

    ``meta = 0`` gives a factor of exactly 1 (a plain BNN); larger ``meta`` consolidates
    synapses whose ``|W_h|`` has grown.

    Example:
        >>> TanhRule().factor(torch.tensor([0.5]), meta=2.0)
        tensor([0.4200])
    """

    name: str = "tanh"

    def factor(self, hidden: Tensor, meta: float) -> Tensor:
        return 1.0 - _tanh(hidden * meta).square()


def _tanh(x: Tensor) -> Tensor:
    """``tanh(x)``; inside ``torch.compile`` built from ``expm1`` (relative error ~1e-7), which
    compiled CPU loops evaluate several times faster than their vectorized ``tanh``."""
    if not torch.compiler.is_compiling():
        return torch.tanh(x)
    q = torch.expm1(-2 * x.abs())
    return torch.copysign(-q / (2 + q), x)


@dataclass(frozen=True)
class NoConsolidation:
    """No consolidation: the factor is always 1, whatever ``meta`` is.

    Example:
        >>> NoConsolidation().factor(torch.tensor([3.0]), meta=5.0)
        tensor([1.])
    """

    name: str = "none"

    def factor(self, hidden: Tensor, meta: float) -> Tensor:
        return torch.ones_like(hidden)


def check_meta(meta: float, where: str = "meta") -> float:
    """Validate a metaplasticity strength: a finite number >= 0.

    Example:
        >>> check_meta(1.35)
        1.35
    """
    try:
        value = float(meta)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number >= 0, got {meta!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} must be a finite number >= 0, got {meta!r}")
    return value


def _toward_zero(hidden: Tensor, update: Tensor) -> Tensor:
    """Where subtracting ``update`` moves ``hidden`` toward zero."""
    return hidden * update > 0


@dataclass(frozen=True)
class CascadeRule:
    """A cascade of ``n`` coupled variables per synapse (Benna & Fusi, Nat. Neurosci. 2016).

    Synapse ``i`` holds ``u_1 .. u_n``; ``u_1`` is the hidden weight ``W_h`` itself (its sign is the
    binary weight), ``u_2 .. u_n`` live in the rule's state and start equal to ``W_h`` (at rest).
    Variable ``k`` is a beaker of capacity ``C_k = 2^(k-1)`` joined to beaker ``k+1`` by a tube of
    conductance ``g_k = meta·2^-(k+1)`` (so ``meta`` is the coupling scale: ``meta = 0`` isolates
    ``u_1`` and gives the plain optimizer; larger ``meta`` ties ``u_1`` harder to the slow, deep
    beakers), and the last beaker leaks to zero through conductance ``leak``. One step:

    1. the update goes into the first beaker: ``u_1' = u_1 - update``;
    2. the beakers exchange for one unit of time, by an implicit (backward Euler) step, stable and
       without overshoot for any ``meta``::

           C_k (u_k⁺ - u_k') = g_(k-1) (u_(k-1)⁺ - u_k⁺) + g_k (u_(k+1)⁺ - u_k⁺)   [- leak·u_n⁺ for k = n]

       with ``g_0 = g_n = 0`` (a tridiagonal system, solved exactly per synapse);
    3. the returned update is ``W_h - u_1⁺``.

    Flows only move water between beakers, so with ``leak = 0`` the total ``Σ_k C_k u_k`` changes by
    exactly ``-update`` per step: the exchange conserves it.

    Args:
        n: number of variables, ``>= 2``.
        leak: conductance from the last variable to zero, ``>= 0`` (``0``: a closed chain).

    Example:
        >>> rule = CascadeRule(n=2)  # C = (1, 2), g_1 = meta/4
        >>> state = rule.init_state(torch.tensor([0.0]))
        >>> rule.apply(torch.tensor([0.0]), torch.tensor([-1.0]), 4.0, state)  # u' = (1, 0) -> (0.6, 0.2)
        tensor([-0.6000])
        >>> state["u2"]
        tensor([0.2000])
    """

    n: int = 3
    leak: float = 0.0
    name: str = "cascade"

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 2:
            raise ValueError(f"CascadeRule n must be an integer >= 2, got {self.n!r}")
        check_meta(self.leak, "CascadeRule leak")

    def init_state(self, param: Tensor) -> dict[str, Tensor]:
        return {f"u{k}": param.detach().clone() for k in range(2, self.n + 1)}

    def apply(self, hidden: Tensor, update: Tensor, meta: float, state: dict[str, Tensor]) -> Tensor:
        levels = [hidden - update] + [state[f"u{k}"].to(hidden.dtype) for k in range(2, self.n + 1)]
        capacity = [2.0**k for k in range(self.n)]
        tube = [meta * 2.0 ** -(k + 2) for k in range(self.n - 1)]
        below, above = [0.0, *tube], [*tube, 0.0]
        # Thomas algorithm for  -below_k·u_(k-1) + diag_k·u_k - above_k·u_(k+1) = C_k·u_k'
        ratios: list[float] = []
        sweeps: list[Tensor] = []
        for k in range(self.n):
            diag = capacity[k] + below[k] + above[k] + (self.leak if k == self.n - 1 else 0.0)
            pivot = diag - (below[k] * ratios[-1] if k else 0.0)
            ratios.append(above[k] / pivot)
            rhs = levels[k] * capacity[k]
            sweeps.append((rhs + below[k] * sweeps[-1] if k else rhs) / pivot)
        new = [sweeps[-1]]
        for k in range(self.n - 2, -1, -1):
            new.insert(0, sweeps[k] + ratios[k] * new[0])
        state.update({f"u{k}": new[k - 1] for k in range(2, self.n + 1)})
        return hidden - new[0]


@dataclass(frozen=True)
class SwitchRule:
    """A stochastic bistable switch per synapse (use-dependent potentiation, as in *Lymnaea*).

    Each synapse is *plastic* or *consolidated*. ``r`` counts its consecutive updates in the same
    direction after the first (``r = 0`` after a change of sign; a zero update changes nothing).
    After each update a plastic synapse becomes consolidated, for good, with probability::

        p = 1 - exp(-meta·r)

    so alternating updates (``r = 0``) never consolidate it and ``meta = 0`` gives the plain
    optimizer. A consolidated synapse's updates toward zero (``W_h·update > 0``) are multiplied by
    ``damping`` (``0``: blocked); other updates pass. An update is damped according to the state
    *before* it. The draws come from a ``torch.Generator`` seeded with ``seed`` for each parameter,
    whose state is kept in the rule's state, so runs (and resumed runs) repeat exactly.

    Args:
        damping: factor in ``[0, 1]`` for a consolidated synapse's updates toward zero.
        seed: seed of each parameter's generator.

    Example:
        >>> rule, w = SwitchRule(), torch.tensor([1.0])
        >>> state = rule.init_state(w)
        >>> for _ in range(3):  # pushed away from zero again and again: r = 0, 1, 2
        ...     _ = rule.apply(w, torch.tensor([-0.1]), 50.0, state)
        >>> rule.apply(w, torch.tensor([0.1]), 50.0, state)  # consolidated: toward zero is blocked
        tensor([0.])
    """

    damping: float = 0.0
    seed: int = 0
    name: str = "switch"

    def __post_init__(self) -> None:
        if not (isinstance(self.damping, (int, float)) and 0.0 <= self.damping <= 1.0):
            raise ValueError(f"SwitchRule damping must be a number in [0, 1], got {self.damping!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"SwitchRule seed must be an integer, got {self.seed!r}")

    def init_state(self, param: Tensor) -> dict[str, Tensor]:
        zeros = torch.zeros_like(param, memory_format=torch.preserve_format)
        generator = torch.Generator(param.device).manual_seed(self.seed)
        return {"sign": zeros, "run": zeros.clone(), "consolidated": zeros.clone(), "rng": generator.get_state()}

    def apply(self, hidden: Tensor, update: Tensor, meta: float, state: dict[str, Tensor]) -> Tensor:
        blocked = _toward_zero(hidden, update) & (state["consolidated"] > 0)
        kept = torch.where(blocked, update * self.damping, update)
        sign = torch.sign(update).to(hidden.dtype)
        moved = sign != 0
        run = torch.where(sign == state["sign"], state["run"].to(hidden.dtype) + 1, 0.0)
        state["run"] = torch.where(moved, run, state["run"].to(hidden.dtype))
        state["sign"] = torch.where(moved, sign, state["sign"].to(hidden.dtype))
        generator = torch.Generator(hidden.device)
        generator.set_state(state["rng"].to("cpu", torch.uint8))
        draw = torch.rand(hidden.shape, generator=generator, device=hidden.device, dtype=hidden.dtype)
        state["rng"] = generator.get_state()
        switched = draw < -torch.expm1(-meta * state["run"])
        state["consolidated"] = ((state["consolidated"] > 0) | switched).to(hidden.dtype)
        return kept


_RULES: dict[str, Rule] = {
    rule.name: rule for rule in (TanhRule(), NoConsolidation(), CascadeRule(), SwitchRule())
}


def is_stateful(rule: Rule) -> bool:
    """Whether ``rule`` keeps per-synapse state (``init_state``/``apply``) instead of a ``factor``.

    Example:
        >>> is_stateful(get_rule("switch")), is_stateful(get_rule("tanh"))
        (True, False)
    """
    return callable(getattr(rule, "init_state", None)) and callable(getattr(rule, "apply", None))


def available_rules() -> list[str]:
    """Names accepted by :func:`get_rule`.

    Example:
        >>> available_rules()
        ['cascade', 'none', 'switch', 'tanh']
    """
    return sorted(_RULES)


def get_rule(rule: str | Rule) -> Rule:
    """Return the rule called ``rule`` (or ``rule`` itself when it already is one).

    Example:
        >>> get_rule("tanh").name
        'tanh'
    """
    if isinstance(rule, str):
        try:
            return _RULES[rule]
        except KeyError:
            stateless = [name for name in available_rules() if not is_stateful(_RULES[name])]
            stateful = [name for name in available_rules() if is_stateful(_RULES[name])]
            raise ValueError(
                f"unknown consolidation rule {rule!r}; available: {', '.join(stateless)} (stateless), "
                f"{', '.join(stateful)} (stateful)"
            ) from None
    if not (callable(getattr(rule, "factor", None)) or is_stateful(rule)):
        raise ValueError(
            f"{rule!r} is not a consolidation rule: it has no factor(hidden, meta) method "
            "nor init_state(param) and apply(hidden, update, meta, state) methods"
        )
    return rule


def consolidate(
    hidden: Tensor, update: Tensor, meta: float, rule: str | Rule = "tanh",
    state: dict[str, Tensor] | None = None,
) -> Tensor:
    """Damp the parts of ``update`` that would move ``hidden`` toward zero.

    A stateful rule returns ``rule.apply(hidden, update, meta, state)`` instead, advancing ``state``
    (from ``rule.init_state(hidden)``); ``state`` is required for it and ignored otherwise.

    ``update`` is the quantity the optimizer *subtracts* from ``hidden`` (``W_h <- W_h - lr·update``),
    so it moves ``W_h`` toward zero where ``sign(W_h)·update > 0``. There it is multiplied by
    ``rule.factor(W_h, meta)``; elsewhere it is returned unchanged. Pure: no argument is modified.

    Example:
        >>> w = torch.tensor([1.0, 1.0, -1.0])
        >>> consolidate(w, torch.tensor([1.0, -1.0, -1.0]), meta=1.0)
        tensor([ 0.4200, -1.0000, -0.4200])
    """
    rule = get_rule(rule)
    if is_stateful(rule):
        if state is None:
            raise ValueError(f"the {rule.name!r} rule is stateful: pass state=rule.init_state(hidden)")
        return rule.apply(hidden, update, meta, state)
    if isinstance(rule, TanhRule):
        if meta == 0:
            return update
        # t = tanh(m·W_h) has the sign of W_h, so (1 - t²)·u where W_h·u > 0 (else u) equals
        # u - t·relu(t·u): five cheap passes, without the bool mask and torch.where that alone
        # cost more on CPU.
        t = _tanh(hidden * meta)
        return torch.addcmul(update, t, (t * update).relu_(), value=-1)
    return torch.where(_toward_zero(hidden, update), update * rule.factor(hidden, meta), update)
