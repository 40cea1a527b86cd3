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

Each rule has one implementation, the in-place multi-tensor step (``mesu_step_``, ``bimu_step_``,
built on ``torch._foreach_*``); the pure functions run it on copies. The functions apply the rule
unconditionally: skipping steps without data (all gradients zero) is the optimizers' job.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["mesu_step", "mesu_step_", "bimu_step", "bimu_step_", "check_hyperparameters"]

# name -> (lower bound, bound included); None: any finite number
_LIMITS: dict[str, dict[str, tuple[float, bool] | None]] = {
    "mesu": {
        "lr_mu": (0.0, False),
        "lr_sigma": (0.0, False),
        "sigma_prior": (0.0, False),
        "mu_prior": None,
        "N": (0.0, False),
        "clamp_grad": (0.0, True),
    },
    "bimu": {
        "lr": (0.0, False),
        "lr_max": (0.0, False),
        "likelihood_multiplier": (0.0, False),
        "kl_multiplier": (0.0, True),
        "N": (0.0, False),
    },
}


def check_hyperparameters(rule: str, hyperparameters: Mapping[str, object]) -> None:
    """Raise a ``ValueError`` naming the first hyperparameter of ``rule`` that is out of range.

    ``rule`` is ``"mesu"`` or ``"bimu"``; every hyperparameter of the rule must be in
    ``hyperparameters`` (other keys are ignored). All must be finite real numbers; ``mu_prior`` may
    have any sign, ``clamp_grad`` and ``kl_multiplier`` may be ``0``, the others must be ``> 0``.

    Example:
        >>> check_hyperparameters("bimu", dict(lr=1, lr_max=1, likelihood_multiplier=1,
        ...                                    kl_multiplier=0, N=60_000))
        >>> check_hyperparameters("bimu", dict(lr=-1, lr_max=1, likelihood_multiplier=1,
        ...                                    kl_multiplier=1, N=60_000))
        Traceback (most recent call last):
        ...
        ValueError: lr must be a finite number > 0, got -1
    """
    if rule not in _LIMITS:
        raise ValueError(f"rule must be one of {sorted(_LIMITS)}, got {rule!r}")
    for name, limit in _LIMITS[rule].items():
        value = hyperparameters[name]
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if limit is None:
            if not ok:
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            continue
        low, inclusive = limit
        if not (ok and (value >= low if inclusive else value > low)):  # type: ignore[operator]
            raise ValueError(f"{name} must be a finite number {'>=' if inclusive else '>'} {low:g}, got {value!r}")


def _same_lengths(**lists: list[Tensor]) -> None:
    lengths = {name: len(tensors) for name, tensors in lists.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the tensor lists must have equal lengths, got {lengths}")


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
    check_hyperparameters("mesu", hyper)
    lr_mu, lr_sigma, sigma_prior = hyper["lr_mu"], hyper["lr_sigma"], hyper["sigma_prior"]
    mu_prior, N, clamp_grad = hyper["mu_prior"], hyper["N"], hyper["clamp_grad"]
    mus, sigmas, grad_mus, grad_sigmas = list(mus), list(sigmas), list(grad_mus), list(grad_sigmas)
    _same_lengths(mus=mus, sigmas=sigmas, grad_mus=grad_mus, grad_sigmas=grad_sigmas)
    if not mus:
        return
    if clamp_grad > 0:
        bound = torch._foreach_reciprocal(sigmas)
        torch._foreach_mul_(bound, clamp_grad)
        low = torch._foreach_neg(bound)
        grad_mus = torch._foreach_minimum(torch._foreach_maximum(grad_mus, low), bound)
        grad_sigmas = torch._foreach_minimum(torch._foreach_maximum(grad_sigmas, low), bound)
    inv = 1.0 / (N * sigma_prior**2)
    variances = torch._foreach_mul(sigmas, sigmas)
    # Δμ / η_μ = σ² ((μ_p − μ) / (N σ_p²) − ∂L/∂μ)
    step_mu = torch._foreach_mul(mus, -inv)
    torch._foreach_add_(step_mu, mu_prior * inv)
    torch._foreach_sub_(step_mu, grad_mus)
    torch._foreach_mul_(step_mu, variances)
    # Δσ / (½ η_σ) = σ ((σ_p² − σ²) / (N σ_p²) − σ ∂L/∂σ)
    step_sigma = torch._foreach_mul(variances, -inv)
    torch._foreach_add_(step_sigma, sigma_prior**2 * inv)
    torch._foreach_addcmul_(step_sigma, sigmas, grad_sigmas, value=-1.0)
    torch._foreach_mul_(step_sigma, sigmas)
    torch._foreach_add_(mus, step_mu, alpha=lr_mu)
    torch._foreach_add_(sigmas, step_sigma, alpha=0.5 * lr_sigma)


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
    mu, sigma = mu.detach().clone(), sigma.detach().clone()
    mesu_step_([mu], [sigma], [grad_mu], [grad_sigma], hyper)
    return mu, sigma


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
    check_hyperparameters("bimu", hyper)
    lr, lr_max, N = hyper["lr"], hyper["lr_max"], hyper["N"]
    likelihood_multiplier, kl_multiplier = hyper["likelihood_multiplier"], hyper["kl_multiplier"]
    lams, grads = list(lams), list(grads)
    _same_lengths(lams=lams, grads=grads)
    if not lams:
        return
    g = torch._foreach_mul(grads, likelihood_multiplier)
    t = torch._foreach_tanh(lams)
    kl = torch._foreach_mul(t, t)  # K = κ (1 − tanh² λ)
    torch._foreach_mul_(kl, -kl_multiplier)
    torch._foreach_add_(kl, kl_multiplier)
    numerator = torch._foreach_mul(g, lr)  # η g + λ K / N
    torch._foreach_addcmul_(numerator, lams, kl, value=1.0 / N)
    denominator = torch._foreach_abs(g)  # 2 (|g| + g tanh λ) + K + 1/η_max
    torch._foreach_addcmul_(denominator, g, t)
    torch._foreach_mul_(denominator, 2.0)
    torch._foreach_add_(denominator, kl)
    torch._foreach_add_(denominator, 1.0 / lr_max)
    torch._foreach_div_(numerator, denominator)
    torch._foreach_sub_(lams, numerator)


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
    lam = lam.detach().clone()
    hyper = dict(lr=lr, lr_max=lr_max, likelihood_multiplier=likelihood_multiplier, kl_multiplier=kl_multiplier, N=N)
    bimu_step_([lam], [grad], hyper)
    return lam
