"""The paper's binarized networks: a fully connected :class:`MLP` and a small :class:`ConvNet`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from bnn.layers import BinaryConv2d, BinaryLinear, SignActivation
from metaspike.population_statistics import accept_saved_population_statistics

__all__ = ["MLP", "ConvNet"]


def _activation(name: str) -> nn.Module:
    if name == "sign":
        return SignActivation()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"activation must be 'sign' or 'relu', got {name!r}")


class MLP(nn.Sequential):
    """Fully connected BNN of Laborieux et al. 2021 (e.g. ``MLP([784, 1024, 1024, 10])``).

    Each layer is a bias-free :class:`BinaryLinear` followed by
    ``BatchNorm1d(affine=True, track_running_stats=False)``, with sign activations between layers.
    The first layer takes the real-valued (flattened) input. Hidden weights start uniform with
    width ``init_width`` (``[-0.05, 0.05]`` by default). BatchNorm uses the statistics of the
    evaluated batch, as in the paper; :func:`bnn.use_population_statistics` fixes them so a
    trained model can predict one sample at a time.

    Args:
        sizes: layer widths, input features first, number of classes last.
        init_width: width of the uniform initialisation of the hidden weights.
        weight_quantizer: ``"ste_sign_unclipped"`` for binary synapses, ``"none"`` for the full-precision variant.
        activation: ``"sign"`` (binary) or ``"relu"``.

    Example:
        >>> import torch
        >>> model = MLP([784, 256, 10])
        >>> model(torch.rand(32, 1, 28, 28)).shape
        torch.Size([32, 10])
    """

    def __init__(
        self,
        sizes: Sequence[int],
        init_width: float = 0.1,
        weight_quantizer: str = "ste_sign_unclipped",
        activation: str = "sign",
    ) -> None:
        sizes = list(sizes)
        if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"sizes must list at least 2 positive integer widths (input ... classes), got {sizes}")
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(BinaryLinear(n_in, n_out, weight_quantizer=weight_quantizer, init_width=init_width))
            layers.append(nn.BatchNorm1d(n_out, affine=True, track_running_stats=False))
            if i < len(sizes) - 2:
                layers.append(_activation(activation))
        super().__init__(*layers)
        accept_saved_population_statistics(self)
        self.sizes = tuple(sizes)
        self.in_features = sizes[0]


class ConvNet(nn.Sequential):
    """Small convolutional BNN: ``[BinaryConv2d 3x3 → BatchNorm2d → MaxPool 2 → sign]`` per entry of
    ``channels``, then a binary classifier ``[hidden → classes]`` with BatchNorm1d.

    The first convolution takes the real-valued input.

    Example:
        >>> import torch
        >>> net = ConvNet(in_shape=(1, 28, 28), channels=(16, 32), hidden=128, num_classes=10)
        >>> net(torch.rand(4, 1, 28, 28)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (32, 64),
        hidden: int = 256,
        num_classes: int = 10,
        init_width: float = 0.1,
        weight_quantizer: str = "ste_sign_unclipped",
        activation: str = "sign",
    ) -> None:
        if len(in_shape) != 3:
            raise ValueError(f"in_shape must be (channels, height, width), got {tuple(in_shape)}")
        c, h, w = (int(v) for v in in_shape)
        layers: list[nn.Module] = []
        for out_c in channels:
            if h < 2 or w < 2:
                raise ValueError(f"input {tuple(in_shape)} is too small for {len(channels)} pooling stages")
            layers += [
                BinaryConv2d(c, out_c, 3, padding=1, weight_quantizer=weight_quantizer, init_width=init_width),
                nn.BatchNorm2d(out_c, affine=True, track_running_stats=False),
                nn.MaxPool2d(2),
                _activation(activation),
            ]
            c, h, w = out_c, h // 2, w // 2
        layers += [
            nn.Flatten(),
            BinaryLinear(c * h * w, hidden, weight_quantizer=weight_quantizer, init_width=init_width),
            nn.BatchNorm1d(hidden, affine=True, track_running_stats=False),
            _activation(activation),
            BinaryLinear(hidden, num_classes, weight_quantizer=weight_quantizer, init_width=init_width),
            nn.BatchNorm1d(num_classes, affine=True, track_running_stats=False),
        ]
        super().__init__(*layers)
        accept_saved_population_statistics(self)
        self.in_shape = (int(in_shape[0]), int(in_shape[1]), int(in_shape[2]))
        self.in_features = math.prod(self.in_shape)
