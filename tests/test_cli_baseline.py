"""Continual-learning baselines (EWC, EWC-Online, SI, the random control) named by a run: ``--baseline``."""

import io
import json
import re
from dataclasses import replace

import pytest
import torch
from conftest import KeepCheckpoints

from metaspike.app.cli import main
from metaspike.app.config import RunConfig
from metaspike.app.runs import build_run_model, build_trainer, config_from_record, make_run_scenario, run
from metaspike.continual.baselines import EWC, EWCOnline, RandomConsolidation, SynapticIntelligence

TINY = dict(datasets=("digits",), tasks=2, epochs=2, hidden=(32,), meta=(0.0,))


@pytest.mark.parametrize("settings, message", [
    ({"baseline": "lwf"}, "--baseline must be one of ewc, ewc-online, si, random, got 'lwf'"),
    ({"baseline_strength": 3.0}, "--baseline-strength applies to a --baseline; name one"),
    ({"baseline": "si", "baseline_gamma": 0.5}, "--baseline-gamma is EWC-Online's decay of its running Fisher; "
                                                "--baseline si takes none"),
    ({"baseline": "ewc", "baseline_strength": -1.0}, "--baseline-strength (ewc's lambda) must be a finite number in [0, "),
    ({"baseline": "ewc-online", "baseline_gamma": 1.5}, "--baseline-gamma must be a finite number in [0, 1], got 1.5"),
    ({"baseline": "ewc", "model": "mesu", "batch_size": 1}, "--baseline ewc: model 'mesu' consolidates through its own "
                                                            "Bayesian synapses"),
    ({"baseline": "si", "scenario": "stream"}, "--baseline si: --scenario stream has no task boundaries"),
])
def test_baseline_settings_out_of_range_are_one_line_naming_the_flag(settings, message):
    with pytest.raises(ValueError) as caught:
        RunConfig(**settings)
    assert str(caught.value).startswith(message), caught.value


def test_the_defaults_are_filled_in_and_recorded_and_name_the_run():
    config = RunConfig(baseline="ewc-online")
    assert (config.baseline_strength, config.baseline_gamma) == (5000.0, 1.0)
    assert config.name == "permuted-mnist5k-meta5-30-30-ewc-online5000-gamma1-seed1"
    assert RunConfig(baseline="si", baseline_strength=0.5).baseline_setting == "si c=0.5"
    assert config_from_record(config.to_dict(), "config.json") == config


def test_a_config_written_before_baselines_existed_reads_as_none():
    record = RunConfig(**TINY).to_dict()
    for key in ("baseline", "baseline_strength", "baseline_gamma"):
        del record[key]
    assert config_from_record(record, "config.json").baseline is None
    record["baseline"] = 3
    with pytest.raises(ValueError, match="'baseline' must be a baseline's name or null, got 3"):
        config_from_record(record, "config.json")


def test_a_run_with_baseline_equals_the_trainer_given_the_plugin_by_hand(tmp_path, one_thread):
    config = RunConfig(**TINY, baseline="ewc-online", baseline_strength=100.0, baseline_gamma=0.5)
    path, by_flag = run(config, tmp_path, progress=False, plot=False)
    assert json.loads((path / "config.json").read_text())["baseline_gamma"] == 0.5

    plain = RunConfig(**TINY)
    scenario = make_run_scenario(plain)
    torch.manual_seed(plain.seed)
    by_hand = build_trainer(plain, build_run_model(plain, scenario), progress=False,
                            plugins=[EWCOnline(lam=100.0, gamma=0.5)]).fit(scenario)
    assert by_flag.matrix == by_hand.matrix
    without = run(plain, tmp_path, progress=False, plot=False)[1]
    assert without.matrix != by_flag.matrix  # the penalty acted on the second task

    class MyEWCOnline(EWCOnline):
        pass

    for mine in (EWCOnline(lam=100.0, gamma=0.5), MyEWCOnline(lam=100.0)):  # (the penalty was counted twice)
        with pytest.raises(ValueError, match=f"the config's baseline 'ewc-online' adds a plugin of type EWCOnline, "
                                             f"and plugins holds one already \\({type(mine).__name__}\\)"):
            build_trainer(config, build_run_model(config, scenario), plugins=iter([mine]))
    given = build_trainer(plain, build_run_model(plain, scenario), plugins=(p for p in [EWCOnline(lam=1.0)]))
    assert [type(p) for p in given.plugins] == [EWCOnline]  # (a generator is read once, and kept)
    for baseline, mine in (("ewc", RandomConsolidation(lam=1.0)), ("random", EWC(lam=1.0))):  # (other methods)
        other = RunConfig(**TINY, baseline=baseline)
        assert len(build_trainer(other, build_run_model(other, scenario), plugins=[mine]).plugins) == 2


def test_a_run_with_baseline_resumes_mid_task_to_the_numbers_of_one_never_stopped(one_thread):
    config = RunConfig(**TINY, baseline="si", baseline_strength=1.0)
    scenario = make_run_scenario(config)

    def trainer():
        torch.manual_seed(config.seed)
        return build_trainer(config, build_run_model(config, scenario), progress=False)

    log = KeepCheckpoints()
    whole = trainer().fit(scenario, log=log)
    mid_second_task = torch.load(io.BytesIO(log.saved[2]), weights_only=True)
    assert mid_second_task["position"] == {"task": 1, "epochs_done": 1}
    assert len(mid_second_task["plugins"]) == 1 and mid_second_task["plugins"][0]["big_omega"]  # SI's Ω of task 1
    assert trainer().fit(scenario, resume=mid_second_task).matrix == whole.matrix
    assert isinstance(trainer().plugins[0], SynapticIntelligence)


def test_the_command_line_names_the_baseline_in_the_table_and_refuses_it_on_resume_of_a_run_without(tmp_path, capsys,
                                                                                                   one_thread):
    args = ["--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "16", "--meta", "0", "--quiet"]
    assert main(["train", *args, "--baseline", "ewc", "--baseline-strength", "50", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "meta=0 ewc lambda=50 " in out and "permuted-digits-meta0-ewc50-seed1" in out
    assert main(["compare", *args, "--baseline", "ewc", "--neurons", "bnn", "mesu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--baseline ewc: model 'mesu' consolidates" in err, err
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps(RunConfig(**TINY).to_dict()))
    assert main(["train", "--resume", str(plain), "--baseline", "si"]) == 2
    err = capsys.readouterr().err
    assert "these would change them: --baseline (stored None, given 'si')" in err, err


def test_ewc_on_many_tasks_is_warned_of_before_the_run_starts(tmp_path, capsys):
    args = ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--tasks", "21", "--out", str(tmp_path)]
    assert main([*args, "--baseline", "ewc"]) == 2  # (no data there: the run ends as it starts)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("metaspike: warning: --baseline ewc keeps a Fisher and an anchor of every weight matrix "
                             "per task: by task 21, 20 copies of each") and err[1].startswith("metaspike: error: "), err
    assert main([*args, "--baseline", "ewc-online"]) == 2
    assert "warning" not in capsys.readouterr().err


def test_a_model_trained_by_sgd_takes_a_penalty_strength_its_step_is_stable_at(tmp_path, capsys, one_thread):
    """EWC's λ 5000 (the paper's, under Adam) makes plain SGD's step on the penalty lr·λ·F, past 2 where F is large:
    ``metaspike train --model mlp --baseline ewc`` stopped at its second task, its penalty infinite. Now SGD's default
    is 2 / (lr · the tasks the penalty sums), and a strength SGD cannot follow is refused as the task starts, with
    the factor it must come down by."""
    args = ["train", "--model", "mlp", "--baseline", "ewc", "--tasks", "2", "--epochs", "3", "--hidden", "64",
            "--quiet", "--out", str(tmp_path)]
    assert main([*args, "--baseline-strength", "5000"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"metaspike: error: plugin EWC: its penalty's curvature along [0-9]\.weight reaches [0-9.]+, "
                        r"where SGD at lr 0\.05 overshoots and diverges \(it follows a curvature below 40\); divide "
                        r"its strength by more than ([0-9.]+), or lower the learning rate \(--baseline-strength "
                        r"([0-9.]+) or less follows it to the last of the 2 tasks, if each adds as much as those so "
                        r"far, in a new run or a comparison of this model alone: a resume keeps the strength it began "
                        r"with\); what was measured so far is in .*permuted-mnist5k-mlp-ewc5000-seed1 \(the last good "
                        r"checkpoint is kept\)\n", err), err
    factor, follows = map(float, re.search(r"more than ([0-9.]+),.*strength ([0-9.]+) or less", err).groups())
    assert 0.9 * 5000 / factor < follows <= 5000 / factor * 1.001  # (two digits, rounded down; factor shown to 3)
    assert main(args) == 0  # (λ 2 / (lr 0.05 · 1 task before))
    metrics = json.loads((tmp_path / "permuted-mnist5k-mlp-ewc40-seed1" / "metrics.json").read_text())
    assert metrics["complete"] and min(metrics["final_accuracy"]) > 70, metrics


def test_a_comparison_gives_each_optimizer_its_own_default_strength_and_refuses_one_for_all(tmp_path, capsys):
    from metaspike.app.compare import _neuron_rows

    rows = _neuron_rows(RunConfig(baseline="ewc", **TINY), ["bnn", "mlp"], [0.0], [1, 2])
    assert [row.labels["setting"] for row in rows] == ["bnn meta=0 ewc lambda=5000", "mlp ewc lambda=40"]
    assert [[c.baseline_strength for c in row.configs] for row in rows] == [[5000.0, 5000.0], [40.0, 40.0]]
    args = ["compare", "--neurons", "bnn", "mlp", "--baseline", "ewc", "--dataset", "digits", "--out", str(tmp_path)]
    assert main([*args, "--baseline-strength", "100"]) == 2
    assert capsys.readouterr().err == ("metaspike: error: --baseline-strength: the models compared train with "
                                       "different optimizers (bnn: metaplastic-adam, mlp: sgd), to which one setting "
                                       "means different steps; leave it out (each takes its own default) or compare "
                                       "them separately\n")


def test_a_comparison_of_kinds_at_different_strengths_names_none_and_an_earlier_versions_keeps_its_own(tmp_path):
    """Its folder named the first model's strength (``-ewc5000`` for bnn then mlp, ``-ewc40`` the other way round);
    an earlier version gave every kind the first model's strength, and resuming its comparison would have run mlp
    again at its own beside the finished run (or, refused, left a finished comparison that could not be drawn
    again); SI's c given for all held for the first model only."""
    import argparse

    from metaspike.app.cli import _refuse_shared_optimizer_setting
    from metaspike.app.compare import _neuron_rows, _strengths_begun_with, comparison_name

    base = RunConfig(baseline="ewc", **TINY)
    assert comparison_name(base, neurons=True, kinds=["bnn", "mlp"]) == "compare-neurons-permuted-digits-ewc"
    assert comparison_name(base, neurons=True, kinds=["bnn", "leaky"]) == "compare-neurons-permuted-digits-ewc5000"
    _refuse_shared_optimizer_setting(argparse.Namespace(neurons=["bnn", "mlp"], lr=None, weight_decay=None,
                                                        baseline="si", baseline_strength=1.0))  # (one default: c 0.1)
    si = _neuron_rows(RunConfig(baseline="si", baseline_strength=1.0, **TINY), ["bnn", "mlp"], [0.0], [1])
    assert [row.configs[0].baseline_strength for row in si] == [1.0, 1.0]
    planned = _neuron_rows(replace(base, baseline_strength=100.0), ["bnn", "mlp"], [0.0], [1, 2])
    assert _strengths_begun_with(tmp_path, 100.0, planned) == planned  # (nothing ran yet: each kind its own)
    (tmp_path / "permuted-digits-mlp-ewc100-seed1").mkdir()
    kept = _strengths_begun_with(tmp_path, 100.0, planned)
    assert [row.labels["setting"] for row in kept] == ["bnn meta=0 ewc lambda=100", "mlp ewc lambda=100"]
    assert [c.name for c in kept[1].configs] == ["permuted-digits-mlp-ewc100-seed1", "permuted-digits-mlp-ewc100-seed2"]


def test_the_strength_a_refused_run_names_holds_to_its_last_task():
    """Refused at task 2 of 3, the strength named held for the penalty of one task before; the sum grows with each
    task, and a new run at it was refused again at task 3."""
    from types import SimpleNamespace

    from metaspike.app.runs import _strength_that_follows
    from metaspike.penalty_stability import PenaltyTooStiff

    trainer = SimpleNamespace(plugins=[EWC(lam=5000.0)])
    assert _strength_that_follows(trainer, PenaltyTooStiff("", 2.0, tasks_done=1), 3).startswith(
        " (--baseline-strength 1200 or less follows it to the last of the 3 tasks")  # (5000 / 2 · 1/2, rounded down)
    assert " 2500 or less" in _strength_that_follows(trainer, PenaltyTooStiff("", 2.0, tasks_done=2), 3)
    assert _strength_that_follows(trainer, PenaltyTooStiff("", float("inf"), tasks_done=1), 3) == ""
