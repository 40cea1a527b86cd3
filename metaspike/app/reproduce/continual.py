"""Continual-learning reproductions (paper Fig. 2, Table 1, Fig. 3, stream): methods on one task stream.

A :class:`Method` is one line of a comparison (metaplastic BNN, BNN + EWC, joint training, DNN...);
:func:`compare_methods` trains every method with every seed on the same stream, writes one run
directory per run, a CSV with the paper's number beside ours (mean and std over seeds) and a figure.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bnn import MLP
from metaspike.app.config import RunConfig
from metaspike.app.runs import announce_run, build_run_model, build_trainer, train_in_folder
from metaspike.app.tables import comparison_csv, mean_std
from metaspike.checks import unknown_name
from metaspike.continual.baselines import BASELINE_STRENGTHS
from metaspike.continual.scenarios import Scenario, joint, make_scenario
from metaspike.continual.trainer import ContinualResult
from metaspike.files import atomic_write_text

__all__ = ["Method", "run_method", "compare_methods", "summarize", "TABLE_LABELS", "plot_rows"]


@dataclass(frozen=True)
class Method:
    """One compared setting.

    Attributes:
        label: name in tables and figures.
        meta: metaplasticity strength of MetaplasticAdam (0: plain Adam), or one per layer.
        baseline: ``None`` or a baseline's name (:data:`metaspike.continual.baselines.BASELINE_STRENGTHS`: ``"ewc"``,
            ``"ewc-online"``, ``"si"``, ``"random"``).
        strength: the baseline's λ (EWC, random) or c (SI).
        joint: train all tasks at once (the upper bound).
        dnn: full-precision network (real weights, ReLU, BatchNorm) instead of the BNN.

    ``joint`` and ``dnn`` build what the run's :class:`RunConfig` does not describe: its ``config.json`` records them
    under ``"method"``, and :data:`metaspike.app.runs.BUILT_BY_REPRODUCE` lists them, so that ``metaspike train
    --resume`` and :func:`~metaspike.app.runs.load_config` refuse the run (``metaspike reproduce --resume``
    continues it).

    Example:
        >>> Method("EWC", baseline="ewc", strength=5000.0).label
        'EWC'
    """

    label: str
    meta: float | tuple[float, ...] = 0.0
    baseline: str | None = None
    strength: float = 0.0
    joint: bool = False
    dnn: bool = False

    def __post_init__(self) -> None:
        if self.baseline is not None and self.baseline not in BASELINE_STRENGTHS:
            raise ValueError(unknown_name("baseline", self.baseline, BASELINE_STRENGTHS))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def _scenario(config: RunConfig, method: Method) -> Scenario:
    scenario = make_scenario(config.scenario, config.datasets, config.tasks, config.seed, config.data_dir,
                             config.applied_split_mode)
    return joint(scenario) if method.joint else scenario


def run_method(config: RunConfig, method: Method, root: str | Path, progress: bool = False) -> ContinualResult:
    """Train ``method`` on the stream of ``config`` (its seed, sizes, epochs) into the run folder
    ``root/<method>-seed<seed>``; a run a stopped reproduction left there is read back or continued
    (:func:`~metaspike.app.runs.train_in_folder`).

    Example:
        >>> import tempfile
        >>> config = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(32,))
        >>> len(run_method(config, Method("EWC", baseline="ewc", strength=10.0), tempfile.mkdtemp()).matrix)
        2
    """
    metas = method.meta if isinstance(method.meta, tuple) else (method.meta,)
    config = replace(config, meta=tuple(float(m) for m in metas), baseline=method.baseline,  # (recorded with the run)
                     baseline_strength=None if method.baseline is None else method.strength)
    scenario = _scenario(config, method)
    torch.manual_seed(config.seed)
    if method.dnn:
        model = MLP([math.prod(scenario.input_shape), *config.hidden, scenario.num_classes],
                    weight_quantizer="none", activation="relu")
    else:
        model = build_run_model(config, scenario)

    trainer = build_trainer(config, model, progress)
    return train_in_folder(Path(root), f"{_slug(method.label)}-seed{config.seed}", config, trainer, scenario,
                           {"method": asdict(method), "scenario_effective": scenario.name})


def summarize(label: str, results: Sequence[ContinualResult], paper: str) -> dict[str, Any]:
    """One table row: paper's number, mean and std over seeds of ACC, first-task accuracy, BWT, forgetting; for a
    stream, whose one test set has no tasks to tell apart, the final accuracy (ACC) alone.

    Example:
        >>> r = ContinualResult(task_names=["a", "b"], matrix=[[90.0, 10.0], [60.0, 95.0]], seconds=1.0)
        >>> summarize("x", [r], "n/a")["task1"]  # one seed: no spread measured
        (60.0, nan)
        >>> s = ContinualResult(task_names=["stream"], matrix=[[40.0], [70.0]], seconds=1.0)
        >>> [key for key in summarize("x", [s], "n/a") if key not in ("setting", "paper", "runs")]
        ['ACC', 'seconds']
    """
    row: dict[str, Any] = {"setting": label, "paper": paper, "runs": len(results)}
    row["ACC"] = mean_std([r.metrics["ACC"] for r in results])
    if any(len(r.task_names) > 1 for r in results):
        row["task1"] = mean_std([r.matrix[-1][0] for r in results])
        row["last_task"] = mean_std([r.matrix[-1][-1] for r in results])
        row["BWT"] = mean_std([r.metrics["BWT"] for r in results])
        row["forgetting"] = mean_std([r.metrics["forgetting"] for r in results])
    row["seconds"] = mean_std([r.seconds for r in results])
    return row


TABLE_LABELS = ("setting", "paper", "runs")
"""The label columns of ``table.csv`` (``paper``: the paper's reported ACC), before the statistics."""


def plot_rows(rows: Sequence[dict[str, Any]], title: str, path: Path) -> Path:
    """Bar chart of ACC and first-task accuracy per setting, with the std over seeds as error bars.

    Example:
        >>> plot_rows(rows, "Table 1", Path("runs/table1.png"))  # doctest: +SKIP
    """
    from metaspike.app.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2.5, 3.6))
    xs = range(len(rows))
    bars = [(key, name) for key, name in (("ACC", "mean accuracy (ACC)"), ("task1", "task 1 after the last task"))
            if key in rows[0]]
    for k, (key, name) in enumerate(bars):
        ax.bar([x + 0.4 * k for x in xs], [r[key][0] for r in rows], 0.4, yerr=[r[key][1] for r in rows],
               label=name, capsize=3)
    ax.set_xticks([x + 0.2 for x in xs], [r["setting"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 115)  # room above the bars for the legend
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def compare_methods(config: RunConfig, methods: Sequence[Method], seeds: Sequence[int], root: Path,
                    paper: dict[str, str], title: str, progress: bool = False) -> list[dict[str, Any]]:
    """Train every method with every seed on the stream of ``config``; write ``table.csv`` and ``figure.png``.

    ``paper`` maps method labels to the paper's number (``"n/a"`` where none is given).

    Example:
        >>> import tempfile
        >>> rows = compare_methods(RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(32,)),
        ...                        [Method("BNN")], [1], Path(tempfile.mkdtemp()), {}, "demo")  # doctest: +SKIP
    """
    rows = []
    total, started = len(methods) * len(seeds), itertools.count(1)
    for method in methods:
        results = []
        for seed in seeds:
            announce_run(next(started), total, f"{title}: {method.label}, seed {seed}", progress)
            results.append(run_method(replace(config, seed=int(seed)), method, root, progress))
        rows.append(summarize(method.label, results, paper.get(method.label, "n/a")))
        atomic_write_text(root / "table.csv", comparison_csv(rows, TABLE_LABELS))  # what is measured so far is kept
    plot_rows(rows, title, root / "figure.png")
    return rows
