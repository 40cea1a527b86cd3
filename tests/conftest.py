"""Shared test fixtures."""

import pytest
import torch


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
