"""metaspike.snn without optional packages: encoders, readouts, time loop, self-recurrent layer, errors."""

import csv
import subprocess
import sys

import pytest
import torch
from torch import nn

import metaspike
from metaspike.snn import (
    LatencyEncoder,
    RateEncoder,
    SelfRecurrentLIF,
    SpikingClassifier,
    build_neuron_model,
    get_encoder,
    get_readout,
    membrane,
    reset_states,
    surrogate,
)
from metaspike.snn.neurons import NetSpec
from metaspike.synapse import SignWeight


def _tiny(num_steps=3, **kw):
    step = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), SelfRecurrentLIF(5), nn.Linear(5, 3), SelfRecurrentLIF(3, output=True))
    return SpikingClassifier(step, num_steps=num_steps, encoder="direct", input_shape=(1, 2, 2), **kw)


def test_import_metaspike_works_without_snntorch_norse_nir_and_features_name_the_pip_command():
    code = (
        "import sys\n"
        "for name in ('snntorch', 'norse', 'nir'): sys.modules[name] = None\n"
        "import metaspike, metaspike.snn\n"
        "from metaspike.snn import build_neuron_model\n"
        "for neuron, pip in (('leaky', 'pip install snntorch'), ('norse-lif', 'pip install --no-deps norse')):\n"
        "    try:\n"
        "        build_neuron_model(neuron)\n"
        "    except ImportError as err:\n"
        "        assert pip in str(err), err\n"
        "    else:\n"
        "        raise AssertionError(neuron)\n"
        "build_neuron_model('self-recurrent')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("readout", ["count", "membrane"])
def test_a_readout_of_no_steps_or_of_other_objects_is_one_line(readout):
    """spike_count([]) was torch's "stack expects a non-empty TensorList"."""
    name = get_readout(readout).__name__
    with pytest.raises(ValueError, match=f"^{name} reads the output of each time step, got no steps$"):
        get_readout(readout)([])
    with pytest.raises(ValueError, match=f"^{name} reads a tensor \\(or a tuple of tensors\\) per time step, got int$"):
        get_readout(readout)([1, 2])
    assert get_readout(readout)([torch.ones(2, 3), (torch.zeros(2, 3), torch.ones(2, 3))]).shape == (2, 3)
    assert get_readout(readout)([torch.ones(2, 3, dtype=torch.complex64)]).dtype == torch.complex64


@pytest.mark.parametrize("readout", ["count", "membrane"])
@pytest.mark.parametrize("dtype", [torch.bool, torch.int64])
def test_a_network_that_returns_bool_or_integer_spikes_is_told_to_return_floats(readout, dtype):
    """membrane's mean was torch's "could not infer output dtype"; counts were integer logits, with no gradient."""

    class ThresholdedLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x):
            return (self.linear(x) > 0).to(dtype)

    model = SpikingClassifier(nn.Sequential(ThresholdedLinear()), 2, readout=readout)
    with pytest.raises(ValueError, match=f"reads floating-point outputs, got {dtype} at a time step: the last module"):
        model(torch.rand(5, 4))


def test_rate_encoder_fires_with_the_input_probability():
    torch.manual_seed(0)
    spikes = RateEncoder()(torch.tensor([[0.0, 1.0, 0.3]]), num_steps=4000)
    assert spikes[:, 0, 0].sum() == 0 and spikes[:, 0, 1].sum() == 4000
    assert abs(spikes[:, 0, 2].mean().item() - 0.3) < 0.03


def test_latency_encoder_fires_once_earlier_for_brighter_inputs():
    spikes = LatencyEncoder()(torch.tensor([[1.0, 0.5, 0.1, 0.0]]), num_steps=5)
    assert spikes.sum(0).tolist() == [[1.0, 1.0, 1.0, 0.0]]
    assert spikes[:, 0, :3].argmax(0).tolist() == [0, 2, 4]


@pytest.mark.parametrize("dtype, num_steps", [(torch.bfloat16, 300), (torch.float16, 3000), (torch.float64, 300)])
def test_latency_encoder_fires_once_at_the_exact_step_in_any_dtype(dtype, num_steps):
    """bfloat16 holds every integer only up to 256 and float16 up to 2048: the step indices made in the input's dtype
    matched the spike time at up to 3 steps. The step is round((1 - x)(T - 1)) of the value x holds, exactly."""
    x = torch.tensor([[0.001, 0.01, 0.05, 0.5, 1.0, 0.0]]).to(dtype)
    spikes = LatencyEncoder()(x, num_steps)
    assert spikes.dtype == dtype
    assert spikes.sum(0).tolist() == [[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]]
    expected = torch.round((1 - x[0, :5].double()) * (num_steps - 1)).long()  # (float64: exact for these steps)
    assert torch.equal(spikes[:, 0, :5].argmax(0), expected)


def test_time_loop_resets_state_so_repeated_calls_agree():
    torch.manual_seed(0)
    model = _tiny(num_steps=6)
    x = torch.rand(7, 1, 2, 2) * 3
    torch.testing.assert_close(model(x), model(x))
    assert model.network[2].v is None  # released after the call too: no autograd graph stays in the neurons
    model.network(x.flatten(1))  # one step outside the loop leaves a state, which reset_states clears
    assert model.network[2].v is not None
    reset_states(model)
    assert model.network[2].v is None


def test_time_loop_accepts_encoded_input_and_checks_shapes():
    torch.manual_seed(0)
    model = _tiny(num_steps=3)
    x = torch.rand(2, 1, 2, 2)
    torch.testing.assert_close(model(x.expand(3, 2, 1, 2, 2)), model(x))
    with pytest.raises(ValueError, match=r"encoded input is time-first, \[num_steps=3, batch, 1, 2, 2\], but has 5 in "
                                         r"its first dimension$"):
        model(torch.rand(5, 2, 1, 2, 2))
    with pytest.raises(ValueError, match=r"but has 5 in its first dimension; it looks batch-first \(\[batch, "
                                         r"num_steps, ...\]\): x.transpose\(0, 1\) makes it time-first$"):
        model(torch.rand(5, 3, 1, 2, 2))  # (5 samples of 3 steps, batch-first)
    with pytest.raises(ValueError, match=r"input of shape \(2, 1, 3, 3\) does not fit"):
        model(torch.rand(2, 1, 3, 3))
    encoded = (torch.rand(3, 2, 1, 2, 2) < 0.5).float()
    encoded[1, 0, 0, 0, 0] = float("nan")  # (a spike train is checked as a raw batch is: NaN ran silently)
    with pytest.raises(ValueError, match="encoded input holds NaN or infinite values"):
        model(encoded)
    with pytest.raises(ValueError, match=r"encoded input must be floating point \(spikes as 0.0 and 1.0\), got "
                                         r"torch.uint8: convert it with x.float\(\)"):
        model(torch.ones(3, 2, 1, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="input must be a torch tensor, got list"):
        model(x.tolist())
    assert SpikingClassifier(torch.nn.Linear(4, 2), num_steps=2, encoder="direct", input_shape=4).input_shape == (4,)


@pytest.mark.parametrize("bad, message", [
    (dict(num_steps=0), "num_steps must be an integer >= 1, got 0"),
    (dict(encoder="morse"), "unknown encoder 'morse'"),
    (dict(readout="vote"), "unknown readout 'vote'"),
])
def test_bad_time_loop_settings_raise_one_clear_value_error(bad, message):
    settings = dict(num_steps=2, encoder="direct", readout="count") | bad
    with pytest.raises(ValueError, match=message):
        SpikingClassifier(nn.Linear(2, 2), **settings)


def test_unknown_neuron_surrogate_and_a_model_without_synapses_raise_value_error():
    with pytest.raises(ValueError, match="unknown neuron model 'hodgkin'"):
        build_neuron_model("hodgkin")
    with pytest.raises(ValueError, match="unknown surrogate 'smooth'"):
        surrogate("smooth")
    with pytest.raises(ValueError, match="did you mean 'atan'"):  # (difflib alone, case-sensitive, offered 'tanh')
        surrogate("Atan")
    with pytest.raises(ValueError, match="has no layer to binarize"):
        metaspike.binarize(SpikingClassifier(nn.Sequential(nn.Flatten(), SelfRecurrentLIF(4)), 2, readout="count"))


@pytest.mark.parametrize("readout", ["membrane", membrane])
def test_a_membrane_readout_of_a_last_neuron_that_returns_spikes_only_is_named_in_a_warning(readout):
    """Averaged spikes are spike rates, not a membrane (all zero before training): the fix is named."""
    spiking = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 3), SelfRecurrentLIF(3)))
    with pytest.warns(UserWarning, match=r"^readout='membrane' reads the last module's membrane potential, but module "
                                         r"'1.1' \(SelfRecurrentLIF\) returns its spikes only, so the logits are "
                                         r"spike rates: build it with output=True .*, or read the spikes with "
                                         r"readout='count'$") as caught:
        SpikingClassifier(spiking, num_steps=2, encoder="direct", readout=readout)
    assert caught[0].filename == __file__  # (at the user's line)
    counted = SpikingClassifier(spiking, num_steps=2, encoder="direct", readout="count")
    assert counted(torch.rand(2, 1, 2, 2)).shape == (2, 3)
    assert _tiny(readout=readout)(torch.rand(2, 1, 2, 2)).unique().numel() > 2  # output=True: a real membrane


def test_signs_are_taken_once_per_forward_not_once_per_step(monkeypatch):
    import metaspike.synapse

    model = metaspike.binarize(_tiny(num_steps=10))
    assert sum(isinstance(module, SignWeight) for module in model.modules()) == 2
    calls = []
    real = metaspike.synapse.ste_sign
    monkeypatch.setattr(metaspike.synapse, "ste_sign", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    model(torch.rand(2, 1, 2, 2)).sum().backward()
    assert len(calls) == 2  # one sign per binary layer for the 10 steps


def test_self_recurrent_layer_trains_decay_threshold_and_self_weight():
    torch.manual_seed(0)
    model = metaspike.binarize(build_neuron_model("self-recurrent", NetSpec(hidden=(16,), num_steps=4)))
    layer = model.network[2]
    before = [p.detach().clone() for p in (layer.beta, layer.threshold, layer.w_self)]
    hidden = [w.detach().clone() for w in metaspike.hidden_weights(model)]
    opt = metaspike.MetaplasticAdam(metaspike.param_groups(model, 5.0), lr=0.01)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    changed = [not torch.equal(a, b) for a, b in zip(before, (layer.beta, layer.threshold, layer.w_self))]
    assert changed == [True, True, True]
    assert all(not torch.equal(a, b) for a, b in zip(hidden, metaspike.hidden_weights(model)))
    assert set(model.network[1].weight.unique().tolist()) == {-1.0, 1.0}


def test_self_recurrent_layer_feeds_each_neuron_back_only_to_itself():
    layer = SelfRecurrentLIF(3, beta=0.0, threshold=0.5)
    with torch.no_grad():
        layer.w_self.copy_(torch.tensor([0.0, 0.7, 0.0]))
    first = layer(torch.tensor([[1.0, 1.0, 0.0]]))
    second = layer(torch.zeros(1, 3))
    assert first.tolist() == [[1.0, 1.0, 0.0]] and second.tolist() == [[0.0, 1.0, 0.0]]


def test_readout_and_encoder_objects_pass_through():
    encoder, readout = RateEncoder(), (lambda outputs: outputs[-1])
    assert get_encoder(encoder) is encoder and get_readout(readout) is readout


def test_an_encoder_of_ones_own_must_give_time_steps_first():
    """An encoder module returning [batch, ...] had the batch read as time steps: a batch of 3 gave one row of
    scores, without a word. What follows the batch is the encoder's to shape (a population code adds a dimension)."""
    class Unrolled(torch.nn.Module):
        def forward(self, x, num_steps):
            return x

    class Population(torch.nn.Module):
        def forward(self, x, num_steps):
            return x.expand(num_steps, *x.shape).unsqueeze(-1).expand(-1, -1, -1, 2).flatten(2)

    takes_a_row = torch.nn.Sequential(torch.nn.Linear(4, 2))  # (a network that runs on the batch read as time)
    with pytest.raises(ValueError, match=r"^encoder Unrolled must return \[num_steps=4, batch=3, \.\.\.\] for input "
                                         r"of shape \(3, 4\), got \(3, 4\)$"):
        SpikingClassifier(takes_a_row, num_steps=4, encoder=Unrolled())(torch.rand(3, 4))
    population = torch.nn.Sequential(torch.nn.Linear(8, 2))
    assert SpikingClassifier(population, num_steps=4, encoder=Population())(torch.rand(3, 4)).shape == (3, 2)


def test_compare_neurons_under_several_rules_judges_each_model_under_each_rule(tmp_path):
    from metaspike.app.compare import compare_neurons
    from metaspike.app.config import RunConfig

    base = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(16,))
    path, rows = compare_neurons(base, ["bnn", "bimu"], [0, 5], out=tmp_path, progress=False,
                                 rules=["tanh", "cascade"])
    assert path.name == "compare-neurons-permuted-digits-tanh-cascade"
    assert [(r["setting"], r["rule"]) for r in rows] == [
        ("bnn meta=0 rule=tanh", "tanh"), ("bnn meta=5 rule=tanh", "tanh"), ("bnn meta=0 rule=cascade", "cascade"),
        ("bnn meta=5 rule=cascade", "cascade"), ("bimu", None)]  # (BiMU takes no rule: it runs once)
    tradeoff = list(csv.DictReader(open(path / "tradeoff.csv")))
    assert [(r["neuron"], r["rule"]) for r in tradeoff] == [("bnn", "tanh"), ("bnn", "cascade"), ("bimu", "")]
    text = (path / "tradeoff.txt").read_text()
    assert "bnn tanh" in text and "bnn cascade" in text  # (each model under each rule, judged against its own m = 0)
    with pytest.raises(ValueError, match=r"rules must name each rule once, got \['tanh', 'tanh'\]"):
        compare_neurons(base, ["bnn"], [0], out=tmp_path, progress=False, rules=["tanh", "tanh"])


def test_compare_neurons_writes_one_table_and_figure_for_every_model_and_meta(tmp_path):
    from metaspike.app.compare import compare_neurons
    from metaspike.app.config import RunConfig

    base = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(16,), num_steps=2)
    path, rows = compare_neurons(base, ["bnn", "self-recurrent"], [0, 50], out=tmp_path, progress=False)
    assert [r["setting"] for r in rows] == ["bnn meta=0", "bnn meta=50", "self-recurrent meta=0", "self-recurrent meta=50"]
    lines = (path / "comparison.csv").read_text().splitlines()
    assert lines[0].startswith("neuron,meta,rule,runs,task1_mean,task1_std,task2_mean") and len(lines) == 5
    assert [line.split(",")[2] for line in lines[1:]] == ["tanh"] * 4  # (which rule each row ran, kept in the table)
    assert "forgetting" in (path / "comparison.txt").read_text()
    assert (path / "forgetting.png").stat().st_size > 0
    assert len([d for d in path.iterdir() if d.is_dir()]) == 4
    tradeoff = (path / "tradeoff.csv").read_text().splitlines()
    assert tradeoff[0].startswith("neuron,rule,best_meta,runs,verdict,ACC_mean") and len(tradeoff) == 3
    by_model = {r["neuron"]: r for r in __import__("metaspike.app.compare", fromlist=["x"]).tradeoff_rows(rows)}
    for neuron in ("bnn", "self-recurrent"):
        chosen = max((r for r in rows if r["neuron"] == neuron), key=lambda r: r["ACC"][0])
        assert by_model[neuron]["best_meta"] == f"{chosen['meta']:g}"
    assert (path / "tradeoff.png").stat().st_size > 0


def test_cli_compare_neurons_names_an_unknown_neuron_model(capsys):
    from metaspike.app.cli import main

    assert main(["compare", "--neurons", "leaky", "hodgkin", "--out", "/nonexistent-never-written"]) == 2
    assert "unknown model 'hodgkin'; available: alpha, " in capsys.readouterr().err


@pytest.mark.parametrize("make, message", [
    (lambda: NetSpec(beta=1.5), r"beta \(the membrane's decay per step\) must be a finite number in \[0, 1\], got 1.5"),
    (lambda: NetSpec(hidden=(0,)), r"hidden must be a sequence of integers >= 1, got \(0,\)"),
    (lambda: NetSpec(classes=0), "classes must be an integer >= 1, got 0"),
    (lambda: SelfRecurrentLIF(4, beta=-1.0), r"beta \(the membrane's decay per step\) must be a finite number in \[0, 1\]"),
    (lambda: RateEncoder()(torch.rand(2, 3), 0), "num_steps must be an integer >= 1, got 0"),
    (lambda: LatencyEncoder()(torch.rand(2, 3), -1), "num_steps must be an integer >= 1, got -1"),
    (lambda: RateEncoder()(torch.full((2, 3), float("nan")), 4), "x holds NaN or infinite values"),
    (lambda: SpikingClassifier(nn.Linear(4, 2), 3, input_shape=(-1, 4)), "input_shape must be a non-empty sequence"),
])
def test_spiking_settings_out_of_range_get_one_line(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_self_recurrent_model_refuses_a_count_of_its_output_layer_which_never_fires():
    """Its output layer's threshold is 1e4 (its membrane is the readout): readout="count" gave all-zero logits, and
    nothing trained."""
    with pytest.raises(ValueError, match=r"^readout 'count' sums the output layer's spikes, but self-recurrent's "
                                         r"output layer has the threshold 1e4 and never fires .* use "
                                         r"readout='membrane'$"):
        build_neuron_model("self-recurrent", NetSpec(hidden=(8,), num_steps=2, readout="count"))


def test_spiking_models_of_the_command_take_standardized_inputs():
    """The registry's spiking models feed their input as a current (the direct encoder), so --standardize was refused
    for them on a false ground ("encodes pixel intensities in [0, 1] as spikes"); an encoder that does read [0, 1]
    still refuses standardized values in one line."""
    from metaspike.app.config import RunConfig
    from metaspike.app.models import build_model
    from metaspike.snn import DirectEncoder

    assert "-self-recurrent-standardized-" in RunConfig(model="self-recurrent", standardize=True).name
    torch.manual_seed(0)
    model = build_model("self-recurrent", [8], (1, 4, 4), 3, num_steps=2)
    standardized = torch.randn(5, 1, 4, 4)
    assert isinstance(model.encoder, DirectEncoder) and torch.isfinite(model(standardized)).all()
    with pytest.raises(ValueError, match=r"x must hold intensities in \[0, 1\] for the rate encoder, .* for "
                                         "standardized inputs use encoder='direct'"):
        RateEncoder()(standardized, 2)


def test_a_module_that_keeps_its_state_past_reset_states_is_named_at_the_first_call():
    """A neuron module of one's own that keeps its membrane as an attribute, without reset_state(), would start each
    call from the last one's state (a shape error at the next batch size, or a backward into a freed graph): the
    classifier's first call names it, in evaluation as in training; with reset_state() it runs."""
    from metaspike.checks import ModelError
    from metaspike.snn import SpikingClassifier

    class Sticky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.v = None

        def forward(self, x):
            self.v = x if self.v is None else 0.9 * self.v + x
            return self.v

    class Resets(Sticky):
        def reset_state(self):
            self.v = None

    for neuron, refused in ((Sticky, True), (Resets, False)):
        net = SpikingClassifier(torch.nn.Sequential(torch.nn.Linear(4, 3), neuron()), num_steps=3, encoder="direct",
                                readout="membrane", input_shape=(4,))
        with torch.no_grad():
            if refused:
                with pytest.raises(ModelError, match=r"module '1' \(Sticky\) keeps the tensor 'v' from one call"):
                    net(torch.rand(2, 4))
            else:
                assert net(torch.rand(2, 4)).shape == (2, 3) and net(torch.rand(5, 4)).shape == (5, 3)


def test_a_state_kept_in_a_tuple_or_a_buffer_is_named_too():
    """A state passed by hand and kept as a tuple of tensors, or a membrane kept in a registered buffer, leaked from
    one batch into the next without a word (only a plain tensor attribute was seen)."""
    from metaspike.checks import ModelError
    from metaspike.snn import SpikingClassifier

    class InTuple(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.state = ()

        def forward(self, x):
            self.state = (x if not self.state else 0.9 * self.state[0] + x,)
            return self.state[0]

    class InBuffer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("v", torch.zeros(1, 3))

        def forward(self, x):
            self.v = 0.9 * self.v + x
            return self.v

    for neuron, key in ((InTuple, "state"), (InBuffer, "v")):
        net = SpikingClassifier(torch.nn.Sequential(torch.nn.Linear(4, 3), neuron()), num_steps=3, encoder="direct",
                                readout="membrane", input_shape=(4,))
        with torch.no_grad(), pytest.raises(ModelError, match=rf"module '1' \({neuron.__name__}\) keeps the tensor "
                                                              f"'{key}' from one call"):
            net(torch.rand(1, 4))
    batchnorm = SpikingClassifier(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)), num_steps=3,
                                  encoder="direct", readout="membrane", input_shape=(4,))
    batchnorm(torch.rand(5, 4))  # (statistics updated in place: a buffer, but no state between calls)


def test_a_classifier_of_something_that_is_not_a_module_is_one_line():
    with pytest.raises(ValueError, match="network must be a torch nn.Module .*, got str"):
        SpikingClassifier("net")


def test_spikes_encoded_beforehand_and_encoded_again_without_input_shape_warn_once():
    """Without input_shape, [num_steps, B, F] spikes were rate-encoded again: num_steps times the compute and logits
    [T, B, C] that looked like a result, without a word."""
    import warnings

    import snntorch as snn

    from metaspike.snn import SpikingClassifier

    torch.manual_seed(0)
    net = SpikingClassifier(nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.9, init_hidden=True, output=True)),
                            num_steps=3, encoder="rate", readout="membrane")
    spikes = (torch.rand(3, 5, 4) < 0.5).float()
    with pytest.warns(UserWarning, match=r"^SpikingClassifier: input \(3, 5, 4\) gave logits \(3, 5, 3\), not "
                                         r"\[batch, classes\].*give input_shape") as caught:
        net(spikes)
        net(spikes)
    assert len([w for w in caught if "SpikingClassifier" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert net(torch.rand(5, 4)).shape == (5, 3)
        per_position = SpikingClassifier(nn.Sequential(nn.Conv1d(2, 3, 1), snn.Leaky(beta=0.9, init_hidden=True,
                                                                                    output=True)),
                                         num_steps=3, encoder="direct", readout="membrane")
        assert per_position(torch.rand(4, 2, 16) * 0.9 + 0.05).shape == (4, 3, 16)  # (real-valued input: no spikes)


def test_spikes_encoded_beforehand_that_a_convolution_cannot_take_name_input_shape():
    """A conv network given [num_steps, B, C, H, W] spikes without input_shape failed inside torch's conv2d ("Expected
    3D or 4D input"), which does not point at the fix."""
    import snntorch as snn

    from metaspike.snn import SpikingClassifier

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), snn.Leaky(beta=0.9, init_hidden=True), nn.Flatten(),
                        nn.Linear(36, 3), snn.Leaky(beta=0.9, init_hidden=True, output=True))
    model = SpikingClassifier(net, num_steps=4, encoder="rate")
    spikes = (torch.rand(4, 5, 1, 8, 8) < 0.3).float()
    with pytest.raises(ValueError, match=r"^SpikingClassifier: the network failed on a step of input \(4, 5, 1, 8, 8\) "
                                         r"of 0s and 1s \(Expected 3D .*\); if these are spikes: .*give input_shape"):
        model(spikes)
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 3)
    with pytest.raises(RuntimeError, match="Expected 3D"):  # (real values: not taken for spikes, torch's own error)
        model(torch.rand(4, 5, 1, 8, 8) * 0.8 + 0.1)


@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes need Python 3.11")
def test_a_network_failing_on_an_input_without_input_shape_keeps_its_error_and_gets_a_hint():
    """Without input_shape the wrong width failed inside torch ("mat1 and mat2 shapes cannot be multiplied") with no
    word of input_shape, which turns it into one line; the network's own error stays as it is, with a note."""
    snn = pytest.importorskip("snntorch")
    net = nn.Sequential(nn.Linear(64, 8), snn.Leaky(beta=0.9, init_hidden=True, output=True))
    model = SpikingClassifier(net, num_steps=3, encoder="direct", readout="membrane")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as caught:
        model(torch.rand(4, 60))
    assert any("no input_shape; if that shape is what failed, give input_shape=" in note
               for note in caught.value.__notes__)


def test_time_steps_whose_encoded_batch_exceeds_memory_are_one_line_naming_num_steps(monkeypatch):
    """torch's allocator error named no argument; a size the system overcommits was killed later. The direct
    encoder's steps are views of the input: not refused."""
    from metaspike.snn import encoders

    model = SpikingClassifier(nn.Sequential(nn.Linear(784, 3)), num_steps=10**9, readout="count")
    with pytest.raises(ValueError, match=r"^the rate encoder: num_steps=1,000,000,000 encodes this batch of shape "
                                         r"\(32, 784\) as about 93,[0-9]{3}\.[0-9] GiB of spikes, and this process may "
                                         r"use [0-9.,]+ GiB; give fewer time steps or a smaller batch$"):
        model(torch.rand(32, 784))
    monkeypatch.setattr(encoders, "usable_memory", lambda: 2**30)  # (a container's limit, say: 1 GiB)
    for encoder in ("rate", "latency"):
        model = SpikingClassifier(nn.Sequential(nn.Linear(784, 3), SelfRecurrentLIF(3, output=True)), 1000, encoder)
        with pytest.raises(ValueError, match=f"the {encoder} encoder: .* about 1.5 GiB of spikes, and this process "
                                             "may use 1.0 GiB"):
            model(torch.rand(512, 784))
        assert model(torch.rand(64, 784)).shape == (64, 3)  # (under 256 MiB: not checked)
    model = SpikingClassifier(nn.Sequential(nn.Linear(784, 3), SelfRecurrentLIF(3, output=True)), 1000, "direct")
    with torch.no_grad():
        assert model(torch.rand(512, 784)).shape == (512, 3)
