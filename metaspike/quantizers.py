"""Quantizers: objects that turn real values into low-precision ones and carry their precision (Larq's idea).

* :func:`ste_sign` / :class:`SteSign` ``(clip_value=1.0)``: ``sign(x)`` (``sign(0) = +1``, so the result
  is strictly ±1) with a straight-through gradient passed where ``|x| <= clip_value``, as Larq's
  ``ste_sign``; ``clip_value=None`` passes it everywhere. Activations use the clipped form.
* ``"ste_sign_unclipped"``: the binary synapse's weight quantizer. The hidden weight ``W_h`` must keep
  accumulating updates beyond ``|W_h| = 1`` (its magnitude is the consolidation variable), so its
  gradient is never clipped.
* ``"none"``: real values (32-bit).

Beside them, :func:`magnitude_gate`: a 0/1 activation that fires where ``|x|`` exceeds a width (BiMU's
"reverse gate"), with a surrogate gradient.

Example:
    >>> get_quantizer("ste_sign").precision, get_quantizer("none").precision
    (1, 32)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metaspike import function_transforms
from metaspike.checks import finite_number, unknown_name

__all__ = ["binary_sign", "ste_sign", "check_clip_value", "magnitude_gate", "magnitude_gate_slope", "SteSign", "NoQuantizer", "Quantizer",
           "get_quantizer", "available_quantizers"]


def binary_sign(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``sign(x)`` with ``sign(0) = +1`` (so strictly ±1), into ``out`` when given.

    Example:
        >>> binary_sign(torch.tensor([-0.5, 0.0, -0.0, 2.0]))
        tensor([-1.,  1.,  1.,  1.])
    """
    if not x.is_floating_point():  # (the in-place steps below raised torch's "can't be cast" for integer tensors)
        raise ValueError(f"the tensor to binarize must be floating point (its signs are ±1.0), got {x.dtype}; "
                         "convert it first, e.g. x.float()")
    # sign(x) + 0.5 lies in {-0.5, 0.5, 1.5}, so its sign maps 0 (and -0.0) to +1; several times faster on
    # CPU than torch.where(x >= 0, 1.0, -1.0), which builds a mask and two scalar tensors
    if out is None and torch.compiler.is_compiling():
        # out of place: torch 2.11 compiled a straight-through sign with in-place steps in its forward pass to a
        # zero gradient (2.13 did not); a compiled graph fuses the three steps anyway
        return torch.sign(torch.sign(x) + 0.5)
    return torch.sign(x, out=out).add_(0.5).sign_()


def _signs_keeping_nan(x: Tensor) -> Tensor:
    """:func:`binary_sign` of ``x``, NaN where ``x`` is NaN: a sign activation that read NaN as +1 (CPUs' ``sign(NaN)``
    is 0) turned one NaN pixel, spread over a batch by its BatchNorm statistics, into plausible scores for every
    sample of the batch; kept NaN, it shows in the loss."""
    signs = binary_sign(x)
    # clamping x to [s, s] gives s, and NaN where x is NaN (clamp passes NaN on): two float passes, three times faster
    # on CPU than torch.where over an isnan mask (bool results take torch's slower loops: 50 µs against 160 for
    # 100 x 1024, one thread of an AMD EPYC Zen 4)
    return torch.clamp(x, min=signs, max=signs)


def _straight_through(grad: Tensor, x: Tensor, clip_value: float) -> Tensor:
    """``grad`` where ``|x| <= clip_value``, ``grad · 0`` elsewhere (NaN ``x`` included): the comparison written as
    0/1 into a tensor of ``grad``'s dtype, then multiplied (37 µs against 137 for a bool mask converted, 100 x 1024,
    one thread of an AMD EPYC Zen 4; the same values, ±0 and NaN alike). Inside a torch.func transform, where an
    ``out=`` tensor cannot take batched values, the mask is made as a bool tensor and converted."""
    if function_transforms.in_function_transform():
        return grad * (x.abs() <= clip_value).to(grad.dtype)
    mask = torch.empty_like(x, dtype=grad.dtype)  # (x's layout, as grad * mask takes it)
    return torch.le(x.detach().abs(), clip_value, out=mask).mul_(grad)


class _SteSign(torch.autograd.Function):
    @staticmethod
    def remember(ctx: Any, x: Tensor, clip_value: float | None) -> None:
        ctx.clip_value = clip_value
        if clip_value is not None:
            ctx.save_for_backward(x)

    @staticmethod
    def forward(ctx, x: Tensor, clip_value: float | None) -> Tensor:  # type: ignore[override]
        _SteSign.remember(ctx, x, clip_value)
        return _signs_keeping_nan(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        if ctx.clip_value is None:
            return grad, None
        (x,) = ctx.saved_tensors
        return _straight_through(grad, x, ctx.clip_value), None


class _TransformableSteSign(_SteSign):
    """:class:`_SteSign` in the form torch.func transforms run (:mod:`metaspike.function_transforms`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, clip_value: float | None) -> Tensor:  # type: ignore[override]
        return _signs_keeping_nan(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        _SteSign.remember(ctx, *inputs)


def ste_sign(x: Tensor, clip_value: float | None = 1.0) -> Tensor:
    """``sign(x)`` (``sign(0) = +1``; NaN stays NaN) whose gradient passes straight through where
    ``|x| <= clip_value`` (everywhere for ``clip_value=None``), as Larq's ``ste_sign``.

    Example:
        >>> x = torch.tensor([-2.0, 0.0, 0.5], requires_grad=True)
        >>> ste_sign(x).sum().backward(); x.grad
        tensor([0., 1., 1.])
    """
    return function_transforms.apply(_SteSign, _TransformableSteSign, x, check_clip_value(clip_value))


def check_clip_value(clip_value: float | None) -> float | None:
    """``clip_value`` if it is a number ``> 0`` or ``None``, else one ``ValueError``.

    Example:
        >>> check_clip_value(1.0)
        1.0
    """
    if clip_value is not None and not (isinstance(clip_value, (int, float)) and not isinstance(clip_value, bool)
                                       and clip_value > 0):
        raise ValueError(f"clip_value must be a number > 0 or None, got {clip_value!r}")
    return clip_value


def _gate(x: Tensor, width: float) -> Tensor:
    return (x.abs() > width).to(x.dtype)


class _MagnitudeGate(torch.autograd.Function):
    @staticmethod
    def remember(ctx: Any, x: Tensor, width: float) -> None:
        ctx.save_for_backward(x)
        ctx.width = width

    @staticmethod
    def forward(ctx, x: Tensor, width: float) -> Tensor:  # type: ignore[override]
        _MagnitudeGate.remember(ctx, x, width)
        return _gate(x, width)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * magnitude_gate_slope(x, ctx.width).to(grad.dtype), None


class _TransformableMagnitudeGate(_MagnitudeGate):
    """:class:`_MagnitudeGate` in the form torch.func transforms run (:mod:`metaspike.function_transforms`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, width: float) -> Tensor:  # type: ignore[override]
        return _gate(x, width)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        _MagnitudeGate.remember(ctx, *inputs)


def magnitude_gate_slope(x: Tensor, width: float) -> Tensor:
    """The surrogate derivative of :func:`magnitude_gate` at ``x``: ``sign(x)`` within ``width/2`` of the nearer
    threshold ``±width``, else ``0``.

    Example:
        >>> magnitude_gate_slope(torch.tensor([-1.2, 0.2, 0.8, 3.0]), 1.0)
        tensor([-1.,  0.,  1.,  0.])
    """
    distance = (x.abs() - width).abs()  # from the nearer of the two thresholds ±width
    return torch.where(distance < width / 2, x.sign(), 0.0)


def magnitude_gate(x: Tensor, width: float = 1.0) -> Tensor:
    """``1`` where ``|x| > width``, else ``0`` (the "reverse gate" activation of the BiMU paper's networks).

    The gradient is a box of width ``width`` around each threshold, signed as ``|x|`` grows:
    ``+1`` on ``(width/2, 3·width/2)``, ``−1`` on ``(−3·width/2, −width/2)``, ``0`` elsewhere. After a
    LayerNorm, ``width = 1`` lets about a third of the units fire.

    Example:
        >>> x = torch.tensor([-1.2, -0.2, 0.9, 2.0], requires_grad=True)
        >>> y = magnitude_gate(x); y.sum().backward(); y, x.grad
        (tensor([1., 0., 0., 1.], grad_fn=<_MagnitudeGateBackward>), tensor([-1.,  0.,  1.,  0.]))
    """
    # (a complex |x| has no signed slope to pass back; what is not a tensor passes on as it is: torch.fx's proxies)
    if isinstance(x, (list, tuple, int, float)) or isinstance(x, Tensor) and not x.is_floating_point():
        raise ValueError("magnitude_gate's input must be a real floating-point tensor, got "
                         f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    return function_transforms.apply(_MagnitudeGate, _TransformableMagnitudeGate, x,
                                     finite_number("width", width, positive=True))


@dataclass(frozen=True)
class SteSign:
    """The quantizer object of :func:`ste_sign`: 1-bit, ``clip_value`` as there.

    Example:
        >>> SteSign(clip_value=None)(torch.tensor([-0.3]))
        tensor([-1.])
    """

    clip_value: float | None = 1.0
    precision: int = 1

    def __call__(self, x: Tensor) -> Tensor:
        return ste_sign(x, self.clip_value)


@dataclass(frozen=True)
class NoQuantizer:
    """No quantization: real values pass unchanged (32-bit).

    Example:
        >>> NoQuantizer()(torch.tensor([0.25]))
        tensor([0.2500])
    """

    precision: int = 32

    def __call__(self, x: Tensor) -> Tensor:
        return x


Quantizer = Callable[[Tensor], Tensor]

_QUANTIZERS: dict[str, Quantizer] = {
    "ste_sign": SteSign(1.0),
    "ste_sign_unclipped": SteSign(None),
    "none": NoQuantizer(),
}


def available_quantizers() -> list[str]:
    """Names accepted by :func:`get_quantizer`.

    Example:
        >>> available_quantizers()
        ['none', 'ste_sign', 'ste_sign_unclipped']
    """
    return sorted(_QUANTIZERS)


def get_quantizer(quantizer: str | Quantizer | None) -> Quantizer:
    """Resolve a quantizer given by name, as an object or callable, or ``None`` (no quantization).

    Example:
        >>> get_quantizer("ste_sign")(torch.tensor([-0.2]))
        tensor([-1.])
    """
    if quantizer is None:
        return _QUANTIZERS["none"]
    if isinstance(quantizer, str):
        try:
            return _QUANTIZERS[quantizer]
        except KeyError:
            raise ValueError(unknown_name("quantizer", quantizer, available_quantizers())) from None
    if not callable(quantizer):
        raise ValueError(f"quantizer must be a name, a callable or None, got {quantizer!r}")
    return quantizer
