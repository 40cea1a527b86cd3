"""Benchmark: the 100-task stream at batch size 1 (``metaspike reproduce long-stream``) and the cost of one step.

Two parts, in one process:

1. **Step cost at batch size 1**, interleaved so a busy machine slows all alike: a plain 784-100-10
   ``nn.Linear`` network with SGD (forward, loss, backward, step), and the stream's BiMU and MESU networks
   (model kinds ``"bimu"`` and ``"mesu"`` with their optimizers) drawing ``S`` weight samples per step, each
   with the loss averaged over the ``S`` outputs: once as the stream trains them (``fused``: one compiled call
   per step, :meth:`metaspike.bayesian.fused_step.FusedTrainingStep.train_rows`, as ``train_epoch`` runs it), at
   ``S = 1`` also as one checked call of the fused step per sample (``a call per step``: what a user's own loop
   costs), and once through autograd and ``optimizer.step()`` (``autograd``: what a model the fused step does not
   take costs).
   The target: a Bayesian step costs at most ``2·S`` plain steps. Freed memory is kept in the process as the
   ``metaspike`` command keeps it (:func:`metaspike.allocator.keep_freed_memory`); ``--release-freed-memory``
   measures with glibc's default instead.
2. **The stream**: every method of :mod:`metaspike.app.reproduce.long_stream`, printing seconds,
   milliseconds per training step (through the trainer, evaluation included) and the peak RSS.

The table and figure go to ``--out`` (default: a new folder ``long_stream``, ``long_stream-2``, ... in the git-ignored
``benchmarks/results/runs``); only an explicit ``--out`` writes into the committed results. An ``--out`` that holds
runs of an earlier benchmark is refused unless ``--resume`` is given, which reads finished runs back and continues
stopped ones (their seconds are then those of the processes that ran them, and a note says which). The step costs,
headed by the CPU, its flags, torch's threads and the load average, go there too, to
``steps_<cpu-kind>_<N>thread(s).txt``. The stream and ``--merge`` record in ``ran_with.json`` the thread counts,
versions and CPU kinds their runs ran with, and warn where they differ (the tables' seconds are then not one
machine's); ``freed_memory.json`` records the allocator setting, and a ``--resume`` with the other one is refused.

Usage::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/long_stream.py --seeds 1 --out benchmarks/results/long_stream
    OMP_NUM_THREADS=1 python benchmarks/long_stream.py --steps-only
    # methods in parallel processes (one core each), then one table and figure from their folders:
    python benchmarks/long_stream.py --no-steps --methods BiMU --out A   # ... and so on, then
    python benchmarks/long_stream.py --merge A B C --out benchmarks/results/long_stream
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch
import torch.nn.functional as F
from common import (
    RUNS,
    check_distinct,
    cpu,
    flags_line,
    load_average_line,
    machine,
    output_folder,
    positive_int,
    run_benchmark,
    seed_int,
)
from torch import nn

from metaspike.allocator import keep_freed_memory
from metaspike.app.models import build_model, build_optimizer
from metaspike.bayesian.fused_step import FusedTrainingStep
from metaspike.continual.results import unique_directory

#: A variant of the step-cost part: trains on the rows ``rows`` of ``(x, y)``, one step each.
Rows = Callable[[torch.Tensor, torch.Tensor, range], object]


def _each_row(step: Callable[[torch.Tensor, torch.Tensor], object]) -> Rows:
    def run(x: torch.Tensor, y: torch.Tensor, rows: range) -> None:
        for i in rows:
            step(x[i : i + 1], y[i : i + 1])

    return run


def _plain() -> Rows:
    net = nn.Sequential(nn.Linear(784, 100, bias=False), nn.ReLU(), nn.Linear(100, 10, bias=False))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return _each_row(step)


def _sampled(kind: str, samples: int, fused: str | None) -> Rows:
    """The stream's network of ``kind`` drawing ``samples`` weight samples per step; ``fused``: ``"rows"`` as
    train_epoch runs it (:meth:`FusedTrainingStep.train_rows`, the model checked once per epoch), ``"call"`` one
    checked call of the fused step per sample, ``None`` autograd and ``optimizer.step()``."""
    net = build_model(kind, [100], (1, 28, 28), 10)
    for layer in net.modules():
        if hasattr(layer, "samples"):  # the Bayesian layers' weight samples per step
            layer.samples = samples
    opt = build_optimizer(kind, net, lr=0.0)  # (lr is not used by the Bayesian optimizers)
    if fused == "rows":
        fused_step = FusedTrainingStep(net, opt)
        return lambda x, y, rows: fused_step.train_rows(x, y, rows)
    if fused == "call":
        return _each_row(FusedTrainingStep(net, opt))

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        out = net(x)
        F.cross_entropy(out.flatten(0, 1), y.repeat(samples)).backward()
        opt.step()

    return _each_row(step)


def step_costs(steps: int, rounds: int) -> dict[str, float]:
    """Median milliseconds per batch-1 step of each variant, over ``rounds`` interleaved rounds (after a warm-up)."""
    torch.manual_seed(0)
    variants: dict[str, Rows] = {"plain Linear + SGD": _plain()}
    for kind, label, samples in (("bimu", "BiMU", 1), ("bimu", "BiMU", 5), ("mesu", "MESU", 1), ("mesu", "MESU", 10)):
        for fused, name in (("rows", "fused"), ("call", "fused, a call per step"), (None, "autograd")):
            if fused != "call" or samples == 1:
                variants[f"{label} S={samples} {name}"] = _sampled(kind, samples, fused)
    x, y = torch.randn(steps, 784), torch.randint(0, 10, (steps,))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():  # warm-up, untimed: the fused loops compile on their first call
        run(x, y, range(min(steps, 20)))
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run(x, y, range(steps))
            times[name].append(1000 * (time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def _write_step_costs(steps: int, rounds: int, out: Path, kept: bool) -> None:
    """The step-cost part, printed and written to ``out/steps_<cpu-kind>_<N>thread(s).txt`` under its machine."""
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    _, kind, flags = cpu()
    say(machine())
    say(flags_line(flags))
    say(load_average_line("before"))
    say(f"{rounds} interleaved rounds of {steps} steps at batch size 1, medians; freed memory "
        f"{'kept' if kept else 'returned to the system'} (metaspike.allocator)")
    costs = step_costs(steps, rounds)
    plain = costs["plain Linear + SGD"]
    for name, ms in costs.items():
        samples = int(name.split("S=")[1].split()[0]) if "S=" in name else 1
        target = "" if name.startswith("plain") else f"  = {ms / plain:.2f} plain steps (target <= {2 * samples})"
        say(f"{name:32s} {ms:.4f} ms/step{target}")
    say(load_average_line("after"))
    threads = torch.get_num_threads()
    path = out / f"steps_{kind}_{threads}thread{'' if threads == 1 else 's'}.txt"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"written to {path}")


def merge(parser: argparse.ArgumentParser, parts: list[Path], out: Path) -> None:
    """One ``table.csv`` (methods in :data:`METHODS` order) and ``accuracy_vs_task.png`` from folders that
    ran some methods each (``--methods``); a method found in two folders is refused."""
    from metaspike.app.reproduce import long_stream
    from metaspike.continual.results import load_run
    from metaspike.files import atomic_write_text, csv_text

    if out.resolve() in {part.resolve() for part in parts}:  # (its table.csv would be written over)
        parser.error(f"argument --out: {out} is one of the --merge folders; give a new folder for the merged table")
    settings = {_recorded_allocator(parser, part) for part in parts}  # (a damaged record: refused before any write)
    header, rows = None, {}
    for part in parts:
        table = _read_table(parser, part / "table.csv")
        header = header or table[0]
        if table[0] != header:
            parser.error(f"argument --merge: {part / 'table.csv'} has other columns than the first folder's")
        for row in table[1:]:
            if row[0] in rows:
                parser.error(f"argument --merge: method {row[0]!r} is in two of the folders; merge each method once")
            rows[row[0]] = row
    order = [m.label for m in long_stream.METHODS if m.label in rows]
    curves = {}
    for label in order:  # (every run read before anything is written: a damaged one is refused first)
        folder = label.replace(" ", "_").replace(",", "")
        runs = sorted(d for part in parts for d in (part / "runs" / folder).glob("*") if d.is_dir())
        try:
            finished = [load_run(d)["matrix"] for d in runs]
        except ValueError as err:
            parser.error(f"argument --merge: {err}")
        curves[label] = [m[-1] for m in finished if len(m) == long_stream.LONG_STREAM.tasks]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table.csv", csv_text([header, *(rows[label] for label in order)]))
    long_stream._plot({k: v for k, v in curves.items() if v}, out / "accuracy_vs_task.png")
    print(open(out / "table.csv").read())
    _record_ran_with(_run_folders(*parts), out)
    if len(settings) == 1 and None not in settings:
        _record_allocator(out, settings.pop())
    elif settings == {None}:
        print(f"warning: no folder records whether its runs kept freed memory ({ALLOCATOR_FILE}): the table does not "
              "say which allocator its seconds are of", file=sys.stderr)
    else:
        print("warning: the folders' runs kept freed memory in some and returned it in others (or do not say): the "
              "seconds of the table are not one allocator's", file=sys.stderr)


def _read_table(parser: argparse.ArgumentParser, path: Path) -> list[list[str]]:
    """The rows of a ``table.csv`` this benchmark wrote, header first, each checked: a method of :data:`METHODS`, a
    count of runs, finite numbers (or empty cells) in the metrics' columns; else one line naming the file and line."""
    from metaspike.app.reproduce import long_stream
    from metaspike.checks import is_finite_number
    from metaspike.files import JSON_MAX_BYTES, read_regular_file

    def refuse(problem: str) -> NoReturn:
        parser.error(f"argument --merge: {path} {problem}")

    try:
        table = list(csv.reader(io.StringIO(read_regular_file(path, "table", JSON_MAX_BYTES).decode("utf-8"),
                                            newline="")))
    except (UnicodeDecodeError, csv.Error, ValueError) as err:
        refuse(f"cannot be read as a CSV table ({err})")
    labels = list(long_stream.TABLE_COLUMNS)
    if (not table or table[0][:len(labels)] != labels
            or not all(c.endswith(("_mean", "_std")) for c in table[0][len(labels):])):
        refuse(f"is not a table of this benchmark (its header must start with {','.join(labels)}, then each "
               "metric's _mean and _std)")
    methods = [method.label for method in long_stream.METHODS]
    for number, row in enumerate(table[1:], start=2):
        if len(row) != len(table[0]):
            refuse(f"line {number} has {len(row)} cells, its header {len(table[0])}")
        if row[0] not in methods:
            refuse(f"line {number} names the method {row[0]!r}, which this benchmark does not run (it runs "
                   f"{'; '.join(methods)})")
        if not (row[1].isascii() and row[1].isdigit()) or int(row[1]) < 1:
            refuse(f"line {number}: the count of runs must be a whole number >= 1, got {row[1]!r}")
        if row[0] in (earlier[0] for earlier in table[1:number - 1]):
            refuse(f"line {number} names the method {row[0]!r} a second time")
        bad = next((c for c in row[3:] if c and not is_finite_number(_number_or_none(c))), None)
        if bad is not None:
            refuse(f"line {number} holds {bad!r} where a finite number (or an empty cell) belongs")
    return table


def _number_or_none(cell: str) -> float | None:
    """``cell`` as a float where it is a number written as the benchmark writes them (ASCII, no ``_``), else ``None``
    (``float`` also takes ``"1_000"`` and other scripts' digits)."""
    if not cell.isascii() or "_" in cell:
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def _record_ran_with(runs: list[Path], out: Path) -> None:
    """``out/ran_with.json``: the thread counts, versions and CPU kinds ``runs`` ran with; a warning where they
    differ (the table's seconds are then not one machine's)."""
    from metaspike.app.runs import ran_with
    from metaspike.files import atomic_write_text

    arithmetic, warning = ran_with(runs)
    atomic_write_text(out / "ran_with.json", json.dumps(arithmetic, indent=1) + "\n")
    if warning:
        print(f"warning: {warning}; the seconds of the table are not one machine's", file=sys.stderr)


def _run_folders(*folders: Path) -> list[Path]:
    """The run folders (``runs/<method>/<run>``) that the benchmark's output ``folders`` hold, sorted."""
    return sorted(d for folder in folders for d in (folder / "runs").glob("*/*") if d.is_dir())


#: The file of an ``--out`` folder that records whether its runs kept freed memory (``--release-freed-memory``).
ALLOCATOR_FILE = "freed_memory.json"


def _record_allocator(out: Path, setting: str) -> None:
    """Write :data:`ALLOCATOR_FILE` in ``out``: its runs' freed memory ``"kept"`` or ``"returned"``."""
    from metaspike.files import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / ALLOCATOR_FILE, json.dumps({"freed_memory": setting}) + "\n")


def _recorded_allocator(parser: argparse.ArgumentParser, folder: Path) -> str | None:
    """The freed-memory setting ``folder``'s runs ran with (``"kept"`` or ``"returned"``), ``None`` where it has no
    :data:`ALLOCATOR_FILE`; a damaged one is one line naming it."""
    path = folder / ALLOCATOR_FILE
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text()).get("freed_memory")
    except (ValueError, AttributeError, UnicodeDecodeError):
        recorded = None
    if recorded not in ("kept", "returned"):
        parser.error(f"{path} is damaged: it must hold {{\"freed_memory\": \"kept\"}} or \"returned\"")
    return recorded


def _check_same_allocator(parser: argparse.ArgumentParser, out: Path, kept: bool, earlier: list[Path]) -> None:
    """Record in ``out`` whether its runs keep freed memory; a ``--resume`` of ``earlier`` runs that ran the other way
    is one line naming ``--release-freed-memory`` (the table's timings would mix two allocators). Earlier runs of a
    folder without the record (made before it was kept) leave it unrecorded, with a note."""
    setting = "kept" if kept else "returned"
    recorded = _recorded_allocator(parser, out)
    if earlier and recorded is None:
        print(f"note: {out} does not record whether its earlier runs kept freed memory; this table's timings may mix "
              "two allocators", file=sys.stderr)
        return
    if earlier and recorded != setting:
        flag = "without --release-freed-memory" if recorded == "kept" else "with --release-freed-memory"
        parser.error(f"argument --release-freed-memory: the runs in {out} ran with freed memory {recorded}; go on "
                     f"{flag}, so that one table does not mix two allocators' timings")
    _record_allocator(out, setting)


def _methods(parser: argparse.ArgumentParser, labels: list[str] | None) -> list:
    """The methods of :mod:`metaspike.app.reproduce.long_stream` named by ``labels`` (all for ``None``); an unknown
    label is one line listing the valid ones."""
    from metaspike.app.reproduce import long_stream

    valid = [m.label for m in long_stream.METHODS]
    unknown = [label for label in labels or [] if label not in valid]
    if unknown:
        parser.error(f"argument --methods: unknown {', '.join(map(repr, unknown))}; "
                     f"choose from {', '.join(map(repr, valid))}")
    return [m for m in long_stream.METHODS if labels is None or m.label in labels]


def _resume_command(args: argparse.Namespace) -> str:
    """The command that goes on with the runs of this benchmark's ``args`` (its seeds and methods) in ``args.out``."""
    methods = f" --methods {shlex.join(args.methods)}" if args.methods else ""
    released = " --release-freed-memory" if args.release_freed_memory else ""  # (one allocator for a table's timings)
    return (f"python benchmarks/long_stream.py --out {shlex.quote(str(args.out))} --resume --no-steps --seeds "
            f"{' '.join(map(str, args.seeds))}{methods}{released}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[1])
    parser.add_argument("--out", type=output_folder, default=None,
                        help="folder of the table and figure (default: a new folder long_stream, long_stream-2, ... "
                             "in the git-ignored results/runs)")
    parser.add_argument("--resume", action="store_true",
                        help="go on with the runs --out holds (finished ones are read back, with their timings)")
    parser.add_argument("--steps", type=positive_int, default=500, help="steps per round of the step-cost part")
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--steps-only", action="store_true", help="only the step-cost part")
    parser.add_argument("--no-steps", action="store_true", help="skip the step-cost part")
    parser.add_argument("--methods", nargs="+", default=None, help="labels of the methods to run (default: all)")
    parser.add_argument("--merge", nargs="+", type=Path, help="folders of earlier runs to combine into --out")
    parser.add_argument("--release-freed-memory", action="store_true",
                        help="keep glibc's default of returning freed memory (the metaspike command keeps it)")
    args = parser.parse_args()
    check_distinct(parser, "--seeds", args.seeds)
    if args.steps_only and args.no_steps:  # (together they ran nothing and exited 0)
        parser.error("argument --no-steps: --steps-only runs the step-cost part alone, --no-steps the stream alone; "
                     "give one of them, or neither for both")
    kept = not args.release_freed_memory and keep_freed_memory()
    if args.merge:
        check_distinct(parser, "--merge", [folder.resolve() for folder in args.merge])
        missing = next((folder for folder in args.merge if not (folder / "table.csv").is_file()), None)
        if missing is not None:
            parser.error(f"argument --merge: {missing} holds no table.csv (a folder this benchmark wrote with --out)")
        merge(parser, args.merge, args.out or unique_directory(RUNS, "long_stream"))
        return
    methods = _methods(parser, args.methods)
    earlier = [] if args.out is None or args.steps_only else sorted(args.out.glob("runs/*/*"))
    if earlier and not args.resume:
        parser.error(f"argument --out: {args.out} holds {len(earlier)} run(s) of an earlier benchmark; give another "
                     "folder, or --resume to go on with them (finished runs are read back with their timings)")
    if args.resume and args.out is None:
        parser.error("argument --resume: name the folder to go on with in --out")
    args.out = args.out or unique_directory(RUNS, "long_stream")
    if not args.steps_only:
        _check_same_allocator(parser, args.out, kept, earlier)
    print(machine(), flush=True)
    print(f"freed memory {'kept' if kept else 'returned to the system'} (metaspike.allocator)")
    if not args.no_steps:
        _write_step_costs(args.steps, args.rounds, args.out, kept)
    if args.steps_only:
        return
    from metaspike.app.reproduce import long_stream

    if earlier:
        print(f"resuming {len(earlier)} run(s) in {args.out / 'runs'}: the seconds and step times of those read back "
              "or continued are those of the processes that ran them", flush=True)
    start = time.perf_counter()
    try:
        rows = long_stream.run("cpu", args.seeds, args.out, False, None, methods=methods)
    except KeyboardInterrupt as stop:  # (run_benchmark prints it; a run's own message names metaspike's command)
        raise KeyboardInterrupt(f"the runs so far are kept in {args.out}: go on with {_resume_command(args)}") from stop
    for row in rows:
        cells = "  ".join(f"{k}={v[0]:.2f}" for k, v in row.items() if isinstance(v, tuple))
        print(f"{row['setting']}: {cells}  {row['settings']}")
    _record_ran_with(_run_folders(args.out), args.out)
    print(f"total {time.perf_counter() - start:.0f} s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    run_benchmark(main)
