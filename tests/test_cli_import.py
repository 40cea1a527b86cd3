"""``--import``: a user's own rule and neuron model named on the command line, recorded by the run, never imported
from a run folder by itself; registration checks; a module that fails is one line naming its file and line."""

import dataclasses
import hashlib
import json
import shlex
import sys

import pytest
from torch import nn

from metaspike import rules
from metaspike.app.cli import main
from metaspike.app.config import RunConfig
from metaspike.app.models import available_models
from metaspike.snn import neurons
from metaspike.snn.neurons import register_neuron, spiking_mlp

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


def _as_in_a_new_process() -> None:
    """Forget what USER_MODULE registered and the imported user modules."""
    rules._RULES.pop("half-tanh", None)
    neurons._NEURONS.pop("slow-lif", None)
    for name in [n for n in sys.modules if n.startswith("metaspike_import_")]:
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


def test_a_users_module_that_the_import_file_imports_is_checked_on_resume_too(tmp_path, monkeypatch):
    """Only the named file was hashed: a rule kept in a package module that the --import file imports was edited
    between a kill and --resume, and the resumed run trained its later tasks with the edited rule, silently."""
    package = tmp_path / "userlab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "impl.py").write_text(USER_MODULE.replace("register_rule(HalfTanh())", "").split("register_neuron(")[0])
    entry = tmp_path / "entry.py"
    entry.write_text("from metaspike.rules import register_rule\nfrom userlab.impl import HalfTanh\n"
                     "register_rule(HalfTanh())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["train", "--import", str(entry), "--rule", "half-tanh", *SMALL, "--out", str(tmp_path)]) == 0
    run = tmp_path / "permuted-digits-meta5-30-half-tanh-seed1"
    from metaspike.app.runs import IMPORT_DIGESTS, check_same_sources, load_config

    recorded = json.loads((run / "config.json").read_text())[IMPORT_DIGESTS]
    helper = package / "impl.py"
    assert recorded[str(helper.resolve())] == hashlib.sha256(helper.read_bytes()).hexdigest()
    assert str((package / "__init__.py").resolve()) in recorded and len(recorded) == 3
    helper.write_text(helper.read_text().replace("meta / 2", "meta / 3"))
    with pytest.raises(ValueError, match=r"was made with .*userlab/impl.py as it was then, and the file has changed"):
        check_same_sources(run, load_config(run))


def test_a_module_name_of_a_file_in_the_current_folder_says_how_to_import_it(tmp_path, monkeypatch):
    """The installed script does not look in the current folder: "No module named 'mylab'" beside mylab.py."""
    from metaspike.app.imports import import_modules

    (tmp_path / "mylab_here.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    with pytest.raises(ValueError, match=r"No module named 'mylab_here'; the installed metaspike command does not look "
                                         r"in the current folder: give the file's path \(mylab_here.py\)"):
        import_modules(["mylab_here"])


def test_a_folder_without_init_is_refused_since_it_registers_nothing(tmp_path, monkeypatch):
    from metaspike.app.imports import import_modules

    (tmp_path / "emptylab").mkdir()
    (tmp_path / "emptylab" / "mine.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"--import emptylab: is a folder without __init__.py \(a namespace package\), "
                                         r"which runs no code and so registers nothing: give the .py file"):
        import_modules(["emptylab"])
    assert import_modules(["emptylab.mine"]) == ("emptylab.mine",)  # (its module, by name)


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
    run = tmp_path / "permuted-digits-slow-lif-meta30-seed1"  # (a registered model: one m by default)
    from metaspike.app.runs import IMPORT_DIGESTS, check_same_sources, load_config, train_resume_command

    # the run records its --import file's SHA-256: edited meanwhile, the file is refused where the run would go on
    # (a resumed run mixed two versions of a user's rule, silently)
    recorded = json.loads((run / "config.json").read_text())[IMPORT_DIGESTS]
    assert recorded == {str(module.resolve()): hashlib.sha256(module.read_bytes()).hexdigest()}
    module.write_text(USER_MODULE + "\n# edited\n")
    with pytest.raises(ValueError, match=r"was made with .*mylab.py as it was then, and the file has changed since"):
        check_same_sources(run, load_config(run))
    module.write_text(USER_MODULE)
    check_same_sources(run, load_config(run))

    # (what a Ctrl-C prints to continue: without the --import, that command was refused as below)
    assert train_resume_command(run, 1) == f"metaspike train --resume {run} --import {shlex.quote(str(module.resolve()))}"
    for name in ("metrics.json", "curves.csv"):  # as if killed before its first checkpoint (a finished run keeps none)
        (run / name).unlink()
    _as_in_a_new_process()
    assert main(["train", "--resume", str(run)]) == 2
    assert capsys.readouterr().err == (f"metaspike: error: {run} was made with --import {module.resolve()}; resume it "
                                       "with the same --import (given: none)\n")
    other = tmp_path / "other.py"  # registers the same names, but is not what the run imported
    other.write_text(USER_MODULE)
    assert main(["train", "--resume", str(run), "--import", str(other)]) == 2
    assert f"resume it with the same --import (given: {other.resolve()})" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no abbreviation slips past the checks (argparse's one-line error)
        main(["train", "--resume", str(run), "--imp", str(module)])
    assert "unrecognized arguments: --imp" in capsys.readouterr().err
    _as_in_a_new_process()
    assert main(["train", "--resume", str(run), "--import", str(module), "--quiet"]) == 0
    assert json.loads((run / "metrics.json").read_text())["complete"] is True


def test_a_comparison_resumes_only_with_the_imports_it_was_made_with(tmp_path, capsys):
    module, other = tmp_path / "mylab.py", tmp_path / "other.py"
    module.write_text(USER_MODULE)
    other.write_text(USER_MODULE.replace("meta / 2", "meta * 0"))  # another rule under the same name
    out = tmp_path / "cmp"
    assert main(["compare", "--import", str(module), "--rule", "half-tanh", "--meta", "0", "5", *SMALL,
                 "--out", str(out)]) == 0
    root = out / "compare-permuted-digits-half-tanh"  # (a comparison under another rule names it)
    assert f"--resume {root} --import {shlex.quote(str(module.resolve()))})" in capsys.readouterr().out
    for name in ("metrics.json", "curves.csv"):  # as if killed before its first checkpoint
        (root / "permuted-digits-meta5-half-tanh-seed1" / name).unlink()
    assert main(["compare", "--resume", str(root), "--quiet"]) == 2
    assert f"was made with --import {module.resolve()}; resume it with the same --import" in capsys.readouterr().err
    _as_in_a_new_process()  # which imports the other module
    assert main(["compare", "--resume", str(root), "--import", str(other), "--quiet"]) == 2
    assert f"(given: {other.resolve()})" in capsys.readouterr().err
    _as_in_a_new_process()
    assert main(["compare", "--resume", str(root), "--import", str(module), "--quiet"]) == 0


def test_only_train_and_compare_import_a_module(tmp_path, capsys):
    marker = tmp_path / "ran"
    loud = tmp_path / "loud.py"
    loud.write_text(f"open({str(marker)!r}, 'w').close()\n")
    for argv in (["plot", "--import", str(loud), str(tmp_path)], ["reproduce", "long-stream", "--import", str(loud)],
                 ["--import", str(loud)]):
        with pytest.raises(SystemExit):  # (argparse's one-line error: no such option)
            main(argv)
        assert not marker.exists(), argv
    capsys.readouterr()


def test_an_unknown_rule_says_how_to_name_ones_own(capsys):
    assert main(["train", "--rule", "half-tanh", *SMALL]) == 2
    assert "unknown consolidation rule 'half-tanh'" in (err := capsys.readouterr().err) and "--import" in err, err


@pytest.mark.parametrize("content, message", [
    (None, "--import {spec}: FileNotFoundError: no such file"),
    ("x = (\n", "--import {spec}: bad.py line 1: SyntaxError"),
    ("import torch\n\ntorch.zeros(2) + torch.zeros(3)\n", "--import {spec}: bad.py line 3: RuntimeError: The size"),
    ("from metaspike.rules import TanhRule, register_rule\nregister_rule(TanhRule())\n", None),
    ("from metaspike.rules import CascadeRule, register_rule\nregister_rule(CascadeRule(name='tanh'))\n",
     "--import {spec}: bad.py line 2: ValueError: 'tanh' is a built-in rule's name"),
    ("import sys\nsys.exit(3)\n", "--import {spec}: bad.py line 2: SystemExit: 3"),
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


def test_a_neuron_builder_that_returns_no_model_is_named(tmp_path, capsys):
    (tmp_path / "nothing.py").write_text("from metaspike.snn import register_neuron\n"
                                         "register_neuron('nothing-built', lambda spec: None)\n")
    code = main(["train", "--import", str(tmp_path / "nothing.py"), *SMALL, "--model", "nothing-built",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "the builder of neuron model 'nothing-built' (<lambda>, nothing.py line 2) returned NoneType, not a torch " \
           "nn.Module" in err  # (its file and line: an imported file's module name is made up)


def test_a_neuron_builder_that_fixes_its_own_number_of_time_steps_is_named(monkeypatch):
    """Its runs recorded the num_steps asked for, and ran another."""
    from metaspike.snn import NetSpec, SelfRecurrentLIF, build_neuron_model

    monkeypatch.setattr(neurons, "_NEURONS", dict(neurons._NEURONS))
    fixed = NetSpec(hidden=(4,), num_steps=3)
    register_neuron("three-steps", lambda spec: spiking_mlp(fixed, lambda n, out: SelfRecurrentLIF(n, output=out)))
    assert build_neuron_model("three-steps", NetSpec(hidden=(4,), num_steps=3)).num_steps == 3
    with pytest.raises(ValueError, match=r"neuron model 'three-steps' made SpikingClassifiers of num_steps 3 where "
                                         r"the spec asks for 5: build one with spec.num_steps"):
        build_neuron_model("three-steps", NetSpec(hidden=(4,), num_steps=5))

    def two_time_scales(spec):  # (an ensemble whose members run the spec's steps and twice as many: taken)
        member = lambda steps: spiking_mlp(dataclasses.replace(spec, num_steps=steps),  # noqa: E731
                                           lambda n, out: SelfRecurrentLIF(n, output=out))
        return nn.ModuleList([member(spec.num_steps), member(2 * spec.num_steps)])

    register_neuron("two-time-scales", two_time_scales)
    assert [m.num_steps for m in build_neuron_model("two-time-scales", NetSpec(hidden=(4,), num_steps=5))] == [5, 10]


@pytest.mark.parametrize("line, error, message", [
    ("raise RuntimeError('my builder is broken')", "RuntimeError", "my builder is broken"),
    ("return int('abc')", "ValueError", "invalid literal for int() with base 10: 'abc'"),  # (its own, not ours)
    ("return torch.nn.Linear(-1, 3)", "RuntimeError", "Trying to create tensor with negative dimension -1: [3, -1]"),
])
def test_a_neuron_builder_that_raises_is_one_line_naming_its_file_and_line(tmp_path, capsys, line, error, message):
    (tmp_path / "broken.py").write_text("import torch\nfrom metaspike.snn import register_neuron\n"
                                        "def build(spec):\n"
                                        f"    {line}\n"
                                        "register_neuron('broken-built', build)\n")
    code = main(["train", "--import", str(tmp_path / "broken.py"), *SMALL, "--model", "broken-built",
                 "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err == ("metaspike: error: the builder of neuron model 'broken-built' (build) raised "
                                 f"{error} at broken.py line 4: {message}\n"), err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run folder left


STATE_KEPT_MODULE = """
import torch
from torch import nn
from metaspike.snn import register_neuron, spiking_mlp


class KeepsState(nn.Module):  # its membrane lives on between calls, and its reset is not called reset_state
    def __init__(self, output):
        super().__init__()
        self.output, self.mem = output, None

    def reset(self):
        self.mem = None

    def forward(self, x):
        self.mem = x if self.mem is None or self.mem.shape != x.shape else 0.9 * self.mem + x
        return self.mem if self.output else torch.sigmoid(4 * (self.mem - 1))


register_neuron("keeps-state", lambda spec: spiking_mlp(spec, lambda n, out: KeepsState(out)))
"""


def test_a_neuron_that_keeps_its_state_across_calls_is_one_line_naming_reset_state(tmp_path, capsys):
    (tmp_path / "kept.py").write_text(STATE_KEPT_MODULE)
    code = main(["train", "--import", str(tmp_path / "kept.py"), *SMALL, "--model", "keeps-state",
                 "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert ("module '2' (KeepsState) keeps the tensor 'mem' from one call to the next" in err
            and "reset_state()" in err)
    (tmp_path / "fixed.py").write_text(STATE_KEPT_MODULE.replace("keeps-state", "resets-state")
                                       .replace("def reset(self)", "def reset_state(self)"))
    assert main(["train", "--import", str(tmp_path / "fixed.py"), *SMALL, "--model", "resets-state",
                 "--out", str(tmp_path / "runs")]) == 0


def test_a_missing_module_name_is_one_line(capsys):
    assert main(["train", "--import", "no_such_userlab_module", *SMALL]) == 2
    assert capsys.readouterr().err == ("metaspike: error: --import no_such_userlab_module: ModuleNotFoundError: "
                                       "No module named 'no_such_userlab_module'\n")


@pytest.mark.parametrize("name, builder, message", [
    ("a+b", lambda spec: None, "no '+'"),
    ("", lambda spec: None, "a neuron model's name"),
    (3, lambda spec: None, "a neuron model's name"),
    ("mine", "not callable", "builder must be a callable"),
    ("leaky", lambda spec: None, "'leaky' is a built-in neuron model's name"),
])
def test_register_neuron_checks_its_arguments(name, builder, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        register_neuron(name, builder)


def test_a_neuron_model_registered_again_is_refused_unless_replaced(monkeypatch):
    """A notebook cell that registers a neuron model could not run twice, even unchanged: no replace= as rules have."""
    from metaspike.snn import neurons

    monkeypatch.setattr(neurons, "_NEURONS", dict(neurons._NEURONS))  # (the test's models go with it)
    first, edited = (lambda spec: None), (lambda spec: None)
    assert register_neuron("notebook-cell", first) is first
    assert register_neuron("notebook-cell", first) is first  # (the same builder: nothing changes)
    with pytest.raises(ValueError, match=r"another builder is registered as neuron model 'notebook-cell' already .* "
                                         r"register_neuron\(name, builder, replace=True\)"):
        register_neuron("notebook-cell", edited)
    assert register_neuron("notebook-cell", edited, replace=True) is edited
    with pytest.raises(ValueError, match="'leaky' is a built-in neuron model's name"):
        register_neuron("leaky", edited, replace=True)


def test_a_neuron_model_named_like_a_model_kind_is_refused_when_registered(monkeypatch):
    """Once accepted, it broke every later listing of the model kinds (no way to unregister it in a notebook)."""
    from metaspike.app.models import _KINDS
    from metaspike.snn import neurons

    monkeypatch.setattr(neurons, "_NEURONS", dict(neurons._NEURONS))

    def build(spec):
        return None

    assert neurons.NON_SPIKING_MODEL_KINDS == set(_KINDS)  # (the library's list of the app's kinds is complete)
    assert register_neuron("mine", build) is build and register_neuron("mine", build) is build  # (idempotent)
    for kind in _KINDS:
        with pytest.raises(ValueError, match=f"'{kind}' is the name of a run model kind"):
            register_neuron(kind, build)
    assert "mine" in available_models() and "bnn" in available_models()


def test_the_recorded_imports_are_checked_like_every_other_setting():
    with pytest.raises(ValueError, match="--import takes module names or .py files"):
        RunConfig(imports=("",))
    with pytest.raises(ValueError, match="--import takes module names or .py files"):
        RunConfig(imports=["a.py"])


RECURRENT_MODULE = '''
import snntorch as snn
from metaspike.snn import register_neuron, spiking_mlp, surrogate

register_neuron("rleaky", lambda spec: spiking_mlp(spec, lambda n, out: snn.RLeaky(
    beta=spec.beta, linear_features=n, all_to_all=True, init_hidden=True, output=out,
    reset_mechanism="none" if out else "zero", spike_grad=surrogate("atan"))))
'''


def test_a_registered_model_with_its_own_count_of_weight_layers_takes_the_default_and_per_layer_meta(
        tmp_path, capsys):
    """An all-to-all recurrent neuron adds a matrix per layer: 4 weight layers for --hidden 16, not 2."""
    pytest.importorskip("snntorch")
    module = tmp_path / "recurrent.py"
    module.write_text(RECURRENT_MODULE)
    common = ["train", "--import", str(module), "--model", "rleaky", *SMALL]
    assert main([*common, "--out", str(tmp_path / "default")]) == 0  # its layers are counted once built: one m
    (run,) = (tmp_path / "default").iterdir()
    assert json.loads((run / "config.json").read_text())["meta"] == 30
    assert main([*common, "--meta", "5", "30", "30", "30", "--out", str(tmp_path / "per-layer")]) == 0
    assert main([*common, "--meta", "5", "30", "--out", str(tmp_path / "short")]) == 2
    # (the layers named in order: the recurrent matrices sit between the feed-forward ones)
    assert ("got 2 meta values but the model has 4 weight layers (network.1, network.2.recurrent, network.3, "
            "network.4.recurrent, in this order); give one value or one per layer") in capsys.readouterr().err


NORSE_MODULE = """
import norse.torch as norse
from metaspike.snn import register_neuron, spiking_mlp

register_neuron("my-norse", lambda spec: spiking_mlp(spec, lambda n, out: norse.LICell() if out else norse.LIFCell()))
"""


def test_a_registered_spiking_mlp_of_norse_cells_threads_their_states_and_trains(tmp_path, capsys):
    """spiking_mlp built an nn.Sequential, which cannot pass Norse cells' states on, and the error advised a
    SequentialState the builder could not choose: the stack is a SequentialState when its neurons are Norse cells."""
    pytest.importorskip("norse.torch")
    module = tmp_path / "mylab_norse.py"
    module.write_text(NORSE_MODULE)
    assert main(["train", "--import", str(module), "--model", "my-norse", *SMALL, "--out", str(tmp_path)]) == 0, \
        capsys.readouterr().err
    model = neurons.build_neuron_model("my-norse", neurons.NetSpec(hidden=(8,), num_steps=2))
    assert type(model.network).__name__ == "SequentialState"


RAISING_RULE = """
from dataclasses import dataclass
from metaspike.rules import TanhRule, register_rule

@dataclass(frozen=True)
class Raising(TanhRule):
    name: str = "raising-{tag}"

    def step(self, hidden, update, meta, state):
        return {{}}["x"]

register_rule(Raising())
"""


@pytest.mark.parametrize("hidden", [["16"], ["512", "512"]])  # (512 x 512: the compiled update's, which falls back)
def test_a_rule_that_raises_is_one_line_naming_the_rule_its_file_and_line(tmp_path, capsys, hidden):
    tag = "-".join(hidden)
    (tmp_path / "raising.py").write_text(RAISING_RULE.format(tag=tag))
    code = main(["train", "--import", str(tmp_path / "raising.py"), "--rule", f"raising-{tag}", "--dataset",
                 "digits", "--tasks", "2", "--epochs", "1", "--hidden", *hidden, "--meta", "1", "--quiet",
                 "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"metaspike: error: consolidation rule 'raising-{tag}' (Raising) raised KeyError "
                                 "at raising.py line 10: 'x'\n"), err


def test_a_rule_that_raises_under_a_wrapped_optimizer_is_named_too(tmp_path):
    import torch

    import metaspike
    from metaspike.app.imports import import_modules

    (tmp_path / "wrapped.py").write_text(RAISING_RULE.format(tag="wrapped"))
    import_modules([str(tmp_path / "wrapped.py")])
    net = metaspike.binarize(torch.nn.Linear(4, 2))
    opt = metaspike.metaplastic(torch.optim.SGD(net.parameters(), lr=0.1), meta=1.0, rule="raising-wrapped")
    net(torch.randn(3, 4)).sum().backward()
    with pytest.raises(ValueError, match="consolidation rule 'raising-wrapped' \\(Raising\\) raised KeyError at "
                                         "wrapped.py line 10: 'x'"):
        opt.step()


@pytest.mark.parametrize("content, message", [
    ("import os\nos.chdir('/')\n", "changed the working folder"),
    ("import torch\ntorch.set_default_dtype(torch.float64)\n", "changed torch's default dtype"),
])
def test_a_module_that_changes_the_folder_or_default_dtype_is_refused(tmp_path, capsys, monkeypatch, content, message):
    import torch

    monkeypatch.chdir(tmp_path)  # (back where it was after the test)
    (tmp_path / "moves.py").write_text(content)
    try:
        code = main(["train", "--import", "moves.py", *SMALL, "--out", "runs"])
    finally:
        torch.set_default_dtype(torch.float32)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"--import moves.py {message}" in err, err
    assert not (tmp_path / "runs").exists()  # (no run started)


def test_a_refused_module_leaves_the_folder_and_dtype_as_they_were_and_is_imported_anew(tmp_path, capsys,
                                                                                      monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    module = tmp_path / "moves.py"
    module.write_text("import torch\ntorch.set_default_dtype(torch.float64)\n")
    assert main(["train", "--import", "moves.py", *SMALL, "--out", "runs"]) == 2
    assert torch.get_default_dtype() == torch.float32
    assert main(["train", "--import", "moves.py", *SMALL, "--out", "runs"]) == 2  # (run again, refused again)
    module.write_text("x = 1\n")  # (fixed: imported anew, accepted)
    assert main(["train", "--import", "moves.py", *SMALL, "--out", "runs"]) == 0, capsys.readouterr().err


def test_a_module_that_changes_the_dtype_and_then_fails_leaves_it_as_it_was(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "half.py").write_text("import torch\ntorch.set_default_dtype(torch.float64)\nraise RuntimeError('x')\n")
    assert main(["train", "--import", "half.py", *SMALL, "--out", "runs"]) == 2
    assert torch.get_default_dtype() == torch.float32 and "half.py line 3: RuntimeError: x" in capsys.readouterr().err


def test_compare_neurons_alone_takes_the_neuron_models_of_ones_own_too():
    """--neurons alone compared the built-in models only: one registered through --import was left out silently."""
    from metaspike.app.compare import DEFAULT_NEURONS, every_neuron_model
    from metaspike.snn import SelfRecurrentLIF, spiking_mlp

    register_neuron("slow-lif", lambda spec: spiking_mlp(spec, lambda n, out: SelfRecurrentLIF(n, output=out)))
    assert every_neuron_model() == [*DEFAULT_NEURONS, "slow-lif"]
