"""NIR export and import of binary-synapse snnTorch ``Leaky`` networks.

:func:`export_nir` writes a network's ±1 weights (``sign(W_h)``, what the forward pass sees) and
its neuron parameters as a NIR graph; :func:`import_nir` builds the same per-step network back.

Supported modules (a sequential chain): ``nn.Flatten``, ``nn.Linear`` (→ ``Affine``/``Linear``),
:class:`~metaspike.snn.layers.Scale` (→ ``Scale``), ``snntorch.Leaky`` with
``reset_mechanism="zero"`` (→ ``LIF``) or ``"none"`` (→ ``LI``). Discretisation with step ``dt``:
``beta = 1 - dt / tau`` and an input gain ``r dt / tau`` (``1`` on export), as snnTorch does.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch
from torch import nn

from metaspike.snn.backends import require_snntorch
from metaspike.snn.layers import Scale
from metaspike.snn.timeloop import SpikingClassifier

__all__ = ["export_nir", "import_nir"]


def _nir() -> ModuleType:
    try:
        return importlib.import_module("nir")
    except ImportError as err:
        raise ImportError(f"NIR export needs nir: pip install nir ({err})") from None


def _array(value: torch.Tensor | float, features: int) -> np.ndarray:
    return torch.as_tensor(value, dtype=torch.float32).detach().cpu().expand(features).numpy().copy()


def _leaky_node(nir: ModuleType, layer: nn.Module, features: int, dt: float):
    beta = _array(layer.beta.clamp(0, 1), features)
    if np.any(beta >= 1):
        raise ValueError("Leaky with beta = 1 (no leak) has no NIR time constant")
    tau = dt / (1 - beta)
    common = dict(tau=tau, r=tau / dt, v_leak=np.zeros(features, dtype=np.float32))
    mechanism = layer.reset_mechanism
    if mechanism == "none":
        return nir.LI(**common)
    if mechanism != "zero":
        raise ValueError(f"NIR LIF resets to v_reset; export Leaky with reset_mechanism='zero', got {mechanism!r}")
    return nir.LIF(**common, v_threshold=_array(layer.threshold, features), v_reset=np.zeros(features, dtype=np.float32))


def export_nir(
    model: nn.Module,
    path: str | os.PathLike | None = None,
    input_shape: Sequence[int] | None = None,
    dt: float = 1.0,
):
    """NIR graph of a :class:`SpikingClassifier` (or its per-step ``nn.Sequential``); written to ``path`` if given.

    Example:
        >>> graph = export_nir(trained_classifier, "net.nir")  # doctest: +SKIP
    """
    nir = _nir()
    snn = require_snntorch()
    if isinstance(model, SpikingClassifier):
        input_shape = input_shape or model.input_shape
        model = model.network
    if input_shape is None:
        raise ValueError("export_nir needs input_shape (one sample's shape) for a bare network")
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"export_nir takes a sequential network, got {type(model).__name__}")
    shape = np.array(input_shape)
    features = int(np.prod(shape))
    nodes = []
    for name, layer in model.named_children():
        if isinstance(layer, nn.Flatten):
            nodes.append(nir.Flatten(input_type={"input": shape}, start_dim=layer.start_dim - 1, end_dim=layer.end_dim))
        elif isinstance(layer, nn.Linear):
            weight = layer.weight.detach().cpu().numpy().copy()
            features = weight.shape[0]
            if layer.bias is None:
                nodes.append(nir.Linear(weight=weight))
            else:
                nodes.append(nir.Affine(weight=weight, bias=layer.bias.detach().cpu().numpy().copy()))
        elif isinstance(layer, Scale):
            nodes.append(nir.Scale(scale=layer.gain.detach().cpu().numpy().copy()))
        elif isinstance(layer, snn.Leaky):
            nodes.append(_leaky_node(nir, layer, features, dt))
        else:
            raise ValueError(f"export_nir does not support layer {name!r} ({type(layer).__name__})")
    graph = nir.NIRGraph.from_list(*nodes, type_check=False)
    if path is not None:
        nir.write(path, graph)
    return graph


def _chain(graph) -> list:
    following = dict(graph.edges)
    if len(following) != len(graph.edges):
        raise ValueError("import_nir supports sequential graphs only (a node has several successors)")
    order, name = [], following.get("input")
    while name is not None and name != "output":
        order.append(graph.nodes[name])
        name = following.get(name)
    if name != "output":
        raise ValueError("the NIR graph has no path from 'input' to 'output'")
    return order


def import_nir(source, dt: float = 1.0) -> nn.Sequential:
    """Build the per-step network (snnTorch ``Leaky`` neurons) of a NIR graph or file.

    Wrap the result in :class:`SpikingClassifier` to run it over time; the last neuron layer
    returns ``(spikes, membrane)``.

    Example:
        >>> network = import_nir("net.nir")  # doctest: +SKIP
    """
    nir = _nir()
    snn = require_snntorch()
    graph = source if isinstance(source, nir.NIRGraph) else nir.read(source)
    nodes = _chain(graph)
    neurons = [i for i, n in enumerate(nodes) if isinstance(n, (nir.LIF, nir.LI))]
    layers: list[nn.Module] = []
    for i, node in enumerate(nodes):
        if isinstance(node, nir.Flatten):
            layers.append(nn.Flatten(node.start_dim + 1, node.end_dim))
        elif isinstance(node, (nir.Affine, nir.Linear)):
            weight = torch.as_tensor(np.asarray(node.weight), dtype=torch.float32)
            bias = getattr(node, "bias", None)
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if bias is not None:
                    linear.bias.copy_(torch.as_tensor(np.asarray(bias), dtype=torch.float32))
            layers.append(linear)
        elif isinstance(node, nir.Scale):
            scale = Scale(len(node.scale))
            with torch.no_grad():
                scale.gain.copy_(torch.as_tensor(np.asarray(node.scale), dtype=torch.float32))
            layers.append(scale)
        elif isinstance(node, (nir.LIF, nir.LI)):
            layers += _leaky(snn, node, dt, output=bool(neurons) and i == neurons[-1])
        else:
            raise ValueError(f"import_nir does not support NIR node {type(node).__name__}")
    return nn.Sequential(*layers)


def _leaky(snn: ModuleType, node, dt: float, output: bool) -> list[nn.Module]:
    tau = torch.as_tensor(np.asarray(node.tau), dtype=torch.float32)
    v_reset = getattr(node, "v_reset", None)
    if np.any(np.asarray(node.v_leak) != 0) or (v_reset is not None and np.any(np.asarray(v_reset) != 0)):
        raise ValueError("import_nir supports v_leak = 0 and v_reset = 0 only")
    gain = torch.as_tensor(np.asarray(node.r), dtype=torch.float32) * dt / tau
    is_lif = hasattr(node, "v_threshold")
    threshold = torch.as_tensor(np.asarray(node.v_threshold), dtype=torch.float32) if is_lif else 1.0
    neuron = snn.Leaky(beta=1 - dt / tau, threshold=threshold, init_hidden=True, output=output,
                       reset_mechanism="zero" if is_lif else "none")
    if torch.allclose(gain, torch.ones_like(gain)):
        return [neuron]
    scale = Scale(len(gain))
    with torch.no_grad():
        scale.gain.copy_(gain)
    return [scale, neuron]
