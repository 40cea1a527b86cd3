"""torch.func transforms (``grad``, ``vmap``, ``jacrev``...) over metaspike's straight-through functions.

torch runs a custom ``autograd.Function`` under a transform only in the form whose ``forward`` takes no ``ctx``
and a ``setup_context`` saves what the backward needs. ``Function.apply`` binds that form's arguments by signature
on every call: 14.7 µs a call against 4.2 µs for the ``ctx`` form (measured on a 2-core Intel Xeon, a 10-element
tensor), which a batch-1 step would pay at every layer. So each of metaspike's straight-through functions keeps the
fast form and has a subclass for transforms (same backward, ``setup_context`` calling the same code that the fast
``forward`` calls on its ``ctx``); :func:`apply` picks one.

The Bayesian synapses (MESU, BiMU) draw their samples in compiled loops with their own noise and do not run under
transforms: :func:`refuse_function_transform` says so in one line.

Example:
    >>> import torch
    >>> from metaspike.quantizers import ste_sign
    >>> torch.func.grad(lambda x: ste_sign(x).sum())(torch.tensor([-0.5, 2.0]))  # straight through where |x| <= 1
    tensor([1., 0.])
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["in_function_transform", "apply", "refuse_function_transform"]


def in_function_transform() -> bool:
    """Whether a torch.func transform (``grad``, ``vmap``, ...) is running.

    Example:
        >>> in_function_transform(), bool(torch.func.vmap(lambda x: torch.tensor(in_function_transform()))(torch.ones(2)).all())
        (False, True)
    """
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def values_unread() -> bool:
    """Whether the tensors being computed on now have no values Python may branch on: inside a torch.func transform,
    or while ``torch.export`` traces (fake tensors; a check that read a value failed the export deep inside torch).

    Example:
        >>> values_unread()
        False
    """
    return in_function_transform() or torch.compiler.is_exporting()


def apply(fast: type[torch.autograd.Function], transformable: type[torch.autograd.Function], *args: Any) -> Any:
    """``fast.apply(*args)``, or ``transformable.apply(*args)`` inside a torch.func transform.

    Example:
        >>> from metaspike.quantizers import _SteSign, _TransformableSteSign
        >>> apply(_SteSign, _TransformableSteSign, torch.tensor([-2.0, 0.0]), None)
        tensor([-1.,  1.])
    """
    return (transformable if in_function_transform() else fast).apply(*args)


def refuse_function_transform(what: str) -> None:
    """A ``ValueError`` naming ``what`` inside a torch.func transform, for synapses that cannot run there.

    Example:
        >>> refuse_function_transform("BiMU synapses")  # outside a transform: nothing
    """
    if in_function_transform():
        raise ValueError(f"{what} do not run under torch.func transforms (grad, vmap, jacrev...): their weight "
                         "samples come from compiled loops with their own noise. Take gradients with loss.backward()")
