"""Which layers of a model get synapses: the one selection that :func:`metaspike.binarize` and
:func:`metaspike.bayesianize` share, and the base class that marks a weight parametrization as a synapse.

* :func:`select_layers` picks the layers of the requested types outside the excluded names, and checks the
  whole request before either function changes anything, so a call that fails leaves the model as it was.
* :class:`SynapseParametrization` is the base of the parametrizations that turn a layer's weight into a
  synapse (the sign of :func:`metaspike.binarize`, the Gaussian and binary weights of
  :func:`metaspike.bayesianize`); :func:`synapse_parametrization` finds it on a layer, so that one kind of
  synapse is never stacked on another.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.compiler import is_compiling
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize

from metaspike.caller import user_stacklevel
from metaspike.checks import listed

__all__ = ["DEFAULT_LAYER_TYPES", "SynapseParametrization", "attach_synapse", "synapse_parametrization",
           "select_layers", "layer_type_names", "each_once", "check_weight_ready", "warn_float_matrices_left",
           "is_weight_matrix",
           "FORWARD_BYPASSING_OWNERS", "ROLE_ATTRIBUTE", "synapse_role", "synapse_of", "weight_parametrizations"]

#: Reads of a synapse's weight in training passes, its layer never called, before the synapse warns that the layer's
#: learned output gain does not apply (:meth:`SynapseParametrization.count_weight_read`).
READS_WITHOUT_CALL_WARNED = 10

#: The layer classes that get synapses unless a call names others.
DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Modules that read their child layers' weights without calling the children's ``forward`` (``nn.MultiheadAttention``
#: multiplies by ``out_proj.weight`` itself): a synapse's learned gain, which acts in the layer's forward pass, would
#: never be applied there, so their children stay float and are named in the warning of float matrices left.
FORWARD_BYPASSING_OWNERS: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)


class SynapseParametrization(nn.Module):
    """A parametrization of a layer's ``weight`` that makes it a synapse of kind ``kind`` (``"sign"``, ``"mesu"``,
    ``"bimu"``): the layer's weight parameter becomes the synapse's state.

    The optimizers tell a synapse's tensors from a model's other parameters by marks that live with the tensors
    (:meth:`mark`), and torch makes new tensors without them: a deep copy or an unpickled copy of the model, and
    ``load_state_dict(..., assign=True)``. So a synapse keeps its tensors by role in a plain attribute (which a deep
    copy maps to the new tensors) and marks them again when it is restored; :func:`attach_synapse` has every load of
    a state dict mark the layer's new tensors.

    Example:
        >>> class Halved(SynapseParametrization):
        ...     kind = "halved"
        ...     def forward(self, weight): return weight / 2
        >>> Halved().kind
        'halved'
    """

    kind: ClassVar[str]
    #: Where the layer has a learned output gain, the layer as a warning names it (:func:`attach_synapse` sets it).
    gained_layer: str | None = None

    def tensors_of(self, layer: nn.Module) -> dict[str, Tensor]:
        """The synapse's tensors on ``layer`` (its weight's parametrization), by role; none unless a subclass says."""
        return {}

    def count_weight_read(self) -> None:
        """What a subclass's ``forward`` calls, once a read of the weight: in a training pass with gradients, count the
        reads while the layer has never been called (:meth:`layer_called`), and warn once at
        :data:`READS_WITHOUT_CALL_WARNED`. A parent that multiplies by ``layer.weight`` itself (``F.linear(x,
        layer.weight)``) never calls the layer, whose learned output gain, applied in the layer's own forward pass,
        then never applies nor trains, silently. A layer that is called counts nothing (a tied decoder reads a called
        encoder's weight many times a pass); reads are counted, not steps, since an optimizer may update a weight
        in place without a trace (fused kernels, ``p.data``).

        Example:
            >>> import torch
            >>> from metaspike import binarize
            >>> layer = binarize(nn.Linear(3, 2))
            >>> y = layer(torch.ones(1, 3))  # a layer call: nothing is counted after it
            >>> layer.parametrizations.weight[0]._reads["called"]
            True
        """
        if self.gained_layer is None or not self.training or not torch.is_grad_enabled() or is_compiling():
            return
        reads = self.__dict__.setdefault("_reads", {"uncalled": 0, "called": False})
        if reads["called"]:
            return
        reads["uncalled"] += 1
        if reads["uncalled"] == READS_WITHOUT_CALL_WARNED:
            warnings.warn(f"the weight of {self.gained_layer} was read {READS_WITHOUT_CALL_WARNED} times in training "
                          "passes and the layer was never called (a parent module multiplies by layer.weight itself, "
                          "e.g. F.linear(x, layer.weight)): its learned output gain acts in the layer's own forward "
                          "pass, so it is neither applied nor trained there; call the layer instead, or make its "
                          "synapse with scale=None", stacklevel=user_stacklevel())

    def layer_called(self) -> None:
        """Record that the layer was called: its gain applies, and :meth:`count_weight_read` counts no more."""
        reads = self.__dict__.get("_reads")
        if reads is None:
            self.__dict__["_reads"] = {"uncalled": 0, "called": True}
        else:
            reads["called"] = True

    def mark(self, role: str, tensor: Tensor) -> None:
        """Mark ``tensor`` as the synapse's ``role`` (read by :func:`synapse_role`) for as long as this synapse lives
        (torch's ``remove_parametrizations`` takes it off the layer); a subclass whose tensors are told apart otherwise
        overrides it."""
        setattr(tensor, ROLE_ATTRIBUTE, role)
        key = id(tensor)
        _ROLE_SYNAPSES[key] = weakref.ref(self, lambda ref, key=key: _forget_role(key, ref))

    def marked_tensors(self, layer: nn.Module) -> tuple[Tensor, ...]:
        """:meth:`tensors_of` ``layer``, kept (the tensors a copy marks again) and marked now.

        Example:
            >>> import torch
            >>> from metaspike import bayesianize
            >>> layer = bayesianize(nn.Linear(3, 2), "mesu")
            >>> [synapse_role(t) for t in synapse_parametrization(layer).marked_tensors(layer)]
            ['mean', 'width']
        """
        tensors = self.tensors_of(layer)
        object.__setattr__(self, "_role_tensors", tensors)  # (a plain attribute: deepcopy maps it to the new tensors)
        self._mark_kept()
        return tuple(tensors.values())

    def _mark_kept(self) -> None:
        """Mark the tensors :meth:`marked_tensors` kept, each by its role."""
        for role, tensor in vars(self).get("_role_tensors", {}).items():
            self.mark(role, tensor)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a deep copy or an unpickled model: torch copies a parameter's data, not its marks
        super().__setstate__(state)
        self._mark_kept()


def attach_synapse(layer: nn.Module, synapse: SynapseParametrization, unsafe: bool = False) -> None:
    """Make ``layer``'s weight the synapse ``synapse`` (torch's parametrization; ``unsafe`` skips torch's trial call
    of it), mark its tensors, and have every ``load_state_dict`` into the layer (or a model holding it) mark them
    again: with ``assign=True`` torch puts new parameters in, unmarked.

    Example:
        >>> from metaspike.bayesian import GaussianWeight
        >>> layer, saved = nn.Linear(3, 2), nn.Linear(3, 2)
        >>> for each in (layer, saved):
        ...     attach_synapse(each, GaussianWeight(each.weight))
        >>> _ = layer.load_state_dict(saved.state_dict(), assign=True)  # new parameters
        >>> [synapse_role(p) for p in layer.parameters()]
        [None, 'mean', 'width']
    """
    if "output_gain" in layer._modules and synapse.gained_layer is None:
        synapse.gained_layer = layer.output_gain.describe(layer)
    parametrize.register_parametrization(layer, "weight", synapse, unsafe=unsafe)
    if not any(hook is _mark_after_load for hook in layer._load_state_dict_post_hooks.values()):
        layer.register_load_state_dict_post_hook(_mark_after_load)
    synapse.marked_tensors(layer)


def _mark_after_load(layer: nn.Module, incompatible_keys: Any) -> None:
    """Post-hook of ``load_state_dict`` on a synapse layer (a module-level function: copies and pickles keep it):
    the synapse keeps and marks the layer's tensors as they are now."""
    synapse = synapse_parametrization(layer)
    if synapse is not None:
        synapse.marked_tensors(layer)


def weight_parametrizations(layer: nn.Module) -> nn.Module | None:
    """torch's list of the parametrizations on ``layer``'s weight (its ``original`` parameter and the modules that
    show it), or ``None``; read through the modules' own dictionaries, as every training call of a gained layer asks
    (``parametrize.is_parametrized`` and attribute access took 3.6 µs there).

    Example:
        >>> weight_parametrizations(nn.Linear(2, 2)) is None
        True
    """
    parametrizations = layer._modules.get("parametrizations")
    return None if parametrizations is None else parametrizations._modules.get("weight")


def synapse_parametrization(layer: nn.Module) -> SynapseParametrization | None:
    """The synapse parametrization on ``layer``'s weight, or ``None``.

    Example:
        >>> synapse_parametrization(nn.Linear(2, 2)) is None
        True
    """
    listed = weight_parametrizations(layer)
    return None if listed is None else next(
        (p for p in listed._modules.values() if isinstance(p, SynapseParametrization)), None)


#: id of a marked tensor -> weak reference to the synapse that marked it (a tensor keeps its mark only while the
#: synapse lives; a new tensor at the id of one freed has no mark to read)
_ROLE_SYNAPSES: dict[int, weakref.ref] = {}


def _forget_role(key: int, reference: weakref.ref) -> None:
    if _ROLE_SYNAPSES.get(key) is reference:
        del _ROLE_SYNAPSES[key]


ROLE_ATTRIBUTE = "_metaspike_synapse_role"
"""Set on the tensors :func:`metaspike.bayesianize` makes synapses: ``"latent"`` (BiMU's ``λ``), ``"mean"`` and
``"width"`` (MESU's ``μ`` and ``σ``), so that each optimizer can refuse the tensors that are not its own
(:func:`synapse_role`)."""


def synapse_role(tensor: Tensor) -> str | None:
    """What ``tensor`` is in a synapse made by :func:`metaspike.bayesianize` (``"latent"``, ``"mean"`` or
    ``"width"``), or ``None`` for any other tensor (a bias, a gain, a norm layer's, or a tensor the user made). A deep
    copy of a model is marked again by its synapses, since torch copies a parameter's data only.

    Example:
        >>> import torch
        >>> from metaspike import bayesianize
        >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 3)), "mesu")
        >>> [synapse_role(p) for p in net.parameters()]
        [None, 'mean', 'width']
    """
    return getattr(tensor, ROLE_ATTRIBUTE, None) if synapse_of(tensor) is not None else None


def synapse_of(tensor: Tensor) -> nn.Module | None:
    """The synapse parametrization that ``tensor`` is a tensor of (its :func:`synapse_role` says which), or ``None``:
    what tells a MESU mean's own width from another layer's of the same shape.

    Example:
        >>> import torch
        >>> from metaspike import bayesianize
        >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 3)), "mesu")
        >>> mu, sigma = net[0].parametrizations.weight.original, net[0].parametrizations.weight[0].sigma
        >>> synapse_of(mu) is synapse_of(sigma) is net[0].parametrizations.weight[0]
        True
    """
    if getattr(tensor, ROLE_ATTRIBUTE, None) is None:
        return None
    synapse = _ROLE_SYNAPSES.get(id(tensor))
    return None if synapse is None else synapse()


def _layer_types(layer_types: type[nn.Module] | Sequence[type[nn.Module]]) -> tuple[type[nn.Module], ...]:
    types = (layer_types,) if isinstance(layer_types, type) else layer_types
    if (isinstance(types, str) or not isinstance(types, Sequence) or not types
            or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types)):
        raise ValueError(f"layer_types must be an nn.Module class or a sequence of them, got {layer_types!r}")
    return tuple(types)


def layer_type_names(layer_types: type[nn.Module] | Sequence[type[nn.Module]]) -> str:
    """The class names of ``layer_types`` (for messages), after checking them as :func:`select_layers` does.

    Example:
        >>> layer_type_names([nn.Linear, nn.Conv2d])
        'Linear, Conv2d'
    """
    return ", ".join(t.__name__ for t in _layer_types(layer_types))


def nothing_to_convert(model: nn.Module, action: str, layer_types: type[nn.Module] | Sequence[type[nn.Module]],
                       exclude: str | Sequence[str] = ()) -> str:
    """The message for a call that found no layer to ``action`` in ``model``: that ``exclude`` left out every one it
    has (``""`` names the model itself), or where the layers of an owner that bypasses their forward pass
    (:data:`FORWARD_BYPASSING_OWNERS`) were left out.

    Example:
        >>> nothing_to_convert(nn.MultiheadAttention(4, 1), "binarize", nn.Linear)[:70]
        'MultiheadAttention has no layer to binarize (looked for Linear layers '
        >>> nothing_to_convert(nn.Sequential(nn.Linear(2, 2)), "binarize", nn.Linear, exclude="0")
        "exclude='0' leaves Sequential no layer to binarize: it names or holds every one of its 1 Linear layers"
    """
    names = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    try:
        available = len(select_layers(model, layer_types)) if names else 0
    except ValueError:  # (an excluded layer that selection refuses: a lazy one, say; the plain message then)
        available = 0
    if available:
        whole = " ('' names the model itself)" if "" in names else ""
        return (f"exclude={exclude!r} leaves {type(model).__name__} no layer to {action}: it names or holds every one "
                f"of its {available} {layer_type_names(layer_types)} layers{whole}")
    owners = sorted({type(m).__name__ for m in model.modules() if isinstance(m, FORWARD_BYPASSING_OWNERS)})
    note = (f"; the layers inside a {' or '.join(owners)} are left out: it multiplies by their weights without "
            "calling their forward pass, where a synapse's learned output gain acts, so they stay float, as its own "
            "in_proj_weight does" if owners else "")
    return (f"{type(model).__name__} has no layer to {action} (looked for {layer_type_names(layer_types)} layers with a "
            f"weight parameter){note}")


def _excluded_names(model: nn.Module, exclude: str | Sequence[str]) -> tuple[str, ...]:
    names = (exclude,) if isinstance(exclude, str) else tuple(exclude) if isinstance(exclude, Sequence) else None
    if names is None or not all(isinstance(name, str) for name in names):
        raise ValueError(f"exclude must be a layer name or a sequence of names, got {exclude!r}")
    matrices = {name for name, p in model.named_parameters(remove_duplicate=False)
                if not isinstance(p, nn.parameter.UninitializedParameter) and p.dim() >= 2}
    unknown = sorted(set(names) - {name for name, _ in model.named_modules(remove_duplicate=False)} - matrices)
    if unknown:
        raise ValueError(f"exclude names layers (or weight matrices) that do not exist: {unknown}")
    weights = sorted(name for name in set(names) & matrices if name.rsplit(".", 1)[-1] == "weight")
    if weights:  # (a layer's weight is what a synapse is made of: naming it must not leave the layer selected)
        layer = weights[0].rsplit(".", 1)[0] if "." in weights[0] else ""
        raise ValueError(f"exclude names the weight {weights[0]!r}: name its layer {layer!r} to leave it float")
    return names


def _is_excluded(name: str, excluded: tuple[str, ...]) -> bool:
    """Whether ``name`` is an excluded module or lies inside one (``""``, the model itself, excludes all)."""
    return any(name == other or other == "" or name.startswith(other + ".") for other in excluded)


def _excluded_ids(model: nn.Module, exclude: str | Sequence[str]) -> tuple[set[int], set[int]]:
    """Ids of the modules and of the parameters that ``exclude`` (checked: :func:`_excluded_names`) names or holds,
    under any of their names: a layer registered twice (``self.head = self.layers[-1]``) is excluded by either name or
    by a block holding either (``named_modules`` gives each module once, under its first name)."""
    excluded = _excluded_names(model, exclude)
    modules = {id(m) for name, m in model.named_modules(remove_duplicate=False) if _is_excluded(name, excluded)}
    parameters = {id(p) for name, p in model.named_parameters(remove_duplicate=False) if name in excluded}
    return modules, parameters


def _forward_bypassed(model: nn.Module) -> set[int]:
    """Ids of the layers whose owner (:data:`FORWARD_BYPASSING_OWNERS`) uses their weight without their forward pass."""
    return {id(child) for module in model.modules() if isinstance(module, FORWARD_BYPASSING_OWNERS)
            for child in module.children()}


def select_layers(
    model: nn.Module,
    layer_types: type[nn.Module] | Sequence[type[nn.Module]] = DEFAULT_LAYER_TYPES,
    exclude: str | Sequence[str] = (),
    refuse_computed_weights: bool = False,
) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for each layer of ``model`` that is an instance of ``layer_types``, has a weight, and is
    neither named in ``exclude`` nor inside a module named there (excluding a block excludes its layers).

    A layer whose ``weight`` is a tensor but no parameter (a buffer, or computed by a hook as the old
    ``torch.nn.utils.weight_norm`` does) is left out, or, with ``refuse_computed_weights`` (what turns layers into
    synapses asks for), an error naming it. Synapses are made of a layer's ``weight`` parameter, so with
    ``refuse_computed_weights`` a class in ``layer_types`` whose layers in ``model`` all lack one (an ``nn.LSTM``'s
    matrices are ``weight_ih_l0``..., a Norse ``LIFRecurrentCell``'s ``input_weights``...) is an error naming it too:
    the call would leave exactly the layers it was asked for float.

    ``layer_types`` is a class or a sequence of classes; ``exclude`` one name or a sequence of names, each of
    which must exist. Layers whose owner reads their weight without calling them (``out_proj`` of an
    ``nn.MultiheadAttention``, :data:`FORWARD_BYPASSING_OWNERS`) are left out. A selected layer whose weight is
    still lazy (``nn.LazyLinear`` before its first forward pass) or on the ``meta`` device (not yet materialized: a
    synapse made now would never be initialised) is an error.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2))
        >>> [name for name, _ in select_layers(net, nn.Linear, exclude="1")]
        ['0', '2']
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected a torch nn.Module to put synapses on, got {type(model).__name__}")
    types = _layer_types(layer_types)
    excluded, _ = _excluded_ids(model, exclude)
    bypassed = _forward_bypassed(model)
    selected, candidates = [], []
    for name, layer in model.named_modules():
        if not isinstance(layer, types) or id(layer) in excluded or id(layer) in bypassed:
            continue
        candidates.append((name, layer))
        if parametrize.is_parametrized(layer, "weight"):
            selected.append((name, layer))
            continue
        check_weight_ready(name, layer)
        weight = getattr(layer, "weight", None)
        if isinstance(weight, nn.Parameter):
            selected.append((name, layer))
        elif refuse_computed_weights and isinstance(weight, Tensor):
            raise ValueError(f"layer {name!r} ({type(layer).__name__}) has a weight that is no parameter (a buffer, or "
                             "computed by a hook: the old torch.nn.utils.weight_norm and spectral_norm, "
                             "torch.nn.utils.prune), so it cannot become a synapse: remove the hook first "
                             "(torch.nn.utils.remove_weight_norm, remove_spectral_norm, prune.remove) or leave the "
                             f"layer float (exclude=[{name!r}])")
    if refuse_computed_weights:
        _refuse_types_without_weight(types, candidates, selected)
        for name, layer in selected:
            _refuse_padding_row(name, layer)
        _refuse_excluded_ties(model, excluded, selected)
    return selected


def _refuse_padding_row(name: str, layer: nn.Module) -> None:
    """An embedding with a ``padding_idx`` keeps that row at zero (torch never trains it); a synapse has no zero
    weight (``sign(0)`` is +1, a BiMU row is ±1, a MESU row noisy), so every padding position would add a vector."""
    padding = getattr(layer, "padding_idx", None)
    if padding is not None:
        raise ValueError(f"layer {name!r} ({type(layer).__name__}) has padding_idx={padding}, whose row torch keeps at "
                         "zero; a synapse's weights are never zero, so every padding position would add a vector: "
                         f"leave the layer float (exclude=[{name!r}]) or build it without padding_idx")


def _refuse_excluded_ties(model: nn.Module, excluded: set[int], selected: list[tuple[str, nn.Module]]) -> None:
    """An excluded module that holds the weight of a selected layer (tied weights) would read the synapse's float state
    as its weight and train it: what ``exclude`` asked, a float layer, cannot be had while the tie holds."""
    synapse_of = {id(layer.weight): name for name, layer in selected
                  if not parametrize.is_parametrized(layer, "weight")}
    for name, module in model.named_modules(remove_duplicate=False):
        if id(module) not in excluded:
            continue
        for key, p in module.named_parameters(recurse=False):
            if id(p) in synapse_of:
                raise ValueError(f"exclude names {name!r}, whose {key} is also the weight of layer "
                                 f"{synapse_of[id(p)]!r}, which becomes a synapse: the excluded layer would read the "
                                 "synapse's float state and train it; exclude both layers, or untie the weights")


def _refuse_types_without_weight(types: tuple[type[nn.Module], ...], candidates: list[tuple[str, nn.Module]],
                                 selected: list[tuple[str, nn.Module]]) -> None:
    """A class of ``types`` that has layers among ``candidates`` but none in ``selected`` (none has a ``weight``
    parameter) is an error naming it and the weight matrices its first layer has instead."""
    chosen = {id(layer) for _, layer in selected}
    for layer_type in types:
        layers = [(name, layer) for name, layer in candidates if isinstance(layer, layer_type)]
        if layers and not any(id(layer) in chosen for _, layer in layers):
            name, layer = layers[0]
            matrices = [key for key, p in layer.named_parameters(recurse=False) if p.dim() >= 2]
            # (snnTorch's RLeaky keeps its recurrent weights in a child nn.Linear, which the default types convert)
            inner = [f"{key!r} ({type(child).__name__})" for key, child in layer.named_modules()
                     if key and isinstance(getattr(child, "weight", None), Tensor) and child.weight.dim() >= 2]
            has = (f"its weight matrices are {', '.join(matrices)}" if matrices
                   else f"it has no weight matrix of its own; its layers {', '.join(inner)} hold its weights and "
                        "become synapses where layer_types names their types, as the default does for Linear and Conv "
                        "layers" if inner else "it has no weight matrix")
            raise ValueError(f"layer_types names {layer_type.__name__}, but no {layer_type.__name__} layer has a "
                             f"'weight' parameter (layer {name!r}: {has}); synapses are made of a layer's 'weight' "
                             f"parameter only, so leave {layer_type.__name__} out of layer_types"
                             + ("" if inner else " (its weights stay float)"))


def check_weight_ready(name: str, layer: nn.Module) -> None:
    """A layer's weight can become a synapse: not lazy (``nn.LazyLinear`` before its first forward pass), not on
    the ``meta`` device (a synapse made before the model is materialized would never be initialised), and real
    (a sign, a Gaussian width or a probability of a complex or integer weight means nothing).

    Example:
        >>> check_weight_ready("0", nn.Linear(2, 2, device="meta"))
        Traceback (most recent call last):
        ...
        ValueError: layer '0' has its weight on the 'meta' device: materialize the model first (model.to_empty(device=...) and initialise its weights)
    """
    weight = getattr(layer, "weight", None)
    if is_lazy(weight):
        raise ValueError(f"layer {name!r} has a lazy weight ({type(layer).__name__}): run one forward pass first")
    if isinstance(weight, Tensor) and weight.is_meta:
        raise ValueError(f"layer {name!r} has its weight on the 'meta' device: materialize the model first "
                         "(model.to_empty(device=...) and initialise its weights)")
    if isinstance(weight, Tensor) and not weight.is_floating_point():
        raise ValueError(f"layer {name!r} has {weight.dtype} weights: a synapse needs real floating-point ones "
                         "(float16, bfloat16, float32 or float64); exclude it (exclude=[...]) or convert the model")


def each_once(tensors: Iterable[Tensor]) -> list[Tensor]:
    """``tensors`` in order, each once: layers with tied weights share their synapse's tensors, which an optimizer
    must see once.

    Example:
        >>> import torch
        >>> w = nn.Parameter(torch.zeros(2))
        >>> len(each_once([w, w]))
        1
    """
    return list({id(t): t for t in tensors}.values())


def warn_float_matrices_left(model: nn.Module, selected: Sequence[nn.Module], exclude: str | Sequence[str], what: str,
                             layer_types: type[nn.Module] | Sequence[type[nn.Module]] = DEFAULT_LAYER_TYPES) -> None:
    """Warn about weight matrices (parameters with two or more dimensions longer than 1, outside normalization
    layers) that stay float because their layer is of a
    kind no synapse call handles (an ``nn.LSTM``, a Norse ``LIFRecurrentCell``, the ``out_proj`` of an
    ``nn.MultiheadAttention``, ...): they would train as float weights and never be consolidated, silently. Layers in
    ``selected``, excluded layers and the default layer types (left out on purpose by a narrower ``layer_types``) are
    not named. Layers of a class in ``layer_types`` that have no ``weight`` parameter (others of their class have
    one) are named apart: excluding them is not what the caller asked. A second warning names the modules that share
    a weight tensor with a synapse layer without being one (an ``nn.Embedding`` tied to an output ``nn.Linear``):
    they read the synapse's float state, not its weight. Layers that already are synapses (of an earlier call) count
    as selected.

    Example:
        >>> net = nn.Sequential(nn.LSTM(3, 4), nn.Linear(4, 2))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_float_matrices_left(net, [net[1]], (), "binarize")
        >>> "0.weight_ih_l0" in str(caught[0].message)
        True
    """
    excluded, excluded_parameters = _excluded_ids(model, exclude)
    # (the synapses of an earlier call too: their hidden weights, held by their parametrizations, are no float matrices)
    synapses = [*selected, *(m for m in model.modules() if synapse_parametrization(m) is not None)]
    covered = {id(p) for layer in synapses for p in layer.parameters()}
    inside = {id(m) for layer in synapses for m in layer.modules()}  # a synapse layer, its gain, its parametrization
    bypassed = _forward_bypassed(model)
    types = _layer_types(layer_types)
    left, named, tied = [], [], []
    for name, module in model.named_modules():
        if id(module) in inside or id(module) in excluded:
            continue
        if isinstance(module, DEFAULT_LAYER_TYPES) and id(module) not in bypassed:
            continue
        if isinstance(module, _ELEMENTWISE_TYPES):
            continue
        for key, p in module.named_parameters(recurse=False):
            if _is_matrix(p) and id(p) not in excluded_parameters:
                asked = isinstance(module, types) and id(module) not in bypassed
                (tied if id(p) in covered else named if asked else left).append(f"{name}.{key}" if name else key)
    if tied:
        warnings.warn(f"{what} made synapses of weight tensors that other modules use too ({', '.join(tied)}): those "
                      "modules are not synapses and read the synapse's float state as their weight; untie the "
                      "weights or exclude the synapse layer", UserWarning, stacklevel=3)
    if named:
        warnings.warn(f"{what} left {len(named)} weight matrices float in layers of a type named in layer_types "
                      f"({listed(named)}): their layers have no 'weight' parameter, and synapses are made of a "
                      "layer's 'weight' parameter only; they train as float weights and are not consolidated",
                      UserWarning, stacklevel=3)
    if left:
        warnings.warn(f"{what} left {len(left)} weight matrices float, in layers it does not make synapses of "
                      f"({listed(left)}): they train as float weights and are not consolidated; name them (or a "
                      f"layer that holds them, such as an LSTM) in {what}(..., exclude=[...]) to silence this",
                      UserWarning, stacklevel=3)


_ELEMENTWISE_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []))
"""Layers whose parameters scale or shift their input element by element (a LayerNorm over ``[C, H, W]`` has a
3-D weight), never weight matrices."""


#: The layers whose every parameter but a bias is a weight matrix, whatever its shape (an ``LSTM(1, 8)``'s
#: ``weight_ih_l0`` of 32 x 1, a ``1 x 32`` readout, an attention's ``in_proj_weight``).
_WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.RNNBase,
                                               nn.RNNCellBase, nn.Embedding, nn.EmbeddingBag, nn.MultiheadAttention)


def is_weight_matrix(module: nn.Module, key: str, param: Tensor) -> bool:
    """Whether ``param``, ``module``'s own parameter ``key``, is a weight matrix: any but a bias of a weight layer
    (Linear, Conv, recurrent, embedding, attention) whatever its shape, a recurrent cell's ``..._weights`` of two or
    more dimensions (Norse's),
    the largest of a parametrization's original tensors (``weight_norm``'s direction, not its magnitudes), or
    elsewhere a ``weight`` parameter with two or more dimensions longer than 1 (a module of one's own); never a
    normalisation layer's scale, a neuron's per-channel or per-unit constant (``beta``, ``tau``) or a legacy
    ``weight_norm``'s magnitudes ``weight_g``.

    Example:
        >>> readout, norm = nn.Linear(32, 1), nn.LayerNorm([4, 6])
        >>> is_weight_matrix(readout, "weight", readout.weight), is_weight_matrix(norm, "weight", norm.weight)
        (True, False)
    """
    if isinstance(module, _ELEMENTWISE_TYPES) or "bias" in key or key == "weight_g":
        return False
    if isinstance(module, _WEIGHT_LAYERS) or (key.endswith("_weights") and param.dim() >= 2):
        return True
    if isinstance(module, parametrize.ParametrizationList):
        originals = [p for name, p in module.named_parameters(recurse=False) if name.startswith("original")]
        return key.startswith("original") and param.numel() == max(p.numel() for p in originals)
    return "weight" in key and _is_matrix(param)


def _is_matrix(p: Tensor) -> bool:
    """Whether ``p`` has two or more dimensions longer than 1: a per-channel neuron parameter (snnTorch's ``beta`` of
    shape ``(C, 1, 1)``, a threshold) is a vector, not a weight matrix."""
    return sum(size > 1 for size in p.shape) >= 2
