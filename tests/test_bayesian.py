"""Bayesian metaplastic synapses: MESU and BiMU rules, optimizers, synapses on models, sampled layers."""

import copy
import math
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metaspike
from bnn import BayesianConv2d, BayesianLinear, BinaryBayesianConv2d, BinaryBayesianLinear
from metaspike.bayesian import (
    MESU,
    BiMU,
    BinaryWeight,
    GaussianWeight,
    bayesian_modules,
    bayesianize,
    bimu_parameters,
    bimu_step,
    make_bayesian,
    mesu_param_groups,
    mesu_step,
    plain_parameters,
    sample_weights,
    sampled_forward,
    sampled_product,
    settings_for_batch,
    start_confident,
)

# Tolerance of the float32 rules against the float64 formulas. Each output is a short chain of
# float32 operations (about ten, tanh included), each off by at most a few ulps (2^-24 ≈ 6e-8) of
# the magnitude it works on, so the error of a result is bounded by a few tens of ulps of the
# largest term that enters it (not of the result, which can be a difference of large terms).
# RTOL = 1e-5 (~170 ulps) leaves margin; a wrong formula is off by a whole term.
RTOL = 1e-5

MESU_SETTINGS = [
    dict(lr_mu=0.7, lr_sigma=0.3, sigma_prior=0.5, mu_prior=0.1, N=10.0, clamp_grad=0.0),
    dict(lr_mu=0.7, lr_sigma=0.3, sigma_prior=0.5, mu_prior=0.1, N=10.0, clamp_grad=0.05),
    dict(lr_mu=1.0, lr_sigma=1.0, sigma_prior=0.2, mu_prior=0.0, N=1e5, clamp_grad=0.0),  # authors' JAX version
]
BIMU_SETTINGS = [
    dict(lr=0.8, lr_max=0.5, likelihood_multiplier=2.0, kl_multiplier=3.0, N=5.0),
    dict(lr=1.0, lr_max=1.0, likelihood_multiplier=1.0, kl_multiplier=1.0, N=60_000),  # authors' defaults
    dict(lr=4.9, lr_max=0.0023, likelihood_multiplier=161.3, kl_multiplier=3.76, N=700),  # 1000-task configs
]


def _gradients(shape, generator):
    """Gradients over several orders of magnitude, a quarter of them exactly zero."""
    g = torch.randn(shape, generator=generator) * 10 ** (4 * torch.rand(shape, generator=generator) - 2)
    return g * (torch.rand(shape, generator=generator) > 0.25)


def _mesu_reference(mu, sigma, g_mu, g_sigma, lr_mu, lr_sigma, sigma_prior, mu_prior, N, clamp_grad):
    """The MESU formulas in float64; returns the new (μ, σ) and the scales their errors are bounded by."""
    mu, sigma, g_mu, g_sigma = (t.double().numpy() for t in (mu, sigma, g_mu, g_sigma))
    if clamp_grad > 0:
        g_mu = np.clip(g_mu, -clamp_grad / sigma, clamp_grad / sigma)
        g_sigma = np.clip(g_sigma, -clamp_grad / sigma, clamp_grad / sigma)
    prior = N * sigma_prior**2
    new_mu = mu + lr_mu * (-(sigma**2) * g_mu + sigma**2 * (mu_prior - mu) / prior)
    new_sigma = sigma + lr_sigma * 0.5 * (-(sigma**2) * g_sigma + sigma * (sigma_prior**2 - sigma**2) / prior)
    scale_mu = np.abs(mu) + lr_mu * sigma**2 * (np.abs(g_mu) + (abs(mu_prior) + np.abs(mu)) / prior)
    scale_sigma = sigma + lr_sigma * sigma * (sigma * np.abs(g_sigma) + (sigma_prior**2 + sigma**2) / prior)
    return new_mu, new_sigma, scale_mu, scale_sigma


def _bimu_reference(lam, grad, lr, lr_max, likelihood_multiplier, kl_multiplier, N):
    """The BiMU formula in float64; returns the new λ and the scale its error is bounded by."""
    lam, grad = lam.double().numpy(), grad.double().numpy()
    g = likelihood_multiplier * grad
    t = np.tanh(lam)
    k = kl_multiplier * (1 - t**2)
    denominator = k + 2 * g * t + 2 * np.abs(g) + 1 / lr_max
    new_lam = lam - (lr * g + lam * k / N) / denominator
    # numerator and denominator terms, bounded by κ where K = κ(1 − tanh² λ) loses digits near |λ| ≫ 1
    numerator_terms = lr * np.abs(g) + np.abs(lam) * kl_multiplier / N
    denominator_terms = 4 * np.abs(g) + kl_multiplier + 1 / lr_max
    scale = np.abs(lam) + numerator_terms / denominator * (1 + denominator_terms / denominator)
    return new_lam, scale


def _assert_within(actual, expected, scale):
    error = np.abs(actual.double().numpy() - expected)
    assert (error <= RTOL * scale).all(), f"max error / scale {np.max(error / scale):.3g} > {RTOL}"


@pytest.mark.parametrize("settings", MESU_SETTINGS)
def test_mesu_step_matches_float64_formulas(settings):
    gen = torch.Generator().manual_seed(1)
    shape = (400,)
    mu = torch.randn(shape, generator=gen)
    sigma = 10 ** (4 * torch.rand(shape, generator=gen) - 3)  # 1e-3 .. 10: small and large widths
    g_mu, g_sigma = _gradients(shape, gen), _gradients(shape, gen)
    inputs = [t.clone() for t in (mu, sigma, g_mu, g_sigma)]

    new_mu, new_sigma = mesu_step(mu, sigma, g_mu, g_sigma, **settings)

    for before, after in zip(inputs, (mu, sigma, g_mu, g_sigma)):
        assert torch.equal(before, after)  # pure: no argument modified
    ref_mu, ref_sigma, scale_mu, scale_sigma = _mesu_reference(mu, sigma, g_mu, g_sigma, **settings)
    _assert_within(new_mu, ref_mu, scale_mu)
    _assert_within(new_sigma, ref_sigma, scale_sigma)


def test_mesu_clamp_limits_the_gradient():
    settings = dict(MESU_SETTINGS[1], N=1e12)  # prior term negligible: Δμ = −η_μ σ² clip(g, ±c/σ)
    sigma = torch.tensor([0.1, 0.1])
    mu, _ = mesu_step(torch.zeros(2), sigma, torch.tensor([1e6, 0.1]), torch.zeros(2), **settings)
    expected = -settings["lr_mu"] * torch.tensor([0.01 * settings["clamp_grad"] / 0.1, 0.01 * 0.1])
    torch.testing.assert_close(mu, expected)


def test_settings_for_batch_scale_the_gradient_and_keep_the_window_in_samples():
    bimu = settings_for_batch("bimu", dict(likelihood_multiplier=2.0, N=6000, lr=0.5), 100)
    assert bimu == dict(lr=0.5, lr_max=1.0, likelihood_multiplier=200.0, kl_multiplier=1.0, N=60.0)
    mesu = settings_for_batch("mesu", dict(lr_mu=1.5, lr_sigma=2.0, clamp_grad=0.4, N=1000), 10)
    assert mesu == dict(lr_mu=15.0, lr_sigma=20.0, sigma_prior=0.1, mu_prior=0.0, N=1000.0, clamp_grad=0.04)
    for rule, settings in (("bimu", BIMU_SETTINGS[0]), ("mesu", MESU_SETTINGS[1])):
        assert settings_for_batch(rule, settings, 1) == settings  # batch size 1 is the papers' setting
    assert settings_for_batch("bimu", {}, np.int64(10))["N"] == 6000.0
    # the optimizers take what it returns as it is
    BiMU([nn.Parameter(torch.zeros(2))], **bimu)
    MESU([nn.Parameter(torch.zeros(2)), nn.Parameter(torch.full((2,), 0.1))], **mesu)


def test_settings_for_batch_keep_a_mesu_step_within_the_batch_one_bound():
    # clip(B·ḡ) at c/σ of one sample: however large the batch gradient, Δμ stays within η_μ c σ, as at batch 1
    per_sample = dict(lr_mu=1.6, lr_sigma=2.1, sigma_prior=0.3, N=1e12, clamp_grad=0.36)
    sigma = torch.tensor([0.1, 0.2])
    for batch in (1, 10, 100):
        mu, _ = mesu_step(torch.zeros(2), sigma, torch.tensor([1e6, -1e6]), torch.zeros(2),
                          **settings_for_batch("mesu", per_sample, batch))
        torch.testing.assert_close(mu, torch.tensor([-1.0, 1.0]) * 1.6 * 0.36 * sigma)


@pytest.mark.parametrize(("args", "message"), [
    (("adam", {}, 1), "rule must be one of"),
    (("bimu", {"lr_mu": 1.0}, 1), "per_sample: 'lr_mu' not a setting of bimu"),
    (("bimu", {"N": 50}, 100), r"N \(the memory window, in samples\) must be at least the batch size 100"),
    (("mesu", {}, 0), "batch_size must be an integer >= 1"),
    (("mesu", {}, 2.5), "batch_size must be an integer >= 1"),
    (("mesu", {"lr_mu": -1.0}, 2), r"lr_mu must be a finite number in \[0, 3.40282e\+38\], got -1.0"),
    (("mesu", None, 2), "per_sample must be a mapping of mesu's settings by name"),
    (("mesu", {"lr_mu": 1e38}, 10), r"lr_mu must be a finite number in \[0, 3.40282e\+38\], got 1e\+39"),  # (scaled)
])
def test_settings_for_batch_refuse_bad_input_in_one_line(args, message):
    with pytest.raises(ValueError, match=message):
        settings_for_batch(*args)


@pytest.mark.parametrize("settings", BIMU_SETTINGS)
def test_bimu_step_matches_float64_formula(settings):
    gen = torch.Generator().manual_seed(2)
    lam = torch.cat([torch.randn(300, generator=gen) * 3, torch.tensor([20.0, -20.0, 0.0, 20.0, -20.0, 0.0])])
    grad = _gradients(lam.shape, gen)
    grad[-3:] = 0.0  # large |λ| and λ = 0 with zero gradient too
    inputs = lam.clone(), grad.clone()

    new_lam = bimu_step(lam, grad, **settings)

    assert torch.equal(inputs[0], lam) and torch.equal(inputs[1], grad)
    expected, scale = _bimu_reference(lam, grad, **settings)
    _assert_within(new_lam, expected, scale)


@pytest.mark.parametrize("eager", [False, True], ids=["as-called", "eager"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_synapses_step_in_float32_and_round_once_eagerly_as_compiled(dtype, eager, monkeypatch):
    """With L = 16,000 a gradient of 5 makes L·g = 80,000, past float16's largest number (65,504): formed in float16,
    as the eager loop once did, BiMU's step was inf/inf = NaN where the compiled loop (float32 inside) was finite.
    Both compute in float32 now, each within RTOL of float64 (the bound of the float32 tests), and round once to the
    16-bit type, which adds at most half its unit in the last place: eps/2 of the result."""
    from metaspike.bayesian import functional

    for update in (functional._compiled_bimu, functional._compiled_mesu):
        monkeypatch.setattr(update, "broken", eager or update.broken)
    half_ulp = torch.finfo(dtype).eps / 2
    lam, grad = torch.tensor([0.1, -0.5, 2.0, -3.0, 0.0]), torch.tensor([5.0, 5.0, -5.0, 0.001, -2.0])
    lam, grad = lam.to(dtype), grad.to(dtype)
    settings = dict(lr=4.9, lr_max=1.0, likelihood_multiplier=16_000.0, kl_multiplier=3.76, N=2_500.0)
    new_lam = bimu_step(lam, grad, **settings)
    expected, scale = _bimu_reference(lam, grad, **settings)
    assert new_lam.dtype == dtype
    error = np.abs(new_lam.double().numpy() - expected)
    assert (error <= RTOL * scale + half_ulp * (np.abs(expected) + RTOL * scale)).all(), (new_lam, expected)

    mu, sigma = torch.tensor([0.3, -0.2, 0.0]).to(dtype), torch.tensor([0.5, 0.05, 1.0]).to(dtype)
    g_mu, g_sigma = torch.tensor([3e4, -2e4, 1.0]).to(dtype), torch.tensor([2e4, 1.0, -3e4]).to(dtype)
    mesu = dict(lr_mu=1.0, lr_sigma=1e-4, sigma_prior=0.5, mu_prior=0.1, N=10.0, clamp_grad=0.0)
    new_mu, new_sigma = mesu_step(mu, sigma, g_mu, g_sigma, **mesu)
    ref_mu, ref_sigma, scale_mu, scale_sigma = _mesu_reference(mu, sigma, g_mu, g_sigma, **mesu)
    for actual, ref, scale in ((new_mu, ref_mu, scale_mu), (new_sigma, ref_sigma, scale_sigma)):
        error = np.abs(actual.double().numpy() - ref)
        assert (error <= RTOL * scale + half_ulp * (np.abs(ref) + RTOL * scale)).all(), (actual, ref)


def test_bimu_step_keeps_its_digits_where_a_gradient_opposes_a_confident_weight():
    """Where g and λ have opposite signs, |g| + g tanh λ = |g| (1 − tanh|λ|): formed from tanh λ in float32 it loses
    every digit past |λ| ≈ 9 (a step 4x too large here); formed from e = exp(−2|λ|) it keeps them. Each factor of
    that form is a few float32 roundings off, so the step is within a few tens of ulps (1e-5) of float64's."""
    lam = torch.tensor([8.678, -8.678, 12.0, -5.0, 0.0, 0.0, 3.0])
    grad = torch.tensor([-1620.5, 1620.5, -40.0, 3.0, -1.0, 1.0, 2.0])
    settings = dict(lr=1.0, lr_max=100.0, likelihood_multiplier=161.3, kl_multiplier=0.0, N=1.0)
    step = bimu_step(lam, grad, **settings).double() - lam.double()
    exact = bimu_step(lam.double(), grad.double(), **settings) - lam.double()
    assert torch.allclose(step, exact, rtol=1e-5, atol=0)


def _mesu_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3, bias=False))
    return bayesianize(net, "mesu")


def _bimu_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Tanh(), nn.Linear(5, 3, bias=False))
    return bayesianize(net, "bimu")


def _backward(net, seed=0):
    gen = torch.Generator().manual_seed(seed)
    net.zero_grad()
    net(torch.randn(8, 6, generator=gen)).pow(2).mean().backward()


def test_mesu_optimizer_equals_functional_step():
    net = _mesu_net()
    groups = mesu_param_groups(net)
    pairs = list(zip(groups[0]["params"][0::2], groups[0]["params"][1::2]))
    settings = [MESU_SETTINGS[1], MESU_SETTINGS[0]]
    opt = MESU([{"params": list(pair), **s} for pair, s in zip(pairs, settings)])
    _backward(net)
    expected = [mesu_step(mu, sigma, mu.grad, sigma.grad, **s) for (mu, sigma), s in zip(pairs, settings)]
    opt.step()
    for (mu, sigma), (mu_ref, sigma_ref) in zip(pairs, expected):
        assert torch.equal(mu, mu_ref) and torch.equal(sigma, sigma_ref)


def test_a_learning_rate_scheduler_scales_both_mesu_learning_rates_and_old_state_dicts_load():
    """torch's schedulers change a group's "lr": MESU's is a factor on η_μ and η_σ (1 until a scheduler moves it)."""
    net = _mesu_net()
    groups = mesu_param_groups(net)
    mu, sigma = groups[0]["params"][:2]
    settings = dict(MESU_SETTINGS[0])
    opt = MESU([{"params": [mu, sigma]}], **settings)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _backward(net)
    opt.step()
    scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.5
    halved = {**settings, "lr_mu": settings["lr_mu"] / 2, "lr_sigma": settings["lr_sigma"] / 2}
    expected = mesu_step(mu, sigma, mu.grad, sigma.grad, **halved)
    opt.step()
    assert torch.equal(mu, expected[0]) and torch.equal(sigma, expected[1])
    written_before_lr = opt.state_dict()
    del written_before_lr["param_groups"][0]["lr"]
    fresh = MESU([{"params": [mu, sigma]}], **settings, lr=0.25)
    fresh.load_state_dict(written_before_lr)
    assert fresh.param_groups[0]["lr"] == 1.0
    assert "lr" not in written_before_lr["param_groups"][0]  # (the caller's state dict is left as it was)
    # a tensor appended to a group by hand: the pairs no longer line up, and the step says so before it changes any
    fresh.param_groups[0]["params"].append(torch.zeros(2, requires_grad=True))
    with pytest.raises(ValueError, match="params must alternate means and widths"):
        fresh.step()
    with pytest.raises(ValueError, match=r"lr must be a finite number in \[0, 3.40282e\+38\], got -1"):
        MESU([{"params": [mu, sigma]}], lr=-1)


def test_bimu_optimizer_equals_functional_step_and_skips_missing_gradients():
    net = _bimu_net()
    lams = bimu_parameters(net)
    opt = BiMU([{"params": [lams[0]], **BIMU_SETTINGS[0]}, {"params": [lams[1]], **BIMU_SETTINGS[2]}])
    _backward(net)
    lams[1].grad = None  # a parameter without gradient is skipped, as in torch's optimizers
    expected = bimu_step(lams[0], lams[0].grad, **BIMU_SETTINGS[0])
    before = lams[1].detach().clone()
    opt.step()
    assert torch.equal(lams[0], expected)
    assert torch.equal(lams[1], before)


@pytest.mark.parametrize("make, optimizer, params", [
    (_mesu_net, MESU, lambda net: mesu_param_groups(net)),
    (_bimu_net, BiMU, lambda net: bimu_parameters(net)),
])
def test_all_zero_gradients_change_nothing(make, optimizer, params):
    net = make()
    # a short memory window and, for MESU, σ ≠ σ_p, so that the prior pull moves every weight
    opt = optimizer(params(net), **({"N": 1.0, "sigma_prior": 0.5} if optimizer is MESU else {"N": 1.0}))
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.warns(UserWarning, match=r"\.step: none of its tensors has a gradient, so nothing changed \(no "
                                         r"backward pass since zero_grad\?; a Bayesian synapse in evaluation mode "
                                         r"gives none \(call model.train\(\)"):
        opt.step()  # all gradients None
    _backward(net)
    for p in net.parameters():
        p.grad.zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (zeros are a step without data: a documented case, said nothing of)
        opt.step()  # all gradients zero
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert not opt.state
    # one nonzero gradient anywhere: every parameter with a gradient moves (the prior pull acts)
    first = next(iter(opt.param_groups[0]["params"]))
    first.grad[(0,) * first.dim()] = 1.0
    opt.step()
    bayesian = [t for _, _, _, tensors in bayesian_modules(net) for t in tensors]
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()) if any(p is t for t in bayesian))


@pytest.mark.parametrize("make, optimizer, params", [
    (_mesu_net, MESU, lambda net: mesu_param_groups(net)),
    (_bimu_net, BiMU, lambda net: bimu_parameters(net)),
])
def test_a_step_over_tensors_frozen_after_the_optimizer_was_built_names_the_freezing(make, optimizer, params):
    """The warning blamed evaluation mode or a missing backward pass where the user had frozen every tensor."""
    net = make()
    opt = optimizer(params(net))
    net.requires_grad_(False)
    with pytest.warns(UserWarning, match=r"none of its tensors has a gradient, so nothing changed \(every one is "
                                         r"frozen \(requires_grad=False\); unfreeze what should learn") as caught:
        opt.step()
    assert not any("evaluation mode" in str(w.message) for w in caught)
    assert caught[0].filename == __file__  # (it pointed into torch's optimizer: a fixed stacklevel)


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_training_a_model_left_in_evaluation_mode_says_what_its_synapses_miss(kind):
    """In evaluation mode a synapse shows its mode (sign λ, μ) or a fixed sample, without a gradient to λ or σ: the
    optimizer says so once instead of leaving them untrained without a word."""
    net = bayesianize(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)), kind).eval()
    synapses = bimu_parameters(net) if kind == "bimu" else mesu_param_groups(net)
    opt = metaspike.ChainedOptimizer(BiMU(synapses) if kind == "bimu" else MESU(synapses),
                                     torch.optim.Adam(plain_parameters(net), lr=1e-2))
    expected = "none of its tensors has a gradient" if kind == "bimu" else "its width \\(sigma\\) none"
    with pytest.warns(UserWarning, match=expected) as caught:
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(net(torch.randn(4, 8)), torch.randint(0, 3, (4,))).backward()
            opt.step()
    assert sum("model.train()" in str(w.message) for w in caught) == 1  # once per optimizer
    net.train()
    before = [t.detach().clone() for t in opt.optimizers[0].param_groups[0]["params"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        opt.zero_grad()
        F.cross_entropy(net(torch.randn(4, 8)), torch.randint(0, 3, (4,))).backward()
        opt.step()
    assert all(not torch.equal(a, t) for a, t in zip(before, opt.optimizers[0].param_groups[0]["params"]))


@pytest.mark.parametrize("make, optimizer, params, settings", [
    (_mesu_net, MESU, lambda net: mesu_param_groups(net), MESU_SETTINGS[1]),
    (_bimu_net, BiMU, lambda net: bimu_parameters(net), BIMU_SETTINGS[0]),
])
def test_state_dict_round_trip(make, optimizer, params, settings):
    net = make()
    opt = optimizer(params(net), **settings)
    for seed in range(3):
        _backward(net, seed)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    twin = make(seed=1)
    twin.load_state_dict(net.state_dict())
    twin_opt = optimizer(params(twin))  # default hyperparameters, replaced by the loaded ones
    twin_opt.load_state_dict(saved)
    assert twin_opt.param_groups[0].keys() == opt.param_groups[0].keys()
    for key in settings:
        assert twin_opt.param_groups[0][key] == settings[key]
    assert all(s["step"].item() == 3 for s in twin_opt.state.values())
    assert len(twin_opt.state) == len(opt.state)
    for model, o in ((net, opt), (twin, twin_opt)):
        torch.manual_seed(7)  # the same weight samples
        _backward(model, seed=7)
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), twin.parameters()))


@pytest.mark.parametrize("name, value", [
    ("lr_mu", -1e-9), ("lr_sigma", -1), ("sigma_prior", float("nan")), ("mu_prior", float("inf")),
    ("N", 0), ("clamp_grad", -0.5), ("N", "100"),
])
def test_mesu_bad_hyperparameters(name, value):
    mu, sigma = torch.zeros(3, requires_grad=True), torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        MESU([mu, sigma], **{name: value})
    opt = MESU([mu, sigma])
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True), torch.ones(2, requires_grad=True)],
                             name: value})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        mesu_step(mu, sigma, mu, sigma, **{**MESU_SETTINGS[0], name: value})


@pytest.mark.parametrize("settings", [dict(sigma_prior=1e-20, N=1), dict(sigma_prior=1e-10, N=1, mu_prior=1e30)])
def test_a_mesu_prior_whose_pull_float32_cannot_hold_is_refused(settings):
    """1/(N·σ_p²) = 1e40 was finite in float64, where it was checked, and infinite in float32, where the step ran
    (μ NaN, σ −inf)."""
    mu, sigma = torch.zeros(3), torch.full((3,), 1e-20)
    with pytest.raises(ValueError, match="N \\* sigma_prior\\*\\*2 must be a positive number whose reciprocal "
                                         "\\(and mu_prior over it\\) float32 holds"):
        mesu_step(mu, sigma, mu, sigma, **{**MESU_SETTINGS[0], **settings})


@pytest.mark.parametrize("name, value", [
    ("lr", -0.5), ("lr_max", -1.0), ("likelihood_multiplier", float("nan")), ("kl_multiplier", -0.1),
    ("N", float("inf")), ("lr", True),
])
def test_bimu_bad_hyperparameters(name, value):
    lam = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        BiMU([lam], **{name: value})
    opt = BiMU([lam])
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], name: value})
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        bimu_step(lam, lam, **{**BIMU_SETTINGS[0], name: value})


@pytest.mark.parametrize("optimizer", [BiMU, MESU])
def test_the_parameters_of_a_model_made_binary_not_bayesian_are_refused(optimizer):
    import metaspike

    net = metaspike.binarize(nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8)))
    kind = optimizer.__name__.lower()
    with pytest.raises(ValueError, match=f"is the hidden weight of a binary synapse .* metaspike.bayesianize\\(model, "
                                         f"'{kind}'\\)"):
        optimizer(net.parameters())
    with pytest.raises(ValueError, match="is the hidden weight of a binary synapse"):
        optimizer(metaspike.hidden_weights(net))  # (two of one shape: MESU would have paired them as mu and sigma)


def test_bad_structure_and_options():
    with pytest.raises(ValueError, match="alternate means and widths"):
        MESU([torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match=r"the width \(sigma\) must have the shape of the mean \(mu\)"):
        MESU([torch.zeros(3, requires_grad=True), torch.ones(2, requires_grad=True)])
    net = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="^kind must be one of"):
        bayesianize(net, "gauss")
    with pytest.raises(ValueError, match="^evaluation must be one of"):
        bayesianize(net, "bimu", evaluation="mean")
    # each setting in the range a float32 synapse holds what it implies: sigma^2, 1/temperature, the drawn lambdas
    for kind, setting, bad in (("mesu", "sigma_init", 0), ("mesu", "sigma_init", 1e-50), ("mesu", "sigma_init", 1e300),
                               ("bimu", "temperature", -1), ("bimu", "temperature", 1e-39),
                               ("bimu", "lambda_init", 1e300), ("bimu", "lambda_init", -1.0)):
        with pytest.raises(ValueError, match=f"^{setting} must be a finite number in \\[.* float32 .*got {re.escape(str(bad))}$"):
            bayesianize(net, kind, **{setting: bad})
    with pytest.raises(ValueError, match="^sigma_init must be a finite number in"):
        GaussianWeight(torch.zeros(2), sigma_init=1e-50)
    with pytest.raises(ValueError, match="^temperature must be a finite number in"):
        BinaryWeight(temperature=1e-39)
    assert isinstance(bayesianize(nn.Sequential(nn.Linear(3, 2)), "mesu", sigma_init=2e-19)[0], nn.Linear)
    with pytest.raises(ValueError, match="exclude names layers \\(or weight matrices\\) that do not exist"):
        bayesianize(net, exclude=["5"])
    with pytest.raises(ValueError, match="no layer to make Bayesian"):
        bayesianize(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="no MESU synapses"):
        mesu_param_groups(bayesianize(nn.Sequential(nn.Linear(3, 2)), "bimu"))
    with pytest.raises(ValueError, match="^samples must be an int >= 1"):
        BayesianLinear(3, 2, samples=0)


def _assert_stochastic_then_deterministic(net, x, run):
    net.train()
    assert not torch.equal(run(net, x), run(net, x))
    net.eval()
    with torch.no_grad():
        first = run(net, x)
        assert torch.equal(first, run(net, x))


def test_bayesianize_snntorch_network():
    snn = pytest.importorskip("snntorch")
    from snntorch import utils

    def run(net, x):
        utils.reset(net)
        return torch.stack([net(x)[1] for _ in range(4)])  # membrane of the output layer over 4 steps

    torch.manual_seed(0)
    for kind in ("bimu", "mesu"):
        net = nn.Sequential(
            nn.Linear(10, 8), snn.Leaky(beta=0.9, init_hidden=True),
            nn.Linear(8, 3), snn.Leaky(beta=0.9, init_hidden=True, output=True),
        )
        mu = net[0].weight.detach().clone()
        bayesianize(net, kind)
        assert [name for name, _, _, _ in bayesian_modules(net)] == ["0", "2"]
        _assert_stochastic_then_deterministic(net, torch.rand(5, 10), run)
        if kind == "bimu":
            assert net[0].weight.abs().unique().tolist() == [1.0]
        else:
            assert torch.equal(net[0].weight, mu)  # evaluation="mode" shows μ


def test_bayesianize_plain_mlp_and_evaluation_sample():
    torch.manual_seed(0)
    net = bayesianize(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), exclude=["2"])
    assert [name for name, _, _, _ in bayesian_modules(net)] == ["0"]
    plain = {name: tuple(p.shape) for name, p in net.named_parameters() if any(p is q for q in plain_parameters(net))}
    assert plain == {"0.bias": (5,), "0.output_gain.alpha": (5,), "2.weight": (3, 5), "2.bias": (3,)}
    _assert_stochastic_then_deterministic(net, torch.randn(4, 6), lambda net, x: net(x))
    assert torch.equal(net[0].weight, torch.where(bimu_parameters(net)[0] >= 0, 1.0, -1.0))

    sampled = bayesianize(nn.Sequential(nn.Linear(6, 50)), evaluation="sample").eval()
    first, second = sampled[0].weight, sampled[0].weight
    assert first.abs().unique().tolist() == [1.0] and not torch.equal(first, second)
    # Bernoulli frequencies follow P(+1) = sigmoid(2λ)
    lam = torch.tensor([-1.0, 0.0, 0.5])
    samples = sampled[0].parametrizations.weight[0].sample(lam, samples=20_000)
    torch.testing.assert_close((samples > 0).double().mean(0), torch.sigmoid(2 * lam).double(), atol=0.015, rtol=0)


def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = torch.tensor(x[order], dtype=torch.float32), torch.tensor(y[order])
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _train(net, optimizers, epochs=8, batch=50):
    x, y, x_test, y_test = _digits()
    for _ in range(epochs):
        net.train()
        for i in torch.randperm(len(x)).split(batch):
            for opt in optimizers:
                opt.zero_grad()
            F.cross_entropy(net(x[i]), y[i]).backward()
            for opt in optimizers:
                opt.step()
    net.eval()
    with torch.no_grad():
        return (net(x_test).argmax(1) == y_test).float().mean().item()


def test_bimu_mlp_learns_digits(one_thread):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(64, 64, bias=False), nn.BatchNorm1d(64, affine=False), nn.ReLU(),
        nn.Linear(64, 10, bias=False), nn.BatchNorm1d(10, affine=False),
    )
    bayesianize(net, "bimu", scale=None)  # (BatchNorm follows each layer: a gain would change nothing)
    # the gradient of a batch-mean loss is small: the likelihood multiplier scales it (as the authors' L)
    accuracy = _train(net, [BiMU(bimu_parameters(net), likelihood_multiplier=100)])
    assert accuracy > 0.85  # measured 0.95-0.96 over seeds 0-4; chance is 0.1


def test_mesu_mlp_learns_digits(one_thread):
    torch.manual_seed(0)
    net = bayesianize(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), "mesu")
    # Δμ = η_μ σ² (...): with σ ≈ 0.1, η_μ = 10 is a plain-SGD step of about 0.1
    optimizers = [MESU(mesu_param_groups(net), lr_mu=10, lr_sigma=10), torch.optim.SGD(plain_parameters(net), lr=0.1)]
    accuracy = _train(net, optimizers)
    assert accuracy > 0.85  # measured 0.95-0.97 over seeds 0-2; chance is 0.1


@pytest.mark.parametrize("layer_type", [BayesianLinear, BinaryBayesianLinear])
def test_sampled_linear_equals_separate_passes(layer_type):
    torch.manual_seed(0)
    layer = layer_type(7, 4, bias=True, samples=3)
    x = torch.randn(5, 7)
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)
    weights = sample_weights(layer, 3)
    assert out.shape == (3, 5, 4)
    for s in range(3):
        torch.testing.assert_close(out[s], F.linear(x, weights[s], layer.bias))
    # a second sampled layer takes the (S, B, ...) output sample by sample
    nxt = layer_type(4, 2, samples=3)
    torch.manual_seed(2)
    out2 = nxt(out)
    torch.manual_seed(2)
    weights2 = sample_weights(nxt, 3)
    for s in range(3):
        torch.testing.assert_close(out2[s], F.linear(out[s], weights2[s]))
    out2.sum().backward()
    assert all(t.grad is not None for _, _, _, tensors in bayesian_modules(layer) for t in tensors)


@pytest.mark.parametrize("layer_type", [BayesianConv2d, BinaryBayesianConv2d])
def test_sampled_conv2d_equals_separate_passes(layer_type):
    torch.manual_seed(0)
    layer = layer_type(4, 6, kernel_size=3, stride=2, padding=1, groups=2, bias=True, samples=3)
    x = torch.randn(2, 4, 9, 9)
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)
    weights = sample_weights(layer, 3)
    assert out.shape == (3, 2, 6, 5, 5)
    for s in range(3):
        expected = F.conv2d(x, weights[s], layer.bias, stride=2, padding=1, groups=2)
        torch.testing.assert_close(out[s], expected)
    per_sample = torch.randn(3, 2, 4, 9, 9)
    torch.manual_seed(1)
    out = layer(per_sample)
    for s in range(3):
        expected = F.conv2d(per_sample[s], weights[s], layer.bias, stride=2, padding=1, groups=2)
        torch.testing.assert_close(out[s], expected)


@pytest.mark.parametrize("kind", ["mesu", "bimu"])
@pytest.mark.parametrize("conv, conv_fn, spatial", [(nn.Conv1d, F.conv1d, (11,)), (nn.Conv3d, F.conv3d, (5, 6, 4))])
def test_sampled_conv1d_and_conv3d_equal_separate_passes(kind, conv, conv_fn, spatial):
    """bayesianize converts Conv1d and Conv3d layers: sampled_forward runs them on S samples as it runs Conv2d."""
    torch.manual_seed(0)
    layer = make_bayesian(conv(4, 6, kernel_size=3, padding=1, groups=2, padding_mode="reflect"), kind, scale=None)
    x = torch.randn(2, 4, *spatial)
    torch.manual_seed(1)
    out = sampled_forward(layer, x, 3)
    torch.manual_seed(1)
    weights = sample_weights(layer, 3)
    padded = F.pad(x, layer._reversed_padding_repeated_twice, mode="reflect")
    assert out.shape == (3, 2, 6, *spatial)
    for s in range(3):
        torch.testing.assert_close(out[s], conv_fn(padded, weights[s], layer.bias, groups=2))
    per_sample = torch.randn(3, 2, 4, *spatial)
    assert sampled_forward(layer, per_sample, 3).shape == (3, 2, 6, *spatial)
    with pytest.raises(ValueError, match=r"x must have shape \(B, C=4, .*\) or \(samples=3, B, C=4, "):
        sampled_forward(layer, torch.randn(2, 5, *spatial), 3)


@pytest.mark.parametrize("layer_type", [BayesianLinear, BinaryBayesianLinear, BayesianConv2d, BinaryBayesianConv2d])
def test_evaluation_mode_computes_one_product_for_its_one_weight(layer_type):
    """Evaluation "mode" shows one weight in every sample: the S outputs are that weight's product (computed once),
    with gradients summed over them as over S separate products; "sample" still draws S different weights."""
    torch.manual_seed(0)
    conv = layer_type in (BayesianConv2d, BinaryBayesianConv2d)
    layer = layer_type(4, 6, kernel_size=3, padding=1, bias=True, samples=3) if conv else layer_type(4, 6, bias=True, samples=3)
    x = torch.randn(2, 4, 5, 5) if conv else torch.randn(5, 4)
    layer.eval()
    out = layer(x)
    weight = sample_weights(layer, 1)[0]
    expected = F.conv2d(x, weight, layer.bias, padding=1) if conv else F.linear(x, weight, layer.bias)
    assert out.shape == (3, *expected.shape) and out.is_contiguous()
    for s in range(3):  # the same sums as one product: equal up to their order (float32, four to 36 terms)
        torch.testing.assert_close(out[s], expected)
    if layer_type in (BayesianLinear, BayesianConv2d):  # MESU's mode is μ: each sample adds its gradient
        out.sum().backward()
        mu = layer.parametrizations.weight.original
        alone = mu.detach().clone().requires_grad_()
        (F.conv2d(x, alone, padding=1) if conv else F.linear(x, alone)).sum().backward()
        torch.testing.assert_close(mu.grad, 3 * alone.grad)
    for synapse in (m for m in layer.modules() if hasattr(m, "evaluation")):
        synapse.evaluation = "sample"
    drawn = layer(x)
    assert not torch.equal(drawn[0], drawn[1])  # different weights per sample


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.25, 0.7], ids=["tau1-rational", "tau0.5-rational", "tau0.25-tanh", "tau0.7-tanh"])
@pytest.mark.parametrize("samples", [None, 3])
def test_the_fused_relaxed_sample_and_its_gradient_equal_the_tanh_formula(temperature, samples):
    from metaspike.bayesian.counter_noise import counter_uniform, draw_key
    from metaspike.bayesian.synapses import BinaryWeight

    lam = torch.cat([torch.randn(200, dtype=torch.float64) * 3, torch.tensor([0.0, 40.0, -40.0, 1e-8], dtype=torch.float64)])
    lam.requires_grad_(True)
    torch.manual_seed(5)
    fused = BinaryWeight(temperature).sample(lam, samples)
    torch.manual_seed(5)  # the same key, hence the same uniforms, for the reference
    u = counter_uniform(tuple(fused.shape), draw_key(), torch.float64)
    reference = torch.tanh((lam + 0.5 * torch.log(u / (1 - u))) / temperature)
    # float64 both ways: the two forms differ by a few rounding errors of |w| <= 1, in w and in (1 - w²)/τ
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-12)
    weights = torch.randn(fused.shape, dtype=torch.float64)
    (grad_fused,) = torch.autograd.grad((fused * weights).sum(), lam)
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), lam)
    torch.testing.assert_close(grad_fused, grad_reference, rtol=0, atol=1e-10)


def test_relaxed_samples_have_the_sign_of_a_bernoulli_sample_with_p_sigmoid_2_lambda():
    from metaspike.bayesian.synapses import BinaryWeight

    lam = torch.tensor([-1.0, -0.2, 0.0, 0.4, 2.0])
    samples = BinaryWeight(0.5).sample(lam, samples=40_000)
    # 40,000 draws: the standard error of a frequency is at most 0.0025; 0.015 is six of them
    torch.testing.assert_close((samples > 0).double().mean(0), torch.sigmoid(2 * lam).double(), atol=0.015, rtol=0)


def test_counter_uniforms_cover_the_whole_range_evenly_and_differ_between_keys():
    from metaspike.bayesian.counter_noise import counter_uniform

    u = counter_uniform((400_000,), torch.tensor(123))
    assert float(u.min()) > 0 and float(u.max()) < 1
    counts = torch.histc(u, bins=16, min=0, max=1)
    # 25,000 expected per bin, standard deviation about 153: 6 of them is 920
    assert float((counts - 25_000).abs().max()) < 920
    # the next key's draw starts one counter later (as documented; draw_key's keys are 64 random bits apart) ...
    assert torch.equal(counter_uniform((400_000,), torch.tensor(124))[:-1], u[1:])
    # ... the top and the low bits of the words (the two uniforms of a normal pair) are uncorrelated ...
    from metaspike.bayesian.counter_noise import random_words, uniform_pairs

    high, low = uniform_pairs(random_words(torch.tensor(123), torch.arange(400_000)), torch.float32)
    assert torch.equal(high, u)
    assert abs(float(torch.corrcoef(torch.stack([high, low]))[0, 1])) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([u[:200_000], u[200_000:]]))[0, 1])) < 0.01
    # ... and a key past the end of the draw gives unrelated numbers: the correlation of two streams of
    # 400,000 independent uniforms has standard deviation 1/sqrt(400,000) = 0.0016
    other = counter_uniform((400_000,), torch.tensor(123 + 400_000))
    assert abs(float(torch.corrcoef(torch.stack([u, other]))[0, 1])) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([u[1:], u[:-1]]))[0, 1])) < 0.01  # nor is a stream with itself


@pytest.mark.parametrize("inv_tau", [1.0, 2.0, 1 / 0.7])  # the rational forms (τ = 1, ½) and the tanh form
def test_the_top_uniform_stays_below_one_so_a_very_negative_lambda_samples_minus_one(inv_tau):
    """(k + ½)/2²⁴ rounds to 1.0 in float32 at the top k: log(u/(1 − u)) was infinite there, and a λ of −60 drew
    +1 (tanh form) or 0/0 (rational forms); the top uniform is now the largest float32 below 1."""
    from metaspike.bayesian.counter_noise import counter_uniform, random_words, uniform_pairs
    from metaspike.bayesian.synapses import _draw_relaxed

    key = torch.tensor(1_869_154)  # its first word has the top 24 bits all set (found by search)
    assert float(uniform_pairs(random_words(key, torch.arange(1)), torch.float32)[0]) == 1.0  # (Box-Muller's: ln 1 = 0)
    assert float(counter_uniform((1,), key)) == 1 - 2.0**-24
    # u = 1 − 2⁻²⁴ adds ½·log(u/(1 − u)) = 8.3 to λ: −60 and −20 stay negative, 0 and 20 positive
    samples = [float(_draw_relaxed(torch.tensor([[lam]]), key, 1, inv_tau)) for lam in (-60.0, -20.0, 0.0, 20.0)]
    assert [math.copysign(1, s) for s in samples] == [-1, -1, 1, 1] and all(map(math.isfinite, samples))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_synapses_draw_in_float32_finite_samples_with_the_right_probability(dtype):
    from metaspike.bayesian.synapses import _draw_gaussian, _draw_relaxed

    lam = torch.full((1, 1 << 17), -0.5, dtype=dtype)
    for inv_tau in (1.0, 2.0, 1 / 0.7):
        sample = _draw_relaxed(lam, torch.tensor(3), 2, inv_tau)
        assert sample.dtype == dtype and bool(torch.isfinite(sample).all())
        # 262,144 draws of P(+1) = sigmoid(−1) = 0.2689: standard error 0.0009
        assert abs(float((sample > 0).float().mean()) - 0.2689) < 0.005
    weight, noise = _draw_gaussian(torch.zeros(1 << 17, dtype=dtype), torch.ones(1 << 17, dtype=dtype),
                                   torch.tensor(3), 2)
    assert weight.dtype == noise.dtype == dtype and bool(torch.isfinite(noise).all())
    assert abs(float(noise.float().std()) - 1) < 0.01


def test_counter_normals_have_the_moments_of_a_standard_normal():
    from metaspike.bayesian.counter_noise import counter_normal

    eps = counter_normal((1_000_000,), torch.tensor(-77), torch.float64)
    # a million draws: standard errors of the mean, variance and 4th moment are 0.001, 0.0014 and 0.0098
    assert abs(float(eps.mean())) < 0.006
    assert abs(float(eps.var()) - 1) < 0.009
    assert abs(float(eps.pow(4).mean()) - 3) < 0.06
    assert float(eps.abs().max()) < 5.9  # Box-Muller on 24-bit uniforms: |ε| <= sqrt(2·ln(2^25))
    # the normal CDF at -2, -1, 0, 1, 2: frequencies within 6 standard errors (at most 0.0005 each)
    cdf = torch.tensor([0.02275, 0.15866, 0.5, 0.84134, 0.97725], dtype=torch.float64)
    frequencies = torch.stack([(eps < t).double().mean() for t in (-2.0, -1.0, 0.0, 1.0, 2.0)])
    torch.testing.assert_close(frequencies, cdf, atol=0.003, rtol=0)


def test_the_polynomial_cosine_is_within_its_error_bound():
    import math

    from metaspike.bayesian.counter_noise import cos_two_pi

    t = torch.linspace(0, 1, 1_000_001, dtype=torch.float64)
    # float64: only the truncated Taylor series, bounded by its first omitted term π^18/18! < 1.4e-7
    assert float((cos_two_pi(t) - torch.cos(2 * math.pi * t)).abs().max()) < 1.4e-7
    # float32 adds roundings: z = x² (half an ulp of a number <= 1, 6e-8, times |d poly/dz| <= π²/2 ≈ 4.9: 3e-7) and
    # the Horner steps (partial sums below 4: half an ulp, <= 2.4e-7, for the two largest, less for the rest): < 8e-7
    error = (cos_two_pi(t.float()).double() - torch.cos(2 * math.pi * t.float().double())).abs().max()
    assert float(error) < 8e-7


def test_the_polynomial_sine_is_within_its_error_bound():
    import math

    from metaspike.bayesian.counter_noise import sin_two_pi

    t = torch.linspace(0, 1, 1_000_001, dtype=torch.float64)
    # float64: the truncated Taylor series of sin(πx)/x, bounded by its first omitted term π^19/19! < 2.3e-8
    assert float((sin_two_pi(t) - torch.sin(2 * math.pi * t)).abs().max()) < 2.3e-8
    # float32: the roundings of x = 2t − 1 (3e-8 · π), of x² (6e-8 · max |x P'(x²)| = 2.2) and of the Horner steps
    # (partial sums 5.2, 3.2, 2.6: half an ulp each of a product and a sum, at most 2.4e-7, less for the rest): < 1.2e-6
    error = (sin_two_pi(t.float()).double() - torch.sin(2 * math.pi * t.float().double())).abs().max()
    assert float(error) < 1.2e-6


def test_the_two_normals_of_a_word_are_independent():
    from metaspike.bayesian.counter_noise import counter_normal

    eps = counter_normal((2, 500_000), torch.tensor(5), torch.float64)  # row 0: cosines, row 1: sines of the same words
    # independent standard normals: the correlation of their values and of their squares (the shared radius would
    # show there) has standard deviation 1/sqrt(500,000) = 0.0014 (times about 1.4 for the squares)
    assert abs(float(torch.corrcoef(eps)[0, 1])) < 0.01
    assert abs(float(torch.corrcoef(eps.square())[0, 1])) < 0.012


@pytest.mark.parametrize("samples", [None, 1, 4])
def test_the_fused_gaussian_sample_is_mu_plus_sigma_times_the_counter_normals(samples):
    from metaspike.bayesian.counter_noise import counter_normal, draw_key
    from metaspike.bayesian.synapses import GaussianWeight

    mu = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    weight = GaussianWeight(mu, sigma_init=0.3)
    torch.manual_seed(9)
    sample = weight.sample(mu, samples)
    torch.manual_seed(9)
    eps = counter_normal((samples or 1, 5, 7), draw_key(), torch.float64)
    expected = mu + weight.sigma * eps
    # the compiled loop's log, sqrt and cos (vectorised) may differ from torch's by a few float64 ulps of |ε| < 6
    torch.testing.assert_close(sample, expected if samples else expected[0], rtol=0, atol=1e-12)
    g = torch.randn(sample.shape, dtype=torch.float64)
    grad_mu, grad_sigma = torch.autograd.grad((sample * g).sum(), (mu, weight.sigma))
    g = g if samples else g.unsqueeze(0)
    torch.testing.assert_close(grad_mu, g.sum(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_sigma, (g * eps).sum(0), rtol=0, atol=1e-12)


def test_a_learned_gain_is_applied_once_on_the_sampled_path_too():
    layer = BinaryBayesianLinear(6, 4, samples=3, scale="channel", bias=True).eval()  # eval: every sample is sign(λ)
    with torch.no_grad():
        layer.output_gain.alpha.copy_(torch.tensor([0.5, -2.0, 0.0, 1.5]))
        layer.bias.fill_(1.0)
    x = torch.randn(2, 6)
    signs = torch.where(bimu_parameters(layer)[0] >= 0, 1.0, -1.0)
    expected = layer.output_gain.alpha.detach() * (x @ signs.T) + 1.0  # α·(W x) + b: the bias is not scaled
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected.expand(3, 2, 4))  # the layer: product, then its hook
        net = bayesianize(nn.Sequential(nn.Linear(6, 4)), "bimu").eval()
        gain = net[0].output_gain.alpha
        plain = sampled_product(net[0], x, 2)
        torch.testing.assert_close(sampled_forward(net[0], x, 2), plain * gain + net[0].bias * (1 - gain))


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_diagnostics_follow_the_synapses_sign_tensor_never_sigma(kind):
    from metaspike.synapse import weight_matrices

    net = bayesianize(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), kind)
    found = weight_matrices(net)
    assert [name for name, _ in found] == ["0", "2"]
    assert all(tensor is tensors[0] for (_, tensor), (_, _, _, tensors) in zip(found, bayesian_modules(net)))


@pytest.mark.parametrize("kind", ["mesu", "bimu"])
@pytest.mark.parametrize("shared_input", [True, False])
@pytest.mark.parametrize("samples", [1, 3])
def test_the_batch_one_product_gives_the_gradients_of_the_samples_batched_product(kind, shared_input, samples):
    # at batch size 1 sampled_product never writes the samples' weight gradients (_SampledRowProduct); the same
    # draw through sample_weights and torch.bmm must give the same output and gradients (float64: the two sum the
    # same products in another order, a few ulps of numbers below 100)
    from metaspike.bayesian.synapses import make_bayesian

    torch.manual_seed(3)
    layer = make_bayesian(nn.Linear(7, 5, bias=True), kind, scale=None,
                          **({"temperature": 0.5} if kind == "bimu" else {})).double()
    x = torch.randn(*(() if shared_input else (samples,)), 1, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(samples, 1, 5, dtype=torch.float64)
    params = [p for p in layer.parameters()]

    torch.manual_seed(11)
    fused = sampled_product(layer, x, samples)
    assert "_SampledRowProductBackward" in str(fused.grad_fn.next_functions)  # (+ bias)
    fused_grads = torch.autograd.grad((fused * g).sum(), [x, *params])
    torch.manual_seed(11)
    weights = sample_weights(layer, samples)
    inputs = x.expand(samples, 1, 7) if shared_input else x
    batched = torch.bmm(weights, inputs.transpose(1, 2)).transpose(1, 2) + layer.bias
    batched_grads = torch.autograd.grad((batched * g).sum(), [x, *params])

    torch.testing.assert_close(fused, batched, rtol=0, atol=1e-12)
    for got, expected in zip(fused_grads, batched_grads):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("samples", [None, 0, 2.5, True])
def test_a_sampled_product_needs_a_whole_number_of_samples(samples):
    from metaspike.bayesian.synapses import make_bayesian

    with pytest.raises(ValueError, match=r"^samples must be an int >= 1, got "):
        sampled_product(make_bayesian(nn.Linear(3, 2), "mesu"), torch.ones(1, 3), samples)


@pytest.mark.parametrize("kind", ["mesu", "bimu"])
def test_a_compiled_model_with_bayesian_synapses_draws_what_the_eager_model_draws(kind, working_compiler):
    # torch.compile(model) must not trace the weight samples (dynamo cannot, and a traced key would come from
    # inductor's random stream): the sampled layers run as they are, so the same seed gives the same numbers
    from metaspike.app.models import build_model

    torch.manual_seed(0)
    nets = {"sampled layers": build_model(kind, [8], (1, 4, 4), 3),  # the batch-1 product of bnn's layers
            "bayesianized": bayesianize(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)), kind)}
    x, y = torch.randn(1, 1, 4, 4), torch.tensor([2])
    for name, net in nets.items():
        inputs = x if name == "sampled layers" else x.flatten(1).expand(2, 16)  # the parametrization, batch 2
        compiled = torch.compile(net)
        results = []
        for model in (compiled, net):
            net.zero_grad()
            torch.manual_seed(5)
            out = model(inputs)
            F.cross_entropy(out.reshape(-1, 3), y.repeat(out.numel() // 3)).backward()
            results.append([out.detach(), *(p.grad.clone() for p in net.parameters() if p.grad is not None)])
        for got, expected in zip(*results):
            torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)


def test_evaluating_never_shifts_the_random_numbers_training_draws():
    """BiMU's evaluation draws Bernoulli weights; they come from a copy of torch's generator, so a run trains the
    same however often it is evaluated, and two evaluations in a row see the same samples."""
    from metaspike.training import evaluate, train_epoch

    x, y = torch.randn(40, 12), torch.randint(0, 3, (40,))

    def run(evaluate_between: bool) -> tuple[torch.Tensor, list[float]]:
        torch.manual_seed(0)
        net = nn.Sequential(BinaryBayesianLinear(12, 8, samples=2, evaluation="sample"), nn.ReLU(),
                            BinaryBayesianLinear(8, 3, samples=2, evaluation="sample"))
        optimizer = BiMU(bimu_parameters(net), lr=1.0, N=100)
        scores = []
        for _ in range(2):
            train_epoch(net, optimizer, x, y, batch_size=8)
            if evaluate_between:
                state = torch.get_rng_state()
                scores += [evaluate(net, x, y, batch_size=10), evaluate(net, x, y, batch_size=10)]
                assert torch.equal(torch.get_rng_state(), state)
        return torch.cat([p.detach().flatten() for p in net.parameters()]), scores

    evaluated, scores = run(True)
    plain, _ = run(False)
    assert torch.equal(evaluated, plain)
    assert scores[0] == scores[1] and scores[2] == scores[3]


def test_a_layer_predicts_from_its_evaluation_samples_and_trains_on_its_samples():
    layer = BinaryBayesianLinear(6, 4, samples=2, evaluation="sample", evaluation_samples=9)
    x = torch.randn(3, 6)
    assert layer(x).shape == (2, 3, 4) and layer.eval()(x).shape == (9, 3, 4)
    with pytest.raises(ValueError, match="evaluation_samples needs samples"):
        BinaryBayesianLinear(6, 4, evaluation_samples=3)
    with pytest.raises(ValueError, match="samples must be an int >= 1"):
        BayesianLinear(6, 4, samples=2, evaluation_samples=0)
    with pytest.raises(ValueError, match=r"^evaluation_samples=9 needs evaluation='sample': evaluation='mode' shows "
                                         r"every sample the same weight"):  # (9 equal outputs at 9 times the cost)
        BinaryBayesianLinear(6, 4, samples=2, evaluation_samples=9)


@pytest.mark.parametrize("edit", ["evaluation_samples", "evaluation"])
def test_an_ensemble_of_equal_samples_set_after_construction_is_refused_when_evaluated(edit):
    """The constructor's refusal held only there: ``layer.evaluation_samples = 5`` on a layer evaluating its mode gave
    five equal outputs, silently."""
    layer = BinaryBayesianLinear(6, 4, samples=2, evaluation="sample", evaluation_samples=5)
    if edit == "evaluation_samples":
        layer = BinaryBayesianLinear(6, 4, samples=2)
        layer.evaluation_samples = 5
    else:
        layer.parametrizations.weight[0].evaluation = "mode"
    x = torch.randn(3, 6)
    assert layer(x).shape == (2, 3, 4)  # (training draws its samples)
    with pytest.raises(ValueError, match=r"^evaluation_samples=5 needs evaluation='sample'"):
        layer.eval()(x)


def test_start_confident_gives_every_latent_the_magnitude_and_keeps_its_sign():
    torch.manual_seed(0)
    net = bayesianize(nn.Sequential(nn.Linear(6, 5, bias=False), nn.Linear(5, 4, bias=False)))
    first, last = (lam.detach().clone() for lam in bimu_parameters(net))
    start_confident(net[1], 1.0)
    new_first, new_last = bimu_parameters(net)
    assert torch.equal(new_first, first)  # the other layer is left as it was
    assert torch.equal(new_last.detach(), torch.where(last >= 0, 1.0, -1.0))
    # a Bernoulli weight is then +1 with probability sigmoid(2) where λ = +1
    assert torch.equal(net.eval()[1].weight, torch.sign(new_last.detach()))
    for bad in (0, -1.0, 1e-50, 1e39, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match=r"magnitude must be a finite number in \[1.17549e-38, 3.40282e\+38\]"):
            start_confident(net[1], bad)
    with pytest.raises(ValueError, match="needs a layer with a BiMU synapse .* Linear has no Bayesian synapse"):
        start_confident(nn.Linear(3, 2), 1.0)
    mesu = bayesianize(nn.Sequential(nn.Linear(3, 2)), "mesu")
    with pytest.raises(ValueError, match="has a 'mesu' synapse"):
        start_confident(mesu[0], 1.0)
    with pytest.raises(ValueError, match="Sequential has no Bayesian synapse of its own; it takes one layer, such as "
                                         "its submodule '0'"):
        start_confident(net, 1.0)


@pytest.mark.parametrize("start, kind, value", [
    ("sigma_init", "mesu", 1e-9),  # (rounds to 0 in float16: MESU's steps, which scale with σ², would never move μ)
    ("sigma_init", "mesu", 1e6),  # (beyond float16's 65504)
    ("lambda_init", "bimu", 1e6),  # (λ of ±inf, which BiMU's step then keeps)
])
def test_a_start_a_float16_synapse_cannot_hold_is_refused_in_one_line_naming_the_type(start, kind, value):
    message = (rf"{start} must be a finite number in \[.*\] \((a float16 synapse holds it as a normal number|the "
               r"normal draws of lambda reach several times it, which a float16 synapse must hold)")
    with pytest.raises(ValueError, match=message):
        bayesianize(nn.Sequential(nn.Linear(4, 3, bias=False)).half(), kind, **{start: value})
    with pytest.raises(ValueError, match=message):
        make_bayesian(nn.Linear(4, 3, bias=False).half(), kind, **{start: value})
    layer = make_bayesian(nn.Linear(4, 3, bias=False).bfloat16(), kind, **{start: value})  # (float32's range)
    assert bool(torch.isfinite(next(iter(layer.parametrizations.weight.parameters()))).all())
    half = bayesianize(nn.Sequential(nn.Linear(4, 3, bias=False)).half())
    for magnitude in (1e-30, 1e6):  # (±0, which loses the signs, and ±inf)
        with pytest.raises(ValueError, match=r"magnitude must be a finite number in \[6.10352e-05, 65504\] "
                                             r"\(float16 latent weights hold it as a normal number"):
            start_confident(half[0], magnitude)


@pytest.mark.parametrize("frozen", ["sigma", "mu"])
def test_mesu_leaves_a_frozen_mean_or_width_as_it_is(frozen):
    """The docstring's 'parameters whose gradient is None are skipped': σ drifted under the prior term before."""
    net = bayesianize(nn.Sequential(nn.Linear(4, 3, bias=False)), "mesu")
    mu, sigma = mesu_param_groups(net)[0]["params"]
    still, moving = (sigma, mu) if frozen == "sigma" else (mu, sigma)
    still.requires_grad_(False)
    before, moving_before = still.detach().clone(), moving.detach().clone()
    opt = MESU(mesu_param_groups(net), sigma_prior=0.3, N=10)
    net(torch.randn(5, 4)).pow(2).mean().backward()
    opt.step()
    assert torch.equal(still, before) and "step" not in opt.state[still]
    assert not torch.equal(moving, moving_before) and float(opt.state[moving]["step"]) == 1


@pytest.mark.parametrize("layer_type", [BayesianLinear, BinaryBayesianLinear])
@pytest.mark.parametrize("batch", [1, 5])
def test_sampled_layers_draw_their_samples_once_per_binarized_once_block(layer_type, batch):
    """A spiking time loop inside binarized_once drew new weights at every time step from a layer with samples=S."""
    import metaspike

    layer = layer_type(6, 4, samples=3)
    x = torch.randn(batch, 6)
    with metaspike.binarized_once():
        first, again = layer(x), layer(x)
    assert torch.equal(first, again)
    assert not torch.equal(first, layer(x))  # outside a block: new samples


@pytest.mark.parametrize("make", [lambda: bayesianize(nn.Linear(6, 4), "bimu"),
                                  lambda: bayesianize(nn.Linear(6, 4), "mesu"),
                                  lambda: BinaryBayesianLinear(6, 4, samples=3),
                                  lambda: BayesianLinear(6, 4, samples=3)])
@pytest.mark.parametrize("batch", [1, 5])
def test_each_backward_pass_of_a_binarized_once_block_goes_through_its_one_sample(make, batch):
    """A time loop cut into chunks, each with its backward pass (truncated BPTT), or micro-batches whose gradients
    add up, in one block: the second backward failed inside torch ("Trying to backward through the graph a second
    time": the first had freed the block's sample). Both now add the gradient of the one sample."""
    import metaspike

    layer, x = make(), torch.randn(batch, 6)
    with metaspike.binarized_once():
        layer(x).pow(2).sum().backward()
        once = [p.grad.clone() for p in layer.parameters()]
        layer(x).pow(2).sum().backward()
    assert all(torch.allclose(p.grad, 2 * g) for p, g in zip(layer.parameters(), once))


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_a_non_finite_gradient_is_refused_and_changes_nothing(kind):
    """A NaN latent weight would read as a plausible +1 weight in evaluation (the sign of NaN): the step refuses. (A
    gradient so large that its norm overflows float32 is checked entry by entry: it is finite, and steps.)"""
    model = bayesianize(nn.Sequential(nn.Linear(4, 2)), kind, scale=None)
    optimizer = BiMU(bimu_parameters(model)) if kind == "bimu" else MESU(mesu_param_groups(model))
    before = copy.deepcopy(model.state_dict())
    model(torch.tensor([[float("nan"), 0.0, 0.0, 0.0]])).sum().backward()
    from metaspike.training import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"\.step: the gradient of parameter 0 of param group 0 holds NaN or "
                                               r"infinite values; (BiMU|MESU) changed nothing"):
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(int(s.get("step", 0)) == 0 for s in optimizer.state.values())
    optimizer.zero_grad()
    model(torch.full((1, 4), 1e30)).sum().backward()  # (squares of 1e30 overflow: the norm is inf, the entries not)
    optimizer.step()


@pytest.mark.parametrize("kind, settings", [("bimu", dict(likelihood_multiplier=1e38, lr_max=1e38)),
                                             ("bimu", dict(lr=1e20, lr_max=1e20, likelihood_multiplier=1e20)),
                                             ("mesu", dict(lr_mu=1e38, lr_sigma=1e38, clamp_grad=0.0))])
def test_settings_whose_product_overflows_are_named_after_the_step(kind, settings):
    """Each setting is in range, their product is not: the step on finite gradients made NaN or infinite tensors,
    which must not pass silently (a NaN latent weight reads as +1 in evaluation)."""
    from metaspike.training import TrainingDiverged

    torch.manual_seed(0)
    model = bayesianize(nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False)), kind,
                        scale=None)
    optimizer = (BiMU(bimu_parameters(model), **settings) if kind == "bimu"
                 else MESU(mesu_param_groups(model), **settings))
    (1e6 * F.cross_entropy(model(torch.randn(8, 6)), torch.randint(0, 3, (8,)))).backward()  # (finite gradients)
    with pytest.raises(TrainingDiverged, match=r"\.step: the update of parameter \d+ of param group 0 made NaN or "
                                               r"infinite values from finite gradients: the group's settings scale the "
                                               r"update past what torch.float32 holds"):
        optimizer.step()


def test_train_epoch_names_weights_its_fused_steps_left_non_finite():
    from metaspike.bayesian.fused_step import FusedTrainingStep
    from metaspike.training import TrainingDiverged, train_epoch

    model = bayesianize(nn.Sequential(nn.Linear(6, 3, bias=False)), "bimu", scale=None)
    optimizer = BiMU(bimu_parameters(model), likelihood_multiplier=1e38, lr_max=1e38)
    assert FusedTrainingStep.where_possible(model, optimizer) is not None  # (train_epoch takes the fused step)
    with pytest.raises(TrainingDiverged, match="the fused bimu steps left NaN or infinite values in a synapse tensor of "
                                               r"shape \(3, 6\) from finite losses|loss became nan"):
        train_epoch(model, optimizer, 100 * torch.randn(2, 6), torch.tensor([0, 2]), batch_size=1)


@pytest.mark.parametrize("kind, key", [("bimu", "lr"), ("mesu", "N")])
def test_a_setting_edited_out_of_range_in_a_later_group_is_refused_before_any_group_changes(kind, key):
    """Every group is checked before any is updated (group 0 was updated before group 1's setting raised)."""
    tensors = [torch.zeros(3, requires_grad=True), torch.ones(3, requires_grad=True)]
    if kind == "bimu":
        optimizer = BiMU([dict(params=[tensors[0]]), dict(params=[tensors[1]])])
    else:
        tensors += [torch.zeros(3, requires_grad=True), torch.ones(3, requires_grad=True)]
        optimizer = MESU([dict(params=tensors[:2]), dict(params=tensors[2:])])
    for tensor in tensors:
        tensor.grad = torch.ones(3)
    before = [t.detach().clone() for t in tensors]
    optimizer.param_groups[1][key] = -1.0  # (what a scheduler's lambda, or a hand, may do)
    with pytest.raises(ValueError, match=rf"^{key} must be a finite number in [\[(](0|1), 3.40282e\+38\], got -1.0$"):
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, tensors)) and not optimizer.state


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_a_step_on_the_meta_device_runs_on_shapes_as_torch_optimizers_do(kind):
    """torch.optim.Adam steps parameters on the meta device (shapes without values); the finite-gradient check read
    their values and failed inside torch."""
    tensors = [torch.nn.Parameter(torch.empty(4, 3, device="meta")) for _ in range(1 if kind == "bimu" else 2)]
    optimizer = BiMU(tensors) if kind == "bimu" else MESU(tensors)
    for tensor in tensors:
        tensor.grad = torch.empty(4, 3, device="meta")
    optimizer.step()
    assert all(t.is_meta and t.shape == (4, 3) and int(optimizer.state[t]["step"]) == 1 for t in tensors)


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_a_trainer_refuses_a_plain_optimizer_over_bayesian_synapses(kind):
    """Adam trains λ (or μ and σ) as plain weights: it learns nothing of what the rule would (a helper's run: chance)."""
    from metaspike.chained import ChainedOptimizer
    from metaspike.continual import ContinualTrainer, TrainerConfig, make_scenario

    scenario = make_scenario("permuted", ["digits"], tasks=1)
    model = bayesianize(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), kind)
    name = {"bimu": "BiMU latent weight", "mesu": "MESU mean and MESU width"}[kind]
    # (in a chain, the chain refuses it as it is made, in a loop of one's own too)
    for make, where in ((lambda m: torch.optim.Adam(m.parameters()), "make_optimizer: Adam"),
                        (lambda m: ChainedOptimizer(torch.optim.SGD(m.parameters(), lr=0.1)), "SGD")):
        trainer = ContinualTrainer(model, make, TrainerConfig(epochs=1), progress=False)
        with pytest.raises(ValueError, match=f"^{where} holds the {name} tensors of Bayesian synapses, which it would "
                                             "train as plain weights"):
            trainer.fit(scenario)


def test_the_rules_name_a_tensor_that_is_not_floating_point():
    with pytest.raises(ValueError, match=r"lams\[0\] has dtype torch.int64; MESU and BiMU update floating-point"):
        bimu_step(torch.zeros(3, dtype=torch.long), torch.ones(3), lr=1.0, lr_max=1.0, likelihood_multiplier=1.0,
                  kl_multiplier=1.0, N=10.0)
    with pytest.raises(ValueError, match=r"grad_mus\[0\] has dtype torch.int32"):
        mesu_step(torch.zeros(3), torch.ones(3), torch.zeros(3, dtype=torch.int32), torch.zeros(3), lr_mu=1.0,
                  lr_sigma=1.0, sigma_prior=1.0, mu_prior=0.0, N=10.0)


@pytest.mark.parametrize("kind, quantity", [("bimu", "latent lambda"), ("mesu", "mean mu")])
def test_diagnostics_of_bayesian_synapses_name_what_they_count_and_leave_out_the_2021_consolidation(kind, quantity):
    from metaspike.diagnostics import consolidated_fractions, hidden_weight_histograms

    model = bayesianize(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), kind, scale=None)
    optimizer = BiMU(bimu_parameters(model)) if kind == "bimu" else MESU(mesu_param_groups(model))
    assert consolidated_fractions(model, optimizer) == {}
    assert {h["quantity"] for h in hidden_weight_histograms(model).values()} == {quantity}
    binary = nn.Sequential(nn.Linear(4, 3))
    assert hidden_weight_histograms(binary)["0"]["quantity"] == "weight"


def test_settings_of_the_other_synapse_kind_are_refused_and_evaluation_samples_is_named():
    """They were dropped without a word; evaluation_samples' error named samples."""
    import bnn

    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="^lambda_init and temperature are settings of the other synapse kind; "
                                         "kind 'mesu' takes sigma_init$"):
        metaspike.bayesianize(net, "mesu", lambda_init=5.0, temperature=1e-3)
    with pytest.raises(ValueError, match="^sigma_init is a setting of the other synapse kind; kind 'bimu' takes "
                                         "lambda_init and temperature$"):
        metaspike.bayesianize(net, "bimu", sigma_init=5.0)
    assert not torch.nn.utils.parametrize.is_parametrized(net[0])
    with pytest.raises(ValueError, match="^evaluation_samples must be an int >= 1 or None, got 0$"):
        bnn.BayesianLinear(4, 3, samples=2, evaluation_samples=0)


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_a_synapses_settings_set_on_it_later_are_checked_as_the_constructor_checks_them(kind):
    """bayesianize says to change a layer's settings on the layer itself; there a temperature of -1 flipped every
    training sample's sign silently, 0 divided by zero inside the sample, and evaluation="mean" passed for "sample"."""
    net = metaspike.bayesianize(nn.Sequential(nn.Linear(4, 3, bias=False)), kind, scale=None)
    synapse = net[0].parametrizations.weight[0]
    synapse.evaluation = "sample"
    assert synapse.evaluation == "sample" and "evaluation='sample'" in repr(synapse)
    with pytest.raises(ValueError, match="^evaluation must be one of 'mode', 'sample', got 'mean'$"):
        synapse.evaluation = "mean"
    assert synapse.evaluation == "sample"
    if kind == "bimu":
        synapse.temperature = 0.5
        assert copy.deepcopy(net)[0].parametrizations.weight[0].temperature == 0.5
        for bad in (-1.0, 0.0, math.inf, math.nan, "0.5"):
            with pytest.raises(ValueError, match=r"^temperature must be a finite number in \[1.17549e-38, "):
                synapse.temperature = bad
        assert synapse.temperature == 0.5
    # a synapse pickled before the settings were checked properties kept them under their own names
    old = copy.copy(synapse)
    for key in ("evaluation", "temperature"):
        if f"_{key}" in vars(old):
            old.__dict__[key] = old.__dict__.pop(f"_{key}")
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.evaluation == "sample" and repr(loaded) == repr(synapse)
    old.__dict__["evaluation"] = "mean"
    with pytest.raises(ValueError, match="^evaluation must be one of 'mode', 'sample', got 'mean'$"):
        pickle.loads(pickle.dumps(old))


def test_mesu_refuses_a_mean_paired_with_another_synapses_width_of_its_shape():
    """Each mean stepped by the other layer's sigma squared, without a word."""
    net = metaspike.bayesianize(nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)), "mesu")
    mu1, sigma1, mu2, sigma2 = mesu_param_groups(net)[0]["params"]
    with pytest.raises(ValueError, match=r"^params pair 0: the width \(sigma\) is another synapse's than the mean's"):
        MESU([mu1, sigma2, mu2, sigma1])
    MESU([mu2, sigma2, mu1, sigma1])  # (its own pairs, in another order of layers)
    MESU([torch.zeros(3, requires_grad=True), torch.ones(3, requires_grad=True)])  # (hand-made tensors, unmarked)


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_a_state_dict_loaded_by_assignment_keeps_the_synapses_marked(kind):
    """load_state_dict(..., assign=True) puts new parameters in: their roles are marked again, so the optimizers
    refuse what they refused before the load (BiMU/MESU the biases and gains, Adam the synapse tensors), and a deep
    copy of the loaded model (or a load into a deep copy) is marked as well, not the tensors the load replaced."""
    from metaspike.bayesian.optim import check_synapse_optimizers
    from metaspike.layer_selection import synapse_role
    from metaspike.optim import MetaplasticAdam

    def make():
        return bayesianize(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)), kind)

    roles = ["latent"] * 2 if kind == "bimu" else ["mean", "width"] * 2
    model = make()
    replaced = list(model.parameters())
    model.load_state_dict(make().state_dict(), assign=True)
    assert not any(p is q for p in model.parameters() for q in replaced)  # torch made new parameters
    for loaded in (model, copy.deepcopy(model)):
        assert [r for p in loaded.parameters() if (r := synapse_role(p)) is not None] == roles
        for build in (lambda: (BiMU if kind == "bimu" else MESU)(loaded.parameters()),
                      lambda: MetaplasticAdam(loaded.parameters()),
                      lambda: check_synapse_optimizers(torch.optim.Adam(loaded.parameters()))):
            with pytest.raises(ValueError, match="(Bayesian synapses|not a synapse tensor|width tensors|latent)"):
                build()
    copied = copy.deepcopy(make())
    copied.load_state_dict(make().state_dict(), assign=True)  # (the copy's hooks were copied with it)
    assert [r for p in copied.parameters() if (r := synapse_role(p)) is not None] == roles


def test_a_frozen_layer_made_mesu_keeps_its_width_frozen():
    """requires_grad_(False) before bayesianize: σ, made from the frozen weight, trains no more than μ does, so MESU
    leaves the frozen layer as it was; the other layer's σ trains."""
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    net[0].requires_grad_(False)
    with pytest.warns(UserWarning, match=r"^bayesianize: '0' is frozen \(requires_grad=False\): its μ keeps the "
                                         r"weights and never trains, nor does σ \(sigma_init 0.1\); each training "
                                         r"pass draws μ \+ σ·ε, noise of width 0.1 beside weights of mean size \S+: .*"
                                         r"exclude=\['0'\]$"):
        bayesianize(net, "mesu")  # (MESU on a frozen layer trained on noise 3 times its weights' size, unsaid)
    sigmas = [layer.parametrizations.weight[0].sigma for layer in (net[0], net[2])]
    assert [s.requires_grad for s in sigmas] == [False, True]
    frozen = [t.detach().clone() for t in net[0].parameters()]
    optimizer = MESU(mesu_param_groups(net), lr_mu=10.0, lr_sigma=10.0)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(net(torch.randn(8, 6)), torch.randint(0, 3, (8,))).backward()
        optimizer.step()
    assert all(torch.equal(before, after) for before, after in zip(frozen, net[0].parameters()))


@pytest.mark.parametrize("optimizer, pairs", [(metaspike.BiMU, 1), (metaspike.MESU, 2)])
def test_an_integer_tensor_is_refused_when_the_optimizer_is_made_in_one_line(optimizer, pairs):
    with pytest.raises(ValueError) as caught:
        optimizer([torch.zeros(3, dtype=torch.int64) for _ in range(pairs)])
    assert str(caught.value) == (f"{optimizer.__name__} params[0] has dtype torch.int64; MESU and BiMU update "
                                 "floating-point tensors (float32, float64, bfloat16, float16)")
    opt = optimizer([torch.zeros(3, requires_grad=True) for _ in range(pairs)])
    opt.param_groups[0]["params"].append(torch.zeros(3, dtype=torch.int64))  # (by hand, after it was made)
    with pytest.raises(ValueError, match=rf"{optimizer.__name__} params\[{pairs}\] has dtype torch.int64"):
        opt.step()


@pytest.mark.parametrize("optimizer, pairs", [(metaspike.BiMU, 1), (metaspike.MESU, 2)])
def test_a_0d_tensor_setting_is_taken_as_its_number_and_a_larger_one_is_refused_by_its_shape(optimizer, pairs):
    params = [torch.zeros(3, requires_grad=True) for _ in range(pairs)]
    opt = optimizer(params, lr=torch.tensor(0.5))
    opt.add_param_group({"params": [torch.zeros(2, requires_grad=True) for _ in range(pairs)], "lr": torch.tensor(2)})
    assert [group["lr"] for group in opt.param_groups] == [0.5, 2]  # (0.5 and 2 are exact in float32 and int64)
    assert type(opt.param_groups[0]["lr"]) is float
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    for p in params:
        p.grad = torch.ones(3)
    opt.step()
    scheduler.step()
    assert [group["lr"] for group in opt.param_groups] == [0.25, 1.0]
    with pytest.raises(ValueError, match=r"^lr must be a number or a 0-d real tensor holding one, got a torch.float32 "
                                         r"tensor of shape \(2,\)$"):
        optimizer(params, lr=torch.tensor([0.5, 1.0]))


def _copies(optimizer):
    return {"deepcopy": copy.deepcopy(optimizer), "pickle": pickle.loads(pickle.dumps(optimizer))}


def test_copies_and_pickles_of_bimu_and_mesu_check_a_state_dict_as_the_original_does():
    """A copy had no load hook: it installed Adam's state dict without a word and failed at its next step with
    KeyError 'lr_max', and a copied MESU took sigma_prior = -1."""
    adam = torch.optim.Adam([torch.zeros(4, requires_grad=True)]).state_dict()
    mesu = MESU([torch.zeros(3, requires_grad=True), torch.ones(3, requires_grad=True)])
    negative = copy.deepcopy(mesu.state_dict())
    negative["param_groups"][0]["sigma_prior"] = -1.0
    for name, copied in _copies(BiMU([torch.zeros(4, requires_grad=True)])).items():
        with pytest.raises(ValueError, match="^state_dict: its param groups lack N, kl_multiplier, "
                                             "likelihood_multiplier, lr_max: it is not the state dict of a BiMU"):
            copied.load_state_dict(adam)
        assert "lr_max" in copied.param_groups[0], name
    for name, copied in _copies(mesu).items():
        with pytest.raises(ValueError, match=r"^sigma_prior must be a finite number in \(0, "):
            copied.load_state_dict(negative)
        assert copied.param_groups[0]["sigma_prior"] == 0.1, name
        for _ in range(2):  # (its own state dict loads, and no load adds its hook again)
            copied.load_state_dict(copied.state_dict())
        assert len(copied._optimizer_load_state_dict_pre_hooks) == 1, name


def test_bimu_keeps_a_frozen_layers_weights_as_its_lambda_and_says_so():
    """A frozen (pretrained) layer got a fresh N(0, 0.1²) λ that could never train: a random ±1 projection for good
    (a tester's digits model fell from 100 % to 19 %). Now its λ keeps the weights, and a warning names the layer."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    net[0].requires_grad_(False)
    pretrained, second = net[0].weight.detach().clone(), net[2].weight.detach().clone()
    with pytest.warns(UserWarning, match=r"^bayesianize: '0' is frozen \(requires_grad=False\): its λ keeps the "
                                         r"weights .* leave it float with exclude=\['0'\]$"):
        bayesianize(net, "bimu")
    assert torch.equal(net[0].parametrizations.weight.original, pretrained)
    assert not net[0].parametrizations.weight.original.requires_grad
    trainable = net[2].parametrizations.weight.original
    assert trainable.requires_grad and not torch.equal(trainable, second)  # (a trainable layer still draws its λ)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (nothing frozen: nothing said)
        bayesianize(nn.Sequential(nn.Linear(4, 3)), "bimu")
    with pytest.warns(UserWarning, match=r"^make_bayesian: the layer \(Linear\) is frozen \(requires_grad=False\): its λ "
                                         r"keeps .* leave it float \(do not make it Bayesian\)$"):
        make_bayesian(nn.Linear(4, 3).requires_grad_(False), "bimu")


@pytest.mark.parametrize("kind", ["mesu", "bimu"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.bfloat16])
def test_sampled_forward_names_an_input_of_another_dtype(kind, training, dtype):
    """torch's "expected scalar type Float but found Double" from inside the product named neither x nor the dtype;
    bnn's Bayesian layers said it in one line, the function under them did not."""
    for layer, shape in ((nn.Linear(4, 3), (1, 4)), (nn.Linear(4, 3), (2, 4)), (nn.Conv2d(1, 2, 3), (2, 1, 5, 5))):
        layer = bayesianize(layer, kind).train(training)
        message = f"^x must be torch.float32, the dtype of the layer's weights, got {dtype}"
        with pytest.raises(ValueError, match=message):
            sampled_forward(layer, torch.ones(shape, dtype=dtype), 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # (under autocast anything goes, as for torch's layers)
            assert sampled_forward(layer, torch.ones(shape, dtype=dtype).float(), 2).shape[0] == 2


@pytest.mark.parametrize("optimizer", [BiMU, MESU])
def test_a_trainer_refuses_a_bayesian_optimizer_over_a_model_never_made_bayesian(optimizer):
    """BiMU took a plain model's weights and biases as latent weights and trained them, silently (it takes tensors
    made by hand, and a plain model's are unmarked); within a trainer the tensors are the model's, so it is refused."""
    from metaspike.continual import ContinualTrainer, TrainerConfig, permuted
    from metaspike.data import ArrayDataset

    class OwnLinear(nn.Linear):  # (a subclass of one's own of a torch layer is a torch layer)
        pass

    data = ArrayDataset.from_tensors(torch.rand(8, 4), torch.arange(8) % 2, "tiny")
    model = nn.Sequential(OwnLinear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 4, bias=False))  # (MESU: a pair)
    trainer = ContinualTrainer(model, lambda m: optimizer(m.parameters()), TrainerConfig(epochs=1), progress=False)
    name = optimizer.__name__
    with pytest.raises(ValueError, match=f"^make_optimizer: {name} holds no Bayesian synapse tensors but the plain "
                                         f"parameters of the model's layer '0' \\(OwnLinear\\): make the synapses "
                                         f"Bayesian with metaspike.bayesianize\\(model, '{name.lower()}'\\) and pass"):
        trainer.fit(permuted(data, data, n_tasks=1))

    class HandMade(nn.Module):  # (tensors of one's own module, made by hand: taken, as MESU and BiMU take them)
        def __init__(self):
            super().__init__()
            self.first, self.second = nn.Parameter(torch.full((2, 4), 0.1)), nn.Parameter(torch.full((2, 4), 0.1))

        def forward(self, x):
            return x @ (self.first + self.second).T

    own = HandMade()
    ContinualTrainer(own, lambda m: optimizer([m.first, m.second]), TrainerConfig(epochs=1),
                     progress=False).fit(permuted(data, data, n_tasks=1))
    assert not torch.equal(own.first.detach(), torch.full((2, 4), 0.1))  # (trained)


@pytest.mark.parametrize("width", [0.0, -0.05, float("nan")])
def test_a_mesu_width_that_is_not_positive_is_refused_at_load(width):
    """A state dict whose widths were 0 loaded and froze every synapse without a word (three MESU steps changed
    nothing); a negative width trained on. Both are refused by the load, which changes nothing of the synapse."""
    model = bayesianize(nn.Sequential(nn.Linear(4, 3)), kind="mesu")
    state = model.state_dict()
    key = next(k for k in state if k.endswith("sigma"))
    state[key] = torch.full_like(state[key], width)
    before = model.state_dict()[key].clone()
    with pytest.raises(ValueError, match=rf"^{re.escape(key)} \(a MESU synapse's widths\) holds values that are not "
                                         r"> 0 \(smallest (0|-0\.05|nan)\): a width is a standard deviation"):
        model.load_state_dict(state)
    assert torch.equal(model.state_dict()[key], before)
