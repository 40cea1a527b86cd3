"""The registry of model kinds a run can use, so that any run can be rebuilt (and resumed) from its config.

A kind says how the model is built and which optimizer trains it:

* ``"bnn"``: the paper's binarized MLP (:class:`bnn.MLP`, BatchNorm), trained by
  :class:`metaspike.optim.MetaplasticAdam`;
* ``"bnn-layernorm"``: the same binary layers with ``LayerNorm`` without affine parameters instead of
  BatchNorm, so it trains on one sample at a time (MetaplasticAdam);
* ``"mlp"``: a full-precision ReLU MLP without biases trained by plain SGD (a lower reference);
* ``"bimu"``: binary Bayesian synapses (:class:`bnn.BinaryBayesianLinear`, LayerNorm without affine
  after each layer, 0/1 magnitude-gate activations, :class:`bnn.MagnitudeGate`) trained by
  :class:`metaspike.bayesian.BiMU` with the authors' settings for this network (:data:`BIMU_SETTINGS`) and
  evaluated on Bernoulli weight samples; at batch size 1 it learns a task slowly (about 35 % after 1,000
  samples with ``--standardize``, near chance after 300; README) and forgets it slowly: a long-stream model;
* ``"mesu"``: Gaussian Bayesian synapses (:class:`bnn.BayesianLinear`, ReLU) trained by
  :class:`metaspike.bayesian.MESU` with :data:`MESU_SETTINGS`;
* the Bayesian settings are per training sample, scaled to the run's batch size
  (:func:`metaspike.bayesian.settings_for_batch`);
* every spiking neuron model of :mod:`metaspike.snn` (built with float synapses and turned binary by
  :func:`metaspike.binarize`), trained by MetaplasticAdam;
* the same spiking models with BiMU synapses, ``"<neuron>+bimu"`` (e.g. ``"leaky+bimu"``: built with
  :func:`metaspike.bayesianize`, a learned gain per output channel), trained by BiMU for the synapses and
  Adam for the gains (:class:`metaspike.ChainedOptimizer`, :data:`SPIKING_BIMU_SETTINGS`).

Adding a kind = one builder ``(hidden, input_shape, classes, num_steps) -> nn.Module`` and one line in
``_KINDS`` (spiking neuron models are added in :mod:`metaspike.snn.neurons` and appear here by themselves).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from metaspike.chained import ChainedOptimizer
from metaspike.checks import is_finite_number, unknown_name
from metaspike.continual.baselines import BASELINE_STRENGTHS

__all__ = ["available_models", "is_spiking", "build_model", "describe_model", "optimizer_kind", "uses_batchnorm",
           "is_builtin", "weight_layer_count", "build_optimizer", "published_settings", "OPTIMIZER_KINDS", "BIMU_SETTINGS", "MESU_SETTINGS", "SPIKING_BIMU_SETTINGS",
           "BIMU_SUFFIX", "BAYESIAN_OPTIMIZERS", "SAMPLED_EVALUATION", "Standardize", "DEFAULT_LR",
           "OPTIMIZER_SETTINGS", "takes_setting",
           "has_unconsolidated_parameters"]

#: BiMU's settings for a 784-100-10 network with the 0/1 "reverse gate" activation on 100 permuted-MNIST tasks at
#: batch size 1 (the activation appendix of Cottart et al. 2026; its code's bimu-gate configuration). They are tuned
#: for that activation: with sign activations the same settings reached a mean of 41.7 % instead of 59.5 % over
#: our 100-task stream (seed 1).
BIMU_SETTINGS: dict[str, float] = {"likelihood_multiplier": 161.3, "kl_multiplier": 3.76, "lr_max": 0.0023,
                                   "N": 700, "lr": 4.9}
#: MESU's settings for the long permuted-MNIST stream (Bonnet et al. 2025 family of runs).
MESU_SETTINGS: dict[str, float] = {"lr_mu": 1.6, "lr_sigma": 2.1, "sigma_prior": 0.3, "N": 600_000,
                                   "clamp_grad": 0.36}
#: Weight samples per step, as in the authors' long-stream settings; the first Bayesian layer draws them and the
#: output is ``(samples, batch, classes)``: the loss is the mean over samples, predictions average the samples'
#: class log-probabilities (:func:`metaspike.training.predictions`).
BIMU_WEIGHT_SAMPLES = 5
MESU_WEIGHT_SAMPLES = 10
#: What trains each kind: the 2021 rule, plain SGD, or a Bayesian optimizer.
OPTIMIZER_KINDS = ("metaplastic-adam", "sgd", "bimu", "mesu", "bimu+adam")
#: Each gradient optimizer's learning rate where none is given. Plain SGD (the ``mlp`` kind) takes a step of
#: lr x gradient, where Adam takes about lr per weight: at 0.005 the 784-512-512-10 MLP reached 70 % on its first
#: permuted-mnist5k task after 20 epochs, at 0.05 90 % (batch size 100, seed 1, AMD EPYC).
DEFAULT_LR = {"metaplastic-adam": 0.005, "sgd": 0.05}
#: Under plain SGD a quadratic penalty of curvature ``k`` takes steps of ``lr·k``, which diverge past 2 where Adam's
#: are bounded by ``lr`` (:mod:`metaspike.penalty_stability`); EWC's penalty sums one term per earlier task, so its
#: curvature is ``λ·Σ F`` over the tasks before. Measured on ``mlp`` at lr 0.05 (AMD EPYC Zen 5): a task's largest
#: Fisher value is about 0.04 at 784-512-512-10 on permuted mnist5k (EWC λ 1000 and 5000 stopped at task 2, λ 200
#: over 10 tasks at task 9) and 0.8 at 784-16-16-10, so ``λ·lr·(tasks before)`` = 2 follows Fisher values up to 1:
#: λ 20 on the default stream (3 tasks: ACC 87.1 against 86.0 without, seed 1; λ 200 gave 88.5 there but fails on
#: narrow networks).
SGD_PENALTY_BUDGET = 2.0


def default_baseline_strength(baseline: str, kind: str, lr: float | None, tasks: int,
                              gamma: float | None = None) -> float:
    """A baseline's strength where none is given, for a model trained by optimizer ``kind``: the paper's
    (:data:`metaspike.continual.baselines.BASELINE_STRENGTHS`) under Adam and for SI; under plain SGD EWC's kinds take
    ``SGD_PENALTY_BUDGET / (lr · the tasks their penalty sums)`` (two significant digits, rounded down), which keeps
    SGD's step on the penalty stable over the whole stream where no Fisher value passes 1 (EWC-Online with decay
    γ < 1 sums at most ``1 / (1 − γ)``); a narrow network's may, and its run is refused with the strength that
    follows it (:mod:`metaspike.penalty_stability`).

    Example:
        >>> default_baseline_strength("ewc", "metaplastic-adam", 0.005, 10)
        5000.0
        >>> [default_baseline_strength("ewc", "sgd", 0.05, tasks) for tasks in (2, 3, 10)]
        [40.0, 20.0, 4.4]
        >>> default_baseline_strength("ewc-online", "sgd", 0.05, 10, gamma=0.5)
        20.0
    """
    default = BASELINE_STRENGTHS[baseline][1]
    if kind != "sgd" or baseline == "si" or lr is None or lr <= 0:
        return default
    summed = max(tasks - 1, 1)
    if baseline == "ewc-online" and gamma is not None and gamma < 1:
        summed = min(summed, 1 / (1 - gamma))
    return floor_to_two_digits(SGD_PENALTY_BUDGET / (lr * summed))


def floor_to_two_digits(value: float) -> float:
    """``value`` (positive) rounded down to two significant digits: a strength named by a run, never past a bound.

    Example:
        >>> floor_to_two_digits(28.57), floor_to_two_digits(0.0999), floor_to_two_digits(0.3)
        (28.0, 0.099, 0.3)
    """
    scale = 10.0 ** (math.floor(math.log10(value)) - 1)
    return float(f"{math.floor(value / scale * (1 + 1e-12)) * scale:.2g}")  # (0.3 / 0.01 is 29.999...: 30)


#: The settings of the gradient optimizers, each with the optimizer kinds that take it; a run of any other kind
#: records ``None`` for it (the Bayesian optimizers run with their published settings).
OPTIMIZER_SETTINGS: dict[str, tuple[str, ...]] = {"meta": ("metaplastic-adam",), "rule": ("metaplastic-adam",),
                                                  "lr": tuple(DEFAULT_LR), "weight_decay": tuple(DEFAULT_LR)}
#: The optimizer kinds of models with Bayesian synapses (they take a memory window ``N``).
BAYESIAN_OPTIMIZERS = ("bimu", "mesu", "bimu+adam")
#: Suffix of a spiking model kind with BiMU synapses (``"leaky+bimu"``).
BIMU_SUFFIX = "+bimu"
#: The kinds that predict from weight samples in evaluation (their ensemble size is ``--eval-samples``).
SAMPLED_EVALUATION = ("bimu",)
#: BiMU in the spiking models, per training sample (a run scales them to its batch size,
#: :func:`metaspike.bayesian.settings_for_batch`). Chosen on two permuted digits tasks (Leaky, 64 hidden, 4 steps, batch 50, 3 epochs):
#: task 1 kept within 0.3-4.1 points where plain binary synapses lost 5-26 (3 seeds, AMD EPYC).
SPIKING_BIMU_SETTINGS: dict[str, float] = {"likelihood_multiplier": 160.0, "kl_multiplier": 3.76, "lr_max": 1.0,
                                           "N": 250_000, "lr": 4.9}
#: Temperature of the relaxed training sample in the spiking BiMU models (closer to ±1 than τ = 1, which the
#: membrane thresholds need: τ = 1 learned task 1 to 66-71 % where τ = 0.5 reached 76-86 %).
SPIKING_BIMU_TEMPERATURE = 0.5
#: Adam's learning rate for the learned gains of the spiking BiMU models (5e-3 let the gains drift across tasks
#: and forget: task 1 lost 17-30 points).
SPIKING_GAIN_LR = 5e-4


class Standardize(nn.Module):
    """``(x − mean) / std`` with fixed scalars (a training set's pixel statistics), as the first module of a
    model (``--standardize``); ``mean`` and ``std`` are buffers, so checkpoints carry them.

    ``mean`` and ``std`` are numbers, or tensors or numpy arrays holding one number (``x.mean()``); per-feature
    vectors are refused.

    Example:
        >>> Standardize(0.5, 0.25)(torch.ones(1, 2))
        tensor([[2., 2.]])
        >>> Standardize(torch.tensor([0.5, 0.2]), 0.25)
        Traceback (most recent call last):
        ...
        ValueError: Standardize's mean must be a scalar (one number for every input value), got a Tensor of shape [2]; for per-feature statistics put your own module computing (x - mean) / std in front of the model
    """

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        mean, std = _standardize_scalar("mean", mean), _standardize_scalar("std", std)
        if std <= 0:
            raise ValueError(f"Standardize's std must be > 0 (it divides), got {std!r}")
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={float(self.mean):.4g}, std={float(self.std):.4g}"


def _standardize_scalar(name: str, value: Any) -> float:
    """:class:`Standardize`'s ``name`` argument as a float: a finite number, or a tensor or numpy array holding one;
    else a ``ValueError`` naming ``name`` and saying a scalar is expected."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if math.prod(value.shape) != 1:
            raise ValueError(f"Standardize's {name} must be a scalar (one number for every input value), got a "
                             f"{type(value).__name__} of shape {list(value.shape)}; for per-feature statistics put "
                             "your own module computing (x - mean) / std in front of the model")
        if isinstance(value, torch.Tensor) and value.is_meta:
            raise ValueError(f"Standardize's {name} is a tensor on the 'meta' device, which holds no value; give a "
                             "number")
        value = value.item()
    if not is_finite_number(value):
        raise ValueError(f"Standardize's {name} must be a finite number (a scalar), got {value!r}")
    return float(value)


def _sizes(hidden: Sequence[int], input_shape: Sequence[int], classes: int) -> list[int]:
    return [math.prod(input_shape), *hidden, classes]


def _stack(sizes: Sequence[int], layer: Callable[[int, int], nn.Module], norm: bool,
           activation: Callable[[], nn.Module]) -> nn.Sequential:
    """``Flatten`` then, per layer, ``layer`` [→ LayerNorm without affine] [→ activation between layers]."""
    modules: list[nn.Module] = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        modules.append(layer(n_in, n_out))
        if norm:
            modules.append(nn.LayerNorm(n_out, elementwise_affine=False))
        if i < len(sizes) - 2:
            modules.append(activation())
    model = nn.Sequential(*modules)
    model.sizes = tuple(sizes)  # type: ignore[assignment]
    return model


def _bnn_mlp(hidden: Sequence[int], input_shape: Sequence[int], classes: int, num_steps: int) -> nn.Module:
    from bnn import MLP

    return MLP(_sizes(hidden, input_shape, classes))


def _bnn_layernorm(hidden: Sequence[int], input_shape: Sequence[int], classes: int, num_steps: int) -> nn.Module:
    from bnn.layers import BinaryLinear, SignActivation

    return _stack(_sizes(hidden, input_shape, classes), BinaryLinear, True, SignActivation)


def _float_mlp(hidden: Sequence[int], input_shape: Sequence[int], classes: int, num_steps: int) -> nn.Module:
    return _stack(_sizes(hidden, input_shape, classes), lambda i, o: nn.Linear(i, o, bias=False), False, nn.ReLU)


def _bimu_mlp(hidden: Sequence[int], input_shape: Sequence[int], classes: int, num_steps: int) -> nn.Module:
    from bnn import BinaryBayesianLinear
    from bnn.layers import MagnitudeGate

    def layer(n_in: int, n_out: int) -> nn.Module:
        return BinaryBayesianLinear(n_in, n_out, samples=BIMU_WEIGHT_SAMPLES, evaluation="sample")

    return _stack(_sizes(hidden, input_shape, classes), layer, True, MagnitudeGate)


def _mesu_mlp(hidden: Sequence[int], input_shape: Sequence[int], classes: int, num_steps: int) -> nn.Module:
    from bnn import BayesianLinear

    layer = lambda n_in, n_out: BayesianLinear(n_in, n_out, samples=MESU_WEIGHT_SAMPLES)  # noqa: E731
    return _stack(_sizes(hidden, input_shape, classes), layer, False, nn.ReLU)


class _Kind(NamedTuple):
    build: Callable[..., nn.Module]
    optimizer: str
    batchnorm: bool
    description: str


_KINDS: dict[str, _Kind] = {
    "bnn": _Kind(_bnn_mlp, "metaplastic-adam", True, "bnn.MLP({sizes})"),
    "bnn-layernorm": _Kind(_bnn_layernorm, "metaplastic-adam", False,
                           "binary MLP {sizes}, LayerNorm without affine, sign activations"),
    "mlp": _Kind(_float_mlp, "sgd", False, "float MLP {sizes}, no biases, ReLU, SGD"),
    "bimu": _Kind(_bimu_mlp, "bimu", False,
                  "BiMU binary Bayesian MLP {sizes}, LayerNorm without affine, 0/1 magnitude-gate activations, "
                  "evaluated on Bernoulli weight samples"),
    "mesu": _Kind(_mesu_mlp, "mesu", False, "MESU Gaussian Bayesian MLP {sizes}, ReLU"),
}


def _spiking_kinds() -> list[str]:
    from metaspike.snn.neurons import available_neurons

    return [kind for neuron in available_neurons() for kind in (neuron, neuron + BIMU_SUFFIX)]


def available_models() -> list[str]:
    """Model kinds a run can use.

    Example:
        >>> available_models()[:5]
        ['alpha', 'alpha+bimu', 'bimu', 'bnn', 'bnn-layernorm']
    """
    return sorted([*_KINDS, *_spiking_kinds()])


def _check_kind(kind: str) -> None:
    if kind not in _KINDS and not is_spiking(kind):
        raise ValueError(unknown_name("model", kind, available_models()))


def is_spiking(kind: str) -> bool:
    """Whether ``kind`` is a spiking neuron model (its forward pass loops over time steps).

    Example:
        >>> is_spiking("leaky"), is_spiking("bnn")
        (True, False)
    """
    return kind in _spiking_kinds()


def is_builtin(kind: str) -> bool:
    """Whether metaspike builds models of ``kind`` itself (not a neuron model the user registered).

    Example:
        >>> is_builtin("bnn"), is_builtin("leaky+bimu")
        (True, True)
    """
    from metaspike.snn.neurons import BUILTIN_NEURONS

    return kind in _KINDS or kind.removesuffix(BIMU_SUFFIX) in BUILTIN_NEURONS


def weight_layer_count(kind: str, hidden: Sequence[int]) -> int | None:
    """How many weight layers a model of ``kind`` with these ``hidden`` widths has: ``len(hidden) + 1`` for the kinds
    metaspike builds itself, ``None`` for a neuron model registered by the user (counted only once it is built).

    Example:
        >>> weight_layer_count("bnn", [512, 512]), weight_layer_count("leaky+bimu", [100])
        (3, 2)
    """
    return len(hidden) + 1 if is_builtin(kind) else None


def optimizer_kind(kind: str) -> str:
    """Which of :data:`OPTIMIZER_KINDS` trains model ``kind``.

    Example:
        >>> optimizer_kind("bnn"), optimizer_kind("bimu"), optimizer_kind("leaky"), optimizer_kind("leaky+bimu")
        ('metaplastic-adam', 'bimu', 'metaplastic-adam', 'bimu+adam')
    """
    _check_kind(kind)
    if kind in _KINDS:
        return _KINDS[kind].optimizer
    return "bimu+adam" if kind.endswith(BIMU_SUFFIX) else "metaplastic-adam"


def published_settings(kind: str) -> dict[str, float] | None:
    """The per-sample settings of the Bayesian optimizer that trains model ``kind`` (``None`` for other kinds).

    Example:
        >>> published_settings("mesu")["N"], published_settings("bnn")
        (600000, None)
    """
    which = optimizer_kind(kind)
    return {"bimu": BIMU_SETTINGS, "mesu": MESU_SETTINGS, "bimu+adam": SPIKING_BIMU_SETTINGS}.get(which)


@functools.cache
def has_unconsolidated_parameters(kind: str, besides_batchnorm: bool = False) -> bool:
    """Whether model ``kind`` has parameters besides its synapses (biases, learned gains, a normalisation's scale and
    shift, neuron parameters: :func:`metaspike.continual.unconsolidated_parameters`), and ``besides_batchnorm`` its
    BatchNorm's scale and shift (which a run with per-task BatchNorm keeps per task), which ``--freeze-unconsolidated``
    freezes; found on a small model of the kind, once per kind (a kind whose small model cannot be built is taken to
    have some, and its run finds out).

    Example:
        >>> has_unconsolidated_parameters("bnn"), has_unconsolidated_parameters("bnn", True)
        (True, False)
    """
    from metaspike.continual.batchnorm import batchnorm_parameters
    from metaspike.continual.freezing import unconsolidated_parameters

    _check_kind(kind)
    with torch.random.fork_rng(devices=[]):  # (the model's initialisation draws nothing from the run's generator)
        try:
            model = build_model(kind, [8], (1, 4, 4), 2)
        except Exception:  # (a user's registered model may need other sizes: the run checks its own model)
            return True
    kept = {id(p) for p in batchnorm_parameters(model).values()} if besides_batchnorm else set()
    return any(id(p) not in kept for p in unconsolidated_parameters(model))


def uses_batchnorm(kind: str) -> bool:
    """Whether model ``kind`` normalises with BatchNorm (then it cannot train on batches of one sample).

    Example:
        >>> uses_batchnorm("bnn"), uses_batchnorm("bnn-layernorm")
        (True, False)
    """
    _check_kind(kind)
    return kind in _KINDS and _KINDS[kind].batchnorm


def build_model(kind: str, hidden: Sequence[int], input_shape: Sequence[int], classes: int, num_steps: int = 8) -> nn.Module:
    """A classifier of ``kind``: ``[B, *input_shape] -> [B, classes]`` logits (``[S, B, classes]`` for the
    Bayesian kinds, one row per weight sample).

    Example:
        >>> build_model("bnn", [64], (1, 28, 28), 10).sizes
        (784, 64, 10)
        >>> build_model("bimu", [64], (1, 28, 28), 10)(torch.rand(1, 1, 28, 28)).shape
        torch.Size([5, 1, 10])
    """
    _check_kind(kind)
    if kind in _KINDS:
        return _KINDS[kind].build(hidden, input_shape, classes, num_steps)
    import metaspike
    from metaspike.snn.neurons import NetSpec, build_neuron_model

    spec = NetSpec(input_shape=tuple(input_shape), hidden=tuple(hidden), classes=classes, num_steps=num_steps)
    if kind.endswith(BIMU_SUFFIX):
        network = build_neuron_model(kind.removesuffix(BIMU_SUFFIX), spec)
        return metaspike.bayesianize(network, "bimu", temperature=SPIKING_BIMU_TEMPERATURE)
    return metaspike.binarize(build_neuron_model(kind, spec))


def takes_setting(model: str, key: str) -> bool:
    """Whether model kind ``model``'s optimizer takes the setting ``key`` of :data:`OPTIMIZER_SETTINGS`.

    Example:
        >>> takes_setting("mlp", "lr"), takes_setting("mlp", "meta"), takes_setting("bimu", "lr")
        (True, False, False)
    """
    return optimizer_kind(model) in OPTIMIZER_SETTINGS[key]


def build_optimizer(kind: str, model: nn.Module, lr: float | None = None, meta: float | Sequence[float] = 0.0,
                    rule: str = "tanh", weight_decay: float = 0.0, batch_size: int = 1,
                    memory_window: float | None = None) -> Optimizer | ChainedOptimizer:
    """The optimizer that trains a model of ``kind`` (see :func:`optimizer_kind`).

    ``lr``, ``meta``, ``rule`` and ``weight_decay`` set MetaplasticAdam; SGD takes ``lr`` (``None``: the optimizer's
    default, :data:`DEFAULT_LR`) and ``weight_decay``; BiMU and
    MESU use their published settings (:data:`BIMU_SETTINGS`, :data:`MESU_SETTINGS`; the spiking BiMU kinds
    :data:`SPIKING_BIMU_SETTINGS`) and ignore them. Those settings are per training sample and are scaled to
    ``batch_size`` (:func:`metaspike.bayesian.settings_for_batch`). ``memory_window``, if given, replaces the
    Bayesian optimizer's ``N``, in training samples (steps at batch size 1).

    Example:
        >>> net = build_model("bimu", [16], (1, 28, 28), 10)
        >>> type(build_optimizer("bimu", net)).__name__
        'BiMU'
    """
    which = optimizer_kind(kind)
    if which in DEFAULT_LR and lr is None:
        lr = DEFAULT_LR[which]
    if which == "metaplastic-adam":
        from metaspike.optim import MetaplasticAdam, param_groups

        return MetaplasticAdam(param_groups(model, meta), lr=lr, weight_decay=weight_decay, rule=rule)
    if which == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    from metaspike.bayesian import MESU, BiMU, bimu_parameters, mesu_param_groups, plain_parameters

    settings = bayesian_settings(kind, batch_size, memory_window)
    assert settings is not None  # (a Bayesian kind)
    if which == "bimu+adam":
        return ChainedOptimizer(BiMU(bimu_parameters(model), **settings),
                                torch.optim.Adam(plain_parameters(model), lr=SPIKING_GAIN_LR))
    if plain_parameters(model):
        raise ValueError(f"model kind {kind!r} must have Bayesian synapses only, found other parameters")
    return BiMU(bimu_parameters(model), **settings) if which == "bimu" else MESU(mesu_param_groups(model), **settings)


def bayesian_settings(kind: str, batch_size: int = 1, memory_window: float | None = None) -> dict[str, float] | None:
    """The settings the Bayesian optimizer of model ``kind`` runs with (its published per-sample ones, the memory
    window ``N`` replaced where given, scaled to ``batch_size``: :func:`metaspike.bayesian.settings_for_batch`), as a
    run records them; ``None`` for a kind without Bayesian synapses (its config's ``lr`` and ``meta`` say it).

    Example:
        >>> bayesian_settings("bimu", batch_size=1)["N"], bayesian_settings("bnn")
        (700.0, None)
    """
    published = published_settings(kind)
    if published is None:
        return None
    from metaspike.bayesian import settings_for_batch

    window = {} if memory_window is None else {"N": float(memory_window)}
    return settings_for_batch("mesu" if optimizer_kind(kind) == "mesu" else "bimu", {**published, **window}, batch_size)


def describe_model(kind: str, hidden: Sequence[int], input_shape: Sequence[int], classes: int, num_steps: int = 8) -> str:
    """A one-line description recorded in ``config.json``.

    Example:
        >>> describe_model("bnn", [64], (1, 28, 28), 10)
        'bnn.MLP([784, 64, 10])'
    """
    sizes = _sizes(hidden, input_shape, classes)
    if kind in _KINDS:
        return _KINDS[kind].description.format(sizes=sizes)
    # a registered builder shapes its network itself: what it was given, not the layers it made
    shape = f"{sizes}" if is_builtin(kind) else (f"built by a registered builder from input {list(input_shape)}, "
                                                  f"hidden {list(hidden)}, {classes} classes")
    if kind.endswith(BIMU_SUFFIX):
        return (f"{kind.removesuffix(BIMU_SUFFIX)} spiking network {shape}, {num_steps} time steps, BiMU binary "
                "Bayesian synapses with a learned gain per output")
    return f"{kind} spiking network {shape}, {num_steps} time steps, binary synapses"
