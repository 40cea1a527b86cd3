"""Persistent ±1 buffers of a binary layer: its signs written in place, without a new allocation per step.

A large layer's forward pass would otherwise allocate (and page in) a fresh weight-sized tensor for
``sign(W_h)`` every step. :class:`SignBuffers` keeps one buffer per dtype (float32, and bfloat16 where
:mod:`bnn.binary_linear` uses it) and rewrites all of them in one pass over the hidden weights:

* outside :func:`metaspike.binarized_once`, on every forward pass (so any edit of the hidden
  weights, through ``.data`` included, is seen);
* inside such a block, once, and again only when an optimizer step changes the weights' version.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from metaspike.compiled import LazyCompiled
from metaspike.quantizers import binary_sign
from metaspike.synapse import signs_cache_key

__all__ = ["SignBuffers", "COMPILED_SIGNS_MIN_NUMEL"]

COMPILED_SIGNS_MIN_NUMEL = 1 << 20
"""Hidden weights with at least this many entries get their signs from one compiled pass."""


def _signs_into(weight: Tensor, outs: list[Tensor]) -> None:
    binary_sign(weight, out=outs[0])
    for out in outs[1:]:
        out.copy_(outs[0])


_compiled_signs_into = LazyCompiled(_signs_into, "sign buffers of a binary layer")  # one fused pass


class SignBuffers:
    """The ±1 buffers of one hidden weight.

    Example:
        >>> w = torch.tensor([[-0.5, 0.0]])
        >>> SignBuffers().signs(w)
        tensor([[-1.,  1.]])
    """

    def __init__(self) -> None:
        self._weight: weakref.ref | None = None
        self._tensors: dict[torch.dtype, Tensor] = {}
        self._written_under: tuple[int, int] | None = None

    def signs(self, weight: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``sign(weight)`` as ``dtype`` (default: the weight's), from a buffer rewritten when needed."""
        if self._weight is None or self._weight() is not weight:
            self._weight = weakref.ref(weight)
            self._tensors = {weight.dtype: torch.empty_like(weight)}
            self._written_under = None
        dtype = dtype or weight.dtype
        if dtype not in self._tensors:
            self._tensors[dtype] = torch.empty_like(weight, dtype=dtype)
            self._written_under = None
        block = signs_cache_key()
        key = None if block is None else (block, weight._version)
        if key is None or key != self._written_under:
            large = weight.numel() >= COMPILED_SIGNS_MIN_NUMEL and not torch.compiler.is_compiling()
            with torch.no_grad():
                (_compiled_signs_into if large else _signs_into)(weight, list(self._tensors.values()))
            self._written_under = key
        return self._tensors[dtype]
