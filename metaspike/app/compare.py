"""Comparisons: several settings (meta values, neuron models) on the same task stream, one table and figure.

A comparison folder holds ``plan.json`` (what is compared: the base config, the settings, the
seeds), one run directory per (setting, seed), and, when every run is done, ``comparison.csv``,
``comparison.txt``, ``comparison.json`` and a figure. Every number in the table is read back from
the run directories, so a comparison killed at any moment and continued with
:func:`resume_comparison` (``metaspike compare --resume DIR``) gives the same table as one that
never stopped: finished runs are kept, a killed run resumes from its checkpoint, missing runs start.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from metaspike.app.config import RunConfig, meta_label
from metaspike.app.runs import finished_result, load_config, resume, run
from metaspike.app.tables import check_settings, comparison_csv, format_table, summarize_results
from metaspike.continual.results import RunDirectory, unique_directory
from metaspike.continual.trainer import ContinualResult
from metaspike.files import atomic_write_text, read_json

__all__ = ["DEFAULT_NEURONS", "DEFAULT_SNN_META", "SNN_DEFAULTS", "Row", "compare", "compare_neurons",
           "resume_comparison"]

#: CPU defaults of the spiking comparison (all neuron models, 3 permuted mnist5k tasks, on 2 cores).
SNN_DEFAULTS: dict[str, Any] = {"hidden": (256,), "epochs": 2}
#: Metaplasticity strength of the spiking comparison at laptop scale (benchmarks/snn_forgetting.py).
DEFAULT_SNN_META = 50.0
DEFAULT_NEURONS = ("bnn", "leaky", "synaptic", "alpha", "lapicque", "self-recurrent", "norse-lif", "norse-lsnn")
PLAN = "plan.json"


@dataclass(frozen=True)
class Row:
    """One row of a comparison: its label columns and one config per seed."""

    labels: dict[str, Any]
    configs: tuple[RunConfig, ...]


def _meta_rows(base: RunConfig, settings: Sequence[tuple[float, ...]], seeds: Sequence[int]) -> list[Row]:
    return [Row({"setting": f"meta={meta_label(s)}", "meta": meta_label(s)},
                tuple(replace(base, meta=s, seed=int(seed)) for seed in seeds)) for s in settings]


def _neuron_rows(base: RunConfig, neurons: Sequence[str], metas: Sequence[float], seeds: Sequence[int]) -> list[Row]:
    return [Row({"setting": f"{n} meta={m:g}", "neuron": n, "meta": m},
                tuple(replace(base, model=n, meta=(float(m),), seed=int(seed)) for seed in seeds))
            for n in neurons for m in metas]


def _rows(plan: dict[str, Any]) -> list[Row]:
    base = RunConfig(**{**plan["base"], "datasets": tuple(plan["base"]["datasets"]),
                        "hidden": tuple(plan["base"]["hidden"]),
                        "meta": tuple(plan["base"]["meta"]) if isinstance(plan["base"]["meta"], list) else (plan["base"]["meta"],)})
    if plan["kind"] == "neurons":
        return _neuron_rows(base, plan["neurons"], plan["metas"], plan["seeds"])
    return _meta_rows(base, [tuple(s) for s in plan["settings"]], plan["seeds"])


def _run_or_continue(config: RunConfig, root: Path, progress: bool) -> ContinualResult:
    path = root / config.name
    if path.is_dir() and not (path / "config.json").exists():
        shutil.rmtree(path)  # killed before its config was written: nothing measured yet
    if not path.is_dir():
        run(config, root, progress=progress, plot=False, name=config.name)
    elif finished_result(path) is None:
        if load_config(path) != config:
            raise ValueError(f"{path} holds a run of other settings than the comparison plans")
        resume(path, progress=progress, plot=False)
    result = finished_result(path)
    assert result is not None
    return result


def _execute(root: Path, plan: dict[str, Any], progress: bool) -> tuple[Path, list[dict[str, Any]]]:
    rows = []
    first_runs: list[Path] = []
    for row in _rows(plan):
        results = [_run_or_continue(config, root, progress) for config in row.configs]
        first_runs.append(root / row.configs[0].name)
        rows.append({**row.labels, "runs": len(results), **summarize_results(results)})
    labels = ("neuron", "meta", "runs") if plan["kind"] == "neurons" else ("setting", "meta", "runs")
    n_tasks = sum(1 for key in rows[0] if key.startswith("task "))
    atomic_write_text(root / "comparison.csv", comparison_csv(rows, labels))
    atomic_write_text(root / "comparison.txt", format_table(rows, n_tasks) + "\n")
    RunDirectory(root).write_json("comparison.json", {**plan, "rows": rows})
    from metaspike.app import plots

    if plan["kind"] == "neurons":
        plots.plot_forgetting_by_model(rows, root / "forgetting.png")
    else:
        final = [[row[f"task {j + 1}"] for j in range(n_tasks)] for row in rows]
        plots.plot_comparison(first_runs, [r["setting"] for r in rows], root / "comparison.png",
                              [tuple(zip(*f)) for f in final])
    return root, rows


def _start(out: str | Path, name: str, plan: dict[str, Any], progress: bool) -> tuple[Path, list[dict[str, Any]]]:
    root = unique_directory(out, name)
    RunDirectory(root).write_json(PLAN, plan)
    return _execute(root, plan, progress)


def compare(base: RunConfig, metas: Sequence[float | Sequence[float]], seeds: Sequence[int] = (1,),
            out: str | Path = "runs", progress: bool = True) -> tuple[Path, list[dict[str, Any]]]:
    """Run the same task stream with each ``meta`` setting (a number, or one per layer) and each seed.

    Returns ``(comparison folder, rows)``; the folder gets ``comparison.png`` (accuracy curves of the
    first seed, final accuracy per task with mean ± std over seeds).

    Example:
        >>> path, rows = compare(RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(32,)), [0, 5],
        ...                      out=__import__("tempfile").mkdtemp(), progress=False)  # doctest: +SKIP
    """
    settings = check_settings(metas, seeds)
    plan = {"kind": "meta", "base": base.to_dict(), "settings": [list(s) for s in settings], "seeds": [int(s) for s in seeds]}
    return _start(out, f"compare-{base.scenario}-{'-'.join(base.datasets)}", plan, progress)


def compare_neurons(base: RunConfig, neurons: Sequence[str] = DEFAULT_NEURONS, metas: Sequence[float] = (0.0, DEFAULT_SNN_META),
                    seeds: Sequence[int] = (1,), out: str | Path = "runs", progress: bool = True) -> tuple[Path, list[dict[str, Any]]]:
    """Train every neuron model (binary synapses) with every ``meta`` and seed on the same stream.

    Rows have ``setting``, ``neuron``, ``meta``, ``runs`` and ``(mean, std)`` of each task's final
    accuracy, ACC, BWT, FWT, forgetting and seconds; the figure is ``forgetting.png``.

    Example:
        >>> path, rows = compare_neurons(RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(32,)),
        ...     ["bnn", "self-recurrent"], [0, 20], out=__import__("tempfile").mkdtemp(), progress=False)  # doctest: +SKIP
    """
    if not neurons:
        raise ValueError("neurons needs at least one neuron model")
    for neuron in neurons:
        replace(base, model=neuron)  # validates the name
    check_settings(list(metas), seeds)
    plan = {"kind": "neurons", "base": base.to_dict(), "neurons": list(neurons), "metas": [float(m) for m in metas],
            "seeds": [int(s) for s in seeds]}
    return _start(out, f"compare-neurons-{base.scenario}-{'-'.join(base.datasets)}", plan, progress)


def resume_comparison(root: str | Path, progress: bool = True) -> tuple[Path, list[dict[str, Any]]]:
    """Finish a killed comparison: keep finished runs, resume killed ones, start missing ones.

    Example:
        >>> resume_comparison("runs/compare-permuted-mnist5k")  # doctest: +SKIP
    """
    root = Path(root)
    if not (root / PLAN).exists():
        raise ValueError(f"{root} is not a comparison folder (no {PLAN})")
    plan = read_json(root / PLAN)
    try:
        _rows(plan)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{root / PLAN} is not a valid comparison plan ({err})") from None
    return _execute(root, plan, progress)
