"""Training on several processes (``torchrun``): data-parallel steps that equal one process's global batch.

Each process takes its slice of every mini-batch; :func:`average_gradients` averages the gradients
before each optimizer step, and :func:`sync_batchnorm` makes BatchNorm normalise with the statistics
of the whole global batch (the paper's BatchNorm uses batch statistics, so per-process statistics
would change the model). Works with ``gloo`` on CPUs and ``nccl`` on GPUs; torch's own
``SyncBatchNorm`` is GPU-only.

    torchrun --standalone --nproc-per-node 2 -m metaspike train ...
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["world", "world_size_from_env", "init_from_env", "sync_batchnorm", "average_gradients", "start_alike",
           "batch_slice", "current_batch_slice"]

_BATCH_SLICE: ContextVar[tuple[int, int] | None] = ContextVar("batch_slice", default=None)


@contextmanager
def batch_slice(size: int, start: int) -> Iterator[None]:
    """Inside the block, the samples a model is given are rows ``start, start + 1, ...`` of a batch of ``size`` that
    the processes of a launch share. What draws one random number per sample (the rate encoder's spikes) draws them
    for the whole batch and keeps its rows, so that each process draws what one process would for them (with the
    same seed everywhere, each process drew the first rows' numbers for its own rows: every slice saw the same
    spikes).

    Example:
        >>> with batch_slice(100, 50):
        ...     current_batch_slice()
        (100, 50)
    """
    token = _BATCH_SLICE.set((size, start))
    try:
        yield
    finally:
        _BATCH_SLICE.reset(token)


def current_batch_slice() -> tuple[int, int] | None:
    """``(batch size, first row)`` of the shared batch inside :func:`batch_slice`, ``None`` outside.

    Example:
        >>> current_batch_slice() is None
        True
    """
    return _BATCH_SLICE.get()


def world() -> tuple[int, int]:
    """``(rank, number of processes)``; ``(0, 1)`` when not running distributed.

    Example:
        >>> world()
        (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def world_size_from_env() -> int:
    """The number of processes ``torchrun`` says in ``WORLD_SIZE`` (1 without it); a value that is not a whole
    number >= 1 is one ``ValueError`` naming the variable.

    Example:
        >>> world_size_from_env()  # outside torchrun
        1
    """
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"the environment variable WORLD_SIZE must be a whole number >= 1 (torchrun sets it), got "
                         f"{text!r}")
    return size


def init_from_env(device: str = "cpu") -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment (no-op otherwise).

    Example:
        >>> init_from_env("cpu")  # outside torchrun
        (0, 1)
    """
    if world_size_from_env() > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        with _signals_end_the_process():
            dist.init_process_group(backend)
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return world()


@contextmanager
def _signals_end_the_process() -> Iterator[None]:
    """Ctrl-C and SIGTERM end the process at once inside the block (on the main thread; elsewhere nothing changes;
    a signal the process ignores stays ignored).

    The rendezvous waits for the other processes inside torch's C++ code, where a handler written in Python never
    runs: with one (the ``metaspike`` command's turns SIGTERM into a clean stop) a process whose peers never come
    could not be stopped but by SIGKILL. Nothing has been written before the rendezvous, so there is nothing to
    lose."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {number: handler for number in (signal.SIGINT, signal.SIGTERM)
             if (handler := signal.getsignal(number)) is not signal.SIG_IGN}  # (one ignored stays ignored)
    for number in saved:
        signal.signal(number, signal.SIG_DFL)
    try:
        yield
    finally:
        for number, handler in saved.items():  # (None: a handler not set from Python, which cannot be restored)
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


class _SummedOverProcesses(torch.autograd.Function):
    """The sum of a tensor over all processes, differentiable: each process's output is the sum of every input, so
    the gradient of each input is the sum of every process's output gradient (torch's own differentiable
    ``all_reduce`` is deprecated and warns on every call)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        total = grad.clone()
        dist.all_reduce(total)
        return total


class _GlobalStatistics:
    """Mixin for a BatchNorm class: in training, normalise with the statistics of all processes' batches, and keep
    the running statistics as one process with the whole batch would (``num_batches_tracked``, ``momentum=None``'s
    cumulative average)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or world()[1] == 1:
            return super().forward(x)  # type: ignore[misc]
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / channels], dtype=x.dtype, device=x.device)
        totals = _SummedOverProcesses.apply(torch.cat([x.sum(dims), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        # the variance from the deviations, as torch's BatchNorm takes it (E[x²] − E[x]² cancels where the mean is
        # large against the spread: 42 % off at a ratio of 1000 in float32)
        var = _SummedOverProcesses.apply((x - mean.view(shape)).square().sum(dims)) / n
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * n / (n - 1), momentum)
        return y


class GlobalBatchNorm1d(_GlobalStatistics, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with global-batch statistics (:func:`sync_batchnorm`)."""


class GlobalBatchNorm2d(_GlobalStatistics, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with global-batch statistics (:func:`sync_batchnorm`)."""


class GlobalBatchNorm3d(_GlobalStatistics, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` with global-batch statistics (:func:`sync_batchnorm`)."""


#: torch's BatchNorm classes and their global-statistics versions, defined here so that a model saved whole
#: (``torch.save(model)``) pickles; another BatchNorm subclass gets a class made on the fly.
_GLOBAL_CLASSES: dict[type, type] = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d,
                                     nn.BatchNorm3d: GlobalBatchNorm3d}


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """Make every BatchNorm layer of ``model`` use global-batch statistics when training distributed.

    The layers keep their parameters, buffers and state-dict keys (only their class changes), so
    checkpoints and per-task BatchNorm states are the same as in one process.

    Example:
        >>> net = sync_batchnorm(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
        >>> type(net[1]).__name__
        'GlobalBatchNorm1d'
    """
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not isinstance(module, _GlobalStatistics):
            cls = type(module)
            module.__class__ = _GLOBAL_CLASSES.get(cls) or type(f"Global{cls.__name__}", (_GlobalStatistics, cls), {})
    return model


def unsynced_class(module: nn.Module) -> type:
    """The class ``module`` had before :func:`sync_batchnorm` (its own where it was not synced): what a model's
    structure is compared by, in one process or several.

    Example:
        >>> unsynced_class(sync_batchnorm(nn.Sequential(nn.BatchNorm1d(4)))[0]).__name__
        'BatchNorm1d'
    """
    if not isinstance(module, _GlobalStatistics):
        return type(module)
    return next(cls for cls in type(module).__mro__ if not issubclass(cls, _GlobalStatistics))


def start_alike(model: nn.Module) -> None:
    """Give every process the first process's weights and buffers (what DDP does when it wraps a model); under
    several processes, refuse a model whose BatchNorm layers were not passed through :func:`sync_batchnorm` (they
    would normalise with each process's own slice of the batch, silently); nothing in one process.

    Example:
        >>> start_alike(nn.Linear(2, 2))  # one process: nothing to copy
    """
    if world()[1] == 1:
        return
    local = [name for name, m in model.named_modules()
             if isinstance(m, _BatchNorm) and not isinstance(m, _GlobalStatistics)]
    if local:
        raise ValueError(f"the model's BatchNorm layers ({', '.join(local[:3])}) would use each process's own slice "
                         "of the batch: pass the model through metaspike.distributed.sync_batchnorm first")
    with torch.no_grad():
        for value in model.state_dict().values():
            if isinstance(value, Tensor):  # (a module's extra state may be any object)
                dist.broadcast(value, src=0)


def average_gradients(model: nn.Module) -> None:
    """Average every gradient of ``model`` over the processes (what DDP does); nothing in one process.

    :func:`metaspike.training.train_epoch` calls it right after ``backward``, so plugins and the
    optimizer see the gradient of the whole batch.

    Example:
        >>> average_gradients(nn.Linear(2, 2))  # one process: nothing to average
    """
    size = world()[1]
    if size == 1:
        return
    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad.div_(size)
