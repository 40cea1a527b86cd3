"""bnn: binarized neural networks on metaspike's metaplastic synapse.

Example:
    >>> import torch, bnn
    >>> model = bnn.MLP([784, 512, 512, 10])
    >>> print(bnn.summary(model))  # doctest: +ELLIPSIS
    layer ...
"""

import metaspike  # noqa: F401  (first: it refuses a torch older than it runs on before anything imports torch)
from bnn.bayesian_layers import BayesianConv2d, BayesianLinear, BinaryBayesianConv2d, BinaryBayesianLinear
from bnn.layers import BinaryConv2d, BinaryLinear, MagnitudeGate, SignActivation
from bnn.model_summary import summary
from bnn.models import MLP, ConvNet
from bnn.packed import PackedMLP, pack
from bnn.training import evaluate, fit
from metaspike.population_statistics import use_population_statistics

__all__ = [
    "BinaryLinear", "BinaryConv2d", "SignActivation", "MagnitudeGate", "MLP", "ConvNet", "summary",
    "use_population_statistics", "fit", "evaluate", "pack", "PackedMLP",
    "BayesianLinear", "BayesianConv2d", "BinaryBayesianLinear", "BinaryBayesianConv2d",
]
