"""Runs described by a config: build scenario, model and optimizer, train, save, plot; resume a killed run.

This is the layer where models are chosen (through :mod:`metaspike.app.models`); the trainer only
receives a model. A run directory is locked while a process trains in it, so two resumes of one run
cannot interleave, and it is marked complete only after every final file is in place.
"""

from __future__ import annotations

import difflib
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metaspike.allocator import usable_memory
from metaspike.app.config import RunConfig, flag_name, refuse_freezing_nothing, stored_setting
from metaspike.app.imports import changed_imports, import_digests, import_flags
from metaspike.app.models import (
    BAYESIAN_OPTIMIZERS,
    OPTIMIZER_SETTINGS,
    Standardize,
    bayesian_settings,
    build_model,
    describe_model,
    floor_to_two_digits,
    is_builtin,
    optimizer_kind,
    uses_batchnorm,
)
from metaspike.app.tables import versions
from metaspike.bayesian.synapses import SampledForward, bayesian_modules, start_confident
from metaspike.checks import first_line, is_finite_number, is_nan, is_whole, listed, shown
from metaspike.continual.baselines import BASELINE_STRENGTH_SETTINGS
from metaspike.continual.results import (
    ACCURACY_DECIMALS,
    CHECKPOINT,
    METRIC_DECIMALS,
    PREVIOUS_CHECKPOINT,
    RunDirectory,
    latest_good_checkpoint,
)
from metaspike.continual.scenarios import Scenario, made_when_reached, make_scenario
from metaspike.continual.trainer import ContinualResult, ContinualTrainer, TrainerConfig, applied_optimizer_mode
from metaspike.data import ArrayDataset, default_data_dir, load_dataset
from metaspike.distributed import init_from_env, sync_batchnorm, world, world_size_from_env
from metaspike.files import (
    TEMPORARY_FILES,
    atomic_open,
    atomic_write_text,
    check_plain_tensors,
    expanded_path,
    load_torch_file,
    read_json,
    remove_stale_temporaries,
)
from metaspike.machine import cpu_kind
from metaspike.penalty_stability import PenaltyTooStiff
from metaspike.stops import forget_kept_stop, raise_kept_stop
from metaspike.training import Plugin, TrainingDiverged, minimum_batch_size

__all__ = ["build_run_model", "build_trainer", "make_run_scenario", "train_and_finish", "run", "run_planned", "resume",
           "load_config", "config_from_record", "run_lock", "is_complete", "finished_result", "RecordedResult",
           "train_in_folder", "stopped_by_file_error", "continued_by", "check_rebuilt_by_settings",
           "REPRODUCTION_RECORD", "COMPARISON_PLAN", "resume_folder", "BUILT_BY_REPRODUCE", "ran_with", "announce_run",
           "load_run_model"]

LOCK = ".lock"
#: float32 copies of each weight while training: hidden weight, gradient, two Adam moments, ±1 buffer (a Bayesian
#: model's mean and width or latent weight, their gradients and its weight samples: as many, more with more samples)
BYTES_PER_WEIGHT_IN_TRAINING = 5
#: float32 values per unit and time step a spiking model keeps for its backward pass (at least its input or
#: membrane potential and its spikes, and their gradients).
FLOATS_PER_UNIT_AND_STEP = 4


def make_run_scenario(config: RunConfig) -> Scenario:
    """The task stream ``config`` describes.

    Example:
        >>> len(make_run_scenario(RunConfig(datasets=("digits",), tasks=2)).tasks)
        2
    """
    try:
        scenario = make_scenario(config.scenario, config.datasets, config.tasks, config.seed, config.data_dir,
                                 config.applied_split_mode, samples_per_task=config.samples_per_task)
    except ValueError as err:  # the scenarios name their argument; a run's user knows it as a flag
        message = str(err)
        if message.startswith("samples_per_task "):
            message = "--samples-per-task " + message[len("samples_per_task "):]
        elif config.scenario == "joint" and message.startswith("joint training of "):
            message = f"--tasks {config.tasks}: --scenario {message}"
        elif config.scenario == "stream" and message.startswith("cannot cut "):
            message = f"--tasks {config.tasks}: --scenario stream {message} (one subset per task)"
        elif config.scenario == "split" and message.startswith(("cannot split ", "mode 'task' ")):
            classes = len(load_dataset(config.datasets[0], "train", config.data_dir).classes)
            largest = classes // 2 if config.applied_split_mode == "task" else classes  # (task mode: 2 classes each)
            if message.startswith("cannot split "):
                message = (f"--tasks {config.tasks}: --scenario split {message} (one group of classes per task); give "
                           f"--tasks in 1..{largest} for {config.datasets[0]}"
                           + (" (--split-mode task needs 2 classes a group)" if largest < classes else ""))
            else:
                message = (f"--tasks {config.tasks}: --split-mode task restricts each task's outputs to its own "
                           f"classes, and {classes} classes in {config.tasks} groups leave a group of one class, which "
                           "would train nothing (cross-entropy over one class is 0) and always be predicted right; "
                           f"give --tasks in 1..{largest} for {config.datasets[0]}, or use --split-mode class or "
                           "class-growing")
        raise ValueError(message) from None
    if config.scenario == "stream":
        _check_stream_parts(config, scenario)
    _check_bayesian_batch(config, scenario)
    return scenario


def _check_bayesian_batch(config: RunConfig, scenario: Scenario) -> None:
    """One line naming ``--batch-size`` where a Bayesian model's settings, scaled to ``batch_size`` samples a step
    (:func:`~metaspike.bayesian.optim.settings_for_batch`), would meet tasks of fewer samples: every step would hold
    fewer than they were scaled for."""
    if optimizer_kind(config.model) not in BAYESIAN_OPTIMIZERS or config.batch_size == 1:
        return
    tasks = scenario.tasks[:1] if made_when_reached(scenario.tasks) else scenario.tasks  # (a lazy stream: alike)
    smallest = min(len(task.train) for task in tasks)
    if smallest < config.batch_size:
        processes = world_size_from_env()  # (under torchrun every process needs a sample of each step)
        advice = (f"give --batch-size {smallest} or less" if processes == 1 else
                  f"give --batch-size {processes} to {smallest} ({processes} processes need a sample each)"
                  if smallest >= processes else f"{processes} processes need a sample each: run it in fewer processes")
        raise ValueError(f"--batch-size {config.batch_size}: model {config.model!r} scales its optimizer's settings "
                         f"to {config.batch_size} samples a step (summed evidence, a memory window counted in samples), "
                         f"but a task of {smallest} training samples gives steps of {smallest}; {advice}")


def _check_stream_parts(config: RunConfig, scenario: Scenario) -> None:
    """One line naming ``--tasks`` where a stream's parts are too small for the model and the processes: BatchNorm
    cannot train on a part of one sample, and under torchrun each process needs a sample of every step (the check
    that stops it otherwise, inside training, names its argument ``x``)."""
    smallest, total = min(len(task.train) for task in scenario.tasks), sum(len(task.train) for task in scenario.tasks)
    batchnorm, processes = uses_batchnorm(config.model), world_size_from_env()
    least = minimum_batch_size(batchnorm, processes)
    if smallest < least:
        why = (f"model {config.model!r} has BatchNorm, which cannot train on one sample" if batchnorm else "")
        if processes > 1:
            each = "a sample" if least == processes else f"{least // processes} samples"
            why = f"{why}{', and ' if why else ''}each of the {processes} processes needs {each} of every step"
        other = ", or use a model without it (bnn-layernorm, bimu, mesu, mlp)" if batchnorm else ""
        raise ValueError(f"--tasks {config.tasks}: --scenario stream cuts the {total:,} training samples into parts of "
                         f"as few as {smallest}, and {why}; give --tasks {total // least} or fewer{other}")


def _check_time_steps_fit(config: RunConfig, sizes: list[int], available: int | None) -> None:
    """One line where a spiking model's activations over ``num_steps`` time steps exceed this process's memory: a
    training batch keeps every unit's values at every step for the backward pass, and an evaluation batch's input is
    encoded as spikes for every step at once."""
    evaluated = TrainerConfig().eval_batch_size * sizes[0]
    needed = config.num_steps * (config.batch_size * sum(sizes) * FLOATS_PER_UNIT_AND_STEP + evaluated) * 4
    if available is not None and needed > available:
        raise ValueError(f"--num-steps {config.num_steps} needs about {needed / 2**30:.0f} GiB for the spiking model's "
                         f"activations ({config.num_steps:,} time steps of {config.batch_size:,} training samples and "
                         f"{sum(sizes):,} units, and of the evaluation batches' input spikes); "
                         f"this process may use {available / 2**30:.0f} GiB (the machine's memory, its container's "
                         "limit or ulimit -v)")


def build_run_model(config: RunConfig, scenario: Scenario) -> torch.nn.Module:
    """The model ``config`` names, sized for ``scenario`` (input shape, classes); with ``config.standardize``
    after a :class:`~metaspike.app.models.Standardize` of the first dataset's training pixels.

    Example:
        >>> s = make_scenario("permuted", ["digits"], tasks=1)
        >>> build_run_model(RunConfig(hidden=(64,)), s).sizes
        (784, 64, 10)
    """
    sizes = [math.prod(scenario.input_shape), *config.hidden, scenario.num_classes]
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    needed = weights * 4 * BYTES_PER_WEIGHT_IN_TRAINING
    available = usable_memory()
    if available is not None and needed > available:
        raise ValueError(f"--hidden {' '.join(map(str, config.hidden))} needs about {needed / 2**30:.0f} GiB to train "
                         f"({weights:,} weights, each with its gradient, optimizer state and the weights a step uses: "
                         f"at least {BYTES_PER_WEIGHT_IN_TRAINING} float32 copies); "
                         f"this process may use {available / 2**30:.0f} GiB (the machine's memory, its container's "
                         "limit or ulimit -v)")
    if config.spiking:
        _check_time_steps_fit(config, sizes, available)
    model = build_model(config.model, config.hidden, scenario.input_shape, scenario.num_classes, config.num_steps)
    if config.readout_lambda is not None:
        start_confident(readout_layer(model), config.readout_lambda)
    if config.eval_samples is not None:
        for layer in model.modules():
            if isinstance(layer, SampledForward):
                layer.evaluation_samples = config.eval_samples
    if not config.standardize:
        return model
    pixels = load_dataset(config.datasets[0], "train", config.data_dir).x
    std = float(pixels.std()) if pixels.numel() > 1 else 0.0
    if not std > 0:
        raise ValueError(f"--standardize: the training images of {config.datasets[0]!r} all have the same value "
                         f"({float(pixels.flatten()[0]) if pixels.numel() else 'none'}), so they have no spread to "
                         "divide by; leave out --standardize")
    return nn.Sequential(Standardize(float(pixels.mean()), std), model)


def build_trainer(
    config: RunConfig, model: torch.nn.Module, progress: bool = True, plugins: Sequence[Plugin] = ()
) -> ContinualTrainer:
    """The continual trainer ``config`` describes, for ``model`` (with the optimizer its model kind names:
    MetaplasticAdam with the config's meta for binary networks, BiMU, MESU or SGD for the others), with ``plugins``,
    the config's baseline (:meth:`RunConfig.baseline_plugins`) and its freezing (:meth:`RunConfig.freezing_plugins`).

    Example:
        >>> trainer = build_trainer(RunConfig(hidden=(32,)), torch.nn.Linear(784, 10), progress=False)
        >>> trainer.config.epochs
        20
    """
    plugins, baseline = list(plugins), config.baseline_plugins()
    twice = next(((p, b) for p in plugins for b in baseline if _same_baseline(p, b)), None)
    if twice is not None:  # (its penalty was added twice, silently)
        mine, added = twice
        raise ValueError(f"the config's baseline {config.baseline!r} adds a plugin of type {type(added).__name__}, "
                         f"and plugins holds one already ({type(mine).__name__}); leave the config's baseline out, "
                         "or leave yours out")
    return ContinualTrainer(model, config.make_optimizer, config.trainer_config(), progress=progress,
                            plugins=[*plugins, *baseline, *config.freezing_plugins()])


def _same_baseline(plugin: Plugin, added: Plugin) -> bool:
    """Whether ``plugin`` is the baseline method of the plugin ``added``: of its type, or of a subclass of one's own
    (the library's own subclasses are other methods: its random control subclasses EWC)."""
    kind = type(added)
    return type(plugin) is kind or (isinstance(plugin, kind) and type(plugin).__module__ != kind.__module__)


def _trainer(config: RunConfig, scenario: Scenario, progress: bool) -> ContinualTrainer:
    rank, processes = init_from_env(config.device)
    minimum = minimum_batch_size(uses_batchnorm(config.model), processes)
    why = "BatchNorm needs two samples per process" if uses_batchnorm(config.model) else "one sample per process"
    for flag, value in (("--batch-size", config.batch_size), ("--samples-per-task", config.samples_per_task)):
        if value is not None and value < minimum:  # (train_epoch says the same, naming its argument, not the flag)
            raise ValueError(f"{flag} {value}: {processes} processes need at least {minimum} ({why})")
    torch.manual_seed(config.seed)
    model = build_run_model(config, scenario)
    if processes > 1:
        sync_batchnorm(model)
    return build_trainer(config, model, progress and rank == 0)


def _shared_path(path: Path | None) -> Path:
    """The run directory rank 0 chose, known to every process."""
    if world()[1] == 1:
        return path  # type: ignore[return-value]
    holder = [str(path) if path is not None else None]
    torch.distributed.broadcast_object_list(holder, src=0)
    return Path(holder[0])


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory ``path``; ``ValueError`` if another process holds it.

    Example:
        >>> import tempfile
        >>> with run_lock(Path(tempfile.mkdtemp())):
        ...     pass
    """
    if world()[0] != 0:  # rank 0 holds the lock for the whole group
        yield
        return
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)  # (less the umask, as every file of the run)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{path} is being trained by another process (it holds {path / LOCK})") from None
        yield
    finally:
        os.close(fd)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run or a comparison: where its results are kept and the command that continues it.

    Example:
        >>> str(Interrupted(Path("runs/a"), "metaspike train --resume runs/a"))
        'results written so far are kept in runs/a; continue with: metaspike train --resume runs/a'
    """

    def __init__(self, folder: Path, command: str) -> None:
        super().__init__(f"results written so far are kept in {folder}; continue with: {command}")


def readout_layer(model: nn.Module) -> nn.Module:
    """The output layer of a model kind with BiMU synapses: the last BiMU layer among those nested least deep (a
    layer inside a neuron model, such as a recurrent neuron's own matrix, is never the readout).

    Example:
        >>> from metaspike.app.models import build_model
        >>> readout_layer(build_model("bimu", [16], (1, 28, 28), 10)).weight.shape
        torch.Size([10, 16])
    """
    layers = [(name.count("."), layer) for name, layer, kind, _ in bayesian_modules(model) if kind == "bimu"]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BiMU layer to start confident")
    top = min(depth for depth, _ in layers)
    return [layer for depth, layer in layers if depth == top][-1]


#: A finished run's per-task BatchNorm states (a list, task order), written beside ``model.pt`` where the run
#: evaluated each task with its own.
BATCHNORM_STATES = "batchnorm_states.pt"


def stopped_by_file_error(err: OSError, command: str) -> OSError:
    """``err``, a file that could not be written mid-run (a full disk, a file-size limit), saying that what was
    written is kept and ``command`` continues (where ``err`` already said so for a run inside a comparison or
    reproduction, the error it wraps, with the command of the whole).

    Example:
        >>> str(stopped_by_file_error(OSError(28, "No space left on device", "runs/a/checkpoint.pt"),
        ...                           "metaspike train --resume runs/a"))  # doctest: +NORMALIZE_WHITESPACE
        "[Errno 28] No space left on device; what was written so far is kept: once the file can be written, continue
        with: metaspike train --resume runs/a: 'runs/a/checkpoint.pt'"
    """
    original = err.__cause__ if isinstance(err.__cause__, OSError) else err
    return OSError(original.errno, f"{original.strerror or original}; what was written so far is kept: once the file "
                                   f"can be written, continue with: {command}", original.filename)


@contextmanager
def continued_by(folder: Path, command: str | Callable[[], str]) -> Iterator[None]:
    """Inside it, a Ctrl-C or a file that cannot be written names ``folder`` (what is kept) and ``command`` (what
    continues; a callable gives it at that moment): a comparison or reproduction replaces the ``train --resume`` its
    run would name with its own.

    Example:
        >>> with continued_by(Path("runs/c"), "metaspike compare --resume runs/c"):  # doctest: +SKIP
        ...     train_the_runs()
    """
    def named() -> str:
        return command() if callable(command) else command

    try:
        yield
        raise_kept_stop()  # (one that landed in a finalizer inside: named here, as any other)
    except KeyboardInterrupt:
        forget_kept_stop()
        raise Interrupted(folder, named()) from None
    except OSError as err:
        if err.filename is None:
            raise
        raise stopped_by_file_error(err, named()) from err


@contextmanager
def named_for_lost_processes(path: Path) -> Iterator[None]:
    """Inside it, a ``RuntimeError`` (where a torchrun launch lost a process, the survivor's error from
    ``torch.distributed``) carries ``continue_with``, the command that continues the run in ``path``, which
    every process knows: the command line's message for a lost process names it (only the first process holds the
    run's :class:`RunDirectory`).

    Example:
        >>> try:
        ...     with named_for_lost_processes(Path("runs/a")):
        ...         raise RuntimeError("Connection reset by peer")
        ... except RuntimeError as err:
        ...     err.continue_with
        'metaspike train --resume runs/a'
    """
    command = train_resume_command(path, world()[1])
    try:
        yield
    except RuntimeError as err:
        err.continue_with = command  # type: ignore[attr-defined]
        raise


def train_and_finish(trainer: ContinualTrainer, scenario: Scenario, directory: RunDirectory | None,
                     resume: dict[str, Any] | None, plot: bool) -> ContinualResult:
    """Train, then (on rank 0, which holds the directory) write ``model.pt`` (and :data:`BATCHNORM_STATES`), the final
    metrics and figures.

    ``model.pt`` is written atomically before ``metrics.json`` says ``complete: true``, so a kill at
    any moment leaves a run that either resumes or is complete with every file. A diverged run raises
    :class:`TrainingDiverged` naming the directory that keeps what was measured; Ctrl-C and a file that cannot be
    written name the command that continues it (``metaspike train --resume``; a comparison or reproduction
    replaces it with its own).

    Example:
        >>> train_and_finish(trainer, scenario, RunDirectory.create("runs", "demo", {}), None, plot=True)  # doctest: +SKIP
    """
    if directory is None:
        return _train_and_write(trainer, scenario, directory, resume)
    path, processes = directory.path, world()[1]
    # (a Ctrl-C names the command that continues the run, and once its metrics.json says it is complete, the one that
    # draws its figures, as they are drawn then; a comparison's guard around it names its own)
    guard = continued_by(path, lambda: _what_continues(path, processes))
    try:
        with guard:
            result = _train_and_write(trainer, scenario, directory, resume)
            if plot:  # (a complete run: a figure that cannot be written is only that)
                from metaspike.app.plots import plot_run

                plot_run(path)
    except PenaltyTooStiff as err:
        follows = _strength_that_follows(trainer, err, len(scenario.tasks))
        raise TrainingDiverged(f"{err}{follows}{_what_is_kept(directory)}") from None
    except TrainingDiverged as err:
        raise TrainingDiverged(f"{err}{_what_is_kept(directory)}") from None
    return result


def _strength_that_follows(trainer: ContinualTrainer, err: PenaltyTooStiff, tasks: int) -> str:
    """What a run refused for a baseline's penalty too stiff for SGD adds: the ``--baseline-strength`` that SGD follows
    to the last of its ``tasks`` (its baseline is the run's one plugin with a strength; the penalty sums one term per
    task, taken as large as those so far), for a new run or a comparison of that model alone (a resume keeps the
    strength it began with; a comparison of models trained by different optimizers takes none)."""
    strengths = [value for plugin in trainer.plugins for key, value in plugin.settings().items()
                 if key in BASELINE_STRENGTH_SETTINGS]
    if len(strengths) != 1 or not 1 < err.factor < float("inf"):
        return ""
    done = err.tasks_done if err.tasks_done else max(tasks - 1, 1)
    follows = floor_to_two_digits(strengths[0] / err.factor * done / max(tasks - 1, done))
    return (f" (--baseline-strength {follows:g} or less follows it to the last of the {tasks} tasks, if each adds as "
            "much as those so far, in a new run or a comparison of this model alone: a resume keeps the strength it "
            "began with)")


def _what_continues(path: Path, processes: int) -> str:
    """The command that continues the run in ``path`` now: ``metaspike plot`` where it is complete (its figures may be
    missing), else ``metaspike train --resume``."""
    try:
        complete = is_complete(path)
    except (OSError, ValueError):  # (a metrics.json it cannot read: the resume says what is wrong with it)
        complete = False
    return f"metaspike plot {path}" if complete else train_resume_command(path, processes)


def _what_is_kept(directory: RunDirectory | None) -> str:
    """What a diverged run's message adds: where what it measured is kept, or that it measured nothing yet."""
    if directory is None:
        return ""
    if any((directory.path / name).exists() for name in (CHECKPOINT, PREVIOUS_CHECKPOINT)):
        return f"; what was measured so far is in {directory.path} (the last good checkpoint is kept)"
    curves = " and training curves" if (directory.path / "curves.csv").exists() else ""
    return (f"; it diverged before its first checkpoint, so nothing was measured: {directory.path} keeps its settings"
            f"{curves} only")


def _train_and_write(trainer: ContinualTrainer, scenario: Scenario, directory: RunDirectory | None,
                     resume: dict[str, Any] | None) -> ContinualResult:
    result = trainer.fit(scenario, log=directory, resume=resume)
    if directory is None:
        return result
    with atomic_open(directory.path / "model.pt", "wb") as handle:
        torch.save(trainer.model.state_dict(), handle)
    if trainer.batchnorm_states:  # what evaluated each earlier task: model.pt holds the last task's
        with atomic_open(directory.path / BATCHNORM_STATES, "wb") as handle:
            torch.save(trainer.batchnorm_states, handle)
    directory.finish(result)
    return result


DATA_DIGESTS = "data_sha256"
"""The key of ``config.json`` under which a run records :func:`data_digests` of the data it trains on."""
IMPORT_DIGESTS = "import_sha256"
"""The key of ``config.json`` under which a run records :func:`~metaspike.app.imports.import_digests` of its
``--import`` files."""



def data_digests(config: RunConfig) -> dict[str, str]:
    """SHA-256 of the images and labels of each dataset split ``config`` trains and evaluates on, keyed
    ``"<dataset>/<split>"``: what a resumed run checks, since a data folder (``--data-dir``, ``$METASPIKE_DATA``, a
    relative path read from another working directory) may hold other files by then.

    Example:
        >>> sorted(data_digests(RunConfig(datasets=("digits",))))
        ['digits/test', 'digits/train']
    """
    # load_dataset hands out one cached, read-only object per split: the arrays the scenario was made of
    return {f"{name}/{split}": _sha256(load_dataset(name, split, config.data_dir))
            for name in config.datasets for split in ("train", "test")}


_DIGESTS: weakref.WeakKeyDictionary[ArrayDataset, str] = weakref.WeakKeyDictionary()


def _sha256(data: ArrayDataset) -> str:
    """SHA-256 of a dataset's images and labels, computed once per dataset object (a comparison's runs, and the
    finished runs it checks, all share the same splits)."""
    if data not in _DIGESTS:
        digest = hashlib.sha256(data.x.contiguous().numpy())
        digest.update(data.y.contiguous().numpy())
        _DIGESTS[data] = digest.hexdigest()
    return _DIGESTS[data]


def check_same_sources(path: Path, config: RunConfig) -> None:
    """Refuse to go on from run ``path`` (resume it, or add runs beside it in a comparison) on other data or other
    ``--import`` code than it started with (:func:`_check_same_data`, :func:`_check_same_imports`), both read from its
    ``config.json``; runs made before the digests were kept pass."""
    record = read_json(path / "config.json")
    _check_same_data(path, config, record.get(DATA_DIGESTS))
    _check_same_imports(path, config, record.get(IMPORT_DIGESTS))


def _check_same_data(path: Path, config: RunConfig, stored: Any) -> None:
    """Refuse data other than the :data:`DATA_DIGESTS` ``stored`` in run ``path``'s ``config.json`` name."""
    if stored is None:
        return
    current = data_digests(config)
    if not isinstance(stored, dict) or stored.keys() != current.keys():
        raise ValueError(f"{path / 'config.json'}: {DATA_DIGESTS} must hold the SHA-256 of {', '.join(current)}")
    changed = [key for key in current if stored[key] != current[key]]
    if changed:
        raise ValueError(f"{path} was trained on other data than {default_data_dir(config.data_dir)} holds now "
                         f"({', '.join(changed)} differ from the SHA-256 in its config.json); resume it with the data "
                         "it started on (--data-dir or $METASPIKE_DATA, from the folder it ran in)")


def _check_same_imports(path: Path, config: RunConfig, stored: Any) -> None:
    """Refuse where an ``--import`` file run ``path`` was made with has changed since its :data:`IMPORT_DIGESTS`
    ``stored`` (a resumed run mixed two versions of a user's rule, silently: task 2 81.4 % uninterrupted, 80.6 %
    resumed)."""
    changed = changed_imports(stored, config.imports)
    if changed:
        raise ValueError(f"{path} was made with {', '.join(changed)} as it was then, and the file has changed since "
                         f"(its SHA-256 differs from the one in config.json): resume it with the code it started "
                         "with, or start a new run")


def _arithmetic() -> dict[str, Any]:
    """What a run records of the arithmetic it runs with (library versions, thread count and the CPU's kind): a resume
    under other ones warns (:func:`_arithmetic_changes`), and a stopped reproduction's run continues under them all
    the same."""
    return {"versions": versions(), "threads": torch.get_num_threads(), "cpu": cpu_kind()}


def _ran_with(record: Any) -> dict[str, Any]:
    """The arithmetic a run's ``config.json`` (``record``) says it started with, as :func:`ran_with` lists it (a value
    that is not one is left out: an old run recorded no CPU)."""
    record = record if isinstance(record, dict) else {}
    recorded = record.get("versions") if isinstance(record.get("versions"), dict) else {}
    found = {"threads": record.get("threads"), "torch": recorded.get("torch"),
             "metaspike": recorded.get("metaspike"), "cpu": record.get("cpu")}
    return {key: value for key, value in found.items() if isinstance(value, (int, str)) and not isinstance(value, bool)}


def _continuations(path: Path) -> list[Any]:
    """The records of :data:`CONTINUED_WITH` in run ``path`` (none where it has no such file, or one not a list)."""
    file = path / CONTINUED_WITH
    recorded = read_json(file) if file.is_file() else []
    return recorded if isinstance(recorded, list) else []


def ran_with(runs: Sequence[Path]) -> tuple[dict[str, list[Any]], str | None]:
    """What arithmetic a table's ``runs`` (run folders; none: this process, which computed the table's numbers itself)
    ran with: each of thread count, torch and metaspike versions and CPU kind with its distinct values, and a warning
    where one has several (a comparison resumed under another thread count, runs made on another machine: their sums
    add in another order, so the table mixes numbers that differ in their last digits from one made in one pass, and
    a thread count moved one of EWC's cells by 20 points).

    Example:
        >>> ran_with([])[0]["threads"] == [torch.get_num_threads()]
        True
    """
    records = [(path.name, record) for path in runs
               for record in [read_json(path / "config.json"), *_continuations(path)]]
    records = records or [("this process", _arithmetic())]
    seen: dict[str, dict[Any, list[str]]] = {}
    for name, record in records:
        for key, value in _ran_with(record).items():
            seen.setdefault(key, {}).setdefault(value, []).append(name)
    mixed = [f"{key} " + "; ".join(f"{value} ({listed(names, 3)})" for value, names in values.items())
             for key, values in seen.items() if len(values) > 1]
    warning = (f"the runs of this table ran with different arithmetic: {' | '.join(mixed)}; sums add in another "
               "order, so their numbers may differ in the last digits from a table made in one pass (OMP_NUM_THREADS "
               "sets the thread count)") if mixed else None
    return {key: sorted(values, key=str) for key, values in seen.items()}, warning


def _scenario_record(scenario: Scenario) -> dict[str, Any]:
    """What a run folder's ``scenario.json`` records of ``scenario``: its name and definition."""
    return {"name": scenario.name, **scenario.definition}


#: What a run's ``config.json`` records beside its settings: :func:`_record`'s keys (:func:`_arithmetic`'s among them)
#: and what a reproduction adds through :func:`train_in_folder` (its method). :func:`load_config` refuses any other
#: key, as the command line refuses an unknown flag: a mistyped setting (``"epoch"``) was dropped without a word.
RECORDED_BESIDE_SETTINGS = frozenset({
    DATA_DIGESTS, IMPORT_DIGESTS, "model_description", "task_boundaries_given", "batchnorm_effective",
    "optimizer_effective", "processes", "versions", "threads", "cpu", "bayesian_optimizer_settings", "method",
    "scenario_effective",
})


def _record(config: RunConfig, scenario: Scenario) -> dict[str, Any]:
    return {
        **config.to_dict(),
        DATA_DIGESTS: data_digests(config),
        IMPORT_DIGESTS: import_digests(config.imports),
        "model_description": describe_model(config.model, config.hidden, scenario.input_shape, scenario.num_classes,
                                            config.num_steps),
        "task_boundaries_given": scenario.task_boundaries,
        # (None: a built-in model without BatchNorm, which --batchnorm does not concern)
        "batchnorm_effective": (None if is_builtin(config.model) and not uses_batchnorm(config.model) else
                                config.batchnorm if scenario.per_task_batchnorm else "shared"),
        "optimizer_effective": applied_optimizer_mode(config.optimizer, scenario),  # (a stream trains one optimizer)
        "processes": world()[1],
        **_arithmetic(),
        **({} if (bayesian := bayesian_settings(config.model, config.batch_size, config.memory_window)) is None
           else {"bayesian_optimizer_settings": bayesian}),
    }


def refuse_several_processes(command: str, instead: str = "under torchrun use 'metaspike train' (one setting per "
                             "launch)") -> None:
    """One ``ValueError`` where ``torchrun`` started several processes for ``command``, which runs in one (each process
    would run all of it, into its own folder, or draw the same figures into the same files), saying what to do
    ``instead``.

    Example:
        >>> refuse_several_processes("compare")  # outside torchrun: nothing to refuse
    """
    if world_size_from_env() > 1:
        raise ValueError(f"{command} runs in one process; {instead}")


def train_resume_command(path: Path, processes: int) -> str:
    """The command that continues the run in ``path``, trained by ``processes`` processes (under torchrun where more
    than one: a run continues with the number it was trained by), with the ``--import`` its ``config.json`` records.

    Example:
        >>> train_resume_command(Path("runs/a"), 1), train_resume_command(Path("runs/a"), 2)
        ('metaspike train --resume runs/a', 'torchrun --nproc-per-node 2 -m metaspike train --resume runs/a')
    """
    try:
        imports = import_flags(read_json(path / "config.json").get("imports"))
    except (OSError, ValueError, AttributeError):  # (no readable record: the command without them)
        imports = ""
    if processes > 1:
        return f"torchrun --nproc-per-node {processes} -m metaspike train --resume {path}{imports}"
    return f"metaspike train --resume {path}{imports}"


def recorded_processes(path: Path) -> int:
    """The number of processes the run in ``path`` was trained by, as its ``config.json`` records it (1 where it says
    nothing readable: the command then says what it lacks).

    Example:
        >>> recorded_processes(Path("/nonexistent"))
        1
    """
    try:
        recorded = read_json(path / "config.json").get("processes", 1)
    except (OSError, ValueError, AttributeError):
        return 1
    return recorded if is_whole(recorded, 1) else 1


def _check_same_processes(path: Path) -> None:
    """A run continues with the number of processes it was trained by: another number splits each batch otherwise
    (a short last batch that one process trains, two skip), and the resumed numbers would differ, silently."""
    recorded = read_json(path / "config.json").get("processes", 1)
    if not is_whole(recorded, 1):
        raise ValueError(f"{path / 'config.json'}: 'processes' must be an integer >= 1, got {shown(recorded)}")
    now = world_size_from_env()
    if recorded != now:
        how = (train_resume_command(path, recorded) if recorded > 1
               else f"{train_resume_command(path, 1)}, without torchrun")
        trained_by = "one process" if recorded == 1 else f"{recorded!r} processes"
        raise ValueError(f"{path} was trained by {trained_by} and would continue with {now}, which splits "
                         f"its batches otherwise and changes its numbers; continue it as it ran: {how}")


CONTINUED_WITH = "continued_with.json"
"""The file of a run folder that lists the arithmetic of each continuation that ran with other arithmetic than the
run started with (``config.json`` keeps the start's, and its digest guards the checkpoints)."""


def _arithmetic_changes(path: Path, record: bool = True) -> list[str]:
    """Warnings where a run continues with other arithmetic than it started with (another thread count or torch
    version adds floating-point sums in another order): its numbers may then differ slightly from an uninterrupted
    run's, which a resume otherwise matches exactly. With ``record`` (the process that writes the folder), the
    continuation's arithmetic is added to :data:`CONTINUED_WITH`, which :func:`ran_with` reads."""
    then, now = _ran_with(read_json(path / "config.json")), _ran_with(_arithmetic())
    changed = [key for key in now if key in then and then[key] != now[key]]
    if not changed:
        return []
    if record:
        atomic_write_text(path / CONTINUED_WITH, json.dumps([*_continuations(path), _arithmetic()], indent=2) + "\n")
    hint = f" (OMP_NUM_THREADS={then['threads']} restores the thread count)" if "threads" in changed else ""
    return [f"{path} continues with {', '.join(f'{key} {then[key]} -> {now[key]}' for key in changed)}: sums may "
            f"add in another order, so its numbers can differ slightly from an uninterrupted run's{hint}"]


#: Accuracy-matrix cells beyond which a run warns of its cost: every evaluation adds a row of one cell per task, and
#: each checkpoint and results file rewrites all rows (10,000 tasks evaluated after each: a checkpoint of 25 MB by
#: task 109, growing by about 230 kB an evaluation, and the run slowing from 2 to 0.4 tasks a second in 160 s).
MATRIX_CELLS_WARNED = 10_000_000


def matrix_cost_warning(config: RunConfig) -> str | None:
    """A warning when ``config``'s accuracy matrix (one row per evaluation, one cell per task) grows beyond
    :data:`MATRIX_CELLS_WARNED` cells, else ``None``.

    Example:
        >>> matrix_cost_warning(RunConfig(tasks=10_000, eval_every=1, batch_size=1, model="bimu"))[:40]
        'the accuracy matrix grows to 10,000 rows'
    """
    # (a stream is evaluated on one test set per dataset; a joint run once, after training on every task at once)
    columns = len(config.datasets) if config.scenario == "stream" else config.tasks
    evaluations = 1 if config.scenario == "joint" else config.tasks
    rows = -(-evaluations // config.eval_every)
    if rows * columns <= MATRIX_CELLS_WARNED:
        return None
    fewer = max(1, -(-evaluations * columns // MATRIX_CELLS_WARNED))
    return (f"the accuracy matrix grows to {rows:,} rows of {columns:,} cells (one row per evaluation), and every "
            "checkpoint and results file rewrites them all, so each evaluation costs more than the last; "
            f"--eval-every {fewer} or more keeps it under {MATRIX_CELLS_WARNED:,} cells")


#: Beyond this many tasks, ``--baseline ewc`` is warned of: it keeps one Fisher and one anchor per task.
EWC_TASKS_WARNED = 20


def ewc_memory_warning(config: RunConfig) -> str | None:
    """A warning when ``config`` runs EWC (or its random control) on more than :data:`EWC_TASKS_WARNED` tasks: its
    memory and the cost of every step's penalty grow with the tasks learned; else ``None``.

    Example:
        >>> ewc_memory_warning(RunConfig(tasks=100, baseline="ewc"))[:40]
        '--baseline ewc keeps a Fisher and an anc'
    """
    if config.baseline not in ("ewc", "random") or config.tasks <= EWC_TASKS_WARNED:
        return None
    return (f"--baseline {config.baseline} keeps a Fisher and an anchor of every weight matrix per task: by task "
            f"{config.tasks:,}, {config.tasks - 1:,} copies of each, all read by every step's penalty; --baseline "
            "ewc-online keeps one")


_MEASURED = (CHECKPOINT, PREVIOUS_CHECKPOINT, "model.pt")  # a file that holds something a run measured


@contextmanager
def removed_unless_measured(folder: Path | None) -> Iterator[None]:
    """Remove ``folder``, just made for a run or comparison, when what runs in it is refused (a ``ValueError``, such
    as data a model cannot train on) or stopped before a run's guard took over (a Ctrl-C or SIGTERM that is no
    :class:`Interrupted`, which names the folder and the command that continues it), where nothing was measured in
    it (no checkpoint or model anywhere inside): left behind, a refused one would be offered for ``--resume``, which
    would be refused the same way, and a stopped one would push the next run's name to ``-2``.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> try:
        ...     with removed_unless_measured(folder):
        ...         raise ValueError("one sample")
        ... except ValueError:
        ...     pass
        >>> folder.exists()
        False
    """
    try:
        yield
    except (ValueError, KeyboardInterrupt) as err:
        if folder is not None and not isinstance(err, Interrupted) and not any(p.name in _MEASURED
                                                                               for p in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def run(config: RunConfig, out: str | Path = "runs", progress: bool = True, plot: bool = True,
        name: str | None = None) -> tuple[Path, ContinualResult]:
    """Train one run and write its directory under ``out`` (named ``name``, default ``config.name``;
    ``-2``, ``-3``... when taken); return ``(run directory, result)``.

    Example:
        >>> path, result = run(RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(64,)),
        ...                    out=__import__("tempfile").mkdtemp(), progress=False, plot=False)
        >>> len(result.matrix)
        2
    """
    # (a new request: a stored one runs as is)
    refuse_freezing_nothing(config.freeze_unconsolidated, [config.model], config.batchnorm_kept_per_task)
    return run_planned(config, out, progress, plot, name)


def run_planned(config: RunConfig, out: str | Path = "runs", progress: bool = True, plot: bool = True,
                name: str | None = None) -> tuple[Path, ContinualResult]:
    """:func:`run` for a run that a stored plan asks for (a comparison's ``plan.json``, checked when it was made):
    without the checks of a new request, so that a plan an earlier version wrote is finished as it was planned.

    Example:
        >>> run_planned(RunConfig(datasets=("digits",), tasks=2, epochs=1), "runs")  # doctest: +SKIP
    """
    scenario = make_run_scenario(config)
    trainer = _trainer(config, scenario, progress)
    directory = None
    if world()[0] == 0:
        directory = RunDirectory.create(out, name or config.name, _record(config, scenario),
                                        _scenario_record(scenario))
    path = _shared_path(directory.path if directory else None)
    with removed_unless_measured(directory.path if directory else None), run_lock(path), named_for_lost_processes(path):
        return path, train_and_finish(trainer, scenario, directory, None, plot)


def announce_run(number: int, total: int, name: str, progress: bool) -> None:
    """Where progress is shown, one line before run ``number`` of ``total`` of a table (a comparison, a reproduction)
    starts, naming it: every run's bars read "task 1/3 ... task 3/3" alike, so nothing said which was training.

    Example:
        >>> announce_run(2, 6, "bnn-m3.7-seed1", progress=False)  # (nothing without progress)
    """
    if progress:
        print(f"run {number}/{total}: {name}", file=sys.stderr, flush=True)


def remove_unstarted(path: Path) -> None:
    """Remove the run folder ``path`` where its process was killed while making it: without ``config.json``, holding
    at most the temporary file of that config (an atomic write's ``.*.tmp``), it measured nothing. A folder without
    ``config.json`` that holds anything else lost its config (or is not a run at all) and is refused, not removed:
    whatever it recorded stays, and so is a file (or a link to nothing) at ``path``: the run would go to another
    name, every pass again. Nothing happens where ``path`` does not exist or is a folder with its config.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "run"
        >>> folder.mkdir(); _ = (folder / ".config.json.x1.tmp").write_text("{")
        >>> remove_unstarted(folder); folder.exists()
        False
    """
    if (path.exists() or path.is_symlink()) and not path.is_dir():  # (the run would go to another name, every pass)
        raise ValueError(f"{path} is not a folder, where this pass keeps the run of that name: move it away")
    if not path.is_dir() or (path / "config.json").exists():
        return
    held = sorted({p.name for p in path.iterdir()} - {p.name for p in path.glob(TEMPORARY_FILES)})
    if held:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise ValueError(f"{path} has no config.json but holds {shown}: a run stopped while its folder was made holds "
                         "nothing else, so this one lost its config.json (put it back) or is not a run of this pass "
                         "(move it away); it is left as it is")
    shutil.rmtree(path)


def train_in_folder(root: Path, name: str, config: RunConfig, trainer: ContinualTrainer, scenario: Scenario,
                    extra: dict[str, Any] | None = None) -> ContinualResult:
    """Train ``trainer`` on ``scenario`` into the run folder ``root/name``, or take up what an earlier, stopped pass
    left there: a complete run of the same record is read back, a stopped one continues from its newest good
    checkpoint (to the numbers of a run never stopped), one stopped before its config was written starts again. The
    record (``config.json``) is ``config`` with the SHA-256 of its data (:func:`data_digests`) and ``extra``, and the
    versions and thread count it ran with; a folder holding another record (other settings, or other data) is
    refused, and one continued under other versions or another thread count warns that sums may add in another
    order. The result returned is the one the folder recorded, whether trained now or read back. The trainer must be
    built as the
    record says (its plugins, model and optimizer): what a reproduction builds for each method.

    Example:
        >>> train_in_folder(Path("runs/r"), "ewc-seed1", config, trainer, scenario)  # doctest: +SKIP
    """
    record = {**config.to_dict(), DATA_DIGESTS: data_digests(config), **(extra or {})}
    path = root / name
    remove_unstarted(path)
    if not path.is_dir():
        directory = RunDirectory.create(root, name, {**record, **_arithmetic()},
                                        _scenario_record(scenario))
        with run_lock(directory.path):
            return _as_recorded(train_and_finish(trainer, scenario, directory, None, plot=False), directory.path)
    directory = RunDirectory(path)
    if not directory.holds(record, ignoring=list(_arithmetic()),
                           absent=NEWER_DEFAULTS):
        raise ValueError(f"{path} holds a run of other settings or other data than this one asks for (its config.json "
                         "differs); move it away to train this one")
    with run_lock(path):
        remove_stale_temporaries(path)
        result = finished_result(path)
        if result is not None:
            return result
        state, warnings = _checkpoint_to_continue(path)
        if state is None:  # (as train --resume refuses it: starting again would overwrite what it recorded)
            _refuse_results_without_checkpoint(path)
            # starting over: the folder records the arithmetic this process runs with, not the killed one's
            directory.describe({**record, **_arithmetic()}, _scenario_record(scenario))
        for warning in warnings + (_arithmetic_changes(path) if state is not None else []):
            print(f"metaspike: warning: {warning}", file=sys.stderr)
        return _as_recorded(train_and_finish(trainer, scenario, directory, state, plot=False), path)


def _as_recorded(result: ContinualResult, path: Path) -> ContinualResult:
    """A run's result as its folder recorded it (:func:`finished_result`), where it finished: a table then shows the
    same numbers whether its runs trained in this pass or were read back in a resumed one (86.667 against 86.670: the
    matrix's files keep two decimals, metrics.json three); a run that stopped early keeps its result as it is."""
    recorded = finished_result(path)
    return result if recorded is None else recorded


def _refuse_results_without_checkpoint(path: Path) -> None:
    """Refuse to start ``path`` again where its checkpoints are gone but it recorded more than a run killed before its
    first checkpoint can have: each evaluated epoch's row of ``curves.csv`` is followed by a checkpoint before the
    next row, so two rows mean one was written (starting again overwrote the recorded tasks without a word)."""
    curves = path / "curves.csv"
    if not curves.is_file():
        return
    with curves.open("rb") as handle:
        rows = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")) - 1
    if rows >= 2 and (path / "model.pt").exists():  # (checkpoints are removed only once metrics.json is complete)
        raise ValueError(f"{path} holds model.pt, which a run writes as it ends, and {rows} evaluated epochs, but its "
                         "metrics.json is gone or does not say \"complete\": true, so the run cannot be read back as "
                         "finished: put metrics.json back, or start a new run (without --resume)")
    if rows >= 2:
        raise ValueError(f"{path} recorded {rows} evaluated epochs (curves.csv) but holds no checkpoint ({CHECKPOINT} "
                         f"and {PREVIOUS_CHECKPOINT} are gone), so it cannot continue, and starting again would "
                         "overwrite what it recorded: put the checkpoint files back, or start a new run (without "
                         "--resume)")


def _checkpoint_to_continue(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest good checkpoint of the stopped run ``path`` (``None`` where it wrote none), and a warning for each
    damaged one passed over."""
    if not any((path / name).exists() for name in (CHECKPOINT, PREVIOUS_CHECKPOINT)):
        return None, []
    state, damaged = latest_good_checkpoint(path)
    return state, [f"{why}; resumed from the previous checkpoint" for why in damaged]


_SEQUENCES = {"datasets": str, "hidden": int, "meta": (int, float), "imports": str}
#: The RunConfig fields added after the first version: a record without one was written before it existed, and
#: holds the run that the field's default gives.
NEWER_FIELDS = ("model", "num_steps", "samples_per_task", "eval_every", "eval_tasks", "memory_window", "standardize",
                "imports", "eval_samples", "readout_lambda", "baseline", "baseline_strength", "baseline_gamma",
                "freeze_unconsolidated")
#: What a record that lacks one of :data:`NEWER_FIELDS` ran with: the field's default.
NEWER_DEFAULTS = {key: getattr(RunConfig, key) for key in NEWER_FIELDS}


#: The file that marks the folder of a reproduction (``metaspike reproduce``), which holds its runs' folders.
REPRODUCTION_RECORD = "reproduction.json"
#: The file that marks the folder of a comparison (``metaspike compare``), written before its first run.
COMPARISON_PLAN = "plan.json"
#: Each kind of folder ``--resume`` continues: the file that marks it, its name (singular, plural) and its command.
RESUMABLE_FOLDERS = (
    ("config.json", "run directory", "run directories", "metaspike train --resume"),
    (COMPARISON_PLAN, "comparison folder", "comparison folders", "metaspike compare --resume"),
    (REPRODUCTION_RECORD, "reproduction folder", "reproduction folders", "metaspike reproduce --resume"),
)


#: Keys the marking file of each of :data:`RESUMABLE_FOLDERS` holds, which a file of the same name in a folder of
#: one's own (a project's ``config.json``) is not taken for without.
_MARKING_KEYS = {"config.json": ("scenario", "seed", "tasks"),  # (no field newer than the first version: NEWER_FIELDS)
                 COMPARISON_PLAN: ("base", "seeds"),
                 REPRODUCTION_RECORD: ("name", "scale", "seeds")}


def _marked(folder: Path, marker: str) -> bool:
    """Whether ``folder`` holds the marking file ``marker`` as metaspike writes it: readable JSON with the keys of
    :data:`_MARKING_KEYS`."""
    if not (folder / marker).is_file():
        return False
    try:
        record = read_json(folder / marker)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and all(key in record for key in _MARKING_KEYS[marker])


def _resumable_kind(path: Path) -> tuple[str, str, str] | None:
    """``(marking file, kind, command)`` of the :data:`RESUMABLE_FOLDERS` kind ``path`` is a folder of
    (:func:`_marked`), else ``None``."""
    return next(((marker, kind, command) for marker, kind, _, command in RESUMABLE_FOLDERS if _marked(path, marker)),
                None)


def _folder_above(path: Path) -> Path:
    """The folder that holds ``path`` (``.`` and ``..`` resolved first: their ``parent`` is themselves)."""
    return path.parent if path.name not in ("", "..") else path.resolve().parent


def results_folder(out: object) -> Path:
    """``--out``, the folder new runs, comparisons and reproductions are made in (each in a folder of its own inside
    it), expanded; one ``ValueError`` where it is itself one of :data:`RESUMABLE_FOLDERS` or lies inside a comparison
    or reproduction: the new results would be made among its files (a run's folder given as ``--out`` for the next run
    nested one run in another). The line names the nearest folder above that is none of them.

    Example:
        >>> results_folder("runs")
        PosixPath('runs')
    """
    path = expanded_path(out, "--out")
    found, container = _resumable_kind(path), _container_of(path, written=True)  # (a run or part of one of them)
    if found is None and container is None:
        return path
    above = _folder_above(path if container is None else container[0])
    while _resumable_kind(above) is not None and above != _folder_above(above):
        above = _folder_above(above)
    if found is None:
        raise ValueError(f"--out {path} lies inside the {container[1]} {container[0]}, and the new results would be "
                         f"made among its runs: give a folder outside it, such as --out {above}")
    marker, kind, command = found
    resumed = f"{command} {path}" if container is None else f"{container[2]} {container[0]}"
    raise ValueError(f"--out {path} is a {kind} (it holds {marker}), and the new results would be made inside it: give "
                     f"a folder outside it, such as --out {above} (where it is unfinished, {resumed} continues it)")


def resume_folder(given: str | Path, marker: str) -> Path:
    """``given``, the folder a ``--resume`` names, once it holds ``marker``, the file that marks its kind of folder
    (:data:`RESUMABLE_FOLDERS`); else one ``ValueError`` that names it and says what it is, first found first: no
    folder at all; a folder's marking file (its folder is meant); a file; a comparison or reproduction (with the
    command that continues it); a folder with folders of the kind inside it (listed); a folder inside a comparison or
    reproduction (:func:`_container_of`, whose command continues the whole); a run directory (``train --resume``); a
    folder of none.

    Example:
        >>> resume_folder("/nowhere", COMPARISON_PLAN)
        Traceback (most recent call last):
        ...
        ValueError: --resume '/nowhere': no such folder
    """
    path = expanded_path(given, "--resume")
    _, kind, kinds, _ = next(entry for entry in RESUMABLE_FOLDERS if entry[0] == marker)
    if str(given) == "" or not path.exists():
        raise ValueError(f"--resume {str(given)!r}: no such folder")
    if not path.is_dir():
        if path.name == marker:
            raise ValueError(f"--resume {path} is the {kind}'s {marker}: give its folder, --resume {path.parent}")
        if any(path.name == other_marker for other_marker, *_ in RESUMABLE_FOLDERS):
            resume_folder(path.parent, marker)  # (another kind's marking file: what its folder is)
        raise ValueError(f"--resume {str(given)!r} is a file, not a {kind}")
    if (path / marker).is_file():
        return path
    run_marker, run_kind, _, run_command = RESUMABLE_FOLDERS[0]
    for other_marker, other, _, command in RESUMABLE_FOLDERS[1:]:  # (a comparison or reproduction itself)
        if (path / other_marker).is_file():
            raise ValueError(f"{path} is a {other}, not a {kind}: continue it with {command} {path}")
    inside = sorted(p.name for p in path.iterdir() if (p / marker).is_file())
    if inside:
        raise ValueError(f"{path} is not a {kind} (no {marker}); the {kinds} inside it: {', '.join(inside[:10])}")
    container = _container_of(path)  # (one of its runs, a part of a reproduction: the whole continues)
    if container is not None:
        raise ValueError(f"{path} lies inside the {container[1]} {container[0]}: continue it with {container[2]} "
                         f"{container[0]}")
    if (path / run_marker).is_file():
        raise ValueError(f"{path} is a {run_kind}, not a {kind}: continue it with {run_command} {path}")
    raise ValueError(f"{path} is not a {kind} (no {marker})")


def _container_of(path: Path, written: bool = False) -> tuple[Path, str, str] | None:
    """The comparison or reproduction folder that holds ``path`` as one of its runs or parts (its parent or the
    parent's parent, as they lay them out), with its kind and command; ``None`` where neither does. ``written``: only
    a folder whose marking file is as metaspike writes it (:func:`_marked`; a ``plan.json`` of one's own is none),
    for ``--out``; ``--resume``, which then reads the file, names a damaged one as such."""
    for folder in path.resolve().parents[:2]:
        for container_marker, container, _, command in RESUMABLE_FOLDERS[1:]:
            if _marked(folder, container_marker) if written else (folder / container_marker).is_file():
                return folder, container, command
    return None


#: The flags of a reproduction's method (:class:`metaspike.app.reproduce.continual.Method`, recorded under
#: ``"method"`` in its runs' ``config.json``) that build another model or other tasks than the run's settings
#: describe, with what each builds: such a run is continued by ``metaspike reproduce --resume`` alone.
BUILT_BY_REPRODUCE = {"dnn": "a float DNN (real weights, ReLU)", "joint": "every task at once (joint training)"}


def _reproduction_root(run_dir: Path) -> str:
    """The reproduction folder (holding :data:`REPRODUCTION_RECORD`) that holds ``run_dir``, or ``ROOT`` where none
    does."""
    for folder in (*run_dir.parents, *run_dir.absolute().parents):
        if (folder / REPRODUCTION_RECORD).is_file():
            return str(folder)
    return "ROOT (the reproduction's folder that holds it)"


def check_rebuilt_by_settings(run_dir: Path, record: Any) -> None:
    """One ``ValueError`` where ``record``, the ``config.json`` of ``run_dir``, is a reproduction's run whose method
    builds what its settings do not (:data:`BUILT_BY_REPRODUCE`): rebuilt from them, a DNN would be a BNN and a joint
    run a sequential one, and would take its checkpoint or weights silently.

    Example:
        >>> check_rebuilt_by_settings(Path("runs/a"), {"method": {"label": "DNN m=0", "dnn": True}})
        Traceback (most recent call last):
        ...
        ValueError: runs/a is a run of metaspike reproduce whose method 'DNN m=0' trains a float DNN (real ...
    """
    method = record.get("method") if isinstance(record, dict) else None
    if not isinstance(method, dict):
        return
    built = [what for flag, what in BUILT_BY_REPRODUCE.items() if method.get(flag)]
    if built:
        raise ValueError(f"{run_dir} is a run of metaspike reproduce whose method {method.get('label')!r} trains "
                         f"{' and '.join(built)}, which the settings of its config.json do not describe (continued "
                         "or rebuilt from them, it would be another run); continue it with: metaspike reproduce "
                         f"--resume {_reproduction_root(run_dir)}")


def load_config(run_dir: str | Path) -> RunConfig:
    """The validated :class:`RunConfig` stored in ``run_dir/config.json`` (see :func:`config_from_record`): the
    settings that rebuild the run's model and tasks (:func:`make_run_scenario`, :func:`build_run_model`), refused
    for a reproduction's run they do not describe (:func:`check_rebuilt_by_settings`).

    Example:
        >>> load_config("runs/permuted-mnist5k-meta5-30-30-seed1")  # doctest: +SKIP
    """
    path = Path(run_dir) / "config.json"
    record = read_json(path)
    check_rebuilt_by_settings(Path(run_dir), record)
    return config_from_record(record, path, beside=RECORDED_BESIDE_SETTINGS)


def load_run_model(run_dir: str | Path) -> torch.nn.Module:
    """The trained model of a finished run: built from its ``config.json`` as the run built it
    (:func:`build_run_model`: a ``--standardize`` run's model behind its :class:`~metaspike.app.models.Standardize`
    of the training pixels, a ``bimu``/``mesu`` or spiking model with its synapses) and given the weights of its
    ``model.pt``, read as a file from outside (plain tensors only, checked before torch loads them). In evaluation
    mode; its BatchNorm state is the last task's (:func:`metaspike.continual.load_batchnorm_state` with an earlier
    task's state from ``batchnorm_states.pt``, where the run kept them, gives that task's).

    Example:
        >>> model = load_run_model("runs/permuted-mnist5k-meta5-30-30-seed1")  # doctest: +SKIP
    """
    config = load_config(run_dir)
    path = Path(run_dir) / "model.pt"
    state = load_torch_file(path, "model file")
    check_plain_tensors(state, f"model file {path}")
    if not isinstance(state, dict):  # (before the model and its scenario are built for nothing)
        raise ValueError(f"{path} holds a {type(state).__name__}, not the state dict a run writes")
    model = build_run_model(config, make_run_scenario(config))
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path} does not fit the model its config.json describes: {first_line(err)}") from None
    return model.eval()


def config_from_record(stored: Any, path: Path, beside: Collection[str] = ()) -> RunConfig:
    """The :class:`RunConfig` of a JSON record (``RunConfig.to_dict()`` as written to ``path``, and the keys
    ``beside`` it), validated.

    Every field is checked as strictly as the command line checks its flag; a missing field, an unknown key, a value
    of the wrong type or out of range gives one ``ValueError`` naming ``path`` and the field.

    Example:
        >>> config_from_record(RunConfig(tasks=2).to_dict(), Path("config.json")).tasks
        2
    """
    if not isinstance(stored, dict):
        raise ValueError(f"{path} must hold a JSON object of run settings")
    unknown = sorted(set(stored) - set(RunConfig.field_names()) - set(beside), key=str)
    if unknown:
        near = difflib.get_close_matches(str(unknown[0]), RunConfig.field_names(), n=1)
        raise ValueError(f"{path} has unknown settings: {listed([repr(key) for key in unknown])}"
                         f"{f' (did you mean {near[0]!r}?)' if near else ''}")
    values: dict[str, Any] = {}
    defaults = RunConfig()
    for key in RunConfig.field_names():
        if key not in stored:
            if key in NEWER_DEFAULTS:
                values[key] = NEWER_DEFAULTS[key]
                continue
            raise ValueError(f"{path} has no {key!r} setting")
        value = stored[key]
        if key == "meta" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if value is None and key in OPTIMIZER_SETTINGS:
            pass  # (a setting its model's optimizer does not take)
        elif key in _SEQUENCES:
            kind = _SEQUENCES[key]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{path}: {key!r} must be a list of {getattr(kind, '__name__', 'numbers')}, got {value!r}")
            value = tuple(value)
        elif key in ("data_dir", "baseline"):
            if value is not None and not isinstance(value, str):
                what = "a folder name" if key == "data_dir" else "a baseline's name"
                raise ValueError(f"{path}: {key!r} must be {what} or null, got {value!r}")
        elif isinstance(getattr(defaults, key), str) and not isinstance(value, str):
            raise ValueError(f"{path}: {key!r} must be a string, got {value!r}")
        values[key] = value
    try:
        return RunConfig(**values)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _complete(path: Path) -> str:
    """What ``--resume`` of a finished run says: nothing to resume, and how to draw its figures where a kill while
    they were drawn left them missing (the numbers are all written before the run says it is complete)."""
    missing = [name for name in ("accuracy_curves.png",) if not (path / name).exists()]
    redraw = f"; its figures are missing: draw them with metaspike plot {path}" if missing else ""
    return f"{path} is already complete; nothing to resume{redraw}"


def resume(run_dir: str | Path, progress: bool = True, plot: bool = True,
           settings: dict[str, Any] | None = None) -> tuple[Path, ContinualResult, list[str]]:
    """Continue a killed run from its last good checkpoint; return ``(path, result, warnings)``.

    The final results equal those of an uninterrupted run. A run stopped before its first checkpoint starts
    again from the beginning in its folder (with a warning). ``settings`` (field → value) that differ
    from the stored config are refused, naming them: a run is never finished under other settings.

    Example:
        >>> path, result, warnings = resume("runs/permuted-mnist5k-meta10-seed1")  # doctest: +SKIP
    """
    path = resume_folder(run_dir, "config.json")
    config = load_config(path)
    changed = [f"{flag_name(key)} (stored {getattr(config, key)!r}, given {value!r})"
               for key, value in (settings or {}).items() if getattr(config, key) != stored_setting(key, value)]
    if changed:
        raise ValueError(f"{path} continues with its stored settings; these would change them: {', '.join(changed)}")
    if is_complete(path):  # (before the lock, which a finished run on a read-only disk could not take; before the
        raise ValueError(_complete(path))  # number of processes, whose advice would lead here)
    _check_same_processes(path)
    rank, _ = init_from_env(config.device)  # (under torchrun the first process alone holds the lock and writes)
    with run_lock(path) if rank == 0 else nullcontext():
        if rank == 0:
            remove_stale_temporaries(path)  # left by a kill in the middle of a write
        if is_complete(path):  # (finished by another process meanwhile)
            raise ValueError(_complete(path))
        state, warnings = _checkpoint_to_continue(path)
        if state is None:  # killed before its first checkpoint: nothing was kept, so it starts again, in its own folder
            _refuse_results_without_checkpoint(path)
            warnings = [f"{path} has no checkpoint yet (stopped before its first checkpoint was written); it starts "
                        "again from the beginning"]
        try:
            scenario = make_run_scenario(config)
        except ValueError as err:
            raise ValueError(f"{path / 'config.json'}: {err}") from None
        directory = RunDirectory(path) if world()[0] == 0 else None
        if state is not None:  # (a run that starts over records the data and tasks it starts on)
            check_same_sources(path, config)
            if directory is not None:
                directory.check_scenario(_scenario_record(scenario))
            warnings += _arithmetic_changes(path, record=directory is not None)
        trainer = _trainer(config, scenario, progress)
        if directory is not None and state is None:  # starting over: the folder describes the config it runs now
            directory.describe(_record(config, scenario), _scenario_record(scenario))
        with named_for_lost_processes(path):
            return path, train_and_finish(trainer, scenario, directory, state, plot), warnings


def is_complete(run_dir: str | Path) -> bool:
    """Whether a run finished: ``model.pt`` in place and ``metrics.json`` saying ``complete: true``.

    Example:
        >>> import tempfile
        >>> is_complete(tempfile.mkdtemp())
        False
    """
    path = Path(run_dir)
    metrics_file = path / "metrics.json"
    if not (metrics_file.exists() and (path / "model.pt").exists()):
        return False
    metrics = read_json(metrics_file)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("complete", False), bool):
        raise ValueError(f"{metrics_file} must be a JSON object whose 'complete' is true or false")
    return metrics.get("complete", False)


def _rounding(decimals: int) -> float:
    """How far a value rounded to ``decimals`` decimals may lie from the one it was rounded from: half a unit of its
    last place.

    Example:
        >>> _rounding(ACCURACY_DECIMALS)
        0.005
    """
    return 0.5 * 10.0 ** -decimals


def _check_final_row(run_dir: Path, matrix: list[list[float]], final: Any) -> None:
    """The matrix's last row is what ``metrics.json`` says the run ended with (both are written from one result, to
    two decimals): a matrix copied from another run or edited by hand would otherwise stand for this run."""
    def same(a: Any, b: float) -> bool:
        missing = a is None or is_nan(a)
        return missing == math.isnan(b) and (missing or (is_finite_number(a)
                                                         and abs(a - b) <= _rounding(ACCURACY_DECIMALS)))

    last = matrix[-1] if matrix else []
    if not (isinstance(final, list) and len(final) == len(last) and all(map(same, final, last))):
        raise ValueError(f"{run_dir / 'accuracy_matrix.csv'}'s last row differs from the final_accuracy of "
                         f"{run_dir / 'metrics.json'}: one of them was edited or copied from another run")


#: How far a matrix cell (two decimals) may lie from the same accuracy in ``curves.csv`` (six decimals).
_CURVE_AGREEMENT = _rounding(ACCURACY_DECIMALS) + _rounding(6)


def _check_curves(run_dir: Path, matrix: list[Sequence[float]], curves: list[dict[str, float]],
                  task_names: list[str]) -> None:
    """``curves.csv`` holds the epochs of the tasks the matrix has a row of and of no other, each task's as ``1, 2,
    ...``, the last one with that row's accuracies (both are written from one evaluation; the curves to more
    decimals): curves edited by hand, cut by a row, added to or copied from another run would otherwise be drawn as
    this run's. A run without curves passes."""
    if not curves:
        return
    file = run_dir / "curves.csv"
    epochs_of: dict[int, list[dict[str, float]]] = {}
    for row in curves:
        task, epoch = row.get("task", math.nan), row.get("epoch", math.nan)
        if not all(math.isfinite(v) and v >= 1 and v == int(v) for v in (task, epoch)):  # (read as floats)
            raise ValueError(f"{file}: every row needs its task and epoch, whole numbers >= 1; found {shown(task)} and "
                             f"{shown(epoch)}")
        epochs_of.setdefault(int(task), []).append(row)
    evaluated = {task for task, row in enumerate(matrix, start=1) if not all(math.isnan(a) for a in row)}
    stray = sorted(set(epochs_of) - evaluated)
    if stray:  # (a task not evaluated logged no epochs, and a task beyond the run none at all)
        raise ValueError(f"{file} holds epochs of task {stray[0]}, which {run_dir / 'accuracy_matrix.csv'} has no "
                         "row of: a row was added, edited or copied from another run")
    for task in sorted(evaluated):
        row, rows = matrix[task - 1], epochs_of.get(task, [])
        numbers = [int(r["epoch"]) for r in rows]
        wrong = next((n for n, epoch in enumerate(numbers, start=1) if epoch != n), None)
        if not rows or wrong is not None:
            found = "no row" if not rows else f"epoch {numbers[wrong - 1]} where epoch {wrong} belongs"
            raise ValueError(f"{file}: task {task}, which accuracy_matrix.csv holds, has {found} (training logs epochs "
                             "1, 2, ... of each task): a row was deleted, added, edited or copied from another run")
        last = rows[-1]
        for name, accuracy in zip(task_names, row):
            value = last.get(name, math.nan)
            if math.isnan(accuracy) != math.isnan(value) or abs(accuracy - value) > _CURVE_AGREEMENT:
                raise ValueError(f"{file}: task {task}'s last epoch ({numbers[-1]}) gives {shown(value)} % on {name}, "
                                 f"{run_dir / 'accuracy_matrix.csv'} {shown(accuracy)} %: one of them was edited or "
                                 "copied from another run")


@dataclass(repr=False)  # (ContinualResult's one-line repr, not the generated one)
class RecordedResult(ContinualResult):
    """A finished run read back from its folder: :attr:`metrics` are the ones its ``metrics.json`` recorded (to three
    decimals), not recomputed from ``accuracy_matrix.csv``, whose cells are rounded to two: a table of runs read back
    shows the numbers the run itself recorded and ``metaspike train`` printed.

    Attributes:
        recorded: the metrics ``metrics.json`` holds, NaN where it says ``null`` (undefined).

    Example:
        >>> RecordedResult(["a", "b"], matrix=[[90.0, 10.0], [60.0, 95.0]], recorded={"ACC": 77.504}).metrics
        {'ACC': 77.504}
    """

    recorded: dict[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        """The metrics the run recorded (a copy: a caller's change never reaches the result)."""
        return dict(self.recorded)


#: The metrics every finished run records in ``metrics.json`` (:func:`metaspike.continual.metrics.summarize`), with
#: the range each lies in: ACC averages accuracies; BWT, FWT and forgetting average differences of two of them.
RUN_METRICS = {"ACC": (0.0, 100.0), "BWT": (-100.0, 100.0), "FWT": (-100.0, 100.0), "forgetting": (-100.0, 100.0)}
#: The metrics a long stream records besides, all or none: accuracies, and how many tasks they cover.
LONG_STREAM_METRICS = ("evaluated_accuracy", "evaluated_tasks", "last5_accuracy", "task1_accuracy")


def _recorded_metric(file: Path, key: str, value: Any, low: float, high: float) -> float:
    """``value``, the metric ``key`` recorded in ``file``, as a float (NaN for ``null``); one ``ValueError`` naming
    both where it is absent, not a number, or outside ``[low, high]``."""
    if value is None or is_nan(value):
        return math.nan
    if not (is_finite_number(value) and low <= value <= high):
        raise ValueError(f"{file} is malformed: {key!r} must be a number in [{low:g}, {high:g}], or null where "
                         "undefined")
    return float(value)


def _recorded_metrics(file: Path, metrics: dict[str, Any], tasks: int) -> dict[str, float]:
    """The metrics ``file``, the ``metrics.json`` of a finished run of ``tasks`` tasks, records, in the order
    :func:`~metaspike.continual.metrics.summarize` gives them: :data:`RUN_METRICS`, and a long stream's
    :data:`LONG_STREAM_METRICS` where it has them."""
    long_stream = [key for key in LONG_STREAM_METRICS if key in metrics]
    if long_stream and len(long_stream) != len(LONG_STREAM_METRICS):
        raise ValueError(f"{file} is malformed: it records {', '.join(map(repr, long_stream))} of a long stream's "
                         f"metrics without the others ({', '.join(map(repr, LONG_STREAM_METRICS))})")
    recorded = {key: _recorded_metric(file, key, metrics.get(key, "absent"), *limits)
                for key, limits in RUN_METRICS.items()}
    for key in long_stream:
        if key != "evaluated_tasks":
            recorded[key] = _recorded_metric(file, key, metrics[key], 0.0, 100.0)
        elif is_whole(metrics[key], 0) and metrics[key] <= tasks:
            recorded[key] = float(metrics[key])  # (a count, as summarize gives it)
        else:
            raise ValueError(f"{file} is malformed: 'evaluated_tasks' must be a whole number in [0, {tasks}]")
    return recorded


#: How many of a run's rounded accuracies (matrix cells, untrained accuracies) each term of a metric adds or subtracts:
#: ACC and a long stream's accuracies average cells, BWT, FWT and forgetting average differences of two (forgetting's
#: best cell is within a rounding of the best one unrounded); ``evaluated_tasks`` is a count, recorded exactly.
_ROUNDED_TERMS = {"ACC": 1, "BWT": 2, "FWT": 2, "forgetting": 2, "evaluated_accuracy": 1, "last5_accuracy": 1,
                  "task1_accuracy": 1, "evaluated_tasks": 0}
#: float64's own error in a metric of at most ``MAX_AFTER_TASK`` (10^6) accuracies <= 100 (about 10^6 * 100 * 2^-53,
#: 1e-8) is well below this, and this well below the rounding the files keep.
_ARITHMETIC = 1e-6


def _check_recorded_metrics(file: Path, result: RecordedResult) -> None:
    """One ``ValueError`` naming ``file`` (the run's ``metrics.json``) and the metric where a metric it recorded is not
    the one the run's matrix and untrained accuracies, as its files hold them, give (the library's own
    :attr:`ContinualResult.metrics <metaspike.continual.ContinualResult.metrics>` on them), within what the
    rounding of those files allows (:data:`_ROUNDED_TERMS` accuracies to :data:`ACCURACY_DECIMALS` decimals, the
    metric to :data:`METRIC_DECIMALS`), or where it records a number the matrix leaves undefined. A
    table of runs read back shows the recorded metrics: an edited ACC stood there beside the matrix that contradicts
    it. A metric recorded as undefined is taken as the run's word: the files do not say whether a scenario's evaluated
    tasks were its trained ones (a Python scenario's own evaluation tasks leave BWT, FWT and forgetting undefined)."""
    computed = ContinualResult(result.task_names, matrix=result.matrix, baseline=result.baseline).metrics
    for key, recorded in result.recorded.items():
        if key not in computed:  # (a run of an earlier version may lack a long stream's metrics, never the reverse)
            raise ValueError(f"{file} records {key!r}, a long stream's metric, where the run's accuracy_matrix.csv is "
                             "not a long stream's: one of them was edited or copied from another run")
        value = computed[key]
        terms = _ROUNDED_TERMS[key]
        allowed = terms * _rounding(ACCURACY_DECIMALS) + _rounding(METRIC_DECIMALS) + _ARITHMETIC if terms else 0.0
        if not math.isnan(recorded) and (math.isnan(value) or abs(recorded - value) > allowed):
            shown = "null (undefined)" if math.isnan(value) else f"{value:.{METRIC_DECIMALS}f}"
            raise ValueError(f"{file} records {key!r} {recorded}, where the run's "
                             f"accuracy_matrix.csv and untrained_accuracy give {shown}: one of them was edited or "
                             "copied from another run")


def finished_result(run_dir: str | Path) -> RecordedResult | None:
    """The result of a complete run read back from its files, or ``None`` when it is not complete: its matrix from
    ``accuracy_matrix.csv`` (two decimals), its metrics as ``metrics.json`` recorded them (:class:`RecordedResult`),
    refused in one line where they contradict that matrix (:func:`_check_recorded_metrics`).

    Example:
        >>> finished_result("runs/permuted-mnist5k-meta10-seed1")  # doctest: +SKIP
    """
    from metaspike.continual.results import load_run

    if not is_complete(run_dir):
        return None
    if not (Path(run_dir) / "accuracy_matrix.csv").exists():  # (the rest of its files say it finished)
        raise ValueError(f"{run_dir} is a finished run without its accuracy_matrix.csv (moved or deleted?): put it "
                         "back, or delete the run's folder to run it again")
    run_data = load_run(run_dir)
    metrics, tasks = run_data["metrics"], len(run_data["task_names"])
    metrics_file = Path(run_dir) / "metrics.json"
    baseline, seconds = metrics.get("untrained_accuracy"), metrics.get("seconds")
    if not (isinstance(baseline, list) and len(baseline) == tasks
            and all(a is None or is_nan(a) or (is_finite_number(a) and 0 <= a <= 100) for a in baseline)):
        raise ValueError(f"{metrics_file} is malformed: 'untrained_accuracy' must list {tasks} "
                         "accuracies in [0, 100] (null for a task not evaluated)")
    if not (is_finite_number(seconds) and seconds >= 0):
        raise ValueError(f"{metrics_file} is malformed: 'seconds' must be a finite number >= 0")
    _check_final_row(Path(run_dir), run_data["matrix"], metrics.get("final_accuracy"))
    _check_curves(Path(run_dir), run_data["matrix"], run_data["curves"], run_data["task_names"])
    result = RecordedResult(run_data["task_names"], matrix=run_data["matrix"],
                            baseline=[math.nan if a is None else float(a) for a in baseline], seconds=float(seconds),
                            recorded=_recorded_metrics(metrics_file, metrics, tasks))
    _check_recorded_metrics(metrics_file, result)
    return result
