"""Micro-benchmark: one ``MetaplasticAdam.step()`` on the weights of a 784-H-H-10 ``bnn.MLP``.

Times, interleaved in one process (so a busy machine slows all of them alike):

* ``torch.optim.Adam`` (the floor: plain Adam with torch's own single-tensor loop),
* ``MetaplasticAdam(meta=0)`` (must cost the same),
* ``MetaplasticAdam(meta=1.35, fused=False)`` (consolidation as separate tensor operations),
* ``MetaplasticAdam(meta=1.35, fused=True)`` (one compiled loop per weight matrix),

and prints the median milliseconds per step and per million weights.

Usage::

    python benchmarks/optimizer_step.py --hidden 1024 4096 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import machine, nonnegative_float, positive_int, run_benchmark

import bnn
from metaspike.optim import MetaplasticAdam


def _optimizers(model: torch.nn.Module, meta: float) -> dict[str, torch.optim.Optimizer]:
    return {
        "torch Adam": torch.optim.Adam(model.parameters(), lr=1e-3),
        "meta=0": MetaplasticAdam(model.parameters(), lr=1e-3, meta=0.0),
        f"meta={meta} separate ops": MetaplasticAdam(model.parameters(), lr=1e-3, meta=meta, fused=False),
        f"meta={meta} fused": MetaplasticAdam(model.parameters(), lr=1e-3, meta=meta, fused=True),
    }


def _time_ms(step: Callable[[], object], samples: list[float]) -> None:
    start = time.perf_counter()
    step()
    samples.append((time.perf_counter() - start) * 1e3)


def bench(hidden: int, repeats: int, meta: float) -> None:
    """Print the median step time of each optimizer on a 784-hidden-hidden-10 MLP."""
    torch.manual_seed(0)
    model = bnn.MLP([784, hidden, hidden, 10])
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    n_weights = sum(p.numel() for p in model.parameters()) / 1e6
    optimizers = _optimizers(model, meta)
    for opt in optimizers.values():  # warm-up: state allocation and (for fused) compilation
        opt.step()
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name, opt in optimizers.items():
            _time_ms(opt.step, times[name])
    print(f"784-{hidden}-{hidden}-10 ({n_weights:.2f} M parameters), median of {repeats} steps:")
    floor = statistics.median(times["torch Adam"])
    for name, samples in times.items():
        ms = statistics.median(samples)
        print(f"  {name:<28}{ms:9.2f} ms  {ms / n_weights:7.2f} ms/M weights  {ms / floor:5.2f}x torch Adam")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=positive_int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=positive_int, default=20)
    parser.add_argument("--meta", type=nonnegative_float, default=1.35)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine(), flush=True)
    for hidden in args.hidden:
        bench(hidden, args.repeats, args.meta)


if __name__ == "__main__":
    run_benchmark(main)
