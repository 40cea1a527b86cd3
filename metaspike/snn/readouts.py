"""Readouts: the per-step outputs of a spiking network become logits ``[B, classes]``.

A step's output is either a tensor or a tuple that starts with the spikes and ends with the membrane potential, as
snnTorch's neurons return them with ``output=True``: ``(spk, mem)`` (Leaky, Lapicque, RLeaky), ``(spk, syn, mem)``
(Synaptic, RSynaptic), ``(spk, syn_exc, syn_inh, mem)`` (Alpha).

* ``"count"``: spikes summed over the steps (the spikes are the tensor, or the tuple's first item; for a last module
  that emits no spikes, a Norse ``LICell``'s voltage, that sum is not a count: the registry's models whose output
  layer does not fire refuse this readout).
* ``"membrane"``: membrane potential averaged over the steps (the tuple's last item, or the tensor
  itself, e.g. the voltage of a Norse ``LICell``). :class:`~metaspike.snn.SpikingClassifier` warns for a
  network whose last neuron returns spikes only (a snnTorch neuron without ``output=True``, a Norse ``LIFCell``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from metaspike.checks import unknown_name

__all__ = ["spike_count", "membrane", "available_readouts", "get_readout"]

StepOutput = Tensor | tuple[Tensor, ...]
Readout = Callable[[Sequence[StepOutput]], Tensor]


def spike_count(outputs: Sequence[StepOutput]) -> Tensor:
    """Sum of the output spikes over time.

    Example:
        >>> spike_count([torch.tensor([[1.0, 0.0]]), (torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2))])
        tensor([[2., 1.]])
    """
    return _stacked(outputs, 0, "spike_count").sum(0)


def membrane(outputs: Sequence[StepOutput]) -> Tensor:
    """Mean output membrane potential over time (the last item of a step's tuple, whatever the states before it).

    Example:
        >>> membrane([(torch.zeros(1, 2), torch.tensor([[1.0, 3.0]])), (torch.zeros(1, 2), torch.tensor([[3.0, 1.0]]))])
        tensor([[2., 2.]])
    """
    return _stacked(outputs, -1, "membrane").mean(0)


def _stacked(outputs: Sequence[StepOutput], item: int, readout: str) -> Tensor:
    """The time steps' outputs (item ``item`` of a step's tuple) stacked on a first time dimension; one line where
    there are none, or where a step's output is not a tensor."""
    steps = [o[item] if isinstance(o, tuple) and o else o for o in outputs]
    if not steps:
        raise ValueError(f"{readout} reads the output of each time step, got no steps")
    if not all(isinstance(step, Tensor) for step in steps):
        kinds = sorted({type(step).__name__ for step in steps if not isinstance(step, Tensor)})
        raise ValueError(f"{readout} reads a tensor (or a tuple of tensors) per time step, got {', '.join(kinds)}")
    exact = next((step.dtype for step in steps if not (step.is_floating_point() or step.is_complex())), None)
    if exact is not None:  # (membrane's mean failed inside torch; counts gave integer logits, which cannot learn)
        raise ValueError(f"{readout} reads floating-point outputs, got {exact} at a time step: the last module must "
                         "return its spikes (or membrane) as floats, as a surrogate spike function does, for the "
                         "gradient to pass through them")
    return torch.stack(steps)


_READOUTS: dict[str, Readout] = {"count": spike_count, "membrane": membrane}


def available_readouts() -> list[str]:
    """Readout names.

    Example:
        >>> available_readouts()
        ['count', 'membrane']
    """
    return sorted(_READOUTS)


def get_readout(readout: str | Readout) -> Readout:
    """A readout by name (a callable is returned as it is).

    Example:
        >>> get_readout("count") is spike_count
        True
    """
    if callable(readout):
        return readout
    try:
        return _READOUTS[readout]
    except (KeyError, TypeError):
        raise ValueError(unknown_name("readout", readout, available_readouts())) from None
