"""Bayesian synapses on any torch model: Gaussian weights (MESU) and binary weights (BiMU).

:func:`bayesianize` puts them onto the linear/conv layers of an existing model (snnTorch, Norse or
plain torch) in one line, with ``torch.nn.utils.parametrize`` as :func:`metaspike.binarize` does:

* ``"mesu"``: the layer's ``weight`` parameter becomes the mean ``μ``; the parametrization
  (:class:`GaussianWeight`) holds the width ``σ`` as its parameter ``sigma``. The layer sees
  ``w = μ + σ·ε``, ``ε ~ N(0, 1)``, in training mode.
* ``"bimu"``: the layer's ``weight`` parameter becomes the latent ``λ`` of a binary weight that is
  ``+1`` with probability ``sigmoid(2λ)``; the layer sees the relaxed sample of
  :class:`BinaryWeight` in training mode.

Like :func:`metaspike.binarize`, ``"bimu"`` gives each layer a learned gain per output channel
(``scale="auto"``: :class:`metaspike.gain.OutputGain`, started at the float weight's mean ``|W|``):
a ±1 weight is several times a float layer's initial weights, and without the gain a spiking
network's neurons run far past threshold. Layers followed by a normalisation (the ``bnn`` BiMU MLP's
LayerNorm) do not need it (``scale=None``). The gain is a plain parameter: train it with a torch
optimizer beside :class:`~metaspike.bayesian.optim.BiMU` (:func:`plain_parameters`,
:class:`metaspike.ChainedOptimizer`).

In evaluation mode (``model.eval()``) the layer sees the most probable weight (``evaluation="mode"``,
the default, deterministic: ``μ``, resp. ``sign(λ)`` with ``sign(0) = +1``) or a fresh sample
(``evaluation="sample"``). Every access to ``layer.weight`` draws a new sample; to use one sample
for a whole spiking time loop, run it inside :func:`metaspike.binarized_once` (as ``SpikingClassifier`` does).

:func:`sample_weights` draws ``S`` weight samples of a layer in one pass and :func:`sampled_forward`
runs a Linear or Conv1d/2d/3d layer on all of them batched. :func:`mesu_param_groups`,
:func:`bimu_parameters` and :func:`plain_parameters` sort a model's parameters for the optimizers
of :mod:`metaspike.bayesian.optim`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from metaspike.bayesian.counter_noise import arithmetic_dtype, counter_normal, counter_uniform, draw_key
from metaspike.bayesian.functional import _exp_pair
from metaspike.bayesian.plain_optimizers import watch_plain_optimizers
from metaspike.block_cache import reuse_in_block, signs_cache_key
from metaspike.caller import user_stacklevel
from metaspike.checks import FLOAT32_MAX, FLOAT32_TINY, is_whole, number_in
from metaspike.compiled import LazyCompiled
from metaspike.function_transforms import refuse_function_transform
from metaspike.gain import (
    apply_output_gain,
    attach_output_gain,
    check_gain_layer,
    check_scale,
    gain_scale,
    output_gain,
)
from metaspike.layer_selection import (
    DEFAULT_LAYER_TYPES,
    SynapseParametrization,
    attach_synapse,
    check_weight_ready,
    each_once,
    nothing_to_convert,
    select_layers,
    synapse_parametrization,
    synapse_role,
    warn_float_matrices_left,
)
from metaspike.quantizers import binary_sign

__all__ = [
    "GaussianWeight",
    "BinaryWeight",
    "make_bayesian",
    "bayesianize",
    "bayesian_modules",
    "mesu_param_groups",
    "bimu_parameters",
    "start_confident",
    "plain_parameters",
    "check_samples",
    "sample_weights",
    "sampled_forward",
    "sampled_product",
    "synapse_role",
    "SampledForward",
    "drawn_samples",
]

KINDS = ("bimu", "mesu")
EVALUATIONS = ("mode", "sample")
def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_samples(samples: int | None, name: str = "samples") -> int | None:
    """Validate a number of weight samples: an int ``>= 1``, or ``None`` (one ordinary pass); ``name`` is the
    argument an error names.

    Example:
        >>> check_samples(5)
        5
    """
    if samples is not None and not is_whole(samples, 1):
        raise ValueError(f"{name} must be an int >= 1 or None, got {samples!r}")
    return samples


def _shape(weight: Tensor, samples: int | None) -> tuple[int, ...]:
    return tuple(weight.shape) if samples is None else (samples, *weight.shape)


def _expand(weight: Tensor, samples: int | None) -> Tensor:
    return weight if samples is None else weight.expand(samples, *weight.shape)


def _outside_compiled_models(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` and what it calls as they are when a model compiled by ``torch.compile`` calls it (a graph break):
    dynamo fails on the samples our autograd Functions save, and a traced ``draw_key`` would draw other numbers than
    the eager one (inductor's own random stream). The fused loops inside stay compiled (they are compiled apart)."""
    return torch.compiler.disable(fn)


def _rows(tensor: Tensor, rows: int) -> Tensor:
    """``tensor`` as a contiguous ``(rows, -1)`` matrix sharing its memory but not marked as a view: the compiled
    loops below then see a plain 2-D tensor whatever the layer's shape (views would make them recompile per
    shape of the viewed tensor). Only for tensors no one writes to while the result is in use."""
    return torch.ops.aten._unsafe_view(tensor.contiguous(), (rows, -1))


def _gaussian_sample(mu: Tensor, sigma: Tensor, key: Tensor, samples: int) -> tuple[Tensor, Tensor]:
    """``(w, ε)``: ``samples`` rows ``w = μ + σ·ε`` for ``μ``, ``σ`` of shape ``(1, n)``, ``ε`` drawn under ``key`` (in
    float32 for a narrower ``μ``, then rounded to its dtype)."""
    noise = counter_normal((samples, mu.shape[1]), key, arithmetic_dtype(mu.dtype)).to(mu.dtype)
    return torch.addcmul(mu, sigma, noise), noise


def _gaussian_gradients(grad: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """``(∂L/∂μ, ∂L/∂σ)`` from ``∂L/∂w`` of ``(S, n)`` samples ``w = μ + σ·ε``: ``Σ_s g_s`` and ``Σ_s g_s·ε_s``."""
    return grad.sum(0), (grad * noise).sum(0)


def _outer(grad_out: Tensor, x: Tensor) -> Tensor:
    """``∂L/∂w_s = g_s x_sᵀ`` of a linear layer at batch size 1, ``(S, out, in)`` from ``g`` ``(S, out)`` and ``x``
    ``(S, in)``: inside a compiled loop it is formed where it is used, never written."""
    return grad_out.unsqueeze(2) * x.unsqueeze(1)


def _gaussian_row_gradients(grad_out: Tensor, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_gaussian_gradients` of a linear layer at batch size 1 (``noise`` of shape ``(S, out, in)``)."""
    return _gaussian_gradients(_outer(grad_out, x), noise)


_compiled_gaussian_sample = LazyCompiled(_gaussian_sample, "MESU weight samples")
_compiled_gaussian_gradients = LazyCompiled(_gaussian_gradients, "MESU weight samples' gradients")
_compiled_gaussian_row_gradients = LazyCompiled(_gaussian_row_gradients, "MESU batch-1 gradients")


def _draw_gaussian(mu: Tensor, sigma: Tensor, key: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """``(w, ε)``: ``rows`` samples of ``μ + σ·ε`` (``μ``, ``σ`` of any shape) and their noise, flat ``(rows, n)``."""
    return _compiled_gaussian_sample(_rows(mu, 1), _rows(sigma, 1), key, rows)


def _keep_for_backward(ctx: Any, tensor: Tensor) -> None:
    """Keep what a weight sample's backward needs: saved as torch saves it (freed by the backward pass), except inside
    a :func:`~metaspike.block_cache.binarized_once` block, whose passes reuse the one sample; there each backward pass
    of the block (a truncated time loop's chunks, accumulated micro-batches) goes through it, and the kept tensor
    lives as long as the sample does."""
    if signs_cache_key() is None:
        ctx.save_for_backward(tensor)
    else:
        ctx.kept = tensor


def _kept(ctx: Any) -> Tensor:
    """What :func:`_keep_for_backward` kept."""
    return ctx.kept if hasattr(ctx, "kept") else ctx.saved_tensors[0]


class _GaussianSample(torch.autograd.Function):
    """``rows`` samples ``w = μ + σ·ε`` stacked on a new first dimension, the noise drawn inside the sampling
    loop (:mod:`~metaspike.bayesian.counter_noise`); the backward of several samples is one fused loop
    (both sums over the samples)."""

    # forward takes ctx (no setup_context): Function.apply then skips binding arguments by inspect.signature,
    # which costs more than the rest of apply at batch size 1

    @staticmethod
    def forward(ctx: Any, mu: Tensor, sigma: Tensor, key: Tensor, rows: int) -> tuple[Tensor, Tensor]:
        weight, noise = _draw_gaussian(mu, sigma, key, rows)
        _keep_for_backward(ctx, noise)
        ctx.mark_non_differentiable(noise)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for the noise output
        ctx.mu_shape = mu.shape
        return weight.view(rows, *mu.shape), noise

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None, _: Tensor | None) -> tuple[Tensor | None, Tensor | None, None, None]:
        noise = _kept(ctx)
        if grad is None:
            return None, None, None, None
        if noise.shape[0] == 1:  # one sample: nothing to sum
            flat = _rows(grad, 1)
            return flat.view(ctx.mu_shape), (flat * noise).view(ctx.mu_shape), None, None
        grad_mu, grad_sigma = _compiled_gaussian_gradients(_rows(grad, noise.shape[0]), noise)
        return grad_mu.view(ctx.mu_shape), grad_sigma.view(ctx.mu_shape), None, None


#: What :func:`~metaspike.function_transforms.refuse_function_transform` names: the sampled weights of training.
_TRAINING_SAMPLES = "MESU and BiMU synapses in training"

#: The starts of a synapse's tensors unless a call says otherwise: MESU's width ``σ`` and the spread of BiMU's ``λ``.
SIGMA_INIT = 0.1
LAMBDA_INIT = 0.1


class _CheckedEvaluation:
    """A synapse's ``evaluation`` setting, checked wherever it is set: in the constructor, or on the synapse later (as
    :func:`bayesianize`'s refusal to change a layer's settings says to), where a typo was taken for ``"sample"``."""

    _evaluation: str

    @property
    def evaluation(self) -> str:
        """What evaluation mode shows: ``"mode"`` or ``"sample"``."""
        return self._evaluation

    @evaluation.setter
    def evaluation(self, value: str) -> None:
        self._evaluation = _choice("evaluation", value, EVALUATIONS)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A synapse pickled before its settings were checked properties kept them under their own names: set
        through the properties, so they are checked too."""
        settings = {key: state.pop(key) for key in ("evaluation", "temperature") if key in state}
        super().__setstate__(state)  # type: ignore[misc]
        for key, value in settings.items():
            setattr(self, key, value)


class GaussianWeight(_CheckedEvaluation, SynapseParametrization):
    """Parametrization of a MESU synapse: the weight parameter is the mean ``μ``, ``sigma`` the width.

    ``sigma`` starts at ``sigma_init`` everywhere (the MESU paper starts ``σ`` at the scale of the
    prior width ``σ_p``; the default ``0.1`` is the default ``sigma_prior`` of
    :class:`~metaspike.bayesian.optim.MESU`).

    Args:
        mu: the mean weights (gives ``sigma`` its shape, dtype and device).
        sigma_init: initial width, a finite number ``> 0``.
        evaluation: what evaluation mode shows: ``"mode"`` (``μ``) or ``"sample"`` (``μ + σ·ε``).

    Example:
        >>> p = GaussianWeight(torch.zeros(2, 3), sigma_init=0.1)
        >>> p(torch.zeros(2, 3)).shape, p.eval()(torch.ones(2, 3)).unique()
        (torch.Size([2, 3]), tensor([1.]))
    """

    kind = "mesu"

    def __init__(self, mu: Tensor, sigma_init: float = SIGMA_INIT, evaluation: str = "mode") -> None:
        super().__init__()
        self.evaluation = evaluation
        self.sigma = nn.Parameter(torch.full_like(mu.detach(), check_setting("sigma_init", sigma_init, mu.dtype)))

    @_outside_compiled_models
    def sample(self, mu: Tensor, samples: int | None = None) -> Tensor:
        """The weight seen now, or ``samples`` independent ones stacked on a new first dimension.

        Example:
            >>> GaussianWeight(torch.zeros(4)).sample(torch.zeros(4), samples=3).shape
            torch.Size([3, 4])
        """
        if not self.training and self.evaluation == "mode":
            return _expand(mu, samples)
        refuse_function_transform(_TRAINING_SAMPLES)
        weight, _ = _GaussianSample.apply(mu, self.sigma, draw_key(mu.device), samples or 1)
        return weight if samples else weight.squeeze(0)

    def forward(self, mu: Tensor) -> Tensor:
        self.count_weight_read()
        return reuse_in_block(self, (mu, self.sigma), lambda: self.sample(mu))

    def tensors_of(self, layer: nn.Module) -> dict[str, Tensor]:
        """``μ`` (the layer's weight parameter) and ``σ``, by role."""
        return {"mean": layer.parametrizations.weight.original, "width": self.sigma}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """torch's load, after a check that the widths loaded are > 0: a width of 0 froze its synapse without a word
        (MESU's steps scale with σ²) and a negative one trained on as its absolute value, while a state dict is a file
        from outside."""
        width = state_dict.get(prefix + "sigma")
        if isinstance(width, Tensor) and not width.is_complex() and width.numel() and not bool(
                (width.detach() > 0).all()):
            raise ValueError(f"{prefix}sigma (a MESU synapse's widths) holds values that are not > 0 (smallest "
                             f"{width.detach().min().item():.4g}): a width is a standard deviation, and a synapse of "
                             "width 0 never learns")
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _row_sample(self, params: tuple[Tensor, ...], key: Tensor, rows: int) -> tuple[Tensor, Tensor]:
        """``(w, ε)``: ``rows`` flat samples and their noise (for :class:`_SampledRowProduct`)."""
        return _draw_gaussian(*params, key, rows)

    def _row_gradients(self, grad_out: Tensor, x: Tensor, weights: Tensor, noise: Tensor) -> tuple[Tensor, ...]:
        """``(∂L/∂μ, ∂L/∂σ)`` of a batch-1 product (for :class:`_SampledRowProduct`)."""
        return _compiled_gaussian_row_gradients(grad_out, x, torch.ops.aten._unsafe_view(noise, weights.shape))

    def extra_repr(self) -> str:
        return f"evaluation={self.evaluation!r}"


def _uniforms(lam: Tensor, key: Tensor, samples: int) -> Tensor:
    """``(samples, n)`` uniforms on ``(0, 1)`` under ``key`` for ``λ`` of shape ``(1, n)`` (float32 for a narrower
    ``λ``: the sample is computed in float32 and rounded to ``λ``'s dtype at the end)."""
    return counter_uniform((samples, lam.shape[1]), key, arithmetic_dtype(lam.dtype))


def _relaxed_sample_tanh(lam: Tensor, key: Tensor, samples: int, inv_tau: Tensor) -> Tensor:
    """``tanh((λ + ½ log(u / (1 − u))) / τ)`` for ``λ`` of shape ``(1, n)``: ``(samples, n)`` relaxed samples."""
    u = _uniforms(lam, key, samples)
    return torch.tanh((lam + 0.5 * torch.log(u / (1 - u))) * inv_tau).to(lam.dtype)


def _relaxed_sample_rational(lam: Tensor, a: Tensor, b: Tensor, inv_tau: Tensor,
                             pair: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """The same as :func:`_relaxed_sample_tanh` where ``a = u^k``, ``b = (1 − u)^k`` with ``k = 1/τ``:
    ``(p·a − q·b) / (p·a + q·b)``, ``p = sigmoid(2λ/τ)``, ``q = sigmoid(−2λ/τ)`` (multiply
    ``tanh x = (e^{2x} − 1)/(e^{2x} + 1)`` through by ``q·(1 − u)^k``): no transcendental per sample, and
    the denominator never vanishes (``max(p, q) >= ½`` and ``u`` is never 0 or 1). Both sigmoids come from one
    exp, ``e = exp(−2|λ|/τ)``: the larger is ``1/(1 + e)``, the smaller ``e/(1 + e)``, which keeps its digits
    where ``|λ| ≫ τ`` (``1 − p`` would round to 0); ``pair`` is :func:`_exp_pair` of ``λ`` and ``τ`` where the caller
    has it."""
    e, larger = _exp_pair(lam, inv_tau) if pair is None else pair
    smaller = e * larger
    positive = lam >= 0
    pa = torch.where(positive, larger, smaller) * a
    qb = torch.where(positive, smaller, larger) * b
    return (pa - qb) / (pa + qb)


def _relaxed_sample_tau1(lam: Tensor, key: Tensor, samples: int, inv_tau: Tensor,
                         pair: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """:func:`_relaxed_sample_tanh` for ``τ = 1`` in the rational form (``pair``: see :func:`_relaxed_sample_rational`)."""
    u = _uniforms(lam, key, samples)
    return _relaxed_sample_rational(lam, u, 1 - u, inv_tau, pair).to(lam.dtype)


def _relaxed_sample_tau_half(lam: Tensor, key: Tensor, samples: int, inv_tau: Tensor) -> Tensor:
    """:func:`_relaxed_sample_tanh` for ``τ = ½`` in the rational form."""
    u = _uniforms(lam, key, samples)
    return _relaxed_sample_rational(lam, u * u, (1 - u) * (1 - u), inv_tau).to(lam.dtype)


def _relaxed_gradient(grad: Tensor, weight: Tensor, inv_tau: Tensor) -> Tensor:
    """``∂L/∂λ`` (shape ``(n,)``) from ``∂L/∂w`` of ``(S, n)`` samples: ``(1 − w²) / τ`` each, summed over them."""
    return (grad * (1 - weight * weight) * inv_tau).sum(0)


# one compiled loop per form (uniforms drawn inside it), each for any size and number of samples
_RELAXED_SAMPLES = {
    1: LazyCompiled(_relaxed_sample_tau1, "BiMU relaxed weight sample (τ = 1)"),
    2: LazyCompiled(_relaxed_sample_tau_half, "BiMU relaxed weight sample (τ = 1/2)"),
    0: LazyCompiled(_relaxed_sample_tanh, "BiMU relaxed weight sample"),
}


def _draw_relaxed(lam: Tensor, key: Tensor, rows: int, inv_tau: float) -> Tensor:
    """``rows`` relaxed samples of ``λ`` (any shape), flat: ``(rows, λ.numel())``, in the form ``1/τ`` allows."""
    scale = torch.tensor(inv_tau, dtype=lam.dtype, device=lam.device)
    return _RELAXED_SAMPLES[_integer_power(inv_tau)](_rows(lam, 1), key, rows, scale)


def _relaxed_row_gradient(grad_out: Tensor, x: Tensor, weight: Tensor, inv_tau: Tensor) -> Tensor:
    """:func:`_relaxed_gradient` of a linear layer at batch size 1 (``weight`` of shape ``(S, out, in)``)."""
    return _relaxed_gradient(_outer(grad_out, x), weight, inv_tau)


_compiled_relaxed_gradient = LazyCompiled(_relaxed_gradient, "BiMU relaxed sample's gradient")
_compiled_relaxed_row_gradient = LazyCompiled(_relaxed_row_gradient, "BiMU batch-1 gradient")


class _RelaxedBinarySample(torch.autograd.Function):
    """``rows`` relaxed BiMU samples stacked on a new first dimension, as one fused loop forward (the uniforms
    drawn inside it, :mod:`~metaspike.bayesian.counter_noise`) and one fused loop (with the sum over samples)
    backward."""

    @staticmethod
    def forward(ctx: Any, lam: Tensor, key: Tensor, rows: int, inv_tau: float) -> Tensor:
        weight = _draw_relaxed(lam, key, rows, inv_tau)
        _keep_for_backward(ctx, weight)
        ctx.inv_tau = inv_tau
        ctx.lam_shape = lam.shape
        return weight.view(rows, *lam.shape)  # (ctx-style forward: see _GaussianSample)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        weight = _kept(ctx)
        rows = weight.shape[0]
        scale = torch.tensor(ctx.inv_tau, dtype=weight.dtype, device=weight.device)
        flat = _compiled_relaxed_gradient(_rows(grad, rows), weight, scale)
        return flat.view(ctx.lam_shape), None, None, None


def _integer_power(inv_tau: float) -> int:
    """``1/τ`` where a rational form of the relaxed sample exists for it (1 or 2), else 0 (the tanh form)."""
    k = round(inv_tau)
    return k if k in _RELAXED_SAMPLES and k > 0 and abs(inv_tau - k) < 1e-9 else 0


class BinaryWeight(_CheckedEvaluation, SynapseParametrization):
    """Parametrization of a BiMU synapse: the weight parameter is the latent ``λ`` of a ±1 weight.

    The weight is ``+1`` with probability ``sigmoid(2λ)`` (mean ``tanh λ``). Training mode shows the
    relaxed sample ``tanh((λ + ½ log(u / (1 − u))) / τ)``, ``u ~ U(0, 1)`` (counter-based uniforms drawn
    inside the sampling loop, :mod:`~metaspike.bayesian.counter_noise`; the sample and its gradient run as
    one fused loop each, without a transcendental per sample where ``τ`` is 1 or ½), which is differentiable in
    ``λ`` and has the sign of a Bernoulli sample; evaluation mode shows ``sign(λ)`` (``"mode"``,
    ``sign(0) = +1``) or a Bernoulli sample (``"sample"``).

    Args:
        temperature: ``τ``, a finite number ``> 0``; smaller is closer to ±1 (and has steeper gradients).
        evaluation: ``"mode"`` or ``"sample"``.

    Example:
        >>> p = BinaryWeight(temperature=0.5).eval()
        >>> p(torch.tensor([-0.3, 0.0, 2.0]))
        tensor([-1.,  1.,  1.])
    """

    kind = "bimu"

    def __init__(self, temperature: float = 1.0, evaluation: str = "mode") -> None:
        super().__init__()
        self.temperature = temperature
        self.evaluation = evaluation

    @property
    def temperature(self) -> float:
        """``τ`` of the relaxed training sample, checked wherever it is set (a negative one flipped every sample's
        sign, zero divided by zero inside the sample)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_setting("temperature", value)

    @_outside_compiled_models
    def sample(self, lam: Tensor, samples: int | None = None) -> Tensor:
        """The weight seen now, or ``samples`` independent ones stacked on a new first dimension.

        Example:
            >>> BinaryWeight().sample(torch.zeros(4), samples=3).shape
            torch.Size([3, 4])
        """
        if self.training:
            refuse_function_transform(_TRAINING_SAMPLES)
            inv_tau = 1.0 / self.temperature
            weight = _RelaxedBinarySample.apply(lam, draw_key(lam.device), samples or 1, inv_tau)
            return weight if samples else weight.squeeze(0)
        if self.evaluation == "mode":
            return _expand(binary_sign(lam.detach()), samples)
        exact = arithmetic_dtype(lam.dtype)  # (bfloat16 would draw P(+1) to 8 bits)
        uniform = torch.rand(_shape(lam, samples), dtype=exact, device=lam.device)
        return (uniform < torch.sigmoid(2 * lam.to(exact))).to(lam.dtype).mul_(2).sub_(1)

    def forward(self, lam: Tensor) -> Tensor:
        self.count_weight_read()
        return reuse_in_block(self, (lam,), lambda: self.sample(lam))

    def tensors_of(self, layer: nn.Module) -> dict[str, Tensor]:
        """``λ`` (the layer's weight parameter), by role."""
        return {"latent": layer.parametrizations.weight.original}

    def _row_sample(self, params: tuple[Tensor, ...], key: Tensor, rows: int) -> tuple[Tensor, Tensor]:
        """``rows`` flat relaxed samples, twice: the samples and what their gradient needs (for
        :class:`_SampledRowProduct`)."""
        weight = _draw_relaxed(params[0], key, rows, 1.0 / self.temperature)
        return weight, weight

    def _row_gradients(self, grad_out: Tensor, x: Tensor, weights: Tensor, _: Tensor) -> tuple[Tensor, ...]:
        """``(∂L/∂λ,)`` of a batch-1 product (for :class:`_SampledRowProduct`)."""
        scale = torch.tensor(1.0 / self.temperature, dtype=weights.dtype, device=weights.device)
        return (_compiled_relaxed_row_gradient(grad_out, x, weights, scale),)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, evaluation={self.evaluation!r}"


class _SampledRowProduct(torch.autograd.Function):
    """``S`` training samples of a Bayesian linear layer's weights times one input row each (batch size 1), as
    ``(S, 1, out)``. The backward never writes the samples' weight gradients ``g_s x_sᵀ``: they are formed inside
    the fused loop that sums them over the samples, where the batched product's backward would write ``S``
    weight-sized tensors for the sample's backward to read back (the largest memory traffic of a batch-1 step)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, synapse: _Parametrization, key: Tensor, rows: int, *params: Tensor) -> Tensor:
        weight, saved = synapse._row_sample(params, key, rows)
        weights = torch.ops.aten._unsafe_view(weight, (rows, *params[0].shape))
        ctx.save_for_backward(x, weights, saved)
        ctx.synapse = synapse  # (ctx-style forward: see _GaussianSample)
        return _samples_times_inputs(weights, x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weights, saved = ctx.saved_tensors
        rows = weights.shape[0]
        grad_x = torch.bmm(grad, weights) if ctx.needs_input_grad[0] else None
        grads = ctx.synapse._row_gradients(_rows(grad, rows), _rows(x, rows), weights, saved)
        return (grad_x, None, None, None, *grads)


_Parametrization = GaussianWeight | BinaryWeight


def _parametrization(layer: nn.Module) -> _Parametrization | None:
    synapse = synapse_parametrization(layer)
    return synapse if isinstance(synapse, (GaussianWeight, BinaryWeight)) else None


def _gain_scale(kind: str, scale: str | None) -> str | None:
    """The gain kind ``scale`` asks for: ``"auto"`` is ``"channel"`` for BiMU (±1 weights) and ``None`` for MESU
    (whose mean starts as the float weight and keeps its scale)."""
    if scale == "auto":
        return "channel" if kind == "bimu" else None
    try:
        return check_scale(scale)
    except ValueError:
        raise ValueError(f"scale must be 'auto', 'channel', 'layer' or None, got {scale!r}") from None


#: The range of each synapse setting, and why: a float32 synapse must hold what it implies.
SETTING_RANGES: dict[str, tuple[float, float, str]] = {
    "sigma_init": (FLOAT32_TINY ** 0.5, FLOAT32_MAX ** 0.5,
                   "(MESU's steps scale with sigma^2, which float32 must hold without rounding to 0 or infinity)"),
    "temperature": (FLOAT32_TINY, FLOAT32_MAX, "(1/temperature scales the relaxed sample: float32 must hold it)"),
    "lambda_init": (0.0, FLOAT32_MAX / 16,
                    "(the normal draws of lambda reach several times it, which float32 must hold)"),
}


def check_setting(name: str, value: Any, dtype: torch.dtype | None = None) -> float:
    """``value`` of the synapse setting ``name`` (``"sigma_init"``, ``"temperature"``, ``"lambda_init"``) as a float
    if it lies in its range (:data:`SETTING_RANGES`), else a ``ValueError`` naming it and the range. Given the
    ``dtype`` of the synapse it starts (``sigma_init``, ``lambda_init``), also within what that type holds as a normal
    number: a float16 synapse's end at 6.1e-5 and 65504 (a σ of 1e-9 would round to 0, and MESU, whose steps scale
    with σ², would never move it; λ's draws, several times ``lambda_init``, would reach infinity).

    Example:
        >>> check_setting("temperature", 0.5)
        0.5
        >>> check_setting("sigma_init", 1e-50)
        Traceback (most recent call last):
        ...
        ValueError: sigma_init must be a finite number in [1.0842e-19, 1.84467e+19] (MESU's steps scale with sigma^2, which float32 must hold without rounding to 0 or infinity), got 1e-50
        >>> check_setting("sigma_init", 1e-9, torch.float16)
        Traceback (most recent call last):
        ...
        ValueError: sigma_init must be a finite number in [6.10352e-05, 65504] (a float16 synapse holds it as a normal number, without rounding to 0 or infinity), got 1e-09
    """
    low, high, note = SETTING_RANGES[name]
    if dtype is not None:
        held = held_range(dtype, spread=16.0 if name == "lambda_init" else 1.0)
        if held[0] > low or held[1] < high:
            low, high = max(low, held[0]) if low > 0 else low, min(high, held[1])
            note = (f"(the normal draws of lambda reach several times it, which a {dtype_name(dtype)} synapse must "
                    "hold)" if name == "lambda_init" else f"(a {dtype_name(dtype)} synapse holds it as a normal "
                    "number, without rounding to 0 or infinity)")
    return number_in(name, value, low, high, note=note)


def dtype_name(dtype: torch.dtype) -> str:
    """``dtype`` as its name alone, as messages say it.

    Example:
        >>> dtype_name(torch.float16)
        'float16'
    """
    return str(dtype).removeprefix("torch.")


def held_range(dtype: torch.dtype, spread: float = 1.0) -> tuple[float, float]:
    """The positive values a ``dtype`` synapse holds as normal numbers, with room for draws up to ``spread`` times the
    value (λ's normal draws), capped at float32's (the rules compute in float32 at least).

    Example:
        >>> held_range(torch.float16)
        (6.103515625e-05, 65504.0)
    """
    info = torch.finfo(dtype)
    return max(float(info.tiny), FLOAT32_TINY), min(float(info.max), FLOAT32_MAX) / spread


def _check_settings(kind: str, scale: str | None, sigma_init: float, lambda_init: float | None, temperature: float,
                    evaluation: str) -> str | None:
    """Validate the settings of :func:`make_bayesian` and :func:`bayesianize` (of both kinds, whichever is asked
    for) before anything changes; return the gain kind ``scale`` asks for."""
    _choice("kind", kind, KINDS)
    check_setting("sigma_init", sigma_init)
    if lambda_init is not None:
        check_setting("lambda_init", lambda_init)
    check_setting("temperature", temperature)
    _choice("evaluation", evaluation, EVALUATIONS)
    others = ({"lambda_init": (lambda_init, LAMBDA_INIT), "temperature": (temperature, 1.0)} if kind == "mesu"
              else {"sigma_init": (sigma_init, SIGMA_INIT)})
    given = [name for name, (value, default) in others.items() if value != default]
    if given:  # (it would be dropped without a word)
        raise ValueError(f"{' and '.join(given)} {'is a setting' if len(given) == 1 else 'are settings'} of the other "
                         f"synapse kind; kind {kind!r} takes "
                         f"{'sigma_init' if kind == 'mesu' else 'lambda_init and temperature'}")
    return _gain_scale(kind, scale)


def _new_synapse(kind: str, weight: nn.Parameter, sigma_init: float, lambda_init: float | None, temperature: float,
                 evaluation: str) -> _Parametrization:
    """The parametrization that makes ``weight`` a synapse of ``kind`` (BiMU: ``λ`` drawn anew unless
    ``lambda_init`` is ``None`` or the weight is frozen, which keeps what it learned)."""
    if kind == "mesu":  # (σ trains where μ does: a frozen layer stays frozen)
        synapse = GaussianWeight(weight, sigma_init, evaluation)
        synapse.sigma.requires_grad_(weight.requires_grad)
        return synapse
    if lambda_init is not None and weight.requires_grad:
        with torch.no_grad():
            weight.normal_(0.0, lambda_init)
    return BinaryWeight(temperature, evaluation)


def _warn_of_frozen_layers(frozen: list[tuple[str, nn.Module]], kind: str, sigma_init: float,
                           lambda_init: float | None, who: str) -> None:
    """Warn where ``frozen`` (``(name, layer)`` pairs of layers whose weight has ``requires_grad=False``) is not
    empty: such a synapse keeps the weights and never trains, yet each training pass draws from it (BiMU: ±1 with
    P(+1) = sigmoid(2λ); MESU: μ + σ·ε), so the layer a user froze to keep it is not what the training passes
    see. ``who`` is the function called (``bayesianize``, ``make_bayesian``)."""
    if not frozen:
        return
    if all(name for name, _ in frozen):
        named = ", ".join(repr(name) for name, _ in frozen)
        keep = f"leave it float with exclude=[{named}]"
    else:  # (make_bayesian's one layer, or the model bayesianize was given being the layer: no name to exclude)
        named = f"the layer ({type(frozen[0][1]).__name__})"
        keep = "leave it float (do not make it Bayesian)"
    verb, its, keeps, trains, does = (("is", "its", "keeps", "trains", "does") if len(frozen) == 1 else
                                      ("are", "their", "keep", "train", "do"))
    if kind == "bimu":
        kept = " instead of a new N(0, lambda_init²) draw" if lambda_init is not None else ""
        drawn = (f"{its} λ {keeps} the weights (sign λ, what evaluation shows, is their signs){kept}, and never "
                 f"{trains}; each training pass draws ±1 with P(+1) = sigmoid(2λ), near a coin flip for small weights")
    else:  # (the mean size layer by layer: one copy of all the frozen weights doubled the call's peak memory)
        total = sum(layer.weight.detach().abs().sum(dtype=torch.float64).item() for _, layer in frozen)
        count = sum(layer.weight.numel() for _, layer in frozen)
        size = total / count if count else math.nan  # (a layer of no weights, Linear(0, 3))
        drawn = (f"{its} μ {keeps} the weights and never {trains}, nor {does} σ (sigma_init {sigma_init:g}); each "
                 f"training pass draws μ + σ·ε, noise of width {sigma_init:g} beside weights of mean size {size:.2g}")
    warnings.warn(f"{who}: {named} {verb} frozen (requires_grad=False): {drawn}: to keep a frozen layer exactly as it "
                  f"was, {keep}", UserWarning, stacklevel=user_stacklevel())


def _make_synapses(layers: list[tuple[str, nn.Module]], kind: str, scale: str | None, sigma_init: float,
                   lambda_init: float | None, temperature: float, evaluation: str, who: str) -> None:
    """Turn the checked ``(name, layer)`` pairs into synapses of ``kind``: first every gain, from the float weights
    (before a λ replaces them), then the synapses, one for each weight parameter (tied layers share it). The start
    value is checked first against every weight's type (a float16 layer holds less than float32)."""
    for dtype in sorted({layer.weight.dtype for _, layer in layers}, key=str):  # (named in one order, run to run)
        if kind == "mesu":
            check_setting("sigma_init", sigma_init, dtype)
        elif lambda_init is not None:
            check_setting("lambda_init", lambda_init, dtype)
    for name, layer in layers:
        if scale is not None and output_gain(layer) is None:  # (MESU's μ keeps the float weight's size: α from 1)
            attach_output_gain(layer, scale, name, real_weights=kind == "mesu")
    _warn_of_frozen_layers([(name, layer) for name, layer in layers if not layer.weight.requires_grad], kind,
                           sigma_init, lambda_init, who)
    watch_plain_optimizers()
    shared: dict[int, _Parametrization] = {}
    for _, layer in layers:
        weight = layer.weight
        if id(weight) not in shared:
            shared[id(weight)] = _new_synapse(kind, weight, sigma_init, lambda_init, temperature, evaluation)
        # unsafe: skip torch's trial call of the parametrization (a sample has the weight's shape and dtype by
        # construction), which would draw random numbers and compile the sample loop for every layer built
        attach_synapse(layer, shared[id(weight)], unsafe=True)


def make_bayesian(
    layer: nn.Module,
    kind: str = "bimu",
    *,
    sigma_init: float = SIGMA_INIT,
    lambda_init: float | None = LAMBDA_INIT,
    temperature: float = 1.0,
    evaluation: str = "mode",
    scale: str | None = "auto",
) -> nn.Module:
    """Turn the ``weight`` of one layer into a Bayesian synapse, in place (see :func:`bayesianize`). The settings
    are checked first: a call that fails leaves the layer as it was.

    Example:
        >>> layer = make_bayesian(torch.nn.Linear(3, 2), "mesu")
        >>> layer.parametrizations.weight[0].sigma.shape
        torch.Size([2, 3])
    """
    scale = _check_settings(kind, scale, sigma_init, lambda_init, temperature, evaluation)
    if not isinstance(getattr(layer, "weight", None), nn.Parameter) or parametrize.is_parametrized(layer, "weight"):
        raise ValueError(f"{type(layer).__name__} has no plain weight parameter to make Bayesian")
    check_weight_ready(type(layer).__name__, layer)
    if scale is not None and output_gain(layer) is None:
        check_gain_layer(type(layer).__name__, layer)
    _make_synapses([("", layer)], kind, scale, sigma_init, lambda_init, temperature, evaluation, "make_bayesian")
    return layer


def _settings_differ(layer: nn.Module, synapse: _Parametrization, temperature: float, evaluation: str,
                     scale: str | None) -> str | None:
    """What a layer's existing synapse has that a new call of :func:`bayesianize` asks otherwise, or ``None``."""
    if gain_scale(layer) != scale:
        return f"scale={gain_scale(layer)!r}"
    if synapse.evaluation != evaluation:
        return f"evaluation={synapse.evaluation!r}"
    if isinstance(synapse, BinaryWeight) and synapse.temperature != temperature:
        return f"temperature={synapse.temperature:g}"
    return None


def bayesianize(
    model: nn.Module,
    kind: str = "bimu",
    *,
    layer_types: type[nn.Module] | Sequence[type[nn.Module]] = DEFAULT_LAYER_TYPES,
    exclude: str | Sequence[str] = (),
    sigma_init: float = SIGMA_INIT,
    lambda_init: float | None = LAMBDA_INIT,
    temperature: float = 1.0,
    evaluation: str = "mode",
    scale: str | None = "auto",
) -> nn.Module:
    """Turn the weights of ``model``'s linear/conv layers into Bayesian synapses, in place.

    Biases and other layers stay as they are (see :func:`plain_parameters`). Layers that already
    are Bayesian synapses of ``kind`` with the same ``temperature``, ``evaluation`` and ``scale`` are left unchanged
    (other values of these are an error; ``sigma_init`` and ``lambda_init`` start the layers this call converts,
    and a warning says when they were given for layers that keep their own); a selected layer whose weight carries
    another parametrization (e.g. from
    :func:`metaspike.binarize`) is an error. Everything is checked before the model changes, so a call that fails
    leaves it as it was. Layers that share one weight (tied weights) share one synapse: one ``λ``, or one
    ``μ`` and one ``σ``, each listed once by :func:`bimu_parameters` and :func:`mesu_param_groups`. Each use of a
    synapse draws its own weight sample, so the two layers of a tied pair see different samples in one forward pass
    unless it runs inside :func:`metaspike.binarized_once` (one sample per synapse for the whole block). A ``bnn``
    binary layer (``bnn.BinaryLinear``, ``bnn.BinaryConv2d``) draws one sample per forward pass and uses its signs
    (its gradient reaches that sample straight through).

    A converted layer's forward pass draws one weight sample. MESU needs several per step: run each layer as
    :func:`sampled_forward` in training (or build the model from ``bnn.BayesianLinear(..., samples=S)``); a
    bayesianized 784-64-64-10 MLP on digits (batch 64, 3 epochs) reached 15-40 % with one sample and 60-68 % with
    ten (README, "Spiking networks").

    Args:
        model: the model to change (plain torch, snnTorch, Norse, ...).
        kind: ``"bimu"`` (binary weights) or ``"mesu"`` (Gaussian weights).
        layer_types: which layer classes get Bayesian weights (a class or a sequence of classes).
        exclude: qualified names of layers or blocks to leave as they are (a block's name excludes every layer
            inside it), or of weight matrices a module holds directly, to silence the warning about them.
        sigma_init: MESU: initial width ``σ`` (``μ`` is the layer's current weight).
        lambda_init: BiMU: ``λ`` starts small and random, ``N(0, lambda_init²)`` (the authors start
            ``λ`` small and random); ``None`` keeps the layer's current weights as ``λ``, as a frozen layer
            (``requires_grad=False``) always does (with a warning: its λ never trains).
        temperature: BiMU: temperature ``τ`` of the relaxed training sample.
        evaluation: what evaluation mode shows: ``"mode"`` (deterministic: ``μ`` or ``sign(λ)``) or
            ``"sample"`` (a fresh sample).
        scale: a learned output gain per layer (:class:`metaspike.gain.OutputGain`): ``"channel"``,
            ``"layer"`` or ``None``; ``"auto"`` (default) is ``"channel"`` for BiMU and ``None`` for MESU.

    Example:
        >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())).eval()
        >>> sorted(set(net[0].weight.abs().flatten().tolist()))
        [1.0]
        >>> net[0].output_gain.alpha.shape  # the BiMU default: one learned gain per output
        torch.Size([3])
    """
    scale = _check_settings(kind, scale, sigma_init, lambda_init, temperature, evaluation)
    todo, kept = [], []
    selected = select_layers(model, layer_types, exclude, refuse_computed_weights=True)
    for name, layer in selected:
        synapse = _parametrization(layer)
        if synapse is not None and synapse.kind == kind:
            differs = _settings_differ(layer, synapse, temperature, evaluation, scale)
            if differs is not None:
                raise ValueError(f"layer {name!r} is already a {kind!r} synapse with {differs}; bayesianize leaves "
                                 "such layers as they are (change the setting on the layer itself)")
            kept.append(name)
            continue
        if synapse is not None:  # (of the other kind, or binary)
            raise ValueError(f"layer {name!r} is already a {synapse.kind!r} synapse; bayesianize(..., {kind!r}) needs "
                             f"plain weights: leave it out with exclude=[{name!r}]")
        if synapse_parametrization(layer) is not None:  # (binarize's sign synapse)
            raise ValueError(f"layer {name!r} is already a binary synapse (metaspike.binarize); bayesianize(..., "
                             f"{kind!r}) needs plain weights: leave it out with exclude=[{name!r}]")
        if parametrize.is_parametrized(layer, "weight"):  # (torch's own, weight_norm, orthogonal, or a user's)
            raise ValueError(f"layer {name!r} already has a weight parametrization; bayesianize needs plain weights: "
                             f"remove it, or leave the layer float (exclude=[{name!r}])")
        if getattr(layer, "sparse", False) is True:  # (the synapses' backward passes and MESU/BiMU need dense ones)
            raise ValueError(f"layer {name!r} ({type(layer).__name__}) makes sparse gradients; Bayesian synapses need "
                             "dense ones: make it with sparse=False")
        if getattr(layer, "max_norm", None) is not None:  # (renormalising a sample in place: an autograd error)
            raise ValueError(f"layer {name!r} ({type(layer).__name__}) has max_norm={layer.max_norm}: it rescales the "
                             "rows of its weight in place, and a Bayesian synapse's weight is a fresh sample each "
                             "pass; make it with max_norm=None, or leave it float (exclude=[...])")
        if scale is not None and output_gain(layer) is None:
            check_gain_layer(name, layer)
        todo.append((name, layer))
    if not todo and not any(found == kind for _, _, found, _ in bayesian_modules(model)):
        raise ValueError(nothing_to_convert(model, "make Bayesian", layer_types, exclude))
    start, given, default = (("sigma_init", sigma_init, SIGMA_INIT) if kind == "mesu" else
                             ("lambda_init", lambda_init, LAMBDA_INIT))
    if kept and given != default:
        warnings.warn(f"bayesianize: {', '.join(map(repr, kept))} already are {kind!r} synapses and keep their own "
                      f"values; {start}={given!r} starts only the layers this call converts (set theirs on "
                      "layer.parametrizations.weight[0])", stacklevel=2)
    _make_synapses(todo, kind, scale, sigma_init, lambda_init, temperature, evaluation, "bayesianize")  # all checked
    warn_float_matrices_left(model, [layer for _, layer in selected], exclude, "bayesianize", layer_types)
    return model


def bayesian_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, tuple[nn.Parameter, ...]]]:
    """Yield ``(name, layer, kind, tensors)`` for every Bayesian synapse layer of ``model``.

    ``tensors`` is ``(μ, σ)`` for ``"mesu"`` and ``(λ,)`` for ``"bimu"``.

    Example:
        >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 3)), "mesu")
        >>> [(name, kind, len(tensors)) for name, _, kind, tensors in bayesian_modules(net)]
        [('0', 'mesu', 2)]
    """
    for name, layer in model.named_modules():
        synapse = _parametrization(layer)
        if synapse is None:
            continue
        yield name, layer, synapse.kind, _synapse_tensors(layer, synapse)


def _synapse_tensors(layer: nn.Module, synapse: _Parametrization) -> tuple[nn.Parameter, ...]:
    """``(μ, σ)`` of a MESU layer, ``(λ,)`` of a BiMU layer, marked with their roles: when the synapse is made, and
    again whenever they are listed, a state dict is loaded or the model is deep-copied (torch copies a parameter's
    data only; :class:`~metaspike.layer_selection.SynapseParametrization`)."""
    return synapse.marked_tensors(layer)  # type: ignore[return-value]


def mesu_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """One param group for :class:`~metaspike.bayesian.optim.MESU`: ``params`` alternate ``μ, σ``.

    Example:
        >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 3)), "mesu")
        >>> [tuple(p.shape) for p in mesu_param_groups(net)[0]["params"]]
        [(3, 4), (3, 4)]
    """
    params = each_once(t for _, _, kind, tensors in bayesian_modules(model) if kind == "mesu" for t in tensors)
    if not params:
        raise ValueError(f"{type(model).__name__} has no MESU synapses; call bayesianize(model, 'mesu') first")
    return [{"params": params}]


def bimu_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The latent weights ``λ`` of every BiMU synapse of ``model``, for :class:`~metaspike.bayesian.optim.BiMU`.

    Example:
        >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 3)))
        >>> [tuple(p.shape) for p in bimu_parameters(net)]
        [(3, 4)]
    """
    params = each_once(t for _, _, kind, tensors in bayesian_modules(model) if kind == "bimu" for t in tensors)
    if not params:
        raise ValueError(f"{type(model).__name__} has no BiMU synapses; call bayesianize(model, 'bimu') first")
    return params


def check_magnitude(magnitude: Any, name: str = "magnitude", dtype: torch.dtype = torch.float32) -> float:
    """``magnitude`` as a float if ``dtype`` latent weights hold it without rounding to 0 (losing the signs) or to
    infinity (:func:`held_range`), else a ``ValueError`` naming ``name``.

    Example:
        >>> check_magnitude(1)
        1.0
    """
    low, high = held_range(dtype)
    return number_in(name, magnitude, low, high,
                     note=f"({dtype_name(dtype)} latent weights hold it as a normal number, without rounding to 0 "
                          "or to infinity)")


def start_confident(layer: nn.Module, magnitude: float = 1.0) -> nn.Module:
    """Set every latent weight ``λ`` of one BiMU layer to ``±magnitude`` with the signs it has, in place.

    A layer made by :func:`bayesianize` starts with small random ``λ`` (``N(0, 0.1²)``): each weight is close to a
    coin flip (``P(+1) = sigmoid(2λ)``). After this call each weight keeps its drawn sign with probability
    ``sigmoid(2·magnitude)`` (0.88 at 1), so the layer predicts almost deterministically from the first step on
    and learns more slowly (the gradient through BiMU's relaxed sample ``w`` carries ``1 - w²``, small where
    ``|λ|`` is large). On the long permuted-MNIST stream, starting the output layer at ``±1`` raised BiMU's mean
    accuracy over 100 tasks by about 2.7 points (REPRODUCTION.md). ``λ = 0`` counts as positive; a ``λ`` shared by
    tied layers changes for both. Call it before training, before the optimizer is built.

    Example:
        >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False)))
        >>> start_confident(net[0], 1.5).parametrizations.weight.original.abs().unique().tolist()
        [1.5]
    """
    check_magnitude(magnitude)  # (before the layer: a bad magnitude is named whatever the layer)
    synapse = _parametrization(layer)
    if not isinstance(synapse, BinaryWeight):
        found = "no Bayesian synapse" if synapse is None else f"a {synapse.kind!r} synapse"
        inside = next((name for name, module in layer.named_modules()
                       if name and isinstance(_parametrization(module), BinaryWeight)), None)
        hint = f" of its own; it takes one layer, such as its submodule {inside!r}" if inside is not None else ""
        raise ValueError(f"start_confident needs a layer with a BiMU synapse (bayesianize(model, 'bimu')); "
                         f"{type(layer).__name__} has {found}{hint}")
    (lam,) = _synapse_tensors(layer, synapse)
    magnitude = check_magnitude(magnitude, dtype=lam.dtype)
    with torch.no_grad():
        lam.copy_(torch.where(lam >= 0, magnitude, -magnitude))
    return layer


def plain_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` that are not Bayesian synapses (biases, norm layers, ...).

    The Bayesian optimizers leave them alone; train them with any torch optimizer.

    Example:
        >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 3)), "mesu")
        >>> [tuple(p.shape) for p in plain_parameters(net)]
        [(3,)]
    """
    bayesian = {id(t) for _, _, _, tensors in bayesian_modules(model) for t in tensors}
    return [p for p in model.parameters() if id(p) not in bayesian]


def sample_weights(layer: nn.Module, samples: int) -> Tensor:
    """``samples`` weights of a Bayesian layer drawn in one pass, stacked: shape ``(S, *weight.shape)``.

    What is drawn follows the layer's mode as ``layer.weight`` does (training: samples; evaluation:
    as the layer's ``evaluation`` says); gradients reach ``μ, σ`` or ``λ``.

    Example:
        >>> layer = make_bayesian(torch.nn.Linear(3, 2))
        >>> sample_weights(layer, 4).shape
        torch.Size([4, 2, 3])
    """
    synapse = _parametrization(layer)
    if synapse is None:
        raise ValueError(f"layer must be a Bayesian synapse layer (see bayesianize), got {type(layer).__name__}")
    return synapse.sample(layer.parametrizations.weight.original, check_samples(samples))


def sampled_forward(layer: nn.Module, x: Tensor, samples: int) -> Tensor:
    """Run a Bayesian ``nn.Linear`` or ``nn.Conv1d`` / ``Conv2d`` / ``Conv3d`` on ``samples`` weight samples, batched.

    The input is either shared by all samples (``(B, in)`` for Linear, ``(B, C, H, W)`` for Conv2d)
    or one per sample, with a leading dimension ``S`` (``(S, B, in)``, ``(S, B, C, H, W)``: the
    output of a previous sampled layer). The output always has the leading ``S``: ``(S, B, out)``
    for Linear (one ``torch.bmm``; at batch size 1 in training, one whose backward sums the samples' weight
    gradients without writing them), ``(S, B, out, H', W')`` for Conv2d (one grouped convolution; Conv1d and
    Conv3d alike, with one or three spatial dimensions). Averaging the
    loss over the flattened ``S·B`` outputs averages the gradients over the samples.

    Example:
        >>> layer = make_bayesian(torch.nn.Linear(3, 2), "mesu")
        >>> sampled_forward(layer, torch.randn(5, 3), samples=4).shape
        torch.Size([4, 5, 2])
    """
    out = sampled_product(layer, x, samples)  # (then what the layer's forward hook applies when it is called)
    return out if output_gain(layer) is None else apply_output_gain(layer, out)


def _block_samples(layer: nn.Module, samples: int) -> Tensor:
    """:func:`sample_weights` of ``layer``, drawn once per :func:`~metaspike.block_cache.binarized_once` block (a
    spiking network's time steps share them) and anew outside one."""
    synapse = _parametrization(layer)
    if synapse is None:
        return sample_weights(layer, samples)
    return reuse_in_block(synapse, _synapse_tensors(layer, synapse), lambda: sample_weights(layer, samples),
                          ("samples", samples))


@_outside_compiled_models
def sampled_product(layer: nn.Module, x: Tensor, samples: int) -> Tensor:
    """:func:`sampled_forward` without the layer's output gain: what a layer's own ``forward`` computes on
    ``samples`` weight samples (calling the layer then applies the gain by its forward hook).

    Example:
        >>> layer = make_bayesian(torch.nn.Linear(3, 2), "bimu", scale=None)
        >>> torch.equal(sampled_product(layer.eval(), torch.ones(1, 3), 2), sampled_forward(layer, torch.ones(1, 3), 2))
        True
    """
    if not is_whole(samples, 1):
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    try:
        return _product_of_samples(layer, x, samples)
    except RuntimeError:  # (diagnosed only where the product failed: the passing path pays nothing)
        dtype = next((p.dtype for p in layer.parameters() if p.is_floating_point()), None)
        if dtype is None or x.dtype == dtype or torch.is_autocast_enabled(x.device.type):
            raise
        raise ValueError(f"x must be {dtype}, the dtype of the layer's weights, got {x.dtype}: convert it with "
                         f"x.to({dtype}) (or the model with model.to(x.dtype), or run it under torch.autocast)"
                         ) from None


def _product_of_samples(layer: nn.Module, x: Tensor, samples: int) -> Tensor:
    """:func:`sampled_product` of a checked ``samples`` and tensor ``x``."""
    if isinstance(layer, nn.Linear):
        if x.dim() not in (2, 3) or x.shape[-1] != layer.in_features or (x.dim() == 3 and x.shape[0] != samples):
            raise ValueError(f"x must have shape (B, in={layer.in_features}) or (samples={samples}, B, "
                             f"in={layer.in_features}), got {tuple(x.shape)}")
        shared = x.dim() == 2
        if shared:
            x = x.expand(samples, *x.shape)
        synapse = _parametrization(layer)
        if synapse is not None and synapse.training and x.shape[1] == 1 and torch.is_grad_enabled():
            tensors = _synapse_tensors(layer, synapse)
            # the samples are the key's: inside binarized_once one key, so the same samples at every time step
            key = reuse_in_block(synapse, tensors, lambda: draw_key(tensors[0].device), ("key", samples))
            refuse_function_transform(_TRAINING_SAMPLES)
            out = _SampledRowProduct.apply(x, synapse, key, samples, *tensors)
        else:
            weights = _block_samples(layer, samples)
            if shared and _one_weight(weights):
                out = _samples_times_inputs(weights[:1], x[:1]).expand(samples, -1, -1).contiguous()
            else:
                out = _samples_times_inputs(weights, x)
        return out if layer.bias is None else out + layer.bias
    if isinstance(layer, _SAMPLED_CONVS):
        grouped = _grouped_conv_input(layer, x, samples)  # checked before any sample is drawn
        weights = _block_samples(layer, samples)
        if x.dim() == 2 + len(layer.kernel_size) and _one_weight(weights):
            one = _sampled_conv(layer, x, weights[:1], 1)  # (one sample's grouped input is x itself)
            return one.expand(samples, *one.shape[1:]).contiguous()
        return _sampled_conv(layer, grouped, weights, samples)
    raise ValueError(f"layer must be an nn.Linear, nn.Conv1d, nn.Conv2d or nn.Conv3d, got {type(layer).__name__}")


def _one_weight(weights: Tensor) -> bool:
    """Whether stacked weight samples are one weight seen ``S`` times (evaluation mode ``"mode"`` expands it), so
    that a shared input needs one product, not ``S`` equal ones (MESU's 10 samples: a tenth of the evaluation)."""
    return weights.shape[0] > 1 and weights.stride(0) == 0


class SampledForward:
    """Mixin for a Bayesian ``nn.Linear`` / ``nn.Conv2d`` subclass: its forward pass runs on ``self.samples`` weight
    samples (:func:`sampled_product`; output ``(S, B, ...)``), or is the layer's own (one sample) where ``samples``
    is ``None``. In evaluation mode it draws ``self.evaluation_samples`` instead where that is set (a larger
    ensemble for predictions than for training steps). ``bnn``'s Bayesian layers are made of it.

    Example:
        >>> class Sampled(SampledForward, torch.nn.Linear):
        ...     samples = 3
        >>> layer = make_bayesian(Sampled(4, 2), "mesu", evaluation="sample")
        >>> layer(torch.randn(5, 4)).shape
        torch.Size([3, 5, 2])
        >>> layer.evaluation_samples = 7
        >>> layer.eval()(torch.randn(5, 4)).shape
        torch.Size([7, 5, 2])
    """

    samples: int | None
    evaluation_samples: int | None = None
    forward_is_weight_product = True  # (each sample's output is W x + b: a learned output gain may scale it)

    def check_input(self, x: Tensor) -> None:
        """Refuse, in one line, an input the layer cannot take, before a sample is drawn; a layer class adds its own
        checks here (``bnn``'s Bayesian layers: features or channels, dtype, image size), not in ``forward``, which
        :class:`~metaspike.bayesian.FusedTrainingStep` recognizes as this one."""

    def drawn_samples(self) -> int | None:
        """The weight samples the next forward pass draws in the layer's mode (its outputs' leading dimension), or
        ``None`` for one sample and no sample dimension.

        Example:
            >>> class Sampled(SampledForward, torch.nn.Linear):
            ...     samples, evaluation_samples = 3, 7
            >>> Sampled(4, 2).drawn_samples(), Sampled(4, 2).eval().drawn_samples()
            (3, 7)
        """
        return self.samples if self.training or self.evaluation_samples is None else self.evaluation_samples

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        samples = self.drawn_samples()
        if samples is None:
            return super().forward(x)  # type: ignore[misc]
        if not self.training:
            self._refuse_equal_samples(samples)
        return sampled_product(self, x, samples)  # type: ignore[arg-type]  # the gain: by the forward hook

    def _refuse_equal_samples(self, samples: int) -> None:
        """The constructors' refusal of an ensemble under ``evaluation="mode"``, again where ``evaluation_samples`` or
        the synapse's ``evaluation`` was set since (as attributes): the ensemble would be that many equal outputs."""
        synapse = _parametrization(self)  # type: ignore[arg-type]
        if synapse is not None:
            _check_ensemble(self.evaluation_samples, synapse.evaluation)

    def extra_repr(self) -> str:
        """The layer's own settings, then its samples (what a resume compares: a run continued with other samples
        would be another network).

        Example:
            >>> class Sampled(SampledForward, torch.nn.Linear):
            ...     samples = 3
            >>> Sampled(4, 2).extra_repr()
            'in_features=4, out_features=2, bias=True, samples=3, evaluation_samples=None'
        """
        return f"{super().extra_repr()}, samples={self.samples}, evaluation_samples={self.evaluation_samples}"

    def _set_samples(self, samples: int | None, evaluation_samples: int | None, evaluation: str = "sample") -> None:
        """The constructors' checks: ``samples`` an int ``>= 1`` or ``None``; ``evaluation_samples`` too, and only
        with ``samples`` (a layer's output keeps its sample dimension in both modes), and more than one only where
        evaluation draws samples (``evaluation="mode"`` shows one weight: K equal copies of one output, silently)."""
        self.samples = check_samples(samples)
        if check_samples(evaluation_samples, "evaluation_samples") is not None and samples is None:
            raise ValueError("evaluation_samples needs samples: a layer of one sample (samples=None) has no sample "
                             "dimension to fill")
        _check_ensemble(evaluation_samples, evaluation)
        self.evaluation_samples = evaluation_samples


def drawn_samples(model: nn.Module) -> set[int]:
    """The weight-sample counts the sampled layers of ``model`` (:class:`SampledForward`) draw in their modes now: an
    empty set where none puts a sample dimension first.

    Example:
        >>> class Sampled(SampledForward, torch.nn.Linear):
        ...     samples = 3
        >>> drawn_samples(torch.nn.Sequential(Sampled(4, 2), torch.nn.Linear(2, 2)))
        {3}
    """
    drawn = (m.drawn_samples() for m in model.modules() if isinstance(m, SampledForward))
    return {s for s in drawn if s is not None}


def _check_ensemble(evaluation_samples: int | None, evaluation: str) -> None:
    """One ``ValueError`` where ``evaluation_samples`` asks for an ensemble of more than one sample of synapses whose
    ``evaluation`` is ``"mode"``: every sample would be the same weight, the ensemble that many equal outputs."""
    if evaluation_samples is not None and evaluation_samples > 1 and evaluation == "mode":
        raise ValueError(f"evaluation_samples={evaluation_samples} needs evaluation='sample': evaluation='mode' shows "
                         "every sample the same weight, so the ensemble would be that many equal outputs")


def _samples_times_inputs(weights: Tensor, x: Tensor) -> Tensor:
    """``(S, B, out)``: weight sample ``s`` ``(out, in)`` times its inputs ``x[s]`` ``(B, in)``, one batched product.

    ``(W xᵀ)ᵀ`` rather than ``x Wᵀ``: the weights' gradient, the large one, then comes out contiguous (``gᵀ x``) and
    the sample loops use it without a copy; the transposed output is the small side."""
    return torch.bmm(weights, x.transpose(1, 2)).transpose(1, 2)


_SAMPLED_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}  # by the number of spatial dimensions


def _grouped_conv_input(layer: nn.Conv1d | nn.Conv2d | nn.Conv3d, x: Tensor, samples: int) -> Tensor:
    """The input of :func:`_sampled_conv`, ``(B, S·C, *spatial)``, from a shared ``(B, C, *spatial)`` or a per-sample
    ``(S, B, C, *spatial)`` input (``spatial``: the layer's one, two or three dimensions)."""
    channels, spatial = layer.in_channels, len(layer.kernel_size)  # (layer.weight would draw a sample)
    if x.dim() not in (2 + spatial, 3 + spatial) or x.shape[-1 - spatial] != channels or (
            x.dim() == 3 + spatial and x.shape[0] != samples):
        names = ", ".join(("L",) if spatial == 1 else ("H", "W") if spatial == 2 else ("D", "H", "W"))
        raise ValueError(f"x must have shape (B, C={channels}, {names}) or (samples={samples}, B, C={channels}, "
                         f"{names}), got {tuple(x.shape)}")
    if x.dim() == 2 + spatial:
        return x.repeat(1, samples, *(1,) * spatial)
    return x.transpose(0, 1).flatten(1, 2)


def _sampled_conv(layer: nn.Conv1d | nn.Conv2d | nn.Conv3d, x: Tensor, weights: Tensor, samples: int) -> Tensor:
    """The ``S`` weight samples of a conv layer as ``S·groups`` groups of one convolution of the grouped input
    ``x`` (:func:`_grouped_conv_input`)."""
    padding: Any = layer.padding
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        padding = 0
    bias = None if layer.bias is None else layer.bias.repeat(samples)
    out = _CONV[len(layer.kernel_size)](
        x, weights.flatten(0, 1), bias, layer.stride, padding, layer.dilation, samples * layer.groups
    )
    return out.unflatten(1, (samples, -1)).transpose(0, 1)
