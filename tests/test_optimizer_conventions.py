"""The optimizers behave as torch.optim's do: copies, pickles, checkpoints of other optimizers, complex and 0-d
parameters, closures, and input they must refuse before changing anything."""

import copy
import io
import pickle
import re

import pytest
import torch

import metaspike
from metaspike.bayesian import MESU, BiMU
from metaspike.bayesian import functional as bayesian_functional
from metaspike.functional import bimu_step, consolidate, mesu_step
from metaspike.rules import CascadeRule

BIMU = dict(lr=1.0, lr_max=1.0, likelihood_multiplier=1.0, kl_multiplier=1.0, N=100.0)
MESU_CLIPPED = dict(lr_mu=1.0, lr_sigma=1.0, sigma_prior=0.2, mu_prior=0.0, N=1e5, clamp_grad=0.36)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_0d_tensor_steps_as_its_1_element_version(dtype):
    lam, grad = torch.tensor(0.5, dtype=dtype), torch.tensor(0.3, dtype=dtype)
    assert torch.equal(bimu_step(lam, grad, **BIMU), bimu_step(lam.view(1), grad.view(1), **BIMU).view(()))
    mu, sigma, g = torch.tensor(0.0, dtype=dtype), torch.tensor(0.5, dtype=dtype), torch.tensor(1.0, dtype=dtype)
    zero = torch.zeros((), dtype=dtype)
    got = mesu_step(mu, sigma, g, zero, **MESU_CLIPPED)
    expected = mesu_step(mu.view(1), sigma.view(1), g.view(1), zero.view(1), **MESU_CLIPPED)
    assert all(torch.equal(a, b.view(())) for a, b in zip(got, expected))
    assert got[0] != mu  # (the compiled loop once dropped the update of 0-d float64 tensors)


def test_the_mesu_clip_bound_is_the_same_for_a_negative_width():
    g = torch.tensor([0.1, -0.1])
    mu_pos, sigma_pos = mesu_step(torch.zeros(2), torch.full((2,), 0.5), g, g, **MESU_CLIPPED)
    mu_neg, sigma_neg = mesu_step(torch.zeros(2), torch.full((2,), -0.5), g, g, **MESU_CLIPPED)
    # σ → −σ maps the step of μ to itself and the step of σ to its mirror (−σ ∂L/∂σ and σ(σ_p² − σ²) flip together)
    assert torch.equal(mu_neg, mu_pos)
    assert torch.equal(sigma_neg, -sigma_pos.flip(0))


@pytest.mark.parametrize("foreach", [False, True])
def test_metaplastic_adam_without_consolidation_is_adam_on_complex_parameters(foreach):
    a = torch.tensor([0.5 + 0.5j, -1.0 + 0.2j], requires_grad=True)
    b = a.detach().clone().requires_grad_()
    torch_adam = torch.optim.Adam([a], lr=0.1, weight_decay=0.1, foreach=foreach)
    ours = metaspike.MetaplasticAdam([b], lr=0.1, weight_decay=0.1, foreach=foreach)
    for g in (torch.tensor([1 + 2j, -1 + 1j]), torch.tensor([0.5 - 1j, 2 + 0j])):
        a.grad, b.grad = g.clone(), g.clone()
        torch_adam.step()
        ours.step()
    assert torch.equal(a, b)
    c = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    c.grad = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(ValueError, match="a complex parameter has no sign to keep"):
        metaspike.MetaplasticAdam([dict(params=[c], consolidate=True)], meta=1.0).step()


def _damped_step(optimizer: torch.optim.Optimizer) -> float:
    weight = optimizer.param_groups[0]["params"][0]
    with torch.no_grad():
        weight.fill_(0.5)
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    return 0.5 - weight[0].item()


def test_copies_and_pickles_of_a_metaplastic_optimizer_keep_consolidating():
    weight = torch.full((3,), 0.5, requires_grad=True)
    optimizer = metaspike.metaplastic(torch.optim.SGD([dict(params=[weight], consolidate=True)], lr=0.1), meta=4.0)
    damped = _damped_step(optimizer)
    assert damped < 0.1 / 10  # 1 − tanh²(4 · 0.5) = 0.07 of the SGD step
    for copied in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        assert isinstance(copied, torch.optim.SGD) and type(copied).__name__ == "SGD"
        assert _damped_step(copied) == damped
        with pytest.raises(ValueError, match="already has metaplastic consolidation"):
            metaspike.metaplastic(copied)


def test_a_copied_metaplastic_adam_saves_and_loads_its_rule_as_the_original_does():
    weight = torch.full((3,), 0.5, requires_grad=True)
    optimizer = metaspike.MetaplasticAdam([dict(params=[weight], consolidate=True)], meta=1.0, rule=CascadeRule(n=2))
    weight.grad = torch.ones(3)
    optimizer.step()
    copied = copy.deepcopy(optimizer)
    buffer = io.BytesIO()
    torch.save(copied.state_dict(), buffer)
    buffer.seek(0)
    copied.load_state_dict(torch.load(buffer, weights_only=True))
    assert isinstance(copied.param_groups[0]["rule"], CascadeRule)
    copied.param_groups[0]["params"][0].grad = torch.ones(3)
    copied.step()


def test_a_refused_state_dict_leaves_the_optimizer_as_it_was():
    weight = torch.full((3,), 0.5, requires_grad=True)
    optimizer = metaspike.MetaplasticAdam([weight], lr=0.01)
    state = optimizer.state_dict()
    state["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr must be a finite number"):
        optimizer.load_state_dict(state)
    assert optimizer.param_groups[0]["lr"] == 0.01
    for bayesian, params, key in ((BiMU, [torch.zeros(2, requires_grad=True)], "lr"),
                                  (MESU, [torch.zeros(2, requires_grad=True), torch.ones(2, requires_grad=True)], "N")):
        opt = bayesian(params)
        state = opt.state_dict()
        state["param_groups"][0][key] = -1
        with pytest.raises(ValueError, match=rf"{key} must be a finite number in [\[(](0|1), 3.40282e\+38\], got -1"):
            opt.load_state_dict(state)
        assert opt.param_groups[0][key] > 0


def test_an_adam_checkpoint_loads_into_metaplastic_adam_and_continues_as_adam():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    adam = torch.optim.Adam([a], lr=0.1)
    a.grad = torch.ones(3)
    adam.step()
    ours = metaspike.MetaplasticAdam([b], lr=0.1)
    ours.load_state_dict(copy.deepcopy(adam.state_dict()))  # (load_state_dict shares the tensors it is given)
    with torch.no_grad():
        b.copy_(a)
    a.grad, b.grad = torch.full((3,), 0.5), torch.full((3,), 0.5)
    adam.step()
    ours.step()
    assert torch.equal(a, b) and ours.param_groups[0]["meta"] == 0.0
    assert "meta" in ours.state_dict()["param_groups"][0]


def test_sparse_or_mismatched_tensors_are_refused_before_anything_changes():
    embedding = torch.nn.Embedding(5, 3, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    broken_before = bayesian_functional._compiled_bimu.broken  # (True only where nothing compiles here)
    with pytest.raises(ValueError, match=r"grads\[0\] is a sparse tensor"):
        BiMU([embedding.weight]).step()
    assert bayesian_functional._compiled_bimu.broken == broken_before  # the refusal leaves the compiled step in use
    a, b = torch.zeros(3), torch.zeros(2)
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \(3,\) where lams\[1\] has \(2,\)"):
        bayesian_functional.bimu_step_([a, b], [torch.ones(3), torch.ones(3)], BIMU)
    assert torch.equal(a, torch.zeros(3))  # the first tensor was not updated either


def test_consolidate_checks_meta():
    w = torch.tensor([1.0, -1.0])
    for bad in (-1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="meta must be"):
            consolidate(w, w, meta=bad)


def test_mesu_refuses_a_prior_scale_that_underflows():
    params = [torch.zeros(2, requires_grad=True), torch.ones(2, requires_grad=True)]
    for settings in (dict(sigma_prior=1e-160), dict(sigma_prior=1e-200)):
        with pytest.raises(ValueError, match=r"N \* sigma_prior\*\*2 must be a positive number"):
            MESU(params, **settings)


@pytest.mark.parametrize("make, message", [
    (lambda p: MESU(p, sigma_prior=1e200), r"sigma_prior must be a finite number in \(0, 1.84467e\+19\], got 1e\+200"),
    (lambda p: MESU(p, lr_mu=1e308), r"lr_mu must be a finite number in \[0, 3.40282e\+38\]"),
    (lambda p: MESU(p, N=1e-300), r"N must be a finite number in \[1, 3.40282e\+38\], got 1e-300"),
    (lambda p: BiMU(p[:1], lr=1e39), r"lr must be a finite number in \[0, 3.40282e\+38\], got 1e\+39"),
    (lambda p: BiMU(p[:1], likelihood_multiplier=1e39), r"likelihood_multiplier must be a finite number in \(0, "),
    (lambda p: BiMU(p[:1], N=1e-6), r"N must be a finite number in \[1, "),  # sent λ from 2 to -131,975 in a step
])
def test_settings_whose_updates_leave_float32_are_refused_in_one_line(make, message):
    """Finite settings beyond float32 (or a memory window under one step) made weights inf or NaN after one step."""
    params = [torch.zeros(2, requires_grad=True), torch.ones(2, requires_grad=True)]
    with pytest.raises(ValueError, match=message):
        make(params)


@pytest.mark.parametrize("make, message", [
    (lambda p: metaspike.MetaplasticAdam(p, lr=10**400), r"lr must be a finite number in \[0, 3.40282e\+38\], got 1000"),
    (lambda p: MESU(p, N=10**400), r"N must be a finite number in \[1, 3.40282e\+38\], got 1000"),
], ids=["metaplastic-adam-lr", "mesu-N"])
def test_an_integer_beyond_float_range_as_a_setting_is_refused_in_one_line(make, message):
    """`MetaplasticAdam(params, lr=10**400)` raised "OverflowError: int too large to convert to float" from the shared
    finite-number check (math.isfinite converts an int to float first)."""
    params = [torch.zeros(2, requires_grad=True), torch.ones(2, requires_grad=True)]
    with pytest.raises(ValueError, match=message) as caught:
        make(params)
    assert len(str(caught.value)) < 200  # (the integer's 401 digits cut short)


def test_numpy_numbers_as_settings_keep_the_update_compiled(working_compiler):
    """A numpy clamp_grad made the compiled MESU loop branch on data: it fell back to eager for the whole process."""
    import numpy as np

    mu, sigma, grad = torch.zeros(4), torch.full((4,), 0.5), torch.ones(4)
    expected = mesu_step(mu, sigma, grad, grad, lr_mu=1.0, lr_sigma=1.0, sigma_prior=0.1, mu_prior=0.0, N=1e5,
                         clamp_grad=0.3)
    got = mesu_step(mu, sigma, grad, grad, lr_mu=np.float64(1.0), lr_sigma=np.float32(1.0), sigma_prior=np.float64(0.1),
                    mu_prior=np.float64(0.0), N=np.int64(100_000), clamp_grad=np.float64(0.3))
    assert not bayesian_functional._compiled_mesu.broken
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_a_chained_closure_runs_with_gradients_and_a_refused_load_changes_no_optimizer():
    net = torch.nn.Linear(3, 2)
    chained = metaspike.ChainedOptimizer(torch.optim.SGD([net.weight], lr=0.1), torch.optim.Adam([net.bias], lr=0.01))

    def closure():
        chained.zero_grad()
        loss = net(torch.ones(1, 3)).sum()
        loss.backward()
        return loss

    with torch.no_grad():  # as torch's optimizers, the closure's own graph is built
        assert chained.step(closure).requires_grad
    state = chained.state_dict()
    state["optimizers"][0]["param_groups"][0]["lr"] = 0.5
    state["optimizers"][1]["param_groups"] = []
    with pytest.raises(ValueError):
        chained.load_state_dict(state)
    assert chained.param_groups[0]["lr"] == 0.1


def test_metaplastic_leaves_the_wrapped_optimizers_own_settings_to_it():
    weight = torch.zeros(3, requires_grad=True)
    # Adafactor's eps is a pair, and torch's optimizers take a tensor learning rate: theirs to check, not ours
    adafactor = metaspike.metaplastic(torch.optim.Adafactor([dict(params=[weight], consolidate=True)]), meta=1.0)
    metaspike.metaplastic(torch.optim.Adam([torch.zeros(2, requires_grad=True)], lr=torch.tensor(0.01)))
    weight.grad = torch.ones(3)
    adafactor.step()
    assert bool((weight < 0).all())
    with pytest.raises(ValueError, match=r"meta must be a finite number in \[0, 3.40282e\+38\]"):
        metaspike.metaplastic(torch.optim.SGD([weight], lr=0.1), meta=-1)


def test_past_torchs_limit_of_compiled_variants_new_ones_run_eagerly_and_old_ones_stay_compiled(working_compiler):
    from metaspike.compiled import LazyCompiled

    doubled = LazyCompiled(lambda tensors: [t * 2 for t in tensors], "doubling loop")
    limit = torch._dynamo.config.recompile_limit
    with pytest.warns(RuntimeWarning, match="has compiled torch's limit of variants in this process"):
        for count in range(1, limit + 3):  # one compiled variant per list length
            assert all(torch.equal(t, torch.full((3,), 2.0)) for t in doubled([torch.ones(3)] * count))
    assert doubled.limit_reached and not doubled.broken
    # a variant past the limit runs eagerly at once the next time: torch's compiler, which would fail it again at
    # more than the call's own cost and log a warning each time, is not asked
    asked = []
    compiled = doubled._compiled
    doubled._compiled = lambda *args: asked.append(len(args[0])) or compiled(*args)
    for count in (limit + 2, limit + 2, 1):
        assert all(torch.equal(t, torch.full((3,), 2.0)) for t in doubled([torch.ones(3)] * count))
    assert asked == [1]  # (the compiled variant of one tensor stays in use)


def test_a_state_dict_asking_for_what_metaplastic_adam_does_not_do_is_refused():
    weight = torch.zeros(3, requires_grad=True)
    adam = torch.optim.Adam([weight], amsgrad=True)
    weight.grad = torch.ones(3)
    adam.step()
    with pytest.raises(ValueError, match="its groups ask for amsgrad, which MetaplasticAdam does not do"):
        metaspike.MetaplasticAdam([weight]).load_state_dict(adam.state_dict())
    wrapped = metaspike.metaplastic(torch.optim.Adam([weight], amsgrad=True))  # Adam itself does it
    wrapped.load_state_dict(wrapped.state_dict())


DECOUPLED = r"decoupled weight decay \(the state dict of AdamW or Adam\(decoupled_weight_decay=True\)\)"
NADAM = r"momentum decay \(the state dict of NAdam\)"


@pytest.mark.parametrize("make, asked", [
    (lambda params: torch.optim.AdamW(params), DECOUPLED),
    (lambda params: torch.optim.Adam(params, decoupled_weight_decay=True), DECOUPLED),
    (lambda params: torch.optim.NAdam(params), NADAM),
    (lambda params: torch.optim.NAdam(params, momentum_decay=0.0), NADAM),  # (NAdam still: its mu_product)
])
def test_metaplastic_adam_refuses_the_state_dict_of_another_adam_family_algorithm(make, asked):
    weight = torch.zeros(3, requires_grad=True)
    other = make([weight])
    weight.grad = torch.ones(3)
    other.step()
    ours = metaspike.MetaplasticAdam([weight], lr=0.01)
    with pytest.raises(ValueError, match=f"^state_dict: its groups ask for {asked}, which MetaplasticAdam does not do: "
                                         "it would run another algorithm on the saved state$"):
        ours.load_state_dict(other.state_dict())
    assert ours.param_groups[0]["lr"] == 0.01 and "decoupled_weight_decay" not in ours.param_groups[0]
    assert not ours.state


def test_a_wrapped_optimizer_refuses_the_state_dict_of_another_algorithm():
    """Its load hook fills the keys metaplastic adds, not the settings of the wrapped optimizer's own algorithm: a
    state dict that lacks them is another algorithm's (torch's own SGD loads Adam's and fails at the step)."""
    model = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    model(torch.randn(2, 4)).sum().backward()
    adam, ours = torch.optim.Adam(model.parameters()), metaspike.MetaplasticAdam(model.parameters(), meta=1.0)
    sgd = metaspike.metaplastic(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    for foreign in (adam, ours):
        foreign.step()
        with pytest.raises(ValueError, match="^state_dict: its param groups lack momentum, dampening: it is not a "
                                             "state dict of SGD$"):
            sgd.load_state_dict(foreign.state_dict())
    assert sgd.param_groups[0]["lr"] == 0.1 and "betas" not in sgd.param_groups[0] and not sgd.state
    sgd.step()
    wrapped_adam = metaspike.metaplastic(torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="^state_dict: its param groups lack betas, eps: it is not a state dict of "
                                         "Adam$"):
        wrapped_adam.load_state_dict(sgd.state_dict())
    with pytest.raises(ValueError, match="its groups ask for momentum decay"):
        wrapped_adam.load_state_dict(torch.optim.NAdam(model.parameters()).state_dict())
    wrapped_adam.load_state_dict(ours.state_dict())  # (Adam's settings: MetaplasticAdam's state continues in Adam)


def test_a_wrapped_optimizer_loads_a_state_dict_saved_before_metaplastic_or_by_an_older_torch():
    """Keys that metaplastic adds (meta, rule, consolidate) take the optimizer's defaults, and keys newer torch
    versions added (SGD's fused, ...) what the optimizer's __setstate__ gives them, as torch's own load does."""
    model = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    plain = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    plain.step()
    saved = plain.state_dict()
    for group in saved["param_groups"]:
        for key in ("fused", "differentiable", "nesterov"):  # (an older torch's SGD)
            del group[key]
    wrapped = metaspike.metaplastic(torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5), meta=2.0)
    wrapped.load_state_dict(saved)
    group = wrapped.param_groups[0]
    assert (group["lr"], group["momentum"], group["meta"], group["rule"], group["consolidate"]) == \
        (0.1, 0.9, 2.0, "tanh", None)
    assert group["nesterov"] is False
    assert torch.equal(wrapped.state[group["params"][0]]["momentum_buffer"],
                       plain.state[plain.param_groups[0]["params"][0]]["momentum_buffer"])
    older = wrapped.state_dict()  # an older metaspike's: no consolidate key yet
    for group in older["param_groups"]:
        del group["consolidate"]
    wrapped.load_state_dict(older)
    assert wrapped.param_groups[0]["consolidate"] is None
    wrapped.step()


def test_a_wrapped_sparse_adam_resumes_to_the_same_weights():
    """SparseAdam counts its steps in a Python int; the load made it a float32 tensor, whose bias corrections moved the
    resumed weights by up to 8e-7 in four steps."""
    torch.manual_seed(0)
    batches = [torch.randint(0, 20, (8,)) for _ in range(8)]

    def built(embedding):
        group = {"params": [embedding.weight], "consolidate": True}
        return metaspike.metaplastic(torch.optim.SparseAdam([group], lr=0.05), meta=2.0)

    def train(embedding, optimizer, indices):
        for index in indices:
            optimizer.zero_grad()
            embedding(index).pow(2).sum().backward()
            optimizer.step()

    first = torch.nn.Embedding(20, 6, sparse=True)
    optimizer = built(first)
    train(first, optimizer, batches[:4])
    weights, state = copy.deepcopy(first.state_dict()), copy.deepcopy(optimizer.state_dict())
    train(first, optimizer, batches[4:])
    resumed = torch.nn.Embedding(20, 6, sparse=True)
    resumed.load_state_dict(weights)
    resumed_optimizer = built(resumed)
    resumed_optimizer.load_state_dict(state)
    assert type(resumed_optimizer.state[resumed.weight]["step"]) is int
    train(resumed, resumed_optimizer, batches[4:])
    assert torch.equal(resumed.weight, first.weight)


def test_another_optimizers_state_dict_is_refused_at_load_not_at_the_next_step():
    lam = torch.zeros(3, requires_grad=True)
    mu, sigma = torch.zeros(3, requires_grad=True), torch.ones(3, requires_grad=True)
    for optimizer, foreign in ((BiMU([lam]), torch.optim.SGD([lam], lr=0.1)), (MESU([mu, sigma]), BiMU([mu, sigma]))):
        before = copy.deepcopy(optimizer.param_groups[0])
        with pytest.raises(ValueError, match=rf"state_dict: its param groups lack .*: it is not the state dict of a "
                                             rf"{type(optimizer).__name__} optimizer"):
            optimizer.load_state_dict(foreign.state_dict())
        assert {k: v for k, v in optimizer.param_groups[0].items() if k != "params"} == \
            {k: v for k, v in before.items() if k != "params"}


def test_metaplastic_adam_refuses_the_state_of_another_optimizer_or_model_at_load():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    model(torch.randn(2, 8)).sum().backward()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sgd.step()
    adam = metaspike.MetaplasticAdam(model.parameters())  # (a float model: nothing to consolidate, so meta 0)
    with pytest.raises(ValueError, match="state_dict: its param groups lack betas, eps: it is not a state dict of "
                                         "MetaplasticAdam"):
        adam.load_state_dict(sgd.state_dict())
    adamax = torch.optim.Adamax(model.parameters())  # (Adam's settings; its state holds exp_avg and exp_inf)
    adamax.step()
    with pytest.raises(ValueError, match="state_dict: the state of parameter 0 lacks exp_avg_sq: it is not the state "
                                         "dict of a MetaplasticAdam optimizer"):
        adam.load_state_dict(adamax.state_dict())
    wider = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Linear(32, 4))  # as many tensors, other shapes
    wider(torch.randn(2, 8)).sum().backward()
    other = metaspike.MetaplasticAdam(wider.parameters())
    other.step()
    with pytest.raises(ValueError, match=r"state_dict: parameter 0's exp_avg has shape \(32, 8\), but the parameter "
                                         r"it belongs to has \(16, 8\): was it saved from another model\?"):
        adam.load_state_dict(other.state_dict())
    adam.step()
    adam.load_state_dict(adam.state_dict())  # its own loads, and steps on
    adam.step()


def _edited(state_dict, edit):
    edited = copy.deepcopy(state_dict)
    edit(next(iter(edited["state"].values())), edited["param_groups"][0])
    return edited


@pytest.mark.parametrize("edit, message", [
    (lambda s, g: s["exp_avg_sq"].neg_().sub_(1), "parameter 0's exp_avg_sq holds negative values"),
    (lambda s, g: s["exp_avg"].fill_(float("nan")), "parameter 0's exp_avg holds NaN or infinite values"),
    (lambda s, g: s.__setitem__("step", torch.tensor(-5.0)), r"parameter 0's step must be one finite number >= 0, "
                                                               r"got -5.0"),
    (lambda s, g: s.__setitem__("step", torch.tensor([1.0, 2.0])), r"step must be one finite number >= 0, got a "
                                                                    r"tensor of shape \(2,\)"),
    (lambda s, g: s.__setitem__("exp_avg", [0.0]), "the state of parameter 0 lacks exp_avg: it is not the state dict"),
    (lambda s, g: g.__setitem__("fused", "yes"), "fused must be True, False or None, got 'yes'"),
])
def test_metaplastic_adam_refuses_an_edited_state_dict_before_installing_it(edit, message):
    # a checkpoint is a file from outside: moments or a step count that would make the next step NaN (or fail inside
    # the update) are refused at load, and the optimizer keeps its own state
    model = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(6, 4)))
    adam = metaspike.MetaplasticAdam(model.parameters(), lr=0.01, meta=1.0)
    model(torch.randn(3, 6)).sum().backward()
    adam.step()
    saved = adam.state_dict()
    before = copy.deepcopy(saved)
    with pytest.raises(ValueError, match=message):
        adam.load_state_dict(_edited(saved, edit))
    after = adam.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert all(torch.equal(after["state"][0][k], before["state"][0][k]) for k in ("step", "exp_avg", "exp_avg_sq"))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_a_metaplastic_torch_optimizer_refuses_another_models_state_at_load(momentum):
    # the rule's own state (the switch rule keeps three tensors per weight) and torch's moments must fit the
    # parameters they load into
    def trained(hidden):
        model = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(10, hidden), torch.nn.Linear(hidden, 5)))
        optimizer = metaspike.metaplastic(torch.optim.SGD(model.parameters(), lr=0.01, momentum=momentum), meta=1.0,
                                          rule="switch")
        model(torch.randn(8, 10)).sum().backward()
        optimizer.step()
        return optimizer

    with pytest.raises(ValueError, match=r"parameter \d+'s (momentum_buffer|rule_state sign) has shape \(20,( 10)?\), "
                                         r"but (the parameter it belongs to has|\w+Rule keeps, for a parameter of "
                                         r"shape \(30,( 10)?\), one of) \(30,( 10)?\): was it saved from another "
                                         "model"):
        trained(30).load_state_dict(trained(20).state_dict())
    own = trained(20)
    own.load_state_dict(own.state_dict())  # its own loads
    with pytest.raises(ValueError, match=r"parameter \d+'s rule_state has the fields \['x'\], but its group's "
                                         r"SwitchRule keeps \['consolidated', 'rng', 'run', 'sign'\]"):
        own.load_state_dict(_edited(own.state_dict(), lambda s, g: s.__setitem__("rule_state", {"x": torch.zeros(1)})))


@pytest.mark.parametrize("key, value, message", [
    ("lr", float("nan"), r"a param group's lr must be a finite number in \[0, 3.40282e\+38\], got nan"),
    ("lr", -1.0, "a param group's lr must be a finite number in"),
    ("lr", float("inf"), "a param group's lr must be a finite number in"),
    ("eps", float("nan"), r"a param group's eps must be a finite number in \[0, 3.40282e\+38\], got nan"),
    ("eps", -1e-3, "a param group's eps must be a finite number in"),
    ("weight_decay", float("nan"), "a param group's weight_decay must be a finite number in"),
    ("betas", (1.5, 0.999), r"each of a param group's betas must be a finite number in \[0, 1\), got 1.5"),
    ("betas", (0.9, 1.0), r"each of a param group's betas must be a finite number in \[0, 1\), got 1.0"),
    ("betas", 0.9, r"a param group's betas must be two numbers in \[0, 1\), got 0.9"),
])
def test_a_setting_edited_out_of_range_is_refused_at_the_step_before_anything_changes(key, value, message):
    weight, other = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    adam = metaspike.MetaplasticAdam([dict(params=[weight]), dict(params=[other])], lr=0.1)
    weight.grad, other.grad = torch.ones(3), torch.ones(3)
    adam.param_groups[1][key] = value  # (what a scheduler's lambda, or a hand, may do)
    with pytest.raises(ValueError, match=f"^{message}"):
        adam.step()
    assert torch.equal(weight.detach(), torch.ones(3)) and not adam.state[weight] and not adam.state[other]


@pytest.mark.parametrize("meta", [None, True, torch.tensor(2.0), "2"])
def test_param_groups_names_a_meta_of_the_wrong_type(meta):
    with pytest.raises(ValueError, match="meta must be a number or a list of numbers, one per weight layer, got"):
        metaspike.param_groups(torch.nn.Linear(3, 2), meta)


def test_a_scheduler_may_take_the_learning_rate_to_zero():
    """As torch.optim allows lr = 0 (a cosine or linear schedule ends there): BiMU's step then keeps only the prior
    term, −λ K/N / (K + 2 g tanh λ + 2|g| + 1/η_max), and MESU's learning rates at 0 change nothing."""
    lam = torch.tensor([0.5, -1.0], requires_grad=True)
    opt = BiMU([lam], **BIMU)
    schedule = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=1)
    with pytest.warns(UserWarning, match="none of its tensors has a gradient"):
        opt.step()  # (no gradient yet: nothing changes; torch wants a step before the schedule's)
    schedule.step()
    assert opt.param_groups[0]["lr"] == 0.0
    lam.grad = torch.tensor([0.3, 0.2])
    opt.step()
    l0, g = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.3, 0.2], dtype=torch.float64)
    k = 1.0 - torch.tanh(l0) ** 2  # κ = 1
    expected = l0 - (l0 * k / 100.0) / (k + 2 * g * torch.tanh(l0) + 2 * g.abs() + 1.0)
    assert torch.allclose(lam.detach().double(), expected, rtol=0, atol=1e-6)  # (float32 rounding of values ~1)
    mu, sigma = torch.tensor([0.2, -0.4], requires_grad=True), torch.tensor([0.1, 0.3], requires_grad=True)
    mesu = MESU([mu, sigma], **{**MESU_CLIPPED, "lr_mu": 0.0, "lr_sigma": 0.0})
    mu.grad, sigma.grad = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5])
    mesu.step()
    assert torch.equal(mu.detach(), torch.tensor([0.2, -0.4])) and torch.equal(sigma.detach(), torch.tensor([0.1, 0.3]))


def test_metaplastic_adam_refuses_float16_weights_its_eps_vanishes_in():
    """In a loop of one's own too (not only the library's): Adam's 1e-8 is 0 in float16, and 0/0 is NaN."""
    half = torch.zeros(3, dtype=torch.float16, requires_grad=True)
    with pytest.raises(ValueError, match="the optimizer's eps 1e-08 is 0 in torch.float16"):
        metaspike.MetaplasticAdam([half], lr=0.01)
    assert metaspike.MetaplasticAdam([half], lr=0.01, eps=1e-4).param_groups[0]["eps"] == 1e-4  # float16 holds it
    optimizer = metaspike.MetaplasticAdam([torch.zeros(3, requires_grad=True)], lr=0.01)
    with pytest.raises(ValueError, match="is 0 in torch.float16"):
        optimizer.add_param_group({"params": [half]})
    assert len(optimizer.param_groups) == 1
    model = torch.nn.Linear(3, 2)
    late = metaspike.MetaplasticAdam(model.parameters(), lr=0.01)
    model.half()  # after the optimizer was built: its first step refuses, before any weight changes
    model(torch.ones(1, 3, dtype=torch.float16)).sum().backward()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="is 0 in torch.float16"):
        late.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("fused", [False, True])
def test_metaplastic_adam_moves_float16_weights_as_adam_does_under_large_gradients(fused):
    """The eager step divided the float16 denominator by the step size, which overflowed to inf where √v̂ + eps passed
    65504·step size: a gradient of 100 at lr 1e-4 left its weight unchanged. Under rule "none" the consolidated step is
    Adam's; torch's Adam rounds lr·m̂/(√v̂ + eps) into the weight once, this step rounds the update and then the
    weight: at most one float16 unit of the weight apart."""
    grad = torch.tensor([1.0, 100.0, 1000.0, -2000.0], dtype=torch.float16)  # (v̂ stays finite)
    ours = torch.nn.Parameter(torch.full((4,), 0.01, dtype=torch.float16))
    theirs = torch.nn.Parameter(ours.detach().clone())
    mine = metaspike.MetaplasticAdam([{"params": [ours], "consolidate": True, "fused": fused}], lr=1e-4, eps=1e-4,
                                     meta=1.0, rule="none")
    adam = torch.optim.Adam([theirs], lr=1e-4, eps=1e-4)
    for _ in range(3):
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        mine.step()
        adam.step()
    assert not torch.equal(theirs.detach(), torch.full((4,), 0.01, dtype=torch.float16))
    unit = torch.finfo(torch.float16).eps * theirs.detach().abs().float()  # (its unit in the last place, or less)
    assert ((ours.detach().float() - theirs.detach().float()).abs() <= unit).all(), (ours, theirs)


def test_a_state_saved_from_a_channels_last_model_resumes_in_the_fused_step():
    """The compiled step flattens the moments with view(-1): moments loaded from a channels_last model raised torch's
    view error (and had counted the step already)."""
    from metaspike import binarize
    from metaspike.optim import MetaplasticAdam

    def trained(channels_last, state=None):
        torch.manual_seed(0)
        model = binarize(torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3)), scale=None)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = MetaplasticAdam(model.parameters(), lr=0.01, meta=2.0, fused=True)
        if state is not None:
            model.load_state_dict(state[0])
            optimizer.load_state_dict(state[1])
        for _ in range(2):
            optimizer.zero_grad()
            model(torch.ones(1, 4, 3, 3)).pow(2).mean().backward()
            optimizer.step()
        return model, optimizer

    model, optimizer = trained(channels_last=True)
    saved = [state for state in optimizer.state.values() if state["exp_avg"].dim() == 4][0]
    assert not saved["exp_avg"].is_contiguous()
    resumed, again = trained(channels_last=False, state=(model.state_dict(), optimizer.state_dict()))
    steps = [state["step"].item() for state in again.state.values()]
    assert steps == [4, 4] and all(torch.isfinite(p).all() for p in resumed.parameters())


@pytest.mark.parametrize("flag, value", [("maximize", True), ("amsgrad", True), ("capturable", True),
                                         ("differentiable", True), ("decoupled_weight_decay", True),
                                         ("momentum_decay", 4e-3)])
def test_metaplastic_adam_refuses_a_group_asking_for_what_it_does_not_do(flag, value):
    """A group with maximize=True or amsgrad=True was taken and stepped as plain Adam (1.08 from torch's Adam with
    maximize after 20 steps); the optimizer then refused its own state dict."""
    weight = torch.zeros(3, requires_grad=True)
    instead = re.escape("; metaspike.metaplastic(torch.optim.Adam(...)) consolidates torch's own Adam, which does")
    message = f"^MetaplasticAdam does not do {flag}: a param group's {flag} must be False or left out, got {value!r}"
    with pytest.raises(ValueError, match=message + instead + "$"):
        metaspike.MetaplasticAdam([{"params": [weight], flag: value}])
    optimizer = metaspike.MetaplasticAdam([weight])
    with pytest.raises(ValueError, match=message + instead + "$"):
        optimizer.add_param_group({"params": [torch.zeros(2, requires_grad=True)], flag: value})
    assert len(optimizer.param_groups) == 1
    if flag != "momentum_decay":  # (torch.optim.Adam's keywords, as a port from it gives them; NAdam's is not one)
        with pytest.raises(ValueError, match=f"^MetaplasticAdam does not do {flag}: {flag} must be False or left out, "
                                             f"got {value!r}" + instead + "$"):
            metaspike.MetaplasticAdam([weight], **{flag: value})
        metaspike.MetaplasticAdam([weight], **{flag: False}, **({"amsgrad": 0} if flag != "amsgrad" else {}))
    with pytest.raises(TypeError, match="unexpected keyword argument 'amsgard'"):
        metaspike.MetaplasticAdam([weight], amsgard=True)


def test_metaplastic_adam_takes_adams_flags_at_their_defaults_and_steps_as_adam():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    flags = dict(maximize=False, amsgrad=False, capturable=False, differentiable=False)
    adam = torch.optim.Adam([{"params": [a], **flags}], lr=0.1)
    ours = metaspike.MetaplasticAdam([{"params": [b], **flags}], lr=0.1)
    for g in (torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.1, 0.3, -1.0])):
        a.grad, b.grad = g.clone(), g.clone()
        adam.step()
        ours.step()
    assert torch.equal(a, b)
    ours.load_state_dict(copy.deepcopy(ours.state_dict()))


@pytest.mark.parametrize("copied", [lambda o: o, copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))],
                         ids=["original", "deepcopy", "pickle"])
def test_loading_state_dicts_keeps_one_set_of_hooks(copied):
    """MetaplasticAdam registered its checkpoint hooks again at every load (torch's load calls __setstate__)."""
    optimizer = copied(metaspike.MetaplasticAdam([torch.zeros(3, requires_grad=True)], meta=1.0))
    for _ in range(3):
        optimizer.load_state_dict(optimizer.state_dict())
    assert len(optimizer._optimizer_load_state_dict_pre_hooks) == 1
    assert len(optimizer._optimizer_load_state_dict_post_hooks) == 2  # (the rules' states, the state's own memory)


@pytest.mark.parametrize("make", [lambda g: torch.optim.SGD(g, lr=0.1), lambda g: torch.optim.Adam(g, lr=0.1)],
                         ids=["SGD", "Adam"])
def test_a_wrapped_optimizer_refuses_a_complex_consolidated_parameter_before_its_step(make):
    """The rule failed inside torch ("clamp is not supported for complex types") after the inner step had moved the
    weight."""
    weight = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    other = torch.zeros(2, requires_grad=True)
    wrapped = metaspike.metaplastic(make([{"params": [weight], "consolidate": True}]), meta=1.0)
    chain = metaspike.ChainedOptimizer(torch.optim.SGD([other], lr=0.1), wrapped)
    before = weight.detach().clone()
    weight.grad, other.grad = torch.ones_like(weight), torch.ones_like(other)
    name = type(wrapped).__name__
    for step in (wrapped.step, chain.step, lambda: wrapped.step(lambda: 0.0)):
        with pytest.raises(ValueError, match=rf"^metaplastic\({name}\) consolidates real hidden weights; a complex "
                                             "parameter has no sign to keep: put it in a group with "
                                             "consolidate=False$"):
            step()
    assert torch.equal(weight.detach(), before) and torch.equal(other.detach(), torch.zeros(2))
    wrapped.param_groups[0]["consolidate"] = False  # (the remedy the message names)
    with pytest.warns(UserWarning, match="consolidates nothing"):
        wrapped.step()
    assert not torch.equal(weight.detach(), before)


def test_a_plain_adam_state_dict_keeps_each_groups_own_consolidation_settings():
    """Loading torch Adam's state dict (to warm a consolidating optimizer's moments) reset meta to the default 0 and
    consolidate to None, silently: plain Adam from then on."""
    w = torch.nn.Parameter(torch.randn(4, 4))
    adam = torch.optim.Adam([w], lr=0.01)
    w.grad = torch.ones(4, 4)
    adam.step()
    ours = metaspike.MetaplasticAdam([{"params": [w], "meta": 30.0, "consolidate": True}], lr=0.01)
    ours.load_state_dict(adam.state_dict())
    assert ours.param_groups[0]["meta"] == 30.0 and ours.param_groups[0]["consolidate"] is True
    assert torch.equal(ours.state[w]["exp_avg"], adam.state[w]["exp_avg"])


def test_step_counts_saved_as_numbers_load_as_torch_loads_them_and_bad_ones_are_named():
    """torch before 1.12 saved Adam's step as a number; torch's Adam takes it, MetaplasticAdam said the state "lacks
    step". BiMU and MESU keep a step count only, and took any value (a number failed inside torch at the next step, a
    vector counted on as a vector) and any entry."""
    w = torch.nn.Parameter(torch.randn(3))
    adam = torch.optim.Adam([w])
    w.grad = torch.ones(3)
    adam.step()
    old = adam.state_dict()
    old["state"][0]["step"] = 1
    ours = metaspike.MetaplasticAdam([w])
    ours.load_state_dict(old)
    assert old["state"][0]["step"] == 1  # (the caller's dict as it was)
    w.grad = torch.ones(3)
    ours.step()
    assert torch.equal(ours.state[w]["step"], torch.tensor(2.0))
    old["state"][0]["step"] = float("nan")
    with pytest.raises(ValueError, match=r"^state_dict: parameter 0's step must be one finite number >= 0, got nan$"):
        metaspike.MetaplasticAdam([w]).load_state_dict(old)
    lam = torch.nn.Parameter(torch.zeros(3))
    bimu = BiMU([lam])
    lam.grad = torch.ones(3)
    bimu.step()
    saved = bimu.state_dict()
    for entry, message in [({"step": torch.zeros(2)}, r"parameter 0's step must be one finite number >= 0, got a "
                                                      r"tensor of shape \(2,\)"),
                           ({"step": -4}, r"parameter 0's step must be one finite number >= 0, got -4.0"),
                           ({"exp_avg": torch.zeros(3)}, r"parameter 0's state holds \['exp_avg'\], but BiMU keeps a "
                                                         r"step count only")]:
        with pytest.raises(ValueError, match=f"^state_dict: {message}"):
            BiMU([torch.nn.Parameter(torch.zeros(3))]).load_state_dict({**saved, "state": {0: entry}})
    with pytest.raises(ValueError, match=r"^state_dict: it holds a state for parameter 5, which none of its groups"):
        BiMU([torch.nn.Parameter(torch.zeros(3))]).load_state_dict({**saved, "state": {5: {"step": torch.ones(())}}})
    other = torch.nn.Parameter(torch.zeros(3))
    fresh = BiMU([other])
    fresh.load_state_dict({**saved, "state": {0: {"step": 3}}})  # (a number: made a tensor, as torch's Adam does)
    other.grad = torch.ones(3)
    fresh.step()
    assert torch.equal(fresh.state[other]["step"], torch.tensor(4.0))


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_bayesian_optimizers_take_named_parameters_as_torch_optimizers_do(kind):
    net = metaspike.bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False)), kind, scale=None)
    optimizer = (BiMU if kind == "bimu" else MESU)(net.named_parameters())
    names = [name for name, _ in net.named_parameters()]
    assert optimizer.param_groups[0]["param_names"] == names
    assert optimizer.param_groups[0]["params"] == list(net.parameters())
    assert optimizer.state_dict()["param_groups"][0]["param_names"] == names


def test_consolidate_returns_a_new_tensor_and_refuses_complex_weights():
    """At meta 0 and under rule "none" the rule handed the caller's update back: changing the result in place
    changed it. A complex weight failed inside torch's clamp."""
    hidden, update = torch.tensor([1.0, -1.0]), torch.tensor([0.5, 0.5])
    for meta, rule in [(0.0, "tanh"), (2.0, "none")]:
        result, _ = consolidate(hidden, update, meta, rule=rule)
        result.mul_(10)
        assert torch.equal(update, torch.tensor([0.5, 0.5])) and torch.equal(hidden, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="must be real tensors; a complex hidden weight has no sign to keep"):
        consolidate(torch.ones(3, dtype=torch.complex64), torch.ones(3, dtype=torch.complex64), 1.0)
    # integer tensors gave a float result of odd values, and mixed dtypes one of the wider dtype, without a word
    for wrong_hidden, wrong_update in [(hidden.int(), update.int()), (hidden.double(), update)]:
        with pytest.raises(ValueError, match=f"^hidden and update must be floating-point tensors of one dtype, got "
                                             f"{wrong_hidden.dtype} and {wrong_update.dtype}$"):
            consolidate(wrong_hidden, wrong_update, 1.0)


def test_a_setting_given_as_a_tensor_is_named_as_such():
    """betas=(tensor(0.9), ...) was refused as "must be a finite number in [0, 1), got tensor(0.9000)"."""
    with pytest.raises(ValueError, match=r"got tensor\(0.9000\) \(a Tensor: give a Python number, its .item\(\)\)$"):
        metaspike.MetaplasticAdam([torch.nn.Parameter(torch.zeros(3))], betas=(torch.tensor(0.9), torch.tensor(0.999)))


@pytest.mark.parametrize("make, key, meant", [
    (lambda p, group: BiMU([{"params": [p], **group}]), "lrmax", "lr_max"),
    (lambda p, group: MESU([{"params": [p, torch.ones_like(p).requires_grad_()], **group}]), "sigma_prio",
     "sigma_prior"),
    (lambda p, group: metaspike.MetaplasticAdam([{"params": [p], **group}]), "metta", "meta"),
    (lambda p, group: metaspike.metaplastic(torch.optim.SGD([{"params": [p], **group}], lr=0.1)), "Lr", "lr"),
])
def test_a_misspelled_setting_in_a_param_group_is_refused_not_left_at_its_default(make, key, meant):
    """A group's ``lrmax`` was kept beside ``lr_max``, which trained at its default without a word."""
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=f"sets '{key}', which is not one of its settings: did you mean '{meant}'"):
        make(p, {key: 0.01})
    for own in ("name", "lr0", "lr_mult", "eta"):  # (keys of one's own that misspell none pass, as torch.optim lets)
        make(p, {own: 1})


@pytest.mark.parametrize("scheduler", [
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10),
    lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, 0.01, 0.1),
    lambda opt: torch.optim.swa_utils.SWALR(opt, swa_lr=0.05),
])
def test_the_keys_torchs_schedulers_add_to_groups_pass_copies_pickles_and_new_groups(scheduler):
    """``max_momentum`` (OneCycleLR, CyclicLR) was taken for a misspelled ``momentum``: the wrapped optimizer could not
    be copied, pickled or given a group like its first."""
    p = torch.zeros(3, requires_grad=True)
    optimizer = metaspike.metaplastic(torch.optim.SGD([p], lr=0.1, momentum=0.9))
    scheduler(optimizer)
    copied = copy.deepcopy(optimizer)
    pickle.loads(pickle.dumps(optimizer))
    settings = {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}
    copied.add_param_group({**settings, "params": [torch.zeros(2, requires_grad=True)]})
    rewrapped = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    rewrapped.load_state_dict(optimizer.state_dict())
    metaspike.metaplastic(rewrapped)


def test_a_group_added_later_with_a_misspelled_setting_is_refused_and_not_added():
    p = torch.zeros(3, requires_grad=True)
    for optimizer in (metaspike.metaplastic(torch.optim.SGD([p], lr=0.1)), BiMU([p])):
        with pytest.raises(ValueError, match="did you mean 'lr'"):
            optimizer.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "LR": 1.0})
        assert len(optimizer.param_groups) == 1


def _one_group_optimizer(make: str) -> torch.optim.Optimizer:
    """A metaspike optimizer of one param group: ``"metaplastic_adam"``, ``"bimu"`` or ``"metaplastic_sgd"``."""
    net = torch.nn.Linear(4, 3, bias=False)
    if make == "bimu":
        return BiMU(metaspike.bayesian.bimu_parameters(metaspike.bayesianize(net, kind="bimu")))
    if make == "metaplastic_adam":
        return metaspike.MetaplasticAdam(net.parameters(), meta=1.0)
    return metaspike.metaplastic(torch.optim.SGD(net.parameters(), lr=0.1), meta=1.0)


@pytest.mark.parametrize("make", ["metaplastic_adam", "bimu", "metaplastic_sgd"])
def test_a_load_of_no_state_dict_or_of_other_groups_is_one_line_before_torch_reads_it(make):
    """``load_state_dict("hello")`` was an AttributeError from inside torch, and a state of two groups loaded into an
    optimizer of one was torch's own words."""
    optimizer = _one_group_optimizer(make)
    saved = optimizer.state_dict()
    for bad in ("hello", None, {"state": {}}):
        with pytest.raises(ValueError, match=r"^state_dict must be an optimizer's state dict, with a list of param "
                                             r"groups$"):
            optimizer.load_state_dict(bad)
    two = {**saved, "param_groups": saved["param_groups"] * 2}
    with pytest.raises(ValueError, match=rf"^state_dict holds 2 param groups; this {type(optimizer).__name__} has 1: "):
        optimizer.load_state_dict(two)
    with pytest.raises(ValueError, match=r"^state_dict's 'state' must map parameter indices to their states, got "
                                         r"NoneType$"):  # (MESU and BiMU: a KeyError inside torch)
        optimizer.load_state_dict({"param_groups": saved["param_groups"]})
    group = saved["param_groups"][0]
    for params, held in (([], "0 parameters"), (None, "no list of parameters")):
        edited = {**saved, "param_groups": [{**group, "params": params}]}
        with pytest.raises(ValueError, match=rf"^state_dict's param group 0 holds {held}.*; this "
                                             rf"{type(optimizer).__name__}'s holds {len(group['params'])}: "):
            optimizer.load_state_dict(edited)
    optimizer.load_state_dict(saved)  # (its own still loads)


@pytest.mark.parametrize("step", ["mesu", "bimu"])
def test_tensors_of_one_place_on_other_devices_are_refused_before_the_compiled_step_sees_them(step):
    """A mixed-device call failed inside torch.compile, which then ran every later MESU and BiMU step of the process
    eagerly (slower)."""
    meta = torch.ones(2, device="meta")
    with pytest.raises(ValueError, match=r"\[0\] is on meta where \w+\[0\] is on cpu; the tensors at one place belong "
                                         r"together"):
        if step == "mesu":
            mesu_step(torch.zeros(2), torch.ones(2), torch.ones(2), meta, lr_mu=1, lr_sigma=1, sigma_prior=0.1,
                      mu_prior=0, N=100)
        else:
            bimu_step(torch.zeros(2), meta, lr=1, lr_max=1, likelihood_multiplier=1, kl_multiplier=1, N=10)
    assert not bayesian_functional._compiled_mesu.broken and not bayesian_functional._compiled_bimu.broken


@pytest.mark.parametrize("make", ["metaplastic_adam", "bimu", "metaplastic_sgd"])
def test_a_users_load_pre_hook_that_unwraps_the_file_runs_before_the_groups_are_checked(make):
    """torch lets a load pre-hook return the state dict to load; the groups' check ran before it and refused a file
    such a hook unwraps."""
    optimizer = _one_group_optimizer(make)
    saved = optimizer.state_dict()
    optimizer.register_load_state_dict_pre_hook(lambda opt, state_dict: state_dict["wrapped"], prepend=True)
    optimizer.load_state_dict({"wrapped": saved})
    with pytest.raises(ValueError, match=r"^state_dict holds 2 param groups; "):
        optimizer.load_state_dict({"wrapped": {**saved, "param_groups": saved["param_groups"] * 2}})


def test_a_sparse_momentum_buffer_of_a_sparse_gradient_loads_back():
    """torch's SGD keeps a sparse momentum buffer for a sparse gradient: a state its run writes (refused once as not
    dense)."""
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    optimizer = metaspike.metaplastic(torch.optim.SGD(embedding.parameters(), lr=0.1, momentum=0.9), meta=1.0)
    embedding(torch.tensor([1, 2])).sum().backward()
    optimizer.step()
    copied = metaspike.metaplastic(torch.optim.SGD(embedding.parameters(), lr=0.1, momentum=0.9), meta=1.0)
    copied.load_state_dict(optimizer.state_dict())
    assert copied.state[embedding.weight]["momentum_buffer"].is_sparse


def _adam_state_of_two_layers(make):
    torch.manual_seed(0)
    model = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)))
    optimizer = make(model)
    model(torch.randn(8, 4)).square().sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("make", [
    lambda m: metaspike.MetaplasticAdam(m.parameters(), lr=0.01, meta=1.0),
    lambda m: metaspike.metaplastic(torch.optim.Adam(m.parameters(), lr=0.01), meta=1.0),
], ids=["MetaplasticAdam", "metaplastic(Adam)"])
def test_loaded_state_tensors_are_the_optimizers_own(make):
    """torch's load keeps the loaded tensors: a state dict whose exp_avg was its exp_avg_sq (one tensor updated twice a
    step), whose moments were expanded views (the step failed inside torch: "more than one element of the written-to
    tensor refers to a single memory location") was taken as it was. Each such entry now gets memory of its own, and
    steps as the same values held apart."""
    model, optimizer = _adam_state_of_two_layers(make)
    dense = copy.deepcopy(optimizer.state_dict())
    shared = copy.deepcopy(dense)
    for entry in shared["state"].values():
        if "exp_avg" in entry:
            entry["exp_avg"] = entry["exp_avg_sq"]
    expanded = copy.deepcopy(dense)
    for entry in expanded["state"].values():
        if "exp_avg" in entry:
            entry["exp_avg"] = entry["exp_avg"].flatten()[:1].expand(entry["exp_avg"].shape)
    for loaded in (shared, expanded):
        reference = copy.deepcopy(loaded)
        for entry in reference["state"].values():  # (the same values, each in memory of its own)
            for key in ("exp_avg", "exp_avg_sq"):
                if key in entry:
                    entry[key] = entry[key].clone()
        stepped = []
        for state_dict in (loaded, reference):
            copy_of_model = copy.deepcopy(model)
            again = make(copy_of_model)
            again.load_state_dict(state_dict)
            copy_of_model(torch.ones(8, 4)).square().sum().backward()
            again.step()
            stepped.append([p.detach().clone() for p in copy_of_model.parameters()])
        assert all(torch.equal(a, b) for a, b in zip(*stepped))


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.float16, torch.bfloat16, torch.bool])
def test_a_step_count_of_a_dtype_that_cannot_count_is_refused_at_load(dtype):
    """A step of int8 127 wrapped to -128 at the next step (a complex result inside torch), uint8 255 to 0 (a division
    by zero), float16 2048 stayed 2048 for ever; each was taken at load."""
    _, optimizer = _adam_state_of_two_layers(lambda m: metaspike.MetaplasticAdam(m.parameters(), lr=0.01, meta=1.0))
    state_dict = optimizer.state_dict()
    state_dict["state"][0]["step"] = torch.tensor(1, dtype=dtype)
    with pytest.raises(ValueError, match=rf"^state_dict: parameter 0's step is a {re.escape(str(dtype))} tensor, "
                                         "which cannot count steps; torch keeps it as float32"):
        metaspike.MetaplasticAdam([p for g in optimizer.param_groups for p in g["params"]]).load_state_dict(state_dict)


@pytest.mark.parametrize("field, value, message", [
    ("rng", 0, "rng is not a state of torch's generator on cpu"),
    ("rng", 255, "rng is not a state of torch's generator on cpu"),
    ("consolidated", 0.5, "consolidated holds values other than 0 (plastic) and 1 (consolidated)"),
    ("run", -1e30, "run holds values that are not whole numbers >= 0 (a count of updates)"),
    ("run", 2.5, "run holds values that are not whole numbers >= 0 (a count of updates)"),
    ("sign", 7.0, "sign holds values other than -1, 0 and 1"),
])
def test_a_switch_rule_state_of_values_the_rule_never_makes_is_refused_at_load(field, value, message):
    """A zeroed generator state loaded and failed at the first step with torch's "Invalid mt19937 state" traceback;
    a run of -1e30 (a synapse that never consolidates) and a mark of 0.5 (read as consolidated) were taken."""
    torch.manual_seed(0)
    model = metaspike.binarize(torch.nn.Linear(4, 3))
    optimizer = metaspike.MetaplasticAdam(model.parameters(), lr=0.01, meta=5.0, rule="switch")
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    state_dict = optimizer.state_dict()
    index = next(i for i, entry in state_dict["state"].items() if "rule_state" in entry)
    fields = state_dict["state"][index]["rule_state"]
    fields[field] = torch.full_like(fields[field], value)
    fresh = metaspike.MetaplasticAdam(model.parameters(), lr=0.01, meta=5.0, rule="switch")
    with pytest.raises(ValueError, match=rf"^state_dict: parameter {index}'s rule_state {re.escape(message)}$"):
        fresh.load_state_dict(state_dict)
    assert not fresh.state


def test_a_subclass_of_the_switch_rule_with_a_step_of_its_own_loads_the_values_its_step_keeps():
    """check_state's value checks describe SwitchRule's own step: a subclass whose run decays (0.9 run + 1) refused its
    own state dict as "not whole numbers"; its generator state is still checked."""
    from metaspike.rules.switch import SwitchRule

    class LeakySwitch(SwitchRule):
        def step(self, hidden, update, meta, state):
            kept, new = super().step(hidden, update, meta, state)
            return kept, new._replace(run=state.run * 0.9 + 1)

    torch.manual_seed(0)
    model = metaspike.binarize(torch.nn.Linear(4, 3))
    optimizer = metaspike.MetaplasticAdam(model.parameters(), lr=0.01, meta=5.0, rule=LeakySwitch())
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    state_dict = optimizer.state_dict()
    fresh = metaspike.MetaplasticAdam(model.parameters(), lr=0.01, meta=5.0, rule=LeakySwitch())
    fresh.load_state_dict(state_dict)
    index = next(i for i, entry in state_dict["state"].items() if "rule_state" in entry)
    state_dict["state"][index]["rule_state"]["rng"].zero_()
    with pytest.raises(ValueError, match="rng is not a state of torch's generator on cpu"):
        metaspike.MetaplasticAdam(model.parameters(), lr=0.01, meta=5.0, rule=LeakySwitch()).load_state_dict(state_dict)


@pytest.mark.parametrize("make", [
    lambda params: metaspike.MetaplasticAdam(params, lr=0.01, meta=1.0),
    lambda params: metaspike.metaplastic(torch.optim.SGD(params, lr=0.1), meta=1.0),
])
def test_a_tensor_listed_twice_is_refused_as_bimu_refuses_it(make):
    """A tied weight gathered layer by layer was stepped twice a step (2.006 times as far as listed once), with
    torch's generic duplicate-parameters warning only; BiMU refused the same list."""
    tied = torch.nn.Parameter(torch.randn(4, 3))
    with pytest.warns(UserWarning, match="duplicate parameters"), pytest.raises(
            ValueError, match=r"got a param group that lists a tensor more than once \(tied weights\?\), which it "
                              r"would update twice a step; list each tensor once"):
        make([tied, tied])
    optimizer = make([torch.nn.Parameter(torch.randn(2))])
    with pytest.warns(UserWarning, match="duplicate parameters"), pytest.raises(ValueError, match="more than once"):
        optimizer.add_param_group({"params": [tied, tied]})
    assert len(optimizer.param_groups) == 1
    many = make([torch.nn.Parameter(torch.randn(2)) for _ in range(300)])
    for index in (5, 299):  # (the first version compared the indices' ids: equal only up to 256)
        state = many.state_dict()
        state["param_groups"][0]["params"][1] = index
        with pytest.raises(ValueError, match=rf"^state_dict: a param group lists parameter {index} more than once; "):
            many.load_state_dict(state)
    two = make([torch.nn.Parameter(torch.randn(2))])
    two.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))]})
    state = two.state_dict()
    state["param_groups"][1]["params"] = [0]  # (torch's load gave index 0's state to the second group's tensor)
    with pytest.raises(ValueError, match=r"^state_dict: parameter 0 is listed in param groups 0 and 1; "):
        two.load_state_dict(state)
