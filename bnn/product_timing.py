"""Timing candidate products against each other, robustly on a shared machine, and the row classes they are cached by.

:mod:`bnn.binary_linear` picks the fastest of its exact ±1 products once per process and *shape class*, timed here
(:mod:`bnn.float32_products` chooses its float32 library by the CPU instead: two libraries may round differently).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["PROBE_MAX_ROWS", "size_class", "probe_rows", "best_times", "synchronize"]

PROBE_MAX_ROWS = 256
"""Batches of more rows than this share one shape class, timed with this many rows."""


def size_class(m: int) -> int:
    """``m`` rows rounded up to a power of two (its exponent); all above :data:`PROBE_MAX_ROWS` are one class.

    Example:
        >>> size_class(100) == size_class(128) != size_class(129)
        True
    """
    return max(min(m, PROBE_MAX_ROWS + 1) - 1, 0).bit_length()


def probe_rows(m: int) -> int:
    """The rows a timing probe for a batch of ``m`` rows uses: ``m``, at most :data:`PROBE_MAX_ROWS`.

    Example:
        >>> probe_rows(64), probe_rows(1000)
        (64, 256)
    """
    return min(m, PROBE_MAX_ROWS)


def best_times(products: dict[str, Callable[[], object]], device: torch.device, rounds: int = 3,
               budget_s: float = 0.2) -> dict[str, float]:
    """The best time in seconds of each of ``products`` over interleaved rounds on ``device``.

    At least ``rounds`` rounds after a warm-up one, more (up to 50) while they took less than
    ``budget_s`` in all: the best of many rounds is robust to other processes sharing the CPU.

    Example:
        >>> a = torch.ones(8, 8)
        >>> sorted(best_times({"mm": lambda: a @ a}, torch.device("cpu"), rounds=1))
        ['mm']
    """
    best = dict.fromkeys(products, float("inf"))
    spent, round_ = 0.0, 0
    with torch.no_grad():
        while round_ <= rounds or (spent < budget_s and round_ <= 50):  # round 0 warms up
            for name, product in products.items():
                synchronize(device)
                start = time.perf_counter()
                product()
                synchronize(device)
                elapsed = time.perf_counter() - start
                if round_:
                    best[name] = min(best[name], elapsed)
                spent += elapsed
            round_ += 1
    return best


def synchronize(device: torch.device) -> None:
    """Wait for ``device`` to finish its queued work (CUDA); nothing on a CPU.

    Example:
        >>> synchronize(torch.device("cpu"))
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
