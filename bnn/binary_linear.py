"""The linear product of a binary synapse layer, computed exactly, by the fastest means of the machine.

Three things make a large binary layer's training step cheaper here than ``F.linear`` on its ±1
weights, with the same results (the product bit for bit; gradients up to float32 rounding):

* **The fastest exact product of ±1 by ±1.** When both the weights and the input are ±1 (every
  hidden layer of a binarized network), each product is ±1 and each sum an integer of magnitude at
  most the fan-in ``k``. Four products give it exactly (:data:`PRODUCT_KINDS`):

  - ``"popcount"`` (CPUs where :mod:`bnn.native` builds its kernels): input and signs packed into bits, 1 for +1,
    and each sum counted as ``k - 2·popcount(x XOR w)`` by the packed-inference kernel (VPOPCNTDQ where the CPU
    has it, else scalar popcounts), exact for ``k < 2**24``; the signs are packed from the int8 sign buffer
    once per rewrite, the input at every call. It needs neither int8 nor bfloat16 instructions, which CPUs with
    AVX2 only lack (there torch emulates both, and float32 was the only fast product);
  - ``"int8"``: ``torch._int_mm`` with int32 sums (exact for ``k < 2**31``); on CUDA it needs more
    than 16 rows and both other sizes multiples of 8, on CPUs a fan-in above 1 (torch 2.13 returned unset memory
    for ``k = 1``; :func:`product_kinds` leaves it out otherwise);
  - ``"bfloat16"``: ±1 is exact in bfloat16 and the sums are exact in float32 below ``2**24``. Where
    the device can return a bfloat16 product in float32 (CUDA) it is exact for ``k < 2**24``;
    where it rounds the product to bfloat16 (CPUs in torch 2.13) only for ``k <= 256``, the largest
    range in which bfloat16 holds every integer;
  - ``"float32"``: a float32 product (:mod:`bnn.float32_products`), always available.

  Which is fastest depends on the machine (one thread, 100 x 4096 x 4096, on a 2-core AMD EPYC with
  AVX-512: int8 13 ms, bfloat16 17 ms, float32 40 ms; 128 x 4096 x 4096 on one with AVX2 only, which
  emulates both: int8 2101 ms, float32 138 ms), so :func:`product_kind` times each candidate
  once per process and *shape class* (device, rows rounded up to a power of two with all batches of
  more than 256 rows in one class, fan-in, fan-out), conversions included, and caches the winner. An int8 or
  bfloat16 product that takes more than :data:`EMULATED_SLOWDOWN` times float32's on one screening size
  (:func:`kind_slowdown`, timed once per process) is emulated and not timed at all (where it was, the first step of
  a 784-4096-4096-10 network took 14 s on an AVX2-only CPU, one thread, most of it in int8 probes; now 3.7 s). On a
  busy machine the timing may pick a slower product; every candidate is exact. Inputs that are not ±1 (the first
  layer's pixels) use float32.
* **Backward products in float32 by default.** ``grad_input = grad @ signs`` and
  ``grad_weight = grad.T @ x`` multiply the real-valued gradient, so they stay float32. Every float32
  product goes to the one of torch's two float32 libraries that uses the CPU's widest kernels (``torch.mm`` or
  oneDNN, chosen by the CPU, the same in every process; :mod:`bnn.float32_products`). Where one operand is ±1
  (``signs``, and a ±1 input ``x``) and the native kernels are built with AVX-512, both take another float32
  product instead (:func:`real_product_kind`): ``"lookup"`` (:func:`bnn.native.signed_sums`) adds, per row of the
  gradient and group of 5 of its entries, one of their 32 signed sums picked by the ±1 operand's 5 signs, 16
  columns per permute; every term is exact, so it differs from the matrix product only in the order of the float32
  additions. Like the float32 library it is chosen by the CPU, never by timing (a 2-core AMD EPYC Zen 4, one
  thread: 100 x 4096 @ 4096 x 4096 in 12 ms against 40 ms, 4096 x 100 @ 100 x 4096 in 15 ms against 37 ms). A layer
  built with ``precision="bfloat16"`` rounds the gradient (and a real-valued input) to bfloat16 for
  these two products, and on CPUs their results too (opt-in: faster where bfloat16 products are,
  with input and weight gradients to about 8 significant bits; where they are slower than float32,
  as on CPUs without bfloat16 instructions, the first such product warns once per device).
* **A reused gradient buffer.** Autograd allocates a fresh weight-sized gradient every step; for a
  4096 x 4096 layer, paging in those 64 MB costs about as much as the product that fills them. The
  layer keeps one buffer and writes the weight gradient into it whenever nothing else still refers
  to that memory (after ``zero_grad(set_to_none=True)``). Gradients that are kept, accumulated or
  returned by ``torch.autograd.grad`` get fresh memory as usual.

All apply to layers of at least :data:`FAST_MIN_NUMEL` weights, and of at least :data:`ONEDNN_FAST_MIN_NUMEL`
where oneDNN computes their float32 products; smaller layers gain nothing (with 784-512-512-10 and ``torch.mm``,
enabling them for every layer made the training step 15 % slower: 4.3 vs 3.7 ms; with oneDNN on a 2-core AMD EPYC
Zen 5, two threads, the 784-1024-1024-10 step took 7.1 ms from 2**20 weights, 5.9 ms from 2**18, 5.8 ms from 2**16,
and the 784-100-100-10 step 1.14, 1.13 and 1.28 ms).
"""

from __future__ import annotations

import warnings
from functools import cache, partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import forward_ad

from bnn import native
from bnn.float32_products import float32_library, mm, writes_into_out
from bnn.product_timing import best_times, probe_rows, size_class
from bnn.sign_buffers import PACKED, SIGN_CODES, TRANSPOSED_SIGN_CODES, storage_is_free
from metaspike.caller import user_stacklevel

__all__ = [
    "FAST_MIN_NUMEL", "ONEDNN_FAST_MIN_NUMEL", "PRODUCT_KINDS", "POPCOUNT_EVENT", "PRECISIONS", "check_precision",
    "is_binary_input", "product_kinds", "product_kind", "signs_product", "product_used", "binary_linear",
    "bfloat16_slowdown", "kind_slowdown", "EMULATED_SLOWDOWN", "has_tangent", "REAL_PRODUCT_KINDS", "LOOKUP_EVENT",
    "real_product_kind", "backward_products_used",
]

FAST_MIN_NUMEL = 1 << 20
"""Binary layers of at least this many weights take the fast product (smaller ones ``F.linear``)."""
ONEDNN_FAST_MIN_NUMEL = 1 << 18
"""The same from this many weights where oneDNN computes the layer's float32 products (:mod:`bnn.float32_products`)."""
PRODUCT_KINDS = ("popcount", "int8", "bfloat16", "float32")
"""The exact products of ±1 inputs by ±1 weights, named by their operands (bits, or a dtype)."""
POPCOUNT_EVENT = "bnn::popcount_product"
"""The name under which ``torch.profiler`` shows a popcount product (a native call, not a torch operator)."""
REAL_PRODUCT_KINDS = ("lookup", "float32")
"""The float32 products of a real-valued matrix by a ±1 one: a first layer's ``x @ signs.T`` and the backward
``grad @ signs`` (and ``grad.T @ x`` for a ±1 input)."""
LOOKUP_EVENT = "bnn::lookup_product"
"""The name under which ``torch.profiler`` shows a lookup product (:func:`bnn.native.signed_sums`)."""
PRECISIONS = ("float32", "bfloat16")
"""The precisions a layer's backward products may use (``BinaryLinear(precision=...)``)."""
_DTYPES: dict[str, Any] = {"popcount": PACKED, "lookup": TRANSPOSED_SIGN_CODES, "int8": torch.int8,
                           "bfloat16": torch.bfloat16, "float32": torch.float32}  # what the sign buffers give each
_BF16_EXACT_ROUNDED = 256  # bfloat16 holds every integer up to 2**8

_choices: dict[tuple[Any, ...], str] = {}


def check_precision(precision: str) -> str:
    """``precision`` if it names one of :data:`PRECISIONS`, else a ValueError.

    Example:
        >>> check_precision("bfloat16")
        'bfloat16'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return precision


def is_binary_input(x: Tensor) -> bool:
    """True when every entry of ``x`` is exactly ``+1`` or ``-1``.

    The first row (entry, for a vector) is checked on its own first: a real-valued input (a first layer's pixels)
    is told apart without a pass over the whole batch.

    Example:
        >>> is_binary_input(torch.tensor([1.0, -1.0])), is_binary_input(torch.tensor([1.0, 0.5]))
        (True, False)
    """
    head = x[:1] if x.dim() > 0 else x
    return _all_unit(head) and _all_unit(x)


def _all_unit(x: Tensor) -> bool:
    """Whether every ``|x|`` is 1: its least and greatest are (NaN makes both NaN). Two float reductions in one pass,
    three times faster on CPU than ``abs().eq_(1).all()``, whose bool results take torch's slower loops (25 µs
    against 77 for 100 x 1024, one thread of an AMD EPYC Zen 4)."""
    if x.numel() == 0:
        return True
    least, greatest = torch.aminmax(x.abs())
    return bool(least.eq(1) & greatest.eq(1))


@cache
def _float32_out_of_bf16(device_type: str) -> bool:
    """Whether ``torch.mm(..., out_dtype=torch.float32)`` runs on bfloat16 operands of this device type."""
    a = torch.ones(2, 2, dtype=torch.bfloat16, device=device_type)
    try:
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _bf16_mm(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``a @ b`` of bfloat16 operands as float32, into ``out`` when given (float32 sums; rounded to
    bfloat16 first where the device must)."""
    if _float32_out_of_bf16(a.device.type):
        product = torch.mm(a, b, out_dtype=torch.float32)
    else:
        product = torch.mm(a, b)
    return product.float() if out is None else out.copy_(product)  # no float32 temporary before ``out``


def product_kinds(device: torch.device | str, m: int, k: int, n: int) -> list[str]:
    """The exact ±1 products this machine can run for an ``(m, k) @ (k, n)`` product, in :data:`PRODUCT_KINDS` order.

    Example:
        >>> product_kinds("cpu", 100, 4096, 4096)[-1]
        'float32'
    """
    device = torch.device(device)
    kinds = []
    if device.type == "cpu" and k < 2**24 and native.kernels() is not None:
        kinds.append("popcount")
    # (torch 2.13's CPU _int_mm returns unset memory for a fan-in of 1: values near 1e9, changing from call to call)
    int8_fits = (m > 16 and k % 8 == 0 and n % 8 == 0) if device.type == "cuda" else k > 1
    if int8_fits and k < 2**31 and hasattr(torch, "_int_mm"):
        kinds.append("int8")
    if k <= (2**24 - 1 if _float32_out_of_bf16(device.type) else _BF16_EXACT_ROUNDED):
        kinds.append("bfloat16")
    return [*kinds, "float32"]


def signs_product(x: Tensor, signs: Tensor, kind: str) -> Tensor:
    """``x @ signs.T`` in float32 for ±1 ``x``, computed as ``kind`` (``signs`` already in that kind's dtype, or for
    ``"popcount"`` packed by :func:`bnn.native.prepared_signs`); for a real-valued ``x`` also ``"lookup"``, with
    ``signs`` given as :func:`bnn.native.transposed_sign_codes`.

    Exact when ``kind`` is one of :func:`product_kinds` for these sizes.

    Example:
        >>> x, w = torch.ones(2, 4), -torch.ones(3, 4)
        >>> signs_product(x, w.to(torch.int8), "int8")
        tensor([[-4., -4., -4.],
                [-4., -4., -4.]])
    """
    if kind == "popcount":
        with torch.profiler.record_function(POPCOUNT_EVENT):
            product = native.popcount_product(native.kernels(), x, signs)
        if product is None:
            raise ValueError("signs_product: the popcount product takes an input of +1 and -1 only")
        return product
    if kind == "lookup":
        return _lookup_product(x, signs, signs.shape[1])
    if kind == "int8":
        return torch._int_mm(x.to(torch.int8), signs.t()).float()
    if kind == "bfloat16":
        return _bf16_mm(x.to(torch.bfloat16), signs.t())
    return mm(x, signs.t(), float32_library(x.device))


def product_kind(device: torch.device | str, m: int, k: int, n: int) -> str:
    """The fastest exact ±1 product for ``(m, k) @ (k, n)`` on ``device``: timed once per shape class, then cached.

    Example:
        >>> product_kind("cpu", 32, 64, 64) in PRODUCT_KINDS
        True
    """
    device = torch.device(device)
    key = (device, size_class(m), k, n)  # every class has one set of product_kinds (CUDA's int8 takes m > 16)
    if key not in _choices:
        _choices[key] = _fastest(device, m, k, n)
    return _choices[key]


def _fastest(device: torch.device, m: int, k: int, n: int, rounds: int = 3, budget_s: float = 0.2) -> str:
    """The candidate of :func:`product_kinds` with the shortest best time (:func:`_best_times`)."""
    kinds = [kind for kind in product_kinds(device, m, k, n)
             if kind in ("popcount", "float32") or kind_slowdown(device, kind) <= EMULATED_SLOWDOWN]
    if len(kinds) == 1:
        return kinds[0]
    # the values do not change the time
    x, w = torch.ones(probe_rows(m), k, device=device), torch.ones(n, k, device=device)
    products = {kind: partial(signs_product, x, w.to(_DTYPES[kind]), kind) for kind in kinds if kind != "popcount"}
    if "popcount" in kinds:  # timed with the packing of its signs, which the others' buffers need not
        int8_w = w.to(torch.int8)  # (the layer packs its int8 signs)
        products["popcount"] = lambda: signs_product(x, native.prepared_signs(native.kernels(), int8_w), "popcount")
    best = best_times(products, device, rounds, budget_s)
    return min(kinds, key=best.__getitem__)


SLOW_BFLOAT16 = 1.5
"""How many times slower than float32 a device's bfloat16 products may be before ``precision="bfloat16"`` warns."""

EMULATED_SLOWDOWN = 4.0
"""How many times slower than float32 an int8 or bfloat16 ±1 product may be (:func:`kind_slowdown`) and still be timed
for a layer: torch emulates them on CPUs without their instructions, at every size (an AVX2-only AMD EPYC, one
thread: int8 23-26x and bfloat16 7-8x from 64 x 256 @ 256 x 256 to 128 x 1024 @ 1024 x 1024), and the probes of one
4096 x 4096 layer's shape class took 16-28 s there, spent on a candidate that never won."""


@cache
def kind_slowdown(device: torch.device, kind: str) -> float:
    """How many times longer the ``kind`` ±1 product takes than the float32 one on ``device`` at 128 x 512 @ 512 x 512;
    timed once per process (about 0.2 s where torch emulates the kind).

    Example:
        >>> kind_slowdown(torch.device("cpu"), "bfloat16") > 0
        True
    """
    x, w = torch.ones(128, 512, device=device), torch.ones(512, 512, device=device)
    products = {name: partial(signs_product, x, w.to(_DTYPES[name]), name) for name in (kind, "float32")}
    best = best_times(products, device)
    return best[kind] / max(best["float32"], 1e-9)


def bfloat16_slowdown(device: torch.device) -> float:
    """How many times longer a bfloat16 product (float32 sums) takes than a float32 one on ``device``
    (:func:`kind_slowdown`).

    CPUs without bfloat16 instructions (AVX-512 BF16 or AMX) emulate them: 7.4x on a 2-core AMD EPYC with AVX2, one
    thread.

    Example:
        >>> bfloat16_slowdown(torch.device("cpu")) > 0
        True
    """
    return kind_slowdown(device, "bfloat16")


@cache
def _warn_if_bfloat16_is_slow(device: torch.device) -> None:
    slowdown = bfloat16_slowdown(device)
    if slowdown > SLOW_BFLOAT16:
        warnings.warn(f"BinaryLinear(precision='bfloat16'): bfloat16 products take {slowdown:.0f}x as long as "
                      f"float32 ones on this {device.type} (it has no bfloat16 instructions); precision='float32' "
                      "is faster and more precise here", RuntimeWarning, stacklevel=user_stacklevel())


def real_product_kind(device: torch.device | str) -> str:
    """The product of :data:`REAL_PRODUCT_KINDS` for a real-valued matrix by a ±1 one on ``device``: ``"lookup"``
    where the native kernels are built with AVX-512 (their portable C looks up one column at a time, many times
    slower than a float32 library), else ``"float32"``.

    Chosen by the CPU, like the float32 library (:func:`bnn.float32_products.float32_library`), never by timing: the
    two add in other orders, and a choice that flipped between processes would change a resumed run's last bits. The
    lookup product's sums do not depend on the number of threads either.

    Example:
        >>> real_product_kind("meta")
        'float32'
    """
    lib = native.kernels() if torch.device(device).type == "cpu" else None
    return "lookup" if lib is not None and native.signed_sums_vectorized(lib) else "float32"


def _lookup_product(a: Tensor, codes: Tensor, n: int, out: Tensor | None = None) -> Tensor:
    """``a @ signs`` by :func:`bnn.native.signed_sums` from the signs' codes, into ``out`` when given."""
    with torch.profiler.record_function(LOOKUP_EVENT):
        return native.signed_sums(native.kernels(), a, codes, n, out)


def _backward_mm(a: Tensor, b: Tensor, low: bool, out: Tensor | None = None) -> Tensor:
    """``a @ b``, a backward product (``grad @ signs`` or ``grad.T @ x``), in float32 by the machine's float32 library
    (into ``out`` when given), or of both rounded to bfloat16 with float32 sums when ``low``."""
    if low:
        return _bf16_mm(a.to(torch.bfloat16), b.to(torch.bfloat16), out)
    return mm(a, b, float32_library(a.device), out)


class _FastBinaryLinear(torch.autograd.Function):
    """``x @ signs.T + bias`` whose gradient reaches the hidden weight straight through."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, hidden: Tensor, bias: Tensor | None, signs: Tensor, visible: Tensor, kind: str,
        backward_signs: Tensor | None, low: bool, grad_buffer: Tensor | None, lookup_weight: bool,
    ) -> Tensor:
        # views of the sign buffers, not the buffers: a view holds their memory, so a second forward pass before this
        # backward (a layer used twice in one graph) sees them held and writes fresh ones instead of changing these
        ctx.save_for_backward(x, None if backward_signs is None else backward_signs.view_as(backward_signs))
        ctx.hidden, ctx.signs = hidden, visible.view_as(visible)  # (for a backward that builds a graph)
        ctx.low = low
        ctx.lookup_weight = lookup_weight  # grad.T @ x by lookups (x is ±1)
        ctx.grad_buffer = grad_buffer
        ctx.has_bias = bias is not None
        return _product(x, signs, kind, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: gradients that are differentiable themselves
            return _differentiable_backward(ctx, grad)
        x, signs = ctx.saved_tensors
        low = ctx.low
        grad_x = None
        if ctx.needs_input_grad[0]:  # signs: the float32 (bfloat16) buffer, or its codes for lookups
            lookup = signs.dtype == torch.uint8
            grad_x = _lookup_product(grad, signs, x.shape[1]) if lookup else _backward_mm(grad, signs, low)
        grad_w = None
        if ctx.needs_input_grad[1]:
            buffer = ctx.grad_buffer
            if buffer is not None and storage_is_free(buffer):
                # a new tensor over the buffer's memory: autograd adopts it as the gradient
                grad_w = torch.empty(0, dtype=buffer.dtype, device=buffer.device).set_(
                    buffer.untyped_storage(), 0, buffer.shape, buffer.stride()
                )
            codes = native.sign_codes(native.kernels(), x, "binary layer input") if ctx.lookup_weight else None
            if codes is not None:
                grad_w = _lookup_product(grad.t(), codes, x.shape[1], grad_w)
            elif grad_w is not None:
                _backward_mm(grad.t(), x, low, out=grad_w)
            else:
                grad_w = _backward_mm(grad.t(), x, low)
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None


def _differentiable_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    """The backward of ``F.linear(x, W, bias)`` with ``W`` the ±1 weight whose gradient reaches the hidden weight
    straight through, in differentiable operations (a gradient penalty's second derivative, as the small layers'
    ``F.linear`` gives it); float32 products, without the reused gradient buffer."""
    x, _ = ctx.saved_tensors
    hidden = ctx.hidden
    visible = hidden + (ctx.signs.to(hidden.dtype) - hidden).detach()  # ±1, its gradient is the hidden weight's
    grad_x = grad @ visible if ctx.needs_input_grad[0] else None
    grad_w = grad.t() @ x if ctx.needs_input_grad[1] else None
    grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return grad_x, grad_w, grad_b, None, None, None, None, None, None, None


def has_tangent(*tensors: Tensor | None) -> bool:
    """Whether forward-mode AD (``torch.autograd.forward_ad``) carries a tangent on one of ``tensors``.

    Example:
        >>> import torch.autograd.forward_ad as fwAD
        >>> with fwAD.dual_level():
        ...     has_tangent(torch.ones(2)), has_tangent(None, fwAD.make_dual(torch.ones(2), torch.ones(2)))
        (False, True)
    """
    return any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def _signs_for(layer: Any, kind: str, *backward_dtypes: torch.dtype | str) -> tuple[Tensor, Tensor, list[Tensor]]:
    """From one pass over the hidden weight: the signs ``kind``'s product takes, the ±1 weight itself (in some dtype)
    and its buffers in ``backward_dtypes``."""
    if kind not in ("popcount", "lookup"):
        signs, *backward = layer.signs_as(_DTYPES[kind], *backward_dtypes)
        return signs, signs, backward
    derived, visible, *backward = layer.signs_as(_DTYPES[kind], torch.int8, *backward_dtypes)  # (made from int8)
    return derived, visible, backward


def _product(x: Tensor, signs: Tensor, kind: str, bias: Tensor | None) -> Tensor:
    out = signs_product(x, signs, kind)
    return out if bias is None else out.add_(bias)


def _buffer_gains(grad_weight: str | None, weight: Tensor) -> bool:
    """Whether the weight gradient of product ``grad_weight`` gains from being written into the layer's reused buffer
    (:func:`bnn.float32_products.writes_into_out`: not a float32 one by oneDNN of one block)."""
    return grad_weight != "float32" or writes_into_out(float32_library(weight.device), tuple(weight.shape))


def _large_enough(x: Tensor, weight: Tensor) -> bool:
    """Whether a layer of ``weight`` gains from the fast product (:data:`FAST_MIN_NUMEL`,
    :data:`ONEDNN_FAST_MIN_NUMEL`)."""
    numel = weight.numel()
    if numel >= FAST_MIN_NUMEL or numel < ONEDNN_FAST_MIN_NUMEL:
        return numel >= FAST_MIN_NUMEL
    return float32_library(x.device) == "oneDNN"


def _rows(x: Tensor, weight: Tensor) -> Tensor:
    """An input of more than two dimensions (``(B, T, F)``, say) as the 2-D rows its product takes; others as given
    (``F.linear`` then says what does not fit)."""
    return x.reshape(-1, x.shape[-1]) if x.dim() > 2 and x.shape[-1] == weight.shape[1] else x


def product_used(x: Tensor, layer: Any) -> str:
    """Which product ``binary_linear(x, layer)`` uses: ``"F.linear"`` (small layer), one of :data:`PRODUCT_KINDS`
    (±1 input) or of :data:`REAL_PRODUCT_KINDS` (real-valued input).

    Example:
        >>> import bnn
        >>> product_used(torch.rand(8, 784), bnn.BinaryLinear(784, 64))
        'F.linear'
    """
    weight = layer.weight
    if x.layout != torch.strided:  # (a sparse input: torch's own product takes it, the fast ones read strides)
        return "F.linear"
    x = _rows(x, weight)
    plain = x.dim() != 2 or x.dtype != torch.float32 or weight.dtype != torch.float32
    # a compiled model fuses the plain product itself; under autocast torch picks the product's precision; meta
    # tensors (shape inference) hold no values to pick a product by; forward-mode AD needs F.linear's tangents
    if (plain or x.device.type == "meta" or torch.compiler.is_compiling() or torch.is_autocast_enabled(x.device.type)
            or has_tangent(x, weight, layer.bias) or not _large_enough(x, weight)):
        return "F.linear"
    if not is_binary_input(x):
        return real_product_kind(x.device)
    return product_kind(x.device, x.shape[0], weight.shape[1], weight.shape[0])


def _backward_products(x: Tensor, layer: Any, kind: str) -> tuple[str | None, str | None]:
    """The products of ``grad @ signs`` and ``grad.T @ x`` (``None`` for a gradient not needed) of a layer whose forward
    product is ``kind``: ``"bfloat16"`` for a layer of that precision, else :func:`real_product_kind` where the other
    operand is ±1 (the input is when ``kind`` is an exact ±1 product other than float32, or its values are), and
    ``"float32"`` for a real-valued input's weight gradient."""
    low = layer.precision == "bfloat16"
    grad_input = grad_weight = None
    if x.requires_grad:
        grad_input = "bfloat16" if low else real_product_kind(x.device)
    if layer.weight.requires_grad:
        binary = kind in PRODUCT_KINDS and (kind != "float32" or is_binary_input(x))
        grad_weight = "bfloat16" if low else real_product_kind(x.device) if binary else "float32"
    return grad_input, grad_weight


def backward_products_used(x: Tensor, layer: Any) -> dict[str, str]:
    """The backward products a training step of ``binary_linear(x, layer)`` uses: ``{"grad_input": ...,
    "grad_weight": ...}`` for the gradients it computes, each one of :data:`REAL_PRODUCT_KINDS` or ``"bfloat16"``; empty
    for a layer on ``F.linear`` (torch's own backward).

    Example:
        >>> import bnn
        >>> backward_products_used(torch.rand(8, 784), bnn.BinaryLinear(784, 64))
        {}
    """
    kind = product_used(x, layer)
    if kind == "F.linear":
        return {}
    grad_input, grad_weight = _backward_products(_rows(x, layer.weight), layer, kind)
    return {name: used for name, used in (("grad_input", grad_input), ("grad_weight", grad_weight)) if used}


def binary_linear(x: Tensor, layer: Any) -> Tensor:
    """``F.linear(x, sign(W_h), bias)`` for a binary layer of :mod:`bnn.layers`, fast.

    Equal to ``F.linear(x, layer.visible_weight(), layer.bias)``: without a bias the output bit for bit; with one,
    a ±1 input's exact product is rounded once when the bias is added, and a real-valued input's float32 product
    may differ in its last bits (``F.linear`` adds the bias inside its product); gradients up to float32
    rounding (the same products, possibly summed in another order) or, for a layer with
    ``precision="bfloat16"``, up to bfloat16 rounding of the gradient.

    Example:
        >>> import bnn
        >>> layer = bnn.BinaryLinear(4, 3)
        >>> x = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
        >>> torch.equal(binary_linear(x, layer), x @ torch.sign(layer.weight).T)
        True
    """
    rows = _rows(x, layer.weight)
    if rows is not x:  # (a sequence's or an image's positions: each row one product, as F.linear takes them)
        return binary_linear(rows, layer).reshape(*x.shape[:-1], layer.weight.shape[0])
    kind = product_used(x, layer)
    if kind == "F.linear":
        return F.linear(x, layer.visible_weight(), layer.bias)
    weight, bias = layer.weight, layer.bias
    needs_grad = weight.requires_grad or x.requires_grad or (bias is not None and bias.requires_grad)
    if not (torch.is_grad_enabled() and needs_grad):
        return _product(x, _signs_for(layer, kind)[0], kind, bias)
    low = layer.precision == "bfloat16"
    if low:
        _warn_if_bfloat16_is_slow(x.device)
    grad_input, grad_weight = _backward_products(x, layer, kind)
    # grad_input = grad @ signs needs them in the backward precision, or as codes for lookups: all from one pass
    backward_dtype = {None: (), "lookup": (SIGN_CODES,), "bfloat16": (torch.bfloat16,), "float32": (torch.float32,)}
    signs, visible, backward = _signs_for(layer, kind, *backward_dtype[grad_input])
    backward_signs = backward[0] if backward else None
    grad_buffer = layer.gradient_buffer() if weight.requires_grad and _buffer_gains(grad_weight, weight) else None
    return _FastBinaryLinear.apply(x, weight, bias, signs, visible, kind, backward_signs, low, grad_buffer,
                                   grad_weight == "lookup")
