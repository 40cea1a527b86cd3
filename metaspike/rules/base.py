"""The one interface every consolidation rule follows, in Norse's style: a pure step with an explicit state.

A rule decides how much of an optimizer's update a binary synapse's hidden weight ``W_h`` takes::

    update, state = rule.step(hidden, update, meta, state)

``update`` is what the optimizer would subtract from ``hidden`` (``W_h <- W_h - update``); the rule
returns the update to use instead and its new state. ``state`` is an immutable record (a
``NamedTuple`` of tensors, from ``rule.init_state(hidden)``; empty for the paper's tanh rule) that
the step never modifies: it returns a new one. The optimizers keep the record's fields in their own
state (``state_dict()`` saves them), so a rule needs no code in the optimizer, the wrapper for any
torch optimizer, the CLI or checkpoints: one file and one registry line (:func:`register_rule`).

The Bayesian synapses (MESU, BiMU) are not damping rules on top of another optimizer's update: their
synapse is more than one hidden weight (a mean and a width; a latent probability) and the posterior
update *is* the optimizer. They have pure steps of the same shape in :mod:`metaspike.bayesian`
(``mesu_step(mu, sigma, grad_mu, grad_sigma, ...) -> (mu, sigma)``, ``bimu_step(lam, grad, ...) -> lam``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, NamedTuple, Protocol

import torch
from torch import Tensor

from metaspike.checks import FLOAT32_MAX, TrainingDiverged, defined_at, in_metaspike, number_in, raised_at

__all__ = ["Rule", "NoState", "Stateless", "check_meta", "check_update", "checked_step", "toward_zero",
           "state_to_dict", "state_from_dict", "user_rule_errors", "is_plain"]


class NoState(NamedTuple):
    """The empty state of a rule without per-synapse variables."""


class Stateless:
    """Base of rules without per-synapse state: their state is :class:`NoState` and their step is elementwise. A
    subclass is called at ``meta = 0`` too unless it sets ``plain_at_zero = True`` (see :class:`Rule`).

    Example:
        >>> Stateless().init_state(torch.zeros(2))
        NoState()
    """

    elementwise: bool = True
    plain_at_zero: ClassVar[bool] = False

    def init_state(self, hidden: Tensor) -> NoState:
        """The empty state."""
        return NoState()

    def state_type(self) -> type:
        """:class:`NoState`."""
        return NoState


class Rule(Protocol):
    """A consolidation rule: a name, a state record type and a pure step.

    Example:
        >>> from metaspike.rules import get_rule
        >>> rule = get_rule("tanh")
        >>> update, state = rule.step(torch.tensor([1.0]), torch.tensor([1.0]), 1.0, rule.init_state(torch.zeros(1)))
        >>> update
        tensor([0.4200])
    """

    name: str
    #: True when ``step`` is elementwise with an empty state (the optimizer may fuse and compile it).
    elementwise: bool
    #: True when ``meta = 0`` means the plain optimizer for this rule (each built-in rule's docstring says so): the
    #: optimizers then skip it where ``meta == 0`` (not called, its state left as it is) and step as the plain
    #: optimizer, ``torch.optim.Adam`` bit for bit in MetaplasticAdam. A rule without the attribute, or with
    #: False, is called at every ``meta``, 0 included.
    plain_at_zero: bool

    def init_state(self, hidden: Tensor) -> tuple:
        """The state of a synapse that has seen no update (tensors shaped like ``hidden``)."""
        ...

    def state_type(self) -> type:
        """The ``NamedTuple`` class of this rule's state."""
        ...

    # Optional: ``check_state(self, state, hidden) -> None``, one ``ValueError`` that begins with the field's name
    # where a state of the weight ``hidden`` read from a file holds values this rule never makes (``load_state_dict``
    # calls it after the fields' shapes and finiteness are checked); see
    # :meth:`metaspike.rules.switch.SwitchRule.check_state`.

    def step(self, hidden: Tensor, update: Tensor, meta: float, state: Any) -> tuple[Tensor, tuple]:
        """The update to subtract from ``hidden`` in place of ``update`` (the same shape), and the new state.

        ``hidden`` may be the live weight, which the optimizer changes in place after the step: a state that keeps
        the weight keeps ``hidden.clone()``. The optimizers store a state's tensors in their own state;
        ``load_state_dict`` gives them back with the dtypes and devices that ``init_state`` gives them."""
        ...


#: The largest metaplasticity strength: float32's largest number (``m·W`` is computed in the weights' float32).
MAX_META = FLOAT32_MAX


def check_meta(meta: float, where: str = "meta") -> float:
    """Validate a metaplasticity strength: a number in ``[0, MAX_META]``.

    Example:
        >>> check_meta(1.35)
        1.35
    """
    return number_in(where, meta, 0.0, MAX_META)


def is_plain(rule: Rule, meta: float) -> bool:
    """Whether an optimizer steps as the plain optimizer, without calling ``rule``, at strength ``meta``: ``meta`` is
    0 and the rule says it is then the plain optimizer (``plain_at_zero``; a rule without the attribute does not).

    Example:
        >>> from metaspike.rules import get_rule
        >>> is_plain(get_rule("tanh"), 0.0), is_plain(get_rule("tanh"), 1.0), is_plain(Stateless(), 0.0)
        (True, False, False)
    """
    return meta == 0 and getattr(rule, "plain_at_zero", False) is True


def check_update(rule: Rule, update: Tensor, hidden: Tensor) -> Tensor:
    """``update``, the step a rule returned for ``hidden``, if it has ``hidden``'s shape (a smaller one would be
    broadcast over the weight, silently), device and dtype (another one would be rounded into the weight, silently).

    Example:
        >>> from metaspike.rules import get_rule
        >>> check_update(get_rule("tanh"), torch.zeros(2, 3), torch.zeros(2, 3)).shape
        torch.Size([2, 3])
    """
    if not isinstance(update, Tensor) or update.shape != hidden.shape:
        got = tuple(update.shape) if isinstance(update, Tensor) else type(update).__name__
        raise ValueError(f"consolidation rule {rule.name!r} returned an update of shape {got} for a weight of shape "
                         f"{tuple(hidden.shape)}; a rule's step returns (update of the weight's shape, state)")
    if update.device != hidden.device:  # (torch ignores a meta update silently: the weight would not change)
        raise ValueError(f"consolidation rule {rule.name!r} returned an update on {update.device} for a weight on "
                         f"{hidden.device}; a rule's update lies where the weight does")
    if update.dtype != hidden.dtype:
        raise ValueError(f"consolidation rule {rule.name!r} returned a {update.dtype} update for a {hidden.dtype} "
                         "weight; a rule's update has the weight's dtype")
    return update


def checked_step(rule: Rule, result: Any, hidden: Tensor) -> tuple[Tensor, tuple]:
    """``(update, state)``, what ``rule.step`` returned for ``hidden``, once it is that: a pair whose update has
    ``hidden``'s shape (:func:`check_update`) and whose state is a ``NamedTuple`` record (``NoState()`` for none).

    Example:
        >>> from metaspike.rules import get_rule
        >>> checked_step(get_rule("tanh"), (torch.zeros(2), NoState()), torch.zeros(2))[1]
        NoState()
        >>> checked_step(get_rule("tanh"), torch.zeros(2), torch.zeros(2))
        Traceback (most recent call last):
        ...
        ValueError: consolidation rule 'tanh' (TanhRule) returned Tensor from step; a rule's step returns (update of the weight's shape, state)
    """
    if not (isinstance(result, tuple) and len(result) == 2):
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
        raise ValueError(f"consolidation rule {rule.name!r} ({type(rule).__name__}) returned {got} from step; a rule's "
                         "step returns (update of the weight's shape, state)")
    update, state = result
    check_update(rule, update, hidden)
    if not (isinstance(state, tuple) and hasattr(state, "_asdict")):
        raise ValueError(f"consolidation rule {rule.name!r} ({type(rule).__name__}) returned a state of type "
                         f"{type(state).__name__}; a rule's state is a NamedTuple of tensors (NoState() when it keeps "
                         "none), which the optimizer saves under 'rule_state'")
    return update, state


def _users_step(rule: Rule) -> Any:
    """The code of ``rule``'s ``step`` where a user wrote it (outside metaspike), else ``None``."""
    code = getattr(getattr(type(rule), "step", None), "__code__", None)
    return None if code is None or in_metaspike(code.co_filename) else code


@contextmanager
def user_rule_errors(rule: Rule, weight: Tensor | None = None) -> Iterator[None]:
    """Around a step of ``rule``: an error raised in a user's rule (its ``step`` written outside metaspike) becomes one
    line naming the rule and the line of its own ``step`` the error passed last; metaspike's own errors, and memory
    running out, pass as they are. With ``weight`` (the tensor the step updated), a user's rule that left it NaN or
    infinite from a finite gradient raises :class:`~metaspike.checks.TrainingDiverged` naming the rule: a binary
    synapse reads a NaN hidden weight as a plausible ±1 weight, so the loss stays finite and nothing else would tell.

    Example:
        >>> from metaspike.rules import get_rule
        >>> with user_rule_errors(get_rule("tanh")):
        ...     pass
    """
    code = _users_step(rule)
    try:
        yield
    except Exception as err:
        out_of_memory = isinstance(err, (MemoryError, torch.OutOfMemoryError))
        place = "" if code is None or out_of_memory else raised_at(err, code.co_filename)
        if not place:
            raise
        raise ValueError(f"consolidation rule {rule.name!r} ({type(rule).__name__}) raised {type(err).__name__} at "
                         f"{place}: {err}") from err
    # (one reduction first, into which NaN and infinity carry: a full isfinite pass doubled a user rule's step; the
    # full check only where the sum is not finite, which a weight of large finite values can also give)
    if (code is not None and weight is not None and not bool(torch.isfinite(weight.sum()))
            and not bool(torch.isfinite(weight).all())):
        grad = weight.grad
        if grad is None or bool(torch.isfinite(grad).all()):
            raise TrainingDiverged(f"consolidation rule {rule.name!r} ({type(rule).__name__}, "
                                   f"{defined_at(type(rule).step)}) made a weight of shape {tuple(weight.shape)} NaN "
                                   "or infinite from a finite gradient: its step returned a non-finite update")


def toward_zero(hidden: Tensor, update: Tensor) -> Tensor:
    """Where subtracting ``update`` moves ``hidden`` toward zero (toward a sign flip).

    Example:
        >>> toward_zero(torch.tensor([1.0, -1.0]), torch.tensor([0.5, 0.5]))
        tensor([ True, False])
    """
    return hidden * update > 0


def state_to_dict(state: tuple) -> dict[str, Tensor]:
    """The fields of a state record, as stored in an optimizer's state.

    Example:
        >>> state_to_dict(NoState())
        {}
    """
    if not (isinstance(state, tuple) and callable(getattr(state, "_asdict", None))):
        raise ValueError(f"state_to_dict takes a rule's state record (a NamedTuple), got {type(state).__name__}")
    return dict(state._asdict())


def state_from_dict(rule: Rule, hidden: Tensor, stored: dict[str, Tensor] | None) -> tuple:
    """The rule's state record from stored fields (``rule.init_state(hidden)`` when nothing is stored, or when the
    stored fields are another rule's: a group whose rule was changed between steps starts the new rule afresh).

    Example:
        >>> from metaspike.rules import get_rule
        >>> state_from_dict(get_rule("tanh"), torch.zeros(2), None)
        NoState()
    """
    fields = rule.state_type()._fields
    if stored and set(stored) == set(fields):
        return rule.state_type()(**stored)
    return _initial_state(rule, hidden) if fields else rule.init_state(hidden)  # (a stateless rule's: every step)


@torch.compiler.disable
def _initial_state(rule: Rule, hidden: Tensor) -> tuple:
    """``rule.init_state(hidden)``, never traced: made once per weight, it may read the weight's bytes or seed a
    generator (the switch rule does both), which a ``torch.compile``'d training step failed to trace ("setStorage:
    ... out of bounds", from its byte view)."""
    return rule.init_state(hidden)
