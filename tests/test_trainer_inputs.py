"""The continual trainer's Python API, as a user drives it with their own tasks and plugins: the order of a task's
end and its evaluation, the checks that run before anything is trained, and a resume that must be made with the
plugins and optimizer the checkpoint was written with."""

import io
import warnings
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from conftest import KeepCheckpoints
from torch import nn

from metaspike.continual import ContinualTrainer, Scenario, Task, TrainerConfig
from metaspike.continual.baselines import EWC, SynapticIntelligence
from metaspike.data import ArrayDataset
from metaspike.training import Plugin, evaluate


def _data(name: str = "d", features: int = 16, classes: int = 2, samples: int = 120, seed: int = 0) -> ArrayDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(samples, features, generator=generator)
    return ArrayDataset.from_tensors(x, torch.arange(samples) % classes, name)


def _model(features: int = 16, outputs: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, outputs))


def _trainer(model: nn.Module, plugins=(), make=None, **config) -> ContinualTrainer:
    make = make or (lambda m: torch.optim.SGD(m.parameters(), lr=0.05))
    return ContinualTrainer(model, make, TrainerConfig(**{"epochs": 1, "batch_size": 40, **config}), progress=False,
                            plugins=plugins)


class _FlipClassifier(Plugin):
    """Changes the model at each task's end: its row must show the change."""

    def task_done(self, model, x, y, classes):
        with torch.no_grad():
            model[-1].weight.neg_()
            model[-1].bias.neg_()


def test_a_plugin_that_changes_the_model_at_a_tasks_end_shows_in_that_tasks_row():
    data = _data()
    tasks = [Task("a", data, data), Task("b", data, data)]
    model = _model()
    result = _trainer(model, [_FlipClassifier()], make=lambda m: torch.optim.SGD(m.parameters(), lr=0.0)).fit(
        Scenario("s", tasks, tasks))
    unchanged = _model()  # the same start; lr 0, so only the plugin moved the weights: flipped twice, back to it
    assert result.matrix[-1][0] == evaluate(model, data.x, data.y) == evaluate(unchanged, data.x, data.y)
    flipped_once = result.matrix[0][0]
    assert flipped_once == pytest.approx(100.0 - result.matrix[1][0])  # (two classes: a flip turns right into wrong)


def test_every_task_is_checked_before_anything_is_trained():
    good, wide = _data(), _data("wide", features=32)
    trainer = _trainer(_model())
    with pytest.raises(ValueError, match="training data of task 'b' samples of shape \\(32,\\) do not fit the model"):
        trainer.fit(Scenario("s", [Task("a", good, good), Task("b", wide, wide)], [Task("a", good, good)]))
    many = _data("many", classes=5)
    seen = []

    class Watch(Plugin):
        def task_done(self, model, x, y, classes):
            seen.append(len(y))

    trainer = _trainer(_model(), [Watch()])
    first = Task("a", good, good)
    with pytest.raises(ValueError, match="labels of training data of task 'c' go up to 4 but the model has 2 outputs"):
        trainer.fit(Scenario("s", [first], [first, Task("c", many, many)]))
    assert seen == []  # refused before the first task was trained
    one_class = ArrayDataset.from_tensors(torch.rand(40, 16), torch.zeros(40, dtype=torch.long), "one")
    with pytest.raises(ValueError, match=r"the classes \[0, 2\] of training data of task 'd' go beyond the "
                                         r"model's 2 outputs \(classes 0 to 1\)"):  # (its labels are all outputs)
        trainer.fit(Scenario("s", [first], [first, Task("d", one_class, one_class, classes=(0, 2))]))
    zeros = ArrayDataset.from_tensors(torch.rand(40, 16), torch.zeros(40, dtype=torch.long), "zeros", classes=("a", "b"))
    changed = Task("e", zeros, zeros, classes=(0,))
    changed.train.y[:3] = 1  # (labels changed in place after the task checked them)
    with pytest.raises(ValueError, match=r"labels of training data of task 'e' include \[1\], outside its classes "
                                         r"\[0\]"):
        trainer.fit(Scenario("s", [first, changed], [first, changed]))


def test_a_tasks_classes_are_checked_against_its_labels():
    data = _data(classes=4)
    with pytest.raises(ValueError, match=r"Task 'a': its training labels include \[2, 3\], outside its classes \(0, 1\)"):
        Task("a", data, data, classes=(0, 1))
    with pytest.raises(ValueError, match="classes must be class indices, integers >= 0 .* got '0'"):
        Task("a", data, data, classes=("0", "1", "2", "3"))
    with pytest.raises(ValueError, match="each once"):
        Task("a", data, data, classes=[0, 1, 2, 3, 3])
    assert Task("a", data, data, classes=torch.arange(4)).classes == (0, 1, 2, 3)


@pytest.mark.parametrize("tasks, eval_tasks, message", [
    ([], None, "eval_tasks must be a sequence of Task"),
    (None, [], "tasks must be a sequence of Task"),
    ("pairs", [], "tasks must hold Task\\(name, train, test\\) objects .* got a tuple"),
])
def test_a_scenario_of_something_other_than_tasks_is_one_line(tasks, eval_tasks, message):
    data = _data()
    tasks = [(data, data)] if tasks == "pairs" else tasks
    with pytest.raises(ValueError, match=message):
        Scenario("s", tasks, eval_tasks)


def test_plugins_and_logs_without_their_hooks_are_refused_before_training():
    with pytest.raises(ValueError, match=r"plugins\[0\] is the class EWC; pass an instance"):
        _trainer(_model(), [EWC])
    with pytest.raises(ValueError, match=r"plugins\[0\] \(function\) lacks penalty"):
        _trainer(_model(), [lambda model: None])
    ewc = EWC()  # (one instance twice: its penalty was added twice a step)
    with pytest.raises(ValueError, match=r"^plugins\[2\] is plugins\[0\] again \(EWC\): give each plugin once"):
        _trainer(_model(), [ewc, EWC(), ewc])
    data = _data()
    tasks = [Task("a", data, data)]
    with pytest.raises(ValueError, match="log must be a RunLog .* object lacks epoch_done, task_done, checkpoint"):
        _trainer(_model()).fit(Scenario("s", tasks, tasks), log=object())


def test_a_model_or_device_without_values_is_one_line():
    with pytest.raises(ValueError, match="device 'meta' holds shapes without values"):
        TrainerConfig(device="meta")
    with torch.device("meta"):
        model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="the model's tensors are on the meta device"):
        _trainer(model)


def test_eval_tasks_that_copy_the_training_tasks_are_named_in_a_warning():
    data = _data()
    tasks = [Task("a", data, data), Task("b", data, data)]
    copies = [Task(t.name, t.train, t.test) for t in tasks]
    with pytest.warns(UserWarning, match="eval_tasks have the training tasks' names but are other Task objects"):
        _trainer(_model()).fit(Scenario("s", tasks, copies))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _trainer(_model()).fit(Scenario("s", tasks, tasks))


def test_a_resume_with_other_plugin_settings_or_kinds_or_optimizer_is_refused():
    data = _data()
    tasks = [Task("a", data, data)]
    scenario = Scenario("s", tasks, tasks)
    log = KeepCheckpoints()
    whole = _trainer(_model(), [SynapticIntelligence(c=0.5)], epochs=2).fit(scenario, log=log)
    middle = torch.load(io.BytesIO(log.saved[0]), weights_only=True)  # after the first of two epochs
    assert middle["position"] == {"task": 0, "epochs_done": 1}
    with pytest.raises(ValueError, match=r"plugins\[0\] \(SynapticIntelligence\) has c = 99.0 here, 0.5 in the "
                                         "checkpoint"):
        _trainer(_model(), [SynapticIntelligence(c=99.0)], epochs=2).fit(scenario, resume=middle)
    with pytest.raises(ValueError, match="written with plugins SynapticIntelligence; this run's plugins are EWC"):
        _trainer(_model(), [EWC()], epochs=2).fit(scenario, resume=middle)
    adam = lambda m: torch.optim.Adam(m.parameters(), lr=0.01)  # noqa: E731
    with pytest.raises(ValueError, match="written with optimizer SGD; this run's make_optimizer builds Adam"):
        _trainer(_model(), [SynapticIntelligence(c=0.5)], make=adam, epochs=2).fit(scenario, resume=middle)
    resumed = _trainer(_model(), [SynapticIntelligence(c=0.5)], epochs=2).fit(scenario, resume=middle)
    assert resumed.matrix == whole.matrix


def test_a_checkpoints_plugin_state_must_agree_with_the_plugin_and_fit_the_model():
    """A plugin's state carries its hyperparameters, and loading it puts them in place: a checkpoint whose EWC state
    said lam 1 (its record beside it 5000) resumed with lam 1 under a table saying 5000; plugin states that were not a
    list, or SI path integrals of another model's shapes, failed inside Python or torch."""
    data = _data()
    tasks = [Task("a", data, data), Task("b", data, data)]
    scenario = Scenario("s", tasks, tasks)
    log = KeepCheckpoints()
    _trainer(_model(), [EWC(lam=5.0)], epochs=2).fit(scenario, log=log)
    after_a = torch.load(io.BytesIO(log.saved[1]), weights_only=True)  # (task a done: an importance kept)
    after_a["plugins"][0]["lam"] = 1.0
    with pytest.raises(ValueError, match=r"plugins\[0\] \(EWC\) has lam = 5.0 here, 1.0 in the checkpoint"):
        _trainer(_model(), [EWC(lam=5.0)], epochs=2).fit(scenario, resume=after_a)
    after_a["plugins"] = None
    with pytest.raises(ValueError, match=r"the checkpoint's plugin states must be a list of 1, one per plugin, got "
                                         "None"):
        _trainer(_model(), [EWC(lam=5.0)], epochs=2).fit(scenario, resume=after_a)

    class Halving(Plugin):  # (one's own plugin may keep anything under a setting's name: its value as it trains)
        def __init__(self, lam: float = 5.0):
            self.lam = self.now = lam

        def settings(self):
            return {"lam": self.lam}

        def task_done(self, model, x, y, classes):
            self.now /= 2

        def state_dict(self):
            return {"lam": torch.tensor(self.now)}

        def load_state_dict(self, state):
            self.now = float(state["lam"])

    log = KeepCheckpoints()
    whole = _trainer(_model(), [Halving()], epochs=2).fit(scenario, log=log)
    resumed = _trainer(_model(), [Halving()], epochs=2).fit(scenario, resume=torch.load(io.BytesIO(log.saved[1]),
                                                                                       weights_only=True))
    assert resumed.matrix == whole.matrix

    log = KeepCheckpoints()
    _trainer(_model(), [SynapticIntelligence(c=0.5)], epochs=2).fit(scenario, log=log)
    middle = torch.load(io.BytesIO(log.saved[0]), weights_only=True)
    middle["plugins"][0]["omega"][0] = middle["plugins"][0]["omega"][0][:3]
    with pytest.raises(ValueError, match=r"the baseline's path integrals \(\[\(3, 16\), \(2, 8\)\]\) do not fit the "
                                         r"model's weight matrices \(\[\(8, 16\), \(2, 8\)\]\)"):
        _trainer(_model(), [SynapticIntelligence(c=0.5)], epochs=2).fit(scenario, resume=middle)
    log = KeepCheckpoints()  # (at c = 0 no penalty reads the importances: a (1,) one was broadcast at the task's end)
    _trainer(_model(), [SynapticIntelligence(c=0.0)], epochs=2).fit(scenario, log=log)
    after_a = torch.load(io.BytesIO(log.saved[1]), weights_only=True)
    after_a["plugins"][0]["big_omega"][0] = torch.ones(1)
    with pytest.raises(ValueError, match=r"the baseline's importances \(\[\(1,\), \(2, 8\)\]\) do not fit"):
        _trainer(_model(), [SynapticIntelligence(c=0.0)], epochs=2).fit(scenario, resume=after_a)


def test_a_run_directory_written_by_fit_is_closed_by_finish(tmp_path):
    import json

    from metaspike.continual import RunDirectory

    data = _data()
    tasks = [Task("a", data, data)]
    log = RunDirectory.create(tmp_path, "mine", {"lr": 0.05})
    result = _trainer(_model(), epochs=2).fit(Scenario("s", tasks, tasks), log=log)
    assert json.loads((log.path / "metrics.json").read_text())["complete"] is False
    assert any(p.name.startswith("checkpoint") for p in log.path.iterdir())
    log.finish(result)
    assert json.loads((log.path / "metrics.json").read_text())["complete"] is True
    assert not any(p.name.startswith("checkpoint") for p in log.path.iterdir())


def test_valid_uses_the_checks_must_not_refuse():
    data = _data()

    class Lazy(Sequence):  # a user's own sequence that makes each task when indexed
        made = 0

        def __len__(self):
            return 50

        def __getitem__(self, index):
            if isinstance(index, slice):
                raise TypeError("no slices")
            Lazy.made += 1
            return Task(f"t{index}", data, data)

    Scenario("lazy", Lazy(), Lazy())
    assert Lazy.made <= 2  # (type-checked by its first task only)
    assert Task("a", data, data, classes={1, 0}).classes == (0, 1)
    assert Scenario("s", [Task("a", data, data)], [], task_boundaries=np.bool_(True)).task_boundaries is True

    class Minimal:  # a duck-typed plugin without state: fine where no checkpoint is kept
        def penalty(self, model):
            return None

        def before_step(self, model):
            pass

        def after_step(self, model):
            pass

        def task_done(self, model, x, y, classes):
            pass

    tasks = [Task("a", data, data)]
    _trainer(_model(), (p for p in [Minimal()])).fit(Scenario("s", tasks, tasks))
    with pytest.raises(ValueError, match=r"plugins\[0\] \(Minimal\) lacks state_dict, load_state_dict, which a run"):
        _trainer(_model(), [Minimal()]).fit(Scenario("s", tasks, tasks), log=KeepCheckpoints())


class _TensorSettings(Plugin):
    def __init__(self, weights):
        self.weights = weights

    def settings(self):
        return {"weights": self.weights, "nan": float("nan")}


def test_equal_plugin_settings_of_tensors_lists_and_nan_resume():
    from metaspike.continual.checkpoints import check_plugin_settings, settings_of

    same = [torch.ones(3), {"b": torch.zeros(2)}]
    check_plugin_settings([_TensorSettings(same)], [settings_of(_TensorSettings([torch.ones(3), {"b": torch.zeros(2)}]))])
    with pytest.raises(ValueError, match="has weights = "):
        check_plugin_settings([_TensorSettings(same)], [settings_of(_TensorSettings([torch.ones(3), {"b": torch.ones(2)}]))])

    class NotADict(Plugin):
        def settings(self):
            return [1]

    with pytest.raises(ValueError, match=r"NotADict.settings\(\) must return a dict"):
        settings_of(NotADict())


def test_a_resume_given_the_checkpoints_path_names_the_argument_and_how_to_load_one(tmp_path):
    """fit(resume=run / "checkpoint.pt"), what a user has after a crash, said "not a metaspike checkpoint (format
    'PosixPath', ...)": neither the argument nor how to load the file."""
    from metaspike.continual import RunDirectory
    from metaspike.continual.results import latest_good_checkpoint

    data = _data()
    tasks = [Task("a", data, data), Task("b", data, data)]
    run = RunDirectory.create(tmp_path, "run", {})
    _trainer(_model(), epochs=2).fit(Scenario("s", tasks, tasks), log=run)
    for given in (run.path / "checkpoint.pt", str(run.path)):
        with pytest.raises(ValueError, match=rf"^resume takes a loaded checkpoint \(the dict a RunLog's checkpoint "
                                             rf"receives\), not a {type(given).__name__}: load the file with "
                                             r"metaspike.continual.results.load_checkpoint\(path\), or a run folder's "
                                             r"newest good one with latest_good_checkpoint\(run_dir\)\[0\]$"):
            _trainer(_model(), epochs=2).fit(Scenario("s", tasks, tasks), resume=given)
    state, _ = latest_good_checkpoint(run.path)  # (what the message points to resumes)
    assert len(_trainer(_model(), epochs=2).fit(Scenario("s", tasks, tasks), resume=state).matrix) == 2


def test_a_model_without_parameters_is_named_not_left_to_torchs_empty_parameter_list():
    with pytest.raises(ValueError, match=r"^model \(Sequential\) has no parameters to train: give the trainer a model "
                                         r"with weights"):
        _trainer(nn.Sequential(nn.Flatten(), nn.ReLU()))


def test_a_model_whose_parameters_are_all_frozen_is_named_instead_of_training_nothing():
    """Every parameter with requires_grad=False: the run trained nothing on every task and reported the untrained
    network's accuracies, without a word."""
    with pytest.raises(ValueError, match=r"^model \(Sequential\) has no trainable parameters \(requires_grad is False "
                                         r"for every one\): unfreeze what should learn"):
        _trainer(_model().requires_grad_(False))
    _trainer(_model())  # (one trainable parameter is enough: a partly frozen model trains)


def test_train_epoch_and_evaluate_check_their_arguments_as_the_trainer_does():
    """Used in a loop of one's own, labels outside classes gave TrainingDiverged blaming the learning rate (their loss
    is infinite), evaluate scored them as silent misses, and labels of another length or shape, a single plugin, a
    plugin class or an integer generator failed inside torch."""
    from metaspike.training import evaluate, train_epoch

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    for arguments, message in [
        ({"classes": (0, 1)}, r"labels of the training data include \[2\], outside its classes \[0, 1\]"),
        ({"y": y[:4]}, r"the training data has 6 samples but 4 labels"),
        ({"y": y.float()}, r"labels of the training data must be int64 class indices, got dtype torch.float32"),
        ({"y": y[:, None]}, r"labels of the training data must have shape \[N\]"),
        ({"plugins": EWC()}, r"plugins must be a list of Plugin instances \(e.g. \[EWC\(\)\]\), got EWC"),
        ({"plugins": [EWC]}, r"plugins\[0\] is the class EWC; pass an instance"),
        ({"generator": 3}, r"generator must be a torch.Generator or None, got int"),
        # (each of these failed inside torch: an IndexError, two RuntimeErrors, an IndexError, AttributeErrors)
        ({"y": y + 3}, r"labels of the training data go up to 5 but the model has 3 outputs"),
        ({"x": x.double()}, r"the training data is torch.float64 but the model's parameters are torch.float32"),
        ({"device": "nope"}, r"device must name a torch device"),
        ({"shard": (1, 1)}, r"shard must be \(rank, processes\), integers with 0 <= rank < processes, got \(1, 1\)"),
        ({"shard": (-1, 1)}, r"shard must be \(rank, processes\)"),  # (it was accepted)
        ({"optimizer": None}, r"optimizer must be an optimizer \(a torch.optim.Optimizer, or one with zero_grad and "
                              r"step\), got NoneType"),
        ({"progress": object()}, r"progress must be None or a tqdm-like bar with an update method, got object"),
    ]:
        with pytest.raises(ValueError, match=f"^{message}"):
            train_epoch(model, arguments.pop("optimizer", optimizer), arguments.pop("x", x), arguments.pop("y", y),
                        batch_size=2, **arguments)
    with pytest.raises(ValueError, match=r"^labels of the evaluated data include \[2\], outside its classes \[0, 1\]"):
        evaluate(model, x, y, classes=(0, 1))
    # labels beyond the outputs scored as misses (0.0), NaN samples as whatever argmax of NaN gives (22 %)
    with pytest.raises(ValueError, match=r"^labels of the evaluated data go up to 5 but the model has 3 outputs"):
        evaluate(model, x, y + 3)
    with pytest.raises(ValueError, match=r"^the model's outputs hold NaN on the evaluated data \(NaN in its samples"):
        evaluate(model, x * float("nan"), y)
    mismatched = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Linear(6, 3))  # (its layers do not fit: its own)
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        train_epoch(mismatched, torch.optim.SGD(mismatched.parameters(), lr=0.1), x, y, batch_size=2)
