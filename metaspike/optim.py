"""Metaplastic optimizers.

* :class:`MetaplasticAdam`: Adam in which the first-moment term of every weight matrix/kernel is
  damped by a consolidation rule wherever it would move the hidden weight toward zero. With
  ``meta=0`` it is ``torch.optim.Adam`` bit for bit.
* :func:`metaplastic`: adds the same rule to any torch optimizer (SGD, AdamW, ...) through step hooks.

``meta`` is a param-group hyperparameter, so every layer can have its own strength.

Speed: the consolidated update of a large weight matrix runs as one fused loop (moments, rule and
weight update in a single pass over memory) compiled by ``torch.compile`` on first use; see the
``fused`` argument of :class:`MetaplasticAdam`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from metaspike.compiled import LazyCompiled
from metaspike.consolidation import Rule, check_meta, consolidate, get_rule, is_stateful
from metaspike.synapse import weight_matrices

__all__ = ["MetaplasticAdam", "metaplastic", "param_groups"]

FUSED_MIN_NUMEL = 1 << 18
"""With ``fused=None``, weight matrices with at least this many entries get the compiled step."""

RULE_STATE = "rule_state/"
"""A stateful rule's per-parameter state is kept in the optimizer state under ``RULE_STATE + key``."""


def _is_consolidated(param: Tensor) -> bool:
    """Weight matrices and kernels are consolidated; biases and BatchNorm parameters (1-D) are not."""
    return param.dim() > 1


def _check_group(group: dict[str, Any]) -> None:
    check_meta(group["meta"], "meta")
    get_rule(group["rule"])


class MetaplasticAdam(Optimizer):
    """Adam with metaplastic consolidation of hidden weights (Laborieux et al. 2021).

    For every parameter with more than one dimension, the first moment ``exp_avg`` used in the
    update is multiplied by ``rule.factor(W_h, meta)`` (``1 - tanh²(meta·W_h)`` by default) where
    ``sign(W_h)·exp_avg > 0``, i.e. where the step would move ``W_h`` toward zero. The stored moment
    is not changed. 1-D parameters get plain Adam. Weight decay is added to the gradient, as in
    ``torch.optim.Adam``.

    Args:
        params: parameters or param groups; a group may set its own ``meta`` and ``rule``.
        lr, betas, eps, weight_decay: as in ``torch.optim.Adam``.
        meta: metaplasticity strength ``m >= 0``; ``0`` gives plain Adam.
        rule: consolidation rule name (see :func:`metaspike.consolidation.available_rules`) or object.
            A stateful rule gets the step itself (``lr·m̂/(√v̂ + eps)``) and keeps its state in the
            optimizer state (see :data:`RULE_STATE`); its groups use separate tensor operations.
        foreach: use the multi-tensor path; ``None`` chooses as ``torch.optim.Adam`` does.
        fused: how consolidated parameters (``meta > 0``, more than one dimension) are updated.
            ``True``: by one fused loop compiled with ``torch.compile`` (compiled once per process,
            on the first step, a few seconds; cached on disk by torch afterwards); ``False``: by
            separate tensor operations; ``None``: fused for matrices of at least
            :data:`FUSED_MIN_NUMEL` entries. If compiling fails, a warning is given and the
            separate operations are used. Plain Adam (``meta=0``, 1-D parameters) is never fused,
            so it stays ``torch.optim.Adam`` bit for bit.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = MetaplasticAdam(model.parameters(), lr=0.005, meta=1.35)
        >>> model(torch.randn(3, 4)).sum().backward()
        >>> opt.step()
    """

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
    ) -> None:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if fused not in (None, True, False):
            raise ValueError(f"fused must be True, False or None, got {fused!r}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            meta=check_meta(meta),
            rule=rule,
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its ``meta`` and ``rule`` are validated."""
        super().add_param_group(param_group)
        _check_group(self.param_groups[-1])

    def _init_state(self, param: Tensor) -> dict[str, Tensor]:
        state = self.state[param]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the loss, as in torch optimizers."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("MetaplasticAdam does not support sparse gradients")
            states = [self._init_state(p) for p in params]
            fused = [_uses_compiled_step(p, group) for p in params]
            for param, state in zip(_pick(params, fused, True), _pick(states, fused, True)):
                _adam_step_(param, param.grad, state, group, update=_compiled_update)
            params, states = _pick(params, fused, False), _pick(states, fused, False)
            if not params:
                continue
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.device.type != "cpu" for p in params) and not torch.jit.is_scripting()
            if foreach and not is_stateful(get_rule(group["rule"])):
                _multi_tensor_step(group, params, states)
            else:
                for param, state in zip(params, states):
                    _adam_step_(param, param.grad, state, group)
        return loss


def _pick(items: list, flags: list[bool], wanted: bool) -> list:
    return [item for item, flag in zip(items, flags) if flag == wanted]


def _consolidated_moment(param: Tensor, exp_avg: Tensor, group: dict[str, Any]) -> Tensor:
    if group["meta"] == 0 or not _is_consolidated(param):
        return exp_avg
    return consolidate(param, exp_avg, group["meta"], group["rule"])


def _adam_step_(
    param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any],
    update: Callable[..., None] | None = None,
) -> None:
    """One Adam step of one parameter, in place, with its first moment consolidated.

    ``update`` is :func:`_adam_update_` (default) or its compiled version (never for stateful rules).
    """
    state["step"] += 1
    step = state["step"].item()
    beta1, beta2 = group["betas"]
    tensors = (param, grad, state["exp_avg"], state["exp_avg_sq"])
    if update is not None:  # the compiled loop sees flat views: one symbolic size for every layer
        tensors = tuple(t.view(-1) for t in tensors)
    (update or _adam_update_)(
        *tensors,
        step_size=group["lr"] / (1 - beta1**step),
        bias_correction2_sqrt=(1 - beta2**step) ** 0.5,
        beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
        meta=group["meta"] if _is_consolidated(param) else 0.0, rule=group["rule"],
        **({"opt_state": state} if update is None else {}),
    )


def _adam_update_(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *,
    step_size: float, bias_correction2_sqrt: float, beta1: float, beta2: float, eps: float,
    weight_decay: float, meta: float, rule: str | Rule, opt_state: dict[str, Any] | None = None,
) -> None:
    """The update itself, written so that ``torch.compile`` can fuse it into one loop.

    With ``meta == 0`` these are the operations of ``torch.optim.Adam`` (single-tensor path).
    With ``meta > 0`` the step size divides the denominator instead of being ``addcdiv_``'s scalar
    argument, so that the compiled loop takes it as an input rather than recompiling every step.
    A stateful rule (its state in ``opt_state``) rewrites the step itself rather than the moment.
    """
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    if meta == 0:
        param.addcdiv_(exp_avg, denom, value=-step_size)
    elif opt_state is None or not is_stateful(get_rule(rule)):
        param.addcdiv_(consolidate(param, exp_avg, meta, rule), denom.div_(step_size), value=-1)
    else:
        param.sub_(_consolidate_in(opt_state, param, exp_avg / denom.div_(step_size), meta, rule))


def _consolidate_in(
    opt_state: dict[str, Any], hidden: Tensor, update: Tensor, meta: float, rule: str | Rule
) -> Tensor:
    """:func:`consolidate`, with a stateful rule's state read from and written back to ``opt_state``
    (under :data:`RULE_STATE`), created by the rule on first use."""
    rule = get_rule(rule)
    if not is_stateful(rule):
        return consolidate(hidden, update, meta, rule)
    state = {k[len(RULE_STATE):]: v for k, v in opt_state.items() if k.startswith(RULE_STATE)}
    state = state or rule.init_state(hidden)
    update = consolidate(hidden, update, meta, rule, state)
    opt_state.update({RULE_STATE + k: v for k, v in state.items()})
    return update


_compiled_update = LazyCompiled(_adam_update_, "fused MetaplasticAdam step")


def _uses_compiled_step(param: Tensor, group: dict[str, Any]) -> bool:
    fused = group.get("fused")
    if fused is False or group["meta"] == 0 or not _is_consolidated(param) or _compiled_update.broken:
        return False
    if is_stateful(get_rule(group["rule"])):
        return False
    if torch.compiler.is_compiling():  # already inside a compiled region: it fuses the update itself
        return False
    if not (param.is_contiguous() and param.grad.is_contiguous()):
        return False
    return fused is True or param.numel() >= FUSED_MIN_NUMEL


def _multi_tensor_step(group: dict[str, Any], params: list[Tensor], states: list[dict]) -> None:
    beta1, beta2 = group["betas"]
    lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
    grads = [p.grad for p in params]
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
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
    moments = [_consolidated_moment(p, m, group) for p, m in zip(params, exp_avgs)]
    torch._foreach_addcdiv_(params, moments, denoms, step_sizes)


def metaplastic(
    optimizer: Optimizer, meta: float = 1.35, rule: str | Rule = "tanh"
) -> Optimizer:
    """Add metaplastic consolidation to any torch optimizer, in place, and return it.

    Before each step the weight matrices are remembered; after it, the part of each change that
    moved a weight toward zero is scaled by the rule's factor at the old weight. ``meta`` becomes a
    param-group hyperparameter (groups that already set one keep it), so LR schedulers,
    ``state_dict()`` and per-layer strengths work as with the plain optimizer. A stateful rule gets
    each change itself and keeps its state in ``optimizer.state`` (see :data:`RULE_STATE`), so
    ``state_dict()`` saves it too.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = metaplastic(torch.optim.SGD(model.parameters(), lr=0.1), meta=2.0)
        >>> model(torch.randn(3, 4)).sum().backward()
        >>> opt.step()
    """
    if getattr(optimizer, "_metaspike_hooked", False):
        raise ValueError("this optimizer already has metaplastic consolidation")
    optimizer.defaults.setdefault("meta", check_meta(meta))
    optimizer.defaults.setdefault("rule", rule)
    for group in optimizer.param_groups:
        group.setdefault("meta", optimizer.defaults["meta"])
        group.setdefault("rule", optimizer.defaults["rule"])
        _check_group(group)
    before: dict[Tensor, Tensor] = {}

    def remember(opt: Optimizer, args: Any, kwargs: Any) -> None:
        before.clear()
        for group in opt.param_groups:
            if group["meta"] != 0:
                for p in group["params"]:
                    if p.grad is not None and _is_consolidated(p):
                        before[p] = p.detach().clone()

    @torch.no_grad()
    def damp(opt: Optimizer, args: Any, kwargs: Any) -> None:
        for group in opt.param_groups:
            for p in group["params"]:
                old = before.get(p)
                if old is not None:
                    update = old - p
                    p.copy_(old - _consolidate_in(opt.state[p], old, update, group["meta"], group["rule"]))
        before.clear()

    optimizer.register_step_pre_hook(remember)
    optimizer.register_step_post_hook(damp)
    optimizer._metaspike_hooked = True  # type: ignore[attr-defined]
    return optimizer


def param_groups(model: nn.Module, meta: float | Sequence[float]) -> list[dict[str, Any]]:
    """Param groups giving each weight matrix its own ``meta`` (one value for all, or one per layer).

    Weight matrices are the hidden weights of binary synapses (or, in a model without any, every
    parameter with more than one dimension), in model order; all other parameters form a last
    group with ``meta=0``.

    Example:
        >>> from bnn import MLP
        >>> groups = param_groups(MLP([784, 100, 100, 10]), [2.0, 1.0, 0.5])
        >>> [g["meta"] for g in groups]
        [2.0, 1.0, 0.5, 0.0]
    """
    matrices = [w for _, w in weight_matrices(model)]
    if isinstance(meta, (int, float)):
        metas = [check_meta(meta)] * len(matrices)
    else:
        metas = [check_meta(m, "meta") for m in meta]
        if len(metas) != len(matrices):
            raise ValueError(
                f"got {len(metas)} meta values but the model has {len(matrices)} weight layers; "
                "give one value or one per layer"
            )
    chosen = {id(w) for w in matrices}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    groups: list[dict[str, Any]] = [{"params": [w], "meta": m} for w, m in zip(matrices, metas)]
    if rest:
        groups.append({"params": rest, "meta": 0.0})
    return groups
