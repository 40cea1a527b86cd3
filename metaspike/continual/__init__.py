"""Continual learning: task scenarios, the trainer loop, metrics and run directories."""

from metaspike.continual.batchnorm import batchnorm_state, load_batchnorm_state
from metaspike.continual.checkpoints import CheckpointRefused
from metaspike.continual.freezing import FreezeUnconsolidated, unconsolidated_parameters
from metaspike.continual.metrics import (
    LearnedNothingWarning,
    average_accuracy,
    backward_transfer,
    evaluated_accuracy,
    forgetting,
    forward_transfer,
    last_tasks_accuracy,
    summarize,
    task_accuracy_over_time,
)
from metaspike.continual.results import RunDirectory, load_run
from metaspike.continual.scenarios import (
    Scenario,
    Task,
    TaskStream,
    available_scenarios,
    joint,
    make_scenario,
    permuted,
    sequence,
    split,
    stream,
    task_permutation,
    task_subset,
)
from metaspike.continual.trainer import ContinualResult, ContinualTrainer, TrainerConfig, evaluated_tasks
from metaspike.training import Plugin

__all__ = [
    "Scenario", "Task", "permuted", "sequence", "split", "stream", "joint", "make_scenario",
    "available_scenarios", "ContinualTrainer", "TrainerConfig", "ContinualResult", "RunDirectory",
    "load_run", "average_accuracy", "backward_transfer", "forward_transfer", "forgetting", "summarize",
    "batchnorm_state", "load_batchnorm_state", "TaskStream", "task_permutation", "task_subset", "evaluated_tasks",
    "last_tasks_accuracy", "evaluated_accuracy", "task_accuracy_over_time", "Plugin", "LearnedNothingWarning",
    "FreezeUnconsolidated", "unconsolidated_parameters", "CheckpointRefused",
]
