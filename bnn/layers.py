"""Binary layers: drop-in ``nn.Linear`` / ``nn.Conv2d`` whose weights are binary synapses.

Quantization is a pluggable argument, as in Larq: ``weight_quantizer="ste_sign"`` (default) shows
``sign(W_h)`` in the forward pass with a straight-through gradient; ``"none"`` keeps real weights
(the full-precision variant); ``input_quantizer`` binarizes what comes in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaspike.binary_linear import binary_linear
from metaspike.synapse import BinarySynapse, Quantizer, clipped_sign, get_quantizer, ste_sign

__all__ = ["BinaryLinear", "BinaryConv2d", "SignActivation"]


def _init_uniform(weight: Tensor, init_width: float | None) -> None:
    if init_width is not None:
        if init_width <= 0:
            raise ValueError(f"init_width must be > 0, got {init_width}")
        with torch.no_grad():
            weight.uniform_(-init_width / 2, init_width / 2)


class BinaryLinear(BinarySynapse, nn.Linear):
    """``nn.Linear`` whose forward pass uses ``sign(W_h)``; ``weight`` holds the hidden weights ``W_h``.

    Args:
        in_features, out_features: as in ``nn.Linear``.
        bias: add a real-valued bias (the paper's networks have none).
        weight_quantizer: ``"ste_sign"`` (binary), ``"none"`` (real weights) or a callable.
        input_quantizer: quantizer applied to the input (``None``: real-valued input).
        init_width: hidden weights start uniform in ``[-w/2, w/2]``; ``None`` keeps torch's init.

    Example:
        >>> layer = BinaryLinear(784, 256)
        >>> layer(torch.rand(8, 784)).shape
        torch.Size([8, 256])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        weight_quantizer: str | Quantizer | None = "ste_sign",
        input_quantizer: str | Quantizer | None = None,
        init_width: float | None = 0.1,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.weight_quantizer = get_quantizer(weight_quantizer)
        self.input_quantizer = get_quantizer(input_quantizer)
        _init_uniform(self.weight, init_width)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_quantizer(x)
        if self.weight_quantizer is ste_sign:
            return binary_linear(x, self)
        return F.linear(x, self.visible_weight(), self.bias)


class BinaryConv2d(BinarySynapse, nn.Conv2d):
    """``nn.Conv2d`` whose forward pass uses ``sign(W_h)``; arguments as in :class:`BinaryLinear`.

    Example:
        >>> conv = BinaryConv2d(1, 8, kernel_size=3, padding=1)
        >>> conv(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 8, 28, 28])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        bias: bool = False,
        weight_quantizer: str | Quantizer | None = "ste_sign",
        input_quantizer: str | Quantizer | None = None,
        init_width: float | None = 0.1,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.weight_quantizer = get_quantizer(weight_quantizer)
        self.input_quantizer = get_quantizer(input_quantizer)
        _init_uniform(self.weight, init_width)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.input_quantizer(x), self.visible_weight(), self.bias)


class SignActivation(nn.Module):
    """Binary activation: ``sign(x)`` forward, gradient passed where ``|x| <= 1``.

    Example:
        >>> SignActivation()(torch.tensor([-0.5, 0.0, 3.0]))
        tensor([-1.,  1.,  1.])
    """

    def forward(self, x: Tensor) -> Tensor:
        return clipped_sign(x)
