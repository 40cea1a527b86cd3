"""Self-recurrent spiking layer with learnable intrinsic parameters (plain torch).

After Zhang & Li 2020 (ScSr-SNN, "backpropagated intrinsic plasticity"): each neuron feeds its own
spike back to itself through a learnable weight (a diagonal recurrent matrix, stored as a vector),
and its membrane decay and firing threshold are trained by backprop with the synapses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from metaspike.checks import is_whole, number_in
from metaspike.snn.spikes import surrogate_spike

__all__ = ["SelfRecurrentLIF", "fast_sigmoid_spike", "check_decay"]


def check_decay(beta: float) -> float:
    """``beta`` if it is a membrane decay per step, a number in ``[0, 1]``, else one ``ValueError``.

    Example:
        >>> check_decay(0.9)
        0.9
    """
    number_in("beta (the membrane's decay per step)", beta, 0.0, 1.0)
    return beta


def _fast_sigmoid_gradient(x: Tensor, grad: Tensor, slope: float) -> Tensor:
    return grad / (slope * x.abs() + 1.0) ** 2


def fast_sigmoid_spike(x: Tensor, slope: float = 25.0) -> Tensor:
    """Heaviside step whose gradient is the fast-sigmoid surrogate ``1 / (slope |x| + 1)²``.

    Example:
        >>> fast_sigmoid_spike(torch.tensor([-0.1, 0.2]))
        tensor([0., 1.])
    """
    return surrogate_spike(x, _fast_sigmoid_gradient, slope)


class SelfRecurrentLIF(nn.Module):
    """Leaky integrate-and-fire layer with self-recurrence and learnable decay and threshold.

    Per step, for input current ``I_t``::

        v_t = beta * v_{t-1} * (1 - z_{t-1}) + I_t + w_self * z_{t-1}
        z_t = spike(v_t - threshold)

    ``beta`` (clamped to [0, 1]), ``threshold`` (clamped to >= 0.01) and ``w_self`` are per-neuron
    parameters. State lives in the module (like snnTorch's ``init_hidden=True``) and is cleared by
    :meth:`reset_state`, which :func:`metaspike.snn.reset_states` calls.

    Args:
        features: number of neurons.
        beta, threshold: initial decay and threshold.
        spike_fn: spike function with a surrogate gradient (e.g. ``metaspike.snn.surrogate("atan")``);
            default :func:`fast_sigmoid_spike`.
        output: return ``(spikes, membrane)`` instead of spikes.

    Example:
        >>> layer = SelfRecurrentLIF(4)
        >>> spikes = [layer(torch.full((2, 4), 0.6)) for _ in range(3)]
        >>> [int(s.sum()) for s in spikes]
        [0, 8, 0]
    """

    def __init__(
        self,
        features: int,
        beta: float = 0.9,
        threshold: float = 1.0,
        spike_fn: Callable[[Tensor], Tensor] | None = None,
        output: bool = False,
    ) -> None:
        super().__init__()
        if not is_whole(features, 1):
            raise ValueError(f"features must be an integer >= 1, got {features!r}")
        check_decay(beta)
        number_in("threshold", threshold, 0.01)
        self.features = features
        self.beta = nn.Parameter(torch.full((features,), float(beta)))
        self.threshold = nn.Parameter(torch.full((features,), float(threshold)))
        self.w_self = nn.Parameter(torch.zeros(features))
        self.spike_fn = spike_fn or fast_sigmoid_spike
        self.output = output
        self.v: Tensor | None = None
        self.z: Tensor | None = None

    def reset_state(self) -> None:
        """Forget the membrane potential and the last spikes."""
        self.v = self.z = None

    def forward(self, current: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.v is None or self.v.shape != current.shape:
            self.v = self.z = torch.zeros_like(current)
        v = self.beta.clamp(0, 1) * self.v * (1 - self.z) + current + self.w_self * self.z
        z = self.spike_fn(v - self.threshold.clamp(min=0.01))
        self.v, self.z = v, z
        return (z, v) if self.output else z
