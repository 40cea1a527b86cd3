"""Spiking backends: metaplastic binary synapses for snnTorch, Norse and plain-torch spiking networks.

snnTorch and Norse are imported only when used (``pip install snntorch`` / ``pip install --no-deps norse``).
One line turns an existing spiking model's synapses binary; :class:`SpikingClassifier` runs it over
time so the continual trainer and :class:`metaspike.MetaplasticAdam` take it like any classifier.

Example:
    >>> import torch, metaspike
    >>> from metaspike.snn import SpikingClassifier, SelfRecurrentLIF
    >>> step = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10), SelfRecurrentLIF(10, output=True))
    >>> model = SpikingClassifier(metaspike.binarize(step), num_steps=4, encoder="rate", input_shape=(1, 28, 28))
    >>> opt = metaspike.MetaplasticAdam(metaspike.param_groups(model, 20.0), lr=0.005)
    >>> model(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from metaspike.snn.backends import available_surrogates, reset_states, surrogate, surrogate_parameters
from metaspike.snn.encoders import DirectEncoder, LatencyEncoder, RateEncoder, available_encoders, get_encoder
from metaspike.snn.layers import Scale
from metaspike.snn.neurons import NetSpec, available_neurons, build_neuron_model, register_neuron, spiking_mlp
from metaspike.snn.readouts import available_readouts, get_readout, membrane, spike_count
from metaspike.snn.recurrent import SelfRecurrentLIF
from metaspike.snn.timeloop import SpikingClassifier

__all__ = [
    "SpikingClassifier", "RateEncoder", "LatencyEncoder", "DirectEncoder", "get_encoder", "available_encoders",
    "spike_count", "membrane", "get_readout", "available_readouts", "surrogate", "surrogate_parameters",
    "available_surrogates", "reset_states", "SelfRecurrentLIF", "Scale", "NetSpec", "available_neurons",
    "build_neuron_model", "register_neuron", "spiking_mlp",
]
