"""MetaplasticAdam and the metaplastic() wrapper follow the rule exactly."""

import io
import math
import re
import warnings
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

import metaspike
from bnn import MLP
from metaspike.functional import consolidate
from metaspike.optim import MetaplasticAdam, metaplastic, param_groups
from metaspike.rules import CascadeRule, NoState, TanhRule, get_rule
from metaspike.synapse import mark_hidden_weight


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MLP([20, 16, 16, 4])


def _data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(64, 20, generator=g), torch.randint(0, 4, (64,), generator=g)


def _train(model, opt, steps: int, scheduler=None):
    x, y = _data()
    for i in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i % 4 * 16:(i % 4 + 1) * 16]), y[i % 4 * 16:(i % 4 + 1) * 16]).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_meta_zero_equals_torch_adam_bit_for_bit(foreach, weight_decay):
    a, b = _model(), _model()
    ours = _train(a, MetaplasticAdam(a.parameters(), lr=0.01, weight_decay=weight_decay, meta=0.0, foreach=foreach), 12)
    ref = _train(b, torch.optim.Adam(b.parameters(), lr=0.01, weight_decay=weight_decay, foreach=foreach), 12)
    for p, q in zip(ours, ref):
        assert torch.equal(p, q)


def _reference_step(w, g, m, v, t, lr, b1, b2, eps, meta):
    """Independent few-line implementation of the paper's metaplastic Adam step."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    f_meta = 1 - torch.tanh(meta * w) ** 2
    toward_zero = torch.sign(w) * m > 0
    m_used = torch.where(toward_zero, f_meta * m_hat, m_hat) if w.dim() > 1 else m_hat
    return w - lr * m_used / (v_hat.sqrt() + eps), m, v


@pytest.mark.parametrize("path", [{"foreach": False}, {"foreach": True}, {"fused": True}])
@pytest.mark.parametrize("meta", [0.7, 1.35, 5.0])
def test_follows_the_rule_of_the_paper(path, meta):
    torch.manual_seed(3)
    weights = [torch.nn.Parameter(torch.randn(6, 5) * 0.5), torch.nn.Parameter(torch.randn(5) * 0.5)]
    opt = MetaplasticAdam([{"params": weights[:1], "consolidate": True}, {"params": weights[1:]}], lr=0.05, meta=meta, **path)
    ref = [w.detach().clone().double() for w in weights]
    moments = [(torch.zeros_like(r), torch.zeros_like(r)) for r in ref]
    for t in range(1, 8):
        grads = [torch.randn_like(w) for w in weights]
        for w, g in zip(weights, grads):
            w.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            ref[i], m, v = _reference_step(ref[i], g.double(), *moments[i], t, 0.05, 0.9, 0.999, 1e-8, meta)
            moments[i] = (m, v)
    for w, r in zip(weights, ref):
        torch.testing.assert_close(w.detach().double(), r, rtol=1e-5, atol=1e-6)


def test_damping_only_slows_updates_toward_zero():
    w = mark_hidden_weight(torch.nn.Parameter(torch.tensor([[1.0, 1.0, -1.0, -1.0]])))
    plain = mark_hidden_weight(torch.nn.Parameter(w.detach().clone()))
    grad = torch.tensor([[1.0, -1.0, -1.0, 1.0]])  # toward zero, away, toward zero, away
    for p, meta in ((w, 2.0), (plain, 0.0)):
        p.grad = grad.clone()
        MetaplasticAdam([p], lr=0.1, meta=meta).step()
    step_meta = (w - torch.tensor([[1.0, 1.0, -1.0, -1.0]])).detach()
    step_plain = (plain - torch.tensor([[1.0, 1.0, -1.0, -1.0]])).detach()
    factor = 1 - math.tanh(2.0) ** 2
    torch.testing.assert_close(step_meta[0, [0, 2]], step_plain[0, [0, 2]] * factor)
    assert torch.equal(step_meta[0, [1, 3]], step_plain[0, [1, 3]])


def _fixed_gradient_steps(params, opt, steps=5):
    g = torch.Generator().manual_seed(7)
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(steps)]
    for step in grads:
        for p, grad in zip(params, step):
            p.grad = grad.clone()
        opt.step()
    return [p.detach().clone() for p in params]


def test_one_dimensional_parameters_get_plain_adam():
    a, b = _model(), _model()
    ours = _fixed_gradient_steps(list(a.parameters()), MetaplasticAdam(a.parameters(), lr=0.05, meta=3.0))
    ref = _fixed_gradient_steps(list(b.parameters()), torch.optim.Adam(b.parameters(), lr=0.05))
    for (name, _), p, q in zip(a.named_parameters(), ours, ref):
        assert torch.equal(p, q) == (p.dim() == 1), name


def test_meta_is_a_param_group_hyperparameter():
    a, b = _model(), _model()
    ours = _fixed_gradient_steps(list(a.parameters()), MetaplasticAdam(param_groups(a, [0.0, 4.0, 0.0]), lr=0.05))
    ref = _fixed_gradient_steps(list(b.parameters()), torch.optim.Adam(b.parameters(), lr=0.05))
    changed = [name for (name, _), p, q in zip(a.named_parameters(), ours, ref) if not torch.equal(p, q)]
    assert changed == ["4.weight"]  # only the second binary layer (index 4 after Flatten, Linear, BN, sign)


def test_a_state_dict_of_the_same_parameters_in_other_groups_is_refused_for_its_groups():
    """Not blamed on a moment's shape "from another model": one line about the groups, before torch reads them."""
    model = metaspike.binarize(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    saved = MetaplasticAdam(param_groups(model, [1.0, 3.0]), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    saved.step()
    with pytest.raises(ValueError, match=r"^state_dict holds 3 param groups; this MetaplasticAdam has 1"):
        MetaplasticAdam(model.parameters(), meta=3.0).load_state_dict(saved.state_dict())


def test_state_dict_round_trip_resumes_exactly():
    a, b = _model(), _model()
    opt_a = MetaplasticAdam(a.parameters(), lr=0.01, meta=2.0)
    full = _train(a, opt_a, 6)
    opt_b = MetaplasticAdam(b.parameters(), lr=0.01, meta=2.0)
    _train(b, opt_b, 3)
    buffer = io.BytesIO()
    torch.save({"model": b.state_dict(), "opt": opt_b.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    c = _model(seed=99)
    c.load_state_dict(saved["model"])
    opt_c = MetaplasticAdam(c.parameters(), lr=0.5, meta=0.0)
    opt_c.load_state_dict(saved["opt"])
    assert opt_c.param_groups[0]["meta"] == 2.0 and opt_c.param_groups[0]["lr"] == 0.01
    x, y = _data()
    for i in range(3, 6):
        opt_c.zero_grad()
        torch.nn.functional.cross_entropy(c(x[i % 4 * 16:(i % 4 + 1) * 16]), y[i % 4 * 16:(i % 4 + 1) * 16]).backward()
        opt_c.step()
    for p, q in zip(full, c.parameters()):
        assert torch.equal(p, q)


def test_lr_scheduler_changes_the_step():
    a, b = _model(), _model()
    opt_a = MetaplasticAdam(a.parameters(), lr=0.01, meta=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt_a, step_size=2, gamma=0.1)
    with_sched = _train(a, opt_a, 4, sched)
    assert opt_a.param_groups[0]["lr"] == pytest.approx(0.0001)
    without = _train(b, MetaplasticAdam(b.parameters(), lr=0.01, meta=1.0), 4)
    assert not all(torch.equal(p, q) for p, q in zip(with_sched, without))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"meta": -1.0}, "meta must be a finite number in [0, 3.40282e+38], got -1.0"),
        ({"meta": float("nan")}, "meta must be a finite number in [0, 3.40282e+38], got nan"),
        ({"meta": 1e39}, "meta must be a finite number in [0, 3.40282e+38], got 1e+39"),  # infinite in float32
        ({"lr": -0.1}, "lr must be a finite number in [0, 3.40282e+38], got -0.1"),
        ({"lr": float("nan")}, "lr must be a finite number in [0, 3.40282e+38], got nan"),
        ({"betas": (0.9, 1.0)}, "each of betas must be a finite number in [0, 1), got 1.0"),
        ({"betas": (2, 2)}, "each of betas must be a finite number in [0, 1), got 2"),
        ({"betas": (0.9,)}, "betas must be two numbers in [0, 1)"),
        ({"eps": -1.0}, "eps must be a finite number in [0, 3.40282e+38]"),
        ({"eps": float("inf")}, "eps must be a finite number in [0, 3.40282e+38]"),
        ({"weight_decay": float("inf")}, "weight_decay must be a finite number in [0, 3.40282e+38]"),
        ({"weight_decay": 1e39}, "weight_decay must be a finite number in [0, 3.40282e+38]"),  # float32's largest
        ({"rule": "beaker?"}, "unknown consolidation rule 'beaker?'; available: cascade, none, switch, tanh"),
    ],
)
def test_invalid_hyperparameters_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MetaplasticAdam(_model().parameters(), **kwargs)


def test_invalid_meta_in_a_param_group():
    model = _model()
    with pytest.raises(ValueError, match=re.escape("meta must be a finite number in [0, 3.40282e+38], got -2")):
        MetaplasticAdam([{"params": model.parameters(), "meta": -2}])


@pytest.mark.parametrize("group, message", [
    ({"lr": -1}, "lr must be a finite number in [0, 3.40282e+38], got -1"),
    ({"lr": float("nan")}, "lr must be a finite number in [0, 3.40282e+38], got nan"),
    ({"betas": (1, 1)}, "each of betas must be a finite number in [0, 1), got 1"),
    ({"consolidate": "yes"}, "consolidate must be True, False or None, got 'yes'"),
    ({"consolidate": 1}, "consolidate must be True, False or None, got 1"),  # (1 == True passed)
])
def test_invalid_hyperparameters_of_a_param_group_name_the_problem(group, message):
    model = _model()
    with pytest.raises(ValueError, match=re.escape(message)):
        MetaplasticAdam([{"params": model.parameters(), **group}])


def test_numpy_bools_are_taken_as_flags_as_bools_are():
    """(A flag checked by identity with True/False refused them.)"""
    steps = []
    for consolidated, foreach in ((np.bool_(False), np.bool_(False)), (False, False)):
        model = _model()
        opt = MetaplasticAdam([{"params": model.parameters(), "consolidate": consolidated}], meta=5.0, foreach=foreach)
        x, y = _data()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        steps.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*steps))


def test_model_parameters_consolidate_only_the_binary_synapses_never_a_float_layer():
    import metaspike

    torch.manual_seed(0)
    net = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)),
                             exclude=["2"])
    float_layer = net[2].weight
    plain = torch.nn.Parameter(float_layer.detach().clone())
    opt = MetaplasticAdam(net.parameters(), lr=0.1, meta=50.0)
    ref = torch.optim.Adam([plain], lr=0.1)
    hidden = metaspike.hidden_weights(net)[0]
    before = hidden.detach().clone()
    for _ in range(3):
        grad = torch.randn(3, 5)
        float_layer.grad, plain.grad = grad.clone(), grad.clone()
        hidden.grad = torch.sign(before) * 0.1  # every update moves the hidden weights toward zero
        opt.step()
        ref.step()
    assert torch.equal(float_layer, plain)  # the float layer gets plain Adam
    adam_only = before - 3 * 0.1 * torch.sign(before)
    assert torch.all((hidden - before).abs() < (adam_only - before).abs())  # the synapses were damped


def test_param_groups_checks_the_number_of_layers():
    with pytest.raises(ValueError, match="got 2 meta values but the model has 3 weight layers"):
        param_groups(_model(), [1.0, 2.0])


def test_wrapper_with_meta_zero_is_the_plain_optimizer():
    a, b = _model(), _model()
    ours = _train(a, metaplastic(torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), meta=0.0), 6)
    ref = _train(b, torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9), 6)
    for p, q in zip(ours, ref):
        assert torch.equal(p, q)


def test_wrapper_damps_sgd_updates_toward_zero():
    w = mark_hidden_weight(torch.nn.Parameter(torch.tensor([[0.5, 0.5, -0.5, -0.5]])))
    opt = metaplastic(torch.optim.SGD([w], lr=0.1), meta=1.5)
    grad = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    w.grad = grad.clone()
    before = w.detach().clone()
    opt.step()
    expected = before - consolidate(before, 0.1 * grad, 1.5)[0]
    torch.testing.assert_close(w.detach(), expected)
    factor = 1 - math.tanh(0.75) ** 2
    torch.testing.assert_close(w.detach(), torch.tensor([[0.5 - 0.1 * factor, 0.6, -0.5 + 0.1 * factor, -0.6]]))


def test_wrapper_works_with_adamw_and_state_dict():
    model = _model()
    opt = metaplastic(torch.optim.AdamW(model.parameters(), lr=0.01), meta=2.0)
    _train(model, opt, 2)
    state = opt.state_dict()
    assert state["param_groups"][0]["meta"] == 2.0
    with pytest.raises(ValueError, match="already has metaplastic consolidation"):
        metaplastic(opt)
    with pytest.raises(ValueError, match=r"\(MetaplasticAdam\) already has metaplastic consolidation"):  # (twice)
        metaplastic(MetaplasticAdam(model.parameters(), lr=0.01, meta=2.0), meta=2.0)


def test_rules():
    ones = torch.ones(3)
    assert torch.equal(TanhRule().step(torch.zeros(3), ones, 5.0, NoState())[0], ones)  # factor 1 at W_h = 0
    assert torch.equal(get_rule("none").step(ones, ones, 9.0, NoState())[0], ones)
    hidden = torch.tensor([2.0, -2.0, 2.0, -2.0])
    update = torch.tensor([1.0, -1.0, -1.0, 1.0])
    out, state = consolidate(hidden, update, 1.0)
    assert state == NoState()
    f = 1 - math.tanh(2.0) ** 2
    torch.testing.assert_close(out, torch.tensor([f, -f, -1.0, 1.0]))


def test_fused_and_separate_steps_agree_and_resume_from_state_dict():
    a, b = _model(), _model()
    fused = _train(a, MetaplasticAdam(a.parameters(), lr=0.01, meta=2.0, fused=True), 6)
    separate = _train(b, MetaplasticAdam(b.parameters(), lr=0.01, meta=2.0, fused=False), 6)
    for p, q in zip(fused, separate):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fused must be True, False or None"):
        MetaplasticAdam(a.parameters(), fused="yes")


def test_consolidate_matches_the_rule_written_out():
    g = torch.Generator().manual_seed(5)
    hidden, update = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    hidden[:10] = 0.0
    for meta in (0.5, 1.35, 4.0):
        factor = 1 - torch.tanh(meta * hidden.double()) ** 2
        expected = torch.where(hidden.double() * update.double() > 0, update.double() * factor, update.double())
        torch.testing.assert_close(consolidate(hidden, update, meta)[0].double(), expected, rtol=1e-5, atol=1e-6)


def test_param_groups_lists_a_tied_weight_once():
    import metaspike

    net = torch.nn.Sequential(torch.nn.Linear(6, 6, bias=False), torch.nn.Tanh(), torch.nn.Linear(6, 6, bias=False))
    net[2].weight = net[0].weight  # tied
    metaspike.binarize(net)
    groups = param_groups(net, 5.0)
    listed = [p for g in groups for p in g["params"]]
    assert len(listed) == len({id(p) for p in listed})  # each parameter once (the two layers' gains are separate)
    assert len([p for g in groups if g["consolidate"] for p in g["params"]]) == 1
    MetaplasticAdam(groups, lr=0.01)  # torch refuses a parameter listed twice


def _stepped(make):
    torch.manual_seed(0)
    model = MLP([20, 8, 3])
    opt = make(model)
    model(torch.randn(5, 20)).sum().backward()
    opt.step()
    return model, opt


@pytest.mark.parametrize("make", [
    lambda m: MetaplasticAdam(m.parameters(), lr=0.01, meta=1.0, rule=CascadeRule(n=2, leak=0.1)),
    lambda m: metaplastic(torch.optim.SGD(m.parameters(), lr=0.1), meta=1.0, rule=CascadeRule(n=2, leak=0.1)),
], ids=["MetaplasticAdam", "metaplastic(SGD)"])
def test_rule_objects_survive_a_weights_only_checkpoint_and_loaded_groups_are_checked(make, tmp_path):
    model, opt = _stepped(make)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    saved = torch.load(tmp_path / "opt.pt", weights_only=True)
    fresh = make(model)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["rule"] == CascadeRule(n=2, leak=0.1)
    assert opt.param_groups[0]["rule"] == CascadeRule(n=2, leak=0.1)  # saving left the optimizer's own object
    saved["param_groups"][0]["meta"] = -3.0
    with pytest.raises(ValueError, match=re.escape("meta must be a finite number in [0, 3.40282e+38], got -3")):
        make(model).load_state_dict(saved)


def test_metaplastic_damps_a_step_with_a_closure_as_one_without():
    def moved(meta: float, closure: bool) -> float:
        torch.manual_seed(0)
        net = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(6, 3)))
        opt = metaplastic(torch.optim.SGD(net.parameters(), lr=1.0), meta=meta)
        x, before = torch.randn(4, 6), metaspike.hidden_weights(net)[0].detach().clone()

        def loss():
            opt.zero_grad()
            value = net(x).pow(2).sum()
            value.backward()
            return value

        opt.step(loss) if closure else (loss(), opt.step())
        return (metaspike.hidden_weights(net)[0] - before).abs().sum().item()

    assert moved(3.0, closure=True) == moved(3.0, closure=False) < moved(0.0, closure=True)


def test_wrapped_optimizers_check_added_groups_and_meta_must_be_a_number():
    opt = metaplastic(torch.optim.SGD(MLP([20, 8, 3]).parameters(), lr=0.1))
    with pytest.raises(ValueError, match=re.escape("meta must be a finite number in [0, 3.40282e+38], got nan")):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "meta": float("nan")})
    assert len(opt.param_groups) == 1  # the refused group was not kept
    with pytest.raises(ValueError, match=re.escape("meta must be a finite number in [0, 3.40282e+38], got '3'")):
        MetaplasticAdam(MLP([20, 8, 3]).parameters(), meta="3")
    with pytest.raises(ValueError, match="meta must be a number or a list of numbers"):
        param_groups(MLP([20, 8, 3]), "12")


@pytest.mark.parametrize("bad, message", [(dict(betas=0.9), "betas must be two numbers in [0, 1), got 0.9"),
                                          (dict(foreach="yes"), "foreach must be True, False or None, got 'yes'"),
                                          (dict(foreach=1), "foreach must be True, False or None, got 1")])
def test_more_bad_adam_arguments_get_one_line(bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MetaplasticAdam(MLP([4, 3, 2]).parameters(), **bad)


def test_meta_on_an_optimizer_that_consolidates_nothing_warns():
    """On a model that was never binarized, meta > 0 changes nothing: say so (at the first step, when a deep-copied
    binary model has marked its hidden weights again) instead of training as if it did."""
    import copy

    def first_step(model, make):
        optimizer = make(model)
        model(torch.ones(2, 3)).sum().backward()
        optimizer.step()

    float_model = torch.nn.Linear(3, 2)
    with pytest.warns(UserWarning, match="consolidates nothing"):
        first_step(float_model, lambda m: MetaplasticAdam(m.parameters(), meta=5.0))
    with pytest.warns(UserWarning, match="consolidates nothing"):
        first_step(float_model, lambda m: metaplastic(torch.optim.SGD(m.parameters(), lr=0.1), meta=5.0))
    binary = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(3, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first_step(float_model, lambda m: MetaplasticAdam(m.parameters(), meta=0.0))
        first_step(float_model, lambda m: MetaplasticAdam(param_groups(m, 5.0)))  # the full-precision variant
        first_step(binary, lambda m: MetaplasticAdam(m.parameters(), meta=5.0))
        first_step(copy.deepcopy(binary), lambda m: MetaplasticAdam(m.parameters(), meta=5.0))
        first_step(copy.deepcopy(MLP([3, 4, 2])), lambda m: MetaplasticAdam(m.parameters(), meta=5.0))


def test_the_wrong_object_for_metaplastic_or_param_groups_is_one_line():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="optimizer must be a torch optimizer .* got Linear"):
        metaplastic(model)
    with pytest.raises(ValueError, match=r"model must be a torch nn.Module \(param_groups\(model, meta\)\), got list"):
        param_groups(list(model.parameters()), 1.0)


def test_a_compiled_step_equals_the_eager_step():
    """Traced by torch.compile, the step's bias corrections went wrong from the third step on (torch 2.13)."""
    def run(compiled: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(5))
        opt = MetaplasticAdam([p], lr=0.1)
        step = torch.compile(opt.step) if compiled else opt.step
        generator, out = torch.Generator().manual_seed(1), []
        for _ in range(5):
            p.grad = torch.randn(5, generator=generator)
            step()
            out.append(p.detach().clone())
        return out

    assert all(torch.equal(a, b) for a, b in zip(run(False), run(True)))


@pytest.mark.parametrize("rule", ["switch", "cascade"])
def test_a_wrapped_optimizer_with_a_stateful_rule_steps_inside_a_compiled_training_step(rule, working_compiler):
    """The switch rule's first state reads the weight's bytes: traced inside a compiled training step it failed
    ("setStorage: ... out of bounds"). Compiled, the step makes the same states as eager."""
    def run(compiled: bool) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        torch.manual_seed(0)
        model = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Linear(16, 3)))
        opt = metaplastic(torch.optim.SGD(model.parameters(), lr=0.05), meta=0.5, rule=rule)

        def step(x: torch.Tensor) -> None:
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()

        step = torch.compile(step) if compiled else step
        generator = torch.Generator().manual_seed(1)
        for _ in range(3):
            step(torch.randn(8, 6, generator=generator))
        weights = [p.detach().clone() for p in model.parameters()]
        return weights, [opt.state[p]["rule_state"] for p in model.parameters() if "rule_state" in opt.state[p]]

    (eager, eager_states), (compiled, compiled_states) = run(False), run(True)
    assert len(eager_states) == len(compiled_states) == 2  # (the two weights; the biases are not consolidated)
    if rule == "switch":  # each weight's generator: seeded from its first bytes, advanced by one draw per step
        assert all(torch.equal(a["rng"], b["rng"]) for a, b in zip(eager_states, compiled_states))
    for a, b in zip(eager, compiled):
        # (the compiled forward and backward sum in another order: gradients a few float32 roundings of their sums
        # of at most 16 terms of size <= 16 apart, times lr 0.05 over three steps)
        torch.testing.assert_close(b, a, rtol=0, atol=3 * 0.05 * 16 * 16 * 2**-20)


def test_a_post_hook_registered_before_metaplastic_sees_the_damped_weights():
    """The damping is part of the step: a hook registered on the optimizer before metaplastic() saw [0.5, -0.5] where
    the step left [0.9647, -0.9647]."""
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    sgd = torch.optim.SGD([{"params": [p], "consolidate": True}], lr=0.5)
    seen = []
    sgd.register_step_post_hook(lambda o, a, k: seen.append(p.detach().clone()))
    opt = metaplastic(sgd, meta=2.0)
    p.grad = torch.tensor([1.0, -1.0])
    opt.step()
    assert torch.equal(seen[0], p.detach()) and p[0].item() == pytest.approx(1 - 0.5 * (1 - math.tanh(2.0) ** 2))


def test_the_first_step_check_leaves_other_step_hooks_alone():
    """Removing the check's own hook while torch iterated over the hooks failed the first step of an optimizer with
    another step pre-hook."""
    model = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(4, 2)))
    for optimizer in (MetaplasticAdam(model.parameters(), meta=1.0),
                      metaplastic(torch.optim.SGD(model.parameters(), lr=0.1), meta=1.0)):
        calls = []
        optimizer.register_step_pre_hook(lambda o, a, k: calls.append(1))
        for _ in range(2):
            model(torch.randn(3, 4)).sum().backward()
            optimizer.step()
        assert len(calls) == 2


def test_a_tensor_lr_is_taken_as_torch_adam_takes_it():
    def trained(make):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
        optimizer = make(model)
        for _ in range(5):
            optimizer.zero_grad()
            model(torch.randn(4, 6)).square().sum().backward()
            optimizer.step()
        return list(model.parameters())

    ours = trained(lambda m: MetaplasticAdam(m.parameters(), lr=torch.tensor(0.01)))
    adams = trained(lambda m: torch.optim.Adam(m.parameters(), lr=torch.tensor(0.01)))
    assert all(torch.equal(a, b) for a, b in zip(ours, adams))  # bit for bit, as with a number
    for bad, message in ((torch.tensor([0.1, 0.2]), "a tensor lr must hold one floating-point number, got shape (2,)"),
                         (torch.tensor(1), "a tensor lr must hold one floating-point number, got shape () torch.int64"),
                         (torch.tensor(-0.1), "lr must be a finite number in [0, 3.40282e+38]")):
        with pytest.raises(ValueError, match=re.escape(message)):
            MetaplasticAdam(_model().parameters(), lr=bad)


def test_consolidated_fractions_count_only_what_the_optimizer_consolidates():
    """A group with consolidate=False, or a float model under meta > 0, consolidates nothing: 0, not 92-100 %."""
    from metaspike.diagnostics import consolidated_fractions

    net = metaspike.binarize(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)))
    net(torch.rand(2, 4))  # (marks the hidden weights, as any forward pass does)
    hidden = metaspike.hidden_weights(net)
    rest = [p for p in net.parameters() if all(p is not h for h in hidden)]
    with torch.no_grad():
        for w in hidden:
            w.mul_(20)  # far from zero: consolidated wherever the group consolidates
    for flag, expected in ((False, 0.0), (True, 1.0)):
        opt = MetaplasticAdam([{"params": hidden, "meta": 10.0, "consolidate": flag}, {"params": rest}], lr=0.1)
        fractions = consolidated_fractions(net, opt)
        assert set(fractions) == {"0", "2"} and set(fractions.values()) == {expected}
    float_net = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        float_net[0].weight.mul_(20)
    assert consolidated_fractions(float_net, MetaplasticAdam(float_net.parameters(), meta=10.0)) == {"0": 0.0}


@pytest.mark.parametrize("make", [lambda p: torch.optim.Adam(p, lr=0.01), lambda p: torch.optim.RMSprop(p, lr=0.01)])
def test_metaplastic_refuses_an_eps_that_a_float16_model_rounds_to_zero(make):
    # as MetaplasticAdam refuses it: Adam's 1e-8 is 0 in float16, and one step left NaN hidden weights
    import metaspike

    model = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Linear(6, 3))).half()
    with pytest.raises(ValueError, match="the optimizer's eps 1e-08 is 0 in torch.float16"):
        metaspike.metaplastic(make(model.parameters()), meta=2.0)


def test_a_model_converted_after_the_first_step_is_one_line_and_the_named_remedy_works():
    from metaspike.optim import MetaplasticAdam

    model = torch.nn.Linear(4, 2)
    optimizer = MetaplasticAdam(model.parameters(), lr=0.01, meta=1.0)
    model(torch.rand(3, 4)).sum().backward()
    optimizer.step()
    model.double()
    model(torch.rand(3, 4, dtype=torch.float64)).sum().backward()
    with pytest.raises(ValueError, match=r"^a parameter is torch.float64 on cpu but its optimizer state torch.float32 "
                                         r"on cpu: the model was converted after the optimizer's first step"):
        optimizer.step()
    optimizer.load_state_dict(optimizer.state_dict())
    optimizer.step()
    assert all(state["exp_avg"].dtype == torch.float64 for state in optimizer.state.values())


@pytest.mark.parametrize("how", ["deepcopy", "replaced"])
@pytest.mark.parametrize("keyword", [False, True])
def test_a_wrapped_step_with_a_closure_consolidates_weights_its_forward_pass_marks(how, keyword):
    """metaplastic(SGD).step(closure) chose the weights to consolidate before the closure ran: hidden weights that
    only its forward pass marks (a parameter replaced by hand; a deep copy's, before copies marked them) took plain
    SGD steps, and a warning said that nothing is consolidated. The step must equal the same model's whose weights
    were marked from the start."""
    import copy

    def build():
        torch.manual_seed(1)
        return metaspike.binarize(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)))

    def unmarked():
        if how == "deepcopy":
            return copy.deepcopy(build())
        model = build()
        for layer in (model[0], model[2]):
            weights = layer.parametrizations.weight
            weights.original = nn.Parameter(weights.original.detach().clone())  # unmarked until a forward pass
        return model

    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))

    def first_step(model, meta):
        optimizer = metaplastic(torch.optim.SGD(model.parameters(), lr=1.0), meta=meta)

        def closure():
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        optimizer.step(closure=closure) if keyword else optimizer.step(closure)
        return [p.detach() for p in model.parameters()]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no "consolidates nothing")
        stepped = first_step(unmarked(), 50.0)
    expected, plain = first_step(build(), 50.0), first_step(build(), 0.0)
    assert all(torch.equal(a, b) for a, b in zip(stepped, expected))  # the same operations on the same numbers
    assert not all(torch.equal(a, b) for a, b in zip(expected, plain))  # (meta = 50 does damp this step)


@pytest.mark.parametrize("switch_off", [lambda: torch._dynamo.config.patch(disable=True),  # TORCH_COMPILE_DISABLE=1
                                        lambda: torch.compiler.set_stance("force_eager")])
def test_a_fused_step_with_compiling_switched_off_is_one_eager_step(switch_off):
    """Under TORCH_COMPILE_DISABLE=1 the fused update ran twice on the first step (exp_avg 0.19 for 0.1). Both steps
    apply the same elementwise operations to the same numbers (one on a flat view), so they agree exactly."""
    torch.manual_seed(0)
    weight = torch.randn(512, 512) * 0.01
    fused, plain = nn.Parameter(weight.clone()), nn.Parameter(weight.clone())
    steps = [MetaplasticAdam([dict(params=[p], consolidate=True)], lr=0.005, meta=3.0, fused=f)
             for p, f in ((fused, True), (plain, False))]
    for p, opt in zip((fused, plain), steps):
        p.grad = torch.ones_like(p)
        with switch_off():
            opt.step()
    assert torch.equal(fused, plain)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(steps[0].state[fused][key], steps[1].state[plain][key]), key
    assert torch.equal(steps[0].state[fused]["exp_avg"], torch.full_like(fused, 0.1))  # (1 - beta1) * 1, once


def _stepped_switch(params, rule="switch", steps=3):
    """A MetaplasticAdam over ``params`` (consolidated) under ``rule``, stepped ``steps`` times on fixed gradients."""
    opt = MetaplasticAdam([{"params": params, "consolidate": True}], lr=0.01, meta=1.0, rule=rule)
    for _ in range(steps):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    return opt


def test_inherit_rule_states_hands_on_only_the_same_rule_with_the_same_settings_and_never_shares_tensors():
    from metaspike.optim import inherit_rule_states
    from metaspike.rules import CascadeRule

    w = torch.nn.Parameter(torch.randn(5, 4))
    old = _stepped_switch([w])
    new = MetaplasticAdam([{"params": [w], "consolidate": True}], lr=0.01, meta=1.0, rule="switch")
    assert inherit_rule_states(new, old) == 1
    w.grad = torch.ones_like(w)
    new.step()
    assert int(new.state[w]["step"]) == 1  # (Adam's moments start anew)
    handed = old.state[w]["rule_state"]["run"]
    assert new.state[w]["rule_state"]["run"].data_ptr() != handed.data_ptr()
    assert torch.equal(new.state[w]["rule_state"]["run"], handed + 1)  # (the run of same-sign updates goes on)

    other = MetaplasticAdam([{"params": [w], "consolidate": True}], lr=0.01, meta=1.0, rule=CascadeRule(n=3))
    assert inherit_rule_states(other, _stepped_switch([w], rule=CascadeRule(n=2))) == 0  # (other settings)
    assert inherit_rule_states(other, old) == 0  # (another rule)


def test_inherit_rule_states_passes_on_through_an_optimizer_that_never_stepped_and_into_a_chain_and_a_wrapper():
    from metaspike import ChainedOptimizer
    from metaspike.optim import inherit_rule_states, metaplastic

    a, b = torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2, 2))
    old = _stepped_switch([a, b])
    idle = MetaplasticAdam([{"params": [a, b], "consolidate": True}], lr=0.01, meta=1.0, rule="switch")
    assert inherit_rule_states(idle, old) == 2  # (a task in which it never stepped: still handed on below)
    sgd = metaplastic(torch.optim.SGD([{"params": [a], "consolidate": True}], lr=0.01), meta=1.0, rule="switch")
    adam = MetaplasticAdam([{"params": [b], "consolidate": True}], lr=0.01, meta=1.0, rule="switch")
    chain = ChainedOptimizer(sgd, adam)
    assert inherit_rule_states(chain, idle) == 2
    for p in (a, b):
        p.grad = torch.ones_like(p)
    chain.step()
    for p, opt in ((a, sgd), (b, adam)):
        assert torch.equal(opt.state[p]["rule_state"]["run"], old.state[p]["rule_state"]["run"] + 1)


class _Counts(NamedTuple):
    count: torch.Tensor


class _CountingRule:
    """A user's stateful rule that is no dataclass: counts each synapse's updates (the update passes unchanged)."""

    name = "counting"
    elementwise = False
    plain_at_zero = False

    def __init__(self, step: float = 1.0) -> None:
        self.step_size = step

    def state_type(self):
        return _Counts

    def init_state(self, hidden):
        return _Counts(torch.zeros_like(hidden))

    def step(self, hidden, update, meta, state):
        return update, _Counts(state.count + self.step_size)


class _TensorSettingRule(_CountingRule):
    """The counting rule with a setting that has no plain equality (a tensor of several numbers)."""

    name = "counting-by-tensor"

    def __init__(self) -> None:
        super().__init__()
        self.weights = torch.full((3,), 0.5)


@pytest.mark.parametrize("given", ["name", "object"])
def test_a_copy_of_an_optimizer_keeps_its_users_rule_states(given):
    """A copy compared the rule that made each state with the group's own by their settings: a rule holding a tensor
    setting read as another rule (its counts restarted), and a rule named by a registered name was pickled as an
    object beside the name."""
    from metaspike import rules

    rule = rules.register_rule(_TensorSettingRule())
    try:
        _steps_of_a_copy(rule.name if given == "name" else rule)
    finally:
        rules._RULES.pop(rule.name)


def _steps_of_a_copy(rule) -> None:
    import copy
    import pickle

    w = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = MetaplasticAdam([{"params": [w], "consolidate": True}], lr=0.01, meta=1.0, rule=rule)
    for _ in range(3):
        w.grad = torch.ones_like(w)
        optimizer.step()
    for copied in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        weight = copied.param_groups[0]["params"][0]
        weight.grad = torch.ones_like(weight)
        copied.step()
        assert copied.state[weight]["rule_state"]["count"].unique().tolist() == [4.0]
        assert "rule_made_by" not in copied.state_dict()["state"][0]


def test_inherit_rule_states_hands_on_a_users_rule_given_as_a_new_instance_with_the_same_settings():
    """A rule object that is no dataclass was compared by identity: the same class with the same settings, made anew
    for each task's optimizer, never handed its state on."""
    from metaspike.optim import inherit_rule_states

    w = torch.nn.Parameter(torch.randn(4, 3))
    old = _stepped_switch([w], rule=_CountingRule())
    new = MetaplasticAdam([{"params": [w], "consolidate": True}], lr=0.01, meta=1.0, rule=_CountingRule())
    assert inherit_rule_states(new, old) == 1
    other = MetaplasticAdam([{"params": [w], "consolidate": True}], lr=0.01, meta=1.0, rule=_CountingRule(2.0))
    assert inherit_rule_states(other, old) == 0  # (other settings)
    w.grad = torch.ones_like(w)
    new.step()
    assert torch.equal(new.state[w]["rule_state"]["count"], torch.full_like(w, 4.0))


@pytest.mark.parametrize("make", [lambda g: torch.optim.AdamW(g, lr=0.01),
                                  lambda g: torch.optim.SGD(g, lr=0.01, momentum=0.9)], ids=["AdamW", "SGD-momentum"])
def test_a_handed_state_passes_on_through_a_task_at_meta_zero_of_a_wrapped_optimizer_with_state_of_its_own(make):
    """A wrapped optimizer keeping its own state for the parameter (AdamW's moments, SGD's momentum) but no rule
    state, after a task at meta = 0 (rule skipped), dropped the state it had been handed: the next task started every
    switch synapse plastic again."""
    from metaspike.optim import inherit_rule_states, metaplastic

    w = torch.nn.Parameter(torch.randn(50, 50))
    previous, consolidated = None, []
    for meta in (5.0, 0.0, 1e-9):
        opt = metaplastic(make([{"params": [w], "consolidate": True}]), meta=meta, rule="switch")
        if previous is not None:
            inherit_rule_states(opt, previous)
        for _ in range(5):
            w.grad = torch.ones_like(w)
            opt.step()
        state = opt.state[w].get("rule_state")
        consolidated.append(None if state is None else int(state["consolidated"].sum()))
        previous = opt
    assert consolidated[0] > 0 and consolidated[1] is None and consolidated[2] >= consolidated[0]


_HANDED_TO = {
    "MetaplasticAdam": lambda w: MetaplasticAdam([{"params": [w], "consolidate": True}], lr=0.05, meta=0.02,
                                                 rule="switch"),
    "metaplastic(SGD)": lambda w: metaplastic(torch.optim.SGD([{"params": [w], "consolidate": True}], lr=0.05),
                                              meta=0.02, rule="switch"),
    "metaplastic(Adam)": lambda w: metaplastic(torch.optim.Adam([{"params": [w], "consolidate": True}], lr=0.05),
                                               meta=0.02, rule="switch"),
    "ChainedOptimizer": lambda w: metaspike.ChainedOptimizer(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1),
        MetaplasticAdam([{"params": [w], "consolidate": True}], lr=0.05, meta=0.02, rule="switch")),
}


def _saved_and_loaded(optimizer, make):
    """A fresh optimizer of ``make`` over a copy of ``optimizer``'s parameter, loaded from its state dict through a
    file read with ``weights_only=True``."""
    import copy

    weight = torch.nn.Parameter(optimizer.param_groups[-1]["params"][0].detach().clone())
    buffer = io.BytesIO()
    torch.save(copy.deepcopy(optimizer.state_dict()), buffer)
    buffer.seek(0)
    loaded = make(weight)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    return loaded


@pytest.mark.parametrize("make", _HANDED_TO.values(), ids=_HANDED_TO)
def test_a_handed_on_rule_state_is_kept_by_a_state_dict_a_copy_and_a_pickle_taken_before_the_first_step(make):
    """The handed-on states waited in an attribute that state_dict(), deepcopy and pickle left out: a checkpoint taken
    before a parameter's first step (a parameter without a gradient for a whole task) restarted every switch synapse
    plastic (24 consolidated synapses in the original, 0 in the copies)."""
    import copy
    import pickle

    from metaspike.optim import inherit_rule_states

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 4))
    old = _HANDED_TO["MetaplasticAdam"](w)
    for _ in range(20):
        w.grad = torch.ones_like(w)
        old.step()
    assert int(old.state[w]["rule_state"]["consolidated"].sum()) > 0
    new = make(w)
    assert inherit_rule_states(new, old) == 1
    copies = [copy.deepcopy(new), pickle.loads(pickle.dumps(new)), _saved_and_loaded(new, make)]
    assert inherit_rule_states(make(copies[2].param_groups[-1]["params"][0]), copies[2]) == 1  # (passes on again)
    states = []
    for optimizer in [new, *copies]:
        weight = optimizer.param_groups[-1]["params"][0]
        with torch.no_grad():
            weight.copy_(w)
        weight.grad = torch.ones_like(weight)
        optimizer.step()
        states.append(optimizer.state[weight]["rule_state"])
    assert int(states[0]["consolidated"].sum()) >= int(old.state[w]["rule_state"]["consolidated"].sum())
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        assert all(torch.equal(state[k], states[0][k]) for k in state)


def test_a_state_dict_without_handed_on_states_clears_them_and_a_wrong_one_is_refused_in_one_line():
    import copy

    from metaspike.optim import inherit_rule_states

    w = torch.nn.Parameter(torch.randn(5, 4))
    new = MetaplasticAdam([{"params": [w], "consolidate": True}], lr=0.01, meta=1.0, rule="switch")
    plain = new.state_dict()  # (nothing handed on yet)
    assert inherit_rule_states(new, _stepped_switch([w])) == 1
    saved = copy.deepcopy(new.state_dict())
    wrong = copy.deepcopy(saved)
    wrong["inherited_rule_states"][0]["run"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"^state_dict: parameter 0's rule_state run has shape \(3,\), but SwitchRule "
                                         r"keeps, for a parameter of shape \(5, 4\), one of \(5, 4\)"):
        new.load_state_dict(wrong)
    elsewhere = copy.deepcopy(saved)
    elsewhere["inherited_rule_states"] = {7: elsewhere["inherited_rule_states"][0]}
    with pytest.raises(ValueError, match="^state_dict: it holds a handed-on rule state for parameter 7, which none "
                                         "of its groups lists$"):
        new.load_state_dict(elsewhere)
    assert inherit_rule_states(MetaplasticAdam([{"params": [w], "consolidate": True}], meta=1.0, rule="switch"),
                               new) == 1  # (the refused loads left it as it was)
    new.load_state_dict(plain)
    assert "inherited_rule_states" not in new.state_dict()
    fresh = torch.nn.Parameter(w.detach().clone())
    afresh = MetaplasticAdam([{"params": [fresh], "consolidate": True}], lr=0.01, meta=1.0, rule="switch")
    for p, opt in ((w, new), (fresh, afresh)):
        p.grad = torch.ones_like(p)
        opt.step()
    assert torch.equal(new.state[w]["rule_state"]["run"], afresh.state[fresh]["rule_state"]["run"])  # (afresh)


def test_the_wrapper_damps_a_large_weight_in_one_compiled_loop_as_the_rule_written_out(monkeypatch):
    """metaplastic(SGD) ran the rule in about nine eager passes and copied each weight into fresh memory: 25x plain
    SGD's step on a 2048 x 2048 layer (10x now, on one thread of an AVX2 AMD EPYC). The compiled loop computes the
    rule as written out, in float32: each element is W - u·f with f = 1 - tanh²(mW) in [0, 1] rounded to a few ulps,
    so it is off by a few ulps of max(|W|, |u|) at most: 8 ulps bound it."""
    import metaspike
    from metaspike import optim

    calls = []
    original = optim._compiled_damp.__call__
    monkeypatch.setattr(type(optim._compiled_damp), "__call__",
                        lambda self, *a, **k: (calls.append(1) if self is optim._compiled_damp else None)
                        or original.__func__(self, *a, **k))
    torch.manual_seed(0)
    layer = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(512, optim.FUSED_MIN_NUMEL // 512, bias=False)))[0]
    hidden = metaspike.hidden_weights(layer)[0]
    optimizer = metaplastic(torch.optim.SGD([hidden], lr=0.5), meta=20.0)
    for _ in range(2):  # (the second step reuses the first one's buffer of old values)
        old = hidden.detach().double().clone()
        hidden.grad = torch.randn_like(hidden) * 0.05
        update = 0.5 * hidden.grad.double()
        factor = torch.where(old * update > 0, 1 - torch.tanh(20.0 * old) ** 2, torch.ones_like(old))
        optimizer.step()
        bound = 8 * 2**-24 * max(old.abs().max().item(), update.abs().max().item())
        torch.testing.assert_close(hidden.detach().double(), old - update * factor, rtol=0, atol=bound)
    assert len(calls) == 2


def test_the_fused_damping_gives_a_rule_its_weights_in_their_own_shape(monkeypatch):
    """The compiled loop saw one flat vector: a stateless rule of the user's own that damps each row by the row's own
    largest weight damped by the layer's largest from 2**18 weights on (26 % other updates at 512 x 512 than the
    eager path), silently."""
    import metaspike
    from metaspike import optim
    from metaspike.rules.base import Stateless

    class ByRow(Stateless):
        name = "by_row"

        def step(self, hidden, update, meta, state):
            return update / (1 + meta * hidden.abs().amax(dim=-1, keepdim=True)), state

    def damped(fused_from):
        monkeypatch.setattr(optim, "FUSED_MIN_NUMEL", fused_from)
        torch.manual_seed(0)
        layer = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False)))[0]
        hidden = metaspike.hidden_weights(layer)[0]
        with torch.no_grad():
            hidden.mul_(torch.linspace(0.1, 3.0, 32)[:, None])  # (rows of other magnitudes)
        optimizer = metaplastic(torch.optim.SGD([hidden], lr=0.1), meta=5.0, rule=ByRow())
        hidden.grad = torch.ones_like(hidden)
        before = hidden.detach().clone()
        optimizer.step()
        return before - hidden.detach()

    torch.testing.assert_close(damped(1), damped(2**40), rtol=1e-6, atol=0)


def test_a_dropped_wrapped_optimizer_frees_its_buffers_without_the_garbage_collector():
    """Its hooks referred to the optimizer, a reference cycle: each optimizer dropped (a per-task one) kept a copy of
    every consolidated weight until the collector ran (417 to 753 MB over 12 tasks of a 2048 x 2048 layer)."""
    import gc
    import weakref

    import metaspike

    layer = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(16, 8)))[0]
    optimizer = metaplastic(torch.optim.SGD(layer.parameters(), lr=0.1), meta=2.0)
    layer(torch.ones(2, 16)).sum().backward()
    optimizer.step()
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "consolidate": False})
    alive = weakref.ref(optimizer)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del optimizer
        assert alive() is None
    finally:
        if was_enabled:
            gc.enable()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_fused_step_of_a_0d_consolidated_weight_moves_it_as_the_separate_operations_do(dtype):
    """The compiled loop dropped its in-place update of 0-d float64 tensors: a consolidated scalar weight and its
    moments stayed where they were, while its step count went on."""
    stepped = []
    for fused in (False, True):
        w = torch.nn.Parameter(torch.tensor(0.3, dtype=dtype))
        optimizer = MetaplasticAdam([{"params": [w], "consolidate": True}], lr=0.05, meta=2.0, fused=fused)
        for _ in range(3):
            w.grad = torch.tensor(-1.0, dtype=dtype)
            optimizer.step()
        stepped.append((w.detach().clone(), optimizer.state[w]["exp_avg"].clone()))
    assert stepped[1][0] != 0.3
    assert all(torch.equal(a, b) for a, b in zip(*stepped))


def test_float16_weights_step_as_torch_does_whatever_their_size():
    """The fused loop kept Adam's second moment in float32 where float16 rounds it (to 0 for small gradients): a
    300 x 200 float16 layer's weights ended up to 0.6 apart from the separate operations' in five steps, so a
    half-precision model's large layers followed another trajectory than its small ones. float16 is never fused."""
    torch.manual_seed(0)
    start = torch.randn(300, 200).half()
    grads = [torch.randn(300, 200).half() * 1e-3 for _ in range(5)]
    stepped = []
    for fused in (False, True, None):
        w = torch.nn.Parameter(start.clone())
        optimizer = MetaplasticAdam([{"params": [w], "consolidate": True}], lr=0.01, meta=3.0, eps=1e-4, fused=fused)
        for grad in grads:
            w.grad = grad.clone()
            optimizer.step()
        stepped.append(w.detach().clone())
    assert not torch.equal(stepped[0], start)
    assert torch.equal(stepped[0], stepped[1]) and torch.equal(stepped[0], stepped[2])
