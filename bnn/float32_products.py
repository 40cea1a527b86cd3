"""The float32 products of large binary layers, by whichever of the two float32 libraries torch carries runs the
CPU's widest kernels.

A binary layer's real-valued products (a first layer's pixels times ±1, and in the backward pass
``grad_input = grad @ signs`` and ``grad_weight = grad.T @ x``) are float32 matrix products. torch sends
``torch.mm`` to its BLAS (Intel MKL in the x86 wheels), which picks its kernels by CPU vendor: on a CPU it
does not take for Intel's it runs an AVX2 path even where the CPU has AVX-512. torch also carries oneDNN,
for its convolutions, which picks its kernels by instruction set. Measured on a 2-core AMD EPYC Zen 5
(AVX-512, 2 threads), 100 x 4096 @ 4096 x 4096 in float32: MKL 18 ms (185 GFLOP/s), oneDNN 7.6 ms
(440 GFLOP/s).

Both are float32 products with float32 sums; they may add the terms in another order, so their results can
differ in the last bits, as products with another number of threads do. So that a run repeats its numbers in
every process on a machine (a resumed run, a second seed's comparison), :func:`float32_library` chooses by the
CPU, never by timing: oneDNN where torch's BLAS is MKL and runs narrower kernels than the CPU has (an AVX-512 CPU
not Intel's), ``torch.mm`` everywhere else. An earlier choice by timing (oneDNN where at least 1.25 times faster)
picked oneDNN on the Zen 5 with a margin of 2.0-2.4x, but on an AVX2-only AMD EPYC Zen 3, where the two run
within 1.1-1.5x of each other, the choice for one shape flipped between processes under load, and with it the
last bits of a first layer's output.

oneDNN cannot write into a given tensor, and a weight gradient written to fresh memory every step pays for
its page faults (64 MB at 4096 x 4096); :func:`mm` therefore computes such a product in blocks of rows of
at most :data:`BLOCK_ELEMENTS` entries and copies each into the tensor it is given. A product of one block gains
nothing from a given tensor (oneDNN's own result is as fresh, and the copy costs a pass):
:func:`writes_into_out` tells a caller whether to give one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
from torch import Tensor

__all__ = ["LIBRARIES", "BLOCK_ELEMENTS", "float32_libraries", "float32_library", "blas_runs_narrower_kernels",
           "cpu_vendor", "mm", "writes_into_out"]

LIBRARIES = ("torch.mm", "oneDNN")
"""The float32 products: torch's BLAS (``torch.mm``) and oneDNN's inner product."""
BLOCK_ELEMENTS = 1 << 21
"""The most entries (8 MiB of float32) of one block of rows that oneDNN computes for a product into a given tensor."""


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
    rows = _block_rows(out.shape[1])
    for start in range(0, out.shape[0], rows):
        out[start : start + rows].copy_(linear(a[start : start + rows], weight, None, "none", [], ""))
    return out


def _block_rows(columns: int) -> int:
    """Rows of one block of a oneDNN product into a given tensor of ``columns`` columns."""
    return max(1, BLOCK_ELEMENTS // max(columns, 1))


def writes_into_out(library: str, shape: tuple[int, int]) -> bool:
    """Whether :func:`mm` by ``library`` gains from an ``out`` of ``shape`` (a reused buffer): ``torch.mm`` writes
    into it; oneDNN computes into fresh memory of its own and copies that into ``out``, which bounds its memory only
    where the product takes more than one block (a 1024 x 784 weight gradient is one: given a buffer, its copy took
    0.2 ms of a 12 ms training step, one thread, AMD EPYC Zen 4).

    Example:
        >>> writes_into_out("torch.mm", (10, 10)), writes_into_out("oneDNN", (10, 10))
        (True, False)
    """
    return library != "oneDNN" or _block_rows(shape[1]) < shape[0]


def float32_library(device: torch.device | str) -> str:
    """The float32 library of a binary layer's real-valued products on ``device``: ``"oneDNN"`` on a CPU where torch's
    BLAS takes narrower kernels than the CPU has (:func:`blas_runs_narrower_kernels`) and this build has oneDNN's
    product, else ``"torch.mm"``. The same in every process on a machine, so a run's numbers repeat.

    Example:
        >>> float32_library("cpu") in LIBRARIES, float32_library("meta")
        (True, 'torch.mm')
    """
    return "oneDNN" if "oneDNN" in float32_libraries(device) and blas_runs_narrower_kernels() else "torch.mm"


@cache
def blas_runs_narrower_kernels() -> bool:
    """Whether torch's BLAS runs narrower vector kernels than this CPU has: MKL (torch's BLAS in the x86 wheels) picks
    its AVX-512 kernels for Intel's CPUs only, so on another vendor's AVX-512 CPU it runs its AVX2 ones (100 x 4096
    @ 4096 x 4096 on a 2-core AMD EPYC Zen 5: MKL 18 ms, oneDNN 7.6 ms). The vendor is read from ``/proc/cpuinfo``;
    where there is none (not Linux), ``False``.

    Example:
        >>> blas_runs_narrower_kernels() in (True, False)
        True
    """
    if not torch.backends.mkl.is_available() or torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    return cpu_vendor() not in (None, "GenuineIntel")


@cache
def cpu_vendor() -> str | None:
    """The CPU's vendor as ``/proc/cpuinfo`` names it (``"GenuineIntel"``, ``"AuthenticAMD"``, ...), ``None`` where
    it says none or cannot be read.

    Example:
        >>> cpu_vendor() is None or isinstance(cpu_vendor(), str)
        True
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip() or None
    except OSError:
        return None
    return None
