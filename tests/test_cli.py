"""The metaspike command: runs end to end, writes its results, and answers bad input with one line."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metaspike.app.cli import main
from metaspike.continual import load_run
from metaspike.training import TrainingDiverged

SMALL = ["--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "32", "--quiet"]


def test_train_writes_a_complete_run_directory(tmp_path, capsys):
    assert main(["train", *SMALL, "--meta", "2", "--seed", "3", "--out", str(tmp_path)]) == 0
    run = tmp_path / "permuted-digits-meta2-seed3"
    for name in ("config.json", "scenario.json", "accuracy_matrix.csv", "curves.csv", "diagnostics.csv", "metrics.json",
                 "hidden_weights.json", "accuracy_curves.png", "hidden_weights.png", "model.pt"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["meta"] == 2.0 and config["seed"] == 3 and config["batchnorm"] == "per-task"
    scenario = json.loads((run / "scenario.json").read_text())
    assert len(scenario["permutations"]) == 2 and len(scenario["permutations"][0]) == 784
    rows = list(csv.reader(open(run / "accuracy_matrix.csv")))
    assert rows[0] == ["after_task", "digits-perm1", "digits-perm2"] and len(rows) == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["complete"] is True
    assert metrics["ACC"] == pytest.approx(sum(float(v) for v in rows[2][1:]) / 2, abs=0.01)
    state = torch.load(run / "model.pt", weights_only=True)
    assert "1.weight" in state
    out = capsys.readouterr().out
    assert "ACC" in out and str(run) in out


def test_rerunning_never_overwrites_an_earlier_run(tmp_path):
    assert main(["train", *SMALL, "--out", str(tmp_path)]) == 0
    first = tmp_path / "permuted-digits-meta5-30-seed1"
    before = (first / "accuracy_matrix.csv").read_text()
    (first / "notes.txt").write_text("mine")
    assert main(["train", *SMALL, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "permuted-digits-meta5-30-seed1-2" / "metrics.json").exists()
    assert (first / "accuracy_matrix.csv").read_text() == before
    assert (first / "notes.txt").read_text() == "mine"


_MARKING = {"config.json": {"scenario": "permuted", "seed": 1, "tasks": 2},
            "plan.json": {"base": {}, "seeds": [1]}, "reproduction.json": {"name": "fig2", "scale": "cpu", "seeds": [1]}}


@pytest.mark.parametrize("marker", list(_MARKING))
@pytest.mark.parametrize("command", [["train", *SMALL], ["compare", *SMALL, "--seeds", "1"], ["reproduce", "fig2"]])
def test_out_given_a_run_comparison_or_reproduction_folder_is_refused_before_anything_is_made(tmp_path, capsys,
                                                                                            marker, command):
    """--out naming the folder of an earlier run made the new run inside it, among its files, without a word."""
    earlier = tmp_path / "permuted-digits-meta5-30-seed1"
    earlier.mkdir()
    (earlier / marker).write_text(json.dumps(_MARKING[marker]))
    assert main([*command, "--out", str(earlier)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"metaspike: error: --out {re.escape(str(earlier))} is a \w+ \w+ \(it holds {marker}\), and "
                        rf"the new results would be made inside it: give a folder outside it, such as --out "
                        rf"{re.escape(str(tmp_path))} \(where it is unfinished, metaspike \w+ --resume .* continues "
                        r"it\)\n", err), err
    assert sorted(p.name for p in earlier.iterdir()) == [marker]


def test_out_given_a_folder_of_ones_own_with_a_config_json_or_dot_inside_a_run_folder(tmp_path, monkeypatch, capsys):
    """A project's own config.json is no run's: its folder takes runs (it was refused, with advice to resume it). A run
    folder given as `.` was named as the folder to give instead (`.`'s parent is itself)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"name": "my-app"}')
    assert main(["train", *SMALL, "--out", str(project)]) == 0
    run = project / "permuted-digits-meta5-30-seed1"
    assert (run / "metrics.json").is_file()
    monkeypatch.chdir(run)
    capsys.readouterr()
    assert main(["train", *SMALL, "--out", "."]) == 2
    assert f"give a folder outside it, such as --out {project} (" in capsys.readouterr().err


def test_out_given_a_folder_inside_a_reproduction_is_refused_and_a_plan_json_of_ones_own_is_not_a_comparison(
        tmp_path, capsys):
    """A reproduction's part folder (no marking file of its own) took a new run among the reproduction's runs; a run
    inside a folder whose plan.json was the user's own was said to continue with `compare --resume`."""
    part = tmp_path / "rep" / "part1"
    (part / "bnn-seed1").mkdir(parents=True)
    (tmp_path / "rep" / "reproduction.json").write_text(json.dumps(_MARKING["reproduction.json"]))
    (part / "bnn-seed1" / "config.json").write_text(json.dumps(_MARKING["config.json"]))
    assert main(["train", *SMALL, "--out", str(part)]) == 2
    assert capsys.readouterr().err == (f"metaspike: error: --out {part} lies inside the reproduction folder "
                                       f"{tmp_path / 'rep'}, and the new results would be made among its runs: give a "
                                       f"folder outside it, such as --out {tmp_path}\n")
    assert main(["train", *SMALL, "--out", str(part / "bnn-seed1")]) == 2
    assert f"such as --out {tmp_path} (where it is unfinished, metaspike reproduce --resume {tmp_path / 'rep'} " \
        "continues it)" in capsys.readouterr().err
    own = tmp_path / "project" / "experiment"
    own.mkdir(parents=True)
    (tmp_path / "project" / "plan.json").write_text('{"kind": "mine"}')
    (own / "config.json").write_text(json.dumps(_MARKING["config.json"]))
    assert main(["train", *SMALL, "--out", str(own)]) == 2
    assert f"(where it is unfinished, metaspike train --resume {own} continues it)" in capsys.readouterr().err


@pytest.mark.parametrize("dies_at_call", [1, 2])
def test_a_run_that_fails_keeps_what_it_measured_and_says_what_that_is(tmp_path, monkeypatch, capsys, dies_at_call):
    from metaspike.continual import trainer as trainer_module

    real = trainer_module.train_epoch
    calls = {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= dies_at_call:
            raise TrainingDiverged("loss became nan at batch 3; lower the learning rate")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", dies)
    assert main(["train", *SMALL, "--out", str(tmp_path)]) == 2
    folder = tmp_path / "permuted-digits-meta5-30-seed1"
    err = capsys.readouterr().err
    if dies_at_call == 1:  # (in the first task: no checkpoint, nothing measured)
        assert err.endswith(f"it diverged before its first checkpoint, so nothing was measured: {folder} keeps its "
                            "settings only\n")  # (no curves.csv yet: the message named one)
        assert not (folder / "accuracy_matrix.csv").exists()
        return
    assert err.endswith(f"what was measured so far is in {folder} (the last good checkpoint is kept)\n")
    run = load_run(folder)
    assert len(run["matrix"]) == 1 and len(run["curves"]) == 1
    assert run["metrics"]["complete"] is False


def test_compare_runs_several_rules_side_by_side_and_resumes_them(tmp_path, capsys):
    argv = ["compare", *SMALL, "--rule", "tanh", "cascade", "--meta", "0", "5", "--out", str(tmp_path)]
    assert main(argv) == 0
    root = tmp_path / "compare-permuted-digits-tanh-cascade"
    rows = list(csv.DictReader(open(root / "comparison.csv")))
    assert [(r["setting"], r["rule"]) for r in rows] == [("meta=0 rule=tanh", "tanh"), ("meta=5 rule=tanh", "tanh"),
                                                         ("meta=0 rule=cascade", "cascade"),
                                                         ("meta=5 rule=cascade", "cascade")]
    for row in rows[2:]:  # (each row's runs ran its rule)
        config = json.loads((root / f"permuted-digits-meta{row['meta']}-cascade-seed1" / "config.json").read_text())
        assert config["rule"] == "cascade"
    # (at m = 0 no rule changes a step: the two rules' m = 0 runs are one run, twice)
    assert rows[0]["ACC_mean"] == rows[2]["ACC_mean"] and rows[1]["ACC_mean"] != rows[3]["ACC_mean"]
    assert json.loads((root / "plan.json").read_text())["rules"] == ["tanh", "cascade"]
    def without_time():
        read = list(csv.DictReader(open(root / "comparison.csv")))
        return [{k: v for k, v in row.items() if not k.startswith("seconds")} for row in read]

    table = without_time()
    (root / "comparison.csv").unlink()
    assert main(["compare", "--resume", str(root), "--quiet"]) == 0  # (the runs read back, the table written again)
    assert without_time() == table and len(table) == 4
    capsys.readouterr()
    assert main(["compare", *SMALL, "--rule", "tanh", "cascade", "tanh", "--out", str(tmp_path)]) == 2
    assert "--rule names 'tanh' twice; name each rule once" in capsys.readouterr().err


def test_compare_takes_one_rule_in_a_list_and_refuses_rules_that_are_no_names_or_that_no_model_takes(tmp_path):
    from metaspike.app.compare import compare, compare_neurons
    from metaspike.app.config import RunConfig

    base = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(8,))
    path, rows = compare(base, [5], out=tmp_path, progress=False, rules=["cascade"])
    assert path.name == "compare-permuted-digits-cascade" and [r["rule"] for r in rows] == ["cascade"]
    for rules, message in ((["cascade", None], "rules must be a list of consolidation rules' names"),
                           ("tanh", "rules must be a list of consolidation rules' names"),
                           (["tanh", "tanh"], r"rules must name each rule once, got \['tanh', 'tanh'\]")):
        with pytest.raises(ValueError, match=message):
            compare(base, [5], out=tmp_path, progress=False, rules=rules)
    with pytest.raises(ValueError, match=r"rules: none of the models compared \(mlp, bimu\) trains with "
                                         "MetaplasticAdam"):
        compare_neurons(base, ["mlp", "bimu"], [0], out=tmp_path, progress=False, rules=["tanh", "cascade"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare-permuted-digits-cascade"]  # (nothing else made)


def test_compare_writes_a_table_and_a_figure(tmp_path, capsys):
    assert main(["compare", *SMALL, "--meta", "0", "5,20", "--seeds", "1", "2", "--out", str(tmp_path)]) == 0
    root = next(tmp_path.glob("compare-*"))
    rows = list(csv.DictReader(open(root / "comparison.csv")))
    assert [r["setting"] for r in rows] == ["meta=0", "meta=5:20"] and rows[0]["runs"] == "2"
    assert [r["rule"] for r in rows] == ["tanh", "tanh"]
    config = json.loads((root / "permuted-digits-meta5-20-seed2" / "config.json").read_text())
    assert config["meta"] == [5.0, 20.0] and config["seed"] == 2
    assert (root / "comparison.png").stat().st_size > 1000
    assert len(list(root.glob("permuted-*"))) == 4
    assert "meta=5:20" in capsys.readouterr().out


def test_plot_redraws_a_run(tmp_path, capsys):
    main(["train", *SMALL, "--out", str(tmp_path)])
    run = tmp_path / "permuted-digits-meta5-30-seed1"
    (run / "accuracy_curves.png").unlink()
    assert main(["plot", str(run)]) == 0
    assert (run / "accuracy_curves.png").exists()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (run / "accuracy_curves.png").unlink()
    (run / "accuracy_curves.png").symlink_to(outside)  # a link planted in the folder is replaced, not written through
    assert main(["plot", str(run)]) == 0
    assert outside.read_text() == "keep me" and not (run / "accuracy_curves.png").is_symlink()
    matrix = (run / "accuracy_matrix.csv").read_text().splitlines()
    (run / "accuracy_matrix.csv").write_text("\n".join(matrix[:-1]) + "\n")  # (the last task's row dropped)
    capsys.readouterr()
    assert main(["plot", str(run)]) == 2
    assert "accuracy_matrix.csv's last row differs from the final_accuracy of" in capsys.readouterr().err


def test_plot_refuses_curves_that_contradict_the_matrix_or_lack_an_epoch(tmp_path, capsys):
    main(["train", "--dataset", "digits", "--tasks", "2", "--epochs", "3", "--hidden", "32", "--quiet", "--out",
          str(tmp_path)])
    run = tmp_path / "permuted-digits-meta5-30-seed1"
    curves = (run / "curves.csv").read_text().splitlines(keepends=True)
    header, rows = curves[0].split(","), [line.split(",") for line in curves[1:]]
    last_of_task_1 = max(n for n, row in enumerate(rows) if row[0] == "1")
    column = header.index("digits-perm1")
    edited = [list(row) for row in rows]
    edited[last_of_task_1][column] = "12.5"  # (drawn as it was before: the matrix says otherwise)
    (run / "curves.csv").write_text("".join([curves[0], *(",".join(row) for row in edited)]))
    capsys.readouterr()
    assert main(["plot", str(run)]) == 2
    assert re.search(r"curves\.csv: task 1's last epoch \(\d+\) gives 12\.5 % on digits-perm1, .*accuracy_matrix\.csv "
                     r"[\d.]+ %: one of them was edited or copied from another run", capsys.readouterr().err)
    (run / "curves.csv").write_text("".join([curves[0], *curves[1:2], *curves[3:]]))  # (task 1's epoch 2 deleted)
    assert main(["plot", str(run)]) == 2
    assert ("curves.csv: task 1, which accuracy_matrix.csv holds, has epoch 3 where epoch 2 belongs"
            in capsys.readouterr().err)
    stray = ",".join(["3", "1", "7", *["0.5"] * (len(header) - 3)]) + "\n"  # (a task the run does not have)
    (run / "curves.csv").write_text("".join([*curves, stray]))
    assert main(["plot", str(run)]) == 2
    assert "curves.csv holds epochs of task 3, which" in capsys.readouterr().err
    (run / "curves.csv").write_text("".join(curves))
    assert main(["plot", str(run)]) == 0  # (the run's own curves agree with its matrix)


def test_plot_of_a_run_it_cannot_write_in_names_the_figure_and_draws_elsewhere(tmp_path, capsys, monkeypatch):
    import errno

    from metaspike import files

    main(["train", *SMALL, "--out", str(tmp_path)])
    run = tmp_path / "permuted-digits-meta5-30-seed1"
    capsys.readouterr()
    real_mkstemp = files.tempfile.mkstemp

    def read_only(dir=None, **kwargs):  # (root writes anywhere, so a read-only folder is simulated)
        if Path(dir) == run:
            raise PermissionError(errno.EACCES, "Permission denied", str(Path(dir) / ".x.tmp"))
        return real_mkstemp(dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    assert main(["plot", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (f"metaspike: error: cannot read or write {run / 'accuracy_curves.png'}: "
                                               f"Permission denied; `metaspike plot {run} --out DIR` draws the "
                                               "figures elsewhere")
    assert main(["plot", str(run), "--out", str(tmp_path / "figures")]) == 0
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["accuracy_curves.png", "hidden_weights.png"]
    assert main(["train", "--resume", str(run)]) == 2  # a finished run: said before any lock is taken
    assert capsys.readouterr().err.strip() == f"metaspike: error: {run} is already complete; nothing to resume"
    (run / "accuracy_curves.png").unlink()  # as a kill while the figures were drawn leaves it
    assert main(["train", "--resume", str(run)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"nothing to resume; its figures are missing: draw them with "
                                                    f"metaspike plot {run}")


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--meta", "-1"], "--meta must be a finite number in [0, 3.40282e+38], got -1.0"),
        (["train", "--meta", "nan"], "--meta must be a finite number in [0, 3.40282e+38], got nan"),
        (["train", "--meta", "1e39"], "--meta must be a finite number in [0, 3.40282e+38], got 1e+39"),
        (["compare", "--meta", "0", "5,x"], "--meta '5,x' is not a number or a list of numbers like 5,30,30"),
        (["train", "--meta", "1", "2"], "--meta takes one value or one per layer (3 for --hidden 512 512), got 2"),
        (["train", "--tasks", "0"], "--tasks must be an integer in 1..10000 (the metrics read the accuracy matrix, tasks x tasks numbers), got 0"),
        (["train", "--epochs", "-2"], "--epochs must be an integer >= 1, got -2"),
        (["train", "--tasks", "3", "--epochs", "9" * 20],  # (a typo of many digits trained for ever)
         "--epochs must be an integer in 1..333,333,333 for 3 tasks (at most 1,000,000,000 epochs in all), got "
         + "9" * 20),
        (["train", "--scenario", "joint", "--tasks", "3", "--epochs", "9" * 20],  # (its tasks trained as one)
         "--epochs must be an integer in 1..1,000,000,000 (the most epochs a run's curves.csv holds), got " + "9" * 20),
        (["train", "--scenario", "rotated"], "unknown scenario 'rotated'; available: joint, permuted, sequence, split, stream"),
        (["train", "--dataset", "mnits"], "unknown dataset 'mnits'"),
        (["train", "--rule", "beaker"], "unknown consolidation rule 'beaker'"),
        (["train", "--dataset", "mnist5kk"], "unknown dataset 'mnist5kk'; available: "),  # (a typo: the closest name)
        (["train", "--dataset", "mnist5kk"], "; did you mean 'mnist5k'?"),
        (["train", "--rule", "tahn"], "; did you mean 'tanh'?"),
        (["train", "--model", "lekay"], "; did you mean 'leaky'?"),
        (["compare", "--neurons", "bnn", "lekay"], "; did you mean 'leaky'? (one of your own: name the module that "
                                                   "registers it with --import)"),
        (["train", "--lr", "0"], "--lr must be a finite number > 0"),
        (["plot", "/nonexistent/run"], "/nonexistent/run: no such folder"),
        (["train", "--out", ""], "--out must name a folder, got ''"),
        (["compare", "--seeds", "1", "-1"], "--seeds must be an integer in 0..18446744073709551615 (seeds are 64-bit), got -1"),
        (["train", "--device", "nonsense"], "--device must be cpu, cuda or cuda:N, got 'nonsense'"),
        (["train", "--device", "meta"], "--device must be cpu, cuda or cuda:N, got 'meta'"),
        (["train", "--lr", "1e38"], "--lr must be in [1.17549e-38, 10], got 1e+38"),
        (["train", "--lr", "1e-320"], "--lr must be in [1.17549e-38, 10], got 1e-320: a smaller rate is 0"),
        (["train", "--data-dir", ""], "--data-dir must name a folder, got ''"),
        (["train", "--data-dir", __file__], f"--data-dir {__file__} is a file; it names the folder that holds"),
        (["train", "--dataset", "digits", "--hidden", "100000", "100000", "--out", "/nonexistent-never-written"],
         "--hidden 100000 100000 needs about 188 GiB to train"),
        (["train", "--seed", str(2**64)], "--seed must be an integer in 0..18446744073709551615"),
        (["compare", "--meta", "0", "0"], "--meta must list distinct settings, got [[0.0], [0.0]]"),
        (["train", "--model", "bimu", "--meta", "5"], "--meta: model 'bimu' trains with its own optimizer (bimu)"),
        (["train", "--model", "mesu", "--lr", "0.1"], "--lr: model 'mesu' trains with its own optimizer (mesu)"),
        (["train", "--model", "mlp", "--rule", "cascade"], "--rule: model 'mlp' trains with its own optimizer (sgd)"),
        (["train", "--scenario", "sequence", "--dataset", "mnist5k", "digits", "--tasks", "5"],
         "--tasks: --scenario sequence has one task per --dataset (2 here), got --tasks 5"),
        (["train", "--resume", "somewhere", "--out", "elsewhere"], "--resume continues in RUN_DIR itself; remove --out"),
        (["reproduce", "fig5ab", "--seeds", "-1"], "--seeds must list one or more distinct integers in 0..18446744073709551615"),
        (["train", "--model", "bimu", "--eval-samples", "100000"], "--eval-samples must be an integer in 1..1000"),
        (["compare", "--neurons", "bimu", "mesu", "--meta", "5"],
         "--meta: none of the models compared (bimu, mesu) trains with MetaplasticAdam, whose m --meta sets"),
        (["compare", "--neurons", "leaky+bimu", "--meta", "0"],  # (an m of 0 was ignored without a word)
         "--meta: none of the models compared (leaky+bimu) trains with MetaplasticAdam, whose m --meta sets"),
        (["train", "--dataset", "digits", "--model", "leaky", "--num-steps", "1000000000"],
         "--num-steps 1000000000 needs about"),
        (["train", "--scenario", "joint", "--baseline", "ewc"],
         "--baseline ewc: --scenario joint trains its tasks as one, so no earlier task is left for its penalty to protect"),
        (["train", "--tasks", "1", "--baseline", "si"], "--baseline si: the run has one task, so no earlier task is left"),
        (["compare", "--neurons", "bnn", "mlp", "--lr", "0.01"],
         "--lr: the models compared train with different optimizers (bnn: metaplastic-adam, mlp: sgd)"),
        (["compare", "--neurons", "leaky", "mlp", "--weight-decay", "0.01"],
         "--weight-decay: the models compared train with different optimizers (leaky: metaplastic-adam, mlp: sgd), to which one setting"),
    ],
)
def test_bad_input_gets_one_clear_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metaspike: error: ") and message in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("value", ["0", "-1", "abc", ""])
def test_a_thread_setting_openmp_ignores_is_said_in_one_line(value, capsys, monkeypatch):
    """OMP_NUM_THREADS=0 got libgomp's own line only, and the run went on with the machine's thread count."""
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert main(["train", "--tasks", "0"]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first == (f"metaspike: OMP_NUM_THREADS={value!r} is not a positive integer, so it is ignored: this run uses "
                     f"{torch.get_num_threads()} threads")
    for taken in ("1", "04", "2,1"):  # (what OpenMP reads: leading zeros, a count per nesting level)
        monkeypatch.setenv("OMP_NUM_THREADS", taken)
        assert main(["train", "--tasks", "0"]) == 2
        assert "OMP_NUM_THREADS" not in capsys.readouterr().err


def test_a_run_records_only_the_optimizer_settings_its_model_takes(tmp_path):
    from metaspike.app.config import RunConfig
    from metaspike.app.models import DEFAULT_LR
    from metaspike.app.runs import RECORDED_BESIDE_SETTINGS, config_from_record

    assert main(["train", *SMALL, "--model", "mlp", "--out", str(tmp_path)]) == 0
    sgd = json.loads((tmp_path / "permuted-digits-mlp-seed1" / "config.json").read_text())
    assert (sgd["lr"], sgd["weight_decay"], sgd["meta"], sgd["rule"]) == (DEFAULT_LR["sgd"], 0.0, None, None)
    assert sgd["batchnorm_effective"] is None  # (the MLP has no BatchNorm for --batchnorm to concern)
    bayesian = RunConfig(model="mesu", batch_size=1).to_dict()
    assert [bayesian[key] for key in ("lr", "weight_decay", "meta", "rule")] == [None] * 4
    # a record written when every run held all four still loads, and says what its model trains with
    old = {**sgd, "meta": [5.0, 30.0], "rule": "tanh", "lr": 0.005}
    loaded = config_from_record(old, tmp_path / "config.json", beside=RECORDED_BESIDE_SETTINGS)
    assert (loaded.lr, loaded.weight_decay, loaded.meta, loaded.rule) == (0.005, 0.0, None, None)


def test_a_comparison_of_models_with_different_optimizers_gives_each_its_own_learning_rate():
    from metaspike.app.compare import _neuron_rows
    from metaspike.app.config import RunConfig
    from metaspike.app.models import DEFAULT_LR

    rows = _neuron_rows(RunConfig(model="bnn", lr=0.01), ["bnn", "leaky", "mlp", "bimu"], [0.0, 5.0], [1])
    lrs = {(row.labels["neuron"], row.labels["meta"]): row.configs[0].lr for row in rows}
    assert lrs == {("bnn", 0.0): 0.01, ("bnn", 5.0): 0.01, ("leaky", 0.0): 0.01, ("leaky", 5.0): 0.01,
                   ("mlp", None): DEFAULT_LR["sgd"], ("bimu", None): None}


def test_missing_data_files_say_what_to_put_where(tmp_path, capsys):
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and str(tmp_path / "fashion-mnist") in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["train", *SMALL, "--out", str(blocker / "runs")]) == 2
    assert "cannot write results to" in capsys.readouterr().err
    assert main(["train", *SMALL, "--out", str(blocker)]) == 2
    assert capsys.readouterr().err.strip() == f"metaspike: error: cannot write results to {blocker}: it is a file, not a folder"
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "gone")  # (mkdir said "File exists")
    assert main(["train", *SMALL, "--out", str(dangling)]) == 2
    assert capsys.readouterr().err.strip() == (f"metaspike: error: cannot write results to {dangling}: it is a "
                                               f"symbolic link to {tmp_path / 'gone'}, which does not exist")


def test_out_with_a_tilde_the_shell_left_alone_is_the_home_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", *SMALL, "--out=~/runs"]) == 0
    assert (tmp_path / "home" / "runs" / "permuted-digits-meta5-30-seed1" / "metrics.json").is_file()
    assert not (tmp_path / "~").exists()


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "metaspike", "train", "--tasks", "0"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == ("metaspike: error: --tasks must be an integer in 1..10000 (the metrics read the "
                                   "accuracy matrix, tasks x tasks numbers), got 0")


def test_a_library_warning_in_the_command_reads_as_the_commands_own(tmp_path):
    """A class-growing head's first task holds one class: the library's warning printed as Python's, located at
    "<frozen runpy>:88: UserWarning", beside the command's "metaspike: warning:" lines."""
    done = subprocess.run([sys.executable, "-m", "metaspike", "train", "--dataset", "digits", "--scenario", "split",
                           "--split-mode", "class-growing", "--tasks", "10", "--epochs", "1", "--hidden", "16",
                           "--quiet", "--out", str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "metaspike: warning: evaluating samples of one class only" in done.stderr
    assert "UserWarning" not in done.stderr and "runpy" not in done.stderr, done.stderr


def test_a_full_disk_gives_one_line(tmp_path, capsys, monkeypatch):
    import errno

    from metaspike import files

    def full(path, mode="w"):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(files, "atomic_open", full)
    monkeypatch.setattr("metaspike.continual.results.atomic_open", full)
    monkeypatch.setattr("metaspike.files.atomic_write_text", lambda path, text: full(path))
    monkeypatch.setattr("metaspike.continual.results.atomic_write_text", lambda path, text: full(path))
    assert main(["train", "--dataset", "digits", "--tasks", "1", "--epochs", "1", "--hidden", "8", "--quiet",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metaspike: error: cannot read or write ") and err.endswith("No space left on device")
    assert len(err.splitlines()) == 1


def test_a_file_size_limit_mid_run_names_the_file_and_the_resume_command(tmp_path):
    """A real write failure (the file-size limit, as a full disk does it: inside torch.save's archive writer, which
    wraps the error in a RuntimeError naming no file): one line with the file and the command that continues."""
    resource = pytest.importorskip("resource")

    def limit_file_size():  # 40 KiB: the small files fit, the first checkpoint does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (40 * 1024, resource.RLIM_INFINITY))

    from metaspike.optim import FUSED_MIN_NUMEL

    assert 784 * 32 < FUSED_MIN_NUMEL  # nothing is compiled, which the file-size limit would also stop
    done = subprocess.run([sys.executable, "-m", "metaspike", "train", "--dataset", "digits", "--tasks", "2",
                           "--epochs", "1", "--hidden", "32", "--quiet", "--out", str(tmp_path)],
                          capture_output=True, text=True, preexec_fn=limit_file_size)
    run = next(tmp_path.iterdir())
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"metaspike: error: cannot read or write {run / 'checkpoint.pt'}: File too large; "
                                   f"what was written so far is kept: once the file can be written, continue with: "
                                   f"metaspike train --resume {run}")
    assert not list(run.glob(".*.tmp"))  # the half-written temporary file is gone
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert json.loads((run / "metrics.json").read_text())["complete"] is True


def test_atomic_open_names_its_file_when_torch_save_wraps_the_failure(tmp_path):
    import errno

    from metaspike.files import atomic_open

    target = tmp_path / "checkpoint.pt"
    with pytest.raises(OSError) as caught:
        with atomic_open(target, "wb"):
            raise RuntimeError("unexpected pos 64 vs 0") from OSError(errno.ENOSPC, "No space left on device")
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="not a file failure"):  # other errors pass unchanged
        with atomic_open(target, "wb"):
            raise RuntimeError("not a file failure")


def test_a_stop_landing_inside_torch_save_is_the_stop_not_the_archive_writers_error(tmp_path):
    """A SIGTERM landing while ``torch.save`` wrote a checkpoint ended the command with a traceback: the signal's
    exception unwound torch's archive writer, whose own exit then failed ("unexpected pos ...") over it."""
    import io

    from metaspike.files import atomic_open
    from metaspike.stops import Terminated

    class StoppedAtThirdWrite(io.RawIOBase):  # (the signal's handler runs inside one of torch.save's writes)
        def __init__(self, handle):
            self.handle, self.writes = handle, 0

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            self.writes += 1
            if self.writes == 3:
                raise Terminated
            return self.handle.write(data)

    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the last good checkpoint")
    with pytest.raises(Terminated) as caught:
        with atomic_open(target, "wb") as handle:
            torch.save({"w": torch.ones(1000), "v": torch.zeros(1000)}, StoppedAtThirdWrite(handle))
    assert isinstance(caught.value.__context__, RuntimeError)  # (what torch's writer raised over it)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert target.read_bytes() == b"the last good checkpoint"
    try:  # a stop being handled as the write starts is the caller's: the write's own error is what happened
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        with pytest.raises(ValueError, match="the write's own"):
            with atomic_open(target, "wb"):
                raise ValueError("the write's own")


def test_a_comparison_that_fails_its_checks_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", "--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "8", "--meta", "0",
                 "5,30,30", "--quiet", "--out", str(out)]) == 2
    assert "--meta takes one value or one per layer (2 for --hidden 8), got 3" in capsys.readouterr().err
    assert not out.exists()


def test_a_comparison_resumed_refuses_a_run_whose_matrix_is_not_its_own(tmp_path, capsys):
    # a finished run's matrix copied from another setting's run would stand for it in the table
    args = ["compare", *SMALL, "--meta", "0", "5", "--out", str(tmp_path)]
    assert main(args) == 0
    root = next(tmp_path.glob("compare-*"))
    plain, consolidated = root / "permuted-digits-meta0-seed1", root / "permuted-digits-meta5-seed1"
    (plain / "accuracy_matrix.csv").write_text((consolidated / "accuracy_matrix.csv").read_text())
    capsys.readouterr()
    assert main(["compare", "--resume", str(root), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"metaspike: error: {plain / 'accuracy_matrix.csv'}'s last row differs from the "
                                       f"final_accuracy of {plain / 'metrics.json'}: one of them was edited or copied "
                                       "from another run\n")


def test_a_comparison_resumed_keeps_a_finished_run_that_lost_its_config(tmp_path, capsys):
    """A run folder without config.json was taken for one killed while it was made, and removed with everything it
    recorded (its matrix, metrics and model), then trained again without a word."""
    args = ["compare", *SMALL, "--meta", "0", "5", "--out", str(tmp_path)]
    assert main(args) == 0
    root = next(tmp_path.glob("compare-*"))
    plain = root / "permuted-digits-meta0-seed1"
    recorded = {p.name: p.read_bytes() for p in plain.iterdir() if p.is_file()}
    (plain / "config.json").unlink()
    capsys.readouterr()
    assert main(["compare", "--resume", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metaspike: error: {plain} has no config.json but holds ") and "put it back" in err, err
    assert {p.name: p.read_bytes() for p in plain.iterdir() if p.is_file()} == {
        name: data for name, data in recorded.items() if name != "config.json"}  # (left as it was)
    (plain / "config.json").write_bytes(recorded["config.json"])
    killed = root / "permuted-digits-meta5-seed1"  # killed while its folder was made: only the config's temporary
    shutil.rmtree(killed)
    killed.mkdir()
    (killed / ".config.json.a1b2.tmp").write_text("{")
    assert main(["compare", "--resume", str(root), "--quiet"]) == 0  # (that one starts again)
    assert (killed / "config.json").is_file() and not (killed / ".config.json.a1b2.tmp").exists()
    assert (plain / "model.pt").read_bytes() == recorded["model.pt"]
    shutil.rmtree(killed)  # a file where a run's folder belongs: its run went to "...-2", then failed an assert
    killed.write_text("not a run")
    before = sorted(p.name for p in root.iterdir())
    capsys.readouterr()
    assert main(["compare", "--resume", str(root), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"metaspike: error: {killed} is not a folder, where this pass keeps the run of "
                                       "that name: move it away\n")
    assert sorted(p.name for p in root.iterdir()) == before


def test_a_neuron_comparison_checks_the_models_it_compares(tmp_path, capsys):
    """--batch-size 1 is right for the listed models (no BatchNorm); the default model of train is not compared."""
    args = ["compare", "--neurons", "mlp", "--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "8",
            "--batch-size", "1", "--samples-per-task", "20", "--quiet", "--out", str(tmp_path)]
    assert main(args) == 0, capsys.readouterr().err
    assert main([*args[:2], "bnn", *args[3:]]) == 2
    assert "--batch-size 1: model 'bnn' has BatchNorm" in capsys.readouterr().err


@pytest.mark.parametrize("field, value, message", [
    ("seeds", "31", "'seeds' must be a list of integers, got '31'"),
    ("kind", "zzz", "'kind' must be one of ['meta', 'neurons']"),
    ("settings", [["x"]], "'settings' must be a list of lists of finite numbers"),
    ("seeds", [1, 1], "--seeds must list one or more distinct integers"),
    ("base", None, "it has the fields"),  # a missing field (set to None here, then removed)
    ("neurons", [], "'neurons' must be a list of at least one model name, got []"),  # (an IndexError at the table)
    ("rules", ["tanh"], "'rules' must be a list of two or more distinct rule names, got ['tanh']"),
    ("rules", ["tanh", "tanh"], "'rules' must be a list of two or more distinct rule names"),
    ("rules", "tanh cascade", "'rules' must be a list of two or more distinct rule names"),
])
def test_an_edited_comparison_plan_is_refused_in_one_line(tmp_path, capsys, field, value, message):
    root = tmp_path / "cmp"
    root.mkdir()
    plan = ({"kind": "neurons", "base": {}, "neurons": ["leaky"], "metas": [0.0], "seeds": [1]} if field == "neurons"
            else {"kind": "meta", "base": {}, "settings": [[0.0]], "seeds": [1]})
    if value is None:
        del plan[field]
    else:
        plan[field] = value
    (root / "plan.json").write_text(json.dumps(plan))
    assert main(["compare", "--resume", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{root / 'plan.json'} is not a valid comparison plan" in err and message in err and "\n" not in err, err


def test_an_unknown_setting_in_a_comparison_plans_base_is_refused_in_one_line(tmp_path, capsys):
    from metaspike.app.config import RunConfig

    root = tmp_path / "cmp"
    root.mkdir()
    base = {**RunConfig(datasets=("digits",), hidden=(8,)).to_dict(), "hiden": [16]}
    (root / "plan.json").write_text(json.dumps({"kind": "meta", "base": base, "settings": [[0.0]], "seeds": [1]}))
    assert main(["compare", "--resume", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metaspike: error: {root / 'plan.json'} is not a valid comparison plan")
    assert err.endswith("has unknown settings: 'hiden' (did you mean 'hidden'?))\n") and err.count("\n") == 1


@pytest.mark.parametrize("command, name, record, message", [
    ("compare", "plan.json", {"kind": ["meta"], "base": {}, "settings": [[0.0]], "seeds": [1]},
     "is not a valid comparison plan: 'kind' must be one of ['meta', 'neurons']"),
    ("compare", "plan.json", {"kind": "meta", "base": {}, "settings": [[10**400]], "seeds": [1]},
     "'settings' must be a list of lists of finite numbers, got [[1000000000"),
    ("reproduce", "reproduction.json", {"name": ["table1"], "scale": "cpu", "seeds": [1], "data_dir": None},
     "reproduction.json: unknown experiment ['table1']; available: fig2, table1"),
], ids=["plan-kind-list", "plan-setting-beyond-float", "reproduction-name-list"])
def test_a_record_with_a_list_or_a_huge_integer_where_a_name_or_number_goes_is_one_line(tmp_path, capsys, command,
                                                                                         name, record, message):
    """A list is valid JSON but unhashable: `"kind": ["meta"]` in plan.json and `"name": ["table1"]` in
    reproduction.json raised "TypeError: unhashable type: 'list'" from a dict look-up, and a setting of 10**400
    "OverflowError: int too large to convert to float"."""
    root = tmp_path / "folder"
    root.mkdir()
    (root / name).write_text(json.dumps(record))
    assert main([command, "--resume", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(root / name) in err and message in err and "\n" not in err, err


_FIG5AB = {"name": "fig5ab", "scale": "cpu", "seeds": [1], "data_dir": None}


@pytest.mark.parametrize("folder, record, message", [
    ("reproduce-fig5ab-cpu-2", {**_FIG5AB, "name": "fig2"},
     "it names experiment 'fig2' at scale 'cpu', but the folder was made for 'fig5ab' at 'cpu' (its name)"),
    ("reproduce-fig5ab-cpu", {**_FIG5AB, "scale": "paper"}, "it names experiment 'fig5ab' at scale 'paper', but"),
    ("reproduce-fig5ab-cpu", {**_FIG5AB, "complete": "yes"}, "complete must be true or false and ran_with a record"),
    ("reproduce-fig5ab-cpu/.", {**_FIG5AB, "name": "fig2"}, "but the folder was made for 'fig5ab' at 'cpu'"),
    ("latest -> reproduce-fig5ab-cpu", {**_FIG5AB, "name": "fig2"}, "but the folder was made for 'fig5ab' at 'cpu'"),
])
def test_a_reproduction_record_of_another_experiment_than_its_folder_is_refused_before_a_pass(tmp_path, capsys, folder,
                                                                                           record, message):
    """A record's name edited from fig5ab to fig2 (or a record copied from another folder) ran fig2 in the fig5ab
    folder and wrote its table over fig5ab's."""
    given = str(tmp_path / folder.split(" -> ")[0].removesuffix("/.")) + ("/." if folder.endswith("/.") else "")
    root = tmp_path / folder.split(" -> ")[-1].removesuffix("/.")  # ("." or a link named otherwise: the folder)
    root.mkdir()
    if " -> " in folder:
        Path(given).symlink_to(root)
    (root / "reproduction.json").write_text(json.dumps(record))
    (root / "table.csv").write_text("kept\n")
    assert main(["reproduce", "--resume", given]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"metaspike: error: {Path(given) / 'reproduction.json'}: ") and message in err, err
    assert (root / "table.csv").read_text() == "kept\n" and "\n" not in err


@pytest.mark.parametrize("argv, message", [
    (["train", "--seed", "1.5"], "metaspike train: error: argument --seed: invalid int value: '1.5'"),
    (["train", "--rule", "tanh", "cascade"], "metaspike: error: unrecognized arguments: cascade; --rule takes one "
                                             "value, got tanh cascade"),
    (["train", "--epochs=2", "3"], "metaspike: error: unrecognized arguments: 3; --epochs takes one value, got 2 3"),
    (["compare", "--model", "leaky"], "metaspike: error: unrecognized arguments: --model leaky; compare names its "
                                      "models with --neurons (one model: --neurons leaky)"),
    (["compare", "--seed", "3"], "metaspike: error: unrecognized arguments: --seed 3; compare takes --seeds"),
    (["train", "--seeds", "1", "2"], "metaspike: error: unrecognized arguments: --seeds 1 2; train runs one seed, given "
                                     "by --seed; several: compare --seeds"),
    (["train", "--split-mode", "class"], "metaspike: error: --split-mode applies to --scenario split only"),
    (["train", "--epoch", "2"], "metaspike: error: unrecognized arguments: --epoch 2; did you mean --epochs?"),
    # (was "did you mean --readout-lambda?", BiMU's readout start)
    (["compare", "--readout", "count"], "metaspike: error: unrecognized arguments: --readout count; the command's "
                                        "spiking models take one readout; other readouts are set in Python"),
])
def test_command_line_mistakes_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv) if argv[1] != "--split-mode" else sys.exit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == message or (err.startswith(message) and "\n" not in err)


def test_compare_never_reuses_one_run_for_two_settings(tmp_path, capsys):
    common = ["--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "8", "--quiet", "--out", str(tmp_path)]
    assert main(["compare", "--meta", "5", "5.0000001", *common]) == 2
    assert "meta=5 and meta=5 would be one run" in capsys.readouterr().err
    assert main(["compare", "--neurons", "bnn", "bnn", "--meta", "0", *common]) == 2
    assert "would be one run" in capsys.readouterr().err
    assert main(["compare", "--meta", "5", "5,5", *common]) == 2  # one m for both layers, written twice
    assert "meta=5:5 and meta=5 would be one run" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before a folder was made
    assert main(["compare", "--meta", "0", "5", *common]) == 0
    (folder,) = tmp_path.iterdir()
    plan = json.loads((folder / "plan.json").read_text())
    plan["base"]["hidden"] = [16]  # an edited plan must not be answered by the runs of the old one
    (folder / "plan.json").write_text(json.dumps(plan))
    capsys.readouterr()
    assert main(["compare", "--resume", str(folder), "--quiet"]) == 2
    assert "holds a run of other settings than" in capsys.readouterr().err


def test_a_batch_too_small_for_the_processes_names_the_flag(tmp_path, capsys, monkeypatch):
    import metaspike.app.runs as runs

    monkeypatch.setattr(runs, "init_from_env", lambda device: (0, 2))  # as under torchrun --nproc_per_node 2
    assert main(["train", "--dataset", "digits", "--tasks", "1", "--epochs", "1", "--hidden", "8", "--batch-size", "3",
                 "--quiet", "--out", str(tmp_path)]) == 2
    assert "--batch-size 3: 2 processes need at least 4 (BatchNorm needs two samples per process)" in capsys.readouterr().err


def test_a_comparison_resumed_while_another_process_holds_it_is_one_line(tmp_path, capsys):
    import fcntl
    import os

    from metaspike.app.runs import LOCK

    common = ["--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "8", "--quiet"]
    assert main(["compare", "--meta", "0", "5", *common, "--out", str(tmp_path)]) == 0
    (folder,) = tmp_path.iterdir()
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running `compare --resume` holds it
        capsys.readouterr()
        assert main(["compare", "--resume", str(folder), "--quiet"]) == 2
        assert "is being trained by another process" in capsys.readouterr().err
    finally:
        os.close(fd)


def test_a_task_measured_by_one_evaluation_of_a_budget_is_drawn():
    from metaspike.app.plots import _draw_curves, pyplot

    nan = float("nan")
    curves = [{"global_epoch": 3, "a": 50.0, "b": nan, "c": nan},
              {"global_epoch": 6, "a": 40.0, "b": 70.0, "c": nan},
              {"global_epoch": 7, "a": 35.0, "b": nan, "c": 80.0}]
    fig, ax = pyplot().subplots()
    _draw_curves(ax, {"curves": curves, "task_names": ["a", "b", "c"], "config": {"epochs": 1}}, "budget")
    drawn = [(list(line.get_xdata()), line.get_marker()) for line in ax.lines if line.get_label().startswith("task")]
    pyplot().close(fig)
    assert drawn == [([3, 6, 7], "None"), ([6], "o"), ([7], "o")]


@pytest.mark.parametrize("command", ["train", "compare"])
def test_ctrl_c_names_the_folder_and_the_command_that_continues_it(command, tmp_path, monkeypatch, capsys):
    from metaspike.continual import trainer as trainer_module

    real = trainer_module.train_epoch
    calls = {"n": 0}

    def interrupted_in_second_task(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", interrupted_in_second_task)
    extra = ["--meta", "0", "5"] if command == "compare" else []
    assert main([command, *SMALL, *extra, "--out", str(tmp_path)]) == 130
    folder = tmp_path / ("compare-permuted-digits" if command == "compare" else "permuted-digits-meta5-30-seed1")
    assert capsys.readouterr().err.strip().endswith(f"continue with: metaspike {command} --resume {folder}")
    monkeypatch.undo()
    if command == "train":  # the same command again starts a new run, and says which one it leaves unfinished
        assert main([command, *SMALL, *extra, "--out", str(tmp_path)]) == 0
        assert (f"metaspike: warning: {folder} holds an unfinished run; this one starts in a new folder beside it "
                f"(continue the last with: metaspike train --resume {folder})") in capsys.readouterr().err
        assert (tmp_path / f"{folder.name}-2" / "model.pt").is_file()
    else:  # the same comparison again warns as train does
        monkeypatch.setattr(trainer_module, "train_epoch", interrupted_in_second_task)
        calls["n"] = 0
        assert main([command, *SMALL, *extra, "--out", str(tmp_path)]) == 130
        assert (f"metaspike: warning: {folder} holds an unfinished comparison; this one starts in a new folder beside "
                f"it (continue the last with: metaspike compare --resume {folder})") in capsys.readouterr().err
        monkeypatch.undo()
    assert main([command, "--resume", str(folder)]) == 0  # and it does
    if command == "train":  # an unfinished run under a numbered name is named too (the base one is finished now)
        import shutil

        shutil.copytree(tmp_path / f"{folder.name}-2", tmp_path / f"{folder.name}-3")
        (tmp_path / f"{folder.name}-3" / "metrics.json").unlink()
        capsys.readouterr()
        assert main([command, *SMALL, "--out", str(tmp_path)]) == 0
        assert f"warning: {tmp_path / f'{folder.name}-3'} holds an unfinished run" in capsys.readouterr().err
    if command == "compare":  # plot names the command that redraws a comparison
        assert main(["plot", str(folder)]) == 2
        assert f"`metaspike compare --resume {folder}` redraws its table" in capsys.readouterr().err


def test_sigterm_inside_a_comparison_names_the_signal_and_the_comparison_that_continues(tmp_path, monkeypatch, capsys):
    from metaspike.stops import Terminated

    def terminated(*args, **kwargs):
        raise Terminated

    monkeypatch.setattr("metaspike.continual.trainer.train_epoch", terminated)
    assert main(["compare", *SMALL, "--meta", "0", "5", "--out", str(tmp_path)]) == 143
    folder = tmp_path / "compare-permuted-digits"
    assert capsys.readouterr().err.strip() == (f"metaspike: terminated (SIGTERM); results written so far are kept in "
                                               f"{folder}; continue with: metaspike compare --resume {folder}")


def test_ctrl_c_while_a_comparison_draws_its_figures_names_the_comparison_that_continues(tmp_path, monkeypatch,
                                                                                           capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("metaspike.app.plots.plot_comparison", interrupted)
    assert main(["compare", *SMALL, "--meta", "0", "5", "--out", str(tmp_path)]) == 130
    folder = tmp_path / "compare-permuted-digits"
    assert capsys.readouterr().err.strip().endswith(f"continue with: metaspike compare --resume {folder}")
    monkeypatch.undo()
    assert main(["compare", "--resume", str(folder), "--quiet"]) == 0
    assert (folder / "comparison.png").exists()


@pytest.mark.parametrize("signal_error", ["KeyboardInterrupt", "Terminated"])
def test_a_stop_while_a_finished_run_draws_its_figures_names_the_command_that_draws_them(tmp_path, monkeypatch, capsys,
                                                                                        signal_error):
    """It said only "metaspike: interrupted", where every other moment names the folder and what continues it."""
    from metaspike.stops import Terminated

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt if signal_error == "KeyboardInterrupt" else Terminated

    monkeypatch.setattr("metaspike.app.plots.plot_run", stopped)
    code = main(["train", *SMALL, "--out", str(tmp_path)])
    folder = tmp_path / "permuted-digits-meta5-30-seed1"
    err = capsys.readouterr().err.strip()
    assert code == (130 if signal_error == "KeyboardInterrupt" else 143) and err.count("\n") == 0, err
    assert err.endswith(f"results written so far are kept in {folder}; continue with: metaspike plot {folder}"), err
    monkeypatch.undo()
    assert main(["plot", str(folder)]) == 0 and (folder / "accuracy_curves.png").is_file()


def test_ctrl_c_before_any_folder_exists_is_one_plain_line(tmp_path, monkeypatch, capsys):
    def interrupted_while_loading(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("metaspike.app.runs.make_run_scenario", interrupted_while_loading)
    assert main(["train", *SMALL, "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "metaspike: interrupted"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, moment", [("train", "metaspike.app.runs.named_for_lost_processes"),
                                             ("compare", "metaspike.app.compare.continued_by")])
def test_a_stop_after_the_folder_is_made_but_before_the_guard_leaves_no_folder(tmp_path, monkeypatch, capsys, command,
                                                                               moment):
    """The folder stayed, empty but for its settings, so the next run took the name ``-2``; the line named nothing."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(moment, interrupted)
    assert main([command, *SMALL, "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "metaspike: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_eval_samples_sets_the_evaluation_ensemble_of_a_sampling_model(tmp_path, capsys):
    from metaspike.app.runs import build_run_model, load_config, make_run_scenario

    args = ["train", "--model", "bimu", "--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "16",
            "--batch-size", "10", "--quiet", "--out", str(tmp_path)]
    assert main([*args, "--eval-samples", "7"]) == 0 and main(args) == 0
    trained = [torch.load(tmp_path / name / "model.pt", weights_only=True)
               for name in ("permuted-digits-bimu-eval7-seed1", "permuted-digits-bimu-seed1")]
    assert all(torch.equal(trained[0][key], trained[1][key]) for key in trained[1])  # the same training
    config = load_config(tmp_path / "permuted-digits-bimu-eval7-seed1")
    model = build_run_model(config, make_run_scenario(config))
    assert config.eval_samples == 7 and [m.evaluation_samples for m in model.modules() if hasattr(m, "evaluation_samples")] == [7, 7]
    assert main(["train", "--model", "mesu", "--eval-samples", "7", *SMALL]) == 2
    assert "--eval-samples applies to models that evaluate on weight samples (bimu)" in capsys.readouterr().err
    assert main([*args, "--eval-samples", "0"]) == 2
    assert "--eval-samples must be an integer in 1..1000 (an evaluation holds that many weight samples of every layer " \
           "at once), got 0" in capsys.readouterr().err


def test_a_finished_run_keeps_what_evaluated_each_task_so_its_numbers_can_be_checked(tmp_path):
    from metaspike.app.runs import BATCHNORM_STATES, build_run_model, load_config, make_run_scenario
    from metaspike.continual import load_batchnorm_state
    from metaspike.training import evaluate

    assert main(["train", "--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "32", "--quiet",
                 "--out", str(tmp_path)]) == 0
    (run,) = tmp_path.iterdir()
    config = load_config(run)
    scenario = make_run_scenario(config)
    model = build_run_model(config, scenario)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    states = torch.load(run / BATCHNORM_STATES, weights_only=True)
    assert len(states) == 2
    final = []
    for task, state in zip(scenario.tasks, states):
        load_batchnorm_state(model, state)
        final.append(evaluate(model, task.test.x, task.test.y))
    assert [round(a, 2) for a in final] == load_run(run)["matrix"][-1]  # (the file keeps two decimals)
    # the float MLP has no BatchNorm: nothing to keep
    assert main(["train", "--model", "mlp", "--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "8",
                 "--quiet", "--out", str(tmp_path / "mlp")]) == 0
    assert not list((tmp_path / "mlp").glob(f"*/{BATCHNORM_STATES}"))


def test_a_neuron_comparison_gives_kind_only_settings_to_the_kinds_that_take_them(tmp_path):
    assert main(["compare", "--neurons", "leaky", "leaky+bimu", "--readout-lambda", "1.5", "--meta", "0", "--dataset",
                 "digits", "--tasks", "2", "--epochs", "1", "--hidden", "8", "--quiet", "--out", str(tmp_path)]) == 0
    (comparison,) = tmp_path.iterdir()
    settings = {json.loads(path.read_text())["model"]: json.loads(path.read_text())["readout_lambda"]
                for path in comparison.glob("*/config.json")}
    assert settings == {"leaky": None, "leaky+bimu": 1.5}
    assert "leaky+bimu readout_lambda=1.5" in (comparison / "comparison.txt").read_text()


def test_a_run_that_learned_nothing_says_so(tmp_path, capsys):
    common = ["--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "16", "--quiet"]
    assert main(["train", *common, "--lr", "1e-9", "--out", str(tmp_path / "still")]) == 0  # nothing moves
    err = capsys.readouterr().err
    assert "metaspike: warning: no task's accuracy rose 5 points or more above the untrained network's" in err
    assert "the model learned nothing" not in err  # (the trainer's own warning: the command says it once, its way)
    assert main(["train", *common, "--out", str(tmp_path / "default")]) == 0
    assert "learned nothing" not in capsys.readouterr().err


def test_the_hint_after_learning_nothing_names_the_flags_of_the_models_optimizer(tmp_path, capsys, monkeypatch):
    """BiMU takes no --lr or --meta (they are refused for it): its hint names the memory window instead."""
    monkeypatch.setattr("metaspike.continual.metrics.learned_nothing", lambda matrix, baseline: True)
    assert main(["train", "--model", "bimu", "--dataset", "digits", "--tasks", "1", "--epochs", "1", "--hidden", "8",
                 "--quiet", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "learned nothing; check the learning settings (--memory-window, --epochs, --samples-per-task)" in err
    assert "--lr" not in err and "--meta" not in err
    assert main(["train", "--model", "bimu", "--dataset", "digits", "--scenario", "split", "--tasks", "2", "--epochs",
                 "1", "--hidden", "8", "--quiet", "--out", str(tmp_path)]) == 0  # (split refuses --samples-per-task)
    assert "learned nothing; check the learning settings (--memory-window, --epochs) and" in capsys.readouterr().err


def test_a_comparison_names_its_runs_that_learned_nothing(tmp_path, capsys):
    assert main(["compare", "--meta", "0", "1e30", "--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden",
                 "16", "--quiet", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    # m = 1e30 damps every update that moves a weight toward zero to nothing: the signs cannot change
    assert "metaspike: warning: in 1 run(s) no task's accuracy rose 5 points or more" in err
    assert "-meta1e+30-" in err and "-meta0-" not in err
    (comparison,) = tmp_path.iterdir()
    rows = json.loads((comparison / "comparison.json").read_text())["rows"]
    assert [len(row["learned_nothing"]) for row in rows] == [0, 1]
    assert main(["compare", "--resume", str(comparison), "--quiet"]) == 0  # (a finished one: redrawn, said again)
    assert "learned nothing; check the learning settings (--lr, --meta" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--scenario", "stream", "--batchnorm", "per-task"],
     "--batchnorm per-task: --scenario stream has no task boundaries, so its BatchNorm statistics are shared"),
    (["compare", "--scenario", "split", "--split-mode", "class", "--batchnorm", "per-task"],
     "--batchnorm per-task: --scenario split (class-incremental) does not say which task a test sample is from"),
    (["train", "--model", "mlp", "--batchnorm", "shared"], "--batchnorm: model 'mlp' has no BatchNorm"),
    (["train", "--data-dir", "/nonexistent"],  # (it was ignored: run and record both)
     "--data-dir: digits comes with the installed packages and reads no data folder; leave out --data-dir"),
    (["compare", "--data-dir", "/nonexistent"], "--data-dir: digits comes with the installed packages"),
    (["train", "--scenario", "stream", "--optimizer", "per-task"],
     "--optimizer per-task: --scenario stream has no task boundaries, so one optimizer trains the whole stream"),
    (["train", "--scenario", "joint", "--eval-tasks", "6"],
     "--eval-tasks: --scenario joint evaluates its own test sets every time"),
    (["train", "--samples-per-task", "1"], "--samples-per-task 1: model 'bnn' has BatchNorm, which cannot train on "
                                           "one sample; give 2 or more"),
    (["train", "--num-steps", "4"], "--num-steps applies to spiking models; 'bnn' sees each sample once"),
    (["train", "--model", "leaky", "--num-steps", "0"], "--num-steps must be an integer >= 1, got 0"),
    (["train", "--scenario", "stream", "--tasks", "1000"], "--tasks 1000: --scenario stream cuts the 1,437 training "
     "samples into parts of as few as 1, and model 'bnn' has BatchNorm, which cannot train on one sample; give --tasks "
     "718 or fewer"),
    (["train", "--model", "bimu", "--samples-per-task", "20", "--batch-size", "100"],
     "--batch-size 100: model 'bimu' scales its optimizer's settings to 100 samples a step (summed evidence, a memory "
     "window counted in samples), but a task of 20 training samples gives steps of 20; give --batch-size 20 or less"),
    (["train", "--scenario", "stream", "--tasks", "2000", "--model", "mlp"],
     "--tasks 2000: --scenario stream cannot cut 1437 samples into 2000 subsets (one subset per task)"),
    (["train", "--scenario", "split", "--tasks", "11"], "--tasks 11: --scenario split cannot split 10 classes into 11 "
     "groups (one group of classes per task); give --tasks in 1..5 for digits (--split-mode task needs 2 classes a "
     "group)"),
    (["train", "--scenario", "split", "--split-mode", "class", "--tasks", "11"], "--tasks 11: --scenario split cannot "
     "split 10 classes into 11 groups (one group of classes per task); give --tasks in 1..10 for digits"),
    (["train", "--scenario", "split", "--tasks", "6"], "--tasks 6: --split-mode task restricts each task's outputs to "
     "its own classes, and 10 classes in 6 groups leave a group of one class, which would train nothing (cross-entropy "
     "over one class is 0) and always be predicted right; give --tasks in 1..5 for digits, or use --split-mode class "
     "or class-growing"),
    # a comparison refuses them as train does (it ran without them, and recorded some in its runs' config.json)
    (["compare", "--split-mode", "class"], "--split-mode applies to --scenario split only, not permuted"),
    (["compare", "--num-steps", "4"], "--num-steps applies to spiking models; 'bnn' sees each sample once"),
    (["compare", "--scenario", "joint", "--eval-tasks", "6"],
     "--eval-tasks: --scenario joint evaluates its own test sets every time"),
    (["compare", "--neurons", "bimu", "--lr", "0.1"],
     "--lr: model 'bimu' trains with its own optimizer (bimu) and its published settings, which do not use it"),
    (["compare", "--neurons", "bimu", "mesu", "--rule", "switch"],
     "--rule: model 'bimu' trains with its own optimizer (bimu) and its published settings, which do not use it; "
     "none of the models compared uses it"),
])
def test_a_setting_the_run_would_ignore_or_cannot_train_with_is_refused(tmp_path, capsys, argv, message):
    assert main([*argv, "--dataset", "digits", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metaspike: error: {message}") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("processes, advice", [(2, "give --batch-size 2 to 20 (2 processes need a sample each)"),
                                               (32, "32 processes need a sample each: run it in fewer processes")])
def test_the_batch_size_advice_under_torchrun_counts_its_processes(monkeypatch, processes, advice):
    """Under 2 processes "give --batch-size 1 or less" advised what the process count then refused."""
    from metaspike.app.config import RunConfig
    from metaspike.app.runs import make_run_scenario

    monkeypatch.setenv("WORLD_SIZE", str(processes))
    config = RunConfig(model="bimu", datasets=("digits",), samples_per_task=20, batch_size=100, tasks=2)
    with pytest.raises(ValueError, match=f"gives steps of 20; {re.escape(advice)}$"):
        make_run_scenario(config)


def test_a_deep_network_gets_a_folder_name_that_fits_or_one_line_saying_why_not(tmp_path, capsys):
    # the default m, one per layer, listed 91 values for 90 hidden layers: a name past the file systems' 255 bytes
    # failed as "cannot write results to --out: File name too long"
    from metaspike.app.config import MAX_NAME_BYTES, RunConfig

    assert RunConfig(hidden=(4,) * 90).name == "permuted-mnist5k-meta5-30x90-seed1"
    assert RunConfig(hidden=(4,) * 3).name == "permuted-mnist5k-meta5-30-30-30-seed1"  # (a name that fits: as before)
    assert main(["train", "--dataset", "digits", "--hidden", *["4"] * 90, "--meta", ",".join(map(str, range(91))),
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metaspike: error: the run's folder name would be ") and err.count("\n") == 1
    assert f"more than a file name may hold ({MAX_NAME_BYTES}): it lists each --dataset and each --meta value" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("field, value, message", [
    ("hidden", 64, r"--hidden must list positive integer layer widths \(a tuple, one per layer\), got 64"),
    ("meta", 5.0, r"--meta takes one value or one per layer, as a tuple of numbers \(meta=\(5.0,\) for one\), "
                  r"got 5.0"),
    ("meta", range(2), r"--meta takes one value or one per layer, as a tuple of numbers, got range\(0, 2\)")])
def test_a_run_config_given_one_number_for_a_list_is_one_line(field, value, message):
    """``RunConfig(meta=5.0)`` (as one writes it for build_trainer) ended in Python's 'float' object is not iterable."""
    from metaspike.app.config import RunConfig

    with pytest.raises(ValueError, match=f"^{message}$"):
        RunConfig(**{field: value})
    as_lists = RunConfig(hidden=[8, 4], meta=[3.0])  # (lists are taken, and kept as tuples: the config is hashable)
    assert as_lists.hidden == (8, 4) and as_lists.meta == (3.0,) and hash(as_lists)


def test_a_run_config_holds_numbers_of_other_kinds_as_python_floats_which_its_name_and_config_file_format():
    """``RunConfig(meta=(Fraction(5),))`` ended in a TypeError from the name's format string, and ``lr=Fraction(1,
    1000)`` was kept as a Fraction, which ``config.json`` cannot hold."""
    from fractions import Fraction

    import numpy as np

    from metaspike.app.config import RunConfig

    config = RunConfig(hidden=(64,), meta=(Fraction(5), np.float32(30.0)), lr=Fraction(1, 1000),
                       weight_decay=np.float64(0.5))
    assert config.meta == (5.0, 30.0) and config.lr == 0.001 and config.weight_decay == 0.5
    assert all(type(v) is float for v in (*config.meta, config.lr, config.weight_decay))
    assert config.name == RunConfig(hidden=(64,), meta=(5.0, 30.0)).name and json.loads(json.dumps(config.__dict__))["lr"] == 0.001
    bimu = RunConfig(model="bimu", memory_window=np.int64(875), readout_lambda=Fraction(1, 2))
    assert (bimu.memory_window, bimu.readout_lambda) == (875.0, 0.5) and bimu.name.endswith("-N875-readout0.5-seed1")
    assert type(RunConfig(model="bimu", memory_window=875).memory_window) is int  # (ints are kept as they are)
    assert RunConfig(meta=(np.float32(1.35),)).meta == (1.35,)  # (as its name shows it, not 1.350000023841858)
    with pytest.raises(ValueError, match=r"^--lr must be a finite number > 0, got Fraction\(1000"):
        RunConfig(lr=Fraction(10**400))  # (beyond float's range: float() raised OverflowError)


def test_plot_of_a_path_that_is_no_run_folder_says_what_it_is(tmp_path, capsys):
    """A missing path, a file and a folder of runs (a part of a reproduction) were each called "not a run directory
    (no accuracy_matrix.csv)"."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "runs" / "run-seed2").mkdir(parents=True)
    (tmp_path / "runs" / "run-seed2" / "config.json").write_text("{}")
    for path, message in ((tmp_path / "nowhere", "no such folder"), (tmp_path / "afile", "not a folder")):
        assert main(["plot", str(path)]) == 2
        assert capsys.readouterr().err.strip() == (f"metaspike: error: {path}: {message} (plot takes a run folder, "
                                                   "e.g. runs/permuted-mnist5k-meta5-30-30-seed1)")
    assert main(["plot", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip() == (f"metaspike: error: {tmp_path / 'runs'} holds run folders (run-seed2), "
                                               "not a run's results: plot one of them, e.g. metaspike plot "
                                               f"{tmp_path / 'runs' / 'run-seed2'}")


def test_a_finished_run_that_lost_its_matrix_says_to_put_it_back_or_run_it_again(tmp_path):
    """A comparison's resume stopped at such a run with "not a run directory (no accuracy_matrix.csv)"."""
    from metaspike.app.runs import finished_result

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"")
    (run / "metrics.json").write_text('{"complete": true}')
    with pytest.raises(ValueError, match=r"^.*run is a finished run without its accuracy_matrix.csv \(moved or "
                                         r"deleted\?\): put it back, or delete the run's folder to run it again$"):
        finished_result(run)


def test_plot_of_a_folder_that_holds_no_figures_yet_says_what_to_run(tmp_path, capsys):
    run = tmp_path / "stopped-early"
    run.mkdir()
    (run / "config.json").write_text("{}")  # (a run killed before its first evaluation has its config only)
    assert main(["plot", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (f"metaspike: error: {run} has measured nothing yet (stopped before its "
                                               f"first evaluation): continue it with: metaspike train --resume {run}")
    (run / "config.json").write_text('{"imports": ["/lab/my lab.py"], "processes": 2}')  # (the command it needs)
    assert main(["plot", str(run)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"torchrun --nproc-per-node 2 -m metaspike train --resume {run} --import '/lab/my lab.py'")
    (run / "config.json").write_text("{}")
    (run / "metrics.json").write_text('{"complete": true}')  # a finished run whose matrix file went missing
    (run / "model.pt").write_bytes(b"")
    assert main(["plot", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (f"metaspike: error: {run} is a finished run without its "
                                               "accuracy_matrix.csv (moved or deleted), which its figures are drawn "
                                               "from; its metrics.json and curves.csv hold the numbers")
    reproduction = tmp_path / "reproduce-fig3-cpu"
    reproduction.mkdir()
    (reproduction / "reproduction.json").write_text("{}")
    assert main(["plot", str(reproduction)]) == 2
    assert capsys.readouterr().err.strip().endswith("(finished runs are reused); `metaspike plot` redraws one run of it")
    quadratic = tmp_path / "reproduce-fig5ab-cpu"
    quadratic.mkdir()
    (quadratic / "reproduction.json").write_text('{"name": "fig5ab"}')
    assert main(["plot", str(quadratic)]) == 2  # (it suggested plotting one of the runs fig5ab does not keep)
    assert capsys.readouterr().err.strip().endswith(f"is a reproduce folder: `metaspike reproduce --resume {quadratic}` "
                                                    "redraws its table and figures (it keeps no runs to plot)")


def test_a_run_refused_before_it_measured_anything_leaves_no_folder_to_resume(tmp_path, capsys):
    """Data the model cannot train on is found once training starts, after the run's folder was made: a folder left
    behind would be offered for --resume by every later run, and refused again."""
    import numpy as np

    from metaspike.data import write_idx

    folder, rng = tmp_path / "data" / "mnist", np.random.default_rng(0)
    for prefix, n in (("train", 1), ("t10k", 20)):  # one training image: BatchNorm has no batch statistics
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    args = ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--tasks", "2", "--epochs", "1",
            "--hidden", "8", "--quiet", "--out", str(tmp_path / "runs")]
    assert main(args) == 2
    assert "holds one sample, and the model's BatchNorm normalises by the statistics of the batch" in capsys.readouterr().err
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_sequence_records_one_task_per_dataset(tmp_path):
    """--scenario sequence trains one task per --dataset: config.json records that count, not --tasks' default."""
    assert main(["train", "--scenario", "sequence", "--dataset", "digits", "--epochs", "1", "--hidden", "16",
                 "--quiet", "--out", str(tmp_path)]) == 0
    config = json.loads((tmp_path / "sequence-digits-meta5-30-seed1" / "config.json").read_text())
    assert config["tasks"] == 1
    from metaspike.app.config import RunConfig

    assert RunConfig(scenario="sequence", datasets=("digits", "mnist5k")).tasks == 2


def test_a_comparison_under_another_rule_names_it_in_its_folder_and_rows(tmp_path, capsys):
    assert main(["compare", *SMALL, "--meta", "0", "5", "--rule", "cascade", "--baseline", "si", "--out", str(tmp_path)]) == 0
    folder = tmp_path / "compare-permuted-digits-cascade-si0.1"
    rows = list(csv.DictReader(open(folder / "comparison.csv")))
    assert [row["setting"] for row in rows] == ["meta=0 rule=cascade si c=0.1", "meta=5 rule=cascade si c=0.1"]
    assert "meta=5 rule=cascade si c=0.1" in capsys.readouterr().out


def test_version_names_metaspike_and_torch(capsys):
    import metaspike

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"metaspike {metaspike.__version__}, torch {torch.__version__}\n"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-task run (digits, 8 hidden units), trained once for the tests that read it back."""
    from metaspike.app.config import RunConfig
    from metaspike.app.runs import run

    path, _ = run(RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(8,)), tmp_path_factory.mktemp("runs"),
                  progress=False, plot=False)
    return path


def _copy_with_metrics(source: Path, target: Path, **changed) -> Path:
    """A copy of the run folder ``source`` at ``target`` whose metrics.json holds ``changed`` (None: null)."""
    import shutil

    shutil.copytree(source, target)
    metrics = json.loads((target / "metrics.json").read_text())
    (target / "metrics.json").write_text(json.dumps({**metrics, **changed}))
    return target


def test_a_run_read_back_reports_the_metrics_it_recorded(finished_run, tmp_path):
    """finished_result recomputed the metrics from the matrix's two decimals: FWT -6.25 in metrics.json came back
    -6.245 (-6.2 in a table). What metrics.json records (null: NaN) is what a comparison or reproduction reports."""
    import math

    from metaspike.app.runs import finished_result
    from metaspike.continual import ContinualResult

    recorded = json.loads((finished_run / "metrics.json").read_text())
    result = finished_result(finished_run)
    for key in ("ACC", "BWT", "FWT", "forgetting"):
        assert result.metrics[key] == recorded[key] or (recorded[key] is None and math.isnan(result.metrics[key]))
    # (a value the matrix's two decimals allow, 0.005 off each cell, is the run's: it comes back as recorded)
    from_matrix = ContinualResult(result.task_names, matrix=result.matrix, baseline=result.baseline).metrics
    acc, bwt = round(from_matrix["ACC"] + 0.004, 3), round(from_matrix["BWT"] - 0.009, 3)
    edited = finished_result(_copy_with_metrics(finished_run, tmp_path / "run", ACC=acc, BWT=bwt))
    assert edited.metrics["ACC"] == acc and edited.metrics["BWT"] == bwt and edited.metrics["FWT"] == recorded["FWT"]
    assert edited.matrix == result.matrix and edited.task_names == result.task_names
    assert repr(edited).startswith("ContinualResult(2 tasks") and f"ACC {acc:.2f}" in repr(edited)
    # (a metric recorded as undefined is the run's word: the files do not say whether its evaluated tasks were the
    # trained ones, which a Python scenario's own evaluation tasks are not)
    undefined = finished_result(_copy_with_metrics(finished_run, tmp_path / "undefined", FWT=None))
    assert math.isnan(undefined.metrics["FWT"]) and undefined.metrics["ACC"] == recorded["ACC"]


@pytest.mark.parametrize("changed, message", [
    (lambda m, r: {"ACC": 99.0}, "records 'ACC' 99.0, where the run's accuracy_matrix.csv and untrained_accuracy "),
    (lambda m, r: {"BWT": round(m["BWT"] + 0.02, 3)}, "records 'BWT' "),
    (lambda m, r: {"forgetting": round(m["forgetting"] - 0.02, 3)}, "records 'forgetting' "),
    (lambda m, r: {"evaluated_accuracy": m["ACC"], "evaluated_tasks": 2, "last5_accuracy": m["ACC"],
                   "task1_accuracy": r["final_accuracy"][0]}, "records 'evaluated_accuracy', a long stream's metric"),
    (lambda m, r: {"untrained_accuracy": [r["untrained_accuracy"][0], r["untrained_accuracy"][1] + 1.0]},
     "records 'FWT' "),
], ids=["ACC", "BWT", "forgetting", "long-stream-metrics", "untrained"])
def test_a_run_read_back_whose_metrics_contradict_its_matrix_is_one_line(finished_run, tmp_path, changed, message):
    """A comparison or reproduction reads a finished run's metrics from metrics.json: an edited "ACC": 99.0 stood in
    the table and comparison.json beside the matrix that gives 72.6 (only an edited last matrix row was caught).
    Each metric is now recomputed from the matrix and untrained accuracies the files hold, and one that differs by
    more than their rounding allows is refused, naming metrics.json and the metric."""
    from metaspike.app.runs import finished_result
    from metaspike.continual import ContinualResult

    result, recorded = finished_result(finished_run), json.loads((finished_run / "metrics.json").read_text())
    from_matrix = ContinualResult(result.task_names, matrix=result.matrix, baseline=result.baseline).metrics
    run = _copy_with_metrics(finished_run, tmp_path / "run", **changed(from_matrix, recorded))
    with pytest.raises(ValueError) as info:
        finished_result(run)
    assert str(info.value).startswith(f"{run / 'metrics.json'} {message}") and "\n" not in str(info.value), info.value


@pytest.mark.parametrize("changed, message", [
    ({"ACC": 100.5}, "'ACC' must be a number in [0, 100], or null where undefined"),
    ({"BWT": "-3.0"}, "'BWT' must be a number in [-100, 100], or null where undefined"),
    ({"FWT": float("inf")}, "'FWT' must be a number in [-100, 100], or null where undefined"),
    ({"forgetting": True}, "'forgetting' must be a number in [-100, 100], or null where undefined"),
    ({"evaluated_accuracy": 50.0}, "records 'evaluated_accuracy' of a long stream's metrics without the others"),
    ({"evaluated_accuracy": 50.0, "evaluated_tasks": 3, "last5_accuracy": 50.0, "task1_accuracy": 50.0},
     "'evaluated_tasks' must be a whole number in [0, 2]"),
    ({"evaluated_accuracy": 50.0, "evaluated_tasks": 2, "last5_accuracy": 150.0, "task1_accuracy": 50.0},
     "'last5_accuracy' must be a number in [0, 100]"),
])
def test_a_run_read_back_with_recorded_metrics_out_of_range_is_one_line(finished_run, tmp_path, changed, message):
    from metaspike.app.runs import finished_result

    run = _copy_with_metrics(finished_run, tmp_path / "run", **changed)
    with pytest.raises(ValueError) as info:
        finished_result(run)
    assert str(info.value).startswith(f"{run / 'metrics.json'} is malformed: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_run_read_back_without_a_recorded_metric_is_one_line(finished_run, tmp_path):
    from metaspike.app.runs import finished_result

    run = _copy_with_metrics(finished_run, tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["forgetting"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"metrics.json is malformed: 'forgetting' must be a number in \[-100, 100\]"):
        finished_result(run)


def test_a_comparison_reports_what_its_runs_recorded(tmp_path, capsys):
    """The comparison's table and CSV showed metrics recomputed from the matrix's two decimals (FWT -6.2 for a run
    whose metrics.json and `train` said -6.25 / -6.3); read back again by --resume, the table is the runs' own."""
    from metaspike.app.tables import decimal_text

    assert main(["compare", *SMALL, "--meta", "0", "--out", str(tmp_path)]) == 0
    root = next(tmp_path.glob("compare-*"))
    run = root / "permuted-digits-meta0-seed1"

    def table() -> dict[str, str]:
        return next(csv.DictReader(open(root / "comparison.csv")))

    recorded = json.loads((run / "metrics.json").read_text())
    for key in ("ACC", "BWT", "FWT", "forgetting"):  # (one seed: the mean is the run's value, to 3 decimals)
        assert table()[f"{key}_mean"] == ("" if recorded[key] is None else decimal_text(recorded[key], 3)), key
    # (what metrics.json records, within the rounding of the matrix's cells: 0.005 each; a metric beyond it is refused)
    final = [float(cell) for cell in list(csv.reader(open(run / "accuracy_matrix.csv")))[-1][1:]]
    acc = round(sum(final) / len(final) + 0.004, 3)
    (run / "metrics.json").write_text(json.dumps({**recorded, "ACC": acc}))
    capsys.readouterr()
    assert main(["compare", "--resume", str(root), "--quiet"]) == 0
    assert table()["ACC_mean"] == decimal_text(acc, 3)
    line = next(line for line in (root / "comparison.txt").read_text().splitlines() if line.startswith("meta=0"))
    assert line.split()[3] == f"{acc:.1f}"  # (after the setting and two tasks: ACC)


def test_a_comparison_resumed_refuses_a_run_whose_metrics_its_matrix_contradicts(tmp_path, capsys):
    """An edited "ACC": 99.0 in a finished run's metrics.json stood in compare --resume's table and comparison.json,
    where the run's matrix gives 72.6; now it is one line naming the file and the metric, and nothing is rewritten."""
    assert main(["compare", *SMALL, "--meta", "0", "--out", str(tmp_path)]) == 0
    root = next(tmp_path.glob("compare-*"))
    run = root / "permuted-digits-meta0-seed1"
    table = (root / "comparison.json").read_bytes()
    (run / "metrics.json").write_text(json.dumps({**json.loads((run / "metrics.json").read_text()), "ACC": 99.0}))
    capsys.readouterr()
    assert main(["compare", "--resume", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metaspike: error: {run / 'metrics.json'} records 'ACC' 99.0, where the run's ") and \
        err.count("\n") == 1, err
    assert (root / "comparison.json").read_bytes() == table


def test_a_run_under_a_path_an_ascii_terminal_cannot_print_ends_well(tmp_path):
    import os

    out = tmp_path / "résultats"
    done = subprocess.run([sys.executable, "-m", "metaspike", "train", "--dataset", "digits", "--tasks", "2",
                           "--epochs", "1", "--hidden", "16", "--quiet", "--out", str(out)],
                          capture_output=True, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr
    run = next(out.iterdir())
    assert f"results: {str(run).replace('é', chr(92) + 'xe9')}".encode() in done.stdout
    assert json.loads((run / "metrics.json").read_text())["complete"] is True


@pytest.mark.parametrize("scenario, effective", [("stream", "shared"), ("permuted", "per-task")])
def test_config_json_records_the_optimizer_mode_the_run_trained_with(tmp_path, scenario, effective):
    small = [*SMALL[:SMALL.index("--hidden")], "--hidden", "8", "--quiet"]  # (a flag given twice is refused)
    assert main(["train", *small, "--scenario", scenario, "--out", str(tmp_path)]) == 0
    (config,) = tmp_path.glob("*/config.json")
    record = json.loads(config.read_text())
    assert (record["optimizer"], record["optimizer_effective"]) == ("per-task", effective)  # (a stream: one optimizer)


def test_the_help_of_standardize_says_spiking_models_take_it(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.index("--standardize feed")
    said = text[start:text.index("--lr ", start)]
    assert "spiking models too" in said and "not for spiking" not in said


def test_several_datasets_for_a_scenario_of_one_are_refused_naming_the_flag(tmp_path, capsys):
    assert main(["train", "--tasks", "2", "--dataset", "digits", "mnist5k", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == ("metaspike: error: --dataset: --scenario permuted takes one dataset, got 2 (digits, mnist5k); give "
                   "one, or --scenario sequence to train several in turn\n")
    assert not any(tmp_path.iterdir())


def test_a_verdict_never_says_a_model_forgets_a_negative_number_of_points():
    """A BiMU kind that failed on plasticity was said to forget "-11.7 points"; the other verdicts say what a negative
    forgetting means: nothing forgotten, the earlier tasks gained."""
    from metaspike.app.compare import tradeoff_rows

    def row(neuron, meta, forgetting, first, last):
        return {"neuron": neuron, "meta": meta, "runs": 1, "ACC": (50.0, 0.0), "forgetting": (forgetting, 0.0),
                "task 1": (first, 0.0), "task 2": (last, 0.0)}

    failing = [row("leaky", 0.0, 26.7, 8.9, 65.0), row("leaky+bimu", float("nan"), -11.7, 42.2, 44.7)]
    assert tradeoff_rows(failing)[1]["verdict"] == (
        "FAILS: BiMU forgets nothing (its earlier tasks gained 11.7 points) (m=0: 26.7) but its last task is -20.3 "
        "points, beyond 5")
    unprotected = [row("leaky", 0.0, -2.0, 60.0, 65.0), row("leaky", 10.0, -1.0, 61.0, 64.0)]
    assert tradeoff_rows(unprotected)[0]["verdict"] == (
        "nothing to protect: m = 0 forgets nothing (its earlier tasks gained 2.0 points); m=10 forgets nothing (its "
        "earlier tasks gained 1.0 points), last task -1.0 points")


@pytest.mark.parametrize("argv, flag", [
    (["train", "--meta", "1", "--meta", "2"], "--meta"),
    (["train", "--hidden", "8", "16", "--hidden=4"], "--hidden"),
    (["compare", "--dataset", "digits", "--dataset", "mnist5k"], "--dataset"),
])
def test_a_flag_that_takes_its_value_once_is_refused_when_given_twice(argv, flag, capsys):
    """argparse kept the last value silently: --meta 1 --meta 2 trained at m = 2 (named meta2)."""
    with pytest.raises(SystemExit):
        main(argv)
    assert capsys.readouterr().err.endswith(f"error: {flag} is given 2 times; give it once (one value, or its values "
                                            f"after one {flag})\n")


def test_a_comparison_of_runs_made_with_other_arithmetic_says_so_and_records_it(tmp_path, capsys):
    """A comparison resumed under another thread count (or with runs from another machine or version) put their numbers
    in one table without a word; the table's record did not say what the runs ran with."""
    assert main(["compare", *SMALL, "--meta", "0", "5", "--out", str(tmp_path)]) == 0
    folder = tmp_path / "compare-permuted-digits"
    recorded = json.loads((folder / "comparison.json").read_text())["ran_with"]
    assert recorded["threads"] == [torch.get_num_threads()] and len(recorded["cpu"]) == 1
    assert "warning" not in capsys.readouterr().err
    config = next(folder.glob("*meta5*")) / "config.json"
    edited = {**json.loads(config.read_text()), "threads": torch.get_num_threads() + 1}
    config.write_text(json.dumps(edited))
    assert main(["compare", "--resume", str(folder), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("metaspike: warning: the runs of this table ran with different arithmetic: threads ") == 1, err
    assert json.loads((folder / "comparison.json").read_text())["ran_with"]["threads"] == sorted(
        [torch.get_num_threads(), torch.get_num_threads() + 1])


def test_a_comparison_with_progress_names_each_run_before_it_starts(tmp_path, capsys):
    """Every run's bars read "task 1/2 ... task 2/2" alike: nothing said which run, or how many were left."""
    assert main(["compare", *[a for a in SMALL if a != "--quiet"], "--meta", "0", "5", "--out", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("run ")]
    assert lines == ["run 1/2: permuted-digits-meta0-seed1", "run 2/2: permuted-digits-meta5-seed1"]


def test_a_run_continued_under_other_arithmetic_is_counted_by_its_table(tmp_path, monkeypatch):
    """config.json keeps the arithmetic a run started with: a comparison whose last run was resumed under another
    thread count recorded the start's alone (threads [1]) and did not warn."""
    from metaspike.app.runs import CONTINUED_WITH, _arithmetic_changes, ran_with

    assert main(["train", *SMALL, "--out", str(tmp_path)]) == 0
    run = next(tmp_path.glob("permuted-digits-*"))
    threads = torch.get_num_threads()
    assert _arithmetic_changes(run) == [] and not (run / CONTINUED_WITH).exists()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    assert "continues with threads" in _arithmetic_changes(run)[0]
    recorded, warning = ran_with([run])
    assert recorded["threads"] == [threads, threads + 1] and "ran with different arithmetic" in warning
