"""Evidence that the main job's default reduces forgetting: m = 0 vs the default on the same stream, 3 seeds.

    OMP_NUM_THREADS=1 python benchmarks/forgetting_default.py      # about 4 minutes on 2 cores

Checks, on the means over seeds: task 1 after the last task at least 40 points above m = 0, higher ACC, the last
task no more than 3 points below m = 0, and the slowest run's mean time under 10 minutes. Prints the table, each
check, and where the results are.
"""

from __future__ import annotations

import argparse

from common import RUNS, check_distinct, machine, output_folder, run_benchmark, seed_int

from metaspike.app.compare import compare
from metaspike.app.config import RunConfig
from metaspike.app.tables import format_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=output_folder, default=RUNS,
                        help="folder of the comparison (default: %(default)s)")
    args = parser.parse_args()
    check_distinct(parser, "--seeds", args.seeds)
    print(machine(), flush=True)
    base = RunConfig()
    path, rows = compare(base, [(0.0,), base.meta], args.seeds, args.out, progress=False)
    plain, meta = rows
    n_tasks = sum(1 for key in plain if key.startswith("task "))
    print(format_table(rows, n_tasks))
    first_gain = meta["task 1"][0] - plain["task 1"][0]
    last_loss = plain[f"task {n_tasks}"][0] - meta[f"task {n_tasks}"][0]
    checks = [
        (f"task 1 kept {first_gain:+.1f} points vs m = 0 (need >= +40)", first_gain >= 40),
        (f"ACC {meta['ACC'][0]:.1f} vs {plain['ACC'][0]:.1f} (need higher)", meta["ACC"][0] > plain["ACC"][0]),
        (f"last task {-last_loss:+.1f} points vs m = 0 (need >= -3)", last_loss <= 3),
        (f"slowest run {max(meta['seconds'][0], plain['seconds'][0]):.0f} s mean (need < 600)",
         max(meta["seconds"][0], plain["seconds"][0]) < 600),
    ]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    print(f"results: {path}")


if __name__ == "__main__":
    run_benchmark(main)
