"""A penalty stiffer than plain SGD can follow is refused before an epoch trains, naming the plugin and how far its
strength must come down (EWC's λ 5000 under SGD at lr 0.05 diverged within a task, blamed on an infinite penalty)."""

from __future__ import annotations

import pytest
import torch

from metaspike.chained import ChainedOptimizer
from metaspike.checks import TrainingDiverged
from metaspike.continual.baselines import EWC, EWCOnline, SynapticIntelligence
from metaspike.penalty_stability import PenaltyTooStiff, largest_stable_curvature, refuse_overshooting_penalties
from metaspike.training import train_epoch

SETTINGS = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.5, dampening=0.5),
            dict(momentum=0.9, nesterov=True)]


@pytest.mark.parametrize("settings", SETTINGS)
def test_the_bound_is_where_sgd_on_a_quadratic_turns_from_converging_to_diverging(settings):
    """SGD on k/2·θ², just inside and just outside the bound: 1 % either side decides after 3000 steps (the
    iteration's largest root is 1 ± O(1 %) in modulus: a factor of e^±15 or more, far from rounding)."""
    group = {"lr": 0.05, "dampening": 0.0, "nesterov": False, **settings}
    limit = largest_stable_curvature(group)
    ends = []
    for k in (0.99 * limit, 1.01 * limit):
        theta = torch.ones(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.SGD([theta], **group)
        for _ in range(3000):
            optimizer.zero_grad()
            (0.5 * k * theta.square()).sum().backward()
            optimizer.step()
        ends.append(abs(theta.item()))
    assert ends[0] < 1e-3 and ends[1] > 1e3, (limit, ends)


def _trained_plugin(make, model):
    x, y = torch.randn(64, 6, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 3
    plugin = make()
    if isinstance(plugin, SynapticIntelligence):  # (its importances come from the steps of a task)
        train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, batch_size=8, plugins=[plugin])
    plugin.task_done(model, x, y, None)
    return plugin, x, y


@pytest.mark.parametrize("make", [lambda: EWC(lam=1.0), lambda: EWCOnline(lam=1.0), lambda: SynapticIntelligence(c=1.0)])
def test_each_baseline_is_refused_just_past_its_bound_and_trains_just_inside_it(make):
    model = torch.nn.Sequential(torch.nn.Linear(6, 8, bias=False), torch.nn.ReLU(), torch.nn.Linear(8, 3, bias=False))
    torch.manual_seed(1)
    plugin, x, y = _trained_plugin(make, model)
    stiffest = max(curvature for _, curvature in plugin.curvatures(model))
    strength = "lam" if hasattr(plugin, "lam") else "c"
    lr = 0.05
    setattr(plugin, strength, getattr(plugin, strength) * 1.01 * (2 / lr) / stiffest)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainingDiverged, match=rf"^plugin {type(plugin).__name__}: its penalty's curvature along "
                                               r"[0-9]\.weight reaches [0-9.]+, where SGD at lr 0\.05 overshoots and "
                                               r"diverges \(it follows a curvature below 40\); divide its strength by "
                                               r"more than 1\.01, or lower the learning rate$"):
        train_epoch(model, torch.optim.SGD(model.parameters(), lr=lr), x, y, batch_size=8, plugins=[plugin])
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # (refused before any step)
    setattr(plugin, strength, getattr(plugin, strength) * 0.98)
    train_epoch(model, torch.optim.SGD(model.parameters(), lr=lr), x, y, batch_size=8, plugins=[plugin])
    train_epoch(model, torch.optim.Adam(model.parameters(), lr=lr), x, y, batch_size=8,  # (Adam: no such bound)
                plugins=[plugin])


def test_a_parameter_in_a_group_of_a_smaller_learning_rate_is_judged_by_its_own():
    """The stiffer layer at lr 0.01 (bound 200) holds a curvature that lr 0.05 (bound 40) would refuse."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 8, bias=False), torch.nn.ReLU(), torch.nn.Linear(8, 3, bias=False))
    torch.manual_seed(1)
    ewc, x, y = _trained_plugin(lambda: EWC(lam=1.0), model)
    (soft, low), (stiff, high) = sorted(ewc.curvatures(model), key=lambda pair: pair[1])
    ewc.lam = 30 / low
    if not 40 < ewc.lam * high < 200:
        pytest.skip(f"the two layers' Fisher values are {high / low:.2f} apart here, outside 1.33-6.67")
    train_epoch(model, torch.optim.SGD([{"params": [soft], "lr": 0.05}, {"params": [stiff], "lr": 0.01}]), x, y,
                batch_size=8, plugins=[ewc])
    with pytest.raises(TrainingDiverged, match="SGD at lr 0.05 overshoots"):
        train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.05), x, y, batch_size=8, plugins=[ewc])


def _ewc_at(curvature: float, model: torch.nn.Module) -> EWC:
    """An EWC whose penalty has ``curvature`` along ``model.weight`` (its Fisher set by hand)."""
    ewc = EWC(lam=1.0)
    ewc.importances, ewc.anchors = [[torch.full_like(model.weight, curvature)]], [[model.weight.detach().clone()]]
    return ewc


def test_penalties_on_one_parameter_are_summed_and_what_sgd_does_not_move_is_not_judged():
    """Two penalties each inside the bound but past it together ran to 1e13 without a word; a frozen parameter, or
    one SGD climbs (maximize), was refused though SGD never descends it; a subclass of SGD keeping its step was not
    judged."""
    model = torch.nn.Linear(3, 2, bias=False)
    two = [_ewc_at(12.0, model), _ewc_at(12.0, model)]  # (limit at lr 0.1: 20)
    with pytest.raises(PenaltyTooStiff, match=r"^plugins EWC, EWC: their penalties' summed curvature along weight "
                                              r"reaches 24, .* divide their strengths by more than 1\.2, ") as caught:
        refuse_overshooting_penalties(torch.optim.SGD(model.parameters(), lr=0.1), two, model)
    assert caught.value.factor == pytest.approx(1.2)
    refuse_overshooting_penalties(torch.optim.SGD(model.parameters(), lr=0.1), two[:1], model)

    class LoggingSGD(torch.optim.SGD):
        pass

    with pytest.raises(PenaltyTooStiff):
        refuse_overshooting_penalties(LoggingSGD(model.parameters(), lr=0.1), two, model)
    with pytest.raises(PenaltyTooStiff, match=r"reaches 34 \(with weight decay 10\), .* divide their strengths by "
                                              r"more than 2\.4, "):
        refuse_overshooting_penalties(torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=10.0), two, model)
    refuse_overshooting_penalties(torch.optim.SGD(model.parameters(), lr=0.1, maximize=True), two, model)
    bias = torch.zeros(2, requires_grad=True)  # (SGD inside a chain is judged too: it ran to 1e29 without a word)
    chained = ChainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.Adam([bias]))
    with pytest.raises(PenaltyTooStiff, match="divide their strengths by more than 1.2, "):
        refuse_overshooting_penalties(chained, two, model)
    model.weight.requires_grad_(False)
    refuse_overshooting_penalties(torch.optim.SGD(model.parameters(), lr=0.1), two, model)


def test_the_factor_named_is_the_stiffest_parameters():
    """It named the first parameter past the bound, in the plugin's order: a strength divided by its factor was
    refused again along another parameter."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=False), torch.nn.Linear(3, 2, bias=False))

    class TwoLayers:  # (a plugin of one's own: curvature 50 along the first layer, 500 along the second)
        def curvatures(self, model):
            return [(model[0].weight, 50.0), (model[1].weight, 500.0)]

    with pytest.raises(PenaltyTooStiff, match=r"along 1\.weight reaches 500, .* by more than 12\.5, ") as caught:
        refuse_overshooting_penalties(torch.optim.SGD(model.parameters(), lr=0.05), [TwoLayers()], model)
    assert caught.value.factor == 12.5
