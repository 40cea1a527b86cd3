"""Runs described by a config: build data, scenario, model and optimizer, train, save, plot.

This is the layer where models are chosen (the CLI and examples call it); the trainer itself only
receives a model. One :class:`RunConfig` is everything needed to rerun a run; it is saved as
``config.json``.
"""

from __future__ import annotations

import math
import platform
import statistics
from collections.abc import Sequence
import csv
import io
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

import metaspike
from metaspike.consolidation import check_meta, get_rule
from metaspike.continual.results import RunDirectory, atomic_write_text, latest_good_checkpoint, unique_directory
from metaspike.continual.scenarios import Scenario, available_scenarios, make_scenario
from metaspike.continual.trainer import ContinualResult, ContinualTrainer, TrainerConfig
from metaspike.distributed import init_from_env, sync_batchnorm, world
from metaspike.optim import MetaplasticAdam, param_groups
from metaspike.training import Plugin, TrainingDiverged

__all__ = ["RunConfig", "DEFAULT_META", "DEFAULT_INPUT_META", "default_meta", "parse_meta", "meta_label", "run", "resume", "compare", "build_model", "format_table", "summarize_results", "build_trainer", "train_and_finish", "mean_std", "check_settings", "comparison_csv", "versions"]

#: Default metaplasticity of the CPU main job, per layer: the first (input) layer stays nearly plastic,
#: every later layer is consolidated strongly. Chosen from the sweep in README ("Why the default is what
#: it is"): with ~800 updates per task |W_h| stays small, so the paper's m = 1.35 barely consolidates.
DEFAULT_INPUT_META = 5.0
DEFAULT_META = 30.0


def default_meta(layers: int) -> tuple[float, ...]:
    """The default per-layer ``meta`` for a network with ``layers`` weight layers.

    Example:
        >>> default_meta(3)
        (5.0, 30.0, 30.0)
    """
    return (DEFAULT_INPUT_META,) + (DEFAULT_META,) * (layers - 1)


def parse_meta(text: str) -> tuple[float, ...]:
    """One ``--meta`` setting: a number, or one number per layer joined by ``,`` or ``:``.

    Example:
        >>> parse_meta("5:30:30"), parse_meta("1.35")
        ((5.0, 30.0, 30.0), (1.35,))
    """
    try:
        values = tuple(float(v) for v in text.replace(":", ",").split(","))
    except ValueError:
        raise ValueError(f"--meta {text!r} is not a number or a list of numbers like 5,30,30") from None
    for value in values:
        check_meta(value, "--meta")
    return values


def meta_label(meta: Sequence[float]) -> str:
    """``(5.0, 30.0, 30.0)`` -> ``"5:30:30"``; ``(10.0,)`` -> ``"10"``."""
    return ":".join(f"{m:g}" for m in meta)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; saved as ``config.json``.

    Example:
        >>> RunConfig(meta=(1.35,), tasks=2).name
        'permuted-mnist5k-meta1.35-seed1'
    """

    scenario: str = "permuted"
    datasets: tuple[str, ...] = ("mnist5k",)
    tasks: int = 3
    epochs: int = 20
    hidden: tuple[int, ...] = (512, 512)
    meta: tuple[float, ...] | None = None
    rule: str = "tanh"
    lr: float = 0.005
    weight_decay: float = 0.0
    batch_size: int = 100
    seed: int = 1
    batchnorm: str = "per-task"
    optimizer: str = "per-task"
    split_mode: str = "task"
    device: str = "cpu"
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if self.scenario not in available_scenarios():
            raise ValueError(f"unknown scenario {self.scenario!r}; available: {', '.join(available_scenarios())}")
        for key in ("tasks", "epochs", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.batch_size < 2:
            raise ValueError(f"--batch-size must be >= 2 (BatchNorm needs two samples), got {self.batch_size}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"--hidden must list positive layer widths, got {list(self.hidden)}")
        if self.meta is None:
            object.__setattr__(self, "meta", default_meta(len(self.hidden) + 1))
        if not self.meta:
            raise ValueError("--meta needs one value, or one per layer")
        for m in self.meta:
            check_meta(m, "--meta")
        if len(self.meta) not in (1, len(self.hidden) + 1):
            raise ValueError(
                f"--meta takes one value or one per layer ({len(self.hidden) + 1} for --hidden "
                f"{' '.join(map(str, self.hidden))}), got {len(self.meta)}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"--weight-decay must be a number >= 0, got {self.weight_decay}")
        get_rule(self.rule)
        TrainerConfig(batchnorm=self.batchnorm, optimizer=self.optimizer)  # validates the modes
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device}: CUDA is not available on this machine")

    @property
    def name(self) -> str:
        meta = "-".join(f"{m:g}" for m in self.meta)  # type: ignore[union-attr]
        rule = "" if self.rule == "tanh" else f"-{self.rule}"
        return f"{self.scenario}-{'-'.join(self.datasets)}-meta{meta}{rule}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "meta": self.meta[0] if len(self.meta) == 1 else list(self.meta)}


def build_model(config: RunConfig, scenario: Scenario) -> torch.nn.Module:
    """The paper's binarized MLP sized for ``scenario``: input → hidden... → classes.

    Example:
        >>> s = make_scenario("permuted", ["digits"], tasks=1)
        >>> build_model(RunConfig(hidden=(64,)), s).sizes
        (784, 64, 10)
    """
    from bnn import MLP

    features = math.prod(scenario.input_shape)
    return MLP([features, *config.hidden, scenario.num_classes])


def build_trainer(
    config: RunConfig, model: torch.nn.Module, progress: bool = True, plugins: Sequence[Plugin] = ()
) -> ContinualTrainer:
    """The continual trainer ``config`` describes, for ``model`` (MetaplasticAdam with the config's meta).

    Example:
        >>> trainer = build_trainer(RunConfig(hidden=(32,)), torch.nn.Linear(784, 10), progress=False)
        >>> trainer.config.epochs
        20
    """
    metas: float | Sequence[float] = config.meta[0] if len(config.meta) == 1 else config.meta

    def make_optimizer(m: torch.nn.Module) -> MetaplasticAdam:
        return MetaplasticAdam(param_groups(m, metas), lr=config.lr, weight_decay=config.weight_decay, rule=config.rule)

    trainer_config = TrainerConfig(
        epochs=config.epochs, batch_size=config.batch_size, batchnorm=config.batchnorm,
        optimizer=config.optimizer, seed=config.seed, device=config.device,
    )
    return ContinualTrainer(model, make_optimizer, trainer_config, progress=progress, plugins=plugins)


def _trainer(config: RunConfig, scenario: Scenario, progress: bool) -> ContinualTrainer:
    rank, processes = init_from_env(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config, scenario)
    if processes > 1:
        sync_batchnorm(model)
    return build_trainer(config, model, progress and rank == 0)


def _shared_path(path: Path | None) -> Path:
    """The run directory rank 0 chose, known to every process."""
    if world()[1] == 1:
        return path  # type: ignore[return-value]
    holder = [str(path) if path is not None else None]
    torch.distributed.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def _scenario(config: RunConfig) -> Scenario:
    return make_scenario(config.scenario, config.datasets, config.tasks, config.seed, config.data_dir, config.split_mode)


def train_and_finish(trainer: ContinualTrainer, scenario: Scenario, directory: RunDirectory | None,
                      resume: dict[str, Any] | None, plot: bool) -> ContinualResult:
    """Train, then (on rank 0, which holds the directory) write the final metrics, ``model.pt`` and figures.

    A diverged run raises :class:`TrainingDiverged` naming the directory that keeps what was measured.

    Example:
        >>> train_and_finish(trainer, scenario, RunDirectory.create("runs", "demo", {}), None, plot=True)  # doctest: +SKIP
    """
    try:
        result = trainer.fit(scenario, log=directory, resume=resume)
    except TrainingDiverged as err:
        where = f"; what was measured so far is in {directory.path} (the last good checkpoint is kept)" if directory else ""
        raise TrainingDiverged(f"{err}{where}") from None
    if directory is None:
        return result
    directory.write_metrics(result, complete=True)
    torch.save(trainer.model.state_dict(), directory.path / "model.pt")
    directory.remove_checkpoints()
    if plot:
        from metaspike.plots import plot_run

        plot_run(directory.path)
    return result


def run(config: RunConfig, out: str | Path = "runs", progress: bool = True, plot: bool = True) -> tuple[Path, ContinualResult]:
    """Train one run and write its directory under ``out``; return ``(run directory, result)``.

    Example:
        >>> path, result = run(RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(64,)),
        ...                    out=__import__("tempfile").mkdtemp(), progress=False, plot=False)
        >>> len(result.matrix)
        2
    """
    scenario = _scenario(config)
    trainer = _trainer(config, scenario, progress)
    record = {
        **config.to_dict(),
        "model": f"bnn.MLP({[math.prod(scenario.input_shape), *config.hidden, scenario.num_classes]})",
        "task_boundaries_given": scenario.task_boundaries,
        "batchnorm_effective": config.batchnorm if scenario.task_boundaries and scenario.evaluates_training_tasks else "shared",
        "versions": versions(),
    }
    record["processes"] = world()[1]
    directory = None
    if world()[0] == 0:
        directory = RunDirectory.create(out, config.name, record, {"name": scenario.name, **scenario.definition})
    path = _shared_path(directory.path if directory else None)
    return path, train_and_finish(trainer, scenario, directory, None, plot)


def resume(run_dir: str | Path, progress: bool = True, plot: bool = True) -> tuple[Path, ContinualResult, list[str]]:
    """Continue a killed run from its last good checkpoint; return ``(path, result, warnings)``.

    The final results equal those of an uninterrupted run.

    Example:
        >>> path, result, warnings = resume("runs/permuted-mnist5k-meta10-seed1")  # doctest: +SKIP
    """
    path = Path(run_dir)
    config_file = path / "config.json"
    if not config_file.exists():
        raise ValueError(f"{path} is not a run directory (no config.json)")
    metrics_file = path / "metrics.json"
    if metrics_file.exists() and json.loads(metrics_file.read_text()).get("complete"):
        raise ValueError(f"{path} is already complete; nothing to resume")
    stored = json.loads(config_file.read_text())
    names = {f.name for f in fields(RunConfig)}
    values = {k: v for k, v in stored.items() if k in names}
    values["meta"] = tuple(values["meta"]) if isinstance(values["meta"], list) else (values["meta"],)
    values["datasets"], values["hidden"] = tuple(values["datasets"]), tuple(values["hidden"])
    config = RunConfig(**values)
    state, warnings = latest_good_checkpoint(path)
    scenario = _scenario(config)
    trainer = _trainer(config, scenario, progress)
    directory = RunDirectory(path) if world()[0] == 0 else None
    return path, train_and_finish(trainer, scenario, directory, state, plot), warnings


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std over runs; ``(nan, nan)`` when a value is undefined in any run.

    Example:
        >>> mean_std([1.0, 3.0])
        (2.0, 1.4142135623730951)
    """
    if not values or not all(math.isfinite(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize_results(results: Sequence[ContinualResult]) -> dict[str, tuple[float, float]]:
    """Mean and std over runs of the final accuracy per task, ACC, BWT, FWT, forgetting and seconds.

    Example:
        >>> r = ContinualResult(["a", "b"], matrix=[[90.0, 10.0], [70.0, 95.0]], baseline=[10.0, 10.0], seconds=3.0)
        >>> summarize_results([r])["forgetting"]
        (20.0, 0.0)
    """
    row: dict[str, tuple[float, float]] = {}
    for j in range(len(results[0].matrix[-1])):
        row[f"task {j + 1}"] = mean_std([r.matrix[-1][j] for r in results])
    for key in ("ACC", "BWT", "FWT", "forgetting"):
        row[key] = mean_std([r.metrics[key] for r in results])
    row["seconds"] = mean_std([r.seconds for r in results])
    return row


def check_settings(metas: Sequence[float | Sequence[float]], seeds: Sequence[int]) -> list[tuple[float, ...]]:
    """Validate the settings and seeds of a comparison; each setting becomes a tuple (one or per-layer meta).

    Example:
        >>> check_settings([0, (5, 30, 30)], [1, 2])
        [(0.0,), (5.0, 30.0, 30.0)]
    """
    if not metas:
        raise ValueError("compare needs at least one --meta value")
    settings = [tuple(float(v) for v in m) if isinstance(m, (tuple, list)) else (float(m),) for m in metas]
    for setting in settings:
        for m in setting:
            check_meta(m, "--meta")
    if not seeds:
        raise ValueError("compare needs at least one seed")
    return settings


def comparison_csv(rows: Sequence[dict[str, Any]], labels: Sequence[str] = ("setting", "meta", "runs")) -> str:
    """CSV of comparison rows: the ``labels`` columns, then mean and std of every ``(mean, std)`` value.

    Example:
        >>> print(comparison_csv([{"setting": "meta=0", "meta": "0", "runs": 1, "ACC": (50.0, 0.0)}]), end="")
        setting,meta,runs,ACC_mean,ACC_std
        meta=0,0,1,50.000,0.000
    """
    keys = [k for k in rows[0] if isinstance(rows[0][k], tuple)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*labels, *(f"{k.replace(' ', '')}_{part}" for k in keys for part in ("mean", "std"))])
    for row in rows:
        writer.writerow([*(row[label] for label in labels), *(f"{v:.3f}" for k in keys for v in row[k])])
    return buffer.getvalue()


def versions() -> dict[str, str]:
    """Versions of metaspike, torch and Python, recorded in every run's ``config.json``."""
    return {"metaspike": metaspike.__version__, "torch": torch.__version__, "python": platform.python_version()}


def format_table(rows: list[dict[str, Any]], task_count: int) -> str:
    """Text table of a comparison: final accuracy per task, ACC, BWT, forgetting, time (mean ± std)."""
    cols = [f"task {j + 1}" for j in range(task_count)] + ["ACC", "BWT", "FWT", "forgetting", "seconds"]
    header = f"{'setting':<22}" + "".join(f"{c:>14}" for c in cols)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = []
        for c in cols:
            mean, std = row[c]
            cells.append(f"{'n/a':>14}" if not math.isfinite(mean) else f"{mean:>8.1f} ±{std:>4.1f}")
        lines.append(f"{row['setting']:<22}" + "".join(cells))
    return "\n".join(lines)


def compare(
    base: RunConfig,
    metas: Sequence[float | Sequence[float]],
    seeds: Sequence[int] = (1,),
    out: str | Path = "runs",
    progress: bool = True,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run the same task stream with each ``meta`` setting (a number, or one per layer) and each seed;
    write a table and a figure.

    The comparison directory holds one run directory per setting and seed, ``comparison.csv``
    (mean and std over seeds), ``comparison.json`` and ``comparison.png``.

    Example:
        >>> path, rows = compare(RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(32,)), [0, 5],
        ...                      out=__import__("tempfile").mkdtemp(), progress=False)  # doctest: +SKIP
    """
    settings = check_settings(metas, seeds)
    root = unique_directory(out, f"compare-{base.scenario}-{'-'.join(base.datasets)}")
    rows, first_runs = [], []
    for setting in settings:
        results = []
        for seed in seeds:
            config = replace(base, meta=setting, seed=int(seed))
            path, result = run(config, root, progress=progress, plot=False)
            results.append(result)
            if seed == seeds[0]:
                first_runs.append(path)
        rows.append({"setting": f"meta={meta_label(setting)}", "meta": meta_label(setting), "runs": len(results),
                     **summarize_results(results)})
    table = format_table(rows, len(results[0].task_names))
    atomic_write_text(root / "comparison.csv", comparison_csv(rows))
    atomic_write_text(root / "comparison.txt", table + "\n")
    RunDirectory(root).write_json("comparison.json", {"config": base.to_dict(), "seeds": list(seeds), "rows": rows})
    from metaspike.plots import plot_comparison

    n_tasks = sum(1 for key in rows[0] if key.startswith("task "))
    final = [([row[f"task {j + 1}"][0] for j in range(n_tasks)], [row[f"task {j + 1}"][1] for j in range(n_tasks)])
             for row in rows]
    plot_comparison(first_runs, [r["setting"] for r in rows], root / "comparison.png", final)
    return root, rows
