"""The float32 products of large binary layers, by the faster of the two float32 libraries torch carries.

A binary layer's real-valued products (a first layer's pixels times ±1, and in the backward pass
``grad_input = grad @ signs`` and ``grad_weight = grad.T @ x``) are float32 matrix products. torch sends
``torch.mm`` to its BLAS (Intel MKL in the x86 wheels), which picks its kernels by CPU vendor: on a CPU it
does not take for Intel's it runs an AVX2 path even where the CPU has AVX-512. torch also carries oneDNN,
for its convolutions, which picks its kernels by instruction set. Measured on a 2-core AMD EPYC Zen 5
(AVX-512, 2 threads), 100 x 4096 @ 4096 x 4096 in float32: MKL 18 ms (185 GFLOP/s), oneDNN 7.6 ms
(440 GFLOP/s).

Both are float32 products with float32 sums; they may add the terms in another order, so their results can
differ in the last bits, as products with another number of threads do. :func:`float32_library` times the
two once per process and *shape class* (device, product, rows rounded up to a power of two as in
:mod:`bnn.product_timing`, the two other sizes), and takes oneDNN only when it is at least
:data:`ONEDNN_MARGIN` times faster: a machine where the two run alike keeps ``torch.mm``, and no shape's
choice sits at the margin of noise on the machines measured (2.0-2.4x on the AMD EPYC Zen 5).

oneDNN cannot write into a given tensor, and a weight gradient written to fresh memory every step pays for
its page faults (64 MB at 4096 x 4096); :func:`mm` therefore computes such a product in blocks of rows of
at most :data:`BLOCK_ELEMENTS` entries and copies each into the tensor it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from typing import Any

import torch
from torch import Tensor

from bnn.product_timing import best_times, probe_rows, size_class

__all__ = ["LIBRARIES", "PRODUCTS", "ONEDNN_MARGIN", "BLOCK_ELEMENTS", "float32_libraries", "float32_library",
           "mm"]

LIBRARIES = ("torch.mm", "oneDNN")
"""The float32 products: torch's BLAS (``torch.mm``) and oneDNN's inner product."""
PRODUCTS = ("forward", "grad_input", "grad_weight")
"""A binary layer's float32 products: ``x @ signs.T``, ``grad @ signs`` and ``grad.T @ x`` (into a buffer)."""
ONEDNN_MARGIN = 1.25
"""How many times faster than ``torch.mm`` oneDNN must be timed before a shape class takes it."""
BLOCK_ELEMENTS = 1 << 21
"""The most entries (8 MiB of float32) of one block of rows that oneDNN computes for a product into a given tensor."""

_choices: dict[tuple[Any, ...], str] = {}


@cache
def _onednn_linear() -> Callable[..., Tensor] | None:
    """oneDNN's float32 inner product of this torch build (``X @ W.T``), or ``None`` where it has none that works."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        linear = torch.ops.mkldnn._linear_pointwise.default
        product = linear(torch.ones(2, 3), torch.ones(4, 3), None, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError):
        return None
    return linear if torch.equal(product, torch.full((2, 4), 3.0)) else None


def float32_libraries(device: torch.device | str) -> list[str]:
    """The float32 products :func:`mm` can run on ``device``, in :data:`LIBRARIES` order.

    Example:
        >>> float32_libraries("cpu")[0]
        'torch.mm'
    """
    on_cpu = torch.device(device).type == "cpu"
    return ["torch.mm", "oneDNN"] if on_cpu and _onednn_linear() is not None else ["torch.mm"]


def mm(a: Tensor, b: Tensor, library: str, out: Tensor | None = None) -> Tensor:
    """``a @ b`` of float32 matrices by ``library`` (one of :func:`float32_libraries`), into ``out`` when given.

    Example:
        >>> a, b = torch.ones(2, 3), torch.ones(3, 4)
        >>> torch.equal(mm(a, b, "oneDNN" if "oneDNN" in float32_libraries("cpu") else "torch.mm"), a @ b)
        True
    """
    linear = _onednn_linear()
    if library not in LIBRARIES or library == "oneDNN" and (linear is None or a.device.type != "cpu"):
        raise ValueError(f"library must be one of {', '.join(map(repr, float32_libraries(a.device)))}, "
                         f"got {library!r}")
    if library == "oneDNN" and not a.dtype == b.dtype == torch.float32:
        raise ValueError(f"oneDNN's product here takes float32 matrices, got {a.dtype} and {b.dtype}")
    if library == "torch.mm" or 0 in (*a.shape, *b.shape):  # (oneDNN has no product of an empty batch's backward)
        return torch.mm(a, b) if out is None else torch.mm(a, b, out=out)
    weight = b.t()
    if out is None:
        return linear(a, weight, None, "none", [], "")
    rows = max(1, BLOCK_ELEMENTS // max(out.shape[1], 1))
    for start in range(0, out.shape[0], rows):
        out[start : start + rows].copy_(linear(a[start : start + rows], weight, None, "none", [], ""))
    return out


def float32_library(device: torch.device | str, product: str, m: int, k: int, n: int) -> str:
    """The faster float32 library for ``product`` of a binary layer with fan-in ``k`` and fan-out ``n`` on a batch of
    ``m`` rows: timed once per shape class, then cached.

    Example:
        >>> float32_library("cpu", "forward", 32, 64, 64) in LIBRARIES
        True
    """
    if product not in PRODUCTS:
        raise ValueError(f"product must be one of {', '.join(map(repr, PRODUCTS))}, got {product!r}")
    device = torch.device(device)
    key = (device, product, size_class(m), k, n)
    if key not in _choices:
        _choices[key] = _faster(device, product, m, k, n)
    return _choices[key]


def _faster(device: torch.device, product: str, m: int, k: int, n: int) -> str:
    """``"oneDNN"`` where it is :data:`ONEDNN_MARGIN` times faster than ``torch.mm`` for this product, else
    ``"torch.mm"``."""
    libraries = float32_libraries(device)
    if len(libraries) == 1 or 0 in (m, k, n):  # (nothing to time: an empty product is torch.mm's, as mm runs it)
        return "torch.mm"
    rows = probe_rows(m)
    # the values do not change the time; the layouts are those binary_linear passes
    if product == "forward":
        operands: tuple[Tensor, ...] = (torch.ones(rows, k), torch.ones(n, k).t())
    elif product == "grad_input":
        operands = (torch.ones(rows, n), torch.ones(n, k))
    else:
        operands = (torch.ones(rows, n).t(), torch.ones(rows, k), torch.empty(n, k))
    best = best_times({library: partial(mm, *operands[:2], library, *operands[2:]) for library in libraries}, device)
    return "oneDNN" if best["oneDNN"] * ONEDNN_MARGIN < best["torch.mm"] else "torch.mm"
