"""Parameters no consolidation acts on, frozen after the first tasks: ``FreezeUnconsolidated``,
``--freeze-unconsolidated``."""

import json
import warnings

import pytest
import torch
from torch import nn

import metaspike
from metaspike.app.cli import main
from metaspike.app.config import RunConfig
from metaspike.app.runs import config_from_record
from metaspike.continual import ContinualTrainer, TrainerConfig, make_scenario
from metaspike.continual.freezing import FreezeUnconsolidated, unconsolidated_parameters
from metaspike.training import Plugin


def _binarized_mlp() -> nn.Module:
    return metaspike.binarize(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                            nn.Linear(32, 10)))


def test_the_unconsolidated_parameters_are_every_parameter_but_the_synapses():
    net = _binarized_mlp()
    hidden = {id(w) for _, w in metaspike.synapse.weight_matrices(net)}
    found = unconsolidated_parameters(net)
    assert len(hidden) == 2 and not hidden & {id(p) for p in found}
    assert len(found) == len(list(net.parameters())) - 2  # (biases, gains, the BatchNorm's scale and shift)
    mesu = metaspike.bayesianize(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)), "mesu")
    synapse = next(metaspike.bayesian.synapses.bayesian_modules(mesu))[3]
    assert len(synapse) == 2 and not {id(t) for t in synapse} & {id(p) for p in unconsolidated_parameters(mesu)}
    assert unconsolidated_parameters(mesu)  # (the LayerNorm's, the layer's bias or gain)


class _Snapshots(Plugin):
    """Copies of the unconsolidated parameters and the synapses at each task's end."""

    def __init__(self) -> None:
        self.rest: list[list[torch.Tensor]] = []
        self.synapses: list[list[torch.Tensor]] = []

    def task_done(self, model, x, y, classes):
        self.rest.append([p.detach().clone() for p in unconsolidated_parameters(model)])
        self.synapses.append([w.detach().clone() for _, w in metaspike.synapse.weight_matrices(model)])


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("after", [1, 2])
def test_after_its_tasks_only_the_synapses_learn(after, one_thread):
    torch.manual_seed(0)
    net = _binarized_mlp()
    snapshots = _Snapshots()
    trainer = ContinualTrainer(net, lambda m: metaspike.MetaplasticAdam(metaspike.param_groups(m, 1.0), lr=0.005),
                               TrainerConfig(epochs=1, batch_size=64, batchnorm="shared"), progress=False,
                               plugins=[FreezeUnconsolidated(after), snapshots])
    trainer.fit(make_scenario("permuted", ["digits"], tasks=3, seed=1))
    rest, synapses = snapshots.rest, snapshots.synapses
    assert not _same(rest[after - 2], rest[after - 1]) if after > 1 else True  # (learning until then)
    assert _same(rest[after - 1], rest[2])  # (frozen from then on)
    assert not _same(synapses[1], synapses[2])  # (the synapses go on)
    assert all(p.requires_grad for p in net.parameters())  # (the model's flags are left as they were)


def test_what_the_trainer_keeps_per_task_goes_on_learning_while_the_rest_freezes(one_thread):
    """Per-task BatchNorm's scale and shift, each task's own restored to evaluate it, make no task forget: frozen with
    the rest, every later task's were task 1's."""
    torch.manual_seed(0)
    net = _binarized_mlp()
    snapshots, plugin = _Snapshots(), FreezeUnconsolidated(1)
    trainer = ContinualTrainer(net, lambda m: metaspike.MetaplasticAdam(metaspike.param_groups(m, 1.0), lr=0.005),
                               TrainerConfig(epochs=1, batch_size=64, batchnorm="per-task"), progress=False,
                               plugins=[plugin, snapshots])
    trainer.fit(make_scenario("permuted", ["digits"], tasks=3, seed=1))
    norm = {id(p) for p in net[2].parameters()}
    kinds = [id(p) in norm for p in unconsolidated_parameters(net)]
    rest = [[t for t, kept in zip(task, kinds) if not kept] for task in snapshots.rest]
    per_task = [[t for t, kept in zip(task, kinds) if kept] for task in snapshots.rest]
    assert len(per_task[0]) == 2 and _same(rest[0], rest[2])  # (the gains and biases froze after task 1)
    assert not _same(per_task[1], per_task[2])  # (task 3's BatchNorm learned its own)
    assert not _same(list(trainer.batchnorm_states[0].values()), list(trainer.batchnorm_states[2].values()))
    assert plugin.settings() == {"after_tasks": 1, "per_task_batchnorm_learns": True}
    plugin.fit_started(net, [])
    assert plugin.settings() == {"after_tasks": 1}  # (as before, where nothing is kept per task)


def test_the_plugin_refuses_a_count_below_one_and_a_malformed_state():
    for bad in (0, 1.0, True, None):
        with pytest.raises(ValueError, match=r"^after_tasks must be an integer >= 1"):
            FreezeUnconsolidated(bad)
    plugin = FreezeUnconsolidated(2)
    plugin.load_state_dict({"tasks_done": 3})
    assert plugin.freezing and plugin.state_dict() == {"tasks_done": 3}
    with pytest.raises(ValueError, match="a FreezeUnconsolidated state holds 'tasks_done', an integer >= 0; got -1"):
        plugin.load_state_dict({"tasks_done": -1})


@pytest.mark.parametrize("settings, message", [
    ({"tasks": 2, "freeze_unconsolidated": 2}, "--freeze-unconsolidated must be an integer in 1..1 (the tasks the "
                                               "unconsolidated parameters learn during; at least one of the 2 --tasks "
                                               "must follow), got 2"),
    ({"tasks": 3, "freeze_unconsolidated": 0}, "--freeze-unconsolidated must be an integer in 1..2"),
    ({"tasks": 3, "freeze_unconsolidated": True}, "--freeze-unconsolidated must be an integer in 1..2"),
    ({"tasks": 3, "freeze_unconsolidated": 1, "scenario": "stream"}, "--freeze-unconsolidated: --scenario stream has "
                                                                     "no task boundaries"),
    ({"tasks": 3, "freeze_unconsolidated": 1, "scenario": "joint"},
     "--freeze-unconsolidated: --scenario joint trains its tasks as one, so no task ends before the last"),
])
def test_freezing_settings_out_of_range_are_one_line_naming_the_flag(settings, message):
    with pytest.raises(ValueError) as caught:
        RunConfig(**settings)
    assert str(caught.value).startswith(message), caught.value


def test_the_setting_names_the_run_and_a_record_without_it_reads_as_none():
    config = RunConfig(tasks=3, freeze_unconsolidated=1)
    assert config.name == "permuted-mnist5k-meta5-30-30-freeze1-seed1" and config.freezing_setting == "freeze after 1"
    assert config_from_record(config.to_dict(), "config.json") == config
    record = RunConfig(tasks=3).to_dict()
    del record["freeze_unconsolidated"]  # (a run written before the setting existed)
    assert config_from_record(record, "config.json").freeze_unconsolidated is None
    with pytest.raises(ValueError, match=r"config\.json: --freeze-unconsolidated must be an integer in 1\.\.2"):
        config_from_record({**config.to_dict(), "freeze_unconsolidated": "1"}, "config.json")


def test_the_command_line_freezes_names_the_run_and_keeps_the_setting_on_resume(tmp_path, capsys, one_thread):
    args = ["--dataset", "digits", "--epochs", "1", "--hidden", "16", "--quiet", "--out", str(tmp_path)]
    assert main(["train", *args, "--tasks", "2", "--freeze-unconsolidated", "1"]) == 2  # (bnn's BatchNorm: per task)
    assert ("--freeze-unconsolidated: model 'bnn' has nothing besides its synapses but BatchNorm scales and shifts, "
            "which per-task BatchNorm (--batchnorm per-task, the default) keeps per task and leaves learning, so "
            "nothing would freeze; give --batchnorm shared to freeze them") in capsys.readouterr().err
    assert main(["train", *args, "--batchnorm", "shared", "--tasks", "2", "--freeze-unconsolidated", "1"]) == 0
    run = tmp_path / "permuted-digits-meta5-30-freeze1-seed1"
    assert json.loads((run / "config.json").read_text())["freeze_unconsolidated"] == 1
    assert "freeze after 1" in capsys.readouterr().out
    (run / "metrics.json").unlink()  # as if stopped before the end
    assert main(["train", "--resume", str(run), "--freeze-unconsolidated", "2"]) == 2
    assert "--freeze-unconsolidated (stored 1, given 2)" in capsys.readouterr().err
    assert main(["train", *args, "--batchnorm", "shared", "--tasks", "1", "--freeze-unconsolidated", "1"]) == 2
    assert "--freeze-unconsolidated needs --tasks 2 or more: it freezes after a task" in capsys.readouterr().err
    for kind, more in (("mlp", []), ("bnn-layernorm", []), ("bimu", ["--batch-size", "1"]),
                       ("mesu", ["--batch-size", "1"])):  # (nothing besides their synapses)
        assert main(["train", *args, *more, "--tasks", "2", "--model", kind, "--freeze-unconsolidated", "1"]) == 2
        assert (f"--freeze-unconsolidated: model {kind!r} has no parameter besides its synapses (no bias, learned "
                "gain, normalisation scale or neuron parameter), so nothing would freeze") in capsys.readouterr().err


def test_float_weight_matrices_that_freeze_too_are_named_once_and_a_wrong_argument_is_one_line():
    net = metaspike.binarize(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
                             exclude=["1"])
    plugin = FreezeUnconsolidated(1)
    plugin.task_done(net, None, None, None)
    with pytest.warns(UserWarning, match=r"^FreezeUnconsolidated freezes float weight matrices too after the first "
                                         r"task, since they are no synapse: 1\.weight \(32x64\)$"):
        plugin.before_step(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plugin.before_step(net)  # (named once)
    for wrong in (metaspike.MetaplasticAdam(net.parameters()), list(net.parameters()), None):
        for hook in (FreezeUnconsolidated(1).before_step, lambda m: FreezeUnconsolidated(1).task_done(m, 0, 0, None)):
            with pytest.raises(TypeError, match=r"^FreezeUnconsolidated's hooks take the model \(an nn\.Module\), "):
                hook(wrong)  # (at the first call, not once the first task is done)
    per_channel = metaspike.binarize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.LayerNorm([4, 6, 6]), nn.ReLU()))
    per_channel.register_parameter("tau", nn.Parameter(torch.ones(1, 4, 1, 1)))  # (a neuron's per-channel constant)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FreezeUnconsolidated(1).before_step(per_channel)  # (no weight matrix among what freezes: no warning)
    readout = metaspike.binarize(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)), exclude=["2"])
    with pytest.warns(UserWarning, match=r"since they are no synapse: 2\.weight \(1x32\)$"):
        FreezeUnconsolidated(1).before_step(readout)  # (at the first step, before any task is done)
    bare = metaspike.bayesianize(nn.Sequential(nn.Linear(4, 3, bias=False)), "bimu", scale=None)
    with pytest.warns(UserWarning, match="^FreezeUnconsolidated: the model has no parameter besides its synapses"):
        FreezeUnconsolidated(1).before_step(bare)
    frozen_by_hand = metaspike.binarize(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), exclude=["2"])
    frozen_by_hand[2].weight.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (it named a matrix the user had frozen already as one it would freeze)
        FreezeUnconsolidated(1).before_step(frozen_by_hand)


def test_a_comparison_of_kinds_freezes_those_with_something_to_freeze_and_says_so_per_row(tmp_path, one_thread):
    from metaspike.app import compare

    base = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(8,), freeze_unconsolidated=1, batchnorm="shared")
    _, rows = compare.compare_neurons(base, ["bnn", "mlp"], [0.0], [1], out=tmp_path, progress=False)
    assert [row["setting"] for row in rows] == ["bnn meta=0 freeze after 1", "mlp"]
    made = sorted(p.name for p in next(tmp_path.iterdir()).iterdir() if p.is_dir())
    assert made == ["permuted-digits-meta0-freeze1-seed1", "permuted-digits-mlp-seed1"]


def test_a_comparison_freezes_the_kinds_it_can_beside_a_setting_only_another_kind_takes(tmp_path, capsys):
    """--readout-lambda (BiMU kinds) beside --freeze-unconsolidated (kinds with something to freeze): no kind takes
    both, and the comparison was refused on the first kind."""
    assert main(["compare", "--neurons", "bimu", "bnn-layernorm", "--readout-lambda", "1", "--freeze-unconsolidated",
                 "1", "--meta", "0", "--seeds", "1", "--dataset", "digits", "--tasks", "2", "--samples-per-task", "20",
                 "--epochs", "1", "--hidden", "8", "--batch-size", "1", "--quiet", "--out", str(tmp_path)]) == 2
    assert ("--freeze-unconsolidated: model 'bimu' has no parameter besides its synapses" in capsys.readouterr().err)
    assert main(["compare", "--neurons", "bimu", "leaky", "--readout-lambda", "1", "--freeze-unconsolidated", "1",
                 "--meta", "0", "--seeds", "1", "--dataset", "digits", "--tasks", "2", "--samples-per-task", "20",
                 "--epochs", "1", "--hidden", "8", "--num-steps", "2", "--batch-size", "1", "--quiet", "--out",
                 str(tmp_path)]) == 0
    rows = json.loads((next(tmp_path.glob("compare-neurons-*")) / "comparison.json").read_text())["rows"]
    assert [row["setting"] for row in rows] == ["bimu readout_lambda=1", "leaky meta=0 freeze after 1"]


def test_a_new_run_or_comparison_from_python_that_would_freeze_nothing_is_refused_before_its_folder(tmp_path):
    from metaspike.app import compare
    from metaspike.app.runs import run

    small = dict(datasets=("digits",), tasks=2, epochs=1, hidden=(8,), freeze_unconsolidated=1)
    with pytest.raises(ValueError, match=r"^--freeze-unconsolidated: model 'mlp' has no parameter besides"):
        run(RunConfig(model="mlp", **small), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"^--freeze-unconsolidated: model 'bnn-layernorm' has no"):
        compare.compare(RunConfig(model="bnn-layernorm", **small), [0.0], out=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"^--freeze-unconsolidated: none of the models \(bimu, mesu\) has a "):
        compare.compare_neurons(RunConfig(model="bimu", batch_size=1, **small), ["bimu", "mesu"], [0.0],
                                out=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_the_frozen_parameters_are_found_when_freezing_starts_and_each_weight_matrix_is_named_once():
    net = metaspike.binarize(nn.Sequential(nn.Linear(8, 4), nn.ReLU()))
    plugin = FreezeUnconsolidated(1)
    plugin.before_step(net)
    net.add_module("head", nn.Linear(4, 2))  # (added while the first task trains)
    plugin.task_done(net, None, None, None)
    net(torch.rand(3, 8)).sum().backward()  # (the Sequential runs its new head too)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plugin.before_step(net)
    assert net.head.bias.grad is None and net.head.weight.grad is None  # (it freezes too)
    embedding, readout = nn.Embedding(4, 4), nn.Linear(4, 4, bias=False)
    readout.weight = embedding.weight  # (tied: one tensor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tied = metaspike.binarize(nn.Sequential(nn.Linear(4, 4), embedding, readout,
                                                nn.TransformerEncoderLayer(4, 2, 8)), exclude=["1", "2", "3"])
    with pytest.warns(UserWarning, match=r"no synapse: 1\.weight \(4x4\), 3\.self_attn\.in_proj_weight \(12x4\), "):
        FreezeUnconsolidated(1).before_step(tied)


def test_a_layers_own_weight_is_a_weight_matrix_whatever_its_shape_and_a_neuron_constant_is_none():
    from metaspike.layer_selection import is_weight_matrix

    lstm, embedding, deconv = nn.LSTM(1, 8), nn.Embedding(10, 1), nn.ConvTranspose1d(1, 1, 3)
    assert is_weight_matrix(lstm, "weight_ih_l0", lstm.weight_ih_l0)  # (32 x 1)
    assert is_weight_matrix(embedding, "weight", embedding.weight) and is_weight_matrix(deconv, "weight", deconv.weight)
    assert not is_weight_matrix(lstm, "bias_ih_l0", lstm.bias_ih_l0)
    normed = nn.utils.parametrizations.weight_norm(nn.Linear(32, 1)).parametrizations.weight
    assert is_weight_matrix(normed, "original1", normed.original1)  # (the direction, 1 x 32)
    assert not is_weight_matrix(normed, "original0", normed.original0)  # (the magnitude)
    neuron = nn.Module()
    neuron.beta = nn.Parameter(torch.full((4, 6, 6), 0.9))  # (a learnable decay per unit)
    neuron.mix_weights = nn.Parameter(torch.ones(3))
    assert not is_weight_matrix(neuron, "beta", neuron.beta)
    assert not is_weight_matrix(neuron, "mix_weights", neuron.mix_weights)


@pytest.mark.parametrize("settings", [{"scenario": "permuted"}, {"scenario": "sequence", "datasets": ("digits",) * 2},
                                      {"scenario": "split"}, {"scenario": "split", "split_mode": "class"},
                                      {"scenario": "split", "split_mode": "class-growing"}, {"scenario": "stream"},
                                      {"scenario": "joint"}, {"batchnorm": "shared"}])
def test_the_configs_word_on_per_task_batchnorm_is_the_scenarios(settings):
    """What the command line refuses as freezing nothing follows what the trainer does: the two must agree."""
    from metaspike.app.runs import make_run_scenario

    config = RunConfig(**{"datasets": ("digits",), "tasks": 2, **settings})
    applies = make_run_scenario(config).per_task_batchnorm and config.batchnorm == "per-task"
    assert config.batchnorm_kept_per_task == applies


def test_a_run_or_comparison_an_earlier_version_froze_is_refused_on_resume_with_advice_that_can_be_followed(tmp_path):
    """An earlier version froze per-task BatchNorm too: resuming its bnn run said "resume it with the settings it was
    made with" (no flag gives them), and resuming its comparison ran bnn again unfrozen beside the finished run."""
    from metaspike.app import compare
    from metaspike.continual.batchnorm import batchnorm_parameters
    from metaspike.continual.checkpoints import check_plugin_settings

    net = _binarized_mlp()
    plugin = FreezeUnconsolidated(1)
    plugin.fit_started(net, list(batchnorm_parameters(net).values()))
    with pytest.raises(ValueError, match=r"^plugins\[0\] \(FreezeUnconsolidated\) has per_task_batchnorm_learns = True "
                                         r"here, a setting the checkpoint lacks: an earlier version of the plugin "
                                         r"wrote it, which did otherwise; start the run again"):
        check_plugin_settings([plugin], [{"after_tasks": 1}])
    base = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(8,), samples_per_task=20, num_steps=2,
                     freeze_unconsolidated=1)
    root, _ = compare.compare_neurons(base, ["bnn", "leaky"], [0.0], [1], out=tmp_path, progress=False)
    unfrozen = root / "permuted-digits-meta0-seed1"  # (bnn: per-task BatchNorm, nothing frozen)
    unfrozen.rename(root / "permuted-digits-meta0-freeze1-seed1")  # (as the earlier version named it)
    with pytest.raises(ValueError, match=r"an earlier version ran bnn frozen \(permuted-digits-meta0-freeze1-seed1\), "
                                         r"freezing its per-task BatchNorm too; .* start a new comparison$"):
        compare.resume_comparison(root, progress=False)
