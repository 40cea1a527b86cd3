"""A user's own pieces in the training loop: a neuron model without a gradient path, a module whose forward pass
raises, and a plugin whose penalty is not one number each give one line naming what is wrong."""

import pytest
import torch
from torch import nn

from metaspike.app.cli import main
from metaspike.snn import neurons, register_neuron, spiking_mlp
from metaspike.training import Plugin, check_inputs, train_epoch


class _HeavisideLIF(nn.Module):
    """The textbook LIF neuron, spikes by a step function and no surrogate gradient: nothing flows back through it."""

    def __init__(self, features: int, is_output: bool):
        super().__init__()
        self.mem = None
        self.is_output = is_output

    def reset_state(self):
        self.mem = None

    def forward(self, x):
        self.mem = x if self.mem is None else 0.9 * self.mem + x
        spikes = (self.mem > 1).float()
        if not self.is_output:
            self.mem = self.mem - spikes
        return spikes


class _Buggy(nn.Module):
    """A user's module with a bug: its weight has one entry too many."""

    def __init__(self, features: int):
        super().__init__()
        self.w = torch.ones(features + 1)

    def forward(self, x):
        return x * self.w  # the line the error names


class _Typo(nn.Module):
    def forward(self, x):
        return x.flaten(1)  # an AttributeError: torch's own check never ran


def _data(samples: int = 40, features: int = 6):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(samples, features, generator=generator), torch.arange(samples) % 3


def _line_of(text: str) -> int:
    """The line of this file that holds ``text``."""
    with open(__file__) as source:
        return next(number for number, line in enumerate(source, 1) if text in line)


def test_a_model_without_a_gradient_path_is_one_line_naming_the_cause():
    # loss.backward() raised torch's "element 0 of tensors does not require grad" from inside the autograd engine
    x, y = _data()
    model = nn.Sequential(nn.Linear(6, 3), _HeavisideLIF(3, is_output=True))
    with pytest.raises(ValueError, match=r"^the loss has no gradient to any trained parameter: .*a spike function "
                                         r"without a surrogate gradient"):
        train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, batch_size=10)


def test_a_penalty_does_not_hide_a_model_without_a_gradient_path():
    class Decay(Plugin):  # a penalty with a gradient of its own: the data would train nothing, silently
        def penalty(self, model):
            return sum(p.square().sum() for p in model.parameters())

    x, y = _data()
    model = nn.Sequential(nn.Linear(6, 3), _HeavisideLIF(3, is_output=True))
    with pytest.raises(ValueError, match="^the loss has no gradient to any trained parameter"):
        train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, batch_size=10, plugins=[Decay()])


def test_training_under_no_grad_says_so():
    x, y = _data()
    model = nn.Linear(6, 3)
    with torch.no_grad(), pytest.raises(ValueError, match=r"^the loss has no gradient: training ran with gradients "
                                                          r"disabled \(inside torch.no_grad\(\)"):
        train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, batch_size=10)


@pytest.fixture
def own_neurons(monkeypatch):
    """Neuron models registered by a test last for that test only."""
    monkeypatch.setattr(neurons, "_NEURONS", dict(neurons._NEURONS))


def test_the_command_line_gives_one_line_for_a_neuron_model_without_a_gradient_path(own_neurons, tmp_path, capsys):
    register_neuron("heaviside-test", lambda spec: spiking_mlp(spec, _HeavisideLIF))
    status = main(["train", "--model", "heaviside-test", "--dataset", "digits", "--tasks", "2", "--epochs", "1",
                   "--hidden", "16", "--num-steps", "2", "--quiet", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("metaspike: error: the loss has no gradient to any trained parameter")


def test_an_error_raised_in_a_users_module_names_the_module_file_and_line():
    # it was blamed on the data: "input samples of shape (6,) do not fit the model", naming no module, file or line
    x, y = _data()
    model = nn.Sequential(nn.Linear(6, 4), _Buggy(4), nn.Linear(4, 3))
    line = _line_of("return x * self.w  # the line the error names")
    with pytest.raises(ValueError, match=rf"^training data: the model raised RuntimeError in _Buggy.forward "
                                         rf"\(test_extensions.py line {line}\) on samples of shape \(6,\): The size "
                                         r"of tensor a \(4\) must match the size of tensor b \(5\)"):
        check_inputs(model, x, y, "training data")


def test_an_error_of_another_kind_in_a_users_module_is_one_line_too():
    x, _ = _data()
    line = _line_of("return x.flaten(1)")
    with pytest.raises(ValueError, match=rf"^input: the model raised AttributeError in _Typo.forward \(test_extensions"
                                         rf".py line {line}\) on samples of shape \(6,\): 'Tensor' object has no "
                                         r"attribute 'flaten'"):
        check_inputs(nn.Sequential(_Typo(), nn.Linear(6, 3)), x)


def test_samples_that_do_not_fit_the_first_layer_are_still_the_datas_fault():
    x, _ = _data(features=7)
    with pytest.raises(ValueError, match=r"^input samples of shape \(7,\) do not fit the model: mat1 and mat2 shapes "
                                         r"cannot be multiplied"):
        check_inputs(nn.Sequential(nn.Linear(6, 4), _Buggy(3)), x)
    images = torch.rand(5, 1, 2, 3)  # (metaspike's datasets give [N, 1, 28, 28]: a README example lacked the Flatten)
    with pytest.raises(ValueError, match=r"^input samples of shape \(1, 2, 3\) do not fit the model: mat1 and mat2 "
                                         r"shapes cannot be multiplied \(6x3 and 6x4\); nn.Linear takes flat inputs: "
                                         r"put an nn.Flatten\(\) before it$"):
        check_inputs(nn.Sequential(nn.Linear(6, 4), _Buggy(3)), images)
    assert check_inputs(nn.Sequential(nn.Flatten(), nn.Linear(6, 4)), images) is None
    with pytest.raises(ValueError, match=r"cannot be multiplied \(3x6 and 5x4\)$"):  # (flattened, of the wrong width)
        check_inputs(nn.Sequential(nn.Flatten(), nn.Linear(5, 4), _Buggy(3)), images)
    with pytest.raises(ValueError, match=r"cannot be multiplied \(6x3 and 6x4\)$"):  # (a sequence: step by step)
        check_inputs(nn.Sequential(nn.Linear(6, 4), _Buggy(3)), torch.rand(5, 2, 3))
    with pytest.raises(ValueError, match=r"\(12x3 and 4x4\); nn.Linear takes flat inputs"):  # (a convolution's maps)
        check_inputs(nn.Sequential(nn.Conv2d(1, 2, 1), nn.Linear(4, 4), _Buggy(3)), images)
    with pytest.raises(ValueError, match=r"^input is torch.float64 but the model's parameters are torch.float32; "
                                         r"convert the model \(model.to\(torch.float64\)\) or the data to one dtype$"):
        check_inputs(nn.Sequential(nn.Linear(6, 4), _Buggy(4)), x[:, :6].double())


class _PerLayer(Plugin):
    """A penalty per parameter, not summed: a user's slip."""

    def penalty(self, model):
        return torch.stack([p.square().sum() for p in model.parameters()])


class _Text(Plugin):
    def penalty(self, model):
        return "0.1"


@pytest.mark.parametrize("plugin, got", [(_PerLayer(), r"a tensor of shape \[2\]"), (_Text(), "a str")])
def test_a_penalty_that_is_not_one_number_names_the_plugin(plugin, got):
    # "Boolean value of Tensor with more than one value is ambiguous" from the loss check, after the loss had been
    # broadcast to a vector
    x, y = _data()
    model = nn.Linear(6, 3)
    with pytest.raises(ValueError, match=rf"^plugin {type(plugin).__name__}: its penalty returned {got}; penalty must "
                                         r"return a scalar tensor or a number \(None: no penalty\)$"):
        train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, batch_size=10, plugins=[plugin])


class _Diverging(Plugin):
    def __init__(self, value):
        self.value = value

    def penalty(self, model):
        return self.value


@pytest.mark.parametrize("value", [float("nan"), torch.tensor(float("inf"))])
def test_a_non_finite_penalty_names_the_plugin_not_the_learning_rate(value):
    """"loss became nan ...; lower the learning rate" where the data loss was finite and a plugin's penalty was not."""
    from metaspike.checks import TrainingDiverged

    x, y = _data()
    model = nn.Linear(6, 3)
    with pytest.raises(TrainingDiverged, match=r"^plugin _Diverging: its penalty returned (nan|inf) \(the data loss is "
                                               r"finite\)"):
        train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, batch_size=10,
                    plugins=[_Diverging(value)])


def test_a_penalty_with_a_gradient_is_checked_without_a_warning():
    """Reading the penalty as a number for the finiteness check warned from torch ("Converting a tensor with
    requires_grad=True to a scalar") in every run with a baseline, pointing into metaspike."""
    import warnings

    class L2(Plugin):
        def penalty(self, model):
            return 1e-4 * sum(p.square().sum() for p in model.parameters())

    x, y = _data()
    model = nn.Linear(6, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, batch_size=10, plugins=[L2()])


@pytest.mark.parametrize("penalty", [0.25, torch.tensor(0.25)])
def test_a_penalty_of_one_number_is_added_to_the_loss(penalty):
    class Constant(Plugin):
        def penalty(self, model):
            return penalty

    x, y = _data()

    def mean_loss(plugins):
        model = nn.Linear(6, 3)
        nn.init.zeros_(model.weight)
        nn.init.zeros_(model.bias)
        generator = torch.Generator().manual_seed(1)
        return train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), x, y, batch_size=10,
                           generator=generator, plugins=plugins)

    # zero weights and lr 0: every batch's loss is the same float32 log 3, and adding 0.25 rounds once, to within half
    # of float32's spacing between 1 and 2 (2**-24); the means of equal values (summed in float64) keep that
    assert mean_loss([Constant()]) - mean_loss([]) == pytest.approx(0.25, abs=2**-24)
