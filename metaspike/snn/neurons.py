"""Neuron-model registry: a name → a classifier ``[B, *input_shape] → logits`` with float synapses.

Every spiking entry is ``Flatten → [Linear → neuron] per layer`` inside a
:class:`~metaspike.snn.SpikingClassifier`; the output layer does not reset (its membrane is the
readout). Turn synapses binary with ``metaspike.binarize(model)``: its default learned gain per
output channel (:class:`metaspike.gain.OutputGain`) keeps each layer's input current at the float
layer's scale, so no hand-tuned gain layer is needed.

Adding a neuron model = one builder function ``(spec) -> nn.Module`` (most are :func:`spiking_mlp` with the
neuron's own module) and one line in ``_NEURONS``; a user's own model is added by :func:`register_neuron` (and
``metaspike train --import`` names the module that registers it on the command line).
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from metaspike.checks import defined_at, in_metaspike, is_number, is_whole, raised_at, registered_name, unknown_name
from metaspike.snn.backends import norse_method, require_norse, require_snntorch, surrogate
from metaspike.snn.recurrent import SelfRecurrentLIF, check_decay
from metaspike.snn.timeloop import SpikingClassifier, holds_norse_cells

__all__ = ["NetSpec", "available_neurons", "check_neurons", "build_neuron_model", "register_neuron", "spiking_mlp"]


@dataclass(frozen=True)
class NetSpec:
    """Size and time settings shared by every neuron model of a comparison.

    ``surrogate=None`` takes each backend's default (snnTorch: ``fast_sigmoid``, Norse:
    ``superspike``, self-recurrent layer: its own fast sigmoid); ``surrogate_parameters`` shape the named one
    (:func:`~metaspike.snn.surrogate_parameters` says which it takes, e.g. ``{"slope": 10}`` for ``fast_sigmoid``,
    ``{"alpha": 4}`` for ``atan``), checked when a model is built. ``beta`` is the membrane's decay per step of the
    snnTorch models (``alpha`` derives its two decays from it) and of the self-recurrent one; ``norse-lif`` and
    ``norse-lsnn`` keep Norse's time constants (``tau_mem_inv`` 200/s and ``tau_syn_inv`` 500/s at Norse's step of
    1 ms: decays of 0.8 and 0.5 per step, whatever ``beta``) and refuse a ``beta`` other than the default 0.9.
    ``readout="count"`` needs an output layer that fires: ``norse-lif``, ``norse-lsnn`` (a leaky integrator's
    voltage) and ``self-recurrent`` (threshold 1e4) refuse it.

    Example:
        >>> NetSpec(hidden=(100,), beta=0.8).beta
        0.8
        >>> NetSpec(surrogate="atan", surrogate_parameters={"alpha": 4}).surrogate_parameters
        (('alpha', 4),)
    """

    input_shape: tuple[int, ...] = (1, 28, 28)
    hidden: tuple[int, ...] = (256,)
    classes: int = 10
    num_steps: int = 8
    encoder: str = "direct"
    readout: str = "membrane"
    surrogate: str | None = None
    beta: float = 0.9
    surrogate_parameters: Mapping[str, float] | tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        given = self.surrogate_parameters  # (a mapping, or the sorted pairs it is held as: dataclasses.replace)
        pairs = tuple(given.items()) if isinstance(given, Mapping) else given
        if not (isinstance(pairs, tuple) and all(
                isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and is_number(p[1]) for p in pairs)
                and len({name for name, _ in pairs}) == len(pairs)):
            raise ValueError("surrogate_parameters must be a mapping of parameter names to numbers, e.g. "
                             f"{{'slope': 10}}, got {given!r}")
        if pairs and self.surrogate is None:  # (the backends' defaults differ, and so do their parameters)
            raise ValueError("surrogate_parameters shape a named surrogate: give surrogate as well (e.g. "
                             f"surrogate='fast_sigmoid'), got {dict(pairs)!r} with surrogate=None")
        # (held as sorted pairs: the spec stays hashable, as a frozen one is, and equal for equal parameters)
        object.__setattr__(self, "surrogate_parameters", tuple(sorted(pairs)))
        for name, value, empty in (("input_shape", self.input_shape, False), ("hidden", self.hidden, True)):
            if not isinstance(value, (tuple, list)) or not (value or empty) or not all(is_whole(v, 1) for v in value):
                raise ValueError(f"{name} must be a {'' if empty else 'non-empty '}sequence of integers >= 1, "
                                 f"got {value!r}")
        for name, value in (("classes", self.classes), ("num_steps", self.num_steps)):
            if not is_whole(value, 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        check_decay(self.beta)


Neuron = Callable[[int, bool], nn.Module]  # (features, is_output_layer) -> neuron module


def _layers(spec: NetSpec, neuron: Neuron) -> list[nn.Module]:
    sizes = [math.prod(spec.input_shape), *spec.hidden, spec.classes]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(n_in, n_out, bias=False), neuron(n_out, i == len(sizes) - 2)]
    return layers


def spiking_mlp(spec: NetSpec, neuron: Neuron) -> SpikingClassifier:
    """The registry's stack for a neuron model: ``Flatten → [Linear (no bias) → neuron] per layer`` in a
    :class:`~metaspike.snn.SpikingClassifier` with ``spec``'s sizes, time steps, encoder and readout.

    ``neuron(features, is_output)`` makes the module after each Linear: one time step, input current ``[B,
    features]`` → spikes (or snnTorch's ``(spikes, membrane)``), its state kept inside and reset by
    :func:`metaspike.snn.reset_states`; the output layer's should not reset (the readout reads its membrane).
    Norse cells (``LIFCell``, and an ``LICell`` as output) keep no state inside: the stack is then a Norse
    ``SequentialState``, which threads their states, instead of an ``nn.Sequential``.

    Example:
        >>> from metaspike.snn import SelfRecurrentLIF
        >>> model = spiking_mlp(NetSpec(hidden=(16,), num_steps=3),
        ...                     lambda n, out: SelfRecurrentLIF(n, 0.9, threshold=1e4 if out else 1.0, output=out))
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    layers = _layers(spec, neuron)
    container = require_norse().SequentialState if holds_norse_cells(layers) else nn.Sequential
    return SpikingClassifier(container(*layers), spec.num_steps, spec.encoder, spec.readout, spec.input_shape)


def _snntorch(spec: NetSpec, make: Callable[..., nn.Module]) -> SpikingClassifier:
    spike_grad = surrogate(spec.surrogate or "fast_sigmoid", **dict(spec.surrogate_parameters))

    def neuron(features: int, last: bool) -> nn.Module:
        return make(spike_grad=spike_grad, init_hidden=True, output=last, reset_mechanism="none" if last else "zero")

    return spiking_mlp(spec, neuron)


def leaky(spec: NetSpec) -> nn.Module:
    """snnTorch ``Leaky`` (first-order LIF)."""
    snn = require_snntorch()
    return _snntorch(spec, lambda **kw: snn.Leaky(beta=spec.beta, **kw))


def synaptic(spec: NetSpec) -> nn.Module:
    """snnTorch ``Synaptic`` (current-based LIF, second order)."""
    snn = require_snntorch()
    return _snntorch(spec, lambda **kw: snn.Synaptic(alpha=0.5, beta=spec.beta, **kw))


def _require_steps(spec: NetSpec, model: str, least: int, why: str) -> None:
    """One line where ``spec`` has fewer than ``least`` time steps, with which the model's output would not depend on
    its input (``why``: its delay) and nothing would be learned, without a word."""
    if spec.num_steps < least:
        raise ValueError(f"num_steps (--num-steps) must be at least {least} for {model} with {len(spec.hidden)} hidden "
                         f"layers ({why}: with fewer the output does not depend on the input and nothing is learned), "
                         f"got {spec.num_steps}")


def alpha(spec: NetSpec) -> nn.Module:
    """snnTorch ``Alpha`` (alpha-shaped synaptic current). Its excitatory and inhibitory currents start equal and
    opposite, so its membrane is 0 on a layer's first step of input: each layer passes its input on one step later,
    and the output layer one more, so ``num_steps >= len(hidden) + 2`` (fewer is refused)."""
    snn = require_snntorch()
    if spec.beta < 0.1:  # its synaptic decay is beta - 0.1
        raise ValueError(f"beta must be in [0.1, 1] for the alpha neuron (its second decay is beta - 0.1), got {spec.beta!r}")
    _require_steps(spec, "alpha", len(spec.hidden) + 2, "each Alpha layer passes its input on one time step later, "
                   "and the output layer one more")
    return _snntorch(spec, lambda **kw: snn.Alpha(alpha=min(0.95, spec.beta + 0.05), beta=spec.beta - 0.1, **kw))


def lapicque(spec: NetSpec) -> nn.Module:
    """snnTorch ``Lapicque`` (RC membrane); its input enters scaled by ``1 - beta``, so ``beta`` must lie in (0, 1)
    (snnTorch also reads 0 as "not given")."""
    snn = require_snntorch()
    if not 0.0 < spec.beta < 1.0:
        raise ValueError(f"beta must be in (0, 1) for the lapicque neuron (its input enters scaled by 1 - beta, and "
                         f"snnTorch reads 0 as not given), got {spec.beta!r}")
    return _snntorch(spec, lambda **kw: snn.Lapicque(beta=spec.beta, **kw))


def _refuse_count_readout(spec: NetSpec, model: str, output: str) -> None:
    """One ``ValueError`` for ``readout="count"`` (the output layer's spikes summed over the steps) on a model whose
    output layer emits no spikes (``output`` says what it does instead)."""
    if spec.readout == "count":
        raise ValueError(f"readout 'count' sums the output layer's spikes, but {model}'s output layer {output}: use "
                         "readout='membrane'")


def self_recurrent(spec: NetSpec) -> nn.Module:
    """Self-recurrent LIF with learnable decay and threshold (Zhang & Li 2020), plain torch; its output layer never
    fires (threshold 1e4: the readout is its membrane)."""
    _refuse_count_readout(spec, "self-recurrent", "has the threshold 1e4 and never fires (every count would be 0)")
    spike_fn = surrogate(spec.surrogate, **dict(spec.surrogate_parameters)) if spec.surrogate else None

    def neuron(features: int, last: bool) -> nn.Module:
        if last:
            return SelfRecurrentLIF(features, spec.beta, threshold=1e4, spike_fn=spike_fn, output=True)
        return SelfRecurrentLIF(features, spec.beta, spike_fn=spike_fn)

    return spiking_mlp(spec, neuron)


#: The registry's Norse models' inverse time constants (1/s), Norse's defaults, whatever ``NetSpec.beta``; at Norse's
#: step of 1 ms they decay the membrane by 0.8 and the synaptic current by 0.5 per step
_NORSE_INVERSE_TIME_CONSTANTS = {"tau_syn_inv": 500.0, "tau_mem_inv": 200.0}
_NORSE_STEP = 0.001  # (Norse's default dt, in seconds)


def _norse(spec: NetSpec, model: str, cell: Callable[[Callable[..., tuple], str, float], nn.Module]) -> nn.Module:
    """The registry's Norse stack: ``cell`` in the hidden layers, Norse's leaky integrator ``LICell`` as output."""
    if spec.beta != NetSpec.beta:
        decay = 1 - _NORSE_STEP * _NORSE_INVERSE_TIME_CONSTANTS["tau_mem_inv"]
        raise ValueError(f"beta sets the membrane decay of the snnTorch and self-recurrent models only; {model} keeps "
                         f"Norse's time constants (a decay of {decay:g} per step): leave beta at its default "
                         f"{NetSpec.beta}, got {spec.beta!r}")
    _refuse_count_readout(spec, model, "is Norse's LICell, a leaky integrator whose output is its voltage (the count "
                                       "would sum voltages)")
    norse = require_norse()
    method, alpha_ = norse_method(spec.surrogate or "superspike", **dict(spec.surrogate_parameters))
    taus = {key: torch.as_tensor(value) for key, value in _NORSE_INVERSE_TIME_CONSTANTS.items()}

    def neuron(features: int, last: bool) -> nn.Module:
        if last:
            return norse.LICell(norse.LIParameters(**taus))
        return cell(taus, method, alpha_)

    return spiking_mlp(spec, neuron)


def norse_lif(spec: NetSpec) -> nn.Module:
    """Norse ``LIFCell`` (current-based LIF); Norse's leaky integrator ``LICell`` as output."""
    norse = require_norse()
    return _norse(spec, "norse-lif",
                  lambda taus, method, a: norse.LIFCell(norse.LIFParameters(**taus, method=method, alpha=a)))


def norse_lsnn(spec: NetSpec) -> nn.Module:
    """Norse ``LSNNCell``: LIF with an adaptive threshold (Bellec et al. 2018). Its spikes come from the membrane
    before the step's input current enters it, so each layer passes its input on one step later: the network needs
    ``num_steps >= len(hidden) + 1`` for its output to depend on its input (fewer is refused)."""
    norse = require_norse()
    _require_steps(spec, "norse-lsnn", len(spec.hidden) + 1, "each LSNN layer passes its input on one time step later")
    return _norse(spec, "norse-lsnn", lambda taus, method, a: norse.LSNNCell(
        norse.LSNNParameters(**taus, tau_adapt_inv=torch.as_tensor(1 / 0.05), beta=torch.as_tensor(0.5),
                             method=method, alpha=a)))


_NEURONS: dict[str, Callable[[NetSpec], nn.Module]] = {
    "leaky": leaky,
    "synaptic": synaptic,
    "alpha": alpha,
    "lapicque": lapicque,
    "self-recurrent": self_recurrent,
    "norse-lif": norse_lif,
    "norse-lsnn": norse_lsnn,
}
#: The neuron models metaspike builds itself: ``spiking_mlp`` networks of one weight matrix per layer of ``spec.hidden``
#: and one readout, so ``len(spec.hidden) + 1`` weight layers (a registered model may have any number).
BUILTIN_NEURONS = frozenset(_NEURONS)
#: The names of the run model kinds that are not neuron models (:func:`metaspike.app.models.available_models`):
#: refused by :func:`register_neuron`, whose names become run model kinds too.
NON_SPIKING_MODEL_KINDS = frozenset({"bnn", "bnn-layernorm", "mlp", "bimu", "mesu"})


def register_neuron(name: str, builder: Callable[[NetSpec], nn.Module], *,
                    replace: bool = False) -> Callable[[NetSpec], nn.Module]:
    """Make a neuron model available by ``name``: to :func:`build_neuron_model`, as the run model kinds ``name``
    (binary synapses, MetaplasticAdam) and ``name+bimu`` (BiMU synapses), and to ``metaspike compare --neurons``.
    ``builder(spec)`` returns a classifier ``[B, *spec.input_shape] → [B, spec.classes]`` with float synapses,
    most simply :func:`spiking_mlp` with the neuron's own module. Returns ``builder``. A neuron module that keeps
    its state between calls (its membrane) gives it up in a ``reset_state()`` method, which
    :func:`metaspike.snn.reset_states` calls before and after each batch; without it, the classifier's first call
    names the module and the attribute where the module puts a new tensor in an attribute or buffer (``self.v = ...``),
    but not a state updated in place (``self.v.mul_(...)``), which carries over from one batch to the next.
    A name already taken by another builder is refused unless ``replace=True`` (a builder edited and registered
    again in a notebook); the built-in models' names cannot be replaced.

    Example:
        >>> from metaspike.snn import SelfRecurrentLIF
        >>> def slow_lif(spec):
        ...     return spiking_mlp(spec, lambda n, out: SelfRecurrentLIF(n, 0.99, threshold=1e4 if out else 1.0,
        ...                                                              output=out))
        >>> slow_lif(NetSpec(hidden=(8,), num_steps=2))(torch.rand(3, 1, 28, 28)).shape
        torch.Size([3, 10])
        >>> register_neuron("slow-lif", slow_lif)  # doctest: +SKIP
    """
    registered_name("a neuron model's name", name, "no '+', which joins a synapse kind: 'leaky+bimu'")
    if not callable(builder):
        raise ValueError(f"builder must be a callable (spec: NetSpec) -> nn.Module, got {type(builder).__name__}")
    if name in NON_SPIKING_MODEL_KINDS:  # (the run model kind of that name would hide it, or it the kind)
        raise ValueError(f"{name!r} is the name of a run model kind ({', '.join(sorted(NON_SPIKING_MODEL_KINDS))}); "
                         "give your neuron model its own name")
    known = _NEURONS.get(name)
    if known is not None and known is not builder:  # (every run asking for the name would change model, silently)
        if name in BUILTIN_NEURONS:
            raise ValueError(f"{name!r} is a built-in neuron model's name; give yours its own name")
        if not replace:
            raise ValueError(f"another builder is registered as neuron model {name!r} already (a cell that registers "
                             "it run again defines a new one); give yours its own name, or register_neuron(name, "
                             "builder, replace=True) to replace it")
    _NEURONS[name] = builder
    return builder


def available_neurons() -> list[str]:
    """Registered neuron-model names.

    Example:
        >>> available_neurons()
        ['alpha', 'lapicque', 'leaky', 'norse-lif', 'norse-lsnn', 'self-recurrent', 'synaptic']
    """
    return sorted(_NEURONS)


def check_neurons(names: list[str] | tuple[str, ...]) -> None:
    """``ValueError`` naming the first unknown neuron model.

    Example:
        >>> check_neurons(["leaky", "lif2"])
        Traceback (most recent call last):
        ...
        ValueError: unknown neuron model 'lif2'; available: alpha, lapicque, leaky, norse-lif, norse-lsnn, self-recurrent, synaptic
    """
    for name in names:
        if name not in _NEURONS:
            raise ValueError(unknown_name("neuron model", name, available_neurons()))


def _raised_by_metaspike(err: BaseException) -> bool:
    """Whether ``err`` was raised in metaspike's own code (whose errors are written as one line already), not in a
    user's builder or a library it calls."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and in_metaspike(frames[-1].filename)


def _builder_line(builder: Callable[..., Any], err: BaseException) -> str:
    """Where in the builder's own file ``err`` passed last (the line of the builder that called into torch, say),
    else where it was raised."""
    code = getattr(builder, "__code__", None)
    return (raised_at(err, code.co_filename) if code is not None else "") or raised_at(err)


def build_neuron_model(name: str, spec: NetSpec = NetSpec()) -> nn.Module:
    """A classifier of the named neuron model with float synapses.

    Example:
        >>> model = build_neuron_model("self-recurrent", NetSpec(hidden=(32,), num_steps=4))
        >>> model(torch.rand(5, 1, 28, 28)).shape
        torch.Size([5, 10])
    """
    check_neurons([name])
    builder = _NEURONS[name]
    try:
        model = builder(spec)
    except Exception as err:  # (a registered builder is a user's code: say where it failed, in one line)
        if isinstance(err, (ValueError, ImportError)) and _raised_by_metaspike(err):
            raise  # (a refused setting, a missing backend: their own one line already)
        raise ValueError(f"the builder of neuron model {name!r} ({getattr(builder, '__qualname__', '?')}) raised "
                         f"{type(err).__name__} at {_builder_line(builder, err)}: {err}") from err
    if not isinstance(model, nn.Module):
        where = ", ".join(filter(None, (getattr(builder, "__qualname__", "?"), defined_at(builder))))  # (its file and
        # line: an imported file's module name is made up)
        raise ValueError(f"the builder of neuron model {name!r} ({where}) returned {type(model).__name__}, not a "
                         "torch nn.Module")
    _check_steps_taken(name, model, spec)
    return model


def _check_steps_taken(name: str, model: nn.Module, spec: NetSpec) -> None:
    """``ValueError`` where the built ``model`` holds :class:`~metaspike.snn.SpikingClassifier` s and none runs the
    number of time steps ``spec`` asks for (a builder that fixed its own: runs recorded ``num_steps`` they never ran;
    an ensemble over several time scales, one of them the spec's, passes)."""
    steps = {module.num_steps for module in model.modules() if isinstance(module, SpikingClassifier)}
    if steps and spec.num_steps not in steps:
        made = ", ".join(map(str, sorted(steps)))
        raise ValueError(f"the builder of neuron model {name!r} made SpikingClassifiers of num_steps {made} where "
                         f"the spec asks for {spec.num_steps}: build one with spec.num_steps "
                         "(spiking_mlp(spec, neuron) does)")
