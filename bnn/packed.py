"""Bit-packed inference for a trained :class:`bnn.MLP`: 1-bit weights and activations.

:func:`pack` turns an MLP whose BatchNorm layers use fixed population statistics (see
:func:`bnn.use_population_statistics`) into a :class:`PackedMLP` that predicts exactly as the float
model in eval mode, from about 1/32 of its memory:

* Weights ``sign(W_h)`` and binary activations are bits (``1`` for ``+1``), packed into int64 words.
* A hidden layer's pre-activation is an XNOR-popcount: ``a = n - 2·popcount(x XOR w)`` (an
  integer, so the float model computes it exactly too).
* BatchNorm followed by ``sign`` becomes one integer threshold per neuron: the neuron fires iff
  ``a >= K`` or, where the BatchNorm scale is negative (which reverses the comparison), ``-a >= K``.
  ``K`` is found by evaluating the model's own BatchNorm, so every float rounding is reproduced.
* A layer's learned output gain ``α`` (``scale="channel"`` or ``"layer"``, :class:`metaspike.gain.OutputGain`)
  folds into the same threshold: the float model computes ``BN(α·a)``, which is monotone in ``a``
  (reversed where ``α < 0``), so the search above simply evaluates ``BN(α·a)``; the weights stay bits.
  The last layer keeps ``α`` (one float32 per class) and multiplies the scores by it before its BatchNorm.
* The first layer takes real-valued input, rounded to float32 once (as the float32 model reads it; every kernel
  computes from those values, whatever the input's dtype). Its pre-activation ``Σ ±x_i`` is compared in float64
  with the threshold found, as a hidden layer's, by evaluating the model's own float32 gain and BatchNorm: the first
  float32 sum at which the neuron fires (a binary search over the float32 values), so the packed model decides each
  neuron on its float64 sum exactly as the float model would decide that sum.
  That sum is exact where the nonzero inputs lie within a factor ``2**(29 - ceil(log2 n))`` of each other in
  magnitude (all are then whole multiples of the smallest one's float32 unit, and every partial sum an integer of
  them below ``2**53``); otherwise it is off by at most ``n·2**-53·Σ|x_i|``, 2**29 times less than the float32 sum's
  bound. The float model rounds that sum in float32, and where the rounding carries it across the threshold (an
  input within a rounding error of it), the two differ: this is the only possible difference between them. Measured on
  an untrained 784-4096-10 (population statistics of uniform noise): 14 of 20,000 uniform random inputs got other
  scores, none another prediction; trained models predict alike on the whole MNIST test split. A one-layer
  model's scores come straight from that sum, summed in another order: they agree to float32 rounding, not bit
  for bit. The torch ops sum it from per-byte tables (for each group of 8 inputs,
  the 256 signed sums ``Σ_j ±x_j`` are tabulated once per sample and each neuron adds the entries its
  weight bytes select); the native kernel sums from per-nibble tables in float32 and recomputes in
  float64 only the neurons whose float32 sum is too near the threshold to decide (see
  ``bnn/packed_kernels.c``).
* The last layer's BatchNorm is applied (in float32, as in the float model) to give class scores.

Kernels: by default the layers run in a small C library (:mod:`bnn.native`: table lookups by
vector permutes, XOR + the CPU's popcount instruction, threshold and bit packing in one pass per
layer, over tiles of several samples and outputs; weights are stored input-group-major so that one
vector holds one group of many outputs), built on first use with the system C compiler. Without
one, the two inner products are compiled with ``torch.compile`` instead. ``compile=False`` runs plain torch
ops (the reference the others are tested against). :meth:`PackedMLP.kernel_names` says which ran.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnn import native
from bnn.layers import BinaryLinear, SignActivation
from bnn.models import MLP
from metaspike.checks import is_whole, shown
from metaspike.compiled import LazyCompiled, uncompiled
from metaspike.files import atomic_open, load_torch_file, tensor_problem
from metaspike.gain import foreign_forward_hooks, output_gain
from metaspike.layer_selection import synapse_parametrization
from metaspike.quantizers import NoQuantizer, SteSign
from metaspike.training import warn_if_statistics_outdated

__all__ = ["pack", "PackedMLP", "PackedLayer"]

FORMAT = "bnn.PackedMLP"
VERSION = 5  # 5: the last layer stores its output gain; 4: hidden weights word-major, (words, outputs);
# 2 stored them (outputs, words). Versions 2 and 4 are still read (their last layer has no gain: ones).
_READ_VERSIONS = (2, 4, VERSION)
_SHIFTS = torch.arange(8, dtype=torch.uint8)
_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101


def _byte_signs() -> Tensor:
    """``(8, 256)`` float64: entry ``[j, b]`` is ``+1`` if bit ``j`` of byte ``b`` is set, else ``-1``."""
    bits = (torch.arange(256).unsqueeze(0) >> torch.arange(8).unsqueeze(1)) & 1
    return (2 * bits - 1).to(torch.float64)


_BYTE_SIGNS = _byte_signs()


def pack_bits(bits: Tensor, word_bits: int = 64) -> Tensor:
    """Pack a boolean ``(rows, n)`` tensor along its last dimension, bit ``i`` of a word for column ``i``.

    Columns are padded with zero bits to a multiple of ``word_bits`` (8: uint8 bytes; 64: int64
    words).

    Example:
        >>> pack_bits(torch.tensor([[True, False, True]]), word_bits=8)
        tensor([[5]], dtype=torch.uint8)
    """
    rows, n = bits.shape
    padded = F.pad(bits.to(torch.uint8), (0, -n % word_bits))
    packed = (padded.view(rows, -1, 8) << _SHIFTS).sum(-1, dtype=torch.uint8)
    return packed if word_bits == 8 else packed.view(torch.int64)


def _popcount(words: Tensor) -> Tensor:
    """Set bits of each int64 word (SWAR; integer arithmetic wraps modulo 2⁶⁴)."""
    v = words - ((words >> 1) & _M1)
    v = (v & _M2) + ((v >> 2) & _M2)
    v = (v + (v >> 4)) & _M4
    return (v * _H01) >> 56


def _real_dot(x: Tensor, weight_t: Tensor) -> Tensor:
    """``x @ sign_matrix.T`` in float64 for real ``x (B, n)`` and sign bytes ``weight_t (ceil(n/8), out)``."""
    weight = weight_t.t()
    batch, (out, groups) = x.shape[0], weight.shape
    x = F.pad(x.to(torch.float64), (0, 8 * groups - x.shape[1]))
    table = x.view(batch, groups, 8) @ _BYTE_SIGNS.to(x.device)  # (B, groups, 256): Σ_j ±x_j per byte
    index = weight.to(torch.int64).unsqueeze(0).unsqueeze(-1).expand(batch, out, groups, 1)
    return torch.gather(table.unsqueeze(1).expand(batch, out, groups, 256), 3, index).sum((2, 3))


def _binary_dot(words: Tensor, weight_t: Tensor, n: int) -> Tensor:
    """``x · w`` of ±1 vectors from their bits (``weight_t``: ``(words, out)``): ``n - 2·popcount(x XOR w)``,
    shape ``(B, out)``."""
    weight = weight_t.t()
    mismatches = _popcount(torch.bitwise_xor(words.unsqueeze(1), weight.unsqueeze(0))).sum(-1)
    return n - 2 * mismatches


# The two inner products, compiled on first use (shared by every PackedMLP in the process). Their
# table indices are bytes plus fixed offsets, always in range: the compiler's per-load check is skipped.
_COMPILED_DOTS = (
    LazyCompiled(_real_dot, "bit-packed first layer", {"assert_indirect_indexing": False}),
    LazyCompiled(_binary_dot, "XNOR-popcount layer", {"assert_indirect_indexing": False}),
)


def _last_preactivation(x: Tensor, layers: list[dict], sizes: list[int], dots: tuple = (_real_dot, _binary_dot)) -> Tensor:
    """Pre-activation of the last layer for a batch; ``dots`` are the two inner products.

    Only the inner products are compiled: thresholds and bit packing are small, and eager is
    faster for them than the compiled loops.
    """
    real_dot, binary_dot = dots
    a = real_dot(x.flatten(1), layers[0]["weight"])
    for i, layer in enumerate(layers[1:], start=1):
        previous = layers[i - 1]
        h = pack_bits(torch.where(previous["flip"], -a, a) >= previous["threshold"])
        a = binary_dot(h, layer["weight"], sizes[i])
    return a


def _native_last_preactivation(lib, x: Tensor, layers: list[dict], sizes: list[int], threads: int,
                                prepared: list[Tensor]) -> Tensor:
    """:func:`_last_preactivation` in the native kernels (on up to ``threads`` threads); hidden layers go straight
    to packed bits. ``prepared``: the weights of layers 1, 2, ... in the kernel's layout (:func:`native.kernel_weight`).

    :mod:`bnn.native` checks every tensor against the sizes its kernel uses, so layers changed
    after loading cannot make it read or write outside their buffers.
    """
    x = x.flatten(1)
    first = layers[0]
    if len(layers) == 1:
        return native.real_layer(lib, x, first["weight"], label="layer 0", threads=threads)
    h = native.real_layer(lib, x, first["weight"], first["flip"], first["threshold"], label="layer 0", threads=threads)
    for i, layer in enumerate(layers[1:-1], start=1):
        h = native.binary_layer(lib, h, sizes[i], layer["weight"], layer["flip"], layer["threshold"],
                                label=f"layer {i}", threads=threads, prepared=prepared[i - 1])
    return native.binary_layer(lib, h, sizes[-2], layers[-1]["weight"], label=f"layer {len(layers) - 1}",
                               threads=threads, prepared=prepared[-1])


@cache
def _torch_openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime torch runs its parallel ops on, where it can be found (Linux: the loaded ``libgomp``,
    ``libiomp`` or ``libomp``, torch's own copy first), else ``None`` (also when torch's backend is not OpenMP)."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        mapped = {line.split(maxsplit=5)[5].strip() for line in Path("/proc/self/maps").read_text().splitlines()
                  if len(line.split(maxsplit=5)) == 6}
    except OSError:
        return None
    runtimes = sorted((p for p in mapped if Path(p).name.startswith(("libgomp", "libiomp", "libomp"))),
                      key=lambda p: not p.startswith(str(Path(torch.__file__).parent)))
    for path in runtimes:
        try:  # RTLD_NOLOAD: the library already in the process, never a file loaded anew
            lib = ctypes.CDLL(path, mode=os.RTLD_LAZY | os.RTLD_NOLOAD)
        except (OSError, AttributeError):
            continue
        if hasattr(lib, "omp_set_num_threads"):
            return lib
    return None


@contextmanager
def _torch_on_calling_thread() -> Iterator[int]:
    """Runs torch's ops inside the block on the calling thread alone and yields torch's thread count before it.

    torch's OpenMP threads keep spinning for a while after each parallel region, on the cores the native
    kernels' threads then need. ``F.batch_norm`` opens one for any batch of two rows or more, so at batch 64
    a 784-4096-4096-10 model took 3.7 ms instead of 1.7 (2-core Intel Xeon). Only the calling thread's OpenMP
    setting changes (``torch.set_num_threads`` would also change the count that threads starting meanwhile
    take for good); without torch on OpenMP the block runs as it is. Results do not depend on the number of
    threads (each element is computed the same way).
    """
    threads = torch.get_num_threads()
    openmp = _torch_openmp() if threads > 1 else None
    if openmp is None:
        yield threads
        return
    openmp.omp_set_num_threads(1)
    try:
        yield threads
    finally:
        openmp.omp_set_num_threads(threads)


def _float32_input(x: Tensor) -> Tensor:
    """Floating-point input ``x`` rounded to float32, the one rounding every kernel computes from; a finite value
    beyond float32's range (which would round to infinity) is one ``ValueError``.

    Example:
        >>> _float32_input(torch.tensor([0.1], dtype=torch.float64)).item() == torch.tensor(0.1).item()
        True
    """
    rounded = x.to(torch.float32)
    if x.dtype == torch.float64 and bool((rounded.isinf() & x.isfinite()).any()):  # (float64: the one wider dtype)
        largest = torch.finfo(torch.float32).max
        raise ValueError(f"input holds finite values beyond float32's range (magnitudes up to {largest:.8g}): the "
                         "packed model computes in float32, as the float model does")
    return rounded


def _version(value: Any) -> int | None:
    """A tensor's version counter (it counts in-place changes); ``None`` for what has none: an inference-mode tensor,
    whose replacement alone is seen, or a value that is no tensor (the checks name it)."""
    try:
        return value._version
    except (AttributeError, RuntimeError):
        return None


def _scores(a: Tensor, last: dict) -> Tensor:
    """The last layer's gain and BatchNorm, run eagerly with the float model's own kernels so scores match
    bit for bit (a gain of 1 multiplies exactly) where the last layer's inputs are ±1; a model without a hidden layer
    scores its float64 first-layer sums, rounded once, where the float model's float32 sums may differ in their last
    bits."""
    return F.batch_norm(
        a.to(torch.float32) * last["gain"], last["mean"], last["var"], last["gamma"], last["beta"], training=False, eps=last["eps"]
    )


def _bytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass(frozen=True)
class PackedLayer:
    """Memory of one packed layer, for :meth:`PackedMLP.layer_bytes`."""

    inputs: int
    outputs: int
    weight_bytes: int
    other_bytes: int


def _check_compile(compile: Any) -> None:
    """``compile`` of :func:`pack`, :class:`PackedMLP` and its ``load`` must be a bool."""
    if not isinstance(compile, (bool, np.bool_)):
        raise ValueError(f"compile must be True (the fast kernels) or False (plain torch ops), got {compile!r}")


class PackedMLP:
    """A :class:`bnn.MLP` with packed 1-bit weights and activations (made by :func:`pack`).

    Call it on a batch of inputs for float32 class scores; :meth:`predict` gives labels.
    :meth:`save` / :meth:`load` store it in a file ``torch.load(..., weights_only=True)`` can read.

    Example:
        >>> import bnn
        >>> model = bnn.use_population_statistics(bnn.MLP([64, 32, 10]), torch.rand(200, 64)).eval()
        >>> packed = bnn.pack(model, compile=False)
        >>> x = torch.rand(5, 64)
        >>> bool((packed.predict(x) == model(x).argmax(1)).all())
        True
    """

    def __init__(self, sizes: Sequence[int], layers: Sequence[dict], compile: bool = True) -> None:
        _check_compile(compile)  # (a string "False" is true: it chose the fast kernels)
        if not (isinstance(sizes, Sequence) and len(sizes) >= 2 and all(is_whole(s, 1) for s in sizes)):
            raise ValueError(f"sizes must list at least 2 positive integer widths (input ... classes), got {sizes!r}")
        listed = isinstance(layers, (list, tuple))
        if not (listed and len(layers) == len(sizes) - 1 and all(isinstance(l, dict) for l in layers)):
            raise ValueError(f"layers must be a list (or tuple) of {len(sizes) - 1} dicts, one per layer of sizes "
                             f"{list(sizes)} (as bnn.pack makes them), got {type(layers).__name__} of "
                             f"{len(layers) if listed else 'no'} entries")
        self.sizes = [int(s) for s in sizes]
        self.layers = _valid_layers(self.sizes, list(layers))
        self._made_for = list(self.sizes)  # (what the layers were checked for: see _check_unchanged)
        self._entries_checked = self._entries()
        self._checked_last = self.layers[-1]  # (checked by _valid_layers; again by _check_unchanged when it changes)
        self._native = native.kernels() if compile else None
        self._prepared: dict[int, tuple[Tensor, int | None, Tensor]] = {}  # see _kernel_weights
        self._dots = _COMPILED_DOTS if compile else (_real_dot, _binary_dot)
        # rows per call: bounds the eager path's 8-byte intermediates to ~2**24 a row-chunk (~128 MB): the
        # (rows, outputs, groups or words) products and the first layer's (rows, groups, 256) table of byte sums
        per_row = max(max(layer["weight"].numel() for layer in self.layers), 256 * self.layers[0]["weight"].shape[0])
        self._rows = max(1, 2**24 // per_row)

    def __reduce__(self) -> tuple[Any, ...]:
        """``copy.deepcopy``, ``pickle`` and ``torch.save`` of the object keep its sizes, tensors and kernel choice and
        load the native kernels again (they are never pickled); :meth:`save` / :meth:`load` remain the file format
        that is checked when read."""
        return type(self), (self.sizes, self.layers, self._dots is _COMPILED_DOTS)

    @property
    def nbytes(self) -> int:
        """Bytes of everything the model stores (bit-packed weights, thresholds, last BatchNorm)."""
        return sum(layer.weight_bytes + layer.other_bytes for layer in self.layer_bytes())

    @property
    def kernel_copy_bytes(self) -> int:
        """Bytes the native kernels keep beside :attr:`nbytes` once called: the output-major copy (portable and AVX2
        kernels) of the hidden layers' weights (:func:`native.kernel_weight`); 0 where the kernels read the model's own
        tensors (AVX-512, torch ops).

        Example:
            >>> import bnn
            >>> model = bnn.use_population_statistics(bnn.MLP([64, 128, 10]), torch.rand(200, 64)).eval()
            >>> packed = bnn.pack(model, compile=False)  # torch ops: they read the model's own tensors
            >>> packed(torch.rand(1, 64)).shape, packed.kernel_copy_bytes
            (torch.Size([1, 10]), 0)
        """
        # (a tensor over the weight's own memory, as the AVX-512 kernel's checked view of it, is no copy)
        return sum(_bytes(copy) for weight, _, copy in self._prepared.values()
                   if copy.untyped_storage().data_ptr() != weight.untyped_storage().data_ptr())

    def layer_bytes(self) -> list[PackedLayer]:
        """Per-layer bytes: packed weights and the rest (thresholds, signs, BatchNorm)."""
        return [
            PackedLayer(
                self.sizes[i], self.sizes[i + 1], _bytes(layer["weight"]),
                sum(_bytes(t) for k, t in layer.items() if k != "weight" and isinstance(t, Tensor)),
            )
            for i, layer in enumerate(self.layers)
        ]

    def kernel_names(self) -> list[str]:
        """Which kernel computes each layer (native C, ``torch.compile`` or plain torch ops).

        Example:
            >>> import bnn
            >>> model = bnn.use_population_statistics(bnn.MLP([64, 32, 10]), torch.rand(200, 64)).eval()
            >>> bnn.pack(model, compile=False).kernel_names()
            ['torch ops: float64 byte tables', 'torch ops: XNOR-popcount']
        """
        if self._native is not None:
            real, binary = (f"native C: {kind}" for kind in native.kinds(self._native))
        else:
            real, binary = (
                f"{'torch.compile' if dot is not eager and not dot.broken else 'torch ops'}: {what}"
                for dot, eager, what in zip(self._dots, (_real_dot, _binary_dot), ("float64 byte tables", "XNOR-popcount"))
            )
        return [real] + [binary] * (len(self.layers) - 1)

    @torch.compiler.disable
    def __call__(self, x: Tensor) -> Tensor:
        """Class scores (float32, ``(batch, classes)``) of real-valued inputs ``x`` (finite, on the CPU).

        ``x`` may have any floating dtype: it is rounded to float32 once, as the float32 model it was packed from
        reads it, and every kernel computes from those values (a float64 input gets the scores of its float32
        rounding). ``torch.compile`` leaves the call as it is (it runs native kernels already; traced, their input
        checks failed inside the compiler on symbolic shapes), so a compiled model that calls it runs it eagerly.

        Raises:
            ValueError: ``x`` has the wrong number of features, is not a floating-point CPU tensor,
                holds NaN or infinite values, or finite values beyond float32's range.
        """
        if not isinstance(x, Tensor):
            raise ValueError(f"input must be a torch tensor (batch, ...) with {self.sizes[0]} features per sample, got "
                             f"a {type(x).__name__} (torch.as_tensor(x, dtype=torch.float32))")
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.sizes[0]:
            raise ValueError(f"input of shape {tuple(x.shape)} does not fit: expected (batch, ...) with "
                             f"{self.sizes[0]} features per sample")
        if x.device.type != "cpu":
            raise ValueError(f"input is on the {x.device.type} device; PackedMLP runs on the CPU (pass x.cpu())")
        if not torch.is_floating_point(x):
            raise ValueError(f"input must be floating point, got dtype {x.dtype}")
        if not isinstance(self.layers, list) or len(self.layers) != len(self.sizes) - 1:
            raise ValueError(f"the packed model's layers do not fit its sizes {self.sizes} ({len(self.sizes) - 1} "
                             "layers): they were changed after loading")
        _check_eps(self.layers)  # (the last layer's entries are checked before torch's BatchNorm reads them, below)
        self._check_unchanged()
        with torch.inference_mode():
            x = _float32_input(x)
            if self._native is not None:  # the kernel refuses NaN and infinity itself, at no cost
                with _torch_on_calling_thread() as threads:
                    a = _native_last_preactivation(self._native, x, self.layers, self.sizes, threads,
                                                   self._kernel_weights())
                    return _scores(a, self._checked_last)
            if not bool(torch.isfinite(x).all()):
                raise ValueError("input holds NaN or infinite values; only finite inputs are accepted")
            layers = _checked_layers(self.sizes, self.layers)
            if len(x) == 0:  # as the native kernels answer an empty batch
                return torch.zeros(0, self.sizes[-1])
            parts = [
                _last_preactivation(x[i : i + self._rows], layers, self.sizes, self._dots)
                for i in range(0, len(x), self._rows)
            ]
            return _scores(parts[0] if len(parts) == 1 else torch.cat(parts), layers[-1])

    def _entries(self) -> list[tuple[Any, int | None]]:
        """Each layer entry with its version counter (:func:`_version`), to tell when one was replaced or changed in
        place (the entries themselves are kept, not their ids, which a new tensor may take over)."""
        return [(value, _version(value)) for layer in self.layers if isinstance(layer, dict)
                for value in layer.values()]

    def _check_unchanged(self) -> None:
        """One ``ValueError`` where ``sizes`` were changed after the model was made (a kernel would count padding bits
        as inputs), or where an entry replaced or changed in place since the last check does not fit (its dtype or
        shape: :func:`_checked_layers`) or holds values the format refuses (:func:`_values_problem`: padding bits set,
        a negative variance, a NaN threshold): in place they gave wrong or NaN scores without a word, where a file
        holding them is refused. Keeps the checked last layer for torch's BatchNorm, checked only when something
        changed (at every call it cost 14-24 % of a 784-1024-1024-10 call at batch 1)."""
        if self.sizes != self._made_for:
            raise ValueError(f"the packed model's sizes were changed to {self.sizes} after it was made for "
                             f"{self._made_for}")
        entries, kept = self._entries(), self._entries_checked
        if len(entries) != len(kept) or any(value is not was or version != was_version
                                            for (value, version), (was, was_version) in zip(entries, kept)):
            checked = _checked_layers(self.sizes, self.layers)
            problem = _values_problem(self.sizes, checked)
            if problem is not None:
                raise ValueError(f"the packed model's {problem}: changed after it was made")
            self._entries_checked, self._checked_last = entries, checked[-1]

    def _kernel_weights(self) -> list[Tensor]:
        """The weights of layers 1, 2, ... in the native kernel's layout (:func:`native.kernel_weight`: an
        output-major copy for the portable and AVX2 kernels), kept between calls and made again when a layer's weight
        tensor is replaced or changed in place (its version counter; an inference-mode tensor has none, so only its
        replacement is seen)."""
        prepared = []
        for i, layer in enumerate(self.layers[1:], start=1):
            weight = layer["weight"]
            version = _version(weight)
            kept = self._prepared.get(i)
            if kept is None or kept[0] is not weight or kept[1] != version:
                kept = self._prepared[i] = (weight, version, native.kernel_weight(self._native, weight, f"layer {i}"))
            prepared.append(kept[2])
        return prepared

    def predict(self, x: Tensor) -> Tensor:
        """Predicted class of each input (argmax of the scores)."""
        return self(x).argmax(1)

    def __repr__(self) -> str:
        return f"PackedMLP(sizes={self.sizes}, {self.nbytes / 1024:.1f} kB)"

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to ``path`` (a ``torch.save`` file of tensors, ints and strings only), atomically."""
        with atomic_open(path, "wb") as handle:
            torch.save(
                {"format": FORMAT, "version": VERSION, "sizes": self.sizes, "layers": self.layers,
                 "sha256": _checksum(self.sizes, self.layers)},
                handle,
            )

    @classmethod
    def load(cls, path: str | os.PathLike, compile: bool = True) -> PackedMLP:
        """Read a model written by :meth:`save`; a damaged file raises ``ValueError``.

        Example:
            >>> import tempfile, os
            >>> path = os.path.join(tempfile.mkdtemp(), "bad.pt")
            >>> _ = open(path, "wb").write(b"not a model")
            >>> PackedMLP.load(path)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: packed BNN file ... is not a zip archive, which torch.save writes (it starts with b'not '): ...
        """
        _check_compile(compile)
        data = load_torch_file(path, "packed BNN file")
        try:
            return cls(*_check_file(data, path), compile=compile)
        except ValueError as err:
            if str(err).startswith(f"{path} "):
                raise
            raise ValueError(f"{path} is not a valid packed BNN file: {err}") from None


def _checksum(sizes: list[int], layers: list[dict]) -> str:
    """SHA-256 of the sizes and every stored value (tensor bytes in key order), to detect damage."""
    digest = hashlib.sha256(repr(sizes).encode())
    for layer in layers:
        for key in sorted(layer):
            value = layer[key]
            digest.update(key.encode())
            # (flat first: torch calls a (words, 1) tensor of strides (1, words) contiguous, and a byte view of its
            # 64-bit words needs a last stride of 1; the bytes are those of the tensor in row order either way)
            digest.update(value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                          if isinstance(value, Tensor) else repr(value).encode())
    return digest.hexdigest()


_FILE_KEYS = {"format", "version", "sizes", "layers", "sha256"}


def _layer_tensors(sizes: list[int], i: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of each tensor of layer ``i`` of a packed model with these ``sizes``."""
    n_in, n_out = sizes[i], sizes[i + 1]
    if i == 0:
        expected = {"weight": ((-(-n_in // 8), n_out), torch.uint8)}
    else:
        expected = {"weight": ((-(-n_in // 64), n_out), torch.int64)}
    if i == len(sizes) - 2:
        expected.update({k: ((n_out,), torch.float32) for k in ("gain", "mean", "var", "gamma", "beta")})
    else:
        expected["flip"] = ((n_out,), torch.bool)
        expected["threshold"] = ((n_out,), torch.float64 if i == 0 else torch.int64)
    return expected


def _valid_layers(sizes: list[int], layers: list[dict]) -> list[dict]:
    """Copies of ``layers`` whose entries are what :func:`pack` makes for ``sizes``: exactly its keys, its tensors'
    dtypes and shapes (:func:`_checked_layers`), a finite last-layer ``eps >= 0`` and values it can write
    (:func:`_values_problem`); else one ``ValueError`` naming the layer and entry. What :class:`PackedMLP` is made of,
    by :func:`pack`, :meth:`PackedMLP.load` or a hand."""
    for i, layer in enumerate(layers):
        keys = set(_layer_tensors(sizes, i)) | ({"eps"} if i == len(layers) - 1 else set())
        if set(layer) != keys:
            raise ValueError(f"layer {i} has entries {sorted(map(str, layer))}, expected {sorted(keys)}")
    _check_eps(layers)
    checked = _checked_layers(sizes, layers)
    problem = _values_problem(sizes, checked)
    if problem is not None:
        raise ValueError(problem)
    return checked


def _check_eps(layers: list[dict]) -> None:
    """A ``ValueError`` naming the last layer unless its ``eps`` is what :func:`pack` writes: a finite float >= 0 (a
    tensor there, even of one element, is refused before anything hashes or formats it). A zero ``eps`` is a valid
    BatchNorm; with a zero variance it divides by zero, which :func:`_value_problem` refuses as non-finite scores."""
    eps = layers[-1].get("eps")
    if not (type(eps) is float and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"layer {len(layers) - 1} 'eps' is {shown(eps)}, expected a finite float >= 0")


def _checked_layers(sizes: list[int], layers: list[dict]) -> list[dict]:
    """``layers`` with every tensor checked against ``sizes`` (:func:`bnn.native.check_tensor`).

    The torch paths run this before each call: their compiled table lookups skip index checks,
    so a layer changed after loading must not reach them with other dtypes or shapes.
    """
    return [_checked_layer(sizes, layers, i) for i in range(len(layers))]


def _checked_layer(sizes: list[int], layers: list[dict], i: int) -> dict:
    """Layer ``i`` of ``layers`` with each of its tensors checked against ``sizes``
    (:func:`bnn.native.check_tensor`)."""
    layer = layers[i]
    return {**layer, **{key: native.check_tensor(f"layer {i}", repr(key), layer.get(key), shape, dtype)
                        for key, (shape, dtype) in _layer_tensors(sizes, i).items()}}


def _value_problem(layer: dict, n_in: int, last: bool, first: bool) -> str | None:
    """What is wrong with the values of a layer read from a file (``None``: nothing): what :func:`pack` can write
    is finite floats (a variance ``>= 0``), first-layer thresholds that are numbers or ``±inf`` (a constant
    unit), integer thresholds in ``[-n-1, n+1]`` for ``n`` inputs, weights whose padding bits are 0, and a last
    layer whose scores are finite for every pre-activation it can get."""
    word_bits = 8 if first else 64
    used = n_in - (layer["weight"].shape[0] - 1) * word_bits  # bits of the last word that hold inputs
    if used < word_bits and bool((layer["weight"][-1] & -(1 << used)).any()):
        return (f"'weight' sets padding bits beyond its {n_in} inputs (pack writes them 0; set, they would count as "
                "mismatches in every dot product)")
    if last:
        for key in ("gain", "mean", "var", "gamma", "beta"):
            if not bool(torch.isfinite(layer[key]).all()):
                return f"{key!r} holds NaN or infinite values"
        if bool((layer["var"] < 0).any()):
            return "'var' holds negative variances"
        # a score is affine in the pre-activation, an integer in [-n, n]: finite at both ends, finite for every input
        ends = torch.tensor([[-n_in], [n_in]], dtype=torch.float32).expand(2, layer["gain"].numel())
        if not bool(torch.isfinite(_scores(ends, layer)).all()):
            return (f"gain, mean, var, gamma, beta and eps {layer['eps']!r} give scores beyond float32 (NaN or infinite) "
                    f"for pre-activations within ±{n_in}")
        return None
    threshold = layer["threshold"]
    if first and bool(threshold.isnan().any()):
        return "'threshold' holds NaN"
    if not first and bool(((threshold < -n_in - 1) | (threshold > n_in + 1)).any()):
        return f"'threshold' holds values outside [-{n_in + 1}, {n_in + 1}] (the layer has {n_in} inputs)"
    return None


def _values_problem(sizes: list[int], layers: list[dict]) -> str | None:
    """The first layer whose values :func:`_value_problem` finds wrong, as ``"layer i ..."`` (``None``: none)."""
    for i, layer in enumerate(layers):
        problem = _value_problem(layer, sizes[i], last=i == len(layers) - 1, first=i == 0)
        if problem is not None:
            return f"layer {i} {problem}"
    return None


def _check_file(data: object, path: str | os.PathLike) -> tuple[list[int], list[dict]]:
    """Validate what :meth:`PackedMLP.save` wrote; return ``(sizes, layers)`` with contiguous CPU tensors.

    Every entry must have exactly the dtype and shape the sizes imply (a file with extra or
    missing entries, tensors short of memory or of another layout or device is refused); views
    are copied (:func:`bnn.native.check_tensor`), so the layers own buffers of exactly those
    sizes. Version 2 and 4 files are read too (their last layer gets a gain of ones).
    """

    def bad(why: str) -> ValueError:
        return ValueError(f"{path} is not a valid packed BNN file: {why}")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise bad(f"it does not start with the {FORMAT!r} header")
    version = data.get("version")
    if type(version) is not int or version not in _READ_VERSIONS:
        raise bad(f"format version {shown(version)}, this code reads versions {', '.join(map(str, _READ_VERSIONS))}")
    if set(data) != _FILE_KEYS:
        raise bad(f"it has entries {sorted(map(str, data))}, expected {sorted(_FILE_KEYS)}")
    sizes, layers = data["sizes"], data["layers"]
    if not (isinstance(sizes, list) and len(sizes) >= 2 and all(type(s) is int and s > 0 for s in sizes)):
        raise bad(f"sizes {shown(sizes)} are not a list of at least 2 positive ints")
    if not (isinstance(layers, list) and len(layers) == len(sizes) - 1 and all(type(l) is dict for l in layers)):
        raise bad(f"expected {len(sizes) - 1} layers")
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        expected = _layer_tensors(sizes, i)
        if i > 0 and version == 2:
            expected["weight"] = (expected["weight"][0][::-1], torch.int64)
        if version < 5:
            expected.pop("gain", None)
        keys = set(expected) | ({"eps"} if last else set())
        if set(layer) != keys:
            raise bad(f"layer {i} has entries {sorted(map(str, layer))}, expected {sorted(keys)}")
        for key, value in layer.items():  # (sparse, nested, or a view repeating its elements: before any copy or hash)
            problem = tensor_problem(value) if isinstance(value, Tensor) else None
            if problem is not None:
                raise bad(f"layer {i} {key!r} is {problem}; a packed file stores every element")
        for key, (shape, dtype) in expected.items():
            try:
                layer[key] = native.check_tensor(f"layer {i}", repr(key), layer[key], shape, dtype)
            except ValueError as err:
                raise bad(str(err)) from None
    try:
        _check_eps(layers)  # (before the checksum, which would hash a tensor there)
    except ValueError as err:
        raise bad(str(err)) from None
    if data["sha256"] != _checksum(sizes, layers):
        raise bad("its contents do not match their SHA-256 checksum (the file is corrupted)")
    if version == 2:
        for layer in layers[1:]:
            layer["weight"] = layer["weight"].t().contiguous()
    if version < 5:
        layers[-1]["gain"] = torch.ones(sizes[-1])
    return sizes, layers  # (their values: checked by PackedMLP, as those of any layers)


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------


#: Modules an MLP in eval mode passes its input through unchanged (a 2-D batch through ``Flatten``, every kind of
#: dropout): pack skips them.
_PASS_THROUGH = (nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.FeatureAlphaDropout)
#: The classes whose forward pack reads from their parameters (or skips): a subclass must keep their forward.
_KNOWN_LAYERS = (BinaryLinear, nn.BatchNorm1d, SignActivation, *_PASS_THROUGH)


def _replaced_forward(module: nn.Module) -> type[nn.Module] | None:
    """The first class of :data:`_KNOWN_LAYERS` that ``module`` is an instance of but whose ``forward`` its own class
    replaces (pack would compute that class's forward, not the module's), else ``None``."""
    return next((known for known in _KNOWN_LAYERS
                 if isinstance(module, known) and type(module).forward is not known.forward), None)


#: The layers of an MLP pack takes, as its messages name them.
_MLP_LAYOUT = "BinaryLinear -> BatchNorm1d per layer, a SignActivation between layers"
#: Convolutions of every kind (their lazy forms subclass them): no packed kernel computes one.
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _check_no_convolution(model: nn.Module) -> None:
    """One line naming the first convolutional layer of ``model``, if it has one: pack computes dense layers only, so
    this is the reason to give first (before the model's forward or its order of layers)."""
    found = next(((name, m) for name, m in model.named_modules() if isinstance(m, _CONVOLUTIONS)), None)
    if found is not None:
        name, module = found
        raise ValueError(f"pack cannot pack convolutional layers: module {name or type(model).__name__!r} of "
                         f"{type(model).__name__} is a {type(module).__name__}; pack takes MLPs ({_MLP_LAYOUT}), such "
                         "as bnn.MLP")


def _quantizes_input(linear: BinaryLinear) -> bool:
    """Whether ``linear`` changes its input before its product (any input_quantizer but ``None``): the packed first
    layer sums the real input and the later ones take the signs of a SignActivation, so pack refuses it."""
    return not isinstance(linear.input_quantizer, NoQuantizer)


def _layers_of(model: nn.Module) -> list[tuple[BinaryLinear, nn.BatchNorm1d]]:
    """The ``(BinaryLinear, BatchNorm1d)`` pairs of an MLP, after checking its structure: a ``bnn.MLP`` or an
    ``nn.Sequential`` (whose forward is its modules in order: the packed model computes that and nothing else) of
    layers whose classes keep the forward of the layer pack reads them as (:func:`_replaced_forward`), ending with a
    BatchNorm1d (whose scores the packed model gives)."""
    _check_no_convolution(model)
    if type(model).forward not in (MLP.forward, nn.Sequential.forward):
        raise ValueError(f"pack takes a bnn.MLP or an nn.Sequential of its layers; {type(model).__name__} has a forward "
                         "of its own, which pack cannot see (it would pack the layers and drop what forward does "
                         "between them): put the layers in an nn.Sequential, or move other work out of the model")
    hooked = next((name or type(model).__name__ for name, m in model.named_modules() if foreign_forward_hooks(m)),
                  None)
    if hooked is not None:
        raise ValueError(f"pack: module {hooked!r} has forward hooks, which can change what the model computes and "
                         "which pack cannot see; remove them first (the handle's .remove())")
    for name, module in model.named_children():
        replaced = _replaced_forward(module)
        if replaced is not None:
            raise ValueError(f"pack: module {name!r} of {type(model).__name__} is a {type(module).__name__}, a "
                             f"{replaced.__name__} with a forward of its own, which pack cannot see (it packs what "
                             f"{replaced.__name__}.forward computes): use a plain {replaced.__name__} there, or move "
                             "the other work out of the model")
    named = [(name, m) for name, m in model.named_children() if not isinstance(m, _PASS_THROUGH)]
    modules = [m for _, m in named]
    pairs, i = [], 0
    while i < len(modules):
        linear, norm = modules[i], modules[i + 1] if i + 1 < len(modules) else None
        if isinstance(linear, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            raise ValueError(f"pack takes the MLP itself; module {named[i][0]!r} of {type(model).__name__} is a "
                             f"{type(linear).__name__} holding layers: pack that module")
        if not isinstance(linear, BinaryLinear):
            raise ValueError(f"pack expects a bnn.MLP ({_MLP_LAYOUT}); found {type(linear).__name__} where layer "
                             f"{len(pairs)}'s BinaryLinear should be")
        if not isinstance(norm, nn.BatchNorm1d):
            after = "nothing" if norm is None else type(norm).__name__
            raise ValueError(f"pack expects a bnn.MLP ({_MLP_LAYOUT}); layer {len(pairs)}'s BinaryLinear is followed "
                             f"by {after}, not a BatchNorm1d (whose statistics become the packed thresholds and scores)")
        if not isinstance(linear.weight_quantizer, SteSign):
            raise ValueError(f"layer {len(pairs)} does not binarize its weights (its weight_quantizer is not a sign)")
        if linear.bias is not None:
            raise ValueError(f"layer {len(pairs)} has a bias; pack supports the bias-free layers of bnn.MLP")
        if getattr(synapse_parametrization(linear), "evaluation", "mode") != "mode":
            raise ValueError(f"layer {len(pairs)} draws a new weight sample at every evaluation (Bayesian synapses "
                             "with evaluation='sample'), which one packed weight cannot equal; pack a model whose "
                             "synapses evaluate with their mode (evaluation='mode')")
        if _quantizes_input(linear):
            raise ValueError(f"layer {len(pairs)} quantizes its input (input_quantizer {linear.input_quantizer!r}); "
                             "pack supports bnn.MLP's layers, whose inputs are the real data and the signs of "
                             "SignActivation")
        if norm.running_mean is None or norm.running_var is None:
            raise ValueError(
                f"BatchNorm of layer {len(pairs)} has no population statistics; call "
                "bnn.use_population_statistics(model, training_inputs) before bnn.pack(model)"
            )
        gain = output_gain(linear)
        others = [t for t in (norm.weight, norm.bias, None if gain is None else gain.alpha) if t is not None]
        if not all(bool(torch.isfinite(t).all()) for t in (norm.running_mean, norm.running_var, linear.weight, *others)):
            raise ValueError(f"layer {len(pairs)} holds NaN or infinite values (weights, gain, BatchNorm statistics or "
                             "affine parameters); pack needs a finite model")
        divides_by_zero = (norm.running_var.float() + norm.eps == 0).nonzero().flatten().tolist()  # (float32, as torch)
        if divides_by_zero:
            raise ValueError(f"BatchNorm of layer {len(pairs)} has running_var + eps = 0 at {len(divides_by_zero)} "
                             f"unit(s) (first: {divides_by_zero[0]}): the float model divides by zero there, so its "
                             "outputs are NaN or infinite; give that BatchNorm an eps > 0 (BatchNorm1d's default is "
                             "1e-5)")
        pairs.append((linear, norm))
        i += 2
        is_last = i >= len(modules)
        if not is_last:
            if not isinstance(modules[i], SignActivation):
                following = modules[i]
                why = (f"; layer {len(pairs)} quantizes its input itself (input_quantizer "
                       f"{following.input_quantizer!r}): pack takes the sign as a bnn.SignActivation between the "
                       "layers, with input_quantizer=None"
                       if isinstance(following, BinaryLinear) and _quantizes_input(following) else "")
                raise ValueError(f"layer {len(pairs) - 1} is followed by {type(following).__name__}; pack needs a "
                                 f"bnn.SignActivation there{why}")
            i += 1
            if i >= len(modules):
                raise ValueError(f"pack: the model ends with a SignActivation after layer {len(pairs) - 1}'s "
                                 "BatchNorm1d, so its outputs are ±1 (ties broken by position); a packed model gives "
                                 "the last BatchNorm's class scores, as bnn.MLP does: remove that SignActivation "
                                 "to pack the model (its predictions are then the argmax of the scores)")
    if not pairs:
        raise ValueError("pack expects a bnn.MLP with at least one BinaryLinear layer")
    return pairs


def _affine(norm: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    ones = torch.ones_like(norm.running_mean)
    gamma = norm.weight.detach() if norm.weight is not None else ones
    beta = norm.bias.detach() if norm.bias is not None else torch.zeros_like(ones)
    return gamma.float(), beta.float()


def _bn_eval(norm: nn.BatchNorm1d, a: Tensor) -> Tensor:
    """The float model's BatchNorm in eval mode, on float32 pre-activations ``a`` of shape (1, C)."""
    gamma, beta = _affine(norm)
    return F.batch_norm(a, norm.running_mean.float(), norm.running_var.float(), gamma, beta, training=False, eps=norm.eps)


def _gain(linear: BinaryLinear) -> Tensor:
    """The layer's output gain ``α`` per output (float32; ones where it has none)."""
    gain = output_gain(linear)
    return torch.ones(linear.out_features) if gain is None else gain.per_channel(linear.out_features).float()


def _integer_threshold(norm: nn.BatchNorm1d, gain: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``(flip, K)``: ``sign(BN(α·a)) = +1`` iff ``(-a if flip else a) >= K``, for integers ``|a| <= n``.

    Binary search over the integers, evaluating the gain's product and the BatchNorm in float32 as the
    float model does, so the result agrees with its arithmetic everywhere. ``BN(α·a)`` is monotone in
    ``a``: increasing where ``γ`` and ``α`` have the same sign, decreasing otherwise (hence ``flip``);
    where either is 0 it is constant and ``K`` lands outside ``[-n, n]`` or at ``-n``.
    """
    gamma, _ = _affine(norm)
    flip = (gamma < 0) != (gain < 0)
    sign = 1 - 2 * flip.to(torch.int64)
    return flip, _first_firing(norm, n, lambda a: (sign * a).to(torch.float32) * gain)


def _first_firing(norm: nn.BatchNorm1d, bound: int, gained: Callable[[Tensor], Tensor]) -> Tensor:
    """Per neuron, the least integer ``k`` in ``[-bound, bound + 1]`` at which ``BN(gained(k)) >= 0``, by a binary
    search: ``gained(k)`` is the float32 input of the float model's BatchNorm at the ``k``-th value searched (the
    gain's product), and firing is monotone in ``k``; ``bound + 1`` where it fires nowhere, ``-bound`` where it fires
    everywhere (``-bound - 1`` never fires and ``bound + 1`` always does, virtually)."""
    lo = torch.full(norm.running_mean.shape, -bound - 1, dtype=torch.int64)
    hi = torch.full(norm.running_mean.shape, bound + 1, dtype=torch.int64)
    for _ in range(math.ceil(math.log2(2 * bound + 2)) + 1):
        mid = (lo + hi) // 2
        fires = _bn_eval(norm, gained(mid).unsqueeze(0))[0] >= 0
        hi = torch.where(fires, mid, hi)
        lo = torch.where(fires, lo, mid)
    return hi


#: The bits of float32's +inf read as an integer: the largest key of :func:`_float32_of_keys` (-inf's is its negative).
_INF_KEY = 0x7F800000


def _float32_of_keys(keys: Tensor) -> Tensor:
    """The float32 values whose order the int64 ``keys`` number, from ``-_INF_KEY`` (-inf) through 0 to ``_INF_KEY``
    (+inf): a key is a float's bits where it is >= 0, and minus its magnitude's bits where it is < 0.

    Example:
        >>> _float32_of_keys(torch.tensor([-_INF_KEY, -1, 0, 1, 0x3F800000, _INF_KEY])).tolist()
        [-inf, -1.401298464324817e-45, 0.0, 1.401298464324817e-45, 1.0, inf]
    """
    bits = torch.where(keys < 0, keys.abs() - (1 << 31), keys)  # (a negative float's bits as a signed int32)
    return bits.to(torch.int32).view(torch.float32)


def _real_threshold(norm: nn.BatchNorm1d, gain: Tensor) -> tuple[Tensor, Tensor]:
    """``(flip, K)`` for a real pre-activation: ``sign(BN(α·a)) = +1`` iff ``(-a if flip else a) >= K`` for every
    float32 ``a``, ``K`` a float32 value (or ±inf) held in float64.

    Binary search over the float32 values in their order, evaluating the gain's product and the BatchNorm in float32 as
    the float model does (as :func:`_integer_threshold` does over the integers): both are monotone in ``a`` under
    rounding, so a float32 sum decides as in the float model, and the packed model differs only where its float64
    sum and the float model's float32 sum lie on two sides of ``K``. (The crossing ``(μ - β·sqrt(σ² + ε)/γ) / α``
    worked out in float64 missed the BatchNorm's own rounding: one input of 0.14176674 fired in the float model, whose
    BatchNorm gave +1.4e-9 there, and not in the packed one.) Where ``γ`` or ``α`` is 0 the unit is constant.
    """
    gamma, _ = _affine(norm)
    flip = (gamma < 0) != (gain < 0)
    sign = 1 - 2 * flip.to(torch.float32)
    key = _first_firing(norm, _INF_KEY, lambda keys: sign * _float32_of_keys(keys) * gain)
    found = torch.where(key > _INF_KEY, math.inf, _float32_of_keys(key.clamp(max=_INF_KEY)).double())
    fires_everywhere = _bn_eval(norm, torch.zeros_like(gain).unsqueeze(0))[0] >= 0  # γ = 0 or α = 0: constant
    constant = torch.where(fires_everywhere, -math.inf, math.inf).double()
    return flip, torch.where((gamma == 0) | (gain == 0), constant, found)


@torch.no_grad()
def pack(model: nn.Module, compile: bool = True) -> PackedMLP:
    """Pack a trained :class:`bnn.MLP` with population statistics into a :class:`PackedMLP`.

    Its predictions equal ``model.eval()``'s, except where the float model's float32 rounding of a first-layer sum
    crosses a neuron's threshold, which the packed model decides on the float64 sum (see the module docstring).
    ``model`` is a ``bnn.MLP`` or an ``nn.Sequential`` of its layers (``Dropout`` and ``Identity`` between them are
    skipped, as in eval mode). ``compile`` uses the fast kernels (native, else compiled; see the module docstring);
    ``False`` runs plain torch ops. It warns when the model's weights changed after its statistics were fixed.

    Raises:
        ValueError: ``model`` is not an MLP of binary layers with sign activations between them (convolutional
            layers are named first; an MLP that ends with a SignActivation is refused), it or one of its layers has
            a forward of its own (a subclass that overrides it), its BatchNorm layers have no population statistics
            (:func:`bnn.use_population_statistics`) or divide by zero (``running_var + eps = 0``), it holds tensors
            of another precision than float32 (bfloat16, float16, float64: call ``model.float()``), or it is in
            training mode (where BatchNorm uses batch statistics, not the ones packed).

    Example:
        >>> import bnn
        >>> model = bnn.use_population_statistics(bnn.MLP([784, 256, 10]), torch.rand(100, 784)).eval()
        >>> packed = bnn.pack(model)
        >>> packed.nbytes < bnn.summary(model).float32_bytes / 25
        True
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"pack takes a trained bnn.MLP, got a {type(model).__name__} (a saved packed model loads with "
                         "bnn.PackedMLP.load(path))")
    _check_compile(compile)
    model = uncompiled(model)
    pairs = _layers_of(model)
    other = sorted({str(t.dtype) for t in [*model.parameters(), *model.buffers()]
                    if t.is_floating_point() and t.dtype != torch.float32})
    if other:  # (a float64 model's thresholds, found in float32, missed where its BatchNorm rounds across one)
        raise ValueError(f"pack takes a float32 model, got one with {', '.join(other)} tensors: its BatchNorm rounds "
                         "in that precision, which the packed thresholds and scores (float32) would not reproduce; "
                         "call model.float() first")
    warn_if_statistics_outdated(model, "packing")
    if any(module.training for module in model.modules()):
        raise ValueError(
            "pack needs the model in eval mode, where its BatchNorm layers use the population statistics that "
            "pack folds in: call model.eval() before bnn.pack(model)"
        )
    sizes = [pairs[0][0].in_features] + [linear.out_features for linear, _ in pairs]
    layers = []
    for i, (linear, norm) in enumerate(pairs):
        positive = linear.weight.detach() >= 0  # sign(0) = +1, as in the forward pass
        # the kernels read one input group (byte or word) of many outputs at a time: stored (groups, outputs)
        layer = {"weight": pack_bits(positive, word_bits=8 if i == 0 else 64).t().contiguous()}
        gain = _gain(linear)
        if i == len(pairs) - 1:
            gamma, beta = _affine(norm)
            layer.update(
                gain=gain.clone(), mean=norm.running_mean.float().clone(), var=norm.running_var.float().clone(),
                gamma=gamma.clone(), beta=beta.clone(), eps=float(norm.eps),
            )
        else:
            flip, threshold = _real_threshold(norm, gain) if i == 0 else _integer_threshold(norm, gain, sizes[i])
            layer.update(flip=flip, threshold=threshold)
        layers.append(layer)
    try:  # (PackedMLP checks the layers as load does: what load would refuse is never written)
        return PackedMLP(sizes, layers, compile=compile)
    except ValueError as err:
        raise ValueError(f"pack: {err}") from None
