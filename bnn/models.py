"""The paper's binarized networks: a fully connected :class:`MLP` and a small :class:`ConvNet`."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
from torch import Tensor, nn

from bnn.layers import BinaryConv2d, BinaryLinear, SignActivation, check_input_dtype
from metaspike.allocator import usable_memory
from metaspike.checks import is_whole
from metaspike.population_statistics import accept_saved_population_statistics

__all__ = ["MLP", "ConvNet"]


def _activation(name: str) -> nn.Module:
    if name == "sign":
        return SignActivation()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"activation must be 'sign' or 'relu', got {name!r}")


def _listed(values: object) -> list[object] | None:
    """``values`` as a list when it is a collection of values (a sequence, an iterator, an array or tensor); ``None``
    for one value (a number, a string)."""
    if isinstance(values, (np.ndarray, Tensor)):
        listed = values.tolist()
        return listed if isinstance(listed, list) else None
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        return None
    return list(values)


def _positive_ints(values: list[object]) -> tuple[int, ...] | None:
    """``values`` as Python ints when each is a positive integer (numpy integers taken too), else ``None``."""
    return tuple(int(v) for v in values) if all(is_whole(v, 1) for v in values) else None  # type: ignore[call-overload]


def _check_sizes(name: str, values: int | Sequence[int]) -> tuple[int, ...]:
    """``values`` (one integer or a collection) as a tuple of positive Python ints, else one line naming the
    argument."""
    listed = _listed(values)
    found = _positive_ints([values] if listed is None else listed)
    if found is None:
        raise ValueError(f"{name} must be {'positive integers' if listed is not None else 'a positive integer'}, got "
                         f"{values!r}")
    return found


def _check_input(model: nn.Module, x: Tensor, shape: tuple[int, ...], flat: bool) -> None:
    """One line, instead of torch's error from inside a layer, when ``x`` does not fit ``model``: a batch of samples
    of ``shape`` (or any shape with as many values, when ``flat``), and more than one sample where a BatchNorm1d layer
    still normalises with the statistics of the batch (a training model, or one whose statistics are not fixed)."""
    name = type(model).__name__
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} takes a tensor, got {type(x).__name__}")
    fits = x.dim() >= 2 and (math.prod(x.shape[1:]) == math.prod(shape) if flat else tuple(x.shape[1:]) == shape)
    if not fits:
        want = (f"(batch, {math.prod(shape)}) or any shape whose samples hold {math.prod(shape)} values" if flat
                else f"(batch, {', '.join(map(str, shape))})")
        raise ValueError(f"{name} takes inputs of shape {want}, got {tuple(x.shape)}")
    check_input_dtype(name, x, next((p.dtype for p in model.parameters() if p.is_floating_point()), None))
    if x.shape[0] == 1 and any(isinstance(m, nn.BatchNorm1d) and (m.training or m.running_mean is None)
                               for m in model.modules()):
        raise ValueError(f"{name} got one sample, but its BatchNorm layers normalise with the statistics of the batch "
                         "(the paper's setting); fix them first with bnn.use_population_statistics(model, x_train) "
                         "and predict in model.eval() mode, or give batches of 2 or more")


class _SlicesAsSequential(nn.Sequential):
    """An ``nn.Sequential`` whose slice (``model[:3]``) is a plain ``nn.Sequential`` of those layers: torch rebuilds a
    slice with the model's own class from the layers, which a model built from its sizes cannot take."""

    def __getitem__(self, index: int | slice) -> nn.Module:
        if isinstance(index, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[index]))
        return super().__getitem__(index)


class MLP(_SlicesAsSequential):
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
        listed = _listed(sizes)
        widths = None if listed is None or len(listed) < 2 else _positive_ints(listed)
        if widths is None:
            raise ValueError(f"sizes must list at least 2 positive integer widths (input ... classes), e.g. "
                             f"[784, 256, 10], got {sizes if listed is None else listed!r}")
        sizes = list(widths)
        _check_weights_fit(f"sizes {sizes}", sum(a * b for a, b in zip(sizes[:-1], sizes[1:])))
        _activation(activation)  # checked even where no hidden layer uses it
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

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, x, (self.in_features,), flat=True)
        return super().forward(x)


def _check_weights_fit(what: str, weights: int) -> None:
    """One line naming ``what`` where ``weights`` float32 hidden weights exceed the memory this process may use
    (torch's allocator would fail with its own message)."""
    memory = usable_memory()
    if memory is not None and 4 * weights > memory:
        raise ValueError(f"{what}: {weights:,} float32 hidden weights take {4 * weights / 2**30:,.0f} GiB, more than "
                         f"the {memory / 2**30:.0f} GiB this process may use")


class ConvNet(_SlicesAsSequential):
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
        if not isinstance(in_shape, Sequence) or len(in_shape) != 3:
            raise ValueError(f"in_shape must be (channels, height, width), got {in_shape!r}")
        c, h, w = _check_sizes("in_shape", in_shape)
        channels = _check_sizes("channels", channels)
        _check_sizes("hidden", hidden)
        _check_sizes("num_classes", num_classes)
        _activation(activation)
        widths, (h_out, w_out) = [c, *channels], (h >> len(channels), w >> len(channels))
        _check_weights_fit(f"in_shape {tuple(in_shape)}, channels {list(channels)}, hidden {hidden}",
                           sum(9 * a * b for a, b in zip(widths[:-1], widths[1:]))
                           + widths[-1] * h_out * w_out * hidden + hidden * num_classes)
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
        self.in_shape = tuple(in_shape)
        self.in_features = math.prod(self.in_shape)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(self, x, self.in_shape, flat=False)
        return super().forward(x)
