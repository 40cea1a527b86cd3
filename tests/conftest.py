"""Shared test fixtures and helpers (a test module imports the helpers: ``from conftest import fake_mnist``)."""

import functools
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from metaspike.compiled import compiling_disabled
from metaspike.data import write_idx


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist (``-n``), give each worker process its share of torch's threads.

    Each worker would otherwise start as many threads as there are cores: two workers on two cores would run four
    threads, whose waits on one another cost more than the small products of most tests gain from them.
    """
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        torch.set_num_threads(max(1, torch.get_num_threads() // int(workers)))


_share_the_cores_between_workers()


def fake_mnist(root: Path, name: str = "mnist", n_train: int = 20, n_test: int = 8, gz: bool = True, seed: int = 1,
               value: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write an MNIST-format dataset folder ``root/name`` (labels 0..9 in turn) and return its arrays per split.

    Its pixels are random, with 255 and 0 present, or all ``value`` when given (images without spread).
    """
    rng = np.random.default_rng(seed)
    out = {}
    suffix = ".gz" if gz else ""
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        if value is None:
            images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
            images[0] = 255  # make sure the maximum value appears
            images[1] = 0
        else:
            images = np.full((n, 28, 28), value, dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / name / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / name / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        out[split] = (images, labels)
    return out


class KeepCheckpoints:
    """A run log (:class:`metaspike.continual.trainer.RunLog`) that keeps every checkpoint as the bytes torch.save
    writes: a test resumes from any of them."""

    def __init__(self):
        self.saved = []

    def epoch_done(self, result):
        pass

    def task_done(self, result):
        pass

    def checkpoint(self, state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.saved.append(buffer.getvalue())


@pytest.fixture
def one_thread():
    """Run a test with one torch thread, then restore the count.

    The thread count changes float rounding (so the exact training trajectory), and two threads on
    2 shared cores run ~10x slower than one when other jobs compete.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _torch_compiles() -> bool:
    """Whether ``torch.compile`` compiles here: a tiny function compiled and run (inductor's CPU code needs a C++
    compiler; ``TORCH_COMPILE_DISABLE=1`` and the like switch it off)."""
    if compiling_disabled():
        return False
    try:
        torch.compile(lambda x: x + 1, fullgraph=True)(torch.zeros(2))
    except Exception:  # (whatever torch raises: these tests need its compiler to work, and skip where it does not)
        return False
    return True


@pytest.fixture
def working_compiler():
    """Skip a test that checks compiled behaviour (a step compiled, not eager; compiled results) where
    ``torch.compile`` does not work: without a C++ compiler the library runs eagerly, as it should, and such a test
    has nothing to check. Asked once per process, by the first test that needs it."""
    if not _torch_compiles():
        pytest.skip("torch.compile does not work here (no C++ compiler, or compiling switched off)")
