"""The fair comparison of neuron models: every model swept over meta, 3 seeds, one table and one frontier figure.

Runs ``metaspike compare --neurons`` in two halves side by side (one thread each, as on a 2-core machine) or
merges comparison folders that ran already, then writes the combined table, the per-model trade-off table
(best m by ACC; the least-forgetting m whose last task stays within 5 points of m = 0) and the frontier
figure to ``--out``:

    python benchmarks/neuron_tradeoff.py --out benchmarks/results/neuron_tradeoff            # runs both halves
    python benchmarks/neuron_tradeoff.py --merge runs/nbA/compare-... runs/nbB/compare-... --out ...

Merged folders must have run the same stream, settings, m values and seeds (else the columns of one model would be
read as another's tasks); ``ran_with.json`` records the thread counts, versions and CPU kinds they ran with, and a
warning says where those differ.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RUNS, check_distinct, output_folder, run_benchmark, seed_int

from metaspike.app import plots
from metaspike.app.compare import DEFAULT_NEURONS, TRADEOFF_LABELS, format_tradeoff, model_and_rule, tradeoff_rows
from metaspike.app.runs import ran_with
from metaspike.app.tables import comparison_csv, format_table
from metaspike.files import atomic_write_text, read_json

METAS = ("0", "5", "10", "20", "30", "50")
#: Where the two halves' comparison folders go (git-ignored), in a new folder per run of this script.
HALVES = RUNS / "neuron_tradeoff"


def _run_halves(seeds: list[int]) -> list[Path]:
    """Both halves of the comparison, side by side, in a new folder of the git-ignored :data:`HALVES`."""
    half = len(DEFAULT_NEURONS) // 2
    HALVES.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=HALVES))
    print(f"the comparisons' folders: {root}", flush=True)
    outs = [root / f"half-{part}" for part in (1, 2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "metaspike", "compare", "--neurons", *group, "--meta", *METAS,
                               "--seeds", *map(str, seeds), "--quiet", "--out", str(out)], env=env)
             for group, out in zip((DEFAULT_NEURONS[:half], DEFAULT_NEURONS[half:]), outs)]
    if any(proc.wait() != 0 for proc in procs):
        raise SystemExit("a comparison failed; finish it with metaspike compare --resume")
    return [next(out.glob("compare-neurons-*")) for out in outs]


LABELS = ("neuron", "meta", "rule", "runs")  # (compare's own; a folder written before rows named their rule: empty)


def _pair(value: object) -> tuple[float, float] | None:
    """A measured ``(mean, std)`` as ``comparison.json`` stores it (a list of two numbers, ``null`` for undefined)
    with NaN for ``null``; ``None`` for anything else (e.g. the list of runs that learned nothing)."""
    numbers = isinstance(value, list) and len(value) == 2
    if not numbers or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value):
        return None
    return tuple(math.nan if v is None else float(v) for v in value)


def _rows(comparison: dict) -> list[dict]:
    """The rows of a ``comparison.json`` as :func:`metaspike.app.compare.compare_neurons` returned them: measured
    values as ``(mean, std)`` tuples (NaN where undefined), labels and other lists as stored."""
    return [{"rule": None, **{k: _value(k, v) for k, v in row.items()}} for row in comparison["rows"]]


def _merged(folders: list[Path]) -> tuple[list[dict], dict[str, list]]:
    """The rows of neuron comparisons that ran the same plan but for their models, and what their runs ran with
    (:func:`metaspike.app.runs.ran_with`, which warns where it differs); one ``SystemExit`` naming the setting where two
    plans differ."""
    comparisons = [read_json(folder / "comparison.json") for folder in folders]
    seen: dict[str, Path] = {}
    for folder, comparison in zip(folders, comparisons):  # (a model merged twice: its rows twice, wrong verdicts)
        for neuron in comparison.get("neurons", []):
            if neuron in seen:
                raise SystemExit(f"neuron model {neuron!r} is in {seen[neuron]} and {folder}: merge each model once")
            seen[neuron] = folder
    first = comparisons[0]
    for folder, comparison in zip(folders[1:], comparisons[1:]):
        for key in sorted(set(first) | set(comparison)):
            if key in ("rows", "ran_with", "neurons"):
                continue
            # (a comparison's base names its first model: each folder's models are its own)
            ours, theirs = ({k: v for k, v in c.get(key, {}).items() if k != "model"} if key == "base" else c.get(key)
                            for c in (first, comparison))
            if ours != theirs:
                different = key if key != "base" else "settings " + ", ".join(
                    name for name in sorted(set(ours) | set(theirs)) if ours.get(name) != theirs.get(name))
                raise SystemExit(f"{folder} ran other {different} than {folders[0]}: merge comparisons of one plan")
    arithmetic, warning = ran_with(sorted(run for folder in folders for run in folder.iterdir()
                                          if (run / "config.json").is_file()))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return [row for comparison in comparisons for row in _rows(comparison)], arithmetic


def _value(key: str, value: object) -> object:
    pair = None if key in LABELS else _pair(value)
    return value if pair is None else pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--merge", nargs="+", type=Path, help="comparison folders to combine instead of running")
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=output_folder, required=True)
    args = parser.parse_args()
    check_distinct(parser, "--seeds", args.seeds)
    missing = next((folder for folder in args.merge or [] if not (folder / "comparison.json").is_file()), None)
    if missing is not None:
        parser.error(f"argument --merge: {missing} holds no comparison.json (a folder metaspike compare --neurons "
                     "wrote)")
    folders = args.merge or _run_halves(args.seeds)
    rows, ran_with = _merged(folders)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "ran_with.json", json.dumps(ran_with, indent=1) + "\n")
    tradeoff = tradeoff_rows(rows)
    n_tasks = sum(1 for key in rows[0] if key.startswith("task "))
    atomic_write_text(args.out / "comparison.csv", comparison_csv(rows, LABELS))
    atomic_write_text(args.out / "comparison.txt", format_table(rows, n_tasks) + "\n")
    atomic_write_text(args.out / "tradeoff.csv", comparison_csv(tradeoff, TRADEOFF_LABELS))
    atomic_write_text(args.out / "tradeoff.txt", format_tradeoff(tradeoff) + "\n")
    named = [{**row, "neuron": model_and_rule(row, rows)} for row in rows]  # (a curve per model and rule, as compare)
    plots.plot_tradeoff(named, args.out / "tradeoff.png")
    plots.plot_forgetting_by_model(named, args.out / "forgetting.png")
    print(format_tradeoff(tradeoff))


if __name__ == "__main__":
    run_benchmark(main)
