"""Reproductions of the paper's experiments (Laborieux et al. 2021) at CPU or paper scale.

``metaspike reproduce NAME [--scale cpu|paper] [--seeds ...] [--out DIR]`` calls :func:`reproduce`;
see :mod:`metaspike.reproduce.experiments` for the settings and REPRODUCTION.md for the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaspike.app.reproduce.experiments import EXPERIMENTS, get_experiment
from metaspike.app.reproduce.scales import SCALES
from metaspike.checks import MAX_SEED
from metaspike.continual.results import unique_directory

__all__ = ["reproduce", "EXPERIMENTS", "SCALES"]


def reproduce(name: str, scale: str = "cpu", seeds: Sequence[int] = (1,), out: str | Path = "runs",
              progress: bool = False, data_dir: str | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Run experiment ``name`` at ``scale`` with each seed; return ``(results folder, table rows)``.

    The folder ``out/reproduce-NAME-SCALE`` (``-2``... if taken) gets ``table.csv`` (the paper's
    number beside ours), a figure and, for training experiments, one run directory per run.
    ``data_dir`` is where the full datasets of ``scale="paper"`` are read from (see
    :func:`metaspike.data.default_data_dir`).

    Example:
        >>> root, rows = reproduce("fig5ab", seeds=[1, 2, 3], out="runs")  # doctest: +SKIP
        >>> [row["setting"] for row in rows]  # doctest: +SKIP
        ['m=0', 'm=0.5', 'm=1', 'm=1.35']
    """
    experiment = get_experiment(name)
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; available: {', '.join(SCALES)}")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or not all(0 <= s <= MAX_SEED for s in seeds):
        raise ValueError(f"--seeds must list one or more distinct integers in 0..{MAX_SEED}, got {seeds}")
    root = unique_directory(out, f"reproduce-{name}-{scale}")
    try:
        return root, experiment.run(scale, seeds, root, progress, data_dir)
    except BaseException:
        _remove_empty(root)  # e.g. missing data files: leave no empty results folder behind
        raise


def _remove_empty(root: Path) -> None:
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if not any(root.iterdir()):
        root.rmdir()
