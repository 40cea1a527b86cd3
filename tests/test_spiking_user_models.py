"""Spiking models written as snnTorch's and Norse's tutorials write them, with metaspike's one-line calls."""

import warnings

import pytest
import torch
from torch import nn

import metaspike
from metaspike.snn import SpikingClassifier, surrogate

snn = pytest.importorskip("snntorch")


def test_norse_time_first_modules_are_refused_by_the_time_loop():
    norse = pytest.importorskip("norse.torch")
    cells = norse.SequentialState(nn.Linear(64, 32), norse.LIFCell(), nn.Linear(32, 10), norse.LICell())
    model = SpikingClassifier(cells, num_steps=4, encoder="direct", input_shape=(64,))
    x = torch.rand(6, 64) * 3
    with torch.no_grad():  # one step per call: each sample's output is its own
        torch.testing.assert_close(model(x), torch.cat([model(x[i:i + 1]) for i in range(6)]))
    time_first = norse.SequentialState(nn.Linear(64, 32), norse.LIF(), nn.Linear(32, 10), norse.LICell())
    with pytest.raises(ValueError, match="module '1' is Norse's LIF, which runs a whole time sequence per call; .* "
                                         "use LIFCell"):
        SpikingClassifier(time_first, num_steps=4, encoder="direct", input_shape=(64,))
    # the recurrent ones derive from Norse's SNNRecurrent, not SNN: accepted, they ran the batch as time (a sample's
    # logits depended on the others in its batch)
    for recurrent in (norse.LIFRecurrent(32, 32), norse.LSNNRecurrent(32, 32)):
        name = type(recurrent).__name__
        with pytest.raises(ValueError, match=f"module '1' is Norse's {name}, which runs a whole time sequence per "
                                             f"call; .* use {name}Cell"):
            SpikingClassifier(norse.SequentialState(nn.Linear(64, 32), recurrent, nn.Linear(32, 10), norse.LICell()),
                              num_steps=4, encoder="direct", input_shape=(64,))


def test_a_norse_lift_of_a_cell_is_refused_and_a_lift_of_a_layer_taken():
    """Lift runs its module over the input's first dimension as time: lifting a cell ran the batch as a sequence and
    passed its (output, state) on to the next layer, which failed inside torch ("must be Tensor, not tuple")."""
    norse = pytest.importorskip("norse.torch")
    lifted_cell = norse.SequentialState(nn.Linear(64, 30), norse.Lift(norse.LIFCell()), nn.Linear(30, 10),
                                        norse.LICell())
    with pytest.raises(ValueError, match=r"^network: module '1' is Norse's Lift of a LIFCell, which runs it over its "
                                         r"input's first dimension as time .* use the LIFCell without Lift$"):
        SpikingClassifier(metaspike.binarize(lifted_cell), num_steps=4)
    # (any state carried from row to row: a snnTorch neuron's made each sample's output depend on the batch)
    for lifted, named in [(snn.Leaky(beta=0.9, init_hidden=True), "Leaky"),
                          (norse.SequentialState(norse.LIFCell()), "SequentialState holding a LIFCell"),
                          (norse.CobaLIFCell(30, 30), "CobaLIFCell")]:  # (a cell built on no SNNCell: Norse's own test)
        with pytest.raises(ValueError, match=f"^network: module '1' is Norse's Lift of a {named}, which runs it"):
            SpikingClassifier(nn.Sequential(nn.Linear(64, 30), norse.Lift(lifted), nn.Linear(30, 10)), num_steps=4)
    lifted_layer = norse.SequentialState(norse.Lift(nn.Linear(64, 30)), norse.LIFCell(), nn.Linear(30, 10),
                                         norse.LICell())
    assert SpikingClassifier(metaspike.binarize(lifted_layer), num_steps=4)(torch.rand(4, 64)).shape == (4, 10)


class _OwnTimeLoop(nn.Module):
    """snnTorch's tutorials' network: its own loop over 10 steps, returning spikes and membranes stacked over time."""

    def __init__(self):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(64, 30), snn.Leaky(beta=0.9)
        self.fc2, self.lif2 = nn.Linear(30, 10), snn.Leaky(beta=0.9)

    def forward(self, x):
        mem1, mem2, spikes, membranes = self.lif1.init_leaky(), self.lif2.init_leaky(), [], []
        for _ in range(10):
            spk1, mem1 = self.lif1(self.fc1(x), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spikes.append(spk2)
            membranes.append(mem2)
        return torch.stack(spikes), torch.stack(membranes)


def test_a_network_with_its_own_time_loop_is_named_in_the_classifiers_shape_error_or_warning():
    """Its records [10, B, 10] read out as logits: a batch of 4 was "the batch must come first" without the cause, and
    a batch of 10 gave [10, 10, 10] logits without a word (the loss failed later inside torch)."""
    model = SpikingClassifier(metaspike.binarize(_OwnTimeLoop()), num_steps=4)
    cause = r"if the network runs its own time loop and stacks its records over time \(\[steps, batch, \.\.\.\]\)"
    with pytest.raises(ValueError, match=r"read out to shape \(10, 4, 10\) for a batch of 4: the batch must come "
                                         rf"first, .*; {cause}"):
        model(torch.rand(4, 64))
    with pytest.warns(UserWarning, match=rf"read out to shape \(10, 10, 10\) for a batch of 10, not \[batch, "
                                         rf"classes\]; {cause}"):
        model(torch.rand(10, 64))
    per_position = SpikingClassifier(nn.Conv2d(1, 1, 3, padding=1), num_steps=2, encoder="direct",
                                     input_shape=(1, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (one sample's [1, 1, 8, 8] output is no stack of steps)
        assert per_position(torch.randn(1, 1, 8, 8)).shape == (1, 1, 8, 8)


def test_spikes_encoded_again_get_that_warning_once_and_no_other():
    """The own-loop warning came on the second call, after the encoded-again one, for the same [T, B, F] input."""
    model = SpikingClassifier(nn.Sequential(nn.Linear(16, 5)), num_steps=3)
    spikes = (torch.rand(8, 8, 16) > 0.5).float()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            model(spikes)
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert "input (8, 8, 16) gave logits (8, 8, 5), not [batch, classes]" in str(caught[0].message)


@pytest.mark.parametrize("kind", ["sign", "bimu"])
def test_an_optimizer_step_inside_binarized_once_is_seen_by_the_next_forward_pass(kind):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3, bias=False))
    net = metaspike.binarize(net, scale=None) if kind == "sign" else metaspike.bayesianize(net, "bimu", scale=None)
    optimizer = torch.optim.SGD(net.parameters(), lr=10.0)
    x = torch.randn(8, 4)
    with metaspike.binarized_once():
        before = net[0].weight.detach().clone()
        assert torch.equal(net[0].weight, before)  # taken once in the block (BiMU: one weight sample)
        net(x).sum().backward()
        optimizer.step()
        inside = net[0].weight.detach().clone()
    assert not torch.equal(inside, before)  # the step's new weights (BiMU: a sample of the new λ), not the old ones
    if kind == "sign":
        assert torch.equal(inside, net[0].weight)  # the signs the step made


@pytest.mark.parametrize("kind", ["sign", "bimu"])
def test_an_evaluation_under_no_grad_inside_binarized_once_leaves_the_next_step_its_gradients(kind):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 4))
    net = metaspike.binarize(net) if kind == "sign" else metaspike.bayesianize(net, "bimu")
    synapses = [p for name, p in net.named_parameters() if "original" in name]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(16, 20), torch.randint(0, 4, (16,))
    with metaspike.binarized_once():
        for _ in range(2):
            with torch.no_grad():  # an evaluation between training steps
                net(x)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            assert all(p.grad is not None for p in synapses)
            optimizer.step()


def test_the_triangular_surrogate_is_a_triangle_around_the_threshold():
    x = torch.tensor([-1.5, -0.5, -0.25, 0.0, 0.25, 0.5, 1.5], requires_grad=True)
    spikes = surrogate("triangular")(x)
    spikes.sum().backward()
    assert torch.equal(spikes, (x > 0).float())
    assert torch.equal(x.grad, torch.tensor([0.0, 0.5, 0.75, 1.0, 0.75, 0.5, 0.0]))


def test_the_sigmoid_surrogate_is_the_sigmoids_slope_and_finite_far_below_the_threshold():
    """snnTorch 1.0's sigmoid surrogate squared an overflowing exp: NaN below x = -3.5, a NaN first step."""
    x = torch.tensor([-1e4, -5.0, -3.5, -0.1, 0.0, 0.1, 5.0, 1e4], dtype=torch.float32, requires_grad=True)
    spikes = surrogate("sigmoid")(x)
    spikes.sum().backward()
    assert torch.equal(spikes, (x > 0).float())
    exact = torch.func.grad(lambda v: torch.sigmoid(25 * v).sum())(x.detach().double())
    # float32's sigmoid s is within 2 ulps (at most 2**-23 absolute, s < 1), which 1 - s keeps as an absolute error
    # (relative to 1 - s it grows where s nears 1); times k = 25: 25 * 2**-22 absolute, plus a few product roundings
    torch.testing.assert_close(x.grad.double(), exact, rtol=2**-20, atol=25 * 2**-22)
    assert x.grad[4] == 6.25 and bool(torch.isfinite(x.grad).all())


def test_param_groups_of_a_float_spiking_model_consolidate_its_layers_weights_not_its_neurons():
    beta = torch.full((4, 1, 1), 0.9)  # a per-channel decay, as snnTorch's conv tutorials shape it
    net = nn.Sequential(nn.Conv2d(1, 4, 3), snn.Leaky(beta=beta, learn_beta=True, init_hidden=True), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 10))
    groups = metaspike.param_groups(net, [5.0, 30.0])  # one meta per weight layer
    consolidated = [(g["meta"], tuple(g["params"][0].shape)) for g in groups if g["consolidate"]]
    assert consolidated == [(5.0, (4, 1, 3, 3)), (30.0, (10, 144))]
    assert any(p is net[1].beta for p in groups[-1]["params"]) and not groups[-1]["consolidate"]


@pytest.mark.parametrize(("encoder", "x", "message"), [
    ("rate", torch.tensor([[255.0, 0.5]]), r"intensities in \[0, 1\] for the rate encoder, got values in \[0.5, 255\]"),
    ("latency", torch.tensor([[-1.0, 0.5]]), r"intensities in \[0, 1\] for the latency encoder"),
    ("rate", torch.tensor([[200, 3]], dtype=torch.uint8), r"floating-point tensor .* got torch.uint8 \(scale pixels"),
    ("direct", torch.tensor([[200, 3]], dtype=torch.uint8), "floating-point tensor for the direct encoder"),
    ("direct", torch.tensor([[float("nan"), 3.0]]), "NaN or infinite values"),
])
def test_encoders_refuse_what_they_cannot_encode(encoder, x, message):
    model = SpikingClassifier(nn.Sequential(nn.Linear(2, 2)), num_steps=2, encoder=encoder, input_shape=(2,))
    with pytest.raises(ValueError, match=message):
        model(x)


def test_norse_cells_in_a_plain_sequential_are_refused_with_the_container_that_threads_their_state():
    norse = pytest.importorskip("norse.torch")
    cells = nn.Sequential(nn.Linear(64, 32), norse.LIFCell(), nn.Linear(32, 10), norse.LICell())
    with pytest.raises(ValueError, match="the network is an nn.Sequential holding Norse cells.*SequentialState"):
        SpikingClassifier(cells, num_steps=4, encoder="direct", input_shape=(64,))
    recurrent = nn.Sequential(norse.LIFRecurrentCell(64, 32), nn.Linear(32, 10))  # (an SNNRecurrentCell: torch failed)
    with pytest.raises(ValueError, match="the network is an nn.Sequential holding Norse cells.*SequentialState"):
        SpikingClassifier(recurrent, num_steps=4, encoder="direct", input_shape=(64,))
