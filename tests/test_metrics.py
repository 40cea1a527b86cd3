"""Metrics against a 3x3 accuracy matrix worked by hand."""

import math

import numpy as np
import pytest

from metaspike.continual.metrics import (
    average_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    largest_rise,
    summarize,
)

# R[i][j]: accuracy on task j after training task i. Task 1 peaks after task 2 (95), so
# forgetting (max-based) differs from -BWT (diagonal-based).
R = [
    [90.0, 20.0, 10.0],
    [95.0, 85.0, 15.0],
    [60.0, 75.0, 80.0],
]
B = [10.0, 12.0, 11.0]


def test_acc_is_mean_of_last_row():
    assert average_accuracy(R) == pytest.approx((60 + 75 + 80) / 3)


def test_bwt_sign_and_definition():
    # ((60 - 90) + (75 - 85)) / 2 = -20: negative means forgetting
    assert backward_transfer(R) == pytest.approx(-20.0)


def test_fwt_uses_row_before_each_task():
    # ((R[1,2] - b2) + (R[2,3] - b3)) / 2 = ((20 - 12) + (15 - 11)) / 2 = 6
    assert forward_transfer(R, B) == pytest.approx(6.0)


def test_forgetting_uses_best_earlier_accuracy():
    # task 1: max(90, 95) - 60 = 35; task 2: max(20, 85) - 75 = 10; mean 22.5
    assert forgetting(R) == pytest.approx(22.5)


def test_single_task_metrics_are_undefined():
    values = summarize([[70.0]], [10.0])
    assert values["ACC"] == 70.0
    assert all(math.isnan(values[k]) for k in ("BWT", "FWT", "forgetting"))


def test_rectangular_matrix_gives_acc_only():
    values = summarize([[50.0, 60.0, 70.0]])
    assert values["ACC"] == pytest.approx(60.0) and math.isnan(values["BWT"])


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="square"):
        backward_transfer([[1.0, 2.0]])
    with pytest.raises(ValueError, match="one accuracy per task"):
        forward_transfer(R, [1.0])


def test_largest_rise_covers_evaluated_cells_only():
    nan = math.nan
    # by hand: rises 50-10=40, 20-12=8, 80-12=68 (row 2, task 1 not evaluated)
    assert largest_rise([[50, 20], [nan, 80]], [10, 12]) == 68
    assert math.isnan(largest_rise([[nan]], [10]))
    assert largest_rise([[5, 5]], [10, 10]) == -5  # a run that got worse than chance
    with pytest.raises(ValueError, match=r"baseline must hold one accuracy per task \(2\), got shape \(1,\)"):
        largest_rise([[50, 20]], [10])
    with pytest.raises(ValueError, match="^baseline must hold one untrained accuracy per task, got None$"):
        forward_transfer([[50, 20], [40, 70]], None)  # (summarize takes None; here it was "got shape ()")


def test_a_run_stopped_early_reports_the_tasks_trained_so_far():
    """Two of three tasks trained: ACC averages tasks 1 and 2 after task 2, not the untrained task 3's chance score."""
    from metaspike.continual.trainer import ContinualResult

    result = ContinualResult(task_names=["a", "b", "c"], matrix=[[90.0, 11.0, 10.0], [70.0, 92.0, 9.0]],
                             baseline=[10.0, 10.0, 10.0], training_tasks=3)
    metrics = result.metrics
    assert metrics["ACC"] == pytest.approx(81.0)
    assert metrics["BWT"] == pytest.approx(-20.0) and metrics["forgetting"] == pytest.approx(20.0)
    assert metrics["FWT"] == pytest.approx(1.0)
    result.matrix.append([60.0, 80.0, 95.0])  # complete: every task
    assert result.metrics["ACC"] == pytest.approx(235.0 / 3)


def test_a_run_stopped_early_that_evaluates_its_tasks_in_another_order_averages_every_column():
    """Trained A, B, C and evaluated C, B, A: after task 1 the first column is the untrained C (a helper's
    metrics.json said ACC 52.4, C's score, where A, the task trained, scored 100). Column j is not the j-th task
    trained, so the tasks so far cannot be cut out: ACC averages every column, as when the run ends."""
    from metaspike.continual.trainer import ContinualResult

    result = ContinualResult(task_names=["C", "B", "A"], matrix=[[52.4, 39.2, 100.0]], baseline=[10.0, 10.0, 10.0],
                             training_tasks=3, evaluates_trained_tasks=False)
    assert result.metrics["ACC"] == pytest.approx((52.4 + 39.2 + 100.0) / 3)
    assert all(math.isnan(result.metrics[key]) for key in ("BWT", "FWT", "forgetting"))


def test_text_tables_round_halves_as_by_hand_and_keep_wide_cells_apart():
    from metaspike.app.tables import comparison_csv, format_table

    nan = math.nan
    rows = [{"setting": "m=0", "task 1": ((33.8 + 33.9) / 2, nan), "ACC": (50.0, 1.0), "BWT": (-2.25, 0.05),
             "FWT": (nan, nan), "forgetting": (0.0, nan), "seconds": (12345.5, 3456.6)},
            {"setting": "m=5", "task 1": (3.8, 2.3), "ACC": (50.0, 1.0), "BWT": (-2.1, 1.5), "FWT": (1.0, 2.0),
             "forgetting": (0.0, nan), "seconds": (1.0, 0.5)}]
    lines = format_table(rows, 1).splitlines()
    assert lines[2].split()[:5] == ["m=0", "33.9", "50.0", "±", "1.0"]  # 33.85 in decimal, 33.849999999999994 in binary
    assert "-2.3 ± 0.1" in lines[2] and lines[2].endswith(" 12345.5 ±3456.6")
    assert len({len(line) for line in lines}) == 1  # every line as wide as the header: the columns line up
    assert comparison_csv(rows[:1], ("setting",)).splitlines()[1].startswith("m=0,33.850,,50.000,1.000,-2.250,0.050")


def test_joint_training_averages_every_task_it_evaluates(tmp_path):
    """One training task (all tasks' data at once), every task evaluated after it: ACC is their mean."""
    from metaspike.app.cli import main
    from metaspike.continual import load_run

    assert main(["train", "--scenario", "joint", "--dataset", "digits", "--tasks", "3", "--epochs", "1", "--hidden",
                 "32", "--quiet", "--out", str(tmp_path)]) == 0
    run = load_run(next(tmp_path.iterdir()))
    (final,) = run["matrix"]
    assert run["metrics"]["ACC"] == pytest.approx(sum(final) / 3, abs=0.01)  # (the matrix file keeps 2 decimals)


def test_a_ragged_matrix_is_one_line_naming_the_row():
    from metaspike.continual.metrics import summarize

    with pytest.raises(ValueError, match=r"rectangular: row 1 has 1 cells, row 0 2 \(give cells not evaluated as nan"):
        summarize([[90, 50], [60]])  # (was numpy's "inhomogeneous shape")
    assert summarize([[90, float("nan")], [60, 70]])["ACC"] == 65.0


@pytest.mark.parametrize("metric", [average_accuracy, backward_transfer, forgetting, summarize])
def test_a_matrix_of_impossible_accuracies_or_text_is_one_line(metric):
    """backward_transfer([[500, 0], [0, 1]]) was -500, and a cell '50' was read as the number 50."""
    for matrix, message in (([[500.0, 0.0], [0.0, 1.0]], r"percentages in \[0, 100\] .*, got 500$"),
                            ([[90.0, -1.0], [0.0, 1.0]], r"percentages in \[0, 100\] .*, got -1$"),
                            ([["50", 0.0], [1.0, 2.0]], r"numbers"),
                            ([[10**400, 0.0], [1.0, 2.0]], r"numbers"),  # (beyond float: was an OverflowError)
                            ([[np.True_, None], [1.0, 2.0]], r"numbers")):
        with pytest.raises(ValueError, match=f"^accuracy matrix must hold {message}"):
            metric(matrix)
    assert metric([[90, None], [80, 95]]) == metric([[90, float("nan")], [80, 95]])  # (JSON's null, read back)


@pytest.mark.parametrize("metric", [forward_transfer, summarize, largest_rise])
def test_untrained_accuracies_are_checked_as_the_matrix_is(metric):
    """forward_transfer(R, [1000, 2000]) was -1990, and a baseline of text or a dict numpy's or float's own error."""
    matrix = [[90, 10], [60, 95]]
    for baseline, message in (([1000, 2000], r"percentages in \[0, 100\] .*, got 1000$"),
                              (["10", "x"], r"numbers \(one accuracy per task\)$"),
                              ({0: 10, 1: 12}, r"numbers"),
                              ([10], r"one accuracy per task \(2\), got shape \(1,\)")):
        with pytest.raises(ValueError, match=f"^baseline must hold {message}"):
            metric(matrix, baseline)
    assert str(metric(matrix, [10, None])) == str(metric(matrix, [10, float("nan")]))  # (JSON's null, read back)
    assert str(metric(matrix, [10, 12])) != str(metric(matrix, [10, float("nan")]))


def test_forgetting_takes_the_evaluated_cells_of_a_budgeted_matrix():
    """Under --eval-tasks the cells of tasks not yet trained are nan: forgetting is then the mean drop from each
    task's best evaluated accuracy (as BWT's cells are evaluated), the same as for the full matrix where those cells
    would not be the best; a task not evaluated right after it was learned leaves it undefined."""
    from metaspike.continual.metrics import backward_transfer, forgetting

    nan = float("nan")
    full = [[80.0, 9.0, 11.0], [66.9, 84.2, 10.0], [65.8, 81.7, 87.8]]
    budgeted = [[80.0, nan, nan], [66.9, 84.2, nan], [65.8, 81.7, 87.8]]
    assert forgetting(budgeted) == forgetting(full) == pytest.approx((80.0 - 65.8 + 84.2 - 81.7) / 2, abs=1e-12)
    assert backward_transfer(budgeted) == backward_transfer(full)
    assert math.isnan(forgetting([[80.0, nan, nan], [nan, nan, nan], [65.8, 81.7, 87.8]]))  # every other row


def _dense_metrics(matrix, baseline):
    """The documented formulas on the whole matrix as one float64 array (what the metrics computed before they read
    the evaluated rows only): the reference the row-wise metrics must equal exactly."""
    import numpy as np

    r, b = np.array(matrix, dtype=float), np.asarray(baseline, dtype=float)
    t = len(r)
    final = r[-1]
    covered = np.isfinite(final)
    rises = r - b
    with np.errstate(all="ignore"):
        return {
            "ACC": float(final.mean()),
            "BWT": float(np.mean([r[-1, j] - r[j, j] for j in range(t - 1)])) if t > 1 else math.nan,
            "FWT": float(np.mean([r[j - 1, j] - b[j] for j in range(1, t)])) if t > 1 else math.nan,
            "forgetting": float(np.mean([np.nanmax(r[j: t - 1, j]) - r[-1, j] if np.isfinite(r[j, j]) else math.nan
                                         for j in range(t - 1)])) if t > 1 else math.nan,
            "evaluated_accuracy": float(final[covered].mean()) if covered.any() else math.nan,
            "evaluated_tasks": float(covered.sum()),
            "last5_accuracy": float(final[-5:].mean()),
            "task1_accuracy": float(final[0]),
            "largest_rise": float(rises[np.isfinite(rises)].max()) if np.isfinite(rises).any() else math.nan,
            "over_time": [(i + 1, float(a)) for i, a in enumerate(r[:, 0]) if math.isfinite(a)],
        }


def _random_matrix(rng):
    """A square matrix as a run leaves it: random accuracies, tasks trained without an evaluation (one shared all-NaN
    tuple, as the trainer appends), a growing head's NaN upper triangle, an evaluation budget's NaN cells in the final
    row, each drawn or not."""
    import numpy as np

    t = int(rng.integers(1, 16))
    r = rng.uniform(0.0, 100.0, (t, t))
    if rng.random() < 0.5:
        r[np.triu_indices(t, 1)] = math.nan
    if rng.random() < 0.5:
        r[-1, rng.random(t) < 0.4] = math.nan
    skipped = (math.nan,) * t
    rows = [skipped if i < t - 1 and rng.random() < 0.4 else r[i].tolist() for i in range(t)]
    return rows, rng.uniform(0.0, 20.0, t).tolist()


def test_the_row_wise_metrics_equal_the_dense_computation_exactly():
    """Every metric reads each distinct row once (a long stream's skipped rows are one tuple) and gives the same float
    as the formulas on the whole float64 array: the same numpy operations on the same values in the same order, so
    equal to the last bit (two NaNs count as equal)."""
    import numpy as np

    from metaspike.continual.metrics import evaluated_rows, task_accuracy_over_time
    from metaspike.continual.trainer import ContinualResult

    def same(a, b):
        return a == b or (math.isnan(a) and math.isnan(b))

    rng = np.random.default_rng(0)
    kinds = {"skipped": 0, "triangle": 0, "partial": 0}
    for _ in range(300):
        rows, baseline = _random_matrix(rng)
        dense = _dense_metrics(rows, baseline)
        got = summarize(rows, baseline, tasks=11)  # (a long stream: every metric is there)
        for key in ("ACC", "BWT", "FWT", "forgetting", "evaluated_accuracy", "evaluated_tasks", "last5_accuracy",
                    "task1_accuracy"):
            assert same(got[key], dense[key]), (key, rows)
        assert same(largest_rise(rows, baseline), dense["largest_rise"])
        assert task_accuracy_over_time(rows) == dense["over_time"]
        assert evaluated_rows(rows) == [i for i, row in enumerate(rows) if not all(map(math.isnan, row))]
        result = ContinualResult([f"t{j}" for j in range(len(rows))], matrix=rows, baseline=baseline)
        assert set(result.metrics) <= set(got) and all(same(result.metrics[key], got[key]) for key in result.metrics)
        kinds["skipped"] += any(isinstance(row, tuple) for row in rows)  # (the shared all-NaN row)
        kinds["triangle"] += len(rows) > 1 and math.isnan(rows[0][-1]) and not math.isnan(rows[0][0])
        kinds["partial"] += not all(map(math.isfinite, rows[-1]))
    assert min(kinds.values()) >= 30, kinds  # each pattern was drawn often


def test_metrics_take_memory_for_the_evaluated_rows_not_tasks_squared():
    """A 3,000-task stream evaluated once, at the end, on 10 tasks: its matrix is 2,999 references to one all-NaN
    tuple and one row. As one float64 array it would take 3000 x 3000 x 8 B = 72 MB; read row by row it takes the
    two distinct rows (2 x 24 kB) and a list of 3,000 references (24 kB), so 2 MB bounds it with room for numpy's
    temporaries of one row."""
    import tracemalloc

    from metaspike.continual.metrics import learned_nothing, tasks_learned_nothing
    from metaspike.continual.trainer import ContinualResult

    t = 3000
    final = [math.nan] * t
    for j in [0, 700, 1400, 2100, 2800, *range(t - 5, t - 1)]:
        final[j] = 50.0
    final[-1] = 12.0  # (the last task learned nothing: 2 points above the untrained network's 10)
    skipped = (math.nan,) * t
    result = ContinualResult([f"t{j}" for j in range(t)], matrix=[skipped] * (t - 1) + [final], baseline=[10.0] * t,
                             training_tasks=t)
    tracemalloc.start()
    try:
        metrics = result.metrics
        rise = largest_rise(result.matrix, result.baseline)
        verdicts = (learned_nothing(result.matrix, result.baseline),
                    tasks_learned_nothing(result.matrix, result.baseline))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, f"{peak / 1e6:.1f} MB"
    assert metrics["evaluated_tasks"] == 10 and metrics["evaluated_accuracy"] == pytest.approx(46.2) and rise == 40.0
    assert metrics["last5_accuracy"] == pytest.approx(42.4) and math.isnan(metrics["ACC"]) and verdicts == (False, [t])


def test_every_long_stream_gets_the_metrics_of_its_evaluated_tasks():
    """They were added only where the last row had cells not evaluated: a stream of 12 tasks evaluated on all of them,
    or one evaluated every 5th task, had no last5_accuracy (and the command printed "over the last 5 nan %")."""
    from metaspike.continual.metrics import LONG_STREAM_TASKS
    from metaspike.continual.trainer import ContinualResult

    nan = math.nan
    t = LONG_STREAM_TASKS + 2
    full = [[float(5 * i + j % 7) for j in range(t)] for i in range(t)]
    values = summarize(full)
    assert values["last5_accuracy"] == pytest.approx(sum(full[-1][-5:]) / 5, abs=1e-12)
    assert values["evaluated_tasks"] == t and values["evaluated_accuracy"] == values["ACC"]
    assert values["task1_accuracy"] == full[-1][0]
    skipped = (nan,) * 3
    every_other = summarize([[90.0, nan, nan], skipped, [70.0, 80.0, 95.0]])  # (eval_every=2: rows 1 and 3)
    assert every_other["last5_accuracy"] == pytest.approx(245 / 3) and every_other["task1_accuracy"] == 70.0
    growing_head = summarize([[90.0, nan, nan], [80.0, 70.0, nan], [75.0, 60.0, 95.0]])
    assert "last5_accuracy" not in growing_head  # (a short stream evaluated after every task: its ACC says it all)
    assert "last5_accuracy" not in summarize([[90.0, 10.0], [60.0, 95.0]], tasks=LONG_STREAM_TASKS)
    # a long stream so far (two of twelve tasks trained): from its first evaluation, over the tasks trained so far
    so_far = ContinualResult([f"t{j}" for j in range(t)], matrix=[[90.0] + [9.0] * (t - 1), [60.0, 95.0] + [8.0] * (t - 2)],
                             training_tasks=t).metrics
    assert so_far["last5_accuracy"] == pytest.approx(77.5) and so_far["evaluated_tasks"] == 2
    with pytest.raises(ValueError, match="tasks must be None or an integer >= 1, got 0"):
        summarize(full, tasks=0)
