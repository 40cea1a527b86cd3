"""Persistent ±1 buffers of a binary layer: its signs written in place, without a new allocation per step.

A large layer's forward pass would otherwise allocate (and page in) a fresh weight-sized tensor for
``sign(W_h)`` every step. :class:`SignBuffers` keeps one buffer per dtype that was ever asked for (e.g.
int8 for the forward product and float32 for the backward one, as :mod:`bnn.binary_linear` uses them)
and rewrites all of them in one pass over the hidden weights:

* outside :func:`metaspike.binarized_once`, on every forward pass (so any edit of the hidden
  weights, through ``.data`` included, is seen);
* inside such a block, once, and again only when an optimizer step changes the weights' version.

Besides dtypes, :data:`PACKED` asks for the signs as bits in the layout of the native popcount kernel
(:func:`bnn.native.prepared_signs`), packed from the int8 buffer whenever the buffers are rewritten, and
:data:`SIGN_CODES` and :data:`TRANSPOSED_SIGN_CODES` for the codes of the lookup product
(:func:`bnn.native.sign_codes`), made from the int8 buffer.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from bnn import native
from metaspike.compiled import LARGE_TENSOR_LOOPS, LazyCompiled
from metaspike.quantizers import binary_sign
from metaspike.synapse import signs_cache_key

__all__ = ["SignBuffers", "COMPILED_SIGNS_MIN_NUMEL", "PACKED", "SIGN_CODES", "TRANSPOSED_SIGN_CODES",
           "storage_is_free"]

COMPILED_SIGNS_MIN_NUMEL = 1 << 20
"""Hidden weights with at least this many entries get their signs from one compiled pass."""
PACKED = "packed"
"""Asks :meth:`SignBuffers.signs_as` for the signs of a 2-D weight as bits for :func:`bnn.native.popcount_product`
(``None`` where the native kernels are not built)."""
SIGN_CODES = "sign codes"
"""Asks :meth:`SignBuffers.signs_as` for the signs of a 2-D weight ``(out, in)`` as the codes of
:func:`bnn.native.sign_codes` (``(ceil(out/5), in)`` uint8), for ``grad @ signs`` by :func:`bnn.native.signed_sums`
(``None`` where the native kernels are not built)."""
TRANSPOSED_SIGN_CODES = "transposed sign codes"
"""Asks for the codes of the transposed signs (:func:`bnn.native.transposed_sign_codes`, ``(ceil(in/5), out)``
uint8), for a real-valued input's ``x @ signs.T`` by :func:`bnn.native.signed_sums`."""
_DERIVED = {PACKED: "prepared_signs", SIGN_CODES: "sign_codes", TRANSPOSED_SIGN_CODES: "transposed_sign_codes"}
"""The function of :mod:`bnn.native` that makes each derived format from the int8 buffer (the smallest to read)."""


def _signs_into(weight: Tensor, outs: list[Tensor]) -> None:
    """Writes ``sign(weight)`` into every tensor of ``outs`` (all flat, in one order of dtypes).

    Flat tensors in a fixed order keep the compiled pass to one graph per set of dtypes (at most
    7 for float32, bfloat16 and int8), well within torch.compile's limit of 8 per function.
    """
    same = [out for out in outs if out.dtype == weight.dtype]  # written directly, the rest copied from it
    int8 = [out for out in outs if out.dtype == torch.int8]
    if not same and int8 and not torch.compiler.is_compiling():  # (a compiled pass fuses binary_sign into the copy)
        signs = _int8_signs_into(weight, int8[0])
    else:
        signs = binary_sign(weight, out=same[0] if same else None)
    for out in outs:
        if out is not signs:
            out.copy_(signs)


def _int8_signs_into(weight: Tensor, out: Tensor) -> Tensor:
    """``binary_sign(weight)`` as int8 into ``out`` without a weight-sized float temporary (which an eager pass pays
    for in page faults at every call: a 784-4096-4096-10 ``bnn.MLP`` at batch 1 took 30 ms a call under
    ``torch.inference_mode`` instead of 7-9): ``weight < 0`` as bytes in ``out``'s own memory, then ``1 - 2·that``
    (-0.0 and NaN are not below 0: +1, as :func:`binary_sign` gives them on CPUs)."""
    torch.lt(weight, 0, out=out.view(torch.bool))
    return out.mul_(-2).add_(1)


def _native_int8_signs_into(weight: Tensor, outs: list[Tensor]) -> bool:
    """Writes the signs of a float32 CPU ``weight`` by :func:`bnn.native.int8_signs` where ``outs`` is one int8 buffer
    (what the popcount and lookup products ask for) and the native kernels are built; returns whether it did. One pass
    that reads the weight once, where the eager pass made three (784 x 1024: 0.38 ms for its first against 0.05 ms, one
    thread, AMD EPYC Zen 4) and the compiled one costs a compiled call besides."""
    if (len(outs) != 1 or outs[0].dtype != torch.int8 or weight.dtype != torch.float32 or weight.device.type != "cpu"
            or torch.compiler.is_compiling()):
        return False
    lib = native.kernels()
    if lib is None:
        return False
    native.int8_signs(lib, weight, outs[0], "hidden weight")
    return True


def storage_is_free(buffer: Tensor) -> bool:
    """True when only ``buffer`` itself refers to its memory (no saved tensor of a graph, view or copy aliases it).

    Example:
        >>> t = torch.zeros(3)
        >>> storage_is_free(t), storage_is_free(torch.zeros(3)), (lambda view: storage_is_free(t))(t[:1])
        (True, True, False)
    """
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return False
    storage = buffer.untyped_storage()
    return use_count(storage._cdata) <= 2  # ``buffer`` and the ``storage`` handle above


def _writable(buffer: Tensor) -> bool:
    """Whether a sign buffer may be rewritten in place: nothing else holds it (a graph that saved it for its
    backward pass, e.g. when one layer runs twice before one backward, would fail on the changed version), and it
    was not made under ``torch.inference_mode`` (such a tensor cannot be written outside it)."""
    return storage_is_free(buffer) and (torch.is_inference_mode_enabled() or not buffer.is_inference())


_compiled_signs_into = LazyCompiled(_signs_into, "sign buffers of a binary layer", LARGE_TENSOR_LOOPS)  # one pass


class SignBuffers:
    """The ±1 buffers of one hidden weight.

    Example:
        >>> w = torch.tensor([[-0.5, 0.0]])
        >>> buffers = SignBuffers()
        >>> buffers.signs(w), buffers.signs(w, torch.int8)
        (tensor([[-1.,  1.]]), tensor([[-1,  1]], dtype=torch.int8))
    """

    def __init__(self) -> None:
        self.__setstate__(self.__getstate__())

    def __getstate__(self) -> dict[str, Any]:
        """Buffers are a cache: a pickled or saved layer (``torch.save(model)``) keeps none (a weak reference cannot
        be pickled); the copy writes its own on its first forward pass."""
        return {"_weight": None, "_tensors": {}, "_written_under": None, "_written_from": None, "_derived": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(self.__getstate__())  # empty whatever was saved (a layer pickled by an older version)
        # one thread at a time checks, rewrites and hands out the buffers: a buffer another thread holds is never
        # rewritten (it gets a fresh one), where two threads running one layer read each other's half-written signs
        self._lock = threading.Lock()

    def signs(self, weight: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``sign(weight)`` as ``dtype`` (default: the weight's), from a buffer rewritten when needed."""
        return self.signs_as(weight, (dtype or weight.dtype,))[0]

    def signs_as(self, weight: Tensor, dtypes: Sequence[torch.dtype | str]) -> tuple[Any, ...]:
        """``sign(weight)`` in each of ``dtypes`` (or the formats made from them: :data:`PACKED`, :data:`SIGN_CODES`,
        :data:`TRANSPOSED_SIGN_CODES`), all from one pass (outside a block, one pass per call)."""
        with contextlib.nullcontext() if torch.compiler.is_compiling() else self._lock:
            return self._signs_as(weight, dtypes)

    def _signs_as(self, weight: Tensor, dtypes: Sequence[torch.dtype | str]) -> tuple[Any, ...]:
        derived = [name for name in _DERIVED if name in dtypes]
        plain = [dtype for dtype in dtypes if dtype not in _DERIVED] + ([torch.int8] if derived else [])
        buffers: dict[Any, Any] = self._buffers_as(weight, list(dict.fromkeys(plain)))
        for name in derived:
            if name not in self._derived:
                lib, signs = native.kernels(), buffers[torch.int8]
                make = getattr(native, _DERIVED[name])
                self._derived[name] = None if lib is None else make(lib, signs.view(len(signs), -1))
            buffers[name] = self._derived[name]
        return tuple(buffers[dtype] for dtype in dtypes)

    def _buffers_as(self, weight: Tensor, dtypes: Sequence[Any]) -> dict[Any, Tensor]:
        """The buffers of ``dtypes``, rewritten when needed."""
        if self._weight is None or self._weight() is not weight or any(
                buffer.shape != weight.shape or buffer.device != weight.device for buffer in self._tensors.values()):
            self._weight = weakref.ref(weight)  # (another weight, or this one given new data: weight.data = ...)
            self._tensors = {}
        missing = [dtype for dtype in dtypes if dtype not in self._tensors]
        if missing:
            for dtype in missing:
                self._tensors[dtype] = torch.empty_like(weight, dtype=dtype, memory_format=torch.contiguous_format)
            self._tensors = dict(sorted(self._tensors.items(), key=lambda item: str(item[0])))
            self._written_under = None
        block = signs_cache_key()
        # (new data given to the weight, ``weight.data = ...``, keeps its version: its memory tells)
        key = None if block is None else (block, weight._version, weight.data_ptr())
        inference_left = not torch.is_inference_mode_enabled() and any(b.is_inference() for b in self._tensors.values())
        if key is None or key != self._written_under or inference_left:
            # (under inference_mode or autocast the pass would compile again for that state, and meta tensors hold
            # no data: it runs eagerly)
            large = (weight.numel() >= COMPILED_SIGNS_MIN_NUMEL and weight.device.type != "meta"
                     and not torch.compiler.is_compiling()
                     and not torch.is_inference_mode_enabled() and not torch.is_autocast_enabled(weight.device.type))
            for dtype, buffer in self._tensors.items():
                if not _writable(buffer):  # a fresh buffer: the old one lives on where it is held
                    self._tensors[dtype] = torch.empty_like(buffer)
            # (no grad-mode switch under torch.export: the program kept it as a node its own loader refuses,
            # "wrap_with_set_grad_enabled is missing val field"; the weight is read detached there anyway)
            with contextlib.nullcontext() if torch.compiler.is_exporting() else torch.no_grad():
                outs = [out.view(-1) for out in self._tensors.values()]
                # (detached: a forward-mode tangent has no place in a buffer, and sign's out= form refuses one)
                flat = weight.detach().reshape(-1)
                if not _native_int8_signs_into(flat, outs):
                    (_compiled_signs_into if large else _signs_into)(flat, outs)
            self._written_under = key
            # (the weight's memory, held while the key names its address: ``weight.data = ...`` could otherwise put
            # new values at the address just freed, under the same version, and the old signs would be used)
            self._written_from = None if key is None else weight.detach()
            self._derived = {}
        return {dtype: self._tensors[dtype] for dtype in dtypes}
