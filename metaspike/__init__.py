"""metaspike: metaplastic binary synapses for binarized and spiking networks that forget less.

Example:
    >>> import torch, metaspike
    >>> net = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(784, 10)))
    >>> opt = metaspike.MetaplasticAdam(net.parameters(), lr=0.005, meta=1.35)
"""

from metaspike.consolidation import available_rules, consolidate, get_rule
from metaspike.optim import MetaplasticAdam, metaplastic, param_groups
from metaspike.synapse import binarize, binarized_once, hidden_weights, ste_sign

__version__ = "0.1.0"

__all__ = [
    "MetaplasticAdam", "metaplastic", "param_groups", "binarize", "binarized_once", "hidden_weights",
    "ste_sign", "consolidate", "get_rule", "available_rules", "__version__",
]
