"""The consolidation rules side by side on the main job's stream: tanh (the paper's), cascade, switch.

    OMP_NUM_THREADS=1 python benchmarks/rules_forgetting.py          # about 10 minutes on 2 cores

Each rule runs with the m values given for it (``--tanh``, ``--cascade``, ``--switch``; m = 0 is the plain
BNN for every rule) on 3 permutations of mnist5k, 784-512-512-10, 20 epochs per task, seeds 1-3. Prints one
table (first task after the last, last task, ACC, forgetting: mean ± std over seeds) and writes it to
``--out``/rules.csv.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from metaspike.app.compare import compare
from metaspike.app.config import RunConfig, parse_meta
from metaspike.app.tables import comparison_csv
from metaspike.continual.results import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tanh", nargs="+", default=["5,30,30"], help="m values for the tanh rule")
    parser.add_argument("--cascade", nargs="+", default=["5,30,30"], help="m values for the cascade rule")
    parser.add_argument("--switch", nargs="+", default=["0.02", "0.1"], help="m values for the switch rule")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default="benchmarks/results/runs")
    args = parser.parse_args()
    rows = []
    for rule in ("tanh", "cascade", "switch"):
        metas = [parse_meta(m) for m in getattr(args, rule)]
        if rule == "tanh":
            metas = [(0.0,), *metas]  # the plain BNN, once
        path, found = compare(replace(RunConfig(), rule=rule), metas, args.seeds, args.out, progress=False)
        rows += [{**row, "setting": f"{rule} {row['setting']}", "rule": rule} for row in found]
        print(f"{rule}: {path}")
    tasks = sum(1 for key in rows[0] if key.startswith("task "))
    print(f"{'setting':<24}{'task 1':>14}{f'task {tasks}':>14}{'ACC':>14}{'forgetting':>14}")
    for row in rows:
        cells = "".join(f"{row[k][0]:>8.1f}±{row[k][1]:<5.1f}" for k in ("task 1", f"task {tasks}", "ACC", "forgetting"))
        print(f"{row['setting']:<24}{cells}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "rules.csv", comparison_csv(rows, ("setting", "rule", "meta", "runs")))
    print(f"table: {out / 'rules.csv'}")


if __name__ == "__main__":
    main()
