"""Hostile dataset files: CIFAR batch pickles and archives, IDX files, folders that cannot be read.

Each file is built here, in ``tmp_path``; none needs more than a few tens of MB. The memory bombs are checked by
their refusal, never set off: the old code asked for gigabytes from the same files made larger.
"""

from __future__ import annotations

import _codecs
import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from metaspike.data import DataError, load_dataset, read_idx, write_idx

# ---------------------------------------------------------------- helpers


def _batch_path(root: Path) -> Path:
    """Where the extracted CIFAR test batch goes under the data folder ``root`` (its folders made)."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "test_batch"


def _load_cifar_test(root: Path):
    return load_dataset("cifar10", "test", data_dir=root, download=False)


def _batch(labels: list[int], n: int = 4) -> bytes:
    return pickle.dumps({b"data": np.zeros((n, 3072), np.uint8), b"labels": labels}, protocol=2)


def _python2_batch(images: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way the official files were (Python 2, protocol 2, numpy.core paths, str as BINSTRING)."""
    raw = images.tobytes()
    rows, width = images.shape
    return (b"\x80\x02}(U\x04data"
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R("
            b"K\x01(M" + rows.to_bytes(2, "little") + b"M" + width.to_bytes(2, "little") + b"t"
            b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            b"\x89T" + len(raw).to_bytes(4, "little") + raw + b"tb"
            b"U\x06labels](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu.")


class _Call:
    """Pickles as ``function(*args)``: how a hostile file makes the unpickler call what its allow-list admits."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _tar(archive: Path, members: list[tuple[str, bytes]]) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------- CIFAR batch pickles


@pytest.mark.parametrize("value", [
    _Call(_codecs.encode, b"a", "hex"),  # nested 36 times: 64 GB from a 470-byte file
    _Call(_codecs.encode, "a", "hex"),
    _Call(_codecs.encode, "a", "utf-16"),  # more bytes than characters
    _Call(_codecs.encode, _Call(_codecs.encode, "a", "latin1"), "latin1"),  # bytes in: not how pickle writes bytes
])
def test_codecs_encode_is_only_text_to_latin1(tmp_path, value):
    path = _batch_path(tmp_path)
    path.write_bytes(pickle.dumps({b"data": value, b"labels": []}, protocol=2))
    with pytest.raises(DataError) as info:
        _load_cifar_test(tmp_path)
    assert str(info.value) == (f"{path} is not a readable CIFAR batch pickle (refusing _codecs.encode other than of "
                               "text to 'latin1' (how Python 3 pickles bytes))")


def test_pickled_arrays_load_only_as_numpy_writes_them(tmp_path):
    """Every pickle protocol and the official files' Python 2 form load; an array the pickle declares without its
    bytes (a direct numpy.ndarray call, a zero-stride view of one byte, a non-empty _reconstruct) is refused."""
    images = (np.arange(4 * 3072) % 251).astype(np.uint8).reshape(4, 3072)
    path = _batch_path(tmp_path)
    real = [_python2_batch(images, [1, 2, 3, 4])] + [
        pickle.dumps({b"data": images, b"labels": [1, 2, 3, 4]}, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    for k, raw in enumerate(real):
        root = tmp_path / f"real{k}"
        _batch_path(root).write_bytes(raw)
        ds = _load_cifar_test(root)
        assert ds.y.tolist() == [1, 2, 3, 4] and ds.x.shape == (4, 3, 32, 32)
        assert float(ds.x[1, 0, 0, 0]) == pytest.approx(3072 % 251 / 255)
    reconstruct = type(images).__reduce__(images)[0]  # numpy's _reconstruct, under this numpy's module path
    for data, refusal in [
        (_Call(np.ndarray, (10, 3072), np.dtype("u1")), "refusing to call numpy.ndarray"),
        (_Call(np.ndarray, (10, 3072), "u1", b"\0", 0, (0, 0)), "refusing to call numpy.ndarray"),
        (_Call(reconstruct, np.ndarray, (10, 3072), np.dtype("u1")), "refusing numpy _reconstruct of other than an "
                                                                     "empty numpy.ndarray"),
    ]:
        path.write_bytes(pickle.dumps({b"data": data, b"labels": [0] * 10}, protocol=2))
        with pytest.raises(DataError, match=f"^{path} is not a readable CIFAR batch pickle \\({refusal}"):
            _load_cifar_test(tmp_path)


def test_a_batch_pickle_cannot_change_numpy_types(tmp_path):
    """numpy.dtype("u1", False, False) is numpy's own uint8: a pickle that set its state (BUILD) with object flags
    made every uint8 array of the process hold pointers; on a copy, the array read the file's bytes as pointers.
    Run in a child process, as the old code crashed."""
    array = (b"cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R("
             b"K\x01K\x01M\x00\x0c\x86cnumpy\ndtype\nC\x02u1\x89%s\x87R"
             b"(K\x03C\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb\x89B\x00\x0c\x00\x00" + b"\x01" * 3072 + b"tb")
    roots = []
    for copy in (b"\x88", b"\x89"):  # True, False
        root = tmp_path / f"copy{copy.hex()}"
        _batch_path(root).write_bytes(b"\x80\x02}(C\x04data" + array % copy + b"C\x06labels]K\x00au.")
        roots.append(str(root))
    code = ("import sys, numpy as np\n"
            "from metaspike.data import DataError, load_dataset\n"
            "for root in sys.argv[1:]:\n"
            "    try:\n"
            "        load_dataset('cifar10', 'test', data_dir=root, download=False)\n"
            "    except DataError as err:\n"
            "        print(err)\n"
            "print('uint8 flags', np.dtype('u1').flags, np.zeros(2, np.uint8).sum())\n")
    done = subprocess.run([sys.executable, "-c", code, *roots], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[:2] == [f"{Path(root) / 'cifar10' / 'cifar-10-batches-py' / 'test_batch'} is not a readable CIFAR "
                         "batch pickle (refusing a numpy array of other than plain numbers)" for root in roots]
    assert lines[2] == "uint8 flags 0 0"


def test_a_batch_of_more_than_10000_images_is_refused(tmp_path):
    path = _batch_path(tmp_path)
    path.write_bytes(_batch([0] * 10_001, n=10_001))  # 31 MB, within the file cap
    with pytest.raises(DataError) as info:
        _load_cifar_test(tmp_path)
    assert str(info.value) == f"{path}: b'data' holds 10,001 images; a CIFAR batch holds at most 10,000"


@pytest.mark.parametrize("data, got", [
    ([[[[]]]], "list"),  # numpy's own ValueError, with no file named
    ([[0] * 3072], "list"),
    ("ab", "str"),
])
def test_batch_data_other_than_an_array_names_the_file(tmp_path, data, got):
    path = _batch_path(tmp_path)
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [0]}, protocol=2))
    with pytest.raises(DataError) as info:
        _load_cifar_test(tmp_path)
    assert str(info.value) == f"{path}: b'data' must be uint8 of shape [N, 3072], got {got}"


def test_labels_out_of_range_name_the_batch_file_and_the_range(tmp_path):
    folder = _batch_path(tmp_path).parent
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(_batch([3, 3, 255, 3] if i == 4 else [3] * 4))
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    assert str(info.value) == (f"{folder / 'data_batch_4'}: b'labels' must be a list of class indices 0..9 "
                               "(integers), as the CIFAR files hold")


# ---------------------------------------------------------------- CIFAR folders and archives


@pytest.mark.parametrize("kind", ["folder", "fifo", "link to /dev/zero"])
def test_an_extracted_batch_that_is_not_a_file_is_named(tmp_path, kind):
    path = _batch_path(tmp_path)
    {"folder": path.mkdir, "fifo": lambda: os.mkfifo(path), "link to /dev/zero": lambda: path.symlink_to("/dev/zero")
     }[kind]()
    with pytest.raises(DataError) as info:
        _load_cifar_test(tmp_path)
    assert str(info.value) == f"CIFAR batch {path} is not a regular file (it is a device, pipe, socket or folder)"


def test_an_archive_that_is_not_a_file_is_named(tmp_path):
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    archive.mkdir(parents=True)
    with pytest.raises(DataError) as info:
        _load_cifar_test(tmp_path)
    assert str(info.value) == f"archive {archive} is not a regular file (it is a device, pipe, socket or folder)"


def test_an_archive_of_too_many_members_is_refused(tmp_path):
    """500,000 empty members (3 MB) cost 200 MB and 10 s before: every member record was read first."""
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    _tar(archive, [(f"d/{i}", b"") for i in range(1_001)] + [("cifar-10-batches-py/test_batch", _batch([0] * 4))])
    with pytest.raises(DataError) as info:
        _load_cifar_test(tmp_path)
    assert str(info.value) == (f"archive {archive} has more than 1,000 members (the CIFAR-10 archive has 8): not the "
                               "CIFAR-10 archive; delete it and fetch it again")


def test_an_archive_with_two_members_for_one_batch_is_refused(tmp_path):
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    _tar(archive, [("cifar-10-batches-py/test_batch", _batch([1] * 4)),
                   ("junk/../../x/cifar-10-batches-py/test_batch", _batch([7] * 4))])
    with pytest.raises(DataError) as info:
        _load_cifar_test(tmp_path)
    assert str(info.value) == (f"archive {archive} holds two members for cifar-10-batches-py/test_batch: "
                               "cifar-10-batches-py/test_batch and junk/../../x/cifar-10-batches-py/test_batch; "
                               "delete it and fetch it again")


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz", ""])
def test_an_archive_is_read_whatever_its_compression(tmp_path, compression):
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"  # (the name the loader looks for; its bytes decide)
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, f"w:{compression}") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        data = _batch([3, 1, 4, 1])
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert _load_cifar_test(tmp_path).y.tolist() == [3, 1, 4, 1]


@pytest.mark.parametrize("bomb", ["pax header", "long name", "member data"])
def test_an_archive_that_decompresses_beyond_any_cifar_archive_is_refused_as_it_is_read(tmp_path, monkeypatch, bomb):
    """tarfile reads a pax or GNU long-name header whole, whatever size its record declares: a gzip bomb of one such
    header made the loader hold it all (and a bomb of member data took minutes to skip). The archive is now read
    through a bound on its decompressed bytes, lowered here to 1 MB for a 4 MB bomb."""
    from metaspike import data

    monkeypatch.setattr(data, "_CIFAR_ARCHIVE_MAX_BYTES", 1 << 20)
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    big = 4 << 20
    tar_format = tarfile.PAX_FORMAT if bomb == "pax header" else tarfile.GNU_FORMAT
    with tarfile.open(archive, "w:gz", format=tar_format) as tar:
        name = "x" * big if bomb == "long name" else "junk"
        info = tarfile.TarInfo(name)
        if bomb == "pax header":
            info.pax_headers = {"comment": "a" * big}
        payload = b"\0" * big if bomb == "member data" else b""
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    assert archive.stat().st_size < big // 100
    with pytest.raises(DataError) as info:
        _load_cifar_test(tmp_path)
    assert str(info.value) == (f"archive {archive} holds more than 1,048,576 bytes once decompressed (the CIFAR-10 "
                               "archive holds about 178 MB): not the CIFAR-10 archive; delete it and fetch it again")


# ---------------------------------------------------------------- dataset folders that cannot be read


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_an_unsearchable_dataset_folder_is_one_data_error(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    folder.chmod(0)
    try:
        if os.access(folder, os.X_OK):
            pytest.skip("permissions do not apply here (root)")
        with pytest.raises(DataError) as info:
            load_dataset(name, "test", data_dir=tmp_path, download=False)
    finally:
        folder.chmod(0o755)
    assert str(info.value) == f"cannot read dataset folder {folder}: Permission denied"


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_dataset_folder_the_system_cannot_look_in_is_one_data_error(tmp_path, name):
    """A folder name longer than the system allows: pathlib raised OSError (as for a folder without permissions)."""
    root = tmp_path / ("x" * 300)
    with pytest.raises(DataError) as info:
        load_dataset(name, "test", data_dir=root, download=False)
    assert str(info.value) == f"cannot read dataset folder {root / name}: File name too long"


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("array, problem", [
    (np.zeros((2,) * 9, np.uint8), "9 dimensions; this reader accepts 1 to 8"),
    (np.zeros((0, 28, 28), np.uint8), "an empty dimension (dimensions (0, 28, 28)): it holds no data"),
    (np.zeros((28, 0), np.float32), "an empty dimension (dimensions (28, 0)): it holds no data"),
    (np.float64(1.0), "0 dimensions; this reader accepts 1 to 8"),
])
def test_write_idx_writes_only_what_read_idx_reads(tmp_path, array, problem):
    path = tmp_path / "a-idx.gz"
    with pytest.raises(DataError) as info:
        write_idx(path, array)
    assert str(info.value) == f"cannot write {path}, which read_idx would refuse: the array has {problem}"
    assert not path.exists()


@pytest.mark.parametrize("dtype", [">i4", ">i2", ">f4", ">f8"])  # (IDX's own byte order)
def test_write_idx_takes_either_byte_order(tmp_path, dtype):
    array = np.arange(-3, 5).reshape(2, 4).astype(dtype)
    path = tmp_path / "a-idx2"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=") and back.tolist() == array.tolist()
    eight = np.ones((1,) * 7 + (3,), dtype)  # the most dimensions read_idx reads
    write_idx(path, eight)
    assert read_idx(path).shape == eight.shape


@pytest.mark.parametrize("max_bytes", [None, "1000000", -1, 0, 1.5, True])
def test_read_idx_max_bytes_is_checked(tmp_path, max_bytes):
    path = tmp_path / "a-idx1"
    write_idx(path, np.arange(3, dtype=np.uint8))
    with pytest.raises(ValueError) as info:
        read_idx(path, max_bytes)
    assert str(info.value) == (f"max_bytes must be a whole number of bytes, 1 or more (default 4,294,967,296), got "
                               f"{max_bytes!r}")
    assert read_idx(path, np.int64(3)).tolist() == [0, 1, 2]
