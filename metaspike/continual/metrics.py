"""Continual-learning metrics, computed from the accuracy matrix by pure functions.

``R[i, j]`` is the test accuracy on task ``j`` after training task ``i`` (0-based here; the
definitions below are written 1-based as in the literature), ``b[j]`` the accuracy of the untrained
network on task ``j``, ``T`` the number of tasks.

* ACC = (1/T) Σ_j R[T, j]  (Lopez-Paz & Ranzato 2017)
* BWT = 1/(T−1) Σ_{j<T} (R[T, j] − R[j, j]); negative means forgetting (Lopez-Paz & Ranzato 2017)
* FWT = 1/(T−1) Σ_{j>1} (R[j−1, j] − b[j])  (Lopez-Paz & Ranzato 2017)
* forgetting = 1/(T−1) Σ_{j<T} max_{j≤l<T} (R[l, j] − R[T, j]); positive means forgetting (Chaudhry et al. 2018,
  the maximum taken from the row where task ``j`` was trained on, as Mammoth reads it: an accuracy a task had by
  chance before it was trained is nothing it learned)

Metrics that need two tasks or more are ``nan`` for a single task.

A long stream evaluated on a budget leaves cells of ``R`` NaN (not evaluated); the metrics above are
then NaN as well, and these cover the evaluated cells only (as reported for 100- to 1000-task
permuted streams, e.g. by the BiMU paper):

* ``last_tasks_accuracy``: mean final accuracy on the last ``k`` tasks (5 by default);
* ``evaluated_accuracy``: mean final accuracy over the tasks evaluated at the end;
* ``task_accuracy_over_time``: accuracy on one task (task 1 by default) after each evaluated row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["average_accuracy", "backward_transfer", "forward_transfer", "forgetting", "summarize",
           "last_tasks_accuracy", "evaluated_accuracy", "task_accuracy_over_time", "largest_rise", "is_accuracy"]


def is_accuracy(value: object) -> bool:
    """Whether ``value`` is a float percentage in ``[0, 100]``, or NaN (a cell no evaluation filled).

    Example:
        >>> is_accuracy(94.72), is_accuracy(float("nan")), is_accuracy(126.72)
        (True, True, False)
    """
    return isinstance(value, float) and (math.isnan(value) or 0.0 <= value <= 100.0)


def _as_array(matrix: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """``matrix`` as a float array; ``ValueError`` naming the first row whose length differs (a ragged matrix, such as
    the lower triangle of the tasks trained so far: cells not evaluated are NaN)."""
    try:
        return np.asarray(matrix, dtype=float)
    except (ValueError, TypeError):
        rows = [len(row) if isinstance(row, Sequence | np.ndarray) else None for row in matrix]
        ragged = next((i for i, n in enumerate(rows) if n != rows[0]), None)
        if ragged is None:
            raise ValueError("accuracy matrix must hold numbers (one row of accuracies per evaluation)") from None
        raise ValueError(f"accuracy matrix must be rectangular: row {ragged} has {rows[ragged]} cells, row 0 "
                         f"{rows[0]} (give cells not evaluated as nan)") from None


def _square(matrix: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    r = _as_array(matrix)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square T x T with T >= 1, got shape {r.shape}")
    return r


def _matrix(matrix: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    r = _as_array(matrix)
    if r.ndim != 2 or r.size == 0:
        raise ValueError(f"accuracy matrix must be 2-D and non-empty, got shape {r.shape}")
    return r


def _final_row(matrix: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    return _matrix(matrix)[-1]


def average_accuracy(matrix: Sequence[Sequence[float]] | np.ndarray) -> float:
    """ACC: mean accuracy over all tasks after the last one (last row of any R).

    Example:
        >>> average_accuracy([[90, 10], [60, 95]])
        77.5
    """
    return float(_final_row(matrix).mean())


def backward_transfer(matrix: Sequence[Sequence[float]] | np.ndarray) -> float:
    """BWT: mean change of each earlier task's accuracy from just after learning it to the end.

    Example:
        >>> backward_transfer([[90, 10], [60, 95]])
        -30.0
    """
    r = _square(matrix)
    t = len(r)
    if t < 2:
        return math.nan
    return float(np.mean([r[-1, j] - r[j, j] for j in range(t - 1)]))


def forward_transfer(matrix: Sequence[Sequence[float]] | np.ndarray, baseline: Sequence[float]) -> float:
    """FWT: mean accuracy on each task just before learning it, above the untrained network's.

    Example:
        >>> forward_transfer([[90, 10], [60, 95]], baseline=[10, 12])
        -2.0
    """
    r = _square(matrix)
    b = np.asarray(baseline, dtype=float)
    if b.shape != (len(r),):
        raise ValueError(f"baseline must hold one accuracy per task ({len(r)}), got shape {b.shape}")
    if len(r) < 2:
        return math.nan
    return float(np.mean([r[j - 1, j] - b[j] for j in range(1, len(r))]))


def forgetting(matrix: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Forgetting (Chaudhry et al. 2018): mean drop from each earlier task's best accuracy since it was learned to its
    final one.

    The best is taken over the rows from the one where the task was trained (as Mammoth does; Avalanche takes that
    row alone: an accuracy the untrained network had, 50 % on a two-class task, is not a skill to forget), over the
    evaluated cells (``nan`` marks the others: tasks not yet trained, under an evaluation budget), so it needs each
    earlier task evaluated right after it was learned and at the end; ``nan`` otherwise.

    Example:
        >>> forgetting([[90, 10], [60, 95]])
        30.0
        >>> nan = float("nan")
        >>> forgetting([[90, nan, nan], [80, 70, nan], [75, 60, 95]]), forgetting([[nan, nan], [60, 95]])
        (12.5, nan)
        >>> forgetting([[90, 80, 10], [85, 50, 10], [85, 50, 95]])  # task 2 never got above its 50 %: no forgetting
        2.5
    """
    r = _square(matrix)
    t = len(r)
    if t < 2:
        return math.nan
    drops = [np.nanmax(r[j: t - 1, j]) - r[-1, j] if np.isfinite(r[j, j]) else math.nan for j in range(t - 1)]
    return float(np.mean(drops))


def last_tasks_accuracy(matrix: Sequence[Sequence[float]] | np.ndarray, k: int = 5) -> float:
    """Mean final accuracy on the last ``k`` tasks (all of them in a stream of fewer than ``k``; ``nan`` if one of them
    was not evaluated at the end).

    Example:
        >>> last_tasks_accuracy([[90, float("nan"), float("nan")], [60, 80, 95]], k=2)
        87.5
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return float(_final_row(matrix)[-k:].mean())


def evaluated_accuracy(matrix: Sequence[Sequence[float]] | np.ndarray) -> tuple[float, int]:
    """Mean final accuracy over the tasks evaluated at the end, and how many tasks that is.

    Example:
        >>> evaluated_accuracy([[90, float("nan")], [float("nan"), 95]])
        (95.0, 1)
    """
    row = _final_row(matrix)
    covered = np.isfinite(row)
    return (float(row[covered].mean()) if covered.any() else math.nan), int(covered.sum())


def task_accuracy_over_time(matrix: Sequence[Sequence[float]] | np.ndarray, task: int = 0) -> list[tuple[int, float]]:
    """``(after_task, accuracy)`` on task ``task`` (0-based column) for every row where it was evaluated.

    ``after_task`` counts trained tasks from 1 (row ``i`` is after task ``i + 1``).

    Example:
        >>> task_accuracy_over_time([[90, 10], [float("nan"), 50], [70, 95]])
        [(1, 90.0), (3, 70.0)]
    """
    r = _matrix(matrix)
    if isinstance(task, bool) or not isinstance(task, (int, np.integer)) or not 0 <= task < r.shape[1]:
        raise ValueError(f"task must be a column index in 0..{r.shape[1] - 1}, got {task!r}")
    return [(i + 1, float(a)) for i, a in enumerate(r[:, task]) if math.isfinite(a)]


def largest_rise(matrix: Sequence[Sequence[float]] | np.ndarray, baseline: Sequence[float]) -> float:
    """The largest rise of an evaluated accuracy ``R[i, j]`` over the untrained network's on that task, ``b[j]``
    (``nan`` where no cell and its baseline were measured): how much the run learned at its best.

    Example:
        >>> largest_rise([[60, 12], [40, 70]], [10, 11])
        59.0
    """
    r = _matrix(matrix)
    b = np.asarray(baseline, dtype=float)
    if b.ndim != 1 or b.shape[0] != r.shape[1]:
        raise ValueError(f"baseline must hold one accuracy per task ({r.shape[1]}), got shape {b.shape}")
    rises = r - b
    measured = np.isfinite(rises)
    return float(rises[measured].max()) if measured.any() else math.nan


def summarize(matrix: Sequence[Sequence[float]] | np.ndarray, baseline: Sequence[float] | None = None,
              aligned: bool = True) -> dict[str, float]:
    """All metrics of an accuracy matrix as a dict (``nan`` where undefined). ``aligned=False`` says that column ``j``
    is not the task trained ``j``-th (a scenario evaluated on other tasks, or on its tasks in another order): BWT,
    FWT and forgetting, which pair them, are then ``nan`` too.

    A matrix whose last row has cells not evaluated (NaN: an evaluation budget) also gets the metrics of its evaluated
    cells: ``evaluated_accuracy`` and ``evaluated_tasks`` (their count), ``last5_accuracy``, and ``task1_accuracy``
    (final accuracy on task 1). (Where only earlier rows have such cells, tasks not yet trained under a growing head
    or rows skipped by ``eval_every``, these would repeat ACC.)

    Example:
        >>> summarize([[90, 10], [60, 95]], baseline=[10, 12])["BWT"]
        -30.0
        >>> summarize([[90, float("nan")], [float("nan"), 95]])["evaluated_tasks"]
        1.0
    """
    r = _as_array(matrix)
    square = aligned and r.ndim == 2 and r.shape[0] == r.shape[1]
    partial: dict[str, float] = {}
    if r.ndim == 2 and r.size and not np.isfinite(r[-1]).all():
        mean, count = evaluated_accuracy(r)
        partial = {"evaluated_accuracy": mean, "evaluated_tasks": float(count),
                   "last5_accuracy": last_tasks_accuracy(r, 5), "task1_accuracy": float(r[-1, 0])}
    return {
        "ACC": average_accuracy(r),
        "BWT": backward_transfer(r) if square else math.nan,
        "FWT": forward_transfer(r, baseline) if square and baseline is not None else math.nan,
        "forgetting": forgetting(r) if square else math.nan,
        **partial,
    }
