"""keep_freed_memory: freed blocks are reused instead of faulted in again (glibc only; run in a fresh process)."""

import platform
import subprocess
import sys

import pytest

from metaspike.allocator import keep_freed_memory

_SCRIPT = """
import resource, torch
from metaspike.allocator import keep_freed_memory

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):  # three 8 MB tensors at a time, written and freed
        tensors = [torch.ones(1 << 21) for _ in range(3)]
        del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

assert keep_freed_memory()
faults()  # the heap grows to hold the blocks once
print(faults())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    kept = int(subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True).stdout)
    # 20 rounds write 480 MB, 122,880 pages of 4 KiB: with glibc's defaults between 18,000 and 85,000 of them were
    # faulted in again (it depends on where Python's small objects land in the heap); with freed memory kept, none
    assert kept < 20 * 3 * 2048 // 100


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "1024"])
def test_limit_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="limit_mib must be an int >= 1"):
        keep_freed_memory(bad)


_ADDRESS_LIMIT_SCRIPT = """
import resource
from metaspike.allocator import _mapped_bytes, usable_memory
mapped = _mapped_bytes()
resource.setrlimit(resource.RLIMIT_AS, (mapped + (1 << 30), resource.RLIM_INFINITY))
print(usable_memory())
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="/proc/self/status and RLIMIT_AS")
def test_an_address_space_limit_counts_what_is_mapped_already():
    """ulimit -v limits the whole address space, libraries included: 1 GiB above what is mapped leaves about 1 GiB."""
    usable = int(subprocess.run([sys.executable, "-c", _ADDRESS_LIMIT_SCRIPT], capture_output=True, text=True,
                                check=True).stdout)
    assert (1 << 30) - (256 << 20) < usable <= 1 << 30  # (reading the limit maps a little more: at most a few MiB)


def _allocator_failure() -> RuntimeError:
    """What torch's CPU allocator raises for a tensor no machine holds (400 TB)."""
    import torch

    with pytest.raises(RuntimeError) as caught:
        torch.empty(10**14)
    return caught.value


def test_an_allocation_failure_is_recognised_and_sized():
    from metaspike.allocator import allocation_failure

    assert allocation_failure(_allocator_failure()) == "out of memory: a tensor of 400000.0 GB did not fit"
    assert allocation_failure(MemoryError()) == "out of memory"
    assert allocation_failure(RuntimeError("shapes cannot be multiplied")) is None
    assert allocation_failure(ValueError("can't allocate memory")) is None


def test_the_input_check_does_not_call_an_allocation_failure_a_shape_mismatch():
    import torch

    from metaspike.training import check_inputs

    class Hungry(torch.nn.Linear):
        def forward(self, x):
            raise _allocator_failure()

    with pytest.raises(RuntimeError, match="can't allocate memory"):
        check_inputs(Hungry(4, 2), torch.rand(3, 4), torch.zeros(3, dtype=torch.long))


def test_running_out_of_memory_in_a_run_is_one_line(tmp_path, capsys, monkeypatch):
    from metaspike.app.cli import main
    from metaspike.continual import ContinualTrainer

    def hungry(*args, **kwargs):
        raise _allocator_failure()

    monkeypatch.setattr(ContinualTrainer, "fit", hungry)
    assert main(["train", "--dataset", "digits", "--tasks", "1", "--hidden", "8", "--quiet", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == ("metaspike: error: out of memory: a tensor of 400000.0 GB did not fit; "
                                               "a smaller --hidden, --batch-size, --samples-per-task or --eval-samples "
                                               "needs less")
