"""Class-incremental learning with a growing head: the classes to come are masked out in training and evaluation."""

import copy
import json
import math
import warnings

import pytest
import torch
from torch import nn

from metaspike.app.cli import main
from metaspike.continual import ContinualTrainer, TrainerConfig, split
from metaspike.continual.scenarios import Scenario, Task, permuted
from metaspike.continual.trainer import run_identity
from metaspike.data import load_dataset
from metaspike.training import Plugin, evaluate, evaluate_together

GROUPS = [[0, 1], [2, 3], [4, 5, 6, 7, 8, 9]]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits"), load_dataset("digits", "test")


class Snapshots(Plugin):
    """Keeps the model and the outputs it was trained on at each task's end (before that task's evaluation)."""

    def __init__(self):
        self.models, self.classes = [], []

    def task_done(self, model, x, y, classes):
        self.models.append(copy.deepcopy(model))
        self.classes.append(classes)


def _fit(scenario, model, plugins=()):
    torch.manual_seed(0)
    trainer = ContinualTrainer(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.05),
                               TrainerConfig(epochs=1, batch_size=32, batchnorm="shared"), progress=False,
                               plugins=plugins)
    return trainer.fit(scenario)


def test_split_class_growing_names_each_tasks_classes_and_grows_the_head(digits):
    scenario = split(*digits, groups=GROUPS, mode="class-growing")
    assert scenario.growing_head and not scenario.task_known_at_test and not scenario.per_task_batchnorm
    assert [t.classes for t in scenario.tasks] == [(0, 1), (2, 3), (4, 5, 6, 7, 8, 9)]
    assert [scenario.seen_classes(k) for k in range(3)] == [None, (0, 1), (0, 1, 2, 3)]
    assert scenario.seen_classes(3) == tuple(range(10))
    assert split(*digits, groups=GROUPS, mode="class").seen_classes(2) is None  # (no growing head: every output)


@pytest.mark.parametrize("batch_statistics", [False, True], ids=["linear", "batchnorm-batch-statistics"])
def test_outputs_to_come_are_never_trained_and_each_row_is_scored_on_the_classes_seen(digits, batch_statistics):
    layers = [nn.Flatten(), nn.Linear(784, 32)]
    if batch_statistics:  # (evaluated as one mixed set: evaluate_together)
        layers.append(nn.BatchNorm1d(32, track_running_stats=False))
    model = nn.Sequential(*layers, nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        model[-1].bias[9] = 1e3  # a class to come that would win every prediction if it were scored
    start = copy.deepcopy(model[-1].state_dict())
    scenario, snapshots = split(*digits, groups=GROUPS, mode="class-growing"), Snapshots()
    result = _fit(scenario, model, [snapshots])

    assert snapshots.classes == [(0, 1), (0, 1, 2, 3), tuple(range(10))]
    after_first = snapshots.models[0][-1]
    # rows of classes 2..9 get no gradient while only 0 and 1 are seen: exactly their starting values
    assert torch.equal(after_first.weight[2:], start["weight"][2:])
    assert torch.equal(after_first.bias[2:], start["bias"][2:])
    assert not torch.equal(after_first.weight[:2], start["weight"][:2])

    for trained, model_then in enumerate(snapshots.models, start=1):
        seen = scenario.seen_classes(trained)
        tested = [(t.test.x, t.test.y) for t in scenario.tasks[:trained]]
        if batch_statistics and trained > 1:
            expected = evaluate_together(model_then, tested, 1000, "cpu", seen)
        else:
            expected = [evaluate(model_then, x, y, 1000, seen) for x, y in tested]
        row = result.matrix[trained - 1]
        assert list(row[:trained]) == expected
        assert all(math.isnan(a) for a in row[trained:])  # (the tasks to come are not scored)
    assert result.matrix[0][0] > 90  # (2 digits after one epoch, with class 9's huge bias masked out)
    assert math.isnan(result.metrics["FWT"])


@pytest.mark.filterwarnings("ignore:evaluating samples of one class only")
@pytest.mark.parametrize("mode", ["class", "class-growing"])
def test_a_class_incremental_cell_depends_neither_on_the_budget_nor_on_the_tasks_to_come(digits, mode):
    """With BatchNorm by batch statistics a trained task is scored in the mix of every trained task's test set (a
    reviewer saw the diagonal move by 6.8 points with the budget, the rows having mixed in the tasks to come)."""
    def fit(groups, budget):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32, track_running_stats=False),
                              nn.ReLU(), nn.Linear(32, 10))
        trainer = ContinualTrainer(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.05),
                                   TrainerConfig(epochs=1, batch_size=32, eval_tasks=budget), progress=False)
        return trainer.fit(split(*digits, groups=groups, mode=mode)).matrix

    digits_one_by_one = [[c] for c in range(10)]
    whole, budgeted, shorter = fit(digits_one_by_one, None), fit(digits_one_by_one, 6), fit(digits_one_by_one[:4], None)
    skipped = 0
    for i in range(10):  # (the shorter stream trains the same first four tasks)
        for j in range(i + 1):
            if math.isnan(budgeted[i][j]):
                skipped += 1
            else:
                assert whole[i][j] == budgeted[i][j]
            if i < 4:
                assert whole[i][j] == shorter[i][j]
    assert skipped > 0  # (the budget left trained tasks unscored, and they were in the mix all the same)
    if mode == "class":  # a task to come is scored, in the mix of all tasks
        assert not math.isnan(whole[0][9]) and math.isnan(budgeted[1][9])


@pytest.mark.parametrize("batch_statistics", [False, True])
def test_the_untrained_network_is_scored_on_each_task_as_the_task_is_first_scored(digits, batch_statistics):
    """Untrained accuracy over the same outputs as the task's first score, so a run that learns nothing shows no rise
    (a reviewer's lr=0 run had read 56.7 % on task 1 against an untrained 0 % scored over all ten outputs); with
    BatchNorm by batch statistics, in the same mix of tasks."""
    norm = [nn.BatchNorm1d(10, affine=False, track_running_stats=False)] if batch_statistics else []
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), *norm)
    scenario = split(*digits, groups=GROUPS, mode="class-growing")
    torch.manual_seed(0)
    trainer = ContinualTrainer(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.0),
                               TrainerConfig(epochs=1, batch_size=32), progress=False)
    result = trainer.fit(scenario)
    assert result.baseline == [result.matrix[j][j] for j in range(3)]  # (lr 0: the untrained network throughout)
    if not batch_statistics:
        assert result.baseline[0] == evaluate(model, scenario.tasks[0].test.x, scenario.tasks[0].test.y, 1000, (0, 1))


def test_without_a_growing_head_the_unseen_class_wins_every_prediction(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        model[-1].bias[9] = 1e3
    result = _fit(split(*digits, groups=GROUPS, mode="class"), model)
    assert result.matrix[0][0] == 0.0


def test_a_task_known_at_test_is_not_told_its_classes_in_a_class_incremental_scenario(digits):
    """A scenario of one's own with classes on its tasks and ``task_known_at_test=False`` (the labels trick: each
    task trains on its own outputs) is scored on every output, as one that says the task may not."""
    tasks = split(*digits, groups=GROUPS[:2], mode="task").tasks
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        model[-1].bias[9] = 1e3
    with pytest.warns(UserWarning, match="the labels trick"):
        scenario = Scenario("mine", tasks, tasks, task_known_at_test=False)
    result = _fit(scenario, model)
    assert result.matrix[0][0] == 0.0


def test_a_class_incremental_scenario_whose_tasks_name_their_classes_is_named_in_a_warning(digits):
    """Training masked to each task's classes (the labels trick) and scored on every output: a mix a user can reach
    without meaning to (a reviewer's first task scored 40 % right after training, 100 % with the growing head)."""
    tasks = split(*digits, groups=GROUPS, mode="class-growing").tasks
    with pytest.warns(UserWarning, match="each trains on its own outputs only .* growing_head=True"):
        Scenario("mine", tasks, tasks, task_known_at_test=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Scenario("mine", tasks, tasks, task_known_at_test=False, growing_head=True)
        split(*digits, groups=GROUPS, mode="class")


def test_growing_head_changes_the_run_identity(digits):
    tasks = split(*digits, groups=GROUPS, mode="task").tasks
    config = TrainerConfig()
    with pytest.warns(UserWarning, match="the labels trick"):
        plain = run_identity(Scenario("mine", tasks, tasks, task_known_at_test=False), config)
    growing = run_identity(Scenario("mine", tasks, tasks, task_known_at_test=False, growing_head=True), config)
    assert plain["scenario"] != growing["scenario"]


def test_a_growing_head_it_cannot_grow_gets_one_line(digits):
    train, test = digits
    tasks = split(train, test, groups=GROUPS, mode="task").tasks
    with pytest.raises(ValueError, match="growing_head needs task_known_at_test=False"):
        Scenario("mine", tasks, tasks, growing_head=True)
    with pytest.raises(ValueError, match="growing_head needs its tasks as a list or tuple, evaluated on themselves"):
        Scenario("mine", tasks, tasks[:2], task_known_at_test=False, growing_head=True)
    stream = permuted(train, test, n_tasks=2)
    with pytest.raises(ValueError, match="growing_head needs its tasks as a list or tuple"):
        Scenario("mine", stream.tasks, stream.tasks, task_known_at_test=False, growing_head=True)
    unnamed = [Task("all", train, test)]
    with pytest.raises(ValueError, match="task 'all' has classes=None"):
        Scenario("mine", unnamed, unnamed, task_known_at_test=False, growing_head=True)
    with pytest.raises(ValueError, match="and task_boundaries=True"):
        Scenario("mine", tasks, tasks, task_boundaries=False, task_known_at_test=False, growing_head=True)
    overlapping = [Task("a", tasks[0].train, tasks[0].test, (0, 1)), Task("b", tasks[1].train, tasks[1].test, (1, 2, 3))]
    with pytest.raises(ValueError, match=r"task 'b' brings \[1\] again"):
        Scenario("mine", overlapping, overlapping, task_known_at_test=False, growing_head=True)
    with pytest.raises(ValueError, match="growing_head must be True or False"):
        Scenario("mine", tasks, tasks, task_known_at_test=False, growing_head="yes")
    with pytest.raises(ValueError, match="split mode must be one of 'task', 'class', 'class-growing'"):
        split(train, test, groups=GROUPS, mode="growing")


def test_command_line_class_growing_split(tmp_path, capsys):
    argv = ["train", "--scenario", "split", "--split-mode", "class-growing", "--dataset", "digits", "--tasks", "3",
            "--epochs", "1", "--hidden", "32", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    run = tmp_path / "split-digits-meta5-30-seed1"
    rows = (run / "accuracy_matrix.csv").read_text().splitlines()
    assert rows[1].endswith(",,") and rows[2].endswith(",") and not rows[3].endswith(",")  # (tasks to come: empty)
    assert json.loads((run / "config.json").read_text())["split_mode"] == "class-growing"
    assert "BWT" in capsys.readouterr().out  # (the metrics table: the last row is whole, no evaluation budget)
    assert main(argv[:-2] + ["--batchnorm", "per-task", "--out", str(tmp_path)]) == 2
    assert ("--batchnorm per-task: --scenario split (class-incremental) does not say which task"
            in capsys.readouterr().err)


@pytest.mark.filterwarnings("ignore:evaluating samples of one class only")  # (one-class tasks, batch statistics)
def test_a_budgeted_growing_head_measures_every_tasks_start_and_a_one_class_task_is_not_called_unlearned(tmp_path,
                                                                                                        capsys):
    """Ten one-class tasks: the first head has one output (100 % untrained); a budget of 6 evaluations must not leave
    the other tasks' starts unmeasured, or the run would read as having learned nothing."""
    assert main(["train", "--scenario", "split", "--split-mode", "class-growing", "--dataset", "digits", "--tasks", "10",
                 "--eval-tasks", "6", "--epochs", "1", "--hidden", "32", "--quiet", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    metrics = json.loads((tmp_path / "split-digits-meta5-30-seed1" / "metrics.json").read_text())
    assert metrics["untrained_accuracy"][0] == 100.0 and None not in metrics["untrained_accuracy"]
    assert "the run learned nothing" not in err and "task(s) 1," not in err  # (one-class tasks may still learn little)
