"""Plain-torch layers for spiking networks with binary synapses."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaspike.checks import is_finite_number, is_whole

__all__ = ["Scale"]


class Scale(nn.Module):
    """Learnable elementwise gain ``y = gain * x`` (exported to NIR as a ``Scale`` node).

    ``shape`` is the number of features (a linear layer's output) or the shape of one sample's
    features (e.g. ``(channels, height, width)`` after a conv layer); the gain broadcasts over the batch.
    :func:`metaspike.snn.nir.import_nir` builds one where a NIR neuron's input gain is not 1; a binary
    layer's own gain is :class:`metaspike.gain.OutputGain` (``metaspike.binarize``'s ``scale``).

    Example:
        >>> Scale(3, init=0.5)(torch.ones(2, 3)).tolist()
        [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
        >>> Scale((2, 1, 1))(torch.ones(4, 2, 3, 3)).shape
        torch.Size([4, 2, 3, 3])
    """

    def __init__(self, shape: int | tuple[int, ...], init: float = 1.0) -> None:
        super().__init__()
        dims = (shape,) if isinstance(shape, int) else tuple(shape) if isinstance(shape, (tuple, list)) else None
        if not dims or not all(is_whole(d, 1) for d in dims):
            raise ValueError(f"shape must be a positive integer or a tuple of them, got {shape!r}")
        if not is_finite_number(init):
            raise ValueError(f"init must be a finite number, got {init!r}")
        self.gain = nn.Parameter(torch.full(tuple(int(d) for d in dims), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain

    def extra_repr(self) -> str:
        """``shape=(2, 1, 1)``: what ``print(model)`` shows of the layer.

        Example:
            >>> Scale(3)
            Scale(shape=(3,))
        """
        return f"shape={tuple(self.gain.shape)}"
