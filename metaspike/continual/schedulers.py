"""Learning-rate schedulers in a continual run: made with each optimizer, stepped once per epoch, checkpointed.

A scheduler is any ``torch.optim.lr_scheduler`` object (or one with ``step``, ``state_dict``, ``load_state_dict`` and
the ``optimizer`` it drives). :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` is stepped with the epoch's mean
training loss, every other scheduler without an argument.

A checkpoint keeps a scheduler's state dict and a fingerprint of each function that shapes its schedule
(:func:`function_fingerprints`: ``LambdaLR``'s and ``MultiplicativeLR``'s ``lr_lambda``, ``CyclicLR``'s ``scale_fn``,
those of the schedulers a ``SequentialLR`` or ``ChainedScheduler`` holds), which torch's state dict leaves out.
"""

from __future__ import annotations

import dis
import functools
import hashlib
import math
import numbers
import types
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from metaspike.caller import user_stacklevel
from metaspike.checks import lacking_methods

__all__ = ["check_scheduler", "step_scheduler", "scheduler_record", "load_scheduler_record", "scheduled_settings",
           "check_plateau_rates", "check_functions", "function_fingerprint", "function_fingerprints",
           "code_fingerprint"]


def scheduled_settings(scheduler: Any | None) -> frozenset[str]:
    """The param-group settings ``scheduler`` moves as it steps: the learning rate, and the momentum (SGD's
    ``momentum``, Adam's ``betas``) where it cycles it (OneCycleLR, CyclicLR with ``cycle_momentum``). A resumed run's
    optimizer takes them from the checkpoint; what must agree is where the schedule started (its base rates and
    momenta, settings of the scheduler's own state; ReduceLROnPlateau's: :func:`check_plateau_rates`). Every other
    setting, a StepLR run's momentum among them, must equal the checkpoint's.

    Example:
        >>> import torch
        >>> sgd = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)
        >>> sorted(scheduled_settings(torch.optim.lr_scheduler.StepLR(sgd, 2)))
        ['lr']
        >>> sorted(scheduled_settings(torch.optim.lr_scheduler.OneCycleLR(sgd, 1.0, total_steps=10)))
        ['betas', 'lr', 'momentum']
    """
    if scheduler is None:
        return frozenset()
    return frozenset({"lr", "momentum", "betas"} if getattr(scheduler, "cycle_momentum", False) else {"lr"})


def check_plateau_rates(scheduler: ReduceLROnPlateau, started: Sequence[float]) -> None:
    """One ``ValueError`` where a param group's learning rate, loaded from a checkpoint into the optimizer that
    ``scheduler`` drives, is none that the scheduler's reductions reach from the rate the run's optimizer was built
    with (``started``, one per group): ``lr ← max(lr·factor, min_lr)`` while that lowers it by more than ``eps``, as
    torch computes them, so an exact comparison. ReduceLROnPlateau keeps no base rate, so a run resumed with another
    learning rate would go on from the checkpoint's silently.

    Example:
        >>> import torch
        >>> sgd = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.5)
        >>> plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(sgd, factor=0.1)
        >>> check_plateau_rates(plateau, [0.5])
        >>> check_plateau_rates(plateau, [0.1])
        Traceback (most recent call last):
        ...
        ValueError: the checkpoint's optimizer has lr = 0.5 in param group 0, which ReduceLROnPlateau's reductions (factor 0.1) do not reach from this run's lr 0.1: it was written with other settings
    """
    for index, (group, start) in enumerate(zip(scheduler.optimizer.param_groups, started)):
        lr, loaded = float(start), float(group["lr"])
        for _ in range(100_000):  # (each reduction lowers it by more than eps: a factor near 1 takes many)
            if lr == loaded:
                break
            lower = max(lr * scheduler.factor, scheduler.min_lrs[index])
            if lr - lower <= scheduler.eps:
                break
            lr = lower
        if lr != loaded:
            raise ValueError(f"the checkpoint's optimizer has lr = {group['lr']!r} in param group {index}, which "
                             f"ReduceLROnPlateau's reductions (factor {scheduler.factor:g}) do not reach from this "
                             f"run's lr {start!r}: it was written with other settings")

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
    lacking = lacking_methods(scheduler, ("step", "state_dict", "load_state_dict"))
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
    """What a checkpoint keeps of ``scheduler``: its class's name, its state dict and the fingerprints of its
    functions (:func:`function_fingerprints`).

    Example:
        >>> import torch
        >>> sgd = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> record = scheduler_record(torch.optim.lr_scheduler.LambdaLR(sgd, lambda epoch: 0.9 ** epoch))
        >>> record["kind"], list(record["functions"])
        ('LambdaLR', ['lr_lambdas[0]'])
    """
    return {"kind": type(scheduler).__name__, "state": scheduler.state_dict(),
            "functions": function_fingerprints(scheduler)}


def load_scheduler_record(scheduler: Any | None, record: Any) -> None:
    """Load a checkpoint's ``record`` (:func:`scheduler_record`, or ``None`` where the run had no scheduler) into
    ``scheduler``; one ``ValueError`` where the run and the checkpoint differ in having one, in its kind, in its
    settings (its step size, factor, ...), which loading would replace silently, or in its functions (another
    ``lr_lambda``: :func:`check_functions`).

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
    if (not isinstance(record, dict) or set(record) - {"functions"} != {"kind", "state"}
            or not isinstance(record["state"], dict)):  # ("functions": absent from checkpoints written before it)
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
    check_functions(scheduler, record.get("functions"))
    scheduler.load_state_dict(saved)


def check_functions(scheduler: Any, saved: Any) -> None:
    """One ``ValueError`` naming the scheduler and the function where ``scheduler``'s functions
    (:func:`function_fingerprints`) are not those a checkpoint recorded (``saved``); a ``UserWarning`` where a
    function of either has no fingerprint (no Python code to read: a builtin such as ``numpy.exp``, a C-made
    callable), so that a resume cannot tell whether it is the same one. ``saved`` ``None``: a checkpoint written before
    functions were fingerprinted, resumed as before (its settings compared, its functions not).

    Example:
        >>> import torch
        >>> sgd = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> slow = scheduler_record(torch.optim.lr_scheduler.LambdaLR(sgd, lambda epoch: 0.9 ** epoch))
        >>> check_functions(torch.optim.lr_scheduler.LambdaLR(sgd, lambda epoch: 0.01 ** epoch), slow["functions"])
        Traceback (most recent call last):
        ...
        ValueError: the checkpoint's LambdaLR has another lr_lambdas[0] than this run's (its code, constants, defaults or captured values differ, or another Python version compiled it): resume with the same make_scheduler
    """
    if saved is None:
        return
    kind = type(scheduler).__name__
    if not isinstance(saved, dict) or not all(isinstance(key, str) and (value is None or isinstance(value, str))
                                              for key, value in saved.items()):
        raise ValueError(f"the checkpoint's {kind} record of its functions must map each function to its fingerprint")
    fresh = function_fingerprints(scheduler)
    if set(saved) != set(fresh):
        raise ValueError(f"the checkpoint's {kind} has the functions {', '.join(saved) or 'none'}, this run's "
                         f"{', '.join(fresh) or 'none'}: resume with the same make_scheduler")
    unreadable = [where for where in fresh if saved[where] is None or fresh[where] is None]
    differing = [where for where in fresh if where not in unreadable and saved[where] != fresh[where]]
    if differing:
        raise ValueError(f"the checkpoint's {kind} has another {differing[0]} than this run's (its code, constants, "
                         "defaults or captured values differ, or another Python version compiled it): resume with the "
                         "same make_scheduler")
    if unreadable:
        warnings.warn(f"the {kind}'s {unreadable[0]} has no Python code to fingerprint, so this resume cannot tell "
                      "whether it is the checkpoint's: make sure make_scheduler gives the same one",
                      stacklevel=user_stacklevel())


def function_fingerprints(scheduler: Any) -> dict[str, str | None]:
    """The fingerprint (:func:`function_fingerprint`) of each function that shapes ``scheduler``'s schedule, by where
    it sits: ``LambdaLR``'s and ``MultiplicativeLR``'s ``lr_lambdas[i]``, ``CyclicLR``'s ``scale_fn`` (where one was
    given), and those of the schedulers a ``SequentialLR`` or ``ChainedScheduler`` holds (``_schedulers[i].``...).
    torch's state dict keeps none of them (a plain function is ``None`` there).

    Example:
        >>> import torch
        >>> sgd = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> function_fingerprints(torch.optim.lr_scheduler.StepLR(sgd, 3))
        {}
    """
    return {where: function_fingerprint(function) for where, function in _functions(scheduler)}


def _functions(scheduler: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """The functions of ``scheduler`` that :func:`function_fingerprints` reads, each with where it sits."""
    lambdas = getattr(scheduler, "lr_lambdas", None)
    for index, function in enumerate(lambdas if isinstance(lambdas, (list, tuple)) else ()):
        yield f"{prefix}lr_lambdas[{index}]", function
    custom = getattr(scheduler, "_scale_fn_custom", None)
    if custom is not None:
        yield f"{prefix}scale_fn", custom
    parts = getattr(scheduler, "_schedulers", None)
    for index, part in enumerate(parts if isinstance(parts, (list, tuple)) else ()):
        yield from _functions(part, f"{prefix}_schedulers[{index}].")


def function_fingerprint(function: Any) -> str | None:
    """A SHA-256 (hex) of what makes ``function`` behave as it does: its code's bytecode, constants and names, its
    defaults, the values its closure captured and the globals its code reads (:func:`_value_text`; functions among them
    by their own fingerprint). The same source text gives the same fingerprint in another process (of the same Python
    version); ``lambda e: 0.9 ** e`` and ``lambda e: 0.01 ** e`` differ. A ``functools.partial`` is its function's
    with its arguments, a bound method its function's with its object's attributes, a builtin its qualified name, a
    callable object its class's ``__call__`` with its attributes; ``None`` where there is no Python code to read (a
    C-made callable such as ``numpy.exp``). A captured object other than numbers, texts, containers, tensors, arrays
    and functions (an optimizer, a model) counts by its class only.

    Example:
        >>> function_fingerprint(lambda e: 0.9 ** e) == function_fingerprint(lambda e: 0.9 ** e)
        True
        >>> function_fingerprint(lambda e: 0.9 ** e) == function_fingerprint(lambda e: 0.01 ** e)
        False
    """
    try:
        described = _described(function, set())
    except RecursionError:  # (a captured list that holds itself)
        return None
    return None if described is None else hashlib.sha256(described.encode()).hexdigest()


def code_fingerprint(function: Any) -> str | None:
    """A SHA-256 (hex) of ``function``'s code alone: its bytecode, constants (nested code in turn) and the names it
    reads, not the values of its globals or closure (:func:`function_fingerprint` reads those too, and a counter or a
    log the function keeps in a global changes them at every call); ``None`` for a callable without Python code.

    Example:
        >>> code_fingerprint(lambda e: 0.9 ** e) == code_fingerprint(lambda e: 0.9 ** e)
        True
        >>> code_fingerprint(lambda e: 0.9 ** e) == code_fingerprint(lambda e: 0.01 ** e)
        False
    """
    if not isinstance(function, types.FunctionType):
        return None
    return hashlib.sha256(_code_text(function.__code__, set()).encode()).hexdigest()


def _described(function: Any, seen: set[int]) -> str | None:
    """The text :func:`function_fingerprint` hashes, or ``None`` where ``function`` has no Python code to read;
    ``seen``: the functions being described (a function that refers to itself is described once)."""
    if id(function) in seen:
        return "<itself>"
    seen.add(id(function))
    if isinstance(function, functools.partial):
        inner = _described(function.func, seen)
        return None if inner is None else (f"partial({inner}|{_value_text(function.args, seen)}|"
                                           f"{_value_text(function.keywords, seen)})")
    if isinstance(function, types.MethodType):
        inner = _described(function.__func__, seen)
        return None if inner is None else f"method({inner}|{_attributes_text(function.__self__, seen)})"
    if isinstance(function, types.FunctionType):
        code = function.__code__
        captured = [_value_text(cell.cell_contents, seen) if _filled(cell) else "<empty>"
                    for cell in function.__closure__ or ()]
        named = {name: function.__globals__[name] for name in _global_names(code) if name in function.__globals__}
        return (f"function({_code_text(code, seen)}|{_value_text(function.__defaults__, seen)}|"
                f"{_value_text(function.__kwdefaults__, seen)}|{captured}|{_value_text(named, seen)})")
    if isinstance(function, types.BuiltinFunctionType):
        owner = getattr(function, "__self__", None)
        bound = "" if owner is None or isinstance(owner, types.ModuleType) else f"|{_value_text(owner, seen)}"
        return f"builtin({getattr(function, '__module__', None)}.{function.__qualname__}{bound})"
    call = getattr(type(function), "__call__", None)
    if isinstance(call, types.FunctionType):
        return f"object({_described(call, seen)}|{_attributes_text(function, seen)})"
    return None


def _attributes_text(owner: Any, seen: set[int]) -> str:
    """An object whose method or ``__call__`` is described: its class and its attributes (:func:`_value_text`)."""
    attributes = vars(owner) if hasattr(owner, "__dict__") else {}
    return f"{type(owner).__module__}.{type(owner).__qualname__}{_value_text(attributes, seen)}"


def _filled(cell: Any) -> bool:
    """Whether a closure cell holds a value (one of a name assigned after the function was made may not)."""
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _global_names(code: types.CodeType) -> set[str]:
    """The global names ``code`` and the code objects inside it (nested functions) read (not attribute names)."""
    names = {instruction.argval for instruction in dis.get_instructions(code)
             if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _global_names(constant)
    return names


def _code_text(code: types.CodeType, seen: set[int]) -> str:
    """A code object's bytecode, exception table, constants (nested code objects in turn) and names: not its line
    numbers or file, so the same function moved or defined in another process reads the same."""
    table = getattr(code, "co_exceptiontable", b"")
    return (f"code({code.co_code.hex()}|{table.hex()}|{code.co_argcount}|{code.co_kwonlyargcount}|"
            f"{_value_text(code.co_consts, seen)}|{code.co_names})")


def _value_text(value: Any, seen: set[int]) -> str:
    """A value as :func:`function_fingerprint` reads it: numbers and texts by ``repr``; tuples, lists, sets and dicts
    item by item (sets and dicts in sorted order: the order of a set of strings changes from process to process);
    tensors and numpy arrays by shape, dtype and values; code and functions by their description; a module by its
    name; any other object by its class and name only (an optimizer's or a model's ``repr`` changes as it trains)."""
    if value is None or isinstance(value, (str, bytes, numbers.Number)):  # (numpy's scalars are numbers too)
        return repr(value)
    if isinstance(value, types.CodeType):
        return _code_text(value, seen)
    if isinstance(value, types.ModuleType):
        return f"module {value.__name__}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__}[{', '.join(_value_text(item, seen) for item in value)}]"
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}[{', '.join(sorted(_value_text(item, seen) for item in value))}]"
    if isinstance(value, dict):
        items = sorted(f"{_value_text(key, seen)}: {_value_text(item, seen)}" for key, item in value.items())
        return f"dict[{', '.join(items)}]"
    if isinstance(value, (Tensor, np.ndarray)):
        return f"{type(value).__name__}({tuple(value.shape)}, {value.dtype}, {_value_text(value.tolist(), seen)})"
    described = _described(value, seen) if callable(value) and not isinstance(value, type) else None
    name = getattr(value, "__qualname__", getattr(value, "__name__", ""))
    return described or f"{type(value).__module__}.{type(value).__qualname__} {name}".rstrip()


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
