"""Spike functions: a heaviside step forward and a surrogate gradient backward, in both forms torch runs them (plain
autograd, and the form torch.func transforms take: :mod:`metaspike.function_transforms`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from metaspike import function_transforms

__all__ = ["heaviside", "surrogate_spike"]

#: ``(x, grad, *params) -> the gradient that reaches x``: a surrogate of the step's derivative times ``grad``.
SurrogateGradient = Callable[..., Tensor]


def heaviside(x: Tensor) -> Tensor:
    """``x > 0`` in ``x``'s dtype: the spikes of neurons whose membrane, less its threshold, is ``x``.

    Example:
        >>> heaviside(torch.tensor([-0.5, 0.0, 0.5]))
        tensor([0., 0., 1.])
    """
    return (x > 0).to(x.dtype)


class _SurrogateSpike(torch.autograd.Function):
    """:func:`heaviside` forward; ``gradient(x, grad, *params)`` backward."""

    @staticmethod
    def remember(ctx: Any, x: Tensor, gradient: SurrogateGradient, *params: Any) -> None:
        ctx.save_for_backward(x)
        ctx.gradient, ctx.params = gradient, params

    @staticmethod
    def forward(ctx: Any, x: Tensor, gradient: SurrogateGradient, *params: Any) -> Tensor:  # type: ignore[override]
        _SurrogateSpike.remember(ctx, x, gradient, *params)
        return heaviside(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return (ctx.gradient(x, grad, *ctx.params), None, *(None for _ in ctx.params))


class _TransformableSurrogateSpike(_SurrogateSpike):
    """:class:`_SurrogateSpike` in the form torch.func transforms run (:mod:`metaspike.function_transforms`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, gradient: SurrogateGradient, *params: Any) -> Tensor:  # type: ignore[override]
        return heaviside(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        _SurrogateSpike.remember(ctx, *inputs)


def surrogate_spike(x: Tensor, gradient: SurrogateGradient, *params: Any) -> Tensor:
    """:func:`heaviside` of ``x``, whose gradient is ``gradient(x, grad, *params)`` (``params``: numbers, such as a
    slope).

    Example:
        >>> x = torch.tensor([-0.5, 0.5], requires_grad=True)
        >>> surrogate_spike(x, lambda x, grad, k: grad * k, 2.0).sum().backward(); x.grad
        tensor([2., 2.])
    """
    return function_transforms.apply(_SurrogateSpike, _TransformableSurrogateSpike, x, gradient, *params)
