"""Native XNOR-popcount kernels for :class:`bnn.PackedMLP`, and for the popcount product and the lookup backward
products of a large binary layer in training (:mod:`bnn.binary_linear`), built on first use with the system C compiler.

``bnn/packed_kernels.c`` is compiled once per machine (``cc -O3 -march=native``, so the popcount
uses the CPU's own instructions, and ``-fopenmp`` where torch runs GNU OpenMP: see :data:`FLAGS`) into a cache
folder (``$METASPIKE_CACHE``, else ``$XDG_CACHE_HOME/metaspike``, else ``~/.cache/metaspike``; created with mode
``0o700``) and called
through ``ctypes``. A library is only loaded from a folder and a file that belong to the current
user and that nobody else may write (checked on open file descriptors, and loaded through the
descriptor, so neither can be swapped in between), and whose bytes have the SHA-256 recorded beside it when
it was built (a library cut short would stop the process with a bus error when loaded: it is built again
instead); a cache folder that fails this check is left
alone with a warning and the kernels are built in a private temporary folder instead. Without a C
compiler, or if the build fails, :func:`kernels` returns ``None`` (with one warning), the packed
model runs on torch ops and binary layers train without the popcount product.

Every call goes through one check (:func:`check_tensor`, also used when a packed file is loaded)
of each buffer's dtype, shape, device and memory against the sizes the kernel will use, immediately
before its address is passed.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from metaspike.caller import user_stacklevel

__all__ = ["kernels", "kinds", "check_tensor", "real_layer", "binary_layer", "kernel_weight", "pack_signs",
           "prepared_signs", "popcount_product", "sign_codes", "transposed_sign_codes", "signed_sums",
           "signed_sums_vectorized", "int8_signs"]

SOURCE = Path(__file__).with_name("packed_kernels.c")
SIGN_GROUP = 5
"""Signs per code of :func:`sign_codes` (``SIGN_GROUP`` in ``packed_kernels.c``)."""
FALLBACK = "bnn.PackedMLP runs on torch ops (slower) and binary layers train without the popcount product"
"""What a warning says happens without the kernels."""


def _torch_runs_gnu_openmp() -> bool:
    """Whether torch's OpenMP runtime in this process is GNU's libgomp (among the loaded libraries on Linux, as in
    the x86 wheels): the kernels built with ``-fopenmp`` then share its threads."""
    try:
        return "/libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-pthread", *(("-fopenmp",) if _torch_runs_gnu_openmp() else ()))
"""The build's flags. With ``-fopenmp`` (where torch runs GNU OpenMP) a call's threads are torch's own: they spin
for a while after each parallel torch op, so the kernels' own pool found the second core taken inside a training
step (the lookup product's ``grad @ signs`` of a 4096 x 4096 layer took 8.5 ms a call there, median, 5.8 alone,
two threads on an AMD EPYC Zen 4; on torch's threads 5.8 in the step, which fell from 53 to 48 ms)."""
ROWS_COPY_MIN_NUMEL = 1 << 16
"""A left operand of :func:`signed_sums` read down its columns (``a.stride(1) != 1``, as ``grad.T`` is) from this many
entries on is copied into rows first: its tables' pass otherwise reads each row across as many memory pages as it
has entries. One thread of an AMD EPYC Zen 4, ``grad.T @ x`` of a batch of 100: 1.14 ms against 1.30 at 1024 x 1024
(the copy 0.06 ms), 14.5 against 15.6 ms at 4096; batch 1000 at 1024, 9.7 against 11.4 ms; 100 x 256 and 16 x 1024
(below) gain nothing. The same sums in the same order, so the same result."""
MIN_WORK_PER_THREAD = 1 << 16
"""Words (or bytes) of weight times samples per extra thread: below this, a thread costs more than it saves.

The kernels' threads are kept between calls (``bnn/packed_kernels.c``), so waking one costs about a
microsecond. Measured with two threads on a 2-core Intel Xeon, whole 784-h-h-10 models per call:
h = 4096, batch 1: 184 µs on one thread, 91 µs split; batch 8: 473 and 227 µs; h = 1024, batch 8:
99 and 82 µs; h = 256 and h = 1024 at batch 1 (below this work) stay on one thread."""

_ARGS = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
         ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]


class UnsafeCacheError(OSError):
    """A kernel library or its folder that another user could have written."""


class DamagedLibraryError(OSError):
    """A cached kernel library whose bytes are not those recorded when it was built (cut short by a full disk, a
    restored backup): loading it could stop the process with a bus error, so it is built again."""


def _cache_dir() -> Path:
    root = os.environ.get("METASPIKE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "metaspike"
    )
    return Path(root)


def _check_private(fd: int, path: Path, kind: str) -> None:
    """Raise :class:`UnsafeCacheError` unless the open ``fd`` is a ``kind`` owned by us and not writable by others."""
    info = os.fstat(fd)
    is_kind = stat.S_ISDIR(info.st_mode) if kind == "folder" else stat.S_ISREG(info.st_mode)
    if not is_kind:
        raise UnsafeCacheError(f"{path} is not a {kind}")
    if info.st_uid != os.geteuid():
        raise UnsafeCacheError(f"{kind} {path} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeCacheError(f"{kind} {path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})")


_LOADED_THROUGH: list[int] = []
"""Descriptors of the libraries loaded through ``/proc/self/fd/N``, kept open for the life of the process:
the dynamic loader knows a library by that name, and would hand back the first library for a second one
opened later under a reused descriptor number."""


def _digest(fd: int) -> str:
    """The SHA-256 of the whole file open as ``fd`` (read from its start; the offset is put back to 0)."""
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    os.lseek(fd, 0, os.SEEK_SET)
    return digest.hexdigest()


def _digest_name(name: str) -> str:
    """The file beside library ``name`` that holds the digest of its bytes as built."""
    return f"{name}.sha256"


def _recorded_digest(folder_fd: int, folder: Path, name: str) -> str | None:
    """The digest recorded when library ``name`` was built (checked as private as the library), or ``None``."""
    try:
        fd = os.open(_digest_name(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder_fd)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise UnsafeCacheError(f"{folder / _digest_name(name)} is a symbolic link") from None
    try:
        _check_private(fd, folder / _digest_name(name), "file")
        return os.read(fd, 256).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


def _open_private(folder: Path, name: str) -> ctypes.CDLL:
    """Load ``folder/name`` after checking both on open descriptors, and the library's bytes against the digest
    recorded when it was built (:class:`DamagedLibraryError` otherwise); the library is loaded through its
    descriptor."""
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except NotADirectoryError:
        raise UnsafeCacheError(f"{folder} is not a folder") from None
    try:
        _check_private(folder_fd, folder, "folder")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=folder_fd)
        except OSError as err:  # (O_NOFOLLOW: a symbolic link in the library's place, which another user may aim)
            if err.errno != errno.ELOOP:
                raise
            raise UnsafeCacheError(f"{folder / name} is a symbolic link") from None
        kept = False
        try:
            _check_private(fd, folder / name, "file")
            if _recorded_digest(folder_fd, folder, name) != _digest(fd):
                raise DamagedLibraryError(f"{folder / name} is not the library that was built there")
            by_fd = f"/proc/self/fd/{fd}"
            if os.path.exists(by_fd):
                library = ctypes.CDLL(by_fd)
                _LOADED_THROUGH.append(fd)
                kept = True
                return library
        finally:
            if not kept:
                os.close(fd)
        return ctypes.CDLL(str(folder / name))  # no /proc: by path, right after the check
    finally:
        os.close(folder_fd)


def _build(compiler: list[str], flags: tuple[str, ...], folder: Path, name: str) -> None:
    with tempfile.TemporaryDirectory(dir=folder) as scratch:  # mode 0o700
        built = Path(scratch) / name
        command = [*compiler, *flags, str(SOURCE), "-o", str(built)]
        # without OpenMP where the compiler has none, then also for the generic CPU (a compiler without -march=native)
        for left_out in ((), ("-fopenmp",), ("-fopenmp", "-march=native")):
            try:
                subprocess.run([c for c in command if c not in left_out], check=True, capture_output=True, text=True)
                break
            except subprocess.CalledProcessError:
                if left_out == ("-fopenmp", "-march=native"):
                    raise
        os.chmod(built, 0o700)
        digest = Path(scratch) / _digest_name(name)
        fd = os.open(built, os.O_RDONLY)
        try:
            digest.write_text(_digest(fd) + "\n")
        finally:
            os.close(fd)
        digest.chmod(0o600)
        # each atomic: another process never loads a half-written library (between the two it sees a digest
        # that does not match, and builds its own)
        os.replace(built, folder / name)
        os.replace(digest, folder / _digest_name(name))


def _load(compiler: list[str], flags: tuple[str, ...], folder: Path, name: str) -> ctypes.CDLL:
    """The library ``name`` in ``folder``, built there first if missing or damaged."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # (a file where the folder or one above it belongs)
        raise UnsafeCacheError(f"{folder} is not a folder") from None
    try:
        return _open_private(folder, name)
    except (FileNotFoundError, DamagedLibraryError):
        _build(compiler, flags, folder, name)
        return _open_private(folder, name)


def kernels() -> ctypes.CDLL | None:
    """The compiled kernels, built on the first call; ``None`` when no C compiler can build them.

    Example:
        >>> lib = kernels()
        >>> lib is None or hasattr(lib, "binary_layer")
        True
    """
    return _kernels(FLAGS)


def _instruction_sets() -> str:
    """What ``-march=native`` builds for: the CPU's model and instruction-set flags (Linux), else the host name.

    A cache folder may be shared by machines of one name but different CPUs (a home folder on a
    cluster, virtual machines from one image); a library built for AVX-512 would stop the process
    with an illegal instruction on an AVX2-only CPU, so the key names the instruction sets.
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.node() + platform.processor()
    lines = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(lines))  # one line per distinct CPU kind


def _compiler() -> list[str] | None:
    """The C compiler's command: ``CC`` split as a shell splits it (``CC="ccache gcc"``), else the first of
    ``cc``, ``gcc`` and ``clang`` on the path; ``None`` (with a warning) where there is none."""
    cc = os.environ.get("CC", "").strip()
    if cc:
        try:
            return shlex.split(cc)
        except ValueError as err:  # e.g. an unclosed quote
            warnings.warn(f"CC={cc!r} is not a command ({err}): {FALLBACK}",
                          RuntimeWarning, stacklevel=user_stacklevel())
            return None
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if found is None:
        warnings.warn(f"no C compiler found: {FALLBACK}", RuntimeWarning, stacklevel=user_stacklevel())
        return None
    return [found]


def _library_name(compiler: list[str], flags: tuple[str, ...]) -> str:
    """The cached library's file name: it follows the source, the compiler and its flags, and the CPU's kind."""
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(flags).encode(), "\0".join(compiler).encode(),
                                     platform.machine().encode(), _instruction_sets().encode()])).hexdigest()[:16]
    return f"packed_kernels-{key}.so"


@cache
def _kernels(flags: tuple[str, ...]) -> ctypes.CDLL | None:
    """:func:`kernels` compiled with ``flags`` (tests add ``-DPACKED_PORTABLE``)."""
    compiler = _compiler()
    if compiler is None:
        return None
    name = _library_name(compiler, flags)
    try:
        try:
            lib = _load(compiler, flags, _cache_dir(), name)
        except UnsafeCacheError as err:
            warnings.warn(f"not loading kernels from the cache: {err}; building them in a private temporary folder",
                          RuntimeWarning, stacklevel=user_stacklevel())
            with tempfile.TemporaryDirectory() as private:
                lib = _load(compiler, flags, Path(private), name)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:  # RuntimeError: no home folder
        if "-fopenmp" in flags and isinstance(err, OSError) and "GOMP" in str(err):
            # (the compiler's OpenMP asks for a newer runtime than the one torch loaded: the kernels' own threads)
            return _kernels(tuple(flag for flag in flags if flag != "-fopenmp"))
        detail = getattr(err, "stderr", "") or str(err)
        warnings.warn(f"could not build the native kernels ({detail.strip()[:300]}); {FALLBACK}", RuntimeWarning,
                      stacklevel=user_stacklevel())
        return None
    for layer in ("real_layer", "binary_layer"):
        getattr(lib, layer).argtypes, getattr(lib, layer).restype = _ARGS, ctypes.c_int
        getattr(lib, f"{layer}_kind").restype = ctypes.c_char_p
    lib.binary_layer_output_major.restype = ctypes.c_int
    lib.pack_signs.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p,
                               ctypes.c_int64, ctypes.c_int]
    lib.pack_signs.restype = ctypes.c_int
    lib.sign_codes.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p,
                               ctypes.c_int]
    lib.sign_codes.restype = ctypes.c_int
    lib.transposed_sign_codes.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                          ctypes.c_int]
    lib.transposed_sign_codes.restype = ctypes.c_int
    lib.int8_signs.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    lib.int8_signs.restype = ctypes.c_int
    lib.signed_sums.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    lib.signed_sums.restype = ctypes.c_int
    lib.signed_sums_kind.restype = ctypes.c_char_p
    lib.threads_kind.restype = ctypes.c_char_p
    return lib


def kinds(lib: ctypes.CDLL) -> tuple[str, str]:
    """Which implementation ``lib`` uses for the first layer and for hidden layers.

    Example:
        >>> lib = kernels()
        >>> lib is None or all("float64" in k or "popcount" in k for k in kinds(lib))
        True
    """
    return lib.real_layer_kind().decode(), lib.binary_layer_kind().decode()


def _shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


def check_tensor(label: str, name: str, t: object, shape: tuple[int | None, ...], dtype: torch.dtype) -> Tensor:
    """``t`` as a contiguous CPU tensor holding exactly ``shape`` (``None``: any size) elements of ``dtype``, detached
    from autograd (a tensor read from a file may carry ``requires_grad``, which the kernels' values never need).

    Views (stride 0, transposed, sliced) are copied into a buffer of their own, and the buffer is
    checked to hold them; anything else raises a one-line ``ValueError`` naming ``label`` and ``name``.

    Example:
        >>> check_tensor("layer 0", "threshold", torch.zeros(1).expand(3), (3,), torch.float32).stride()
        (1,)
        >>> check_tensor("layer 0", "threshold", torch.zeros(2), (3,), torch.float32)
        Traceback (most recent call last):
        ...
        ValueError: layer 0 threshold is (2,) torch.float32, expected (3,) torch.float32
    """
    if not isinstance(t, Tensor):
        raise ValueError(f"{label} {name} is a {type(t).__name__}, expected a {dtype} tensor of shape {_shape(shape)}")
    if not t.is_cpu or t.layout != torch.strided:
        raise ValueError(f"{label} {name} is a {t.layout} tensor on the {t.device.type} device; "
                         "the native kernels read CPU (strided) tensors")
    sizes = t.shape
    if t.dtype != dtype or len(sizes) != len(shape) or not all([s is None or s == n for s, n in zip(shape, sizes)]):
        raise ValueError(f"{label} {name} is {tuple(sizes)} {t.dtype}, expected {_shape(shape)} {dtype}")
    t = t.detach()
    if t.is_neg():
        t = t.resolve_neg()
    t = t.contiguous()
    if t.untyped_storage().nbytes() < t.storage_offset() * t.element_size() + t.nbytes:
        raise ValueError(f"{label} {name} has {t.untyped_storage().nbytes()} bytes of storage, "
                         f"fewer than its shape {tuple(sizes)} needs")
    return t


def _call(fn, label: str, inputs: Tensor, n: int, weight: Tensor, out: int, cols: int, flip: Tensor | None,
          threshold: Tensor | None, threshold_dtype: torch.dtype, result_dtype: torch.dtype,
          threads: int | None) -> Tensor:
    """Check the thresholds and call ``fn`` (inputs and weight are already checked) on at most ``threads`` threads
    (``None``: torch's number)."""
    batch = inputs.shape[0]
    if (flip is None) != (threshold is None):
        raise ValueError(f"{label}: flip and threshold go together (both or neither)")
    if flip is not None:
        flip = check_tensor(label, "flip", flip, (out,), torch.bool)
        threshold = check_tensor(label, "threshold", threshold, (out,), threshold_dtype)
        result = torch.zeros(batch, -(-out // 64), dtype=torch.int64)
    else:
        result = torch.empty(batch, out, dtype=result_dtype)
    threads = _threads(threads, batch * out * cols)
    status = fn(inputs.data_ptr(), batch, n, weight.data_ptr(), out, cols, None if flip is None else flip.data_ptr(),
                None if threshold is None else threshold.data_ptr(), result.data_ptr(), threads)
    if status == 2:
        raise ValueError(f"{label} input holds NaN or infinite values; only finite inputs are accepted")
    if status != 0:
        raise MemoryError(f"{label}: the native kernel could not allocate its scratch memory")
    return result


def real_layer(lib: ctypes.CDLL, x: Tensor, weight_t: Tensor, flip: Tensor | None = None,
               threshold: Tensor | None = None, label: str = "first layer", threads: int | None = None) -> Tensor:
    """First layer: float64 pre-activations ``(B, out)`` of real float32 inputs ``x`` (``(B, n)``; a caller
    rounds other dtypes first, as :class:`bnn.PackedMLP` does) for sign bytes ``weight_t`` (transposed:
    ``(ceil(n/8), out)``), or, with
    ``flip``/``threshold``, the packed int64 bits of ``(-a if flip else a) >= threshold``.
    ``threads`` caps the kernel's threads (default: torch's number).

    Raises:
        ValueError: a tensor has the wrong dtype, shape or device, or ``x`` holds NaN or infinite
            values (``label`` names the layer).

    Example:
        >>> from bnn.packed import pack_bits
        >>> lib = kernels()
        >>> w = pack_bits(torch.tensor([[True, False, True]]), word_bits=8)
        >>> lib is None or real_layer(lib, torch.tensor([[1.0, 2.0, 4.0]]), w.T).tolist() == [[3.0]]
        True
    """
    x = check_tensor(label, "input", x, (None, None), torch.float32)
    if x.shape[1] < 1:
        raise ValueError(f"{label} input has no features (shape {tuple(x.shape)})")
    weight_t = check_tensor(label, "weight", weight_t, (-(-x.shape[1] // 8), None), torch.uint8)
    (groups, out) = weight_t.shape
    return _call(lib.real_layer, label, x, x.shape[1], weight_t, out, groups, flip, threshold, torch.float64,
                 torch.float64, threads)


def kernel_weight(lib: ctypes.CDLL, weight_t: Tensor, label: str = "hidden layer") -> Tensor:
    """A hidden layer's weights ``weight_t`` (word-major, ``(ceil(n/64), out)``, as :func:`bnn.pack` stores them)
    in the layout ``lib``'s kernel reads: ``weight_t`` itself for the AVX-512 kernel, whose vectors hold one word
    of 8 outputs; a copy made output-major, ``(out, ceil(n/64))``, for the portable and AVX2 ones, which read each
    output's words as one stream. Made once per layer, it spares :func:`binary_layer` the copy at every call.

    Example:
        >>> lib = kernels()
        >>> w = torch.arange(6).view(2, 3)  # 2 words of 3 outputs
        >>> lib is None or kernel_weight(lib, w).shape in {(2, 3), (3, 2)}
        True
    """
    weight_t = check_tensor(label, "weight", weight_t, (None, None), torch.int64)
    return weight_t.T.contiguous() if _output_major(lib) else weight_t


def _prepared_layout(lib: ctypes.CDLL, out: int | None, cols: int) -> tuple[int | None, ...]:
    """The shape of a hidden layer's weights of ``out`` outputs (``None``: any) and ``cols`` words in the layout
    ``lib``'s kernel reads (:func:`kernel_weight`)."""
    return (out, cols) if _output_major(lib) else (cols, out)


@cache
def _output_major(lib: ctypes.CDLL) -> bool:
    """Whether ``lib``'s hidden-layer kernel reads its weights output-major (asked once per library, not per call)."""
    return bool(lib.binary_layer_output_major())


def binary_layer(lib: ctypes.CDLL, words: Tensor, n: int, weight_t: Tensor, flip: Tensor | None = None,
                 threshold: Tensor | None = None, label: str = "hidden layer", threads: int | None = None,
                 prepared: Tensor | None = None) -> Tensor:
    """Hidden layer: int64 ``n - 2·popcount(x XOR w)`` of ``n`` packed ±1 inputs ``words``
    (``(B, ceil(n/64))``) and weight rows given word-major (``weight_t``: ``(ceil(n/64), out)``), or
    thresholded bits and ``threads`` as in :func:`real_layer`. ``prepared``: :func:`kernel_weight` of
    ``weight_t``, kept by a caller that calls the layer again (else it is made at every call).

    Example:
        >>> from bnn.packed import pack_bits
        >>> lib = kernels()
        >>> bits = pack_bits(torch.tensor([[True, True, False]]))
        >>> lib is None or binary_layer(lib, bits, 3, bits.T).tolist() == [[3]]
        True
    """
    if not (isinstance(n, int) and 0 < n < 2**62):
        raise ValueError(f"{label}: n must be a positive int (the number of inputs), got {n!r}")
    cols = -(-n // 64)
    words = check_tensor(label, "input", words, (None, cols), torch.int64)
    weight_t = check_tensor(label, "weight", weight_t, (cols, None), torch.int64)
    out = weight_t.shape[1]
    if prepared is None:
        prepared = kernel_weight(lib, weight_t, label)
    prepared = check_tensor(label, "prepared weight", prepared, _prepared_layout(lib, out, cols), torch.int64)
    return _call(lib.binary_layer, label, words, n, prepared, out, cols, flip, threshold, torch.int64, torch.int64,
                 threads)


def _threads(threads: int | None, work: int) -> int:
    """At most ``threads`` (``None``: torch's number), one per :data:`MIN_WORK_PER_THREAD` of ``work``, at least 1."""
    return max(1, min(threads or torch.get_num_threads(), work // MIN_WORK_PER_THREAD))


def pack_signs(lib: ctypes.CDLL, values: Tensor, label: str = "signs", threads: int | None = None) -> Tensor | None:
    """Rows of ±1 ``values`` (``(rows, n)``, float32 or int8) as int64 words of bits, 1 for +1, in the layout of
    :func:`bnn.packed.pack_bits` (``(rows, ceil(n/64))``); ``None`` when a value is not exactly +1 or -1 (NaN
    included), for the caller to take another product.

    Example:
        >>> lib = kernels()
        >>> lib is None or pack_signs(lib, torch.tensor([[1.0, -1.0, 1.0]])).tolist() == [[5]]
        True
        >>> lib is None or pack_signs(lib, torch.tensor([[1.0, 0.5]])) is None
        True
    """
    values = check_tensor(label, "values", values, (None, None), _sign_dtype(label, values))
    rows, n = values.shape
    words = -(-n // 64)
    bits = torch.empty(rows, words, dtype=torch.int64)
    status = lib.pack_signs(values.data_ptr(), rows, n, int(values.dtype == torch.int8), bits.data_ptr(), words,
                            _threads(threads, rows * n // 8))
    return bits if status == 0 else None


def _sign_dtype(label: str, values: object) -> torch.dtype:
    """The dtype of ±1 ``values`` the kernels read (float32 or int8), else a one-line ValueError."""
    dtype = getattr(values, "dtype", None)
    if dtype not in (torch.float32, torch.int8):
        raise ValueError(f"{label} is {dtype if dtype is not None else type(values).__name__}, expected torch.float32 "
                         "or torch.int8 values of +1 and -1")
    return dtype


def prepared_signs(lib: ctypes.CDLL, signs: Tensor, label: str = "signs") -> Tensor | None:
    """A ±1 weight ``signs`` (``(out, n)``, float32 or int8, as ``F.linear`` takes it) as bits in the layout ``lib``'s
    hidden-layer kernel reads (:func:`kernel_weight`), for :func:`popcount_product`; ``None`` when a value is not
    exactly ±1.

    Example:
        >>> lib = kernels()
        >>> lib is None or prepared_signs(lib, -torch.ones(3, 70)).numel() == 6
        True
    """
    bits = pack_signs(lib, signs, label)
    if bits is None or _output_major(lib):
        return bits
    return bits.T.contiguous()


def popcount_product(lib: ctypes.CDLL, x: Tensor, prepared: Tensor, label: str = "binary layer",
                     threads: int | None = None) -> Tensor | None:
    """``x @ signs.T`` in float32 for ±1 float32 ``x`` (``(B, n)``) and ``prepared`` = :func:`prepared_signs` of
    ``signs`` (``(out, n)``): ``n - 2·popcount(x XOR w)`` counted in integers, so exact for ``n < 2**24`` (every
    count is then a float32 integer), equal to the float32 product bit for bit; ``None`` when ``x`` is not all ±1.

    Example:
        >>> lib = kernels()
        >>> x, w = torch.tensor([[1.0, -1.0, 1.0]]), torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, -1.0]])
        >>> lib is None or torch.equal(popcount_product(lib, x, prepared_signs(lib, w)), x @ w.T)
        True
    """
    words = pack_signs(lib, x, label, threads)
    if words is None:
        return None
    n, cols = x.shape[1], words.shape[1]
    prepared = check_tensor(label, "prepared weight", prepared, _prepared_layout(lib, None, cols), torch.int64)
    out = prepared.shape[0] if _output_major(lib) else prepared.shape[1]
    return _call(lib.binary_layer, label, words, n, prepared, out, cols, None, None, torch.int64, torch.int64,
                 threads).to(torch.float32)


def signed_sums_vectorized(lib: ctypes.CDLL) -> bool:
    """Whether ``lib``'s :func:`signed_sums` looks up many columns per instruction (AVX-512); the portable C one looks
    up one at a time, far slower than a float32 matrix product.

    Example:
        >>> lib = kernels()
        >>> lib is None or signed_sums_vectorized(lib) in (True, False)
        True
    """
    return not lib.signed_sums_kind().decode().startswith("portable")


def sign_codes(lib: ctypes.CDLL, signs: Tensor, label: str = "signs", threads: int | None = None) -> Tensor | None:
    """The ±1 matrix ``signs`` (``(k, n)``, float32 or int8) as the codes :func:`signed_sums` reads: entry ``(q, j)``
    (``(ceil(k/5), n)`` uint8; :data:`SIGN_GROUP` = 5) has bit ``i`` set where ``signs[5q + i, j]`` is +1; ``None``
    when a value is not exactly +1 or -1 (NaN included), for the caller to take another product.

    Example:
        >>> lib = kernels()
        >>> s = torch.tensor([[1.0], [-1.0], [1.0], [1.0], [1.0], [1.0]])
        >>> lib is None or sign_codes(lib, s).tolist() == [[29], [1]]
        True
    """
    signs = check_tensor(label, "signs", signs, (None, None), _sign_dtype(label, signs))
    k, n = signs.shape
    codes = torch.empty(-(-k // SIGN_GROUP), n, dtype=torch.uint8)
    status = lib.sign_codes(signs.data_ptr(), k, n, int(signs.dtype == torch.int8), codes.data_ptr(),
                              _threads(threads, k * n // 8))
    return codes if status == 0 else None


def transposed_sign_codes(lib: ctypes.CDLL, signs: Tensor, label: str = "signs",
                          threads: int | None = None) -> Tensor | None:
    """:func:`sign_codes` of ``signs.T`` for an int8 ±1 ``signs`` (``(rows, n)``, a weight as ``F.linear`` takes it),
    read row by row without a transposed copy: ``(ceil(n/5), rows)`` uint8, for ``x @ signs.T`` by :func:`signed_sums`;
    ``None`` when a value is not exactly +1 or -1.

    Example:
        >>> lib = kernels()
        >>> s = torch.tensor([[1, -1, 1, 1, 1, 1], [-1, -1, -1, -1, -1, -1]], dtype=torch.int8)
        >>> lib is None or torch.equal(transposed_sign_codes(lib, s), sign_codes(lib, s.T))
        True
    """
    signs = check_tensor(label, "signs", signs, (None, None), torch.int8)
    rows, n = signs.shape
    codes = torch.empty(-(-n // SIGN_GROUP), rows, dtype=torch.uint8)
    status = lib.transposed_sign_codes(signs.data_ptr(), rows, n, codes.data_ptr(), _threads(threads, rows * n // 8))
    return codes if status == 0 else None


def signed_sums(lib: ctypes.CDLL, a: Tensor, codes: Tensor, n: int, out: Tensor | None = None,
                label: str = "binary layer", threads: int | None = None) -> Tensor:
    """``a @ signs`` in float32 for a real ``a`` (``(m, k)``, any strides) and the ±1 ``signs`` (``(k, n)``) given by
    their :func:`sign_codes`, into ``out`` when given (a contiguous ``(m, n)`` float32 tensor).

    Each term is exact, so the result is a float32 matrix product's up to the order of its additions: per row and
    group of 5 entries of ``a``, a table of their 32 signed sums, looked up by each column's code.

    Example:
        >>> lib = kernels()
        >>> a, s = torch.tensor([[0.5, 2.0, -1.0]]), torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])
        >>> lib is None or signed_sums(lib, a, sign_codes(lib, s), 2).tolist() == [[3.5, 2.5]]
        True
    """
    if not isinstance(a, Tensor) or a.dim() != 2 or a.dtype != torch.float32 or not a.is_cpu or a.is_neg():
        a = check_tensor(label, "left operand", a, (None, None), torch.float32)  # (a one-line error, or a copy)
    m, k = a.shape
    codes = check_tensor(label, "codes", codes, (-(-k // SIGN_GROUP), n), torch.uint8)
    if a.stride(1) != 1 and k > 1 and a.numel() >= ROWS_COPY_MIN_NUMEL:
        a = a.contiguous()
    if a.untyped_storage().nbytes() < (a.storage_offset() + (m - 1) * a.stride(0) + (k - 1) * a.stride(1) + 1) * 4:
        a = check_tensor(label, "left operand", a.contiguous(), (m, k), torch.float32)
    if out is None:
        out = torch.empty(m, n)
    out = _writable_output(label, out, (m, n))
    status = lib.signed_sums(a.data_ptr(), m, k, a.stride(0), a.stride(1), codes.data_ptr(), n, out.data_ptr(),
                             _threads(threads, m * k * n // 256))
    if status:
        raise MemoryError(f"{label}: no memory for the lookup tables of a {m} x {k} operand")
    return out


def int8_signs(lib: ctypes.CDLL, weight: Tensor, out: Tensor, label: str = "hidden weight",
               threads: int | None = None) -> Tensor:
    """The signs of the float32 ``weight`` written into the int8 tensor ``out`` (contiguous, as many entries): -1 below
    0, else +1 (0, -0.0 and NaN give +1, as :func:`metaspike.quantizers.binary_sign` on CPUs); returns ``out``. One
    pass that reads 4 bytes and writes 1 per entry, on torch's threads.

    Example:
        >>> lib = kernels()
        >>> out = torch.empty(4, dtype=torch.int8)
        >>> lib is None or int8_signs(lib, torch.tensor([-0.5, 0.0, -0.0, float("nan")]), out).tolist() == [-1, 1, 1, 1]
        True
    """
    weight = check_tensor(label, "weight", weight, (None,) * weight.dim() if isinstance(weight, Tensor) else (None,),
                          torch.float32)
    out = _writable_output(label, out, tuple(getattr(out, "shape", ())), torch.int8)
    if out.numel() != weight.numel():
        raise ValueError(f"{label}: the output holds {out.numel()} entries, the weight {weight.numel()}")
    lib.int8_signs(weight.data_ptr(), weight.numel(), out.data_ptr(), _threads(threads, weight.numel() // 4))
    return out


def _writable_output(label: str, out: Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """``out`` when the kernel may write a contiguous ``shape`` result of ``dtype`` into it, else a one-line
    ValueError."""
    if (not isinstance(out, Tensor) or out.dtype != dtype or tuple(out.shape) != shape or not out.is_cpu
            or not out.is_contiguous()
            or out.untyped_storage().nbytes() < (out.storage_offset() + out.numel()) * out.element_size()):
        got = f"{tuple(out.shape)} {out.dtype} on {out.device.type}" if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{label}: the output is {got}, expected a contiguous {shape} {dtype} CPU tensor")
    return out
