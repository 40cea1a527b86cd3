"""Metrics against a 3x3 accuracy matrix worked by hand."""

import math

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
