"""bnn.pack: bit-packed inference predicts exactly as the float model."""

import copy
import hashlib
import io
import math
import os
import pickle
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import bnn
from bnn.packed import PackedMLP, _popcount, pack_bits
from metaspike.data import load_dataset, read_idx
from metaspike.quantizers import get_quantizer

MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained briefly on mnist5k, with population statistics from its training data."""
    torch.manual_seed(0)
    train = load_dataset("mnist5k")
    model = bnn.MLP([784, 128, 64, 10])
    bnn.fit(model, train, epochs=1, lr=0.005, meta=1.0, progress=False)
    bnn.use_population_statistics(model, train.x)
    return model.eval()


def _mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    images = MNIST / "t10k-images-idx3-ubyte.gz"
    labels = MNIST / "t10k-labels-idx1-ubyte.gz"
    if not (images.is_file() and labels.is_file()):
        pytest.skip(f"real MNIST test split not found in {MNIST}")
    x = torch.from_numpy(read_idx(images).astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(read_idx(labels).astype(np.int64))


@pytest.mark.parametrize("compile", [False, True], ids=["torch-ops", "fast-kernels"])
def test_predictions_equal_the_float_model_on_the_real_mnist_test_split(trained, compile):
    x, y = _mnist_test()
    packed = bnn.pack(trained, compile=compile)
    with torch.no_grad():
        reference = trained(x)
    scores = packed(x)
    assert torch.equal(packed.predict(x), reference.argmax(1))
    assert torch.equal(scores, reference)  # even the class scores are the same floats
    assert (scores.argmax(1) == y).float().mean() > 0.8


def test_hidden_activations_equal_the_float_model(trained):
    x = load_dataset("mnist5k", "test").x
    packed = bnn.pack(trained, compile=False)
    with torch.no_grad():
        signs = torch.nn.Sequential(*list(trained)[:4])(x)  # Flatten, BinaryLinear, BatchNorm1d, sign
    a = bnn.packed._real_dot(x.flatten(1), packed.layers[0]["weight"])
    layer = packed.layers[0]
    fires = torch.where(layer["flip"], -a, a) >= layer["threshold"]
    assert torch.equal(fires, signs > 0)


def test_negative_batchnorm_scale_flips_the_comparison(trained):
    model = copy.deepcopy(trained)
    with torch.no_grad():
        for norm in (model[2], model[5]):
            norm.weight[::2] *= -1  # half the neurons get a negative scale
            norm.bias[::3] = 0.0
            norm.weight[1::7] = 0.0  # and some a zero scale (constant output)
    model.eval()
    # (the first BatchNorm's new scales change what the second one sees: packing says its statistics are outdated;
    # the packed model must still compute what the float model computes with them)
    with pytest.warns(UserWarning, match="packing MLP with BatchNorm statistics that use_population_statistics fixed"):
        packed = bnn.pack(model, compile=False)
    assert packed.layers[0]["flip"].any() and packed.layers[1]["flip"].any()
    x = load_dataset("mnist5k", "test").x
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))


def test_batch_sizes_agree_and_single_samples_work(trained):
    x = load_dataset("mnist5k", "test").x[:40]
    packed = bnn.pack(trained, compile=False)
    whole = packed(x)
    single = torch.cat([packed(x[i : i + 1]) for i in range(len(x))])
    assert torch.equal(whole, single)


def test_torch_compiled_forward_equals_eager(trained, monkeypatch):
    monkeypatch.setattr(bnn.packed.native, "kernels", lambda: None)  # as on a machine without a C compiler
    x = load_dataset("mnist5k", "test").x[:64]
    compiled = bnn.pack(trained)
    assert compiled._native is None
    assert torch.equal(compiled(x), bnn.pack(trained, compile=False)(x))


@pytest.mark.skipif(bnn.native.kernels() is None, reason="no C compiler to build the native kernels")
def test_native_kernels_equal_eager_torch_ops_layer_by_layer(trained, monkeypatch):
    x = load_dataset("mnist5k", "test").x[:100].flatten(1)
    packed, lib = bnn.pack(trained, compile=False), bnn.native.kernels()
    first, second = packed.layers[0], packed.layers[1]
    a = bnn.packed._real_dot(x, first["weight"])
    assert torch.equal(bnn.native.real_layer(lib, x, first["weight"]), a)
    bits = pack_bits(torch.where(first["flip"], -a, a) >= first["threshold"])
    assert torch.equal(bnn.native.real_layer(lib, x, first["weight"], first["flip"], first["threshold"]), bits)
    hidden = bnn.packed._binary_dot(bits, second["weight"], 128)
    assert torch.equal(bnn.native.binary_layer(lib, bits, 128, second["weight"]), hidden)
    for work_per_thread in (1 << 40, 1):  # one thread, then outputs split between threads: the same bits
        monkeypatch.setattr(bnn.native, "MIN_WORK_PER_THREAD", work_per_thread)
        assert torch.equal(bnn.pack(trained)(x), bnn.pack(trained, compile=False)(x))
    assert [name.split(":")[0] for name in bnn.pack(trained).kernel_names()] == ["native C"] * 3


KERNEL_BUILDS = [(), ("-DPACKED_PORTABLE",)]  # this CPU's best path (intrinsics where it has AVX-512), plain C
KERNEL_BUILD_NAMES = ["default", "portable-c"]


def _kernels_with(flags: tuple[str, ...]):
    lib = bnn.native._kernels(bnn.native.FLAGS + flags)
    if lib is None:
        pytest.skip("no C compiler to build the native kernels")
    if "-DPACKED_PORTABLE" in flags:  # the build asked for, not one loaded earlier (the loader knows them by name)
        assert all("portable C" in kind for kind in bnn.native.kinds(lib)), bnn.native.kinds(lib)
        assert lib.binary_layer_output_major() == 1  # the portable hidden layer reads each output's words in a row
    return lib


@pytest.mark.parametrize("flags", KERNEL_BUILDS, ids=KERNEL_BUILD_NAMES)
def test_a_hidden_layer_takes_its_weights_prepared_once_in_the_kernels_layout(flags):
    lib = _kernels_with(flags)
    torch.manual_seed(3)
    n, out = 150, 70
    h, w = torch.randint(-2**62, 2**62, (5, 3)), torch.randint(-2**62, 2**62, (3, out))
    prepared = bnn.native.kernel_weight(lib, w)
    assert prepared.shape == ((out, 3) if lib.binary_layer_output_major() else (3, out))
    assert torch.equal(bnn.native.binary_layer(lib, h, n, w, prepared=prepared), bnn.packed._binary_dot(h, w, n))
    wrong = prepared.T.contiguous()  # the other layout: refused, never read as if it were this one
    with pytest.raises(ValueError, match=r"^hidden layer prepared weight is \(\d+, \d+\) torch.int64, expected"):
        bnn.native.binary_layer(lib, h, n, w, prepared=wrong)


@pytest.mark.parametrize("flags", KERNEL_BUILDS, ids=KERNEL_BUILD_NAMES)
def test_hidden_layer_counts_hold_over_long_rows_with_every_bit_differing(flags):
    """Rows of 131 words (the AVX2 kernel adds byte counts for 31 steps of 4 words, then sums them: a row of every bit
    differing puts 8 in each byte at each step, 248 at most), tails of words, outputs and samples."""
    lib = _kernels_with(flags)
    torch.manual_seed(4)
    batch, n, out = 5, 64 * 130 + 5, 13
    h = pack_bits(torch.rand(batch, n) > 0.5)
    w = pack_bits(torch.rand(out, n) > 0.5).T
    h[0], w[:, 0] = pack_bits(torch.ones(1, n, dtype=torch.bool))[0], 0  # sample 0 and output 0 differ in every bit
    dot = bnn.native.binary_layer(lib, h, n, w)
    assert torch.equal(dot, bnn.packed._binary_dot(h, w, n)) and dot[0, 0] == -n


@pytest.mark.skipif(bnn.native.kernels() is None, reason="no C compiler to build the native kernels")
def test_a_hidden_weight_changed_in_place_or_replaced_after_a_call_is_used_by_the_next(trained):
    """The native kernel's copy of a hidden layer's weights (output-major for the portable kernel) follows the
    layer: made again when the tensor is replaced or changed in place."""
    packed = bnn.pack(trained)
    x = load_dataset("mnist5k", "test").x[:32]
    before = packed(x)
    weight = packed.layers[1]["weight"]
    weight.bitwise_not_()  # every sign of layer 1 flipped, in place
    changed = packed(x)
    assert torch.equal(changed, PackedMLP(packed.sizes, packed.layers, compile=False)(x))
    assert not torch.equal(changed, before)
    packed.layers[1]["weight"] = weight.bitwise_not()  # the original signs, in a new tensor
    assert torch.equal(packed(x), before)


@pytest.mark.parametrize("flags", KERNEL_BUILDS, ids=KERNEL_BUILD_NAMES)
def test_native_kernels_equal_torch_ops_at_ties_extremes_and_odd_sizes(flags, monkeypatch):
    """Thresholds exactly at (and one float next to) each sample's pre-activation, float32 sums
    that would overflow or hold subnormals, and sizes that leave tails of samples, outputs and words."""
    lib = _kernels_with(flags)
    torch.manual_seed(1)
    batch, n, out = 7, 203, 133
    x = torch.randint(-256, 257, (batch, n)).float() / 256  # float64 sums of these are exact in any order
    x[2] *= 2.0**126  # its float32 sums would overflow: float64 for every neuron
    x[3] *= 2.0**-140  # subnormal float32 values
    weight = pack_bits(torch.rand(out, n) > 0.5, word_bits=8).T  # (groups, out): a view, copied by the check
    flip = torch.rand(out) > 0.5
    a = bnn.packed._real_dot(x, weight)
    assert torch.equal(bnn.native.real_layer(lib, x, weight), a)
    value = torch.where(flip, -a, a)
    thresholds = [torch.randn(out, dtype=torch.float64) * 5]
    for s in range(batch):
        thresholds += [value[s], value[s].nextafter(value[s] + 1), value[s].nextafter(value[s] - 1)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        for work_per_thread in (1 << 40, 1):  # one thread, then outputs split between 3
            monkeypatch.setattr(bnn.native, "MIN_WORK_PER_THREAD", work_per_thread)
            for threshold in thresholds:
                bits = bnn.native.real_layer(lib, x, weight, flip, threshold)
                assert torch.equal(bits, pack_bits(value >= threshold))
            h = pack_bits(torch.rand(batch, n) > 0.5)
            w = pack_bits(torch.rand(out, n) > 0.5).T  # (words, out)
            dot = bnn.packed._binary_dot(h, w, n)
            assert torch.equal(bnn.native.binary_layer(lib, h, n, w), dot)
            k = torch.randint(-20, 21, (out,))
            assert torch.equal(bnn.native.binary_layer(lib, h, n, w, flip, k), pack_bits(torch.where(flip, -dot, dot) >= k))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("flags", [*KERNEL_BUILDS, ("-fno-openmp",)], ids=[*KERNEL_BUILD_NAMES, "pool"])
def test_native_kernel_threads_kept_between_calls_give_the_same_bits_from_many_callers(flags, monkeypatch):
    """The kernels' worker threads (torch's OpenMP threads where torch runs GNU OpenMP, else a pool of their own) stay
    alive between calls: calls with changing thread counts, calls from several Python threads at once (one uses the
    workers, the others start threads of their own) and a forked child (which has none of the parent's workers, and
    where GNU OpenMP's hang) all give the one-thread bits."""
    import concurrent.futures
    import time

    lib = _kernels_with(flags)
    torch.manual_seed(2)
    batch, n, out = 5, 300, 1000
    h, w = pack_bits(torch.rand(batch, n) > 0.5), pack_bits(torch.rand(out, n) > 0.5).T.contiguous()
    flip, k = torch.rand(out) > 0.5, torch.randint(-20, 21, (out,))
    x = torch.randn(batch, n)
    weight = pack_bits(torch.rand(out, n) > 0.5, word_bits=8).T.contiguous()
    threshold = torch.randn(out, dtype=torch.float64)

    def both(threads: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (bnn.native.binary_layer(lib, h, n, w, flip, k, threads=threads),
                bnn.native.real_layer(lib, x, weight, flip, threshold, threads=threads))

    monkeypatch.setattr(bnn.native, "MIN_WORK_PER_THREAD", 1)  # every call splits its outputs between its threads
    expected = both(1)
    for threads in (4, 2, 3, 1, 5, 2, 4):  # workers of an earlier, larger call sit some calls out
        assert all(torch.equal(a, b) for a, b in zip(both(threads), expected)), threads
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(both, [2, 3, 4, 2] * 10))
    assert all(torch.equal(a, b) for result in results for a, b in zip(result, expected))
    if hasattr(os, "fork"):
        pid = os.fork()
        if pid == 0:  # the child: exit status 0 when its 3-thread bits are right (a hang fails below)
            ok = False
            try:
                ok = all(torch.equal(a, b) for a, b in zip(both(3), expected))
            finally:
                os._exit(0 if ok else 1)
        deadline = time.monotonic() + 60
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0, "the forked child failed or hung"


_STALLED_CALLS = """
import random, sys, time, torch
import bnn.native as native
from bnn.packed import pack_bits
lib = native._kernels(native.FLAGS + ("-fno-openmp", "-DPACKED_TEST_STALL_US=20"))  # (the pool's threads)
native.MIN_WORK_PER_THREAD = 1
rng, calls, deadline = random.Random(0), 0, time.monotonic() + 60
while calls < 200 and time.monotonic() < deadline:  # (a count of calls, not of seconds: a busy machine is slower)
    batch, n, out = rng.randint(1, 9), rng.randint(1, 300), rng.randint(65, 700)
    h, w = pack_bits(torch.rand(batch, n) > 0.5), pack_bits(torch.rand(out, n) > 0.5).T.contiguous()
    x, wb = torch.randn(batch, n), pack_bits(torch.rand(out, n) > 0.5, word_bits=8).T.contiguous()
    flip, k, t = torch.rand(out) > 0.5, torch.randint(-n, n + 1, (out,)), torch.randn(out, dtype=torch.float64)
    hidden, first = native.binary_layer(lib, h, n, w, flip, k, threads=1), native.real_layer(lib, x, wb, flip, t, threads=1)
    for threads in rng.sample(range(2, 9), 4):  # a different number of chunks and of workers each call
        calls += 1
        if not (torch.equal(native.binary_layer(lib, h, n, w, flip, k, threads=threads), hidden)
                and torch.equal(native.real_layer(lib, x, wb, flip, t, threads=threads), first)):
            sys.exit(f"call {calls}: {threads} threads disagree with one (batch {batch}, n {n}, out {out})")
print(calls)
"""


@pytest.mark.skipif(bnn.native.kernels() is None, reason="no C compiler to build the native kernels")
def test_a_worker_waking_late_never_takes_part_in_the_next_call():
    """With the caller stalled between writing a call's fields and publishing it (a test build), workers
    still finishing the previous call see the new chunk count in that window: they must not claim its
    chunks (which hung the caller, or wrote another worker's scratch tables out of bounds). Run in a
    child process, so a hang fails the test instead of the suite."""
    done = subprocess.run([sys.executable, "-c", _STALLED_CALLS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and int(done.stdout.split()[-1]) >= 200, done.stderr[-2000:]


def test_a_packed_call_leaves_torch_threads_of_other_python_threads_alone(trained):
    """A packed call runs torch's ops of the call on the calling thread; threads that start using torch
    meanwhile (a server growing its pool) still get torch's thread count, and so does the caller after."""
    import threading

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        packed, x, stop = bnn.pack(trained), torch.rand(8, 784), threading.Event()

        def serve() -> None:
            while not stop.is_set():
                packed(x)

        server = threading.Thread(target=serve)
        server.start()
        seen: list[int] = []
        for _ in range(20):
            newcomer = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
            newcomer.start()
            newcomer.join()
        stop.set()
        server.join()
        assert set(seen) == {2} and torch.get_num_threads() == 2
        with torch.inference_mode():
            assert torch.equal(packed(x), trained(x))
    finally:
        torch.set_num_threads(threads)


def _fresh_kernels():
    """Build or load the kernels again, bypassing the per-process cache."""
    return bnn.native._kernels.__wrapped__(bnn.native.FLAGS)


def _private_copy_source(folder: Path, name: str) -> bool:
    """Whether library ``name`` and its digest in ``folder`` pass the checks :mod:`bnn.native` makes before loading
    them (owned by this user, writable by no one else, no links): only such a copy is made (a planted library in an
    unsafe default cache is never copied into a test's cache, where the test would load it)."""
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        bnn.native._check_private(folder_fd, folder, "folder")
        for file in (name, f"{name}.sha256"):
            fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd)
            try:
                bnn.native._check_private(fd, folder / file, "file")
            finally:
                os.close(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(folder_fd)


def _seeded_cache(folder: Path) -> Path:
    """``folder`` made a private kernel cache holding this process's library and its digest, as a build there would
    leave them: copied from the default cache where it passes the loading checks (which saves the tests whose subject
    is a later load a build each), else built there by a child process, as a first load builds them."""
    name = bnn.native._library_name(bnn.native._compiler(), bnn.native.FLAGS)
    source = bnn.native._cache_dir()
    if _private_copy_source(source, name):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for file in (name, f"{name}.sha256"):
            shutil.copy2(source / file, folder / file)
    else:
        subprocess.run([sys.executable, "-c", "import bnn.native as n; assert n.kernels().binary_layer_kind()"],
                       env={**os.environ, "METASPIKE_CACHE": str(folder), "OMP_NUM_THREADS": "1"}, check=True,
                       capture_output=True)
    return folder


@pytest.mark.skipif(bnn.native.kernels() is None, reason="no C compiler to build the native kernels")
def test_native_kernels_build_once_into_a_private_cache_folder(monkeypatch, tmp_path):
    cache = tmp_path / "a" / "cache"
    monkeypatch.setenv("METASPIKE_CACHE", str(cache))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _fresh_kernels() is not None
        (built,) = cache.glob("packed_kernels-*.so")
        first = built.stat()
        assert _fresh_kernels() is not None  # the second call loads it, no rebuild
    assert (built.stat().st_ino, built.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert sorted(p.name for p in cache.iterdir()) == [built.name, built.name + ".sha256"]  # no scratch files left
    assert cache.stat().st_mode & 0o777 == 0o700 and first.st_mode & 0o077 == 0


@pytest.mark.skipif(bnn.native.kernels() is None, reason="no C compiler to build the native kernels")
def test_a_cache_folder_shared_with_another_kind_of_cpu_keeps_one_library_per_kind(monkeypatch, tmp_path):
    # -march=native code for one CPU may be illegal on another of the same host name (one VM image, a
    # shared home folder): the library's name must follow the instruction sets, not the machine's name.
    monkeypatch.setenv("METASPIKE_CACHE", str(tmp_path))
    real = bnn.native._instruction_sets()
    monkeypatch.setattr(bnn.native, "_instruction_sets", lambda: real.replace("flags", "flags\tavx512_other_cpu"))
    _fresh_kernels()
    (other,) = tmp_path.glob("packed_kernels-*.so")
    monkeypatch.setattr(bnn.native, "_instruction_sets", lambda: real)
    assert _fresh_kernels() is not None
    assert {p.name for p in tmp_path.glob("packed_kernels-*.so")} - {other.name}  # built its own


@pytest.mark.skipif(bnn.native.kernels() is None, reason="no C compiler to build the native kernels")
@pytest.mark.parametrize("damage", ["cut short", "emptied", "overwritten", "digest lost"])
def test_a_damaged_cached_library_is_built_again_not_loaded(tmp_path, damage):
    """A library cut short (a full disk, a restored backup) stopped the process with a bus error when loaded, and an
    emptied or overwritten one left the packed models on torch ops for good: each is now built again. The loads run
    in child processes, since a bus error cannot be caught."""
    env = {**os.environ, "METASPIKE_CACHE": str(_seeded_cache(tmp_path)), "OMP_NUM_THREADS": "1"}
    load = [sys.executable, "-W", "error", "-c", "import bnn.native as n; assert n.kernels().binary_layer_kind()"]
    (built,) = tmp_path.glob("packed_kernels-*.so")
    good = built.read_bytes()
    if damage == "cut short":
        built.write_bytes(good[:20000])
    elif damage == "emptied":
        built.write_bytes(b"")
    elif damage == "overwritten":
        built.write_bytes(os.urandom(len(good)))
    else:
        Path(f"{built}.sha256").unlink()  # (a library built before digests were recorded)
    run = subprocess.run(load, env=env, capture_output=True, text=True)
    assert run.returncode == 0, (run.returncode, run.stderr[-500:])
    assert built.read_bytes() and Path(f"{built}.sha256").exists()
    assert Path(f"{built}.sha256").read_text().strip() == hashlib.sha256(built.read_bytes()).hexdigest()


@pytest.mark.skipif(bnn.native.kernels() is None, reason="no C compiler to build the native kernels")
@pytest.mark.parametrize("which", ["library", "digest"])
def test_a_fifo_in_place_of_a_cached_file_is_passed_over_not_waited_on(tmp_path, which):
    """Opening a FIFO for reading waits for a writer: the cache's files are opened without waiting, then refused as
    not files, and the kernels are built in a private folder (a child process, so that a hang ends in a timeout)."""
    env = {**os.environ, "METASPIKE_CACHE": str(_seeded_cache(tmp_path)), "OMP_NUM_THREADS": "1"}
    load = [sys.executable, "-c", "import bnn.native as n; assert n.kernels().binary_layer_kind()"]
    (built,) = tmp_path.glob("packed_kernels-*.so")
    fifo = built if which == "library" else Path(f"{built}.sha256")
    fifo.unlink()
    os.mkfifo(fifo)
    run = subprocess.run(load, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-500:]
    assert "is not a file" in run.stderr


@pytest.mark.skipif(bnn.native.kernels() is None, reason="no C compiler to build the native kernels")
@pytest.mark.parametrize("which", ["library", "digest", "cache is a file"])
def test_a_symbolic_link_or_a_file_in_the_caches_place_builds_the_kernels_privately(tmp_path, which):
    """O_NOFOLLOW refused the link, but as a plain OSError: the process fell back to torch ops (6x slower at batch 1),
    with a warning that the build had failed; a file named as the cache folder did the same."""
    cache = tmp_path / "cache"
    env = {**os.environ, "METASPIKE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    load = [sys.executable, "-c", "import bnn.native as n; assert n.kernels().binary_layer_kind()"]
    if which == "cache is a file":
        cache.write_text("x")
    else:
        (built,) = _seeded_cache(cache).glob("packed_kernels-*.so")
        replaced = built if which == "library" else Path(f"{built}.sha256")
        replaced.unlink()
        replaced.symlink_to("/bin/true")
    run = subprocess.run(load, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-500:]
    assert ("is not a folder" if which == "cache is a file" else "is a symbolic link") in run.stderr
    assert "building them in a private temporary folder" in run.stderr


def _planted_library(path: Path, marker: Path) -> None:
    """A shared library that, once loaded, writes ``marker`` (what an attacker's code could do)."""
    source = path.with_suffix(".c")
    source.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void run(void) '
                      f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
                      'int real_layer(void) { return 0; }\n')
    subprocess.run(["cc", "-shared", "-fPIC", str(source), "-o", str(path)], check=True)
    source.unlink()


@pytest.mark.skipif(bnn.native.kernels() is None, reason="no C compiler to build the native kernels")
@pytest.mark.skipif(os.geteuid() != 0, reason="simulating another user's files needs root (os.chown)")
@pytest.mark.parametrize("hostile", ["folder of another user", "folder writable by others",
                                     "library of another user", "library writable by group"])
def test_a_library_another_user_could_have_planted_is_never_loaded(monkeypatch, tmp_path, hostile):
    cache, marker = _seeded_cache(tmp_path / "cache"), tmp_path / "planted-code-ran"
    monkeypatch.setenv("METASPIKE_CACHE", str(cache))
    _fresh_kernels()
    (built,) = cache.glob("packed_kernels-*.so")
    _planted_library(built, marker)  # the file the next call would load
    other = 4242
    if hostile == "folder of another user":
        os.chown(cache, other, other)
    elif hostile == "folder writable by others":
        cache.chmod(0o777)
    elif hostile == "library of another user":
        os.chown(built, other, other)
    else:
        built.chmod(0o770)
    with pytest.warns(RuntimeWarning, match="not loading kernels from the cache: .*(uid 4242|writable by group or others)"):
        lib = _fresh_kernels()
    assert not marker.exists()
    assert lib is not None and lib.binary_layer_kind()  # the real kernels, built in a private folder


def test_without_a_c_compiler_the_native_kernels_are_skipped_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("METASPIKE_CACHE", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="could not build the native kernels"):
        assert _fresh_kernels() is None


@pytest.mark.skipif(bnn.native.kernels() is None, reason="no C compiler to build the native kernels")
def test_a_compiler_command_with_arguments_in_cc_builds_the_kernels(monkeypatch, tmp_path):

    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    monkeypatch.setenv("CC", f"env LC_ALL=C {compiler} -O2")  # as make takes CC, e.g. CC="ccache gcc"
    monkeypatch.setenv("METASPIKE_CACHE", str(tmp_path))
    lib = _fresh_kernels()
    assert lib is not None and lib.binary_layer_kind()


def test_a_cc_that_is_no_command_is_skipped_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", 'gcc "-O2')
    monkeypatch.setenv("METASPIKE_CACHE", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="""CC='gcc "-O2' is not a command \\(No closing quotation\\)"""):
        assert _fresh_kernels() is None


def test_memory_is_about_one_bit_per_weight(trained):
    packed = bnn.pack(trained, compile=False)
    weights = 784 * 128 + 128 * 64 + 64 * 10
    layers = packed.layer_bytes()
    assert [(l.inputs, l.outputs) for l in layers] == [(784, 128), (128, 64), (64, 10)]
    assert sum(l.weight_bytes for l in layers) == 128 * 98 + 64 * 2 * 8 + 10 * 1 * 8
    assert sum(l.weight_bytes for l in layers) < weights / 8 * 1.1
    assert bnn.summary(trained).float32_bytes / packed.nbytes > 25


def test_save_and_load_round_trip(trained, tmp_path):
    packed = bnn.pack(trained, compile=False)
    path = tmp_path / "model.pt"
    packed.save(path)
    torch.load(path, weights_only=True)  # plain tensors, ints, floats and strings
    loaded = PackedMLP.load(path, compile=False)
    x = load_dataset("mnist5k", "test").x[:100]
    assert loaded.sizes == packed.sizes
    assert torch.equal(loaded(x), packed(x))


@pytest.mark.parametrize("sizes", [[4, 65, 1], [4, 130, 1, 3], [4, 64, 1], [100, 1]])
def test_a_layer_of_one_output_saves_and_loads(tmp_path, sizes):
    """A hidden layer of one output and more than 64 inputs is stored (words, 1) with strides (1, words), which torch
    calls contiguous: its checksum's byte view failed inside torch, so such a model could not be saved."""
    torch.manual_seed(0)
    model = bnn.use_population_statistics(bnn.MLP(sizes), torch.rand(200, sizes[0])).eval()
    packed = bnn.pack(model, compile=False)
    packed.save(tmp_path / "model.pt")
    x = torch.rand(50, sizes[0])
    assert torch.equal(PackedMLP.load(tmp_path / "model.pt", compile=False)(x), packed(x))
    if len(sizes) > 2:  # (a one-layer model's scores are real sums, which the packed layer adds in another order)
        assert torch.equal(packed(x), model(x))


class _Payload:
    """An object whose unpickling would run code: creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_file_carrying_an_object_that_could_run_code_is_named_so_and_nothing_runs(tmp_path):
    """PackedMLP.load called such a file "truncated or corrupted?" where load_checkpoint said what it holds."""
    from metaspike.continual.results import latest_good_checkpoint, load_checkpoint

    path, marker = tmp_path / "model.pt", tmp_path / "code-ran"
    torch.save({"format": "packed-bnn", "x": _Payload(marker)}, path)
    for load, what in [(PackedMLP.load, "packed BNN file"), (load_checkpoint, "checkpoint")]:
        with pytest.raises(ValueError, match=f"^{what} {path} holds an object that torch.load\\(weights_only=True\\) "
                                             "does not read"):
            load(path)
    assert not marker.exists()
    with pytest.raises(ValueError, match=f"^{path} is a file; latest_good_checkpoint takes the run's folder"):
        latest_good_checkpoint(path)


def test_truncated_or_corrupted_files_raise_value_error(trained, tmp_path):
    path = tmp_path / "model.pt"
    bnn.pack(trained, compile=False).save(path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="^packed BNN file .* is truncated or corrupt"):
        PackedMLP.load(truncated)
    flipped = bytearray(data)
    flipped[len(data) // 3 : len(data) // 3 + 64] = bytes(64)
    corrupted = tmp_path / "corrupted.pt"
    corrupted.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="packed BNN file"):
        PackedMLP.load(corrupted)
    other = tmp_path / "other.pt"
    torch.save({"format": "something else"}, other)
    with pytest.raises(ValueError, match="is not a valid packed BNN file: it does not start with"):
        PackedMLP.load(other)
    wrong = torch.load(path, weights_only=True)
    wrong["layers"][1]["weight"] = wrong["layers"][1]["weight"][:1]
    torch.save(wrong, other)
    with pytest.raises(ValueError, match=r"layer 1 'weight' is \(1, 64\) torch.int64, expected \(2, 64\)"):
        PackedMLP.load(other)


def _hostile_file(trained, tmp_path, change, checksum: bool = True) -> Path:
    """A saved packed model changed by ``change(data)``, with its checksum recomputed (anyone can) unless not
    ``checksum`` (the entries are checked before the checksum anyway)."""
    path = tmp_path / "model.pt"
    bnn.pack(trained, compile=False).save(path)
    data = torch.load(path, weights_only=True)
    change(data)
    try:
        if checksum:
            data["sha256"] = bnn.packed._checksum(data["sizes"], data["layers"])
    except RuntimeError:  # e.g. a sparse tensor
        pass
    torch.save(data, path)
    return path


def _set(layer: int, key: str, value):
    def change(data):
        data["layers"][layer][key] = value(data["layers"][layer][key]) if callable(value) else value
    return change


@pytest.mark.parametrize("change, error", [
    (_set(1, "weight", lambda w: w[:1]), r"layer 1 'weight' is \(1, 64\) torch.int64, expected \(2, 64\)"),
    (_set(0, "threshold", lambda t: t[:8]), r"layer 0 'threshold' is \(8,\) torch.float64, expected \(128,\)"),
    (_set(0, "threshold", lambda t: t.float()), r"layer 0 'threshold' is \(128,\) torch.float32, expected .* torch.float64"),
    (_set(1, "flip", lambda f: f.to(torch.uint8)), r"layer 1 'flip' is \(64,\) torch.uint8, expected .* torch.bool"),
    (_set(1, "threshold", lambda t: t.to_sparse()), r"layer 1 'threshold' is a torch.sparse_coo tensor"),
    (_set(0, "weight", "not a tensor"), r"layer 0 'weight' is a str, expected a torch.uint8 tensor"),
    (_set(0, "bias", torch.zeros(128)), r"layer 0 has entries \['bias', 'flip', 'threshold', 'weight'\]"),
    (lambda data: data.update(extra=1), r"it has entries \['extra', 'format'"),
    (lambda data: data["sizes"].__setitem__(1, 2**40), r"layer 0 'weight' is \(98, 128\) torch.uint8, expected \(98, 1099511627776\)"),
    (lambda data: data["sizes"].__setitem__(1, True), r"sizes \[784, True, 64, 10\] are not a list"),
    (_set(2, "eps", float("nan")), r"layer 2 'eps' is nan, expected a finite float >= 0"),
    (_set(2, "eps", float("inf")), r"layer 2 'eps' is inf, expected a finite float >= 0"),
    (_set(0, "threshold", lambda t: t.index_fill(0, torch.tensor([3]), float("nan"))), r"layer 0 'threshold' holds NaN"),
    (_set(1, "threshold", lambda t: t.index_fill(0, torch.tensor([3]), 2**62)),
     r"layer 1 'threshold' holds values outside \[-129, 129\] \(the layer has 128 inputs\)"),
    (_set(2, "var", lambda v: v.index_fill(0, torch.tensor([3]), -1.0)), r"layer 2 'var' holds negative variances"),
    (_set(2, "gain", lambda g: g.index_fill(0, torch.tensor([3]), float("inf"))),
     r"layer 2 'gain' holds NaN or infinite values"),
    (_set(2, "gain", lambda g: g.index_fill(0, torch.tensor([3]), 3e38)),
     r"layer 2 gain, mean, var, gamma, beta and eps 1e-05 give scores beyond float32 .* within ±64"),
    (lambda data: (_set(2, "var", lambda v: v.index_fill(0, torch.tensor([3]), 0.0))(data), _set(2, "eps", 1e-300)(data)),
     r"layer 2 gain, mean, var, gamma, beta and eps 1e-300 give scores beyond float32"),
    (lambda data: (_set(2, "var", lambda v: v.index_fill(0, torch.tensor([3]), 0.0))(data), _set(2, "eps", 0.0)(data)),
     r"layer 2 gain, mean, var, gamma, beta and eps 0.0 give scores beyond float32"),
], ids=["short-weight", "short-threshold", "float32-threshold", "uint8-flip", "sparse-threshold", "not-a-tensor",
        "extra-layer-key", "extra-file-key", "huge-size", "bool-size", "nan-eps", "inf-eps", "nan-threshold",
        "huge-threshold", "negative-var", "inf-gain", "overflowing-gain", "tiny-eps-and-zero-var",
        "zero-eps-and-zero-var"])
def test_hostile_files_are_refused_with_one_line_naming_the_file(trained, tmp_path, change, error):
    path = _hostile_file(trained, tmp_path, change)
    with pytest.raises(ValueError, match=f"^{path} is not a valid packed BNN file: {error}") as caught:
        PackedMLP.load(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("layer", [0, 1])
def test_padding_bits_set_beyond_a_layers_inputs_are_refused(tmp_path, layer):
    torch.manual_seed(0)
    model = bnn.MLP([20, 70, 10])  # 20 inputs: 3 bytes, 4 bits of padding; 70: two words, 58 bits of padding
    bnn.use_population_statistics(model, torch.rand(64, 20))
    model.eval()
    path = tmp_path / "model.pt"
    bnn.pack(model, compile=False).save(path)
    PackedMLP.load(path, compile=False)  # as pack wrote it: every padding bit 0
    data = torch.load(path, weights_only=True)
    weight = data["layers"][layer]["weight"]
    weight[-1, 0] |= 1 << (7 if layer == 0 else 62)  # one padding bit of output 0
    data["sha256"] = bnn.packed._checksum(data["sizes"], data["layers"])
    torch.save(data, path)
    inputs = 20 if layer == 0 else 70
    with pytest.raises(ValueError, match=f"layer {layer} 'weight' sets padding bits beyond its {inputs} inputs"):
        PackedMLP.load(path, compile=False)


def test_a_tensor_claiming_more_elements_than_its_file_holds_is_refused(trained, tmp_path):
    path = tmp_path / "model.pt"
    bnn.pack(trained, compile=False).save(path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    pickle = next(name for name in files if name.endswith("data.pkl"))
    assert b"K\x80\x85" in files[pickle]  # the shape (128,) of layer 0's flip
    files[pickle] = files[pickle].replace(b"K\x80\x85", b"J\xa0\x86\x01\x00\x85", 1)  # now (100000,)
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    with pytest.raises(ValueError, match="^packed BNN file .* is truncated or corrupt"):
        PackedMLP.load(path)


@pytest.mark.parametrize("compile", [False, True], ids=["torch-ops", "fast-kernels"])
def test_transposed_tensors_in_a_file_become_buffers_of_their_own(trained, tmp_path, compile):
    """A view that stores every element once (transposed strides) loads as a contiguous copy."""

    def change(data):
        data["layers"][1]["weight"] = data["layers"][1]["weight"].t().contiguous().t()

    loaded = PackedMLP.load(_hostile_file(trained, tmp_path, change), compile=compile)
    weight = loaded.layers[1]["weight"]
    assert weight.is_contiguous() and weight.untyped_storage().nbytes() == weight.numel() * weight.element_size()
    x = load_dataset("mnist5k", "test").x[:64]
    assert torch.equal(loaded(x), bnn.pack(trained, compile=False)(x))


@pytest.mark.parametrize("key, view", [
    ("threshold", torch.tensor([0.5], dtype=torch.float64).expand(128)),  # 8 bytes for 128 values
    ("weight", torch.zeros(1, 1, dtype=torch.uint8).expand(2**28, 128)),  # one byte standing for 32 GiB
], ids=["threshold", "32-GiB-weight"])
def test_a_file_tensor_repeating_its_elements_is_refused_before_any_copy(trained, tmp_path, key, view):
    """A stride-0 view in a file would be copied at the size its shape claims (gigabytes from a tiny file)."""
    path = _hostile_file(trained, tmp_path, _set(0, key, view), checksum=False)  # (the checksum would copy it)
    assert path.stat().st_size < 100_000
    with pytest.raises(ValueError, match=rf"^{path} is not a valid packed BNN file: layer 0 '{key}' is a "
                                         rf"\({view.shape[0]}, ?.*\) tensor over \d+ bytes of storage; a packed file "
                                         "stores every element$"):
        PackedMLP.load(path)


def _nested(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as the one entry of a nested tensor (torch warns that their API is a prototype)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.nested.nested_tensor([tensor])


def _deep_version_file(path: Path, depth: int) -> None:
    """A packed file whose pickle (written by hand: no Python list nests this deep) gives ``version`` ``depth``
    nested lists."""
    def text(s: str) -> bytes:
        return b"X" + len(s.encode()).to_bytes(4, "little") + s.encode()

    data = (b"\x80\x02}" + text("format") + text(bnn.packed.FORMAT) + b"s" + text("version") + b"]" * depth
            + b"a" * (depth - 1) + b"s.")
    buffer = io.BytesIO()
    torch.save({"a": 1}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(path, "w") as archive:
        for info in source.infolist():
            archive.writestr(info.filename, data if info.filename.endswith("data.pkl") else source.read(info))


@pytest.mark.parametrize("change, error", [
    (_set(1, "eps", torch.tensor(1e-5)), r"layer 1 'eps' is tensor\(1.0000e-05\), expected a finite float >= 0"),
    (_set(1, "eps", torch.zeros(1).expand(1 << 20)),
     r"layer 1 'eps' is a \(1048576,\) tensor over 4 bytes of storage; a packed file stores every element"),
    (_set(1, "beta", lambda beta: _nested(beta)), r"layer 1 'beta' is a nested tensor"),
], ids=["0-d-eps", "stride-0-eps", "nested-beta"])
def test_a_packed_files_entries_are_checked_before_they_are_hashed(tmp_path, change, error):
    """The last layer's eps was hashed before its type was checked: a 0-d tensor raised "self.dim() cannot be 0 to
    view Float as Byte", and a stride-0 one (4.5 KB of file) grew memory by what its shape claims (2 GB for 1 << 28);
    a nested tensor raised "NestedTensorImpl doesn't support sizes" inside the kernels' check. Each is one ValueError
    naming the file."""
    torch.manual_seed(0)
    model = bnn.use_population_statistics(bnn.MLP([64, 32, 10]), torch.rand(200, 64)).eval()
    path = _hostile_file(model, tmp_path, change, checksum=False)  # (the checksum would hash the tensor)
    with pytest.raises(ValueError, match=f"^{path} is not a valid packed BNN file: {error}") as caught:
        PackedMLP.load(path, compile=False)
    assert "\n" not in str(caught.value)


def test_a_packed_file_value_nested_100000_deep_is_shown_cut_short(tmp_path):
    """A version of 100,000 nested lists (a hand-written pickle) raised RecursionError from the error message's
    repr; values from a file are shown bounded (metaspike.checks.shown)."""
    path = tmp_path / "model.pt"
    _deep_version_file(path, 100_000)
    with pytest.raises(ValueError, match=rf"^{path} is not a valid packed BNN file: format version \[\[\[\[\.\.\.\]\]\]\], "
                                         "this code reads versions 2, 4, 5$"):
        PackedMLP.load(path, compile=False)


@pytest.mark.skipif(bnn.native.kernels() is None, reason="no C compiler to build the native kernels")
def test_layers_changed_after_loading_are_checked_before_every_native_call(trained):
    packed = bnn.pack(trained)
    x = load_dataset("mnist5k", "test").x[:8]
    expected = bnn.pack(trained, compile=False)(x)
    layers = packed.layers
    threshold = layers[0]["threshold"]
    layers[0]["threshold"] = threshold[:1].expand(128)  # a stride-0 view: copied, not over-read
    assert torch.equal(packed(x), PackedMLP(packed.sizes, layers, compile=False)(x))
    layers[0]["threshold"] = threshold
    shrunk = layers[1]["threshold"].clone()
    shrunk.untyped_storage().resize_(8)  # a tensor whose memory is shorter than its shape
    for key, value, error in [
        ("weight", layers[1]["weight"][:1], r"layer 1 'weight' is \(1, 64\) torch.int64, expected \(2, 64\)"),
        ("threshold", layers[1]["threshold"].double(), r"layer 1 'threshold' is \(64,\) torch.float64, expected "
                                                       r"\(64,\) torch.int64"),
        ("flip", torch.zeros(64, dtype=torch.bool, device="meta"), "layer 1 'flip' is a torch.strided tensor on the "
                                                                   "meta device"),
        ("threshold", shrunk, r"layer 1 'threshold' has 8 bytes of storage, fewer than its shape \(64,\) needs"),
    ]:
        original, layers[1][key] = layers[1][key], value
        with pytest.raises(ValueError, match=error):
            packed(x)
        layers[1][key] = original
    assert torch.equal(packed(x), expected)
    lib = bnn.native.kernels()
    with pytest.raises(ValueError, match="first layer input is a torch.strided tensor on the meta device"):
        bnn.native.real_layer(lib, torch.zeros(2, 784, device="meta"), layers[0]["weight"])
    with pytest.raises(ValueError, match="n must be a positive int"):
        bnn.native.binary_layer(lib, torch.zeros(2, 2, dtype=torch.int64), 0, layers[1]["weight"])


@pytest.mark.parametrize("compile", [False, True], ids=["torch-ops", "fast-kernels"])
def test_values_or_sizes_changed_in_place_after_loading_are_refused_as_a_file_holding_them_is(trained, compile):
    """The checks of a packed model's values ran when it was made: padding bits set in place gave scores off by
    several units (a helper's 20-70-65-5 model), a negative variance NaN scores, and sizes[0] edited let the kernel
    count a padding bit as an input, without a word. A valid change in place is used."""
    x = load_dataset("mnist5k", "test").x[:4]
    for edit, error in [
        (lambda q: q.layers[-1]["var"].fill_(-1.0), r"layer 2 'var' holds negative variances"),
        (lambda q: q.layers[-1]["gamma"].fill_(float("inf")), r"layer 2 'gamma' holds NaN or infinite values"),
        (lambda q: q.layers[0]["threshold"].fill_(float("nan")), r"layer 0 'threshold' holds NaN"),
    ]:
        packed = bnn.pack(trained, compile=compile)
        packed(x)
        edit(packed)
        with pytest.raises(ValueError, match=f"^the packed model's {error}.*: changed after it was made$"):
            packed(x)
    torch.manual_seed(0)
    padded = bnn.pack(bnn.use_population_statistics(bnn.MLP([20, 70, 5]), torch.randn(50, 20)).eval(), compile=compile)
    padded.layers[1]["weight"][-1] = -1  # (70 inputs in two 64-bit words: 58 padding bits)
    with pytest.raises(ValueError, match=r"^the packed model's layer 1 'weight' sets padding bits beyond its 70 "):
        padded(torch.randn(2, 20))
    packed = bnn.pack(trained, compile=compile)
    packed.sizes[0] = 783
    with pytest.raises(ValueError, match=r"^the packed model's sizes were changed to \[783, 128, 64, 10\] after it "
                                         r"was made for \[784, 128, 64, 10\]$"):
        packed(torch.rand(2, 783))
    packed = bnn.pack(trained, compile=compile)
    before = packed(x)
    packed.layers[-1]["gamma"].mul_(-1)  # (a valid change: the scores change sign around the BatchNorm's beta)
    assert not torch.equal(packed(x), before)


@pytest.mark.parametrize("compile", [False, True], ids=["torch-ops", "fast-kernels"])
@pytest.mark.parametrize("edit, error", [
    (lambda layers: layers[-1].__setitem__("mean", torch.zeros(3)), r"^layer 2 'mean' is \(3,\) torch.float32, "
                                                                    r"expected \(10,\) torch.float32$"),
    (lambda layers: layers[-1].__setitem__("var", torch.ones(10, dtype=torch.int64)), r"^layer 2 'var' is \(10,\) "
                                                                                      "torch.int64"),
    (lambda layers: layers[-1].__setitem__("gamma", [1.0] * 10), r"^layer 2 'gamma' is a list"),
    (lambda layers: layers[-1].__setitem__("eps", -1.0), r"^layer 2 'eps' is -1.0, expected a finite float >= 0$"),
    (lambda layers: layers.pop(), r"^the packed model's layers do not fit its sizes \[784, 128, 64, 10\]"),
])
def test_a_last_layer_changed_after_loading_is_one_line_on_every_path(trained, compile, edit, error):
    """The native path passed the last layer to torch's BatchNorm unchecked: "running_mean should contain 10 elements
    not 3", "batch_norm eps must be non-negative", ... (the torch-ops path named the layer)."""
    packed = bnn.pack(trained, compile=compile)
    edit(packed.layers)
    with pytest.raises(ValueError, match=error):
        packed(torch.rand(2, 784))


@pytest.mark.parametrize("compile", [False, True], ids=["torch-ops", "fast-kernels"])
@pytest.mark.parametrize("edit, error", [
    (lambda layers: layers[0].pop("weight"), r"layer 0 has entries \['flip', 'threshold'\], expected \['flip', "
                                             r"'threshold', 'weight'\]"),
    (lambda layers: layers[-1].pop("eps"), r"layer 2 has entries .*, expected .*'eps'"),
    (lambda layers: layers[-1].__setitem__("weight", [1, 2]), r"layer 2 'weight' is a list, expected a torch.int64 tensor"),
    (lambda layers: layers[-1].__setitem__("gamma", torch.ones(3)), r"layer 2 'gamma' is \(3,\) torch.float32, "
                                                                     r"expected \(10,\) torch.float32"),
    (lambda layers: layers[-1].__setitem__("var", -torch.ones(10)), "'var' holds negative variances"),
])
def test_packed_mlp_made_by_hand_is_checked_as_a_loaded_file_is(trained, compile, edit, error):
    layers = copy.deepcopy(bnn.pack(trained, compile=False).layers)
    edit(layers)
    with pytest.raises(ValueError, match=error):
        PackedMLP([784, 128, 64, 10], layers, compile=compile)


def test_layers_changed_after_loading_are_checked_on_the_torch_paths_too(trained, monkeypatch):
    monkeypatch.setattr(bnn.packed.native, "kernels", lambda: None)  # the torch.compile path, as without a C compiler
    x = load_dataset("mnist5k", "test").x[:4]
    for compile in (False, True):
        packed = bnn.pack(trained, compile=compile)
        packed.layers[0]["weight"] = packed.layers[0]["weight"].to(torch.int64) + 1000  # table indices out of range
        with pytest.raises(ValueError, match=r"layer 0 'weight' is \(98, 128\) torch.int64, expected \(98, 128\) torch.uint8"):
            packed(x)


@pytest.mark.parametrize("compile", [False, True], ids=["torch-ops", "fast-kernels"])
def test_inputs_that_are_not_finite_cpu_floats_are_refused(trained, compile):
    packed = bnn.pack(trained, compile=compile)
    x = torch.rand(3, 784)
    for bad, error in [(float("nan"), "input holds NaN or infinite values"), (float("inf"), "input holds NaN")]:
        x[1, 5] = bad
        with pytest.raises(ValueError, match=error):
            packed(x)
    with pytest.raises(ValueError, match=r"input is on the meta device; PackedMLP runs on the CPU \(pass x.cpu\(\)\)"):
        packed(torch.rand(3, 784, device="meta"))
    with pytest.raises(ValueError, match="input must be floating point"):
        packed(torch.ones(3, 784, dtype=torch.int64))


def test_a_model_in_training_mode_is_refused(trained):
    model = copy.deepcopy(trained).train()
    with pytest.raises(ValueError, match=r"pack needs the model in eval mode.*call model.eval\(\) before bnn.pack"):
        bnn.pack(model)


def test_version_2_files_with_output_major_hidden_weights_still_load(trained, tmp_path):
    packed = bnn.pack(trained, compile=False)

    def version_2(data):
        data["version"] = 2
        del data["layers"][-1]["gain"]  # versions before 5 had no gain
        for layer in data["layers"][1:]:
            layer["weight"] = layer["weight"].t().contiguous()

    loaded = PackedMLP.load(_hostile_file(trained, tmp_path, version_2), compile=False)
    x = load_dataset("mnist5k", "test").x[:50]
    assert torch.equal(loaded(x), packed(x))


def test_version_4_files_without_a_gain_still_load(trained, tmp_path):
    packed = bnn.pack(trained, compile=False)

    def version_4(data):
        data["version"] = 4
        del data["layers"][-1]["gain"]

    loaded = PackedMLP.load(_hostile_file(trained, tmp_path, version_4), compile=False)
    assert torch.equal(loaded.layers[-1]["gain"], torch.ones(10))
    x = load_dataset("mnist5k", "test").x[:50]
    assert torch.equal(loaded(x), packed(x))


def test_missing_population_statistics_are_named():
    with pytest.raises(ValueError, match="no population statistics; call bnn.use_population_statistics"):
        bnn.pack(bnn.MLP([784, 32, 10]))


def test_models_that_cannot_be_packed_are_rejected():
    relu = bnn.use_population_statistics(bnn.MLP([20, 8, 4], activation="relu"), torch.rand(50, 20))
    with pytest.raises(ValueError, match="followed by ReLU; pack needs a bnn.SignActivation there"):
        bnn.pack(relu)
    real = bnn.use_population_statistics(bnn.MLP([20, 8, 4], weight_quantizer="none"), torch.rand(50, 20))
    with pytest.raises(ValueError, match="does not binarize its weights"):
        bnn.pack(real)
    with pytest.raises(ValueError, match="pack expects a bnn.MLP"):
        bnn.pack(torch.nn.Sequential(torch.nn.Linear(4, 2)))


class _OwnForward(torch.nn.Module):
    """A user's model whose forward does more than its layers in order (an input shift, a skip)."""

    def __init__(self, mlp):
        super().__init__()
        self.fc1, self.bn1, self.act, self.fc2, self.bn2 = mlp[1], mlp[2], mlp[3], mlp[4], mlp[5]

    def forward(self, x):
        return self.bn2(self.fc2(self.act(self.bn1(self.fc1((x - 0.3) * 4)))))


def test_a_model_pack_cannot_read_is_refused_in_one_line_naming_what_to_change():
    mlp = bnn.use_population_statistics(bnn.MLP([20, 8, 4]), torch.rand(50, 20)).eval()
    layers = list(mlp.children())  # Flatten, BinaryLinear, BatchNorm1d, SignActivation, BinaryLinear, BatchNorm1d
    with pytest.raises(ValueError, match="_OwnForward has a forward of its own, which pack cannot see"):
        bnn.pack(_OwnForward(mlp))
    with pytest.raises(ValueError, match="module '1' of Sequential is a MLP holding layers: pack that module"):
        bnn.pack(torch.nn.Sequential(torch.nn.Flatten(), mlp))
    handle = mlp[1].register_forward_pre_hook(lambda module, args: (1 - args[0],))
    with pytest.raises(ValueError, match="pack: module '1' has forward hooks, which can change what the model"):
        bnn.pack(mlp)
    handle.remove()
    with pytest.raises(ValueError, match=r"layer 1's BinaryLinear is followed by nothing, not a BatchNorm1d"):
        bnn.pack(torch.nn.Sequential(*layers[:5]))
    larq_style = bnn.BinaryLinear(8, 4, input_quantizer="ste_sign")
    with pytest.raises(ValueError, match=r"layer 0 is followed by BinaryLinear; pack needs a bnn.SignActivation there; "
                                         r"layer 1 quantizes its input itself \(input_quantizer"):
        bnn.pack(torch.nn.Sequential(*layers[:3], larq_style, layers[5]).eval())
    with pytest.raises(ValueError, match="compile must be True .* or False .*, got 'yes'"):
        bnn.pack(mlp, compile="yes")


def test_dropout_and_identity_between_layers_pack_as_the_no_ops_they_are_in_eval_mode():
    mlp = bnn.use_population_statistics(bnn.MLP([20, 8, 4]), torch.rand(50, 20)).eval()
    layers = list(mlp.children())
    with_dropout = torch.nn.Sequential(*layers[:4], torch.nn.Dropout(0.5), torch.nn.Identity(), torch.nn.AlphaDropout(),
                                       *layers[4:]).eval()
    x = torch.rand(64, 20)
    assert torch.equal(bnn.pack(with_dropout, compile=False)(x), bnn.pack(mlp, compile=False)(x))
    assert torch.equal(bnn.pack(with_dropout, compile=False)(x), with_dropout(x))


def test_input_of_the_wrong_size_is_rejected(trained):
    with pytest.raises(ValueError, match=r"input of shape \(3, 100\) does not fit: expected .* 784 features"):
        bnn.pack(trained, compile=False)(torch.rand(3, 100))


def test_an_input_or_a_path_of_the_wrong_kind_is_one_line_naming_it(trained):
    """A list or an array as input was "input of shape list does not fit"; None or a number as a path a bare TypeError
    from os.open."""
    packed = bnn.pack(trained, compile=False)
    for given, kind in (([[0.0] * 784], "list"), (np.zeros((1, 784), dtype=np.float32), "ndarray")):
        with pytest.raises(ValueError, match=f"^input must be a torch tensor .* 784 features per sample, got a {kind} "
                                             r"\(torch.as_tensor"):
            packed.predict(given)
    for path in (None, 3):
        with pytest.raises(ValueError, match=f"^packed BNN file must be a path .*, got {type(path).__name__}$"):
            PackedMLP.load(path)
        with pytest.raises(ValueError, match=f"^the file to write must be a path .*, got {type(path).__name__}$"):
            packed.save(path)


def test_popcount_and_bit_packing():
    words = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 0x0F0F])
    assert _popcount(words).tolist() == [0, 1, 64, 63, 1, 8]
    bits = torch.rand(3, 70) > 0.5
    packed = pack_bits(bits)
    assert packed.shape == (3, 2) and packed.dtype == torch.int64
    unpacked = (packed.view(torch.uint8).unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    assert torch.equal(unpacked.view(3, -1)[:, :70].bool(), bits)
    assert not unpacked.view(3, -1)[:, 70:].any()


def _with_gains(trained, scales: tuple[str, ...]):
    """``trained`` with a learned output gain on each layer (any sign, some zero), population statistics refit."""
    model = copy.deepcopy(trained)
    generator = torch.Generator().manual_seed(1)
    for index, scale in zip((1, 4, 7), scales):
        old = model[index]
        layer = bnn.BinaryLinear(old.in_features, old.out_features, scale=scale)
        with torch.no_grad():
            layer.weight.copy_(old.weight)
            alpha = layer.output_gain.alpha
            alpha.copy_(torch.rand(alpha.shape, generator=generator) * 0.1 + 0.01)
            if scale == "channel":
                alpha[::5] *= -1  # a negative gain reverses the comparison, as a negative BatchNorm scale does
                alpha[3::11] = 0.0  # and a zero gain makes the layer's output constant
        model[index] = layer
    return bnn.use_population_statistics(model, load_dataset("mnist5k").x).eval()


@pytest.mark.parametrize("scales", [("channel",) * 3, ("layer", "channel", "layer")], ids=["channel", "mixed"])
@pytest.mark.parametrize("compile", [False, True], ids=["torch-ops", "fast-kernels"])
def test_learned_output_gains_fold_into_thresholds_and_scores(trained, scales, compile):
    model = _with_gains(trained, scales)
    packed = bnn.pack(model, compile=compile)
    assert set(packed.layers[0]) == {"weight", "flip", "threshold"}  # the hidden gains left no trace but thresholds
    x = load_dataset("mnist5k", "test").x
    with torch.no_grad():
        reference = model(x)
    assert torch.equal(packed(x), reference)  # the last layer's gain too: the same float32 scores
    assert (reference.argmax(1) != trained(x).argmax(1)).any()  # the gains did change what the model computes


def test_a_model_with_gains_round_trips_through_a_file(trained, tmp_path):
    model = _with_gains(trained, ("channel",) * 3)
    packed = bnn.pack(model, compile=False)
    packed.save(tmp_path / "gained.pt")
    x = load_dataset("mnist5k", "test").x[:100]
    assert torch.equal(PackedMLP.load(tmp_path / "gained.pt", compile=False)(x), packed(x))


def test_a_packed_model_copies_and_pickles(trained):
    packed = bnn.pack(trained, compile=False)
    x = torch.rand(7, 784)
    for twin in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
        assert torch.equal(twin(x), packed(x)) and twin.kernel_names() == packed.kernel_names()


def test_pack_refuses_a_layer_that_quantizes_its_input():
    """The packed model sums the real input of its first layer: an input_quantizer it ignored changed 747 of 1,797
    digits predictions."""
    model = bnn.MLP([64, 16, 10])
    first = next(m for m in model.modules() if isinstance(m, bnn.BinaryLinear))
    first.input_quantizer = get_quantizer("ste_sign")
    bnn.use_population_statistics(model, torch.rand(32, 64))
    with pytest.raises(ValueError, match="layer 0 quantizes its input"):
        bnn.pack(model)


def test_pack_of_a_compiled_model_and_an_empty_batch_on_every_path():
    model = bnn.MLP([20, 16, 3])
    bnn.use_population_statistics(model, torch.rand(64, 20))
    model.eval()
    for packed in (bnn.pack(torch.compile(model)), bnn.pack(model, compile=False)):
        assert packed(torch.zeros(0, 20)).shape == (0, 3)


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_pack_refuses_synapses_that_sample_their_weights_in_evaluation(kind):
    """One packed weight cannot equal a model that draws new weights at every evaluation; the mode can."""
    import metaspike

    x = torch.rand(64, 784)
    model = bnn.use_population_statistics(metaspike.bayesianize(bnn.MLP([784, 32, 10]), kind, evaluation="sample"),
                                          x).eval()
    with pytest.raises(ValueError, match=r"layer 0 draws a new weight sample at every evaluation"):
        bnn.pack(model)
    mode = bnn.use_population_statistics(metaspike.bayesianize(bnn.MLP([784, 32, 10]), kind), x).eval()
    assert torch.equal(bnn.pack(mode)(x).argmax(1), mode(x).argmax(1))


def test_misused_packing_calls_are_one_line(tmp_path, trained):
    from metaspike.continual.results import load_checkpoint

    with pytest.raises(ValueError, match=r"pack takes a trained bnn.MLP, got a str \(a saved packed model loads with "
                                         r"bnn.PackedMLP.load\(path\)\)"):
        bnn.pack("model.pt")
    with pytest.raises(ValueError, match=r"layers must be a list \(or tuple\) of 1 dicts, one per layer of sizes "
                                         r"\[64, 10\]"):
        PackedMLP([64, 10], [])
    with pytest.raises(ValueError, match=r"sizes must list at least 2 positive integer widths"):
        PackedMLP([64], [])
    with pytest.raises(FileNotFoundError, match=f"cannot write {tmp_path}/missing/m.pt: its folder "
                                                f"{tmp_path}/missing does not exist"):
        bnn.pack(trained, compile=False).save(tmp_path / "missing" / "m.pt")
    packed = bnn.pack(trained, compile=False)
    packed.save(tmp_path / "m.pt")  # (a file where the folder should be was said not to exist)
    with pytest.raises(NotADirectoryError, match=f"^cannot write {tmp_path}/m.pt/n.pt: {tmp_path}/m.pt is a file, not "
                                                 "a folder$"):
        packed.save(tmp_path / "m.pt" / "n.pt")
    for call in (PackedMLP.load, packed.save, load_checkpoint):  # (the system calls said only "embedded null byte")
        with pytest.raises(ValueError, match=r" 'm\\x00.pt' holds a NUL character, which no file name may hold$"):
            call("m\0.pt")
    as_tuple = PackedMLP(packed.sizes, tuple(packed.layers), compile=False)  # (a tuple was said to hold no entries)
    x = torch.rand(3, packed.sizes[0])
    assert torch.equal(as_tuple(x), packed(x))


def test_pack_refuses_what_load_would_refuse(trained):
    import copy

    model = copy.deepcopy(trained)
    last = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)][-1]
    with torch.no_grad():
        last.running_var[0] = 0.0
        last.weight[0] *= 1e35
    with pytest.raises(ValueError, match="pack: layer 2 .* give scores beyond float32"):
        bnn.pack(model, compile=False)


@pytest.mark.parametrize("compile", [False, True], ids=["torch-ops", "fast-kernels"])
def test_batchnorms_without_eps_pack_save_and_load_to_the_float_models_scores(tmp_path, compile):
    """``BatchNorm1d(eps=0)`` is a valid layer: the last one was refused ("'eps' is 0.0, expected a finite float > 0"),
    though its variances are positive and every score finite."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(bnn.BinaryLinear(20, 33), torch.nn.BatchNorm1d(33, eps=0.0), bnn.SignActivation(),
                                bnn.BinaryLinear(33, 4), torch.nn.BatchNorm1d(4, eps=0.0))
    bnn.use_population_statistics(model, torch.randn(500, 20))
    model.eval()
    bnn.pack(model, compile=compile).save(tmp_path / "m.pt")
    x = torch.randn(65, 20)
    with torch.inference_mode():
        assert torch.equal(PackedMLP.load(tmp_path / "m.pt", compile=compile)(x), model(x))
    for norm in (model[1], model[4]):  # a unit of zero variance divides by zero there: NaN scores in the float model
        with torch.no_grad():
            norm.running_var[3] = 0.0
        with pytest.raises(ValueError, match=rf"^BatchNorm of layer {0 if norm is model[1] else 1} has running_var \+ "
                                             r"eps = 0 at 1 unit\(s\) \(first: 3\): the float model divides by zero"):
            bnn.pack(model, compile=compile)
        norm.eps = 1e-5


class _ShiftedSign(bnn.SignActivation):
    def forward(self, x):
        return super().forward(x - 0.5)


class _NegatedLinear(bnn.BinaryLinear):
    def forward(self, x):
        return -super().forward(x)


class _ShiftedNorm(torch.nn.BatchNorm1d):
    def forward(self, x):
        return super().forward(x) + 1.0


class _DoublingIdentity(torch.nn.Identity):
    def forward(self, x):
        return 2 * x


class _RenamedSign(bnn.SignActivation):
    """A subclass that keeps SignActivation's forward: pack reads it as one."""


@pytest.mark.parametrize("position, layer, base", [
    (2, _ShiftedSign(), "SignActivation"), (0, _NegatedLinear(37, 65), "BinaryLinear"),
    (1, _ShiftedNorm(65), "BatchNorm1d"), (3, _DoublingIdentity(), "Identity"),
], ids=["sign", "linear", "batchnorm", "skipped-identity"])
def test_pack_refuses_a_layer_whose_class_replaces_its_forward(position, layer, base):
    """pack computes what BinaryLinear, BatchNorm1d, SignActivation (and the skipped Identity) compute; a subclass
    overriding forward computed something else, and packed silently into a model that predicted otherwise."""
    torch.manual_seed(0)
    layers = [bnn.BinaryLinear(37, 65), torch.nn.BatchNorm1d(65), bnn.SignActivation(), bnn.BinaryLinear(65, 3),
              torch.nn.BatchNorm1d(3)]
    if isinstance(layer, torch.nn.Identity):
        layers.insert(position, layer)
    else:
        layers[position] = layer
    model = bnn.use_population_statistics(torch.nn.Sequential(*layers), torch.rand(200, 37)).eval()
    with pytest.raises(ValueError) as info:
        bnn.pack(model)
    assert str(info.value) == (
        f"pack: module '{position}' of Sequential is a {type(layer).__name__}, a {base} with a forward of its own, "
        f"which pack cannot see (it packs what {base}.forward computes): use a plain {base} there, or move the "
        "other work out of the model")


def test_a_layer_subclass_that_keeps_its_forward_packs_as_its_base():
    torch.manual_seed(0)
    layers = [bnn.BinaryLinear(37, 65), torch.nn.BatchNorm1d(65), _RenamedSign(), bnn.BinaryLinear(65, 3),
              torch.nn.BatchNorm1d(3)]
    x = torch.rand(200, 37)
    model = bnn.use_population_statistics(torch.nn.Sequential(*layers), x).eval()
    with torch.no_grad():
        assert torch.equal(bnn.pack(model, compile=False)(x), model(x))


def _model_with_a_threshold_near(m: float) -> torch.nn.Module:
    """A 2-3-2 MLP whose first hidden neuron fires iff x[0] + x[1] reaches about m (weights +1, BatchNorm centred on
    the float32 value m, no shift): the packed threshold is the first float32 sum at which the float model's own
    float32 BatchNorm gives >= 0 (here the one after m: it computes m·s - m·s as -1.2e-8)."""
    torch.manual_seed(0)
    model = bnn.MLP([2, 3, 2])
    with torch.no_grad():
        model[1].weight[0] = 1.0
    bnn.use_population_statistics(model, torch.rand(100, 2)).eval()
    norm = model[2]
    with torch.no_grad():
        norm.running_mean[0], norm.running_var[0], norm.weight[0], norm.bias[0] = m, 1.0, 1.0, 0.0
    return model


@pytest.mark.parametrize("compile", [False, True], ids=["torch-ops", "fast-kernels"])
def test_a_float64_input_is_rounded_to_float32_once_on_every_path(compile):
    """A float64 input is the float32 model's input after one rounding: the reference torch ops summed the float64
    values while the native kernel summed their float32 rounding, so the same input got other scores (and
    predictions) depending on whether a C compiler was found."""
    model = _model_with_a_threshold_near(torch.tensor(0.3).item())
    packed = bnn.pack(model, compile=compile)
    t = packed.layers[0]["threshold"][0].item()  # a float32 value: where the first hidden neuron starts to fire
    x = torch.tensor([[np.nextafter(t, -np.inf), 0.0]], dtype=torch.float64)  # below t; rounds to t in float32
    assert x[0, 0].item() < t and x.float()[0, 0].item() == t
    expected = packed(x.float())  # the neuron fires: its sum is t
    below = packed(torch.tensor([[np.nextafter(np.float32(t), np.float32(-1)), 0.0]]))  # float32, below t: it does not
    assert not torch.equal(below, expected)  # (so the neuron's decision shows in the scores)
    assert torch.equal(packed(x), expected)
    with torch.no_grad():  # (and the float model decides there as the packed one does)
        assert torch.equal(model(x.float()), expected) and torch.equal(model(x.float().nextafter(torch.tensor(-1.0))),
                                                                       below)


def test_the_first_layers_threshold_is_the_float_models_own_float32_batchnorm_decision():
    """The first layer's threshold was the crossing (μ - β·sqrt(σ² + ε)/γ) / α worked out in float64, which missed the
    float32 BatchNorm's own rounding: a one-input layer, whose sum is exact, fired in the float model (its BatchNorm
    gave +1.4e-9) and not in the packed one. Random BatchNorm channels and gains, and every float32 sum within 8
    steps of each threshold: the packed decisions are the float model's."""
    generator = torch.Generator().manual_seed(5)
    channels = 300
    model = torch.nn.Sequential(bnn.BinaryLinear(1, channels, scale="channel"), torch.nn.BatchNorm1d(channels),
                                bnn.SignActivation(), bnn.BinaryLinear(channels, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)  # (the pre-activation is the input itself)
        model[0].output_gain.alpha.copy_(torch.randn(channels, generator=generator))
        for norm, size in ((model[1], channels), (model[4], 2)):
            norm.weight.copy_(torch.randn(size, generator=generator))
            norm.bias.copy_(torch.randn(size, generator=generator))
            norm.track_running_stats = True
            norm.running_mean = torch.randn(size, generator=generator)
            norm.running_var = torch.rand(size, generator=generator) * 3
    model.eval()
    flip, threshold = (bnn.pack(model, compile=False).layers[0][key] for key in ("flip", "threshold"))
    assert bool(threshold.isfinite().all())
    sums = [threshold.float()]
    for direction in (math.inf, -math.inf):
        step = threshold.float()
        for _ in range(8):
            step = step.nextafter(torch.tensor(direction))
            sums.append(step)
    sums = torch.stack(sums, dim=1)  # (channels, 17): each threshold and its float32 neighbours
    with torch.no_grad():
        batchnorm = model[:2](sums.reshape(-1, 1)).reshape(channels, sums.shape[1], channels)
    fired = batchnorm[torch.arange(channels), :, torch.arange(channels)] >= 0
    packed_fires = torch.where(flip[:, None], -sums, sums).double() >= threshold[:, None]
    assert torch.equal(fired, packed_fires)


@pytest.mark.parametrize("compile", [False, True], ids=["torch-ops", "fast-kernels"])
def test_a_finite_input_beyond_float32s_range_is_named_as_such(compile):
    """A finite 1e300 was refused by the native kernel as "NaN or infinite" (its float32 rounding is infinite)
    and accepted by the torch ops; both now say what it is, and float32's largest value is accepted."""
    model = bnn.use_population_statistics(bnn.MLP([2, 4, 2]), torch.rand(100, 2)).eval()
    packed = bnn.pack(model, compile=compile)
    for value in (1e300, -1e39):
        with pytest.raises(ValueError) as info:
            packed(torch.tensor([[0.5, value]], dtype=torch.float64))
        assert str(info.value) == ("input holds finite values beyond float32's range (magnitudes up to "
                                   "3.4028235e+38): the packed model computes in float32, as the float model does")
    largest = torch.finfo(torch.float32).max
    assert bool(packed(torch.tensor([[largest, -largest]], dtype=torch.float64)).isfinite().all())
    with pytest.raises(ValueError, match="input holds NaN or infinite values"):
        packed(torch.tensor([[0.5, float("inf")]], dtype=torch.float64))


@pytest.mark.parametrize("layer, key", [(2, "mean"), (2, "var"), (2, "gamma"), (0, "threshold"), (1, "weight")])
@pytest.mark.parametrize("compile", [False, True], ids=["torch-ops", "fast-kernels"])
def test_a_file_tensor_flagged_requires_grad_loads_detached(trained, tmp_path, compile, layer, key):
    """requires_grad is one bit of the pickle that the checksum (of the values) does not cover: a flagged 'mean'
    made load fail with torch's "native_batch_norm is not differentiable"; the values are what count."""
    packed = bnn.pack(trained, compile=False)

    def flag(data):  # (an integer tensor cannot require grad: it is stored as a Parameter, another class)
        value = data["layers"][layer][key]
        data["layers"][layer][key] = torch.nn.Parameter(value, requires_grad=value.is_floating_point())

    path = _hostile_file(trained, tmp_path, flag, checksum=False)  # (same values: the stored checksum is theirs)
    loaded = PackedMLP.load(path, compile=compile)
    assert not any(t.requires_grad for entries in loaded.layers for t in entries.values() if isinstance(t, torch.Tensor))
    assert all(type(t) is torch.Tensor for entries in loaded.layers for t in entries.values()
               if isinstance(t, torch.Tensor))
    x = load_dataset("mnist5k", "test").x[:50]
    assert torch.equal(loaded(x), packed(x))


def test_a_packed_model_made_by_hand_of_tensors_that_require_grad_works():
    model = bnn.use_population_statistics(bnn.MLP([20, 8, 4]), torch.rand(50, 20)).eval()
    packed = bnn.pack(model, compile=False)
    layers = [{k: v.clone().requires_grad_(v.is_floating_point()) if isinstance(v, torch.Tensor) else v
               for k, v in layer.items()} for layer in packed.layers]
    x = torch.rand(5, 20)
    assert torch.equal(PackedMLP(packed.sizes, layers, compile=False)(x), packed(x))


def test_a_file_in_torchs_format_from_before_1_6_is_refused_before_loading(trained, tmp_path):
    """torch.load reads a file that is no zip archive as its older format, which sets aside the memory its pickle
    declares for each tensor; metaspike never wrote one."""
    path = tmp_path / "old.pt"
    bnn.pack(trained, compile=False).save(path)
    torch.save(torch.load(path, weights_only=True), path, _use_new_zipfile_serialization=False)
    assert torch.load(path, weights_only=True)  # (torch itself still reads it)
    with pytest.raises(ValueError, match=r"^packed BNN file .*old\.pt is not a zip archive, which torch\.save writes"):
        PackedMLP.load(path)


@pytest.mark.parametrize("flags", KERNEL_BUILDS, ids=KERNEL_BUILD_NAMES)
def test_the_kernels_own_copy_of_the_weights_is_counted_only_where_one_is_made(flags, monkeypatch):
    """The AVX-512 kernel reads the model's word-major weights in place; the count took the checked view of them
    (a new tensor object over the same memory) for a copy and reported 2 MiB for a 784-4096-4096-10 model."""
    lib = _kernels_with(flags)
    monkeypatch.setattr(bnn.native, "kernels", lambda: lib)
    torch.manual_seed(0)
    model = bnn.use_population_statistics(bnn.MLP([64, 200, 130, 10]), torch.rand(300, 64)).eval()
    packed = bnn.pack(model)
    packed(torch.rand(3, 64))
    hidden = [layer["weight"] for layer in packed.layers[1:]]
    expected = sum(w.numel() * w.element_size() for w in hidden) if lib.binary_layer_output_major() else 0
    assert packed.kernel_copy_bytes == expected


def test_the_kernels_share_torchs_openmp_threads_where_torch_runs_gnu_openmp():
    """The kernels' own pool found the second core taken by torch's spinning OpenMP threads inside a training step."""
    lib = _kernels_with(())
    shared = bnn.native._torch_runs_gnu_openmp()
    assert lib.threads_kind().decode().startswith("OpenMP") == shared
    assert ("-fopenmp" in bnn.native.FLAGS) == shared
    pool = _kernels_with(("-fno-openmp",))
    assert pool.threads_kind().decode() == "a pool of POSIX threads"


def test_a_compiler_without_openmp_builds_the_kernels_on_their_own_threads(tmp_path, monkeypatch):
    real = bnn.native._compiler()
    if real is None or "-fopenmp" not in bnn.native.FLAGS:
        pytest.skip("no C compiler, or torch does not run GNU OpenMP here")
    fake = tmp_path / "cc-without-openmp"
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -fopenmp ] && { echo 'no OpenMP' >&2; exit 1; }; done\n"
                    f"exec {' '.join(real)} \"$@\"\n")
    fake.chmod(0o700)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("METASPIKE_CACHE", str(tmp_path / "cache"))
    lib = bnn.native._kernels(bnn.native.FLAGS + ("-DTEST_WITHOUT_OPENMP",))  # (flags of its own: a fresh build)
    assert lib is not None and lib.threads_kind().decode() == "a pool of POSIX threads"


def test_kernels_whose_openmp_needs_a_newer_runtime_than_torchs_load_without_it(monkeypatch):
    """A system compiler newer than torch's bundled libgomp asks for symbol versions it lacks: the OpenMP build does
    not load, and the kernels are built on their own threads instead of not at all."""
    if bnn.native._compiler() is None:
        pytest.skip("no C compiler to build the native kernels")
    load = bnn.native._load

    def newer_runtime(compiler, flags, folder, name):
        if "-fopenmp" in flags:
            raise OSError(f"{folder / name}: version `GOMP_9.9' not found (required by {name})")
        return load(compiler, flags, folder, name)

    monkeypatch.setattr(bnn.native, "_load", newer_runtime)
    flags = ("-O3", "-shared", "-fPIC", "-pthread", "-fopenmp", "-DTEST_NEWER_OPENMP")  # (a fresh entry of the cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (quietly: the kernels are there, on threads of their own)
        lib = bnn.native._kernels(flags)
    assert lib is not None and lib.threads_kind().decode() == "a pool of POSIX threads"


def test_a_compiled_packed_model_or_one_that_calls_it_runs_it_as_it_is():
    """torch.compile traced into the packed model's call, whose input checks failed inside the compiler on symbolic
    shapes (a 127-line traceback from dynamo); the call runs as it is, compiled around or not."""
    model = bnn.use_population_statistics(bnn.MLP([64, 32, 10]), torch.rand(200, 64)).eval()
    packed, x = bnn.pack(model), torch.rand(8, 64)

    class Calls(torch.nn.Module):
        def forward(self, x):
            return packed(x) * 2

    assert torch.equal(torch.compile(packed)(x[:4]), packed(x[:4]))
    assert torch.equal(torch.compile(Calls())(x), packed(x) * 2)
