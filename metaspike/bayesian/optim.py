"""Optimizers for Bayesian synapses: :class:`MESU` (Gaussian weights) and :class:`BiMU` (binary weights).

Both are ``torch.optim.Optimizer`` subclasses with param groups (each group may set its own
hyperparameters), per-parameter state and ``state_dict()`` / ``load_state_dict()``. They apply the
rules of :mod:`metaspike.bayesian.functional` to all parameters of a group at once.

* A step in which **every** gradient (all parameters of all groups) is zero or ``None`` changes
  nothing: without data there is no forgetting (the prior term alone would pull the weights back).
  Otherwise, as in torch's optimizers, parameters whose gradient is ``None`` are skipped, and the
  others, zero gradients included, are updated (their prior term acts).
* The optimizers update only the Bayesian tensors they are given; biases and norm layers are left
  alone: train :func:`~metaspike.bayesian.synapses.plain_parameters` with any torch optimizer.
* The state of each parameter is ``step``, the number of updates it received.
* A setting may be given as a 0-d tensor (as torch's optimizers take ``lr``); a group keeps its number.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from metaspike.bayesian.functional import (
    _check_step_tensors,
    bimu_step_,
    check_hyperparameters,
    hyperparameter_defaults,
    hyperparameter_names,
    mesu_step_,
)
from metaspike.bayesian.plain_optimizers import BAYESIAN_ADVICE, ROLE_NAMES, roles_held
from metaspike.bayesian.synapses import synapse_role
from metaspike.caller import user_stacklevel
from metaspike.checks import TrainingDiverged, check_keys_kept, check_no_misspelled_setting, is_whole
from metaspike.layer_selection import synapse_of
from metaspike.optimizer_state import (
    HookedAgainWhenCopied,
    check_state_dict_groups,
    check_states_listed,
    check_step_count,
    own_state_tensors,
    with_tensor_steps,
)
from metaspike.synapse import is_hidden_weight

__all__ = ["MESU", "BiMU", "settings_for_batch", "check_synapse_optimizers", "BAYESIAN_ADVICE"]


def _any_gradient(groups: list[dict[str, Any]]) -> bool:
    """Whether any parameter of ``groups`` has a gradient with a nonzero (or NaN) entry, or one on the meta device
    (which holds shapes without values: the step runs there on shapes, as torch's optimizers do).

    Checked tensor by tensor, smallest first, and lazily: a training step stops at its first
    gradient with data, so it typically reads one small tensor and syncs once; only a step without
    data reads them all.
    """
    grads = sorted((p.grad for group in groups for p in group["params"] if p.grad is not None), key=Tensor.numel)
    return any(g.is_meta or bool(g.any()) for g in grads)


#: What a step without the gradients it expects says once per optimizer (a Bayesian synapse in evaluation mode shows
#: its mode or a fixed sample, which carries no gradient to λ or σ).
_EVAL_MODE_HINT = ("a Bayesian synapse in evaluation mode gives none (call model.train() before the training passes, "
                   "and model.eval() only to evaluate)")


def _warn_once(optimizer: Optimizer, what: str, message: str) -> None:
    """``message`` as a ``UserWarning``, the first time ``optimizer`` meets the case ``what``."""
    warned = optimizer.__dict__.setdefault("_warned", set())
    if what not in warned:
        warned.add(what)
        warnings.warn(message, UserWarning, stacklevel=user_stacklevel())


def _first_non_finite(tensors: list[Tensor]) -> int | None:
    """The index of the first of ``tensors`` (dense, not on the meta device) that holds a NaN or infinite value, else
    ``None``. Their 2-norms come in one fused call and one sync (a NaN or infinity makes a norm so; a norm that
    merely overflows is checked entry by entry before anything is said)."""
    if not tensors:
        return None
    norms = torch._foreach_norm(tensors)
    finite = torch.stack([norm.to(norms[0].device) for norm in norms]).isfinite()
    if bool(finite.all()):
        return None
    return next((k for k in (~finite).nonzero().flatten().tolist() if not bool(tensors[k].isfinite().all())), None)


def _checkable(groups: list[dict[str, Any]],
               tensor_of: Callable[[Tensor], Tensor | None]) -> list[tuple[int, int, Tensor]]:
    """``(group index, parameter index, tensor_of(parameter))`` wherever that tensor exists, is dense and holds values
    (sparse gradients are left to the rule's check, which names them; the meta device holds no values)."""
    found = [(g, i, tensor_of(p)) for g, group in enumerate(groups) for i, p in enumerate(group["params"])]
    return [(g, i, t) for g, i, t in found if t is not None and t.layout == torch.strided and not t.is_meta]


def _refuse_non_finite_gradients(optimizer: str, groups: list[dict[str, Any]]) -> None:
    """:class:`TrainingDiverged` naming the first parameter whose gradient holds NaN or infinite values."""
    places = _checkable(groups, lambda p: p.grad)
    k = _first_non_finite([t for _, _, t in places])
    if k is not None:
        g, i, _ = places[k]
        raise TrainingDiverged(f"{optimizer}.step: the gradient of parameter {i} of param group {g} holds NaN or "
                               f"infinite values; {optimizer} changed nothing")


def _refuse_non_finite_results(optimizer: str, groups: list[dict[str, Any]], updated: set[int]) -> None:
    """:class:`TrainingDiverged` naming the first parameter that a step (on finite gradients) left NaN or infinite:
    settings each in range whose product passes what the dtype holds (``likelihood_multiplier × lr``, say). Checked
    after the update (before it, a copy of every tensor would be needed at every step): the tensor holds the values,
    and the message says so."""
    places = _checkable(groups, lambda p: p if id(p) in updated else None)
    k = _first_non_finite([t.detach() for _, _, t in places])
    if k is not None:
        g, i, t = places[k]
        raise TrainingDiverged(f"{optimizer}.step: the update of parameter {i} of param group {g} made NaN or infinite "
                               f"values from finite gradients: the group's settings scale the update past what "
                               f"{t.dtype} holds (lower them, and restore the tensor: it holds those values now)")


def _count_steps(optimizer: Optimizer, params: list[Tensor]) -> None:
    steps = []
    for p in params:
        state = optimizer.state[p]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
        steps.append(state["step"])
    torch._foreach_add_(steps, 1.0)


def _settings_as_numbers(rule: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``settings`` in which each of ``rule``'s hyperparameters given as a 0-d real tensor is its number (a
    scheduler then sets numbers, as for a number); a tensor of another shape or kind is refused in one line."""
    numbers = dict(settings)
    for name in hyperparameter_names(rule):
        value = numbers.get(name)
        if isinstance(value, Tensor):
            if value.dim() != 0 or value.is_complex() or value.dtype == torch.bool or value.is_meta:
                raise ValueError(f"{name} must be a number or a 0-d real tensor holding one, got a {value.dtype} "
                                 f"tensor of shape {tuple(value.shape)}{' on the meta device' * value.is_meta}")
            numbers[name] = value.item()
    return numbers


def _check_floating(optimizer: str, params: list[Tensor]) -> None:
    """Refuse a tensor that is not a dense floating-point tensor, in the words of the step's own check (the step would
    otherwise fail inside torch, in the check of its gradients)."""
    try:
        _check_step_tensors(params=params)
    except ValueError as err:
        raise ValueError(f"{optimizer} {err}") from None


def _group_items(param_group: dict[str, Any]) -> tuple[list[Any], list[Tensor]]:
    """A group's ``params`` as a list (a generator read once) and their tensors: ``model.named_parameters()`` lists
    ``(name, tensor)`` pairs, whose names torch keeps as the group's ``param_names``."""
    params = param_group["params"]
    items = [params] if isinstance(params, Tensor) else list(params)
    return items, [item[1] if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) else item
                   for item in items]


def _check_roles(optimizer: str, roles: tuple[str, ...], params: list[Tensor], helper: str, marked: bool) -> None:
    """Refuse a model's other parameters beside its synapses: where any tensor of ``params`` is marked as a synapse
    tensor (:func:`~metaspike.bayesian.synapses.synapse_role`), or the optimizer's other groups hold marked tensors
    (``marked``), each must be the one ``roles`` expects at its place (they repeat: ``("mean", "width")`` for MESU's
    pairs). Tensors without marks (made by hand) are taken as given, except the hidden weights of binary synapses
    (:func:`~metaspike.synapse.is_hidden_weight`): a model made binary, not Bayesian."""
    found = [synapse_role(p) for p in params]
    binary = next((i for i, p in enumerate(params) if found[i] is None and is_hidden_weight(p)), None)
    if binary is not None:
        raise ValueError(
            f"{optimizer} params: tensor {binary} is the hidden weight of a binary synapse (metaspike.binarize, bnn "
            f"layers), which {optimizer} does not train: make the synapses Bayesian with metaspike.bayesianize(model, "
            f"{optimizer.lower()!r}) and pass {helper}(model)"
        )
    if not marked and all(role is None for role in found):
        return
    wrong = [(i, role) for i, role in enumerate(found) if role != roles[i % len(roles)]]
    if not wrong:
        return
    i, role = wrong[0]
    what = f"a {ROLE_NAMES[role]}" if role else "not a synapse tensor (a bias, gain or norm layer's parameter?)"
    expected = ROLE_NAMES[roles[i % len(roles)]]
    raise ValueError(
        f"{optimizer} params: {len(wrong)} of {len(params)} tensors are not in place; tensor {i} is {what} where a "
        f"{expected} belongs. Pass {helper}(model), and train plain_parameters(model) with a torch optimizer "
        "(metaspike.ChainedOptimizer runs both)"
    )


def _check_loaded_groups(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Validate the hyperparameters of a state dict's groups before they are installed (a file from outside): each
    group must hold every setting of the optimizer's rule (torch installs the groups as they are; another
    optimizer's state dict has other settings, and its first step would fail on a missing key). A setting the
    rule lets a group leave out takes its default (MESU's ``lr``, in state dicts written before it existed), in
    copies of the groups: the caller's state dict is left as it was."""
    defaults = hyperparameter_defaults(optimizer.rule)
    groups = [{**defaults, **group} for group in check_state_dict_groups(optimizer, state_dict)]
    for group in groups:
        missing = [key for key in hyperparameter_names(optimizer.rule) if key not in group]
        if missing:
            raise ValueError(f"state_dict: its param groups lack {', '.join(missing)}: it is not the state dict of a "
                             f"{type(optimizer).__name__} optimizer")
        check_hyperparameters(optimizer.rule, group)
    state = with_tensor_steps(state_dict.get("state", {}))
    listed = {index for group in groups for index in group.get("params", ())}
    _check_step_counts(type(optimizer).__name__, state, listed)
    return {**state_dict, "param_groups": groups, **({"state": state} if "state" in state_dict else {})}


def _check_step_counts(name: str, state: Any, listed: set[Any]) -> None:
    """A loaded state of MESU or BiMU keeps a step count per listed parameter and nothing else (its first step would
    fail inside torch on a count that is no tensor, and count on in a vector from one of two entries)."""
    check_states_listed(state, listed)
    for index, entry in state.items():
        if not isinstance(entry, dict) or set(entry) - {"step"}:
            found = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
            raise ValueError(f"state_dict: parameter {index!r}'s state holds {found}, but {name} keeps a step count "
                             "only: is it another optimizer's state dict?")
        if "step" in entry:
            check_step_count(f"state_dict: parameter {index!r}'s step", entry["step"])


def check_synapse_optimizers(optimizer: Any, model: nn.Module | None = None) -> None:
    """Refuse an optimizer, or an optimizer of a :class:`metaspike.ChainedOptimizer`, other than MESU and BiMU that
    holds tensors of Bayesian synapses: it would train BiMU's ``λ`` or MESU's ``μ, σ`` as plain weights (they do not
    learn so, and ``σ`` may turn negative), silently; and, given the ``model`` it trains, a MESU or BiMU that holds
    none but a torch layer's own weight or bias (a model never made Bayesian, whose plain weights it would train;
    tensors of one's own module, made by hand, are taken as given). What a trainer checks its optimizer with.

    Example:
        >>> from metaspike.bayesian import bayesianize
        >>> model = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 2)), "bimu", scale=None)
        >>> check_synapse_optimizers(torch.optim.Adam(model.parameters()))
        Traceback (most recent call last):
        ...
        ValueError: Adam holds the BiMU latent weight tensors of Bayesian synapses, which it would train as plain weights; train them with their own optimizers, metaspike.BiMU(bimu_parameters(model)) or metaspike.MESU(mesu_param_groups(model)), and the rest with metaspike.ChainedOptimizer
    """
    for part in getattr(optimizer, "optimizers", None) or [optimizer]:
        if isinstance(part, _DataGatedOptimizer):
            layer = None if model is None or roles_held(part) else _plain_layer_trained(part, model)
            if layer is not None:  # (on a model never made Bayesian it trained the plain weights and biases, silently)
                name = type(part).__name__
                raise ValueError(f"{name} holds no Bayesian synapse tensors but the plain parameters of the model's "
                                 f"layer {layer}: make the synapses Bayesian with metaspike.bayesianize(model, "
                                 f"{name.lower()!r}) and pass {part.helper}(model)")
            continue
        _refuse_synapse_tensors(part)


def _refuse_synapse_tensors(optimizer: Optimizer) -> None:
    """One ``ValueError`` where ``optimizer`` (not MESU or BiMU) holds tensors of Bayesian synapses."""
    roles = roles_held(optimizer)
    if roles:
        raise ValueError(f"{type(optimizer).__name__} holds the {roles} tensors of Bayesian synapses, which it would "
                         f"train as plain weights; {BAYESIAN_ADVICE}")


def _plain_layer_trained(optimizer: Optimizer, model: nn.Module) -> str | None:
    """The name and class of the first of ``model``'s torch layers (of ``torch.nn``'s layer classes, Linear, Conv2d,
    ..., or a subclass of one) whose weight or bias ``optimizer`` holds, e.g. ``'1' (Linear)``; ``None`` where it holds
    none."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, module in model.named_modules():
        torch_layer = any(kind is not nn.Module and kind.__module__.startswith("torch.nn.modules.")
                          for kind in type(module).__mro__)  # (a subclass of one's own of nn.Linear too)
        if torch_layer and any(id(p) in held for p in module.parameters(recurse=False)):
            return f"{name!r} ({type(module).__name__})"
    return None


class _DataGatedOptimizer(HookedAgainWhenCopied, Optimizer):
    """What MESU and BiMU share: hyperparameters validated for every group (also those of a loaded state dict, in a
    copy too: :class:`~metaspike.optimizer_state.HookedAgainWhenCopied`), and a step that changes nothing when no
    parameter has a nonzero gradient. A subclass names its ``rule`` and implements :meth:`_update_group`."""

    _refuses_synapse_tensors = True  # (REFUSES_SYNAPSE_TENSORS: it trains them)
    rule: str
    roles: tuple[str, ...]
    """What the tensors of a group are, repeating (checked where they carry marks: :func:`_check_roles`)."""
    helper: str

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        defaults = _settings_as_numbers(self.rule, defaults)
        check_hyperparameters(self.rule, defaults)
        super().__init__(params, defaults)
        self._add_hooks()

    def _add_hooks(self) -> None:
        """A state dict's groups are checked before they are installed (:func:`_check_loaded_groups`); the loaded
        state gets memory of its own (:func:`~metaspike.optimizer_state.own_state_tensors`)."""
        self.register_load_state_dict_pre_hook(_check_loaded_groups)
        self.register_load_state_dict_post_hook(own_state_tensors)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its hyperparameters are validated first, and no tensor may be listed twice (a
        tied weight would be updated twice a step)."""
        if isinstance(param_group, dict):  # (what else it is, the checks below name)
            check_no_misspelled_setting(type(self).__name__, param_group, self.defaults)
        param_group = _settings_as_numbers(self.rule, param_group)
        check_hyperparameters(self.rule, {**self.defaults, **param_group})
        items, params = _group_items(param_group)
        if len({id(p) for p in params}) < len(params):
            raise ValueError("params lists a tensor more than once (tied weights?); list each tensor once, as "
                             "bimu_parameters and mesu_param_groups do")
        earlier = [p for group in self.param_groups for p in group["params"]]
        marked = any(synapse_role(p) is not None for p in earlier)
        if not marked and earlier and any(synapse_role(p) is not None for p in params):
            # the earlier groups were taken as hand-made tensors; beside synapses they are a model's other parameters
            _check_roles(type(self).__name__, self.roles, earlier, self.helper, True)
        _check_roles(type(self).__name__, self.roles, params, self.helper, marked)
        self._check_tensors(params)
        super().add_param_group({**param_group, "params": items})

    def _check_tensors(self, params: list[Tensor]) -> None:
        """A group's tensors: dense floating-point ones (:func:`_check_floating`), and what this rule asks of them
        (:meth:`_check_params`)."""
        _check_floating(type(self).__name__, params)
        self._check_params(params)

    def _check_params(self, params: list[Tensor]) -> None:
        """Checks of a group's tensors that only one rule has (none by default)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter with a gradient; nothing changes if all gradients are zero.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Raises:
            ValueError: a param group's setting is out of range (see :meth:`check_step`).
            TrainingDiverged: a gradient holds NaN or infinite values (nothing is changed: a NaN latent weight would
                read as a plausible ±1 weight in evaluation, where the sign of NaN is +1), or the update of finite
                gradients made some (settings whose product passes what the dtype holds; the tensor holds them).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.check_step()
        if _any_gradient(self.param_groups):
            updated = []
            for group in self.param_groups:
                updated_here = self._update_group(group)
                if updated_here:
                    _count_steps(self, updated_here)
                updated += updated_here
            _refuse_non_finite_results(type(self).__name__, self.param_groups, {id(t) for t in updated})
        elif all(p.grad is None for group in self.param_groups for p in group["params"]):
            held = [p for group in self.param_groups for p in group["params"]]
            why = ("every one is frozen (requires_grad=False); unfreeze what should learn, e.g. "
                   "model.requires_grad_(True)" if not any(p.requires_grad for p in held)
                   else f"no backward pass since zero_grad?; {_EVAL_MODE_HINT}")
            _warn_once(self, "no gradient", f"{type(self).__name__}.step: none of its tensors has a gradient, so "
                       f"nothing changed ({why})")
        return loss

    def check_step(self) -> None:
        """Raise what the next step would raise before it changes anything: a ``ValueError`` where a param group's
        setting is out of range (every group, before any is updated: one edited since it was checked, by a scheduler
        or a hand), a :class:`~metaspike.checks.TrainingDiverged` where a gradient holds NaN or infinite values.
        :meth:`step` checks so first; a :class:`~metaspike.ChainedOptimizer` checks each of its MESU and BiMU
        optimizers so before it steps any.

        Example:
            >>> lam = torch.zeros(2, requires_grad=True)
            >>> opt = BiMU([lam])
            >>> lam.grad = torch.tensor([float("nan"), 0.0])
            >>> opt.check_step()
            Traceback (most recent call last):
            ...
            metaspike.checks.TrainingDiverged: BiMU.step: the gradient of parameter 0 of param group 0 holds NaN or infinite values; BiMU changed nothing
        """
        for group in self.param_groups:
            check_keys_kept(group, hyperparameter_names(self.rule))  # (a deleted lr read as its default, 1, silently)
            check_hyperparameters(self.rule, group)
            self._check_tensors(group["params"])  # (a tensor appended to a group by hand since)
        _refuse_non_finite_gradients(type(self).__name__, self.param_groups)

    def _update_group(self, group: dict[str, Any]) -> list[Tensor]:
        """Apply the rule to ``group``; return the parameters it updated."""
        raise NotImplementedError


class MESU(_DataGatedOptimizer):
    """MESU, Metaplasticity from Synaptic Uncertainty (Bonnet et al. 2025), for Gaussian synapses.

    Each group's ``params`` alternate means and widths, ``[μ_1, σ_1, μ_2, σ_2, ...]``, as
    :func:`~metaspike.bayesian.synapses.mesu_param_groups` builds them; ``σ_i`` has the shape of
    ``μ_i``. The gradients of a training pass through the sample ``w = μ + σ·ε`` update them by
    :func:`~metaspike.bayesian.functional.mesu_step_`.

    Published settings: the 200-task run of the paper uses ``sigma_prior=1, N=300_000``; the authors'
    JAX version ``sigma_prior=0.2, N=1e5, lr_mu=lr_sigma=1``.

    The width's sign does not matter (a weight is ``N(μ, σ²)``, and the rule maps ``−σ`` as it maps ``σ``), but a
    step with a large gradient can carry ``σ`` across zero, where its learning rate ``σ²`` vanishes and the
    weight stops learning. ``clamp_grad = c > 0`` bounds ``σ²|∂L/∂σ|`` by ``c·σ``, so a step changes ``σ`` by at
    most ``η_σ·c/2`` of itself (plus the small prior term): with ``η_σ·c < 2`` it keeps its sign. The long-stream
    settings use ``c = 0.36``; with ``clamp_grad = 0`` watch ``σ`` when the loss is large.

    A group's ``lr`` multiplies both learning rates (1 by default). It is what torch's learning-rate schedulers
    change, so ``torch.optim.lr_scheduler.StepLR(MESU(...), 10, gamma=0.5)`` halves ``η_μ`` and ``η_σ`` together
    every 10 epochs.

    Args:
        params: ``μ, σ`` pairs as above, or param groups of them.
        lr_mu, lr_sigma: ``η_μ, η_σ >= 0``.
        lr: a factor ``>= 0`` on both.
        sigma_prior: prior width ``σ_p > 0``.
        mu_prior: prior mean ``μ_p``.
        N: memory window ``>= 1`` (in samples): the prior term is divided by ``N``, so the posterior keeps roughly the
            last ``N`` likelihood terms (one per step for a batch-mean loss).
        clamp_grad: ``c >= 0``; gradients are clipped to ``±c/σ`` first; ``0`` does not clip.

    Example:
        >>> from metaspike.bayesian.synapses import bayesianize, mesu_param_groups
        >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False)), "mesu")
        >>> opt = MESU(mesu_param_groups(net), sigma_prior=0.1, N=1e5)
        >>> net(torch.randn(3, 4)).pow(2).mean().backward()
        >>> opt.step()
    """

    rule = "mesu"
    roles = ("mean", "width")
    helper = "mesu_param_groups"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr_mu: float = 1.0,
        lr_sigma: float = 1.0,
        sigma_prior: float = 0.1,
        mu_prior: float = 0.0,
        N: float = 100_000,
        clamp_grad: float = 0.0,
        lr: float = 1.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, lr_mu=lr_mu, lr_sigma=lr_sigma, sigma_prior=sigma_prior,
                                      mu_prior=mu_prior, N=N, clamp_grad=clamp_grad))

    def _check_params(self, params: list[Tensor]) -> None:
        """A group's tensors must pair means and widths of one shape.

        Example:
            >>> opt = MESU([torch.zeros(2, requires_grad=True), torch.ones(2, requires_grad=True)])
            >>> opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)]})
            Traceback (most recent call last):
            ...
            ValueError: params must alternate means and widths (mu_1, sigma_1, mu_2, ...), got 1 tensors; a model made Bayesian by metaspike.bayesianize(model, 'mesu') gives them as mesu_param_groups(model)
        """
        hint = "; a model made Bayesian by metaspike.bayesianize(model, 'mesu') gives them as mesu_param_groups(model)"
        if len(params) % 2:
            raise ValueError(
                f"params must alternate means and widths (mu_1, sigma_1, mu_2, ...), got {len(params)} tensors{hint}"
            )
        for i, (mu, sigma) in enumerate(zip(params[0::2], params[1::2])):
            if mu.shape != sigma.shape:
                raise ValueError(f"params pair {i}: the width (sigma) must have the shape of the mean (mu), got mu "
                                 f"{tuple(mu.shape)} and sigma {tuple(sigma.shape)}{hint}")
            synapses = synapse_of(mu), synapse_of(sigma)
            if None not in synapses and synapses[0] is not synapses[1]:  # (each would step by the other's sigma)
                raise ValueError(f"params pair {i}: the width (sigma) is another synapse's than the mean's (mu), "
                                 f"though of its shape{hint}")

    def _update_group(self, group: dict[str, Any]) -> list[Tensor]:
        mus, sigmas, grad_mus, grad_sigmas = [], [], [], []
        kept: list[tuple[Tensor, Tensor]] = []  # (tensor, its value): a tensor without gradient stays as it was
        params = group["params"]
        for mu, sigma in zip(params[0::2], params[1::2]):
            if mu.grad is None and sigma.grad is None:
                continue
            mus.append(mu)
            sigmas.append(sigma)
            grad_mus.append(torch.zeros_like(mu) if mu.grad is None else mu.grad)
            grad_sigmas.append(torch.zeros_like(sigma) if sigma.grad is None else sigma.grad)
            kept += [(t, t.detach().clone()) for t in (mu, sigma) if t.grad is None]  # (frozen: σ fixed, say)
            if mu.grad is not None and sigma.grad is None and sigma.requires_grad:
                _warn_once(self, "no width gradient", "MESU.step: a mean (mu) has a gradient and its width (sigma) "
                           f"none, so sigma stays as it is (freeze it with requires_grad_(False) to mean that); "
                           f"{_EVAL_MODE_HINT}")
        if mus:
            mesu_step_(mus, sigmas, grad_mus, grad_sigmas, group)
        with torch.no_grad():
            for tensor, value in kept:
                tensor.copy_(value)
        frozen = {id(t) for t, _ in kept}
        return [t for t in mus + sigmas if id(t) not in frozen]


class BiMU(_DataGatedOptimizer):
    """BiMU, Bayesian Metaplastic Update (Cottart et al. 2026), for binary synapses.

    ``params`` are the latent weights ``λ`` (see :func:`~metaspike.bayesian.synapses.bimu_parameters`);
    the gradients of a training pass through the relaxed sample update them by
    :func:`~metaspike.bayesian.functional.bimu_step_`. The defaults are those of the authors' code, for one sample
    per step: at batch size ``B`` they barely move a model (the loss is a batch mean); scale per-sample settings with
    :func:`settings_for_batch`.

    Published settings: for a 784-100-10 network with 0/1 "reverse gate" activations on 100 permuted-MNIST
    tasks at batch size 1, ``likelihood_multiplier=161.3, kl_multiplier=3.76, lr_max=0.0023, N=700, lr=4.9``
    with 5 weight samples per step (the authors' code, activation appendix).

    torch's learning-rate schedulers adjust ``lr`` (``η``); BiMU has no momentum, so ``OneCycleLR`` needs
    ``cycle_momentum=False``.

    Args:
        params: latent weights ``λ``, or param groups of them.
        lr: ``η >= 0`` (at 0 only the prior term acts).
        lr_max: ``η_max > 0``; bounds the step (the denominator is at least ``1/η_max``).
        likelihood_multiplier: ``L > 0``, scales the gradient.
        kl_multiplier: ``κ >= 0``, the strength of the pull toward the prior.
        N: memory window ``>= 1`` (in samples), divides the prior term.

    Example:
        >>> from metaspike.bayesian.synapses import bayesianize, bimu_parameters
        >>> net = bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False)))
        >>> opt = BiMU(bimu_parameters(net))
        >>> net(torch.randn(3, 4)).pow(2).mean().backward()
        >>> opt.step()
    """

    rule = "bimu"
    roles = ("latent",)
    helper = "bimu_parameters"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        lr_max: float = 1.0,
        likelihood_multiplier: float = 1.0,
        kl_multiplier: float = 1.0,
        N: float = 60_000,
    ) -> None:
        super().__init__(params, dict(lr=lr, lr_max=lr_max, likelihood_multiplier=likelihood_multiplier,
                                      kl_multiplier=kl_multiplier, N=N))

    def _update_group(self, group: dict[str, Any]) -> list[Tensor]:
        lams = [p for p in group["params"] if p.grad is not None]
        if lams:
            bimu_step_(lams, [p.grad for p in lams], group)
        return lams


_OPTIMIZERS: dict[str, type[_DataGatedOptimizer]] = {"mesu": MESU, "bimu": BiMU}


def settings_for_batch(rule: str, per_sample: Mapping[str, float], batch_size: int) -> dict[str, float]:
    """Settings of :class:`MESU` (``rule="mesu"``) or :class:`BiMU` (``"bimu"``) given for one sample per step (as
    the papers train), for steps of ``batch_size`` samples: every setting of the optimizer, the missing ones at
    its defaults.

    A loss averaged over a batch of ``B`` samples has ``1/B`` of the samples' summed gradient, and a memory window
    ``N`` counts steps, so the batch-1 settings barely move the weights at ``B = 100`` (measured: ``bimu`` and
    ``mesu`` stayed at chance or near 50 % on permuted mnist5k). Scaled here so that a step of ``B`` samples sees
    their summed evidence and ``N`` keeps counting samples:

    * **BiMU**: ``likelihood_multiplier × B`` (the summed gradient), ``N / B`` (steps);
    * **MESU**: ``lr_mu × B`` and ``lr_sigma × B`` (the summed gradient; the prior term then acts per sample, so
      ``N`` keeps counting samples) and ``clamp_grad / B``: one step moves a weight no further than one batch-1
      step may (``η c σ``); with the batch-1 bound kept, MESU diverged within 8 steps at ``B = 100``.

    MESU's bound makes a large batch learn per step no more than one sample does: a task needs enough steps (on
    digits, 1,437 images, 3 epochs, the ``mesu`` model kind, 10 weight samples a step, keeps task 1 at 17.2 % at ``B = 100``, 45 steps, and reaches 94.2 % at
    ``B = 32``; a larger clip diverged). The other settings are unchanged, and ``B = 1`` changes nothing. The window
    ``N`` must stay at least one step: ``N >= B``. An epoch's last batch, where ``B`` does not divide the samples, holds
    fewer and is stepped with the same settings (its mean gradient weighed as ``B`` samples'); the command line
    refuses a ``--batch-size`` larger than a task's samples, where every step would be so.

    Example:
        >>> settings_for_batch("bimu", dict(likelihood_multiplier=2.0, N=6000), batch_size=100)
        {'lr': 1.0, 'lr_max': 1.0, 'likelihood_multiplier': 200.0, 'kl_multiplier': 1.0, 'N': 60.0}
    """
    if rule not in _OPTIMIZERS:
        raise ValueError(f"rule must be one of {sorted(_OPTIMIZERS)}, got {rule!r}")
    if not isinstance(per_sample, Mapping):
        raise ValueError(f"per_sample must be a mapping of {rule}'s settings by name, got {type(per_sample).__name__}")
    optional = hyperparameter_defaults(rule)  # (returned only where given: mesu_step takes no MESU "lr")
    defaults = {name: parameter.default for name, parameter in
                inspect.signature(_OPTIMIZERS[rule].__init__).parameters.items()
                if parameter.default is not inspect.Parameter.empty and (name not in optional or name in per_sample)}
    unknown = sorted(set(per_sample) - set(defaults))
    if unknown:
        raise ValueError(f"per_sample: {', '.join(map(repr, unknown))} not a setting of {rule}; "
                         f"its settings: {', '.join(defaults)}")
    settings = {**defaults, **per_sample}
    check_hyperparameters(rule, settings)
    if not is_whole(batch_size, 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if settings["N"] < batch_size:
        raise ValueError(f"N (the memory window, in samples) must be at least the batch size {batch_size}: a window "
                         f"under one step would overshoot; got {settings['N']!r}")
    settings = {name: float(value) for name, value in settings.items()}
    if rule == "bimu":
        settings["likelihood_multiplier"] *= batch_size
        settings["N"] /= batch_size
    else:
        settings["lr_mu"] *= batch_size
        settings["lr_sigma"] *= batch_size
        settings["clamp_grad"] /= batch_size
    check_hyperparameters(rule, settings)  # (scaled, a setting may leave its range)
    return settings
