"""Keep freed memory in the process, so that steps which allocate and free megabytes do not page-fault.

torch's CPU tensors come from the C library's ``malloc``. glibc's defaults return large freed blocks to the
operating system (blocks above its mmap threshold are unmapped when freed, and the heap is trimmed once more
than twice that threshold is free at its top); the next step then faults every page in again, and the kernel
zeroes each one. A batch-1 MESU step with 10 weight samples allocates and frees 3 MB tensors (its samples and their
noise), and on a 2-core AMD EPYC more than half of its time went to those page faults (``benchmarks/
long_stream.py``: 6.65 ms a step with glibc's defaults, 2.97 ms with freed memory kept).

:func:`keep_freed_memory` sets the two glibc thresholds (``mallopt``) so that blocks up to 32 MiB come from the
heap and up to ``limit_mib`` of freed memory stay there for reuse. The price is that the process's resident
memory does not shrink after a peak. It changes the whole process, so the library never calls it on its own:
the ``metaspike`` command does (it owns its process), and a program of your own may.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re

import torch

from metaspike.checks import is_whole

__all__ = ["keep_freed_memory", "usable_memory", "allocation_failure"]

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit systems (larger blocks are always mapped on their own)
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def keep_freed_memory(limit_mib: int = 1024) -> bool:
    """Let glibc's ``malloc`` reuse freed blocks of up to 32 MiB and keep up to ``limit_mib`` MiB of freed memory.

    Returns ``True`` where it took effect (Linux with glibc), ``False`` elsewhere (then nothing changed).

    Args:
        limit_mib: freed memory (MiB) the heap may keep before it is returned to the system; an int ``>= 1``.

    Example:
        >>> keep_freed_memory(512) in (True, False)
        True
    """
    if not is_whole(limit_mib, 1):
        raise ValueError(f"limit_mib must be an int >= 1, got {limit_mib!r}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    trim = min(limit_mib * 1024 * 1024, 2**31 - 1)
    # glibc returns 1 on success; setting either value also stops glibc from moving the thresholds itself
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))


def usable_memory() -> int | None:
    """The memory this process may fill, in bytes: the machine's physical memory, or less where a container's
    memory limit (cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``) or the process's address-space limit
    (``ulimit -v``, less what the process has mapped already) says so; ``None`` where the operating system says nothing.

    Example:
        >>> usable_memory() > 0
        True
    """
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name (some BSDs)
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():  # ("max": no limit; v1 writes a huge number instead, which the physical memory undercuts)
            limits.append(int(text))
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append(max(soft - _mapped_bytes(), 0))  # the limit counts what is mapped already (libraries)
    except (ImportError, ValueError, OSError):
        pass
    return min(limits) if limits else None


def _mapped_bytes() -> int:
    """The address space this process has mapped (``VmSize``), 0 where ``/proc`` does not say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


_ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "not enough memory")
#: torch's allocation error (``torch.OutOfMemoryError`` from torch 2.5; before it only CUDA's had a class)
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def allocation_failure(err: BaseException) -> str | None:
    """One line saying that ``err`` is memory running out (Python's ``MemoryError``, torch's ``OutOfMemoryError``
    or the CPU allocator's ``RuntimeError``) and how much was asked for; ``None`` for any other error.

    Example:
        >>> allocation_failure(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
        ...                                 "3200000000 bytes. Error code 12 (Cannot allocate memory)"))
        'out of memory: a tensor of 3.2 GB did not fit'
        >>> allocation_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
        True
    """
    if isinstance(err, MemoryError):
        return "out of memory"
    if not isinstance(err, RuntimeError):
        return None
    text = str(err)
    if not (isinstance(err, _OUT_OF_MEMORY) or any(failure in text.lower() for failure in _ALLOCATION_FAILURES)):
        return None
    asked = re.search(r"allocate (\d+) bytes", text)
    if asked:
        return f"out of memory: a tensor of {int(asked.group(1)) / 1e9:.1f} GB did not fit"
    asked = re.search(r"allocate ([\d.]+ [KMGT]iB)", text)  # (the CUDA allocator's wording)
    return f"out of memory: a tensor of {asked.group(1)} did not fit" if asked else "out of memory"
