"""Checks of an optimizer's per-parameter state read from a file (a state dict, a run's checkpoint): one place for
what torch.optim's algorithms and metaspike's keep per parameter, and what their values may be.

A moment of another model's shape, a NaN or a negative sum of squares installs without a word and turns every weight
NaN at the next step, or fails deep inside the update; these checks name the parameter and the entry instead. Those
checks run as hooks of torch's ``load_state_dict``, which torch drops from a copy or a pickle: an optimizer keeps them
with :class:`HookedAgainWhenCopied`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import Tensor

from metaspike.checks import is_finite_number, nan_or_infinite, shown, state_dict_groups, stored_values

__all__ = ["PARAMETER_SHAPED", "NEVER_NEGATIVE", "STEP_DTYPES", "own_state_tensors", "check_parameter_state",
           "check_state_tensor", "check_tensor_values",
           "check_step_count", "check_states_listed", "with_tensor_steps", "HookedAgainWhenCopied",
           "check_state_dict_groups", "refuse_non_mapping"]

#: The per-parameter state tensors of torch.optim's algorithms (and MetaplasticAdam's) that have the parameter's shape.
PARAMETER_SHAPED = frozenset({"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_inf", "momentum_buffer", "square_avg",
                              "grad_avg", "acc_delta", "sum", "ax", "prev", "step_size"})
#: The dtypes a step count kept as a tensor may have: each counts well past any run's steps when added to in place.
STEP_DTYPES = frozenset({torch.float32, torch.float64, torch.int32, torch.int64})
#: Those of them that are never negative: running sums of squares, step sizes.
NEVER_NEGATIVE = frozenset({"exp_avg_sq", "max_exp_avg_sq", "exp_inf", "square_avg", "acc_delta", "sum", "step_size"})


def check_parameter_state(state: Any, shape: torch.Size, where: str) -> None:
    """One ``ValueError`` beginning with ``where`` (which names the parameter) where the state an optimizer keeps of a
    parameter of ``shape`` is not a dict, one of its :data:`PARAMETER_SHAPED` tensors has another shape or a NaN or
    infinite value (or, of :data:`NEVER_NEGATIVE`, a negative one), or its step count is not one finite number >= 0.
    Entries of other names (LBFGS's flat history, Adafactor's factored moments) are the algorithm's own business.

    Example:
        >>> check_parameter_state({"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}, torch.Size([2]), "p")
        >>> check_parameter_state({"exp_avg_sq": -torch.ones(2)}, torch.Size([2]), "parameter 0")
        Traceback (most recent call last):
        ...
        ValueError: parameter 0's exp_avg_sq holds negative values (a sum of squares or a step size is >= 0)
    """
    if not isinstance(state, dict):
        raise ValueError(f"{where}'s state must be a dict, got {type(state).__name__}")
    for key, value in state.items():
        if key in PARAMETER_SHAPED and value is not None:
            # (SGD keeps a sparse momentum buffer for a sparse gradient; every other state is dense)
            check_state_tensor(f"{where}'s {key}", value, shape, never_negative=key in NEVER_NEGATIVE,
                               sparse=key == "momentum_buffer")
    if "step" in state:
        check_step_count(f"{where}'s step", state["step"])


def check_state_tensor(where: str, value: Any, shape: torch.Size, *, never_negative: bool = False,
                       sparse: bool = False, shape_of: str = "the parameter it belongs to has") -> None:
    """One ``ValueError`` beginning with ``where`` unless ``value`` is a tensor of ``shape`` whose floating-point values
    are finite (and, ``never_negative``, >= 0), dense but where ``sparse`` allows a sparse one; ``shape_of`` says
    whose shape ``shape`` is (a state of another shape than its parameter's: a rule's own).

    Example:
        >>> check_state_tensor("momentum", torch.zeros(3), torch.Size([2]))
        Traceback (most recent call last):
        ...
        ValueError: momentum has shape (3,), but the parameter it belongs to has (2,): was it saved from another model?
    """
    if not isinstance(value, Tensor):
        raise ValueError(f"{where} must be a tensor, got {type(value).__name__}")
    if value.shape != shape:
        raise ValueError(f"{where} has shape {tuple(value.shape)}, but {shape_of} {tuple(shape)}: was it saved from "
                         "another model?")
    check_tensor_values(where, value, never_negative=never_negative, sparse=sparse)


def check_tensor_values(where: str, value: Tensor, *, never_negative: bool = False,
                        why: str = "a sum of squares or a step size is >= 0", sparse: bool = False) -> None:
    """One ``ValueError`` beginning with ``where`` where the tensor ``value``, state read from a file, holds NaN or
    infinite floating-point values (or, ``never_negative``, a negative one, which ``why`` says cannot be): they install
    without a word and turn up steps later as a NaN loss or wrong numbers, blamed on the learning rate. A sparse
    ``value`` is refused unless ``sparse`` (a state that may be sparse): the next step would fail inside torch.

    Example:
        >>> check_tensor_values("EWC's importances[0][0]", -torch.ones(2), never_negative=True, why="a Fisher is >= 0")
        Traceback (most recent call last):
        ...
        ValueError: EWC's importances[0][0] holds negative values (a Fisher is >= 0)
    """
    if value.layout != torch.strided and not sparse:
        raise ValueError(f"{where} is a {value.layout} tensor; this state is dense")
    if any(nan_or_infinite(value)):
        raise ValueError(f"{where} holds NaN or infinite values")
    # (a sparse momentum buffer's nonzeros; a complex parameter's sums of squares are >= 0 part by part)
    if never_negative and bool((stored_values(value) < 0).any()):
        raise ValueError(f"{where} holds negative values ({why})")


def check_step_count(where: str, step: Any) -> None:
    """One ``ValueError`` beginning with ``where`` unless ``step`` is one finite number >= 0 (a one-element tensor of
    :data:`STEP_DTYPES`, as torch keeps it, or a plain number).

    Example:
        >>> check_step_count("step", torch.tensor(-1.0))
        Traceback (most recent call last):
        ...
        ValueError: step must be one finite number >= 0, got -1.0
    """
    if isinstance(step, Tensor) and step.numel() != 1:
        raise ValueError(f"{where} must be one finite number >= 0, got a tensor of shape {tuple(step.shape)}")
    if isinstance(step, Tensor) and step.dtype not in STEP_DTYPES:  # (counted in place: int8 127 wraps to -128,
        # uint8 255 to 0, a float16 2048 stays 2048 for ever)
        raise ValueError(f"{where} is a {step.dtype} tensor, which cannot count steps; torch keeps it as float32 "
                         "(float64, int32 and int64 are taken too)")
    value = step.item() if isinstance(step, Tensor) else step
    if not is_finite_number(value) or value < 0:
        raise ValueError(f"{where} must be one finite number >= 0, got {shown(value)}")


def own_state_tensors(*optimizers: torch.optim.Optimizer) -> None:
    """Give each tensor of the ``optimizers``' per-parameter states (and of a ``"rule_state"`` in them) that shares
    memory with another of them, or whose elements overlap, a copy of its own, after a load (of the several optimizers
    of a chain together: a file may make one tensor of two of them): torch's ``load_state_dict``
    keeps the loaded tensors where dtype and device agree, so two entries a file made one (``exp_avg`` and
    ``exp_avg_sq``, or two parameters' moments) were updated twice a step, and an expanded view failed inside the
    update. Tensors of their own stay as they are (a copy of every one held a resumed run's state twice).

    Example:
        >>> p = torch.zeros(2, requires_grad=True)
        >>> adam = torch.optim.Adam([p]); p.grad = torch.ones(2); adam.step()
        >>> state = adam.state_dict(); state["state"][0]["exp_avg"] = state["state"][0]["exp_avg_sq"]
        >>> adam.load_state_dict(state); own_state_tensors(adam)
        >>> adam.state[p]["exp_avg"] is adam.state[p]["exp_avg_sq"]
        False
    """
    seen: set[tuple[Any, int]] = set()

    def copied(value: Any) -> Any:
        if not isinstance(value, Tensor) or value.layout != torch.strided:
            return value
        memory = (value.device, value.untyped_storage().data_ptr())
        shared = memory in seen and value.numel() > 0
        seen.add(memory)
        # (preserve: a dense tensor keeps its layout, channels-last moments included; an overlapping one is laid out
        # anew)
        return value.clone(memory_format=torch.preserve_format) if shared or _overlaps(value) else value

    for state in (state for optimizer in optimizers for state in optimizer.state.values()):
        for key, value in list(state.items()):
            state[key] = {k: copied(v) for k, v in value.items()} if key == "rule_state" and isinstance(
                value, dict) else copied(value)


def _overlaps(tensor: Tensor) -> bool:
    """Whether two elements of the strided ``tensor`` lie at one place in memory (an expanded view's stride of 0):
    along its dimensions from the smallest stride up, each stride must pass the span of those before it.

    Example:
        >>> _overlaps(torch.zeros(1).expand(3)), _overlaps(torch.zeros(3, 4).t())
        (True, False)
    """
    span = 0
    for stride, size in sorted((stride, size) for size, stride in zip(tensor.shape, tensor.stride()) if size > 1):
        if stride <= span:
            return True
        span += stride * (size - 1)
    return False


def check_states_listed(state: Any, listed: Collection[Any] | None) -> None:
    """One ``ValueError`` where ``state``, a state dict's ``"state"``, is not a mapping of parameter indices to states,
    or holds a state for an index none of its groups lists (``listed``; ``None``: not checked): torch would install it
    under that index, to be read by no parameter.

    Example:
        >>> check_states_listed({0: {}, 3: {}}, [0, 1])
        Traceback (most recent call last):
        ...
        ValueError: state_dict: it holds a state for parameter 3, which none of its groups lists
    """
    if not isinstance(state, dict):
        raise ValueError(f"state_dict's 'state' must map parameter indices to their states, got {type(state).__name__}")
    unlisted = next((index for index in state if index not in listed), None) if listed is not None else None
    if unlisted is not None:
        raise ValueError(f"state_dict: it holds a state for parameter {unlisted!r}, which none of its groups lists")


def with_tensor_steps(state: Any) -> Any:
    """``state``, a state dict's ``"state"``, with each step count kept as a plain number made a float32 0-d tensor, as
    torch.optim's algorithms take the state dicts written before torch 1.12 (a new mapping: the caller's is left as it
    was); anything else as it is, for the checks to name.

    Example:
        >>> with_tensor_steps({0: {"step": 3}})
        {0: {'step': tensor(3.)}}
    """
    if not isinstance(state, dict):
        return state
    return {index: {**entry, "step": torch.tensor(float(entry["step"]), dtype=torch.float32)}
            if isinstance(entry, dict) and is_finite_number(entry.get("step")) else entry
            for index, entry in state.items()}


def check_state_dict_groups(optimizer: torch.optim.Optimizer, state_dict: Any) -> list[dict[str, Any]]:
    """The param groups of ``state_dict``, in one ``ValueError`` unless it is an optimizer's state dict (a dict with a
    list of param groups) with as many groups as ``optimizer`` (torch's own words on the groups came otherwise). What
    the optimizers' load pre-hooks read, after any pre-hook of the user's that reshapes the file.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1)
        >>> check_state_dict_groups(opt, {"state": {}, "param_groups": []})
        Traceback (most recent call last):
        ...
        ValueError: state_dict holds 0 param groups; this SGD has 1: it is the state of an optimizer built otherwise
    """
    name = type(optimizer).__name__
    groups = state_dict_groups(state_dict)
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(f"state_dict holds {len(groups)} param group{'s' * (len(groups) != 1)}; this {name} has "
                         f"{len(optimizer.param_groups)}: it is the state of an optimizer built otherwise")
    check_states_listed(state_dict.get("state"), None)
    for index, (group, live) in enumerate(zip(groups, optimizer.param_groups)):
        params = group.get("params")
        if not isinstance(params, list) or len(params) != len(live["params"]):
            held = (f"{len(params)} parameters" if isinstance(params, list)
                    else f"no list of parameters ({shown(params)})")
            raise ValueError(f"state_dict's param group {index} holds {held}; this {name}'s holds "
                             f"{len(live['params'])}: it is the state of an optimizer built otherwise")
    return groups


def refuse_non_mapping(state_dict: Any) -> None:
    """One ``ValueError`` where what ``load_state_dict`` got is no mapping: torch copies it before any check (an
    ``AttributeError`` from inside torch for a string read from a file).

    Example:
        >>> refuse_non_mapping("hello")
        Traceback (most recent call last):
        ...
        ValueError: state_dict must be an optimizer's state dict, with a list of param groups
    """
    if not isinstance(state_dict, Mapping):
        state_dict_groups(state_dict)  # (its words)


class HookedAgainWhenCopied:
    """Mixin (before ``torch.optim.Optimizer`` among the bases) of an optimizer whose state-dict checks are hooks:
    :meth:`_add_hooks` registers them, called by the subclass's ``__init__`` and again where a copy or an unpickled
    optimizer is rebuilt. torch copies and pickles an optimizer without its hooks, so a copy would load another
    optimizer's state dict without a word and fail at its next step. Not again where torch's ``load_state_dict``
    sets the state of a live optimizer (it calls ``__setstate__`` too): its hooks would pile up with every load.

    Example:
        >>> import copy
        >>> class Checked(HookedAgainWhenCopied, torch.optim.SGD):
        ...     def __init__(self, params, lr):
        ...         super().__init__(params, lr=lr)
        ...         self._add_hooks()
        ...     def _add_hooks(self):
        ...         self.register_load_state_dict_pre_hook(lambda opt, state_dict: None)
        >>> opt = Checked([torch.zeros(2, requires_grad=True)], lr=0.1)
        >>> opt.load_state_dict(opt.state_dict())
        >>> len(opt._optimizer_load_state_dict_pre_hooks), len(copy.deepcopy(opt)._optimizer_load_state_dict_pre_hooks)
        (1, 1)
    """

    def _add_hooks(self) -> None:
        """Register the optimizer's hooks."""
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, after :func:`refuse_non_mapping`."""
        refuse_non_mapping(state_dict)
        super().load_state_dict(state_dict)  # type: ignore[misc]

    def __setstate__(self, state: dict[str, Any]) -> None:
        rebuilt = "_optimizer_load_state_dict_pre_hooks" not in self.__dict__  # (a copy: torch made no hooks yet)
        super().__setstate__(state)  # type: ignore[misc]
        if rebuilt:
            self._add_hooks()
