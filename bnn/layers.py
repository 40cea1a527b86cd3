"""Binary layers: drop-in ``nn.Linear`` / ``nn.Conv2d`` whose weights are binary synapses.

Quantization is a pluggable argument, as in Larq: ``weight_quantizer="ste_sign_unclipped"`` (default)
shows ``sign(W_h)`` in the forward pass with a straight-through gradient that is never clipped (the
hidden weight's magnitude is the consolidation variable); ``"ste_sign"`` clips it at ``|W_h| <= 1`` as
Larq does; ``"none"`` keeps real weights (the full-precision variant); ``input_quantizer`` quantizes
what comes in.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from bnn.binary_linear import binary_linear, check_precision, has_tangent
from bnn.sign_buffers import SignBuffers
from metaspike.bayesian.fused_step import Activation, register_fused_activation
from metaspike.checks import check_device, finite_number, is_whole, number_in
from metaspike.function_transforms import in_function_transform
from metaspike.gain import attach_output_gain, check_scale
from metaspike.layer_selection import weight_parametrizations
from metaspike.quantizers import (
    NoQuantizer,
    Quantizer,
    SteSign,
    check_clip_value,
    get_quantizer,
    magnitude_gate,
    magnitude_gate_slope,
    ste_sign,
)
from metaspike.synapse import BinarySynapse, mark_hidden_weight

__all__ = ["BinaryLinear", "BinaryConv2d", "SignActivation", "MagnitudeGate"]


def check_input_dtype(name: str, x: Tensor, dtype: torch.dtype | None) -> None:
    """One line, instead of torch's error from inside a product, when ``x`` is not of the weights' ``dtype`` (under
    ``torch.autocast`` anything goes)."""
    if dtype is not None and x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"{name} takes {dtype} inputs, the dtype of its weights, got {x.dtype}: convert them with "
                         f"x.to({dtype}) (or the model with model.to(x.dtype), or run it under torch.autocast)")


def layer_name(layer: nn.Module) -> str:
    """The name of ``layer``'s class in messages: its own, not the ``Parametrized...`` class torch makes for a layer
    with parametrizations (a Bayesian layer's synapses)."""
    return parametrize.type_before_parametrizations(layer).__name__


def check_features(layer: nn.Module, x: Tensor, features: int, dim: int, what: str) -> None:
    """One line when ``x`` is not a tensor whose size at ``dim`` is the layer's ``features`` (``what`` names that
    size)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{layer_name(layer)} takes a tensor, got {type(x).__name__}")
    if x.dim() < abs(dim) or x.shape[dim] != features:
        raise ValueError(f"{layer_name(layer)} takes inputs with {features} {what}, got shape {tuple(x.shape)}")


def weight_dtype(layer: nn.Module) -> torch.dtype | None:
    """The dtype of ``layer``'s weight parameter (under a parametrization, its synapse's tensor), read through the
    modules' own dictionaries where it lies there (``next(layer.parameters())`` took 6 µs a call, and reading
    ``layer.weight`` would run the parametrization, a Bayesian layer's weight sample), else its first parameter's
    (``weight_norm``'s two tensors); ``None`` for a layer without parameters."""
    weight = layer._parameters.get("weight")
    if weight is None:
        listed = weight_parametrizations(layer)
        weight = None if listed is None else listed._parameters.get("original")
    if weight is None:
        return next((p.dtype for p in layer.parameters()), None)
    return weight.dtype


def check_layer_input_dtype(layer: nn.Module, x: Tensor) -> None:
    """:func:`check_input_dtype` of ``x`` against the dtype of ``layer``'s weight (:func:`weight_dtype`), the layer's
    name worked out only where a message needs it (every forward pass checks)."""
    dtype = weight_dtype(layer)
    if dtype is not None and x.dtype != dtype:
        check_input_dtype(layer_name(layer), x, dtype)


def check_conv_input(conv: nn.Conv2d, x: Tensor, most_dims: int) -> None:
    """One line, instead of torch's error from inside the convolution, when ``x`` is not a tensor of at most
    ``most_dims`` dimensions with the layer's ``in_channels`` third from the end and images the kernel fits
    (:func:`check_spatial_size`); its dtype is the caller's to check (a binary layer's, after its input quantizer)."""
    what = "channels ((batch, channels, height, width) or (channels, height, width))"
    check_features(conv, x, conv.in_channels, -3, what)
    if x.dim() > most_dims:
        raise ValueError(f"{layer_name(conv)} takes inputs with {conv.in_channels} {what}, got shape {tuple(x.shape)}")
    check_spatial_size(conv, x)


def _quantized_input(layer: nn.Module, x: Tensor) -> Tensor:
    """``x`` through the layer's input quantizer, which must give the dtype of the layer's weight."""
    x = layer.input_quantizer(x)
    check_layer_input_dtype(layer, x)
    return x


def _init_uniform(weight: Tensor, init_width: float | None) -> None:
    if init_width is not None:  # (half of it a value of the weights' dtype: uniform_ fails inside torch beyond)
        number_in("init_width", init_width, 0.0, 2 * float(torch.finfo(weight.dtype).max), open_low=True,
                  note="or None")
        with torch.no_grad():
            weight.uniform_(-init_width / 2, init_width / 2)


class _StraightThrough(torch.autograd.Function):
    """Shows precomputed ``signs`` in the forward pass; the gradient (and a forward-mode tangent) of ``hidden`` passes
    unchanged."""

    @staticmethod
    def forward(ctx, hidden: Tensor, signs: Tensor) -> Tensor:  # type: ignore[override]
        return signs.view_as(signs)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None

    @staticmethod
    def jvp(ctx, hidden_tangent: Tensor, signs_tangent: Tensor | None) -> Tensor:  # type: ignore[override]
        return hidden_tangent


class _BinaryWeights(BinarySynapse):
    """What :class:`BinaryLinear` and :class:`BinaryConv2d` share: the quantizer, sign buffers, gradient buffer."""

    weight_quantizer: Quantizer
    forward_is_weight_product = True  # (the quantized weights times the quantized input, plus the bias: a gain fits)

    def _setup(self, weight_quantizer: str | Quantizer | None, input_quantizer: str | Quantizer | None,
               init_width: float | None, scale: str | None) -> None:
        self.weight_quantizer = get_quantizer(weight_quantizer)
        quantizer_bits(self.weight_quantizer, "weight_quantizer")  # (a precision that is no number of bits: refused)
        self.input_quantizer = get_quantizer(input_quantizer)
        # from torch's init, before the uniform one; applied by the same forward hook as binarize's gains
        self.output_gain = None if check_scale(scale) is None else attach_output_gain(self, scale)
        _init_uniform(self.weight, init_width)
        self._sign_buffers = SignBuffers()
        self._grad_buffer: Tensor | None = None
        if self.is_binary:
            mark_hidden_weight(self.weight)

    def extra_repr(self) -> str:
        """The torch layer's settings and the quantizers (a float layer, ``weight_quantizer="none"``, printed as the
        binary one did).

        Example:
            >>> BinaryLinear(3, 2, weight_quantizer="none")
            BinaryLinear(in_features=3, out_features=2, bias=False, weight_quantizer=NoQuantizer(precision=32))
        """
        quantizers = [f"weight_quantizer={quantizer_name(self.weight_quantizer)}"]
        if not isinstance(self.input_quantizer, NoQuantizer):
            quantizers.append(f"input_quantizer={quantizer_name(self.input_quantizer)}")
        return ", ".join([super().extra_repr(), *quantizers])  # type: ignore[misc]

    def __getstate__(self) -> dict[str, Any]:
        """The gradient buffer is scratch memory: a pickled, saved (``torch.save(model)``) or copied layer keeps none
        (it would double the file of a large layer); the copy makes its own at its first training pass."""
        return {**super().__getstate__(), "_grad_buffer": None}

    @property
    def is_binary(self) -> bool:
        """True unless the weight quantizer keeps real weights (``"none"``): the layer then has a hidden weight, which
        the optimizers consolidate, whatever the quantizer's precision."""
        return not isinstance(self.weight_quantizer, NoQuantizer)

    @property
    def weight_bits(self) -> int:
        """Bits per weight the forward pass shows: the weight quantizer's precision (:func:`quantizer_bits`).

        Example:
            >>> BinaryLinear(3, 2).weight_bits, BinaryLinear(3, 2, weight_quantizer=torch.tanh).weight_bits
            (1, 32)
        """
        return quantizer_bits(self.weight_quantizer, "weight_quantizer")

    @property
    def _buffered(self) -> bool:
        """Whether the forward pass may use the sign buffers (the unclipped straight-through sign; not inside a
        torch.func transform, whose wrapped weights have no storage to cache signs of, nor for a parametrized weight,
        a Bayesian synapse's sample, which is a new tensor at every pass: the quantizer runs there)."""
        return (isinstance(self.weight_quantizer, SteSign) and self.weight_quantizer.clip_value is None
                and not in_function_transform() and not parametrize.is_parametrized(self, "weight"))

    def signs(self, dtype: torch.dtype | None = None) -> Tensor:
        """``sign(W_h)`` as ``dtype`` (default: the weight's), from the layer's persistent buffers: the tensor returned
        is such a buffer, which a later forward pass may rewrite in place, so ``.clone()`` what you keep (to count
        sign flips between steps, say).

        Example:
            >>> BinaryLinear(3, 2).signs().abs().unique()
            tensor([1.])
        """
        return self._sign_buffers.signs(self.weight, dtype)

    def signs_as(self, *dtypes: torch.dtype | str) -> tuple[Any, ...]:
        """``sign(W_h)`` in each of ``dtypes``, written in one pass over the hidden weights (buffers, as
        :meth:`signs` returns); :data:`bnn.sign_buffers.PACKED` asks for them as bits for the popcount product.

        Example:
            >>> [s.dtype for s in BinaryLinear(3, 2).signs_as(torch.int8, torch.float32)]
            [torch.int8, torch.float32]
        """
        return self._sign_buffers.signs_as(self.weight, dtypes)

    def visible_weight(self) -> Tensor:
        """The weight the forward pass uses (±1 for a binary synapse).

        The weight is read once: a parametrized one (a Bayesian synapse of :func:`metaspike.bayesianize`) is a new
        sample at each read, and the product and its straight-through gradient must see the same one."""
        weight = self.weight
        if self.is_binary:
            mark_hidden_weight(weight)
        if not self._buffered:
            return self.weight_quantizer(weight)
        signs = self.signs()
        if (torch.is_grad_enabled() and weight.requires_grad) or has_tangent(weight):
            return _StraightThrough.apply(weight, signs)
        return signs

    def gradient_buffer(self) -> Tensor:
        """A weight-sized buffer that the weight gradient is written into when its memory is free."""
        buffer, weight = self._grad_buffer, self.weight
        if buffer is None or buffer.shape != weight.shape or buffer.device != weight.device or buffer.dtype != weight.dtype:
            buffer = torch.empty_like(weight, memory_format=torch.contiguous_format)
            self._grad_buffer = buffer
        return buffer


def quantizer_name(quantizer: Quantizer) -> str:
    """How a layer prints ``quantizer``, the same in every process: a built-in one as its settings, a callable of one's
    own by its qualified name (its ``repr`` may hold its address).

    Example:
        >>> quantizer_name(get_quantizer("ste_sign")), quantizer_name(torch.tanh)
        ('SteSign(clip_value=1.0, precision=1)', 'torch.tanh')
    """
    if type(quantizer).__module__ == "metaspike.quantizers":
        return repr(quantizer)
    named = quantizer if hasattr(quantizer, "__qualname__") else type(quantizer)
    name = named.__name__ if isinstance(named, types.BuiltinFunctionType) else named.__qualname__  # (torch's own)
    return f"{getattr(named, '__module__', None) or '?'}.{name}"


def quantizer_bits(quantizer: Quantizer, name: str) -> int:
    """The bits per value ``quantizer`` gives: its ``precision`` (``metaspike.quantizers``' objects carry theirs: 1 for
    the signs, 32 for ``"none"``), 32 for a callable without one (its values may be any real numbers); a
    ``precision`` that is not an integer >= 1 is one ``ValueError`` naming ``name``.

    Example:
        >>> quantizer_bits(get_quantizer("ste_sign"), "input_quantizer"), quantizer_bits(torch.tanh, "input_quantizer")
        (1, 32)
    """
    bits = getattr(quantizer, "precision", 32)
    if not is_whole(bits, 1):
        raise ValueError(f"{name} {quantizer!r} has precision {bits!r}; a quantizer's precision is its bits per value, "
                         "an integer >= 1")
    return int(bits)


def _check_bias(bias: object) -> bool:
    """``bias`` if it is ``True`` or ``False`` (a numpy bool taken), else one line: a number or a quantizer's name there
    is an argument given in the wrong place."""
    if not isinstance(bias, (bool, np.bool_)):
        raise ValueError(f"bias must be True or False, got {bias!r} (the layers take nn.Linear's and nn.Conv2d's "
                         "positional arguments; give the others by keyword)")
    return bool(bias)


def check_widths(**widths: object) -> tuple[int, ...]:
    """A layer's widths (features or channels) as ints, each a positive integer (numpy integers taken), else one line
    naming it (torch would fail inside ``torch.empty`` on a negative or fractional width and accept a zero one).

    Example:
        >>> check_widths(in_features=784, out_features=10)
        (784, 10)
    """
    for name, value in widths.items():
        if not is_whole(value, 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return tuple(int(v) for v in widths.values())  # type: ignore[call-overload]


def factory_kwargs(device: object, dtype: object) -> dict[str, object]:
    """A layer's ``device`` and ``dtype`` arguments as ``nn.Linear``/``nn.Conv2d`` take them: a device this machine has
    (or its name; ``meta`` too) or ``None``, a floating-point dtype or ``None``, else one line naming the argument
    (torch's errors came from inside its parameter initialisation).

    Example:
        >>> factory_kwargs("cpu", torch.float64)
        {'device': device(type='cpu'), 'dtype': torch.float64}
    """
    if device is not None:
        device = check_device(device, meta_allowed=True)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype (torch.float32, torch.float64, torch.bfloat16, "
                         f"torch.float16) or None, got {dtype!r}")
    return {"device": device, "dtype": dtype}


def check_conv_geometry(kernel_size: object, stride: object, padding: object, dilation: object) -> None:
    """A 2-D convolution's ``kernel_size``, ``stride`` and ``dilation`` (an int >= 1 or two, in a tuple or a list, as
    ``nn.Conv2d`` takes them), and ``padding`` (an int >= 0, two, ``"same"`` or ``"valid"``), else one line naming the
    argument (torch found out in the forward pass, inside oneDNN).

    Example:
        >>> check_conv_geometry(3, 1, "same", (1, 2))
        >>> check_conv_geometry([3, 3], [2, 2], [1, 1], 1)
    """
    def pair(value: object, least: int) -> bool:  # (a one-element sequence fails in the forward pass, inside torch)
        values = value if isinstance(value, (tuple, list)) else (value, value)
        return len(values) == 2 and all(is_whole(v, least) for v in values)

    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if not pair(value, 1):
            raise ValueError(f"{name} must be an integer >= 1 or a pair of them, got {value!r}")
    if padding not in ("same", "valid") and not pair(padding, 0):
        raise ValueError(f"padding must be an integer >= 0, a pair of them, 'same' or 'valid', got {padding!r}")


class BinaryLinear(_BinaryWeights, nn.Linear):
    """``nn.Linear`` whose forward pass uses ``sign(W_h)``; ``weight`` holds the hidden weights ``W_h``.

    Args:
        in_features, out_features: as in ``nn.Linear``.
        bias: add a real-valued bias (the paper's networks have none).
        weight_quantizer: ``"ste_sign_unclipped"`` (binary, default), ``"ste_sign"`` (binary, Larq's
            gradient clipped at 1), ``"none"`` (real weights) or a quantizer object/callable.
        input_quantizer: quantizer applied to the input (``None``: real-valued input).
        init_width: hidden weights start uniform in ``[-w/2, w/2]``; ``None`` keeps torch's init.
        scale: learned output gain (:class:`metaspike.gain.OutputGain`, started at the mean ``|W|`` of
            torch's init): ``"channel"``, ``"layer"`` or ``None`` (none: for a layer followed by BatchNorm).
        precision: ``"float32"`` (default) or ``"bfloat16"``: the precision of the backward products
            (input and weight gradients) of large layers; see :mod:`bnn.binary_linear`.
        device, dtype: where the parameters live and their floating-point type, as in ``nn.Linear`` (keyword only).

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
        weight_quantizer: str | Quantizer | None = "ste_sign_unclipped",
        input_quantizer: str | Quantizer | None = None,
        init_width: float | None = 0.1,
        precision: str = "float32",
        scale: str | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        in_features, out_features = check_widths(in_features=in_features, out_features=out_features)
        super().__init__(in_features, out_features, bias=_check_bias(bias), **factory_kwargs(device, dtype))
        self._setup(weight_quantizer, input_quantizer, init_width, scale)
        self.precision = precision

    @property
    def precision(self) -> str:
        """The precision of the backward products, ``"float32"`` or ``"bfloat16"``; may be changed at any time."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = check_precision(value)

    def forward(self, x: Tensor) -> Tensor:
        check_features(self, x, self.in_features, -1, "features in the last dimension")
        x = _quantized_input(self, x)
        if self._buffered:
            mark_hidden_weight(self.weight)
            return binary_linear(x, self)
        return F.linear(x, self.visible_weight(), self.bias)


class BinaryConv2d(_BinaryWeights, nn.Conv2d):
    """``nn.Conv2d`` whose forward pass uses ``sign(W_h)``: ``nn.Conv2d``'s arguments in its order (``stride``,
    ``padding``, ``dilation``, ``groups``, ``bias`` (off by default), ``padding_mode``), then those of
    :class:`BinaryLinear` (``device`` and ``dtype`` among them), by keyword only. For Conv1d, Conv3d or transposed
    convolutions, :func:`metaspike.binarize` an ``nn`` layer.

    Example:
        >>> conv = BinaryConv2d(1, 8, kernel_size=3, padding=1)
        >>> conv(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 8, 28, 28])
        >>> BinaryConv2d(8, 8, 3, 1, "same", 2, 8, False, "reflect", init_width=0.05).weight.shape
        torch.Size([8, 1, 3, 3])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        *,
        weight_quantizer: str | Quantizer | None = "ste_sign_unclipped",
        input_quantizer: str | Quantizer | None = None,
        init_width: float | None = 0.1,
        scale: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        in_channels, out_channels = check_widths(in_channels=in_channels, out_channels=out_channels)
        check_conv_geometry(kernel_size, stride, padding, dilation)
        # (torch: a TypeError from inside torch.empty for groups=2.0; a divisor is checked here too, with the rest)
        if not is_whole(groups, 1) or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups must be a positive integer that divides in_channels ({in_channels}) and "
                             f"out_channels ({out_channels}), got {groups!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=_check_bias(bias), padding_mode=padding_mode,
                         **factory_kwargs(device, dtype))
        self._setup(weight_quantizer, input_quantizer, init_width, scale)

    def forward(self, x: Tensor) -> Tensor:
        check_conv_input(self, x, 4)
        return self._conv_forward(_quantized_input(self, x), self.visible_weight(), self.bias)


def check_spatial_size(conv: nn.Conv2d, x: Tensor) -> None:
    """One line, instead of torch's error from inside the convolution, when the input's height or width is too small
    for the layer: empty, with the padding on both sides smaller than the kernel's span
    ``dilation·(kernel_size - 1) + 1`` (``nn.Conv2d``'s condition: the stride only thins out the positions that fit),
    or not larger than a reflected padding (not smaller than a circular one)."""
    size = tuple(x.shape[-2:])
    span = tuple(d * (k - 1) + 1 for k, d in zip(conv.kernel_size, conv.dilation))
    if conv.padding == "same":  # torch pads d·(k - 1) in all, the larger half after: every input of size >= 1 fits
        sides = tuple(((s - 1) // 2, s - 1 - (s - 1) // 2) for s in span)
    elif conv.padding == "valid":
        sides = ((0, 0), (0, 0))
    else:
        sides = tuple((p, p) for p in conv.padding)
    name, shown = layer_name(conv), "x".join(map(str, size))
    if any(n < 1 or n + low + high < s for n, (low, high), s in zip(size, sides, span)):  # (torch: no empty image)
        least = "x".join(str(max(s - low - high, 1)) for s, (low, high) in zip(span, sides))
        raise ValueError(f"{name} takes inputs of at least {least} pixels (height x width: its kernel spans "
                         f"{'x'.join(map(str, span))} with kernel_size {conv.kernel_size} and dilation "
                         f"{conv.dilation}, padding {conv.padding}), got {shown}")
    wraps = {"reflect": lambda n, pad: pad >= n, "circular": lambda n, pad: pad > n}.get(conv.padding_mode)
    if wraps is not None and any(wraps(n, max(side)) for n, side in zip(size, sides)):
        widest = "x".join(str(max(side)) for side in sides)
        relation = "larger than" if conv.padding_mode == "reflect" else "at least as large as"
        raise ValueError(f"{name} with padding_mode {conv.padding_mode!r} takes inputs {relation} its padding "
                         f"({widest} pixels on a side, height x width), got {shown}")


class SignActivation(nn.Module):
    """Binary activation: ``sign(x)`` forward, gradient passed where ``|x| <= clip_value`` (Larq's ``ste_sign``).

    Example:
        >>> SignActivation()(torch.tensor([-0.5, 0.0, 3.0]))
        tensor([-1.,  1.,  1.])
    """

    def __init__(self, clip_value: float = 1.0) -> None:
        super().__init__()
        self.clip_value = check_clip_value(clip_value)

    def forward(self, x: Tensor) -> Tensor:
        return ste_sign(x, self.clip_value)


class MagnitudeGate(nn.Module):
    """0/1 activation: ``1`` where ``|x| > width`` (:func:`metaspike.quantizers.magnitude_gate`, BiMU's reverse gate).

    Example:
        >>> MagnitudeGate()(torch.tensor([-1.5, 0.3, 1.0, 2.0]))
        tensor([1., 0., 0., 1.])
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.width = finite_number("width", width, positive=True)

    def forward(self, x: Tensor) -> Tensor:
        return magnitude_gate(x, self.width)

    def extra_repr(self) -> str:
        return f"width={self.width:g}"


@dataclass(frozen=True)
class _FusedMagnitudeGate(Activation):
    """:class:`MagnitudeGate` in a fused Bayesian step: the forward and the gradient of
    :func:`metaspike.quantizers.magnitude_gate`."""

    width: float

    def forward(self, h: Tensor) -> Tensor:
        return (h.abs() > self.width).to(h.dtype)

    def backward(self, grad: Tensor, h: Tensor, out: Tensor) -> Tensor:
        return grad * magnitude_gate_slope(h, self.width).to(grad.dtype)


register_fused_activation(MagnitudeGate, lambda module: _FusedMagnitudeGate(module.width))
