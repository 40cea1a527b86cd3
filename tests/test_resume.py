"""Crash safety: a run killed with SIGKILL mid-task resumes to exactly the numbers of an uninterrupted run."""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import KeepCheckpoints, fake_mnist

import metaspike
from metaspike.app.cli import main
from metaspike.app.config import RunConfig
from metaspike.continual.results import load_checkpoint

ARGS = ["--dataset", "digits", "--tasks", "2", "--epochs", "10", "--hidden", "64", "--meta", "5", "--quiet"]
RUN = "permuted-digits-meta5-seed1"
# Every process of a comparison runs on one thread: float sums depend on the thread count, so processes that
# differed in it would part ways however exactly a run resumes, and one thread is also the count that two shared
# cores run fastest under other load (two threads wait on each other there: ``conftest.one_thread``).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


#: ``python -c`` code that runs the ``metaspike`` command on the arguments after it, but holds still for good right
#: after the ``HOLD_AT_CALL``-th call of its run folder's ``HOLD_AT`` (``checkpoint``, ``epoch_done``: what it wrote
#: then is on disk) counted once ``HOLD_AFTER_FINISHED`` runs beside its own have finished (their ``model.pt``),
#: touching the file ``HOLD_MARKER`` first: a test's signal then lands mid-run at a known moment, however fast or loaded
#: the machine (polling for the checkpoint instead missed, on a loaded CI machine, the second in which the run held one).
_HELD_COMMAND = """
import os, sys, time
from pathlib import Path
from metaspike.continual.results import RunDirectory
method, calls = os.environ["HOLD_AT"], []
write = getattr(RunDirectory, method)
def then_hold(self, *args):
    write(self, *args)
    if len(list(self.path.parent.glob("*/model.pt"))) >= int(os.environ["HOLD_AFTER_FINISHED"]):
        calls.append(method)
        if len(calls) == int(os.environ["HOLD_AT_CALL"]):
            Path(os.environ["HOLD_MARKER"]).touch()
            time.sleep(3600)
setattr(RunDirectory, method, then_hold)
sys.argv[0] = "metaspike"
from metaspike.app.command import main
sys.exit(main())
"""


def _stopped_when_held(args: list[str], marker: Path, sig: int, finished_beside: int = 0,
                       at: tuple[str, int] = ("checkpoint", 1)) -> subprocess.CompletedProcess:
    """Run ``metaspike *args`` until it holds after the ``at[1]``-th call of ``at[0]`` (:data:`_HELD_COMMAND`), send
    it ``sig``; how it ended (its stderr)."""
    env = {**ONE_THREAD, "HOLD_AFTER_FINISHED": str(finished_beside), "HOLD_MARKER": str(marker),
           "HOLD_AT": at[0], "HOLD_AT_CALL": str(at[1])}
    proc = subprocess.Popen([sys.executable, "-c", _HELD_COMMAND, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    held = marker.exists()
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    _, stderr = proc.communicate()
    assert held, f"the command ended or ran past the deadline before it held: {stderr[-2000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, None, stderr)


def _killed_run(out: Path, sig: int = signal.SIGKILL, at: tuple[str, int] = ("checkpoint", 1),
                ) -> tuple[Path, subprocess.CompletedProcess]:
    """A training subprocess sent ``sig`` where it holds (:func:`_stopped_when_held`), by default right after its first
    checkpoint; the run folder and how the process ended."""
    ended = _stopped_when_held(["train", *ARGS, "--out", str(out)], out.parent / f"{out.name}.held", sig, at=at)
    assert (out / RUN / "checkpoint.pt").exists()
    return out / RUN, ended


def _metaspike(*args: str) -> None:
    """Run the command in a fresh process on one thread, as every process of a comparison."""
    done = subprocess.run([sys.executable, "-m", "metaspike", *args], capture_output=True, text=True, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-2000:]


def test_killed_run_resumes_to_identical_results(tmp_path):
    _metaspike("train", *ARGS, "--out", str(tmp_path / "whole"))
    reference = (tmp_path / "whole" / RUN / "accuracy_matrix.csv").read_text()

    # killed between its second epoch's curves, written, and that epoch's checkpoint, not yet written
    run, _ = _killed_run(tmp_path / "killed", at=("epoch_done", 2))
    assert not json.loads((run / "metrics.json").read_text() if (run / "metrics.json").exists() else "{}").get("complete")
    position = load_checkpoint(run / "checkpoint.pt")["position"]
    assert (position["task"], position["epochs_done"]) == (0, 1)  # killed in the middle of the first task
    assert len((run / "curves.csv").read_text().splitlines()) == 3  # (its header and two epochs: one the resume redoes)

    _metaspike("train", "--resume", str(run), "--quiet")
    assert (run / "accuracy_matrix.csv").read_text() == reference
    assert json.loads((run / "metrics.json").read_text())["complete"] is True
    whole_curves = (tmp_path / "whole" / RUN / "curves.csv").read_text()
    assert (run / "curves.csv").read_text() == whole_curves
    assert not (run / "checkpoint.pt").exists()  # finished runs keep model.pt only


def test_sigterm_stops_a_run_as_ctrl_c_does_and_names_the_command_that_continues_it(tmp_path):
    run, ended = _killed_run(tmp_path, signal.SIGTERM)  # (what a batch scheduler sends at its time limit)
    assert ended.returncode == 128 + signal.SIGTERM, ended.stderr[-2000:]
    assert ended.stderr.strip().splitlines()[-1] == (f"metaspike: terminated (SIGTERM); results written so far are "
                                                     f"kept in {run}; continue with: metaspike train --resume {run}")
    _metaspike("train", "--resume", str(run), "--quiet")
    assert json.loads((run / "metrics.json").read_text())["complete"] is True


#: ``python -c`` code that runs the ``metaspike`` command on the arguments after it, where the first call of
#: ``STOP_AFTER`` (``module:attribute``: a run's first checkpoint, the figures' drawing) is followed by a SIGTERM that
#: lands inside a weak reference's callback (as one landed in matplotlib's while figures were drawn).
_STOPPED_IN_A_FINALIZER = """
import importlib, os, signal, sys, weakref
where, name = os.environ["STOP_AFTER"].split(":")
owner = importlib.import_module(where)
for part in name.split(".")[:-1]:
    owner = getattr(owner, part)
name = name.split(".")[-1]
called = getattr(owner, name)
class Target:
    pass
def stopped_inside(ref):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10**8):  # (the handler runs here, between two of its steps)
        pass
def then_stop(*args, **kwargs):
    setattr(owner, name, called)
    done = called(*args, **kwargs)
    target = Target()
    ref = weakref.ref(target, stopped_inside)
    del target
    return done
setattr(owner, name, then_stop)
sys.argv[0] = "metaspike"
from metaspike.app.command import main
sys.exit(main())
"""


def _stopped_in_a_finalizer(after: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _STOPPED_IN_A_FINALIZER, *args], capture_output=True, text=True,
                          env={**ONE_THREAD, "STOP_AFTER": after}, timeout=600)


def test_a_stop_landing_in_a_finalizer_still_stops_the_run(tmp_path):
    """Python only prints what a weak reference's callback or a __del__ raises ("Exception ignored in ..."): a SIGTERM
    or Ctrl-C landing in one while figures were drawn was lost, and the command went on and ended with status 0."""
    ended = _stopped_in_a_finalizer("metaspike.continual.results:RunDirectory.checkpoint", "train", *ARGS, "--out",
                                    str(tmp_path))
    run = tmp_path / RUN
    assert ended.returncode == 128 + signal.SIGTERM, ended.stderr[-2000:]
    assert ended.stderr.strip().splitlines()[-1] == (f"metaspike: terminated (SIGTERM); results written so far are "
                                                     f"kept in {run}; continue with: metaspike train --resume {run}")
    assert (run / "checkpoint.pt").exists() and not (run / "model.pt").exists()  # (stopped in its first task)
    # at the command's very end (the last figure drawn): the stop, not status 0 and nothing said
    assert main(["train", *ARGS[:4], "--epochs", "1", "--hidden", "8", "--quiet", "--out", str(tmp_path / "done")]) == 0
    ended = _stopped_in_a_finalizer("metaspike.app.plots:plot_run", "plot", str(next((tmp_path / "done").iterdir())))
    assert ended.returncode == 128 + signal.SIGTERM, ended.stderr[-2000:]
    assert ended.stderr.strip().splitlines()[-1].startswith("metaspike: terminated (SIGTERM)"), ended.stderr[-2000:]


def test_a_stop_after_a_run_completed_names_the_command_that_draws_its_figures(tmp_path):
    """A stop after metrics.json said complete named train --resume, which then refused the complete run."""
    from metaspike.app.runs import _what_continues

    assert main(["train", *ARGS[:4], "--epochs", "1", "--hidden", "8", "--quiet", "--out", str(tmp_path)]) == 0
    run = next(tmp_path.iterdir())
    assert _what_continues(run, 1) == f"metaspike plot {run}"
    (run / "metrics.json").write_text(json.dumps({"complete": False}))
    assert _what_continues(run, 1) == f"metaspike train --resume {run}"


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    from metaspike.app.config import RunConfig
    from metaspike.app.runs import _trainer
    from metaspike.app.runs import make_run_scenario as _scenario
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
    assert "checkpoint.pt is not a zip archive" in err and "no usable checkpoint left" in err


def test_checkpoints_load_with_weights_only(tmp_path):
    from metaspike.continual.results import RunDirectory

    directory = RunDirectory.create(tmp_path, "x", {})
    directory.checkpoint({"position": {"task": 0, "epochs_done": 1}, "model": {"w": torch.ones(2)}})
    directory.checkpoint({"position": {"task": 0, "epochs_done": 2}, "model": {"w": torch.zeros(2)}})
    assert torch.load(directory.path / "checkpoint.pt", weights_only=True)["position"]["epochs_done"] == 2
    assert torch.load(directory.path / "checkpoint.prev.pt", weights_only=True)["position"]["epochs_done"] == 1


def test_resume_keeps_the_state_of_a_baseline_plugin():
    from metaspike.app.config import RunConfig
    from metaspike.app.runs import build_run_model as build_model
    from metaspike.app.runs import build_trainer
    from metaspike.app.runs import make_run_scenario as _scenario
    from metaspike.continual.baselines import EWC

    config = RunConfig(datasets=("digits",), tasks=2, epochs=2, hidden=(32,), meta=(0.0,))
    scenario = _scenario(config)

    def trainer():
        torch.manual_seed(0)
        return build_trainer(config, build_model(config, scenario), progress=False, plugins=[EWC(lam=100.0)])

    log = KeepCheckpoints()
    whole = trainer().fit(scenario, log=log)
    mid_second_task = torch.load(io.BytesIO(log.saved[2]), weights_only=True)  # task 2, one epoch done
    assert mid_second_task["position"] == {"task": 1, "epochs_done": 1}
    assert len(mid_second_task["plugins"][0]["importances"]) == 1  # EWC's Fisher of task 1 is in it
    resumed = trainer().fit(scenario, resume=mid_second_task)
    assert resumed.matrix == whole.matrix


def test_resume_from_python_refuses_the_plain_optimizer_of_a_metaplastic_run():
    """A metaplastic(SGD) checkpoint loaded into a plain SGD: torch kept meta and rule in its groups, nothing applied
    them, and the run went on unconsolidated (final row 57.3 / 90.1 / 51.3 against 59.2 / 87.6 / 59.7)."""
    from metaspike.continual import ContinualTrainer, TrainerConfig, split
    from metaspike.data import load_dataset

    scenario = split(load_dataset("digits"), load_dataset("digits", "test"), groups=2)

    def trainer(wrapped: bool):
        torch.manual_seed(0)
        model = metaspike.binarize(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16),
                                                       torch.nn.ReLU(), torch.nn.Linear(16, 10)))

        def make(m):
            sgd = torch.optim.SGD(m.parameters(), lr=0.05)
            return metaspike.metaplastic(sgd, meta=20.0) if wrapped else sgd
        return ContinualTrainer(model, make, TrainerConfig(epochs=1, batch_size=64), progress=False)

    log = KeepCheckpoints()
    whole = trainer(True).fit(scenario, log=log)
    after_first = torch.load(io.BytesIO(log.saved[0]), weights_only=True)
    assert trainer(True).fit(scenario, resume=after_first).matrix == whole.matrix
    with pytest.raises(ValueError, match=r"^the checkpoint's optimizer has 'meta', 'rule', 'consolidate' in param "
                                         r"group 0, settings this run's SGD does not take \(a metaplastic\(\) "
                                         r"optimizer's\?\): it was written with another optimizer"):
        trainer(False).fit(scenario, resume=after_first)


_HALVING_CALLS = {"steps": 0}  # (a rule may keep a count or a log in a global: its code stays the same)


def test_resume_from_python_refuses_a_users_rule_whose_code_changed_under_its_name():
    """A rule edited and registered again (replace=True, as in a notebook) under its name and settings: the resume
    went on under the new code, a run of two rules (a helper's row 2: 82.2 / 87.8 uninterrupted, 88.9 / 1.9 resumed).
    The same code resumes, whatever the values it reads (a first fingerprint read them, and refused a rule that
    counted its calls in a global)."""
    import dataclasses

    from metaspike import rules
    from metaspike.continual import ContinualTrainer, TrainerConfig, split
    from metaspike.data import load_dataset

    @dataclasses.dataclass(frozen=True)
    class Halving(rules.Stateless):
        name: str = "halving-for-resume"

        def step(self, hidden, update, meta, state):
            _HALVING_CALLS["steps"] += 1
            return update / 2, state

    @dataclasses.dataclass(frozen=True)
    class Quartering(rules.Stateless):  # (the edited class, of the same name, registered again)
        name: str = "halving-for-resume"

        def step(self, hidden, update, meta, state):
            return update / 4, state

    scenario = split(load_dataset("digits"), load_dataset("digits", "test"), groups=2)

    def trainer():
        torch.manual_seed(0)
        make = lambda m: metaspike.MetaplasticAdam(m.parameters(), lr=0.005, meta=1.0, rule="halving-for-resume")
        model = metaspike.binarize(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.ReLU(),
                                                       torch.nn.Linear(16, 10)))
        return ContinualTrainer(model, make, TrainerConfig(epochs=1, batch_size=64), progress=False)

    rules.register_rule(Halving())
    try:
        log = KeepCheckpoints()
        whole = trainer().fit(scenario, log=log)
        after_first = torch.load(io.BytesIO(log.saved[0]), weights_only=True)
        assert trainer().fit(scenario, resume=after_first).matrix == whole.matrix
        rules.register_rule(Quartering(), replace=True)
        with pytest.raises(ValueError, match=r"^param group 0's consolidation rule 'halving-for-resume' is not the "
                                             r"code the checkpoint's run trained with"):
            trainer().fit(scenario, resume=after_first)
    finally:
        rules._RULES.pop("halving-for-resume")


def test_a_users_stream_made_when_reached_without_a_definition_is_warned_of_before_it_keeps_checkpoints():
    """A resume reads only a lazy stream's first task: one drawn with another seed went on from the checkpoint, its
    first row from one draw and the rest from the other, without a word. Its definition is what a resume compares."""
    from metaspike.continual import ContinualTrainer, LearnedNothingWarning, Scenario, Task, TaskStream, TrainerConfig
    from metaspike.data import ArrayDataset

    def stream(seed, definition):
        def make(index):
            generator = torch.Generator().manual_seed(seed * 100 + index)
            x, y = torch.rand(40, 6, generator=generator), torch.randint(0, 3, (40,), generator=generator)
            data = ArrayDataset.from_tensors(x, y, f"t{index}")
            return Task(f"t{index}", data, data)
        tasks = TaskStream(3, make, lambda index: f"t{index}", classes=(0, 1, 2))
        return Scenario("mine", tasks, tasks, definition)

    def trainer():
        return ContinualTrainer(torch.nn.Linear(6, 3), lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                                TrainerConfig(epochs=1, batch_size=10), progress=False)

    with pytest.warns(UserWarning, match=r"scenario 'mine' makes its tasks when they are reached and has no "
                                         r"definition: a resume can check only its first task's data"):
        trainer().fit(stream(1, {}), log=KeepCheckpoints())
    log = KeepCheckpoints()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", LearnedNothingWarning)  # (random labels: nothing to learn, and fit says so)
        trainer().fit(stream(1, {"seed": 1}), log=log)  # (a definition: nothing to warn of)
    with pytest.raises(ValueError, match="the checkpoint was written by a run on another scenario"):
        trainer().fit(stream(2, {"seed": 2}), resume=torch.load(io.BytesIO(log.saved[1]), weights_only=True))


def test_resume_from_python_refuses_other_data_under_the_same_names():
    """A user's own tensors under the same names and definition: the scenario's description matches, its data do
    not, and one result would mix two datasets."""
    from metaspike.continual import ContinualTrainer, TrainerConfig, split
    from metaspike.data import ArrayDataset

    def data(seed):
        generator = torch.Generator().manual_seed(seed)
        x, y = torch.rand(400, 16, generator=generator), torch.randint(0, 4, (400,), generator=generator)
        return ArrayDataset.from_tensors(x[:300], y[:300], "mine"), ArrayDataset.from_tensors(x[300:], y[300:], "mine")

    def trainer():
        torch.manual_seed(0)
        return ContinualTrainer(torch.nn.Linear(16, 4), lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                                TrainerConfig(epochs=1, batch_size=30), progress=False)

    log = KeepCheckpoints()
    trainer().fit(split(*data(0), groups=2), log=log)
    first_task = torch.load(io.BytesIO(log.saved[0]), weights_only=True)
    with pytest.raises(ValueError, match="the checkpoint was written by a run on other data"):
        trainer().fit(split(*data(1), groups=2), resume=first_task)
    assert trainer().fit(split(*data(0), groups=2), resume=first_task).matrix  # (its own data: resumed)


def test_resume_from_python_refuses_another_model_with_parameters_of_the_same_shapes():
    """bnn.MLP(..., activation="relu") loads a sign-activation MLP's state dict without a word: the rest of the run
    trained another network under the same run. Checkpoints written before the model was recorded resume as before."""
    import bnn
    from metaspike.continual import ContinualTrainer, TrainerConfig, split
    from metaspike.data import ArrayDataset

    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(400, 16, generator=generator), torch.randint(0, 4, (400,), generator=generator)
    scenario = split(ArrayDataset.from_tensors(x[:300], y[:300], "mine"),
                     ArrayDataset.from_tensors(x[300:], y[300:], "mine"), groups=2)

    def trainer(activation="sign", **settings):
        torch.manual_seed(0)
        return ContinualTrainer(bnn.MLP([16, 8, 4], activation=activation, **settings),
                                lambda m: torch.optim.Adam(m.parameters(), lr=0.01),
                                TrainerConfig(epochs=1, batch_size=30), progress=False)

    log = KeepCheckpoints()
    trainer().fit(scenario, log=log)
    first_task = torch.load(io.BytesIO(log.saved[0]), weights_only=True)
    with pytest.raises(ValueError, match="the checkpoint was written by a run of another model"):
        trainer("relu").fit(scenario, resume=first_task)
    # the same modules built with other settings: a binary network went on with real weights, without a word
    with pytest.raises(ValueError, match=r"a model built with other settings \(its layers print other settings"):
        trainer(weight_quantizer="none").fit(scenario, resume=first_task)
    assert trainer().fit(scenario, resume=first_task).matrix  # (its own model: resumed)
    del first_task["identity"]["model"], first_task["identity"]["model_settings"]  # (as written before either)
    assert trainer("relu").fit(scenario, resume=first_task).matrix
    # a checkpoint of 2 processes (torchrun) resumed in one: accepted through the Python API, other batches trained
    first_task["identity"]["processes"] = 2
    with pytest.raises(ValueError, match="written by a run of 2 processes and would continue with 1: they split each "
                                         "batch otherwise"):
        trainer().fit(scenario, resume=first_task)


def test_the_model_settings_of_a_run_leave_out_what_parameter_containers_print(monkeypatch):
    """ParameterList and ParameterDict print their parameters' device (cuda:N), so the same model on another device,
    or each process of a multi-GPU torchrun launch, would have read as a model built with other settings."""
    from metaspike.continual.trainer import _model_settings

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.2))
    model.extra = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(2))])
    before = _model_settings(model)
    monkeypatch.setattr(torch.nn.ParameterList, "extra_repr", lambda self: "(0): Parameter containing: (cuda:1)")
    assert _model_settings(model) == before
    model[1].p = 0.5  # (what a Dropout prints is read)
    assert _model_settings(model) != before


def test_the_model_settings_of_a_run_read_its_bayesian_synapses_and_samples():
    """A checkpoint resumed into a model of another BiMU temperature, evaluation or number of samples went on without
    a word, as another network: the synapses (metaspike.bayesian) and a bnn layer's samples were not read."""
    import bnn
    from metaspike.bayesian import bayesianize
    from metaspike.continual.trainer import _model_settings

    def bimu(**settings):
        return bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 3)), "bimu", scale=None, **settings)

    assert _model_settings(bimu(temperature=1.0)) == _model_settings(bimu(temperature=1.0))
    assert _model_settings(bimu(temperature=1.0)) != _model_settings(bimu(temperature=0.25))
    assert _model_settings(bimu(evaluation="mode")) != _model_settings(bimu(evaluation="sample"))
    assert (_model_settings(bnn.BinaryBayesianLinear(4, 3, samples=3))
            != _model_settings(bnn.BinaryBayesianLinear(4, 3, samples=7)))


def test_resume_from_python_refuses_data_changed_in_a_column_that_evenly_spaced_values_step_over():
    """1408 x 64 values: a fingerprint of 4096 evenly spaced ones reads every 22nd, never feature 1 of any sample."""
    from metaspike.continual import ContinualTrainer, TrainerConfig, sequence
    from metaspike.data import ArrayDataset

    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(1408, 64, generator=generator), torch.arange(1408) % 4
    test = ArrayDataset.from_tensors(torch.rand(200, 64, generator=generator), torch.arange(200) % 4, "d")

    def fit(samples, **kwargs):
        torch.manual_seed(0)
        trainer = ContinualTrainer(torch.nn.Linear(64, 4), lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                                   TrainerConfig(epochs=2, batch_size=128), progress=False)
        return trainer.fit(sequence([(ArrayDataset.from_tensors(samples, y, "d"), test)] * 2), **kwargs)

    log = KeepCheckpoints()
    fit(x, log=log)
    second_epoch = torch.load(io.BytesIO(log.saved[1]), weights_only=True)
    changed = x.clone()
    changed[:, 1] = 0.0
    with pytest.raises(ValueError, match="the checkpoint was written by a run on other data"):
        fit(changed, resume=second_epoch)
    assert fit(x, resume=second_epoch).matrix  # (its own data: resumed)


def test_resume_from_python_refuses_another_middle_task_or_other_task_classes():
    """Only the first and last task's data were fingerprinted, and a task's classes only under a growing head: a
    resume with another middle task (same name), or with every task's outputs restricted, mixed two experiments."""
    from metaspike.continual import ContinualTrainer, Scenario, Task, TrainerConfig
    from metaspike.data import ArrayDataset

    generator = torch.Generator().manual_seed(0)

    def task(name, w, classes=None):
        x = torch.rand(90, 8, generator=generator)
        data = ArrayDataset.from_tensors(x, (x @ w > w.sum() / 2).long(), "signals", classes=["a", "b"])
        return Task(name, data.subset(range(60)), data.subset(range(60, 90)), classes=classes)

    def trainer():
        torch.manual_seed(0)
        return ContinualTrainer(torch.nn.Linear(8, 3), lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                                TrainerConfig(epochs=1, batch_size=10), progress=False)

    weights = [torch.randn(8, generator=generator) for _ in range(3)]
    tasks = [task(f"t{i}", w) for i, w in enumerate(weights)]
    log = KeepCheckpoints()
    trainer().fit(Scenario("mine", tasks, tasks), log=log)
    after_two = next(s for s in map(lambda b: torch.load(io.BytesIO(b), weights_only=True), log.saved)
                     if s["position"] == {"task": 2, "epochs_done": 0})
    other_middle = [tasks[0], task("t1", -weights[1]), tasks[2]]
    with pytest.raises(ValueError, match="the checkpoint was written by a run on other data"):
        trainer().fit(Scenario("mine", other_middle, other_middle), resume=after_two)
    restricted = [Task(t.name, t.train, t.test, classes=(0, 1)) for t in tasks]
    with pytest.raises(ValueError, match="the checkpoint was written by a run on another scenario"):
        trainer().fit(Scenario("mine", restricted, restricted), resume=after_two)
    assert len(trainer().fit(Scenario("mine", tasks, tasks), resume=after_two).matrix) == 3  # (its own: resumed)


@pytest.mark.parametrize("position", [{"task": 0, "epochs_done": 1}, {"task": 1, "epochs_done": 0}])
def test_resume_from_python_refuses_other_optimizer_settings_inside_a_task_and_at_its_end(position):
    """At a task boundary a new optimizer starts, but the saved one says which settings the run trained with: a run
    resumed under others would mix two optimizers' results (it was refused inside a task only)."""
    from metaspike import MetaplasticAdam
    from metaspike.continual import ContinualTrainer, TrainerConfig, split
    from metaspike.data import ArrayDataset

    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(300, 16, generator=generator), torch.randint(0, 4, (300,), generator=generator)
    scenario = split(ArrayDataset.from_tensors(x[:200], y[:200], "mine"),
                     ArrayDataset.from_tensors(x[200:], y[200:], "mine"), groups=2)

    def trainer(lr):
        torch.manual_seed(0)
        return ContinualTrainer(torch.nn.Linear(16, 4), lambda m: MetaplasticAdam(m.parameters(), lr=lr),
                                TrainerConfig(epochs=2, batch_size=50, eval_every=1), progress=False)

    log = KeepCheckpoints()
    trainer(0.01).fit(scenario, log=log)
    saved = next(state for state in map(lambda raw: torch.load(io.BytesIO(raw), weights_only=True), log.saved)
                 if state["position"] == position)
    with pytest.raises(ValueError, match="the checkpoint's optimizer has lr = 0.01 in param group 0, where the run's "
                                         "settings give 0.05: it was written with other settings"):
        trainer(0.05).fit(scenario, resume=saved)
    assert trainer(0.01).fit(scenario, resume=saved).matrix  # (its own settings: resumed)


NEURON_ARGS = ["compare", "--neurons", "bnn", "self-recurrent", "--meta", "0", "20", "--dataset", "digits", "--tasks",
               "2", "--epochs", "4", "--hidden", "16", "--quiet"]
COMPARISON = "compare-neurons-permuted-digits"


def _table_without_time(path: Path) -> list[list[str]]:
    rows = [line.split(",") for line in (path / "comparison.csv").read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if not name.startswith("seconds")]
    return [[row[i] for i in keep] for row in rows]


def test_a_killed_neuron_comparison_resumes_to_the_same_table(tmp_path):
    _metaspike(*NEURON_ARGS, "--out", str(tmp_path / "whole"))
    reference = _table_without_time(tmp_path / "whole" / COMPARISON)

    out = tmp_path / "killed"
    root = out / COMPARISON
    # killed once a later run is under way: one run finished, another holding a checkpoint
    _stopped_when_held([*NEURON_ARGS, "--out", str(out)], tmp_path / "held", signal.SIGKILL, finished_beside=1)
    assert len(list(root.glob("*/model.pt"))) == 1 and len(list(root.glob("*/checkpoint.pt"))) == 1
    assert not (root / "comparison.csv").exists(), "the comparison ended before it could be killed"

    refused = subprocess.run([sys.executable, "-m", "metaspike", "compare", "--resume", str(root), "--epochs", "9"],
                             capture_output=True, text=True, env=ONE_THREAD)
    assert refused.returncode == 2 and "remove --epochs" in refused.stderr
    _metaspike("compare", "--resume", str(root), "--quiet")
    assert _table_without_time(root) == reference
    assert len([d for d in root.iterdir() if d.is_dir()]) == 4  # no run was repeated under another name


def test_resume_refuses_flags_that_would_change_the_stored_settings(tmp_path, capsys):
    _metaspike("train", *ARGS[:4], "--epochs", "1", "--hidden", "8", "--quiet", "--out", str(tmp_path))
    run = tmp_path / "permuted-digits-meta5-30-seed1"
    (run / "metrics.json").unlink()  # as if killed before the end
    assert main(["train", "--resume", str(run), "--epochs", "9", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "these would change them: --epochs (stored 1, given 9), --lr (stored 0.005, given 0.1)" in err
    assert main(["train", "--resume", ""]) == 2
    assert "--resume '': no such folder" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert f"--resume '{tmp_path / 'nowhere'}': no such folder" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "the run directories inside it: permuted-digits-meta5-30-seed1" in capsys.readouterr().err
    # the stored settings given again as other kinds of numbers are the same settings (a Fraction was refused)
    from fractions import Fraction

    from metaspike.app.runs import resume

    with pytest.raises(ValueError, match="holds model.pt, which a run writes as it ends"):  # (past the settings)
        resume(run, progress=False, plot=False, settings={"lr": Fraction(1, 200), "meta": [5, 30.0]})


#: Per command that resumes: the file that marks its folder, that folder's name, and the plural of that name.
_RESUMED = {"train": ("config.json", "run directory", "run directories"),
            "compare": ("plan.json", "comparison folder", "comparison folders"),
            "reproduce": ("reproduction.json", "reproduction folder", "reproduction folders")}


@pytest.mark.parametrize("command", list(_RESUMED))
def test_each_resume_names_what_its_path_is_instead(tmp_path, capsys, command):
    """`compare --resume` said "is not a comparison folder (no plan.json)" of a path that did not exist, of its own
    plan.json and of a run directory (`train --resume` said "no such folder"); each command now says what it is."""
    for each, (marker, _, _) in _RESUMED.items():
        (tmp_path / each).mkdir()
        (tmp_path / each / marker).write_text("{}")
    marker, kind, kinds = _RESUMED[command]
    own = tmp_path / command
    expected = {tmp_path / "nowhere": f"--resume '{tmp_path / 'nowhere'}': no such folder",
                own / marker: f"--resume {own / marker} is the {kind}'s {marker}: give its folder, --resume {own}",
                tmp_path: f"{tmp_path} is not a {kind} (no {marker}); the {kinds} inside it: {command}"}
    expected.update({tmp_path / other: f"{tmp_path / other} is a {other_kind}, not a {kind}: continue it with "
                                       f"metaspike {other} --resume {tmp_path / other}"
                     for other, (_, other_kind, _) in _RESUMED.items() if other != command})
    # a folder inside a comparison or reproduction (a part, or a run of it for another command): the whole continues
    for container, (_, container_kind, _) in list(_RESUMED.items())[1:]:
        inner = tmp_path / container / "part" / "run-1"
        inner.mkdir(parents=True)
        if command != "train":
            (inner / "config.json").write_text("{}")
        expected[inner] = (f"{inner} lies inside the {container_kind} {tmp_path / container}: continue it with "
                           f"metaspike {container} --resume {tmp_path / container}")
    for path, message in expected.items():
        assert main([command, "--resume", str(path)]) == 2
        assert capsys.readouterr().err.strip() == f"metaspike: error: {message}"


@pytest.mark.parametrize("field, value, message", [
    ("tasks", "3", "--tasks must be an integer in 1..10000 (the metrics read the accuracy matrix, tasks x tasks "
                   "numbers), got '3'"),
    ("tasks", 0, "--tasks must be an integer in 1..10000 (the metrics read the accuracy matrix, tasks x tasks "
                 "numbers), got 0"),
    ("hidden", [8, "x"], "'hidden' must be a list of int"),
    ("lr", "fast", "--lr must be a finite number > 0, got 'fast'"),
    ("scenario", 5, "'scenario' must be a string"),
    ("meta", [-1], "--meta must be a finite number in [0, 3.40282e+38]"),
    ("batch_size", 2.5, "--batch-size must be an integer >= 1, got 2.5"),
    ("data_dir", 7, "'data_dir' must be a folder name or null"),
    # JSON holds integers of any length: these raised "OverflowError: int too large to convert to float" from the
    # shared finite-number check (math.isfinite converts to float)
    ("lr", 10**400, "--lr must be a finite number > 0, got 1000000000"),
    ("meta", [10**400], "--meta must be a finite number in [0, 3.40282e+38]"),
    ("weight_decay", 10**400, "--weight-decay must be a finite number"),
    ("memory_window", 10**400, "--memory-window must be a number in [100, 3.40282e+38]"),
    ("readout_lambda", 10**400, "--readout-lambda"),
    # a mistyped setting in a folder stopped before its first checkpoint was dropped without a word
    ("epoch", 7, "has unknown settings: 'epoch' (did you mean 'epochs'?)"),
])
def test_resume_validates_the_stored_config(tmp_path, capsys, field, value, message):
    run = tmp_path / "r"
    run.mkdir()
    record = RunConfig(datasets=("digits",), hidden=(8,)).to_dict()
    record[field] = value
    (run / "config.json").write_text(json.dumps(record))
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metaspike: error: ") and str(run / "config.json") in err and message in err, err
    assert "\n" not in err
    (run / "config.json").write_text(json.dumps(record)[:40])
    assert main(["train", "--resume", str(run)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_resume_removes_the_temporary_files_a_kill_left_behind(tmp_path):
    run, _ = _killed_run(tmp_path)
    stale = run / ".metrics.json.abc123.tmp"
    stale.write_text('{"complete": tr')  # what a kill in the middle of a write leaves
    _metaspike("train", "--resume", str(run), "--quiet")
    assert not list(run.glob(".*.tmp"))
    assert json.loads((run / "metrics.json").read_text())["complete"] is True


def _interrupted_run(root: Path, record: dict | None = None, stop_at: int = 1, **settings) -> Path:
    """A run stopped after its ``stop_at``-th checkpoint (its first by default), in this process (a small digits
    stream); ``record`` adds entries to its config.json."""
    from metaspike.app.runs import _trainer
    from metaspike.app.runs import make_run_scenario as _scenario
    from metaspike.continual import RunDirectory

    config = RunConfig(**{**dict(datasets=("digits",), tasks=2, epochs=2, hidden=(16,), meta=(5.0,)), **settings})
    directory = RunDirectory.create(root, config.name, {**config.to_dict(), **(record or {})})
    scenario = _scenario(config)

    class StopAtCheckpoint(RunDirectory):
        written = 0

        def checkpoint(self, state):
            super().checkpoint(state)
            self.written += 1
            if self.written == stop_at:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _trainer(config, scenario, progress=False).fit(scenario, log=StopAtCheckpoint(directory.path))
    return directory.path


@pytest.mark.parametrize("field, value", [("seed", 2), ("hidden", [24]), ("model", "bnn-layernorm")])
def test_resume_refuses_a_config_edited_after_the_run_started(tmp_path, capsys, field, value):
    run = _interrupted_run(tmp_path)
    record = json.loads((run / "config.json").read_text())
    record[field] = value  # valid, but not what the checkpoint was trained under: it would mix two runs
    (run / "config.json").write_text(json.dumps(record))
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was written under another config.json" in err, err


def test_resume_refuses_a_scenario_json_of_other_tasks_and_writes_a_missing_one(tmp_path, capsys):
    """The folder must describe the tasks it trains on: a scenario.json copied from another seed's run is refused."""
    from metaspike.app.runs import make_run_scenario

    run = _interrupted_run(tmp_path)
    other = make_run_scenario(RunConfig(datasets=("digits",), tasks=2, epochs=2, hidden=(16,), meta=(5.0,), seed=2))
    (run / "scenario.json").write_text(json.dumps({"name": other.name, **other.definition}, default=list))
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scenario.json records other tasks than its config.json defines" in err, err
    (run / "scenario.json").unlink()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    ours = make_run_scenario(RunConfig(datasets=("digits",), tasks=2, epochs=2, hidden=(16,), meta=(5.0,)))
    assert json.loads((run / "scenario.json").read_text())["seed"] == ours.definition["seed"] == 1


def test_resume_refuses_a_checkpoint_that_does_not_fit_the_model_in_one_line(tmp_path, capsys):
    from metaspike.continual.results import CHECKSUM_KEY, CONFIG_KEY, _file_digest, state_checksum

    run = _interrupted_run(tmp_path / "a")
    other = _interrupted_run(tmp_path / "b", hidden=(24,))
    state = load_checkpoint(other / "checkpoint.pt")  # re-sealed as if written under this run's config.json
    torch.save({**state, CHECKSUM_KEY: state_checksum(state), CONFIG_KEY: _file_digest(run / "config.json")},
               run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "written by a run of a model built with other settings (its layers print other " \
        "settings: their sizes" in err, err
    run = _interrupted_run(tmp_path / "c")  # (sizes that do not show in what the layers print: the state dict's)
    state = load_checkpoint(run / "checkpoint.pt")
    state["model"]["1.weight"] = state["model"]["1.weight"][:, :-1]
    del state["identity"]["model_settings"]
    torch.save({**state, CHECKSUM_KEY: state_checksum(state), CONFIG_KEY: _file_digest(run / "config.json")},
               run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the checkpoint's model does not fit this run's model" in err, err


def test_a_changed_number_or_a_stripped_record_in_a_checkpoint_is_refused(tmp_path):
    """The checksum covered tensors only: a flipped bit in the stored accuracies resumed to a task at 126.72 % (and a
    changed untrained accuracy warned, falsely, that task 1 learned nothing); and
    a checkpoint without its config digest (as older versions wrote) was resumed unchecked, mixing two runs."""
    from metaspike.continual.results import CHECKSUM_KEY, CONFIG_KEY

    run = _interrupted_run(tmp_path / "a")
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    raw["result"]["baseline"][0] += 32.0  # (the untrained accuracy of task 1)
    torch.save(raw, run / "edited.pt")
    with pytest.raises(ValueError, match="edited.pt is damaged: its content does not match its checksum$"):
        load_checkpoint(run / "edited.pt")
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({k: v for k, v in raw.items() if k != CONFIG_KEY}, run / "stripped.pt")
    with pytest.raises(ValueError, match="stripped.pt lacks its checksum or the digest of its run's config.json"):
        load_checkpoint(run / "stripped.pt")
    torch.save({**raw, "format": "metaspike-checkpoint-1"}, run / "old.pt")
    with pytest.raises(ValueError, match=r"old.pt has the format 'metaspike-checkpoint-1', and this metaspike reads "
                                         r"'metaspike-checkpoint-3' \(written by another version\)"):
        load_checkpoint(run / "old.pt")
    assert CHECKSUM_KEY in raw


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()  # what a kill during the first epoch leaves: the config, no checkpoint
    (run / "config.json").write_text(json.dumps(RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(8,)).to_dict()))
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "has no checkpoint yet" in capsys.readouterr().err
    assert json.loads((run / "metrics.json").read_text())["complete"] is True


def test_a_run_whose_checkpoints_are_gone_is_not_started_again_over_its_results(tmp_path, capsys):
    """With checkpoint.pt and checkpoint.prev.pt deleted, --resume started the run again, overwrote the tasks it had
    recorded and said it had stopped before its first epoch. A run killed between its first results and its first
    checkpoint (one row of curves.csv) still starts again."""
    config = RunConfig(datasets=("digits",), tasks=3, epochs=1, hidden=(8,))
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    header = "task,epoch,global_epoch,loss,a\n"
    (run / "curves.csv").write_text(header + "1,1,1,0.5,50.0\n2,1,2,0.4,60.0\n")
    before = (run / "curves.csv").read_text()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert ("recorded 2 evaluated epochs (curves.csv) but holds no checkpoint (checkpoint.pt and checkpoint.prev.pt "
            "are gone)") in capsys.readouterr().err
    assert (run / "curves.csv").read_text() == before and not (run / "metrics.json").exists()
    (run / "model.pt").write_bytes(b"")  # a finished run (checkpoints removed) whose metrics.json was deleted
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "holds model.pt, which a run writes as it ends, and 2 evaluated epochs, but its metrics.json is gone" in (
        capsys.readouterr().err)
    (run / "model.pt").unlink()
    (run / "curves.csv").write_text(header + "1,1,1,0.5,50.0\n")  # (killed before its first checkpoint was written)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert json.loads((run / "metrics.json").read_text())["complete"] is True


@pytest.mark.parametrize("field, value, message", [
    ("samples_per_task", 99999, "--samples-per-task must be an integer in 1..1437"),
    ("datasets", ["nope"], "unknown dataset 'nope'"),
])
def test_resume_names_the_config_file_for_settings_the_data_refuse(tmp_path, capsys, field, value, message):
    run = tmp_path / "r"
    run.mkdir()
    record = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(8,)).to_dict()
    record[field] = value
    (run / "config.json").write_text(json.dumps(record))
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"metaspike: error: {run / 'config.json'}: ") and message in err and "\n" not in err, err


def _tamper(state, change):
    state["position"] = dict(state["position"])
    change(state)
    return state


@pytest.mark.parametrize("change, message", [
    (lambda s: s["position"].update(task=2, epochs_done=0), "accuracy matrix must have 2 rows"),
    (lambda s: s["position"].update(task="1"), "checkpoint position"),
    (lambda s: s["result"].update(matrix=[list(s["result"]["baseline"])] * 3), "accuracy matrix must have 0 rows"),
    (lambda s: s["result"].update(seconds="fast"), "seconds must be a number >= 0"),
    (lambda s: s["result"].update(curves=[{"a": 1}]), "curves must be rows of numbers"),
    (lambda s: s.update(batchnorm_states=[{}]), "a BatchNorm state for each of its 0 trained tasks"),
    (lambda s: (s["position"].update(task=1, epochs_done=0), s["result"].update(matrix=[list(s["result"]["baseline"])]),
                s.update(batchnorm_states=[{"x": torch.zeros(1)}])), "BatchNorm states do not fit"),
    (lambda s: s.update(generator=torch.zeros(3, dtype=torch.uint8)), "generator is not a state"),
    (lambda s: s["model"].update({k: v.long() for k, v in list(s["model"].items())[:1]}), "entries of another type"),
    (lambda s: s["model"].update({5: torch.zeros(1)}),
     "the checkpoint's model has entries that are not named by text: [5]"),
    (lambda s: [st.update(exp_avg=torch.zeros(1)) for st in s["optimizer"]["state"].values()],
     "optimizer does not fit this run's optimizer: state_dict: parameter 0's exp_avg has shape (1,)"),
    (lambda s: [st.update(step=torch.tensor(-5.0)) for st in s["optimizer"]["state"].values()],
     "step must be one finite number >= 0, got -5.0"),
    (lambda s: [g.update(lr=1e30) for g in s["optimizer"]["param_groups"]],
     "the checkpoint's optimizer has lr = 1e+30 in param group 0, where the run's settings give 0.005"),
    (lambda s: [g.update(meta=0.0) for g in s["optimizer"]["param_groups"][:1]],
     "the checkpoint's optimizer has meta = 0.0 in param group 0, where the run's settings give 5.0"),
    (lambda s: [st.update(exp_avg_sq=-st["exp_avg_sq"] - 1) for st in s["optimizer"]["state"].values()],
     "exp_avg_sq holds negative values (a sum of squares or a step size is >= 0)"),
    (lambda s: [st.update(exp_avg=st["exp_avg"] * float("nan")) for st in s["optimizer"]["state"].values()],
     "exp_avg holds NaN or infinite values"),
    (lambda s: s["model"].update({"1.weight": s["model"]["1.weight"] * float("nan")}),
     "the checkpoint's model holds NaN or infinite values (in 1.weight), which a run never writes"),
])
def test_a_tampered_checkpoint_is_one_line_never_a_wrong_run(tmp_path, capsys, change, message):
    """The checksum catches accidental damage only (anyone can recompute it): a checkpoint's structure is checked
    before it is used, or a resumed run could end `complete` with the wrong rows, or fail deep inside torch."""
    from metaspike.continual.results import CHECKSUM_KEY, CONFIG_KEY, state_checksum

    run = _interrupted_run(tmp_path, epochs=3, meta=(5.0,), batchnorm="per-task")
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    digest = raw.pop(CONFIG_KEY)
    raw.pop(CHECKSUM_KEY)
    state = _tamper(raw, change)
    torch.save({**state, CHECKSUM_KEY: state_checksum(state), CONFIG_KEY: digest}, run / "checkpoint.pt")
    (run / "checkpoint.prev.pt").unlink(missing_ok=True)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert f"checkpoint {run / 'checkpoint.pt'} cannot be resumed: " in err, err


def test_a_run_started_over_under_an_edited_config_describes_the_new_config(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    record = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(8,)).to_dict()
    (run / "config.json").write_text(json.dumps({**record, "hidden": [12], "model_description": "stale"}))
    (run / "scenario.json").write_text(json.dumps({"name": "stale"}))
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "12" in json.loads((run / "config.json").read_text())["model_description"]
    assert json.loads((run / "scenario.json").read_text())["name"] != "stale"


def _resumes_to_the_same_numbers(config: RunConfig, inside_a_task_only: bool = False, from_task: int = 0) -> int:
    """Resume ``config``'s run from each checkpoint it writes (or those after a task's first epoch; or those written
    once ``from_task`` tasks were trained) and compare the matrix with the run's own, digit for digit; return how many
    were checked."""
    from metaspike.app.runs import build_run_model, build_trainer, make_run_scenario

    scenario = make_run_scenario(config)

    def trainer():
        torch.manual_seed(0)
        return build_trainer(config, build_run_model(config, scenario), progress=False)

    log = KeepCheckpoints()
    whole = trainer().fit(scenario, log=log)
    states = [torch.load(io.BytesIO(blob), weights_only=True) for blob in log.saved]
    states = [state for state in states if (state["position"]["epochs_done"] or not inside_a_task_only)
              and state["position"]["task"] >= from_task]
    for state in states:
        resumed = trainer().fit(scenario, resume=state)
        assert [list(map(str, row)) for row in resumed.matrix] == [list(map(str, row)) for row in whole.matrix], \
            state["position"]
    return len(states)


#: Runs whose BatchNorm is not per task: asked for, or a class-incremental split (evaluated with the shared state).
NOT_PER_TASK_BATCHNORM = [pytest.param({"batchnorm": "shared"}, id="shared-batchnorm"),
                          pytest.param({"scenario": "split", "split_mode": "class"}, id="class-split")]


@pytest.mark.parametrize("settings", NOT_PER_TASK_BATCHNORM)
def test_a_run_whose_batchnorm_is_not_per_task_resumes_after_its_first_task_to_the_same_numbers(settings):
    """Where BatchNorm is not per task the trainer keeps an empty state for each trained task, and the checkpoint
    check asked every state for all the model's BatchNorm entries: each resume past the first task was refused
    ("the checkpoint's BatchNorm states do not fit this run's model")."""
    config = RunConfig(datasets=("digits",), tasks=3, epochs=2, hidden=(16,), meta=(5.0,), **settings)
    assert _resumes_to_the_same_numbers(config, from_task=2) == 3  # after task 2, inside task 3, after task 3


def test_a_run_that_freezes_its_unconsolidated_parameters_resumes_to_the_same_numbers():
    """The freezing plugin's count of tasks done travels in the checkpoint: a run resumed inside or after task 2 goes
    on frozen, as the run never stopped did."""
    config = RunConfig(datasets=("digits",), tasks=3, epochs=2, hidden=(16,), meta=(5.0,), freeze_unconsolidated=1,
                       batchnorm="shared")  # (per-task BatchNorm goes on learning: bnn would freeze nothing)
    assert _resumes_to_the_same_numbers(config, from_task=1) == 5  # after task 1, inside and after tasks 2 and 3


def test_a_per_task_batchnorm_run_refuses_a_checkpoint_without_its_tasks_batchnorm_states():
    """An empty BatchNorm state is what a run keeps where BatchNorm is not per task, and only there: a per-task run
    reads each task's state to evaluate it."""
    from metaspike.app.runs import build_run_model, build_trainer, make_run_scenario

    config = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(16,), meta=(5.0,), batchnorm="per-task")
    scenario = make_run_scenario(config)
    log = KeepCheckpoints()
    build_trainer(config, build_run_model(config, scenario), progress=False).fit(scenario, log=log)
    after_one = torch.load(io.BytesIO(log.saved[0]), weights_only=True)
    assert after_one["position"] == {"task": 1, "epochs_done": 0} and after_one["batchnorm_states"][0]
    after_one["batchnorm_states"] = [{}]
    with pytest.raises(ValueError, match="^the checkpoint's BatchNorm states do not fit this run's model$"):
        build_trainer(config, build_run_model(config, scenario), progress=False).fit(scenario, resume=after_one)


@pytest.mark.parametrize("settings", NOT_PER_TASK_BATCHNORM)
def test_train_resume_continues_a_run_whose_batchnorm_is_not_per_task_after_task_two(tmp_path, capsys, settings):
    """`metaspike train --resume` of such a run stopped after task 2 of 3 (`compare --resume` resumes its runs the
    same way) ends with the accuracy matrix of the run that was never stopped."""
    from metaspike.app.runs import run as run_whole

    settings = {"tasks": 3, "epochs": 2, **settings}
    whole, _ = run_whole(RunConfig(datasets=("digits",), hidden=(16,), meta=(5.0,), **settings), tmp_path / "whole",
                         progress=False, plot=False)
    stopped = _interrupted_run(tmp_path / "stopped", stop_at=4, **settings)  # (1 epoch, task 1, 1 epoch, task 2)
    assert load_checkpoint(stopped / "checkpoint.pt")["position"] == {"task": 2, "epochs_done": 0}
    assert main(["train", "--resume", str(stopped), "--quiet"]) == 0, capsys.readouterr().err
    assert (stopped / "accuracy_matrix.csv").read_text() == (whole / "accuracy_matrix.csv").read_text()


def test_a_model_that_samples_in_evaluation_resumes_from_inside_a_task_to_the_same_numbers():
    """BiMU evaluates on Bernoulli weight samples, so the data check at a task's start draws from torch's
    generator: resumed inside that task, the check ran a second time and the run drew other numbers."""
    assert _resumes_to_the_same_numbers(RunConfig(datasets=("digits",), epochs=2, hidden=(8,), tasks=2, model="bimu",
                                                  memory_window=1000))


def test_a_run_resumes_only_on_the_data_it_started_on(tmp_path, monkeypatch, capsys):
    """A data folder read again at resume time (a relative --data-dir, $METASPIKE_DATA) may hold other files."""
    from metaspike.continual.results import RunDirectory

    fake_mnist(tmp_path / "first", n_train=40, n_test=10, seed=1)
    fake_mnist(tmp_path / "other", n_train=40, n_test=10, seed=2)
    saving = RunDirectory.checkpoint

    def stop_after_the_first_checkpoint(self, state):
        saving(self, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunDirectory, "checkpoint", stop_after_the_first_checkpoint)
    monkeypatch.setenv("METASPIKE_DATA", str(tmp_path / "first"))
    main(["train", "--dataset", "mnist", "--tasks", "2", "--epochs", "2", "--hidden", "8", "--batch-size", "10",
          "--quiet", "--out", str(tmp_path / "runs")])
    monkeypatch.undo()
    run = next((tmp_path / "runs").iterdir())
    assert (run / "checkpoint.pt").exists()
    capsys.readouterr()

    monkeypatch.setenv("METASPIKE_DATA", str(tmp_path / "other"))
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained on other data than" in err and "mnist/train, mnist/test differ" in err
    monkeypatch.setenv("METASPIKE_DATA", str(tmp_path / "first"))
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert json.loads((run / "metrics.json").read_text())["complete"] is True


def test_standardizing_images_without_spread_is_one_line(tmp_path, monkeypatch, capsys):
    fake_mnist(tmp_path, n_train=20, n_test=10, value=0)
    monkeypatch.setenv("METASPIKE_DATA", str(tmp_path))
    assert main(["train", "--dataset", "mnist", "--standardize", "--tasks", "1", "--epochs", "1", "--hidden", "8",
                 "--batch-size", "10", "--quiet", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err == ("metaspike: error: --standardize: the training images of 'mnist' all have the same value (0.0), so "
                   "they have no spread to divide by; leave out --standardize\n")


def test_a_comparison_adds_no_run_on_other_data_than_its_finished_runs(tmp_path, monkeypatch, capsys):
    fake_mnist(tmp_path / "first", n_train=40, n_test=10, seed=1)
    fake_mnist(tmp_path / "other", n_train=40, n_test=10, seed=2)
    monkeypatch.setenv("METASPIKE_DATA", str(tmp_path / "first"))
    args = ["compare", "--dataset", "mnist", "--meta", "0", "5", "--tasks", "2", "--epochs", "1", "--hidden", "8",
            "--batch-size", "10", "--quiet", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    root = next((tmp_path / "out").iterdir())
    runs = sorted(p for p in root.iterdir() if (p / "config.json").exists())
    shutil.rmtree(runs[-1])  # as if killed before its last run began
    (root / "comparison.csv").unlink()
    capsys.readouterr()
    monkeypatch.setenv("METASPIKE_DATA", str(tmp_path / "other"))
    assert main(["compare", "--resume", str(root), "--quiet"]) == 2
    assert "was trained on other data than" in capsys.readouterr().err
    assert not runs[-1].exists()  # nothing trained on the other data


def test_a_resume_with_another_thread_count_says_its_numbers_may_differ(tmp_path):
    from metaspike.app.runs import resume

    threads = torch.get_num_threads()
    same = _interrupted_run(tmp_path / "same", record={"threads": threads, "versions": {"torch": torch.__version__}})
    assert resume(same, progress=False)[2] == []
    other = _interrupted_run(tmp_path / "other", record={"threads": threads + 1})
    warnings = resume(other, progress=False)[2]
    assert warnings == [f"{other} continues with threads {threads + 1} -> {threads}: sums may add in another order, "
                        "so its numbers can differ slightly from an uninterrupted run's (OMP_NUM_THREADS="
                        f"{threads + 1} restores the thread count)"]


@pytest.mark.parametrize("model", ["bimu", "mesu"])
def test_a_batch_one_bayesian_run_resumes_inside_a_task_to_the_same_numbers(model):
    """At batch size 1 the fused training step runs, and it read its settings from the optimizer's defaults, to which
    torch adds 'differentiable' when a state dict is loaded: every resume inside a task failed with a KeyError."""
    config = RunConfig(datasets=("digits",), epochs=2, hidden=(8,), tasks=2, model=model, batch_size=1,
                       samples_per_task=30)
    assert _resumes_to_the_same_numbers(config, inside_a_task_only=True)  # (with the optimizer's state loaded)


def test_a_bayesian_optimizer_loads_a_state_dict_twice():
    from metaspike import bayesianize
    from metaspike.bayesian import BiMU, bimu_parameters

    net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 2)), "bimu")
    optimizer = BiMU(bimu_parameters(net))
    optimizer.load_state_dict(optimizer.state_dict())
    optimizer.load_state_dict(optimizer.state_dict())  # (torch added 'differentiable' to its defaults the first time)
    assert optimizer.param_groups[0]["N"] == 60_000


@pytest.mark.parametrize("metrics, message", [
    ({"complete": True, "ACC": "abc"}, "'untrained_accuracy' must list 2 accuracies in [0, 100]"),
    ({"complete": True, "untrained_accuracy": [10.0, 120.0], "seconds": 3.0}, "'untrained_accuracy' must list 2"),
    ({"complete": True, "untrained_accuracy": [10.0, 11.0], "seconds": "3"}, "'seconds' must be a finite number >= 0"),
])
def test_a_finished_run_read_back_with_a_damaged_metrics_json_is_one_line(tmp_path, metrics, message):
    """A comparison reads its finished runs back: damage there would blank cells of its table without a word."""
    from metaspike.app.runs import finished_result, run

    path, _ = run(RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(8,)), tmp_path, progress=False, plot=False)
    assert finished_result(path).seconds >= 0
    (path / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError) as info:
        finished_result(path)
    assert str(info.value).startswith(f"{path / 'metrics.json'} is malformed: ") and message in str(info.value)


def test_a_checkpoint_without_its_run_identity_is_refused_from_python():
    """Without "identity" the run's scenario and settings went unchecked: another seed's checkpoint was resumed."""
    from metaspike.continual import ContinualTrainer, TrainerConfig, split
    from metaspike.data import ArrayDataset

    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(300, 16, generator=generator), torch.randint(0, 4, (300,), generator=generator)
    scenario = split(ArrayDataset.from_tensors(x[:200], y[:200], "mine"),
                     ArrayDataset.from_tensors(x[200:], y[200:], "mine"), groups=2)

    def trainer():
        torch.manual_seed(0)
        return ContinualTrainer(torch.nn.Linear(16, 4), lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                                TrainerConfig(epochs=1, batch_size=50), progress=False)

    log = KeepCheckpoints()
    trainer().fit(scenario, log=log)
    saved = torch.load(io.BytesIO(log.saved[0]), weights_only=True)
    del saved["identity"]
    with pytest.raises(ValueError, match="^the checkpoint lacks identity$"):
        trainer().fit(scenario, resume=saved)


@pytest.mark.parametrize("processes", [-1, 0, "2", 1.5, True])
def test_a_processes_entry_that_is_no_count_is_named_as_the_other_fields_are(tmp_path, capsys, processes):
    """-1 was read as one process and got an error telling to run the command that had just failed."""
    run = _interrupted_run(tmp_path, record={"processes": processes})
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"metaspike: error: {run / 'config.json'}: 'processes' must be an integer >= 1, "
                                       f"got {processes!r}\n")


def test_a_run_continues_with_the_number_of_processes_it_was_trained_by(tmp_path, monkeypatch, capsys):
    """A 2-process run resumed in one process trained the short last batches two processes skip: other numbers,
    silently. (And under torchrun both processes took the run's lock, so `torchrun ... --resume` always failed: the
    first process alone takes it now.)"""
    run = _interrupted_run(tmp_path, record={"processes": 2})
    alone = _interrupted_run(tmp_path / "alone", record={"processes": 1})
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained by 2 processes and would continue with 1" in err, err
    assert f"torchrun --nproc-per-node 2 -m metaspike train --resume {run}" in err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["reproduce", "fig5ab", "--quiet"]) == 2
    assert "reproduce runs in one process; under torchrun use 'metaspike train'" in capsys.readouterr().err
    assert main(["plot", str(run)]) == 2  # (both processes drew the same figures into the same files)
    assert "plot runs in one process; run it without torchrun" in capsys.readouterr().err
    assert main(["train", "--resume", str(alone), "--quiet"]) == 2
    assert "was trained by one process and would continue with 2" in capsys.readouterr().err  # (not "1 processes")


def _python_calls(work) -> int:
    """How many Python-level function calls ``work()`` makes (a count of the steps a walk takes, not a clock)."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


def test_a_checkpoint_of_a_long_stream_costs_its_evaluated_cells_not_tasks_squared(tmp_path):
    """The checksum and the loadability check walked each of the T rows of T cells, the one shared all-NaN tuple of
    the tasks trained without an evaluation again every time: T^2 steps (80 s a checkpoint at T = 10,000). Now a
    repeated row costs one step: with T = 400 rows sharing one tuple of 400 cells and one evaluated row, the distinct
    content is 2 x 400 cells and 400 row references, so a few steps each (4 x (800 + 400)) bound the calls, where the
    cell-by-cell walk made at least 400 x 400 = 160,000."""
    from metaspike.continual import RunDirectory
    from metaspike.continual.checkpoints import CHECKPOINT_FORMAT, check_loadable
    from metaspike.continual.results import state_checksum

    t, nan = 400, float("nan")
    skipped = (nan,) * t
    state = {"format": CHECKPOINT_FORMAT, "position": {"task": t, "epochs_done": 0},
             "result": {"matrix": [skipped] * (t - 1) + [[50.0] * t]}}
    for work in (lambda: state_checksum(state), lambda: check_loadable(state)):
        assert _python_calls(work) < 4 * (2 * t + t)
    run = RunDirectory.create(tmp_path, "run", {})
    run.checkpoint(state)
    loaded = load_checkpoint(run.path / "checkpoint.pt")  # (torch.load gives the shared row back shared)
    assert loaded["result"]["matrix"][0] is loaded["result"]["matrix"][t - 2]


def test_the_checksum_still_covers_every_cell_and_the_order_of_the_rows(tmp_path):
    """Marking a repeated row by where it was first met keeps the digest a function of the content: a changed cell of
    the shared row, the evaluated row moved, a shared row made a copy all change it; a structure without repeats keeps
    the digest of the walk that read everything (the value below was computed by it)."""
    from metaspike.continual.results import state_checksum

    plain = {"w": torch.ones(2), "step": [torch.tensor(3)], "acc": [94.72, float("nan")], "t": (1, "a", None),
             "d": {"x": 1.5}}
    assert state_checksum(plain) == "d36d2544d086f643057c31f20a91fe94e768f47a4922dddf05759d0e330f0384"
    nan = float("nan")
    skipped, evaluated = (nan,) * 3, [50.0, 60.0, 70.0]
    digest = state_checksum([skipped, skipped, evaluated])
    assert digest == state_checksum([skipped, skipped, list(evaluated)])  # (the same content)
    assert digest != state_checksum([skipped, evaluated, skipped])
    assert digest != state_checksum([skipped, (nan,) * 3, evaluated])
    assert digest != state_checksum([(nan, nan, 1.0)] * 2 + [evaluated])


def test_a_checkpoint_of_the_format_summed_before_repeats_were_marked_is_refused_by_its_format(tmp_path):
    from metaspike.continual.results import CHECKSUM_KEY, CONFIG_KEY

    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "metaspike-checkpoint-2", "position": {"task": 1}, "result": {"matrix": [[50.0]]},
                CHECKSUM_KEY: "0" * 64,
                CONFIG_KEY: "c"}, path)
    with pytest.raises(ValueError, match="format 'metaspike-checkpoint-2'.*'metaspike-checkpoint-3'.*start the run again"):
        load_checkpoint(path)


@pytest.mark.parametrize("rule", ["switch", "cascade"])
def test_a_rule_keeping_state_under_per_task_optimizers_resumes_at_a_task_boundary_to_the_same_numbers(rule):
    """The rule's state goes on to each task's new optimizer; resumed at a task's start the new optimizer takes it from
    the checkpoint's, so every resume gives the run's own numbers."""
    config = RunConfig(datasets=("digits",), tasks=3, epochs=2, hidden=(16,), meta=(1.0,), rule=rule)
    assert config.optimizer == "per-task"
    assert _resumes_to_the_same_numbers(config) == 6  # (after each epoch of each task)


def _deeply_nested_checkpoint(path: Path, depth: int) -> None:
    """Write at ``path`` a checkpoint archive whose pickle (written by hand: no Python list nests this deep) holds
    ``depth`` nested lists beside the keys load_checkpoint reads first."""
    import zipfile

    def text(s: str) -> bytes:
        return b"X" + len(s.encode()).to_bytes(4, "little") + s.encode()

    pickle = (b"\x80\x02}" + text("format") + text("metaspike-checkpoint-3") + b"s" + text("position") + b"K\x00s"
              + text("state_sha256") + text("x") + b"s" + text("config_sha256") + text("y") + b"s" + text("junk")
              + b"]" * depth + b"a" * (depth - 1) + b"s.")
    buffer = io.BytesIO()
    torch.save({"a": 1}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(path, "w") as archive:
        for info in source.infolist():
            archive.writestr(info.filename, pickle if info.filename.endswith("data.pkl") else source.read(info))


def _edited(change):
    """A damage that applies ``change`` to the checkpoint's content and saves it back (its checksum left as it was)."""
    def damage(path: Path) -> None:
        raw = torch.load(path, weights_only=True)
        change(raw)
        torch.save(raw, path)
    return damage


@pytest.mark.parametrize("damage, message", [
    (_edited(lambda raw: raw["model"].update(extra=torch.zeros(1).expand(1 << 12, 1 << 10))),
     r"holds \['model'\]\['extra'\] as a \(4096, 1024\) tensor over 4 bytes of storage, which metaspike never writes"),
    (_edited(lambda raw: raw["model"].update(extra=torch.zeros(3).to_sparse())),
     r"holds \['model'\]\['extra'\] as a torch.sparse_coo tensor"),
    (lambda path: _deeply_nested_checkpoint(path, 100_000),
     r"nests lists or dicts deeper than 100 levels \(at \['junk'\]\[0\]\[0\]"),
    (_edited(lambda raw: raw.update({"k" * 100_000: [[] for _ in range(10_000)]})),  # (a checksum spelt the 100 KB
     r"holds \['kkk.*\.\.\. under keys of more than 4,096 characters in all"),  # key 10,000 times: 1 GB)
    (_edited(lambda raw: raw["model"].update(extra={"k" * 3000: {"k" * 3000: torch.zeros(1)}})),
     r"holds \['model'\]\['extra'\]\['kkk.*\.\.\. under keys of more than 4,096"),
    (_edited(lambda raw: raw.update(unsummable=True)), r"is damaged: its content cannot be summed to check it \(Runtime"),
], ids=["stride-0", "sparse", "nested-100000-deep", "long-keys", "long-key-path", "checksum-fails"])
def test_a_checkpoint_whose_content_cannot_be_summed_falls_back_to_the_previous_one(tmp_path, monkeypatch, damage,
                                                                                     message):
    """The checksum ran outside load_checkpoint's `try`, over every tensor made contiguous before anything was
    checked: a 329 KB checkpoint with a stride-0 tensor took 2.4 GB before it was found damaged (a 17 TB one read as
    "out of memory ... smaller --hidden"), a sparse tensor raised "unsupported memory format option", 100,000 nested
    lists a RecursionError, and the good checkpoint.prev.pt was never tried. Now one walk refuses them before any
    copy, an error of the checksum itself is damage too, and the previous checkpoint is used."""
    from metaspike.continual import results

    summed = results.state_checksum

    def checksum(state, memo=None):
        if "unsummable" in state:  # (content the walk passes but the checksum cannot read)
            raise RuntimeError("unsupported memory format option Contiguous")
        return summed(state, memo)

    monkeypatch.setattr(results, "state_checksum", checksum)
    run = _interrupted_run(tmp_path, stop_at=2)
    newest = run / "checkpoint.pt"
    damage(newest)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(newest)
    state, warnings = results.latest_good_checkpoint(run)
    assert state["position"] == load_checkpoint(run / "checkpoint.prev.pt")["position"]
    assert len(warnings) == 1 and str(newest) in warnings[0] and "\n" not in warnings[0]


def test_the_paths_a_checksum_spells_are_bounded_one_by_one_and_in_all(monkeypatch):
    """A key counted by its length, or by its shortened repr, let a tuple key of 100,000 characters (or characters
    whose repr is ten long) pass above 20,000 lists, whose checksum then spelt 2 GB."""
    from metaspike import files

    for key in [("k" * 5000,), "\U000e0001" * 500, b"k" * 5000]:
        with pytest.raises(ValueError, match=r"checkpoint c.pt holds \[.*\.\.\. under keys of more than 4,096 "):
            files.check_plain_tensors({key: [[]]}, "checkpoint c.pt")
    monkeypatch.setattr(files, "MAX_KEY_PATHS_TOTAL", 10_000)
    files.check_plain_tensors({"k" * 100: [[] for _ in range(50)]}, "checkpoint c.pt")
    with pytest.raises(ValueError, match="checkpoint c.pt holds so many lists, dicts or tensors under long keys that "
                                         "their paths spell more than 10,000 characters"):
        files.check_plain_tensors({"k" * 100: [[] for _ in range(200)]}, "checkpoint c.pt")


def _first_floating(entries: dict) -> str:
    return next(key for key, value in entries.items() if value.is_floating_point())


@pytest.mark.parametrize("change, message", [
    (lambda s: s["batchnorm_states"][0][_first_floating(s["batchnorm_states"][0])].fill_(float("nan")),
     "the checkpoint's BatchNorm state of task 1 holds NaN or infinite values (in "),
    (lambda s: s["result"].update(task_names=5), "the checkpoint's task names must be a list of strings, got a int"),
    (lambda s: s["generator"].fill_(255), "the checkpoint's generator is not a state of torch's generator"),
    (lambda s: s["torch_rng"].fill_(255), "the checkpoint's torch_rng is not a state of torch's generator"),
    (lambda s: s["result"]["histograms"].append(torch.zeros(3)),
     "the checkpoint's list of histograms is malformed: snapshot 2 is not an object with 'after_task' and 'layers'"),
    (lambda s: s["result"]["histograms"].__setitem__(0, {"junk": 1}),
     "the checkpoint's list of histograms is malformed: snapshot 1 is not an object"),
], ids=["nan-batchnorm", "task-names-int", "generator", "torch-rng", "histogram-tensor", "histogram-junk"])
def test_a_resigned_checkpoint_with_broken_states_or_records_is_one_line(tmp_path, capsys, change, message):
    """A checkpoint re-signed with state_checksum (anyone can) was checked in its model alone: a NaN BatchNorm scale
    resumed to a run that ended complete with task 1 at 8 % (77 % before), task names 5 and a generator state of the
    right size but not valid gave tracebacks (TypeError, "Invalid mt19937 state"), and a tensor or a junk entry among
    the histograms stopped the run at its task's end (or left a malformed hidden_weights.json). Each is one line
    before anything of the checkpoint is used."""
    from metaspike.continual.results import CHECKSUM_KEY, CONFIG_KEY, state_checksum

    run = _interrupted_run(tmp_path, stop_at=2)  # (after task 1: one BatchNorm state and one histogram)
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    digest = raw.pop(CONFIG_KEY)
    raw.pop(CHECKSUM_KEY)
    assert raw["position"] == {"task": 1, "epochs_done": 0}
    change(raw)
    torch.save({**raw, CHECKSUM_KEY: state_checksum(raw), CONFIG_KEY: digest}, run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert f"checkpoint {run / 'checkpoint.pt'} cannot be resumed: " in err, err
    assert not json.loads((run / "metrics.json").read_text()).get("complete")


def test_a_finished_run_recording_an_integer_beyond_float_range_is_one_line(tmp_path):
    """metrics.json's ACC, seconds, untrained_accuracy and final_accuracy of 10**400 raised OverflowError
    (math.isnan of an int) when a comparison read its finished run back."""
    from metaspike.app.runs import finished_result, run

    path, _ = run(RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(8,)), tmp_path, progress=False, plot=False)
    good = json.loads((path / "metrics.json").read_text())
    for key, index, message in [("ACC", None, "'ACC' must be a number in [0, 100]"),
                                ("seconds", None, "'seconds' must be a finite number >= 0"),
                                ("untrained_accuracy", 0, "'untrained_accuracy' must list 2 accuracies"),
                                ("final_accuracy", 0, "last row differs from the final_accuracy")]:
        metrics = json.loads(json.dumps(good))
        if index is None:
            metrics[key] = 10**400
        else:
            metrics[key][index] = 10**400
        (path / "metrics.json").write_text(json.dumps(metrics))
        with pytest.raises(ValueError, match=re.escape(message)) as info:
            finished_result(path)
        assert "\n" not in str(info.value)


def _nan_cell(state):
    """A task's matrix row after a task the run evaluated made NaN: an evaluation that never happened."""
    row = list(state["result"]["matrix"][0])
    row[0] = float("nan")
    state["result"]["matrix"][0] = row


@pytest.mark.parametrize("stop_at, change, message", [
    (2, lambda s: s["position"].update(epochs_done=1),
     "the checkpoint's curves hold 2 rows where its position (0 tasks trained, 1 epochs into the next; 3 epochs a "
     "task, eval_every 1) gives 1: it was edited"),
    (2, lambda s: s["result"]["curves"][0].update({"digits-perm1": True}),
     "the checkpoint's curves row 1: 'digits-perm1' is True, not an accuracy in [0, 100]"),
    (2, lambda s: s["result"]["curves"][1].update({"digits-perm2": 1e300}),
     "the checkpoint's curves row 2: 'digits-perm2' is 1e+300, not an accuracy in [0, 100]"),
    (2, lambda s: s["result"]["curves"][0].update(loss=float("inf")),
     "the checkpoint's curves row 1: loss inf is not a finite number"),
    (2, lambda s: s["result"]["curves"][1].update(global_epoch=5),
     "the checkpoint's curves row 2 has task 1, epoch 2, global_epoch 5 where its position"),
    (2, lambda s: s["result"]["diagnostics"].pop(),
     "the checkpoint's diagnostics hold 1 rows where its position"),
    (3, lambda s: s["result"]["curves"][-1].update({"digits-perm1": 12.5}),
     "the checkpoint's curves row of task 1's last epoch differs from row 1 of its accuracy matrix"),
    (3, _nan_cell, "the checkpoint's curves row of task 1's last epoch differs from row 1 of its accuracy matrix"),
], ids=["position-behind-curves", "bool-cell", "huge-cell", "infinite-loss", "global-epoch", "diagnostics-short",
        "curves-not-matrix", "matrix-not-curves"])
def test_a_resigned_checkpoint_whose_curves_disagree_with_it_is_one_line_before_training(tmp_path, capsys, stop_at,
                                                                                         change, message):
    """A re-signed checkpoint's curves were checked as rows of numbers only: epochs_done set back from 6 to 1 resumed
    into the wrong epochs of task 1 (45 of 40), wrote global_epoch 1..6 then 2..6 to curves.csv, marked the run
    complete and then refused its own curves.csv (exit 2); a True or 1e300 accuracy in a curves row trained the whole
    run and then refused its own curves.csv. Now the curves must be the rows the run wrote up to the checkpoint's
    position (whole numbers, finite loss, accuracies in [0, 100]), the last one of a task its matrix row: refused in
    one line before anything is trained or written."""
    from metaspike.continual.results import CHECKSUM_KEY, CONFIG_KEY, state_checksum

    run = _interrupted_run(tmp_path, stop_at=stop_at, epochs=3)  # (stop_at 2: inside task 1; 3: after it)
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    digest = raw.pop(CONFIG_KEY)
    raw.pop(CHECKSUM_KEY)
    assert raw["position"] == ({"task": 0, "epochs_done": 2} if stop_at == 2 else {"task": 1, "epochs_done": 0})
    change(raw)
    torch.save({**raw, CHECKSUM_KEY: state_checksum(raw), CONFIG_KEY: digest}, run / "checkpoint.pt")
    (run / "checkpoint.prev.pt").unlink(missing_ok=True)
    files = {name: (run / name).read_bytes() for name in ("curves.csv", "diagnostics.csv")}
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert {name: (run / name).read_bytes() for name in files} == files  # (nothing trained, nothing written)


@pytest.mark.parametrize("config", [
    pytest.param(RunConfig(datasets=("digits",), tasks=5, epochs=2, hidden=(16,), eval_every=2, eval_tasks=6,
                           samples_per_task=60, batch_size=20), id="eval-every-2-and-a-budget"),
    pytest.param(RunConfig(datasets=("digits",), scenario="stream", tasks=3, epochs=2, hidden=(16,), eval_every=2,
                           batch_size=50), id="stream"),
    pytest.param(RunConfig(datasets=("digits",), scenario="split", split_mode="class-growing", tasks=3, epochs=2,
                           hidden=(16,)), id="growing-head"),
])
def test_every_checkpoint_of_a_run_evaluated_on_a_budget_or_a_stream_resumes_to_the_same_numbers(config):
    """The curves a checkpoint must hold follow from its position and its run's eval_every (rows only for evaluated
    tasks, of the tasks evaluated then): every checkpoint such runs write passes that check and resumes to the run's
    own matrix."""
    assert _resumes_to_the_same_numbers(config) >= 4


def test_a_logged_run_refuses_a_rule_its_checkpoints_cannot_hold_before_training(tmp_path):
    """A rule object of the user's own that is not a dataclass was found by the first checkpoint: after the first
    evaluated task (with --eval-every 10, ten tasks in). Now the run refuses it before the first step."""
    from metaspike.continual import ContinualTrainer, RunDirectory, TrainerConfig, make_scenario
    from metaspike.optim import MetaplasticAdam
    from metaspike.rules.base import Stateless

    class Halving(Stateless):
        name = "halving"

        def step(self, hidden, update, meta, state):
            return update * 0.5, state

    from bnn import MLP

    model = MLP([784, 16, 10])
    before = [p.detach().clone() for p in model.parameters()]
    trainer = ContinualTrainer(model, lambda m: MetaplasticAdam(m.parameters(), lr=0.01, meta=1.0, rule=Halving()),
                               TrainerConfig(epochs=1), progress=False)
    scenario = make_scenario("permuted", ["digits"], tasks=2, seed=1)
    with pytest.raises(ValueError, match=r"^make_optimizer: .*state_dict\(\)\['param_groups'\]\[0\]\['rule'\] is a .*Halving.*"
                                         r"needs @dataclass fields and register_rule$"):
        trainer.fit(scenario, log=RunDirectory.create(tmp_path, "run", {}))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # (refused before any step)
    assert trainer.fit(scenario).matrix  # (without a log nothing has to be saved: it runs)


def test_a_logged_run_refusing_another_setting_gives_no_rule_hint(tmp_path):
    """The hint about rule objects is given where a group's rule is one a checkpoint cannot hold, told from the rules
    themselves: read from the error's text, it was given for any unloadable value under a key named 'rule'."""
    import numpy as np

    from bnn import MLP
    from metaspike.continual import ContinualTrainer, RunDirectory, TrainerConfig, make_scenario
    from metaspike.optim import MetaplasticAdam

    def make_optimizer(model):
        optimizer = MetaplasticAdam(model.parameters(), lr=0.01, meta=1.0)
        optimizer.param_groups[0]["note"] = {"rule": np.zeros(1)}  # a setting of the user's own no checkpoint holds
        return optimizer

    trainer = ContinualTrainer(MLP([784, 16, 10]), make_optimizer, TrainerConfig(epochs=1), progress=False)
    scenario = make_scenario("permuted", ["digits"], tasks=1, seed=1)
    with pytest.raises(ValueError, match=r"^make_optimizer: .*\['note'\]\['rule'\] is a numpy.ndarray") as refused:
        trainer.fit(scenario, log=RunDirectory.create(tmp_path, "run", {}))
    assert "register_rule" not in str(refused.value)


def test_a_logged_run_with_a_chained_optimizer_starts(tmp_path):
    """The check above read state_dict()["param_groups"], which a ChainedOptimizer's state dict (BiMU with Adam for
    the plain parameters, what every spiking BiMU model trains with) does not have: every such logged run failed
    with a KeyError before its first step."""
    import metaspike
    from metaspike.bayesian import BiMU, bayesianize, bimu_parameters, plain_parameters
    from metaspike.continual import ContinualTrainer, RunDirectory, TrainerConfig, make_scenario

    model = bayesianize(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), "bimu")
    chained = lambda m: metaspike.ChainedOptimizer(BiMU(bimu_parameters(m)),  # noqa: E731
                                                   torch.optim.Adam(plain_parameters(m), lr=1e-3))
    trainer = ContinualTrainer(model, chained, TrainerConfig(epochs=1), progress=False)
    result = trainer.fit(make_scenario("permuted", ["digits"], tasks=2, seed=1),
                         log=RunDirectory.create(tmp_path, "run", {}))
    assert len(result.matrix) == 2


def test_a_logged_run_refuses_a_numpy_learning_rate_its_checkpoints_could_not_hold(tmp_path):
    """np.float64 is a float, so the check let an lr from np.logspace through; every checkpoint then failed to load
    (torch.load(weights_only=True) refuses numpy scalars) and the run could never be resumed."""
    import numpy as np

    from metaspike.continual import ContinualTrainer, RunDirectory, TrainerConfig, make_scenario

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    trainer = ContinualTrainer(model, lambda m: torch.optim.SGD(m.parameters(), lr=np.logspace(-2, -1, 3)[1]),
                               TrainerConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match=r"\['lr'\] is a numpy.float64 \(torch.load\(weights_only=True\) would not "
                                         r"read it back\); float\(...\) makes it a plain float$"):
        trainer.fit(make_scenario("permuted", ["digits"], tasks=2, seed=1), log=RunDirectory.create(tmp_path, "r", {}))


def test_a_refused_newest_checkpoint_names_its_file_and_the_previous_one_resumes(tmp_path, capsys):
    """A checkpoint whose checksum was forged to match NaN weights was refused in a line that named no file; the line
    names it now, and where the run keeps its previous checkpoint, moving the refused one away resumes from that one
    to a complete run."""
    from metaspike.continual.results import CHECKSUM_KEY, CONFIG_KEY, state_checksum

    run = _interrupted_run(tmp_path, stop_at=2)
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    digest = raw.pop(CONFIG_KEY)
    raw.pop(CHECKSUM_KEY)
    raw["model"] = {key: value * float("nan") if value.is_floating_point() else value
                    for key, value in raw["model"].items()}
    torch.save({**raw, CHECKSUM_KEY: state_checksum(raw), CONFIG_KEY: digest}, run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"metaspike: error: checkpoint {run / 'checkpoint.pt'} cannot be resumed: the checkpoint's "
                          "model holds NaN"), err
    (run / "checkpoint.pt").rename(tmp_path / "refused.pt")
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert json.loads((run / "metrics.json").read_text())["complete"] is True


def test_fit_names_the_file_of_a_loaded_checkpoint_it_refuses(tmp_path):
    """``ContinualTrainer.fit(resume=...)`` raises :class:`CheckpointRefused` (a ``ValueError``): naming the file for
    a checkpoint read by ``load_checkpoint``, the check's own line for a dict of one's own."""
    from metaspike.app.runs import _trainer, make_run_scenario
    from metaspike.continual import CheckpointRefused
    from metaspike.continual.results import load_checkpoint

    run = _interrupted_run(tmp_path)
    config = RunConfig(datasets=("digits",), tasks=2, epochs=2, hidden=(16,), meta=(5.0,))
    scenario = make_run_scenario(config)
    loaded = load_checkpoint(run / "checkpoint.pt")
    other = RunConfig(datasets=("digits",), tasks=2, epochs=2, hidden=(24,), meta=(5.0,))
    written = re.escape(str(run / "checkpoint.pt"))
    with pytest.raises(CheckpointRefused, match=rf"^checkpoint {written} cannot be resumed: the checkpoint was "
                                                "written by a run of a model built with other settings"):
        _trainer(other, scenario, progress=False).fit(scenario, resume=loaded)
    with pytest.raises(CheckpointRefused) as refused:
        _trainer(other, scenario, progress=False).fit(scenario, resume=dict(loaded))
    assert str(refused.value).startswith("the checkpoint was written by a run of a model built with other settings")
    assert _trainer(config, scenario, progress=False).fit(scenario, resume=loaded).matrix


@pytest.mark.parametrize("settings", [dict(meta=(5.0,)), dict(model="bimu", standardize=True, batch_size=32)],
                         ids=["bnn", "bimu-standardized"])
def test_load_run_model_gives_back_the_trained_model_of_a_run(tmp_path, settings):
    """README said model.pt loads with torch.load but not into what: a --standardize or bimu run's weights fit no model
    a user could build from its description (keys 0.mean, 0.std). load_run_model builds it from config.json and
    scores the last task as the run recorded (a bimu model predicts from weight samples: within its spread)."""
    from metaspike.app.runs import load_run_model, make_run_scenario, run
    from metaspike.training import evaluate

    config = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(16,), **settings)
    path, _ = run(config, tmp_path, progress=False, plot=False)
    model = load_run_model(path)
    task = make_run_scenario(config).eval_tasks[-1]
    recorded = json.loads((path / "metrics.json").read_text())["final_accuracy"][-1]
    scored = evaluate(model, task.test.x, task.test.y)
    assert not model.training
    # (a bimu model draws other weight samples than at the run's evaluation: 86.7 against 88.1 here)
    assert scored == pytest.approx(recorded, abs=0.01 if settings.get("model") != "bimu" else 5.0)
    (path / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"model.pt"):
        load_run_model(path)
