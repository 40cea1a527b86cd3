"""The stateful consolidation rules: the cascade of coupled variables and the bistable switch."""

import io

import pytest
import torch

from bnn import MLP
from metaspike.consolidation import CascadeRule, SwitchRule, available_rules, consolidate, get_rule
from metaspike.optim import RULE_STATE, MetaplasticAdam, metaplastic


def test_cascade_one_step_by_hand_two_variables():
    # C = (1, 2), g_1 = meta/4 = 0.5; u' = (1 - 0.5, 1) = (0.5, 1):
    # (1 + 0.5) a - 0.5 b = 0.5 and -0.5 a + (2 + 0.5) b = 2  =>  a = 9/14, b = 13/14
    rule = CascadeRule(n=2)
    hidden = torch.tensor([1.0], dtype=torch.float64)
    state = rule.init_state(hidden)
    update = rule.apply(hidden, torch.tensor([0.5], dtype=torch.float64), 2.0, state)
    torch.testing.assert_close(hidden - update, torch.tensor([9 / 14], dtype=torch.float64))
    torch.testing.assert_close(state["u2"], torch.tensor([13 / 14], dtype=torch.float64))


def test_cascade_one_step_by_hand_three_variables():
    # C = (1, 2, 4), g = (meta/4, meta/8) = (2, 1); u' = (1, 0, 0):
    # 3a - 2b = 1, -2a + 5b - c = 0, -b + 5c = 0  =>  c = b/5, a = 12b/5, b = 5/26
    rule = CascadeRule(n=3)
    state = {"u2": torch.zeros(1, dtype=torch.float64), "u3": torch.zeros(1, dtype=torch.float64)}
    hidden = torch.zeros(1, dtype=torch.float64)
    update = rule.apply(hidden, torch.tensor([-1.0], dtype=torch.float64), 8.0, state)
    torch.testing.assert_close(-update, torch.tensor([12 / 26], dtype=torch.float64))
    torch.testing.assert_close(state["u2"], torch.tensor([5 / 26], dtype=torch.float64))
    torch.testing.assert_close(state["u3"], torch.tensor([1 / 26], dtype=torch.float64))


def test_cascade_conserves_the_total_and_flows_down_without_overshoot():
    g = torch.Generator().manual_seed(0)
    rule = CascadeRule(n=4)
    hidden = torch.randn(50, dtype=torch.float64, generator=g)
    state = rule.init_state(hidden)
    total = lambda w: w + sum(2.0 ** (k - 1) * state[f"u{k}"] for k in range(2, 5))  # noqa: E731
    for meta in (0.5, 8.0, 1000.0):  # any coupling: the implicit step is stable
        update = torch.randn(50, dtype=torch.float64, generator=g)
        before = total(hidden)
        pushed = torch.stack([hidden - update] + [state[f"u{k}"] for k in range(2, 5)])
        new = hidden - consolidate(hidden, update, meta, rule, state)
        torch.testing.assert_close(total(new), before - update)
        # no overshoot: each new level is a weighted mean of the pushed levels (discrete maximum principle)
        levels = torch.stack([new] + [state[f"u{k}"] for k in range(2, 5)])
        assert torch.all(levels >= pushed.min(0).values - 1e-12)
        assert torch.all(levels <= pushed.max(0).values + 1e-12)
        hidden = new


def test_cascade_leak_drains_the_last_variable_and_meta_zero_is_no_consolidation():
    rule = CascadeRule(n=2, leak=2.0)
    state = {"u2": torch.ones(1)}
    update = rule.apply(torch.zeros(1), torch.zeros(1), 0.0, state)
    assert torch.equal(update, torch.zeros(1))
    torch.testing.assert_close(state["u2"], torch.tensor([0.5]))  # 2·(u - 1) = -2u
    fresh = CascadeRule().init_state(torch.ones(3))
    assert torch.equal(CascadeRule().apply(torch.ones(3), torch.full((3,), 0.25), 0.0, fresh), torch.full((3,), 0.25))


def _switch_run(updates, meta=50.0, seed=0):
    rule = SwitchRule(seed=seed)
    hidden = torch.tensor([1.0])
    state = rule.init_state(hidden)
    return [rule.apply(hidden, torch.tensor([u]), meta, state).item() for u in updates], state


def test_switch_consolidates_repeated_pushes_and_then_blocks_toward_zero():
    kept, state = _switch_run([-0.1, -0.1, -0.1, 0.1, 0.1, -0.1])
    assert kept == pytest.approx([-0.1, -0.1, -0.1, 0.0, 0.0, -0.1])
    assert state["consolidated"].item() == 1.0


def test_switch_alternating_updates_stay_plastic():
    updates = [0.1, -0.1] * 50
    kept, state = _switch_run(updates, meta=100.0)
    assert kept == pytest.approx(updates)
    assert state["consolidated"].item() == 0.0 and state["run"].item() == 0.0


def test_switch_is_random_but_repeats_with_its_seed():
    rule = SwitchRule(seed=3)
    hidden, update = torch.ones(2000), torch.full((2000,), -0.1)
    runs = []
    for _ in range(2):
        state = rule.init_state(hidden)
        rule.apply(hidden, update, 0.7, state)
        rule.apply(hidden, update, 0.7, state)  # r = 1: p = 1 - exp(-0.7) ≈ 0.50
        runs.append(state["consolidated"].clone())
    assert torch.equal(runs[0], runs[1])
    assert abs(runs[0].mean().item() - (1 - torch.exp(torch.tensor(-0.7)).item())) < 0.05
    other = SwitchRule(seed=4).init_state(hidden)
    SwitchRule(seed=4).apply(hidden, update, 0.7, other)
    SwitchRule(seed=4).apply(hidden, update, 0.7, other)
    assert not torch.equal(other["consolidated"], runs[0])


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


@pytest.mark.parametrize("rule", ["cascade", "switch"])
@pytest.mark.parametrize("kind", sorted(_OPTIMIZERS))
def test_optimizers_run_the_rule_and_resume_exactly_from_state_dict(rule, kind):
    a, b = _model(), _model()
    opt_a, opt_b = _OPTIMIZERS[kind](a.parameters(), rule), _OPTIMIZERS[kind](b.parameters(), rule)
    full = _train(a, opt_a, 8)
    _train(b, opt_b, 4)
    buffer = io.BytesIO()
    torch.save({"model": b.state_dict(), "opt": opt_b.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    c = _model(5)
    c.load_state_dict(saved["model"])
    opt_c = _OPTIMIZERS[kind](c.parameters(), rule)
    opt_c.load_state_dict(saved["opt"])
    resumed = _train(c, opt_c, 4, start=4)
    for p, q in zip(full, resumed):
        assert torch.equal(p, q)
    weight = next(p for p in a.parameters() if p.dim() > 1)
    assert any(key.startswith(RULE_STATE) for key in opt_a.state[weight])
    assert not any(key.startswith(RULE_STATE) for p in a.parameters() if p.dim() == 1 for key in opt_a.state[p])


@pytest.mark.parametrize("rule", ["cascade", "switch"])
def test_the_rule_changes_the_training(rule):
    a, b = _model(), _model()
    ours = _train(a, MetaplasticAdam(a.parameters(), lr=0.01, meta=2.0, rule=rule), 6)
    plain = _train(b, MetaplasticAdam(b.parameters(), lr=0.01, meta=0.0, rule=rule), 6)
    assert not torch.equal(ours[0], plain[0])


def test_adam_with_the_cascade_follows_the_rule_on_the_step():
    w = torch.nn.Parameter(torch.tensor([[0.5, -0.5]]))
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
        (lambda: CascadeRule(leak=-1.0), "CascadeRule leak must be a finite number >= 0, got -1.0"),
        (lambda: SwitchRule(damping=1.5), r"SwitchRule damping must be a number in \[0, 1\], got 1.5"),
        (lambda: SwitchRule(seed="x"), "SwitchRule seed must be an integer, got 'x'"),
        (lambda: consolidate(torch.ones(1), torch.ones(1), 1.0, "switch"), "the 'switch' rule is stateful"),
        (lambda: get_rule("beaker"), r"available: none, tanh \(stateless\), cascade, switch \(stateful\)"),
    ],
)
def test_invalid_rule_hyperparameters_name_the_problem(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_rules_are_registered_by_name():
    assert available_rules() == ["cascade", "none", "switch", "tanh"]
    assert get_rule("cascade") == CascadeRule() and get_rule("switch") == SwitchRule()
