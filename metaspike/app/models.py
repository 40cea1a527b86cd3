"""The registry of model kinds a run can use, so that any run can be rebuilt (and resumed) from its config.

``"bnn"`` is the paper's binarized MLP (:class:`bnn.MLP`); every spiking neuron model of
:mod:`metaspike.snn` is a kind of its own, built with float synapses and turned binary by
:func:`metaspike.binarize`. Adding a kind = one builder ``(hidden, input_shape, classes, num_steps)
-> nn.Module`` and one line in ``_BUILDERS`` (spiking neuron models are added in
:mod:`metaspike.snn.neurons` and appear here by themselves).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

__all__ = ["available_models", "is_spiking", "build_model", "describe_model"]


def _bnn_mlp(hidden: Sequence[int], input_shape: Sequence[int], classes: int, num_steps: int) -> nn.Module:
    from bnn import MLP

    return MLP([math.prod(input_shape), *hidden, classes])


_BUILDERS: dict[str, Callable[..., nn.Module]] = {"bnn": _bnn_mlp}


def _spiking_kinds() -> list[str]:
    from metaspike.snn.neurons import available_neurons

    return available_neurons()


def available_models() -> list[str]:
    """Model kinds a run can use.

    Example:
        >>> available_models()[:3]
        ['alpha', 'bnn', 'lapicque']
    """
    return sorted([*_BUILDERS, *_spiking_kinds()])


def is_spiking(kind: str) -> bool:
    """Whether ``kind`` is a spiking neuron model (its forward pass loops over time steps).

    Example:
        >>> is_spiking("leaky"), is_spiking("bnn")
        (True, False)
    """
    return kind in _spiking_kinds()


def build_model(kind: str, hidden: Sequence[int], input_shape: Sequence[int], classes: int, num_steps: int = 8) -> nn.Module:
    """A classifier of ``kind`` with binary synapses: ``[B, *input_shape] -> [B, classes]`` logits.

    Example:
        >>> build_model("bnn", [64], (1, 28, 28), 10).sizes
        (784, 64, 10)
    """
    if kind in _BUILDERS:
        return _BUILDERS[kind](hidden, input_shape, classes, num_steps)
    if not is_spiking(kind):
        raise ValueError(f"unknown model {kind!r}; available: {', '.join(available_models())}")
    import metaspike
    from metaspike.snn.neurons import NetSpec, build_neuron_model

    spec = NetSpec(input_shape=tuple(input_shape), hidden=tuple(hidden), classes=classes, num_steps=num_steps)
    return metaspike.binarize(build_neuron_model(kind, spec))


def describe_model(kind: str, hidden: Sequence[int], input_shape: Sequence[int], classes: int, num_steps: int = 8) -> str:
    """A one-line description recorded in ``config.json``.

    Example:
        >>> describe_model("bnn", [64], (1, 28, 28), 10)
        'bnn.MLP([784, 64, 10])'
    """
    sizes = [math.prod(input_shape), *hidden, classes]
    if kind == "bnn":
        return f"bnn.MLP({sizes})"
    return f"{kind} spiking network {sizes}, {num_steps} time steps, binary synapses"
