"""Streams of hundreds of tasks: lazy tasks, evaluation on a budget, EWC-Online, batch size 1, BiMU end to end."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from metaspike.app.cli import main
from metaspike.app.config import RunConfig
from metaspike.app.models import build_model, build_optimizer
from metaspike.app.reproduce.long_stream import run_method, stream_config
from metaspike.bayesian import MESU, BiMU
from metaspike.continual import ContinualTrainer, RunDirectory, TrainerConfig, load_run, permuted, summarize
from metaspike.continual.baselines import EWCOnline
from metaspike.continual.metrics import evaluated_accuracy, last_tasks_accuracy, task_accuracy_over_time
from metaspike.continual.results import latest_good_checkpoint
from metaspike.continual.scenarios import LISTED_PERMUTATIONS, task_permutation, task_subset
from metaspike.continual.trainer import evaluated_tasks
from metaspike.data import load_dataset
from metaspike.optim import MetaplasticAdam
from metaspike.training import evaluate, train_epoch
from tests.test_resume import _python_calls


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits"), load_dataset("digits", "test")


def test_a_stream_of_100000_tasks_is_made_lazily(digits):
    train, test = digits
    s = permuted(train, test, n_tasks=100_000, seed=7, samples_per_task=50)
    assert len(s.tasks) == 100_000 and len(s.tasks.cached) == 0 and s.num_classes == 10
    assert "permutations" not in s.definition and len(json.dumps(s.definition)) < 1000
    assert s.eval_task_names[-1] == "digits-perm100000" and len(s.tasks.cached) == 0
    for k in range(20):  # reaching tasks in order holds only a few of them
        s.tasks[k]
    assert len(s.tasks.cached) <= s.tasks.keep


def test_task_k_is_derived_from_the_seed_and_its_index(digits):
    train, test = digits
    rng = np.random.default_rng(7)
    drawn = [rng.permutation(784) for _ in range(LISTED_PERMUTATIONS + 5)]
    long = permuted(train, test, n_tasks=LISTED_PERMUTATIONS + 5, seed=7, samples_per_task=50)
    short = permuted(train, test, n_tasks=3, seed=7)
    assert short.definition["permutations"] == [p.tolist() for p in drawn[:3]]  # short streams are unchanged
    k = LISTED_PERMUTATIONS + 2
    assert (task_permutation(7, k, 784) == drawn[k]).all()
    rows = torch.from_numpy(task_subset(7, k, len(train), 50))
    expected = train.x.reshape(len(train), -1)[rows][:, torch.from_numpy(drawn[k])]
    task = long.tasks[k]
    assert torch.equal(task.train.x.reshape(50, -1), expected) and torch.equal(task.train.y, train.y[rows])
    assert len(task.test) == len(test) and len(set(rows.tolist())) == 50
    assert not np.array_equal(task_subset(7, k, len(train), 50), task_subset(8, k, len(train), 50))
    with pytest.raises(ValueError, match="samples_per_task must be an integer in 1.."):
        permuted(train, test, 2, samples_per_task=len(train) + 1)


def test_evaluation_budget_picks_first_last_five_and_an_even_sample():
    assert evaluated_tasks(3, 3) == [0, 1, 2]
    assert evaluated_tasks(0, 1000, 16) == [0, 100, 200, 300, 400, 500, 599, 699, 799, 899, 999]
    assert evaluated_tasks(250, 1000, 16) == [0, 100, 200, 245, 246, 247, 248, 249]
    assert evaluated_tasks(1000, 1000, 16)[-6:] == [899, 995, 996, 997, 998, 999]
    assert len(evaluated_tasks(1000, 1000, 16)) <= 16 and evaluated_tasks(2, 1000, 16) == [0, 1]
    # a budget beyond the tasks evaluates every task, without spreading 10^14 points over them first
    assert evaluated_tasks(4, 10, 10**14) == evaluated_tasks(4, 10, 15) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="budget must be None or an integer > 5"):
        evaluated_tasks(1, 10, 5)
    with pytest.raises(ValueError, match="eval_tasks must be None or an integer > 5"):
        TrainerConfig(eval_tasks=3)


def test_a_budget_of_trained_tasks_is_refused_for_tasks_evaluated_apart(digits):
    """eval_tasks on a scenario whose evaluated tasks are its own (a held-out Task per trained one) was ignored: every
    row evaluated every task, at the cost the budget was given to avoid (the CLI refuses it for --scenario stream)."""
    from metaspike.continual import Scenario, Task

    train, test = digits
    trained = permuted(train, test, n_tasks=7, seed=1, samples_per_task=40).tasks
    apart = Scenario("mine", trained, [Task(f"held-out-{i}", t.test, t.test) for i, t in enumerate(trained)])
    trainer = ContinualTrainer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)),
                               lambda m: torch.optim.SGD(m.parameters(), lr=0.01), TrainerConfig(eval_tasks=6),
                               progress=False)
    with pytest.raises(ValueError, match=r"^TrainerConfig.eval_tasks: scenario 'mine' evaluates its eval_tasks apart "
                                         r"from the trained tasks"):
        trainer.fit(apart)


def test_matrix_keeps_only_evaluated_cells(digits, tmp_path):
    train, test = digits
    scenario = permuted(train, test, n_tasks=7, seed=1, samples_per_task=40)
    model = build_model("bnn-layernorm", [16], (1, 28, 28), 10)
    config = TrainerConfig(epochs=1, batch_size=1, eval_every=3, eval_tasks=6)
    trainer = ContinualTrainer(model, lambda m: MetaplasticAdam(m.parameters(), lr=0.005, meta=1.0), config, progress=False)
    directory = RunDirectory.create(tmp_path, "run", {})
    result = trainer.fit(scenario, log=directory)
    evaluated = [[j for j, a in enumerate(row) if not math.isnan(a)] for row in result.matrix]
    assert evaluated == [[], [], [0, 1, 2], [], [], [0, 1, 2, 3, 4, 5], [0, 2, 3, 4, 5, 6]]
    assert [c["task"] for c in result.curves] == [3, 6, 7] and [h["after_task"] for h in result.histograms] == [3, 6, 7]
    # a curve row holds the tasks evaluated then, not a NaN for each of the others (each rewrite and checkpoint of
    # the curves would cost tasks x tasks x epochs); its file still has a column per task, empty where not evaluated
    names = [task.name for task in scenario.tasks]
    assert [[k for k in c if k in names] for c in result.curves] == [
        [names[j] for j in row] for row in (evaluated[2], evaluated[5], evaluated[6])]
    header, first_row = ((directory.path / "curves.csv").read_text().splitlines()[i].split(",") for i in (0, 1))
    assert header == ["task", "epoch", "global_epoch", "loss", *names]
    assert [j for j, cell in enumerate(first_row[4:]) if cell] == evaluated[2]
    # rows of tasks without an evaluation: one shared tuple in memory, no line in the file
    assert result.matrix[0] is result.matrix[4] and isinstance(result.matrix[0], tuple)
    lines = (directory.path / "accuracy_matrix.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["after_task", "3", "6", "7"]
    run = load_run(directory.path)
    assert np.array_equal(np.isnan(run["matrix"]), np.isnan(np.array(result.matrix)))
    written = json.loads((directory.path / "metrics.json").read_text())
    assert written["evaluated_task_numbers"] == [1, 3, 4, 5, 6, 7] and written["evaluated_tasks"] == 6
    assert run["matrix"][2][0] == pytest.approx(result.matrix[2][0], abs=0.01)
    metrics = summarize(result.matrix)
    assert math.isnan(metrics["ACC"]) and metrics["evaluated_tasks"] == 6
    assert metrics["last5_accuracy"] == pytest.approx(np.mean(result.matrix[-1][2:]))
    assert metrics["task1_accuracy"] == result.matrix[-1][0]
    assert evaluated_accuracy(result.matrix)[0] == pytest.approx(np.nanmean(result.matrix[-1]))
    assert [t for t, _ in task_accuracy_over_time(result.matrix)] == [3, 6, 7]
    assert last_tasks_accuracy(result.matrix, 6) != last_tasks_accuracy(result.matrix, 6)  # task 2 not evaluated: nan


def test_ewc_online_decays_one_running_fisher_around_the_last_weights():
    model = torch.nn.Linear(2, 2, bias=False)
    x, y = torch.ones(4, 2), torch.zeros(4, dtype=torch.long)
    ewc = EWCOnline(lam=3.0, gamma=0.5, samples=4)
    with torch.no_grad():
        model.weight.zero_()  # every per-sample gradient is ±0.5: Fisher 0.25 per weight
    ewc.task_done(model, x, y, None)
    ewc.task_done(model, x, y, None)
    assert torch.allclose(ewc.fisher[0], torch.full((2, 2), 0.5 * 0.25 + 0.25))
    with torch.no_grad():
        model.weight.fill_(2.0)
    assert ewc.penalty(model).item() == pytest.approx(0.5 * 3.0 * 4 * 0.375 * 4.0)
    ewc.task_done(model, x, y, None)  # the anchor moves to the last task's weights
    assert torch.equal(ewc.anchor[0], torch.full((2, 2), 2.0)) and ewc.penalty(model).item() == 0.0
    copy = EWCOnline()
    copy.load_state_dict(ewc.state_dict())
    assert copy.gamma == 0.5 and torch.equal(copy.fisher[0], ewc.fisher[0]) and len(copy.fisher) == 1
    with pytest.raises(ValueError, match=r"gamma must be a finite number in \[0, 1\]"):
        EWCOnline(gamma=1.5)


def test_batch_size_one_is_refused_for_batchnorm_and_kinds_pick_their_optimizer(capsys):
    with pytest.raises(ValueError, match=r"--batch-size 1: model 'bnn' has BatchNorm.*\(bnn-layernorm, bimu, mesu, mlp\)"):
        RunConfig(batch_size=1)
    assert main(["train", "--batch-size", "1", "--dataset", "digits", "--quiet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(ValueError, match="--samples-per-task applies to --scenario permuted only"):
        RunConfig(scenario="split", samples_per_task=10, model="mlp", batch_size=1)
    for kind, optimizer in (("bimu", BiMU), ("mesu", MESU), ("mlp", torch.optim.SGD), ("bnn-layernorm", MetaplasticAdam)):
        config = RunConfig(model=kind, batch_size=1, hidden=(8,), meta=(1.0,))
        assert isinstance(config.make_optimizer(build_model(kind, [8], (1, 28, 28), 10)), optimizer)


def test_the_memory_window_sets_the_bayesian_optimizers_n_and_is_checked(tmp_path):
    from metaspike.app.runs import config_from_record

    for kind, optimizer in (("bimu", BiMU), ("mesu", MESU)):
        config = RunConfig(model=kind, batch_size=1, hidden=(8,), memory_window=5000)
        opt = config.make_optimizer(build_model(kind, [8], (1, 28, 28), 10))
        assert isinstance(opt, optimizer) and opt.param_groups[0]["N"] == 5000.0
        assert config.name.endswith(f"-{kind}-N5000-seed1")
        assert config_from_record(config.to_dict(), tmp_path / "config.json") == config
    published = RunConfig(model="mesu", batch_size=1, hidden=(8,)).make_optimizer(build_model("mesu", [8], (1, 28, 28), 10))
    assert published.param_groups[0]["N"] == 600_000
    # the window counts training samples: BiMU's optimizer counts steps of 10 samples
    leaky = RunConfig(model="leaky+bimu", hidden=(8,), batch_size=10, memory_window=1230)
    assert leaky.make_optimizer(build_model("leaky+bimu", [8], (1, 28, 28), 10)).optimizers[0].param_groups[0]["N"] == 123
    for bad in (0, -5, 1e-300, 0.5, float("inf"), float("nan"), True, "100", 1e300):
        with pytest.raises(ValueError, match=r"--memory-window must be a number in \[1, 3.40282e\+38\], from the "):
            RunConfig(model="mesu", batch_size=1, memory_window=bad)
    with pytest.raises(ValueError, match=r"--memory-window must be a number in \[100, .*got 99"):
        RunConfig(model="bimu", batch_size=100, memory_window=99)
    with pytest.raises(ValueError, match=r"--batch-size 701: model 'bimu' keeps a memory window of 700 training "
                                         r"samples, under one step; use --batch-size <= 700 or --memory-window >= 701"):
        RunConfig(model="bimu", batch_size=701)
    with pytest.raises(ValueError, match="--memory-window applies to models with Bayesian synapses"):
        RunConfig(model="bnn", memory_window=100)
    record = RunConfig(model="mesu", batch_size=1).to_dict()
    del record["memory_window"]  # a run written before the setting existed keeps the published N
    assert config_from_record(record, tmp_path / "config.json").memory_window is None
    assert main(["train", "--model", "mlp", "--memory-window", "10", "--tasks", "1", "--out", str(tmp_path)]) == 2


def test_readout_lambda_starts_the_output_layer_confident_and_is_checked(tmp_path, monkeypatch):
    from metaspike.app.runs import build_run_model, config_from_record, make_run_scenario
    from metaspike.bayesian import bimu_parameters

    def latents(config):
        torch.manual_seed(3)
        model = build_run_model(config, make_run_scenario(config))
        return [lam.detach() for lam in bimu_parameters(model)]

    usual = RunConfig(model="bimu", datasets=("digits",), batch_size=1, hidden=(8,), tasks=1)
    confident = replace(usual, readout_lambda=1.5)
    (hidden, readout), (hidden_c, readout_c) = latents(usual), latents(confident)
    assert torch.equal(hidden_c, hidden)  # the same draws; only the output layer's magnitudes change
    assert torch.equal(readout_c, torch.where(readout >= 0, 1.5, -1.5))
    assert confident.name.endswith("-bimu-readout1.5-seed1")
    assert config_from_record(confident.to_dict(), tmp_path / "config.json") == confident
    record = usual.to_dict()
    del record["readout_lambda"]  # a run written before the setting existed starts as before
    assert config_from_record(record, tmp_path / "config.json").readout_lambda is None
    for bad in (0, -1, 1e-50, 1e39, float("nan"), float("inf"), True, "1"):  # 1e-50 and 1e39 leave float32's range
        with pytest.raises(ValueError, match=r"--readout-lambda must be a finite number in \[1.17549e-38, 3.40282e\+38\]"):
            replace(usual, readout_lambda=bad)
    for kind in ("mesu", "mlp", "bnn-layernorm"):
        with pytest.raises(ValueError, match=r"--readout-lambda applies to models with BiMU synapses"):
            RunConfig(model=kind, batch_size=1, readout_lambda=1.0)
    spiking = RunConfig(model="leaky+bimu", datasets=("digits",), hidden=(8,), tasks=1, readout_lambda=2.0)
    assert latents(spiking)[-1].abs().unique().tolist() == [2.0]
    snn = pytest.importorskip("snntorch")
    from metaspike.snn import neurons, register_neuron, spiking_mlp, surrogate

    monkeypatch.setattr(neurons, "_NEURONS", dict(neurons._NEURONS))  # (the registration ends with the test)
    register_neuron("recurrent-leaky-test", lambda spec: spiking_mlp(spec, lambda features, is_output: snn.RLeaky(
        beta=0.9, linear_features=features, spike_grad=surrogate("atan"), init_hidden=True, output=is_output)))
    recurrent = replace(spiking, model="recurrent-leaky-test+bimu")
    shapes = {tuple(lam.shape): lam.abs().max().item() for lam in latents(recurrent)}
    assert shapes[(10, 8)] == 2.0 and shapes[(10, 10)] < 1.0  # the readout, not the output neuron's recurrent matrix
    assert main(["train", "--model", "mlp", "--readout-lambda", "1", "--tasks", "1", "--out", str(tmp_path)]) == 2


def test_every_method_of_the_reproduction_is_a_valid_run_with_its_own_folder():
    from metaspike.app.reproduce.long_stream import METHODS

    configs = [replace(stream_config("cpu", 1), **method.settings) for method in METHODS]  # each validates itself
    assert len({method.label.replace(" ", "_").replace(",", "") for method in METHODS}) == len(METHODS)
    confident = next(c for c in configs if c.readout_lambda is not None)
    assert (confident.model, confident.memory_window, confident.eval_samples) == ("bimu", 875, 100)


def test_the_reproduction_names_each_method_and_seed_before_it_trains(tmp_path, monkeypatch, capsys):
    """Every method's bars read "task 1/100 ..." alike, and the 2021 rule's sweep showed nothing for a minute: which
    method was training was said only after its 100 tasks."""
    from metaspike.app.reproduce import long_stream
    from metaspike.continual.trainer import ContinualResult

    result = ContinualResult(["a", "b"], matrix=[[90.0, 10.0], [80.0, 90.0]], baseline=[10.0, 10.0])
    monkeypatch.setattr(long_stream, "run_method", lambda config, out=None, progress=False: (result, 1e-3))
    monkeypatch.setattr(long_stream, "sweep_metaplastic", lambda config, grid: grid[0])
    methods = [m for m in long_stream.METHODS if m.label in ("SGD", "2021 rule, LayerNorm")]
    long_stream.run("cpu", [1, 2], tmp_path, True, None, methods=methods)
    announced = [line for line in capsys.readouterr().err.splitlines() if line.startswith("run ")]
    sweep = f"after choosing lr and m on {long_stream.SWEEP_TASKS} tasks ({len(long_stream.SWEEP)} short runs)"
    assert announced == [f"run 1/4: 2021 rule, LayerNorm, seed 1, {sweep}", f"run 2/4: 2021 rule, LayerNorm, seed 2, "
                         f"{sweep}", "run 3/4: SGD, seed 1", "run 4/4: SGD, seed 2"]


class _Killed(Exception):
    pass


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_the_bayesian_kinds_learn_at_batch_50_with_their_settings_scaled(kind, digits, one_thread):
    train, test = digits
    mean, std = train.x.mean(0), train.x.std(0) + 1e-3  # as --standardize does
    accuracies = {}
    for settings_batch in (50, 1):  # scaled to the batch, and the per-sample settings as they are
        torch.manual_seed(0)
        model = build_model(kind, [32], (1, 28, 28), 10)
        optimizer = build_optimizer(kind, model, lr=0.0, batch_size=settings_batch)
        for _ in range(2):
            train_epoch(model, optimizer, (train.x - mean) / std, train.y, 50, torch.Generator().manual_seed(0))
        accuracies[settings_batch] = evaluate(model, (test.x - mean) / std, test.y)
    # measured on the AMD EPYC: BiMU 90.0 % scaled against 7.5 % with the per-sample settings, MESU 95.0 against 70.3
    assert accuracies[50] > 80 and accuracies[1] < accuracies[50] - 10, accuracies


def test_bimu_at_batch_one_end_to_end_and_resumed(tmp_path, monkeypatch):
    # 300 samples per task: the 0/1 gate network learns slowly (100 samples left it at 7-21 %; 300: 52-68 %)
    config = replace(stream_config("cpu", 3), datasets=("digits",), tasks=4, samples_per_task=300, hidden=(16,),
                     model="bimu", eval_every=2, eval_tasks=6)
    whole, step = run_method(config, out=tmp_path / "whole")
    assert len(whole.matrix) == 4 and step > 0
    # a model that learned nothing scores 10 % ± 1.6 % (one standard error) on the 360 test digits: 18 % is five above
    assert whole.matrix[-1][-1] > 18

    original = RunDirectory.checkpoint

    def die_after_first(self, state):
        original(self, state)
        raise _Killed

    monkeypatch.setattr(RunDirectory, "checkpoint", die_after_first)
    with pytest.raises(_Killed):
        run_method(config, out=tmp_path / "killed")
    monkeypatch.setattr(RunDirectory, "checkpoint", original)
    (killed,) = (tmp_path / "killed").iterdir()
    state, warnings = latest_good_checkpoint(killed)
    assert state["position"]["task"] == 2 and not warnings
    resumed, _ = run_method(config, out=tmp_path / "killed")  # the same call again continues the stopped run
    assert list((tmp_path / "killed").iterdir()) == [killed]
    assert np.array_equal(np.array(resumed.matrix), np.array(whole.matrix), equal_nan=True)
    again, _ = run_method(config, out=tmp_path / "killed")  # and a complete one is read back (2 decimals, as written)
    assert np.allclose(np.array(again.matrix), np.array(whole.matrix), rtol=0, atol=0.005, equal_nan=True)


def test_standardize_puts_the_training_pixels_statistics_in_front_of_the_model(tmp_path):
    from metaspike.app.models import Standardize
    from metaspike.app.runs import build_run_model, config_from_record, make_run_scenario

    config = RunConfig(model="bimu", datasets=("digits",), tasks=2, epochs=1, hidden=(8,), batch_size=1,
                       samples_per_task=40, standardize=True)
    assert config.name == "permuted-digits-bimu-standardized-seed1"
    model = build_run_model(config, make_run_scenario(config))
    pixels = load_dataset("digits", "train").x
    assert isinstance(model[0], Standardize)
    assert float(model[0].mean) == pytest.approx(float(pixels.mean())) and float(model[0].std) == pytest.approx(float(pixels.std()))
    standardized = model[0](pixels)
    assert abs(float(standardized.mean())) < 1e-4 and float(standardized.std()) == pytest.approx(1.0, abs=1e-4)

    record = config.to_dict()
    del record["standardize"]  # a run written before the setting existed was not standardized
    assert config_from_record(record, tmp_path / "config.json").standardize is False
    assert RunConfig(model="leaky", standardize=True).standardize is True  # (the direct encoder takes currents)
    with pytest.raises(ValueError, match=r"^--standardize is a switch \(true or false\), got 1"):
        RunConfig(standardize=1)
    out = tmp_path / "runs"
    assert main(["train", "--model", "mesu", "--standardize", "--dataset", "digits", "--tasks", "2", "--epochs", "1",
                 "--hidden", "8", "--batch-size", "1", "--samples-per-task", "30", "--quiet", "--out", str(out)]) == 0
    (run,) = out.iterdir()
    assert run.name.endswith("-mesu-standardized-seed1")
    assert json.loads((run / "config.json").read_text())["standardize"] is True


def test_a_matrix_file_whose_task_numbers_go_backwards_is_one_line(digits, tmp_path):
    (tmp_path / "accuracy_matrix.csv").write_text("after_task,a,b\n3,50,\n2,40,60\n")
    with pytest.raises(ValueError, match="after_task must hold increasing task numbers >= 1"):
        load_run(tmp_path)
    (tmp_path / "accuracy_matrix.csv").write_text("after_task,a,b\n1000000000000,50,\n")  # a trillion rows
    with pytest.raises(ValueError, match="after_task must hold increasing task numbers >= 1, at most 1000000"):
        load_run(tmp_path)


def test_tasks_are_bounded_where_the_metrics_matrix_still_fits(capsys):
    assert main(["train", "--tasks", "10001", "--batch-size", "1"]) == 2
    assert "--tasks must be an integer in 1..10000" in capsys.readouterr().err


def test_a_comparison_of_budget_runs_shows_what_the_budget_measured():
    from metaspike.app.tables import format_table, summarize_results
    from metaspike.continual import ContinualResult

    nan = math.nan
    rows = [[80.0, *[nan] * 11], *[[nan] * 12] * 10,  # 12 tasks, evaluated after the first and the last
            [70.0, nan, 75.0, *[nan] * 4, 55.0, 60.0, 60.0, 65.0, 90.0]]
    result = ContinualResult([f"t{j}" for j in range(12)], matrix=rows, seconds=1.0)
    row = summarize_results([result])
    assert row["evaluated"][0] == pytest.approx(475 / 7) and row["last 5"][0] == pytest.approx(66)
    header = format_table([{"setting": "m=0", **row}], 12).splitlines()[0].split()
    assert header == ["setting", "task", "1", "task", "12", "ACC", "BWT", "FWT", "forgetting", "evaluated", "last", "5",
                      "seconds"]


def test_the_bayesian_kinds_are_judged_against_the_binary_network_at_m_0():
    from metaspike.app.compare import tradeoff_rows

    def row(neuron, meta, forgetting, task1, task2):
        return {"neuron": neuron, "meta": meta, "runs": 1, "ACC": ((task1 + task2) / 2, 0.0),
                "forgetting": (forgetting, 0.0), "task 1": (task1, 0.0), "task 2": (task2, 0.0)}

    rows = [row("bnn", 0.0, 20.0, 70.0, 90.0), row("bnn", 10.0, 12.0, 78.0, 89.0), row("bimu", 0.0, 2.0, 88.0, 90.5),
            row("mesu", 0.0, 6.0, 84.0, 80.0), row("leaky", 0.0, 30.0, 60.0, 88.0), row("leaky+bimu", 0.0, 1.5, 87.0, 87.5)]
    verdicts = {r["neuron"]: (r["best_meta"], r["verdict"]) for r in tradeoff_rows(rows)}
    assert verdicts["bimu"] == ("-", "BiMU (against bnn m=0) forgets 90% less, last task +0.5 points")
    assert verdicts["mesu"] == ("-", "FAILS: MESU forgets 6.0 points (m=0: 20.0) but its last task is -10.0 points, "
                                     "beyond 5")
    assert verdicts["leaky+bimu"] == ("-", "BiMU (against leaky m=0) forgets 95% less, last task -0.5 points")
    assert verdicts["bnn"][0] == "10" and verdicts["leaky"][1] == "m = 0 only: nothing to compare it with"


@pytest.mark.parametrize("forgetting, says", [
    (-1.1, "forgets nothing (its earlier tasks gained 1.1 points)"),
    (-0.01, "forgets nothing"),
    (0.0, "forgets nothing"),
    (0.1, "forgets 100% less"),
    (13.05, "forgets 50% less"),
])
def test_a_verdict_on_no_or_negative_forgetting_says_so_not_more_than_100_percent_less(forgetting, says):
    """A negative forgetting (the earlier tasks ended above their best) read as "forgets 104% less"."""
    from metaspike.app.compare import tradeoff_rows

    def row(neuron, forgetting, task1, task2):
        return {"neuron": neuron, "meta": 0.0, "runs": 1, "ACC": ((task1 + task2) / 2, 0.0),
                "forgetting": (forgetting, 0.0), "task 1": (task1, 0.0), "task 2": (task2, 0.0)}

    rows = [row("leaky", 26.1, 61.4, 81.1), row("leaky+bimu", forgetting, 89.2, 91.4)]
    verdict = {r["neuron"]: r["verdict"] for r in tradeoff_rows(rows)}["leaky+bimu"]
    assert verdict == f"BiMU (against leaky m=0) {says}, last task +10.3 points"


def test_a_kind_without_m_is_never_its_own_baseline_at_m_0():
    """MESU without bnn beside it, and leaky+bimu without leaky: no reference ran, so the m = 0 columns stay empty
    (they once held MESU's own figures), and the verdict says what is missing."""
    from metaspike.app.compare import tradeoff_rows

    def row(neuron, forgetting, task1, task2):
        return {"neuron": neuron, "meta": None, "runs": 1, "ACC": ((task1 + task2) / 2, 0.0),
                "forgetting": (forgetting, 0.0), "task 1": (task1, 0.0), "task 2": (task2, 0.0)}

    out = {r["neuron"]: r for r in tradeoff_rows([row("mesu", 3.7, 84.1, 87.2), row("leaky+bimu", 1.8, 77.5, 80.3)])}
    assert all(math.isnan(out[k][column][0]) for k in out for column in ("forgetting_m0", "plasticity_m0"))
    assert out["mesu"]["verdict"] == "not judged: mesu has no m, and no bnn ran at m = 0 beside it"
    assert out["leaky+bimu"]["verdict"] == "not judged: no leaky at m = 0 ran beside it"


def test_one_task_gives_no_forgetting_to_judge():
    from metaspike.app.compare import tradeoff_rows

    rows = [{"neuron": "leaky", "meta": meta, "runs": 1, "ACC": (90.0, 0.0), "forgetting": (float("nan"), 0.0),
             "task 1": (90.0, 0.0)} for meta in (0.0, 10.0)]
    assert {r["verdict"] for r in tradeoff_rows(rows)} == {
        "cannot judge: forgetting needs at least 2 tasks evaluated apart (this scenario evaluates one)"}


def test_a_forgetting_left_undefined_is_not_blamed_on_eval_tasks():
    """--eval-every 2 (or joint training) leaves forgetting undefined with ACC measured: the verdict blamed an
    --eval-tasks no one gave, and the best m read "-"."""
    from metaspike.app.compare import tradeoff_rows

    rows = [{"neuron": "bnn", "meta": meta, "runs": 1, "ACC": (acc, 0.0), "forgetting": (float("nan"), 0.0),
             "task 1": (acc, 0.0), "task 2": (acc, 0.0)} for meta, acc in ((0.0, 60.0), (10.0, 68.6))]
    (out,) = tradeoff_rows(rows)
    assert out["verdict"].startswith("cannot judge: forgetting undefined (forgetting needs each task evaluated right "
                                     "after its own training: --eval-every 1")
    assert "ACC needs" not in out["verdict"] and out["best_meta"] == "10"


def test_a_stream_whose_matrix_outgrows_its_rewrites_is_warned_of():
    """Each evaluation adds a row of one cell per task and every checkpoint rewrites them all: 10,000 tasks evaluated
    after each made a 25 MB checkpoint by task 109 and slowed the run fivefold."""
    from metaspike.app.runs import MATRIX_CELLS_WARNED, matrix_cost_warning

    every_task = RunConfig(tasks=10_000, eval_every=1, batch_size=1, model="bimu")
    assert "10,000 rows of 10,000 cells" in matrix_cost_warning(every_task)
    assert "--eval-every 10 or more" in matrix_cost_warning(every_task)
    suggested = RunConfig(tasks=10_000, eval_every=10, batch_size=1, model="bimu")
    assert matrix_cost_warning(suggested) is None and 1_000 * 10_000 <= MATRIX_CELLS_WARNED
    assert matrix_cost_warning(RunConfig(tasks=1_000, eval_every=1, batch_size=1, model="bimu")) is None
    # a stream of subsets has one column per dataset, a joint run one row: neither grows so
    for scenario in ("stream", "joint"):
        assert matrix_cost_warning(RunConfig(scenario=scenario, tasks=10_000, eval_every=1, batch_size=1,
                                             model="bimu")) is None


def test_a_bayesian_run_records_the_settings_its_optimizer_ran_with(tmp_path):
    """config.json's lr and meta are MetaplasticAdam's; a BiMU run records what BiMU ran with, scaled to its batch."""
    from metaspike.app.cli import main
    from metaspike.app.models import build_model, build_optimizer

    assert main(["train", "--model", "bimu", "--dataset", "digits", "--tasks", "1", "--epochs", "1", "--hidden", "8",
                 "--batch-size", "5", "--memory-window", "500", "--quiet", "--out", str(tmp_path)]) == 0
    recorded = json.loads(next(tmp_path.glob("*/config.json")).read_text())["bayesian_optimizer_settings"]
    optimizer = build_optimizer("bimu", build_model("bimu", [8], (1, 8, 8), 10), lr=0.005, batch_size=5,
                                memory_window=500)
    ran = {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}
    assert recorded == pytest.approx(ran) and recorded["N"] == 100.0  # 500 samples, steps of 5


def test_the_tradeoff_table_rounds_as_the_comparison_table_does():
    """A forgetting of 12.25 is 12.3 in the comparison table (a half rounded away from zero): the same in the
    trade-off table and its verdicts, where f"{x:.1f}" wrote 12.2."""
    from metaspike.app.compare import format_tradeoff, tradeoff_rows
    from metaspike.app.tables import format_table

    rows = [{"neuron": "bnn", "meta": meta, "runs": 1, "ACC": (80.0 + meta, 0.0), "forgetting": (f, 0.0),
             "task 1": (70.0, 0.0), "task 2": (90.0 + shift, 0.0), "setting": f"bnn meta={meta:g}",
             "BWT": (-f, 0.0), "FWT": (0.0, 0.0), "seconds": (1.0, 0.0)}
            for meta, f, shift in ((0.0, 30.0, 0.0), (10.0, 12.25, -2.25))]
    tradeoff = format_tradeoff(tradeoff_rows(rows))
    assert "12.3" in format_table(rows, 2) and "12.3" in tradeoff and "12.2" not in tradeoff
    assert "last task -2.3 points" in tradeoff


def test_a_long_stream_evaluated_on_every_task_reports_its_last_five(tmp_path, capsys):
    """12 tasks evaluated after every 5th (and the last) on every task: the command printed "over the last 5 nan %"
    and metrics.json lacked last5_accuracy and task1_accuracy, as for every long stream whose last row was complete."""
    import csv
    import re

    assert main(["train", "--model", "mlp", "--dataset", "digits", "--hidden", "20", "--epochs", "1", "--batch-size",
                 "1", "--samples-per-task", "30", "--tasks", "12", "--eval-every", "5", "--quiet",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    (run,) = tmp_path.iterdir()
    rows = list(csv.reader(open(run / "accuracy_matrix.csv")))
    assert [row[0] for row in rows] == ["after_task", "5", "10", "12"]
    final = [float(cell) for cell in rows[-1][1:]]
    metrics = json.loads((run / "metrics.json").read_text())
    # the file keeps 2 decimals (0.005 off each cell at most), metrics.json 3 (0.0005), the summary line 1 (0.05)
    assert metrics["last5_accuracy"] == pytest.approx(sum(final[-5:]) / 5, abs=0.0055)
    assert metrics["task1_accuracy"] == pytest.approx(final[0], abs=0.0055) and metrics["evaluated_tasks"] == 12
    assert metrics["evaluated_accuracy"] == pytest.approx(metrics["ACC"], abs=0.0005)
    line = re.search(r"12 tasks, 12 evaluated: mean accuracy over the evaluated tasks ([\d.]+) %, over the last 5 "
                     r"([\d.]+) %, task 1 at the end ([\d.]+) %", printed)
    assert line, printed
    for shown, value in zip(map(float, line.groups()), (metrics["ACC"], metrics["last5_accuracy"], final[0])):
        assert shown == pytest.approx(value, abs=0.0555)  # 0.05 (1 decimal) + 0.005 + 0.0005 (the files' rounding)


def test_a_table_of_long_streams_shows_the_last_five_but_not_a_repeat_of_acc():
    """Every task evaluated at the end: the mean over the evaluated tasks is ACC, and the table leaves it out; the mean
    over the last five is a column of its own (beyond 10 tasks the table shows the first and the last task only)."""
    from metaspike.app.tables import format_table, summarize_results
    from metaspike.continual import ContinualResult

    final = [50.0 + j for j in range(12)]
    result = ContinualResult([f"t{j}" for j in range(12)], matrix=[(math.nan,) * 12] * 11 + [final], seconds=1.0)
    row = summarize_results([result])
    assert row["last 5"][0] == pytest.approx(59.0) and row["evaluated"][0] == row["ACC"][0] == pytest.approx(55.5)
    header = format_table([{"setting": "m=0", **row}], 12).splitlines()[0].split()
    assert header == ["setting", "task", "1", "task", "12", "ACC", "BWT", "FWT", "forgetting", "last", "5", "seconds"]


@pytest.mark.parametrize("total, budget", [(12, 12), (20, 16), (30, 16), (40, 16), (100, 16), (1000, 16), (7, 7)])
def test_after_the_last_task_a_budget_evaluates_one_task_fewer_than_it_names_however_short_the_stream(total, budget):
    """The even sample spanned the whole stream, and on short streams several of its points fell among the last five
    tasks, evaluated anyway: a budget of 12 on 12 tasks evaluated 9 (tasks 2, 4 and 6 never), 16 on 20 tasks 13."""
    final = evaluated_tasks(total, total, budget)
    assert len(final) == budget - 1 and final[0] == 0 and final[-5:] == list(range(total - 5, total))
    assert evaluated_tasks(12, 12, 13) == list(range(12))  # (a budget beyond the tasks: every one)


class _CountingRun(RunDirectory):
    """A run directory that counts the Python calls of each task's writing (task_done) and of each checkpoint's
    loadability check and checksum (torch.save's own per-object calls left out: the checkpoint's format holds every
    result), and checks every checksum against one summed without a memo."""

    def __init__(self, path):
        super().__init__(path)
        self.written, self.checked = [], []

    def task_done(self, result):
        self.written.append(_python_calls(lambda: super(_CountingRun, self).task_done(result)))

    def checkpoint(self, state):
        from metaspike.continual.checkpoints import check_loadable
        from metaspike.continual.results import state_checksum

        memo, summed = self._memo("checkpoint.pt"), []
        self.checked.append(_python_calls(lambda: (check_loadable(state, memo=memo),
                                                   summed.append(state_checksum(state, memo)))))
        assert summed == [state_checksum(state)]
        super().checkpoint(state)


def _long_stream_run(digits, tmp_path, tasks=40):
    train, test = digits
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))
    trainer = ContinualTrainer(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                               TrainerConfig(epochs=1, batch_size=10, eval_tasks=8), progress=False)
    run = _CountingRun.create(tmp_path, "run", {})
    scenario = permuted(train, test.subset(torch.arange(50), "test"), tasks, samples_per_task=10)
    return run, trainer.fit(scenario, log=run)


def test_a_long_streams_logging_works_on_each_tasks_results_once(digits, tmp_path):
    """200 tasks logged to a RunDirectory took 43 s where training took 3 s: every task encoded hidden_weights.json
    again with every earlier snapshot and rewrote the matrix cell by cell, and every checkpoint checked and summed all
    earlier results value by value, so each task's writing grew with the tasks before it. Now a part of the results
    unchanged since the last write (a histogram snapshot, a matrix or curves row) keeps its text and its checksum
    bytes: a task's writing and checkpoint take a few Python calls more per part than the task before (a look-up),
    not one or more per value the earlier tasks hold. Counted in calls, not timed; the files and checksums are the
    ones the full formatting gives."""
    from metaspike.continual.results import _json_ready, load_checkpoint
    from metaspike.files import csv_text

    run, result = _long_stream_run(digits, tmp_path)
    snapshot = result.histograms[-1]["layers"]
    values_a_task_adds = sum(len(layer["edges"]) + len(layer["counts"]) for layer in snapshot.values())
    values_a_task_adds += len(result.task_names)  # (its matrix row)
    for counts in (run.written, run.checked):
        growth = (counts[-1] - counts[19]) / (len(counts) - 20)
        # (~280 values a task: the value-by-value walk grew by ~1,000 calls a task, this by under 50: 5 parts)
        assert growth < values_a_task_adds / 3, (growth, values_a_task_adds)
    text = (run.path / "hidden_weights.json").read_text()
    assert text == json.dumps(_json_ready(result.histograms), indent=2) + "\n"
    rows = [["after_task", *result.task_names]] + [[i + 1] + [round(a, 2) if a == a else "" for a in row]
                                                   for i, row in enumerate(result.matrix)]
    assert (run.path / "accuracy_matrix.csv").read_text() == csv_text(rows)
    header = ["task", "epoch", "global_epoch", "loss", *result.task_names]
    curves = [header] + [[round(r[k], 6) if isinstance(r.get(k), float) else r.get(k, "") for k in header]
                         for r in result.curves]
    assert (run.path / "curves.csv").read_text() == csv_text(curves)
    assert load_checkpoint(run.path / "checkpoint.pt")["position"] == {"task": 40, "epochs_done": 0}


def test_a_result_changed_in_place_after_it_was_written_is_written_and_summed_anew(tmp_path):
    """What a run directory keeps of the parts it wrote is used only while a part is the same object and equal to a
    copy made then: a row changed in place (or replaced) is formatted and summed again, never written stale."""
    from metaspike.continual import ContinualResult
    from metaspike.continual.memo import PartMemo
    from metaspike.continual.results import state_checksum

    run = RunDirectory.create(tmp_path, "run", {})
    layer = {"edges": [-1.0, 0.0, 1.0], "counts": [3, 4], "shape": [2, 2]}
    result = ContinualResult(["a", "b"], matrix=[[90.0, 10.0], [80.0, 70.0]], baseline=[10.0, 10.0],
                             histograms=[{"after_task": 1, "layers": {"0": layer}}], training_tasks=2)
    run.task_done(result)
    result.matrix[0][1] = 55.5
    layer["counts"][0] = 9
    result.histograms.append({"after_task": 2, "layers": {"0": dict(layer)}})
    run.task_done(result)
    assert (run.path / "accuracy_matrix.csv").read_text().splitlines()[1] == "1,90.0,55.5"
    assert json.loads((run.path / "hidden_weights.json").read_text())[0]["layers"]["0"]["counts"] == [9, 4]
    memo, state = PartMemo(), {"rows": [[1.0, 2.0], [3.0]], "other": [{"x": (1, 2)}]}
    assert state_checksum(state, memo) == state_checksum(state)
    state["rows"][0][1] = 2.5
    state["other"][0] = {"x": (1, 2)}  # (an equal part, another object)
    state["rows"].append(state["rows"][1])  # (a part met again: marked as the same as the first)
    assert state_checksum(state, memo) == state_checksum(state)
    assert state_checksum(state, memo) == state_checksum(state)  # (all kept now)
