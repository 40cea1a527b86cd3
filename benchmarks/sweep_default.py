"""Sweep that chose the main job's default: hidden size, epochs per task, meta and lr on the CPU
default stream (permuted mnist5k, 3 tasks). Prints one line per run and writes a CSV.

    python benchmarks/sweep_default.py --hidden 512 --epochs 20 --lr 0.005 --meta 0 10 5,30,30 --optimizer per-task

A meta setting is one number or one number per layer (5,30,30). Columns: the settings that tell runs apart
(dataset, tasks, hidden layers, hidden size, epochs, lr, meta, seed, optimizer), first-task and last-task accuracy
after the last task, ACC, forgetting, seconds; the CSV adds the CPU, its kind, torch's version and threads. Rows
are appended to ``--csv`` (default: the git-ignored ``benchmarks/results/runs/sweep_default.csv``; a relative
path is taken from the current folder); a CSV with other columns is refused. Run it with OMP_NUM_THREADS=1 when
other jobs share the CPU.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import tempfile
from pathlib import Path
from typing import TextIO

from common import (
    RUNS,
    check_distinct,
    machine,
    machine_fields,
    made_or_exit,
    meta_setting,
    output_file,
    positive_float,
    positive_int,
    run_benchmark,
    seed_int,
)

from metaspike.app.config import RunConfig, meta_label
from metaspike.app.runs import run

SETTINGS = ["dataset", "tasks", "layers", "hidden", "epochs", "lr", "meta", "seed", "optimizer"]
MEASURED = ["first_task", "last_task", "ACC", "forgetting", "seconds"]
HEADER = [*SETTINGS, *MEASURED, *machine_fields()]


def _open_csv(out: Path) -> TextIO:
    """``out`` opened to append rows under :data:`HEADER` (written if the file is new or empty); a file with other
    columns is refused in one line."""
    out.parent.mkdir(parents=True, exist_ok=True)
    first = None
    if out.exists():
        with open(out, newline="") as existing:
            first = next(csv.reader(existing), None)
    if first is not None and first != HEADER:
        raise SystemExit(f"sweep_default.py: {out} has other columns than this script writes ({','.join(HEADER)}); "
                         "give another --csv")
    handle = open(out, "a", newline="")
    if first is None:
        csv.writer(handle).writerow(HEADER)
    return handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=positive_int, nargs="+", default=[1024])
    parser.add_argument("--layers", type=positive_int, default=2, help="number of hidden layers")
    parser.add_argument("--epochs", type=positive_int, nargs="+", default=[20])
    parser.add_argument("--lr", type=positive_float, nargs="+", default=[0.005])
    parser.add_argument("--meta", type=meta_setting, nargs="+", default=[(0.0,), (10.0,)],
                        help="settings: a number or one per layer (5,30,30)")
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[1])
    parser.add_argument("--optimizer", default="shared", choices=["shared", "per-task"])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--tasks", type=positive_int, default=3)
    parser.add_argument("--csv", type=output_file, default=RUNS / "sweep_default.csv",
                        help="CSV to append to (default: the git-ignored benchmarks/results/runs/sweep_default.csv)")
    args = parser.parse_args()
    for flag in ("hidden", "epochs", "lr", "meta", "seeds"):  # (a setting given twice: one run counted twice)
        check_distinct(parser, f"--{flag}", getattr(args, flag))
    configs = made_or_exit(parser, lambda: [  # (checked before the CSV is opened and anything runs)
        RunConfig(datasets=(args.dataset,), tasks=args.tasks, hidden=(hidden,) * args.layers, epochs=epochs, lr=lr,
                  meta=meta, seed=seed, optimizer=args.optimizer)
        for hidden, epochs, lr, meta, seed in itertools.product(args.hidden, args.epochs, args.lr, args.meta,
                                                                args.seeds)])
    machine_cells = list(machine_fields().values())
    with _open_csv(args.csv) as handle, tempfile.TemporaryDirectory() as tmp:
        writer = csv.writer(handle)
        print(machine(), flush=True)
        print(" ".join(f"{h:>10}" for h in [*SETTINGS, *MEASURED]), flush=True)
        for config in configs:
            _, result = run(config, tmp, progress=False, plot=False)
            final = result.matrix[-1]
            row = [args.dataset, args.tasks, args.layers, config.hidden[0], config.epochs, config.lr,
                   meta_label(config.meta), config.seed,
                   args.optimizer, round(final[0], 2), round(final[-1], 2), round(result.metrics["ACC"], 2),
                   round(result.metrics["forgetting"], 2), round(result.seconds, 1)]
            writer.writerow([*row, *machine_cells])
            handle.flush()
            print(" ".join(f"{v:>10}" for v in row), flush=True)


if __name__ == "__main__":
    run_benchmark(main)
