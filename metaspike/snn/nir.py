"""NIR export and import of binary-synapse snnTorch networks (``Leaky``, ``Synaptic``; linear and conv layers).

:func:`export_nir` writes a network's ±1 weights (``sign(W_h)``, what the forward pass sees; ``sign(λ)`` for
BiMU synapses, whose forward pass draws samples) and its neuron parameters as a NIR graph; :func:`import_nir` builds the same per-step network back.

Supported modules (a sequential chain): ``nn.Flatten`` (→ ``Flatten``, its dimensions renumbered without the batch),
``nn.Linear`` (→ ``Affine``/``Linear``), ``nn.Conv2d`` (→ ``Conv2d``), :class:`~metaspike.snn.layers.Scale` (→
``Scale``), and the neurons:

* ``snntorch.Leaky`` with ``reset_mechanism="zero"`` → ``LIF``;
* ``snntorch.Synaptic`` with ``reset_mechanism="zero"`` and ``reset_delay=False`` → ``CubaLIF`` (with snnTorch's
  default ``reset_delay=True`` a Synaptic zeroes its whole membrane on the step after a spike, that step's input
  included, where ``CubaLIF`` resets at the spike and then integrates: refused);
* either with ``reset_mechanism="none"``: ``LI``/``CubaLI`` (no threshold: the node's output is its voltage) where the
  network's output is that voltage (the last module, built with ``output=True``, not read by the ``"count"``
  readout), else ``LI``/``CubaLI`` followed by a ``Threshold`` node, NIR's spiking neuron without reset.

Options NIR cannot express (``graded_spikes_factor``, ``inhibition``, ``state_quant``, a reset by subtraction) are
refused. Discretisation with step ``dt`` (forward Euler, as snnTorch does): ``beta = 1 - dt / tau_mem``,
``alpha = 1 - dt / tau_syn``, input gains ``r dt / tau_mem`` and ``w_in dt / tau_syn`` (``1`` on export without a
learned gain).

The learned gain ``α`` of a binary layer (:class:`metaspike.gain.OutputGain`) is folded into the
input resistance ``r`` of the neuron that follows (``r = α tau_mem / dt``; the layer's bias is
written as ``b / α``), so the weights stay ±1; a gain that no neuron follows is written as a
``Scale`` node. Import turns ``r ≠ tau_mem / dt`` back into a :class:`Scale` before the neuron.
"""

from __future__ import annotations

import importlib
import io
import os
import warnings
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch
from torch import nn

from metaspike.checks import finite_number, first_line, is_whole
from metaspike.compiled import uncompiled
from metaspike.files import as_path, memory_available, read_regular_file
from metaspike.gain import output_gain
from metaspike.layer_selection import synapse_parametrization
from metaspike.quantizers import binary_sign, get_quantizer
from metaspike.snn.backends import require_snntorch
from metaspike.snn.layers import Scale
from metaspike.snn.readouts import spike_count
from metaspike.snn.timeloop import SpikingClassifier

__all__ = ["export_nir", "import_nir"]


def _nir() -> ModuleType:
    try:
        return importlib.import_module("nir")
    except ImportError as err:
        raise ImportError(f"NIR export needs nir: pip install nir ({err})") from None


def _array(value: torch.Tensor | float, shape: tuple[int, ...]) -> np.ndarray:
    return torch.as_tensor(value, dtype=torch.float32).detach().cpu().expand(shape).numpy().copy()


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().copy()


def _time_constant(decay: torch.Tensor, shape: tuple[int, ...], dt: float, what: str) -> np.ndarray:
    kept = _array(decay.clamp(0, 1), shape)
    if np.any(kept >= 1):
        raise ValueError(f"export_nir: {what} = 1 (no leak) has no NIR time constant")
    return dt / (1 - kept)


#: snnTorch neuron options NIR's neurons have no counterpart for, with the value that needs none
_PLAIN_OPTIONS = (("graded_spikes_factor", 1.0), ("inhibition", False), ("state_quant", False))


def _is_plain(value: object, plain: object) -> bool:
    """Whether an option's ``value`` is its ``plain`` one (a number or a flag; anything else, a quantizing function
    for ``state_quant``, is not)."""
    if value is plain:
        return True
    try:
        return bool(torch.all(torch.as_tensor(value) == plain))
    except (TypeError, RuntimeError, ValueError):
        return False


def _refuse_unexpressed_options(layer: nn.Module) -> None:
    """One ``ValueError`` for an snnTorch option the exported graph could not reproduce (it would run differently)."""
    for option, plain in _PLAIN_OPTIONS:
        value = getattr(layer, option, plain)
        if not _is_plain(value, plain):
            raise ValueError(f"NIR has no counterpart of {type(layer).__name__}({option}={value!r}); export a neuron "
                             f"with {option}={plain!r}")


def _refuse_unexpressed_reset(name: str, layer: nn.Module, synaptic: bool) -> None:
    """One ``ValueError`` for a reset NIR's ``LIF``/``CubaLIF`` do not make: they set ``v`` to ``v_reset`` (0) at a
    spike and integrate the next step's input from there. snnTorch's ``Leaky`` with ``reset_mechanism="zero"`` does
    so (with either ``reset_delay``); its ``Synaptic`` only with ``reset_delay=False``: its delayed reset zeroes the
    whole membrane of the step after the spike, that step's input included."""
    if layer.reset_mechanism not in ("zero", "none"):
        raise ValueError(f"export_nir: NIR's neurons reset to v_reset; export layer {name!r} "
                         f"({type(layer).__name__}) with reset_mechanism='zero' (or 'none'), got "
                         f"{layer.reset_mechanism!r}")
    if synaptic and layer.reset_mechanism == "zero" and layer.reset_delay:
        raise ValueError(f"export_nir: layer {name!r} (Synaptic, reset_mechanism='zero', reset_delay=True) zeroes its "
                         "whole membrane on the step after a spike, that step's input included, while NIR's CubaLIF "
                         "resets at the spike and integrates the next input: build it with reset_delay=False, which "
                         "resets as CubaLIF does")


def _neuron_nodes(nir: ModuleType, snn: ModuleType, name: str, layer: nn.Module, shape: tuple[int, ...], dt: float,
                  gain: np.ndarray, voltage_out: bool) -> list:
    """NIR nodes of an snnTorch ``Leaky``/``Synaptic``; ``gain`` (the layer before's ``α``) multiplies ``r``. A neuron
    without reset is an ``LI``/``CubaLI`` where its voltage is what leaves it (``voltage_out``), else one followed by
    a ``Threshold`` (its spikes)."""
    _refuse_unexpressed_options(layer)
    synaptic = isinstance(layer, snn.Synaptic)
    _refuse_unexpressed_reset(name, layer, synaptic)
    zeros = np.zeros(shape, dtype=np.float32)
    threshold = _array(layer.threshold, shape)
    tau_mem = _time_constant(layer.beta, shape, dt, f"layer {name!r}'s beta")
    r = (gain * tau_mem / dt).astype(np.float32)
    fires = layer.reset_mechanism == "zero"
    if fires and voltage_out and not synaptic and not layer.reset_delay:
        raise ValueError(f"export_nir: layer {name!r} (Leaky, reset_mechanism='zero', reset_delay=False) is the output "
                         "whose membrane the readout reads, which it zeroes at a spike, while the Leaky that "
                         "import_nir reads back from NIR's LIF keeps it until the next step: build it with "
                         "reset_delay=True, or read its spikes (readout='count')")
    if synaptic:
        tau_syn = _time_constant(layer.alpha, shape, dt, f"layer {name!r}'s alpha")
        common = dict(tau_syn=tau_syn, tau_mem=tau_mem, r=r, v_leak=zeros, w_in=(tau_syn / dt).astype(np.float32))
        node = (nir.CubaLIF(**common, v_threshold=threshold, v_reset=zeros) if fires else nir.CubaLI(**common))
    else:
        node = (nir.LIF(tau=tau_mem, r=r, v_leak=zeros, v_threshold=threshold, v_reset=zeros) if fires
                else nir.LI(tau=tau_mem, r=r, v_leak=zeros))
    return [node] if fires or voltage_out else [node, nir.Threshold(threshold=threshold)]


def _exported_weight(name: str, layer: nn.Module) -> torch.Tensor:
    """The weights written for ``layer``: what its forward pass sees (a ``bnn`` layer's ±1 ``visible_weight``, not its
    hidden weight; one that quantizes its input is refused), except for Bayesian synapses, whose forward pass draws
    samples: a BiMU synapse is written as its most probable binary weight ``sign(λ)`` (``+1`` at 0, as its evaluation
    mode shows it), in any mode; MESU synapses (real-valued Gaussians) are refused."""
    synapse = synapse_parametrization(layer)
    kind = getattr(synapse, "kind", None)
    if kind == "mesu":
        raise ValueError(f"export_nir writes binary weights; layer {name!r} has MESU synapses (Gaussian real-valued "
                         "weights), which have none")
    if kind == "bimu":
        return binary_sign(layer.parametrizations.weight.original.detach())
    quantizer = getattr(layer, "input_quantizer", None)  # (a bnn layer: its weight is the hidden one)
    if quantizer is not None and quantizer is not get_quantizer(None):
        raise ValueError(f"export_nir: layer {name!r} quantizes its input ({type(layer).__name__} with an "
                         "input_quantizer), which NIR's Linear and Conv2d cannot express; build it with "
                         "input_quantizer=None")
    visible = getattr(layer, "visible_weight", None)
    if callable(visible):
        with torch.no_grad():
            return visible()
    return layer.weight


def _weight_node(nir: ModuleType, name: str, layer: nn.Module,
                 shape: tuple[int, ...]) -> tuple[object, np.ndarray | None]:
    """The NIR node of a linear/conv layer (bias written as ``b / α``) and its gain ``α`` per output channel."""
    weight = _numpy(_exported_weight(name, layer))
    gain = output_gain(layer)
    alpha = None if gain is None else _numpy(gain.per_channel(weight.shape[0]))
    bias = None if layer.bias is None else _numpy(layer.bias)
    if bias is not None and alpha is not None:
        if np.any(alpha == 0):
            channels = np.flatnonzero(alpha == 0)
            raise ValueError(f"export_nir cannot fold a zero gain into layer {name!r}, which has a bias: output "
                             f"channels {channels[:6].tolist()} have α = 0 (NIR writes the bias as b / α)")
        bias = bias / alpha
    if isinstance(layer, nn.Conv2d):
        if not isinstance(layer.padding, tuple):
            raise ValueError(f"export_nir needs a numeric conv padding, layer {name!r} has {layer.padding!r}")
        if layer.padding_mode != "zeros" and any(layer.padding):  # (NIR's Conv2d pads with zeros)
            raise ValueError(f"export_nir: NIR pads convolutions with zeros; layer {name!r} (Conv2d, padding_mode="
                             f"{layer.padding_mode!r}) cannot be exported")
        if layer.groups != 1:  # (NIR 1.0 types a conv's input as weight.shape[1] channels: in_channels / groups)
            raise ValueError(f"export_nir: NIR's type check reads a grouped convolution's input as its channels per "
                             f"group, so a file with layer {name!r} (groups={layer.groups}) would not read back")
        node = nir.Conv2d(input_shape=tuple(shape[1:]), weight=weight, stride=layer.stride, padding=layer.padding,
                          dilation=layer.dilation, groups=layer.groups,
                          bias=np.zeros(weight.shape[0], dtype=np.float32) if bias is None else bias)
        typed, computed = tuple(int(s) for s in node.output_type["output"]), _conv_output_shape(layer, shape)
        if typed != computed:  # (NIR 1.0.8 reads both kernel sides from weight.shape[2])
            raise ValueError(f"export_nir: NIR types layer {name!r}'s output as {typed}, where the convolution gives "
                             f"{computed} (kernel {tuple(layer.kernel_size)}: this NIR takes kernels as square), so "
                             "the file would not read back")
    elif bias is None:
        node = nir.Linear(weight=weight)
    else:
        node = nir.Affine(weight=weight, bias=bias)
    return node, alpha


def _conv_output_shape(layer: nn.Conv2d, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``(channels, height, width)`` that ``layer`` makes of one sample of ``shape`` (torch's formula).

    Example:
        >>> _conv_output_shape(nn.Conv2d(1, 4, (2, 3)), (1, 8, 8))
        (4, 7, 6)
    """
    sides = [(size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1 for size, pad, dilation, kernel, stride
             in zip(shape[1:], layer.padding, layer.dilation, layer.kernel_size, layer.stride)]
    return (layer.out_channels, *sides)


def _per_element(alpha: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(alpha.reshape(-1, *([1] * (len(shape) - 1))), shape).astype(np.float32)


def export_nir(
    model: nn.Module,
    path: str | os.PathLike | None = None,
    input_shape: Sequence[int] | None = None,
    dt: float = 1.0,
):
    """NIR graph of a :class:`SpikingClassifier` (or its per-step ``nn.Sequential``); written to ``path`` if given.

    A binary layer's learned gain goes into the following neuron's ``r`` (see the module notes).

    Example:
        >>> graph = export_nir(trained_classifier, "net.nir")  # doctest: +SKIP
    """
    dt = finite_number("dt", dt, positive=True)  # (a time constant of dt 0, < 0 or NaN was written as is)
    nir = _nir()
    snn = require_snntorch()
    model = uncompiled(model)  # (torch.compile(classifier), or of its network: the model it compiles is exported)
    what = "a SpikingClassifier made without input_shape" if isinstance(model, SpikingClassifier) else "a bare network"
    counts_spikes = isinstance(model, SpikingClassifier) and model.readout is spike_count
    if isinstance(model, SpikingClassifier):
        input_shape = input_shape or model.input_shape
        model = uncompiled(model.network)
    if input_shape is None:
        raise ValueError(f"export_nir needs input_shape (one sample's shape, e.g. (1, 28, 28)) for {what}")
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"export_nir takes a sequential network, got {type(model).__name__}")
    if (isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence)
            or not input_shape or not all(is_whole(s, 1) for s in input_shape)):
        raise ValueError(f"export_nir: input_shape must be one sample's shape, positive integers such as (1, 28, 28), "
                         f"got {input_shape!r}")
    if path is not None:
        path = as_path(path, "export_nir: path")
        if not path.parent.is_dir():
            raise ValueError(f"export_nir: no folder {str(path.parent)!r} to write {str(path)!r} in")
        if path.is_dir():  # (h5py's IsADirectoryError from inside its file creation)
            raise ValueError(f"export_nir: path {str(path)!r} is a folder; give a file in it, e.g. "
                             f"{str(path / 'network.nir')!r}")
    shape = tuple(int(s) for s in input_shape)
    nodes: list = []
    pending: np.ndarray | None = None  # the last weight layer's gain, not yet folded
    real: list[str] = []  # weight layers whose weights are not ±1
    last = list(model._modules)[-1] if len(model) else None
    for name, layer in model.named_children():
        if isinstance(layer, (snn.Leaky, snn.Synaptic)):
            gain = np.ones(shape, dtype=np.float32) if pending is None else _per_element(pending, shape)
            voltage_out = name == last and layer.output and not counts_spikes  # (what the readout takes)
            nodes += _neuron_nodes(nir, snn, name, layer, shape, dt, gain, voltage_out)
            pending = None
            continue
        if pending is not None:
            nodes.append(nir.Scale(scale=_per_element(pending, shape)))
            pending = None
        if isinstance(layer, nn.Flatten):
            start, end = _batchless_dims(name, layer, shape)
            nodes.append(nir.Flatten(input_type={"input": np.array(shape)}, start_dim=start, end_dim=end))
        elif isinstance(layer, (nn.Linear, nn.Conv2d)):
            _check_fits(name, layer, shape, input_shape)
            node, pending = _weight_node(nir, name, layer, shape)
            nodes.append(node)
            if not np.all(np.abs(node.weight) == 1):
                real.append(name)
        elif isinstance(layer, Scale):
            nodes.append(nir.Scale(scale=_array(layer.gain, shape)))
        else:
            raise ValueError(f"export_nir does not support layer {name!r} ({type(layer).__name__}): it exports "
                             "nn.Linear, nn.Conv2d, nn.Flatten, Scale and snnTorch Leaky and Synaptic neurons only")
        shape = tuple(int(s) for s in nodes[-1].output_type["output"])
    if pending is not None:
        nodes.append(nir.Scale(scale=_per_element(pending, shape)))
    if real:
        warnings.warn(f"export_nir: layer(s) {', '.join(map(repr, real))} have real-valued weights, not ±1 (a model "
                      "never passed through metaspike.binarize?); they are written as they are", stacklevel=2)
    graph = nir.NIRGraph.from_list(*nodes, type_check=False)
    if path is not None:
        nir.write(path, graph)
    return graph


def _batchless_dims(name: str, layer: nn.Flatten, shape: tuple[int, ...]) -> tuple[int, int]:
    """``nn.Flatten``'s ``(start_dim, end_dim)`` in NIR's numbering of a sample (``shape``) without its batch
    dimension: one less where a dimension counts from the front, the same where it counts from the back. A
    ``ValueError`` for the batch dimension, which NIR does not have, for a dimension the input lacks, and for an end
    before the start."""
    dims = len(shape) + 1  # (with the batch)
    wanted = {"start_dim": layer.start_dim, "end_dim": layer.end_dim}
    front = {key: dim if dim >= 0 else dim + dims for key, dim in wanted.items()}  # (counted from the front)
    where = f"export_nir: layer {name!r} (Flatten)"
    for key, dim in front.items():
        if not 0 <= dim < dims:
            raise ValueError(f"{where} has {key}={wanted[key]}, but its input [batch, {', '.join(map(str, shape))}] "
                             f"has dimensions {-dims}..{dims - 1}")
        if dim == 0:
            raise ValueError(f"{where} has {key}={wanted[key]}, the batch dimension, which NIR's batch-less shapes do "
                             "not have; flatten from dimension 1 on")
    if front["start_dim"] > front["end_dim"]:
        raise ValueError(f"{where} has start_dim={layer.start_dim} after end_dim={layer.end_dim} for its input "
                         f"[batch, {', '.join(map(str, shape))}]")
    start, end = (dim - 1 if dim >= 0 else dim for dim in wanted.values())
    return start, end


def _check_fits(name: str, layer: nn.Module, shape: tuple[int, ...], input_shape: Sequence[int]) -> None:
    """A ``ValueError`` naming ``input_shape`` where the shape reaching weight layer ``name`` is not what it takes
    (the file would be written, and NIR's type check would refuse to read it back)."""
    if isinstance(layer, nn.Linear):
        fits, takes = len(shape) == 1 and shape[0] == layer.in_features, f"{layer.in_features} inputs"
    else:
        fits, takes = len(shape) == 3 and shape[0] == layer.in_channels, f"{layer.in_channels}-channel images"
    if not fits:
        raise ValueError(f"export_nir: input_shape {tuple(input_shape)} does not fit the network: layer {name!r} "
                         f"({type(layer).__name__}) takes {takes}, and gets samples of shape {shape}")


def _read_graph(nir: ModuleType, source: object):
    """The NIR graph of a file (a path, or a file object, read from its start where it can seek): its bytes read as
    :func:`~metaspike.files.read_regular_file` reads a file from outside, the arrays it declares bounded by the memory
    available before NIR reads them, and anything NIR's reader or h5py raise on a damaged file as one line."""
    import h5py

    if callable(getattr(source, "read", None)):
        what, seekable = "import_nir: source", getattr(source, "seekable", None)
        try:
            if callable(seekable) and seekable():
                source.seek(0)  # (a file already read, or moved, is read from its start; a pipe from where it is)
            data = source.read()
        except (OSError, ValueError) as err:  # (a closed file, a read that fails)
            raise ValueError(f"{what} cannot be read ({first_line(err)})") from None
    else:
        path = as_path(source, "import_nir: source")
        what, data = f"import_nir: {path}", read_regular_file(path, "import_nir: NIR file")
    if not isinstance(data, bytes):
        raise ValueError(f"{what} must be read in binary mode (open(path, 'rb')), got {type(data).__name__}")
    try:
        with h5py.File(io.BytesIO(data), "r") as file:
            declared = _declared_bytes(file, h5py)
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{what} is not an HDF5 file, which NIR files are ({first_line(err)})") from None
    available = memory_available()
    if available is not None and declared > available:
        raise ValueError(f"{what} declares arrays of {declared:,} bytes, more than the {available:,} bytes of memory "
                         "available to read them into")
    try:
        return nir.read(io.BytesIO(data))
    except (ValueError, OSError, KeyError, TypeError, AttributeError, AssertionError, RuntimeError, IndexError) as err:
        raise ValueError(f"{what} is not a NIR graph this reader can read ({type(err).__name__}: "
                         f"{first_line(err) or 'a check of NIR failed'})") from None


def _declared_bytes(file, h5py: ModuleType) -> int:
    """The bytes the arrays of an open HDF5 ``file`` declare (a small compressed file may declare gigabytes)."""
    total = 0

    def add(name: str, item: object) -> None:
        nonlocal total
        if isinstance(item, h5py.Dataset):
            total += int(item.size or 0) * item.dtype.itemsize

    file.visititems(add)
    return total


def _check_weight(weight: torch.Tensor, bias: torch.Tensor | None, dims: int, what: str) -> None:
    """A ``ValueError`` unless ``weight`` has ``dims`` dimensions of at least one element and ``bias`` (where given)
    one value per output."""
    if weight.dim() != dims or weight.numel() == 0:
        raise ValueError(f"the NIR graph's {what} weight must have {dims} dimensions and some elements, got shape "
                         f"{tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"the NIR graph's {what} bias must hold one value per output ({weight.shape[0]}), got shape "
                         f"{tuple(bias.shape)}")


def _pair(value: object, name: str, low: int) -> tuple[int, int]:
    """A conv setting as two whole numbers ``>= low`` (one number stands for both), else one ``ValueError``."""
    values = np.asarray(value).reshape(-1).tolist() if not isinstance(value, str) else [value]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(is_whole(v, low) for v in values):
        raise ValueError(f"the NIR graph's conv {name} must be two whole numbers >= {low} (import_nir builds "
                         f"nn.Conv2d from numbers), got {value!r}")
    return int(values[0]), int(values[1])


def _conv(node: object) -> nn.Conv2d:
    """``nn.Conv2d`` of a NIR ``Conv2d`` node, each setting checked first."""
    weight = _tensor(node.weight, "conv weight")
    bias = _tensor(node.bias, "conv bias")
    _check_weight(weight, bias, 4, "conv")
    groups = node.groups
    if not is_whole(groups, 1) or weight.shape[0] % int(groups):
        raise ValueError(f"the NIR graph's conv groups must be a whole number >= 1 that divides its "
                         f"{weight.shape[0]} output channels, got {groups!r}")
    conv = nn.Conv2d(weight.shape[1] * int(groups), weight.shape[0], tuple(weight.shape[2:]),
                     stride=_pair(node.stride, "stride", 1), padding=_pair(node.padding, "padding", 0),
                     dilation=_pair(node.dilation, "dilation", 1), groups=int(groups))
    _check_conv_output(conv, getattr(node, "input_shape", None))
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


def _check_conv_output(conv: nn.Conv2d, input_shape: object) -> None:
    """One ``ValueError`` where the image ``input_shape`` (height, width) that a NIR conv node declares gives it no
    output (a kernel, dilated, larger than the padded image), or one sample's output larger than the memory available
    (a padding of 20,000 in a 26 KB file asked for 58 GB at the first step); nothing where the node declares no
    readable shape (the input's own checks name it)."""
    shape = np.asarray(input_shape).reshape(-1).tolist() if input_shape is not None else []
    if len(shape) != 2 or not all(is_whole(s, 1) for s in shape):
        return
    _, *out = _conv_output_shape(conv, (conv.in_channels, int(shape[0]), int(shape[1])))
    if min(out) < 1:
        raise ValueError(f"the NIR graph's conv on {int(shape[0])}x{int(shape[1])} images has kernel "
                         f"{conv.kernel_size}, dilation {conv.dilation} and padding {conv.padding}: its output would "
                         f"be {out[0]}x{out[1]}, no image")
    available = memory_available()
    needed = conv.out_channels * out[0] * out[1] * 4  # (float32, one sample)
    if available is not None and needed > available:
        raise ValueError(f"the NIR graph's conv on {int(shape[0])}x{int(shape[1])} images with padding {conv.padding} "
                         f"and dilation {conv.dilation} gives {out[0]}x{out[1]} outputs of {conv.out_channels} "
                         f"channels: {needed:,} bytes a sample, more than the {available:,} bytes of memory available")


def _chain(graph) -> list:
    following = dict(graph.edges)
    if len(following) != len(graph.edges):
        raise ValueError("import_nir supports sequential graphs only (a node has several successors)")
    order, name, seen = [], following.get("input"), set()
    while name is not None and name != "output":
        if name in seen:
            raise ValueError(f"the NIR graph has a cycle through node {name!r}; import_nir supports sequential graphs only")
        seen.add(name)
        if name not in graph.nodes:
            raise ValueError(f"the NIR graph has an edge to {name!r}, which is not one of its nodes")
        order.append(graph.nodes[name])
        name = following.get(name)
    if name != "output":
        raise ValueError("the NIR graph has no path from 'input' to 'output'")
    return order


def _tensor(value, what: str = "a parameter") -> torch.Tensor:
    """A NIR parameter as a float32 tensor; complex, NaN or infinite values (a damaged or hostile file) are one line
    (numpy dropped a complex weight's imaginary part with a warning only)."""
    try:
        array = np.asarray(value)
        if not np.iscomplexobj(array):
            tensor = torch.as_tensor(array.astype(np.float64), dtype=torch.float32)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"the NIR graph's {what} is not an array of numbers") from None
    if np.iscomplexobj(array):
        raise ValueError(f"the NIR graph's {what} holds complex numbers, where a real parameter is expected")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"the NIR graph's {what} has NaN or infinite values (or values beyond float32)")
    return tensor


def _time_constant_tensor(value, dt: float, what: str) -> torch.Tensor:
    """A neuron's time constant, at least one step ``dt`` (``beta = 1 - dt / tau`` must lie in [0, 1))."""
    tau = _tensor(value, what)
    if not bool((tau >= dt).all()):
        raise ValueError(f"the NIR graph's {what} must be >= dt = {dt:g} everywhere (beta = 1 - dt / tau in [0, 1)), "
                         f"got a minimum of {tau.min().item():g}")
    return tau


def _scale(gain: torch.Tensor) -> Scale:
    scale = Scale(tuple(gain.shape))
    with torch.no_grad():
        scale.gain.copy_(gain)
    return scale


def import_nir(source, dt: float = 1.0) -> nn.Sequential:
    """Build the per-step network (snnTorch ``Leaky``/``Synaptic`` neurons) of a NIR graph or file.

    Wrap the result in :class:`SpikingClassifier` to run it over time; a neuron layer that is the graph's last node
    returns ``(spikes, membrane)``. An ``LI``/``CubaLI`` node followed by a ``Threshold`` node comes back as one
    neuron without reset that fires at that threshold; one without a ``Threshold`` passes its voltage on, which only
    the last neuron's membrane does (an output read by the ``"membrane"`` readout): elsewhere it is refused. Layers
    come back real-valued (``nn.Linear``/``nn.Conv2d`` holding the ±1 weights), gains as :class:`Scale` layers.

    Example:
        >>> network = import_nir("net.nir")  # doctest: +SKIP
    """
    nir = _nir()
    snn = require_snntorch()
    finite_number("dt", dt, positive=True)
    graph = source if isinstance(source, nir.NIRGraph) else _read_graph(nir, source)
    nodes = _thresholds_joined(nir, _chain(graph))
    layers: list[nn.Module] = []
    for i, (node, threshold) in enumerate(nodes):
        if isinstance(node, nir.Flatten):  # (NIR numbers a sample's dimensions without the batch)
            dims = (node.start_dim, node.end_dim)
            if not all(is_whole(d, -(2**31)) for d in dims):
                raise ValueError(f"the NIR graph's Flatten start_dim and end_dim must be whole numbers, got {dims}")
            layers.append(nn.Flatten(*(int(d) + 1 if d >= 0 else int(d) for d in dims)))
        elif isinstance(node, (nir.Affine, nir.Linear)):
            weight = _tensor(node.weight, "linear weight")
            bias = None if getattr(node, "bias", None) is None else _tensor(node.bias, "linear bias")
            _check_weight(weight, bias, 2, "linear")
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if bias is not None:
                    linear.bias.copy_(bias)
            layers.append(linear)
        elif isinstance(node, nir.Conv2d):
            layers.append(_conv(node))
        elif isinstance(node, nir.Scale):
            layers.append(_scale(_tensor(node.scale, "scale")))
        elif isinstance(node, (nir.LIF, nir.LI, nir.CubaLIF, nir.CubaLI)):
            last = i == len(nodes) - 1  # (only the last returns (spikes, membrane): a layer after it would fail)
            layers += _neuron(snn, node, threshold, dt, output=last)
        else:
            raise ValueError(f"import_nir does not support NIR node {type(node).__name__}")
    return nn.Sequential(*layers)


def _thresholds_joined(nir: ModuleType, nodes: list) -> list[tuple[object, object | None]]:
    """``nodes`` as ``(node, threshold)`` pairs: an ``LI``/``CubaLI`` node with the ``Threshold`` node that follows it
    (together a spiking neuron without reset), every other node with ``None``. A ``Threshold`` anywhere else is
    refused in one line."""
    joined: list[tuple[object, object | None]] = []
    for node in nodes:
        if not isinstance(node, nir.Threshold):
            joined.append((node, None))
        elif joined and isinstance(joined[-1][0], (nir.LI, nir.CubaLI)) and joined[-1][1] is None:
            joined[-1] = (joined[-1][0], node)
        else:
            raise ValueError("import_nir reads a Threshold node only right after an LI or CubaLI node (a spiking "
                             "neuron without reset)")
    return joined


def _neuron(snn: ModuleType, node, threshold_node, dt: float, output: bool) -> list[nn.Module]:
    """The snnTorch neuron of a NIR neuron node (and the ``Threshold`` node after an ``LI``/``CubaLI`` one, or
    ``None``), after a :class:`Scale` where its input gain is not 1. A ``CubaLIF`` becomes a ``Synaptic`` with
    ``reset_delay=False``, which resets at the spike as ``CubaLIF`` does."""
    v_reset = getattr(node, "v_reset", None)
    if np.any(np.asarray(node.v_leak) != 0) or (v_reset is not None and np.any(np.asarray(v_reset) != 0)):
        raise ValueError("import_nir supports v_leak = 0 and v_reset = 0 only")
    is_cuba = hasattr(node, "tau_syn")
    tau = _time_constant_tensor(node.tau_mem if is_cuba else node.tau, dt, "membrane time constant")
    gain = _tensor(node.r, "input resistance r") * dt / tau
    fires = hasattr(node, "v_threshold")
    if not fires and threshold_node is None and not output:
        raise ValueError(f"import_nir: a {type(node).__name__} node without a Threshold node after it passes its "
                         "voltage to the next node, which an snnTorch neuron in a sequential network does not (it "
                         "passes spikes); only the graph's last neuron node may be one")
    threshold = (_tensor(node.v_threshold, "threshold") if fires
                 else _tensor(threshold_node.threshold, "threshold") if threshold_node is not None else 1.0)
    common = dict(beta=1 - dt / tau, threshold=threshold, init_hidden=True, output=output,
                  reset_mechanism="zero" if fires else "none")
    if is_cuba:
        tau_syn = _time_constant_tensor(node.tau_syn, dt, "synaptic time constant")
        gain = gain * _tensor(node.w_in, "w_in") * dt / tau_syn
        neuron = snn.Synaptic(alpha=1 - dt / tau_syn, reset_delay=False, **common)
    else:
        neuron = snn.Leaky(**common)
    if torch.allclose(gain, torch.ones_like(gain)):
        return [neuron]
    return [_scale(gain), neuron]
