"""The binary synapse: ``sign`` in the forward pass, a straight-through gradient in the backward pass.

* :func:`ste_sign` binarizes hidden weights; the gradient passes unchanged (straight through), so
  the hidden weight ``W_h`` keeps accumulating updates and its magnitude can act as a consolidation
  variable.
* :func:`clipped_sign` binarizes activations; the gradient passes only where ``|x| <= 1``.
* :func:`binarize` puts :func:`ste_sign` onto the weights of any existing model (snnTorch, Norse or
  plain torch) with ``torch.nn.utils.parametrize``: the hidden weights stay the trainable
  parameters, the forward pass sees ±1.
* :func:`hidden_weights` returns the hidden weights of a model, to hand to the optimizer.

``sign(0)`` is taken as ``+1`` so that the forward pass is strictly binary.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from metaspike.compiled import LazyCompiled

__all__ = [
    "ste_sign",
    "clipped_sign",
    "get_quantizer",
    "available_quantizers",
    "BinarySynapse",
    "SignWeight",
    "binarize",
    "hidden_weights",
    "weight_matrices",
    "binary_modules",
    "binarized_once",
]

Quantizer = Callable[[Tensor], Tensor]


def _sign(x: Tensor, out: Tensor | None = None) -> Tensor:
    # sign(x) + 0.5 lies in {-0.5, 0.5, 1.5}, so its sign maps 0 (and -0.0) to +1; several times faster
    # on CPU than torch.where(x >= 0, 1.0, -1.0), which builds a mask and two scalar tensors
    return torch.sign(x, out=out).add_(0.5).sign_()


class _SteSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return _sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


class _StraightThrough(torch.autograd.Function):
    """Shows precomputed ``signs`` in the forward pass; the gradient reaches ``hidden`` unchanged."""

    @staticmethod
    def forward(ctx, hidden: Tensor, signs: Tensor) -> Tensor:  # type: ignore[override]
        return signs.view_as(signs)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


class _ClippedSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def ste_sign(x: Tensor) -> Tensor:
    """``sign(x)`` (with ``sign(0) = +1``) whose gradient is passed straight through.

    Example:
        >>> w = torch.tensor([-0.3, 0.0, 2.0], requires_grad=True)
        >>> ste_sign(w)
        tensor([-1.,  1.,  1.], grad_fn=<_SteSignBackward>)
    """
    return _SteSign.apply(x)


def clipped_sign(x: Tensor) -> Tensor:
    """``sign(x)`` whose gradient passes only where ``|x| <= 1`` (hard-tanh straight-through).

    Example:
        >>> x = torch.tensor([-2.0, 0.5], requires_grad=True)
        >>> clipped_sign(x).sum().backward(); x.grad
        tensor([0., 1.])
    """
    return _ClippedSign.apply(x)


def _identity(x: Tensor) -> Tensor:
    return x


_QUANTIZERS: dict[str, Quantizer] = {"ste_sign": ste_sign, "clipped_sign": clipped_sign, "none": _identity}


def available_quantizers() -> list[str]:
    """Names accepted by :func:`get_quantizer`.

    Example:
        >>> available_quantizers()
        ['clipped_sign', 'none', 'ste_sign']
    """
    return sorted(_QUANTIZERS)


def get_quantizer(quantizer: str | Quantizer | None) -> Quantizer:
    """Resolve a quantizer given by name, as a callable, or ``None`` (no quantization).

    Example:
        >>> get_quantizer("ste_sign")(torch.tensor([-0.2]))
        tensor([-1.])
    """
    if quantizer is None:
        return _identity
    if isinstance(quantizer, str):
        try:
            return _QUANTIZERS[quantizer]
        except KeyError:
            raise ValueError(
                f"unknown quantizer {quantizer!r}; available: {', '.join(available_quantizers())}"
            ) from None
    if not callable(quantizer):
        raise ValueError(f"quantizer must be a name, a callable or None, got {quantizer!r}")
    return quantizer


COMPILED_SIGNS_MIN_NUMEL = 1 << 20
"""Hidden weights with at least this many entries get their signs from one compiled pass."""


def _signs_into(weight: Tensor, outs: list[Tensor]) -> None:
    _sign(weight, out=outs[0])
    for out in outs[1:]:
        out.copy_(outs[0])


_compiled_signs_into = LazyCompiled(_signs_into, "sign buffers of a binary layer")  # one fused pass


def _write_signs(weight: Tensor, outs: list[Tensor]) -> None:
    """Write ``sign(weight)`` (``sign(0) = +1``) into every tensor of ``outs`` (the first has the
    weight's dtype)."""
    large = weight.numel() >= COMPILED_SIGNS_MIN_NUMEL and not torch.compiler.is_compiling()
    with torch.no_grad():
        (_compiled_signs_into if large else _signs_into)(weight, outs)


@dataclass
class _SignBuffers:
    weight: weakref.ref
    tensors: dict[torch.dtype, Tensor]
    version: int | None = None


class BinarySynapse:
    """Mixin for layers whose ``weight`` parameter is a hidden weight seen as ±1 in the forward pass.

    Layers of the ``bnn`` API inherit from it, so :func:`hidden_weights` finds them without
    ``metaspike`` importing ``bnn``.
    """

    weight: nn.Parameter
    weight_quantizer: Quantizer

    @property
    def is_binary(self) -> bool:
        """True when the weight quantizer binarizes (anything but ``"none"``)."""
        return self.weight_quantizer is not _identity

    def visible_weight(self) -> Tensor:
        """The weight the forward pass uses (±1 for a binary synapse).

        For the default ``ste_sign`` quantizer the ±1 weights live in one buffer per layer, rewritten
        in place only when the hidden weights change (an optimizer step bumps their version): several
        forward passes per step, and evaluation, reuse it, and training does not allocate (and page
        in) a fresh weight-sized tensor every step.
        """
        if self.weight_quantizer is not ste_sign:
            return self.weight_quantizer(self.weight)
        signs = self._current_signs()
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return _StraightThrough.apply(self.weight, signs)
        return signs

    def _current_signs(self, dtype: torch.dtype | None = None) -> Tensor:
        """The ±1 buffer of ``dtype`` (default: the weight's), rewritten when the weight has changed.

        All buffers of a layer (float32, and bfloat16 where :mod:`metaspike.binary_linear` uses it)
        are written together, in one pass over the hidden weights for large layers.
        """
        weight = self.weight
        buffers = self.__dict__.get("_sign_buffers")
        if buffers is None or buffers.weight() is not weight:
            buffers = _SignBuffers(weakref.ref(weight), {weight.dtype: torch.empty_like(weight)})
            self.__dict__["_sign_buffers"] = buffers
        dtype = dtype or weight.dtype
        if dtype not in buffers.tensors:
            buffers.tensors[dtype] = torch.empty_like(weight, dtype=dtype)
            buffers.version = None
        if buffers.version != weight._version:
            _write_signs(weight, list(buffers.tensors.values()))
            buffers.version = weight._version
        return buffers.tensors[dtype]

    def _gradient_buffer(self) -> Tensor:
        """A weight-sized buffer that the weight gradient is written into when its memory is free."""
        buffer = self.__dict__.get("_grad_buffer")
        weight = self.weight
        if buffer is None or buffer.shape != weight.shape or buffer.device != weight.device:
            buffer = torch.empty_like(weight, memory_format=torch.contiguous_format)
            self.__dict__["_grad_buffer"] = buffer
        return buffer


class SignWeight(nn.Module):
    """Parametrization that shows ``ste_sign(W_h)`` in place of the hidden weight ``W_h``."""

    def forward(self, hidden: Tensor) -> Tensor:
        return ste_sign(hidden)


_DEFAULT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def binarize(
    module: nn.Module,
    layer_types: Sequence[type[nn.Module]] = _DEFAULT_LAYERS,
    exclude: Sequence[str] = (),
) -> nn.Module:
    """Turn the weights of ``module``'s linear/conv layers into binary synapses, in place.

    Each selected layer's ``weight`` becomes ``ste_sign(W_h)``; ``W_h`` stays the trainable
    parameter (reachable through :func:`hidden_weights`). Biases stay real-valued. Works on any
    model, e.g. an snnTorch or Norse network, without changing its neurons.

    Args:
        module: the model to change.
        layer_types: which layer classes get binary weights.
        exclude: qualified names of layers to leave real-valued (e.g. ``["0"]`` for a first layer).

    Example:
        >>> net = binarize(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()))
        >>> sorted(set(net[0].weight.abs().flatten().tolist()))
        [1.0]
    """
    names = {name for name, _ in module.named_modules()}
    unknown = sorted(set(exclude) - names)
    if unknown:
        raise ValueError(f"exclude names layers that do not exist: {unknown}")
    changed = 0
    for name, layer in module.named_modules():
        if not isinstance(layer, tuple(layer_types)) or name in exclude or isinstance(layer, BinarySynapse):
            continue
        if not isinstance(getattr(layer, "weight", None), nn.Parameter) and not parametrize.is_parametrized(layer, "weight"):
            continue
        if _has_sign_parametrization(layer):
            continue
        parametrize.register_parametrization(layer, "weight", SignWeight())
        changed += 1
    if changed == 0 and not any(True for _ in binary_modules(module)):
        kinds = ", ".join(t.__name__ for t in layer_types)
        raise ValueError(f"{type(module).__name__} has no layer to binarize (looked for {kinds})")
    return module


def _has_sign_parametrization(layer: nn.Module) -> bool:
    return parametrize.is_parametrized(layer, "weight") and any(
        isinstance(p, SignWeight) for p in layer.parametrizations.weight  # type: ignore[union-attr]
    )


def binary_modules(module: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Parameter]]:
    """Yield ``(name, layer, hidden_weight)`` for every binary synapse layer in ``module``.

    Example:
        >>> net = binarize(torch.nn.Sequential(torch.nn.Linear(4, 3)))
        >>> [name for name, _, _ in binary_modules(net)]
        ['0']
    """
    for name, layer in module.named_modules():
        if isinstance(layer, BinarySynapse) and layer.is_binary:
            yield name, layer, layer.weight
        elif _has_sign_parametrization(layer):
            yield name, layer, layer.parametrizations.weight.original  # type: ignore[union-attr]


def hidden_weights(module: nn.Module) -> list[nn.Parameter]:
    """The hidden weights of every binary synapse in ``module``.

    Example:
        >>> net = binarize(torch.nn.Sequential(torch.nn.Linear(4, 3)))
        >>> [tuple(w.shape) for w in hidden_weights(net)]
        [(3, 4)]
    """
    return [weight for _, _, weight in binary_modules(module)]


def weight_matrices(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(layer name, hidden weight)`` of each binary synapse layer, or, for a model without binary
    synapses, of each parameter with more than one dimension (the full-precision variant).

    Example:
        >>> [name for name, _ in weight_matrices(torch.nn.Sequential(torch.nn.Linear(3, 2)))]
        ['0']
    """
    found = [(name, weight) for name, _, weight in binary_modules(model)]
    if found:
        return found
    return [(name.rsplit(".", 1)[0], p) for name, p in model.named_parameters() if p.dim() > 1]


def binarized_once() -> AbstractContextManager:
    """Context in which each parametrized binary weight is computed once and reused.

    Use it around a spiking time loop so the sign is taken once per optimizer step, not once per
    time step.

    Example:
        >>> net = binarize(torch.nn.Sequential(torch.nn.Linear(4, 3)))
        >>> with binarized_once():
        ...     out = sum(net(torch.randn(2, 4)) for _ in range(5))
    """
    return parametrize.cached()
