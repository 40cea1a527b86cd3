"""Run directories: every result file written atomically as soon as it is known.

A run directory holds ``config.json`` (everything needed to rerun it), ``scenario.json`` (the exact
task definitions: permutations, class groups, subsets), ``accuracy_matrix.csv`` (row i: after
training task i; column j: test accuracy on task j, percent), ``curves.csv`` (one row per epoch),
``metrics.json`` (ACC, BWT, FWT, forgetting, layers ranked by plasticity), ``hidden_weights.json``
(histograms per layer after each task), ``diagnostics.csv`` (per epoch and layer: sign-flip rate and
fraction of consolidated synapses) and, while the run goes on, ``checkpoint.pt`` (and the one before, ``checkpoint.prev.pt``)
to resume it from. Files are replaced atomically (temporary file, then rename), so a run that dies leaves
the last complete version of each, and a new run never writes into an existing directory.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from metaspike.continual.trainer import ContinualResult
from metaspike.diagnostics import plasticity_ranking
from metaspike.files import atomic_open, atomic_write_text, csv_text

__all__ = [
    "RunDirectory", "load_run", "load_checkpoint", "latest_good_checkpoint", "unique_directory",
]

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def unique_directory(root: str | os.PathLike, name: str) -> Path:
    """Create and return ``root/name`` (``root/name-2``, ``-3`` ... when taken); never reuses one.

    Raises ``ValueError`` with the reason when ``root`` cannot be written.

    Example:
        >>> import tempfile
        >>> unique_directory(tempfile.mkdtemp(), "run").name
        'run'
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 10_000):
            path = root / (name if attempt == 1 else f"{name}-{attempt}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            probe = path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
            return path
    except OSError as err:
        raise ValueError(f"cannot write results to {root}: {err.strerror or err}") from None
    raise ValueError(f"too many runs named {name!r} in {root}")


class RunDirectory:
    """Writes a run's results into its own directory (see module docs for the files).

    Example:
        >>> import tempfile
        >>> run = RunDirectory.create(tempfile.mkdtemp(), "demo", config={"meta": 1.35})
        >>> (run.path / "config.json").exists()
        True
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, root: str | os.PathLike, name: str, config: dict[str, Any], scenario: dict[str, Any] | None = None) -> "RunDirectory":
        """Make a new run directory under ``root`` and write its config (and scenario definition)."""
        run = cls(unique_directory(root, name))
        run.write_json("config.json", config)
        if scenario is not None:
            run.write_json("scenario.json", scenario)
        return run

    def write_json(self, name: str, data: Any) -> Path:
        path = self.path / name
        atomic_write_text(path, json.dumps(_json_ready(data), indent=2) + "\n")
        return path

    def epoch_done(self, result: ContinualResult) -> None:
        """Rewrite ``curves.csv`` and ``diagnostics.csv`` (one row per epoch so far), atomically."""
        for name, rows in (("curves.csv", result.curves), ("diagnostics.csv", result.diagnostics)):
            if rows:
                header = list(rows[0])
                body = [[r[k] if not isinstance(r[k], float) else round(r[k], 6) for k in header] for r in rows]
                atomic_write_text(self.path / name, csv_text([header] + body))

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Save a trainer checkpoint as ``checkpoint.pt``; the previous one is kept as ``checkpoint.prev.pt``.

        The new file is complete on disk before it replaces anything, so a kill at any moment
        leaves at least one good checkpoint.
        """
        path = self.path / CHECKPOINT
        if path.exists():  # keep the newest good one: a hard link, so CHECKPOINT stays in place meanwhile
            previous = self.path / PREVIOUS_CHECKPOINT
            previous.unlink(missing_ok=True)
            try:
                os.link(path, previous)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, previous)
        with atomic_open(path, "wb") as handle:
            torch.save(state, handle)

    def remove_checkpoints(self) -> None:
        """Delete the checkpoints of a finished run (its final weights are in ``model.pt``)."""
        for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
            (self.path / name).unlink(missing_ok=True)

    def task_done(self, result: ContinualResult) -> None:
        """Write the accuracy matrix so far, histograms and metrics (marked incomplete)."""
        self.write_matrix(result)
        self.write_json("hidden_weights.json", result.histograms)
        self.write_metrics(result, complete=False)

    def write_matrix(self, result: ContinualResult) -> None:
        rows = [["after_task"] + result.task_names]
        rows += [[i + 1] + [round(a, 2) for a in accs] for i, accs in enumerate(result.matrix)]
        atomic_write_text(self.path / "accuracy_matrix.csv", csv_text(rows))

    def write_metrics(self, result: ContinualResult, complete: bool = True) -> None:
        metrics = {k: round(v, 3) if math.isfinite(v) else v for k, v in result.metrics.items()}
        last_task = [{k.split(":", 1)[1]: v for k, v in row.items() if k.startswith("flip_rate:")}
                     for row in result.diagnostics if row["task"] == len(result.matrix)]
        self.write_json(
            "metrics.json",
            {**metrics, "final_accuracy": [round(a, 2) for a in result.matrix[-1]] if result.matrix else [],
             "untrained_accuracy": [round(a, 2) for a in result.baseline],
             "tasks_trained": len(result.matrix), "seconds": round(result.seconds, 1),
             "layer_plasticity_last_task": [{"layer": layer, "mean_flip_rate": rate}
                                            for layer, rate in plasticity_ranking(last_task)],
             "complete": complete},
        )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file with ``torch.load(..., weights_only=True)``.

    Raises ``ValueError`` naming the file when it is missing, truncated or corrupt.

    Example:
        >>> state = load_checkpoint("runs/permuted-mnist5k-meta10-seed1/checkpoint.pt")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({reason[:120]})") from None
    if not isinstance(state, dict) or "position" not in state:
        raise ValueError(f"checkpoint {path} is not a metaspike checkpoint")
    return state


def latest_good_checkpoint(run_dir: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """The newest loadable checkpoint of a run directory, and warnings about damaged newer ones.

    Example:
        >>> state, warnings = latest_good_checkpoint("runs/permuted-mnist5k-meta10-seed1")  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    warnings: list[str] = []
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        if (run_dir / name).exists():
            try:
                return load_checkpoint(run_dir / name), warnings
            except ValueError as err:
                warnings.append(str(err))
    if warnings:
        raise ValueError("; ".join(warnings) + "; no usable checkpoint left")
    raise ValueError(f"{run_dir} has no checkpoint to resume from")


def load_run(path: str | os.PathLike) -> dict[str, Any]:
    """Read a run directory back: config, task names, matrix, curves, metrics, histograms.

    Example:
        >>> run = load_run("runs/latest")  # doctest: +SKIP
    """
    path = Path(path)
    if not (path / "accuracy_matrix.csv").exists():
        raise ValueError(f"{path} is not a run directory (no accuracy_matrix.csv)")
    with open(path / "accuracy_matrix.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    curves = []
    if (path / "curves.csv").exists():
        with open(path / "curves.csv", newline="") as handle:
            curves = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]

    def read_json(name: str) -> Any:
        file = path / name
        return json.loads(file.read_text()) if file.exists() else None

    return {
        "path": path,
        "config": read_json("config.json") or {},
        "task_names": rows[0][1:],
        "matrix": [[float(v) for v in row[1:]] for row in rows[1:]],
        "curves": curves,
        "metrics": read_json("metrics.json") or {},
        "histograms": read_json("hidden_weights.json") or [],
    }
