"""Continual-learning baselines as :class:`metaspike.training.Plugin` hooks: EWC, EWC-Online, SI, random consolidation.

All of them regularise the *weight matrices*: those returned by :func:`metaspike.synapse.weight_matrices`
(in a BNN the hidden weights ``W_h`` of the binary synapses: the forward pass uses ``sign(W_h)``, and the gradient
reaches ``W_h`` straight through the sign, so importances and penalties are computed on ``W_h``; in the
full-precision DNN the ordinary weight matrices) and the weights of Linear/Conv layers a BNN keeps float (a first
layer left out by ``binarize(model, exclude=...)``). Biases and BatchNorm parameters are never regularised (the
trainer keeps one BatchNorm state per task instead, as for the metaplastic BNN), nor are the weights of other
layers (recurrent cells, embeddings).

* :class:`EWC` (Kirkpatrick et al. 2017): after each task, a diagonal per-sample Fisher ``F_i`` is
  estimated on that task's training data; the loss gets ``λ/2 · Σ_i Σ F_i (θ − θ*_i)²`` over all past tasks
  (its memory grows by one Fisher and one anchor per task).
* :class:`EWCOnline` (Schwarz et al. 2018): one running Fisher ``F ← γ·F + F_task`` and one anchor
  ``θ*``, the weights after the last task; the loss gets ``λ/2 · Σ F (θ − θ*)²``. Its memory is
  constant, so it suits streams of hundreds of tasks.
* :class:`SynapticIntelligence` (Zenke et al. 2017): ``ω`` accumulates ``−g·Δθ`` at every step
  (``g`` the gradient of the loss without SI's own penalty, as in the authors' code); at a task end
  ``Ω += ω / (Δ² + ξ)`` with ``Δ`` the change of ``θ`` over the task; the loss gets
  ``c · Σ Ω (θ − θ*)²`` with ``θ*`` the weights at the last task end.
* :class:`RandomConsolidation`: EWC whose Fisher values are shuffled at random across the synapses
  of each layer (same distribution of importances, wrong synapses) — the paper's control.

Each plugin has ``state_dict()``/``load_state_dict()``; the trainer's checkpoints keep them, so a
resumed run with a baseline continues exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from metaspike.checks import check_generator_state, finite_number, is_whole, number_in, unknown_name
from metaspike.layer_selection import synapse_role
from metaspike.modes import evaluation_mode
from metaspike.optimizer_state import check_tensor_values
from metaspike.population_statistics import use_population_statistics
from metaspike.synapse import float_layer_weights, weight_matrices
from metaspike.training import Plugin, check_inputs, classification_loss

__all__ = ["EWC", "EWCOnline", "SynapticIntelligence", "RandomConsolidation", "fisher_diagonal",
           "fisher_sample_indices", "EWC_LAMBDA", "SI_C", "EWC_ONLINE_GAMMA", "BASELINE_STRENGTHS",
           "BASELINE_STRENGTH_SETTINGS", "NO_GRADIENT_IN_EVALUATION", "make_baseline"]

#: EWC's default strength λ: the 2021 paper's, for its BNN under Adam (also EWC-Online's and the random control's).
EWC_LAMBDA = 5000.0
#: SI's default strength c (Zenke et al. 2017's permuted-MNIST setting).
SI_C = 0.1
#: EWC-Online's default decay γ of the running Fisher (1: the Fishers of all tasks add up).
EWC_ONLINE_GAMMA = 1.0


#: Why the evaluated model's loss has no gradient with respect to a synapse's tensor, by the tensor's role
#: (:func:`~metaspike.layer_selection.synapse_role`): a Fisher taken there is zero and protects nothing.
NO_GRADIENT_IN_EVALUATION = {
    "latent": "BiMU synapses evaluate with sign(λ) or a Bernoulli sample of it, through which no gradient reaches "
              "λ; they consolidate by themselves: train them without a baseline",
}


def _named_matrices(model: nn.Module) -> list[tuple[str, Tensor]]:
    """``(layer name, tensor)`` of each weight matrix the baselines regularise: every synapse's
    (:func:`metaspike.synapse.weight_matrices`) and the weight of every Linear/Conv layer kept float beside them
    (``binarize(model, exclude=...)``; under torch's own parametrization, such as ``weight_norm``, the tensors it
    trains), each tensor once (under its first layer's name); a model without any is one line."""
    first: dict[int, tuple[str, Tensor]] = {}
    for name, weight in (*weight_matrices(model), *float_layer_weights(model, parametrized=True)):
        first.setdefault(id(weight), (name, weight))
    if not first:
        raise ValueError(f"{type(model).__name__} has no weight matrices (no parameter with two or more dimensions) "
                         "for the baseline to regularise")
    return list(first.values())


def _matrices(model: nn.Module) -> list[Tensor]:
    """The tensors of :func:`_named_matrices`."""
    return [weight for _, weight in _named_matrices(model)]


def _unmeasured(who: str, named: Sequence[tuple[str, Tensor]]) -> ValueError:
    """The error for weight matrices (``named``) that the evaluated model's loss gives no gradient: their Fisher
    would be zero, and a baseline built on it would protect nothing, silently."""
    layers = list(dict.fromkeys(name or "(the model itself)" for name, _ in named))
    reasons = [NO_GRADIENT_IN_EVALUATION[role] for role in dict.fromkeys(synapse_role(w) for _, w in named)
               if role in NO_GRADIENT_IN_EVALUATION]
    why = "; ".join(reasons) or "evaluation mode does not use them, or uses them through a step without a gradient"
    return ValueError(f"{who}: the Fisher needs gradients of the evaluated model's loss with respect to the weight "
                      f"matrices it protects, and those of {'layers' if len(layers) > 1 else 'layer'} "
                      f"{', '.join(layers)} get none in evaluation mode ({why})")


def _samples(value: Any, name: str) -> int:
    if not is_whole(value, 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _gamma(value: Any) -> float:
    return number_in("gamma", value, 0.0, 1.0)


#: Why a Fisher value (EWC's importances, EWC-Online's running Fisher) is never negative.
_FISHER_SIGN = "a Fisher value is a mean of squared gradients, >= 0"


def _tensors(state: dict[str, Any], key: str, depth: int = 1, *, never_negative: bool = False) -> list:
    """``state[key]``: a list of tensors (``depth`` 1) or of lists of tensors (``depth`` 2) with finite values (and,
    ``never_negative``, none below 0: a Fisher), else one line naming the entry. A state comes from a checkpoint, whose
    checksum anyone can recompute: a NaN there surfaced as a NaN loss blamed on the learning rate, a negative Fisher as
    a penalty that pushes the weights away from the past tasks', silently. (SI's path integrals and importances are
    signed: ``ω = −Σ g·Δθ`` goes below 0 where a step went uphill.)"""
    value = state.get(key) if isinstance(state, dict) else None
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(t, Tensor) if depth == 1 else isinstance(t, (list, tuple)) and all(isinstance(u, Tensor) for u in t)
        for t in value
    )
    if not ok:
        what = "a list of tensors" if depth == 1 else "a list of lists of tensors"
        raise ValueError(f"baseline state {key!r} must be {what}, got {type(value).__name__}")
    found = [list(t) for t in value] if depth == 2 else list(value)
    for i, item in enumerate(found):
        for j, tensor in enumerate(item if depth == 2 else [item]):
            check_tensor_values(f"baseline state {key}[{i}]" + (f"[{j}]" if depth == 2 else ""), tensor,
                                never_negative=never_negative, why=_FISHER_SIGN)
    return found


def _fit(name: str, tensors: Sequence[Tensor], params: Sequence[Tensor]) -> None:
    """A baseline's saved tensors must match the model's weight matrices one for one (a state from another model
    would otherwise be zipped short or broadcast silently)."""
    if len(tensors) != len(params) or any(t.shape != p.shape for t, p in zip(tensors, params)):
        raise ValueError(f"the baseline's {name} ({[tuple(t.shape) for t in tensors]}) do not fit the model's weight "
                         f"matrices ({[tuple(p.shape) for p in params]}); was its state saved with another model?")


def fisher_sample_indices(y: Tensor, samples: int) -> Tensor:
    """The samples the Fisher is taken on: the first ``samples`` (the paper authors' code), or ``samples`` evenly
    spaced ones where the first miss a class that a random draw of that many would hold at least 5 times on average
    (missed by chance with probability below 1 %): data stored by class, of which the first samples are one or a few
    classes (mnist5k's training split is; Kirkpatrick et al. draw the samples at random).

    Example:
        >>> fisher_sample_indices(torch.tensor([0, 1, 0, 1, 0, 1]), 2).tolist()
        [0, 1]
        >>> fisher_sample_indices(torch.arange(300) // 100, 30).tolist()[:4]  # stored by class: spread over them
        [0, 10, 21, 31]
    """
    count = min(len(y), int(samples))
    classes, frequencies = y.unique(return_counts=True)
    seen = set(y[:count].unique().tolist())
    if all(c in seen or count * n / len(y) < 5 for c, n in zip(classes.tolist(), frequencies.tolist())):
        return torch.arange(count)
    return torch.linspace(0, len(y) - 1, count).round().long()


def fisher_diagonal(
    model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None = None, samples: int = 1000
) -> list[Tensor]:
    """Empirical diagonal Fisher of the weight matrices, one tensor per matrix.

    ``F = mean over samples of g_i²``, where ``g_i`` is the gradient of the negative log-likelihood
    of sample ``i``'s true label, over ``samples`` samples of ``(x, y)``: the first (the paper authors' code), or evenly
    spaced ones where the first miss classes that the others hold, as data stored by class does
    (:func:`fisher_sample_indices`). The paper's BatchNorm normalises with batch statistics,
    which a single sample does not have: the estimate then runs on a copy of the model whose BatchNorm
    layers use the population statistics of ``x``
    (:func:`metaspike.population_statistics.use_population_statistics`); other models run in evaluation mode
    and are put back in their mode. The weights and ``.grad`` are not touched.

    Data that cannot score the model (empty, NaN, labels outside ``classes`` or the model's outputs, samples the model
    cannot take) is one ``ValueError`` (:func:`metaspike.training.check_inputs`), and so is a weight matrix that the
    evaluated loss gives no gradient (BiMU's ``λ``, evaluated as ``sign(λ)``: :data:`NO_GRADIENT_IN_EVALUATION`),
    whose Fisher would be zero: a baseline built on it would protect nothing.

    Example:
        >>> model = torch.nn.Linear(3, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.zero_()
        >>> fisher_diagonal(model, torch.ones(4, 3), torch.zeros(4, dtype=torch.long))[0]  # g = ±0.5 per weight
        tensor([[0.2500, 0.2500, 0.2500],
                [0.2500, 0.2500, 0.2500]])
    """
    return _fisher(model, x, y, classes, samples, "fisher_diagonal")


def _fisher(model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None, samples: int,
            who: str) -> list[Tensor]:
    """:func:`fisher_diagonal`, its errors said by ``who`` (the function, or the plugin that takes it)."""
    _samples(samples, "Fisher samples")
    _matrices(model)
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor of samples [N, ...], got {list(x.shape) if isinstance(x, Tensor) else x!r}")
    check_inputs(model, x, y, "the Fisher's data (x, y)", classes)  # (one line: a forward error names x's shape)
    has_batchnorm = any(isinstance(m, _BatchNorm) for m in model.modules())
    # a copy only where BatchNorm needs other statistics: copying fails on models that keep non-leaf tensors
    # (an snnTorch neuron's state after a training pass), and the gradients below never reach .grad
    probe = copy.deepcopy(model) if has_batchnorm else model
    if has_batchnorm:
        use_population_statistics(probe, x)
    with evaluation_mode(probe):
        named = _named_matrices(probe)
        params = [weight for _, weight in named]
        total = [torch.zeros_like(p) for p in params]
        reached = [False] * len(params)
        chosen = fisher_sample_indices(y, samples)
        for i in chosen.tolist():
            # the training loss: a model with S weight samples gives (S, 1, C) logits, the mean of their losses
            logits = probe(x[i : i + 1].to(params[0].device))
            loss = classification_loss(logits, y[i : i + 1].to(params[0].device), classes)
            grads = (torch.autograd.grad(loss, params, allow_unused=True) if loss.requires_grad
                     else (None,) * len(params))
            for k, (t, g) in enumerate(zip(total, grads)):
                if g is not None:
                    t.add_(g.square())
                    reached[k] = True
    unreached = [pair for pair, hit in zip(named, reached) if not hit]
    if unreached:
        raise _unmeasured(who, unreached)
    return [t / len(chosen) for t in total]


class EWC(Plugin):
    """Elastic weight consolidation on the weight matrices (hidden weights of a BNN).

    Args:
        lam: strength ``λ`` of ``λ/2 · Σ_i Σ F_i (θ − θ*_i)²`` (the paper uses 5000).
        samples: training samples of each task the Fisher is estimated on (:func:`fisher_diagonal`).

    Example:
        >>> model = torch.nn.Linear(2, 2, bias=False)
        >>> ewc = EWC(lam=2.0)
        >>> ewc.task_done(model, torch.randn(8, 2), torch.randint(0, 2, (8,)), None)
        >>> ewc.penalty(model).item()  # the weights have not moved since the task ended
        0.0
    """

    def __init__(self, lam: float = EWC_LAMBDA, samples: int = 1000) -> None:
        self.lam = finite_number("EWC lam", lam, positive=False)
        self.samples = _samples(samples, "EWC samples")
        self.importances: list[list[Tensor]] = []  # one list per past task
        self.anchors: list[list[Tensor]] = []

    def importance(self, model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None) -> list[Tensor]:
        """Importance of each synapse for the task just learned: its Fisher value."""
        return _fisher(model, x, y, classes, self.samples, type(self).__name__)

    def task_done(self, model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None) -> None:
        self.importances.append(self.importance(model, x, y, classes))
        self.anchors.append([p.detach().clone() for p in _matrices(model)])

    def penalty(self, model: nn.Module) -> Tensor | None:
        if not self.importances or self.lam == 0:
            return None
        params = _matrices(model)
        for fs, anchors in zip(self.importances, self.anchors):
            _fit("importances", fs, params)
            _fit("anchors", anchors, params)
        total = sum(
            (f * (p - a).square()).sum()
            for fs, anchors in zip(self.importances, self.anchors)
            for f, a, p in zip(fs, anchors, params)
        )
        return 0.5 * self.lam * total

    def curvatures(self, model: nn.Module) -> list[tuple[Tensor, float]]:
        """``λ · Σ_i F_i`` at its largest, along each weight matrix."""
        if not self.importances:
            return []
        params = _matrices(model)
        for fs in self.importances:
            _fit("importances", fs, params)
        summed = [sum(fs) for fs in zip(*self.importances)]
        return [(p, self.lam * float(f.max())) for p, f in zip(params, summed) if f.numel()]

    def settings(self) -> dict[str, Any]:
        return {"lam": self.lam, "samples": self.samples}

    def state_dict(self) -> dict[str, Any]:
        """Importances and anchors of every past task (tensors), plus the hyperparameters."""
        return {"lam": self.lam, "samples": self.samples,
                "importances": [list(f) for f in self.importances], "anchors": [list(a) for a in self.anchors]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (checked as the constructor checks its arguments)."""
        importances, anchors = _tensors(state, "importances", 2, never_negative=True), _tensors(state, "anchors", 2)
        if len(importances) != len(anchors):
            raise ValueError(f"baseline state has {len(importances)} importances but {len(anchors)} anchors")
        self.lam = finite_number("EWC lam", state.get("lam"), positive=False)
        self.samples = _samples(state.get("samples"), "EWC samples")
        self.importances, self.anchors = importances, anchors


class EWCOnline(Plugin):
    """Online EWC: one running diagonal Fisher, decayed by ``γ`` at each task, around the last task's weights.

    Args:
        lam: strength ``λ`` of ``λ/2 · Σ F (θ − θ*)²``.
        gamma: decay ``γ`` in ``[0, 1]`` of ``F ← γ·F + F_task`` (``1``: plain sum, ``0``: last task only).
        samples: training samples of each task the Fisher is estimated on (:func:`fisher_diagonal`).

    Example:
        >>> model = torch.nn.Linear(2, 2, bias=False)
        >>> ewc = EWCOnline(lam=2.0, gamma=0.9)
        >>> ewc.task_done(model, torch.randn(8, 2), torch.randint(0, 2, (8,)), None)
        >>> ewc.penalty(model).item()  # the weights have not moved since the task ended
        0.0
    """

    def __init__(self, lam: float = EWC_LAMBDA, gamma: float = EWC_ONLINE_GAMMA, samples: int = 1000) -> None:
        self.lam = finite_number("lam", lam, positive=False)
        self.gamma = _gamma(gamma)
        self.samples = _samples(samples, "samples")
        self.fisher: list[Tensor] = []
        self.anchor: list[Tensor] = []

    def task_done(self, model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None) -> None:
        new = _fisher(model, x, y, classes, self.samples, type(self).__name__)
        self.fisher = new if not self.fisher else [self.gamma * f + n for f, n in zip(self.fisher, new)]
        self.anchor = [p.detach().clone() for p in _matrices(model)]

    def penalty(self, model: nn.Module) -> Tensor | None:
        if not self.fisher or self.lam == 0:
            return None
        params = _matrices(model)
        _fit("Fisher", self.fisher, params)
        _fit("anchor", self.anchor, params)
        total = sum((f * (p - a).square()).sum() for f, a, p in zip(self.fisher, self.anchor, params))
        return 0.5 * self.lam * total

    def curvatures(self, model: nn.Module) -> list[tuple[Tensor, float]]:
        """``λ · F`` at its largest, along each weight matrix."""
        params = _matrices(model)
        if self.fisher:
            _fit("Fisher", self.fisher, params)
        return [(p, self.lam * float(f.max())) for p, f in zip(params, self.fisher) if f.numel()]

    def settings(self) -> dict[str, Any]:
        return {"lam": self.lam, "gamma": self.gamma, "samples": self.samples}

    def state_dict(self) -> dict[str, Any]:
        """The running Fisher and the anchor (tensors), plus the hyperparameters."""
        return {"lam": self.lam, "gamma": self.gamma, "samples": self.samples,
                "fisher": list(self.fisher), "anchor": list(self.anchor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (checked as the constructor checks its arguments)."""
        fisher, anchor = _tensors(state, "fisher", never_negative=True), _tensors(state, "anchor")
        self.lam = finite_number("lam", state.get("lam"), positive=False)
        self.gamma = _gamma(state.get("gamma"))
        self.samples = _samples(state.get("samples"), "samples")
        self.fisher, self.anchor = fisher, anchor


class RandomConsolidation(EWC):
    """EWC with each task's Fisher values randomly permuted across the synapses of each layer.

    The consolidation budget (the distribution of importances) is that of EWC, but it lands on
    random synapses: the paper's control showing that *which* synapses are consolidated matters.

    Example:
        >>> rc = RandomConsolidation(lam=1.0, seed=0)
        >>> rc.importance(torch.nn.Linear(3, 2), torch.randn(6, 3), torch.randint(0, 2, (6,)), None)[0].shape
        torch.Size([2, 3])
    """

    def __init__(self, lam: float = EWC_LAMBDA, samples: int = 1000, seed: int = 0) -> None:
        super().__init__(lam, samples)
        if not is_whole(seed, 0):
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def importance(self, model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None) -> list[Tensor]:
        shuffled = []
        for f in super().importance(model, x, y, classes):
            order = torch.randperm(f.numel(), generator=self.generator).to(f.device)
            shuffled.append(f.flatten()[order].view_as(f))
        return shuffled

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; a shuffling generator's state that torch would refuse is one line
        before anything is restored."""
        check_generator_state(state.get("generator") if isinstance(state, dict) else None,
                              "baseline state 'generator'")
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])


class SynapticIntelligence(Plugin):
    """Synaptic intelligence (path-integral importance) on the weight matrices.

    The path integral ``ω = −Σ g·Δθ`` takes the gradient of the loss without this plugin's own penalty (as the
    authors' code does: the penalty's gradient ``2cΩ(θ − θ*)`` is taken off when :meth:`penalty` gave one for the
    step), so the importance measures what the parameters did for the task, not for staying near the anchors.

    Args:
        c: strength of ``c · Σ Ω (θ − θ*)²``.
        xi: damping ``ξ`` of ``Ω += ω / (Δ² + ξ)``.

    Example:
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> si, opt = SynapticIntelligence(c=1.0), torch.optim.SGD(model.parameters(), lr=0.1)
        >>> model(torch.ones(1, 2)).sum().backward()
        >>> si.before_step(model); opt.step(); si.after_step(model)
        >>> si.omega[0]  # -g·Δθ = -1 · (-0.1) per weight
        tensor([[0.1000, 0.1000]])
    """

    def __init__(self, c: float = SI_C, xi: float = 0.1) -> None:
        self.c = finite_number("SI c", c, positive=False)
        self.xi = finite_number("SI xi", xi, positive=True)
        self.omega: list[Tensor] = []  # path integral of the current task
        self.big_omega: list[Tensor] = []  # accumulated importance Ω
        self.task_start: list[Tensor] = []  # θ when the current task began
        self.anchors: list[Tensor] = []  # θ* at the last task end
        self._before: list[Tensor] = []
        self._grads: list[Tensor] = []
        self._penalized = False  # whether the loss of the step holds this plugin's penalty

    def before_step(self, model: nn.Module) -> None:
        params = _matrices(model)
        if not self.task_start:
            self.task_start = [p.detach().clone() for p in params]
            self.omega = [torch.zeros_like(p) for p in params]
        self._check_fit(params)
        self._before = [p.detach().clone() for p in params]
        self._grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        if self._penalized:  # the task's own gradient: take off the penalty's, 2c·Ω·(θ − θ*)
            for g, p, o, a in zip(self._grads, params, self.big_omega, self.anchors):
                g.sub_(2 * self.c * o * (p.detach() - a))
            self._penalized = False

    def _check_fit(self, params: Sequence[Tensor]) -> None:
        """The current task's path integrals and start, and the importances and anchors where there are any, fit the
        model's weight matrices (a loaded state of another model failed inside torch, or was broadcast silently)."""
        _fit("path integrals", self.omega, params)
        _fit("task start", self.task_start, params)
        if self.big_omega:
            _fit("importances", self.big_omega, params)
            _fit("anchors", self.anchors, params)

    def after_step(self, model: nn.Module) -> None:
        for w, p, old, g in zip(self.omega, _matrices(model), self._before, self._grads):
            w.sub_(g * (p.detach() - old))

    def task_done(self, model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None) -> None:
        params = [p.detach().clone() for p in _matrices(model)]
        if not self.task_start:  # no step was taken in this task
            return
        self._check_fit(params)
        contribution = [w / ((p - s).square() + self.xi) for w, p, s in zip(self.omega, params, self.task_start)]
        self.big_omega = contribution if not self.big_omega else [b + c for b, c in zip(self.big_omega, contribution)]
        self.anchors = params
        self.task_start = [p.clone() for p in params]
        self.omega = [torch.zeros_like(p) for p in params]

    def penalty(self, model: nn.Module) -> Tensor | None:
        if not self.big_omega or self.c == 0:
            return None
        params = _matrices(model)
        _fit("importances", self.big_omega, params)
        _fit("anchors", self.anchors, params)
        self._penalized = True
        return self.c * sum((o * (p - a).square()).sum() for o, a, p in zip(self.big_omega, self.anchors, params))

    def curvatures(self, model: nn.Module) -> list[tuple[Tensor, float]]:
        """``2c · Ω`` at its largest, along each weight matrix."""
        params = _matrices(model)
        if self.big_omega:
            _fit("importances", self.big_omega, params)
        return [(p, 2 * self.c * float(o.max())) for p, o in zip(params, self.big_omega) if o.numel()]

    def settings(self) -> dict[str, Any]:
        return {"c": self.c, "xi": self.xi}

    def state_dict(self) -> dict[str, Any]:
        """Path integrals, importances and anchors (tensors), plus the hyperparameters."""
        # copies: omega grows in place as training goes on, and a snapshot must keep the values it was taken with
        return {"c": self.c, "xi": self.xi, **{key: [t.clone() for t in getattr(self, key)]
                                                for key in ("omega", "big_omega", "task_start", "anchors")}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (checked as the constructor checks its arguments)."""
        tensors = {key: _tensors(state, key) for key in ("omega", "big_omega", "task_start", "anchors")}
        self.c = finite_number("SI c", state.get("c"), positive=False)
        self.xi = finite_number("SI xi", state.get("xi"), positive=True)
        for key, value in tensors.items():
            setattr(self, key, [t.clone() for t in value])  # not the caller's tensors, which omega would change


#: The key of a baseline plugin's strength in its ``settings()`` (EWC's kinds: λ; SI: c).
BASELINE_STRENGTH_SETTINGS = ("lam", "c")

#: The baselines by name, each with the meaning and default of its one strength: what a run names (``--baseline``).
BASELINE_STRENGTHS: dict[str, tuple[str, float]] = {
    "ewc": ("lambda", EWC_LAMBDA), "ewc-online": ("lambda", EWC_LAMBDA), "si": ("c", SI_C),
    "random": ("lambda", EWC_LAMBDA),
}


def make_baseline(name: str, strength: float | None = None, gamma: float | None = None, seed: int = 0) -> Plugin:
    """A new plugin of the baseline ``name`` (a key of :data:`BASELINE_STRENGTHS`) at ``strength`` (EWC, EWC-Online
    and the random control: λ; SI: c; ``None``: the default), ``gamma`` EWC-Online's decay (``None``:
    :data:`EWC_ONLINE_GAMMA`; no other baseline takes one) and ``seed`` the random control's shuffling seed.

    Example:
        >>> make_baseline("si").c, make_baseline("ewc-online", 100.0, gamma=0.9).gamma
        (0.1, 0.9)
    """
    if name not in BASELINE_STRENGTHS:
        raise ValueError(unknown_name("baseline", name, BASELINE_STRENGTHS))
    if gamma is not None and name != "ewc-online":
        raise ValueError(f"gamma is EWC-Online's decay; baseline {name!r} takes none")
    value = BASELINE_STRENGTHS[name][1] if strength is None else strength
    if name == "ewc":
        return EWC(lam=value)
    if name == "ewc-online":
        return EWCOnline(lam=value, gamma=EWC_ONLINE_GAMMA if gamma is None else gamma)
    if name == "si":
        return SynapticIntelligence(c=value)
    return RandomConsolidation(lam=value, seed=seed)
