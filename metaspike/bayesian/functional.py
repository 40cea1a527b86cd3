"""The MESU and BiMU update rules as functions of tensors.

* **MESU** (Bonnet et al. 2025, *Bayesian continual learning and forgetting in neural networks*): a
  weight is a Gaussian ``N(μ, σ²)``. With prior ``N(μ_p, σ_p²)`` and memory window ``N``::

      Δμ = η_μ · (−σ² ∂L/∂μ + σ² (μ_p − μ) / (N σ_p²))
      Δσ = η_σ · ½ · (−σ² ∂L/∂σ + σ (σ_p² − σ²) / (N σ_p²))

  both from the old ``μ, σ``; with ``clamp_grad = c > 0`` the gradients are first clipped to ``±c/σ``.
* **BiMU** (Cottart et al. 2026, *Active Continual Learning with Metaplastic Binary Bayesian Neural
  Networks*): a binary weight is ``+1`` with probability ``sigmoid(2λ)``. With ``g = L·∂L/∂λ``
  (``L`` the likelihood multiplier) and ``K = κ (1 − tanh² λ)`` (``κ`` the KL multiplier)::

      Δλ = −(η g + λ K / N) / (K + 2 g tanh λ + 2 |g| + 1/η_max)

  The denominator is at least ``1/η_max > 0``, since ``K ≥ 0`` and ``2|g| + 2 g tanh λ ≥ 0``.

Each rule has one implementation, a single-tensor function that ``torch.compile`` fuses into one
loop per parameter (:class:`~metaspike.compiled.LazyCompiled`: compiled on first use, eager if
compiling fails); the in-place multi-tensor steps ``mesu_step_``, ``bimu_step_`` run it on every
tensor in one compiled call and the pure functions run them on copies. The functions apply the rule
unconditionally: skipping steps without data (all gradients zero) is the optimizers' job, and so is refusing NaN or
infinite gradients (``|g| = ∞`` makes BiMU's step ∞/∞, NaN). 16-bit tensors are computed in float32 and rounded once,
where they are stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from metaspike.checks import FLOAT32_MAX, check_keys_kept, number_in
from metaspike.compiled import LazyCompiled

__all__ = ["mesu_step", "mesu_step_", "bimu_step", "bimu_step_", "check_hyperparameters", "hyperparameter_names",
           "hyperparameter_defaults"]

# name -> (lower bound, bound included); every setting is at most float32's largest number (the updates multiply
# float32 tensors by it; sigma_prior at most its square root, since σ_p² enters them), mu_prior at least its negative
_LIMITS: dict[str, dict[str, tuple[float, bool]]] = {
    "mesu": {
        "lr": (0.0, True),  # a factor on lr_mu and lr_sigma: what torch's learning-rate schedulers change
        "lr_mu": (0.0, True),  # (0 as torch.optim allows: a scheduler may end there)
        "lr_sigma": (0.0, True),  # (0 as torch.optim allows: a scheduler may end there)
        "sigma_prior": (0.0, False),
        "mu_prior": (-FLOAT32_MAX, True),
        "N": (1.0, True),  # a memory window shorter than one step overshoots the prior (settings_for_batch says so)
        "clamp_grad": (0.0, True),
    },
    "bimu": {
        "lr": (0.0, True),  # (0 as torch.optim allows: a scheduler may end there)
        "lr_max": (0.0, False),
        "likelihood_multiplier": (0.0, False),
        "kl_multiplier": (0.0, True),
        "N": (1.0, True),
    },
}
_HIGHEST = {"sigma_prior": math.sqrt(FLOAT32_MAX)}
# settings a mapping may leave out (the functional steps' callers, state dicts written before the setting existed)
_OPTIONAL: dict[str, dict[str, float]] = {"mesu": {"lr": 1.0}, "bimu": {}}


def hyperparameter_defaults(rule: str) -> dict[str, float]:
    """The hyperparameters of ``rule`` that a mapping of them may leave out, with the value they then take.

    Example:
        >>> hyperparameter_defaults("mesu")
        {'lr': 1.0}
    """
    if rule not in _OPTIONAL:
        raise ValueError(f"rule must be one of {sorted(_OPTIONAL)}, got {rule!r}")
    return dict(_OPTIONAL[rule])


def hyperparameter_names(rule: str) -> tuple[str, ...]:
    """The hyperparameters of ``rule`` (``"mesu"`` or ``"bimu"``), sorted: what a param group of its optimizer sets
    (torch adds keys of its own to an optimizer's defaults, ``differentiable`` once a state dict is loaded).

    Example:
        >>> hyperparameter_names("bimu")
        ('N', 'kl_multiplier', 'likelihood_multiplier', 'lr', 'lr_max')
    """
    if rule not in _LIMITS:
        raise ValueError(f"rule must be one of {sorted(_LIMITS)}, got {rule!r}")
    return tuple(sorted(_LIMITS[rule]))


def check_hyperparameters(rule: str, hyperparameters: Mapping[str, object]) -> None:
    """Raise a ``ValueError`` naming the first hyperparameter of ``rule`` that is out of range.

    ``rule`` is ``"mesu"`` or ``"bimu"``; every hyperparameter of the rule must be in
    ``hyperparameters`` (other keys are ignored). All must be finite real numbers that float32 holds
    (``sigma_prior``: whose square it holds); ``mu_prior`` may have any sign; the learning rates (``lr``, ``lr_mu``,
    ``lr_sigma``, as in torch.optim where a scheduler may take them to 0), ``clamp_grad`` and ``kl_multiplier`` may
    be ``0``; ``N`` (a memory window in steps) must be ``>= 1``; the others ``> 0``.

    Example:
        >>> check_hyperparameters("bimu", dict(lr=1, lr_max=1, likelihood_multiplier=1,
        ...                                    kl_multiplier=0, N=60_000))
        >>> check_hyperparameters("bimu", dict(lr=-1, lr_max=1, likelihood_multiplier=1,
        ...                                    kl_multiplier=1, N=60_000))
        Traceback (most recent call last):
        ...
        ValueError: lr must be a finite number in [0, 3.40282e+38], got -1
    """
    if rule not in _LIMITS:
        raise ValueError(f"rule must be one of {sorted(_LIMITS)}, got {rule!r}")
    hyperparameters = {**_OPTIONAL[rule], **hyperparameters}
    check_keys_kept(hyperparameters, _LIMITS[rule])
    for name, (low, inclusive) in _LIMITS[rule].items():
        number_in(name, hyperparameters[name], low, _HIGHEST.get(name, FLOAT32_MAX), open_low=not inclusive)
    if rule == "mesu":  # the step multiplies by 1/(N·σ_p²) and μ_p/(N·σ_p²) in the weights' dtype (float32 at least)
        scale = float(hyperparameters["N"]) * float(hyperparameters["sigma_prior"]) ** 2
        pull = abs(float(hyperparameters["mu_prior"])) / scale if scale > 0 else math.inf
        if not (scale > 0 and 1.0 / scale <= FLOAT32_MAX and pull <= FLOAT32_MAX and math.isfinite(scale)):
            raise ValueError(f"N * sigma_prior**2 must be a positive number whose reciprocal (and mu_prior over it) "
                             f"float32 holds, got N {hyperparameters['N']!r} and sigma_prior "
                             f"{hyperparameters['sigma_prior']!r}")


def _check_step_tensors(**lists: list[Tensor]) -> None:
    """The lists of a step hold tensors that belong together: equal lengths, equal shapes at each place, dense and
    floating-point (checked before any tensor changes, and before the compiled loop sees them)."""
    lengths = {name: len(tensors) for name, tensors in lists.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the tensor lists must have equal lengths, got {lengths}")
    names = list(lists)
    for i, tensors in enumerate(zip(*lists.values())):
        for name, tensor in zip(names, tensors):
            if not isinstance(tensor, Tensor):
                raise ValueError(f"{name}[{i}] must be a tensor, got {type(tensor).__name__}")
            if tensor.layout != torch.strided:
                raise ValueError(f"{name}[{i}] is a sparse tensor; MESU and BiMU need dense gradients (an "
                                 "nn.Embedding with sparse=False, for instance)")
            if not torch.is_floating_point(tensor):
                raise ValueError(f"{name}[{i}] has dtype {tensor.dtype}; MESU and BiMU update floating-point tensors "
                                 "(float32, float64, bfloat16, float16)")
            if tensor.shape != tensors[0].shape:
                raise ValueError(f"{name}[{i}] has shape {tuple(tensor.shape)} where {names[0]}[{i}] has "
                                 f"{tuple(tensors[0].shape)}; the tensors at one place belong together")
            if tensor.device != tensors[0].device:
                raise ValueError(f"{name}[{i}] is on {tensor.device} where {names[0]}[{i}] is on "
                                 f"{tensors[0].device}; the tensors at one place belong together")


def _mesu_update_(mu: Tensor, sigma: Tensor, grad_mu: Tensor, grad_sigma: Tensor, *, lr_mu: float,
                  half_lr_sigma: float, inv: float, mu_prior_inv: float, prior_var_inv: float,
                  clamp_grad: float, clamp: bool) -> None:
    """The MESU rule on one ``μ, σ`` pair, in place: the one implementation, one compiled loop.

    ``inv = 1/(N σ_p²)``, ``mu_prior_inv = μ_p·inv``, ``prior_var_inv = σ_p²·inv`` and
    ``half_lr_sigma = η_σ/2`` come precomputed, so that the compiled loop takes them as inputs;
    ``clamp`` says whether ``clamp_grad > 0`` (a bool: one compiled loop for each case).
    """
    mu_in, sigma_in = mu, sigma
    mu, sigma, grad_mu, grad_sigma = (_in_float32_at_least(t) for t in (mu, sigma, grad_mu, grad_sigma))
    if clamp:  # (|σ|: the width's sign is immaterial)
        bound = sigma.abs().reciprocal() * clamp_grad
        low = -bound
        grad_mu = torch.minimum(torch.maximum(grad_mu, low), bound)
        grad_sigma = torch.minimum(torch.maximum(grad_sigma, low), bound)
    variance = sigma * sigma
    # Δμ / η_μ = σ² ((μ_p − μ) / (N σ_p²) − ∂L/∂μ)
    step_mu = (mu * -inv + mu_prior_inv - grad_mu) * variance
    # Δσ / (½ η_σ) = σ ((σ_p² − σ²) / (N σ_p²) − σ ∂L/∂σ)
    step_sigma = (variance * -inv + prior_var_inv - sigma * grad_sigma) * sigma
    mu_in.add_(step_mu * lr_mu)  # (a 16-bit tensor's sum is formed in float32, then rounded once)
    sigma_in.add_(step_sigma * half_lr_sigma)


def _in_float32_at_least(tensor: Tensor) -> Tensor:
    """``tensor`` in float32 where it is a 16-bit float, else itself: the rules compute in float32 at least, rounding
    only what they store, eagerly as the compiled loop does (a product such as ``L·∂L/∂λ`` overflows float16)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _exp_pair(lam: Tensor, inv_tau: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """``(e, 1/(1 + e))`` with ``e = exp(−2|λ|/τ)``: BiMU's relaxed sample takes its two sigmoids from them
    (:func:`~metaspike.bayesian.synapses._relaxed_sample_rational`) and its update ``tanh λ`` (``τ = 1``), so a step
    that does both computes them once."""
    e = torch.exp(lam.abs() * (-2.0 * inv_tau))
    return e, 1.0 / (1.0 + e)


def _bimu_update_(lam: Tensor, grad: Tensor, *, lr: float, inv_lr_max: float, likelihood_multiplier: float,
                  kl_multiplier: float, inv_N: float, pair: tuple[Tensor, Tensor] | None = None) -> None:
    """The BiMU rule on one tensor ``λ``, in place: the one implementation, one compiled loop; ``pair`` is
    :func:`_exp_pair` of ``λ`` where the caller has it (a fused step, from its relaxed sample at ``τ = 1``)."""
    lam_in, lam = lam, _in_float32_at_least(lam)
    g = _in_float32_at_least(grad) * likelihood_multiplier
    # tanh λ and 1 − tanh² λ from one exp (a vectorised exp costs a third of a tanh): with e = exp(−2|λ|),
    # tanh|λ| = (1 − e)/(1 + e) and 1 − tanh² λ = 4e/(1 + e)², which keeps its digits where |λ| ≫ 1
    e, r = _exp_pair(lam) if pair is None else (_in_float32_at_least(pair[0]), _in_float32_at_least(pair[1]))
    kl = (e * r * r) * (4.0 * kl_multiplier)  # K = κ (1 − tanh² λ)
    numerator = g * lr + (lam * kl) * inv_N  # η g + λ K / N
    # |g| + g tanh λ = |g| (1 + tanh|λ|) where g and λ share a sign, else |g| (1 − tanh|λ|) = |g|·2e/(1 + e): the
    # second from e, since 1 − tanh|λ| formed in float32 loses its digits (all of them past |λ| ≈ 9)
    agreeing = (g >= 0) == (lam >= 0)
    factor = torch.where(agreeing, 1.0 + (1.0 - e) * r, (2.0 * e) * r)
    denominator = g.abs() * factor * 2.0 + kl + inv_lr_max  # 2 (|g| + g tanh λ) + K + 1/η_max
    lam_in.sub_(numerator / denominator)


def update_scalars(rule: str, hyper: Mapping[str, float]) -> dict[str, float]:
    """The scalars the one-tensor update of ``rule`` (``"mesu"`` or ``"bimu"``) takes, from its hyperparameters
    (checked first): reciprocals and products precomputed once per step, so that a compiled loop takes them as
    inputs (MESU: ``inv = 1/(N σ_p²)``, ``mu_prior_inv = μ_p·inv``, ``prior_var_inv = σ_p²·inv``, ``lr_mu`` and
    ``half_lr_sigma = η_σ/2`` times the factor ``lr``; BiMU: ``inv_lr_max``, ``inv_N``).

    Example:
        >>> update_scalars("bimu", dict(lr=1, lr_max=0.5, likelihood_multiplier=2, kl_multiplier=1, N=4))
        {'lr': 1.0, 'inv_lr_max': 2.0, 'likelihood_multiplier': 2.0, 'kl_multiplier': 1.0, 'inv_N': 0.25}
    """
    check_hyperparameters(rule, hyper)
    hyper = {**_OPTIONAL[rule], **hyper}
    if rule == "bimu":
        return dict(lr=float(hyper["lr"]), inv_lr_max=1.0 / hyper["lr_max"],
                    likelihood_multiplier=float(hyper["likelihood_multiplier"]),
                    kl_multiplier=float(hyper["kl_multiplier"]), inv_N=1.0 / hyper["N"])
    sigma_prior, factor = float(hyper["sigma_prior"]), float(hyper["lr"])
    inv = 1.0 / (float(hyper["N"]) * sigma_prior**2)
    return dict(lr_mu=factor * float(hyper["lr_mu"]), half_lr_sigma=0.5 * factor * float(hyper["lr_sigma"]), inv=inv,
                mu_prior_inv=float(hyper["mu_prior"]) * inv, prior_var_inv=sigma_prior**2 * inv,
                clamp_grad=float(hyper["clamp_grad"]))


def _mesu_updates_(mus: list[Tensor], sigmas: list[Tensor], grad_mus: list[Tensor], grad_sigmas: list[Tensor],
                   **scalars: float) -> None:
    for tensors in zip(mus, sigmas, grad_mus, grad_sigmas):
        _mesu_update_(*tensors, **scalars)


def _bimu_updates_(lams: list[Tensor], grads: list[Tensor], **scalars: float) -> None:
    for tensors in zip(lams, grads):
        _bimu_update_(*tensors, **scalars)


# every tensor of a step in one compiled call (a loop per tensor): at batch size 1 a call costs more than its loop
_compiled_mesu = LazyCompiled(_mesu_updates_, "fused MESU step")
_compiled_bimu = LazyCompiled(_bimu_updates_, "fused BiMU step")


def _run(update: LazyCompiled, lists: Sequence[list[Tensor]], scalars: dict[str, float]) -> None:
    """``update`` on the tensor ``lists``, compiled (eagerly inside a compiled region or once compiling failed)."""
    if update.broken or torch.compiler.is_compiling():
        update.fn(*lists, **scalars)
    else:  # detached: parameters that require gradients would compile a second loop; a 0-d tensor as a 1-element
        # view (the compiled loop dropped its in-place update for 0-d float64 tensors)
        update(*([t.detach() if t.dim() else t.detach().view(1) for t in tensors] for tensors in lists), **scalars)


@torch.no_grad()
def mesu_step_(mus: Sequence[Tensor], sigmas: Sequence[Tensor], grad_mus: Sequence[Tensor],
               grad_sigmas: Sequence[Tensor], hyper: Mapping[str, float]) -> None:
    """One MESU update of the means ``mus`` and widths ``sigmas``, in place (gradients untouched).

    ``mus[i]``, ``sigmas[i]``, ``grad_mus[i]`` and ``grad_sigmas[i]`` belong together and have one
    shape. ``hyper`` holds the hyperparameters of :func:`mesu_step` by name (e.g. an optimizer's param
    group); see the module docstring for the rule and :func:`check_hyperparameters` for the ranges.

    Example:
        >>> mu, sigma = torch.zeros(2), torch.full((2,), 0.5)
        >>> mesu_step_([mu], [sigma], [torch.tensor([1.0, -1.0])], [torch.zeros(2)],
        ...            dict(lr_mu=1.0, lr_sigma=1.0, sigma_prior=0.5, mu_prior=0.0, N=10, clamp_grad=0.0))
        >>> mu
        tensor([-0.2500,  0.2500])
    """
    mus, sigmas, grad_mus, grad_sigmas = list(mus), list(sigmas), list(grad_mus), list(grad_sigmas)
    scalars = update_scalars("mesu", hyper)
    _check_step_tensors(mus=mus, sigmas=sigmas, grad_mus=grad_mus, grad_sigmas=grad_sigmas)
    # (a Python bool from the float scalar: a numpy number here made the compiled loop branch on data and fail)
    _run(_compiled_mesu, (mus, sigmas, grad_mus, grad_sigmas), {**scalars, "clamp": scalars["clamp_grad"] > 0})


def mesu_step(
    mu: Tensor,
    sigma: Tensor,
    grad_mu: Tensor,
    grad_sigma: Tensor,
    *,
    lr_mu: float,
    lr_sigma: float,
    sigma_prior: float,
    mu_prior: float,
    N: float,
    clamp_grad: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """The MESU update as a pure function: returns the new ``(mu, sigma)``; no argument is modified.

    Example:
        >>> mu, sigma = mesu_step(torch.zeros(1), torch.ones(1), torch.ones(1), torch.zeros(1),
        ...                       lr_mu=0.1, lr_sigma=0.1, sigma_prior=1.0, mu_prior=0.0, N=1e5)
        >>> mu, sigma
        (tensor([-0.1000]), tensor([1.]))
    """
    hyper = dict(lr_mu=lr_mu, lr_sigma=lr_sigma, sigma_prior=sigma_prior, mu_prior=mu_prior, N=N, clamp_grad=clamp_grad)
    mu, sigma = _copied("mu", mu), _copied("sigma", sigma)
    mesu_step_([mu], [sigma], [grad_mu], [grad_sigma], hyper)
    return mu, sigma


def _copied(name: str, value: Tensor) -> Tensor:
    """A detached copy of the tensor argument ``name`` of a pure step (one ``ValueError`` where it is no tensor)."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(value).__name__}")
    return value.detach().clone()


@torch.no_grad()
def bimu_step_(lams: Sequence[Tensor], grads: Sequence[Tensor], hyper: Mapping[str, float]) -> None:
    """One BiMU update of the latent weights ``lams``, in place (gradients untouched).

    ``lams[i]`` and ``grads[i]`` belong together. ``hyper`` holds the hyperparameters of
    :func:`bimu_step` by name; see the module docstring for the rule and :func:`check_hyperparameters`.

    Example:
        >>> lam = torch.zeros(2)
        >>> bimu_step_([lam], [torch.tensor([1.0, -1.0])],
        ...            dict(lr=1.0, lr_max=1.0, likelihood_multiplier=1.0, kl_multiplier=1.0, N=60_000))
        >>> lam  # −g / (κ + 2|g| + 1/η_max) = ∓1/4
        tensor([-0.2500,  0.2500])
    """
    lams, grads = list(lams), list(grads)
    scalars = update_scalars("bimu", hyper)
    _check_step_tensors(lams=lams, grads=grads)
    _run(_compiled_bimu, (lams, grads), scalars)


def bimu_step(
    lam: Tensor,
    grad: Tensor,
    *,
    lr: float,
    lr_max: float,
    likelihood_multiplier: float,
    kl_multiplier: float,
    N: float,
) -> Tensor:
    """The BiMU update as a pure function: returns the new ``lam``; no argument is modified.

    Example:
        >>> bimu_step(torch.zeros(1), torch.zeros(1), lr=1.0, lr_max=1.0, likelihood_multiplier=1.0,
        ...           kl_multiplier=1.0, N=60_000)
        tensor([0.])
    """
    lam = _copied("lam", lam)
    hyper = dict(lr=lr, lr_max=lr_max, likelihood_multiplier=likelihood_multiplier, kl_multiplier=kl_multiplier, N=N)
    bimu_step_([lam], [grad], hyper)
    return lam
