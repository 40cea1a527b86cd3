"""Learning-rate schedulers in a continual run: made with each optimizer, stepped once per epoch, checkpointed.

A scheduler is any ``torch.optim.lr_scheduler`` object (or one with ``step``, ``state_dict``, ``load_state_dict`` and
the ``optimizer`` it drives). :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` is stepped with the epoch's mean
training loss, every other scheduler without an argument.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

__all__ = ["check_scheduler", "step_scheduler", "scheduler_record", "load_scheduler_record", "SCHEDULED_SETTINGS"]

#: The param-group settings torch's schedulers move as they step (OneCycleLR and CyclicLR the momentum as well): a
#: resumed run's optimizer takes them from the checkpoint, and its scheduler's base rates are what must agree.
SCHEDULED_SETTINGS = frozenset({"lr", "momentum", "betas"})

#: Entries of torch's schedulers' state dicts that count progress, not settings: a resumed run's scheduler takes them
#: from the checkpoint, and every other entry must equal the checkpoint's.
_PROGRESS = frozenset({"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "best",
                       "num_bad_epochs", "cooldown_counter", "_is_initial", "T_cur", "T_i"})


def check_scheduler(scheduler: Any, optimizer: Optimizer) -> Any:
    """``scheduler`` if it is a scheduler of ``optimizer``, else one ``ValueError``.

    Example:
        >>> import torch
        >>> sgd = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> type(check_scheduler(torch.optim.lr_scheduler.StepLR(sgd, 2), sgd)).__name__
        'StepLR'
    """
    lacking = [name for name in ("step", "state_dict", "load_state_dict") if not callable(getattr(scheduler, name, None))]
    if lacking:
        raise ValueError(f"make_scheduler must return a learning-rate scheduler (e.g. torch.optim.lr_scheduler.StepLR("
                         f"optimizer, 5)); {type(scheduler).__name__} lacks {', '.join(lacking)}")
    driven = getattr(scheduler, "optimizer", None)
    own = [optimizer, *getattr(optimizer, "optimizers", ())]  # (a ChainedOptimizer: a scheduler of one of its parts)
    if not any(driven is candidate for candidate in own):  # (it would change another optimizer's rate, silently)
        raise ValueError("make_scheduler must build its scheduler over the optimizer it is given (e.g. "
                         "lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 5)), or over one optimizer of "
                         "a metaspike.ChainedOptimizer (StepLR(optimizer.optimizers[0], 5))")
    return scheduler


def step_scheduler(scheduler: Any, loss: float) -> None:
    """One epoch's step: ``ReduceLROnPlateau`` with the epoch's mean training ``loss``, any other scheduler without.

    Example:
        >>> import torch
        >>> sgd = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> scheduler = torch.optim.lr_scheduler.StepLR(sgd, 1, gamma=0.5)
        >>> sgd.step(); step_scheduler(scheduler, 0.3); sgd.param_groups[0]["lr"]
        0.05
    """
    if isinstance(scheduler, ReduceLROnPlateau):
        if math.isfinite(loss):  # (a NaN loss ends the run as diverged; it must not count as no improvement)
            scheduler.step(loss)
    else:
        scheduler.step()


def scheduler_record(scheduler: Any) -> dict[str, Any]:
    """What a checkpoint keeps of ``scheduler``: its class's name and its state dict.

    Example:
        >>> import torch
        >>> sgd = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> scheduler_record(torch.optim.lr_scheduler.StepLR(sgd, 3))["kind"]
        'StepLR'
    """
    return {"kind": type(scheduler).__name__, "state": scheduler.state_dict()}


def load_scheduler_record(scheduler: Any | None, record: Any) -> None:
    """Load a checkpoint's ``record`` (:func:`scheduler_record`, or ``None`` where the run had no scheduler) into
    ``scheduler``; one ``ValueError`` where the run and the checkpoint differ in having one, in its kind or in its
    settings (its step size, factor, ...), which loading would replace silently.

    Example:
        >>> load_scheduler_record(None, None)  # neither has one
    """
    if record is None and scheduler is None:
        return
    if record is None or scheduler is None:
        had = "had no" if record is None else f"had a {record.get('kind') if isinstance(record, dict) else '?'}"
        raise ValueError(f"the checkpoint's run {had} learning-rate scheduler and this one has "
                         f"{'a ' + type(scheduler).__name__ if scheduler is not None else 'none'}: resume with the "
                         "same make_scheduler")
    if not isinstance(record, dict) or set(record) != {"kind", "state"} or not isinstance(record["state"], dict):
        raise ValueError("the checkpoint's learning-rate scheduler must be a record of its kind and state")
    if record["kind"] != type(scheduler).__name__:
        raise ValueError(f"the checkpoint's run had a {record['kind']} learning-rate scheduler, this one a "
                         f"{type(scheduler).__name__}: resume with the same make_scheduler")
    fresh, saved = scheduler.state_dict(), record["state"]
    differing = sorted(key for key in set(fresh) | set(saved)
                       if key not in _PROGRESS and _settings(fresh.get(key)) != _settings(saved.get(key)))
    if differing:
        key = differing[0]
        raise ValueError(f"the checkpoint's {record['kind']} has {key} = {saved.get(key)!r}, this run's "
                         f"{fresh.get(key)!r}: resume with the same make_scheduler")
    scheduler.load_state_dict(saved)


def _settings(value: Any) -> Any:
    """The plain data of ``value`` (numbers, strings, their lists and dicts) without progress entries (a chained
    scheduler keeps its parts' states); anything else is ``None``: a scheduler's state may hold functions or objects
    that do not compare by value."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_settings(v) for v in value]
    if isinstance(value, dict):
        return {k: _settings(v) for k, v in value.items() if k not in _PROGRESS}
    return None
