"""A cascade of coupled variables per synapse (Benna & Fusi, Nat. Neurosci. 2016)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from metaspike.rules.base import check_meta

__all__ = ["CascadeRule", "CascadeState"]


class CascadeState(NamedTuple):
    """The deep variables ``u_2 .. u_n`` of every synapse, stacked: shape ``(n - 1, *hidden.shape)``."""

    levels: Tensor


@dataclass(frozen=True)
class CascadeRule:
    """``n`` coupled variables per synapse; ``u_1`` is the hidden weight ``W_h`` itself (its sign is the
    binary weight), ``u_2 .. u_n`` live in the state and start equal to ``W_h`` (at rest).

    Variable ``k`` is a beaker of capacity ``C_k = 2^(k-1)`` joined to beaker ``k+1`` by a tube of
    conductance ``g_k = meta·2^-(k+1)`` (``meta = 0`` isolates ``u_1``: the plain optimizer; larger
    ``meta`` ties ``u_1`` harder to the slow, deep beakers); the last beaker leaks to zero through
    conductance ``leak``. One step:

    1. the update goes into the first beaker: ``u_1' = u_1 - update``;
    2. the beakers exchange for one unit of time, by an implicit (backward Euler) step, stable and
       without overshoot for any ``meta``::

           C_k (u_k⁺ - u_k') = g_(k-1) (u_(k-1)⁺ - u_k⁺) + g_k (u_(k+1)⁺ - u_k⁺)   [- leak·u_n⁺ for k = n]

       with ``g_0 = g_n = 0`` (a tridiagonal system, solved exactly per synapse);
    3. the returned update is ``W_h - u_1⁺``.

    With ``leak = 0`` the total ``Σ_k C_k u_k`` changes by exactly ``-update`` per step.

    The deep variables live in the optimizer state (``"rule_state"``): the continual trainer hands them on to each
    task's new optimizer under ``optimizer="per-task"`` (:func:`metaspike.optim.inherit_rule_states`), so they span
    the tasks in either of its modes; a new optimizer made by hand starts them anew, at rest at ``W_h``, unless given
    them the same way.

    Args:
        n: number of variables, ``>= 2``.
        leak: conductance from the last variable to zero, ``>= 0`` (``0``: a closed chain).

    Example:
        >>> rule = CascadeRule(n=2)  # C = (1, 2), g_1 = meta/4
        >>> update, state = rule.step(torch.tensor([0.0]), torch.tensor([-1.0]), 4.0, rule.init_state(torch.zeros(1)))
        >>> update, state.levels  # u' = (1, 0) -> (0.6, 0.2)
        (tensor([-0.6000]), tensor([[0.2000]]))
    """

    n: int = 3
    leak: float = 0.0
    name: str = "cascade"
    elementwise: bool = False
    plain_at_zero: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 2:
            raise ValueError(f"CascadeRule n must be an integer >= 2, got {self.n!r}")
        check_meta(self.leak, "CascadeRule leak")

    def init_state(self, hidden: Tensor) -> CascadeState:
        return CascadeState(hidden.detach().unsqueeze(0).repeat(self.n - 1, *([1] * hidden.dim())))

    def state_type(self) -> type:
        return CascadeState

    def step(self, hidden: Tensor, update: Tensor, meta: float, state: CascadeState) -> tuple[Tensor, CascadeState]:
        deep = state.levels.to(hidden.dtype)
        levels = [hidden - update, *deep.unbind(0)]
        capacity = [2.0**k for k in range(self.n)]
        tube = [*(meta * 2.0 ** -(k + 2) for k in range(self.n - 1)), 0.0]  # tube[k] joins beakers k and k + 1
        # Thomas algorithm for  -g_(k-1)·u_(k-1) + (C_k + g_(k-1) + g_k)·u_k - g_k·u_(k+1) = C_k·u_k', written so
        # that no step subtracts: pivot_k = rest_k + g_k, where rest_k = C_k + g_(k-1)·rest_(k-1)/pivot_(k-1) (+ the
        # leak) sums positive terms. (The textbook pivot diag_k - g_(k-1)·ratio_(k-1) cancels to nothing as meta
        # grows: 0.45 at meta = 1e17 where the answer is 0.471, a division by zero at 1e18.) The forward sweep
        # carries flow_k = g_k·sweep_k, of the levels' magnitude, where sweep_k itself falls as 1/meta (and
        # float32 loses it below 1e-38).
        ratios: list[float] = []
        sweeps: list[Tensor] = []
        rest, flow = 0.0, None
        for k in range(self.n):
            rest = capacity[k] + (tube[k - 1] * rest / (rest + tube[k - 1]) if k else 0.0)
            rest += self.leak if k == self.n - 1 else 0.0
            pivot = rest + tube[k]
            ratios.append(tube[k] / pivot)
            pushed = levels[k] * capacity[k] if flow is None else levels[k] * capacity[k] + flow
            sweeps.append(pushed / pivot)
            flow = pushed * ratios[-1]
        new = [sweeps[-1]]
        for k in range(self.n - 2, -1, -1):
            new.insert(0, sweeps[k] + ratios[k] * new[0])
        return hidden - new[0], CascadeState(torch.stack(new[1:]))
