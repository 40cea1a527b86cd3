"""The machine a result was measured on: the CPU's model, kind and vector-instruction flags, recorded beside every
benchmark figure and every run (floating-point sums, and so the last digits of results, depend on the CPU's kernels
as well as on torch's version and thread count)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

__all__ = ["FLAGS", "cpu", "cpu_kind"]

FLAGS = ("avx2", "avx512f", "avx512_vpopcntdq", "avx512_bf16", "avx512_vnni", "amx_tile")


@cache
def cpu() -> tuple[str, str, list[str]]:
    """``(model name with its family and model numbers, kind, flags)`` from ``/proc/cpuinfo``.

    The kind is the model's first two words, its widest vector unit and its family number, e.g.
    ``amd-epyc-avx2-family23``, ``amd-epyc-avx512-family26`` or ``intel-xeon-amx-family6``: virtual
    machines often show only "AMD EPYC", an AVX2-only EPYC runs these benchmarks very differently from an
    AVX-512 one, and two AVX-512 generations differ as much (Zen 4, family 25, splits a 512-bit operation
    into two 256-bit halves; Zen 5, family 26, does not).

    Example:
        >>> described, kind, flags = cpu()
        >>> set(flags) <= set(FLAGS)
        True
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU", "unknown-cpu", []

    def field(key: str) -> str | None:
        found = re.search(rf"^{key}\s*:\s*(.*)$", info, re.M)
        return found.group(1).strip() if found else None

    name = field("model name") or "unknown CPU"
    flags = (field("flags") or "").split()
    family, model = field("cpu family"), field("model")
    present = [f for f in FLAGS if f in flags]
    words = re.sub(r"\((R|TM)\)|\bCPU\b|@.*", " ", name).split()
    units = (("amx_tile", "amx"), ("avx512f", "avx512"), ("avx2", "avx2"))
    widest = next((unit for flag, unit in units if flag in present), None)
    kind = "-".join([w.lower() for w in words[:2]] + ([widest] if widest else [])
                    + ([f"family{family}"] if family else []))
    described = f"{name} (family {family}, model {model})" if family else name
    return described, kind, present


def cpu_kind() -> str:
    """The CPU's kind (:func:`cpu`), e.g. ``amd-epyc-avx2-family25``.

    Example:
        >>> isinstance(cpu_kind(), str)
        True
    """
    return cpu()[1]
