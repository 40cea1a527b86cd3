"""The fused batch-1 Bayesian step (metaspike.bayesian.fused_step) against the ordinary step, and what it refuses.

The equality tests run both steps in float64 from one state with one seed (so the same weight samples): they
compute the same formulas with sums in other orders, so they differ by a few units of float64 rounding (2^-52)
times the step's condition. 1e-9 leaves that several orders of magnitude of room, while a wrong term of a gradient
or an update (a missing factor, a sum over the wrong axis) moves the weights by far more than 1e-9.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnn import BayesianLinear, BinaryBayesianLinear, MagnitudeGate
from metaspike import ChainedOptimizer
from metaspike.bayesian import MESU, BiMU, bayesianize, bimu_parameters, mesu_param_groups, plain_parameters
from metaspike.bayesian.functional import update_scalars
from metaspike.bayesian.fused_step import Activation, FusedTrainingStep, register_fused_activation, why_not_fused
from metaspike.training import TrainingDiverged, _fused_step, classification_loss, train_epoch

TOLERANCE = 1e-9


class _Shift(nn.Module):
    """A fixed, parameter-free preprocessing module (runs before the first Bayesian layer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.25) * 2.0


def _bimu_net(samples: int | None = 3) -> tuple[nn.Module, torch.optim.Optimizer]:
    net = nn.Sequential(nn.Flatten(), _Shift(), BinaryBayesianLinear(12, 9, samples=samples), nn.LayerNorm(
        9, elementwise_affine=False), MagnitudeGate(), BinaryBayesianLinear(9, 4, samples=samples),
        nn.LayerNorm(4, elementwise_affine=False))
    net.double()
    return net, BiMU(bimu_parameters(net), lr=2.0, lr_max=0.05, likelihood_multiplier=30.0, kl_multiplier=2.0, N=50)


def _mesu_net(samples: int | None = 4) -> tuple[nn.Module, torch.optim.Optimizer]:
    net = nn.Sequential(nn.Flatten(), BayesianLinear(12, 9, samples=samples), nn.ReLU(),
                        BayesianLinear(9, 4, samples=samples)).double()
    return net, MESU(mesu_param_groups(net), lr_mu=3.0, lr_sigma=2.0, sigma_prior=0.2, N=1000, clamp_grad=0.5)


def _user_net(kind: str, temperature: float = 1.0) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A user's float model made Bayesian by bayesianize (one weight sample per forward pass)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 7, bias=False), nn.ReLU(), nn.Identity(), nn.Linear(7, 4, bias=False))
    bayesianize(net, kind, scale=None, temperature=temperature)
    net.double()
    opt = BiMU(bimu_parameters(net), likelihood_multiplier=20.0) if kind == "bimu" else MESU(mesu_param_groups(net))
    return net, opt


def _ordinary_steps(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    losses = []
    for xi, yi in zip(x, y):
        opt.zero_grad(set_to_none=True)
        loss = classification_loss(net(xi), yi)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _assert_same_steps(build, steps: int = 6) -> None:
    torch.manual_seed(0)
    net, opt = build()
    twin = copy.deepcopy(net)
    twin_opt = type(opt)(bimu_parameters(twin) if isinstance(opt, BiMU) else mesu_param_groups(twin),
                         **opt.defaults)
    x = torch.rand(steps, 1, 3, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (steps, 1))
    torch.manual_seed(1)
    expected = _ordinary_steps(net, opt, x, y)
    torch.manual_seed(1)
    fused = FusedTrainingStep(twin, twin_opt)
    got = [fused(xi, yi).item() for xi, yi in zip(x, y)]
    assert got == pytest.approx(expected, abs=TOLERANCE)
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=TOLERANCE, msg=name)
        assert float(twin_opt.state[q]["step"]) == float(opt.state[p]["step"]) == steps
        assert q.grad is None


def test_bimu_network_with_gate_and_layernorm_steps_as_the_ordinary_step():
    _assert_same_steps(_bimu_net)


def test_mesu_network_with_clipped_gradients_steps_as_the_ordinary_step():
    _assert_same_steps(_mesu_net)


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_bayesianized_user_model_steps_as_the_ordinary_step(kind):
    # one weight sample per forward pass (no `samples`), BiMU at a temperature with the tanh form
    _assert_same_steps(lambda: _user_net(kind, temperature=0.7) if kind == "bimu" else _user_net(kind))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_16_bit_network_trains_at_batch_size_1_as_at_2_with_settings_past_its_range(dtype):
    """The fused step (batch size 1) made its update settings tensors of the weights' dtype: a likelihood multiplier
    of 70,000 was infinite in float16, and every λ NaN after the first step, where the ordinary step (batch size 2,
    float32 inside) trained. The settings are float32 at least now, exactly what the optimizer's update takes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), BinaryBayesianLinear(12, 9), nn.ReLU(), BinaryBayesianLinear(9, 4)).to(dtype)
    settings = dict(lr=1.0, lr_max=1.0, likelihood_multiplier=70_000.0, kl_multiplier=1.0, N=60_000)
    x, y = torch.rand(8, 1, 3, 4, dtype=dtype), torch.randint(0, 4, (8,))
    for batch_size in (2, 1):
        model = copy.deepcopy(net)
        optimizer = BiMU(bimu_parameters(model), **settings)
        train_epoch(model, optimizer, x, y, batch_size=batch_size)
        assert all(bool(torch.isfinite(p).all()) and not torch.equal(p, q)
                   for p, q in zip(model.parameters(), net.parameters()))
    step = FusedTrainingStep(model, optimizer)
    scalars = update_scalars("bimu", optimizer.param_groups[0])
    assert all(torch.equal(values, torch.tensor(list(scalars.values()), dtype=torch.float32))
               for values in step._scalar_tensors())


def test_a_step_without_data_changes_nothing():
    torch.manual_seed(0)
    net, opt = _user_net("mesu")
    before = [p.detach().clone() for p in net.parameters()]
    step = FusedTrainingStep(net, opt)
    step(torch.zeros(1, 12, dtype=torch.float64), torch.tensor([1]))  # zero input: every gradient is zero
    for p, q in zip(before, net.parameters()):
        assert torch.equal(p, q)
    assert all("step" not in opt.state[p] for p in net.parameters())  # (as the optimizer makes no state then)


def test_a_non_finite_loss_leaves_the_weights_and_train_epoch_raises():
    torch.manual_seed(0)
    net, opt = _user_net("mesu")
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.full((1, 12), float("inf"), dtype=torch.float64)  # inf times weights of both signs: nan
    loss = FusedTrainingStep(net, opt)(x, torch.tensor([0]))
    assert not torch.isfinite(loss)
    for p, q in zip(before, net.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(TrainingDiverged, match="loss became nan at batch 1 while every parameter was finite"):
        train_epoch(net, opt, x, torch.tensor([0]), batch_size=1)


@pytest.mark.usefixtures("working_compiler")  # (asserts compiled behaviour)
def test_train_epoch_takes_the_fused_step_only_where_it_computes_the_same():
    net, opt = _bimu_net()
    assert isinstance(_fused_step(net, opt, 1, None, (), (0, 1)), FusedTrainingStep)
    assert _fused_step(net, opt, 2, None, (), (0, 1)) is None  # batch size 2
    assert _fused_step(net, opt, 1, [0, 1], (), (0, 1)) is None  # a task's classes mask the logits
    assert _fused_step(net, opt, 1, None, (), (0, 2)) is None  # a slice of each batch per process
    assert _fused_step(net, opt, 1, None, [object()], (0, 1)) is None  # plugins add penalties


def test_train_epoch_at_batch_size_1_equals_the_ordinary_loop():
    torch.manual_seed(0)
    net, opt = _bimu_net()
    twin = copy.deepcopy(net)
    twin_opt = BiMU(bimu_parameters(twin), **opt.defaults)
    x, y = torch.rand(5, 1, 3, 4, dtype=torch.float64), torch.randint(0, 4, (5,))
    order = torch.randperm(5, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    expected = _ordinary_steps(net, opt, x[order].unsqueeze(1), y[order].unsqueeze(1))
    torch.manual_seed(1)
    mean = train_epoch(twin, twin_opt, x, y, batch_size=1, generator=torch.Generator().manual_seed(3))
    assert mean == pytest.approx(sum(expected) / 5, abs=TOLERANCE)
    for p, q in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=TOLERANCE)


def _gain_net():
    return bayesianize(nn.Sequential(nn.Linear(4, 3, bias=False)), "bimu")  # BiMU's default: a learned gain


@pytest.mark.parametrize("build, reason", [
    (lambda: (lambda n: (n, MESU(mesu_param_groups(n))))(bayesianize(nn.Sequential(nn.Linear(4, 3)), "mesu")),
     "bias or an output gain"),
    (lambda: (lambda n: (n, BiMU(bimu_parameters(n))))(_gain_net()), "bias or an output gain"),
    (lambda: (lambda n: (n, BiMU(bimu_parameters(n))))(bayesianize(nn.Sequential(nn.Conv2d(1, 2, 3, bias=False)),
                                                                   "bimu", scale=None)), "Linear layers only"),
    (lambda: (lambda n: (n, BiMU(bimu_parameters(n))))(bayesianize(
        nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False)), "bimu",
        scale=None)), "a BatchNorm1d between the Bayesian layers"),
    (lambda: (lambda n: (n, torch.optim.SGD(n.parameters(), lr=0.1)))(_user_net("bimu")[0]), "not metaspike's"),
    (lambda: (lambda n: (n, ChainedOptimizer(BiMU(bimu_parameters(n)), torch.optim.SGD(plain_parameters(n), lr=0.1))))(
        _gain_net()), "a ChainedOptimizer"),
    (lambda: (lambda n: (n.eval(), BiMU(bimu_parameters(n))))(_user_net("bimu")[0]), "evaluation mode"),
    (lambda: (lambda n: (n, BiMU(bimu_parameters(n)[:1])))(_user_net("bimu")[0]), "not exactly the model's"),
    (lambda: (lambda n: (nn.Sequential(n, nn.Linear(4, 2)), BiMU(bimu_parameters(n))))(_user_net("bimu")[0]),
     "a Linear between"),
    (lambda: (lambda n: (n, BiMU(bimu_parameters(n))))(nn.Sequential(
        BinaryBayesianLinear(4, 3, samples=2), BinaryBayesianLinear(3, 2, samples=3))), "different numbers"),
    (lambda: (lambda n: (n, BiMU(bimu_parameters(n))))(_frozen(_user_net("bimu")[0])), "frozen"),
    (lambda: (nn.ModuleList([nn.Linear(2, 2)]), BiMU([nn.Parameter(torch.zeros(2))])), "not an nn.Sequential"),
])
def test_what_cannot_be_fused_is_named(build, reason):
    net, opt = build()
    assert reason in why_not_fused(net, opt)
    with pytest.raises(ValueError, match="cannot take a fused step"):
        FusedTrainingStep(net, opt)


def _frozen(net: nn.Module) -> nn.Module:
    next(net.parameters()).requires_grad_(False)
    return net


def test_hooks_on_the_optimizer_stop_the_fused_step():
    net, opt = _user_net("bimu")
    assert why_not_fused(net, opt) is None
    handle = opt.register_step_post_hook(lambda *args: None)
    assert why_not_fused(net, opt) == "the optimizer has step hooks"
    handle.remove()


def test_bad_input_is_one_line():
    net, opt = _user_net("mesu")
    step = FusedTrainingStep(net, opt)
    with pytest.raises(ValueError, match="batch of one sample"):
        step(torch.zeros(2, 12, dtype=torch.float64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="target 4 is not a class of the model's 4 outputs"):
        step(torch.zeros(1, 12, dtype=torch.float64), torch.tensor([4]))
    with pytest.raises(ValueError, match="int64 tensor of shape"):
        step(torch.zeros(1, 12, dtype=torch.float64), torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"takes a \(1, 12\) torch.float64 tensor on cpu, got \(1, 11\)"):
        step(torch.zeros(1, 11, dtype=torch.float64), torch.tensor([0]))


def test_register_fused_activation_checks_its_arguments():
    with pytest.raises(ValueError, match="module_type must be an nn.Module class"):
        register_fused_activation(int, lambda module: Activation())
    with pytest.raises(ValueError, match="describe must be callable"):
        register_fused_activation(nn.Tanh, "tanh")


class _Quarter(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight / 4


class _OwnLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / 4


def _hooked_model():
    net, opt = _user_net("mesu")
    net.register_forward_hook(lambda module, args, out: out / 4)
    return net, opt


def _nested_hook():
    net, opt = _user_net("mesu")
    outer = nn.Sequential(net)
    net.register_forward_pre_hook(lambda module, args: None)
    return outer, opt


def _tensor_hook():
    net, opt = _user_net("mesu")
    net[1].parametrizations.weight.original.register_hook(lambda grad: grad * 0)
    return net, opt


def _own_forward():
    net = bayesianize(nn.Sequential(_OwnLinear(12, 4, bias=False)), "mesu", layer_types=[_OwnLinear])
    return net, MESU(mesu_param_groups(net))


def _second_parametrization():
    net, opt = _user_net("bimu")
    torch.nn.utils.parametrize.register_parametrization(net[1], "weight", _Quarter())
    return net, opt


def _narrow_layernorm():
    net = nn.Sequential(BayesianLinear(12, 7), nn.LayerNorm(5, elementwise_affine=False), BayesianLinear(7, 4))
    return net, MESU(mesu_param_groups(net))


def _step_replaced():
    net, opt = _user_net("bimu")
    opt.step = lambda closure=None: BiMU.step(opt, closure)  # (not a learning-rate scheduler's wrapper)
    return net, opt


@pytest.mark.parametrize("build, reason", [
    (_hooked_model, "a Sequential has hooks"),
    (_nested_hook, "a Sequential has hooks"),
    (_tensor_hook, "a synapse tensor has gradient hooks"),
    (_own_forward, "_OwnLinear with its own forward"),
    (_second_parametrization, "another parametrization beside its synapse"),
    (_narrow_layernorm, "a LayerNorm over (5,) after 7 features"),
    (_step_replaced, "step is replaced on the optimizer itself"),
])
def test_what_changes_the_ordinary_step_is_refused(build, reason):
    net, opt = build()
    assert reason in why_not_fused(net, opt)


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_a_learning_rate_scheduler_on_the_optimizer_keeps_the_fused_step(kind, recwarn):
    """A torch scheduler wraps optimizer.step; the fused step reads each step's lr from the groups as the ordinary
    step does, and records the step the scheduler checks for (no call-order warning)."""
    nets = []
    for fused in (False, True):
        torch.manual_seed(0)
        net, opt = _user_net(kind)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        if fused:
            assert why_not_fused(net, opt) is None
        step = FusedTrainingStep(net, opt) if fused else lambda xi, yi: _ordinary_steps(net, opt, [xi], [yi])
        x, y = torch.rand(3, 1, 12, dtype=torch.float64), torch.tensor([[1], [3], [0]])
        torch.manual_seed(1)
        for xi, yi in zip(x, y):
            step(xi, yi)
            scheduler.step()
        nets.append(net)
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=TOLERANCE)
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]


def _changed_between_steps(change, build) -> tuple[nn.Module, nn.Module]:
    """Two steps of the ordinary loop and of the fused step, ``change(net, opt)`` applied to both in between."""
    nets = []
    for fused in (False, True):
        torch.manual_seed(0)
        net, opt = build()
        x, y = torch.rand(2, 12, dtype=torch.float64), torch.tensor([[1], [3]])
        torch.manual_seed(1)
        step = FusedTrainingStep(net, opt) if fused else lambda xi, yi: _ordinary_steps(net, opt, [xi], [yi])
        step(x[:1], y[0])
        change(net, opt)
        step(x[1:], y[1])
        nets.append(net)
    return nets[0], nets[1]


def _load_other_settings(net, opt):
    state = opt.state_dict()
    state["param_groups"][0]["lr_mu"] = 0.25
    opt.load_state_dict(state)


def _other_samples(net, opt):
    net[1].samples = net[3].samples = 2  # (the bnn layers' number of weight samples)


@pytest.mark.parametrize("change, build", [
    (_load_other_settings, lambda: _user_net("mesu")),  # new group dicts: their settings are the ones used
    (lambda net, opt: opt.param_groups[0].update(lr_sigma=0.5, clamp_grad=0.3), lambda: _user_net("mesu")),
    (_other_samples, _mesu_net),  # the step draws the new number of weight samples
])
def test_changes_between_steps_are_taken_into_account(change, build):
    ordinary, fused = _changed_between_steps(change, build)
    for p, q in zip(ordinary.parameters(), fused.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("change, reason", [
    (lambda net, opt: net[4].eval(), "evaluation mode"),
    (lambda net, opt: net[1].parametrizations.weight.original.requires_grad_(False), "frozen"),
    (lambda net, opt: net[2].register_forward_hook(lambda *args: None), "a ReLU has hooks"),
    (lambda net, opt: opt.register_step_pre_hook(lambda *args: None), "step hooks"),
    (lambda net, opt: net.__setitem__(2, nn.Tanh()), "a Tanh between"),
    (lambda net, opt: net[4].float(), "different dtypes or devices"),
    # the ordinary step would use these, the fused one computed without them
    (lambda net, opt: setattr(net[4], "bias", nn.Parameter(torch.ones(4, dtype=torch.float64))), "with a bias"),
    (lambda net, opt: setattr(net[2], "forward", lambda h: 100 * torch.tanh(h)), "forward was replaced on the module"),
    (lambda net, opt: setattr(net[1], "forward", lambda h: h[:, :7]), "with its own forward"),
    (lambda net, opt: setattr(net[2], "__class__", type("Gate", (nn.ReLU,), {})), "a Gate between"),
    # a tensor of a group swapped in place (same count): the ordinary step would no longer update the model's
    (lambda net, opt: opt.param_groups[0]["params"].__setitem__(0, nn.Parameter(torch.zeros(1))),
     "the optimizer's tensors are not exactly the model's synapse tensors"),
])
def test_changes_that_leave_no_fused_step_are_refused_at_the_next_step(change, reason):
    net, opt = _user_net("mesu")
    step = FusedTrainingStep(net, opt)
    x = torch.rand(1, 12, dtype=torch.float64)
    step(x, torch.tensor([1]))
    change(net, opt)
    with pytest.raises(ValueError, match=reason):
        step(x, torch.tensor([1]))


@pytest.mark.usefixtures("working_compiler")  # (asserts compiled behaviour)
def test_input_of_another_dtype_is_one_line_and_leaves_the_step_compiled():
    net, opt = _user_net("mesu")
    step = FusedTrainingStep(net, opt)
    with pytest.raises(ValueError, match="takes a \\(1, 12\\) torch.float64 tensor on cpu, got \\(1, 12\\) torch.float32"):
        step(torch.rand(1, 12), torch.tensor([1]))
    with pytest.raises(ValueError, match="int64 tensor"):
        step(torch.rand(1, 12, dtype=torch.float64), torch.tensor([1], dtype=torch.int32))
    from metaspike.bayesian.fused_step import _compiled_fused_step

    assert not _compiled_fused_step.broken


@pytest.mark.usefixtures("working_compiler")  # (asserts compiled behaviour)
def test_rows_of_a_dataset_at_any_offset_share_one_compiled_variant():
    # train_epoch passes the rows x[i:i+1], views at offsets i·width into the dataset: the compiled step must not
    # specialise on them (views and plain tensors, offsets 0 and 1 and one equal to a size each made a variant, and
    # a few networks in one process reached torch's limit of variants)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # (the variants earlier tests of the process compiled: past torch's limit, a call runs eager)
    net = nn.Sequential(nn.Linear(5, 11, bias=False), nn.ReLU(), nn.Linear(11, 2, bias=False))  # (a plan of its own)
    bayesianize(net, "bimu", scale=None)
    step = FusedTrainingStep(net, BiMU(bimu_parameters(net)))
    x, y = torch.randn(13, 5), torch.randint(0, 2, (13,))
    compiled_before = counters["stats"]["unique_graphs"]
    for i in (0, 1, 2, 11, 5):  # offsets 0, 5, 10, 55 (= 5·11) and 25
        step(x[i:i + 1], y[i:i + 1])
    step(x[3:4].clone(), y[3:4].clone())  # and a tensor of its own
    assert counters["stats"]["unique_graphs"] - compiled_before == 1


def test_train_rows_checks_every_label_before_the_first_step_and_equals_calls_per_row():
    net, opt = _user_net("bimu")
    twin = copy.deepcopy(net)
    twin_opt = BiMU(bimu_parameters(twin), **opt.defaults)
    x, y = torch.rand(5, 12, dtype=torch.float64), torch.tensor([0, 3, 1, 2, 1])
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match="target 4 is not a class of the model's 4 outputs"):
        FusedTrainingStep(net, opt).train_rows(x, torch.tensor([0, 3, 1, 4, 1]), range(5))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # (refused before any step)
    torch.manual_seed(5)
    losses = []
    FusedTrainingStep(net, opt).train_rows(x, y, [4, 0, 2], after_step=losses.append)
    torch.manual_seed(5)
    step = FusedTrainingStep(twin, twin_opt)
    assert [float(v) for v in losses] == [float(step(x[i : i + 1], y[i : i + 1])) for i in (4, 0, 2)]
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), twin.parameters()))


def test_a_samples_attribute_on_a_plain_linear_layer_draws_one_sample_as_its_forward_does():
    net, opt = _user_net("bimu")
    net[1].samples = 3  # (nn.Linear's forward ignores it)
    assert FusedTrainingStep(net, opt)._analysis.plan.samples == 1


def test_a_registered_activation_must_describe_itself_as_a_frozen_activation():
    class Doubling(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    register_fused_activation(Doubling, lambda module: "doubling")
    net = bayesianize(nn.Sequential(nn.Linear(3, 3, bias=False), Doubling(), nn.Linear(3, 2, bias=False)), "mesu")
    opt = MESU(mesu_param_groups(net))
    assert why_not_fused(net, opt) == "doubling"
    register_fused_activation(Doubling, lambda module: object(), replace=True)
    assert "not a frozen dataclass subclassing Activation" in why_not_fused(net, opt)


def test_a_fused_description_is_replaced_only_when_asked():
    """register_fused_activation(nn.ReLU, ...) replaced metaspike's own for every fused step of the process, without a
    word: a plain ReLU network then trained another function than autograd's."""
    from metaspike.bayesian import fused_step

    ours = fused_step._ACTIVATIONS[nn.ReLU]
    with pytest.raises(ValueError, match=r"^ReLU already has a fused description \(.*\), which every fused step of the "
                                         r"process follows: pass replace=True to change it$"):
        register_fused_activation(nn.ReLU, lambda module: Activation())
    assert fused_step._ACTIVATIONS[nn.ReLU] is ours
    register_fused_activation(nn.ReLU, ours)  # (the same description again: nothing changes)
    assert fused_step._ACTIVATIONS[nn.ReLU] is ours


@pytest.mark.usefixtures("working_compiler")  # (asserts compiled behaviour)
def test_a_fused_step_that_ran_uncompiled_gives_way_to_the_autograd_step(monkeypatch):
    """Past torch's limit of compiled variants (a sweep over nine network shapes in one process) or without a working
    compiler, train_epoch kept the fused step, which eagerly took 4.4 ms a sample where autograd's took 1.2 ms."""
    from metaspike import training
    from metaspike.bayesian import BiMU, bayesianize, bimu_parameters, fused_step

    net = bayesianize(torch.nn.Sequential(torch.nn.Linear(6, 3, bias=False)), "bimu", scale=None)
    optimizer = BiMU(bimu_parameters(net))
    monkeypatch.setattr(fused_step, "_EAGER_PLANS", set())
    monkeypatch.setattr(fused_step._compiled_fused_step, "broken", False)
    assert training._fused_step(net, optimizer, 1, None, [], (0, 1)) is not None
    monkeypatch.setattr(fused_step._compiled_fused_step, "broken", True)  # every call runs eagerly
    assert training._fused_step(net, optimizer, 1, None, [], (0, 1)) is None
    step = fused_step.FusedTrainingStep(net, optimizer)
    step.train_rows(torch.randn(2, 6), torch.tensor([0, 2]), [0, 1])
    monkeypatch.setattr(fused_step._compiled_fused_step, "broken", False)  # (the compiler works, the limit is met)
    assert step._analysis.plan in fused_step._EAGER_PLANS
    assert training._fused_step(net, optimizer, 1, None, [], (0, 1)) is None


@pytest.mark.parametrize("switch_off", [lambda: torch._dynamo.config.patch(disable=True),  # TORCH_COMPILE_DISABLE=1
                                        lambda: torch.compiler.set_stance("force_eager")])
def test_with_compiling_switched_off_a_step_is_one_step_and_runs_eagerly(switch_off, monkeypatch):
    """Under TORCH_COMPILE_DISABLE=1 one call of the step applied its update twice (the step count 2), and
    runs_eagerly() said False under TORCHDYNAMO_DISABLE=1, so train_epoch took the slower eager fused step."""
    from metaspike.bayesian import fused_step

    monkeypatch.setattr(fused_step, "_EAGER_PLANS", set())
    with switch_off():
        _assert_same_steps(_bimu_net)  # (and the ordinary BiMU steps, eager too, count one step a call)
        net, opt = _user_net("mesu")
        step = FusedTrainingStep(net, opt)
        assert step.runs_eagerly() and _fused_step(net, opt, 1, None, (), (0, 1)) is None
        step(torch.rand(1, 12, dtype=torch.float64), torch.tensor([1]))
        assert fused_step._compiled_fused_step.last_call_eager
    assert not fused_step._EAGER_PLANS  # (switched on again, the step compiles: not past the limit of variants)


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_train_rows_reads_a_learning_rate_set_in_after_step_at_the_next_step(kind):
    net, opt = _user_net(kind)
    twin = copy.deepcopy(net)
    twin_opt = type(opt)(bimu_parameters(twin) if kind == "bimu" else mesu_param_groups(twin), **opt.defaults)
    x, y = torch.rand(5, 12, dtype=torch.float64), torch.tensor([0, 3, 1, 2, 1])
    after_first = []

    def stop_learning(loss: torch.Tensor) -> None:  # (a per-sample schedule that ends at the first sample)
        if not after_first:
            after_first.extend(p.detach().clone() for p in net.parameters())
        opt.param_groups[0]["lr"] = 0.0

    torch.manual_seed(5)
    FusedTrainingStep(net, opt).train_rows(x, y, range(5), after_step=stop_learning)
    torch.manual_seed(5)
    step = FusedTrainingStep(twin, twin_opt)
    for i in range(5):  # (each call reads the settings as they are)
        step(x[i : i + 1], y[i : i + 1])
        twin_opt.param_groups[0]["lr"] = 0.0
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), twin.parameters()))
    if kind == "mesu":  # lr multiplies both of MESU's updates: at lr = 0 each later step adds exactly 0
        assert all(torch.equal(a, b) for a, b in zip(after_first, net.parameters()))
