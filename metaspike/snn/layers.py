"""Plain-torch layers for spiking networks with binary synapses."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Scale"]


class Scale(nn.Module):
    """Learnable per-feature gain ``y = gain * x`` (exported to NIR as a ``Scale`` node).

    With ±1 synapses the input current of a neuron grows with its fan-in; a gain of about
    ``1 / sqrt(fan_in)`` brings it back to the scale of the firing threshold.

    Example:
        >>> Scale(3, init=0.5)(torch.ones(2, 3)).tolist()
        [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
    """

    def __init__(self, features: int, init: float = 1.0) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.full((features,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain
