"""The plain training and evaluation loops shared by ``bnn.fit`` and the continual-learning trainer.

Data are in-memory tensors; batches are drawn with a seeded ``torch.Generator`` so runs repeat
exactly. Outputs can be restricted to a subset of classes (task-incremental heads).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sysconfig
import warnings
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from metaspike.allocator import allocation_failure
from metaspike.bayesian.fused_step import FusedTrainingStep
from metaspike.bayesian.synapses import bayesian_modules
from metaspike.caller import LIBRARY_PATHS, user_stacklevel
from metaspike.checks import (
    ModelError,
    TrainingDiverged,
    check_device,
    check_eps_holds,
    first_line,
    is_number,
    is_whole,
    lacking_methods,
    listed,
    nan_or_infinite,
    raised_at,
)
from metaspike.distributed import average_gradients, batch_slice
from metaspike.modes import evaluation_mode
from metaspike.penalty_stability import refuse_overshooting_penalties
from metaspike.population_statistics import evaluates_with_batch_statistics, statistics_outdated
from metaspike.stops import raise_kept_stop, stops_so_far

__all__ = ["check_inputs", "check_labels", "minimum_batch_size", "train_epoch", "evaluate", "evaluate_together", "MIN_STATISTICS_BATCH",
           "random_numbers_apart", "masked_logits", "backward_within_batch",
           "classification_loss", "predictions", "TrainingDiverged", "Plugin", "non_finite_parameters",
           "refuse_nan_parameters",
           "LEARNED_MARGIN", "LearnedNothingWarning"]

#: A run none of whose accuracies rose this many points or more above the untrained network's learned nothing.
LEARNED_MARGIN = 5.0


class LearnedNothingWarning(UserWarning):
    """What :meth:`~metaspike.continual.ContinualTrainer.fit` and :func:`bnn.fit` warn where a run learned nothing
    (no accuracy rose :data:`LEARNED_MARGIN` points above the untrained model's): a model at chance says nothing by
    itself.

    Example:
        >>> issubclass(LearnedNothingWarning, UserWarning)
        True
    """


class Plugin:
    """Hooks a continual-learning method into the training loop (baselines such as EWC or SI).

    Every method does nothing by default; override what the method needs. A trainer calls ``fit_started`` once as it
    starts; the loop calls ``penalty`` for each batch (its value is added to the loss), ``before_step``/``after_step``
    around each optimizer step (gradients are available in both), ``curvatures`` to judge the penalty's stability
    under SGD before each epoch, and ``task_done`` at the end of each task with that task's training data (in a
    trainer, before the task's last evaluation: a method that changes the model at a task's end shows in that task's
    row of the accuracy matrix). ``state_dict``/``load_state_dict`` carry a stateful method's memory (EWC's Fisher,
    SI's importances) through checkpoints.

    Example:
        >>> class L2(Plugin):
        ...     def penalty(self, model):
        ...         return 1e-4 * sum(p.square().sum() for p in model.parameters())
    """

    def fit_started(self, model: nn.Module, task_specific: Sequence[Tensor]) -> None:
        """Called once when a :class:`~metaspike.continual.ContinualTrainer` starts (or resumes) fitting, before the
        first step, with the parameters it keeps per task (``task_specific``: the BatchNorm scale and shift of a run
        with per-task BatchNorm, each task's own restored to evaluate it; empty otherwise)."""
        return None

    def penalty(self, model: nn.Module) -> Tensor | float | None:
        """A term added to each batch's loss (before the backward pass): a scalar tensor with a gradient to ``model``'s
        parameters, a number, or ``None`` for none. One that is not a finite number stops training with a line that
        names the plugin."""
        return None

    def before_step(self, model: nn.Module) -> None:
        """Called after the backward pass, before the optimizer step (the batch's gradients are in ``p.grad``)."""
        return None

    def after_step(self, model: nn.Module) -> None:
        """Called right after the optimizer step (``p.grad`` still holds the step's gradients)."""
        return None

    def task_done(self, model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None) -> None:
        """Called once at the end of each task with its training inputs ``x``, labels ``y`` and, for a task that
        trains on some classes only, those ``classes`` (``None``: all outputs)."""
        return None

    def curvatures(self, model: nn.Module) -> list[tuple[Tensor, float]]:
        """Each parameter its penalty pulls on, with the largest curvature (second derivative) the penalty has along
        it: :func:`train_epoch` refuses a penalty stiffer than plain SGD can follow
        (:mod:`metaspike.penalty_stability`). None known by default."""
        return []

    def settings(self) -> dict[str, Any]:
        """The method's hyperparameters (nothing by default): a checkpoint records them, and a run resumed with
        other values is refused rather than continued with the checkpoint's, as loading its state would do."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep to resume the method exactly (nothing by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        return None


_OUTPUT_SHAPES = "[B, classes] (or [S, B, classes]: S weight samples of a Bayesian network)"
_REDUCED_OVER_TIME = "a spiking model returns its output reduced over time (metaspike.snn.SpikingClassifier does that)"
#: Samples of the trial forward pass of :func:`check_inputs`: three, so that an output ``[B, 2, C]`` is not read as
#: two weight samples of a batch of two (it failed inside torch at the first evaluation).
_PROBED = 3


def check_inputs(model: nn.Module, x: Tensor, y: Tensor | None = None, what: str = "input",
                 classes: Sequence[int] | None = None) -> None:
    """Reject data that cannot train ``model``, with one clear message.

    Checks dtype, NaN/inf, matching lengths and that a forward pass on three samples works (the
    message names the input shape and what the model expected, or, for an error raised in a user's own code, its
    module, file and line (:func:`_trial_failure`); its random draws, a Bayesian model's weight samples,
    come from copies of torch's generators: :func:`random_numbers_apart`), and that the labels are among the
    ``classes`` of the data (a task's), and those among the model's outputs.

    Example:
        >>> check_inputs(torch.nn.Linear(4, 2), torch.rand(10, 4))
    """
    if not torch.is_floating_point(x):
        raise ValueError(f"{what} must be floating point, got dtype {x.dtype}")
    if len(x) == 0:
        raise ValueError(f"{what} is empty")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    if y is not None:
        check_labels(y, len(x), None, what)
    if len(x) == 1 and evaluates_with_batch_statistics(model):  # (its trial pass blamed the samples' shape)
        fixed = "" if what.startswith("training") else (  # (training normalises by each batch whatever is fixed)
            ", or fix the statistics first (bnn.use_population_statistics(model, x_train))")
        raise ValueError(f"{what} holds one sample, and the model's BatchNorm normalises by the statistics of the "
                         f"batch (the paper's setting), which one sample does not have: give 2 samples or more{fixed}")
    expected = getattr(model, "in_features", None)
    if expected is not None and x[0].numel() != expected:
        raise ValueError(
            f"{what} samples have shape {tuple(x.shape[1:])} ({x[0].numel()} values) "
            f"but the model expects {expected} input features"
        )
    try:
        # (a model that samples its weights: training's numbers do not depend on the check)
        with torch.no_grad(), random_numbers_apart(x.device), evaluation_mode(model):
            out = model(x[:_PROBED])
    except Exception as err:
        if allocation_failure(err) or isinstance(err, ModelError):  # memory, or the model itself: not the samples'
            raise
        failure = _trial_failure(model, x, what, err)
        if failure is None:
            raise
        raise failure from None
    if not isinstance(out, Tensor) or out.dim() not in (2, 3):
        got = f"a {type(out).__name__}" if not isinstance(out, Tensor) else f"shape {list(out.shape)}"
        raise ValueError(f"the model must return logits {_OUTPUT_SHAPES}, got {got}; {_REDUCED_OVER_TIME}")
    if not out.is_floating_point():  # (integer scores failed inside torch's log_softmax)
        raise ValueError(f"the model must return floating-point logits {_OUTPUT_SHAPES}, got dtype {out.dtype}")
    probed = min(len(x), _PROBED)
    if out.shape[-2] != probed:
        raise ValueError(f"the model returns {list(out.shape)} for {probed} samples of {what}: its outputs must be "
                         f"{_OUTPUT_SHAPES}, the batch second to last; {_REDUCED_OVER_TIME}")
    if out.dim() == 3 and next(bayesian_modules(model), None) is None:
        warnings.warn(f"the model returns {list(out.shape)} outputs, read as {out.shape[0]} weight samples of a "
                      "Bayesian network (the loss averages over them, a prediction averages their log-probabilities), "
                      "but it has no Bayesian synapses; if these are time steps, reduce them over time in the model "
                      "(metaspike.snn.SpikingClassifier does)", stacklevel=2)
    if y is not None and out.shape[-1] == 1:  # (log_softmax of one logit is 0: no loss, no gradient, silently)
        raise ValueError("the model returns one output per sample; it is trained and scored as a classifier, one "
                         "output per class, and over one class cross-entropy is always 0 (nothing trains) and every "
                         "prediction class 0: give it an output for each class (2 for a yes/no task)")
    if y is not None:
        check_labels(y, len(x), out.shape[-1], what)
    if y is not None:  # (a task checks its labels when made; this is what trains now)
        _check_within_classes(y, classes, what)
    beyond = [c for c in classes or () if not 0 <= c < out.shape[-1]]
    if beyond:
        raise ValueError(f"the classes {list(classes)} of {what} go beyond the model's {out.shape[-1]} outputs "  # type: ignore[arg-type]
                         f"(classes 0 to {out.shape[-1] - 1})")


def _trial_failure(model: nn.Module, x: Tensor, what: str, err: Exception) -> ValueError | None:
    """The one-line error for ``err``, raised by the trial forward pass of :func:`check_inputs` on samples of ``x``
    (``None``: ``err`` is passed on as it is, an error of another kind raised in a library): data of another dtype
    than the model's parameters; an error raised in a user's own code (:func:`_raised_in_user_code`: a bug there, or
    samples that code cannot take), named by its module, file and line; else samples of a shape that does not fit
    (torch's BatchNorm raises ValueError for one sample)."""
    known = isinstance(err, (RuntimeError, ValueError))
    mismatch = _dtype_mismatch(model, x, what)
    if known and mismatch is not None:
        return mismatch
    said = first_line(err)
    place = _raised_in_user_code(err)
    if place:
        return ValueError(f"{what}: the model raised {type(err).__name__} in {place} on samples of shape "
                          f"{tuple(x.shape[1:])}: {said}")
    if known:
        flatten = "; nn.Linear takes flat inputs: put an nn.Flatten() before it" if _unflattened(x, said) else ""
        return ValueError(f"{what} samples of shape {tuple(x.shape[1:])} do not fit the model: {said}{flatten}")
    return None


def _unflattened(x: Tensor, error: str) -> bool:
    """Whether torch's ``error`` is a product that got image samples ``x`` (``[N, C, H, W]``, as datasets hold them),
    or a convolution's maps of them, unflattened: its first operand has more rows than the samples probed (a model
    that flattens, then has a layer of the wrong width, needs no Flatten; a sequence ``[N, T, F]`` goes through
    nn.Linear step by step, so its wrong width is no missing Flatten)."""
    product = re.match(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x\d+ and", error)
    return x.dim() == 4 and product is not None and int(product.group(1)) > min(len(x), _PROBED)


def _dtype_mismatch(model: nn.Module, x: Tensor, what: str) -> ValueError | None:
    """The one-line error for data ``x`` of a floating dtype that none of ``model``'s floating parameters has (torch
    fails inside the first product, "mat1 and mat2 must have the same dtype"); ``None`` where they agree."""
    dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()})
    if not dtypes or str(x.dtype) in dtypes:
        return None
    convert = (f"convert the data (x.to({dtypes[0]}))" if x.dtype == torch.float16 else  # (trains NaN: eps)
               f"convert the model (model.to({x.dtype}))" if x.dtype == torch.float32 else  # (datasets hold it)
               f"convert the model (model.to({x.dtype})) or the data to one dtype")
    return ValueError(f"{what} is {x.dtype} but the model's parameters are {', '.join(dtypes)}; {convert}")


def check_labels(y: Tensor, samples: int, outputs: int | None, what: str = "input") -> None:
    """Reject labels that cannot score ``samples`` samples of ``what`` on a model with ``outputs`` outputs (``None``:
    not known yet), with one clear message: int64 class indices of shape [N], one per sample, in 0..outputs-1.

    Example:
        >>> check_labels(torch.tensor([0, 2]), 2, 3)
    """
    if not isinstance(y, Tensor) or y.dtype != torch.long:
        raise ValueError(f"labels of {what} must be int64 class indices, got "
                         f"{f'dtype {y.dtype}' if isinstance(y, Tensor) else type(y).__name__}")
    if y.dim() != 1:
        raise ValueError(f"labels of {what} must have shape [N], one class index per sample, got {list(y.shape)}")
    if len(y) != samples:
        raise ValueError(f"{what} has {samples} samples but {len(y)} labels")
    if outputs is not None and len(y) and int(y.min()) < 0:
        raise ValueError(f"labels of {what} must be class indices >= 0, got {int(y.min())}")
    if outputs is not None and len(y) and int(y.max()) >= outputs:
        raise ValueError(f"labels of {what} go up to {int(y.max())} but the model has {outputs} outputs")


def masked_logits(logits: Tensor, classes: Sequence[int] | None) -> Tensor:
    """``logits`` with every class outside ``classes`` set to -inf (task-incremental heads); unchanged for ``None``.

    Example:
        >>> masked_logits(torch.zeros(1, 3), [0, 2])
        tensor([[0., -inf, 0.]])
    """
    if classes is None:
        return logits
    outputs = logits.shape[-1]  # the classes are the last dimension, also of (S, B, C) weight-sample logits
    classes = list(classes)
    if any(not 0 <= c < outputs for c in classes):
        raise ValueError(f"classes {classes} go beyond the model's {outputs} outputs")
    mask = torch.full((outputs,), float("-inf"), device=logits.device)
    mask[classes] = 0.0
    return logits + mask


def classification_loss(logits: Tensor, targets: Tensor, classes: Sequence[int] | None = None) -> Tensor:
    """Cross-entropy of ``logits`` ``(B, C)``, or ``(S, B, C)`` for ``S`` weight samples of a Bayesian network
    (then the mean over the samples), with the outputs outside ``classes`` masked.

    Example:
        >>> logits = torch.zeros(3, 2, 4)  # 3 samples, 2 inputs, 4 classes
        >>> round(classification_loss(logits, torch.tensor([0, 1])).item(), 4)  # log 4
        1.3863
    """
    logits = masked_logits(logits, classes)
    if logits.dim() == 3:
        return F.cross_entropy(logits.flatten(0, 1), targets.repeat(logits.shape[0]))
    return F.cross_entropy(logits, targets)


def predictions(logits: Tensor, classes: Sequence[int] | None = None) -> Tensor:
    """The predicted class of each input: the argmax of ``logits`` ``(B, C)``, or of the class
    log-probabilities averaged over ``S`` weight samples for ``(S, B, C)`` (as the BiMU and MESU papers'
    code predicts from its weight samples: the geometric mean of the samples' class probabilities).

    Example:
        >>> predictions(torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]]))  # two samples that disagree
        tensor([0])
    """
    logits = masked_logits(logits, classes)
    if logits.dim() == 3:
        return logits.log_softmax(-1).mean(0).argmax(-1)
    return logits.argmax(-1)


#: The hooks of :class:`Plugin` that a training loop calls.
_PLUGIN_HOOKS = ("penalty", "before_step", "after_step", "task_done")


def checked_plugins(plugins: Any) -> tuple[Plugin, ...]:
    """``plugins`` as a tuple, each an object with the hooks of :class:`Plugin` (a class where an instance belongs,
    or a function, would fail only once training reaches the hook).

    Example:
        >>> checked_plugins([Plugin()])[0].penalty(torch.nn.Linear(1, 1)) is None
        True
    """
    if isinstance(plugins, (str, bytes, Plugin, dict)) or not isinstance(plugins, Iterable):
        raise ValueError(f"plugins must be a list of Plugin instances (e.g. [EWC()]), got {type(plugins).__name__}")
    plugins = tuple(plugins)
    for index, plugin in enumerate(plugins):
        if isinstance(plugin, type):
            raise ValueError(f"plugins[{index}] is the class {plugin.__name__}; pass an instance: "
                             f"{plugin.__name__}(...)")
        missing = lacking_methods(plugin, _PLUGIN_HOOKS)
        if missing:
            raise ValueError(f"plugins[{index}] ({type(plugin).__name__}) lacks {', '.join(missing)}: a plugin "
                             "subclasses metaspike.training.Plugin and overrides the hooks it needs")
        first = next(i for i, other in enumerate(plugins) if other is plugin)
        if first != index:  # (its hooks would run twice a step: a penalty counted twice, importances added twice)
            raise ValueError(f"plugins[{index}] is plugins[{first}] again ({type(plugin).__name__}): give each plugin "
                             "once (two of one kind are two instances)")
    return plugins


def _check_within_classes(y: Tensor, classes: Sequence[int] | None, what: str) -> None:
    """One ``ValueError`` where labels ``y`` of ``what`` fall outside ``classes`` (the outputs the loss or the
    prediction reads): they could never be predicted, and their loss is infinite."""
    if classes is None or not len(y):
        return
    outside = sorted(set(y.unique().tolist()) - set(classes))
    if outside:
        raise ValueError(f"labels of {what} include {outside[:5]}, outside its classes {list(classes)}")


def _check_samples(x: Any, y: Any, classes: Sequence[int] | None, what: str) -> None:
    """``x`` a tensor of samples, ``y`` one int64 class index per sample (:func:`check_labels`) within ``classes``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{what} x must be a tensor of samples, got {type(x).__name__}")
    check_labels(y, len(x), None, what)
    _check_within_classes(y, classes, what)


def minimum_batch_size(has_batchnorm: bool, processes: int = 1) -> int:
    """The smallest batch that trains: every process needs a sample of it, and BatchNorm two (one sample has no
    batch statistics).

    Example:
        >>> minimum_batch_size(True, processes=2), minimum_batch_size(False)
        (4, 1)
    """
    return processes * (2 if has_batchnorm else 1)


def _refuse_vanishing_eps(optimizer: Optimizer) -> None:
    """Refuse an optimizer whose ``eps`` is 0 in its parameters' dtype (:func:`~metaspike.checks.check_eps_holds`;
    torch's Adam does not check, and a model may have been converted after its optimizer was built)."""
    for group in optimizer.param_groups:
        check_eps_holds(group)


def train_epoch(
    model: nn.Module,
    optimizer: Optimizer,
    x: Tensor,
    y: Tensor,
    batch_size: int = 100,
    generator: torch.Generator | None = None,
    classes: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    progress=None,
    plugins: Sequence[Plugin] = (),
    shard: tuple[int, int] = (0, 1),
) -> float:
    """Train one epoch over ``(x, y)`` in shuffled mini-batches; return the mean loss.

    ``classes`` restricts the outputs the loss sees (task-incremental heads). ``progress`` is an
    optional tqdm-like bar advanced once per batch. ``plugins`` add penalties and step hooks; penalties stiffer than
    plain SGD can follow are refused before the epoch trains (:mod:`metaspike.penalty_stability`). Inside
    :func:`metaspike.stops.handling_stops`, a Ctrl-C or SIGTERM that native code dropped in a step is raised after it.
    ``shard=(rank, processes)`` trains on this process's slice of every mini-batch (distributed
    training; gradients are then averaged over the processes before plugins and the optimizer see them).
    At batch size 1, a sequential network of Bayesian synapses trained by MESU or BiMU alone (no plugin, no
    ``classes``, one process) takes :class:`~metaspike.bayesian.fused_step.FusedTrainingStep`: the same steps to
    float rounding, as one compiled call each, without writing ``.grad``.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> loss = train_epoch(model, opt, torch.rand(20, 4), torch.randint(0, 3, (20,)), batch_size=5)
    """
    if not is_whole(batch_size, 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    _check_samples(x, y, classes, "the training data")
    device = check_device(device)
    _check_shard(shard)
    lacking = lacking_methods(optimizer, ("zero_grad", "step"))
    if lacking:
        raise ValueError(f"optimizer must be an optimizer (a torch.optim.Optimizer, or one with zero_grad and step), "
                         f"got {type(optimizer).__name__}")
    if progress is not None and lacking_methods(progress, ("update",)):
        raise ValueError(f"progress must be None or a tqdm-like bar with an update method, got "
                         f"{type(progress).__name__}")
    plugins = checked_plugins(plugins)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    infinite_by_design = refuse_nan_parameters(model, "training")
    model.train()
    _refuse_vanishing_eps(optimizer)
    order = torch.randperm(len(x), generator=generator)
    total, batches = 0.0, 0
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    # a batch short of the minimum is skipped (decided alike in every process); a batch_size short of it would skip
    # every batch
    minimum = minimum_batch_size(has_batchnorm, shard[1])
    if batch_size < minimum or len(x) < minimum:
        per = f" per process ({shard[1]} processes)" if shard[1] > 1 else ""
        why = (f"the model has BatchNorm, which cannot train on one sample{per}" if has_batchnorm
               else f"each of the {shard[1]} processes needs at least one sample of a batch")
        if batch_size >= minimum:  # every batch would be skipped: nothing would train
            raise ValueError(f"x has {len(x)} samples, fewer than the smallest batch that trains ({minimum}: {why})")
        raise ValueError(f"batch_size {batch_size}: {why}; use batch_size >= {minimum}")
    refuse_overshooting_penalties(optimizer, plugins, model)
    stops_before = stops_so_far()  # (a Ctrl-C or SIGTERM that native code drops inside a step is raised after it)
    fused = _fused_step(model, optimizer, batch_size, classes, plugins, shard)
    if fused is not None:
        return _train_fused(fused, x, y, order, device, progress, stops_before)
    for start in range(0, len(x), batch_size):
        batch = order[start : start + batch_size]
        parts = batch.tensor_split(shard[1])
        index = parts[shard[0]]
        if len(batch) < minimum:
            continue  # (the last batch of an epoch)
        inputs, targets = x[index].to(device, non_blocking=True), y[index].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        shared = (batch_slice(len(batch), sum(len(part) for part in parts[: shard[0]])) if shard[1] > 1
                  else contextlib.nullcontext())
        with shared:
            logits = model(inputs) if batches else _first_outputs(model, inputs, y, "the training data")
            loss = classification_loss(logits, targets, classes)
        if shard[1] > 1:  # weigh this slice by its share, so averaged gradients equal the whole batch's
            loss = loss * (len(index) * shard[1] / len(batch))
        _require_gradient(loss)
        if not torch.isfinite(loss):
            raise TrainingDiverged(_diverged_loss_message(loss.item(), batches + 1, model, infinite_by_design))
        for plugin in plugins:
            extra = _checked_penalty(plugin, model)
            if extra is not None:
                loss = loss + extra
        backward_within_batch(loss)
        if shard[1] > 1:
            average_gradients(model)
        for plugin in plugins:
            plugin.before_step(model)
        optimizer.step()
        for plugin in plugins:
            plugin.after_step(model)
        raise_kept_stop(stops_before)
        total += loss.item()
        batches += 1
        if progress is not None:
            progress.update(1)
    _refuse_non_finite_parameters(model, infinite_by_design)
    mean = total / max(batches, 1)
    if shard[1] > 1:  # report the loss of the whole batch, as one process would
        summed = torch.tensor([mean], dtype=torch.float64)  # a Python float: keep its precision
        torch.distributed.all_reduce(summed)
        mean = summed.item() / shard[1]
    return mean


def _require_gradient(loss: Tensor) -> None:
    """One ``ValueError`` where the model's loss carries no gradient back to any parameter: its backward pass would
    fail inside torch (or, with a plugin's penalty added, train on the penalty alone)."""
    if loss.requires_grad:
        return
    if not torch.is_grad_enabled():
        raise ValueError("the loss has no gradient: training ran with gradients disabled (inside torch.no_grad() or "
                         "torch.inference_mode())")
    raise ValueError("the loss has no gradient to any trained parameter: the model's output does not depend on a "
                     "parameter that requires grad (a spike function without a surrogate gradient, such as "
                     "(mem > threshold).float(), or every parameter frozen)")


def _checked_penalty(plugin: Plugin, model: nn.Module) -> Tensor | float | None:
    """``plugin.penalty(model)`` once it is what a loss can take: a scalar tensor, a number or ``None`` (a tensor of
    several values would turn the loss into one, and the next check fail inside torch), and finite (a NaN penalty was
    blamed on the learning rate)."""
    extra = plugin.penalty(model)
    if extra is None or is_number(extra) or (isinstance(extra, Tensor) and extra.dim() == 0):
        value = None if extra is None else float(extra.detach() if isinstance(extra, Tensor) else extra)
        if value is not None and not math.isfinite(value):  # (not the learning rate's fault: name the plugin)
            raise TrainingDiverged(f"plugin {type(plugin).__name__}: its penalty returned {value} (the data "
                                   "loss is finite); check its state and settings, e.g. its strength")
        return extra
    got = f"a tensor of shape {list(extra.shape)}" if isinstance(extra, Tensor) else f"a {type(extra).__name__}"
    raise ValueError(f"plugin {type(plugin).__name__}: its penalty returned {got}; penalty must return a scalar tensor "
                     "or a number (None: no penalty)")


def non_finite_parameters(model: nn.Module, infinite_by_design: Collection[str] = ()) -> list[str]:
    """The names of ``model``'s parameters that hold NaN, or infinite values unless named in ``infinite_by_design``
    (those that held them before training: a frozen ``-inf`` mask; :func:`refuse_nan_parameters` names them).

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = net.bias.fill_(float("nan"))
        >>> non_finite_parameters(net)
        ['bias']
    """
    bad = []
    for name, p in model.named_parameters():
        nan, infinite = nan_or_infinite(p)
        if nan or (infinite and name not in infinite_by_design):
            bad.append(name)
    return bad


def refuse_nan_parameters(model: nn.Module, doing: str) -> set[str]:
    """One ``ValueError`` naming the parameters of ``model`` that hold NaN before ``doing`` (``"training"``,
    ``"evaluating"``): they came from outside a step (a loaded state dict or checkpoint, an edit), and a binary synapse
    would show a NaN hidden weight as a plausible +1 weight, silently. An infinite value is left alone (a frozen
    ``-inf`` mask is one by design, and an infinite hidden weight has a sign): returns the names of the parameters that
    hold one, which the checks after training steps then pass over (:func:`non_finite_parameters`). One pass over the
    parameters (a few ms for 784-4096-4096-10): once per :func:`train_epoch`, per :func:`evaluate` call and per fit of
    a trainer, which checks its weights itself at each task's end.

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(float("nan"))
        >>> refuse_nan_parameters(net, "evaluating")
        Traceback (most recent call last):
        ...
        ValueError: the model holds NaN before evaluating, in weight: it came from where the model was loaded or edited, not from a training step (a binary synapse would show a NaN hidden weight as a +1 weight); load or set finite values
    """
    found = {name: nan_or_infinite(p) for name, p in model.named_parameters()}
    bad = [name for name, (nan, _) in found.items() if nan]
    if bad:
        raise ValueError(f"the model holds NaN before {doing}, in {listed(bad, 3)}: it came from where the model was "
                         "loaded or edited, not from a training step (a binary synapse would show a NaN hidden weight "
                         "as a +1 weight); load or set finite values")
    return {name for name, (_, infinite) in found.items() if infinite}


def _diverged_loss_message(value: float, batch: int, model: nn.Module,
                           infinite_by_design: Collection[str] = ()) -> str:
    """What :class:`TrainingDiverged` says when the loss of batch ``batch`` is ``value`` (NaN or infinite): where
    parameters are NaN or infinite, the steps before made them (a learning rate too high); where all are finite, the
    forward pass made the value itself, which lowering the learning rate cures only if the weights grew large.

    Example:
        >>> _diverged_loss_message(float("nan"), 1, torch.nn.Linear(2, 1))[:60]
        'loss became nan at batch 1 while every parameter was finite:'
    """
    bad = non_finite_parameters(model, infinite_by_design)
    if bad:
        named = f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
        return (f"loss became {value} at batch {batch}: the parameters {named} hold NaN or infinite values from the "
                "steps before; lower the learning rate")
    kept = f" (but {listed(sorted(infinite_by_design), 3)}, infinite before training)" if infinite_by_design else ""
    return (f"loss became {value} at batch {batch} while every parameter was finite{kept}: the model's forward pass "
            "made it (an operation that overflows or is undefined for these inputs, e.g. a log, a division or an exp; "
            "or weights grown large, then lower the learning rate)")


def _refuse_non_finite_parameters(model: nn.Module, infinite_by_design: Collection[str]) -> None:
    """:class:`TrainingDiverged` naming the parameters that became NaN or infinite while the loss stayed finite (a NaN
    in one gradient entry): a binary synapse shows a NaN hidden weight as +1 and would never learn again, silently.
    (Those in ``infinite_by_design`` were infinite before: only a NaN counts there.)"""
    bad = non_finite_parameters(model, infinite_by_design)
    if bad:
        params = dict(model.named_parameters())
        finite_gradients = all(params[name].grad is None or not any(nan_or_infinite(params[name].grad))
                               for name in bad)
        cause = ("their last gradients were finite, so the optimizer's step made them: a consolidation rule that "
                 "returned NaN or infinite updates, or an optimizer setting out of range" if finite_gradients else
                 "a gradient held NaN or infinite entries; check the model's operations or lower the learning rate")
        raise TrainingDiverged(f"parameters became NaN or infinite in this epoch while the loss stayed finite "
                               f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}): {cause}")


#: The start of torch's message when a backward pass reaches a graph an earlier one freed.
_GRAPH_FREED = "Trying to backward through the graph a second time"


def backward_within_batch(loss: Tensor) -> None:
    """``loss.backward()``; a graph that reaches into an earlier batch's (freed) graph is one ``ValueError`` saying
    what keeps it: a module that holds a tensor between calls, most often a neuron's state left from the last batch.

    Example:
        >>> w = torch.ones(2, requires_grad=True)
        >>> kept = w.exp()  # computed once, then used by every batch: a state no one resets
        >>> backward_within_batch(kept.sum())
        >>> backward_within_batch(kept.sum())
        Traceback (most recent call last):
        ...
        ValueError: the loss reaches into the graph of an earlier batch: a module keeps a tensor between calls (a neuron's state from the last batch?). Drop it before each batch: metaspike.snn.reset_states, which SpikingClassifier calls, calls every module's reset_state() method
    """
    try:
        loss.backward()
    except RuntimeError as err:
        if not str(err).startswith(_GRAPH_FREED):
            raise
        raise ValueError("the loss reaches into the graph of an earlier batch: a module keeps a tensor between calls "
                         "(a neuron's state from the last batch?). Drop it before each batch: metaspike.snn.reset_states"
                         ", which SpikingClassifier calls, calls every module's reset_state() method") from err


def _fused_step(model: nn.Module, optimizer: Optimizer, batch_size: int, classes: Sequence[int] | None,
                plugins: Sequence[Plugin], shard: tuple[int, int]) -> FusedTrainingStep | None:
    """The fused batch-1 step of a Bayesian network (:mod:`metaspike.bayesian.fused_step`) where it computes what
    :func:`train_epoch`'s own loop would: batch size 1, one process, no plugin, no task mask, a qualifying model; and
    where it runs compiled (uncompiled, past torch's limit of compiled variants, it is slower than the loop)."""
    if batch_size != 1 or shard[1] != 1 or plugins or classes is not None:
        return None
    step = FusedTrainingStep.where_possible(model, optimizer)
    return None if step is None or step.runs_eagerly() else step


def _train_fused(step: FusedTrainingStep, x: Tensor, y: Tensor, order: Tensor, device: torch.device | str,
                 progress: Any, stops_before: int) -> float:
    """:func:`train_epoch` by fused steps, one sample each in ``order``; the mean loss. A stop that came after the
    first ``stops_before`` and that a compiled step's guard dropped is raised after its step."""
    losses: list[float] = []

    def after_step(loss: Tensor) -> None:
        value = loss.item()
        if not math.isfinite(value):  # (the fused step left the weights as they were)
            raise TrainingDiverged(_diverged_loss_message(value, len(losses) + 1, step.model))
        losses.append(value)
        if progress is not None:
            progress.update(1)
        raise_kept_stop(stops_before)

    step.train_rows(x, y, order.tolist(), device, after_step)
    step.check_weights()  # (a NaN weight makes the next step's loss NaN; after the last step nothing would tell)
    return sum(losses) / max(len(order), 1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int = 1000,
    classes: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    check_parameters: bool = True,
) -> float:
    """Accuracy of ``model`` on ``(x, y)`` in percent (eval mode, batches of ``batch_size``).

    A model holding NaN parameters is refused first (:func:`refuse_nan_parameters`; ``check_parameters=False``: a
    caller that checked them already, as a trainer does at each task's end, saves that pass).

    A model whose BatchNorm layers normalise with the statistics of each batch in eval mode (``bnn.MLP`` and
    ``bnn.ConvNet``, as in the paper, until :func:`metaspike.use_population_statistics`) predicts a sample from the
    batch it shares: its batches (about ``batch_size`` samples each: ``len(x) / batch_size`` batches, rounded) are
    then drawn in a fixed random order (the same every call), so that a test set stored sorted by class scores what
    a shuffled one does; a set cut into batches under :data:`MIN_STATISTICS_BATCH` samples, and a set of one class
    only, get a warning (a set smaller than that, evaluated in one batch, does not: no batch size would help it).

    A model that draws random weights in evaluation (BiMU's Bernoulli samples) draws them from a copy of torch's
    generator: evaluating never shifts the random numbers that training draws next (a run trains the same however
    often it is evaluated), and two evaluations with no training between them see the same samples.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> 0.0 <= evaluate(model, torch.rand(20, 4), torch.randint(0, 3, (20,))) <= 100.0
        True
    """
    if check_parameters:
        refuse_nan_parameters(model, "evaluating")
    return _percent(_correct(model, x, y, batch_size, classes, device))


def evaluate_together(model: nn.Module, parts: Sequence[tuple[Tensor, Tensor]], batch_size: int = 1000,
                      device: torch.device | str = "cpu", classes: Sequence[int] | None = None,
                      check_parameters: bool = True) -> list[float]:
    """Accuracy (%) on each ``(x, y)`` of ``parts``, evaluated as one mixed set (as :func:`evaluate` evaluates one),
    among the outputs of ``classes`` (all for ``None``; a growing head's classes seen so far); ``check_parameters`` as
    for :func:`evaluate`.

    Where a test sample may come from any task (a class-incremental stream), a model that normalises each batch by
    its own statistics must not see batches of one task's classes only: they would tell it the task. Evaluated one
    by one, such tasks scored 28 % for a model 95 % accurate on their union (5 tasks of 2 digits each).

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> len(evaluate_together(model, [(torch.rand(5, 4), torch.zeros(5, dtype=torch.long))] * 2))
        2
    """
    if not parts or any(len(x) == 0 for x, _ in parts):
        raise ValueError("parts must hold test sets of at least one sample each")
    if check_parameters:
        refuse_nan_parameters(model, "evaluating")
    correct = _correct(model, torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]), batch_size, classes,
                       device)
    return [_percent(part) for part in correct.split([len(x) for x, _ in parts])]


def _first_outputs(model: nn.Module, inputs: Tensor, y: Tensor, what: str) -> Tensor:
    """``model(inputs)`` on the first batch of a loop over ``what`` (labels ``y``): one ``ValueError`` where the
    samples are of a dtype the model's parameters are not (:func:`_dtype_mismatch`) and where the labels go beyond its
    outputs (a loss failed inside torch with "Target 3 is out of bounds"; an evaluation scored them as misses,
    silently): in a loop of one's own, as :func:`check_inputs` checks a task's data before the trainer trains it. An
    error of the model's own forward pass is raised as it is, with its traceback (its layers may not fit each other)."""
    if inputs.is_floating_point():
        mismatch = _dtype_mismatch(model, inputs, what)
        if mismatch is not None:
            raise mismatch
    logits = model(inputs)
    if isinstance(logits, Tensor) and logits.dim() in (2, 3):
        check_labels(y, len(y), logits.shape[-1], what)
    return logits


def _check_shard(shard: Any) -> None:
    """``shard`` a pair ``(rank, processes)`` of integers with ``0 <= rank < processes``."""
    if not (isinstance(shard, (tuple, list)) and len(shard) == 2 and is_whole(shard[1], 1) and is_whole(shard[0], 0)
            and shard[0] < shard[1]):
        raise ValueError(f"shard must be (rank, processes), integers with 0 <= rank < processes, got {shard!r}")


def _percent(correct: Tensor) -> float:
    return 100.0 * int(correct.sum()) / len(correct)


def _correct(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, classes: Sequence[int] | None,
             device: torch.device | str) -> Tensor:
    """Whether ``model`` predicts each sample of ``(x, y)`` right (a bool per sample, in ``x``'s order); see
    :func:`evaluate` for the batches and the warnings."""
    _check_samples(x, y, classes, "the evaluated data")
    if len(x) == 0:
        raise ValueError("x holds no samples to evaluate")
    device = check_device(device)
    if not is_whole(batch_size, 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    # near-equal chunks: no trailing batch of one sample, which batch-statistics BatchNorm cannot take
    chunks = max(1, round(len(x) / batch_size))
    order = torch.arange(len(x))
    batch_statistics = evaluates_with_batch_statistics(model)
    if batch_statistics and chunks > 1 and len(x) // chunks < 2:
        raise ValueError(f"an evaluation batch size of {batch_size} splits these {len(x)} samples into batches with "
                         "one sample, which the model's BatchNorm cannot normalise by its own statistics; evaluate in "
                         f"batches of 3 or more ({MIN_STATISTICS_BATCH} or more for undistorted statistics: evaluate's "
                         "batch_size, TrainerConfig.eval_batch_size) or fix the statistics first "
                         "(metaspike.use_population_statistics)")
    if batch_statistics and chunks > 1:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # a class-sorted set mixes too
        if len(x) // chunks < MIN_STATISTICS_BATCH:
            warnings.warn(f"evaluating in batches of {len(x) // chunks} samples: the model's BatchNorm normalises each "
                          f"batch by its own statistics, which under {MIN_STATISTICS_BATCH} samples distort its "
                          "predictions; evaluate in larger batches or fix the statistics first "
                          "(metaspike.use_population_statistics)", stacklevel=user_stacklevel())
    warn_if_statistics_outdated(model, "evaluating")
    if batch_statistics and len(x) > 1 and bool((y == y[0]).all()):
        warnings.warn("evaluating samples of one class only: the model's BatchNorm normalises the batch by its own "
                      "statistics, which removes what the class has in common; fix the statistics first "
                      "(metaspike.use_population_statistics)", stacklevel=user_stacklevel())
    correct = torch.zeros(len(x), dtype=torch.bool)
    with random_numbers_apart(device), evaluation_mode(model):
        for number, index in enumerate(order.tensor_split(chunks)):
            inputs, targets = x[index].to(device, non_blocking=True), y[index].to(device, non_blocking=True)
            logits = model(inputs) if number else _first_outputs(model, inputs, y, "the evaluated data")
            if logits.isnan().any():  # (argmax of NaN: NaN samples scored 22 %, without a word)
                raise ValueError("the model's outputs hold NaN on the evaluated data (NaN in its samples, or "
                                 "weights gone NaN): there is no prediction to score")
            correct[index] = (predictions(logits, classes) == targets).cpu()
    return correct


#: Where installed libraries and Python's own modules live: an error raised there is not a user's own code's.
_INSTALLED_PATHS = tuple(os.path.join(os.path.abspath(path), "") for path in
                         {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")})


def _raised_in_user_code(err: BaseException) -> str:
    """Where ``err`` was raised, as ``"Class.method (name.py line N)"``, when the innermost frame of its traceback is
    a user's own code (not metaspike, bnn, torch, another installed library or Python's own modules); ``""`` else.

    Example:
        >>> try:
        ...     torch.zeros(2) + torch.zeros(3)
        ... except RuntimeError as err:
        ...     _raised_in_user_code(err).startswith("<module> (<doctest")
        True
    """
    innermost = err.__traceback__
    if innermost is None:
        return ""
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    frame = innermost.tb_frame
    filename = frame.f_code.co_filename
    if filename.startswith("<frozen ") or os.path.abspath(filename).startswith(LIBRARY_PATHS + _INSTALLED_PATHS):
        return ""  # ("<frozen importlib._bootstrap>": Python's own modules, frozen into it)
    owner = frame.f_locals.get("self")
    function = f"{type(owner).__qualname__}.{frame.f_code.co_name}" if owner is not None else frame.f_code.co_name
    return f"{function} ({raised_at(err, frame.f_code.co_filename)})"


def warn_if_statistics_outdated(model: nn.Module, doing: str) -> None:
    """Warn, naming what is ``doing``, at the user's line, when ``model``'s weights changed after its BatchNorm
    statistics were fixed (:func:`~metaspike.population_statistics.statistics_outdated`)."""
    if statistics_outdated(model):
        warnings.warn(f"{doing} {type(model).__name__} with BatchNorm statistics that use_population_statistics fixed "
                      "before its weights last changed (training does not update them, so they describe other "
                      "weights); call use_population_statistics(model, training_inputs) again first",
                      stacklevel=user_stacklevel())


#: Below this many samples per evaluated batch, per-batch BatchNorm statistics are noisy enough to change predictions
#: (their mean is off by about 1/√B of a feature's spread: 10 % at 100).
MIN_STATISTICS_BATCH = 100


def random_numbers_apart(device: torch.device | str) -> contextlib.AbstractContextManager[None]:
    """A block whose random draws come from copies of torch's generators (the CPU one and, on a CUDA ``device``,
    that device's): what runs the model without training it (evaluation, the data checks) leaves the numbers that
    training draws next as they were.

    Example:
        >>> state = torch.get_rng_state()
        >>> with random_numbers_apart("cpu"):
        ...     _ = torch.rand(3)
        >>> torch.equal(torch.get_rng_state(), state)
        True
    """
    device = torch.device(device)
    cuda = [] if device.type != "cuda" else [device.index if device.index is not None else torch.cuda.current_device()]
    return torch.random.fork_rng(devices=cuda)
