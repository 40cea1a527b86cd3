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

A long stream leaves cells of ``R`` NaN (not evaluated): every cell of the rows of tasks trained without an evaluation
(``eval_every``), and under an evaluation budget the cells of the tasks it left out; the metrics above that read such
a cell are then NaN as well, and these cover the evaluated cells only (as reported for 100- to 1000-task permuted
streams, e.g. by the BiMU paper):

* ``last_tasks_accuracy``: mean final accuracy on the last ``k`` tasks (5 by default);
* ``evaluated_accuracy``: mean final accuracy over the tasks evaluated at the end;
* ``task_accuracy_over_time``: accuracy on one task (task 1 by default) after each evaluated row.

The rows of tasks trained without an evaluation are one shared all-NaN tuple in a long stream's matrix: every function
here reads each distinct row object once (:func:`matrix_rows`), so a metric costs memory for the evaluated rows and
time for them and one step per row, not for (tasks trained) x (tasks) cells.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from metaspike.checks import is_whole
from metaspike.training import LEARNED_MARGIN, LearnedNothingWarning

__all__ = ["average_accuracy", "backward_transfer", "forward_transfer", "forgetting", "summarize",
           "last_tasks_accuracy", "evaluated_accuracy", "task_accuracy_over_time", "largest_rise", "is_accuracy",
           "matrix_rows", "evaluated_rows", "LONG_STREAM_TASKS", "LEARNED_MARGIN", "learned_nothing",
           "tasks_learned_nothing", "LearnedNothingWarning"]

Matrix = Sequence[Sequence[float]] | np.ndarray

#: A stream of more tasks than this is a long stream: :func:`summarize` adds the metrics of its evaluated tasks, and
#: ``metaspike train`` prints those instead of one column per task.
LONG_STREAM_TASKS = 10


def is_accuracy(value: object) -> bool:
    """Whether ``value`` is a float percentage in ``[0, 100]``, or NaN (a cell no evaluation filled).

    Example:
        >>> is_accuracy(94.72), is_accuracy(float("nan")), is_accuracy(126.72)
        (True, True, False)
    """
    return isinstance(value, float) and (math.isnan(value) or 0.0 <= value <= 100.0)


def _as_accuracies(row: object, what: str = "accuracy matrix") -> np.ndarray:
    """One row of an accuracy matrix (or the untrained accuracies, ``what`` naming them in an error) as a float array
    (the array itself where it is one already): numbers (not text or booleans), each a percentage in ``[0, 100]`` or
    NaN (a cell not evaluated; ``None``, as JSON's ``null`` reads back, is one too)."""
    try:
        values = np.asarray(row)
        if values.dtype.kind == "O":  # (None cells, or numbers of Python's other kinds: Decimal, Fraction)
            cells = values.ravel().tolist()
            if any(isinstance(c, (bool, np.bool_, str, bytes, complex, np.complexfloating)) for c in cells):
                raise TypeError
            values = np.array([math.nan if c is None else float(c) for c in cells]).reshape(values.shape)
        elif values.dtype.kind not in "iuf":
            raise TypeError
        values = values.astype(float, copy=False)
    except (ValueError, TypeError, OverflowError):  # (an integer beyond float's range: no accuracy)
        raise ValueError(f"{what} must hold numbers (" + ("one row of accuracies per evaluation)" if what ==
                         "accuracy matrix" else "one accuracy per task)")) from None
    outside = ~((values >= 0.0) & (values <= 100.0) | np.isnan(values))
    if outside.any():
        raise ValueError(f"{what} must hold percentages in [0, 100] (or NaN where not evaluated), got "
                         f"{float(values[outside][0]):g}")
    return values


def matrix_rows(matrix: Matrix, columns: int | None = None) -> list[np.ndarray]:
    """The rows of an accuracy matrix as 1-D float arrays (the first ``columns`` cells of each, where given), each
    distinct row object converted once: the rows of a long stream's tasks trained without an evaluation, one shared
    all-NaN tuple, stay one array, so the rows take memory for the evaluated ones. A ``ValueError`` names the first row
    whose length differs (a ragged matrix, such as the lower triangle of the tasks trained so far: give the cells not
    evaluated as NaN).

    Example:
        >>> skipped = (float("nan"),) * 3
        >>> rows = matrix_rows([skipped, skipped, [50, 60, 70]], columns=2)
        >>> rows[0] is rows[1], rows[2].tolist()
        (True, [50.0, 60.0])
    """
    converted: dict[int, np.ndarray] = {}
    rows = []
    try:
        for row in matrix:
            if id(row) not in converted:
                converted[id(row)] = _as_accuracies(row)
            rows.append(converted[id(row)])
    except TypeError:  # (not a sequence of rows: a number)
        raise ValueError("accuracy matrix must hold numbers (one row of accuracies per evaluation)") from None
    if not rows or rows[0].ndim != 1 or rows[0].size == 0:
        shape = (len(rows), *rows[0].shape) if rows else (0,)
        raise ValueError(f"accuracy matrix must be 2-D and non-empty, got shape {shape}")
    ragged = next((i for i, row in enumerate(rows) if row.shape != rows[0].shape), None)
    if ragged is not None:
        cells = rows[ragged].shape[0] if rows[ragged].ndim == 1 else "no row of"
        raise ValueError(f"accuracy matrix must be rectangular: row {ragged} has {cells} cells, row 0 "
                         f"{rows[0].shape[0]} (give cells not evaluated as nan)")
    if columns is None:
        return rows
    if not is_whole(columns, 1):
        raise ValueError(f"columns must be None or an integer >= 1, got {columns!r}")
    cut = {id(row): row[:columns] for row in _distinct(rows)}
    return [cut[id(row)] for row in rows]


def _distinct(rows: Iterable[np.ndarray]) -> list[np.ndarray]:
    """Each distinct row object once (a long stream's skipped rows are one)."""
    return list({id(row): row for row in rows}.values())


def _skipped(row: np.ndarray) -> bool:
    """Whether no cell of ``row`` was evaluated (a task trained without an evaluation)."""
    return bool(np.isnan(row).all())


def _any_skipped(rows: Sequence[np.ndarray]) -> bool:
    """Whether one of ``rows`` has no evaluated cell."""
    return any(_skipped(row) for row in _distinct(rows))


def evaluated_rows(matrix: Matrix) -> list[int]:
    """The rows (0-based) of an accuracy matrix with an evaluated cell (not NaN), each distinct row object read once:
    a long stream's rows of tasks trained without an evaluation are left out.

    Example:
        >>> skipped = (float("nan"),) * 2
        >>> evaluated_rows([skipped, [90.0, float("nan")], skipped, [85.0, 92.0]])
        [1, 3]
    """
    rows = matrix_rows(matrix)
    skipped = {id(row): _skipped(row) for row in _distinct(rows)}
    return [i for i, row in enumerate(rows) if not skipped[id(row)]]


def _square(matrix: Matrix) -> list[np.ndarray]:
    rows = matrix_rows(matrix)
    if len(rows) != rows[0].shape[0]:
        raise ValueError(f"accuracy matrix must be square T x T with T >= 1, got shape {(len(rows), rows[0].shape[0])}")
    return rows


def _paired(rows: list[np.ndarray]) -> np.ndarray | None:
    """A square matrix's rows as one array, or ``None`` where BWT, FWT and forgetting are ``nan``: a single task, or a
    row before the last with no evaluated cell (they read every one of those rows: each earlier task right after it
    was learned, or just before), so the array is never made of a long stream's skipped rows."""
    return None if len(rows) < 2 or _any_skipped(rows[:-1]) else np.stack(rows)


def _baseline(baseline: Sequence[float], tasks: int) -> np.ndarray:
    """``baseline`` as an array of one untrained accuracy per task; ``ValueError`` for another shape."""
    if baseline is None:  # (summarize takes None, for no FWT; here the baseline is the point)
        raise ValueError("baseline must hold one untrained accuracy per task, got None")
    b = _as_accuracies(baseline, "baseline")
    if b.shape != (tasks,):
        raise ValueError(f"baseline must hold one accuracy per task ({tasks}), got shape {b.shape}")
    return b


def average_accuracy(matrix: Matrix) -> float:
    """ACC: mean accuracy over all tasks after the last one (last row of any R).

    Example:
        >>> average_accuracy([[90, 10], [60, 95]])
        77.5
    """
    return float(matrix_rows(matrix)[-1].mean())


def backward_transfer(matrix: Matrix) -> float:
    """BWT: mean change of each earlier task's accuracy from just after learning it to the end.

    Example:
        >>> backward_transfer([[90, 10], [60, 95]])
        -30.0
    """
    return _backward_transfer(_paired(_square(matrix)))


def _backward_transfer(r: np.ndarray | None) -> float:
    """BWT of a square matrix made one array by :func:`_paired` (``None``: ``nan``)."""
    if r is None:
        return math.nan
    return float(np.mean([r[-1, j] - r[j, j] for j in range(len(r) - 1)]))


def forward_transfer(matrix: Matrix, baseline: Sequence[float]) -> float:
    """FWT: mean accuracy on each task just before learning it, above the untrained network's.

    Example:
        >>> forward_transfer([[90, 10], [60, 95]], baseline=[10, 12])
        -2.0
    """
    rows = _square(matrix)
    return _forward_transfer(_paired(rows), _baseline(baseline, len(rows)))


def _forward_transfer(r: np.ndarray | None, b: np.ndarray) -> float:
    """FWT of a square matrix made one array by :func:`_paired` (``None``: ``nan``) above the baseline ``b``."""
    if r is None:
        return math.nan
    return float(np.mean([r[j - 1, j] - b[j] for j in range(1, len(r))]))


def forgetting(matrix: Matrix) -> float:
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
    return _forgetting(_paired(_square(matrix)))


def _forgetting(r: np.ndarray | None) -> float:
    """Forgetting of a square matrix made one array by :func:`_paired` (``None``: ``nan``)."""
    if r is None:
        return math.nan
    t = len(r)
    drops = [np.nanmax(r[j: t - 1, j]) - r[-1, j] if np.isfinite(r[j, j]) else math.nan for j in range(t - 1)]
    return float(np.mean(drops))


def last_tasks_accuracy(matrix: Matrix, k: int = 5) -> float:
    """Mean final accuracy on the last ``k`` tasks (all of them in a stream of fewer than ``k``; ``nan`` if one of them
    was not evaluated at the end).

    Example:
        >>> last_tasks_accuracy([[90, float("nan"), float("nan")], [60, 80, 95]], k=2)
        87.5
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return float(matrix_rows(matrix)[-1][-k:].mean())


def evaluated_accuracy(matrix: Matrix) -> tuple[float, int]:
    """Mean final accuracy over the tasks evaluated at the end, and how many tasks that is.

    Example:
        >>> evaluated_accuracy([[90, float("nan")], [float("nan"), 95]])
        (95.0, 1)
    """
    row = matrix_rows(matrix)[-1]
    covered = np.isfinite(row)
    return (float(row[covered].mean()) if covered.any() else math.nan), int(covered.sum())


def task_accuracy_over_time(matrix: Matrix, task: int = 0) -> list[tuple[int, float]]:
    """``(after_task, accuracy)`` on task ``task`` (0-based column) for every row where it was evaluated.

    ``after_task`` counts trained tasks from 1 (row ``i`` is after task ``i + 1``).

    Example:
        >>> task_accuracy_over_time([[90, 10], [float("nan"), 50], [70, 95]])
        [(1, 90.0), (3, 70.0)]
    """
    rows = matrix_rows(matrix)
    width = rows[0].shape[0]
    if isinstance(task, bool) or not isinstance(task, (int, np.integer)) or not 0 <= task < width:
        raise ValueError(f"task must be a column index in 0..{width - 1}, got {task!r}")
    return [(i + 1, float(row[task])) for i, row in enumerate(rows) if math.isfinite(row[task])]


def largest_rise(matrix: Matrix, baseline: Sequence[float]) -> float:
    """The largest rise of an evaluated accuracy ``R[i, j]`` over the untrained network's on that task, ``b[j]``
    (``nan`` where no cell and its baseline were measured): how much the run learned at its best.

    Example:
        >>> largest_rise([[60, 12], [40, 70]], [10, 11])
        59.0
    """
    rows = matrix_rows(matrix)
    b = _baseline(baseline, rows[0].shape[0])
    best = [rises[np.isfinite(rises)].max() for rises in (row - b for row in _distinct(rows))
            if np.isfinite(rises).any()]
    return float(max(best)) if best else math.nan


def summarize(matrix: Matrix, baseline: Sequence[float] | None = None, aligned: bool = True,
              tasks: int | None = None) -> dict[str, float]:
    """All metrics of an accuracy matrix as a dict (``nan`` where undefined). ``aligned=False`` says that column ``j``
    is not the task trained ``j``-th (a scenario evaluated on other tasks, or on its tasks in another order): BWT,
    FWT and forgetting, which pair them, are then ``nan`` too.

    A long stream also gets the metrics of its evaluated cells: ``evaluated_accuracy`` and ``evaluated_tasks`` (their
    count), ``last5_accuracy``, and ``task1_accuracy`` (final accuracy on task 1). A matrix is a long stream's where
    its last row has cells not evaluated (NaN: an evaluation budget), where an earlier row has none evaluated (a task
    trained without an evaluation, ``eval_every``), or where the stream has more than :data:`LONG_STREAM_TASKS` tasks
    (``tasks``: the matrix's columns unless given, as for a matrix cut to the tasks trained so far). Earlier rows with
    only some cells not evaluated (the tasks not yet trained under a growing head) make no long stream.

    Example:
        >>> summarize([[90, 10], [60, 95]], baseline=[10, 12])["BWT"]
        -30.0
        >>> summarize([[90, float("nan")], [float("nan"), 95]])["evaluated_tasks"]
        1.0
        >>> summarize([[90, 10], [60, 95]], tasks=12)["last5_accuracy"]  # the first two tasks of twelve
        77.5
    """
    if tasks is not None and not is_whole(tasks, 1):
        raise ValueError(f"tasks must be None or an integer >= 1, got {tasks!r}")
    rows = matrix_rows(matrix)
    final = rows[-1]
    square = aligned and len(rows) == final.shape[0]
    long_stream = (not np.isfinite(final).all() or _any_skipped(rows[:-1])
                   or (final.shape[0] if tasks is None else tasks) > LONG_STREAM_TASKS)
    evaluated: dict[str, float] = {}
    if long_stream:
        mean, count = evaluated_accuracy(rows)
        evaluated = {"evaluated_accuracy": mean, "evaluated_tasks": float(count),
                     "last5_accuracy": last_tasks_accuracy(rows, 5), "task1_accuracy": float(final[0])}
    paired = _paired(rows) if square else None  # (one array for the three metrics that pair rows and columns)
    return {
        "ACC": average_accuracy(rows),
        "BWT": _backward_transfer(paired),
        "FWT": _forward_transfer(paired, _baseline(baseline, len(rows))) if square and baseline is not None else math.nan,
        "forgetting": _forgetting(paired),
        **evaluated,
    }


def _learned(rise: float) -> bool:
    """Whether an accuracy that rose ``rise`` points above the untrained network's shows learning."""
    return rise >= LEARNED_MARGIN


def tasks_learned_nothing(matrix: Matrix, baseline: Sequence[float]) -> list[int]:
    """The tasks (numbered from 1) whose accuracy right after their own training, where it was evaluated, rose less
    than :data:`LEARNED_MARGIN` points above the untrained network's ``baseline`` (a run may learn its later tasks and
    not its first: a slow start); none where ``matrix`` is not square (a stream's one test set, a run going on) or the
    untrained accuracies were not measured. A task the untrained network already scored within the margin of 100 % (a
    growing head's first task of one class) has no room to show it learned, and is not named.

    Example:
        >>> tasks_learned_nothing([[11.0, 9.0], [12.0, 90.0]], [10.0, 10.0])
        [1]
        >>> tasks_learned_nothing([[100.0, 9.0], [12.0, 90.0]], [100.0, 10.0])
        []
    """
    if len(baseline) != _columns(matrix) or _columns(matrix) != len(matrix):
        return []
    return [j + 1 for j, (row, untrained) in enumerate(zip(matrix, baseline))
            if math.isfinite(row[j]) and math.isfinite(untrained) and not _learned(row[j] - untrained)
            and _learned(100.0 - untrained)]


def learned_nothing(matrix: Matrix, baseline: Sequence[float]) -> bool:
    """Whether no evaluated accuracy of ``matrix`` rose :data:`LEARNED_MARGIN` points or more above the untrained
    network's ``baseline`` on that task (``False`` where the untrained accuracies were not measured).

    Example:
        >>> learned_nothing([[12.0]], [10.0])
        True
    """
    if len(baseline) != _columns(matrix):
        return False
    rise = largest_rise(matrix, baseline)
    return math.isfinite(rise) and not _learned(rise)


def _columns(matrix: Matrix) -> int:
    """The tasks ``matrix`` has columns for (0 for no rows)."""
    return len(matrix[-1]) if len(matrix) else 0
