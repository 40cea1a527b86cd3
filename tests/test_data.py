"""Tests for metaspike.data: IDX I/O, dataset loaders, validation and errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import tarfile
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fake_mnist

from metaspike.data import (
    ArrayDataset,
    DataError,
    available_datasets,
    default_data_dir,
    load_dataset,
    read_idx,
    write_idx,
)

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"
ALL_NAMES = ["cifar10", "digits", "fashion-mnist", "kmnist", "mnist", "mnist5k"]


# ---------------------------------------------------------------- helpers


def _cifar_batch(n: int, start_label: int, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [(start_label + i) % 10 for i in range(n)]
    return {b"batch_label": b"fake", b"labels": labels, b"data": data,
            b"filenames": [b"f%d.png" % i for i in range(n)]}, data


def _fake_cifar(folder: Path, n: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write cifar-10-batches-py/ with n images per batch; return expected arrays."""
    rng = np.random.default_rng(7)
    batch_dir = folder / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True)
    expect: dict[str, list] = {"train": [[], []], "test": [[], []]}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, bname in enumerate(names):
        batch, data = _cifar_batch(n, k, rng)
        # protocol 2, like the official (Python 2) files
        (batch_dir / bname).write_bytes(pickle.dumps(batch, protocol=2))
        split = "test" if bname == "test_batch" else "train"
        expect[split][0].append(data)
        expect[split][1].extend(batch[b"labels"])
    return {s: (np.concatenate(v[0]), np.asarray(v[1])) for s, v in expect.items()}


# ---------------------------------------------------------------- IDX I/O


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.normal(size=(5, 3, 4)) * 50).astype(dtype)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, arr)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.shape == (5, 3, 4)
    np.testing.assert_array_equal(back, arr)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_idx_header_layout(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.array([7, 2, 1], dtype=np.uint8))
    # magic 0 0 0x08 1, dim 3 big-endian, then the bytes
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])


def test_idx_gzip_detected_by_magic_not_name(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz = tmp_path / "x.gz"
    write_idx(gz, arr)
    disguised = tmp_path / "x-idx2-ubyte"  # gzipped content, no .gz suffix
    disguised.write_bytes(gz.read_bytes())
    np.testing.assert_array_equal(read_idx(disguised), arr)
    plain = tmp_path / "plain"
    write_idx(plain, arr)
    named_gz = tmp_path / "plain-but-named.gz"  # raw content with .gz suffix
    named_gz.write_bytes(plain.read_bytes())
    np.testing.assert_array_equal(read_idx(named_gz), arr)


def test_idx_truncated_names_file(tmp_path):
    path = tmp_path / "short-idx3-ubyte"
    write_idx(path, np.zeros((4, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert "3136" in str(info.value)  # 4*28*28 expected data bytes


def test_idx_truncated_gzip_names_file(tmp_path):
    path = tmp_path / "short.gz"
    write_idx(path, np.arange(4000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_bad_magic_names_file(tmp_path):
    path = tmp_path / "notidx"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataError, match="magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_unknown_type_code_and_trailing_bytes(tmp_path):
    bad_type = tmp_path / "badtype"
    bad_type.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(DataError, match="0x07"):
        read_idx(bad_type)
    trailing = tmp_path / "trailing"
    trailing.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 2, 5, 6, 9]))
    with pytest.raises(DataError, match="1 unexpected trailing"):
        read_idx(trailing)


def test_idx_gzip_bomb_is_refused_after_the_declared_size(tmp_path):
    import gzip

    path = tmp_path / "bomb-idx1-ubyte.gz"  # declares 3 bytes of data, decompresses to 64 MB
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3]) + bytes(64 << 20), compresslevel=9))
    assert path.stat().st_size < 200_000
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(info.value) == (f"IDX file {path} decompresses to more than the 11 bytes its header declares "
                               f"(dimensions (3,)); refusing to read further")


def test_idx_header_declaring_absurd_sizes_is_refused(tmp_path):
    import gzip

    path = tmp_path / "huge-idx3-ubyte.gz"  # 2^32-1 cubed bytes would wrap around in int64
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + b"\xff" * 12))
    with pytest.raises(DataError, match=r"declares [\d,]+ bytes of data .* more than the 4,294,967,296 this reader accepts") as info:
        read_idx(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_dataset_folder_declaring_more_than_memory_holds_once_loaded_is_refused_before_decompressing(
        tmp_path, monkeypatch):
    """A 1 MB gzip file may declare gigabytes of zeros: the limit is what loading would cost (about 12 bytes of
    memory per stored byte), not the 4 GiB an IDX header may declare."""
    import metaspike.data as data

    fake_mnist(tmp_path, gz=True)
    images = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    count = 4_000
    images.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (count, 28, 28))
                                     + bytes(count * 784), compresslevel=9))
    assert images.stat().st_size < 10_000
    # a machine of 32 MiB: its budget is 2 MiB, less than the 3,136,000 bytes declared
    monkeypatch.setattr(data, "usable_memory", lambda: 32 << 20)
    with pytest.raises(DataError, match=rf"^IDX file {images} declares 3,136,000 bytes of data \(dimensions "
                                        r"\(4000, 28, 28\)\), more than the 2,097,152 this reader accepts: a corrupt "
                                        "header, or more data than this machine's memory holds once loaded$"):
        load_dataset("mnist", "train", data_dir=tmp_path, download=False)
    uncompressed = images.with_suffix("")
    uncompressed.write_bytes(gzip.decompress(images.read_bytes()))
    images.unlink()
    with pytest.raises(DataError, match=rf"^IDX file {uncompressed} is 3,136,016 bytes, more than the 2,097,152 bytes"):
        load_dataset("mnist", "train", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("header, message", [
    (bytes([0, 0, 8, 3]) + (0).to_bytes(4, "big") + b"\xff" * 8, r"declares an empty dimension \(dimensions \(0, "),
    (bytes([0, 0, 8, 255]) + b"\0\0\0\1" * 255, "declares 255 dimensions; this reader accepts 1 to 8"),
])
def test_idx_headers_numpy_cannot_hold_are_named(tmp_path, header, message):
    path = tmp_path / "odd-idx3-ubyte"
    path.write_bytes(header)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope")


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(DataError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


# ---------------------------------------------------------------- paths


def test_default_data_dir_priority(tmp_path, monkeypatch):
    monkeypatch.setenv("METASPIKE_DATA", str(tmp_path / "env"))
    assert default_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert default_data_dir() == tmp_path / "env"
    monkeypatch.delenv("METASPIKE_DATA")
    assert default_data_dir() == Path.home() / ".cache" / "metaspike" / "data"


# ---------------------------------------------------------------- MNIST-style


@pytest.mark.parametrize("gz", [True, False])
def test_loadfake_mnist(tmp_path, gz):
    written = fake_mnist(tmp_path, gz=gz)
    for split, n in (("train", 20), ("test", 8)):
        ds = load_dataset("mnist", split, data_dir=tmp_path, download=False)
        images, labels = written[split]
        assert ds.x.shape == (n, 1, 28, 28)
        assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
        assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
        assert ds.y.tolist() == labels.tolist()
        # pixel values: exactly uint8 / 255
        torch.testing.assert_close(ds.x[:, 0], torch.from_numpy(images).float() / 255)
        assert ds.classes == tuple("0123456789")
        assert ds.num_features == 784 and len(ds) == n


def test_load_is_cached(tmp_path):
    fake_mnist(tmp_path)
    a = load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    b = load_dataset("mnist", "test", data_dir=tmp_path, download=True)
    assert a is b


def test_fashion_and_kmnist_class_names(tmp_path):
    fake_mnist(tmp_path, name="fashion-mnist")
    fake_mnist(tmp_path, name="kmnist")
    fashion = load_dataset("fashion-mnist", "test", data_dir=tmp_path, download=False)
    kmnist = load_dataset("kmnist", "train", data_dir=tmp_path, download=False)
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot"
    assert len(fashion.classes) == 10
    assert kmnist.classes == ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")


def test_mnist_mismatched_counts(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match="8 images but .* 5 labels"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_mnist_with_zero_images_is_one_clear_line(tmp_path):
    fake_mnist(tmp_path)
    images = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"  # (write_idx refuses to write such files)
    images.write_bytes(gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 0, 0, 0, 0, 28, 0, 0, 0, 28])))
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 0])))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    assert str(info.value) == (f"IDX file {images} declares an empty dimension (dimensions (0, 28, 28)): it holds no "
                               "data; delete it and fetch it again")


def test_missing_files_message(tmp_path):
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in msg
    assert "t10k-labels-idx1-ubyte.gz" not in msg  # present, so not listed
    assert str((tmp_path / "mnist").resolve()) in msg
    assert "mnist5k" in msg and "digits" in msg
    assert "METASPIKE_DATA" not in msg  # (a folder given explicitly wins over the variable: setting it changes nothing)
    assert "\n" not in msg
    # a fully empty dir lists both files of the split
    with pytest.raises(DataError) as info:
        load_dataset("kmnist", "train", data_dir=tmp_path, download=False)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert str((tmp_path / "kmnist").resolve()) in msg


def test_the_missing_files_message_names_the_variable_only_where_no_folder_was_given(tmp_path, monkeypatch):
    monkeypatch.setenv("METASPIKE_DATA", str(tmp_path))
    with pytest.raises(DataError, match="or set METASPIKE_DATA to a folder containing mnist/, or use"):
        load_dataset("mnist", "test", download=False)


@pytest.mark.parametrize("failure", [OSError("network unreachable"),
                                     urllib.error.URLError(OSError(-2, "Name or service not known"))])
def test_failed_download_gives_one_clear_error(tmp_path, monkeypatch, failure):
    import metaspike.data as data

    def refuse(*args, **kwargs):
        raise failure

    monkeypatch.setattr(data.urllib.request, "urlopen", refuse)
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", "test", data_dir=tmp_path, download=True)
    msg = str(info.value)
    assert str(failure) in msg and "t10k-images-idx3-ubyte.gz" in msg
    # (a network error was read as the target file's: "[Errno None] <urlopen error ...>: '.../t10k-images...gz'")
    assert "Errno None" not in msg and f"{failure}: '" not in msg
    assert "\n" not in msg
    assert not (tmp_path / "fashion-mnist").exists()  # the folder made for the download is gone again


def test_failed_download_removes_only_what_it_created(tmp_path, monkeypatch):
    import metaspike.data as data

    class CutOff(io.BytesIO):
        def read(self, size=-1):
            if self.tell():
                raise OSError("connection reset")
            return super().read(size)

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: CutOff(b"x" * (2 << 20)))
    fresh = tmp_path / "new" / "data"  # neither folder exists yet
    with pytest.raises(DataError, match="connection reset"):
        load_dataset("kmnist", "test", data_dir=fresh)
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept"
    (kept / "kmnist").mkdir(parents=True)
    (kept / "kmnist" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="connection reset"):
        load_dataset("kmnist", "test", data_dir=kept)
    assert [p.name for p in (kept / "kmnist").iterdir()] == ["notes.txt"]  # no temporary file, folder kept


def test_download_checks_md5_and_renames(tmp_path, monkeypatch):
    """Serve fake files through a patched urlopen: good md5 -> loads, bad md5 -> error."""
    import metaspike.data as data

    src = tmp_path / "src"
    fake_mnist(src, n_test=6)
    served = {f.name: f.read_bytes() for f in (src / "mnist").iterdir()}
    monkeypatch.setattr(data, "_IDX_SOURCES", {
        **data._IDX_SOURCES,
        "mnist": ("http://example.invalid/", {k: hashlib.md5(v).hexdigest() for k, v in served.items()}),
    })
    monkeypatch.setattr(data.urllib.request, "urlopen",
                        lambda url, timeout: io.BytesIO(served[url.rsplit("/", 1)[1]]))
    dest = tmp_path / "dest"
    ds = load_dataset("mnist", "test", data_dir=dest)
    assert ds.x.shape == (6, 1, 28, 28)
    assert sorted(p.name for p in (dest / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]

    monkeypatch.setattr(data, "_IDX_SOURCES", {
        **data._IDX_SOURCES, "mnist": ("http://example.invalid/", {k: "0" * 32 for k in served})})
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("mnist", "train", data_dir=dest)
    # neither the file nor its temporary (atomic_open's ".NAME.*.tmp") stays behind
    assert not any(p.name.startswith(("train", ".")) for p in (dest / "mnist").iterdir())


# ---------------------------------------------------------------- real MNIST


@pytest.fixture(scope="module")
def real_mnist_dir() -> Path:
    needed = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    if not all((REAL_MNIST / f).is_file() for f in needed):
        pytest.skip(f"real MNIST test files not found in {REAL_MNIST}")
    return REAL_MNIST


def test_real_mnist_idx(real_mnist_dir):
    images = read_idx(real_mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(real_mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 10000
    assert counts[1] == 1135 and counts[5] == 892
    assert images.max() == 255 and images.min() == 0


def test_real_mnist_load_dataset(real_mnist_dir, tmp_path):
    target = tmp_path / "mnist"
    target.mkdir()
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        try:
            os.symlink(real_mnist_dir / f, target / f)
        except OSError:
            shutil.copy(real_mnist_dir / f, target / f)
    ds = load_dataset("mnist", split="test", data_dir=tmp_path, download=False)
    assert ds.x.shape == (10000, 1, 28, 28)
    assert ds.y.shape == (10000,)
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    assert int((ds.y == 1).sum()) == 1135
    # first test digit of MNIST is a 7
    assert int(ds.y[0]) == 7
    # the train split is not there: a clear error, not a crash
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", split="train", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------- offline sets


def test_mnist5k():
    train = load_dataset("mnist5k", "train")
    test = load_dataset("mnist5k", "test")
    assert train.x.shape == (4000, 1, 28, 28) and test.x.shape == (1000, 1, 28, 28)
    assert len(train) + len(test) == 5000
    assert set(train.y.tolist()) == set(range(10)) == set(test.y.tolist())
    assert float(train.x.max()) == 1.0 and float(train.x.min()) == 0.0
    # train and test hold different images: together they are the 5000 distinct rows
    def rows(ds):
        return [r.tobytes() for r in (ds.x.reshape(len(ds), -1) * 255).round().to(torch.uint8).numpy()]

    train_rows, test_rows = rows(train), rows(test)
    assert len(set(train_rows) | set(test_rows)) == 5000
    assert not set(train_rows) & set(test_rows)
    # deterministic
    assert load_dataset("mnist5k", "test", data_dir="/some/other/dir").y.tolist() == test.y.tolist()


def test_digits():
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert train.x.shape == (1437, 1, 28, 28) and test.x.shape == (360, 1, 28, 28)
    for ds in (train, test):
        assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
        border = torch.ones(28, 28, dtype=torch.bool)
        border[4:24, 4:24] = False
        assert float(ds.x[:, 0][:, border].abs().max()) < 1e-6
        assert float(ds.x[:, 0, 4:24, 4:24].max()) > 0.9  # the digit itself is there
    assert set(train.y.tolist()) == set(range(10))
    assert len(train) + len(test) == 1797


# ---------------------------------------------------------------- CIFAR-10


def test_cifar_extracted_and_tar(tmp_path):
    extracted_root = tmp_path / "a"
    expect = _fake_cifar(extracted_root / "cifar10")

    tar_root = tmp_path / "b"
    (tar_root / "cifar10").mkdir(parents=True)
    with tarfile.open(tar_root / "cifar10" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(extracted_root / "cifar10" / "cifar-10-batches-py", arcname="cifar-10-batches-py")

    for root in (extracted_root, tar_root):
        for split, n in (("train", 20), ("test", 4)):
            ds = load_dataset("cifar10", split, data_dir=root, download=False)
            data, labels = expect[split]
            assert ds.x.shape == (n, 3, 32, 32)
            assert ds.y.tolist() == labels.tolist()
            torch.testing.assert_close(ds.x, torch.from_numpy(data.reshape(n, 3, 32, 32)).float() / 255)
            assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"


@pytest.mark.parametrize("damage", ["pixel", "trailer"])
def test_a_cifar_archive_whose_gzip_check_fails_is_refused(tmp_path, damage):
    """The tar was read as a stream that stops at its end marker, so gzip's trailer (the CRC and length of the data)
    was never reached: an archive with a pixel changed, or cut before its trailer, loaded without a word."""
    import zlib

    _fake_cifar(tmp_path / "a" / "cifar10")
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        tar.add(tmp_path / "a" / "cifar10" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    raw = tar_bytes.getvalue()
    if damage == "pixel":  # a pixel changed under the original CRC (the middle of the test batch's pickled pixels)
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            member = tar.getmember("cifar-10-batches-py/test_batch")
        pixel = member.offset_data + member.size // 2
        changed = raw[:pixel] + bytes([raw[pixel] ^ 1]) + raw[pixel + 1:]
        packed = gzip.compress(changed, mtime=0, compresslevel=0)
        packed = packed[:-8] + zlib.crc32(raw).to_bytes(4, "little") + packed[-4:]
    else:
        packed = gzip.compress(raw, mtime=0)[:-8]
    archive = tmp_path / "b" / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(packed)
    with pytest.raises(DataError, match=f"archive {archive} is corrupt or truncated"):
        load_dataset("cifar10", "test", data_dir=tmp_path / "b", download=False)


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert "cifar-10-python.tar.gz" in str(info.value)
    assert "cifar-10-batches-py" in str(info.value)

    batch_dir = tmp_path / "cifar10" / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True)
    (batch_dir / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8),
                                                         b"labels": [0, 1]}, protocol=2))
    with pytest.raises(DataError, match=r"\[N, 3072\]"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("labels", [[0.9, 1.0], [2**70, 1], [None, 1], "ab", [True, False]])
def test_cifar_labels_must_be_class_indices(tmp_path, labels):
    """Float labels were truncated (0.9 -> class 0), huge ones overflowed, others failed inside numpy."""
    batch_dir = tmp_path / "cifar10" / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True)
    (batch_dir / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels},
                                                        protocol=2))
    with pytest.raises(DataError, match=r"test_batch: b'labels' must be a list of class indices"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)


def test_cifar_pickle_refuses_foreign_globals(tmp_path):
    batch_dir = tmp_path / "cifar10" / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True)

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    (batch_dir / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load global"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------- names, splits


def test_available_and_unknown_names():
    assert available_datasets() == ALL_NAMES
    with pytest.raises(DataError) as info:
        load_dataset("foo")
    assert str(info.value) == ("unknown dataset 'foo'; available: "
                               "cifar10, digits, fashion-mnist, kmnist, mnist, mnist5k")


def test_bad_split():
    with pytest.raises(DataError) as info:
        load_dataset("digits", split="validation")
    msg = str(info.value)
    assert "'validation'" in msg and "train" in msg and "test" in msg


# ---------------------------------------------------------------- ArrayDataset


def test_array_dataset_validation():
    x = torch.rand(4, 1, 2, 2)
    y = torch.tensor([0, 1, 0, 1])
    ds = ArrayDataset("ok", x, y, ("a", "b"))
    assert len(ds) == 4 and ds.num_features == 4
    x_nan = x.clone()
    x_nan[2, 0, 1, 1] = float("nan")
    with pytest.raises(DataError, match="'bad'.*non-finite"):
        ArrayDataset("bad", x_nan, y, ("a", "b"))
    with pytest.raises(DataError, match="4 samples but y has 3"):
        ArrayDataset("bad", x, y[:3], ("a", "b"))
    with pytest.raises(DataError, match="int64"):
        ArrayDataset("bad", x, y.to(torch.int32), ("a", "b"))
    with pytest.raises(DataError, match="float32"):
        ArrayDataset("bad", x.double(), y, ("a", "b"))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        ArrayDataset("bad", x * 3, y, ("a", "b"))
    with pytest.raises(DataError, match="labels"):
        ArrayDataset("bad", x, y + 1, ("a", "b"))


def test_subset():
    x = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1, 1) / 10
    ds = ArrayDataset("five", x, torch.tensor([0, 1, 2, 0, 1]), ("a", "b", "c"))
    sub = ds.subset([4, 0], name="two")
    assert sub.name == "two" and len(sub) == 2
    assert sub.y.tolist() == [1, 0] and sub.x.flatten().tolist() == pytest.approx([0.4, 0.0])
    mask = ds.subset(ds.y == 0)
    assert mask.name == "five" and mask.y.tolist() == [0, 0]
    assert len(ds.subset(torch.tensor([], dtype=torch.long))) == 0
    with pytest.raises(DataError, match="bad subset index"):
        ds.subset([7])
    assert "n=5" in repr(ds)


def test_own_tensors_or_arrays_become_a_dataset_the_scenarios_take():
    from metaspike.continual import ContinualTrainer, TrainerConfig, split

    generator = torch.Generator().manual_seed(0)
    features = torch.rand(60, 12, generator=generator, dtype=torch.float64)
    labels = torch.arange(60) % 3
    train = ArrayDataset.from_tensors(features[:45], labels[:45], "mine")
    test = ArrayDataset.from_tensors(features[45:], labels[45:], "mine")
    assert train.x.shape == (45, 12) and train.x.dtype == torch.float32 and train.classes == ("0", "1", "2")
    assert torch.equal(train.x, features[:45].float())
    pixels = ArrayDataset.from_tensors(np.full((2, 5, 5), 255, np.uint8), np.array([1, 0]), classes=("a", "b", "c"))
    assert pixels.x.shape == (2, 1, 5, 5) and float(pixels.x.max()) == 1.0 and pixels.classes == ("a", "b", "c")
    # class names are names, once each (ints were kept, and then differed from a test set's default "0", "1", ...)
    with pytest.raises(DataError, match=r"^dataset 'mine': classes must be names \(strings\), got 0 \(int\)"):
        ArrayDataset.from_tensors(features[:45], labels[:45], "mine", classes=[0, 1, 2])
    with pytest.raises(DataError, match=r"^dataset 'mine': classes must name each class once, got 'a' twice"):
        ArrayDataset.from_tensors(features[:45], labels[:45], "mine", classes=["a", "a", "b"])
    scenario = split(train, test, groups=[[0, 1], [2]], mode="class")
    model = torch.nn.Sequential(torch.nn.Linear(12, 3))  # feature vectors reach the model as [B, F]
    result = ContinualTrainer(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), TrainerConfig(epochs=1),
                              progress=False).fit(scenario)
    assert len(result.matrix) == 2
    dataset = torch.utils.data.TensorDataset(features.float(), labels)
    with pytest.raises(ValueError, match=r"the training set must be a metaspike.data.ArrayDataset \(from your own "
                                         r"tensors or numpy arrays: ArrayDataset.from_tensors\(x, y, name\)\), got "
                                         r"TensorDataset"):
        split(dataset, dataset)


@pytest.mark.parametrize("x, y, message", [
    (torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), r"x values must lie in \[0, 1\], found .* scale the data by"),
    (torch.rand(4), torch.tensor([0, 1, 0, 1]), r"x must have shape \[N, F\], \[N, H, W\] or \[N, C, H, W\], got \[4\]"),
    (torch.randint(0, 3, (4, 3)), torch.tensor([0, 1, 0, 1]), "x must be floating point, bool or uint8 pixels"),
    (torch.rand(4, 3), torch.tensor([0.0, 1, 0, 1]), "y must hold integer class indices, got torch.float32"),
    (torch.rand(4, 3), torch.tensor([0, -1, 0, 1]), r"labels are class indices 0..C-1, found -1; number the classes from 0"),
    (torch.rand(4, 3), torch.tensor([-2, -1, -2, -1]), r"labels are class indices 0..C-1, found -2"),  # (not classes)
    ([[0.5]], torch.tensor([0]), "x and y must be torch tensors or numpy arrays, got list as x"),
    (torch.rand(2, 3), np.array(["a", "b"], dtype=object), "y must hold numbers, got a numpy array of object"),
    (np.ones((2, 3), np.complex64), np.array([0, 1]), "x must hold real numbers, got a numpy array of complex64"),
    (torch.rand(2, 3), torch.zeros(2, 1, dtype=torch.int32), r"y must have shape \[N\], got \[2, 1\]"),
    # a sparse class id made 10**8 class names (7 GB) before anything else
    (torch.rand(2, 3), torch.tensor([0, 10**8]), r"y's largest label is 100,000,000, which would make 100,000,001 "
                                                  r"classes \(at most 1,000,000\).*np.unique\(y, return_inverse=True\)"),
    (torch.rand(2, 3), np.array([0, 2**63 + 5], dtype=np.uint64), r"y holds labels of 2\*\*63 or more"),
    # each of these failed inside torch, or was named for what it is not
    (np.full((2, 3), 1 + 1e-7), torch.tensor([0, 1]), r"x values must lie in \[0, 1\], found \[1.00000012, "
                                                      r"1.00000012\]"),
    (np.full((2, 3), 1e300), torch.tensor([0, 1]), r"x holds values beyond float32's range \(largest magnitude "
                                                   r"1e\+300\)"),
    (np.full((2, 3), 0.5, dtype=np.longdouble), torch.tensor([0, 1]), r"x is a numpy array of float(96|128), which "
                                                                      r"torch cannot hold"),
    (torch.rand(2, 3).to_sparse(), torch.tensor([0, 1]), r"x must be a dense tensor, got a sparse_coo tensor; make it "
                                                         r"dense first \(x.to_dense\(\)\)"),
    (torch.rand(2, 3), torch.tensor([0, 1]).to_sparse(), "y must be a dense tensor, got a sparse_coo tensor"),
    (torch.rand(2, 0), torch.tensor([0, 1]), r"x's samples hold no values \(shape \[2, 0\]\)"),
])
def test_own_data_that_does_not_fit_is_one_line(x, y, message):
    with pytest.raises(DataError, match=message):
        ArrayDataset.from_tensors(x, y)


def test_own_images_that_look_channels_last_are_named_in_a_warning_and_read_as_given():
    y = torch.tensor([0, 1])
    message = (r"x of shape \[2, 32, 32, 3\] looks channels-last \[N, H, W, C\]; it is read as \[N, C, H, W\] "
               r"\(32 channels of 32x3\): pass x.permute\(0, 3, 1, 2\)")
    with pytest.warns(UserWarning, match=message):
        data = ArrayDataset.from_tensors(torch.rand(2, 32, 32, 3), y)
    assert data.x.shape == (2, 32, 32, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for shape in ((2, 3, 32, 32), (2, 1, 28, 28), (2, 4, 8, 3), (2, 64, 1, 1), (2, 16, 3, 3)):  # (channels
            # first; feature maps of 1x1 and 3x3)
            assert ArrayDataset.from_tensors(torch.rand(*shape), y).x.shape == shape


def test_own_class_names_must_be_a_sequence_and_an_empty_subset_is_empty():
    with pytest.raises(DataError, match="classes must be a sequence of class names, got 'ab'"):
        ArrayDataset.from_tensors(torch.rand(2, 3), torch.tensor([0, 1]), classes="ab")
    data = ArrayDataset.from_tensors(torch.rand(3, 2), torch.tensor([0, 1, 1]))
    assert len(data.subset([])) == 0 and data.subset([]).classes == ("0", "1")  # (a filter that matched nothing)


def test_own_data_is_copied_and_detached_and_its_name_checked():
    features = torch.rand(4, 3, requires_grad=True)
    labels = np.array([0, 1, 2, 1])
    data = ArrayDataset.from_tensors(features * 1.0, labels, "mine")
    assert not data.x.requires_grad and data.x.grad_fn is None
    with torch.no_grad():
        features.add_(5.0)  # the caller's arrays change afterwards
    labels[0] = 42
    assert float(data.x.max()) <= 1.0 and int(data.y[0]) == 0
    flipped = ArrayDataset.from_tensors(np.flip(np.eye(3, dtype=np.float32), 0), np.array([2, 1, 0])[::-1])
    assert flipped.y.tolist() == [0, 1, 2] and flipped.x[0, 2] == 1.0
    with pytest.raises(DataError, match="name must be a non-empty string, got 5"):
        ArrayDataset.from_tensors(torch.rand(2, 3), torch.tensor([0, 1]), name=5)


@pytest.mark.parametrize("name", [None, 5, "", b"toy"])
def test_a_dataset_name_that_is_not_a_non_empty_string_is_refused_however_the_dataset_is_made(name):
    x, y = torch.rand(4, 3), torch.tensor([0, 1, 1, 0])
    message = rf"^name must be a non-empty string, got {re.escape(repr(name))}$"
    with pytest.raises(DataError, match=message):  # (accepted before: every scenario then failed in .split("/"))
        ArrayDataset(name, x, y, ("a", "b"))
    with pytest.raises(DataError, match=message):
        ArrayDataset.from_tensors(x, y, name)
    if name is not None:  # (subset's name=None keeps the dataset's name)
        with pytest.raises(DataError, match=message):
            ArrayDataset("ok", x, y, ("a", "b")).subset([0, 1], name=name)


def test_tensors_on_the_meta_device_are_one_line_naming_the_argument():
    meta_x, meta_y = torch.empty(4, 3, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")
    x, y = torch.rand(4, 3), torch.tensor([0, 1, 1, 0])
    for args, label in (((meta_x, y), "x"), ((x, meta_y), "y")):
        message = rf"^dataset 'mine': {label}'s device 'meta' holds shapes without values"
        with pytest.raises(DataError, match=message):  # (was torch's "Tensor.item() cannot be called on meta tensors")
            ArrayDataset.from_tensors(*args, "mine")
        with pytest.raises(DataError, match=message):
            ArrayDataset("mine", *args, ("a", "b"))


def test_the_standardize_the_range_error_points_at_takes_scalars_and_names_a_vector_in_one_line():
    from metaspike.app.models import Standardize

    x = torch.rand(20, 13, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match=r"Standardize\(mean, std\) in front of the model$"):
        ArrayDataset.from_tensors(x * 10, torch.zeros(20, dtype=torch.long))
    # one number given as a tensor, a numpy array or a numpy scalar is taken, as before
    for mean, std in ((x.mean(), x.std()), (np.float64(0.5), np.array(0.25)), (torch.tensor([0.5]), 0.25)):
        module = Standardize(mean, std)
        assert module.mean.shape == module.std.shape == ()
    # (0 - 0.5) / 0.25 and (1 - 0.5) / 0.25 are exact in float32: powers of two
    assert torch.equal(Standardize(0.5, 0.25)(torch.tensor([[0.0, 1.0]])), torch.tensor([[-2.0, 2.0]]))
    for mean, std, message in [
        (x.mean(0), x.std(0), r"^Standardize's mean must be a scalar \(one number for every input value\), got a "
                              r"Tensor of shape \[13\]; for per-feature statistics put your own module"),
        (0.5, x.numpy().std(0), r"^Standardize's std must be a scalar .* got a ndarray of shape \[13\];"),
        (None, 0.2, r"^Standardize's mean must be a finite number \(a scalar\), got None$"),
        (0.5, float("nan"), r"^Standardize's std must be a finite number \(a scalar\), got nan$"),
        (True, 0.2, r"^Standardize's mean must be a finite number \(a scalar\), got True$"),
        (0.5, 0, r"^Standardize's std must be > 0 \(it divides\), got 0.0$"),
        (torch.empty((), device="meta"), 0.2, r"^Standardize's mean is a tensor on the 'meta' device"),
    ]:
        with pytest.raises(ValueError, match=message):
            Standardize(mean, std)


def test_a_read_only_numpy_array_loads_without_torchs_undefined_behaviour_warning(tmp_path):
    """np.load(mmap_mode="r") gives read-only arrays: torch warned that writing to them is undefined, pointing into
    metaspike, though from_tensors copies them and nothing writes to them."""
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((6, 4), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 0, 1, 2]))
    x, y = (np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in ("x", "y"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = ArrayDataset.from_tensors(x, y, "mapped")
    data.x.add_(1.0)  # (its own copy: the file's array is untouched)
    assert np.array_equal(np.load(tmp_path / "x.npy"), x) and data.classes == ("0", "1", "2")


def test_a_gzipped_idx_file_beside_a_different_plain_twin_is_refused(tmp_path):
    """With both t10k-labels-idx1-ubyte.gz and t10k-labels-idx1-ubyte in the folder, the gzip was read without a
    word, though the plain one held other labels (a tester trained on all-zero labels). Equal twins load as before."""
    arrays = fake_mnist(tmp_path / "equal", gz=True)
    fake_mnist(tmp_path / "equal", gz=False)  # (the same arrays, uncompressed)
    loaded = load_dataset("mnist", "test", tmp_path / "equal").y
    assert torch.equal(loaded, torch.from_numpy(arrays["test"][1].astype(np.int64)))
    fake_mnist(tmp_path, gz=True)
    fake_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.zeros(8, dtype=np.uint8))
    with pytest.raises(DataError, match=r"holds both t10k-labels-idx1-ubyte.gz and t10k-labels-idx1-ubyte, and they "
                                        r"differ: remove the one that is wrong$"):
        load_dataset("mnist", "test", tmp_path)


def test_a_dataset_is_read_again_after_its_files_change(tmp_path):
    """The cache was keyed on (name, split, folder) alone: files replaced, edited or removed since the first load
    gave the first load's data for the rest of the process."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([1, 2, 3], dtype=np.uint8))
    first = load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    assert load_dataset("mnist", "test", data_dir=tmp_path, download=False) is first  # (unchanged: the same object)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([7, 8, 9], dtype=np.uint8))
    os.utime(folder / "t10k-labels-idx1-ubyte.gz", ns=(1, 1))  # (another time, even within the clock's resolution)
    assert load_dataset("mnist", "test", data_dir=tmp_path, download=False).y.tolist() == [7, 8, 9]
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_a_link_to_nothing_in_a_dataset_folder_leaves_the_change_check_working(tmp_path):
    """A dangling link made the folder unreadable to the check, which then kept the first load's data for good."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "notes.txt").symlink_to(tmp_path / "nowhere")
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([5, 5], dtype=np.uint8))
    first = load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    assert load_dataset("mnist", "test", data_dir=tmp_path, download=False) is first
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.array([7, 7], dtype=np.uint8))
    os.utime(folder / "t10k-labels-idx1-ubyte.gz", ns=(1, 1))
    assert load_dataset("mnist", "test", data_dir=tmp_path, download=False).y.tolist() == [7, 7]


def test_a_write_error_without_a_file_name_names_the_target(tmp_path):
    """numpy's short write raises an OSError with neither errno nor file name: the target is named."""
    from metaspike.files import atomic_open

    target = tmp_path / "target.npy"
    with pytest.raises(OSError, match=f"100 requested and 8 written: '{target}'"):
        with atomic_open(target, "wb"):
            raise OSError("100 requested and 8 written")
    assert list(tmp_path.iterdir()) == []


def test_a_linked_archive_folder_and_a_copy_keeping_its_time_are_read_again(tmp_path):
    """The change check did not follow a linked folder (CIFAR's extracted cifar-10-batches-py/ kept elsewhere) and
    missed a file copied over another of its size with the modification time kept (cp -p, rsync -t, tar x)."""
    from metaspike.data import _folder_state

    folder, elsewhere = tmp_path / "cifar10", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    (elsewhere / "data_batch_1").write_bytes(b"aaaa")
    (folder / "cifar-10-batches-py").symlink_to(elsewhere)
    first = _folder_state(folder)
    assert [entry[0] for entry in first] == ["cifar-10-batches-py/data_batch_1"]
    (tmp_path / "copy").write_bytes(b"bbbb")
    stamp = (elsewhere / "data_batch_1").stat()
    os.replace(tmp_path / "copy", elsewhere / "data_batch_1")
    os.utime(elsewhere / "data_batch_1", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert _folder_state(folder) != first
    assert _folder_state(tmp_path / "nothing") == ()


@pytest.mark.parametrize("name", ["lab/a", "my/data/train", "/train", "mine/"])
def test_a_slash_in_a_dataset_name_is_refused_but_before_a_split(name):
    # the scenarios name their tasks after what comes before the '/': "lab/a" and "lab/b" made tasks of one name
    x, y = torch.rand(4, 3), torch.tensor([0, 1, 1, 0])
    with pytest.raises(DataError, match=r"^name must not contain '/' but before a split's name \('<name>/train' or "
                                        rf"'<name>/test'\), got {re.escape(repr(name))}$"):
        ArrayDataset.from_tensors(x, y, name)
    assert ArrayDataset.from_tensors(x, y, "lab/test").name == "lab/test"
