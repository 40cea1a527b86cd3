"""First-task accuracy after the last task: snnTorch Leaky network, meta = 0 vs metaplastic, 3 seeds.

Runs the CPU default of ``metaspike compare --neurons`` (permuted mnist5k, 3 tasks, hidden 256,
binary synapses) and prints one line per run and the mean over seeds. Target: the metaplastic
network keeps >= 20 points more of the first task. The run folders go to ``--out`` (default: the git-ignored
``benchmarks/results/runs/snn_forgetting``).

    python benchmarks/snn_forgetting.py [--meta 0 20] [--seeds 1 2 3] [--neuron leaky] [--epochs 2]
"""

from __future__ import annotations

import argparse
import statistics

from common import (
    RUNS,
    check_distinct,
    machine,
    made_or_exit,
    nonnegative_float,
    output_folder,
    positive_float,
    positive_int,
    run_benchmark,
    seed_int,
)

from metaspike.app.compare import DEFAULT_SNN_META, SNN_DEFAULTS
from metaspike.app.config import RunConfig
from metaspike.app.runs import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neuron", default="leaky")
    parser.add_argument("--meta", type=nonnegative_float, nargs="+", default=[0.0, DEFAULT_SNN_META])
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=positive_int, default=SNN_DEFAULTS["epochs"])
    parser.add_argument("--hidden", type=positive_int, nargs="+", default=list(SNN_DEFAULTS["hidden"]))
    parser.add_argument("--num-steps", type=positive_int, default=RunConfig().num_steps)
    parser.add_argument("--lr", type=positive_float, default=0.005)
    parser.add_argument("--out", type=output_folder, default=RUNS / "snn_forgetting", help="folder of the run folders")
    args = parser.parse_args()
    check_distinct(parser, "--seeds", args.seeds)
    check_distinct(parser, "--meta", args.meta)
    configs = made_or_exit(parser, lambda: {
        (seed, m): RunConfig(tasks=3, epochs=args.epochs, hidden=tuple(args.hidden), meta=(m,), lr=args.lr, seed=seed,
                             model=args.neuron, num_steps=args.num_steps) for seed in args.seeds for m in args.meta})
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(machine(), flush=True)
    print(f"run folders in {out}", flush=True)
    first: dict[float, list[float]] = {m: [] for m in args.meta}
    print(f"{'meta':>6} {'seed':>5} {'task 1':>8} {'last task':>10} {'ACC':>7} {'seconds':>8}", flush=True)
    for seed in args.seeds:
        for m in args.meta:
            _, result = run(configs[seed, m], out, progress=False, plot=False)
            final = result.matrix[-1]
            first[m].append(final[0])
            print(f"{m:>6g} {seed:>5} {final[0]:>8.1f} {final[-1]:>10.1f} {result.metrics['ACC']:>7.1f} "
                  f"{result.seconds:>8.1f}", flush=True)
    print(f"\n{args.neuron}: first-task accuracy after the last task, mean over seeds {args.seeds}")
    for m in args.meta:
        print(f"  meta={m:g}: {statistics.fmean(first[m]):.1f}")
    if len(args.meta) > 1:
        gain = statistics.fmean(first[args.meta[-1]]) - statistics.fmean(first[args.meta[0]])
        print(f"  metaplastic - plain: {gain:+.1f} points (target >= +20)")


if __name__ == "__main__":
    run_benchmark(main)
