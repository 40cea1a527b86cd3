"""What a trainer checks before it resumes from a checkpoint: a checkpoint is a file from outside.

:func:`check_checkpoint` checks its structure before anything of it is used, :func:`check_same_run` that it belongs
to this run (scenario and trainer settings), :func:`check_kinds` that this run's optimizer and plugins are of the
kinds it was written by, :func:`check_plugin_settings` and :func:`check_plugin_states` that the plugins have its
settings, in its record and in its plugins' states (a state carries its plugin's hyperparameters, which loading would
otherwise put in place of the ones asked for, silently), and :func:`check_optimizer_state` what loading the
optimizer's state brought in. :func:`load_part` loads one part with torch's mismatch report folded into one line.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from metaspike.checks import (
    FLOAT32_MAX,
    check_generator_state,
    is_finite_number,
    is_number,
    is_whole,
    listed,
    nan_or_infinite,
    shown,
)
from metaspike.continual.batchnorm import batchnorm_state
from metaspike.continual.memo import PLAIN_VALUES, PartMemo
from metaspike.continual.metrics import is_accuracy
from metaspike.continual.scenarios import Scenario
from metaspike.optimizer_state import check_parameter_state
from metaspike.training import Plugin

__all__ = ["CHECKPOINT_FORMAT", "CURVE_COLUMNS", "CheckpointRefused", "LoadedCheckpoint", "check_checkpoint",
           "check_curves", "check_batchnorm_states",
           "check_same_run", "kinds_of", "check_kinds", "settings_of", "check_plugin_settings", "check_plugin_states",
           "group_settings", "check_optimizer_state", "load_part", "check_histograms", "check_model_values"]

CHECKPOINT_FORMAT = "metaspike-checkpoint-3"
#: The columns of a curves row before its evaluated tasks' accuracies (one row per evaluation).
CURVE_COLUMNS = ("task", "epoch", "global_epoch", "loss")


class CheckpointRefused(ValueError):
    """A checkpoint that ``ContinualTrainer.fit(..., resume=...)`` refused to continue from: its content does not fit
    the run (another model, stream or settings) or holds what no run writes (NaN weights, an impossible position).
    Raised before anything of the run is trained; the message is the check's own line, which a caller that read the
    checkpoint from a file names (:class:`LoadedCheckpoint`)."""


class LoadedCheckpoint(dict):
    """A checkpoint's content as read from the file ``source`` (what
    :func:`~metaspike.continual.results.load_checkpoint` returns), so that a refusal of its content names the file.
    Saved or copied, it is the plain dict of its content (``torch.load(..., weights_only=True)`` reads it back).

    Example:
        >>> state = LoadedCheckpoint({}, Path("runs/a/checkpoint.pt"))
        >>> print(state.refusal("its model holds NaN"))
        checkpoint runs/a/checkpoint.pt cannot be resumed: its model holds NaN
    """

    def __init__(self, content: dict[str, Any], source: Path) -> None:
        super().__init__(content)
        self.source = source

    def refusal(self, why: str) -> str:
        """``why`` the content was refused, naming the file it came from."""
        return f"checkpoint {self.source} cannot be resumed: {why}"

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return dict, (dict(self),)


def check_same_run(stored: Any, current: dict[str, Any]) -> None:
    """A ``ValueError`` where the checkpoint's run identity (:func:`~metaspike.continual.trainer.run_identity`) is
    not this run's."""
    if not isinstance(stored, dict) or not isinstance(stored.get("settings"), dict):
        raise ValueError("the checkpoint's run identity is malformed")
    if stored.get("scenario") != current["scenario"]:
        raise ValueError("the checkpoint was written by a run on another scenario (its name, definition or tasks "
                         "differ: another seed, dataset or number of tasks?); resume it on the scenario it was made on")
    # (checkpoints written before a fingerprint was kept pass its check)
    if any(key in stored and stored[key] != current[key] for key in ("data", "data_sums")):
        raise ValueError("the checkpoint was written by a run on other data (its tasks' samples or labels differ, "
                         "under the same names and definition); resume it on the data it was made on")
    if "processes" in stored and stored["processes"] != current.get("processes"):  # (the CLI says so from its record)
        raise ValueError(f"the checkpoint was written by a run of {shown(stored['processes'])} processes and would "
                         f"continue with {current.get('processes')}: they split each batch otherwise (a last batch too "
                         "small for every process is skipped by several and trained by one); resume it with as many "
                         "processes as it ran with")
    if "model" in stored and stored["model"] != current.get("model"):
        raise ValueError("the checkpoint was written by a run of another model (its modules' names or kinds differ: "
                         "another activation, layer or neuron?); resume it with the model it was made with")
    if "model_settings" in stored and stored["model_settings"] != current.get("model_settings"):
        raise ValueError("the checkpoint was written by a run of a model built with other settings (its layers print "
                         "other settings: their sizes, a dropout rate, a slope, a bnn layer's quantizer?); resume it "
                         "with the model it was made with")
    differ = [f"{key} {stored['settings'].get(key)!r} there, {value!r} here"
              for key, value in current["settings"].items() if stored["settings"].get(key) != value]
    if differ:
        raise ValueError(f"the checkpoint was written with other trainer settings ({'; '.join(differ)}); resume it "
                         "with the TrainerConfig it was made with")


def check_checkpoint(state: Any, scenario: Scenario, epochs: int, generator: torch.Generator, model: nn.Module,
                     result_fields: set[str], *, per_task_batchnorm: bool) -> None:
    """A checkpoint's structure, before anything of it is used: a checkpoint is a file from outside, and its checksum
    only catches accidental damage. The trained tasks, the matrix rows and the BatchNorm states must agree, every
    row must have a cell per evaluated task, the random states must have their generators' sizes, and the model's
    entries the model's dtypes. ``result_fields``: the fields of
    :class:`~metaspike.continual.ContinualResult` (a checkpoint written before ``training_tasks`` existed lacks it).
    ``per_task_batchnorm``: whether this run evaluates each task with its own BatchNorm state (see
    :func:`check_batchnorm_states`)."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"not a metaspike checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    missing = [k for k in ("position", "model", "optimizer", "generator", "batchnorm_states", "result", "identity")
               if k not in state]
    if missing:
        raise ValueError(f"the checkpoint lacks {', '.join(missing)}")
    position = state["position"]
    if (not isinstance(position, dict) or set(position) != {"task", "epochs_done"}
            or not is_whole(position["task"], 0) or not is_whole(position["epochs_done"], 0)
            or position["task"] > len(scenario.tasks) or position["epochs_done"] >= epochs
            or (position["task"] == len(scenario.tasks) and position["epochs_done"] > 0)):
        raise ValueError(f"checkpoint position {position!r} does not fit this run "
                         f"({len(scenario.tasks)} tasks of {epochs} epochs)")
    trained = position["task"]
    result = state["result"]
    names = result_fields
    if not isinstance(result, dict) or set(result) not in (names, names - {"training_tasks"}):  # (older checkpoints)
        raise ValueError(f"the checkpoint's result must hold exactly {sorted(names)}")
    if result.setdefault("training_tasks", len(scenario.tasks)) != len(scenario.tasks):
        raise ValueError(f"the checkpoint's result says {result['training_tasks']!r} training tasks; this run's "
                         f"scenario has {len(scenario.tasks)}")
    names_found = result["task_names"]
    if not (isinstance(names_found, (list, tuple)) and all(isinstance(name, str) for name in names_found)):
        raise ValueError(f"the checkpoint's task names must be a list of strings, got a {type(names_found).__name__}")
    if list(names_found) != list(scenario.eval_task_names):
        raise ValueError("checkpoint was written for other tasks than this run's scenario has")
    width = len(scenario.eval_task_names)
    matrix = result["matrix"]
    distinct = {id(row): row for row in matrix} if isinstance(matrix, (list, tuple)) else {}  # (a long stream's
    # rows of tasks trained without an evaluation are one shared tuple: each checked once, not tasks x tasks cells)
    if not isinstance(matrix, (list, tuple)) or len(matrix) != trained or not all(
            isinstance(row, (list, tuple)) and len(row) == width and all(map(is_accuracy, row))
            for row in distinct.values()):
        raise ValueError(f"the checkpoint's accuracy matrix must have {trained} rows (its trained tasks) of {width} "
                         "accuracies in [0, 100] (or NaN: not evaluated)")
    baseline = result["baseline"]
    if not isinstance(baseline, list) or len(baseline) != width or not all(map(is_accuracy, baseline)):
        raise ValueError(f"the checkpoint's untrained accuracies must be {width} accuracies in [0, 100] (or NaN)")
    if not all(isinstance(result[k], list) for k in ("curves", "histograms", "diagnostics")):
        raise ValueError("the checkpoint's curves, histograms and diagnostics must be lists")
    check_histograms(result["histograms"], "the checkpoint's list of histograms")  # (hidden_weights.json, at task end)
    curve_columns = set(CURVE_COLUMNS)
    if not all(isinstance(r, dict) and curve_columns <= set(r) <= curve_columns | set(scenario.eval_task_names)
               and all(isinstance(v, (int, float)) for v in r.values()) for r in result["curves"]):
        raise ValueError("the checkpoint's curves must be rows of numbers: task, epoch, global_epoch, loss and the "
                         "accuracy of tasks of this run's scenario")
    rows = result["diagnostics"]  # (a table: rows of numbers with one set of columns)
    if not all(isinstance(r, dict) and set(r) == set(rows[0]) and {"task", "epoch"} <= set(r)
               and all(isinstance(v, (int, float)) for v in r.values()) for r in rows):
        raise ValueError("the checkpoint's diagnostics must be rows of numbers with the same columns")
    if not (isinstance(result["seconds"], float) and math.isfinite(result["seconds"]) and result["seconds"] >= 0):
        raise ValueError(f"the checkpoint's seconds must be a number >= 0, got {result['seconds']!r}")
    check_batchnorm_states(state["batchnorm_states"], trained, model, per_task_batchnorm)
    for key, expected in (("generator", generator.get_state()), ("torch_rng", torch.get_rng_state())):
        value = state.get(key, expected)  # (checkpoints written before torch_rng was kept lack it)
        if not isinstance(value, Tensor) or value.dtype != expected.dtype or value.shape != expected.shape:
            raise ValueError(f"the checkpoint's {key} is not a state of torch's generator")
        check_generator_state(value, f"the checkpoint's {key}")  # (its size is right: are its values?)
    if not isinstance(state["model"], dict) or not isinstance(state["optimizer"], dict):
        raise ValueError("the checkpoint's model and optimizer must be state dicts")
    unnamed = [key for key in state["model"] if not isinstance(key, str)]  # (torch's load fails at key.startswith)
    if unnamed:
        raise ValueError(f"the checkpoint's model has entries that are not named by text: {unnamed[:5]}")
    own = model.state_dict()
    mistyped = [key for key, value in state["model"].items()
                if key in own and (not isinstance(value, Tensor) or value.dtype != own[key].dtype)]
    if mistyped:
        raise ValueError(f"the checkpoint's model has entries of another type than this run's model: {mistyped[:5]}")
    # (the rows its run wrote up to its position, under the settings it records: check_same_run holds them to ours)
    check_curves(result, position, _recorded_schedule(state["identity"]), len(scenario.tasks))


def check_model_values(saved: dict[str, Any], model: nn.Module) -> None:
    """One ``ValueError`` where a checkpoint's model entries (``saved``, checked by :func:`check_checkpoint`) hold NaN
    or infinite values, but for an entry infinite exactly as ``model``'s own, freshly built (a frozen ``-inf`` mask): a
    run stops before it writes a NaN weight, so one here was put there, and would read as this run's divergence. Run
    after the checkpoint is known to be of this run (:func:`check_same_run`, whose words fit a model of other sizes
    better) and before anything loads (a load copies the entries that fit before it refuses the others, and makes
    room for a BatchNorm's statistics as they load).

    Example:
        >>> net = nn.Linear(2, 1)
        >>> check_model_values({"weight": torch.full((1, 2), math.nan), "bias": torch.zeros(1)}, net)
        Traceback (most recent call last):
        ...
        ValueError: the checkpoint's model holds NaN or infinite values (in weight), which a run never writes
    """
    own = model.state_dict()
    broken = []
    for key, value in saved.items():  # (one scan of each entry: NaN, or infinities not the model's own)
        nan, infinite = nan_or_infinite(value) if isinstance(value, Tensor) else (False, False)
        if nan or (infinite and not _infinite_alike(value, own.get(key))):
            broken.append(str(key))
    if broken:
        raise ValueError(f"the checkpoint's model holds NaN or infinite values (in {', '.join(broken[:5])}), which a "
                         "run never writes")


def _recorded_schedule(identity: Any) -> tuple[int, int]:
    """The ``epochs`` and ``eval_every`` a checkpoint's run identity records (the settings its curves were written
    under; :func:`check_same_run` then holds them to this run's), or one ``ValueError`` where they are not whole
    numbers >= 1."""
    settings = identity.get("settings") if isinstance(identity, dict) else None
    found = [settings.get(key) if isinstance(settings, dict) else None for key in ("epochs", "eval_every")]
    if not all(is_whole(value, 1) for value in found):
        raise ValueError("the checkpoint's run identity is malformed: its settings must record epochs and eval_every "
                         "as whole numbers >= 1")
    return found[0], found[1]


def check_curves(result: dict[str, Any], position: dict[str, int], schedule: tuple[int, int], tasks: int) -> None:
    """A ``ValueError`` unless a checkpoint's curves (and the diagnostics written beside them) are the rows its run
    wrote up to its ``position`` (``{"task", "epochs_done"}``, checked), with ``schedule`` the ``(epochs, eval_every)``
    its run recorded over ``tasks`` training tasks. The trainer evaluates after every epoch of a task it evaluates
    (every ``eval_every``-th and the last) and after none of the others, appends a row ``(task, epoch, global_epoch =
    (task - 1) * epochs + epoch)`` to each list at each evaluation, and appends the last epoch's accuracies to the
    accuracy matrix too (a task trained without one gets a NaN row); it writes a checkpoint inside an evaluated task or
    after one, never elsewhere. So the rows must be exactly those, each with a finite loss and accuracies in [0, 100]
    (not ``bool``: what ``curves.csv`` is read back with, :func:`~metaspike.continual.results.load_run`), a task's
    last row must hold its matrix row, and an unevaluated task's matrix row be NaN. (Curves of another count resumed
    into a run that trained the wrong epochs and then refused its own ``curves.csv``.)

    Example:
        >>> row = {"task": 1, "epoch": 1, "global_epoch": 1, "loss": 0.5, "a": 90.0}
        >>> result = {"curves": [row], "diagnostics": [{"task": 1, "epoch": 1}], "matrix": [], "task_names": ["a"]}
        >>> check_curves(result, {"task": 0, "epochs_done": 1}, (3, 1), tasks=2)
        >>> check_curves(result, {"task": 0, "epochs_done": 2}, (3, 1), tasks=2)
        Traceback (most recent call last):
        ...
        ValueError: the checkpoint's curves hold 1 rows where its position (0 tasks trained, 2 epochs into the next; 3 epochs a task, eval_every 1) gives 2: it was edited
    """
    epochs, eval_every = schedule
    trained, epochs_done = position["task"], position["epochs_done"]
    where = (f"its position ({trained} tasks trained, {epochs_done} epochs into the next; {epochs} epochs a task, "
             f"eval_every {eval_every})")
    due = [(i + 1) % eval_every == 0 or i + 1 == tasks for i in range(min(trained + 1, tasks))]
    if (epochs_done and not due[trained]) or (trained and not epochs_done and not due[trained - 1]):
        raise ValueError(f"the checkpoint's position does not fit: {where} is inside or after a task the run does not "
                         "evaluate, where it writes no checkpoint")
    expected = [(i + 1, e, i * epochs + e) for i in range(trained) if due[i] for e in range(1, epochs + 1)]
    expected += [(trained + 1, e, trained * epochs + e) for e in range(1, epochs_done + 1)]
    curves, names, matrix = result["curves"], result["task_names"], result["matrix"]
    for what, rows, columns in (("curves", curves, CURVE_COLUMNS[:3]),
                                ("diagnostics", result["diagnostics"], CURVE_COLUMNS[:2])):
        if len(rows) != len(expected):
            raise ValueError(f"the checkpoint's {what} hold {len(rows)} rows where {where} gives {len(expected)}: "
                             "it was edited")
        for number, (row, place) in enumerate(zip(rows, expected), start=1):
            found = tuple(row[key] for key in columns)
            if not all(is_whole(value, 1) for value in found) or found != place[:len(columns)]:
                raise ValueError(f"the checkpoint's {what} row {number} has "
                                 f"{', '.join(f'{k} {shown(v)}' for k, v in zip(columns, found))} where {where} gives "
                                 f"{', '.join(f'{k} {v}' for k, v in zip(columns, place))}: it was edited")
    for number, row in enumerate(curves, start=1):
        if not is_finite_number(row["loss"]):
            raise ValueError(f"the checkpoint's curves row {number}: loss {shown(row['loss'])} is not a finite number")
        wrong = next((k for k, v in row.items() if k not in CURVE_COLUMNS and not is_accuracy(v)), None)
        if wrong is not None:
            raise ValueError(f"the checkpoint's curves row {number}: {wrong!r} is {shown(row[wrong])}, not an "
                             "accuracy in [0, 100]")
    last_rows = iter(row for row in curves if row["epoch"] == epochs)  # (none of the current task: not yet trained)
    unevaluated = {id(matrix[i]): matrix[i] for i in range(trained) if not due[i]}  # (a long stream's one shared row)
    if any(a == a for row in unevaluated.values() for a in row):
        raise ValueError(f"the checkpoint's accuracy matrix has accuracies after a task that {where} does not "
                         "evaluate: it was edited")
    for i in (i for i in range(trained) if due[i]):
        last = next(last_rows)
        cells = [last.get(name, math.nan) for name in names]  # (absent, or NaN as earlier versions wrote: not scored)
        if not all(a == b or (a != a and b != b) for a, b in zip(cells, matrix[i])):
            raise ValueError(f"the checkpoint's curves row of task {i + 1}'s last epoch differs from row {i + 1} of "
                             "its accuracy matrix (both hold the accuracies of that evaluation): it was edited")


def _non_finite(entries: dict[Any, Any]) -> list[str]:
    """The keys of ``entries`` (a state dict) whose value is a tensor holding NaN or ±inf
    (:func:`~metaspike.checks.nan_or_infinite`: sparse and complex ones too): a run stops before it writes one (a
    loss or weight turned NaN), so one in a checkpoint was put there, and would read as this run's divergence, or as
    wrong numbers that nothing flags."""
    return [str(key) for key, value in entries.items() if isinstance(value, Tensor) and any(nan_or_infinite(value))]


def _infinite_alike(saved: Tensor, own: Tensor | None) -> bool:
    """Whether a checkpoint's entry ``saved``, which holds infinities and no NaN, holds them exactly where, and of the
    sign, this run's freshly built model's entry ``own`` (``None``: the model has none) holds them, in the same shape
    and layout: an infinite mask the model is built with. A forged infinity elsewhere, of the other sign, or in an
    entry of another shape (which a load may still take: a ``(1,)`` one for a 0-d parameter) is not."""
    if (own is None or is_lazy(own) or saved.shape != own.shape or saved.layout != own.layout
            or not nan_or_infinite(own)[1]):
        return False
    own = own.to(saved.device)
    if saved.layout != torch.strided:  # (a sparse mask: its dense form, which a mask of by-design infinities is)
        saved, own = saved.to_dense(), own.to_dense()
    return torch.equal(torch.where(saved.isinf(), saved, 0), torch.where(own.isinf(), own, 0))


def check_batchnorm_states(states: Any, trained: int, model: nn.Module, per_task: bool) -> None:
    """A ``ValueError`` unless ``states`` holds one BatchNorm state per trained task that fits ``model`` (each of its
    BatchNorm layers' parameters, in their shapes and dtypes; a state may hold more, as earlier versions kept), with
    finite floating-point values (the checksum is no guard: anyone can recompute it). Where the run's BatchNorm is
    not per task (``per_task`` false: ``batchnorm="shared"``, or a scenario that evaluates with the shared state), a
    task's state is never read, and the trainer keeps an empty one: that is accepted there, and only there.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> check_batchnorm_states([{}], 1, net, per_task=False)
        >>> check_batchnorm_states([{}], 1, net, per_task=True)
        Traceback (most recent call last):
        ...
        ValueError: the checkpoint's BatchNorm states do not fit this run's model
        >>> state = {k: v.clone() for k, v in batchnorm_state(net).items()}
        >>> state["1.weight"][0] = float("nan")
        >>> check_batchnorm_states([state], 1, net, per_task=True)
        Traceback (most recent call last):
        ...
        ValueError: the checkpoint's BatchNorm state of task 1 holds NaN or infinite values (in 1.weight), which a run never writes
    """
    if not isinstance(states, list) or len(states) != trained or not all(isinstance(s, dict) for s in states):
        raise ValueError(f"the checkpoint must hold a BatchNorm state for each of its {trained} trained tasks")
    reference = batchnorm_state(model)
    for task, s in enumerate(states, start=1):
        if not s and not per_task:
            continue
        if not set(reference) <= set(s) or any(not isinstance(s[k], Tensor) or s[k].shape != v.shape
                                               or s[k].dtype != v.dtype for k, v in reference.items()):
            raise ValueError("the checkpoint's BatchNorm states do not fit this run's model")
        broken = _non_finite(s)  # (a NaN scale evaluates its task at chance, and the run ends complete)
        if broken:
            raise ValueError(f"the checkpoint's BatchNorm state of task {task} holds NaN or infinite values (in "
                             f"{', '.join(broken[:5])}), which a run never writes")


MAX_GLOBAL_EPOCH = 10**9
"""The most epochs a run trains over all its tasks (``tasks x epochs``): the largest ``global_epoch`` its
``curves.csv`` may name when read back, so that an edited or forged number cannot pass for one a run wrote."""

MAX_AFTER_TASK = 10**6
"""The largest task number ``accuracy_matrix.csv`` and ``hidden_weights.json`` may name: the matrix read back holds a
row for every task (one edited cell of 1e12 asked for a trillion rows), and a run trains at most
``metaspike.app.config.MAX_TASKS``."""

#: The largest count or size a histogram may hold: float64 holds every integer up to it (a count of 1e308 overflowed
#: the figure's log scale; a size of 4000 digits filled its title).
_LARGEST_COUNT = 2**53


def check_histograms(data: Any, what: str | Path) -> list[dict[str, Any]]:
    """``data`` if it is a list of ``{"after_task", "layers": {name: {"edges", "counts"[, "shape"], ...}}}`` snapshots
    (what a run writes to ``hidden_weights.json``), else one ``ValueError`` beginning with ``what`` (the file, or the
    checkpoint's list a run goes on writing there): every snapshot has the same layers (none where the model has no
    weight matrices: a user's model of bare parameters), ``after_task`` is a task number, greater than the snapshot
    before's (as ``accuracy_matrix.csv``'s rows), and a layer's other entries
    are numbers, texts or ``null`` (a checkpoint's entry that JSON cannot hold would stop the run at its next task's
    end).

    Example:
        >>> layer = {"edges": [-1.0, 0.0, 1.0], "counts": [5, 7], "shape": [4, 3], "median_abs": 0.3}
        >>> len(check_histograms([{"after_task": 1, "layers": {"0": layer}}], "hidden_weights.json"))
        1
        >>> check_histograms([{"after_task": [1], "layers": {}}], "hidden_weights.json")
        Traceback (most recent call last):
        ...
        ValueError: hidden_weights.json is malformed: snapshot 1: 'after_task' must be a task number in 1..1000000
    """
    if not isinstance(data, list):
        raise ValueError(f"{what} is malformed: expected a list of snapshots, found {type(data).__name__}")
    names = None
    for k, snapshot in enumerate(data, start=1):
        where = f"{what} is malformed: snapshot {k}"
        if not isinstance(snapshot, dict) or not isinstance(snapshot.get("layers"), dict) or "after_task" not in snapshot:
            raise ValueError(f"{where} is not an object with 'after_task' and 'layers'")
        if not is_whole(snapshot["after_task"], 1) or snapshot["after_task"] > MAX_AFTER_TASK:
            raise ValueError(f"{where}: 'after_task' must be a task number in 1..{MAX_AFTER_TASK}")
        if k > 1 and snapshot["after_task"] <= data[k - 2]["after_task"]:  # (a run takes one snapshot per task)
            raise ValueError(f"{where}: 'after_task' must be greater than the snapshot before's "
                             f"({data[k - 2]['after_task']}), found {snapshot['after_task']}")
        if names is not None and list(snapshot["layers"]) != names:
            raise ValueError(f"{where} has layers {listed(list(snapshot['layers']))}, snapshot 1 has {listed(names)}")
        names = list(snapshot["layers"])
        for name, layer in snapshot["layers"].items():
            edges = layer.get("edges") if isinstance(layer, dict) else None
            counts = layer.get("counts") if isinstance(layer, dict) else None
            if not (isinstance(edges, list) and isinstance(counts, list) and all(map(is_finite_number, edges + counts))):
                raise ValueError(f"{where}, layer {name!r}: 'edges' and 'counts' must be lists of finite numbers")
            if any(c < 0 or c > _LARGEST_COUNT for c in counts):
                raise ValueError(f"{where}, layer {name!r}: 'counts' must be in [0, 2**53]")
            if len(edges) != len(counts) + 1:
                raise ValueError(f"{where}, layer {name!r}: {len(counts)} counts need {len(counts) + 1} edges, found {len(edges)}")
            # (equal neighbours pass: files written before 2026-12-05 rounded the edges of tiny weights to 6 decimals)
            if any(b < a for a, b in zip(edges, edges[1:])) or max(map(abs, edges)) > FLOAT32_MAX:
                raise ValueError(f"{where}, layer {name!r}: 'edges' must not decrease from bin to bin and must lie "
                                 "within float32's range (the weights' own)")
            shape = layer.get("shape", [])
            if not (isinstance(shape, list) and all(is_whole(d, 0) and d <= _LARGEST_COUNT for d in shape)):
                raise ValueError(f"{where}, layer {name!r}: 'shape' must be a list of integers in [0, 2**53]")
            other = [key for key, value in layer.items() if key not in ("edges", "counts", "shape")
                     and not (value is None or isinstance(value, str) or is_number(value))]
            if other:
                raise ValueError(f"{where}, layer {name!r}: {other[0]!r} must be a number, a text or null")
    return data


def kinds_of(optimizer: Any = None, plugins: Sequence[Any] = ()) -> dict[str, list[str]]:
    """The class names of an optimizer (each optimizer of a chain; none for ``None``) and of the plugins, as a
    checkpoint records them.

    Example:
        >>> kinds_of(torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1), [])
        {'optimizer': ['SGD'], 'plugins': []}
    """
    optimizers = [] if optimizer is None else getattr(optimizer, "optimizers", [optimizer])
    return {"optimizer": [type(inner).__name__ for inner in optimizers],
            "plugins": [type(plugin).__name__ for plugin in plugins]}


def check_kinds(stored: Any, current: dict[str, list[str]], part: str) -> None:
    """A ``ValueError`` naming both where the checkpoint's ``part`` (``"optimizer"`` or ``"plugins"``) is of other
    classes than this run's (checkpoints written before the kinds were recorded pass)."""
    if stored is None:
        return
    if not isinstance(stored, dict) or not isinstance(stored.get(part), list):
        raise ValueError("the checkpoint's record of its optimizer and plugins is malformed")
    theirs, ours = stored[part], current[part]
    if theirs != ours:
        what = "make_optimizer builds" if part == "optimizer" else "plugins are"
        raise ValueError(f"the checkpoint was written with {part} {', '.join(map(str, theirs)) or 'none'}; this run's "
                         f"{what} {', '.join(ours) or 'none'}: resume it with the {part} it was made with")


def settings_of(plugin: Any) -> dict[str, Any]:
    """A plugin's :meth:`~metaspike.training.Plugin.settings`, as a checkpoint records them (none for a plugin that
    does not subclass ``Plugin`` and has no ``settings``).

    Example:
        >>> from metaspike.continual.baselines import EWC
        >>> settings_of(EWC(lam=10.0))
        {'lam': 10.0, 'samples': 1000}
    """
    settings = getattr(plugin, "settings", None)
    found = settings() if callable(settings) else {}
    if not isinstance(found, dict):
        raise ValueError(f"{type(plugin).__name__}.settings() must return a dict of its hyperparameters, got "
                         f"{type(found).__name__}")
    return found


def check_plugin_settings(plugins: Sequence[Any], saved: Any) -> None:
    """A ``ValueError`` where a plugin's hyperparameters (:meth:`~metaspike.training.Plugin.settings`, e.g. EWC's
    ``lam``, SI's ``c``) differ from those the checkpoint recorded for it (``saved``: one dict per plugin, or
    ``None`` for a checkpoint written before they were recorded). A plugin's state carries its hyperparameters, and
    loading it would put the checkpoint's in place of the ones asked for, silently (:func:`check_plugin_states`).

    Example:
        >>> from metaspike.continual.baselines import SynapticIntelligence
        >>> check_plugin_settings([SynapticIntelligence(c=99.0)], [SynapticIntelligence(c=0.5).settings()])
        Traceback (most recent call last):
        ...
        ValueError: plugins[0] (SynapticIntelligence) has c = 99.0 here, 0.5 in the checkpoint: it was written with other settings; resume it with the settings it was made with
    """
    if saved is None:
        return
    if not isinstance(saved, list) or len(saved) != len(plugins) or not all(isinstance(s, dict) for s in saved):
        raise ValueError(f"the checkpoint's plugin settings must be {len(plugins)} dicts, one per plugin")
    for index, (plugin, theirs) in enumerate(zip(plugins, saved)):
        _refuse_other_settings(index, plugin, theirs, only_kept=False)


def check_plugin_states(plugins: Sequence[Any], states: Any) -> None:
    """A ``ValueError`` unless ``states`` (a checkpoint's plugin states) is a list of one state per plugin, and each
    state that metaspike's own ``load_state_dict`` loads (EWC's, SI's, ...) holds the plugin's hyperparameters: it puts
    them in place, and the record :func:`check_plugin_settings` reads may agree while the state does not. (A plugin of
    one's own may keep anything under a setting's name, a value that changes as it trains among them: not compared.)

    Example:
        >>> from metaspike.continual.baselines import EWC
        >>> check_plugin_states([EWC(lam=5.0)], [{**EWC(lam=5.0).state_dict(), "lam": 1.0}])
        Traceback (most recent call last):
        ...
        ValueError: plugins[0] (EWC) has lam = 5.0 here, 1.0 in the checkpoint: it was written with other settings; resume it with the settings it was made with
    """
    if not isinstance(states, list) or len(states) != len(plugins):
        raise ValueError(f"the checkpoint's plugin states must be a list of {len(plugins)}, one per plugin, got "
                         f"{shown(states)}")
    for index, (plugin, state) in enumerate(zip(plugins, states)):
        if isinstance(state, dict) and _loads_settings(plugin):
            _refuse_other_settings(index, plugin, state, only_kept=True)


def _loads_settings(plugin: Any) -> bool:
    """Whether ``plugin``'s ``load_state_dict`` is one of metaspike's plugins' (which restore their hyperparameters
    from the state), not the base class's, which loads nothing, nor a user's."""
    load = getattr(type(plugin), "load_state_dict", None)
    return load is not Plugin.load_state_dict and getattr(load, "__module__", "").startswith("metaspike.")


def _refuse_other_settings(index: int, plugin: Any, theirs: dict, only_kept: bool) -> None:
    """:func:`check_plugin_settings` for plugin ``index`` against ``theirs`` (where ``only_kept``, the settings it
    holds; else all, a missing one differing)."""
    for key, value in settings_of(plugin).items():
        if not only_kept and key not in theirs:  # (a setting an earlier version had not: it did otherwise)
            raise ValueError(f"plugins[{index}] ({type(plugin).__name__}) has {key} = {value!r} here, a setting the "
                             "checkpoint lacks: an earlier version of the plugin wrote it, which did otherwise; start "
                             "the run again (or finish it with that version)")
        if (key in theirs or not only_kept) and not _same_setting(theirs.get(key), value):
            raise ValueError(f"plugins[{index}] ({type(plugin).__name__}) has {key} = {value!r} here, "
                             f"{shown(theirs.get(key))} in the checkpoint: it was written with other settings; resume "
                             "it with the settings it was made with")


_GROUP_LISTS = ("params", "param_names")
"""What a param group lists rather than sets: its tensors and, where torch keeps them, their names (which a loaded
group may take from the checkpoint where the run's optimizer was given ``parameters()``)."""


def group_settings(optimizer: Any) -> list[list[dict[str, Any]]]:
    """The settings of every param group (all but ``params``) of an optimizer or of each optimizer of a chain."""
    return [[{k: v for k, v in group.items() if k != "params"} for group in inner.param_groups]
            for inner in getattr(optimizer, "optimizers", [optimizer])]


def _same_setting(a: Any, b: Any) -> bool:
    """Whether two settings are equal: tensors by value (on the CPU), lists, tuples and dicts item by item, NaN equal
    to NaN (a setting compared with itself is always the same)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype
                and bool(torch.equal(a.detach().cpu(), b.detach().cpu())))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_setting, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_setting(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False


def check_optimizer_state(optimizer: Any, settings: list[list[dict[str, Any]]], exempt: Collection[str] = ()) -> None:
    """A loaded optimizer state is one line where its param groups' settings differ from ``settings`` (those the run's
    own optimizer was built with, less the keys ``exempt``: the checkpoint belongs to other settings, or was edited),
    where they hold a setting the run's groups lack (``meta`` and ``rule`` from a :func:`metaspike.metaplastic`
    optimizer, loaded into the plain one it wraps: torch keeps them in the groups, and nothing applies them) and where
    a parameter's state is not what :func:`~metaspike.optimizer_state.check_parameter_state` accepts (torch finds out
    only at the next step, deep inside its update, or never; metaspike's own optimizers refuse it already at load)."""
    for inner, groups in zip(getattr(optimizer, "optimizers", [optimizer]), settings):
        for index, (group, built) in enumerate(zip(inner.param_groups, groups)):
            for key, value in built.items():
                if not _same_setting(group.get(key), value):
                    raise ValueError(f"the checkpoint's optimizer has {key} = {group.get(key)!r} in param group {index}, "
                                     f"where the run's settings give {value!r}: it was written with other settings")
            extra = [key for key in group if key not in built and key not in exempt and key not in _GROUP_LISTS]
            if extra:
                consolidating = " (a metaplastic() optimizer's?)" if {"meta", "rule"} & set(extra) else ""
                raise ValueError(f"the checkpoint's optimizer has {', '.join(map(repr, extra))} in param group "
                                 f"{index}, settings this run's {type(inner).__name__} does not take{consolidating}: "
                                 "it was written with another optimizer")
            for p in group["params"]:
                check_parameter_state(inner.state.get(p, {}), p.shape, "the checkpoint's optimizer state of a "
                                      f"{tuple(p.shape)} parameter in param group {index}")


def load_part(what: str, owner: Any, state: Any) -> None:
    """``owner.load_state_dict(state)`` with torch's multi-line mismatch report folded into one line."""
    try:
        owner.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
        report = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        report = report if len(report) <= 300 else report[:297] + "..."
        raise ValueError(f"the checkpoint's {what} does not fit this run's {what}: {report}") from None


def check_loadable(state: Any, where: str = "state", memo: PartMemo | None = None) -> None:
    """Refuse what ``torch.load(weights_only=True)`` would not read back: everything but tensors, plain Python
    values and lists, tuples and dicts of them (a plugin's or a rule's state holding a numpy array, say). A list, tuple
    or dict met again (a long stream's one row for its tasks trained without an evaluation) is checked once, and so is
    a part that ``memo`` (the one :func:`state_checksum` keeps) knows unchanged since the last checkpoint.

    Example:
        >>> check_loadable({"fisher": [torch.zeros(2)], "step": 3})
        >>> import numpy as np
        >>> check_loadable({"plugins": [{"fisher": np.zeros(2)}]})
        Traceback (most recent call last):
        ...
        ValueError: a checkpoint holds tensors and plain Python values only; state['plugins'][0]['fisher'] is a numpy.ndarray (torch.load(weights_only=True) would not read it back)
    """
    checked: set[int] = set()

    def check(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor) or type(value) in PLAIN_VALUES or id(value) in checked:
            return
        if memo is not None and memo.known(value):
            checked.add(id(value))
            return
        if type(value) in (dict, OrderedDict):
            checked.add(id(value))
            for key, item in value.items():
                check(key, f"{where} key")
                check(item, f"{where}[{key!r}]")
            return
        if type(value) in (list, tuple):  # (a named tuple is a class torch does not read back)
            checked.add(id(value))
            for i, item in enumerate(value):
                check(item, f"{where}[{i}]")
            return
        kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
        plain = next((t.__name__ for t in PLAIN_VALUES if isinstance(value, t)), None)
        hint = f"; {plain}(...) makes it a plain {plain}" if plain in ("bool", "int", "float", "str") else ""
        raise ValueError(f"a checkpoint holds tensors and plain Python values only; {where} is a {kind} "
                         f"(torch.load(weights_only=True) would not read it back){hint}")

    check(state, where)
