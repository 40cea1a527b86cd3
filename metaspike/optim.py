"""Metaplastic optimizers.

* :class:`MetaplasticAdam`: Adam in which the first-moment term of every weight matrix/kernel is
  damped by a consolidation rule wherever it would move the hidden weight toward zero. With
  ``meta=0`` and a rule that is then the plain optimizer (every built-in rule: ``plain_at_zero``) it is
  ``torch.optim.Adam`` bit for bit.
* :func:`metaplastic`: adds the same rule to any torch optimizer (SGD, AdamW, ...) through step hooks.

``meta`` is a param-group hyperparameter, so every layer can have its own strength.

Speed: the consolidated update of a large weight matrix runs as one fused loop (moments, rule and
weight update in a single pass over memory) compiled by ``torch.compile`` on first use; see the
``fused`` argument of :class:`MetaplasticAdam`.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
import weakref
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from metaspike.bayesian.plain_optimizers import BAYESIAN_ADVICE
from metaspike.bayesian.synapses import bayesian_modules
from metaspike.checks import (
    FLOAT32_MAX,
    check_eps_holds,
    check_keys_kept,
    check_no_misspelled_setting,
    is_number,
    listed,
    number_in,
)
from metaspike.compiled import LARGE_TENSOR_LOOPS, LazyCompiled
from metaspike.gain import OutputGain
from metaspike.layer_selection import each_once, synapse_role
from metaspike.optimizer_state import (
    HookedAgainWhenCopied,
    check_parameter_state,
    check_state_dict_groups,
    check_state_tensor,
    check_states_listed,
    own_state_tensors,
    refuse_non_mapping,
    with_tensor_steps,
)
from metaspike.rules import (
    Rule,
    check_meta,
    checked_step,
    get_rule,
    is_plain,
    rule_from_record,
    rule_record,
    same_rule,
    state_from_dict,
    state_to_dict,
    user_rule_errors,
)
from metaspike.synapse import is_hidden_weight, weight_matrices

__all__ = ["MetaplasticAdam", "metaplastic", "param_groups", "consolidates", "applies_rule", "check_before_step",
           "inherit_rule_states"]

FUSED_MIN_NUMEL = 1 << 15
"""With ``fused=None``, weight matrices with at least this many entries get the compiled step (and, in
:func:`metaplastic`, the compiled damping). Where the two cross, measured on one weight in a loop of steps (2-core AMD
EPYC Zen 4, one thread): at 2**14 entries eager 0.16 ms and compiled 0.17 ms a step (damping 0.21 and 0.13), at 2**15
0.23 and 0.20 (0.19 and 0.15), at 784 x 256 2.9 and 0.37 (2.5 and 0.32), where the eager steps' weight-sized
temporaries are faulted in from the system each step. Below it, a compiled call's fixed cost (about 0.14 ms) is more
than the eager operations' (2**18, this constant until December 2026, left 784 x 256 layers eager)."""


def consolidates(param: Tensor, group: dict[str, Any]) -> bool:
    """Whether ``group`` consolidates ``param``: its ``consolidate`` key when set (``True``/``False``, as
    :func:`param_groups` sets it), else whether ``param`` is the hidden weight of a binary synapse
    (so ``model.parameters()`` consolidates exactly those, never a float layer's weights).

    Example:
        >>> import metaspike
        >>> net = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)), exclude=["1"])
        >>> [consolidates(p, {}) for p in net.parameters()]  # bias, learned gain, W_h, float weight, bias
        [False, False, True, False, False]
    """
    flag = group.get("consolidate")
    return is_hidden_weight(param) if flag is None else bool(flag)


def warn_at_first_step_if_nothing_consolidated(optimizer: Optimizer) -> None:
    """At the end of the optimizer's first step, warn when some group asks for consolidation (:func:`applies_rule`)
    but no parameter is consolidated (a model that was not binarized: ``meta`` would then change nothing, silently).
    Checked then, not when the optimizer is made nor before the step's closure: a binary layer whose parameters were
    replaced by hand marks its hidden weight again on its forward pass.

    Example:
        >>> import warnings
        >>> layer = torch.nn.Linear(3, 2)
        >>> opt = MetaplasticAdam(layer.parameters(), meta=5.0)
        >>> layer(torch.ones(1, 3)).sum().backward()
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     opt.step()
        >>> "consolidates nothing" in str(caught[0].message)
        True
    """
    checked = False

    def check_once(opt: Optimizer, args: Any, kwargs: Any) -> None:
        nonlocal checked  # (not removed from inside the hook: torch is iterating over the hooks then)
        if not checked:
            checked = True
            _warn_if_nothing_consolidated(opt)

    optimizer.register_step_post_hook(check_once)


def _warn_if_nothing_consolidated(optimizer: Optimizer) -> None:
    asks = any(applies_rule(group) for group in optimizer.param_groups)
    if asks and not any(consolidates(p, group) for group in optimizer.param_groups for p in group["params"]):
        warnings.warn(
            "meta != 0 (or a rule that acts at meta = 0) but the optimizer consolidates nothing: none of its "
            "parameters is the hidden weight of a binary "
            "synapse (call metaspike.binarize(model) first, or pass metaspike.param_groups(model, meta) to "
            "consolidate a float model's weight matrices)",
            UserWarning,
            stacklevel=4,
        )


def applies_rule(group: dict[str, Any]) -> bool:
    """Whether ``group``'s rule acts on its consolidated parameters: not where its ``meta`` is 0 and its rule is then
    the plain optimizer (:func:`metaspike.rules.is_plain`), which the optimizers step as it is.

    Example:
        >>> applies_rule({"rule": "tanh", "meta": 0.0}), applies_rule({"rule": "tanh", "meta": 1.35})
        (False, True)
    """
    return not is_plain(get_rule(group["rule"]), group["meta"])


def _add_checked(optimizer: Optimizer, add: Callable[[dict[str, Any]], None], param_group: dict[str, Any]) -> None:
    """``add(param_group)`` (torch's, which fills in the defaults), then validate the group; a refused group is
    removed again (a misspelled setting is refused before)."""
    if isinstance(param_group, dict):  # (torch's own check names anything else)
        check_no_misspelled_setting(_owner(optimizer), param_group, optimizer.defaults)
    add(param_group)
    try:
        _group_check(optimizer)(optimizer.param_groups[-1])
    except ValueError:
        optimizer.param_groups.pop()
        raise


def _rules_as_records(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A state dict whose groups' rule objects are plain records (:func:`metaspike.rules.rule_record`), so that
    ``torch.load(..., weights_only=True)`` reads it (its groups are copies: the optimizer keeps its objects)."""
    for group in state_dict["param_groups"]:
        group["rule"] = rule_record(group["rule"])
    return state_dict


#: The keys :func:`metaplastic` adds to another optimizer's groups (a state dict saved before it lacks them).
_CONSOLIDATION_KEYS = ("meta", "rule", "consolidate")
_ADAM_STEP_KEYS = ("lr", "betas", "eps", "weight_decay", "meta", "rule", "foreach")
"""The settings a :class:`MetaplasticAdam` step reads from every group (others it reads with a default)."""
#: The settings that every state dict of ``torch.optim.Adam`` and of MetaplasticAdam holds (MetaplasticAdam's others,
#: ``consolidate`` and ``fused`` among them, were added over time: a group that lacks one takes its default).
_ADAM_SETTINGS = ("lr", "betas", "eps", "weight_decay")
#: Group settings of Adam-family optimizers that make another algorithm, with what sets them. A state dict whose groups
#: set one loads into an optimizer without that setting only to run another algorithm on its moments. RAdam's state
#: dict is not told apart: it holds the settings and per-parameter state of Adam's, under the same names.
_OTHER_ALGORITHMS = {
    "amsgrad": "amsgrad",
    "maximize": "maximize",
    "decoupled_weight_decay": "decoupled weight decay (the state dict of AdamW or Adam(decoupled_weight_decay=True))",
    "momentum_decay": "momentum decay (the state dict of NAdam)",
}
#: torch.optim.Adam's group flags that MetaplasticAdam does not do: another algorithm's (:data:`_OTHER_ALGORITHMS`), and
#: capturable and differentiable steps. A group that sets one (to anything but ``False``) is refused where it is given,
#: as a state dict whose groups set one is at load.
_NOT_DONE_BY_ADAM = (*_OTHER_ALGORITHMS, "capturable", "differentiable")


def _flags_set(group: dict[str, Any], keys: Iterable[str]) -> list[str]:
    """Those of ``keys`` that ``group`` sets to anything but ``False`` (torch's default for each: ``amsgrad=False``
    asks for nothing)."""
    return [key for key in keys if group.get(key, False) is not False]


def _missing_settings(optimizer: Optimizer, group: dict[str, Any]) -> list[str]:
    """The settings of ``optimizer``'s own algorithm that a state dict's ``group`` lacks: those of another algorithm
    (SGD's into Adam) lack some. Not missing: the keys :func:`metaplastic` adds, and those that torch's own load
    fills in (each optimizer's ``__setstate__`` sets the keys newer torch versions added: SGD's ``fused``, ...)."""
    if isinstance(optimizer, MetaplasticAdam):
        return [key for key in _ADAM_SETTINGS if key not in group]
    probe = type(optimizer).__new__(type(optimizer))  # (nothing of the optimizer itself is touched)
    try:
        probe.__setstate__({"defaults": {}, "state": {}, "param_groups": [{**group, "params": []}]})
        filled = set(probe.param_groups[0]) | set(probe.defaults)
    except Exception:  # (an optimizer of one's own whose load cannot be tried apart: nothing can be told missing)
        return []
    return [key for key in optimizer.defaults if key not in filled and key not in _CONSOLIDATION_KEYS]


#: The consolidation rules' states of a loaded state dict, by the parameter each belongs to.
_RuleStates = dict[Tensor, dict[str, Tensor]]


def _loaded_groups(optimizer: Optimizer,
                   state_dict: dict[str, Any]) -> tuple[dict[str, Any], _RuleStates, _RuleStates]:
    """The state dict to load, checked before anything of it is installed (a state dict is a file from outside):
    another algorithm's refused (:func:`_missing_settings`, :data:`_OTHER_ALGORITHMS`), its rules rebuilt from their
    records, a setting a group lacks (the state dict of a plain torch optimizer, or of an older metaspike) at its live
    group's value (the optimizer's default past the live groups), every group validated, step counts saved as numbers
    made tensors for MetaplasticAdam (:func:`~metaspike.optimizer_state.with_tensor_steps`; a wrapped torch optimizer
    keeps them as the file has them, as its own load does: SparseAdam counts in a Python int, and a float32 tensor
    step moved a resumed run's weights by up to 8e-7 in four steps); the rules' states as they are to be installed
    (:func:`_check_saved_state`), and those handed on and not yet taken (:data:`_HANDED_ON`)."""
    name = type(optimizer).__name__
    loaded = []
    live = optimizer.param_groups
    for index, group in enumerate(check_state_dict_groups(optimizer, state_dict)):
        asked = [_OTHER_ALGORITHMS[key] for key in _flags_set(group, _OTHER_ALGORITHMS)
                 if key not in optimizer.defaults]
        if asked:
            raise ValueError(f"state_dict: its groups ask for {' and '.join(asked)}, which {name} does not do: it "
                             "would run another algorithm on the saved state")
        missing = _missing_settings(optimizer, group)
        if missing:
            raise ValueError(f"state_dict: its param groups lack {', '.join(missing)}: it is not a state dict of "
                             f"{name}")
        # (a setting the saved group lacks keeps its live group's value: a torch Adam's state dict, loaded to warm a
        # consolidating optimizer's moments, reset each group's meta to the default 0, silently)
        own = {key: value for key, value in live[index].items() if key != "params"} if index < len(live) else {}
        group = {**optimizer.defaults, **own, **group}
        group["rule"] = rule_from_record(group["rule"])
        _group_check(optimizer)(group)
        loaded.append(group)
    _refuse_indices_listed_twice(loaded)
    places = _saved_places(optimizer, loaded)
    state = state_dict.get("state")
    if isinstance(optimizer, MetaplasticAdam):
        state = with_tensor_steps(state)
    rule_states = _check_saved_state(optimizer, places, state)
    handed = _check_handed_on(places, state_dict.get(_HANDED_ON, {}))
    loading = {**state_dict, "param_groups": loaded, **({"state": state} if "state" in state_dict else {})}
    return loading, rule_states, handed


def _refuse_indices_listed_twice(groups: list[dict[str, Any]]) -> None:
    """One ``ValueError`` where a state dict lists one parameter index twice: in one param group (no optimizer that
    steps each tensor once writes that), or in two (torch's load gives that index's state to the later group's tensor
    and leaves the earlier one without: one of two same-shaped layers took the other's moments). An index of another
    type than a number or string is left to torch, which names it."""
    seen: dict[Any, int] = {}
    for number, group in enumerate(groups):
        for index in group["params"]:
            if not isinstance(index, Hashable):
                continue
            if index in seen and seen[index] == number:
                raise ValueError(f"state_dict: a param group lists parameter {index!r} more than once; no optimizer "
                                 "that steps each tensor once writes that")
            if index in seen:
                raise ValueError(f"state_dict: parameter {index!r} is listed in param groups {seen[index]} and "
                                 f"{number}; no optimizer writes that")
            seen[index] = number


#: What MetaplasticAdam keeps of each parameter it stepped (the rule's own state besides, under ``"rule_state"``).
_ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")


#: Where each parameter index of a loaded state dict goes: the optimizer's parameter, and the loaded group it is in.
_Places = dict[Any, tuple[Tensor, dict[str, Any]]]


def _saved_places(optimizer: Optimizer, groups: list[dict[str, Any]]) -> _Places:
    """Each parameter index that the state dict's ``groups`` list, with the parameter of ``optimizer`` it loads into and
    its group; nothing where the groups' number or sizes differ (torch refuses them in its own words: the same
    parameters split into other groups were blamed on a moment's shape, as though from another model)."""
    if [len(group.get("params", ())) for group in groups] != [len(group["params"]) for group in optimizer.param_groups]:
        return {}
    saved = [(index, group) for group in groups for index in group.get("params", ())]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {index: (param, group) for (index, group), param in zip(saved, params)}


def _check_saved_state(optimizer: Optimizer, into: _Places, state: Any) -> _RuleStates:
    """Check the per-parameter states of a state dict loaded into a metaplastic optimizer before they are installed:
    MetaplasticAdam's hold Adam's step and moments; the moments of torch.optim's algorithms and the consolidation
    rule's state (``"rule_state"``) have the shape of the parameter they load into, finite values, and no negative
    sum of squares or step count. Another optimizer's state (SGD's momentum in Adam), another model's or an edited
    file's would otherwise be installed, and the next step fail inside the update or turn every weight NaN. Groups
    whose sizes differ are left to torch, which refuses them in its own words. Returns the rules' states as
    :func:`_check_rule_state` gives them back."""
    check_states_listed(state, into or None)  # (None: groups of other sizes, which torch refuses in its own words)
    if not into:
        return {}
    rule_states: _RuleStates = {}
    for index, entry in state.items():
        param, group = into[index]
        if isinstance(optimizer, MetaplasticAdam):  # (a step count that is no finite number is named below)
            lacking = [key for key in _ADAM_STATE if not isinstance(entry, dict) or not (
                isinstance(entry.get(key), Tensor) or key == "step" and is_number(entry.get(key)))]
            if lacking:
                raise ValueError(f"state_dict: the state of parameter {index!r} lacks {', '.join(lacking)}: it is not "
                                 "the state dict of a MetaplasticAdam optimizer")
        check_parameter_state(entry, param.shape, f"state_dict: parameter {index!r}")
        if "rule_state" in entry:
            rule_states[param] = _check_rule_state(index, entry["rule_state"], get_rule(group["rule"]), param)
    return rule_states


def _check_handed_on(into: _Places, handed: Any) -> _RuleStates:
    """The rule states of a loaded state dict that :func:`inherit_rule_states` handed on and no step took yet
    (:data:`_HANDED_ON`), checked as a parameter's own (:func:`_check_rule_state`), by the parameter each goes to."""
    if not isinstance(handed, dict):
        raise ValueError(f"state_dict's {_HANDED_ON!r} must map parameter indices to rule states, got "
                         f"{type(handed).__name__}")
    if not into:
        return {}
    checked: _RuleStates = {}
    for index, stored in handed.items():
        if index not in into:
            raise ValueError(f"state_dict: it holds a handed-on rule state for parameter {index!r}, which none of its "
                             "groups lists")
        param, group = into[index]
        checked[param] = _check_rule_state(index, stored, get_rule(group["rule"]), param)
    return checked


def _keeps(rule: Rule, stored: dict[str, Tensor]) -> bool:
    """Whether ``stored``, a parameter's saved rule state, holds the fields of ``rule``'s state: not where the group's
    rule was changed since (:func:`metaspike.rules.state_from_dict` then starts the new rule afresh)."""
    return set(stored) == set(rule.state_type()._fields)


#: Beside a parameter's ``"rule_state"`` in the optimizer's state, the rule object that made it (in the process only:
#: a state dict leaves it out, and the states it loads are checked against their groups' rules). A group whose rule was
#: changed since starts the new rule afresh, also where the two rules' states have the same fields (``CascadeRule(3)``
#: to ``CascadeRule(4)``: the three-level chain went to the four-level rule, which failed inside its step), and so does
#: a group naming a rule registered again under its name (``replace=True``). A copy of the optimizer holds a copy of
#: the rule, compared by its class and settings (:func:`metaspike.rules.same_rule`).
_MADE_BY = "rule_made_by"


def _own_rule_state(state: dict[str, Any], rule: Rule) -> dict[str, Tensor] | None:
    """A parameter's stored rule state where ``rule`` made it, or where nothing says which rule did (a state handed
    on, whose fields :func:`metaspike.rules.state_from_dict` compares); ``None`` where another rule made it."""
    made_by = state.get(_MADE_BY)
    if made_by is not None and made_by is not rule and not same_rule(made_by, rule):
        return None
    return state.get("rule_state")


def _store_rule_state(state: dict[str, Any], new_state: tuple, rule: Rule) -> None:
    """Keep ``rule``'s ``new_state`` in a parameter's optimizer ``state`` under ``"rule_state"``, in place of what is
    there, with the rule that made it; a rule that keeps none removes what another rule kept (the group's rule was
    changed between steps)."""
    if len(new_state) > 0:
        state["rule_state"] = state_to_dict(new_state)
        state[_MADE_BY] = rule
    else:
        state.pop("rule_state", None)
        state.pop(_MADE_BY, None)


def _check_rule_state(index: Any, stored: Any, rule: Rule, param: Tensor) -> dict[str, Tensor]:
    """The consolidation rule's saved state of ``param``, checked: the fields of ``rule``'s state, each of the shape
    a new state of ``param`` has; returned with the dtype and device each field has there (torch's load casts every
    state tensor to the parameter's dtype: a bool mask would come back float, an int64 counter rounded), refused
    where that dtype cannot hold its values (a fraction in an integer field)."""
    expected = state_to_dict(rule.init_state(param.detach()))
    if not isinstance(stored, dict) or set(stored) != set(expected):
        fields = sorted(map(str, stored)) if isinstance(stored, dict) else type(stored).__name__
        raise ValueError(f"state_dict: parameter {index!r}'s rule_state has the fields {fields}, but its group's "
                         f"{type(rule).__name__} keeps {sorted(expected)}")
    restored = {}
    for field, value in stored.items():
        where = f"state_dict: parameter {index!r}'s rule_state {field}"
        check_state_tensor(where, value, expected[field].shape, shape_of=f"{type(rule).__name__} keeps, for a "
                           f"parameter of shape {tuple(param.shape)}, one of")
        restored[field] = value.to(device=expected[field].device, dtype=expected[field].dtype)
        if not restored[field].is_floating_point() and not torch.equal(restored[field].to(value), value):
            raise ValueError(f"{where} is {value.dtype} and holds values that {expected[field].dtype}, its dtype in "
                             f"{type(rule).__name__}.init_state, cannot hold")
    check_values = getattr(rule, "check_state", None)  # (what only the rule knows its values may be)
    if check_values is not None:
        try:
            check_values(rule.state_type()(**restored), param.detach())
        except ValueError as err:
            raise ValueError(f"state_dict: parameter {index!r}'s rule_state {err}") from None
    return restored


def _hook_checkpoints(optimizer: Optimizer) -> None:
    """Rules saved as plain records, and the rules' states as :func:`_saved_rule_states` gives them; every group
    completed and validated before a state dict is loaded, and the rules' states installed after torch's load as
    :func:`_check_rule_state` gave them back (those handed on and not yet taken where they wait for the first step)."""
    checked: dict[str, _RuleStates] = {}

    def check(opt: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        checked.clear()  # (a load that failed after its check leaves nothing behind for the next)
        loaded, checked["own"], checked["handed"] = _loaded_groups(opt, state_dict)
        return loaded

    def install_rule_states(opt: Optimizer) -> None:
        rules = _rules_by_param(opt)
        for state in opt.state.values():
            state.pop(_MADE_BY, None)  # (never saved: a file's would be anything)
        for param, fields in checked.pop("own", {}).items():  # (checked against the group's rule: made by it)
            opt.state[param]["rule_state"] = fields
            if param in rules:
                opt.state[param][_MADE_BY] = rules[param]
        setattr(opt, _INHERITED, checked.pop("handed", {}))

    optimizer.register_state_dict_post_hook(_saved_rule_states)
    optimizer.register_state_dict_post_hook(_rules_as_records)
    optimizer.register_load_state_dict_pre_hook(check)
    optimizer.register_load_state_dict_post_hook(install_rule_states)
    optimizer.register_load_state_dict_post_hook(own_state_tensors)


def _saved_rule_states(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A state dict whose parameters' rule states are their groups' rules' (:func:`_keeps`: a state left by the rule
    a group had before is left out, as its next step would drop it, so that the optimizer loads its own state dict),
    with the rule states :func:`inherit_rule_states` handed on and no step took yet under :data:`_HANDED_ON`, by
    parameter index. The optimizer's own state entries are not changed (torch's state dict holds them, not copies)."""
    pending = getattr(optimizer, _INHERITED, {})
    state, handed = dict(state_dict["state"]), {}
    for group, saved in zip(optimizer.param_groups, state_dict["param_groups"]):
        try:
            rule = get_rule(group["rule"])
        except ValueError:  # (a rule edited to an unknown name: saved as it is, and refused at load in its own words)
            rule = None
        for param, index in zip(group["params"], saved["params"]):
            entry = state.get(index)
            if isinstance(entry, dict):
                stale = rule and "rule_state" in entry and (_own_rule_state(entry, rule) is None
                                                            or not _keeps(rule, entry["rule_state"]))
                if stale or _MADE_BY in entry:  # (a new dict: torch's state dict holds the optimizer's own entries)
                    state[index] = {key: value for key, value in entry.items()
                                    if key != _MADE_BY and not (stale and key == "rule_state")}
            if param in pending and (not rule or _keeps(rule, pending[param])):
                handed[index] = pending[param]
    state_dict["state"] = state
    if handed:
        state_dict[_HANDED_ON] = handed
    return state_dict


def _check_consolidation(group: dict[str, Any], owner: str = "a metaplastic optimizer") -> None:
    """Validate what a param group says about consolidation: ``meta``, ``rule`` and ``consolidate`` (the keys
    :func:`metaplastic` adds to another optimizer's groups, whose own settings are that optimizer's to check), and
    that it holds no Bayesian synapse's tensors: ``owner`` would train BiMU's ``λ`` or MESU's ``μ, σ`` as plain
    weights (``σ`` could turn negative, and BiMU's latent weights do not learn so); nor a tensor twice (a loaded
    group's indices listed twice: :func:`_refuse_indices_listed_twice`)."""
    _refuse_bayesian_tensors(group, owner, "got")
    held = [id(p) for p in group["params"] if isinstance(p, Tensor)]  # (a loaded group's indices: at load)
    if len(set(held)) < len(held):  # (torch warns, and steps it twice)
        raise ValueError(f"{owner} got a param group that lists a tensor more than once (tied weights?), which it "
                         "would update twice a step; list each tensor once (model.parameters() does)")
    check_meta(group["meta"], "meta")
    get_rule(group["rule"])
    _check_optional_flag(group, "consolidate")


def _refuse_bayesian_tensors(group: dict[str, Any], owner: str, verb: str) -> None:
    """One ``ValueError`` where ``group`` holds a tensor of a Bayesian synapse: given to ``owner`` (``verb`` "got"), or
    made one since (``"holds"``: ``bayesianize`` after the optimizer was built turns the weights it holds into BiMU's
    ``λ`` or MESU's ``μ``, which it would then train as plain weights, MESU's ``σ`` by no optimizer)."""
    roles = sorted({role for p in group["params"] if (role := synapse_role(p)) is not None})
    if roles:
        since = " (bayesianize made them after the optimizer was built)" if verb == "holds" else ""
        raise ValueError(f"{owner} {verb} the {' and '.join(roles)} tensors of Bayesian synapses{since}; "
                         + BAYESIAN_ADVICE)


def _owner(optimizer: Optimizer) -> str:
    """How messages name ``optimizer``: ``MetaplasticAdam``, or ``metaplastic(SGD)`` for one :func:`metaplastic`
    hooked."""
    name = type(optimizer).__name__
    return name if isinstance(optimizer, MetaplasticAdam) else f"metaplastic({name})"


def _group_check(optimizer: Optimizer) -> Callable[[dict[str, Any]], None]:
    """What a group of ``optimizer`` is checked for: everything for MetaplasticAdam, the consolidation settings for
    another optimizer that :func:`metaplastic` hooked."""
    return _check_group if isinstance(optimizer, MetaplasticAdam) else _check_wrapped_group


def _check_wrapped_group(group: dict[str, Any], owner: str = "a metaplastic optimizer") -> None:
    """A group of another optimizer that :func:`metaplastic` hooked: its consolidation settings, and an ``eps`` its
    parameters' dtype holds (Adam's 1e-8 is 0 in float16: its updates turn NaN, as MetaplasticAdam refuses)."""
    _check_consolidation(group, owner)
    check_eps_holds(group)


#: What consolidates an Adam that sets one of :data:`_NOT_DONE_BY_ADAM`.
_TORCH_ADAM_INSTEAD = "metaspike.metaplastic(torch.optim.Adam(...)) consolidates torch's own Adam, which does"


def _check_group(group: dict[str, Any]) -> None:
    """Validate a MetaplasticAdam param group's hyperparameters (those given to ``__init__`` and those a group
    sets) and what it says about consolidation (:func:`_check_consolidation`)."""
    _check_consolidation(group, "MetaplasticAdam")
    flags = _flags_set(group, _NOT_DONE_BY_ADAM)
    if flags:
        raise ValueError(f"MetaplasticAdam does not do {flags[0]}: a param group's {flags[0]} must be False or left "
                         f"out, got {group[flags[0]]!r}; {_TORCH_ADAM_INSTEAD}")
    lr = group.get("lr")
    if isinstance(lr, Tensor):  # as torch.optim.Adam takes it: one real number
        if lr.numel() != 1 or not lr.is_floating_point():
            raise ValueError(f"a tensor lr must hold one floating-point number, got shape {tuple(lr.shape)} {lr.dtype}")
        number_in("lr", lr.item(), 0.0, FLOAT32_MAX)
    _check_adam_settings(group)
    check_eps_holds(group)
    for name in ("fused", "foreach"):
        _check_optional_flag(group, name)


def _check_optional_flag(group: dict[str, Any], name: str) -> None:
    """``ValueError`` unless a group's ``name`` is a bool (numpy's taken), ``None`` or left out (``1`` equals
    ``True`` but is not a bool: the flag's default is ``None``, so a number there is a mistake, not a choice)."""
    value = group.get(name)
    if value is not None and not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True, False or None, got {value!r}")


def _check_adam_settings(group: dict[str, Any], whose: str = "") -> None:
    """Validate the Adam settings a MetaplasticAdam group holds, as plain numbers (a tensor lr is left alone: it is
    checked where the group is made, and reading it would sync); ``whose`` begins their names in the messages."""
    # at most float32's largest number: the step multiplies float32 tensors by them
    for key in ("lr", "eps", "weight_decay"):
        if key in group and not isinstance(group[key], Tensor):
            number_in(f"{whose}{key}", group[key], 0.0, FLOAT32_MAX)
    if "betas" in group:
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{whose}betas must be two numbers in [0, 1), got {betas!r}")
        for beta in betas:
            number_in(f"each of {whose}betas", beta, 0.0, 1.0, open_high=True)


class MetaplasticAdam(HookedAgainWhenCopied, Optimizer):
    """Adam with metaplastic consolidation of hidden weights (Laborieux et al. 2021).

    For every consolidated parameter (see :func:`consolidates`: the hidden weights of binary
    synapses, or what a group's ``consolidate`` key says), the Adam step ``lr·m̂/(√v̂ + eps)`` goes
    through the group's rule: with the paper's rule it is multiplied by ``1 - tanh²(meta·W_h)``
    where it would move ``W_h`` toward zero. The stored moments are not changed. Every other
    parameter gets plain Adam. Weight decay is added to the gradient, as in ``torch.optim.Adam``.

    Args:
        params: parameters or param groups; a group may set its own ``meta``, ``rule`` and
            ``consolidate`` (``True``/``False``; ``None``: the binary synapses' hidden weights).
        lr, betas, eps, weight_decay: as in ``torch.optim.Adam``; validated for every group.
        meta: metaplasticity strength ``m >= 0``; ``0`` gives plain Adam under a rule that says so (every
            built-in rule; ``plain_at_zero``, see :class:`metaspike.rules.Rule`), while another rule is still called.
        rule: consolidation rule name (see :func:`metaspike.rules.available_rules`) or object; a
            rule's state is kept in the optimizer state under ``"rule_state"``.
        foreach: use the multi-tensor path; ``None`` chooses as ``torch.optim.Adam`` does.
        fused: how consolidated parameters with an elementwise rule (tanh, none) are updated.
            ``True``: by one fused loop compiled with ``torch.compile`` (compiled once per process,
            on the first step, a few seconds; cached on disk by torch afterwards); ``False``: by
            separate tensor operations; ``None``: fused for matrices of at least
            :data:`FUSED_MIN_NUMEL` entries. If compiling fails, a warning is given and the
            separate operations are used; float16 weights always take them (the fused loop would keep their
            second moments unrounded, and so step otherwise than torch's float16 Adam). Plain Adam (``meta=0``
            under a built-in rule, parameters not consolidated) is never fused, so it stays ``torch.optim.Adam`` bit
            for bit.
        amsgrad, maximize, capturable, differentiable, decoupled_weight_decay: ``torch.optim.Adam``'s flags, not done
            here: one set (as a keyword or by a group) is refused (``metaplastic(torch.optim.Adam(..., amsgrad=True))``
            consolidates torch's own Adam).

    Example:
        >>> import metaspike
        >>> model = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(4, 2)))
        >>> opt = MetaplasticAdam(model.parameters(), lr=0.005, meta=1.35)
        >>> model(torch.randn(3, 4)).sum().backward()
        >>> opt.step()
    """

    _refuses_synapse_tensors = True  # (REFUSES_SYNAPSE_TENSORS: check_step refuses them in its own words)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        meta: float = 0.0,
        rule: str | Rule = "tanh",
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        amsgrad: bool = False,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        adams_flags = dict(amsgrad=amsgrad, maximize=maximize, capturable=capturable, differentiable=differentiable,
                           decoupled_weight_decay=decoupled_weight_decay)
        asked = [key for key, value in adams_flags.items() if not (isinstance(value, (bool, int)) and not value)]
        if asked:  # (ported from torch.optim.Adam(..., amsgrad=True): Python's "unexpected keyword" said no more)
            raise ValueError(f"MetaplasticAdam does not do {asked[0]}: {asked[0]} must be False or left out, got "
                             f"{adams_flags[asked[0]]!r}; {_TORCH_ADAM_INSTEAD}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, (tuple, list)) else betas,  # (checked with the groups)
            eps=eps,
            weight_decay=weight_decay,
            meta=meta,
            rule=rule,
            consolidate=None,
            foreach=foreach,
            fused=fused,
        )
        if isinstance(params, nn.Module):  # (torch: "optimizer can only optimize Tensors, but one of the params...")
            raise TypeError("MetaplasticAdam takes the model's parameters or param groups, not the model: "
                            "MetaplasticAdam(metaspike.param_groups(model, meta)) or "
                            "MetaplasticAdam(model.parameters())")
        super().__init__(params, defaults)
        self._add_hooks()
        warn_at_first_step_if_nothing_consolidated(self)

    def _add_hooks(self) -> None:
        """Its checkpoint hooks (:func:`_hook_checkpoints`); a copy or an unpickled optimizer gets them again."""
        _hook_checkpoints(self)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its hyperparameters are validated (a refused group is not added)."""
        _add_checked(self, super().add_param_group, param_group)

    def __getstate__(self) -> dict[str, Any]:
        return _with_handed_on(self, super().__getstate__())

    def _init_state(self, param: Tensor) -> dict[str, Tensor]:
        state = self.state[param]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            _take_inherited_rule_state(self, param, state)
        return state

    def check_step(self) -> None:
        """Raise what the next step would raise before it changes any group: a setting edited out of range since its
        group was checked (by a scheduler or a hand: a negative ``meta`` would invert the rule, a NaN ``eps`` make NaN
        weights), an ``eps`` that tensors converted since vanish in, a sparse gradient, a complex tensor to
        consolidate. :meth:`step` checks so first; a :class:`~metaspike.ChainedOptimizer` checks each of its
        optimizers so before it steps any.

        Example:
            >>> w = torch.zeros(2, requires_grad=True)
            >>> opt = MetaplasticAdam([w], meta=1.0)
            >>> opt.param_groups[0]["meta"] = -1.0
            >>> opt.check_step()
            Traceback (most recent call last):
            ...
            ValueError: a param group's meta must be a finite number in [0, 3.40282e+38], got -1.0
        """
        for group in self.param_groups:
            check_keys_kept(group, _ADAM_STEP_KEYS)
            _check_edited_consolidation(group)
            _check_adam_settings(group, "a param group's ")
            lr = group["lr"]
            if isinstance(lr, Tensor) and lr.device.type == "cpu":  # (on a GPU reading it would wait for the device)
                number_in("a param group's lr", lr.item(), 0.0, FLOAT32_MAX)
            params = [p for p in group["params"] if p.grad is not None]
            check_eps_holds({"eps": group["eps"], "params": [p for p in params if not self.state[p]]})
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("MetaplasticAdam does not support sparse gradients")
            _check_state_follows(self.state, params)
            _check_consolidated_real(group, "MetaplasticAdam")
            _refuse_bayesian_tensors(group, "MetaplasticAdam", "holds")

    @torch.no_grad()
    @torch.compiler.disable
    def step(self, closure=None):  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the loss, as in torch optimizers.

        A ``torch.compile``'d training step runs it as it is (a graph break): traced, its step count read with
        ``.item()`` gave wrong bias corrections from the third step on (torch 2.13) and every parameter's state
        recompiled the graph. Its multi-tensor update is compiled on its own (``fused=True``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.check_step()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            applies = applies_rule(group)
            consolidated = [applies and consolidates(p, group) for p in params]
            for param in _pick(params, consolidated, True):
                _metaplastic_step_(param, self._init_state(param), group)
            plain = _pick(params, consolidated, False)
            if not plain:
                continue
            states = [self._init_state(p) for p in plain]
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.device.type != "cpu" for p in plain) and not torch.jit.is_scripting()
            if foreach:
                _multi_tensor_adam(group, plain, states)
            else:
                for param, state in zip(plain, states):
                    _adam_step_(param, state, group, rule=None)
        return loss


def check_before_step(optimizer: Optimizer) -> None:
    """Raise what the next step of a metaplastic optimizer would raise about its settings, before anything changes:
    :meth:`MetaplasticAdam.check_step`, or for an optimizer :func:`metaplastic` hooked, its groups' ``meta`` and
    ``rule`` and that each group still has every setting of the optimizer's ``defaults`` that all its groups held when
    it was hooked (whose values are the optimizer's own to check; a deleted one stopped its step at a bare
    ``KeyError``); nothing for other optimizers.
    What a :class:`~metaspike.ChainedOptimizer` checks before it steps any of its optimizers.

    Example:
        >>> sgd = metaplastic(torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1), meta=1.0)
        >>> sgd.param_groups[0]["rule"] = "bogus"
        >>> check_before_step(sgd)
        Traceback (most recent call last):
        ...
        ValueError: unknown consolidation rule 'bogus'; available: cascade, none, switch, tanh
    """
    if isinstance(optimizer, MetaplasticAdam):
        optimizer.check_step()
        return
    if not getattr(optimizer, "_metaspike_hooked", False):
        return
    for group in optimizer.param_groups:
        check_keys_kept(group, getattr(optimizer, "_metaspike_group_keys", optimizer.defaults))
        _check_edited_consolidation(group)
        _check_consolidated_real(group, _owner(optimizer))
        _refuse_bayesian_tensors(group, _owner(optimizer), "holds")


def _check_edited_consolidation(group: dict[str, Any]) -> None:
    """A group's ``meta`` and ``rule`` as a step reads them, edited since the group was checked or not (a negative
    ``meta`` would invert the rule; a deleted key is named, not a bare ``KeyError``)."""
    check_keys_kept(group, ("meta", "rule"))
    check_meta(group["meta"], "a param group's meta")
    get_rule(group["rule"])


def _check_consolidated_real(group: dict[str, Any], owner: str) -> None:
    """One ``ValueError`` where ``group``'s rule acts (:func:`applies_rule`) on a complex parameter with a gradient that
    it consolidates: a complex number has no sign to keep (the rule fails inside torch otherwise, after a wrapped
    optimizer's step moved the weight)."""
    if applies_rule(group) and any(p.grad is not None and p.is_complex() and consolidates(p, group)
                                   for p in group["params"]):
        raise ValueError(f"{owner} consolidates real hidden weights; a complex parameter has no sign to keep: put it "
                         "in a group with consolidate=False")


def _pick(items: list, flags: list[bool], wanted: bool) -> list:
    return [item for item, flag in zip(items, flags) if flag == wanted]


def _adam_step_(param: Tensor, state: dict[str, Any], group: dict[str, Any], rule: Rule | None,
                update: Callable[..., Any] | None = None) -> Any:
    """One Adam step of one parameter, in place, its update passed through ``rule`` (the group's, at the group's
    ``meta``; ``None``: plain Adam); returns the rule's new state. ``update`` is :func:`_adam_update_` (default) or its
    compiled version."""
    if update is not None:  # (one compiled variant for contiguous tensors: a channels_last model's loaded state is not)
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = state[key].contiguous()
    state["step"] += 1
    step = state["step"].item()
    beta1, beta2 = group["betas"]
    rule_state = state_from_dict(rule, param, _own_rule_state(state, rule)) if rule is not None else None
    # (the compiled loop sees the tensors in their own shapes, as the eager one does: a rule of the user's own that
    # reduces over a dimension saw one flat vector there, and damped otherwise from FUSED_MIN_NUMEL weights on;
    # dynamic shapes keep one compiled variant for every size of a number of dimensions)
    tensors = _real_views(param, param.grad, state["exp_avg"], state["exp_avg_sq"])
    if update is not None and param.dim() == 0:  # (the compiled loop dropped its in-place update of 0-d float64
        tensors = tuple(t.view(1) for t in tensors)  # tensors, the weight and both moments, without a word)
    with user_rule_errors(rule, param) if rule is not None else contextlib.nullcontext():
        new_state = (update or _adam_update_)(
            *tensors,
            step_size=group["lr"] / (1 - beta1**step),
            bias_correction2_sqrt=(1 - beta2**step) ** 0.5,
            beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
            meta=group["meta"], rule=rule, rule_state=rule_state,
        )
    if rule is not None:
        _store_rule_state(state, new_state, rule)
    return new_state


def _check_state_follows(state: Any, params: list[Tensor]) -> None:
    """One ``ValueError`` where a parameter was converted to another dtype or device after its moments were made
    (``model.double()`` after a step: torch's Adam step fails inside with "expected dtype float for `end`")."""
    for p in params:
        moment = state[p].get("exp_avg") if state[p] else None
        if isinstance(moment, Tensor) and (moment.dtype != p.dtype or moment.device != p.device):
            raise ValueError(f"a parameter is {p.dtype} on {p.device} but its optimizer state {moment.dtype} on "
                             f"{moment.device}: the model was converted after the optimizer's first step; convert the "
                             "state too (optimizer.load_state_dict(optimizer.state_dict())), or make a new optimizer")


def _real_views(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Complex tensors as real views with a last dimension (re, im), as ``torch.optim.Adam`` steps them (the second
    moment then averages ``re²`` and ``im²``, not the complex ``g²``); real tensors as they are."""
    return tuple(torch.view_as_real(t) if t.is_complex() else t for t in tensors)


def _adam_update_(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *,
    step_size: float, bias_correction2_sqrt: float, beta1: float, beta2: float, eps: float,
    weight_decay: float, meta: float, rule: Rule | None, rule_state: Any,
) -> Any:
    """The update itself, written so that ``torch.compile`` can fuse it into one loop.

    With ``rule=None`` these are the operations of ``torch.optim.Adam`` (single-tensor path). With a rule
    the Adam step ``lr·m̂/(√v̂ + eps)`` goes through ``rule.step`` at ``meta`` (the step size divides
    the denominator, so that the compiled loop takes it as an input rather than recompiling every step).
    """
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    if rule is None:
        param.addcdiv_(exp_avg, denom, value=-step_size)
        return rule_state
    if denom.dtype == torch.float16:  # (its scaled denominator overflows past 65504·step_size, to an update of 0;
        denom = denom.float()  # in float32, as torch's float16 kernels compute, and as the compiled loop does)
    adam_step = (exp_avg / denom.div_(step_size)).to(param.dtype)
    update, rule_state = checked_step(rule, rule.step(param, adam_step, meta, rule_state), param)
    param.sub_(update)
    return rule_state


_compiled_update = LazyCompiled(_adam_update_, "fused MetaplasticAdam step", LARGE_TENSOR_LOOPS)


def _fuses(compiled: LazyCompiled, rule: Rule, tensors: tuple[Tensor, ...], fused: bool | None = None) -> bool:
    """Whether a consolidated weight's update runs as ``compiled``'s one loop: an elementwise rule on contiguous
    tensors, the first of at least :data:`FUSED_MIN_NUMEL` elements (``fused=True``: any size; ``False``: never),
    not of float16: the loop keeps its intermediate values (Adam's new second moment) in float32, where the separate
    operations round them to float16, whose narrow range takes a small gradient's square to 0 (a 300 x 200 layer's
    weights moved up to 0.6 apart in five steps), so a half-precision model's large layers would follow another
    trajectory than its small ones and than torch's Adam."""
    return (
        fused is not False and rule.elementwise and not compiled.broken and tensors[0].dtype != torch.float16
        and not torch.compiler.is_compiling()  # already inside a compiled region: it fuses the update itself
        and all(t.is_contiguous() for t in tensors)
        and (fused is True or tensors[0].numel() >= FUSED_MIN_NUMEL)
    )


def _metaplastic_step_(param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """A consolidated parameter's step: one compiled loop for large matrices under an elementwise rule."""
    rule = get_rule(group["rule"])
    compiled = _fuses(_compiled_update, rule, (param, param.grad), group.get("fused"))
    _adam_step_(param, state, group, rule, update=_compiled_update if compiled else None)


def _damp_(param: Tensor, old: Tensor, *, meta: float, rule: Rule, rule_state: Any) -> Any:
    """What :func:`metaplastic` does after the inner step, written so that ``torch.compile`` can fuse it into one
    loop: the step's change ``old - param`` through ``rule`` at ``meta``, and ``param`` set to ``old - update``;
    returns the rule's new state."""
    update, rule_state = checked_step(rule, rule.step(old, old - param, meta, rule_state), old)
    param.copy_(old - update)
    return rule_state


_compiled_damp = LazyCompiled(_damp_, "fused metaplastic() damping", LARGE_TENSOR_LOOPS)


def _multi_tensor_adam(group: dict[str, Any], params: list[Tensor], states: list[dict]) -> None:
    """Plain Adam on many tensors at once, as ``torch.optim.Adam(foreach=True)`` computes it."""
    beta1, beta2 = group["betas"]
    lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
    lr = lr.item() if isinstance(lr, Tensor) else lr  # (the foreach ops take their step sizes as numbers)
    views = [_real_views(p, p.grad, s["exp_avg"], s["exp_avg_sq"]) for p, s in zip(params, states)]
    params, grads, exp_avgs, exp_avg_sqs = (list(tensors) for tensors in zip(*views))  # (real views where complex)
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    step_values = [s.item() for s in steps]
    step_sizes = [(lr / (1 - beta1**t)) * -1 for t in step_values]
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, [(1 - beta2**t) ** 0.5 for t in step_values])
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)


def metaplastic(
    optimizer: Optimizer, meta: float = 1.35, rule: str | Rule = "tanh"
) -> Optimizer:
    """Add metaplastic consolidation to any torch optimizer, in place, and return it.

    Before each step (for ``step(closure)``, right after the closure's first call: its forward pass marks a hidden
    weight set by hand since the last one) the consolidated weights (see :func:`consolidates`) are remembered;
    after it, each one's change goes through the group's rule (``rule.step(old, old - new, meta, state)``) and
    the weight is set to ``old - update`` (not where ``meta`` is 0 and the rule is then the plain optimizer, as every
    built-in rule is: ``plain_at_zero``). ``meta``, ``rule`` and ``consolidate`` become param-group
    hyperparameters (groups that already set them keep them), so LR schedulers, ``state_dict()`` and
    per-layer strengths work as with the plain optimizer; a rule's state lives in ``optimizer.state``
    under ``"rule_state"``, so ``state_dict()`` saves it too. The old values are kept in one buffer per consolidated
    weight (the memory of one more copy of those weights, reused every step), and a weight of at least
    :data:`FUSED_MIN_NUMEL` elements under an elementwise rule is damped in one loop compiled on first use. The
    wrapped optimizer's own state is made by its undamped step: one that records weights or steps (ASGD's average
    ``ax``, LBFGS's curvature pairs) records what the damping then changed; one whose state comes from the gradients
    alone (SGD's momentum, Adam's moments) is not affected.

    Example:
        >>> import metaspike
        >>> model = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(4, 2)))
        >>> opt = metaplastic(torch.optim.SGD(model.parameters(), lr=0.1), meta=2.0)
        >>> model(torch.randn(3, 4)).sum().backward()
        >>> opt.step()
    """
    if not isinstance(optimizer, Optimizer):
        raise ValueError(f"optimizer must be a torch optimizer (metaplastic(torch.optim.SGD(model.parameters(), ...))), "
                         f"got {type(optimizer).__name__}")
    if getattr(optimizer, "_metaspike_hooked", False) or isinstance(optimizer, MetaplasticAdam):
        raise ValueError(f"this optimizer ({type(optimizer).__name__}) already has metaplastic consolidation: "
                         "wrapping it would consolidate every update twice")
    optimizer.defaults.setdefault("meta", check_meta(meta))
    optimizer.defaults.setdefault("rule", rule)
    optimizer.defaults.setdefault("consolidate", None)
    for group in optimizer.param_groups:
        for key in _CONSOLIDATION_KEYS:
            group.setdefault(key, optimizer.defaults[key])
        check_no_misspelled_setting(_owner(optimizer), group, optimizer.defaults)
        _check_wrapped_group(group, _owner(optimizer))
    before: dict[Tensor, Tensor] = {}
    # one buffer per consolidated weight for the step's old values, kept from step to step: a fresh copy each step
    # paged in its memory anew (4.7 ms of a 2048 x 2048 layer's step, four times SGD's whole step)
    buffers: dict[Tensor, Tensor] = {}

    def remember(opt: Optimizer) -> None:
        # every consolidated weight, with a gradient yet or not (the inner step skips those without one)
        before.clear()
        check_before_step(opt)
        for group in opt.param_groups:
            if applies_rule(group):
                for p in group["params"]:
                    if consolidates(p, group):
                        buffer = buffers.get(p)
                        layout = (p.shape, p.dtype, p.device)
                        if buffer is None or (buffer.shape, buffer.dtype, buffer.device) != layout:
                            buffer = buffers[p] = torch.empty_like(p)
                        before[p] = buffer.copy_(p.detach())

    def remember_before_step(opt: Optimizer, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        return _after_the_closure(functools.partial(remember, opt), args, kwargs)

    @torch.no_grad()
    def damp(opt: Optimizer, args: Any, kwargs: Any) -> None:
        for group in opt.param_groups:
            rule = get_rule(group["rule"])
            for p in group["params"]:
                old = before.get(p)
                if old is None or p.grad is None:  # (the inner step skipped a weight without a gradient)
                    continue
                state = opt.state[p]
                _take_inherited_rule_state(opt, p, state)
                rule_state = state_from_dict(rule, old, _own_rule_state(state, rule))
                # (a large weight under an elementwise rule: one compiled loop, not about nine passes over it: 20-30x
                # plain SGD's step on a 2048 x 2048 layer)
                damp_ = _compiled_damp if _fuses(_compiled_damp, rule, (p, old)) else _damp_
                with user_rule_errors(rule, p):
                    new_state = damp_(p, old, meta=group["meta"], rule=rule, rule_state=rule_state)
                _store_rule_state(state, new_state, rule)
        before.clear()

    optimizer.register_step_pre_hook(remember_before_step)
    damping = optimizer.register_step_post_hook(damp)
    # the damping is part of the step: it runs before the post-hooks registered earlier (an average of the weights
    # kept by such a hook recorded the undamped weights, which never existed)
    optimizer._optimizer_step_post_hooks.move_to_end(damping.id, last=False)
    _hook_checkpoints(optimizer)
    # (no hook or attribute refers to the optimizer itself, which would hold it, and the buffers of its old values,
    # in a reference cycle past its last use, until the garbage collector ran: a weight's copy per optimizer dropped)
    add, owner = type(optimizer).add_param_group, weakref.ref(optimizer)
    optimizer.add_param_group = lambda param_group: _add_checked(  # type: ignore[method-assign]
        owner(), functools.partial(add, owner()), param_group)
    optimizer._metaspike_hooked = True  # type: ignore[attr-defined]
    # (what each group must keep: the settings every group holds now; torch's __setstate__, which load_state_dict and
    # a copy run, adds "differentiable" to the defaults of LBFGS and Adafactor, whose groups never hold it)
    optimizer._metaspike_group_keys = tuple(  # type: ignore[attr-defined]
        key for key in optimizer.defaults if all(key in group for group in optimizer.param_groups))
    optimizer.__class__ = _copied_with_hooks(type(optimizer))
    warn_at_first_step_if_nothing_consolidated(optimizer)
    return optimizer


_INHERITED = "_metaspike_inherited_rule_states"
"""The attribute of an optimizer that holds the rule states :func:`inherit_rule_states` handed it, by parameter, until
its first step of each parameter takes them (its state dict holds them under :data:`_HANDED_ON`; a copy or a pickle
keeps them: :func:`_with_handed_on`)."""
_HANDED_ON = "inherited_rule_states"
"""The key of a metaplastic optimizer's state dict under which the rule states handed on and not yet taken are saved,
by parameter index (not in its ``"state"``: torch's optimizers take a parameter's state that is not empty as one
they made)."""


def _with_handed_on(optimizer: Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """``state``, what torch's ``__getstate__`` gives for ``optimizer``, with the rule states handed on to it and not
    yet taken: torch's ``__setstate__`` puts them back in place in a copy or an unpickled optimizer."""
    handed = optimizer.__dict__.get(_INHERITED)
    return {**state, _INHERITED: handed} if handed else state


def _parts(optimizer: Optimizer) -> list[Optimizer]:
    """The optimizers ``optimizer`` steps: those of a :class:`~metaspike.ChainedOptimizer` (its ``optimizers``), or
    itself."""
    parts = getattr(optimizer, "optimizers", None)
    return list(parts) if isinstance(parts, list) else [optimizer]


def _rules_by_param(optimizer: Optimizer) -> dict[Tensor, Rule]:
    """Each parameter of a metaplastic group of ``optimizer`` (or of its parts), with its group's rule."""
    return {p: get_rule(group["rule"]) for part in _parts(optimizer) for group in part.param_groups
            if "rule" in group and "meta" in group for p in group["params"]}


def inherit_rule_states(optimizer: Optimizer, previous: Optimizer) -> int:
    """Hand ``optimizer`` the consolidation rules' states (``"rule_state"``) that ``previous`` keeps, for each parameter
    both train under the same rule with the same settings; returns how many it handed on.

    A rule's state is the synapse's own (switch's counters, cascade's chain), while Adam's moments are the optimizer's:
    a new optimizer made for a new task (as the continual trainer's ``optimizer="per-task"`` does) continues each
    synapse's state instead of starting it anew. ``optimizer`` takes a state at its first step of the parameter (a
    torch optimizer makes a parameter's state there; until then its ``state_dict()``, a copy or a pickle keeps the
    state); a state ``previous`` was handed and never took passes on as well. Either may be a
    :class:`~metaspike.ChainedOptimizer`.

    Example:
        >>> w = torch.nn.Parameter(torch.randn(4, 3))
        >>> old = MetaplasticAdam([{"params": [w], "consolidate": True}], meta=1.0, rule="switch")
        >>> w.grad = torch.ones_like(w); old.step()
        >>> new = MetaplasticAdam([{"params": [w], "consolidate": True}], meta=1.0, rule="switch")
        >>> inherit_rule_states(new, old)
        1
    """
    for name, value in (("optimizer", optimizer), ("previous", previous)):
        if not all(isinstance(getattr(part, "param_groups", None), list) for part in _parts(value)):
            raise ValueError(f"inherit_rule_states: {name} must be a torch optimizer or a ChainedOptimizer, "
                            f"got {type(value).__name__}")
    wanted, before = _rules_by_param(optimizer), _rules_by_param(previous)
    handed: dict[Tensor, dict[str, Tensor]] = {}
    for part in _parts(previous):
        pending = getattr(part, _INHERITED, {})
        for p, rule in wanted.items():
            # (its own state where it stepped the parameter under the rule, else what it was handed and never took:
            # a step at meta = 0, or a wrapped optimizer's own state for the parameter, holds no rule state; a state
            # made under a rule the group had before is the former rule's)
            own = _own_rule_state(part.state[p], before[p]) if p in part.state and p in before else None
            stored = own or pending.get(p)
            if stored and p in before and same_rule(before[p], rule) and _keeps(rule, stored):
                handed[p] = {name: value.clone() for name, value in stored.items()}  # (never shared by the two)
    for part in _parts(optimizer):
        own = {p for group in part.param_groups for p in group["params"]}
        setattr(part, _INHERITED, {p: state for p, state in handed.items() if p in own})
    return len(handed)


def _take_inherited_rule_state(optimizer: Optimizer, param: Tensor, state: dict[str, Any]) -> None:
    """Put the rule state :func:`inherit_rule_states` handed ``optimizer`` for ``param`` into its ``state`` (once, where
    the state holds none of its own)."""
    inherited = getattr(optimizer, _INHERITED, None)
    if inherited and param in inherited:
        stored = inherited.pop(param)
        state.setdefault("rule_state", stored)


def _after_the_closure(then: Callable[[], None], args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
    """Run ``then`` now, before a step without a closure; for ``step(closure)`` (``args``, ``kwargs`` as an optimizer's
    step pre-hook gets them: ``args[0]`` is the optimizer), the step's arguments with a closure that runs ``then``
    right after the closure's first call, before the step changes any weight. A closure's forward pass marks a hidden
    weight set by hand (:func:`metaspike.synapse.mark_hidden_weight`), so what is consolidated is decided after it,
    as in :meth:`MetaplasticAdam.step`."""
    closure = kwargs["closure"] if "closure" in kwargs else args[1] if len(args) > 1 else None
    if closure is None:
        then()
        return None
    called = False

    def closure_then() -> Any:
        nonlocal called
        loss = closure()
        if not called:
            called = True
            then()
        return loss

    if "closure" in kwargs:
        return args, {**kwargs, "closure": closure_then}
    return (args[0], closure_then, *args[2:]), kwargs


class _KeepsHooksWhenCopied:
    """Mixin of an optimizer that :func:`metaplastic` hooked: torch copies and pickles an optimizer without its
    hooks, so a copy would step without consolidation, silently; this one is rebuilt and hooked again."""

    _refuses_synapse_tensors = True  # (REFUSES_SYNAPSE_TENSORS: check_before_step refuses them in its own words)

    def __getstate__(self) -> dict[str, Any]:
        return _with_handed_on(self, super().__getstate__())  # type: ignore[misc]

    def __reduce__(self) -> tuple[Any, ...]:
        # the optimizer's own class is the hooked class's second base (see _copied_with_hooks)
        return _hooked_again, (type(self).__bases__[1], self.__getstate__())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The optimizer's own ``load_state_dict``, after :func:`~metaspike.optimizer_state.refuse_non_mapping`."""
        refuse_non_mapping(state_dict)
        super().load_state_dict(state_dict)  # type: ignore[misc]


_HOOKED_CLASSES: dict[type, type] = {}


def _copied_with_hooks(cls: type) -> type:
    """``cls`` with :class:`_KeepsHooksWhenCopied` (one class per optimizer class; same name)."""
    if issubclass(cls, _KeepsHooksWhenCopied):
        return cls
    if cls not in _HOOKED_CLASSES:
        _HOOKED_CLASSES[cls] = type(cls.__name__, (_KeepsHooksWhenCopied, cls),
                                    {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return _HOOKED_CLASSES[cls]


def _hooked_again(cls: type, state: dict[str, Any]) -> Optimizer:
    """A copy or unpickled :func:`metaplastic` optimizer: its state, hooked again (its groups keep their meta)."""
    optimizer = cls.__new__(cls)
    optimizer.__setstate__(state)
    return metaplastic(optimizer)


def param_groups(
    model: nn.Module, meta: float | Sequence[float], gain_lr: float | None = None
) -> list[dict[str, Any]]:
    """Param groups that say which parameters are consolidated, each weight layer with its own ``meta``.

    The consolidated groups (``consolidate=True``, one per layer, in model order, ``meta`` one value
    for all or one per layer) hold the hidden weights of the binary synapses, or, in a model without
    any, the weight of every layer :func:`metaspike.binarize` would select (Linear and Conv layers: the
    full-precision variant; recurrent cells, embeddings and a neuron's parameters are not among them). A last group
    holds every other parameter with ``consolidate=False`` and ``meta=0``. A weight shared by two
    layers is listed once. With ``gain_lr``, the learned output gains (:class:`metaspike.gain.OutputGain`) get a
    group of their own before that last one, with that learning rate: under SGD a gain needs a smaller one than
    the weights (about ``lr / √fan_in``; see :class:`~metaspike.gain.OutputGain`).

    Example:
        >>> from bnn import MLP
        >>> groups = param_groups(MLP([784, 100, 100, 10]), [2.0, 1.0, 0.5])
        >>> [(g["meta"], g["consolidate"]) for g in groups]
        [(2.0, True), (1.0, True), (0.5, True), (0.0, False)]
        >>> import metaspike
        >>> net = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)))
        >>> [(len(g["params"]), g.get("lr")) for g in param_groups(net, 1.35, gain_lr=0.005)]
        [(1, None), (1, None), (2, 0.005), (2, None)]
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module (param_groups(model, meta)), got {type(model).__name__}")
    if next(bayesian_modules(model), None) is not None:
        raise ValueError("the model has Bayesian synapses (bayesianize, bnn's Bayesian layers), and param_groups, "
                         "MetaplasticAdam and bnn.fit train binary synapses only: " + BAYESIAN_ADVICE)
    named = weight_matrices(model)  # (each tensor once)
    matrices = [w for _, w in named]
    if not is_number(meta) and (isinstance(meta, (str, bytes, Tensor)) or not isinstance(meta, Iterable)):
        raise ValueError(f"meta must be a number or a list of numbers, one per weight layer, got {meta!r}")
    if is_number(meta):
        metas = [check_meta(meta)] * len(matrices)
    else:
        metas = [check_meta(m, "meta") for m in meta]  # type: ignore[union-attr]
        if len(metas) != len(matrices):
            raise ValueError(f"got {len(metas)} meta values but the model has {len(matrices)} weight layers "
                             f"({listed([name for name, _ in named], 12)}, in this order); give one value or one per "
                             "layer")
    groups: list[dict[str, Any]] = [{"params": [w], "meta": m, "consolidate": True} for w, m in zip(matrices, metas)]
    chosen = {id(w) for w in matrices}
    if gain_lr is not None:
        number_in("gain_lr", gain_lr, 0.0, FLOAT32_MAX)
        gains = each_once(gain.alpha for gain in model.modules() if isinstance(gain, OutputGain))
        if not gains:
            raise ValueError("gain_lr is given but the model has no learned output gains (metaspike.binarize adds them "
                             "unless scale=None)")
        groups.append({"params": gains, "meta": 0.0, "consolidate": False, "lr": gain_lr})
        chosen |= {id(g) for g in gains}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    if rest:
        groups.append({"params": rest, "meta": 0.0, "consolidate": False})
    return groups
