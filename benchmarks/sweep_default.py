"""Sweep that chose the main job's default: hidden size, epochs per task, meta and lr on the CPU
default stream (permuted mnist5k, 3 tasks). Prints one line per run and writes a CSV.

    python benchmarks/sweep_default.py --hidden 512 --epochs 20 --lr 0.005 --meta 0 10 5,30,30 --optimizer per-task

A meta setting is one number or one number per layer (5,30,30). Columns: first-task and last-task accuracy
after the last task, ACC, forgetting, seconds. Run it with OMP_NUM_THREADS=1 when other jobs share the CPU.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import tempfile
from pathlib import Path

from metaspike.app.config import RunConfig, meta_label, parse_meta
from metaspike.app.runs import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024])
    parser.add_argument("--layers", type=int, default=2, help="number of hidden layers")
    parser.add_argument("--epochs", type=int, nargs="+", default=[20])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.005])
    parser.add_argument("--meta", nargs="+", default=["0", "10"], help="settings: a number or one per layer (5,30,30)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--optimizer", default="shared", choices=["shared", "per-task"])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--csv", default="benchmarks/results/sweep_default.csv")
    args = parser.parse_args()
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = ["hidden", "epochs", "lr", "meta", "seed", "optimizer", "first_task", "last_task", "ACC", "forgetting", "seconds"]
    new_file = not out.exists()
    with open(out, "a", newline="") as handle, tempfile.TemporaryDirectory() as tmp:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(header)
        print(" ".join(f"{h:>10}" for h in header), flush=True)
        for hidden, epochs, lr, meta, seed in itertools.product(args.hidden, args.epochs, args.lr, args.meta, args.seeds):
            config = RunConfig(datasets=(args.dataset,), tasks=args.tasks, hidden=(hidden,) * args.layers, epochs=epochs,
                               lr=lr, meta=parse_meta(meta), seed=seed, optimizer=args.optimizer)
            _, result = run(config, tmp, progress=False, plot=False)
            final = result.matrix[-1]
            row = [hidden, epochs, lr, meta_label(config.meta), seed, args.optimizer, round(final[0], 2), round(final[-1], 2),
                   round(result.metrics["ACC"], 2), round(result.metrics["forgetting"], 2), round(result.seconds, 1)]
            writer.writerow(row)
            handle.flush()
            print(" ".join(f"{v:>10}" for v in row), flush=True)


if __name__ == "__main__":
    main()
