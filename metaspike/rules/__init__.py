"""Consolidation rules: how much of an update toward a sign flip a binary synapse takes.

Every rule is one file with a pure ``step(hidden, update, meta, state) -> (update, state)`` (see
:mod:`metaspike.rules.base`) and one line in the registry below; the optimizers, the wrapper for any
torch optimizer, the CLI (``--rule``) and checkpoints then use it with no other change.

Example:
    >>> available_rules()
    ['cascade', 'none', 'switch', 'tanh']
"""

from __future__ import annotations

from metaspike.rules.base import NoState, Rule, check_meta, state_from_dict, state_to_dict, toward_zero
from metaspike.rules.cascade import CascadeRule, CascadeState
from metaspike.rules.none import NoConsolidation
from metaspike.rules.switch import SwitchRule, SwitchState
from metaspike.rules.tanh import TanhRule

__all__ = [
    "Rule", "NoState", "TanhRule", "NoConsolidation", "CascadeRule", "CascadeState", "SwitchRule", "SwitchState",
    "check_meta", "toward_zero", "state_to_dict", "state_from_dict", "register_rule", "get_rule", "available_rules",
]

_RULES: dict[str, Rule] = {}

_REQUIRED = ("name", "elementwise", "init_state", "state_type", "step")


def register_rule(rule: Rule) -> Rule:
    """Make ``rule`` available by its name (to the optimizers, the CLI's ``--rule`` and checkpoints).

    Example:
        >>> register_rule(TanhRule()).name
        'tanh'
    """
    missing = [attr for attr in _REQUIRED if not hasattr(rule, attr)]
    if missing:
        raise ValueError(f"{rule!r} is not a consolidation rule: it lacks {', '.join(missing)} (see metaspike.rules.base.Rule)")
    _RULES[rule.name] = rule
    return rule


register_rule(TanhRule())
register_rule(NoConsolidation())
register_rule(CascadeRule())
register_rule(SwitchRule())


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
            raise ValueError(f"unknown consolidation rule {rule!r}; available: {', '.join(available_rules())}") from None
    missing = [attr for attr in _REQUIRED if not hasattr(rule, attr)]
    if missing:
        raise ValueError(f"{rule!r} is not a consolidation rule: it lacks {', '.join(missing)} (see metaspike.rules.base.Rule)")
    return rule
