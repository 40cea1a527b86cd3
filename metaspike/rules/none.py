"""No consolidation: every update passes unchanged, whatever ``meta`` is (a plain binarized network)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from metaspike.rules.base import NoState, Stateless

__all__ = ["NoConsolidation"]


@dataclass(frozen=True)
class NoConsolidation(Stateless):
    """The identity rule.

    Example:
        >>> import torch
        >>> NoConsolidation().step(torch.tensor([3.0]), torch.tensor([1.0]), 5.0, NoState())[0]
        tensor([1.])
    """

    name: str = "none"
    plain_at_zero: ClassVar[bool] = True

    def step(self, hidden: Tensor, update: Tensor, meta: float, state: NoState) -> tuple[Tensor, NoState]:
        return update, state
