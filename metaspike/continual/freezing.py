"""Parameters that no consolidation protects, frozen after the first tasks.

A metaplastic rule (or a Bayesian synapse) protects the synapses; a network also learns parameters that no rule acts
on: a binarized layer's output gains, biases, the scale and shift of a normalisation, a neuron's learnable decay or
threshold. They keep learning every task at full rate, so they forget whatever m is: on small spiking networks they
carry most of the forgetting (README, "your own SNN"). :class:`FreezeUnconsolidated` lets them learn during the first
tasks only, as a plugin of :class:`~metaspike.continual.ContinualTrainer` (``metaspike train --freeze-unconsolidated K``).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from metaspike.bayesian.synapses import bayesian_modules
from metaspike.caller import user_stacklevel
from metaspike.checks import is_whole, listed, shown
from metaspike.layer_selection import is_weight_matrix
from metaspike.synapse import weight_matrices
from metaspike.training import Plugin

__all__ = ["FreezeUnconsolidated", "unconsolidated_parameters"]


def unconsolidated_parameters(model: nn.Module) -> list[Tensor]:
    """The parameters of ``model`` that are no synapse: every one but the weights :func:`metaspike.param_groups`
    consolidates (:func:`metaspike.synapse.weight_matrices`: the binary synapses' hidden weights, or a float layer's
    weight in a model without synapses) and every tensor of a Bayesian synapse (BiMU's λ, MESU's μ and σ).

    Example:
        >>> import metaspike
        >>> net = metaspike.binarize(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))
        >>> len(unconsolidated_parameters(net))  # (the linear layer's bias and gain, the BatchNorm's scale and shift)
        4
    """
    synapses = {id(weight) for _, weight in weight_matrices(model)}
    synapses |= {id(tensor) for _, _, _, tensors in bayesian_modules(model) for tensor in tensors}
    return [p for p in model.parameters() if id(p) not in synapses]


def _check_model(model: Any) -> None:
    """One ``TypeError`` unless the hooks got the model: an optimizer or a parameter list failed deep inside the search
    for its layers, and only once a task was done."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"FreezeUnconsolidated's hooks take the model (an nn.Module), got {type(model).__name__}")


def _weight_matrices(model: nn.Module, frozen: list[Tensor]) -> list[str]:
    """The names and shapes of the weight matrices among ``frozen``
    (:func:`metaspike.layer_selection.is_weight_matrix`), each tensor once, where its first module holds it."""
    kept, seen, found = {id(p) for p in frozen}, set(), []
    for layer_name, layer in model.named_modules():
        for key, param in layer.named_parameters(recurse=False):
            if id(param) in kept and id(param) not in seen and is_weight_matrix(layer, key, param):
                seen.add(id(param))
                found.append(f"{layer_name}.{key} ({'x'.join(map(str, param.shape))})".lstrip("."))
    return found


def _warn_of_what_freezes(model: nn.Module, frozen: list[Tensor], after_tasks: int, per_task: bool) -> None:
    """One warning where nothing freezes, or one naming the float weight matrices that freeze: a user whose model has
    nothing besides its synapses (and parameters kept ``per_task`` by the trainer) expects something to freeze, and
    one who left a layer out of ``binarize`` may expect it to go on learning."""
    if not frozen:
        besides = " and the BatchNorm scale and shift the trainer keeps per task" if per_task else ""
        warnings.warn(f"FreezeUnconsolidated: the model has no parameter besides its synapses{besides} (no bias, "
                      "learned gain, normalisation scale or neuron parameter), so nothing freezes",
                      stacklevel=user_stacklevel())
        return
    matrices = _weight_matrices(model, [p for p in frozen if p.requires_grad])  # (not those frozen already)
    if matrices:
        task = "task" if after_tasks == 1 else f"{after_tasks} tasks"
        warnings.warn(f"FreezeUnconsolidated freezes float weight matrices too after the first {task}, since they "
                      f"are no synapse: {listed(matrices, 6)}", stacklevel=user_stacklevel())


class FreezeUnconsolidated(Plugin):
    """After ``after_tasks`` tasks, the parameters no consolidation acts on (:func:`unconsolidated_parameters`) stop
    learning, while the synapses go on: before each optimizer step their gradients are dropped (``grad = None``, which
    every torch optimizer skips), so they keep the values the first tasks gave them. The model's ``requires_grad``
    flags are left as they are. Whatever is no synapse freezes, float weight matrices too (a layer left out of
    ``binarize``, a recurrent cell's weights): where there are any, the first step names them in a warning, as it
    warns where the model has nothing besides its synapses to freeze. What a trainer keeps per task
    (the BatchNorm scale and shift of per-task BatchNorm, :meth:`fit_started`) goes on learning: each task's own is
    restored to evaluate it, so it makes no other task forget.

    On two permuted 8x8-digit tasks (5 seeds, AMD EPYC Zen 5, ``benchmarks/own_conv_snn.py``) it moved the trade-off of
    small spiking networks outward: an snnTorch conv SNN kept 43.8 % of task 1 with task 2 at 67.7 % at m = 10, against
    38.9 % and 64.9 % with every parameter learning; on networks with BatchNorm the change was within a few points
    either way (README).

    Example:
        >>> plugin = FreezeUnconsolidated(after_tasks=1)
        >>> plugin.settings()
        {'after_tasks': 1}
    """

    def __init__(self, after_tasks: int = 1) -> None:
        if not is_whole(after_tasks, 1):
            raise ValueError(f"after_tasks must be an integer >= 1 (the tasks the unconsolidated parameters learn "
                             f"during), got {after_tasks!r}")
        self.after_tasks = int(after_tasks)
        self.tasks_done = 0
        self._frozen: tuple[weakref.ref[nn.Module], list[Tensor]] | None = None
        self._warned: weakref.ref[nn.Module] | None = None
        self._task_specific: set[int] = set()

    @property
    def freezing(self) -> bool:
        """Whether the unconsolidated parameters are frozen now (``after_tasks`` tasks are done)."""
        return self.tasks_done >= self.after_tasks

    def _shared_unconsolidated(self, model: nn.Module) -> list[Tensor]:
        """:func:`unconsolidated_parameters` of ``model`` but those the trainer keeps per task."""
        return [p for p in unconsolidated_parameters(model) if id(p) not in self._task_specific]

    def _parameters_of(self, model: nn.Module) -> list[Tensor]:
        """:meth:`_shared_unconsolidated` of ``model``, found once per model at its first frozen step (a layer added
        while the first tasks trained freezes too)."""
        if self._frozen is None or self._frozen[0]() is not model:
            self._frozen = (weakref.ref(model), self._shared_unconsolidated(model))
        return self._frozen[1]

    def fit_started(self, model: nn.Module, task_specific: Sequence[Tensor]) -> None:
        """Leave ``task_specific`` (what the trainer keeps per task) learning."""
        self._task_specific = {id(p) for p in task_specific}
        self._frozen = self._warned = None  # (found and said again for this fit)

    def before_step(self, model: nn.Module) -> None:
        _check_model(model)
        if self._warned is None or self._warned() is not model:  # (at the first step, before any training)
            self._warned = weakref.ref(model)
            _warn_of_what_freezes(model, self._shared_unconsolidated(model), self.after_tasks,
                                  bool(self._task_specific))
        if self.freezing:
            for param in self._parameters_of(model):
                param.grad = None

    def task_done(self, model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None) -> None:
        _check_model(model)
        self.tasks_done += 1

    def settings(self) -> dict[str, Any]:
        # (parameters kept per task learned on with this version and froze before it: a run of one does not resume as
        # the other; a model without any keeps the settings it always had)
        return {"after_tasks": self.after_tasks, **({"per_task_batchnorm_learns": True} if self._task_specific else {})}

    def state_dict(self) -> dict[str, Any]:
        return {"tasks_done": self.tasks_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        done = state.get("tasks_done") if isinstance(state, dict) else None
        if not is_whole(done, 0):
            raise ValueError(f"a FreezeUnconsolidated state holds 'tasks_done', an integer >= 0; got {shown(done)}")
        self.tasks_done = int(done)
