"""The consolidation rules side by side on the main job's stream: tanh (the paper's), cascade, switch.

    OMP_NUM_THREADS=1 python benchmarks/rules_forgetting.py          # about 10 minutes on 2 cores

Each rule runs with the m values given for it (``--tanh``, ``--cascade``, ``--switch``; m = 0 is the plain
BNN for every rule) on 3 permutations of mnist5k, 784-512-512-10, 20 epochs per task, seeds 1-3. Prints one
table (first task after the last, last task, ACC, forgetting: mean ± std over seeds; the mean alone for one seed),
headed by the CPU, torch's version and threads, and writes it to ``--out``/rules.csv (with those in its ``cpu``,
``cpu_kind``, ``torch`` and ``threads`` columns).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

from common import RUNS, check_distinct, machine, machine_fields, meta_setting, output_folder, run_benchmark, seed_int

from metaspike.app.compare import compare
from metaspike.app.config import RunConfig
from metaspike.app.tables import comparison_csv, one_decimal
from metaspike.continual.results import atomic_write_text


def _label(rule: str, setting: str) -> str:
    """The row label: the rule, then compare's setting without its own ``rule=...`` (``"cascade meta=5:30:30"``)."""
    return " ".join([rule, *(word for word in setting.split() if word != f"rule={rule}")])


def _cell(mean: float, std: float) -> str:
    """``mean±std`` in 14 characters; the mean alone where one seed measured no spread (``n/a`` where undefined)."""
    spread = f"±{one_decimal(std):<5}" if math.isfinite(std) else " " * 6
    return f"{one_decimal(mean):>8}{spread}"


def _table(rows: list[dict], tasks: int) -> str:
    """The printed table: one line per row, the label column as wide as the longest label."""
    keys = ("task 1", f"task {tasks}", "ACC", "forgetting")
    width = max(24, *(len(row["setting"]) + 2 for row in rows))
    lines = [f"{'setting':<{width}}" + "".join(f"{key:>14}" for key in keys)]
    lines += [f"{row['setting']:<{width}}" + "".join(_cell(*row[key]) for key in keys) for row in rows]
    return "\n".join(lines)


def _checked_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, list[tuple[float, ...]]]:
    """Each rule's m settings, the plain BNN (m = 0) first among tanh's, every one checked as its runs' configs are
    before the first run starts: a per-layer m of the wrong length was a traceback after the runs before it."""
    settings = {}
    for rule in ("tanh", "cascade", "switch"):
        metas = list(getattr(args, rule))
        check_distinct(parser, f"--{rule}", metas)
        if any(all(m == 0 for m in meta) for meta in metas):
            parser.error(f"argument --{rule}: m = 0 is the plain BNN, which runs once for every rule; leave it out")
        named: dict[str, tuple[float, ...]] = {}
        for meta in metas:
            try:
                config = replace(RunConfig(), rule=rule, meta=meta)
            except ValueError as err:
                parser.error(f"argument --{rule}: {err}")
            # (one m for every layer is one run however written, 5 or 5,5,5: as the comparison names it)
            name = replace(config, meta=meta[:1]).name if len(set(meta)) == 1 else config.name
            if name in named:  # (5 and 5,5,5: one run, which the comparison refuses when its turn comes)
                parser.error(f"argument --{rule}: {','.join(map(str, named[name]))} and {','.join(map(str, meta))} "
                             f"would be one run ({name}); give each setting once")
            named[name] = meta
        settings[rule] = [(0.0,), *metas] if rule == "tanh" else metas  # the plain BNN, once
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tanh", type=meta_setting, nargs="+", default=[(5.0, 30.0, 30.0)],
                        help="m values for the tanh rule (a number, or one per layer: 5,30,30)")
    parser.add_argument("--cascade", type=meta_setting, nargs="+", default=[(5.0, 30.0, 30.0)],
                        help="m values for the cascade rule")
    parser.add_argument("--switch", type=meta_setting, nargs="+", default=[(0.02,), (0.1,)],
                        help="m values for the switch rule")
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=output_folder, default=RUNS,
                        help="folder of the comparisons and rules.csv (default: %(default)s)")
    args = parser.parse_args()
    check_distinct(parser, "--seeds", args.seeds)
    settings = _checked_settings(parser, args)
    print(machine(), flush=True)
    on = machine_fields()
    rows = []
    for rule, metas in settings.items():
        path, found = compare(replace(RunConfig(), rule=rule), metas, args.seeds, args.out, progress=False)
        rows += [{**row, "setting": _label(rule, row["setting"]), **on} for row in found]  # (compare's rows name it)
        print(f"{rule}: {path}")
    tasks = sum(1 for key in rows[0] if key.startswith("task "))
    print(_table(rows, tasks))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "rules.csv", comparison_csv(rows, ("setting", "rule", "meta", "runs", *on)))
    print(f"table: {out / 'rules.csv'}")


if __name__ == "__main__":
    run_benchmark(main)
