"""``--import``: a user's own rule and neuron model named on the command line, recorded by the run, never imported
from a run folder by itself; registration checks; a module that fails is one line naming its file and line."""

import json
import sys

import pytest

from metaspike import rules
from metaspike.app.cli import main
from metaspike.app.config import RunConfig
from metaspike.app.models import available_models
from metaspike.snn import neurons
from metaspike.snn.neurons import register_neuron

SMALL = ["--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "16", "--quiet"]

USER_MODULE = '''
from dataclasses import dataclass

from metaspike.rules import TanhRule, register_rule
from metaspike.snn import SelfRecurrentLIF, register_neuron, spiking_mlp


@dataclass(frozen=True)
class HalfTanh(TanhRule):
    name: str = "half-tanh"

    def step(self, hidden, update, meta, state):
        return super().step(hidden, update, meta / 2, state)


register_rule(HalfTanh())
register_neuron("slow-lif", lambda spec: spiking_mlp(
    spec, lambda n, out: SelfRecurrentLIF(n, 0.95, threshold=1e4 if out else 1.0, output=out)))
'''


@pytest.fixture(autouse=True)
def _own_registries(monkeypatch):
    """Registrations and imported user modules last for one test only."""
    monkeypatch.setattr(rules, "_RULES", dict(rules._RULES))
    monkeypatch.setattr(neurons, "_NEURONS", dict(neurons._NEURONS))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("metaspike_import_") or name.startswith("userlab"):
            del sys.modules[name]


def test_a_rule_and_a_neuron_model_of_ones_own_run_from_the_command_line(tmp_path, capsys):
    module = tmp_path / "mylab.py"
    module.write_text(USER_MODULE)
    out = tmp_path / "runs"
    assert main(["train", "--import", str(module), "--rule", "half-tanh", *SMALL, "--out", str(out)]) == 0
    run = out / "permuted-digits-meta5-30-half-tanh-seed1"
    assert json.loads((run / "config.json").read_text())["imports"] == [str(module.resolve())]
    assert main(["train", "--import", str(module), "--model", "slow-lif", *SMALL, "--out", str(out)]) == 0
    assert main(["train", "--import", str(module), "--model", "slow-lif+bimu", *SMALL, "--out", str(out)]) == 0
    assert main(["compare", "--import", str(module), "--neurons", "slow-lif", "leaky", "--meta", "0", *SMALL,
                 "--out", str(tmp_path / "cmp")]) == 0
    assert "slow-lif" in capsys.readouterr().out


def test_a_module_on_the_path_is_imported_by_its_name(tmp_path, monkeypatch):
    package = tmp_path / "userlab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "rules.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["train", "--import", "userlab.rules", "--rule", "half-tanh", *SMALL, "--out", str(tmp_path)]) == 0
    run = tmp_path / "permuted-digits-meta5-30-half-tanh-seed1"
    assert json.loads((run / "config.json").read_text())["imports"] == ["userlab.rules"]


def test_a_run_folder_never_imports_by_itself_and_resume_asks_for_the_same_import(tmp_path, capsys):
    module = tmp_path / "mylab.py"
    module.write_text(USER_MODULE)
    assert main(["train", "--import", str(module), "--model", "slow-lif", *SMALL, "--out", str(tmp_path)]) == 0
    run = tmp_path / "permuted-digits-slow-lif-meta5-30-seed1"
    (run / "metrics.json").unlink()  # as if killed before the end
    neurons._NEURONS.pop("slow-lif")  # as in a new process: nothing registered
    rules._RULES.pop("half-tanh")
    sys.modules.pop(next(name for name in sys.modules if name.startswith("metaspike_import_mylab")))
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'slow-lif'" in err and f"the run imports {module.resolve()}: give the same --import" in err
    other = tmp_path / "other.py"  # registers the model as well, but is not what the run imported
    other.write_text("from metaspike.snn import SelfRecurrentLIF, register_neuron, spiking_mlp\n"
                     + USER_MODULE.split("register_rule(HalfTanh())")[1])
    assert main(["train", "--resume", str(run), "--import", str(other)]) == 2
    assert "these would change them: imports" in capsys.readouterr().err
    neurons._NEURONS.pop("slow-lif")
    assert main(["train", "--resume", str(run), "--import", str(module), "--quiet"]) == 0
    assert json.loads((run / "metrics.json").read_text())["complete"] is True


def test_an_unknown_rule_says_how_to_name_ones_own(capsys):
    assert main(["train", "--rule", "half-tanh", *SMALL]) == 2
    assert "unknown consolidation rule 'half-tanh'" in (err := capsys.readouterr().err) and "--import" in err, err


@pytest.mark.parametrize("content, message", [
    (None, "--import {spec}: FileNotFoundError: no such file"),
    ("x = (\n", "--import {spec}: bad.py line 1: SyntaxError"),
    ("import torch\n\ntorch.zeros(2) + torch.zeros(3)\n", "--import {spec}: bad.py line 3: RuntimeError: The size"),
    ("from metaspike.rules import TanhRule, register_rule\nregister_rule(TanhRule())\n", None),
    ("from metaspike.rules import CascadeRule, register_rule\nregister_rule(CascadeRule(name='tanh'))\n",
     "--import {spec}: bad.py line 2: ValueError: a different rule is registered as 'tanh'"),
])
def test_a_module_that_cannot_be_imported_is_one_line(tmp_path, capsys, content, message):
    spec = str(tmp_path / "bad.py")
    if content is not None:
        (tmp_path / "bad.py").write_text(content)
    code = main(["train", "--import", spec, *SMALL, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    if message is None:  # registering an equal rule again is fine
        assert code == 0, err
        return
    assert code == 2 and err.count("\n") == 1 and message.format(spec=spec) in err, err


def test_a_missing_module_name_is_one_line(capsys):
    assert main(["train", "--import", "no_such_userlab_module", *SMALL]) == 2
    assert capsys.readouterr().err == ("metaspike: error: --import no_such_userlab_module: ModuleNotFoundError: "
                                       "No module named 'no_such_userlab_module'\n")


@pytest.mark.parametrize("name, builder, message", [
    ("a+b", lambda spec: None, "no '+'"),
    ("", lambda spec: None, "a neuron model's name"),
    (3, lambda spec: None, "a neuron model's name"),
    ("mine", "not callable", "builder must be a callable"),
    ("leaky", lambda spec: None, "a different neuron model is registered as 'leaky'"),
])
def test_register_neuron_checks_its_arguments(name, builder, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        register_neuron(name, builder)


def test_a_neuron_model_named_like_a_model_kind_is_refused_where_kinds_are_listed():
    def build(spec):
        return None

    assert register_neuron("mine", build) is build and register_neuron("mine", build) is build  # (idempotent)
    register_neuron("bnn", build)
    with pytest.raises(ValueError, match="registered as 'bnn', the name of a model kind"):
        available_models()


def test_the_recorded_imports_are_checked_like_every_other_setting():
    with pytest.raises(ValueError, match="--import takes module names or .py files"):
        RunConfig(imports=("",))
    with pytest.raises(ValueError, match="--import takes module names or .py files"):
        RunConfig(imports=["a.py"])
