"""The binary synapse: a hidden weight ``W_h`` shown as ``sign(W_h)`` in the forward pass, its gradient
passed straight through, so that ``|W_h|`` can act as a consolidation variable.

* :func:`binarize` puts the synapse onto the weights of any existing model (snnTorch, Norse or plain
  torch) with ``torch.nn.utils.parametrize``; the hidden weights stay the trainable parameters.
* :class:`BinarySynapse` is the small interface a layer implements to *be* a binary synapse (the
  ``bnn`` layers do), so that the core finds it without importing ``bnn``.
* :func:`binary_modules`, :func:`hidden_weights`, :func:`is_hidden_weight` find the synapses.
* :func:`binarized_once` is a block in which every weight's sign is taken once; :func:`signs_cache_key`
  is the public hook that tells a layer with its own sign buffers whether it may reuse them (both from
  :mod:`metaspike.block_cache`, re-exported here).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from metaspike.block_cache import binarized_once, reuse_in_block, signs_cache_key
from metaspike.gain import attach_output_gain, check_gain_layer, check_scale, gain_scale
from metaspike.layer_selection import (
    DEFAULT_LAYER_TYPES,
    SynapseParametrization,
    attach_synapse,
    each_once,
    nothing_to_convert,
    select_layers,
    synapse_parametrization,
    warn_float_matrices_left,
)
from metaspike.quantizers import ste_sign

__all__ = [
    "BinarySynapse", "SignWeight", "binarize", "binary_modules", "hidden_weights", "is_hidden_weight",
    "mark_hidden_weight", "weight_matrices", "float_layer_weights", "binarized_once", "signs_cache_key",
]

# id -> weak references to the weight and to the synapse that marked it (tensors compare elementwise: no WeakSet)
_HIDDEN_WEIGHTS: dict[int, tuple[weakref.ref, weakref.ref | None]] = {}


def _forget(key: int, reference: weakref.ref) -> None:
    if _HIDDEN_WEIGHTS.get(key, (None,))[0] is reference:
        del _HIDDEN_WEIGHTS[key]


def mark_hidden_weight(weight: Tensor, synapse: nn.Module | None = None) -> Tensor:
    """Record ``weight`` as the hidden weight of a binary synapse (see :func:`is_hidden_weight`); returns it.

    Binary synapse layers call it when created, copied, unpickled or loaded (``load_state_dict(..., assign=True)``
    puts in a new parameter) and on every forward pass. ``synapse``, the parametrization that shows the weight's sign
    where there is one, bounds the mark: once torch's ``remove_parametrizations`` has taken it off the layer (and it
    is gone), the weight is a float layer's again.

    Example:
        >>> w = nn.Parameter(torch.zeros(2, 2))
        >>> is_hidden_weight(mark_hidden_weight(w))
        True
    """
    key = id(weight)
    entry = _HIDDEN_WEIGHTS.get(key)
    if entry is None or entry[0]() is not weight or (entry[1]() if entry[1] is not None else None) is not synapse:
        _HIDDEN_WEIGHTS[key] = (weakref.ref(weight, lambda ref, key=key: _forget(key, ref)),
                                None if synapse is None else weakref.ref(synapse))
    return weight


def is_hidden_weight(weight: Tensor) -> bool:
    """Whether ``weight`` is the hidden weight of a binary synapse (what optimizers consolidate by default).

    Example:
        >>> net = binarize(nn.Sequential(nn.Linear(4, 3)))
        >>> [(name, is_hidden_weight(p)) for name, p in net.named_parameters()]  # bias, learned gain, W_h
        [('0.bias', False), ('0.output_gain.alpha', False), ('0.parametrizations.weight.original', True)]
    """
    entry = _HIDDEN_WEIGHTS.get(id(weight))
    return entry is not None and entry[0]() is weight and (entry[1] is None or entry[1]() is not None)


class BinarySynapse:
    """Interface of a layer whose ``weight`` parameter is a hidden weight shown as ±1 in the forward pass.

    A subclass sets ``is_binary`` (``False`` for a full-precision variant of the same layer), ``weight_bits`` (the
    precision of a quantizer other than the sign, for ``bnn.summary``) and implements :meth:`visible_weight`; layers
    of the ``bnn`` API do, so :func:`binary_modules` finds them without ``metaspike`` importing ``bnn``. Its hidden
    weight is marked (:func:`mark_hidden_weight`) again when the layer is deep-copied or unpickled and after its weight
    is loaded: torch makes new parameters there.
    """

    weight: nn.Parameter

    @property
    def is_binary(self) -> bool:
        """True when the layer shows its hidden weight quantized (a hidden weight the optimizers consolidate)."""
        return True

    @property
    def weight_bits(self) -> int:
        """Bits per weight the forward pass shows: 1 (±1) unless the layer's quantizer says otherwise."""
        return 1

    def visible_weight(self) -> Tensor:
        """The weight the forward pass uses (±1 for a binary synapse)."""
        raise NotImplementedError

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        _hidden_weight(self)  # type: ignore[arg-type]

    def _load_from_state_dict(self, *args: Any) -> None:
        """torch's load of the layer's own tensors (the override point torch gives for it), then its hidden weight
        marked: ``load_state_dict(..., assign=True)`` puts in a new parameter."""
        super()._load_from_state_dict(*args)  # type: ignore[misc]
        _hidden_weight(self)  # type: ignore[arg-type]


class SignWeight(SynapseParametrization):
    """Parametrization that shows ``sign(W_h)`` (unclipped straight-through gradient) in place of ``W_h``."""

    kind = "sign"

    def forward(self, hidden: Tensor) -> Tensor:
        self.count_weight_read()
        return reuse_in_block(self, (hidden,), lambda: ste_sign(mark_hidden_weight(hidden, self), clip_value=None))

    def tensors_of(self, layer: nn.Module) -> dict[str, Tensor]:
        """The hidden weight ``W_h`` (the layer's weight parameter)."""
        return {"hidden": layer.parametrizations.weight.original}

    def mark(self, role: str, tensor: Tensor) -> None:
        """Mark the hidden weight (:func:`mark_hidden_weight`)."""
        mark_hidden_weight(tensor, self)


def binarize(
    module: nn.Module,
    layer_types: type[nn.Module] | Sequence[type[nn.Module]] = DEFAULT_LAYER_TYPES,
    exclude: str | Sequence[str] = (),
    scale: str | None = "channel",
) -> nn.Module:
    """Turn the weights of ``module``'s linear/conv layers into binary synapses, in place.

    Each selected layer's ``weight`` becomes ``sign(W_h)``; ``W_h`` stays the trainable parameter
    (reachable through :func:`hidden_weights`). Biases stay real-valued. Works on any model, e.g. an
    snnTorch or Norse network, without changing its neurons.

    A ±1 weight is 3-10 times larger than a float layer's initial weights, so by default each layer
    also gets a learned gain (:class:`~metaspike.gain.OutputGain`, child ``output_gain``, applied by a
    forward hook): ``y = α · (sign(W_h) x) + b`` with ``α`` starting at the float weight's mean ``|W|``
    per output channel (XNOR-Net's ``α``), so neurons see the input current the float model gave them.
    ``α`` is never consolidated (not a hidden weight); at inference it folds into the next neuron's
    threshold (``θ / α``, bias ``b / α``) or input resistance (NIR export) or into the next BatchNorm,
    so the synapse stays ±1.

    The hidden weights keep the float layer's initialisation (about ``1 / sqrt(fan_in)``, so a layer with
    more inputs, where one flip matters less, flips after fewer Adam steps of size ``lr``). Measured on
    snnTorch's tutorial conv SNN on 8x8 digits (10 epochs of Adam, lr 5e-3, 2 seeds): 80.3 and 83.9 %
    (float: 90.0, 93.6; without a gain: chance), against 68.1/82.5 % when ``W_h`` is rescaled to
    ``[-0.05, 0.05]`` (the ``bnn`` layers' init), 83.1/80.6 % for ``[-0.01, 0.01]`` and 70.6/77.2 % for
    ``[-0.25, 0.25]``: no rescaling did better than the float init, which needs no extra setting.

    Args:
        module: the model to change.
        layer_types: which layer classes get binary weights (a class or a sequence of classes).
        exclude: qualified names of layers or blocks to leave real-valued (e.g. ``"0"`` for a first layer; a
            block's name excludes every layer inside it), or of weight matrices a module holds directly (no layer's
            ``weight``), which stay float anyway: naming them silences the warning about them.
        scale: the learned gain: ``"channel"`` (one per output channel, default), ``"layer"`` (one per
            layer) or ``None`` (the bare sign, e.g. for a layer followed by BatchNorm).

    Example:
        >>> net = binarize(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()))
        >>> sorted(set(net[0].weight.abs().flatten().tolist()))
        [1.0]
    """
    check_scale(scale)
    todo = []
    selected = select_layers(module, layer_types, exclude, refuse_computed_weights=True)
    for name, layer in selected:
        synapse = synapse_parametrization(layer)
        if isinstance(layer, BinarySynapse):
            continue
        if isinstance(synapse, SignWeight):
            if gain_scale(layer) != scale:  # (a second call keeps the layer: it would not get what it asks)
                raise ValueError(f"layer {name!r} is a binary synapse already, with scale={gain_scale(layer)!r}; "
                                 f"binarize leaves such layers as they are, so scale={scale!r} would not apply")
            continue
        if synapse is not None:
            raise ValueError(f"layer {name!r} is already a {synapse.kind!r} synapse; binarize needs real-valued weights")
        if parametrize.is_parametrized(layer, "weight"):  # (torch's own, weight_norm, orthogonal, or a user's)
            raise ValueError(f"layer {name!r} already has a weight parametrization; binarize needs plain weights (the "
                             "sign would be taken of the parametrization's output, a tensor other than the hidden "
                             f"weight it consolidates): remove it, or leave the layer float (exclude=[{name!r}])")
        if scale is not None:
            check_gain_layer(name, layer)
        kept = gain_scale(layer)
        if kept not in (None, scale):
            raise ValueError(f"layer {name!r} keeps the output gain of an earlier synapse, with scale={kept!r} "
                             f"(torch's remove_parametrizations leaves it); binarize keeps it, so scale={scale!r} "
                             f"would not apply: give scale={kept!r}")
        todo.append((name, layer))
    for name, layer in todo:  # everything checked: now change the model
        if scale is not None:
            attach_output_gain(layer, scale, name)
        attach_synapse(layer, SignWeight())
    if not todo and not any(True for _ in binary_modules(module)):
        raise ValueError(nothing_to_convert(module, "binarize", layer_types, exclude))
    warn_float_matrices_left(module, [layer for _, layer in selected], exclude, "binarize", layer_types)
    return module


def _hidden_weight(layer: nn.Module) -> Tensor | None:
    """The hidden weight of a binary synapse layer, marked; ``None`` for any other layer (a Bayesian synapse's too)."""
    if isinstance(layer, BinarySynapse) and layer.is_binary and not parametrize.is_parametrized(layer, "weight"):
        return mark_hidden_weight(layer.weight)
    synapse = synapse_parametrization(layer)
    return synapse.marked_tensors(layer)[0] if isinstance(synapse, SignWeight) else None


def binary_modules(module: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Parameter]]:
    """Yield ``(name, layer, hidden_weight)`` for every binary synapse layer in ``module``.

    A ``bnn`` binary layer whose weight is a Bayesian synapse (:func:`metaspike.bayesianize`) has no hidden weight: its
    tensors are the synapse's (:func:`metaspike.bayesian.bayesian_modules` finds it), and reading its ``weight`` would
    draw a sample.

    Example:
        >>> net = binarize(torch.nn.Sequential(torch.nn.Linear(4, 3)))
        >>> [name for name, _, _ in binary_modules(net)]
        ['0']
    """
    for name, layer in module.named_modules():
        weight = _hidden_weight(layer)
        if weight is not None:
            yield name, layer, weight  # type: ignore[misc]


def hidden_weights(module: nn.Module) -> list[nn.Parameter]:
    """The hidden weights of every binary synapse in ``module``, each once (layers with tied weights share one).

    Example:
        >>> net = binarize(torch.nn.Sequential(torch.nn.Linear(4, 3)))
        >>> [tuple(w.shape) for w in hidden_weights(net)]
        [(3, 4)]
    """
    return each_once(weight for _, _, weight in binary_modules(module))  # type: ignore[return-value]


def weight_matrices(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(layer name, hidden weight)`` of each binary synapse layer; for a model with Bayesian synapses instead,
    the tensor whose sign is the synapse's most probable weight (``λ`` of BiMU, ``μ`` of MESU; never ``σ``);
    for a model with neither, the weight of each layer :func:`binarize` would make binary (Linear and Conv layers:
    the full-precision variant; never a neuron's parameters, such as a per-channel ``beta`` of shape ``(C, 1, 1)``).
    A tensor shared by several layers (tied weights) is listed once.

    Example:
        >>> [name for name, _ in weight_matrices(torch.nn.Sequential(torch.nn.Linear(3, 2)))]
        ['0']
    """
    from metaspike.bayesian.synapses import bayesian_modules

    found = [(name, weight) for name, _, weight in binary_modules(model)]
    found = found or [(name, tensors[0]) for name, _, _, tensors in bayesian_modules(model)]
    found = found or float_layer_weights(model)
    first: dict[int, tuple[str, torch.Tensor]] = {}  # tied layers share one tensor, listed once, where first used
    for name, weight in found:
        first.setdefault(id(weight), (name, weight))
    return list(first.values())


def float_layer_weights(model: nn.Module, parametrized: bool = False) -> list[tuple[str, torch.Tensor]]:
    """``(layer name, tensor)`` for the weight of each Linear/Conv layer of ``model`` that is not a synapse; with
    ``parametrized``, also the tensors that torch's own parametrization of a layer's weight trains (``weight_norm``:
    its two ``original`` tensors). A tensor shared by several layers appears once per layer.

    Example:
        >>> net = binarize(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)), exclude="0")
        >>> [name for name, _ in float_layer_weights(net)]
        ['0']
    """
    found = []
    for name, layer in select_layers(model):
        if not parametrize.is_parametrized(layer, "weight"):
            found += [(name, layer.weight)] if isinstance(layer.weight, nn.Parameter) else []
        elif parametrized and synapse_parametrization(layer) is None:  # torch's own (weight_norm, spectral_norm)
            found += [(name, p) for key, p in layer.parametrizations.weight.named_parameters(recurse=False)
                      if key.startswith("original")]
    return found


