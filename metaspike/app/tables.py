"""Summaries over runs and the one table writer of comparisons (text table and CSV).

A comparison row is a dict: label columns (``setting``, ``meta``, ``runs``, ...) and ``(mean, std)``
pairs for each measured quantity (each task's final accuracy, ACC, BWT, FWT, forgetting, seconds).
"""

from __future__ import annotations

import math
import platform
import statistics
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

import torch

import metaspike
from metaspike.continual.trainer import ContinualResult
from metaspike.files import csv_text
from metaspike.rules import check_meta

__all__ = ["mean_std", "summarize_results", "check_settings", "comparison_csv", "format_table", "format_matrix", "last_task_column", "versions",
           "decimal_text", "one_decimal"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std over runs; ``(nan, nan)`` when a value is undefined in any run, std ``nan``
    for a single run (no spread was measured).

    Example:
        >>> mean_std([1.0, 3.0])
        (2.0, 1.4142135623730951)
    """
    if not values or not all(math.isfinite(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarize_results(results: Sequence[ContinualResult]) -> dict[str, tuple[float, float]]:
    """Mean and std over runs of the final accuracy per task, ACC, BWT, FWT, forgetting and seconds.

    Example:
        >>> r = ContinualResult(["a", "b"], matrix=[[90.0, 10.0], [70.0, 95.0]], baseline=[10.0, 10.0], seconds=3.0)
        >>> summarize_results([r])["forgetting"][0]
        20.0
    """
    row: dict[str, tuple[float, float]] = {}
    for j in range(len(results[0].matrix[-1])):
        row[f"task {j + 1}"] = mean_std([r.matrix[-1][j] for r in results])
    for key in ("ACC", "BWT", "FWT", "forgetting"):
        row[key] = mean_std([r.metrics[key] for r in results])
    if all(key in r.metrics for r in results for key in BUDGET_METRICS):  # a long stream's evaluated tasks
        for key, label in BUDGET_METRICS.items():
            row[label] = mean_std([r.metrics[key] for r in results])
    row["seconds"] = mean_std([r.seconds for r in results])
    return row


#: The metrics of a long stream's evaluated tasks (:func:`metaspike.continual.metrics.summarize`; under an evaluation
#: budget ACC and forgetting, which need every task, are undefined), as table columns: the mean accuracy over the
#: evaluated tasks and over the last five.
BUDGET_METRICS = {"evaluated_accuracy": "evaluated", "last5_accuracy": "last 5"}
#: Beyond this many tasks, a text table shows the first and last task's accuracy only (the CSV keeps them all).
TABLE_TASKS = 10


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
    if len(set(settings)) != len(settings):
        raise ValueError(f"--meta must list distinct settings, got {[list(s) for s in settings]}")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must list one or more distinct integers, got {seeds}")
    return settings


def comparison_csv(rows: Sequence[dict[str, Any]], labels: Sequence[str] = ("setting", "meta", "runs")) -> str:
    """CSV of comparison rows: the ``labels`` columns, then mean and std of every ``(mean, std)`` value
    (an empty cell where a value is undefined), to three decimals, or three significant digits for a value below 0.01
    (fig5cde's loss increases: 0.0075 ± 0.00045 read 0.008 ± 0.000).

    Example:
        >>> print(comparison_csv([{"setting": "meta=0", "meta": "0", "runs": 2, "ACC": (50.0, 1.0),
        ...                        "loss": (0.0075, 0.00045)}]), end="")
        setting,meta,runs,ACC_mean,ACC_std,loss_mean,loss_std
        meta=0,0,2,50.000,1.000,0.00750,0.000450
    """
    keys = [k for k in rows[0] if isinstance(rows[0][k], tuple)]
    header = [*labels, *(f"{k.replace(' ', '')}_{part}" for k in keys for part in ("mean", "std"))]
    body = [[*(row[label] for label in labels), *(_csv_number(v) for k in keys for v in row[k])] for row in rows]
    return csv_text([header, *body])


def _csv_number(value: float) -> str:
    """A comparison CSV's cell: :func:`decimal_text` to three decimals, or to three significant digits below 0.01 (where
    the decimals would hide it), binary noise below 1e-9 dropped and halves rounded away from zero as there; empty
    where undefined.

    Example:
        >>> _csv_number(0.1 + 0.2 - 0.3), _csv_number(0.003385), _csv_number(6.7e-8), _csv_number(float("nan"))
        ('0.000', '0.00339', '0.0000000670', '')
    """
    if not math.isfinite(value):
        return ""
    kept = round(value, 9)
    if kept == 0 or abs(kept) >= 0.01:
        return decimal_text(value, 3)
    return format(Decimal(decimal_text(value, 2 - math.floor(math.log10(abs(kept))))), "f")


def last_task_column(rows: Sequence[dict[str, Any]]) -> str:
    """The column of comparison rows that holds the last task's final accuracy (``"task N"``).

    Example:
        >>> last_task_column([{"setting": "m=0", "task 1": (50.0, 1.0), "task 2": (90.0, 1.0)}])
        'task 2'
    """
    return f"task {sum(1 for key in rows[0] if key.startswith('task '))}"


def format_table(rows: Sequence[dict[str, Any]], task_count: int) -> str:
    """Text table of a comparison: final accuracy per task (the first and the last beyond :data:`TABLE_TASKS`
    tasks), ACC, BWT, FWT, forgetting, a long stream's means over its evaluated tasks where every row has them
    (:data:`BUDGET_METRICS`; a column that repeats ACC in every row, where every task was evaluated at the end, is left
    out), time (mean ± std; the ± is left out where one run gave no spread).

    Example:
        >>> print(format_table([{"setting": "m=0", "task 1": (50.0, math.nan), "ACC": (50.0, math.nan),
        ...     "BWT": (0.0, math.nan), "FWT": (math.nan, math.nan), "forgetting": (0.0, math.nan),
        ...     "seconds": (1.0, math.nan)}], 1).splitlines()[2])
        m=0                             50.0          50.0           0.0           n/a           0.0           1.0
    """
    shown = range(task_count) if task_count <= TABLE_TASKS else (0, task_count - 1)
    budget = [label for label in BUDGET_METRICS.values()
              if all(label in row for row in rows) and any(row[label][0] != row["ACC"][0] for row in rows)]
    cols = [f"task {j + 1}" for j in shown] + ["ACC", "BWT", "FWT", "forgetting", *budget, "seconds"]
    width = max(22, *(len(row["setting"]) + 2 for row in rows))  # the longest label, e.g. "self-recurrent+bimu meta=0"
    cells = [[_mean_std_text(*row[c]) for c in cols] for row in rows]
    widths = [max(14, *(len(line[k].lstrip()) + 1 for line in cells)) for k in range(len(cols))]  # (wide cells widen)
    header = f"{'setting':<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(cols, widths))
    lines = [header, "-" * len(header)]
    lines += [f"{row['setting']:<{width}}" + "".join(f"{cell:>{w}}" for cell, w in zip(line, widths))
              for row, line in zip(rows, cells)]
    return "\n".join(lines)


def decimal_text(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals, a half rounded away from zero as by hand: a mean of 33.8 and 33.9 is 33.85
    in decimal but 33.849999999999994 in binary, which ``f"{x:.1f}"`` shows as 33.8 (binary noise below 1e-9 is
    dropped first).

    Example:
        >>> decimal_text((33.8 + 33.9) / 2, 1), f"{(33.8 + 33.9) / 2:.1f}", decimal_text(-2.25, 1), decimal_text(7.0, 3)
        ('33.9', '33.8', '-2.3', '7.000')
        >>> decimal_text(1e30, 1), decimal_text(float("nan"), 1)
        ('1000000000000000000000000000000.0', 'nan')
    """
    if not math.isfinite(value):
        return str(value)
    with localcontext() as context:
        context.prec = 400  # (every digit of the largest float and its decimals)
        exact = Decimal(repr(round(value, 9)))
        return str(exact.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def one_decimal(value: float, plus: bool = False) -> str:
    """``value`` as every table of a comparison shows it: one decimal (:func:`decimal_text`), ``n/a`` where undefined;
    ``plus`` writes a ``+`` before a value that is not negative.

    Example:
        >>> one_decimal(12.25), one_decimal(0.5, plus=True), one_decimal(-2.25, plus=True), one_decimal(float("nan"))
        ('12.3', '+0.5', '-2.3', 'n/a')
    """
    if not math.isfinite(value):
        return "n/a"
    text = decimal_text(value, 1)
    return "+" + text if plus and not text.startswith("-") else text


def _mean_std_text(mean: float, std: float) -> str:
    """A table cell: ``mean ± std`` with one decimal, the mean alone where one run gave no spread, ``n/a`` where
    undefined."""
    if not (math.isfinite(mean) and math.isfinite(std)):
        return one_decimal(mean)
    return f"{one_decimal(mean):>8} ±{one_decimal(std):>4}"


def format_matrix(name: str, matrix: Sequence[Sequence[float]]) -> str:
    """An accuracy matrix as text, one line per task trained.

    Example:
        >>> print(format_matrix("meta = 0", [[90.0, 10.0], [40.0, 91.5]]))
        meta = 0: accuracy (%) after task i (rows) on task j (columns)
          after task 1:  90.0   10.0
          after task 2:  40.0   91.5
    """
    lines = [f"{name}: accuracy (%) after task i (rows) on task j (columns)"]
    lines += [f"  after task {i}: " + "  ".join(f"{a:5.1f}" for a in row) for i, row in enumerate(matrix, 1)]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """Versions of metaspike, torch and Python, recorded in every run's ``config.json``.

    Example:
        >>> sorted(versions())
        ['metaspike', 'python', 'torch']
    """
    return {"metaspike": metaspike.__version__, "torch": torch.__version__, "python": platform.python_version()}
