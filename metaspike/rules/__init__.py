"""Consolidation rules: how much of an update toward a sign flip a binary synapse takes.

Every rule is one file with a pure ``step(hidden, update, meta, state) -> (update, state)`` (see
:mod:`metaspike.rules.base`) and one line in the registry below; the optimizers, the wrapper for any
torch optimizer, the CLI (``--rule``) and checkpoints then use it with no other change.

Example:
    >>> available_rules()
    ['cascade', 'none', 'switch', 'tanh']
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch

from metaspike.checks import defined_at, registered_name, unknown_name
from metaspike.rules.base import (
    NoState,
    Rule,
    Stateless,
    check_meta,
    check_update,
    checked_step,
    is_plain,
    state_from_dict,
    state_to_dict,
    toward_zero,
    user_rule_errors,
)
from metaspike.rules.cascade import CascadeRule, CascadeState
from metaspike.rules.none import NoConsolidation
from metaspike.rules.switch import SwitchRule, SwitchState
from metaspike.rules.tanh import TanhRule

__all__ = [
    "Rule", "NoState", "Stateless", "TanhRule", "NoConsolidation", "CascadeRule", "CascadeState", "SwitchRule",
    "SwitchState", "check_meta", "check_update", "checked_step", "toward_zero", "state_to_dict", "state_from_dict",
    "register_rule", "get_rule", "available_rules", "rule_record", "rule_from_record", "user_rule_errors",
    "is_plain", "same_rule",
]

_RULES: dict[str, Rule] = {}

_REQUIRED = ("name", "elementwise", "init_state", "state_type", "step")


def _check_is_rule(rule: Any) -> None:
    """One ``ValueError`` unless ``rule`` has what a rule has (:data:`_REQUIRED`) and a ``plain_at_zero``, where it
    has one, that is ``True`` or ``False`` (another value would be read as ``False``, silently)."""
    missing = [attr for attr in _REQUIRED if not hasattr(rule, attr)]
    if missing:
        raise ValueError(f"{rule!r} is not a consolidation rule: it lacks {', '.join(missing)} "
                         "(see metaspike.rules.base.Rule)")
    plain = getattr(rule, "plain_at_zero", False)
    if not isinstance(plain, bool):
        raise ValueError(f"consolidation rule {rule.name!r} ({type(rule).__name__}): plain_at_zero must be True or "
                         f"False, got {plain!r}")
    _check_step_signature(rule)


def _check_step_signature(rule: Any) -> None:
    """One ``ValueError`` naming the file and line of ``rule.step`` where it cannot be called as the optimizers call
    it, ``step(hidden, update, meta, state)`` (the call failed inside torch's optimizer step, a traceback)."""
    step = rule.step
    try:
        signature = inspect.signature(step)
    except (TypeError, ValueError):  # (a builtin or C callable: nothing to read, the call will tell)
        return
    try:
        signature.bind(None, None, None, None)
    except TypeError:
        where = defined_at(step)
        place = f" ({where})" if where else ""
        raise ValueError(f"consolidation rule {rule.name!r} ({type(rule).__name__}): its step{signature}{place} "
                         "cannot be called as step(hidden, update, meta, state) -> (update, state)") from None


def register_rule(rule: Rule, *, replace: bool = False) -> Rule:
    """Make ``rule`` available by its name (to the optimizers, the CLI's ``--rule`` and checkpoints).

    A name already taken by a different rule is refused unless ``replace=True`` (e.g. a rule edited and registered
    again in a notebook); the built-in rules' names cannot be replaced.

    Example:
        >>> register_rule(TanhRule()).name
        'tanh'
    """
    _check_is_rule(rule)
    registered_name("a rule's name", rule.name, "it names run folders and checkpoints' records")
    known = _RULES.get(rule.name)
    if known is not None and known != rule:  # (every run asking for the name would change rule, silently)
        if rule.name in _BUILT_IN:
            raise ValueError(f"{rule.name!r} is a built-in rule's name ({known!r}); give yours its own name")
        if not replace:
            raise ValueError(f"another rule is registered as {rule.name!r} already ({known!r}; a cell that registers "
                             "it run again defines a new one); give yours its own name, or register_rule(rule, "
                             "replace=True) to replace it")
    _RULES[rule.name] = rule
    return rule


_BUILT_IN = frozenset(register_rule(rule).name for rule in (TanhRule(), NoConsolidation(), CascadeRule(), SwitchRule()))


def available_rules() -> list[str]:
    """Names accepted by :func:`get_rule`.

    Example:
        >>> available_rules()
        ['cascade', 'none', 'switch', 'tanh']
    """
    return sorted(_RULES)


def get_rule(rule: str | Rule) -> Rule:
    """The rule called ``rule`` (or ``rule`` itself when it already is one).

    Example:
        >>> get_rule("tanh").name
        'tanh'
    """
    if isinstance(rule, str):
        try:
            return _RULES[rule]
        except KeyError:
            raise ValueError(unknown_name("consolidation rule", rule, available_rules())) from None
    _check_is_rule(rule)
    return rule


def rule_record(rule: str | Rule) -> str | dict[str, Any] | Rule:
    """``rule`` as plain data for a checkpoint that ``torch.load(..., weights_only=True)`` reads: a name stays a
    name; a rule object of a registered kind with its own settings (a dataclass) becomes ``{"rule": name, **its
    settings}``, one of a registered kind that is not a dataclass its name when it holds what the registered one
    holds; any other rule stays the object (which only a full ``torch.load`` reads back).

    Example:
        >>> rule_record(CascadeRule(n=2, leak=0.1))
        {'rule': 'cascade', 'n': 2, 'leak': 0.1, 'name': 'cascade', 'elementwise': False}
    """
    registered = _RULES.get(getattr(rule, "name", None)) if not isinstance(rule, str) else None
    if registered is None or type(registered) is not type(rule):
        return rule
    if not dataclasses.is_dataclass(rule):
        return rule.name if rule is registered or _same_attributes(rule, registered) else rule
    return {"rule": rule.name, **{f.name: getattr(rule, f.name) for f in dataclasses.fields(rule) if f.init}}


def same_rule(first: str | Rule, second: str | Rule) -> bool:
    """Whether two rules (names or objects) are the same rule with the same settings: of one class and name, equal as
    dataclasses, or holding equal plain attributes (separate instances of a user's rule class included).

    Example:
        >>> same_rule("cascade", CascadeRule()), same_rule(CascadeRule(n=2), CascadeRule(n=3))
        (True, False)
    """
    first, second = get_rule(first), get_rule(second)
    if first is second:
        return True
    if type(first) is not type(second) or first.name != second.name:
        return False
    if not dataclasses.is_dataclass(first):
        return _same_attributes(first, second)
    return all(_same_value(getattr(first, f.name), getattr(second, f.name)) for f in dataclasses.fields(first))


def _same_value(first: object, second: object) -> bool:
    """Whether two settings are equal: tensors element by element (with their shapes, dtypes and devices), other
    values by ``==``; a value whose ``==`` has no plain truth value (a numpy array of several numbers) counts as
    different."""
    if isinstance(first, torch.Tensor) or isinstance(second, torch.Tensor):
        return (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and first.shape == second.shape
                and first.dtype == second.dtype and first.device == second.device and torch.equal(first, second))
    try:
        return bool(first == second)
    except (TypeError, RuntimeError, ValueError):  # (a numpy array of several numbers, and the like)
        return False


def _same_attributes(first: object, second: object) -> bool:
    """Whether two objects hold the same plain attributes (:func:`_same_value` each)."""
    try:
        return vars(first).keys() == vars(second).keys() and all(
            _same_value(value, vars(second)[key]) for key, value in vars(first).items())
    except TypeError:  # (an object without attributes of its own: vars refuses it)
        return False


def rule_from_record(record: str | dict[str, Any] | Rule) -> str | Rule:
    """The rule a :func:`rule_record` describes (names and rule objects pass through).

    Example:
        >>> rule_from_record({"rule": "cascade", "n": 2, "leak": 0.1})
        CascadeRule(n=2, leak=0.1, name='cascade', elementwise=False)
    """
    if not isinstance(record, dict):
        return record
    kind = record.get("rule")
    if not isinstance(kind, str) or kind not in _RULES:
        raise ValueError(f"unknown consolidation rule {kind!r} in a saved record; available: {', '.join(available_rules())}")
    settings = {key: value for key, value in record.items() if key != "rule"}
    try:
        return type(_RULES[kind])(**settings)
    except (TypeError, ValueError) as err:
        raise ValueError(f"saved rule {record!r} does not fit {type(_RULES[kind]).__name__}: {err}") from None
