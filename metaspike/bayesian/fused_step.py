"""A whole batch-1 training step of a sequential Bayesian network as one compiled call.

At batch size 1 a MESU or BiMU step spends most of its time outside its arithmetic: in the Python of the layers,
autograd's engine and five calls of compiled loops (a torch profile of a 784-100-10 BiMU network's step with 5
weight samples, one thread of an AMD EPYC: about 0.8 ms of kernels in 2.8 ms). :class:`FusedTrainingStep` writes the forward pass, the
backward pass (by hand, for the few module kinds it knows) and the optimizer's update of such a network as one
function of tensors that ``torch.compile`` turns into one call: the weight samples, products, gradients and
updates run without Python between them, and the samples' weight gradients are summed where they are formed.

It computes what the ordinary step computes: the same weight samples (one key per Bayesian layer from torch's
generator, in the layers' order, as their forward passes draw them), the loss averaged over the samples, the
gradients of :mod:`~metaspike.bayesian.synapses` and the update of :class:`~metaspike.bayesian.optim.MESU` /
:class:`~metaspike.bayesian.optim.BiMU` with their rule that a step without data (every gradient zero) changes
nothing, and each updated tensor's ``step`` count. Sums run in another order, so results agree to float
rounding, not bit for bit. It does not write ``.grad``.

The network it takes (:func:`why_not_fused` says what stops one):

* an ``nn.Sequential`` (nested ones are flattened) whose modules before the first Bayesian layer have no
  trainable parameters (they run as they are, without gradients: ``Flatten``, a fixed standardisation);
* then Bayesian ``nn.Linear`` layers of one kind (:func:`~metaspike.bayesian.synapses.bayesianize` or ``bnn``'s
  Bayesian layers), without bias or output gain, all drawing the same number of weight samples, with
  ``nn.ReLU``, ``nn.Identity``, ``nn.LayerNorm`` without affine parameters over the last dimension, or a
  module registered by :func:`register_fused_activation` (``bnn.MagnitudeGate`` is) between them; the last
  module's output is the logits;
* trained in training mode by exactly one :class:`MESU` or :class:`BiMU` that holds the model's synapse
  tensors and nothing else (a torch learning-rate scheduler on it is fine: each step reads the groups' ``lr``);
  no hooks on the modules, the synapse tensors or the optimizer, no ``optimizer.step`` replaced by other code than a
  scheduler's, no second parametrization on a weight and no ``nn.Linear`` subclass with a ``forward`` of its own.

:func:`metaspike.training.train_epoch` uses it by itself at batch size 1 when the network qualifies and no
plugin, task mask or second process takes part.

Example:
    >>> from metaspike.bayesian import BiMU, bayesianize, bimu_parameters
    >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(6, 5, bias=False), torch.nn.ReLU(),
    ...                                       torch.nn.Linear(5, 3, bias=False)), "bimu", scale=None)
    >>> step = FusedTrainingStep(net, BiMU(bimu_parameters(net)))
    >>> loss = step(torch.randn(1, 6), torch.tensor([2]))
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from metaspike.bayesian.counter_noise import draw_keys
from metaspike.bayesian.functional import (
    _bimu_update_,
    _exp_pair,
    _mesu_update_,
    hyperparameter_names,
    update_scalars,
)
from metaspike.bayesian.optim import MESU, BiMU, _first_non_finite
from metaspike.bayesian.plain_optimizers import warn_of_synapse_tensors_before_step
from metaspike.bayesian.synapses import (
    _RELAXED_SAMPLES,
    BinaryWeight,
    SampledForward,
    _gaussian_row_gradients,
    _gaussian_sample,
    _integer_power,
    _parametrization,
    _relaxed_row_gradient,
    _relaxed_sample_tau1,
    _synapse_tensors,
)
from metaspike.checks import TrainingDiverged
from metaspike.compiled import LazyCompiled, compiling_disabled
from metaspike.gain import output_gain

__all__ = ["FusedTrainingStep", "why_not_fused", "register_fused_activation", "Activation"]


@dataclass(frozen=True)
class Activation:
    """An elementwise (or last-dimension) module of a fused step: ``forward(h)`` returns the output and what
    ``backward`` needs; ``backward(grad, h, out)`` returns the gradient with respect to ``h``. Subclass it for
    :func:`register_fused_activation`; instances are compared by value (they are part of the compiled step's
    structure), so keep their fields to numbers and strings.

    Example:
        >>> Activation().backward(torch.ones(2), torch.zeros(2), torch.zeros(2))
        tensor([1., 1.])
    """

    def forward(self, h: Tensor) -> Tensor:
        return h

    def backward(self, grad: Tensor, h: Tensor, out: Tensor) -> Tensor:
        return grad


@dataclass(frozen=True)
class _ReLU(Activation):
    def forward(self, h: Tensor) -> Tensor:
        return torch.relu(h)

    def backward(self, grad: Tensor, h: Tensor, out: Tensor) -> Tensor:
        return grad * (out > 0).to(grad.dtype)


@dataclass(frozen=True)
class _LayerNorm(Activation):
    """``nn.LayerNorm`` without affine parameters over the last dimension."""

    eps: float

    def forward(self, h: Tensor) -> Tensor:
        return F.layer_norm(h, h.shape[-1:], eps=self.eps)

    def backward(self, grad: Tensor, h: Tensor, out: Tensor) -> Tensor:
        centred = h - h.mean(-1, keepdim=True)
        inv_std = torch.rsqrt((centred * centred).mean(-1, keepdim=True) + self.eps)
        return inv_std * (grad - grad.mean(-1, keepdim=True) - out * (grad * out).mean(-1, keepdim=True))


def _layer_norm(module: nn.Module) -> Activation | str:
    affine = module.elementwise_affine or module.weight is not None or module.bias is not None
    if affine or len(module.normalized_shape) != 1:
        return "a LayerNorm with affine parameters or over more than the last dimension"
    return _LayerNorm(float(module.eps))


_ACTIVATIONS: dict[type[nn.Module], Callable[[nn.Module], Activation | str]] = {
    nn.ReLU: lambda module: _ReLU(),
    nn.Identity: lambda module: Activation(),
    nn.LayerNorm: _layer_norm,
}


def register_fused_activation(module_type: type[nn.Module], describe: Callable[[nn.Module], Activation | str],
                              replace: bool = False) -> None:
    """Let :class:`FusedTrainingStep` take modules of ``module_type`` (exactly that class) between Bayesian layers:
    ``describe(module)`` returns the module's :class:`Activation`, or a string saying why this one cannot be fused.
    The Activation's forward and backward stand for the module's own in every fused step of the process, so they must
    compute what the module does. A class that has a description (metaspike's for ``nn.ReLU``, ``nn.Identity`` and
    ``nn.LayerNorm``, ``bnn``'s for ``MagnitudeGate``, or one registered before) keeps it unless ``replace=True``;
    registering the same ``describe`` again changes nothing.

    Example:
        >>> @dataclass(frozen=True)
        ... class Square(Activation):
        ...     def forward(self, h): return h * h
        ...     def backward(self, grad, h, out): return 2 * h * grad
        >>> class SquareModule(torch.nn.Module):
        ...     def forward(self, x): return x * x
        >>> register_fused_activation(SquareModule, lambda module: Square())
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ValueError(f"module_type must be an nn.Module class, got {module_type!r}")
    if not callable(describe):
        raise ValueError(f"describe must be callable (module -> Activation), got {type(describe).__name__}")
    known = _ACTIVATIONS.get(module_type)
    if known is not None and known is not describe and not replace:
        where = f"{getattr(known, '__qualname__', known)} of {getattr(known, '__module__', '?')}"
        raise ValueError(f"{module_type.__name__} already has a fused description ({where}), which every fused step "
                         "of the process follows: pass replace=True to change it")
    _ACTIVATIONS[module_type] = describe


@dataclass(frozen=True)
class _Plan:
    """The static structure of a fused step (what the compiled function is specialised on)."""

    rule: str  # "bimu" or "mesu"
    samples: int
    sample_form: int  # BiMU: the relaxed sample's form (synapses._RELAXED_SAMPLES); MESU: 0
    shared_exp: bool  # BiMU at τ = 1 exactly: the sample and the update take exp(−2|λ|) from one loop
    stages: tuple[Activation | int, ...]  # an int: the index of a Bayesian layer
    clamps: tuple[bool, ...]  # MESU: per Bayesian layer, whether its group clips gradients
    scalar_names: tuple[str, ...]  # the names of functional.update_scalars, in the order of its values


_PLANS: dict[_Plan, _Plan] = {}
#: The plans whose step ran eagerly (past torch's limit of compiled variants): slower than autograd's step there.
_EAGER_PLANS: set[_Plan] = set()


def _modules(model: nn.Module) -> list[nn.Module]:
    out = []
    for module in model:
        out.extend(_modules(module) if type(module) is nn.Sequential else [module])
    return out


def _hook_count(module: nn.Module) -> int:
    """The forward and backward hooks on ``module`` itself."""
    return (len(module._forward_hooks) + len(module._forward_pre_hooks) + len(module._backward_hooks)
            + len(module._backward_pre_hooks))


def _tensor_hook_count(tensor: Tensor) -> int:
    """The gradient hooks on ``tensor`` (``register_hook``, ``register_post_accumulate_grad_hook``)."""
    return len(tensor._backward_hooks or ()) + len(getattr(tensor, "_post_accumulate_grad_hooks", None) or ())


def _global_hook_count() -> int:
    """The global module and optimizer hooks registered, but the step pre-hook of
    :func:`~metaspike.bayesian.plain_optimizers.watch_plain_optimizers`, which leaves MESU and BiMU alone."""
    ours = warn_of_synapse_tensors_before_step
    pre_hooks = [hook for hook in _global_optimizer_pre_hooks.values() if hook is not ours]
    return (len(pre_hooks) + len(_global_optimizer_post_hooks) + len(torch_module._global_forward_hooks)
            + len(torch_module._global_forward_pre_hooks) + len(torch_module._global_backward_hooks)
            + len(torch_module._global_backward_pre_hooks))


@dataclass
class _Analysis:
    plan: _Plan
    prefix: list[nn.Module]
    layers: list[nn.Module]
    activations: list[nn.Module]
    modules: list[nn.Module]  # all of the model's modules (for the fingerprint)
    synapses: list[nn.Module]  # the Bayesian layers' parametrizations
    tensors: list[tuple[Tensor, ...]]
    groups: list[dict[str, Any]]
    group_list: list[dict[str, Any]]  # (kept: the fingerprint compares its id)
    fingerprint: tuple[Any, ...]


def _module_state(module: nn.Module) -> tuple[Any, ...]:
    """What :func:`_fingerprint` compares of one module (made for every module at every step): its class, a
    ``forward`` replaced on it, its children, its parameters (a bias or norm weight given or taken away) and its
    hooks."""
    return (type(module), "forward" in vars(module), tuple(module._modules.values()),
            tuple(map(id, module._parameters.values())), _hook_count(module))


def _fingerprint(optimizer: Any, modules: list[nn.Module], activations: list[nn.Module], layers: list[nn.Module],
                 synapses: list[nn.Module], tensors: list[tuple[Tensor, ...]]) -> tuple[Any, ...]:
    """What the verdict of :func:`_analyse` depends on and a user may change between two steps (a module replaced,
    put in evaluation mode, hooked or given another temperature; a tensor frozen, hooked or moved to another dtype;
    the optimizer's groups replaced by ``load_state_dict``, hooked or its ``step`` wrapped), in a form that is
    cheap to make and compare at every step: ``modules`` are all of the model's modules (a module that gains a
    child is hooked or is a container already), ``synapses`` the Bayesian layers' parametrizations (whose mode
    decides what a layer draws; the optimizer's settings are compared apart)."""
    return (
        tuple(map(_module_state, modules)), tuple(s.training for s in synapses), _global_hook_count(),
        tuple(_describe(m) for m in activations),
        tuple(synapse.temperature if isinstance(synapse, BinaryWeight) else None for synapse in synapses),
        tuple(_samples(layer) for layer in layers),
        tuple((t.requires_grad, t.dtype, t.device, t.data_ptr(), _tensor_hook_count(t)) for layer in tensors
              for t in layer),
        id(optimizer.param_groups), tuple(id(g) for g in optimizer.param_groups),
        tuple(tuple(map(id, g["params"])) for g in optimizer.param_groups), "step" in vars(optimizer),
        len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks),
    )


def _describe(module: nn.Module) -> Activation | str:
    """The :class:`Activation` of a module between Bayesian layers, or why it cannot be fused."""
    describe = _ACTIVATIONS.get(type(module))
    if describe is None:
        return (f"a {type(module).__name__} between the Bayesian layers (fused: Bayesian Linear, ReLU, Identity, "
                "LayerNorm without affine, registered activations)")
    if "forward" in vars(module):
        return f"a {type(module).__name__} whose forward was replaced on the module itself"
    return describe(module)


def _refuse_optimizer(optimizer: Any) -> str | None:
    if type(optimizer) not in (BiMU, MESU):
        return f"the optimizer is a {type(optimizer).__name__}, not metaspike's MESU or BiMU"
    if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
        return "the optimizer has step hooks"
    step = vars(optimizer).get("step")
    if step is not None and not getattr(step, "_wrapped_by_lr_sched", False):  # (a torch scheduler's wrapper: fine)
        return "the optimizer's step is replaced on the optimizer itself"
    return None


_LINEAR_FORWARDS = (nn.Linear.forward, SampledForward.forward)


def _samples(layer: nn.Module) -> int:
    """The weight samples a Bayesian Linear layer's forward pass draws: ``samples`` of a :class:`SampledForward`
    layer, else one."""
    return (layer.samples or 1) if isinstance(layer, SampledForward) else 1


_GAIN_OR_BIAS = ("a Bayesian layer with a bias or an output gain (trained by a second optimizer; bayesianize(..., "
                 "scale=None) and bias=False make none)")


def _stages(modules: list[nn.Module], rule: str) -> tuple[list[Activation | int], list[nn.Module], list[nn.Module]] | str:
    """The stages of the modules from the first Bayesian layer on, the Bayesian layers and the other modules; or why
    they cannot be fused."""
    stages: list[Activation | int] = []
    layers: list[nn.Module] = []
    activations: list[nn.Module] = []
    width = modules[0].in_features if isinstance(modules[0], nn.Linear) else None
    for module in modules:
        synapse = _parametrization(module)
        if synapse is None:
            stage = _describe(module)
            if isinstance(stage, str):
                return stage
            if not isinstance(stage, Activation) or stage.__hash__ is None:
                return (f"the description of a {type(module).__name__} is a {type(stage).__name__}, not a frozen "
                        "dataclass subclassing Activation")
            if isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) != (width,):
                return f"a LayerNorm over {tuple(module.normalized_shape)} after {width} features"
            stages.append(stage)
            activations.append(module)
            continue
        if not isinstance(module, nn.Linear):
            return f"a Bayesian {type(module).__name__} (fused: Linear layers only)"
        if type(module).forward not in _LINEAR_FORWARDS or "forward" in vars(module):
            return f"a {type(module).__name__} with its own forward (fused: nn.Linear's or the sampled one)"
        if synapse.kind != rule:
            return f"a {synapse.kind!r} layer trained by the {rule} optimizer"
        if module.bias is not None or output_gain(module) is not None:
            return _GAIN_OR_BIAS
        if list(module.parametrizations) != ["weight"] or len(module.parametrizations.weight) != 1:
            return "a Bayesian layer with another parametrization beside its synapse"
        if not synapse.training:
            return "the model is in evaluation mode"
        if module.in_features != width:
            return f"a Linear taking {module.in_features} features after {width}"
        width = module.out_features
        stages.append(len(layers))
        layers.append(module)
    samples = {_samples(layer) for layer in layers}
    if len(samples) > 1:
        return "the Bayesian layers draw different numbers of weight samples"
    if len({getattr(_parametrization(layer), "temperature", None) for layer in layers}) > 1:
        return "the BiMU layers have different temperatures"
    return stages, layers, activations


def _groups(optimizer: Any, tensors: list[tuple[Tensor, ...]]) -> list[dict[str, Any]] | str:
    """Each layer's param group, where the optimizer holds exactly the layers' tensors, each layer's in one group
    and (MESU) each mean right before its width; or why not."""
    flat = [t for layer in tensors for t in layer]
    if len({id(t) for t in flat}) < len(flat):
        return "layers share weights (tied)"
    if any(not t.requires_grad for t in flat):
        return "a synapse tensor does not require gradients (frozen)"
    where = {id(p): (group, i) for group in optimizer.param_groups for i, p in enumerate(group["params"])}
    if set(where) != {id(t) for t in flat}:
        return "the optimizer's tensors are not exactly the model's synapse tensors"
    groups = []
    for layer in tensors:
        group, first = where[id(layer[0])]
        if any(where[id(t)] != (group, first + k) for k, t in enumerate(layer)):
            return "a layer's mean and width are not one pair of a param group"
        groups.append(group)
    return groups


def _clamps(rule: str, groups: list[dict[str, Any]]) -> tuple[bool, ...]:
    """Per layer, whether its group clips gradients (MESU's ``clamp_grad > 0``): the one setting the plan depends on."""
    return tuple(rule == "mesu" and group["clamp_grad"] > 0 for group in groups)


def _analyse(model: nn.Module, optimizer: Any) -> _Analysis | str:
    """The fused step's structure for ``model`` and ``optimizer``, or why there is none."""
    refused = _refuse_optimizer(optimizer)
    if refused:
        return refused
    if type(model) is not nn.Sequential:
        return f"the model is a {type(model).__name__}, not an nn.Sequential"
    if _global_hook_count():
        return "global module or optimizer hooks are registered"
    hooked = next((m for m in model.modules() if _hook_count(m)), None)
    if hooked is not None and output_gain(hooked) is not None:
        return _GAIN_OR_BIAS
    if hooked is not None:
        return f"a {type(hooked).__name__} has hooks"
    modules = _modules(model)
    first = next((i for i, m in enumerate(modules) if _parametrization(m) is not None), None)
    if first is None:
        return "the model has no Bayesian layer"
    prefix = modules[:first]
    if any(p.requires_grad for m in prefix for p in m.parameters()):
        return "a module before the first Bayesian layer has trainable parameters"
    found = _stages(modules[first:], optimizer.rule)
    if isinstance(found, str):
        return found
    stages, layers, activations = found
    tensors = [_synapse_tensors(layer, _parametrization(layer)) for layer in layers]
    if any(_tensor_hook_count(t) for layer in tensors for t in layer):
        return "a synapse tensor has gradient hooks"
    if len({(t.dtype, t.device) for layer in tensors for t in layer}) > 1:
        return "the synapse tensors have different dtypes or devices"
    groups = _groups(optimizer, tensors)
    if isinstance(groups, str):
        return groups
    synapse = _parametrization(layers[0])
    form = _integer_power(1.0 / synapse.temperature) if isinstance(synapse, BinaryWeight) else 0
    shared_exp = isinstance(synapse, BinaryWeight) and 1.0 / synapse.temperature == 1.0
    plan = _Plan(optimizer.rule, _samples(layers[0]), form, shared_exp, tuple(stages), _clamps(optimizer.rule, groups),
                 tuple(update_scalars(optimizer.rule, groups[0])))
    plan = _PLANS.setdefault(plan, plan)  # one object per structure: the compiled step's guards compare objects
    everything = list(model.modules())
    synapses = [_parametrization(layer) for layer in layers]
    return _Analysis(plan, prefix, layers, activations, everything, synapses, tensors, groups, optimizer.param_groups,
                     _fingerprint(optimizer, everything, activations, layers, synapses, tensors))


def why_not_fused(model: nn.Module, optimizer: Any) -> str | None:
    """Why :class:`FusedTrainingStep` cannot train ``model`` with ``optimizer``, or ``None`` if it can.

    Example:
        >>> from metaspike.bayesian import MESU, bayesianize, mesu_param_groups
        >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 2)), "mesu")
        >>> why_not_fused(net, MESU(mesu_param_groups(net)))[:46]
        'a Bayesian layer with a bias or an output gain'
    """
    found = _analyse(model, optimizer)
    return found if isinstance(found, str) else None


def _sample(plan: _Plan, tensors: Sequence[Tensor], key: Tensor, inv_tau: Tensor,
            pair: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """``(w, saved)``: the layer's ``S`` weight samples ``(S, out, in)`` and what its gradient needs (BiMU: the
    samples; MESU: the noise), drawn as :mod:`~metaspike.bayesian.synapses` draws them (``pair``: the layer's
    ``_exp_pair``, shaped as its weights, where the plan shares it)."""
    shape = (plan.samples, *tensors[0].shape)
    if plan.rule == "bimu":
        lam = tensors[0].reshape(1, -1)
        if pair is None:
            weight = _RELAXED_SAMPLES[plan.sample_form].fn(lam, key, plan.samples, inv_tau)
        else:  # (a shared pair: τ = 1)
            weight = _relaxed_sample_tau1(lam, key, plan.samples, inv_tau, tuple(t.reshape(1, -1) for t in pair))
        return weight.view(shape), weight.view(shape)
    weight, noise = _gaussian_sample(tensors[0].reshape(1, -1), tensors[1].reshape(1, -1), key, plan.samples)
    return weight.view(shape), noise.view(shape)


def _fused_step(plan: _Plan, x: Tensor, target: Tensor, keys: Tensor, tensors: list[list[Tensor]],
                scalars: list[Tensor], steps: list[list[Tensor]], inv_tau: Tensor) -> Tensor:
    """One training step (see the module docstring); returns the loss. ``x`` is ``(1, in)``, ``target`` ``(1,)``;
    ``scalars[i]`` holds layer ``i``'s update scalars (:func:`~metaspike.bayesian.functional.update_scalars`, in
    ``plan.scalar_names`` order) as a tensor of the weights' dtype, float32 at least (as the updates compute: a
    likelihood multiplier past 65,504 is infinite in float16)."""
    a = x  # the current activation: (1, in) for the first layer, then (S, n)
    saved: list[tuple[Any, ...]] = []  # per stage, what its backward needs
    # (on a CPU inductor stores a tensor that two loops read and that takes an exp: the update reads e and 1/(1 + e)
    # where it computed its own, and its loop went from 45 to 15 µs a step, 784-100-10, AMD EPYC Zen 5, one thread)
    pairs = [_exp_pair(layer[0]) if plan.shared_exp else None for layer in tensors]
    for stage in plan.stages:
        if isinstance(stage, int):
            weight, extra = _sample(plan, tensors[stage], keys[stage], inv_tau, pairs[stage])
            h = torch.matmul(weight, a.unsqueeze(-1).expand(plan.samples, -1, 1) if a.shape[0] == 1 else
                             a.unsqueeze(-1)).squeeze(-1)
            saved.append((a, weight, extra))
        else:
            h = stage.forward(a)
            saved.append((a, h))
        a = h
    logits = a  # (S, C)
    onehot = (torch.arange(logits.shape[-1], device=logits.device) == target).to(logits.dtype)
    log_p = logits.log_softmax(-1)
    loss = -(log_p * onehot).sum(-1).mean()
    grad = (log_p.exp() - onehot) / plan.samples
    grads: list[tuple[Tensor, ...]] = [()] * len(tensors)
    for stage, kept in zip(reversed(plan.stages), reversed(saved)):
        if isinstance(stage, int):
            a, weight, extra = kept
            if plan.rule == "bimu":  # (from the samples' weight gradients, (S, out, in), as the layers compute them)
                grads[stage] = (_relaxed_row_gradient(grad, a, weight, inv_tau),)
            else:
                grads[stage] = _gaussian_row_gradients(grad, a, extra)
            if stage > 0:
                grad = torch.matmul(grad.unsqueeze(1), weight).squeeze(1)
        else:
            a, h = kept
            grad = stage.backward(grad, a, h)
    any_data = torch.stack([(g != 0).any() for layer in grads for g in layer]).any()
    apply = any_data & torch.isfinite(loss)
    for layer, (layer_tensors, layer_grads, values) in enumerate(zip(tensors, grads, scalars)):
        layer_scalars = dict(zip(plan.scalar_names, values.unbind()))
        new = [t.clone() for t in layer_tensors]
        if plan.rule == "bimu":
            _bimu_update_(new[0], layer_grads[0], **layer_scalars, pair=pairs[layer])
        else:
            _mesu_update_(new[0], new[1], *layer_grads, **layer_scalars, clamp=plan.clamps[layer])
        for t, n in zip(layer_tensors, new):
            t.copy_(torch.where(apply, n, t))
    for count in (c for layer in steps for c in layer):  # (on the CPU, as the optimizers keep them, on any device)
        count.add_(apply.to(device=count.device, dtype=count.dtype))
    # BiMU's samples are returned, so stored once: inductor may otherwise recompute one, hash and all, in every loop
    # that reads it. (MESU's loops read the stored noise and recompute μ + σε, which costs less than storing it.)
    return loss, [kept[1] for kept, stage in zip(saved, plan.stages) if isinstance(stage, int) and plan.rule == "bimu"]


# Inductor stores a computed tensor in memory once it has read more than ``realize_acc_reads_threshold`` buffers
# (default 8), else it recomputes it inside each loop that reads it. A LayerNorm's backward per-row factor reads 7
# (its sums and means), and inlined into the first layer's (out, in) weight-gradient loop it was recomputed, two
# square roots and four divisions, for every 16 weights: 36 of a BiMU step's 141 µs of loops (784-100-10, one
# weight sample, one thread of an AMD EPYC Zen 5). At 6 it is stored once per row: the same arithmetic, faster.
# ``size_asserts`` off: the generated code would check each input's sizes and strides at every call (about 8 µs of a
# 0.21 ms batch-1 step there), which the compiled function's guards have checked already.
_compiled_fused_step = LazyCompiled(_fused_step, "fused batch-1 Bayesian training step",
                                    options={"realize_acc_reads_threshold": 6, "size_asserts": False})


class FusedTrainingStep:
    """One batch-1 training step of ``model`` with ``optimizer`` (its :class:`MESU` or :class:`BiMU`) as one
    compiled call (see the module docstring for what it takes and computes).

    Every call first compares what a user may change between steps (modules replaced, modes, hooks,
    temperatures, frozen or converted tensors, the optimizer's groups and settings) with what the step was made
    for, and takes them into account, or raises if the model no longer qualifies.

    Args:
        model: the network (an ``nn.Sequential``: :func:`why_not_fused` says what qualifies).
        optimizer: its MESU or BiMU optimizer.

    Raises:
        ValueError: naming what keeps the pair from a fused step.

    Example:
        >>> from metaspike.bayesian import MESU, bayesianize, mesu_param_groups
        >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False)), "mesu")
        >>> step = FusedTrainingStep(net, MESU(mesu_param_groups(net)))
        >>> float(step(torch.randn(1, 4), torch.tensor([1]))) > 0
        True
    """

    def __init__(self, model: nn.Module, optimizer: Any, _analysis: _Analysis | None = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self._analysis = self._analyse() if _analysis is None else _analysis
        self._setting_names = hyperparameter_names(optimizer.rule)  # (not its defaults: torch adds keys there)
        self._scalars: list[tuple[tuple[Any, ...], Tensor]] = []  # per layer: its group's settings, their tensor
        self._inverse_temperature_cache: tuple[Any, Tensor | None] = (None, None)  # (1/τ, dtype, device), tensor
        for layer in self._analysis.tensors:
            for t in layer:
                t.grad = None  # (as zero_grad(set_to_none=True): the fused step writes none)

    @classmethod
    def where_possible(cls, model: nn.Module, optimizer: Any) -> FusedTrainingStep | None:
        """The fused step of ``model`` and ``optimizer``, or ``None`` where :func:`why_not_fused` names a reason
        (one analysis of the pair, where asking :func:`why_not_fused` first makes two).

        Example:
            >>> from metaspike.bayesian import MESU, bayesianize, mesu_param_groups
            >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 2)), "mesu")  # a bias: not fused
            >>> FusedTrainingStep.where_possible(net, MESU(mesu_param_groups(net))) is None
            True
        """
        found = _analyse(model, optimizer)
        return None if isinstance(found, str) else cls(model, optimizer, found)

    def runs_eagerly(self) -> bool:
        """Whether this step runs uncompiled: torch's compiler failed or is switched off
        (:func:`~metaspike.compiled.compiling_disabled`: ``TORCH_COMPILE_DISABLE=1``, ...), or this network's step
        came after the process's limit of compiled variants. Eagerly it is slower than the autograd step it replaces
        (measured on a 2-core AMD EPYC Zen 5: 4.4 against 1.2 ms a sample), so :func:`metaspike.training.train_epoch`
        takes that one instead.

        Example:
            >>> from metaspike.bayesian import MESU, bayesianize, mesu_param_groups
            >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False)), "mesu", scale=None)
            >>> FusedTrainingStep(net, MESU(mesu_param_groups(net))).runs_eagerly() in (True, False)
            True
        """
        return _compiled_fused_step.runs_eagerly() or self._analysis.plan in _EAGER_PLANS

    def _analyse(self) -> _Analysis:
        found = _analyse(self.model, self.optimizer)
        if isinstance(found, str):
            raise ValueError(f"this model and optimizer cannot take a fused step: {found}")
        return found

    def _refresh(self) -> None:
        """Make the analysis again where the model or the optimizer changed since it was made."""
        found = self._analysis
        if _fingerprint(self.optimizer, found.modules, found.activations, found.layers, found.synapses,
                        found.tensors) != found.fingerprint:
            self._analysis = self._analyse()
            self._scalars = []

    def __call__(self, x: Tensor, target: Tensor) -> Tensor:
        """Train on one sample ``x`` (a batch of 1, as the model takes it) of class ``target`` (an int64 tensor of
        shape ``(1,)``); return the loss (a 0-d tensor; the weights are unchanged if it is not finite)."""
        if not isinstance(x, Tensor) or x.shape[:1] != (1,):
            raise ValueError(f"x must be a batch of one sample (leading dimension 1), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if not isinstance(target, Tensor) or target.shape != (1,) or target.dtype != torch.int64:
            raise ValueError("target must be an int64 tensor of shape (1,), as cross-entropy takes class indices")
        self._refresh()
        scalars = self._scalar_tensors()  # (may make the plan again: MESU's clipping depends on a setting)
        label = int(target)
        self._check_labels(label, label)
        return self._step(x, target, scalars, [[t.detach() for t in layer] for layer in self._analysis.tensors],
                          check_input=True)

    def train_rows(self, x: Tensor, y: Tensor, order: Sequence[int], device: torch.device | str = "cpu",
                   after_step: Callable[[Tensor], None] | None = None) -> None:
        """Train on the rows ``order`` of a dataset ``(x, y)`` (``y`` int64 class indices), one step each, calling
        ``after_step(loss)`` after each (a loop's own checks and progress). What a step may meet is checked once,
        before the first (the model, the optimizer, the labels), except the optimizer's settings, which are read and
        checked again after each ``after_step`` call (it may step a per-sample learning-rate scheduler or set ``lr``);
        ``after_step`` changes nothing else (between calls of the step itself a hook, a scheduler or a hand may change
        anything, which each call checks).

        Example:
            >>> from metaspike.bayesian import BiMU, bayesianize, bimu_parameters
            >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(6, 3, bias=False)), "bimu", scale=None)
            >>> losses = []
            >>> FusedTrainingStep(net, BiMU(bimu_parameters(net))).train_rows(
            ...     torch.randn(4, 6), torch.tensor([0, 2, 1, 0]), [3, 0, 2], after_step=losses.append)
            >>> len(losses)
            3
        """
        if not (isinstance(x, Tensor) and isinstance(y, Tensor) and y.dtype == torch.int64 and y.dim() == 1
                and len(x) == len(y)):
            raise ValueError("x and y must be tensors of as many rows, y of int64 class indices")
        self._refresh()
        scalars = self._scalar_tensors()
        rows = list(order)
        if rows:
            self._check_labels(*(int(v) for v in torch.aminmax(y[torch.tensor(rows)])))
        tensors = [[t.detach() for t in layer] for layer in self._analysis.tensors]
        for k, i in enumerate(rows):
            loss = self._step(x[i : i + 1].to(device, non_blocking=True), y[i : i + 1].to(device, non_blocking=True),
                              scalars, tensors, check_input=k == 0)  # (every row has the first one's shape and dtype)
            if after_step is not None:
                after_step(loss)
                scalars = self._scalar_tensors()  # (made again only where after_step changed a setting)

    def _check_labels(self, low: int, high: int) -> None:
        """Labels from ``low`` to ``high`` are classes of the last layer's outputs (the compiled step reads no
        out-of-range index)."""
        classes = self._analysis.layers[-1].out_features  # (the activations keep the last dimension)
        if low < 0 or high >= classes:
            raise ValueError(f"target {low if low < 0 else high} is not a class of the model's {classes} outputs")

    def _step(self, x: Tensor, target: Tensor, scalars: list[Tensor], tensors: list[list[Tensor]],
              check_input: bool) -> Tensor:
        """One step on a checked model and optimizer and labels; ``check_input``: whether to check ``x`` (after the
        modules before the first Bayesian layer) and ``target`` against the model."""
        found = self._analysis
        first, weight = found.layers[0], found.tensors[0][0]
        with torch.no_grad():
            for module in found.prefix:
                x = module(x)
            if check_input:
                if x.shape != (1, first.in_features) or x.dtype != weight.dtype or x.device != weight.device:
                    raise ValueError(f"the first Bayesian layer takes a (1, {first.in_features}) {weight.dtype} tensor "
                                     f"on {weight.device}, got {tuple(x.shape)} {x.dtype} on {x.device} after the "
                                     "modules before it")
                if target.device != weight.device:
                    raise ValueError(f"target is on {target.device}, the model on {weight.device}")
            # (a row of a dataset is a view at some offset into it: the compiled step would specialise on views and
            # plain tensors, on offsets 0 and 1 and on one equal to a size, a variant each, and a few networks in one
            # process would reach torch's limit of variants)
            x, target = (t if t._base is None and t.storage_offset() == 0 else t.clone() for t in (x, target))
            keys = draw_keys((len(found.tensors),), weight.device)
            states = [[self.optimizer.state[t] for t in layer] for layer in found.tensors]
            made = [state for layer in states for state in layer if "step" not in state]
            for state in made:  # (removed again below if this step updates nothing, as the optimizers make none)
                state["step"] = torch.zeros((), dtype=torch.float32)
            loss, _ = _compiled_fused_step(found.plan, x, target, keys, tensors, scalars,
                                           [[state["step"] for state in layer] for layer in states],
                                           self._inverse_temperature(weight))
            if _compiled_fused_step.last_call_eager and not compiling_disabled():  # (switched off for a while: the
                _EAGER_PLANS.add(found.plan)  # plan compiles once it is switched on again)
            for state in made:
                if not state["step"]:
                    del state["step"]
            self.optimizer._opt_called = True  # (what a learning-rate scheduler's wrapper of step() records)
            return loss

    def check_weights(self) -> None:
        """Raise :class:`~metaspike.checks.TrainingDiverged` where a synapse tensor holds NaN or infinite values: steps
        on finite losses whose settings multiply past what the dtype holds. A NaN weight makes the next step's loss
        NaN (a step on it changes nothing); after the last step of a run nothing would tell, so
        :func:`~metaspike.training.train_epoch` checks once per epoch (at every step it would cost a pass over the
        weights).

        Example:
            >>> from metaspike.bayesian import BiMU, bayesianize, bimu_parameters
            >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False)), "bimu", scale=None)
            >>> step = FusedTrainingStep(net, BiMU(bimu_parameters(net)))
            >>> step.check_weights()  # nothing to say
        """
        found = self._analysis
        tensors = [t.detach() for layer in found.tensors for t in layer if not t.is_meta]
        k = _first_non_finite(tensors)
        if k is not None:
            raise TrainingDiverged(f"the fused {found.plan.rule} steps left NaN or infinite values in a synapse tensor "
                                   f"of shape {tuple(tensors[k].shape)} from finite losses: the optimizer's settings "
                                   f"scale the update past what {tensors[k].dtype} holds; lower them")

    def _inverse_temperature(self, weight: Tensor) -> Tensor:
        """``1/τ`` of the BiMU layers (1 for MESU) as a 0-d tensor of the weights' dtype, made again only when it
        changes (a compiled call converts a Python float argument to a tensor at every call)."""
        synapse = self._analysis.synapses[0]
        value = 1.0 / synapse.temperature if isinstance(synapse, BinaryWeight) else 1.0
        key = (value, weight.dtype, weight.device)
        if self._inverse_temperature_cache[0] != key:
            self._inverse_temperature_cache = (key, torch.tensor(value, dtype=weight.dtype, device=weight.device))
        return self._inverse_temperature_cache[1]

    def _scalar_tensors(self) -> list[Tensor]:
        """Each layer's update scalars as a tensor (float32 at least), made again only when the settings of its group
        change (and the plan with them where MESU's clipping is switched on or off)."""
        found = self._analysis
        settings = [tuple(group[name] for name in self._setting_names) for group in found.groups]
        if [kept for kept, _ in self._scalars] != settings:
            if _clamps(found.plan.rule, found.groups) != found.plan.clamps:
                self._analysis = found = self._analyse()
            self._scalars = [(setting, torch.tensor(list(update_scalars(found.plan.rule, group).values()),
                                                    dtype=torch.promote_types(layer[0].dtype, torch.float32),
                                                    device=layer[0].device))
                             for setting, group, layer in zip(settings, found.groups, found.tensors)]
        return [values for _, values in self._scalars]
