"""Native XNOR-popcount kernels for :class:`bnn.PackedMLP`, built on first use with the system C compiler.

``bnn/packed_kernels.c`` is compiled once per machine (``cc -O3 -march=native``, so the popcount
uses the CPU's own instruction) into a cache folder (``$METASPIKE_CACHE``, else
``~/.cache/metaspike``) and called through ``ctypes``. Without a C compiler, or if the build
fails, :func:`kernels` returns ``None`` (with one warning) and the packed model runs on torch ops.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["kernels", "real_layer", "binary_layer"]

SOURCE = Path(__file__).with_name("packed_kernels.c")
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-pthread"]
MIN_WORK_PER_THREAD = 1 << 21
"""Words (or bytes) of weight per extra thread: below this, starting a thread costs more than it saves."""


def _cache_dir() -> Path:
    root = os.environ.get("METASPIKE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "metaspike"
    )
    return Path(root)


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        command = [compiler, *FLAGS, str(SOURCE), "-o", str(built)]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError:  # e.g. a compiler without -march=native: build for the generic CPU
            subprocess.run([c for c in command if c != "-march=native"], check=True, capture_output=True, text=True)
        os.replace(built, target)  # atomic: another process never loads a half-written library


@cache
def kernels() -> ctypes.CDLL | None:
    """The compiled kernels, built on the first call; ``None`` when no C compiler can build them.

    Example:
        >>> lib = kernels()
        >>> lib is None or hasattr(lib, "binary_layer")
        True
    """
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        warnings.warn("no C compiler found: bnn.PackedMLP runs on torch ops (slower)", RuntimeWarning, stacklevel=2)
        return None
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), compiler.encode(), platform.machine().encode(),
                                     platform.node().encode()])).hexdigest()[:16]
    try:
        target = _cache_dir() / f"packed_kernels-{key}.so"
        if not target.exists():
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:  # RuntimeError: no home folder
        detail = getattr(err, "stderr", "") or str(err)
        warnings.warn(f"could not build the packed-inference kernels ({detail.strip()[:300]}); "
                      "bnn.PackedMLP runs on torch ops (slower)", RuntimeWarning, stacklevel=2)
        return None
    for name in ("real_layer", "binary_layer"):
        getattr(lib, name).restype = ctypes.c_int
    return lib


def _threads(work: int) -> int:
    return max(1, min(torch.get_num_threads(), work // MIN_WORK_PER_THREAD))


def _call(fn, inputs: Tensor, n: int, weight: Tensor, out: int, cols: int, flip: Tensor | None,
          threshold: Tensor | None, result_dtype: torch.dtype) -> Tensor:
    batch = inputs.shape[0]
    if flip is None:
        result = torch.empty(batch, out, dtype=result_dtype)
    else:
        result = torch.zeros(batch, -(-out // 64), dtype=torch.int64)
    fn(
        ctypes.c_void_p(inputs.data_ptr()), ctypes.c_int64(batch), ctypes.c_int64(n),
        ctypes.c_void_p(weight.data_ptr()), ctypes.c_int64(out), ctypes.c_int64(cols),
        ctypes.c_void_p(None if flip is None else flip.data_ptr()),
        ctypes.c_void_p(None if threshold is None else threshold.data_ptr()),
        ctypes.c_void_p(result.data_ptr()), ctypes.c_int(_threads(batch * out * cols)),
    )
    return result


def real_layer(lib: ctypes.CDLL, x: Tensor, weight_t: Tensor, flip: Tensor | None = None,
               threshold: Tensor | None = None) -> Tensor:
    """First layer: float64 pre-activations ``(B, out)`` of real inputs ``x`` for sign bytes ``weight_t``
    (transposed: ``(groups, out)``),
    or, with ``flip``/``threshold``, the packed int64 bits of ``(-a if flip else a) >= threshold``.

    Example:
        >>> from bnn.packed import pack_bits
        >>> lib = kernels()
        >>> w = pack_bits(torch.tensor([[True, False, True]]), word_bits=8)
        >>> lib is None or real_layer(lib, torch.tensor([[1.0, 2.0, 4.0]]), w.T).tolist() == [[3.0]]
        True
    """
    x = x.to(torch.float32).contiguous()
    groups, out = weight_t.shape
    return _call(lib.real_layer, x, x.shape[1], weight_t.contiguous(), out, groups, flip, threshold, torch.float64)


def binary_layer(lib: ctypes.CDLL, words: Tensor, n: int, weight: Tensor, flip: Tensor | None = None,
                 threshold: Tensor | None = None) -> Tensor:
    """Hidden layer: int64 ``n - 2·popcount(x XOR w)`` of packed ±1 inputs ``words``, or thresholded bits
    as in :func:`real_layer`.

    Example:
        >>> from bnn.packed import pack_bits
        >>> lib = kernels()
        >>> bits = pack_bits(torch.tensor([[True, True, False]]))
        >>> lib is None or binary_layer(lib, bits, 3, bits).tolist() == [[3]]
        True
    """
    out, words_per_row = weight.shape
    return _call(lib.binary_layer, words.contiguous(), n, weight.contiguous(), out, words_per_row, flip, threshold,
                 torch.int64)
