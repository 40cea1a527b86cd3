"""Inference latency and weight memory: bit-packed ``bnn.pack`` model vs the same model in float32.

Builds a 784-4096-4096-10 ``bnn.MLP`` with population statistics fixed on random inputs, packs it,
checks that all predict the same, and times them at batch 1 and batch 64 under
``torch.inference_mode``, in one process: ``--repeats`` rounds, each running ``--calls``
consecutive calls of every model (so each runs with its own data in cache, as when serving, while
a busy machine slows all alike), with a pause of ``--settle-ms`` before each model's calls: torch's
OpenMP threads spin for milliseconds after a parallel op, on the cores the packed kernels' threads
then need (measured on a 2-core Intel Xeon: 784-4096-4096-10 at batch 1 took 0.22 ms right after
the float32 model's calls and 0.10 ms alone), so without the pause each model would be timed in
the wake of the one before. ``--settle-ms 0`` measures that wake. Reported: the median call with its interquartile range, and the
speed-up as the median over rounds of the same round's ratio (with its range over rounds). Models:

* ``bnn.MLP`` in eval mode as it is (it binarizes its hidden weights on every call),
* the same network in float32 with the ±1 weights binarized once beforehand (the fair float32
  baseline: a plain ``Linear -> BatchNorm1d -> sign`` stack),
* the packed model with its fast kernels (native C, else ``torch.compile``; built before timing).

The CPU model, its relevant flags, torch's version and threads and the load average head the output, which also
goes to ``benchmarks/results/runs/inference_<cpu-kind>_<N>thread(s).txt`` (git-ignored; e.g.
``runs/inference_amd-epyc-avx2-family23_1thread.txt``), so figures from different machines and thread counts are
never mixed and a trial run never replaces published figures. Publishing into ``benchmarks/results/`` takes an
explicit ``--out``.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/inference.py --hidden 4096 --repeats 10 --calls 10 \
        --out benchmarks/results/inference_<cpu-kind>.txt
    OMP_NUM_THREADS=1 python benchmarks/inference.py --hidden 64 --repeats 2 --calls 2 --batches 1   # a quick try
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import (
    cpu,
    flags_line,
    load_average_line,
    machine,
    nonnegative_float,
    output_file,
    positive_int,
    run_benchmark,
    run_file,
)

import bnn
from metaspike.quantizers import get_quantizer


def prebinarized(model: bnn.MLP) -> bnn.MLP:
    """A copy of ``model`` whose layers hold ``sign(W_h)`` as float32 weights and use them as they are."""
    twin = copy.deepcopy(model)
    for layer in twin.modules():
        if isinstance(layer, bnn.BinaryLinear):
            layer.weight.data = layer.visible_weight().detach()
            layer.weight_quantizer = get_quantizer("none")
    return twin


def _time_ms(fn, samples: list[float]) -> None:
    start = time.perf_counter()
    fn()
    samples.append((time.perf_counter() - start) * 1e3)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return q1, median, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=positive_int, default=4096)
    parser.add_argument("--repeats", type=positive_int, default=10, help="interleaved rounds")
    parser.add_argument("--calls", type=positive_int, default=10, help="consecutive calls of each model per round")
    parser.add_argument("--settle-ms", type=nonnegative_float, default=50.0,
                        help="pause before each model's calls, so torch's threads stop spinning (default: 50)")
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=output_file, default=None,
                        help="results file (default: the git-ignored results/runs/inference_<cpu-kind>_<N>thread(s)"
                             ".txt; publish with --out benchmarks/results/inference_<cpu-kind>.txt)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    _, kind, flags = cpu()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    say(machine())
    say(flags_line(flags))
    say(load_average_line("before"))
    torch.manual_seed(0)
    sizes = [784, args.hidden, args.hidden, 10]
    model = bnn.use_population_statistics(bnn.MLP(sizes), torch.rand(2000, 784)).eval()
    packed = bnn.pack(model)
    summary = bnn.summary(model)
    float_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    say(f"model {'-'.join(map(str, sizes))}, "
        f"{args.repeats} rounds of {args.calls} calls per model, {args.settle_ms:g} ms pause before each model's calls")
    say(f"weight memory: float32 {float_bytes / 2**20:.2f} MiB, packed {packed.nbytes / 2**20:.2f} MiB "
        f"({float_bytes / packed.nbytes:.1f}x less; bnn.summary's 1-bit estimate {summary.packed_bytes / 2**20:.2f} MiB)")
    for i, kernel in enumerate(packed.kernel_names()):
        say(f"packed layer {i}: {kernel}")
    models = {"bnn.MLP": model, "float32 ±1": prebinarized(model)}
    for batch in args.batches:
        x = torch.rand(batch, 784)
        with torch.inference_mode():
            reference = model(x)
            assert torch.equal(models["float32 ±1"](x), reference)
        start = time.perf_counter()
        scores = packed(x)  # the first call builds or compiles the kernels if needed
        compile_s = time.perf_counter() - start
        assert torch.equal(scores, reference), "packed and float models disagree"
        runs = {**models, "packed": packed}
        rounds: dict[str, list[list[float]]] = {name: [] for name in runs}
        with torch.inference_mode():
            for run in runs.values():
                run(x)
            for _ in range(args.repeats):  # rounds of a few consecutive calls each: steady-state caches
                for name, run in runs.items():
                    time.sleep(args.settle_ms / 1e3)
                    rounds[name].append([])
                    for _ in range(args.calls):
                        _time_ms(lambda: run(x), rounds[name][-1])
        say(f"batch {batch:>3} (first packed call {compile_s:.1f} s): median ms [quartiles]; speed-up median [range over rounds]")
        for name in runs:
            q1, median, q3 = _quartiles([t for r in rounds[name] for t in r])
            line = f"  {name:<11}{median:9.3f} ms [{q1:.3f}, {q3:.3f}]"
            if name != "packed":
                ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(rounds[name], rounds["packed"])]
                line += f"  -> packed is {statistics.median(ratios):6.2f}x faster [{min(ratios):.2f}, {max(ratios):.2f}]"
            say(line)
    if packed.kernel_copy_bytes:  # (made by the first call, which the timing above reports)
        say(f"the native kernels' own copy of the hidden weights (output-major, for the portable and AVX2 kernels): "
            f"{packed.kernel_copy_bytes / 2**20:.2f} MiB more in memory")
    say(load_average_line("after"))
    out = args.out or run_file("inference", kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    run_benchmark(main)
