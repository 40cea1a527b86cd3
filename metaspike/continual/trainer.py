"""The continual-learning loop: train tasks in turn, evaluate every task after every epoch.

The trainer receives a model and a function that makes its optimizer; it never builds a model.
Its product is the accuracy matrix ``R[i, j]`` (after training task ``i``, accuracy on task ``j``,
in percent) plus per-epoch curves; a :class:`RunLog` (e.g. :class:`metaspike.continual.RunDirectory`)
receives them as they are produced, so a run that dies keeps what it measured.

Long streams evaluate on a budget (``TrainerConfig.eval_every``, ``eval_tasks``): only every
``eval_every``-th task (and the last) is followed by an evaluation, on the tasks :func:`evaluated_tasks`
picks; the other cells of the matrix are NaN (written empty), and results are logged and
checkpointed only after evaluated tasks.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch._tensor_str import PRINT_OPTS
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from metaspike.bayesian.optim import check_synapse_optimizers
from metaspike.bayesian.synapses import bayesian_modules
from metaspike.caller import user_stacklevel
from metaspike.chained import ChainedOptimizer, needs_closure
from metaspike.checks import check_device, check_seed, first_line, is_whole, lacking_methods
from metaspike.compiled import uncompiled
from metaspike.continual.batchnorm import (
    BATCHNORM_MODES,
    batchnorm_parameters,
    batchnorm_state,
    load_batchnorm_state,
    running_statistics_lag,
)
from metaspike.continual.checkpoints import (
    CHECKPOINT_FORMAT,
    CURVE_COLUMNS,
    MAX_GLOBAL_EPOCH,
    CheckpointRefused,
    LoadedCheckpoint,
    check_checkpoint,
    check_kinds,
    check_loadable,
    check_model_values,
    check_optimizer_state,
    check_plugin_settings,
    check_plugin_states,
    check_same_run,
    group_settings,
    kinds_of,
    load_part,
    settings_of,
)
from metaspike.continual.metrics import (
    LEARNED_MARGIN,
    LearnedNothingWarning,
    largest_rise,
    learned_nothing,
    matrix_rows,
    summarize,
)
from metaspike.continual.scenarios import Scenario, Task, made_when_reached
from metaspike.continual.schedulers import (
    check_plateau_rates,
    check_scheduler,
    code_fingerprint,
    load_scheduler_record,
    scheduled_settings,
    scheduler_record,
    step_scheduler,
)
from metaspike.diagnostics import consolidated_fractions, flip_rates, hidden_weight_histograms, sign_snapshot
from metaspike.distributed import start_alike, unsynced_class, world
from metaspike.optim import inherit_rule_states
from metaspike.optimizer_state import own_state_tensors
from metaspike.penalty_stability import PenaltyTooStiff
from metaspike.population_statistics import evaluates_with_batch_statistics
from metaspike.rules import get_rule
from metaspike.stops import raise_kept_stop, stops_so_far
from metaspike.training import (
    Plugin,
    TrainingDiverged,
    check_inputs,
    checked_plugins,
    evaluate,
    evaluate_together,
    non_finite_parameters,
    refuse_nan_parameters,
    train_epoch,
)

__all__ = ["TrainerConfig", "ContinualResult", "RunLog", "ContinualTrainer", "OPTIMIZER_MODES", "CHECKPOINT_FORMAT",
           "LAST_EVALUATED", "evaluated_tasks", "run_identity", "RESULT_SETTINGS", "applied_optimizer_mode"]

OPTIMIZER_MODES = ("per-task", "shared")
#: An evaluation on a budget always covers this many most recently trained tasks.
LAST_EVALUATED = 5


def evaluated_tasks(trained: int, total: int, budget: int | None = None) -> list[int]:
    """The tasks (0-based) evaluated after training ``trained`` of ``total`` tasks.

    ``budget=None``: every task. Otherwise at most ``budget`` tasks: the last :data:`LAST_EVALUATED`
    trained ones and, among the trained ones, a fixed even sample of ``budget - LAST_EVALUATED``
    tasks over the whole stream that starts with the first task and ends with the last. After the last task a
    sample of two or more points has its last point among the last trained, so ``budget - 1`` tasks are evaluated
    then (a sample of one point, ``budget = 6``, is the first task alone: six are); a budget of more tasks than the
    stream holds evaluates every trained task. Where the sample's points lie closer than the last tasks are many (a
    short stream), the points other than the last are spread over the tasks before those, so that none of them falls
    among the last trained, where it would name a task evaluated anyway.
    ``trained=0`` (the untrained network) gives the whole even sample.

    Example:
        >>> evaluated_tasks(40, 100, budget=10)
        [0, 25, 35, 36, 37, 38, 39]
        >>> evaluated_tasks(100, 100, budget=10)
        [0, 25, 50, 74, 95, 96, 97, 98, 99]
        >>> evaluated_tasks(12, 12, budget=12)  # (over the whole stream, 7 points gave 0, 2, 4, 6, 7, 9, 11: 9 tasks)
        [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
    """
    for value, name, low in ((trained, "trained", 0), (total, "total", 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if trained > total:
        raise ValueError(f"trained must be in 0..total ({total}), got {trained}")
    if budget is None:
        return list(range(total))
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= LAST_EVALUATED:
        raise ValueError(f"budget must be None or an integer > {LAST_EVALUATED}, got {budget!r}")
    if budget - 1 >= total:
        sample = set(range(total))
    else:
        spread, before_last = int(budget) - LAST_EVALUATED, total - LAST_EVALUATED
        sample = {int(j) for j in np.linspace(0, total - 1, spread).round()}
        if sum(j >= before_last for j in sample) > 1:  # (points among the last tasks: spread the others before them)
            sample = {int(j) for j in np.linspace(0, before_last - 1, spread - 1).round()} | {total - 1}
    if trained == 0:
        return sorted(sample)
    return sorted({j for j in sample if j < trained} | set(range(max(0, trained - LAST_EVALUATED), trained)))


@dataclass(frozen=True)
class TrainerConfig:
    """How tasks are trained.

    Attributes:
        epochs: epochs per task.
        batch_size: training mini-batch size.
        batchnorm: ``"per-task"`` (BatchNorm state saved after each task and restored to evaluate
            it, the paper's setting, where the scenario allows it: :attr:`Scenario.per_task_batchnorm`; a
            class-incremental split or a stream evaluates with the shared state) or ``"shared"``.
        optimizer: ``"per-task"`` (a new optimizer for each task: Adam's moments start anew, while a consolidation
            rule's state, switch's or cascade's, goes on: :func:`metaspike.optim.inherit_rule_states`) or
            ``"shared"`` (one for all); a scenario without task boundaries trains one (:func:`applied_optimizer_mode`).
        seed: seeds the batch order.
        eval_batch_size: evaluation batch size (BatchNorm without running statistics normalises
            with the statistics of each evaluated batch, drawn in a fixed random order:
            :func:`metaspike.training.evaluate`).
        device: where the model runs.
        eval_every: evaluate after every ``eval_every``-th task (and after the last one) only.
        eval_tasks: ``None`` (evaluate every task) or a budget ``> LAST_EVALUATED`` of tasks per
            evaluation, chosen by :func:`evaluated_tasks`.
    """

    epochs: int = 20
    batch_size: int = 100
    batchnorm: str = "per-task"
    optimizer: str = "per-task"
    seed: int = 0
    eval_batch_size: int = 1000
    device: str = "cpu"
    eval_every: int = 1
    eval_tasks: int | None = None

    def __post_init__(self) -> None:
        if self.eval_tasks is not None and not is_whole(self.eval_tasks, LAST_EVALUATED + 1):
            raise ValueError(f"eval_tasks must be None or an integer > {LAST_EVALUATED}, got {self.eval_tasks!r}")
        for key in ("epochs", "batch_size", "eval_batch_size", "eval_every"):
            value = getattr(self, key)
            if not is_whole(value, 1):
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if self.batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {self.batchnorm!r}")
        if self.optimizer not in OPTIMIZER_MODES:
            raise ValueError(f"optimizer must be one of {OPTIMIZER_MODES}, got {self.optimizer!r}")
        check_seed("seed", self.seed)
        check_device(self.device)
        for key in ("epochs", "batch_size", "eval_batch_size", "eval_every", "eval_tasks", "seed"):
            value = getattr(self, key)  # (checked whole numbers) numpy's as Python ints: checkpoints record them
            if value is not None:
                object.__setattr__(self, key, int(value))


@dataclass
class ContinualResult:
    """What a run measured.

    Attributes:
        task_names: names of the evaluated tasks (columns of ``matrix``).
        matrix: ``R[i][j]``, accuracy (percent) on task ``j`` after training task ``i`` (rows of tasks after which
            nothing was evaluated are one shared all-NaN tuple, so a long stream's matrix grows with its evaluations).
        baseline: accuracy of the untrained network on each task (for FWT).
        curves: one dict per evaluated epoch: trained task, epoch, loss and the accuracy on each task evaluated then
            (a task left out, by an evaluation budget or as not yet trained, has no entry).
        histograms: hidden-weight histograms per layer after each evaluated task (``eval_every``).
        diagnostics: one dict per epoch: sign-flip rate and consolidated fraction of each layer.
        seconds: wall time of training and evaluation.
        training_tasks: how many tasks the run trains (0: not said, as for a result read back from files).
    """

    task_names: list[str]
    matrix: list[Sequence[float]] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    histograms: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    training_tasks: int = 0
    evaluates_trained_tasks: bool = True

    def __repr__(self) -> str:
        """The tasks, the matrix's size and the metrics, on one line: never the curves and histograms (thousands of
        numbers).

        Example:
            >>> ContinualResult(task_names=["a", "b"], matrix=[[90.0, 10.0], [60.0, 95.0]], seconds=1.5)
            ContinualResult(2 tasks ['a', 'b'], matrix 2x2, ACC 77.50, BWT -30.00, 1.5 s)
        """
        names = self.task_names if len(self.task_names) <= 4 else [*self.task_names[:3], "...", self.task_names[-1]]
        try:  # (a result before its first evaluation has none; a repr never raises)
            metrics = self.metrics if self.matrix else {}
        except ValueError:
            metrics = {}
        shown = ", ".join(f"{key} {value:.2f}" for key, value in metrics.items()
                          if key in ("ACC", "BWT") and isinstance(value, float) and math.isfinite(value))
        return (f"ContinualResult({len(self.task_names)} tasks {names}, matrix {len(self.matrix)}x"
                f"{len(self.task_names)}{', ' + shown if shown else ''}, {self.seconds:.1f} s)")

    @property
    def metrics(self) -> dict[str, float]:
        """ACC, BWT, FWT and forgetting of :attr:`matrix`, and a long stream's metrics of its evaluated tasks (see
        :func:`metaspike.continual.metrics.summarize`: a stream of more tasks than ``LONG_STREAM_TASKS`` has them from
        its first evaluation), read from the evaluated rows (the shared row of the tasks trained without an evaluation
        once). Until every task is trained (a run going on, or stopped) in a stream that trains each evaluated task in
        turn, they cover the tasks trained so far: a task not yet trained has an accuracy (near chance) but nothing to
        remember. (Joint training evaluates every task after its one training task; a stream evaluates one test set.)
        Where the evaluated tasks are not the trained ones in their order (:attr:`evaluates_trained_tasks` false), BWT,
        FWT and forgetting, which pair row ``j`` with column ``j``, are ``nan``, and ACC averages every evaluated task,
        as it does when the run ends (column ``j`` is not the ``j``-th task trained).

        Example:
            >>> ContinualResult(["a", "b"], matrix=[[90.0, 11.0]], training_tasks=2).metrics["ACC"]  # task 1 so far
            90.0
            >>> ContinualResult(["a", "b"], matrix=[[90.0, 80.0]], training_tasks=1).metrics["ACC"]  # joint: all
            85.0
            >>> ContinualResult(["b", "a"], matrix=[[11.0, 90.0]], training_tasks=2,  # evaluated in reverse
            ...                 evaluates_trained_tasks=False).metrics["ACC"]
            50.5
        """
        trained = len(self.matrix)
        baseline = self.baseline or None
        so_far = self.evaluates_trained_tasks and 0 < trained < self.training_tasks == len(self.task_names)
        matrix = matrix_rows(self.matrix, trained if so_far else None)  # (a shared skipped row stays one array)
        if so_far:
            baseline = baseline and baseline[:trained]
        return summarize(matrix, baseline, aligned=self.evaluates_trained_tasks, tasks=len(self.task_names))


def _outer_lists_copied(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each list copied, its items shared (the NaN rows of a long stream stay one tuple)."""
    return {key: list(value) if isinstance(value, list) else value for key, value in values.items()}


class RunLog(Protocol):
    """Receives results while a run goes on (e.g. :class:`metaspike.continual.RunDirectory`).

    ``checkpoint(state)`` gets what :meth:`ContinualTrainer.checkpoint` returns: its lists are copies, but its
    ``model`` and ``optimizer`` entries are state dicts, which refer to the live tensors (as torch's do):
    write the state out (``torch.save``) or ``copy.deepcopy`` it within the call to keep that moment's values.
    """

    def epoch_done(self, result: ContinualResult) -> None: ...

    def task_done(self, result: ContinualResult) -> None: ...

    def checkpoint(self, state: dict[str, Any]) -> None: ...


def _refuse_settings_no_checkpoint_holds(optimizer: Optimizer) -> None:
    """Before a logged run trains, refuse optimizer settings its checkpoints cannot hold (found at the first
    checkpoint, they stopped the run after its first evaluated task, which a long stream reaches after many)."""
    try:
        check_loadable(optimizer.state_dict(), "the optimizer's state_dict()")  # (before a step: its settings)
    except ValueError as err:
        rules = "; a rule object of your own needs @dataclass fields and register_rule" if _holds_unloadable_rule(
            optimizer) else ""
        raise ValueError(f"make_optimizer: {err}{rules}") from None


def _holds_unloadable_rule(optimizer: Optimizer) -> bool:
    """Whether a param group of ``optimizer`` holds a rule object that a checkpoint cannot hold (told by checking the
    rules themselves, not by reading the error's text)."""
    for group in getattr(optimizer, "param_groups", ()):
        rule = group.get("rule")
        if rule is None or isinstance(rule, str):
            continue
        try:
            check_loadable(rule, "rule")
        except ValueError:
            return True
    return False


class _Progress:
    """A tqdm bar when tqdm is installed and wanted; otherwise nothing."""

    def __init__(self, enabled: bool, total: int, desc: str, leave: bool = True) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="batch", leave=leave, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _accuracies_text(accuracies: Sequence[float]) -> str:
    """The progress bar's note of the evaluated accuracies: ``"T1=97.0 T2=88.5"``."""
    return " ".join(f"T{j + 1}={a:.1f}" for j, a in enumerate(accuracies) if not math.isnan(a))


#: Names a task may not take: the results files' own columns (the curves', and the accuracy matrix's first).
RESERVED_TASK_NAMES = (*CURVE_COLUMNS, "after_task")
#: The trainer settings that change a run's numbers: a resumed run must have the checkpoint's.
RESULT_SETTINGS = ("epochs", "batch_size", "batchnorm", "optimizer", "seed", "eval_batch_size", "eval_every",
                   "eval_tasks")
_LISTED_TASK_NAMES = 1000  # a longer stream is named by its first and last tasks


def applied_optimizer_mode(mode: str, scenario: Scenario) -> str:
    """The optimizer mode a run of ``scenario`` with ``TrainerConfig(optimizer=mode)`` trains with: ``mode``, except
    on a scenario without task boundaries (a stream), which one optimizer trains (``"shared"``).

    Example:
        >>> from metaspike.data import load_dataset
        >>> from metaspike.continual.scenarios import stream
        >>> applied_optimizer_mode("per-task", stream(load_dataset("digits"), load_dataset("digits", "test"), 2))
        'shared'
    """
    return mode if scenario.task_boundaries else "shared"


def run_identity(scenario: Scenario, config: TrainerConfig, model: nn.Module | None = None) -> dict[str, Any]:
    """What a checkpoint records of the run it belongs to: a SHA-256 of the scenario (name, definition, tasks) and
    the trainer settings that change its numbers (:data:`RESULT_SETTINGS`), so that a resume on another stream (the
    same task names, another seed), with other settings or by another number of processes (they split each batch
    otherwise) is refused rather than mixed into one result; with ``model``, a SHA-256 of its modules' names and kinds
    (:func:`_model_structure`) and of its layers' settings (:func:`_model_settings`).

    Example:
        >>> from metaspike.continual.scenarios import make_scenario
        >>> run_identity(make_scenario("permuted", "digits", tasks=2), TrainerConfig(epochs=3))["settings"]["epochs"]
        3
    """
    def names(tasks: Sequence[Task]) -> list[Any]:
        count = len(tasks)
        shown = range(count) if count <= _LISTED_TASK_NAMES else (0, count - 1)
        return [count, *(tasks[i].name for i in shown)]

    described = [scenario.name, scenario.definition, names(scenario.tasks), names(scenario.eval_tasks),
                 scenario.task_boundaries, scenario.task_known_at_test, scenario.growing_head]
    if not made_when_reached(scenario.tasks):  # (a stream made as it is reached: its definition fixes its classes)
        described.append([None if t.classes is None else list(t.classes) for t in scenario.tasks])
    described_text = json.dumps(described, sort_keys=True, default=_described_value)
    identity = {"scenario": hashlib.sha256(described_text.encode()).hexdigest(), "data": _data_fingerprint(scenario),
                "data_sums": _data_sums(scenario), "settings": {key: getattr(config, key) for key in RESULT_SETTINGS},
                "processes": world()[1]}
    return identity if model is None else {**identity, "model": _model_structure(model),
                                           "model_settings": _model_settings(model)}


def _described_value(value: Any) -> str:
    """How :func:`run_identity` reads a value of a scenario's definition that JSON has no form for: an array or tensor
    whose ``repr`` does not show it whole (floats, which numpy prints to 8 digits and torch to 4; more than 1000
    values, of which both print the ends) by its dtype, shape and a SHA-256 of its values in native byte order; anything
    else by its ``repr``, as before (two streams of other permutations were one stream to a resume)."""
    if type(value) is np.ndarray and (value.dtype.kind in "fc" or value.size > np.get_printoptions()["threshold"]):
        native = value.dtype.newbyteorder("=")
        try:
            raw = np.ascontiguousarray(value, dtype=native).reshape(-1).view(np.uint8)
        except (TypeError, ValueError):  # (fields that hold objects: their reprs)
            return repr(value)
        return _digest_text("ndarray", native, value.shape, raw)
    if (isinstance(value, Tensor) and not (value.is_quantized or value.is_nested or value.is_meta)
            and (value.is_floating_point() or value.is_complex() or value.numel() > PRINT_OPTS.threshold)):
        data = value.detach().resolve_conj().resolve_neg().cpu()
        data = data if data.layout == torch.strided else data.to_dense()
        return _digest_text("Tensor", data.dtype, data.shape, data.contiguous().reshape(-1).view(torch.uint8).numpy())
    return repr(value)


def _digest_text(kind: str, dtype: Any, shape: Sequence[int], raw: np.ndarray) -> str:
    """``kind(dtype, shape, sha256 ...)`` of an array's bytes ``raw``."""
    return f"{kind}({dtype}, {tuple(shape)}, sha256 {hashlib.sha256(raw.tobytes()).hexdigest()})"


def _model_structure(model: nn.Module) -> str:
    """A SHA-256 of the names and classes of ``model``'s modules (of the model a ``torch.compile`` wraps): a model
    built otherwise with parameters of the same names and shapes (another activation, a neuron of another kind) loads
    a checkpoint's state dict without a word, and the rest of the run would train another network under the same
    name. Classes by their qualified names, not their modules' paths (a script's own classes are ``__main__``'s in
    one process and an imported module's in another), and as before :func:`~metaspike.distributed.sync_batchnorm`
    (the number of processes is compared apart)."""
    modules = [[name, unsynced_class(module).__qualname__] for name, module in uncompiled(model).named_modules()]
    return hashlib.sha256(json.dumps(modules).encode()).hexdigest()


#: The packages whose layers' printed settings (``extra_repr``) :func:`_model_settings` reads: fixed when a layer is
#: made, never learned (another package's layer may print a learned value, which would refuse every resume); the
#: Bayesian synapses' (temperature, evaluation) too: a run resumed with another temperature went on as another network.
_SETTINGS_READ_FROM = ("torch.nn.", "bnn.", "metaspike.bayesian.")


def _model_settings(model: nn.Module) -> str:
    """A SHA-256 of the settings that ``model``'s torch and ``bnn`` layers and Bayesian synapses print
    (``Dropout(p=0.5)``, ``LeakyReLU(negative_slope=0.3)``, a ``bnn`` layer's quantizers and samples, a BiMU synapse's
    temperature): a model of the same modules built with other settings loads a checkpoint's state dict as well, and
    the run would go on as another network (a binary network continued with real weights). The layers of other
    packages (snnTorch's, Norse's, a user's) count by their class only (:func:`_model_structure`)."""
    settings = [[name, module.extra_repr()] for name, module in uncompiled(model).named_modules()
                if type(module).__module__.startswith(_SETTINGS_READ_FROM)
                and not isinstance(module, (nn.ParameterList, nn.ParameterDict))]  # (they print their device)
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()


#: Values of each tensor a data fingerprint reads, evenly spaced (the whole tensor where it holds fewer).
_FINGERPRINT_VALUES = 4096
#: The integer dtype whose view of a tensor's bits :func:`_data_sums` adds up, by the size of an element.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _fingerprinted_parts(scenario: Scenario) -> list[Any]:
    """The datasets a data fingerprint reads: the training and test sets of every task and the test sets of the
    evaluated tasks, each once; of a stream made as it is reached, its first task only (its definition fixes the
    others, and reading them would make them)."""
    if made_when_reached(scenario.tasks):
        parts = [scenario.tasks[0].train, scenario.tasks[0].test]
    else:
        parts = [part for task in scenario.tasks for part in (task.train, task.test)]
        parts += [] if made_when_reached(scenario.eval_tasks) else [task.test for task in scenario.eval_tasks]
    return list({id(part): part for part in parts}.values())  # (a task evaluated as trained is read once)


def _data_fingerprint(scenario: Scenario) -> str:
    """A SHA-256 of the data of the scenario (:func:`_fingerprinted_parts`: samples and labels, their shapes, dtypes
    and :data:`_FINGERPRINT_VALUES` evenly spaced values of each), so that a run resumed on other data under the same
    names and definition (a user's own tensors, any task of them) is refused. :func:`_data_sums` reads every value."""
    digest = hashlib.sha256()
    for data in _fingerprinted_parts(scenario):
        for tensor in (data.x, data.y):
            flat = tensor.detach().reshape(-1)
            digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
            spaced = flat[:: max(1, flat.numel() // _FINGERPRINT_VALUES)].contiguous().cpu()
            digest.update(spaced.view(torch.uint8).numpy().tobytes())  # (as bytes: numpy has no bfloat16)
    return digest.hexdigest()


def _data_sums(scenario: Scenario) -> str:
    """A SHA-256 of every value of the scenario's data (:func:`_fingerprinted_parts`): the labels as they are, and of
    the samples the sums of their bits (read as integers) over each sample and over each feature. The evenly spaced
    values of :func:`_data_fingerprint` missed a feature changed in every sample where the spacing stepped over its
    column. Integer sums are exact in any order, so the same data gives the same sums on any number of threads (0.5 s
    for 10 permuted tasks of 70,000 images of 784 pixels, one thread of an AMD EPYC Zen 4)."""
    digest = hashlib.sha256()
    for data in _fingerprinted_parts(scenario):
        digest.update(data.y.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
        x = data.x.detach()
        bits = x.contiguous().view(_BITS[x.element_size()]).reshape(x.shape[0], math.prod(x.shape[1:]))
        for sums in (bits.sum(0, dtype=torch.int64), bits.sum(1, dtype=torch.int64)):
            digest.update(sums.cpu().numpy().tobytes())
    return digest.hexdigest()


def _rule_code(optimizer: Any) -> list[str | None]:
    """For each param group of ``optimizer`` (of each optimizer of a chain), a fingerprint of its consolidation rule's
    code where the rule is a user's own: its class's ``step`` and ``init_state``
    (:func:`~metaspike.continual.schedulers.code_fingerprint`: their code, not the values they read, which a rule may
    change as it runs); ``None`` for a group without a rule or with one of metaspike's (whose code comes with the
    installed version). A checkpoint records it beside the rules' names and settings, which a rule edited and
    registered again (``replace=True``) keeps. The functions they call are not read (the command's ``--import`` digest
    covers its files)."""
    codes: list[str | None] = []
    for group in optimizer.param_groups:  # (a ChainedOptimizer's: its parts', in turn)
        kind = type(get_rule(group["rule"])) if "rule" in group and "meta" in group else None
        if kind is None or kind.__module__.split(".")[0] == "metaspike":
            codes.append(None)
            continue
        parts = [code_fingerprint(getattr(kind, name, None)) for name in ("step", "init_state")]
        codes.append(None if None in parts else "|".join(parts))
    return codes


def _check_rule_code(stored: Any, optimizer: Any) -> None:
    """One ``ValueError`` where a group's rule is not the code the checkpoint's run trained with
    (:func:`_rule_code`), checked after the groups' settings (another number of groups, or another rule's name, is
    named there); checkpoints written before it was recorded pass."""
    if stored is None:
        return
    if not (isinstance(stored, list) and all(code is None or isinstance(code, str) for code in stored)):
        raise ValueError("the checkpoint's record of its consolidation rules' code is malformed")
    current, groups = _rule_code(optimizer), optimizer.param_groups
    for index, (theirs, ours) in enumerate(zip(stored, current)):
        if theirs is not None and ours is not None and theirs != ours:
            name = get_rule(groups[index]["rule"]).name
            raise ValueError(f"param group {index}'s consolidation rule {name!r} is not the code the checkpoint's run "
                             "trained with (its class's step or init_state changed, as after register_rule(..., "
                             "replace=True) with an edited rule): resume with the rule it was made with")


def _load_saved_optimizer(optimizer: Optimizer, optimizer_state: tuple[Any, Any, Any], scheduler: Any | None) -> None:
    """Load a checkpoint's optimizer state into ``optimizer``: refused in one line where it was another kind of
    optimizer, has other settings or holds state that does not fit (:func:`check_optimizer_state`). The settings
    that ``scheduler`` moves in the optimizer it drives (:func:`~metaspike.continual.schedulers.scheduled_settings`)
    are checked as where the schedule can take them: a scheduler's base rates (compared by
    :func:`~metaspike.continual.schedulers.load_scheduler_record`), ReduceLROnPlateau's reductions from the run's
    rates (:func:`~metaspike.continual.schedulers.check_plateau_rates`)."""
    saved, kinds, rule_code = optimizer_state
    check_kinds(kinds, kinds_of(optimizer), "optimizer")
    built = group_settings(optimizer)
    parts = getattr(optimizer, "optimizers", None) or [optimizer]
    driven = [getattr(scheduler, "optimizer", None) in (part, optimizer) for part in parts]  # (one part, or the chain)
    moved = scheduled_settings(scheduler)
    settings = [[{k: v for k, v in group.items() if k not in moved} for group in inner] if drives else inner
                for drives, inner in zip(driven, built)]
    load_part("optimizer", optimizer, saved)
    if not isinstance(optimizer, ChainedOptimizer):  # (a chain's load does it for its parts together)
        own_state_tensors(optimizer)  # (a checkpoint's tensors made one by a forger would be one in the run)
    check_optimizer_state(optimizer, settings, exempt=moved)
    _check_rule_code(rule_code, optimizer)
    if isinstance(scheduler, ReduceLROnPlateau):
        check_plateau_rates(scheduler, [group["lr"] for drives, inner in zip(driven, built) if drives
                                        for group in inner])


def _check_finite_weights(model: nn.Module, task: int, infinite_by_design: Collection[str]) -> None:
    """Raise :class:`TrainingDiverged` when a parameter became NaN or infinite while the loss stayed finite (e.g. a
    Bayesian rule whose memory window is far too short); those in ``infinite_by_design`` were so before training."""
    bad = non_finite_parameters(model, infinite_by_design)
    if bad:
        window = " or lengthen the memory window" if next(bayesian_modules(model), None) is not None else ""
        raise TrainingDiverged(f"weights became NaN or infinite by the end of task {task} ({', '.join(bad[:3])}); "
                               f"lower the learning rate{window}")


def _checked_before_training(scenario: Scenario) -> list[Task]:
    """The tasks whose data are checked before the untrained network is evaluated: every training and evaluated task
    (each once), so that a task that does not fit the model is named before anything is trained or scored; of a lazy
    sequence (:func:`_lazy`) the first, the others when reached."""
    trained = [scenario.tasks[0]] if made_when_reached(scenario.tasks) else list(scenario.tasks)
    evaluated = [] if made_when_reached(scenario.eval_tasks) else list(scenario.eval_tasks)
    return list({id(task): task for task in trained + evaluated}.values())


@contextmanager
def _refused_as_checkpoint(resume: dict[str, Any]) -> Iterator[None]:
    """Inside it, a ``ValueError`` (a check of the checkpoint ``resume``'s content, or torch's refusal to load a part
    of it, folded into one line) becomes :class:`CheckpointRefused`, naming the checkpoint's file where it was read
    from one (:class:`LoadedCheckpoint`)."""
    try:
        yield
    except ValueError as err:
        why = str(err)
        raise CheckpointRefused(resume.refusal(why) if isinstance(resume, LoadedCheckpoint) else why) from None


def _check_resume(resume: Any) -> None:
    """One ``ValueError`` naming ``fit``'s ``resume`` unless it is ``None`` or a loaded checkpoint (a dict): a file's or
    a run folder's path is loaded first, where its checksum and config are verified.

    Example:
        >>> _check_resume("runs/demo/checkpoint.pt")
        Traceback (most recent call last):
        ...
        ValueError: resume takes a loaded checkpoint (the dict a RunLog's checkpoint receives), not a str: load the file with metaspike.continual.results.load_checkpoint(path), or a run folder's newest good one with latest_good_checkpoint(run_dir)[0]
    """
    if resume is not None and not isinstance(resume, dict):
        raise ValueError(f"resume takes a loaded checkpoint (the dict a RunLog's checkpoint receives), not a "
                         f"{type(resume).__name__}: load the file with metaspike.continual.results.load_checkpoint("
                         "path), or a run folder's newest good one with latest_good_checkpoint(run_dir)[0]")


#: How many points more the first task must score normalised by batch statistics than by the BatchNorm layers' running
#: ones for a warning that the running statistics lag behind the weights (a test set of 1,000 samples: 10 points are
#: 100 predictions, no rounding).
STATISTICS_LAG_POINTS = 10.0

_PLUGIN_STATE_HOOKS = ("state_dict", "load_state_dict")  # needed where a run keeps checkpoints or resumes


def _claim_plugins(plugins: Sequence[Plugin], model: nn.Module) -> None:
    """Mark ``plugins`` as serving ``model``; ``ValueError`` for one that served another model (it would pull this
    model toward the other's weights, silently)."""
    for index, plugin in enumerate(plugins):
        served = getattr(plugin, "_metaspike_model", None)
        if served is not None and served() is not model:
            kind = type(plugin).__name__
            raise ValueError(f"plugins[{index}] ({kind}) served the trainer of another model: its memory (importances, "
                             f"anchors) belongs to that model's weights; give this trainer a new {kind}(...)")
        try:
            plugin._metaspike_model = weakref.ref(model)
        except (AttributeError, TypeError):  # (a plugin with __slots__, or a model that takes no weak reference)
            pass


_MAKE_OPTIMIZER = ("make_optimizer must be a function that builds the optimizer from the model (e.g. lambda m: "
                   "torch.optim.SGD(m.parameters(), lr=0.01)), called once or once per task")


class ContinualTrainer:
    """Train ``model`` on each task of a scenario in turn and measure every task after every epoch.

    Args:
        model: any classifier mapping a batch of inputs to logits.
        make_optimizer: called with the model to create its optimizer (once, or once per task).
        config: :class:`TrainerConfig`.
        progress: show a progress bar per task (under torchrun, the first process only, as ``bnn.fit`` does).
        plugins: :class:`metaspike.training.Plugin` hooks of a continual-learning method (EWC, SI, ...). A plugin's
            memory (importances, anchors) belongs to the model it was trained with: a plugin that served another
            model's trainer is refused (give each model new plugins).
        make_scheduler: called with each new optimizer to create its learning-rate scheduler (e.g.
            ``lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 5)``), stepped after every epoch
            (``ReduceLROnPlateau`` with the epoch's mean training loss); so with ``optimizer="per-task"`` the schedule
            starts again with each task. Checkpoints keep its state.

    After :meth:`fit`, ``batchnorm_states`` holds each trained task's BatchNorm state (task order) where the run
    evaluated each task with its own (per-task BatchNorm, a model with BatchNorm), else nothing: with
    :func:`metaspike.continual.load_batchnorm_state` they give an earlier task's accuracy again.

    Under ``torchrun`` (an initialised process group) every process trains on its slice of each
    mini-batch and gradients are averaged; :meth:`fit` starts every process from the first one's weights and
    refuses a model with BatchNorm that was not passed through :func:`metaspike.distributed.sync_batchnorm` (which
    makes BatchNorm see the whole batch).

    Example:
        >>> from bnn import MLP
        >>> from metaspike.optim import MetaplasticAdam
        >>> from metaspike.continual import make_scenario
        >>> scenario = make_scenario("permuted", ["digits"], tasks=2)
        >>> trainer = ContinualTrainer(MLP([784, 64, 10]), lambda m: MetaplasticAdam(m.parameters(), lr=0.005, meta=1.0),
        ...                            TrainerConfig(epochs=1), progress=False)
        >>> len(trainer.fit(scenario).matrix)
        2
    """

    def __init__(
        self,
        model: nn.Module,
        make_optimizer: Callable[[nn.Module], Optimizer],
        config: TrainerConfig = TrainerConfig(),
        progress: bool = True,
        plugins: Sequence[Plugin] = (),
        make_scheduler: Callable[[Optimizer], Any] | None = None,
    ) -> None:
        if make_scheduler is not None and not callable(make_scheduler):
            raise ValueError("make_scheduler must be a function that builds the scheduler from the optimizer (e.g. "
                             "lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 5)), or None; got "
                             f"{type(make_scheduler).__name__}")
        if not callable(make_optimizer):  # (an optimizer instance is not: torch's optimizers have no __call__)
            raise ValueError(f"{_MAKE_OPTIMIZER}; got {type(make_optimizer).__name__}")
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, TrainerConfig):
            raise ValueError(f"config must be a TrainerConfig, got {type(config).__name__}")
        if next(model.parameters(), None) is None:  # (torch's optimizers refuse an empty parameter list in their words)
            raise ValueError(f"model ({type(model).__name__}) has no parameters to train: give the trainer a model "
                             "with weights (its make_optimizer builds an optimizer over them)")
        if not any(p.requires_grad for p in model.parameters()):  # (it would train nothing, every task, silently)
            raise ValueError(f"model ({type(model).__name__}) has no trainable parameters (requires_grad is False for "
                             "every one): unfreeze what should learn, e.g. model.requires_grad_(True)")
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            raise ValueError("the model's tensors are on the meta device (shapes without values): build it on a real "
                             "device, or give it values first (model.to_empty(device='cpu'), then load_state_dict)")
        self.model = model.to(config.device)
        self.make_optimizer = make_optimizer
        self.make_scheduler = make_scheduler
        self.config = config
        self.progress = progress
        self.plugins = checked_plugins(plugins)
        _claim_plugins(self.plugins, model)
        self.batchnorm_states: list[dict[str, Tensor]] = []
        self._identity: dict[str, Any] | None = None  # the run's, once fit starts (see run_identity)
        self._trained = False  # (once fit has trained the model: a second fit without resume is refused)
        self._stops_at_fit = 0  # (stops_so_far() as the last fit began)

    def _new_optimizer(self) -> Optimizer:
        """``make_optimizer(model)``, checked: an optimizer that trains some of the model's parameters and nothing else
        (an optimizer over another module's parameters would leave the model untrained, silently)."""
        try:
            optimizer = self.make_optimizer(self.model)
        except (TypeError, ValueError) as err:  # (torch.optim.SGD given as make_optimizer took the model for params)
            if isinstance(self.make_optimizer, type) and issubclass(self.make_optimizer, Optimizer):
                raise ValueError(f"{_MAKE_OPTIMIZER}; got the class {self.make_optimizer.__name__}, which failed on "
                                 f"the model ({first_line(err)})") from None
            raise
        if not all(callable(getattr(optimizer, name, None)) for name in ("step", "zero_grad", "state_dict")) or \
                not isinstance(getattr(optimizer, "param_groups", None), list):
            raise ValueError("make_optimizer must return an optimizer (a torch.optim.Optimizer or one with its "
                             f"step, zero_grad, state_dict and param_groups), got {type(optimizer).__name__}")
        if isinstance(optimizer, Optimizer) and needs_closure(optimizer):  # (its step failed with a TypeError)
            raise ValueError(f"make_optimizer built {type(optimizer).__name__}, which needs a closure at every step "
                             "(it evaluates the loss several times a step); the trainer steps with one loss per batch: "
                             "use another optimizer, or train it in a loop of your own")
        own = {id(p) for p in self.model.parameters()}
        given = [p for group in optimizer.param_groups for p in group["params"]]
        foreign = sum(id(p) not in own for p in given)
        if not given or foreign:
            raise ValueError("make_optimizer must build its optimizer over the parameters of the model it is given; "
                             + (f"{foreign} of its {len(given)} parameters are not the model's" if given
                                else "it has no parameters"))
        try:
            check_synapse_optimizers(optimizer, self.model)
        except ValueError as err:
            raise ValueError(f"make_optimizer: {err}") from None
        return optimizer

    def _new_scheduler(self, optimizer: Optimizer) -> Any | None:
        """``make_scheduler(optimizer)``, checked; ``None`` without ``make_scheduler``."""
        if self.make_scheduler is None:
            return None
        try:
            scheduler = self.make_scheduler(optimizer)
        except TypeError as err:
            chained = isinstance(optimizer, ChainedOptimizer)
            if chained and f"{type(optimizer).__name__} is not an Optimizer" in str(err):  # (torch's words)
                raise ValueError("make_scheduler got a ChainedOptimizer, which torch's schedulers do not take: "
                                 "schedule one of its optimizers, e.g. lambda chained: torch.optim.lr_scheduler."
                                 "StepLR(chained.optimizers[0], 5)") from None
            raise
        return check_scheduler(scheduler, optimizer)

    def _per_task_batchnorm(self, scenario: Scenario) -> bool:
        """Whether each task is evaluated with its own BatchNorm state: asked for, and allowed by the scenario."""
        return self.config.batchnorm == "per-task" and scenario.per_task_batchnorm

    def _evaluate_all(self, scenario: Scenario, trained: int, states: list[dict]) -> list[float]:
        """Accuracy on the evaluated tasks (NaN on the others); with per-task BatchNorm, task j < trained uses its own state."""
        cfg = self.config
        per_task = self._per_task_batchnorm(scenario)
        current = batchnorm_state(self.model) if per_task and states else None
        total = len(scenario.eval_tasks)
        # a scenario with its own evaluation tasks (the stream's one test set) evaluates all of them every time
        indices = evaluated_tasks(trained, total, cfg.eval_tasks) if scenario.evaluates_training_tasks else range(total)
        if scenario.growing_head:
            if not trained:  # the untrained network scored on every task as the task is first scored (a fair rise;
                # not only on a budget's sample: a first task of one class scores 100 % untrained, and a rise needs
                # a measured start)
                if evaluates_with_batch_statistics(self.model):  # in the mix of tasks it is first scored among
                    return [self._evaluate_all(scenario, j + 1, states)[j] for j in range(total)]
                return [evaluate(self.model, task.test.x, task.test.y, cfg.eval_batch_size, scenario.seen_classes(j + 1),
                                 cfg.device, check_parameters=False) for j, task in enumerate(scenario.eval_tasks)]
            indices = [j for j in indices if j < trained]  # (the classes of the tasks to come are not in the head)
        accuracies = [math.nan] * total
        # a class-incremental evaluation is not told the task: the head's outputs (all, or those seen so far) serve all
        seen = None if scenario.task_known_at_test else scenario.seen_classes(trained)
        if not scenario.task_known_at_test and evaluates_with_batch_statistics(self.model):
            # a test sample may come from any task: batches of one task's classes would tell the model the task
            for mix, scored in self._mixes(scenario, trained, indices):
                tested = [scenario.eval_tasks[j].test for j in mix]
                scores = evaluate_together(self.model, [(t.x, t.y) for t in tested], cfg.eval_batch_size, cfg.device,
                                           seen, check_parameters=False)
                for j, accuracy in zip(mix, scores):
                    if j in scored:
                        accuracies[j] = accuracy
            return accuracies
        for j in indices:
            task = scenario.eval_tasks[j]
            if current is not None:
                load_batchnorm_state(self.model, states[j] if j < len(states) and j < trained else current)
            classes = task.classes if scenario.task_known_at_test else seen
            accuracies[j] = evaluate(self.model, task.test.x, task.test.y, cfg.eval_batch_size, classes, cfg.device,
                                     check_parameters=False)
        if current is not None:
            load_batchnorm_state(self.model, current)
        return accuracies

    def _warn_of_lagging_statistics(self, scenario: Scenario, states: list[dict], running: float) -> None:
        """One warning, after the first task, where its test set scores :data:`STATISTICS_LAG_POINTS` or more higher
        normalised by each batch's statistics than by the BatchNorm layers' running ones (``running``), scored as the
        run scores it (:meth:`_evaluate_all`, which mixes the tasks' test sets where the task is not told)
        (:func:`~metaspike.continual.batchnorm.running_statistics_lag`): every number of the run would understate what
        the network learned (a binarized torch CNN's task 1 was scored 23-70 % where batch statistics gave 92 %)."""
        # (one process only: under torchrun a synchronised BatchNorm normalising by the batch would wait for the others)
        if not scenario.evaluates_training_tasks or math.isnan(running) or world()[1] != 1:
            return
        try:
            with warnings.catch_warnings():  # (evaluate's advice on batch statistics is about this probe, not the run)
                warnings.simplefilter("ignore")
                lag = running_statistics_lag(self.model, lambda: self._evaluate_all(scenario, 1, states)[0], running)
        except Exception:  # (a diagnosis only, never the run's end: a test set of one sample has no batch statistics)
            return
        if lag is not None and lag >= STATISTICS_LAG_POINTS:
            warnings.warn(
                f"task 1 scores {running:.1f} % in evaluation mode, with the BatchNorm layers' running statistics, and "
                f"{running + lag:.1f} % where each test batch is normalised by its own: the running statistics lag "
                "behind the weights (a binary weight's sign flip changes its layer's output scale at once), so this "
                "run's accuracies understate what the network learned. Normalise by batch statistics "
                "(nn.BatchNorm2d(..., track_running_stats=False), as bnn's layers and the paper do)",
                stacklevel=user_stacklevel())

    @staticmethod
    def _mixes(scenario: Scenario, trained: int, indices: Sequence[int]) -> list[tuple[Sequence[int], set[int]]]:
        """The mixed sets a class-incremental evaluation after ``trained`` tasks scores ``indices`` in (the tasks of
        each set's test samples, and those scored from it): a trained task in the mix of every trained task's test set,
        scored in this evaluation or not, so that its cell depends neither on the evaluation budget nor on the tasks
        to come; a task to come in the mix of all tasks. A scenario with its own evaluation tasks, or made as they are
        reached, mixes the scored tasks."""
        if not scenario.evaluates_training_tasks or made_when_reached(scenario.eval_tasks):
            return [(indices, set(indices))]
        total = len(scenario.eval_tasks)
        earlier, later = {j for j in indices if j < trained}, {j for j in indices if j >= trained}
        return [(range(mix), scored) for mix, scored in ((min(trained, total), earlier), (total, later)) if scored]

    def _check(self, task: Task) -> None:
        """The task's training and test data fit the model (the test labels too: a label the model cannot output
        would be scored as a silent miss). A model that samples its weights draws from a copy of torch's generator
        in the check (:func:`~metaspike.training.check_inputs`), as in evaluation: training's numbers do not depend on
        it, and a resumed run, which checks again, goes on with the numbers the uninterrupted one drew."""
        check_inputs(self.model, task.train.x.to(self.config.device), task.train.y.to(self.config.device),
                     what=f"training data of task {task.name!r}", classes=task.classes)
        check_inputs(self.model, task.test.x.to(self.config.device), task.test.y.to(self.config.device),
                     what=f"test data of task {task.name!r}")

    def fit(self, scenario: Scenario, log: RunLog | None = None, resume: dict[str, Any] | None = None) -> ContinualResult:
        """Train every task of ``scenario`` in order; return (and log) the results.

        After every evaluated epoch the log receives a checkpoint (:meth:`checkpoint`); passing one back as
        ``resume`` continues from there and gives the same numbers as an uninterrupted run (a checkpoint file is loaded
        first: :func:`~metaspike.continual.results.load_checkpoint`, or a run folder's newest good one,
        :func:`~metaspike.continual.results.latest_good_checkpoint`). The log's run stays
        open (``complete: false``, checkpoints kept) until its writer finishes it: with a
        :class:`~metaspike.continual.RunDirectory`, ``log.finish(result)`` (what ``metaspike train`` does, after
        writing ``model.pt``, and then the figures: :func:`metaspike.app.runs.train_and_finish`).
        """
        cfg = self.config
        _check_resume(resume)
        missing = lacking_methods(log, ("epoch_done", "task_done", "checkpoint"))
        if log is not None and missing:
            raise ValueError(f"log must be a RunLog (e.g. metaspike.continual.RunDirectory) with epoch_done, task_done "
                             f"and checkpoint; {type(log).__name__} lacks {', '.join(missing)}")
        for index, plugin in enumerate(self.plugins if log is not None or resume is not None else ()):
            lacking = lacking_methods(plugin, _PLUGIN_STATE_HOOKS)
            if lacking:
                raise ValueError(f"plugins[{index}] ({type(plugin).__name__}) lacks {', '.join(lacking)}, which a run "
                                 "that keeps checkpoints or resumes needs: subclass metaspike.training.Plugin")
        if not isinstance(scenario, Scenario):
            raise ValueError(f"fit takes a Scenario (metaspike.continual.make_scenario, or Scenario(name, tasks, "
                             f"eval_tasks) of your own tasks), got {type(scenario).__name__}")
        if len(scenario.tasks) == 0:
            raise ValueError(f"scenario {scenario.name!r} has no task to train")
        if len(scenario.tasks) * cfg.epochs > MAX_GLOBAL_EPOCH:  # (its curves would be refused when read back)
            raise ValueError(f"TrainerConfig.epochs must be at most {MAX_GLOBAL_EPOCH // len(scenario.tasks):,} for "
                             f"{len(scenario.tasks)} tasks (at most {MAX_GLOBAL_EPOCH:,} epochs in all), "
                             f"got {cfg.epochs}")
        if len(scenario.eval_tasks) == 0:  # (its accuracy matrix would hold no column, and every metric be empty)
            raise ValueError(f"scenario {scenario.name!r} has no task to evaluate (eval_tasks is empty; to evaluate "
                             "the trained tasks, give them again)")
        if cfg.eval_tasks is not None and not scenario.evaluates_training_tasks:  # (it was ignored: every cell of
            # every evaluated row was evaluated, at the cost the budget was given to avoid)
            raise ValueError(f"TrainerConfig.eval_tasks: scenario {scenario.name!r} evaluates its eval_tasks apart "
                             "from the trained tasks (other Task objects, or a list beside tasks made when reached: "
                             "give the stream itself as eval_tasks), each at every evaluation, not a budget of trained "
                             "tasks; leave eval_tasks=None (eval_every still spaces the evaluations)")
        names = scenario.eval_task_names
        taken = sorted(set(names) & set(RESERVED_TASK_NAMES))
        if taken:  # (the curves and the accuracy matrix hold one column per task, beside these)
            raise ValueError(f"scenario {scenario.name!r} names a task {taken[0]!r}, a column the results files keep "
                             f"for themselves ({', '.join(RESERVED_TASK_NAMES)}); give the task another name")
        if len(set(names)) != len(names):  # the curves are keyed by task name: two would share one column
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"scenario {scenario.name!r} names two tasks alike ({', '.join(twice[:3])}); give each "
                             "task its own name")
        if (log is not None or resume is not None) and made_when_reached(scenario.tasks) and not scenario.definition:
            warnings.warn(f"scenario {scenario.name!r} makes its tasks when they are reached and has no definition: a "
                          "resume can check only its first task's data against the checkpoint (a stream drawn with "
                          "another seed would go on from it, mixed into one result); put what fixes its tasks in "
                          "Scenario(..., definition={'seed': ...}), which a resume compares",
                          UserWarning, stacklevel=2)
        if (not scenario.evaluates_training_tasks and not made_when_reached(scenario.tasks)
                and [t.name for t in scenario.tasks] == names):
            warnings.warn(f"scenario {scenario.name!r}: its eval_tasks have the training tasks' names but are other "
                          "Task objects, so they are evaluated as tasks apart from the trained ones (shared BatchNorm "
                          "statistics, every task at every evaluation); to evaluate the trained tasks, give the same "
                          "objects (Scenario(name, tasks, tasks))", stacklevel=2)
        for task in _checked_before_training(scenario):
            self._check(task)
        self._stops_at_fit = stops_so_far()  # (a Ctrl-C or SIGTERM native code drops in an evaluation stops the fit)
        bounded = [type(p).__name__ for p in self.plugins if type(p).task_done is not Plugin.task_done]
        if bounded and not scenario.task_boundaries:  # (it would learn where tasks change, which the others may not)
            raise ValueError(f"{', '.join(bounded)} acts at task boundaries (task_done), which scenario "
                             f"{scenario.name!r} does not tell the learner (task_boundaries=False); compare it on a "
                             "scenario with tasks")
        if resume is None and self._trained:  # (re-running a notebook cell, or retrying after Ctrl-C: the baseline
            # it called untrained was 86.7 %, its forgetting none, and an EWC plugin went on with its old memory)
            raise ValueError("fit has trained this trainer's model already (and its plugins hold what they learned): a "
                             "second fit would go on from there and report it as untrained; build a new model and "
                             "ContinualTrainer for a new run, or pass resume=<a checkpoint> to continue one")
        self._identity = run_identity(scenario, cfg, self.model)
        start_alike(self.model)  # (under several processes: the first one's weights everywhere)
        generator = torch.Generator().manual_seed(cfg.seed)
        infinite = refuse_nan_parameters(self.model, "training")  # (before the untrained model is scored)
        # (before a resume compares the plugins' settings: what they do with the task-specific parameters is one)
        task_specific = list(batchnorm_parameters(self.model).values()) if self._per_task_batchnorm(scenario) else []
        for plugin in self.plugins:
            started = getattr(plugin, "fit_started", None)  # (a plugin that is no Plugin subclass may lack it)
            if started is not None:
                started(self.model, task_specific)
        if resume is None:
            result = ContinualResult(task_names=scenario.eval_task_names, training_tasks=len(scenario.tasks),
                                     evaluates_trained_tasks=scenario.evaluates_training_tasks)
            result.baseline = self._evaluate_all(scenario, 0, [])
            states: list[dict] = []
            first_task, first_epoch, optimizer_state, scheduler_state = 0, 0, None, None
        else:
            with _refused_as_checkpoint(resume):
                result, states, first_task, first_epoch, optimizer_state, scheduler_state = self._restore(
                    resume, scenario, generator)
        start = time.perf_counter() - result.seconds
        optimizer = scheduler = None
        count = len(scenario.tasks)
        per_task = applied_optimizer_mode(cfg.optimizer, scenario) == "per-task"
        not_evaluated = (math.nan,) * len(result.task_names)  # one row for every task without an evaluation
        for i in range(first_task, count):
            task = scenario.tasks[i]
            epoch = first_epoch if i == first_task else 0
            if i > 0 and made_when_reached(scenario.tasks):  # (the others were checked before training)
                self._check(task)
            new_task = epoch == 0 and per_task
            if optimizer is None or new_task:
                previous, optimizer = optimizer, self._new_optimizer()
                if log is not None and previous is None:
                    _refuse_settings_no_checkpoint_holds(optimizer)
                scheduler = self._new_scheduler(optimizer)
                if optimizer_state is not None:  # (at a task boundary a new optimizer starts, but the saved one must
                    # have been built with this run's settings: it is loaded into a copy whose rule states it takes)
                    previous = self._new_optimizer() if new_task else None
                    saved_scheduler = scheduler if previous is None else self._new_scheduler(previous)
                    with _refused_as_checkpoint(resume):
                        load_scheduler_record(saved_scheduler, scheduler_state)
                        _load_saved_optimizer(optimizer if previous is None else previous, optimizer_state,
                                              saved_scheduler)
                if previous is not None:  # (the synapses' own state goes on; Adam's moments start anew)
                    inherit_rule_states(optimizer, previous)
                optimizer_state = scheduler_state = None
            due = (i + 1) % cfg.eval_every == 0 or i + 1 == count
            self._trained = True
            accuracies = self._train_task(scenario, i, epoch, optimizer, scheduler, generator, states, result, start,
                                          log, due)
            if i == 0 and due:
                self._warn_of_lagging_statistics(scenario, states, accuracies[0])
            # (a task's own BatchNorm state is kept only where evaluation reads it: shared statistics would grow the
            # memory and every checkpoint by one state per task)
            states.append(batchnorm_state(self.model) if self._per_task_batchnorm(scenario) else {})
            result.matrix.append(accuracies if due else not_evaluated)
            _check_finite_weights(self.model, i + 1, infinite)  # (every task: a plugin's task_done may have made them)
            if not due:
                continue
            result.histograms.append({"after_task": i + 1, "layers": hidden_weight_histograms(self.model)})
            result.seconds = time.perf_counter() - start
            if log is not None:
                log.task_done(result)
                log.checkpoint(self.checkpoint(i + 1, 0, optimizer, generator, states, result, scheduler))
        result.seconds = time.perf_counter() - start
        self.batchnorm_states = list(states) if self._per_task_batchnorm(scenario) and any(states) else []
        # (a spiking network whose hidden neurons never fire trained at chance, silently; under torchrun the first
        # process speaks for all, as its progress bars do)
        if learned_nothing(result.matrix, result.baseline) and world()[0] == 0:
            warnings.warn(LearnedNothingWarning(
                f"no task's accuracy rose {LEARNED_MARGIN:g} points or more above the untrained model's (best "
                f"{largest_rise(result.matrix, result.baseline):+.1f}): the model learned nothing; check the "
                "optimizer's learning rates and settings, and in a spiking model whether its hidden neurons fire"),
                stacklevel=user_stacklevel())
        return result

    def checkpoint(
        self, task: int, epochs_done: int, optimizer: Optimizer, generator: torch.Generator,
        states: list[dict], result: ContinualResult, scheduler: Any | None = None,
    ) -> dict[str, Any]:
        """Everything needed to continue: weights, optimizer (and its learning-rate scheduler), batch-order RNG,
        torch's global RNG (the weight samples of Bayesian synapses), BatchNorm states, results."""
        return {
            "format": CHECKPOINT_FORMAT,
            "position": {"task": task, "epochs_done": epochs_done},
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler_record(scheduler),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "identity": self._identity,
            "batchnorm_states": list(states),  # (copied: the run appends to its list)
            "plugins": [plugin.state_dict() for plugin in self.plugins],
            "kinds": kinds_of(optimizer, self.plugins),
            "rule_code": _rule_code(optimizer),
            "plugin_settings": [settings_of(plugin) for plugin in self.plugins],
            "result": _outer_lists_copied({f.name: getattr(result, f.name) for f in fields(result)}),
        }

    def _restore(self, state: dict[str, Any], scenario: Scenario, generator: torch.Generator):
        check_checkpoint(state, scenario, self.config.epochs, generator, self.model,
                         {f.name for f in fields(ContinualResult)},
                         per_task_batchnorm=self._per_task_batchnorm(scenario))
        check_same_run(state["identity"], self._identity)
        check_model_values(state["model"], self.model)
        check_kinds(state.get("kinds"), kinds_of(plugins=self.plugins), "plugins")  # (older checkpoints: not kept)
        saved_plugins = state.get("plugins", [])
        check_plugin_settings(self.plugins, state.get("plugin_settings"))
        check_plugin_states(self.plugins, saved_plugins)
        position = state["position"]
        load_part("model", self.model, state["model"])
        generator.set_state(state["generator"])
        if "torch_rng" in state:  # checkpoints written before it was kept lack it
            torch.set_rng_state(state["torch_rng"])
        for plugin, plugin_state in zip(self.plugins, saved_plugins):
            plugin.load_state_dict(plugin_state)
        result = ContinualResult(**_outer_lists_copied(state["result"]))  # (the run appends: the checkpoint stays)
        return (result, list(state["batchnorm_states"]), position["task"], position["epochs_done"],
                (state["optimizer"], state.get("kinds"), state.get("rule_code")), state.get("scheduler"))

    def _train_task(
        self,
        scenario: Scenario,
        index: int,
        first_epoch: int,
        optimizer: Optimizer,
        scheduler: Any | None,
        generator: torch.Generator,
        states: list[dict],
        result: ContinualResult,
        start: float,
        log: RunLog | None,
        due: bool,
    ) -> list[float]:
        """Train task ``index``; when ``due``, evaluate and log after every epoch, else return a NaN row. After the
        last epoch the plugins take the task's end (``task_done``: EWC's Fisher, SI's importances; the bar says so
        while they work) before that epoch's evaluation, so a plugin that changes the model there shows in the
        task's row."""
        cfg = self.config
        task = scenario.tasks[index]
        classes = scenario.seen_classes(index + 1) if scenario.growing_head else task.classes
        batches = math.ceil(len(task.train) / cfg.batch_size)
        shown = self.progress and world()[0] == 0  # (under torchrun the first process's bars stand for all)
        bar = _Progress(shown, cfg.epochs * batches, f"task {index + 1}/{len(scenario.tasks)} {task.name}", due)
        bar.update(first_epoch * batches)
        accuracies: list[float] = [math.nan] * len(result.task_names)
        try:
            for epoch in range(first_epoch + 1, cfg.epochs + 1):
                raise_kept_stop(self._stops_at_fit)  # (one dropped since the fit began, outside a training step)
                signs = sign_snapshot(self.model) if due else {}
                try:
                    loss = train_epoch(self.model, optimizer, task.train.x, task.train.y, cfg.batch_size,
                                       generator, classes, cfg.device, bar, self.plugins, world())
                except PenaltyTooStiff as err:  # (what a caller needs to scale a strength to the whole stream)
                    err.tasks_done = index
                    raise
                if scheduler is not None:
                    step_scheduler(scheduler, loss)
                if epoch == cfg.epochs:
                    self._end_task(task, classes, bar)
                if not due:
                    continue
                accuracies = self._evaluate_all(scenario, index + 1, states)
                row = dict(zip(CURVE_COLUMNS, (index + 1, epoch, index * cfg.epochs + epoch, loss)))
                # (the evaluated tasks only: under a long stream's budget most are not, and a row of every task would
                # make each rewrite and checkpoint of the curves cost tasks x tasks x epochs)
                row.update((name, a) for name, a in zip(result.task_names, accuracies) if not math.isnan(a))
                result.curves.append(row)
                result.diagnostics.append({
                    "task": index + 1, "epoch": epoch,
                    **{f"flip_rate:{k}": v for k, v in flip_rates(signs, self.model).items()},
                    **{f"consolidated:{k}": v for k, v in consolidated_fractions(self.model, optimizer).items()},
                })
                result.seconds = time.perf_counter() - start
                bar.note(_accuracies_text(accuracies))
                if log is not None:
                    log.epoch_done(result)
                    if epoch < cfg.epochs:
                        log.checkpoint(self.checkpoint(index, epoch, optimizer, generator, states, result, scheduler))
        finally:
            bar.close()
        return accuracies

    def _end_task(self, task: Task, classes: tuple[int, ...] | None, bar: _Progress) -> None:
        """The plugins' ``task_done`` on ``task``'s training data and the outputs it trained (``classes``), said on the
        progress bar while they work."""
        if not self.plugins:
            return
        names = ", ".join(dict.fromkeys(type(p).__name__ for p in self.plugins))
        bar.note(f"{names} at the task's end...")
        for plugin in self.plugins:
            plugin.task_done(self.model, task.train.x, task.train.y, classes)
        bar.note("")
