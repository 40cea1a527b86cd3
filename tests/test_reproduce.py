"""metaspike reproduce: the quadratic task, the flip test, method runs, the registry and the command line."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import fields, replace

import pytest
import torch

import bnn
from metaspike.app.cli import main
from metaspike.app.config import RunConfig
from metaspike.app.reproduce import reproduce
from metaspike.app.reproduce.continual import Method, compare_methods, run_method
from metaspike.app.reproduce.experiments import EXPERIMENTS
from metaspike.app.reproduce.flips import flip_loss_increase
from metaspike.app.reproduce.quadratic import QuadraticTask, train_quadratic
from metaspike.app.reproduce.scales import meta_at
from metaspike.app.runs import BUILT_BY_REPRODUCE, load_config
from metaspike.data import load_dataset

TINY = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(32,), batch_size=50)
#: fig3's pair of datasets at CPU scale, made small: what its tests check does not depend on the size.
TINY_SEQUENCE = RunConfig(scenario="sequence", datasets=("mnist5k", "digits"), epochs=2, hidden=(32,))


@pytest.fixture
def tiny_fig3(monkeypatch):
    """fig3 at CPU scale with 2 epochs a dataset and one hidden layer of 32 (10 epochs of 256-256 otherwise)."""
    from metaspike.app.reproduce import experiments

    monkeypatch.setattr(experiments, "CPU_SEQUENCE", TINY_SEQUENCE)


@pytest.mark.parametrize("seed", [1, 2])
def test_quadratic_task_metaplasticity_keeps_more_signs(seed):
    task1 = QuadraticTask.random(100, seed)
    task2 = task1.moved(seed + 10_000)
    plain = train_quadratic(task1, task2, meta=0.0, steps=500, seed=seed)
    meta = train_quadratic(task1, task2, meta=1.35, steps=500, seed=seed)
    # measured: signs kept 45/54 % (m=0) vs 72/70 % (m=1.35); task-1 loss increase 41/31 vs 15/16
    assert meta["signs_kept"] > plain["signs_kept"] + 5
    assert meta["loss1_increase"] < plain["loss1_increase"]
    assert plain["loss2_after_task2"] < meta["loss2_after_task2"]  # the price: task 2 is learned less well


def test_quadratic_hessian_is_positive_definite_and_seeded():
    task = QuadraticTask.random(30, seed=4)
    assert torch.linalg.eigvalsh(task.hessian).min() > 0.05
    assert torch.equal(task.optimum, QuadraticTask.random(30, seed=4).optimum)


def test_flip_loss_increase_restores_weights_and_grows_with_magnitude():
    torch.manual_seed(0)
    model = bnn.MLP([784, 64, 10])
    train = load_dataset("digits")
    bnn.fit(model, train, epochs=3, meta=10.0, progress=False)
    before = [p.clone() for p in model.parameters()]
    bins = flip_loss_increase(model, train.x[:600], train.y[:600], flips=784 * 64 // 10, repeats=2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert [b["low"] <= b["high"] for b in bins] == [True] * 5
    assert bins[-1]["loss_increase"] > bins[0]["loss_increase"]


def test_flip_rejects_too_many_flips():
    with pytest.raises(ValueError, match="cannot flip"):
        flip_loss_increase(bnn.MLP([4, 3, 2]), torch.randn(4, 4), torch.randint(0, 2, (4,)), flips=100)


@pytest.mark.parametrize("method", [
    Method("EWC", baseline="ewc", strength=100.0), Method("SI", baseline="si", strength=1.0),
    Method("random", baseline="random", strength=100.0), Method("joint", joint=True), Method("DNN", meta=5.0, dnn=True),
    Method("per-layer m", meta=(5.0, 30.0)),
])
def test_each_method_runs_and_writes_a_run_directory(method, tmp_path):
    result = run_method(TINY, method, tmp_path)
    assert len(result.matrix[-1]) == 2 and len(result.matrix) == (1 if method.joint else 2)
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "metrics.json").exists() and not (run_dir / "checkpoint.pt").exists()
    expected_meta = list(method.meta) if isinstance(method.meta, tuple) else method.meta
    assert json.loads((run_dir / "config.json").read_text())["meta"] == expected_meta


def test_compare_methods_writes_paper_column_table_and_figure(tmp_path):
    rows = compare_methods(TINY, [Method("BNN m=0"), Method("BNN m=10", meta=10.0)], [1, 2], tmp_path,
                           {"BNN m=0": "n/a"}, "demo")
    assert [r["runs"] for r in rows] == [2, 2]
    table = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [r["setting"] for r in table] == ["BNN m=0", "BNN m=10"]
    assert table[0]["paper"] == "n/a" and float(table[0]["ACC_std"]) >= 0
    assert (tmp_path / "figure.png").stat().st_size > 0


def test_unknown_baseline_is_rejected():
    with pytest.raises(ValueError, match="unknown baseline"):
        Method("x", baseline="lwf")


def test_meta_mapping_and_registry():
    assert meta_at("cpu", 0.0) == 0.0 and meta_at("cpu", 1.35) == pytest.approx(10.0)
    assert set(EXPERIMENTS) == {"fig2", "table1", "fig3", "stream", "fig5ab", "fig5cde", "long-stream"}


def test_reproduce_fig5ab_writes_table_and_figure(tmp_path):
    root, rows = reproduce("fig5ab", "cpu", [1], tmp_path)
    assert [r["setting"] for r in rows] == ["m=0", "m=0.5", "m=1", "m=1.35"]
    assert (root / "table.csv").exists() and (root / "fig5ab.png").exists()
    assert rows[-1]["signs_kept"][0] > rows[0]["signs_kept"][0]
    ran_with = json.loads((root / "reproduction.json").read_text())["ran_with"]  # (no run folders: this process's)
    assert ran_with["threads"] == [torch.get_num_threads()] and ran_with["torch"] == [torch.__version__]


def test_a_reproduction_records_its_device_and_resumes_on_it(tmp_path, capsys):
    """reproduce had no --device: --scale paper, which README said needs a GPU, could only run on the CPU."""
    if not torch.cuda.is_available():
        assert main(["reproduce", "fig5ab", "--device", "cuda", "--out", str(tmp_path)]) == 2
        assert capsys.readouterr().err == ("metaspike: error: --device 'cuda': CUDA is not available on this machine "
                                           f"(torch {torch.__version__})\n")
        assert list(tmp_path.iterdir()) == []  # (refused before its folder is made)
    assert main(["reproduce", "fig5ab", "--device", "cpu", "--quiet", "--out", str(tmp_path)]) == 0
    root = tmp_path / "reproduce-fig5ab-cpu"
    record = json.loads((root / "reproduction.json").read_text())
    assert record["device"] == "cpu"
    assert main(["reproduce", "--resume", str(root), "--device", "cpu"]) == 2
    assert "remove --device" in capsys.readouterr().err
    del record["device"]  # (a reproduction made before --device: the CPU)
    (root / "reproduction.json").write_text(json.dumps(record))
    assert main(["reproduce", "--resume", str(root), "--quiet"]) == 0
    (root / "reproduction.json").write_text(json.dumps({**record, "device": "tpu:9"}))
    assert main(["reproduce", "--resume", str(root), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(f"metaspike: error: {root / 'reproduction.json'}: device must name")
    # (a data folder in a cpu-scale record was taken, and its runs then refused as runs of other settings)
    (root / "reproduction.json").write_text(json.dumps({**record, "data_dir": str(tmp_path)}))
    assert main(["reproduce", "--resume", str(root), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(f"metaspike: error: {root / 'reproduction.json'}: data_dir: --scale cpu "
                                              "runs on the datasets that come with the installed packages")
    assert main(["reproduce", "fig5ab", "--device", "", "--out", str(tmp_path)]) == 2  # (was the CPU, silently)
    assert "--device" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "fig9"], "unknown experiment 'fig9'; available: fig2, table1"),
    (["reproduce", "fig2", "--scale", "huge"], "unknown scale 'huge'; available: cpu, paper"),
    (["reproduce", "fig5ab", "--seeds", "1", "1"], "--seeds must list one or more distinct integers"),
    (["reproduce", "fig5ab", "--scale", ""], "unknown scale ''; available: cpu, paper"),  # (not run as cpu)
    (["reproduce", "fig5ab", "--data-dir", "/nonexistent"], "--data-dir: --scale cpu runs on the datasets that come "
                                                            "with the installed packages (mnist5k, digits)"),
])
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metaspike: error: {message}") and err.count("\n") == 1


@pytest.mark.parametrize("name", ["table1", "fig5cde"])
def test_paper_scale_without_data_names_the_files(name, capsys, tmp_path):
    data = tmp_path / "data"
    assert main(["reproduce", name, "--scale", "paper", "--quiet", "--data-dir", str(data), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train-images-idx3-ubyte" in err and str(data / "mnist") in err
    assert list((tmp_path / "out").iterdir()) == []  # no empty results folder is left behind


def test_a_stopped_reproduction_resumes_to_the_table_of_one_never_stopped(tmp_path, monkeypatch, capsys, tiny_fig3):
    """Ctrl-C in fig3's third run: the hint names `reproduce --resume`; the resume reads back the two finished runs
    (not retrained), continues the rest, and writes the table an uninterrupted reproduction writes: every run's
    numbers come from what its folder recorded, trained in this pass or read back (they differed in the third
    decimal, 86.667 against 86.670)."""
    from metaspike.continual import trainer as trainer_module

    assert main(["reproduce", "fig3", "--quiet", "--out", str(tmp_path / "whole")]) == 0
    real, calls = trainer_module.train_epoch, {"n": 0}

    def stopped_in_third_run(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 9:  # (two datasets, 2 epochs each, per run: the third stops after its first epoch)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", stopped_in_third_run)
    capsys.readouterr()
    assert main(["reproduce", "fig3", "--quiet", "--out", str(tmp_path / "stopped")]) == 130
    root = tmp_path / "stopped" / "reproduce-fig3-cpu"
    assert capsys.readouterr().err.strip().endswith(f"continue with: metaspike reproduce --resume {root}")
    finished = sorted(root.glob("*/*/model.pt"))
    assert len(finished) == 2
    # (its table holds the rows measured so far, which its record says are not all)
    assert json.loads((root / "reproduction.json").read_text())["complete"] is False
    written = [path.stat().st_mtime_ns for path in finished]
    stopped = next(path.parent for path in root.glob("*/*/checkpoint.pt"))
    threads = torch.get_num_threads()
    monkeypatch.setattr(trainer_module, "train_epoch", real)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)  # (as read back: the arithmetic stays the same)
    assert main(["reproduce", "--resume", str(root), "--quiet"]) == 0
    assert [path.stat().st_mtime_ns for path in finished] == written  # read back, not trained again
    out, err = capsys.readouterr()
    assert f"results: {root}  (digits-to-mnist5k/figure.png" in out
    assert f"{stopped} continues with threads {threads} -> {threads + 1}: sums may add in another order" in err
    # (the runs started in this pass ran with the other thread count: the table says its runs' arithmetic differs)
    assert f"the runs of this table ran with different arithmetic: threads {threads} (" in err
    assert json.loads((root / "reproduction.json").read_text())["ran_with"]["threads"] == [threads, threads + 1]
    assert json.loads((root / "reproduction.json").read_text())["complete"] is True
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)

    def table(folder):
        with open(folder / "table.csv") as f:
            return {row["setting"]: row for row in csv.DictReader(f)}

    whole, resumed = table(tmp_path / "whole" / "reproduce-fig3-cpu"), table(root)
    assert whole.keys() == resumed.keys() and len(whole) == 4
    for setting, row in whole.items():
        for column in ("ACC_mean", "task1_mean", "last_task_mean", "BWT_mean", "forgetting_mean"):
            assert resumed[setting][column] == row[column], (setting, column)
    assert main(["reproduce", "--resume", str(root), "--seeds", "2"]) == 2
    assert "remove --seeds" in capsys.readouterr().err


def test_a_reproduction_resumed_keeps_a_stopped_run_that_lost_its_checkpoints(tmp_path, monkeypatch, capsys,
                                                                              tiny_fig3):
    """A run of a reproduction stopped after several evaluated epochs, its checkpoint files gone: `reproduce --resume`
    started it again and overwrote what it had recorded (`train --resume` refuses this)."""
    from metaspike.app.runs import CHECKPOINT, PREVIOUS_CHECKPOINT
    from metaspike.continual import trainer as trainer_module

    real, calls = trainer_module.train_epoch, {"n": 0}

    def stopped_in_first_run(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # (the first run stops in its second dataset's second epoch)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", stopped_in_first_run)
    assert main(["reproduce", "fig3", "--quiet", "--out", str(tmp_path)]) == 130
    monkeypatch.setattr(trainer_module, "train_epoch", real)
    stopped = next(path.parent for path in tmp_path.glob("*/*/*/checkpoint.pt"))
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (stopped / name).unlink(missing_ok=True)
    curves = (stopped / "curves.csv").read_bytes()
    capsys.readouterr()
    assert main(["reproduce", "--resume", str(next(tmp_path.glob("reproduce-*"))), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metaspike: error: {stopped} recorded ") and "holds no checkpoint" in err, err
    assert (stopped / "curves.csv").read_bytes() == curves


def test_a_file_that_cannot_be_written_mid_reproduction_names_the_reproductions_resume(tmp_path, tiny_fig3):
    """The file-size limit stops fig3's first checkpoint: the hint continues the reproduction, not its run."""
    import subprocess
    import sys

    resource = pytest.importorskip("resource")

    def limit_file_size():  # 40 KiB: the record and small files fit, a checkpoint does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (40 * 1024, resource.RLIM_INFINITY))

    tiny = (f"from metaspike.app.config import RunConfig\nfrom metaspike.app.reproduce import experiments\n"
            f"experiments.CPU_SEQUENCE = {TINY_SEQUENCE!r}\nfrom metaspike.app.cli import main\n"
            f"raise SystemExit(main(['reproduce', 'fig3', '--quiet', '--out', {str(tmp_path)!r}]))")
    done = subprocess.run([sys.executable, "-c", tiny], capture_output=True, text=True, preexec_fn=limit_file_size)
    root = tmp_path / "reproduce-fig3-cpu"
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().endswith(f"File too large; what was written so far is kept: once the file can be "
                                        f"written, continue with: metaspike reproduce --resume {root}")
    assert main(["reproduce", "--resume", str(root), "--quiet"]) == 0
    assert (root / "table.csv").is_file()


def test_ctrl_c_before_a_reproduction_measured_anything_leaves_no_folder(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("metaspike.app.reproduce.continual.make_scenario", interrupted)
    assert main(["reproduce", "table1", "--quiet", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "metaspike: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_starts_over_records_the_arithmetic_it_runs_with(tmp_path, monkeypatch):
    """A reproduction's run killed before its first checkpoint starts over in its folder: its config.json kept the
    killed process's thread count, and the table's ran_with.json recorded that one."""
    from metaspike.app.reproduce.continual import Method, run_method

    config = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(16,))
    run_method(config, Method("plain"), tmp_path)
    (run,) = tmp_path.iterdir()
    for path in run.iterdir():  # (what a kill before the first checkpoint leaves: the run's description)
        if path.name not in ("config.json", "scenario.json"):
            path.unlink()
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    run_method(config, Method("plain"), tmp_path)
    assert json.loads((run / "config.json").read_text())["threads"] == threads + 1


def test_a_reproduction_folder_written_before_a_setting_existed_is_read_back(tmp_path):
    """A run folder of an earlier version lacks the config fields added since (here the baseline's): it holds the run
    their defaults give, and a reproduction continued after the upgrade reads it back instead of refusing it."""
    from metaspike.app.reproduce.continual import Method, run_method

    config = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(16,))
    first = run_method(config, Method("plain"), tmp_path)
    record_path = next(tmp_path.glob("*/config.json"))
    record = json.loads(record_path.read_text())
    for key in ("baseline", "baseline_strength", "baseline_gamma"):
        del record[key]
    record_path.write_text(json.dumps(record))
    read_back = run_method(config, Method("plain"), tmp_path).matrix  # (from its CSV: two decimals)
    assert read_back == [[round(a, 2) for a in row] for row in first.matrix]
    record["seed"] = 2  # (a field it has still counts)
    record_path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="holds a run of other settings"):
        run_method(config, Method("plain"), tmp_path)


def _stopped_at_call(monkeypatch, stop: int) -> None:
    """Ctrl-C at the ``stop``-th epoch trained from now on (the epochs before it keep their checkpoints)."""
    from metaspike.continual import trainer as trainer_module

    real, calls = trainer_module.train_epoch, {"n": 0}

    def stopped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == stop:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", stopped)


def test_a_stopped_dnn_run_of_fig2_is_continued_by_reproduce_resume_alone(tmp_path, monkeypatch, capsys):
    """fig2's DNN run records the BNN's settings (model "bnn") with method.dnn: `train --resume` would load its
    checkpoint into a BNN and train on, and a model rebuilt from load_config would be a BNN that accepts model.pt.
    Both are one line naming the method and the reproduction's resume, which finishes it to the numbers of a
    reproduction never stopped."""
    from metaspike.app.reproduce import experiments

    monkeypatch.setattr(experiments, "CPU_PERMUTED", TINY)  # (fig2's settings at CPU scale, made tiny)
    assert main(["reproduce", "fig2", "--quiet", "--out", str(tmp_path / "whole")]) == 0
    _stopped_at_call(monkeypatch, 10)  # four BNN runs of 2 tasks of 1 epoch, then the DNN m=0's second task
    assert main(["reproduce", "fig2", "--quiet", "--out", str(tmp_path / "stopped")]) == 130
    monkeypatch.undo()
    monkeypatch.setattr(experiments, "CPU_PERMUTED", TINY)
    root = tmp_path / "stopped" / "reproduce-fig2-cpu"
    run_dir = root / "dnn-m-0-seed1"
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "model.pt").exists()
    assert json.loads((run_dir / "config.json").read_text())["model"] == "bnn"  # (the settings it shares with a BNN)
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metaspike: error: {run_dir} is a run of metaspike reproduce whose method 'DNN m=0' "
                          "trains a float DNN") and err.count("\n") == 1
    assert err.strip().endswith(f"continue it with: metaspike reproduce --resume {root}")
    assert not (run_dir / "model.pt").exists() and (run_dir / "checkpoint.pt").exists()  # nothing trained
    finished = tmp_path / "whole" / "reproduce-fig2-cpu" / "dnn-m-0-seed1"
    refused = f"method 'DNN m=0' trains a float DNN .* --resume {re.escape(str(finished.parent))}$"
    with pytest.raises(ValueError, match=refused):
        load_config(finished)  # (its model.pt would load into the BNN the BNN's settings build)
    assert main(["reproduce", "--resume", str(root), "--quiet"]) == 0
    assert (run_dir / "accuracy_matrix.csv").read_text() == (finished / "accuracy_matrix.csv").read_text()


def test_a_stopped_joint_run_is_refused_by_train_resume_and_load_config(tmp_path, monkeypatch, capsys):
    """A joint run records its stream's scenario ("permuted") with method.joint: `train --resume` would rebuild the
    sequential tasks, and was refused for a scenario.json "edited, or copied from another run"."""
    config = replace(TINY, epochs=2)
    _stopped_at_call(monkeypatch, 2)  # (one task of every task at once: stopped in its second epoch)
    with pytest.raises(KeyboardInterrupt):
        run_method(config, Method("BNN joint training", joint=True), tmp_path)
    monkeypatch.undo()
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "config.json").read_text())["scenario"] == "permuted"
    assert (run_dir / "checkpoint.pt").exists()
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "method 'BNN joint training' trains every task at once (joint training)" in err
    assert "scenario.json" not in err and err.strip().endswith("metaspike reproduce --resume ROOT (the reproduction's "
                                                              "folder that holds it)")
    with pytest.raises(ValueError, match="method 'BNN joint training' trains every task at once"):
        load_config(run_dir)
    assert len(run_method(config, Method("BNN joint training", joint=True), tmp_path).matrix) == 1  # (continued)
    plain = run_method(TINY, Method("BNN m=0"), tmp_path / "plain")
    assert load_config(tmp_path / "plain" / "bnn-m-0-seed1").meta == (0.0,) and len(plain.matrix) == 2


def test_every_method_flag_its_config_does_not_record_is_refused_by_load_config():
    """A Method's label, m and baseline are its run's settings; every other flag builds what the settings do not, so
    load_config must refuse it (a new flag left out of BUILT_BY_REPRODUCE would be rebuilt as something else)."""
    recorded = {"label", "meta", "baseline", "strength"}
    assert {field.name for field in fields(Method)} - recorded == set(BUILT_BY_REPRODUCE)


def test_fig5cde_measures_the_loss_on_samples_of_every_class_in_proportion(tmp_path, monkeypatch):
    """mnist5k's training split is stored by class: its first 2,000 samples are classes 0-4 only. The loss is
    measured on 2,000 evenly spaced ones, as many of each class as its share of the split gives."""
    from metaspike.app.reproduce import flips

    measured = {}

    def record(model, x, y, **kwargs):
        measured.update(x=x, y=y)
        return [{"low": 0.0, "high": 1.0, "loss_increase": 0.0}] * 5

    monkeypatch.setattr(flips, "flip_loss_increase", record)
    monkeypatch.setattr(bnn, "fit", lambda *args, **kwargs: None)  # (which samples are measured on, not training)
    flips.reproduce_fig5cde("cpu", [1], tmp_path, {})
    train = load_dataset("mnist5k")
    x, y = measured["x"], measured["y"]
    assert len(y) == 2000 and torch.equal(x[0], train.x[0]) and torch.equal(x[-1], train.x[-1])
    share = torch.bincount(train.y.long(), minlength=10) * len(y) / len(train.y)
    # samples s = (N - 1) / (n - 1) apart: a class's n_c consecutive samples hold n_c / s of them, give or take one,
    # and n_c / s differs from its share n_c n / N by n_c (N - n) / (N (N - 1)) <= 0.5 (N = 4,000, n = 2,000)
    assert (torch.bincount(y.long(), minlength=10) - share).abs().max() <= 1.5


def test_a_pass_over_a_complete_reproduction_marks_it_unfinished_until_it_ends(tmp_path, monkeypatch):
    """A resume of a complete reproduction, stopped midway, left it marked complete over the partial table it had
    begun to rewrite."""
    from metaspike.app.reproduce.experiments import Experiment

    root = tmp_path / "reproduce-fig5ab-cpu"
    root.mkdir()
    record = {"name": "fig5ab", "scale": "cpu", "seeds": [1], "data_dir": None, "device": "cpu", "complete": True}
    (root / "reproduction.json").write_text(json.dumps(record))

    def stopped(*args):
        assert json.loads((root / "reproduction.json").read_text())["complete"] is False  # (while the pass runs)
        raise KeyboardInterrupt

    monkeypatch.setitem(EXPERIMENTS, "fig5ab", Experiment("fig5ab", "stopped", stopped))
    assert main(["reproduce", "--resume", str(root), "--quiet"]) == 130
    assert json.loads((root / "reproduction.json").read_text())["complete"] is False
