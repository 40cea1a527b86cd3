"""The output gain of a binary layer: a learned float ``α`` that gives ``α · (sign(W_h) x) + b`` the size
the float layer's output ``W x + b`` had.

A ±1 weight is several times larger than a float layer's initial weights (torch's init is about
``1 / sqrt(fan_in)``), so without a gain a binarized layer drives its neurons far past threshold.
XNOR-Net (Rastegari et al. 2016) scales ``sign(W)`` by ``α = mean |W|``, the factor that makes
``α · sign(W)`` closest to ``W``; :class:`OutputGain` starts there and then learns ``α``.

``α`` is a float parameter that is never consolidated (it is not a hidden weight, so
:func:`metaspike.param_groups` puts it in the non-consolidated group). At inference it folds out of
the synapse, which stays ±1: before a spiking neuron ``α > 0`` divides the threshold and the bias
(``θ / α``, ``b / α``: the membrane is ``1 / α`` times the original one, so the same spikes), or
multiplies the neuron's input resistance ``r`` (what :func:`metaspike.snn.nir.export_nir` writes);
before a BatchNorm followed by ``sign`` it moves the threshold to ``(crossing - b) / α`` (reversing the
comparison where ``α < 0``), which is what :func:`bnn.pack` computes.
"""

from __future__ import annotations

import math
import warnings
import weakref

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from metaspike.caller import user_stacklevel
from metaspike.layer_selection import synapse_parametrization

__all__ = ["GAIN_SCALES", "OutputGain", "check_scale", "check_gain_layer", "attach_output_gain", "apply_output_gain", "output_gain",
           "gain_scale", "foreign_forward_hooks"]

GAIN_SCALES = ("channel", "layer")
"""Accepted gain kinds: one ``α`` per output channel, or one per layer (``None``: no gain)."""


def check_scale(scale: str | None) -> str | None:
    """``scale`` if it names a gain kind or is ``None``; else one ``ValueError`` naming the accepted values.

    Example:
        >>> check_scale("kernel")
        Traceback (most recent call last):
        ...
        ValueError: scale must be 'channel', 'layer' or None, got 'kernel'
    """
    if scale is not None and (not isinstance(scale, str) or scale not in GAIN_SCALES):
        raise ValueError(f"scale must be 'channel', 'layer' or None, got {scale!r}")
    return scale


_GAIN_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layers whose own forward pass is the weight product plus the bias, ``W x + b``, that a gain scales."""


def check_gain_layer(name: str, layer: nn.Module) -> None:
    """A gain needs the output channels first in the weight and last (linear) or second (conv) in the output: a
    ``Linear`` or a (non-transposed) ``Conv1d/2d/3d``, or a subclass. Any other layer (``ConvTranspose2d``,
    ``Bilinear``, ``Embedding``, ...) is one ``ValueError`` naming it, since its gain would scale the wrong axis. So is
    a subclass with a forward pass of its own (a fused ReLU, a LoRA branch, a bias left out), whose output the gain
    would take for ``W x + b`` (it scales ``output - b``), unless the class says its forward pass is still the
    weight product plus the bias by a true ``forward_is_weight_product`` (metaspike's sampled Bayesian layers do).

    Example:
        >>> check_gain_layer("up", torch.nn.ConvTranspose2d(3, 6, 2))
        Traceback (most recent call last):
        ...
        ValueError: layer 'up' (ConvTranspose2d): a learned output gain fits Linear and Conv1d/2d/3d layers only; pass scale=None for it, or leave it out with exclude
    """
    base = next((kind for kind in _GAIN_LAYERS if isinstance(layer, kind)), None)
    if base is None or getattr(layer, "transposed", False):
        raise ValueError(f"layer {name!r} ({type(layer).__name__}): a learned output gain fits Linear and "
                         "Conv1d/2d/3d layers only; pass scale=None for it, or leave it out with exclude")
    own = [method for method in ("forward", "_conv_forward") if getattr(type(layer), method, None) is not
           getattr(base, method, None)]
    if own and getattr(type(layer), "forward_is_weight_product", False) is not True:
        raise ValueError(f"layer {name!r} ({type(layer).__name__}) has a {own[0]} of its own: a learned output gain "
                         f"scales a {base.__name__}'s output less its bias, which its own pass need not be (a fused "
                         "activation, an extra branch); where it still returns W x + b (a padding of its own, say), "
                         f"set {type(layer).__name__}.forward_is_weight_product = True; else leave it out with "
                         "exclude, or pass scale=None")


#: Updates of a layer's synapses (an optimizer's steps) through which its gain holds a gradient and stays unchanged
#: before :class:`OutputGain` warns that no optimizer trains it.
IDLE_STEPS_WARNED = 50

#: How many times its starting size a gain's largest ``|α|`` may grow before :class:`OutputGain` warns that it is
#: diverging. The start is the float layer's own output size, and a healthy training moves it far less (about
#: 17-fold in the largest growth this project measured, Adam at 5e-3 on the tasks of a spiking comparison); a
#: gain stepped past its stability limit by SGD grew 140-fold in 10 steps (a conv net's classifier) and 6·10⁵-fold in
#: 200 (an MLP; digits, README).
GROWTH_WARNED = 100.0

#: A gain's size is read (one reduction and a host sync) at every this many of its updates, not at every one.
GROWTH_CHECK_EVERY = 8


class OutputGain(nn.Module):
    """Learned gain on a linear/conv layer's output: ``α · (output - b) + b``, i.e. the bias is not scaled.

    ``α`` starts at the float weight's mean ``|W|``, per output channel (``scale="channel"``, shape
    ``[out, 1, ...]`` so that it broadcasts over a conv output's spatial dimensions and over a linear
    output's last dimension) or over the whole layer (``scale="layer"``, a scalar). Where that mean is 0 (a
    zero-initialised layer), ``α`` starts at the mean ``|W|`` of torch's default initialisation,
    ``1 / (2·√fan_in)``: a zero gain would pass no gradient to the synapses.

    ``α`` takes larger steps than a float weight under SGD: its gradient sums a product over the whole fan-in, and a
    change of ``α`` scales the layer's output for every input at once. With a learning rate that trains the float
    model, ``α`` may overshoot and diverge (the loss grows, the hidden weights follow it, accuracy falls to chance);
    adaptive optimizers (Adam) size each step themselves and are not affected. Give the gains a smaller learning
    rate (:func:`metaspike.param_groups` with ``gain_lr``; about ``lr / √fan_in``) or clip the gradients. A gain
    whose largest ``|α|`` grows :data:`GROWTH_WARNED` times past its start is named in a warning, once.

    Args:
        weight: the float weight ``[out, in, *kernel]`` whose size ``α`` takes over.
        scale: ``"channel"`` or ``"layer"``.
        layer_name: the layer's module path (in the model :func:`metaspike.binarize` or
            :func:`metaspike.bayesianize` was given), which the warnings name; ``""`` (unknown) names its class only.
        real_weights: the synapses keep real weights of the float weight's size (MESU's ``μ``), not ``±1``: ``α``
            starts at 1, so that the converted layer computes what the float one did.

    Example:
        >>> gain = OutputGain(torch.tensor([[0.5, -0.5], [0.1, 0.3]]), "channel")
        >>> gain.alpha.tolist()
        [0.5, 0.20000000298023224]
        >>> gain(torch.ones(1, 2)).tolist()
        [[0.5, 0.20000000298023224]]
    """

    layer_name: str = ""

    def __init__(self, weight: Tensor, scale: str, layer_name: str = "", real_weights: bool = False) -> None:
        super().__init__()
        if check_scale(scale) is None:
            raise ValueError("scale must be 'channel' or 'layer' for an OutputGain, got None")
        magnitude = weight.detach().abs()
        self.channel_shape = (weight.shape[0], *([1] * (weight.dim() - 2)))  # broadcasts over an output
        # α = 1 where the synapses keep W's size, or where there are no inputs (W x is 0 whatever α is)
        if magnitude.numel() == 0 or real_weights:
            magnitude = torch.ones((weight.shape[0], 1), dtype=weight.dtype, device=weight.device)
        alpha = magnitude.flatten(1).mean(1).reshape(self.channel_shape) if scale == "channel" else magnitude.mean()
        default = 0.5 / math.sqrt(max(math.prod(weight.shape[1:]), 1))  # mean |W| of U(±1/√fan_in): torch's init
        alpha = torch.where(alpha > 0, alpha, torch.full_like(alpha, default))
        self.scale = scale
        self.layer_name = layer_name
        self.alpha = nn.Parameter(alpha.clone())
        self._start_size = (float(alpha.abs().max()) if alpha.numel() and alpha.device.type != "meta"
                            else 0.0)  # (0: the growth check is off; a meta tensor holds no values)
        self._growth_seen_version = self.alpha._version
        self._updates_unchecked = 0
        self._growth_warned = False
        self._seen_alpha: int | None = None  # α's version, the layer's synapses' versions at the last training pass
        self._seen_synapses: int | None = None
        self._idle_steps = 0

    def extra_repr(self) -> str:
        """``scale='channel', shape=(64, 1)``: what ``print(model)`` shows of the gain.

        Example:
            >>> OutputGain(torch.ones(3, 2), "layer")
            OutputGain(scale='layer', shape=())
        """
        return f"scale={self.scale!r}, shape={tuple(self.alpha.shape)}"

    def describe(self, layer: nn.Module) -> str:
        """The gain's layer, for a warning: ``layer '1.0' (Linear, α of shape (64,))``, or without a known name
        ``a Linear layer (α of shape (64,))``.

        Example:
            >>> layer = torch.nn.Linear(4, 3)
            >>> attach_output_gain(layer, "channel", "fc").describe(layer)
            "layer 'fc' (Linear, α of shape (3,))"
        """
        kind = parametrize.type_before_parametrizations(layer)  # (not torch's Parametrized... subclass)
        shape = f"α of shape {tuple(self.alpha.shape)}"
        if self.layer_name:
            return f"layer {self.layer_name!r} ({kind.__name__}, {shape})"
        return f"a {kind.__name__} layer ({shape})"

    def _watch_for_no_optimizer(self, layer: nn.Module) -> None:
        """Warn once when ``layer``'s synapses were updated :data:`IDLE_STEPS_WARNED` times (the sum of their tensors'
        versions changed between training passes) while ``α`` held a gradient and stayed unchanged: no optimizer
        holds it (one built before :func:`metaspike.binarize` added the gain), so the layer trains without the gain
        its neurons need, silently. Passes between two steps (the time steps of a spiking model, micro-batches
        accumulating gradients) change neither, so they count nothing."""
        alpha = self.alpha
        # (the usual case after zero_grad: nothing to read; a non-leaf α, under torch.func.functional_call, has none)
        if not alpha.is_leaf or alpha.grad is None or not alpha.requires_grad:
            self._idle_steps = 0
            self._seen_alpha = None
            return
        synapse_version = sum(p._version for p in _synapse_tensors(layer, self))
        if alpha._version != self._seen_alpha:
            self._idle_steps = 0
        elif self._seen_synapses is not None and synapse_version != self._seen_synapses:
            self._idle_steps += 1
            if self._idle_steps == IDLE_STEPS_WARNED:
                warnings.warn(f"the learned output gain of {self.describe(layer)} has held a gradient through "
                              f"{IDLE_STEPS_WARNED} updates of its layer's synapses without changing: no optimizer "
                              "trains it. metaspike.binarize and bayesianize add these gains as new parameters: build "
                              "the optimizer after them (or add the gains' parameters to it)",
                              stacklevel=user_stacklevel())
        self._seen_alpha, self._seen_synapses = alpha._version, synapse_version

    def _watch(self, layer: nn.Module) -> None:
        """What a training pass checks of the gain of ``layer``: that an optimizer trains it, and that it does not
        diverge."""
        self._watch_growth(layer)
        self._watch_for_no_optimizer(layer)

    def _watch_growth(self, layer: nn.Module) -> None:
        """Count the updates of ``α`` (changes of its version between training passes); every
        :data:`GROWTH_CHECK_EVERY` of them, warn once if its largest ``|α|`` is more than :data:`GROWTH_WARNED` times
        its start (or not finite): the gain is diverging."""
        if self._growth_warned or self.alpha._version == self._growth_seen_version:
            return
        self._growth_seen_version = self.alpha._version
        self._updates_unchecked += 1
        if self._updates_unchecked < GROWTH_CHECK_EVERY or self._start_size == 0.0:
            return
        self._updates_unchecked = 0
        size = float(self.alpha.detach().abs().max())
        if not size <= GROWTH_WARNED * self._start_size:
            self._growth_warned = True
            warnings.warn(f"the learned output gain of {self.describe(layer)} has grown from "
                          f"{self._start_size:.3g} to {size:.3g}, over {GROWTH_WARNED:g} times its "
                          "start: it is diverging. A gain takes larger steps than a float weight under SGD; give the "
                          "gains a smaller learning rate (metaspike.param_groups(model, meta, gain_lr=...), about "
                          "lr / sqrt(fan_in)), clip the gradients, or use Adam", RuntimeWarning,
                          stacklevel=user_stacklevel())

    def per_channel(self, channels: int) -> Tensor:
        """``α`` as one value per output channel (``[channels]``), detached.

        Example:
            >>> OutputGain(torch.ones(3, 2), "layer").per_channel(3).tolist()
            [1.0, 1.0, 1.0]
        """
        return self.alpha.detach().reshape(-1).expand(channels).clone()

    def forward(self, output: Tensor, bias: Tensor | None = None) -> Tensor:
        """Scale a layer's ``output`` (which includes ``bias``, if any) so that only ``W x`` is scaled; a nested
        ``output`` (``nn.TransformerEncoder``'s inference with a padding mask) part by part."""
        if output.is_nested:
            return torch.nested.as_nested_tensor([self(part, bias) for part in output.unbind()], layout=output.layout)
        alpha = self.alpha
        if bias is None:
            return output * alpha
        return output * alpha + bias.reshape(self.channel_shape) * (1 - alpha)


#: Each gain's layer's other parameters, listed at the first pass that reads them (:meth:`OutputGain._watch_for_no_
#: optimizer` runs at every training pass; listing them there cost 4.5 µs a layer, reading a kept list 0.3 µs).
_SYNAPSE_TENSORS: weakref.WeakKeyDictionary[OutputGain, list[Tensor]] = weakref.WeakKeyDictionary()


def _synapse_tensors(layer: nn.Module, gain: OutputGain) -> list[Tensor]:
    if gain not in _SYNAPSE_TENSORS:
        _SYNAPSE_TENSORS[gain] = [p for p in layer.parameters() if p is not gain.alpha]
    return _SYNAPSE_TENSORS[gain]


def _list_tensors_anew(layer: nn.Module, incompatible_keys: object) -> None:
    """Post-hook of ``load_state_dict`` on a layer with a gain: ``assign=True`` puts new parameters in, so the
    tensors :func:`_synapse_tensors` kept are listed again at the next pass."""
    gain = output_gain(layer)
    if gain is not None:
        _SYNAPSE_TENSORS.pop(gain, None)


def apply_output_gain(layer: nn.Module, output: Tensor) -> Tensor:
    """``layer``'s output (bias included) through its :class:`OutputGain`, as its forward hook applies it (with the
    watch for a gain no optimizer trains or that diverges, in training); for a caller that computes the layer's product itself.

    Example:
        >>> layer = torch.nn.Linear(4, 3)
        >>> _ = attach_output_gain(layer, "layer")
        >>> x = torch.ones(1, 4)
        >>> bool(torch.equal(layer(x), apply_output_gain(layer, torch.nn.functional.linear(x, layer.weight, layer.bias))))
        True
    """
    gain = layer.output_gain
    if gain.training and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        gain._watch(layer)
        synapse = synapse_parametrization(layer)
        if synapse is not None:
            synapse.layer_called()
    return gain(output, getattr(layer, "bias", None))


def _apply_output_gain(layer: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
    return apply_output_gain(layer, output)


def foreign_forward_hooks(module: nn.Module) -> int:
    """How many forward hooks and pre-hooks of ``module`` are not its output gain's (added by someone else: they may
    change what it computes unseen by code that reads the layer's parameters, such as ``bnn.pack``).

    Example:
        >>> layer = torch.nn.Linear(4, 3)
        >>> _ = attach_output_gain(layer, "layer")
        >>> foreign_forward_hooks(layer), foreign_forward_hooks(torch.nn.Linear(4, 3))
        (0, 0)
    """
    own = sum(hook is _apply_output_gain for hook in module._forward_hooks.values())
    return len(module._forward_hooks) + len(module._forward_pre_hooks) - own


def attach_output_gain(layer: nn.Module, scale: str, name: str = "", real_weights: bool = False) -> OutputGain:
    """Give a linear/conv ``layer`` a learned :class:`OutputGain` (child ``output_gain``, applied to its output by
    a forward hook), started from the layer's current weight, and return it (a layer that has one keeps it);
    ``name``, the layer's module path, is what the gain's warnings call it. :func:`metaspike.binarize` and
    :func:`metaspike.bayesianize` call it before the weight becomes a synapse; ``real_weights`` (MESU's Gaussian
    weights) starts the gain at 1 (:class:`OutputGain`).

    The gain trains where the weight does (a frozen layer, ``requires_grad_(False)``, stays frozen), and its hook
    runs before the forward hooks the layer had already: those see, and may replace, the output the next layer gets.

    Example:
        >>> layer = torch.nn.Linear(4, 3)
        >>> gain = attach_output_gain(layer, "layer")  # output α·(W x) + b, α a scalar here
        >>> x = torch.ones(1, 4)
        >>> bool(torch.allclose(layer(x), gain.alpha * (x @ layer.weight.T) + layer.bias))
        True
    """
    if output_gain(layer) is not None:  # (a synapse made anew where torch's remove_parametrizations took one off:
        return layer.output_gain        # the gain trained so far, applied once, not a second hook's α²)
    weight = layer.weight
    layer.output_gain = OutputGain(weight, scale, name, real_weights)
    layer.output_gain.alpha.requires_grad_(weight.requires_grad)
    layer.register_forward_hook(_apply_output_gain, prepend=True)
    layer.register_load_state_dict_post_hook(_list_tensors_anew)
    return layer.output_gain


def output_gain(layer: nn.Module) -> OutputGain | None:
    """The :class:`OutputGain` of a layer (its ``output_gain`` child), or ``None``.

    Example:
        >>> layer = torch.nn.Linear(4, 3)
        >>> output_gain(layer) is None
        True
        >>> _ = attach_output_gain(layer, "channel")
        >>> output_gain(layer).alpha.shape
        torch.Size([3])
    """
    gain = getattr(layer, "output_gain", None)
    return gain if isinstance(gain, OutputGain) else None


def gain_scale(layer: nn.Module) -> str | None:
    """The ``scale`` of a layer's :class:`OutputGain` (``"channel"`` or ``"layer"``), or ``None`` without one.

    Example:
        >>> layer = torch.nn.Linear(4, 3)
        >>> gain_scale(layer), gain_scale(attach_output_gain(layer, "layer") and layer)
        (None, 'layer')
    """
    gain = output_gain(layer)
    return None if gain is None else gain.scale
