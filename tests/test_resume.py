"""Crash safety: a run killed with SIGKILL mid-task resumes to exactly the numbers of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metaspike.app.cli import main
from metaspike.app.config import RunConfig
from metaspike.continual.results import load_checkpoint

ARGS = ["--dataset", "digits", "--tasks", "2", "--epochs", "10", "--hidden", "64", "--meta", "5", "--quiet"]
RUN = "permuted-digits-meta5-seed1"


def _killed_run(out: Path) -> Path:
    """Start a training subprocess, SIGKILL it as soon as its first checkpoint exists."""
    proc = subprocess.Popen([sys.executable, "-m", "metaspike", "train", *ARGS, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / RUN / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), "the run ended before it could be killed"
    return out / RUN


def _metaspike(*args: str) -> None:
    """Run the command in a fresh process (all runs of a comparison then use the same thread count)."""
    done = subprocess.run([sys.executable, "-m", "metaspike", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_killed_run_resumes_to_identical_results(tmp_path):
    _metaspike("train", *ARGS, "--out", str(tmp_path / "whole"))
    reference = (tmp_path / "whole" / RUN / "accuracy_matrix.csv").read_text()

    run = _killed_run(tmp_path / "killed")
    assert not json.loads((run / "metrics.json").read_text() if (run / "metrics.json").exists() else "{}").get("complete")
    position = load_checkpoint(run / "checkpoint.pt")["position"]
    assert position["epochs_done"] >= 1  # killed in the middle of a task (the first, unless the machine is busy)

    _metaspike("train", "--resume", str(run), "--quiet")
    assert (run / "accuracy_matrix.csv").read_text() == reference
    assert json.loads((run / "metrics.json").read_text())["complete"] is True
    whole_curves = (tmp_path / "whole" / RUN / "curves.csv").read_text()
    assert (run / "curves.csv").read_text() == whole_curves
    assert not (run / "checkpoint.pt").exists()  # finished runs keep model.pt only


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    from metaspike.app.config import RunConfig
    from metaspike.app.runs import make_run_scenario as _scenario, _trainer
    from metaspike.continual import RunDirectory

    config = RunConfig(datasets=("digits",), tasks=2, epochs=3, hidden=(32,), meta=(5.0,))
    directory = RunDirectory.create(tmp_path, config.name, config.to_dict())
    scenario = _scenario(config)
    trainer = _trainer(config, scenario, progress=False)

    class StopAfterTwoCheckpoints(RunDirectory):
        saved = 0

        def checkpoint(self, state):
            super().checkpoint(state)
            StopAfterTwoCheckpoints.saved += 1
            if StopAfterTwoCheckpoints.saved == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(scenario, log=StopAfterTwoCheckpoints(directory.path))
    good = directory.path / "checkpoint.pt"
    good.write_bytes(good.read_bytes()[:100])  # truncate the newest checkpoint
    with pytest.raises(ValueError, match="checkpoint.pt is truncated or corrupt"):
        load_checkpoint(good)
    assert main(["train", "--resume", str(directory.path), "--quiet"]) == 0
    assert "resumed from the previous checkpoint" in capsys.readouterr().err
    assert len(json.loads((directory.path / "metrics.json").read_text())["final_accuracy"]) == 2


def test_resume_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(RunConfig(meta=(1.0,), datasets=("digits",), hidden=(8,)).to_dict()))
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is truncated or corrupt" in err and "no usable checkpoint left" in err


def test_checkpoints_load_with_weights_only(tmp_path):
    from metaspike.continual.results import RunDirectory

    directory = RunDirectory.create(tmp_path, "x", {})
    directory.checkpoint({"position": {"task": 0, "epochs_done": 1}, "model": {"w": torch.ones(2)}})
    directory.checkpoint({"position": {"task": 0, "epochs_done": 2}, "model": {"w": torch.zeros(2)}})
    assert torch.load(directory.path / "checkpoint.pt", weights_only=True)["position"]["epochs_done"] == 2
    assert torch.load(directory.path / "checkpoint.prev.pt", weights_only=True)["position"]["epochs_done"] == 1


def test_resume_keeps_the_state_of_a_baseline_plugin():
    import io

    from metaspike.continual.baselines import EWC
    from metaspike.app.config import RunConfig
    from metaspike.app.runs import make_run_scenario as _scenario, build_run_model as build_model, build_trainer

    config = RunConfig(datasets=("digits",), tasks=2, epochs=2, hidden=(32,), meta=(0.0,))
    scenario = _scenario(config)

    def trainer():
        torch.manual_seed(0)
        return build_trainer(config, build_model(config, scenario), progress=False, plugins=[EWC(lam=100.0)])

    class Keep:
        def __init__(self):
            self.saved = []

        def epoch_done(self, result):
            pass

        def task_done(self, result):
            pass

        def checkpoint(self, state):
            buffer = io.BytesIO()
            torch.save(state, buffer)
            self.saved.append(buffer.getvalue())

    log = Keep()
    whole = trainer().fit(scenario, log=log)
    mid_second_task = torch.load(io.BytesIO(log.saved[2]), weights_only=True)  # task 2, one epoch done
    assert mid_second_task["position"] == {"task": 1, "epochs_done": 1}
    assert len(mid_second_task["plugins"][0]["importances"]) == 1  # EWC's Fisher of task 1 is in it
    resumed = trainer().fit(scenario, resume=mid_second_task)
    assert resumed.matrix == whole.matrix
