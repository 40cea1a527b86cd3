"""EWC, SI and random consolidation: hand-checkable numbers and a short real-data check."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

import metaspike
from bnn import MLP
from metaspike.app.reproduce.continual import Method, run_method
from metaspike.app.reproduce.experiments import CPU_PERMUTED
from metaspike.continual.baselines import (
    EWC,
    EWCOnline,
    RandomConsolidation,
    SynapticIntelligence,
    fisher_diagonal,
    fisher_sample_indices,
)
from metaspike.training import train_epoch


def _tiny() -> torch.nn.Linear:
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    return model


def test_fisher_is_mean_of_squared_per_sample_gradients():
    model = _tiny()
    x, y = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 1, 0])
    expected = torch.zeros(2, 2)
    for i in range(4):  # the first 4 samples
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        expected += model.weight.grad.square() / 4
    model.zero_grad(set_to_none=True)
    (fisher,) = fisher_diagonal(model, x, y, samples=4)
    assert torch.allclose(fisher, expected)
    assert model.weight.grad is None  # the estimate leaves the model's gradients alone


def test_fisher_of_data_stored_by_class_weighs_every_class_and_labels_that_do_not_fit_are_one_line():
    """It takes the first samples (the authors' code): of data stored by class (mnist5k's training split), one class.
    There it takes evenly spaced ones instead. Labels of another count, dtype or range are one line, not torch's error
    from inside the loss after some samples."""
    model, x = nn.Linear(4, 3), torch.rand(300, 4)
    by_class = torch.arange(300) // 100
    spread = fisher_sample_indices(by_class, 30)
    assert sorted(set(by_class[spread].tolist())) == [0, 1, 2] and len(spread) == 30
    expected = fisher_diagonal(model, x[spread], by_class[spread], samples=30)
    assert all(torch.equal(a, b) for a, b in zip(fisher_diagonal(model, x, by_class, samples=30), expected))
    mixed = by_class[torch.randperm(300, generator=torch.Generator().manual_seed(0))]
    assert fisher_sample_indices(mixed, 30).tolist() == list(range(30))  # (the first, as before)
    for labels, message in ((by_class.float(), "must be int64 class indices"), (by_class[:10], "300 samples but 10"),
                            (mixed + 5, "go up to 7 but the model has 3 outputs")):
        with pytest.raises(ValueError, match=message):
            fisher_diagonal(model, x, labels, samples=100)


def test_fisher_of_a_batch_statistics_bnn_uses_population_statistics_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = MLP([784, 32, 10])
    x, y = torch.rand(50, 784), torch.randint(0, 10, (50,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fisher = fisher_diagonal(model, x, y, samples=20)
    assert [f.shape for f in fisher] == [(32, 784), (10, 32)]
    assert all(torch.isfinite(f).all() and (f >= 0).all() and f.sum() > 0 for f in fisher)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d))
    assert norm.running_mean is None  # still the paper's batch-statistics BatchNorm
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        fisher_diagonal(model, x, y, samples=0)


def test_ewc_penalty_equals_formula_over_past_tasks():
    model = _tiny()
    ewc = EWC(lam=4.0)
    f1, a1 = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.zeros(2, 2)
    f2, a2 = torch.tensor([[0.5, 0.0], [1.0, 0.0]]), torch.ones(2, 2)
    ewc.importances, ewc.anchors = [[f1], [f2]], [[a1], [a2]]
    w = model.weight.detach()
    by_hand = 4.0 / 2 * ((f1 * (w - a1) ** 2).sum() + (f2 * (w - a2) ** 2).sum())
    # w = [[1,-2],[.5,3]]: task 1: 1 + 8 + 0 + 9 = 18; task 2: .5*0 + 0 + 1*.25 + 0 = .25
    assert by_hand.item() == pytest.approx(2 * 18.25)
    assert ewc.penalty(model).item() == pytest.approx(by_hand.item())


def test_ewc_task_done_stores_fisher_and_anchor_and_state_round_trips():
    model = _tiny()
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    ewc = EWC(lam=1.0, samples=5)
    ewc.task_done(model, x, y, None)
    assert torch.equal(ewc.anchors[0][0], model.weight.detach())
    assert torch.allclose(ewc.importances[0][0], fisher_diagonal(model, x, y, samples=5)[0])
    other = EWC(lam=7.0)
    other.load_state_dict(ewc.state_dict())
    with torch.no_grad():
        model.weight.add_(0.3)
    assert other.penalty(model).item() == pytest.approx(ewc.penalty(model).item())


def test_si_omega_on_two_parameter_quadratic_matches_hand_computation():
    # L(θ) = ½ (a θ1² + b θ2²) with plain SGD: g = (aθ1, bθ2), Δθ = -lr g, so ω += lr g² per step.
    a, b, lr = 2.0, 0.5, 0.1
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    si = SynapticIntelligence(c=1.0, xi=0.1)
    theta, omega = [1.0, 1.0], [0.0, 0.0]
    for _ in range(3):
        opt.zero_grad()
        w = model.weight[0]
        (0.5 * (a * w[0] ** 2 + b * w[1] ** 2)).backward()
        si.before_step(model)
        opt.step()
        si.after_step(model)
        g = [a * theta[0], b * theta[1]]
        omega = [o + lr * gi * gi for o, gi in zip(omega, g)]
        theta = [t - lr * gi for t, gi in zip(theta, g)]
    # θ1: 1 → .8 → .64 → .512, ω1 = .1·(4 + 2.56 + 1.6384); θ2: 1 → .95 → .9025 → .857375
    assert omega[0] == pytest.approx(0.1 * (4 + 2.56 + 1.6384))
    assert torch.allclose(si.omega[0], torch.tensor([omega]))
    si.task_done(model, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), None)
    delta = [t - 1.0 for t in theta]
    big = [o / (d * d + 0.1) for o, d in zip(omega, delta)]
    assert torch.allclose(si.big_omega[0], torch.tensor([big]))
    assert torch.equal(si.omega[0], torch.zeros(1, 2))  # reset for the next task
    with torch.no_grad():
        model.weight.add_(torch.tensor([[0.2, -0.1]]))
    expected = big[0] * 0.04 + big[1] * 0.01
    assert si.penalty(model).item() == pytest.approx(expected, rel=1e-5)
    restored = SynapticIntelligence()
    restored.load_state_dict(si.state_dict())
    assert restored.penalty(model).item() == pytest.approx(expected, rel=1e-5)


def test_random_consolidation_is_a_permutation_of_ewc_importances():
    torch.manual_seed(0)
    model = MLP([16, 8, 4])
    x, y = torch.randn(40, 16), torch.randint(0, 4, (40,))
    ewc, rc = EWC(samples=10), RandomConsolidation(samples=10, seed=3)
    ewc.task_done(model, x, y, None)
    rc.task_done(model, x, y, None)
    for f, r in zip(ewc.importances[0], rc.importances[0]):
        assert f.shape == r.shape
        assert torch.equal(f.flatten().sort().values, r.flatten().sort().values)
        assert not torch.equal(f, r)


def test_bnn_baselines_regularise_hidden_weights_only():
    model = MLP([16, 8, 4])
    ewc = EWC(samples=10)
    ewc.task_done(model, torch.randn(20, 16), torch.randint(0, 4, (20,)), None)
    assert [f.shape for f in ewc.importances[0]] == [torch.Size([8, 16]), torch.Size([4, 8])]


@pytest.mark.parametrize("bad", [dict(lam=-1.0), dict(lam=float("nan")), dict(lam="5000")])
def test_ewc_rejects_bad_strength(bad):
    with pytest.raises(ValueError, match="EWC lam must be a finite number >= 0"):
        EWC(**bad)


@pytest.mark.parametrize("make, bad, message", [
    (EWC, dict(samples="10"), "EWC samples must be an integer >= 1"),
    (EWC, dict(samples=2.5), "EWC samples must be an integer >= 1"),
    (EWCOnline, dict(gamma="0.9"), r"gamma must be a finite number in \[0, 1\]"),
    (EWCOnline, dict(gamma=float("nan")), r"gamma must be a finite number in \[0, 1\]"),
    (EWCOnline, dict(lam=None), "lam must be a finite number >= 0"),
    (SynapticIntelligence, dict(c="0.1"), "SI c must be a finite number >= 0"),
    (RandomConsolidation, dict(seed=-1), "seed must be an integer >= 0"),
])
def test_baseline_arguments_are_one_line_naming_them(make, bad, message):
    with pytest.raises(ValueError, match=message):
        make(**bad)


@pytest.mark.parametrize("make", [EWC, EWCOnline, SynapticIntelligence])
def test_a_baseline_on_a_model_without_weight_matrices_is_one_line(make):
    model = torch.nn.Sequential(torch.nn.LayerNorm(4))
    plugin = make()
    with pytest.raises(ValueError, match="Sequential has no weight matrices"):
        plugin.task_done(model, torch.randn(4, 4), torch.randint(0, 4, (4,)), None)
        plugin.before_step(model)


@pytest.mark.parametrize("make", [EWC, EWCOnline, SynapticIntelligence])
def test_a_baseline_state_is_checked_on_load_and_against_the_model(make):
    """A tampered or foreign state is one line: on load (types, hyperparameters) or at the first penalty (shapes),
    where zip would have cut the sums short or broadcasting mixed shapes silently."""
    small, large = torch.nn.Linear(3, 2, bias=False), torch.nn.Linear(5, 2, bias=False)
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    plugin = make()
    if isinstance(plugin, SynapticIntelligence):
        small(x).sum().backward()
        plugin.before_step(small)
        plugin.after_step(small)
    plugin.task_done(small, x, y, None)
    state = plugin.state_dict()
    key = next(k for k, v in state.items() if isinstance(v, list))
    with pytest.raises(ValueError, match=f"baseline state {key!r} must be a list"):
        make().load_state_dict({**state, key: "not tensors"})
    number = next(k for k, v in state.items() if isinstance(v, float) and k != "xi")
    with pytest.raises(ValueError, match="must be a finite number"):
        make().load_state_dict({**state, number: float("nan")})
    restored = make()
    restored.load_state_dict(state)
    assert restored.penalty(small) is not None
    with pytest.raises(ValueError, match=r"do not fit the model's weight matrices \(\[\(2, 5\)\]\)"):
        restored.penalty(large)


def _state_after_one_task(make):
    """A plugin's state after one task (one SI step before it) on a tiny model."""
    model, x, y = torch.nn.Linear(3, 2, bias=False), torch.randn(6, 3), torch.randint(0, 2, (6,))
    plugin = make()
    model(x).sum().backward()
    plugin.before_step(model)
    with torch.no_grad():
        model.weight -= 0.1 * model.weight.grad
    plugin.after_step(model)
    plugin.task_done(model, x, y, None)
    return plugin.state_dict()


def _filled(state, key, value):
    """``state`` with every tensor under ``key`` (a list, or a list of lists) filled with ``value``."""
    fill = lambda t: torch.full_like(t, value)  # noqa: E731
    return {**state, key: [[fill(t) for t in ts] if isinstance(ts, list) else fill(ts) for ts in state[key]]}


@pytest.mark.parametrize("make, key, value, message", [
    (EWC, "importances", float("nan"), r"baseline state importances\[0\]\[0\] holds NaN or infinite values"),
    (EWC, "importances", -1e3, r"importances\[0\]\[0\] holds negative values \(a Fisher value is a mean of squared"),
    (EWC, "anchors", float("inf"), r"baseline state anchors\[0\]\[0\] holds NaN or infinite values"),
    (RandomConsolidation, "importances", -1.0, r"importances\[0\]\[0\] holds negative values"),
    (EWCOnline, "fisher", -1.0, r"baseline state fisher\[0\] holds negative values"),
    (EWCOnline, "anchor", float("nan"), r"baseline state anchor\[0\] holds NaN or infinite values"),
    (SynapticIntelligence, "big_omega", float("nan"), r"baseline state big_omega\[0\] holds NaN or infinite values"),
    (SynapticIntelligence, "omega", float("-inf"), r"baseline state omega\[0\] holds NaN or infinite values"),
], ids=["ewc-nan", "ewc-negative", "ewc-anchor-inf", "random-negative", "online-negative", "online-anchor-nan",
        "si-nan", "si-inf"])
def test_a_baseline_state_with_non_finite_or_negative_fisher_values_is_refused_on_load(make, key, value, message):
    """load_state_dict checked types only: a re-signed checkpoint with EWC importances of -1e3 resumed to wrong
    numbers silently (a negative Fisher pushes the weights away from the past tasks'), and NaN importances stopped the
    run later with "loss became nan ... lower the learning rate", blaming the wrong thing. Now one line on load, and
    the plugin keeps its own state."""
    state = _state_after_one_task(make)
    plugin = make()
    with pytest.raises(ValueError, match=message):
        plugin.load_state_dict(_filled(state, key, value))
    assert getattr(plugin, key) == []  # (nothing of the refused state put in place)


def test_si_importances_are_signed_and_load_back():
    """SI's path integral ω = −Σ g·Δθ is negative where a step went uphill, and Ω = Σ ω / (Δ² + ξ) with it: negative
    values are its own, not damage, and load as they were saved."""
    state = _filled(_filled(_state_after_one_task(SynapticIntelligence), "omega", -0.5), "big_omega", -2.0)
    restored = SynapticIntelligence()
    restored.load_state_dict(state)
    assert float(restored.big_omega[0].max()) == -2.0 and float(restored.omega[0].max()) == -0.5


def test_random_consolidation_refuses_a_generator_state_torch_would_not_set():
    """A shuffling generator's state of the right size but invalid raised "RuntimeError: Invalid mt19937 state" from
    set_state, after EWC's part of the state was already put in place."""
    state = _state_after_one_task(RandomConsolidation)
    plugin = RandomConsolidation()
    with pytest.raises(ValueError, match="^baseline state 'generator' is not a state of torch's generator$"):
        plugin.load_state_dict({**state, "generator": torch.full_like(state["generator"], 255)})
    assert plugin.importances == []


def test_si_rejects_zero_xi():
    with pytest.raises(ValueError, match="xi"):
        SynapticIntelligence(xi=0.0)


def test_ewc_and_si_penalties_train_through_the_loop():
    model = MLP([16, 8, 4])
    si = SynapticIntelligence(c=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(40, 16), torch.randint(0, 4, (40,))
    train_epoch(model, opt, x, y, batch_size=10, plugins=[si])
    si.task_done(model, x, y, None)
    assert all(torch.isfinite(o).all() and (o.abs().sum() > 0) for o in si.big_omega)
    train_epoch(model, opt, x, y, batch_size=10, plugins=[si])
    assert si.penalty(model).item() > 0


def test_ewc_reduces_forgetting_on_permuted_digits(one_thread, tmp_path):
    # the CPU-scale table1 stream (3 permuted digits tasks, 784-256-10 BNN), seed 2:
    # measured forgetting 8.1 points without EWC, 1.0 with EWC (lambda 5000)
    config = replace(CPU_PERMUTED, seed=2)
    plain = run_method(config, Method("plain"), tmp_path).metrics
    ewc = run_method(config, Method("ewc", baseline="ewc", strength=5000.0), tmp_path).metrics
    assert ewc["forgetting"] < plain["forgetting"] - 3, (plain, ewc)
    assert ewc["ACC"] > plain["ACC"], (plain, ewc)


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_ewc_estimates_the_fisher_of_a_model_with_weight_samples(kind):
    """A Bayesian model answers with (S, B, C) logits; the Fisher used a loss for (B, C) and failed inside torch."""
    from metaspike.app.models import build_model

    model = build_model(kind, [8], (1, 8, 8), 10)
    for layer in model.modules():
        if hasattr(layer, "samples"):
            layer.samples = 3
    ewc = EWC(samples=4)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    if kind == "bimu":  # evaluated on sign(λ) or Bernoulli samples: no gradient reaches λ
        with pytest.raises(ValueError, match=r"^EWC: .* get none in evaluation mode \(BiMU synapses evaluate with"):
            ewc.task_done(model, x, y, None)
        return
    ewc.task_done(model, x, y, None)
    assert all(torch.isfinite(f).all() and f.sum() > 0 for f in ewc.importances[0])


@pytest.mark.parametrize("make", [lambda: EWC(lam=100.0), lambda: EWCOnline(lam=100.0),
                                  lambda: SynapticIntelligence(c=1.0), lambda: RandomConsolidation(lam=100.0)])
def test_a_layer_kept_float_beside_binary_synapses_is_regularised_too(make):
    torch.manual_seed(0)
    model = metaspike.binarize(nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)), exclude="0")
    hidden = model[2].parametrizations.weight.original
    x, y = torch.rand(30, 12), torch.randint(0, 3, (30,))
    plugin = make()
    if isinstance(plugin, SynapticIntelligence):  # its importance comes from the steps of the task
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        plugin.before_step(model)
        opt.step()
        plugin.after_step(model)
    plugin.task_done(model, x, y, None)
    with torch.no_grad():  # both layers move away from the anchor
        model[0].weight.add_(0.5)
        hidden.add_(0.5)
    model.zero_grad()
    plugin.penalty(model).backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    assert hidden.grad.abs().sum() > 0
    assert model[0].bias.grad is None  # biases stay free


@pytest.mark.parametrize("wrap", [nn.utils.parametrizations.weight_norm, nn.utils.parametrizations.spectral_norm])
def test_a_float_layer_under_torchs_own_parametrization_is_regularised_through_what_it_trains(wrap):
    torch.manual_seed(0)
    model = nn.Sequential(wrap(nn.Linear(12, 8)), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.rand(30, 12), torch.randint(0, 3, (30,))
    plugin = EWC(lam=100.0)
    plugin.task_done(model, x, y, None)
    originals = [p for name, p in model[0].parametrizations.weight.named_parameters() if name.startswith("original")]
    with torch.no_grad():
        for p in originals:
            p.add_(0.5)
    model.zero_grad()
    plugin.penalty(model).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in originals)


def test_a_plugin_that_served_another_models_trainer_is_refused():
    """Its anchors would pull the new model toward the old one's weights (an untrained task scored 58 %)."""
    from metaspike.continual import ContinualTrainer, TrainerConfig

    def trainer(model, plugins):
        return ContinualTrainer(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), TrainerConfig(epochs=1),
                                progress=False, plugins=plugins)

    si, first = SynapticIntelligence(), _tiny()
    trainer(first, [si])
    trainer(first, [si])  # another trainer of the same model continues its memory
    with pytest.raises(ValueError, match=r"plugins\[1\] \(SynapticIntelligence\) served the trainer of another model"):
        trainer(_tiny(), [EWC(), si])


def test_the_si_path_integral_takes_the_tasks_gradient_without_its_own_penalty():
    model = nn.Linear(2, 1, bias=False)
    nn.init.ones_(model.weight)
    si, opt = SynapticIntelligence(c=1.0), torch.optim.SGD(model.parameters(), lr=0.1)

    def step(loss):
        opt.zero_grad()
        loss.backward()
        si.before_step(model)
        opt.step()
        si.after_step(model)

    step(model(torch.ones(1, 2)).sum())
    si.task_done(model, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), None)
    with torch.no_grad():
        model.weight.add_(0.5)  # away from the anchor: the penalty pulls back
    step(0 * model(torch.ones(1, 2)).sum() + si.penalty(model))  # the task's own gradient is 0
    assert torch.equal(si.omega[0], torch.zeros(1, 2))  # (was −g·Δθ > 0: the pull counted as the task's work)
    step(model(torch.ones(1, 2)).sum())  # a loss without the penalty keeps its whole gradient: −1 · (−0.1)
    torch.testing.assert_close(si.omega[0], torch.full((1, 2), 0.1))


def _bimu_net(**bayesianize_options) -> nn.Module:
    """A BiMU network with its learned gains (the loss has a gradient in evaluation mode, through them only)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))
    return metaspike.bayesianize(net, kind="bimu", **bayesianize_options)


@pytest.mark.parametrize("make", [EWC, EWCOnline, RandomConsolidation])
def test_a_fisher_baseline_on_bimu_synapses_is_one_line_naming_it_not_a_zero_fisher(make):
    """BiMU evaluates with sign(λ): no gradient reaches λ, and the Fisher came back all zero, so EWC, EWC-Online and
    the random control did nothing, silently (the gains kept the loss differentiable, which was all the check asked)."""
    x, y = torch.rand(30, 20), torch.randint(0, 4, (30,))
    plugin = make()
    with pytest.raises(ValueError, match=rf"^{make.__name__}: the Fisher needs gradients of the evaluated model's loss "
                                         r"with respect to the weight matrices it protects, and those of layers 0, 2 "
                                         r"get none in evaluation mode \(BiMU synapses evaluate with sign\(λ\)"):
        plugin.task_done(_bimu_net(), x, y, None)
    with pytest.raises(ValueError, match=r"^fisher_diagonal: .* of layers 0, 2 get none in evaluation mode \(BiMU"):
        fisher_diagonal(_bimu_net(evaluation="sample"), x, y)


def test_the_fisher_names_only_the_weight_matrices_it_cannot_measure():
    """A float layer left beside BiMU synapses has a Fisher; the synapses' λ is named alone. A layer the evaluated
    model does not use is named with the general reason."""
    x, y = torch.rand(30, 20), torch.randint(0, 4, (30,))
    with pytest.raises(ValueError, match=r"of layer 2 get none in evaluation mode \(BiMU synapses"):
        fisher_diagonal(_bimu_net(exclude="0"), x, y)

    class UnusedHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(20, 4), nn.Linear(20, 4)

        def forward(self, inputs):
            return self.body(inputs)

    with pytest.raises(ValueError, match=r"of layer head get none in evaluation mode \(evaluation mode does not use "):
        fisher_diagonal(UnusedHead(), x, y)


@pytest.mark.parametrize("x, y, classes, message", [
    (torch.rand(10, 4), torch.zeros(10, dtype=torch.long), (1, 2),
     r"^labels of the Fisher's data \(x, y\) include \[0\], outside its classes \[1, 2\]$"),
    (torch.rand(0, 4), torch.zeros(0, dtype=torch.long), None, r"^the Fisher's data \(x, y\) is empty$"),
    (torch.rand(10, 4), torch.arange(10) % 3, (),
     r"^labels of the Fisher's data \(x, y\) include \[0, 1, 2\], outside its classes \[\]$"),
    (torch.rand(10, 5), torch.arange(10) % 3, None,
     r"^the Fisher's data \(x, y\) samples of shape \(5,\) do not fit the model: "),
    (torch.full((10, 4), float("nan")), torch.arange(10) % 3, None,
     r"^the Fisher's data \(x, y\) contains NaN or infinite values$"),
], ids=["labels-outside-classes", "empty", "no-classes", "wrong-width", "nan"])
def test_fisher_diagonal_on_data_that_cannot_score_the_model_is_one_line(x, y, classes, message):
    """Labels outside ``classes`` (an infinite loss), empty data or ``classes=()`` (0/0) gave a finite or all-NaN
    "Fisher" without a word, and samples of the wrong width torch's error from inside the model."""
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises(ValueError, match=message):
        fisher_diagonal(model, x, y, classes=classes)

