"""Bayesian metaplastic synapses: MESU (Gaussian weights) and BiMU (binary weights).

Put them onto any model with :func:`bayesianize` and train with :class:`MESU` or :class:`BiMU`.

Example:
    >>> import torch
    >>> from metaspike.bayesian import BiMU, bayesianize, bimu_parameters
    >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(8, 4, bias=False)), "bimu")
    >>> opt = BiMU(bimu_parameters(net))
"""

from metaspike.bayesian.functional import bimu_step, bimu_step_, check_hyperparameters, mesu_step, mesu_step_
from metaspike.bayesian.fused_step import Activation, FusedTrainingStep, register_fused_activation, why_not_fused
from metaspike.bayesian.optim import MESU, BiMU, settings_for_batch
from metaspike.bayesian.synapses import (
    BinaryWeight,
    GaussianWeight,
    bayesian_modules,
    bayesianize,
    bimu_parameters,
    check_samples,
    drawn_samples,
    make_bayesian,
    mesu_param_groups,
    plain_parameters,
    sample_weights,
    sampled_forward,
    sampled_product,
    start_confident,
    synapse_role,
)

__all__ = [
    "mesu_step", "mesu_step_", "bimu_step", "bimu_step_", "check_hyperparameters", "settings_for_batch", "MESU",
    "BiMU",
    "GaussianWeight", "BinaryWeight", "make_bayesian", "bayesianize", "bayesian_modules", "mesu_param_groups",
    "bimu_parameters", "start_confident", "plain_parameters", "check_samples", "sample_weights", "sampled_forward",
    "sampled_product", "synapse_role", "drawn_samples", "FusedTrainingStep", "why_not_fused",
    "register_fused_activation", "Activation",
]
