"""metaspike: metaplastic binary synapses for binarized and spiking networks that forget less.

Example:
    >>> import torch, metaspike
    >>> net = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(784, 10)))
    >>> opt = metaspike.MetaplasticAdam(net.parameters(), lr=0.005, meta=1.35)
"""

from metaspike.bayesian import BiMU, MESU, bayesianize
from metaspike.chained import ChainedOptimizer
from metaspike.functional import consolidate
from metaspike.optim import MetaplasticAdam, consolidates, metaplastic, param_groups
from metaspike.population_statistics import use_population_statistics
from metaspike.quantizers import magnitude_gate, ste_sign
from metaspike.rules import available_rules, get_rule, register_rule
from metaspike.synapse import binarize, binarized_once, hidden_weights, is_hidden_weight

__version__ = "0.2.0"

__all__ = [
    "MetaplasticAdam", "metaplastic", "param_groups", "consolidates", "binarize", "binarized_once",
    "hidden_weights", "is_hidden_weight", "ste_sign", "magnitude_gate", "consolidate", "get_rule", "register_rule",
    "available_rules", "use_population_statistics", "bayesianize", "MESU", "BiMU", "ChainedOptimizer", "__version__",
]
