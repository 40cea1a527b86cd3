"""Consolidation rules in their one interface: cascade and switch by hand, and a new rule in one file."""

import copy
import dataclasses
import io
import json
from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch

from bnn import MLP
from metaspike.functional import consolidate
from metaspike.optim import MetaplasticAdam, metaplastic
from metaspike.rules import (
    CascadeRule,
    CascadeState,
    NoState,
    Stateless,
    SwitchRule,
    available_rules,
    get_rule,
    register_rule,
)


def test_cascade_one_step_by_hand_two_variables():
    # C = (1, 2), g_1 = meta/4 = 0.5; u' = (1 - 0.5, 1) = (0.5, 1):
    # (1 + 0.5) a - 0.5 b = 0.5 and -0.5 a + (2 + 0.5) b = 2  =>  a = 9/14, b = 13/14
    rule = CascadeRule(n=2)
    hidden = torch.tensor([1.0], dtype=torch.float64)
    state = rule.init_state(hidden)
    update, new = rule.step(hidden, torch.tensor([0.5], dtype=torch.float64), 2.0, state)
    torch.testing.assert_close(hidden - update, torch.tensor([9 / 14], dtype=torch.float64))
    torch.testing.assert_close(new.levels[0], torch.tensor([13 / 14], dtype=torch.float64))
    assert torch.equal(state.levels, torch.ones(1, 1, dtype=torch.float64))  # the step is pure


def test_cascade_one_step_by_hand_three_variables():
    # C = (1, 2, 4), g = (meta/4, meta/8) = (2, 1); u' = (1, 0, 0):
    # 3a - 2b = 1, -2a + 5b - c = 0, -b + 5c = 0  =>  c = b/5, a = 12b/5, b = 5/26
    rule = CascadeRule(n=3)
    state = CascadeState(torch.zeros(2, 1, dtype=torch.float64))
    hidden = torch.zeros(1, dtype=torch.float64)
    update, new = rule.step(hidden, torch.tensor([-1.0], dtype=torch.float64), 8.0, state)
    torch.testing.assert_close(-update, torch.tensor([12 / 26], dtype=torch.float64))
    torch.testing.assert_close(new.levels[:, 0], torch.tensor([5 / 26, 1 / 26], dtype=torch.float64))


@pytest.mark.parametrize("meta", [1e16, 1e17, 1e18, 1e30, 3.4e38])
def test_cascade_holds_its_solution_at_any_meta(meta):
    """C = (1, 2), g = meta/4; u' = (a', b'):  (1 + g) a - g b = a', -g a + (2 + g) b = 2 b'  =>
    a = ((2 + g) a' + 2 g b') / (2 + 3 g), b = (g a' + (1 + g) 2 b') / (2 + 3 g), in exact fractions. The textbook
    pivots cancelled: a helper's 0.45 at meta 1e17 where this is 0.471, a ZeroDivisionError at 1e18."""
    from fractions import Fraction

    g, a_, b_ = Fraction(meta) / 4, Fraction(0.2), Fraction(-0.1)
    expected_a = ((2 + g) * a_ + 2 * g * b_) / (2 + 3 * g)
    expected_b = (g * a_ + (1 + g) * 2 * b_) / (2 + 3 * g)
    rule = CascadeRule(n=2)
    for dtype, tolerance in ((torch.float64, 2**-52), (torch.float32, 2**-23)):  # a few roundings of values below 1
        hidden = torch.tensor([0.5], dtype=dtype)
        kept, state = consolidate(hidden, torch.tensor([0.3], dtype=dtype), meta, rule, CascadeState(
            torch.tensor([[-0.1]], dtype=dtype)))
        assert abs((hidden - kept).item() - float(expected_a)) <= 4 * tolerance
        assert abs(state.levels.item() - float(expected_b)) <= 4 * tolerance


def test_cascade_conserves_the_total_and_flows_down_without_overshoot():
    g = torch.Generator().manual_seed(0)
    rule = CascadeRule(n=4)
    hidden = torch.randn(50, dtype=torch.float64, generator=g)
    state = rule.init_state(hidden)
    capacity = torch.tensor([2.0, 4.0, 8.0], dtype=torch.float64).view(3, 1)
    total = lambda w, s: w + (capacity * s.levels).sum(0)  # noqa: E731
    for meta in (0.5, 8.0, 1000.0):  # any coupling: the implicit step is stable
        update = torch.randn(50, dtype=torch.float64, generator=g)
        before = total(hidden, state)
        pushed = torch.cat([(hidden - update).unsqueeze(0), state.levels])
        kept, state = consolidate(hidden, update, meta, rule, state)
        new = hidden - kept
        torch.testing.assert_close(total(new, state), before - update)
        # no overshoot: each new level is a weighted mean of the pushed levels (discrete maximum principle)
        levels = torch.cat([new.unsqueeze(0), state.levels])
        assert torch.all(levels >= pushed.min(0).values - 1e-12)
        assert torch.all(levels <= pushed.max(0).values + 1e-12)
        hidden = new


def test_cascade_leak_drains_the_last_variable_and_meta_zero_is_no_consolidation():
    rule = CascadeRule(n=2, leak=2.0)
    update, state = rule.step(torch.zeros(1), torch.zeros(1), 0.0, CascadeState(torch.ones(1, 1)))
    assert torch.equal(update, torch.zeros(1))
    torch.testing.assert_close(state.levels, torch.tensor([[0.5]]))  # 2·(u - 1) = -2u
    fresh = CascadeRule().init_state(torch.ones(3))
    assert torch.equal(CascadeRule().step(torch.ones(3), torch.full((3,), 0.25), 0.0, fresh)[0], torch.full((3,), 0.25))


def _switch_run(updates, meta=50.0, seed=0):
    rule = SwitchRule(seed=seed)
    hidden = torch.tensor([1.0])
    state = rule.init_state(hidden)
    kept = []
    for u in updates:
        update, state = rule.step(hidden, torch.tensor([u]), meta, state)
        kept.append(update.item())
    return kept, state


def test_switch_consolidates_repeated_pushes_and_then_blocks_toward_zero():
    kept, state = _switch_run([-0.1, -0.1, -0.1, 0.1, 0.1, -0.1])
    assert kept == pytest.approx([-0.1, -0.1, -0.1, 0.0, 0.0, -0.1])
    assert state.consolidated.item() == 1.0


def test_switch_alternating_updates_stay_plastic():
    updates = [0.1, -0.1] * 50
    kept, state = _switch_run(updates, meta=100.0)
    assert kept == pytest.approx(updates)
    assert state.consolidated.item() == 0.0 and state.run.item() == 0.0


def test_switch_is_random_but_repeats_with_its_seed():
    hidden, update = torch.ones(2000), torch.full((2000,), -0.1)

    def two_steps(seed):
        rule = SwitchRule(seed=seed)
        state = rule.init_state(hidden)
        for _ in range(2):  # the second has r = 1: p = 1 - exp(-0.7) ≈ 0.50
            _, state = rule.step(hidden, update, 0.7, state)
        return state.consolidated

    first = two_steps(3)
    assert torch.equal(first, two_steps(3))
    assert abs(first.mean().item() - (1 - torch.exp(torch.tensor(-0.7)).item())) < 0.05
    assert not torch.equal(two_steps(4), first)


def test_switch_zero_updates_consolidate_nothing():
    """A zero update (lr 0 at a schedule's end, a gradient of zero) kept drawing for synapses with r > 0 and
    consolidated them: 29 of 1000 became 864 after 100 zero updates."""
    rule, hidden = SwitchRule(), torch.ones(1000)
    state = rule.init_state(hidden)
    for _ in range(3):
        _, state = rule.step(hidden, torch.full((1000,), -0.1), 0.01, state)
    before = state.consolidated.clone()
    for _ in range(100):
        _, state = rule.step(hidden, torch.zeros(1000), 0.01, state)
    assert torch.equal(state.consolidated, before) and state.run.eq(2).all()


def test_switch_parameters_draw_different_streams():
    """Each parameter's generator is seeded from the rule's seed and the parameter's weights: two layers of
    one network do not consolidate the same synapses, and the same weights give the same draws."""
    rule, update = SwitchRule(seed=5), torch.full((4000,), -0.1)
    first, second = torch.linspace(0.1, 1.0, 4000), torch.linspace(0.2, 1.1, 4000)

    def consolidated(hidden):
        state = rule.init_state(hidden)
        for _ in range(2):
            _, state = rule.step(hidden, update, 0.7, state)
        return state.consolidated

    assert not torch.equal(consolidated(first), consolidated(second))
    assert torch.equal(consolidated(first), consolidated(first.clone()))
    assert rule.init_state(torch.tensor(2.0)).rng.shape == rule.init_state(torch.zeros(0)).rng.shape


def _model(seed=0):
    torch.manual_seed(seed)
    return MLP([20, 16, 16, 4])


def _train(model, opt, steps, start=0):
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(64, 20, generator=g), torch.randint(0, 4, (64,), generator=g)
    for i in range(start, start + steps):
        batch = slice(i % 4 * 16, (i % 4 + 1) * 16)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


_OPTIMIZERS = {
    "adam": lambda ps, rule: MetaplasticAdam(ps, lr=0.01, meta=2.0, rule=rule),
    "adam-foreach-fused": lambda ps, rule: MetaplasticAdam(ps, lr=0.01, meta=2.0, rule=rule, foreach=True, fused=True),
    "sgd": lambda ps, rule: metaplastic(torch.optim.SGD(ps, lr=0.1, momentum=0.9), meta=2.0, rule=rule),
}


def _resume_equals_uninterrupted(kind, rule):
    a, b = _model(), _model()
    opt_a, opt_b = _OPTIMIZERS[kind](a.parameters(), rule), _OPTIMIZERS[kind](b.parameters(), rule)
    full = _train(a, opt_a, 8)
    _train(b, opt_b, 4)
    buffer = io.BytesIO()
    torch.save({"model": b.state_dict(), "opt": opt_b.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # as checkpoints are loaded
    c = _model(5)
    c.load_state_dict(saved["model"])
    opt_c = _OPTIMIZERS[kind](c.parameters(), rule)
    opt_c.load_state_dict(saved["opt"])
    resumed = _train(c, opt_c, 4, start=4)
    for p, q in zip(full, resumed):
        assert torch.equal(p, q)
    return a, opt_a


@pytest.mark.parametrize("rule", ["cascade", "switch"])
@pytest.mark.parametrize("kind", sorted(_OPTIMIZERS))
def test_optimizers_run_the_rule_and_resume_exactly_from_state_dict(rule, kind):
    a, opt_a = _resume_equals_uninterrupted(kind, rule)
    weight = next(p for p in a.parameters() if p.dim() > 1)
    assert "rule_state" in opt_a.state[weight]
    assert not any("rule_state" in opt_a.state[p] for p in a.parameters() if p.dim() == 1)


@pytest.mark.parametrize("rule", ["cascade", "switch"])
def test_the_rule_changes_the_training(rule):
    a, b = _model(), _model()
    ours = _train(a, MetaplasticAdam(a.parameters(), lr=0.01, meta=2.0, rule=rule), 6)
    plain = _train(b, MetaplasticAdam(b.parameters(), lr=0.01, meta=0.0, rule=rule), 6)
    assert not torch.equal(ours[0], plain[0])


def test_adam_with_the_cascade_follows_the_rule_on_the_step():
    import metaspike

    net = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False)))
    w = metaspike.hidden_weights(net)[0]
    with torch.no_grad():
        w.copy_(torch.tensor([[0.5, -0.5]]))
    opt = MetaplasticAdam([w], lr=0.1, meta=4.0, rule=CascadeRule(n=2))
    w.grad = torch.tensor([[1.0, 1.0]])
    opt.step()  # Adam's first step is lr·sign(grad) = 0.1; u' = (0.4, 0.5) and (-0.6, -0.5)
    # 2a - b = u1', -a + 3b = 2 u2'  =>  a = (3 u1' + 2 u2') / 5
    torch.testing.assert_close(w.detach(), torch.tensor([[(1.2 + 1.0) / 5, (-1.8 - 1.0) / 5]]))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: CascadeRule(n=1), "CascadeRule n must be an integer >= 2, got 1"),
        (lambda: CascadeRule(n=2.5), "CascadeRule n must be an integer >= 2, got 2.5"),
        (lambda: CascadeRule(leak=-1.0), r"CascadeRule leak must be a finite number in \[0, 3.40282e\+38\], got -1.0"),
        (lambda: SwitchRule(damping=1.5), r"SwitchRule damping must be a finite number in \[0, 1\], got 1.5"),
        (lambda: SwitchRule(seed="x"), "SwitchRule seed must be an integer in 0..18446744073709551615 \\(seeds are 64-bit\\), got 'x'"),
        (lambda: get_rule("beaker"), r"unknown consolidation rule 'beaker'; available: cascade, none, switch, tanh"),
        (lambda: get_rule(object()), "is not a consolidation rule: it lacks name, elementwise, init_state"),
    ],
)
def test_invalid_rule_hyperparameters_name_the_problem(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_rules_are_registered_by_name():
    assert set(available_rules()) >= {"cascade", "none", "switch", "tanh"}
    assert get_rule("cascade") == CascadeRule() and get_rule("switch") == SwitchRule()


# ---- a new rule: one definition (what would be its own file) and one registry line --------------------------


class _CountState(NamedTuple):
    count: torch.Tensor


@dataclass(frozen=True)
class _Halving:
    """A toy rule with state: updates toward zero are halved once a synapse has taken `meta` updates."""

    name: str = "halving-test"
    elementwise: bool = False

    def init_state(self, hidden):
        return _CountState(torch.zeros_like(hidden))

    def state_type(self):
        return _CountState

    def step(self, hidden, update, meta, state):
        count = state.count.to(hidden.dtype) + (update != 0).to(hidden.dtype)
        damp = (hidden * update > 0) & (count > meta)
        return torch.where(damp, update / 2, update), _CountState(count)


@pytest.fixture
def halving():
    from metaspike import rules

    register_rule(_Halving())  # the one registry line
    yield "halving-test"
    rules._RULES.pop("halving-test")


@pytest.mark.parametrize("kind", sorted(_OPTIMIZERS))
def test_a_new_rule_works_in_every_optimizer_and_resumes_from_checkpoints(halving, kind):
    a, b = _model(), _model()
    changed = _train(a, _OPTIMIZERS[kind](a.parameters(), halving), 6)
    plain = _train(b, _OPTIMIZERS[kind](b.parameters(), "none"), 6)
    assert not torch.equal(changed[0], plain[0])
    _resume_equals_uninterrupted(kind, halving)


class _PlainHalving:
    """``_Halving`` as a plain class (not a dataclass): no settings of its own to record."""

    name = "plain-halving-test"
    elementwise = False

    def init_state(self, hidden):
        return _Halving().init_state(hidden)

    def state_type(self):
        return _CountState

    def step(self, hidden, update, meta, state):
        return _Halving().step(hidden, update, meta, state)


def test_a_new_rule_given_as_an_object_resumes_from_a_weights_only_checkpoint():
    """A registered rule that is not a dataclass was kept as an object in the state dict, which
    torch.load(weights_only=True) refuses; one that holds what the registered one holds is saved by its name."""
    from metaspike import rules

    register_rule(_PlainHalving())
    try:
        _resume_equals_uninterrupted("adam", _PlainHalving())
        assert rules.rule_record(_PlainHalving()) == "plain-halving-test"
        changed = _PlainHalving()
        changed.extra = 2  # (settings of its own: kept as the object, which only a full torch.load reads)
        assert rules.rule_record(changed) is changed
    finally:
        rules._RULES.pop("plain-halving-test")


def test_a_new_rule_works_from_the_command_line(halving, tmp_path):
    from metaspike.app.cli import main

    args = ["train", "--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "32", "--quiet",
            "--rule", halving, "--meta", "3", "--out", str(tmp_path)]
    assert main(args) == 0
    (run,) = tmp_path.iterdir()
    assert json.loads((run / "config.json").read_text())["rule"] == halving
    assert run.name.endswith("-halving-test-seed1")


def test_a_rule_name_means_one_rule(monkeypatch):
    import metaspike.rules
    from metaspike.rules import TanhRule

    monkeypatch.setattr(metaspike.rules, "_RULES", dict(metaspike.rules._RULES))  # (the test's rules go with it)

    assert register_rule(TanhRule()).name == "tanh"  # the same rule again: nothing changes
    impostor = _Averaging(name="tanh")
    with pytest.raises(ValueError, match="'tanh' is a built-in rule's name"):
        register_rule(impostor, replace=True)
    first, edited = _Averaging(name="averaging-test"), dataclasses.replace(TanhRule(), name="averaging-test")
    assert register_rule(first) is first
    with pytest.raises(ValueError, match="another rule is registered as 'averaging-test' already .* replace=True"):
        register_rule(edited)
    assert register_rule(edited, replace=True) is edited and get_rule("averaging-test") is edited
    nameless = dataclasses.replace(TanhRule(), name="")
    with pytest.raises(ValueError, match="a rule's name must be 1 to 64 letters, digits, '_', '.' or '-'"):
        register_rule(nameless)
    with pytest.raises(ValueError, match=r"a rule's name must be .* \(it names run folders"):  # (never a path outside)
        register_rule(dataclasses.replace(TanhRule(), name="x/../../escaped"))
    with pytest.raises(ValueError, match="a rule's name must be 1 to 64 letters"):  # (the run folder's name overflowed,
        register_rule(dataclasses.replace(TanhRule(), name="r" * 65))  # blamed on --dataset and --meta)
    assert "tanh" in available_rules() and get_rule("tanh") == TanhRule()


@dataclasses.dataclass(frozen=True)
class _Averaging(Stateless):
    """A broken rule: one number per input column instead of one per weight."""

    name: str = "averaging"

    def step(self, hidden, update, meta, state):
        return update.mean(0), state


def test_an_update_of_the_wrong_shape_is_refused_everywhere_it_is_applied():
    rule = _Averaging()
    weight = torch.nn.Parameter(torch.ones(3, 2))
    weight.grad = torch.ones(3, 2)
    message = r"consolidation rule 'averaging' returned an update of shape \(2,\) for a weight of shape \(3, 2\)"
    for optimizer in (MetaplasticAdam([dict(params=[weight], consolidate=True)], meta=1.0, rule=rule),
                      metaplastic(torch.optim.SGD([dict(params=[weight], consolidate=True)], lr=0.1), meta=1.0,
                                  rule=rule)):
        with pytest.raises(ValueError, match=message):
            optimizer.step()
    with pytest.raises(ValueError, match=message):
        consolidate(torch.ones(3, 2), torch.ones(3, 2), meta=1.0, rule=rule)


def test_a_checkpoint_that_torch_would_not_read_back_is_refused_before_it_replaces_one(tmp_path):
    import numpy as np

    from metaspike.continual import RunDirectory

    directory = RunDirectory.create(tmp_path, "run", {})
    directory.checkpoint({"position": {"task": 0}, "plugins": [{"fisher": torch.zeros(2)}]})
    with pytest.raises(ValueError, match=r"state\['plugins'\]\[0\]\['fisher'\] is a numpy.ndarray"):
        directory.checkpoint({"position": {"task": 1}, "plugins": [{"fisher": np.zeros(2)}]})
    assert torch.load(directory.path / "checkpoint.pt", weights_only=True)["position"] == {"task": 0}


def test_consolidate_names_an_update_of_another_shape():
    with pytest.raises(ValueError, match=r"update must have the shape of hidden \(3,\), got \(2,\)"):
        consolidate(torch.zeros(3), torch.zeros(2), meta=1.0)
    with pytest.raises(ValueError, match=r"hidden and update must be tensors, got list and Tensor"):
        consolidate([0.0, 1.0], torch.zeros(2), meta=1.0)


@pytest.mark.parametrize("new_rule", ["tanh", "cascade", "none"])
def test_a_rule_changed_between_steps_starts_afresh(new_rule):
    # the switch rule's stored state went to the new rule's state record: a TypeError inside the step, after Adam's
    # step count had moved (and, in a ChainedOptimizer, after the other optimizers had stepped)
    import metaspike

    torch.manual_seed(0)
    net = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)))
    opt = metaspike.MetaplasticAdam(net.parameters(), lr=0.01, meta=2.0, rule="switch")
    for step in range(3):
        if step == 2:
            for group in opt.param_groups:
                group["rule"] = new_rule
        opt.zero_grad()
        net(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_switch_rule_seed_must_fit_a_generator():
    with pytest.raises(ValueError, match=r"SwitchRule seed must be an integer in 0\.\.18446744073709551615"):
        SwitchRule(seed=2**64)


@pytest.mark.parametrize("returns, message", [
    (lambda update, state: update, r"returned Tensor from step; a rule's step returns \(update of the weight's shape, "
                                   r"state\)"),
    (lambda update, state: (update, {}), "returned a state of type dict; a rule's state is a NamedTuple of tensors"),
    (lambda update, state: (update, None), "returned a state of type NoneType"),
])
@pytest.mark.parametrize("wrapped", [False, True])
def test_a_user_rule_returning_the_wrong_kind_of_value_is_one_line(returns, message, wrapped):
    import metaspike
    from metaspike.rules import TanhRule

    class Odd(TanhRule):
        def step(self, hidden, update, meta, state):
            return returns(update, state)

    rule = Odd(name="odd")
    weight = torch.zeros(2, 3, requires_grad=True)
    groups = [{"params": [weight], "consolidate": True}]
    optimizer = (metaspike.metaplastic(torch.optim.SGD(groups, lr=0.1), meta=1.0, rule=rule) if wrapped
                 else metaspike.MetaplasticAdam(groups, meta=1.0, rule=rule))
    weight.sum().backward()
    with pytest.raises(ValueError, match=f"consolidation rule 'odd' \\(Odd\\) {message}"):
        optimizer.step()


@pytest.mark.parametrize("bad", ["nan", "inf", "meta", "float64"])
@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("size", [6, 1024], ids=["eager", "fused"])
def test_a_user_rule_returning_a_non_finite_or_misplaced_update_is_named_at_the_step(bad, wrapped, size):
    """A NaN hidden weight reads as a plausible ±1 weight, so a user's rule returning NaN or inf corrupted every hidden
    weight while the loss stayed finite, without a word in a user's own loop; an update on the meta device was ignored
    by torch (the weight did not change)."""
    import metaspike
    from metaspike.checks import TrainingDiverged
    from metaspike.rules import TanhRule

    class Broken(TanhRule):
        def step(self, hidden, update, meta, state):
            if bad in ("meta", "float64"):
                return update.to(bad if bad == "meta" else torch.float64), state
            return update * float(bad), state

    rule = Broken(name="broken")
    weight = torch.ones(size, 512, requires_grad=True)
    groups = [{"params": [weight], "consolidate": True}]
    optimizer = (metaspike.metaplastic(torch.optim.SGD(groups, lr=0.1), meta=1.0, rule=rule) if wrapped
                 else metaspike.MetaplasticAdam(groups, meta=1.0, rule=rule))
    weight.sum().backward()
    if bad == "meta":
        with pytest.raises(ValueError, match="^consolidation rule 'broken' returned an update on meta for a weight on "
                                             "cpu"):
            optimizer.step()
    elif bad == "float64":  # (it was rounded into the float32 weight, silently)
        with pytest.raises(ValueError, match="^consolidation rule 'broken' returned a torch.float64 update for a "
                                             "torch.float32 weight; a rule's update has the weight's dtype$"):
            optimizer.step()
    else:
        with pytest.raises(TrainingDiverged, match=r"^consolidation rule 'broken' \(Broken, test_rules.py line \d+\) "
                                                   r"made a weight of shape \(\d+, 512\) NaN or infinite from a finite "
                                                   "gradient"):
            optimizer.step()


def test_consolidate_refuses_another_rules_state_and_a_state_of_another_shape():
    """Another rule's record raised AttributeError inside the rule, and a state of the wrong shape was broadcast."""
    from metaspike.functional import bimu_step, consolidate, mesu_step

    with pytest.raises(ValueError, match=r"^state must be CascadeRule's state record \(CascadeState, .*got NoState$"):
        consolidate(torch.ones(3), torch.ones(3), 1.0, rule="cascade", state=NoState())
    small = CascadeRule().init_state(torch.zeros(1))
    with pytest.raises(ValueError, match=r"^state.levels must be a tensor of shape \(2, 3\) for this hidden weight, "
                                         r"got \(2, 1\)$"):
        consolidate(torch.ones(3), torch.ones(3), 1.0, rule="cascade", state=small)
    own = CascadeRule().init_state(torch.zeros(3))
    assert consolidate(torch.ones(3), torch.ones(3), 1.0, rule="cascade", state=own)[0].shape == (3,)
    with pytest.raises(ValueError, match="^lam must be a tensor, got list$"):
        bimu_step([0.0], torch.ones(1), lr=1.0, lr_max=1.0, likelihood_multiplier=1.0, kl_multiplier=1.0, N=10)
    with pytest.raises(ValueError, match="^sigma must be a tensor, got float$"):
        mesu_step(torch.zeros(1), 1.0, torch.ones(1), torch.ones(1), lr_mu=1, lr_sigma=1, sigma_prior=1, mu_prior=0,
                  N=10)


# ---- meta = 0: the built-in rules are the plain optimizer there; a user's rule is still called -----------------


@dataclass(frozen=True)
class _Freeze:
    """A user's rule that keeps every consolidated weight where it is (it does not say it is plain at meta = 0)."""

    name: str = "freeze-test"
    elementwise: bool = True

    def init_state(self, hidden):
        return NoState()

    def state_type(self):
        return NoState

    def step(self, hidden, update, meta, state):
        return torch.zeros_like(update), state


_AT_META_ZERO = {
    "adam": lambda ps, rule: MetaplasticAdam(ps, lr=0.01, meta=0.0, rule=rule, fused=False),
    "adam-compiled": lambda ps, rule: MetaplasticAdam(ps, lr=0.01, meta=0.0, rule=rule, foreach=True, fused=True),
    "sgd": lambda ps, rule: metaplastic(torch.optim.SGD(ps, lr=0.1, momentum=0.9), meta=0.0, rule=rule),
}


@pytest.mark.parametrize("kind", sorted(_AT_META_ZERO))
def test_a_users_rule_is_applied_at_meta_zero(kind):
    # the optimizers took meta = 0 for the plain optimizer whatever the rule: a registered rule was never called
    model = _model()
    hidden = [p.detach().clone() for p in model.parameters() if p.dim() > 1]
    others = [p.detach().clone() for p in model.parameters() if p.dim() == 1]
    trained = _train(model, _AT_META_ZERO[kind](model.parameters(), _Freeze()), 3)
    assert all(torch.equal(a, b) for a, b in zip([p for p in trained if p.dim() > 1], hidden))  # frozen exactly
    assert not any(torch.equal(a, b) for a, b in zip([p for p in trained if p.dim() == 1], others))  # the rest trains


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_a_users_rule_keeps_its_state_at_meta_zero(halving, kind):
    model = _model()
    opt = _AT_META_ZERO[kind](model.parameters(), halving)
    _train(model, opt, 3)
    weight = next(p for p in model.parameters() if p.dim() > 1)
    assert opt.state[weight]["rule_state"]["count"].max().item() == 3.0  # one per step: the rule ran every step


@pytest.mark.parametrize("rule", ["tanh", "none", "cascade", "switch"])
def test_the_built_in_rules_at_meta_zero_are_the_plain_optimizer_bit_for_bit(rule):
    assert get_rule(rule).plain_at_zero is True
    for ours, plain in ((lambda ps: MetaplasticAdam(ps, lr=0.01, meta=0.0, rule=rule),
                         lambda ps: torch.optim.Adam(ps, lr=0.01)),
                        (lambda ps: metaplastic(torch.optim.SGD(ps, lr=0.1, momentum=0.9), meta=0.0, rule=rule),
                         lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))):
        a, b = _model(), _model()
        opt = ours(a.parameters())
        assert all(torch.equal(p, q) for p, q in zip(_train(a, opt, 4), _train(b, plain(b.parameters()), 4)))
        assert not any("rule_state" in state for state in opt.state.values())  # skipped, not called


def test_plain_at_zero_must_say_true_or_false():
    @dataclass(frozen=True)
    class Unclear(_Freeze):
        name: str = "unclear-test"
        plain_at_zero: str = "yes"

    with pytest.raises(ValueError, match=r"rule 'unclear-test' \(Unclear\): plain_at_zero must be True or False, "
                                         r"got 'yes'"):
        register_rule(Unclear())
    with pytest.raises(ValueError, match="plain_at_zero must be True or False"):
        MetaplasticAdam([torch.zeros(2, requires_grad=True)], rule=Unclear())


# ---- a rule's state keeps its dtypes through state_dict() ------------------------------------------------------


class _LockState(NamedTuple):
    locked: torch.Tensor  # bool
    hits: torch.Tensor  # int64, counted from _FROM


#: Where _Lock's counter starts: float32 holds 2**40 + 3 as 2**40 (its spacing there is 2**17), so a counter cast to
#: the weight's float32 and back would lose every count.
_FROM = 2**40


@dataclass(frozen=True)
class _Lock:
    """A synapse whose updates toward zero are blocked for good once it has taken 3 of them."""

    name: str = "lock-test"
    elementwise: bool = False

    def init_state(self, hidden):
        return _LockState(torch.zeros_like(hidden, dtype=torch.bool), torch.full_like(hidden, _FROM, dtype=torch.int64))

    def state_type(self):
        return _LockState

    def step(self, hidden, update, meta, state):
        toward = hidden * update > 0
        update = torch.where(state.locked & toward, torch.zeros_like(update), update)
        hits = state.hits + toward.long()
        return update, _LockState(state.locked | (hits >= _FROM + 3), hits)


@pytest.fixture
def lock():
    from metaspike import rules

    register_rule(_Lock())
    yield "lock-test"
    rules._RULES.pop("lock-test")


@pytest.mark.parametrize("kind", sorted(_OPTIMIZERS))
def test_a_rule_state_of_bool_and_int64_fields_resumes_exactly(lock, kind):
    # torch's load cast every state tensor to the weight's float32: the bool mask's `|` failed on the next step
    a, opt = _resume_equals_uninterrupted(kind, lock)
    weight = next(p for p in a.parameters() if p.dim() > 1)
    state = opt.state[weight]["rule_state"]
    assert state["locked"].any() and state["hits"].max() > _FROM + 3  # (the run did lock synapses and count on)
    again = _model()
    loaded = _OPTIMIZERS[kind](again.parameters(), lock)
    loaded.load_state_dict(opt.state_dict())
    fields = loaded.state[next(p for p in again.parameters() if p.dim() > 1)]["rule_state"]
    assert (fields["locked"].dtype, fields["hits"].dtype) == (torch.bool, torch.int64)


def test_a_rule_state_field_that_its_dtype_cannot_hold_is_refused(lock):
    a = _model()
    opt = MetaplasticAdam(a.parameters(), lr=0.01, meta=1.0, rule=lock)
    _train(a, opt, 1)
    saved = opt.state_dict()
    index = next(i for i, s in saved["state"].items() if "rule_state" in s)
    saved["state"][index]["rule_state"]["hits"] = saved["state"][index]["rule_state"]["hits"].double() + 0.5
    with pytest.raises(ValueError, match=rf"state_dict: parameter {index}'s rule_state hits is torch.float64 and holds "
                                         r"values that torch.int64, its dtype in _Lock.init_state, cannot hold"):
        MetaplasticAdam(_model().parameters(), lr=0.01, meta=1.0, rule=lock).load_state_dict(saved)


_RULE_CHANGE_OPTIMIZERS = {
    "MetaplasticAdam": lambda w: MetaplasticAdam([{"params": [w], "consolidate": True}], lr=0.01, meta=1.0,
                                                 rule="switch"),
    "metaplastic(SGD)": lambda w: metaplastic(torch.optim.SGD([{"params": [w], "consolidate": True}], lr=0.01),
                                              meta=1.0, rule="switch"),
}


@pytest.mark.parametrize("make", _RULE_CHANGE_OPTIMIZERS.values(), ids=_RULE_CHANGE_OPTIMIZERS)
@pytest.mark.parametrize("new_rule, fields", [("tanh", []), ("cascade", ["levels"])])
def test_a_rule_changed_between_steps_leaves_a_state_the_optimizer_loads(make, new_rule, fields):
    """The switch rule's state stayed in optimizer.state under the new rule, and the optimizer refused its own state
    dict: "parameter 0's rule_state has the fields ['consolidated', ...], but its group's TanhRule keeps []"."""
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = make(w)
    w.grad = torch.ones_like(w)
    opt.step()
    opt.param_groups[0]["rule"] = new_rule
    before_its_step = copy.deepcopy(opt.state_dict())  # (the switch state is left out: the new rule starts afresh)
    w.grad = torch.ones_like(w)
    opt.step()
    assert sorted(opt.state[w].get("rule_state", {})) == fields  # (the new rule's state in place of switch's)
    after_its_step = copy.deepcopy(opt.state_dict())
    for state_dict in (before_its_step, after_its_step):
        opt.load_state_dict(state_dict)
        w.grad = torch.ones_like(w)
        opt.step()
        assert sorted(opt.state[w].get("rule_state", {})) == fields


@pytest.mark.parametrize("make", _RULE_CHANGE_OPTIMIZERS.values(), ids=_RULE_CHANGE_OPTIMIZERS)
def test_a_rule_changed_to_one_whose_state_has_the_same_fields_starts_afresh(make):
    """CascadeRule(3) to CascadeRule(4): the state's fields kept their names, so the three-level chain went to the
    four-level rule, which failed inside its step (IndexError), and the optimizer refused its own state dict (its
    levels "saved from another model?"); the new rule's states go on to the next optimizer too."""
    from metaspike.optim import inherit_rule_states
    from metaspike.rules import CascadeRule

    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = make(w)
    opt.param_groups[0]["rule"] = CascadeRule(n=3)
    w.grad = torch.ones_like(w)
    opt.step()
    assert opt.state[w]["rule_state"]["levels"].shape == (2, 4, 3)
    opt.param_groups[0]["rule"] = CascadeRule(n=4)
    opt.load_state_dict(opt.state_dict())  # (the three-level chain is left out: the new rule starts afresh)
    w.grad = torch.ones_like(w)
    opt.step()
    assert opt.state[w]["rule_state"]["levels"].shape == (3, 4, 3)
    opt.param_groups[0]["rule"] = CascadeRule(n=2)
    successor = make(w)
    successor.param_groups[0]["rule"] = CascadeRule(n=2)
    assert inherit_rule_states(successor, opt) == 0  # (opt holds CascadeRule(4)'s chain, not CascadeRule(2)'s)
    w.grad = torch.ones_like(w)
    opt.step()
    assert opt.state[w]["rule_state"]["levels"].shape == (1, 4, 3)
    assert inherit_rule_states(successor, opt) == 1
    # a copy, or an optimizer that loaded the state dict, knows which rule made each state too (it failed there)
    copied_w, copied = copy.deepcopy((w, opt))
    loaded = make(w)
    loaded.param_groups[0]["rule"] = CascadeRule(n=2)
    loaded.load_state_dict(opt.state_dict())
    for weight, optimizer in ((copied_w, copied), (w, loaded)):
        optimizer.param_groups[0]["rule"] = CascadeRule(n=5)
        weight.grad = torch.ones_like(weight)
        optimizer.step()
        assert optimizer.state[weight]["rule_state"]["levels"].shape == (4, 4, 3)
        assert "rule_made_by" not in str(optimizer.state_dict())  # (kept in the process only)


@pytest.mark.parametrize("make", _RULE_CHANGE_OPTIMIZERS.values(), ids=_RULE_CHANGE_OPTIMIZERS)
def test_a_rule_registered_again_under_the_name_a_group_gives_starts_afresh(make):
    """register_rule(..., replace=True), as after editing a rule in a notebook: a group naming the rule handed the
    former rule's three-level chain to the four-level one (an IndexError inside its step)."""
    from metaspike import rules
    from metaspike.rules import CascadeRule

    rules.register_rule(CascadeRule(n=3, name="cascade-registered-again"))
    try:
        w = torch.nn.Parameter(torch.randn(4, 3))
        opt = make(w)
        opt.param_groups[0]["rule"] = "cascade-registered-again"
        w.grad = torch.ones_like(w)
        opt.step()
        rules.register_rule(CascadeRule(n=4, name="cascade-registered-again"), replace=True)
        w.grad = torch.ones_like(w)
        opt.step()
        assert opt.state[w]["rule_state"]["levels"].shape == (3, 4, 3)
    finally:
        rules._RULES.pop("cascade-registered-again")


def test_a_rule_whose_step_cannot_take_the_optimizers_arguments_is_refused_naming_its_file_and_line():
    """step(self, hidden, update) failed at the call inside the optimizer's step: a 30-line traceback, exit 1."""
    from metaspike.rules import register_rule
    from metaspike.rules.base import Stateless

    class TwoArguments(Stateless):
        name = "two-arguments"

        def step(self, hidden, update):
            return update, ()

    with pytest.raises(ValueError, match=r"^consolidation rule 'two-arguments' \(TwoArguments\): its "
                                         r"step\(hidden, update\) \(test_rules.py line \d+\) cannot be called as "
                                         r"step\(hidden, update, meta, state\) -> \(update, state\)$"):
        register_rule(TwoArguments())
    with pytest.raises(ValueError, match="cannot be called as step"):
        MetaplasticAdam([torch.nn.Parameter(torch.zeros(2))], rule=TwoArguments())
