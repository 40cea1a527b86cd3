"""Writing result files safely: atomic replacement and one CSV writer.

Every file metaspike writes (run results, checkpoints, comparison tables, downloaded data) goes
through :func:`atomic_open`: the content is written to a temporary file in the same folder, flushed
to disk, then renamed over the target. A kill at any moment leaves either the old complete file or
the new complete one, never half of one; the temporary file is removed when writing fails.
New files get the usual permissions (``0o666`` less the umask), like the figures matplotlib writes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from metaspike.checks import shown

__all__ = ["as_path", "writable_path", "atomic_open", "atomic_write_text", "atomic_write_bytes",
           "remove_stale_temporaries", "csv_text",
           "read_json", "read_regular_file", "load_torch_file", "tensor_problem", "check_plain_tensors", "MAX_NESTING",
           "MAX_KEY_PATH",
           "MAX_KEY_PATHS_TOTAL", "TEMPORARY_FILES", "JSON_MAX_BYTES"]

#: The names :func:`atomic_open` gives its temporary files (``.<name>.<random>.tmp`` beside the target), as a glob.
TEMPORARY_FILES = ".*.tmp"

#: The largest JSON or CSV file metaspike reads: every one it writes (configs, plans, metrics, histograms, accuracy
#: matrices, learning curves) is far smaller.
JSON_MAX_BYTES = 256 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def as_path(path: object, what: str) -> Path:
    """``path`` as a :class:`~pathlib.Path`; anything but a string or an ``os.PathLike`` is one ``ValueError`` naming
    ``what`` (``Path(None)`` says only "expected str, bytes or os.PathLike object").

    Example:
        >>> as_path(None, "packed BNN file")
        Traceback (most recent call last):
        ...
        ValueError: packed BNN file must be a path (a str or os.PathLike), got NoneType
        >>> as_path("model\\0.pt", "packed BNN file")
        Traceback (most recent call last):
        ...
        ValueError: packed BNN file 'model\\x00.pt' holds a NUL character, which no file name may hold
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{what} must be a path (a str or os.PathLike), got {type(path).__name__}")
    name = os.fspath(path)
    if not isinstance(name, str):  # (pathlib takes text only: its TypeError names no argument)
        raise ValueError(f"{what} must be a path of text (a str, or an os.PathLike whose __fspath__ returns one), got "
                         f"{type(path).__name__} returning {type(name).__name__}")
    if "\0" in name:  # (the system calls say only "embedded null byte"; h5py cuts the name there)
        raise ValueError(f"{what} {name!r} holds a NUL character, which no file name may hold")
    return Path(name)


def expanded_path(path: object, what: str) -> Path:
    """:func:`as_path` with a leading ``~`` or ``~user`` expanded to that home folder; one ``ValueError`` naming
    ``what`` where the system knows no home folder for it (pathlib says only "Could not determine home directory").

    Example:
        >>> expanded_path("~nosuchuser/runs", "--out")
        Traceback (most recent call last):
        ...
        ValueError: --out '~nosuchuser/runs': the system knows no home folder for '~nosuchuser'
    """
    given = as_path(path, what)
    try:
        return given.expanduser()
    except RuntimeError:
        raise ValueError(f"{what} {str(given)!r}: the system knows no home folder for {given.parts[0]!r}") from None


def writable_path(path: str | os.PathLike, what: str = "the file to write") -> Path:
    """``path`` as a ``Path`` where :func:`atomic_open` can write a file (its folder exists and takes new files, and it
    is no folder), else an ``OSError`` that says why: a script checks its output file so before it computes what goes
    in it.

    Example:
        >>> writable_path("/no/such/folder/figure.png")
        Traceback (most recent call last):
        ...
        FileNotFoundError: cannot write /no/such/folder/figure.png: its folder /no/such/folder does not exist
    """
    path = _target(path, what)
    if not os.access(path.parent, os.W_OK | os.X_OK):  # (a read-only folder or file system)
        raise PermissionError(f"cannot write {path}: its folder {path.parent} takes no new files (read-only)")
    return path


def _target(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a ``Path`` whose folder exists and which is no folder, else the ``OSError`` that says so: what
    :func:`atomic_open` checks before it writes (a folder it cannot write in, it names as the OS does)."""
    path = as_path(path, what)
    if not path.parent.is_dir():  # (mkstemp would name its temporary file instead)
        if path.parent.exists():
            raise NotADirectoryError(f"cannot write {path}: {path.parent} is a file, not a folder")
        raise FileNotFoundError(f"cannot write {path}: its folder {path.parent} does not exist")
    if _is_folder(path):  # (refused before anything is written; os.replace would name the temporary file)
        raise IsADirectoryError(f"cannot write {path}: it is a folder; name a file inside it or beside it")
    return path


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` (``mode`` ``"w"`` or ``"wb"``); on success it replaces ``path``.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_open(target) as handle:
        ...     _ = handle.write("done")
        >>> target.read_text()
        'done'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = _target(path, "the file to write")
    handled = sys.exc_info()[1]  # (an exception being handled as the write starts: not one of the write's own)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # (TEMPORARY_FILES)
    except OSError as err:  # (a read-only folder: name the file asked for, not a random temporary name)
        raise OSError(err.errno, err.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": ""} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        stop = _stop_behind(err, handled)
        if stop is not None:  # (torch's archive writer, unwound by a Ctrl-C or SIGTERM mid-write, then fails on its
            raise stop.with_traceback(stop.__traceback__) from None  # own: the stop is what happened)
        failure = _file_failure(err)
        if failure is not None and failure.filename is None:  # (a full disk names no file): name the target
            raise OSError(failure.errno, failure.strerror or str(failure), str(path)) from err
        raise


def _is_folder(path: Path) -> bool:
    """Whether ``path`` itself is a folder (a link to one is not: the rename replaces the link)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:  # missing (the usual case) or unreadable: the write itself says what is wrong
        return False


def _stop_behind(err: BaseException, handled: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C (or the command's SIGTERM, a subclass) that ``err``, another exception, was raised while handling,
    raised after ``handled`` (what was being handled before: a stop there is a caller's, already dealt with); ``None``
    where there is none or ``err`` is that stop itself."""
    seen = None if isinstance(err, KeyboardInterrupt) else err.__context__
    while seen is not None and seen is not handled and not isinstance(seen, KeyboardInterrupt):
        seen = seen.__context__
    return None if seen is handled else seen


def _file_failure(err: BaseException) -> OSError | None:
    """The operating system's error behind ``err``: itself, or the one ``torch.save``'s archive writer wraps in a
    ``RuntimeError`` (a full disk mid-checkpoint)."""
    seen: BaseException | None = err
    for _ in range(3):
        if isinstance(seen, OSError):
            return seen
        if seen is None or not isinstance(seen, RuntimeError):
            return None
        seen = seen.__cause__ or seen.__context__
    return None


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_open` left in ``folder`` when its process was killed.

    Only call it while no other process writes in ``folder`` (e.g. holding a run's lock). Returns what
    was removed.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()); _ = (folder / ".metrics.json.x1y2.tmp").write_text("{")
        >>> [p.name for p in remove_stale_temporaries(folder)]
        ['.metrics.json.x1y2.tmp']
    """
    stale = sorted(Path(folder).glob(TEMPORARY_FILES))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`).

    Example:
        >>> import tempfile
        >>> atomic_write_text(Path(tempfile.mkdtemp()) / "a.txt", "hello")
    """
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`).

    Example:
        >>> import tempfile
        >>> atomic_write_bytes(Path(tempfile.mkdtemp()) / "a.bin", b"\\x00\\x01")
    """
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def csv_text(rows: Sequence[Sequence[Any]]) -> str:
    """The CSV text of ``rows`` (the first row is the header), quoted where needed, ``\\n`` line ends.

    Example:
        >>> print(csv_text([["setting", "ACC"], ["meta=5,30", 87.4]]), end="")
        setting,ACC
        "meta=5,30",87.4
    """
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def memory_available() -> int | None:
    """Bytes of memory this machine can give a process now without swapping (Linux's ``MemAvailable``, which counts
    the page cache it can drop); ``None`` where it is not known or reads as no memory at all (a system that says
    nothing, or nonsense, bounds no file: a read beyond the memory then fails as ``MemoryError``, which
    :func:`read_regular_file` words)."""
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    return available if available > 0 else None
    except (OSError, ValueError, IndexError):
        pass
    return None


def read_regular_file(path: str | os.PathLike, what: str, max_bytes: int | None = None,
                      error: type[Exception] = ValueError) -> bytes:
    """The bytes of ``path``, which must be a regular file (a link to one is followed) of at most ``max_bytes``.

    A file from outside may be anything: a folder, a pipe that blocks the reader until someone writes to it, a
    device such as ``/dev/zero`` that never ends, a sparse file that claims more bytes than the machine's memory
    holds. Each of these, a missing or unreadable file and one larger than ``max_bytes`` (``None``: any size the
    memory available holds) raise one ``error`` naming ``what`` and the path, before anything is read; the file is
    opened without blocking and checked on the open descriptor, so it cannot be swapped in between.

    Example:
        >>> read_regular_file("/dev/zero", "checkpoint")
        Traceback (most recent call last):
        ...
        ValueError: checkpoint /dev/zero is not a regular file (it is a device, pipe, socket or folder)
    """
    path = as_path(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file (it is a device, pipe, socket or folder)")
        if max_bytes is not None and info.st_size > max_bytes:
            raise error(f"{what} {path} is {info.st_size:,} bytes, more than the {max_bytes:,} this reader accepts")
        available = memory_available()
        if available is not None and info.st_size > available:
            raise error(f"{what} {path} is {info.st_size:,} bytes, more than the {available:,} bytes of memory "
                        "available to read it into")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(info.st_size + 1)
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    except MemoryError:  # (a limit on this process's memory, as ulimit -v sets, that the machine's figure omits)
        raise error(f"{what} {path} is {info.st_size:,} bytes, more than this process's memory holds") from None
    finally:
        os.close(fd)
    if len(data) > info.st_size:
        raise error(f"{what} {path} grew while it was read; read it again when nothing writes to it")
    return data


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path``; one ``ValueError`` naming the file when it is unreadable, not a regular file,
    larger than any file metaspike writes (:data:`JSON_MAX_BYTES`), nested too deeply for Python's parser, holding
    an integer longer than Python converts (4300 digits), or not JSON.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.json"
        >>> atomic_write_text(target, '{"a": 1')
        >>> read_json(target)
        Traceback (most recent call last):
        ...
        ValueError: ... is not valid JSON (Expecting ',' delimiter, line 1); was it edited or cut short?
    """
    path = as_path(path, "JSON file")
    data = read_regular_file(path, "JSON file", JSON_MAX_BYTES)
    try:
        return json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}); was it edited or cut short?") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not valid JSON (not UTF-8 text); was it edited or cut short?") from None
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON for metaspike (nested deeper than Python's parser goes); "
                         "was it edited?") from None
    except ValueError as err:  # (an integer of more digits than Python converts: JSON itself sets no limit)
        raise ValueError(f"{path} is not valid JSON for metaspike ({_first_line(err).split(';')[0]}); "
                         "was it edited?") from None


#: How a zip archive starts (a local file header): ``torch.load`` reads bytes that start so with its zip reader, and
#: others as its older format.
_ZIP_MAGIC = b"PK\x03\x04"
#: The signature of the end-of-central-directory record, from which every zip reader (Python's, torch's) finds the
#: members: bytes without one are no archive that either can open.
_END_OF_CENTRAL_DIRECTORY = b"PK\x05\x06"


def check_torch_archive(data: bytes, what: str) -> None:
    """Refuse bytes that ``torch.load`` should not expand: ``torch.save`` writes a plain zip archive whose members
    are stored uncompressed, so a member that is compressed (a small file that inflates to gigabytes in memory
    before torch finds anything wrong), sizes that add up to more than the file, and an archive that Python's
    ``zipfile`` cannot read (whose sizes it cannot bound, while torch's own zip reader may still read it and
    inflate its members) are one ``ValueError`` naming ``what``.

    Bytes that do not start as a zip archive are refused too: ``torch.load`` would read them as its format from
    before torch 1.6, which sets aside as much memory as the file's pickle declares for each tensor, and no
    metaspike file was ever written that way. Bytes without an end-of-central-directory record (a truncated file)
    pass: torch's zip reader refuses them without expanding anything, and the callers name the damage.

    Example:
        >>> import torch
        >>> buffer = io.BytesIO(); torch.save({"w": torch.zeros(3)}, buffer)
        >>> check_torch_archive(buffer.getvalue(), "model.pt")
        >>> damaged = buffer.getvalue().replace(b"PK\\x01\\x02", b"PK\\x01\\x00", 1)  # a central directory entry
        >>> check_torch_archive(damaged, "model.pt")
        Traceback (most recent call last):
        ...
        ValueError: model.pt starts as a zip archive but is not one Python's zipfile can read (BadZipFile: ...
    """
    if not data.startswith(_ZIP_MAGIC):
        raise ValueError(f"{what} is not a zip archive, which torch.save writes (it starts with {data[:4]!r}): "
                         "another kind of file, or damaged; refused before loading")
    if _END_OF_CENTRAL_DIRECTORY not in data:
        return
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except Exception as err:  # zipfile raises several types for damaged archives (NotImplementedError among them)
        raise ValueError(f"{what} starts as a zip archive but is not one Python's zipfile can read "
                         f"({type(err).__name__}: {_first_line(err)}); torch.save writes plain zip archives, so it "
                         "is damaged or was made by hand: refused before loading") from None
    if any(m.compress_type != zipfile.ZIP_STORED for m in members) or sum(m.file_size for m in members) > len(data):
        raise ValueError(f"{what} has compressed or oversized members, which torch.save never writes; refused "
                         "before loading")


def load_plain_torch(data: bytes, what: str) -> Any:
    """``torch.load(weights_only=True)`` of ``data``, the bytes of a file :func:`check_torch_archive` passed, to the
    CPU; one ``ValueError`` naming ``what`` where torch cannot read them: an object other than tensors and plain
    Python values (what a file that would run code holds: nothing of it runs) or damaged bytes.

    Example:
        >>> import pickle
        >>> load_plain_torch(pickle.dumps(print), "model.pt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: model.pt is truncated or corrupt (torch cannot read it: UnpicklingError)
    """
    import torch  # (files.py is imported where torch is not needed)

    try:
        with warnings.catch_warnings():  # torch warns about some foreign files before it refuses them
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged files; its messages span lines
        if "unsupported global" in str(err).lower():  # (torch's words: "Unsupported global", "unsupported GLOBAL")
            raise ValueError(f"{what} holds an object that torch.load(weights_only=True) does not read (it holds "
                             "tensors and plain Python values only; such an object could run code when loaded, and "
                             "nothing of it ran)") from None
        raise ValueError(f"{what} is truncated or corrupt (torch cannot read it: {type(err).__name__})") from None


def load_torch_file(path: str | os.PathLike, what: str) -> Any:
    """What ``torch.save`` wrote to ``path``, a file from outside named ``what`` in errors: a regular file
    (:func:`read_regular_file`) holding a torch archive (:func:`check_torch_archive`) of tensors and plain Python
    values (:func:`load_plain_torch`), on the CPU.

    Example:
        >>> import tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> torch.save({"w": torch.ones(2)}, path)
        >>> load_torch_file(path, "weights file")
        {'w': tensor([1., 1.])}
    """
    data = read_regular_file(path, what)
    check_torch_archive(data, f"{what} {path}")
    return load_plain_torch(data, f"{what} {path}")


#: How deep the lists, tuples and dicts of a file ``torch.load`` reads may nest: a checkpoint nests a few levels (a
#: plugin's list of per-task lists of tensors), and a hand-made pickle of 100,000 nested lists loads in a moment but
#: overflows the stack of every recursive walk after it (a checksum, a ``repr``).
MAX_NESTING = 100

#: How many characters the keys and indices on the way to a list, tuple, dict or tensor of a file ``torch.load`` reads
#: may spell, as a checksum spells the path (``repr`` of each key): a checkpoint's take a few hundred at most (a
#: parameter's module path, a state's name), and a small hand-made file of long keys above many small lists asked
#: gigabytes of a checksum.
MAX_KEY_PATH = 4096

#: How many characters the paths of all the lists, tuples, dicts and tensors of such a file may spell together (each
#: is kept while a checksum reads the file): a stream's checkpoint spells about 530 a task evaluated, 5 million for
#: 10,000 tasks, and its histograms reach :data:`JSON_MAX_BYTES` long before this.
MAX_KEY_PATHS_TOTAL = 1 << 28


def tensor_problem(tensor: Any) -> str | None:
    """What keeps ``tensor``, read from a file, from being a plain dense one that stores each of its elements (as
    ``"a ... tensor ..."``; ``None``: nothing): sparse, nested or quantized tensors, which metaspike never writes and
    whose bytes its checksums and kernels cannot read, and views whose storage holds fewer bytes than their shape
    claims (stride 0, ``expand``), whose copy, hash or ``.contiguous()`` would cost what the shape claims (gigabytes)
    instead of what the file holds.

    Example:
        >>> import torch
        >>> tensor_problem(torch.zeros(3)) is None
        True
        >>> tensor_problem(torch.zeros(1).expand(1 << 20, 1 << 20))
        'a (1048576, 1048576) tensor over 4 bytes of storage'
        >>> tensor_problem(torch.zeros(3).to_sparse())
        'a torch.sparse_coo tensor'
    """
    import torch

    if tensor.is_nested:  # (before the layout: a nested tensor says torch.strided, and has no shape)
        return "a nested tensor"
    if tensor.layout != torch.strided:
        return f"a {tensor.layout} tensor"
    if tensor.is_quantized:
        return "a quantized tensor"
    stored = tensor.untyped_storage().nbytes()
    if stored < tensor.numel() * tensor.element_size():
        return f"a {tuple(tensor.shape)} tensor over {stored} bytes of storage"
    return None


def check_plain_tensors(value: Any, what: str) -> None:
    """One ``ValueError`` naming ``what`` (the file) and the entry where ``value``, what ``torch.load`` read from it,
    holds a tensor that :func:`tensor_problem` refuses or nests deeper than :data:`MAX_NESTING`: checked in one walk
    without recursion, before anything hashes, copies or formats it. A list, tuple or dict met again is walked once.

    Example:
        >>> import torch
        >>> check_plain_tensors({"model": {"w": torch.zeros(2)}, "rows": [[1.0]] * 3}, "checkpoint c.pt")
        >>> check_plain_tensors({"model": {"extra": torch.zeros(1).expand(1 << 18, 1 << 11)}}, "checkpoint c.pt")
        Traceback (most recent call last):
        ...
        ValueError: checkpoint c.pt holds ['model']['extra'] as a (262144, 2048) tensor over 4 bytes of storage, which metaspike never writes (it stores plain dense tensors, every element once); refused before any copy
    """
    import torch

    containers = (dict, list, tuple, set, frozenset)
    seen: set[int] = set()
    spelt: dict[int, int] = {}  # (the length of each key's repr, by id: one key object may key many dicts)
    stack: list[tuple[Any, str, int, int]] = [(value, "", 0, 0)]  # (item, where, depth, its path's characters)
    total = 0
    while stack:
        item, where, depth, path_chars = stack.pop()
        total += path_chars
        if path_chars > MAX_KEY_PATH:
            raise ValueError(f"{what} holds {where[:80]}... under keys of more than {MAX_KEY_PATH:,} characters in "
                             "all, which no metaspike file does; refused")
        if total > MAX_KEY_PATHS_TOTAL:
            raise ValueError(f"{what} holds so many lists, dicts or tensors under long keys that their paths spell "
                             f"more than {MAX_KEY_PATHS_TOTAL:,} characters, which no metaspike file does; refused")
        if isinstance(item, torch.Tensor):
            problem = tensor_problem(item)
            if problem is not None:
                raise ValueError(f"{what} holds {where or 'its content'} as {problem}, which metaspike never writes "
                                 "(it stores plain dense tensors, every element once); refused before any copy")
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        if depth >= MAX_NESTING:
            raise ValueError(f"{what} nests lists or dicts deeper than {MAX_NESTING} levels (at {where[:80]}...), "
                             "which no metaspike file does; refused")
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            if isinstance(child, (torch.Tensor, *containers)):  # (plain values: nothing to check, no name to make)
                chars = _spelt(key, spelt) if isinstance(item, dict) else len(str(key)) + 2
                stack.append((child, f"{where}[{shown(key)}]", depth + 1, path_chars + chars))


def _spelt(key: Any, spelt: dict[int, int]) -> int:
    """How many characters a checksum spells ``key`` with (its ``repr`` and a separator), from ``spelt`` where
    known; past :data:`MAX_KEY_PATH` where it has none (an integer beyond Python's digit limit)."""
    known = spelt.get(id(key))
    if known is None:
        try:
            known = len(repr(key)) + 1
        except ValueError:
            known = MAX_KEY_PATH + 1
        spelt[id(key)] = known
    return known


def _first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (``"no message"`` where it has none), for a one-line error."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else "no message"
