"""Continual learning: task scenarios, the trainer loop, metrics and run directories."""

from metaspike.continual.batchnorm import batchnorm_state, load_batchnorm_state
from metaspike.continual.metrics import (
    average_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    summarize,
)
from metaspike.continual.results import RunDirectory, load_run
from metaspike.continual.scenarios import (
    Scenario,
    Task,
    available_scenarios,
    joint,
    make_scenario,
    permuted,
    sequence,
    split,
    stream,
)
from metaspike.continual.trainer import ContinualResult, ContinualTrainer, TrainerConfig

__all__ = [
    "Scenario", "Task", "permuted", "sequence", "split", "stream", "joint", "make_scenario",
    "available_scenarios", "ContinualTrainer", "TrainerConfig", "ContinualResult", "RunDirectory",
    "load_run", "average_accuracy", "backward_transfer", "forward_transfer", "forgetting", "summarize",
    "batchnorm_state", "load_batchnorm_state",
]
