"""Continual-learning baselines as :class:`metaspike.training.Plugin` hooks: EWC, EWC-Online, SI, random consolidation.

All three regularise the *weight matrices* returned by :func:`metaspike.synapse.weight_matrices`:
in a BNN these are the hidden weights ``W_h`` of the binary synapses (the forward pass uses
``sign(W_h)``, and the gradient reaches ``W_h`` straight through the sign, so importances and
penalties are computed on ``W_h``); in the full-precision DNN they are the ordinary weight matrices.
Biases and BatchNorm parameters are never regularised (the trainer keeps one BatchNorm state per
task instead, as for the metaplastic BNN).

* :class:`EWC` (Kirkpatrick et al. 2017): after each task, a diagonal per-sample Fisher ``F_i`` is
  estimated on that task's training data; the loss gets ``λ/2 · Σ_i Σ F_i (θ − θ*_i)²`` over all past tasks
  (its memory grows by one Fisher and one anchor per task).
* :class:`EWCOnline` (Schwarz et al. 2018): one running Fisher ``F ← γ·F + F_task`` and one anchor
  ``θ*``, the weights after the last task; the loss gets ``λ/2 · Σ F (θ − θ*)²``. Its memory is
  constant, so it suits streams of hundreds of tasks.
* :class:`SynapticIntelligence` (Zenke et al. 2017): ``ω`` accumulates ``−g·Δθ`` at every step
  (``g`` the gradient used by the step, i.e. of the loss including the penalty); at a task end
  ``Ω += ω / (Δ² + ξ)`` with ``Δ`` the change of ``θ`` over the task; the loss gets
  ``c · Σ Ω (θ − θ*)²`` with ``θ*`` the weights at the last task end.
* :class:`RandomConsolidation`: EWC whose Fisher values are shuffled at random across the synapses
  of each layer (same distribution of importances, wrong synapses) — the paper's control.

Each plugin has ``state_dict()``/``load_state_dict()``; the trainer's checkpoints keep them, so a
resumed run with a baseline continues exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from metaspike.population_statistics import use_population_statistics
from metaspike.synapse import weight_matrices
from metaspike.training import Plugin, masked_logits

__all__ = ["EWC", "EWCOnline", "SynapticIntelligence", "RandomConsolidation", "fisher_diagonal"]


def _matrices(model: nn.Module) -> list[Tensor]:
    return [w for _, w in weight_matrices(model)]


def _check_positive(value: float, name: str, allow_zero: bool = True) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value}")
    return value


def fisher_diagonal(
    model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None = None, samples: int = 1000
) -> list[Tensor]:
    """Empirical diagonal Fisher of the weight matrices, one tensor per matrix.

    ``F = mean over samples of g_i²``, where ``g_i`` is the gradient of the negative log-likelihood
    of sample ``i``'s true label, over the first ``samples`` samples of ``(x, y)`` (as in Kirkpatrick
    et al. 2017 and the paper authors' code). The paper's BatchNorm normalises with batch statistics,
    which a single sample does not have: the estimate runs on a copy of the model whose BatchNorm
    layers use the population statistics of ``x``
    (:func:`metaspike.population_statistics.use_population_statistics`). The model itself, and its
    ``.grad``, are not touched.

    Example:
        >>> model = torch.nn.Linear(3, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.zero_()
        >>> fisher_diagonal(model, torch.ones(4, 3), torch.zeros(4, dtype=torch.long))[0]  # g = ±0.5 per weight
        tensor([[0.2500, 0.2500, 0.2500],
                [0.2500, 0.2500, 0.2500]])
    """
    if samples < 1:
        raise ValueError(f"Fisher samples must be >= 1, got {samples}")
    probe = copy.deepcopy(model)
    if any(isinstance(m, _BatchNorm) for m in probe.modules()):
        use_population_statistics(probe, x)
    probe.eval()
    params = _matrices(probe)
    device = params[0].device
    total = [torch.zeros_like(p) for p in params]
    count = min(len(x), int(samples))
    for i in range(count):
        logits = masked_logits(probe(x[i : i + 1].to(device)), classes)
        loss = F.cross_entropy(logits, y[i : i + 1].to(device))
        for t, g in zip(total, torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:
                t.add_(g.square())
    return [t / count for t in total]


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

    def __init__(self, lam: float = 5000.0, samples: int = 1000) -> None:
        self.lam = _check_positive(lam, "EWC lambda")
        if samples < 1:
            raise ValueError(f"EWC samples must be >= 1, got {samples}")
        self.samples = int(samples)
        self.importances: list[list[Tensor]] = []  # one list per past task
        self.anchors: list[list[Tensor]] = []

    def importance(self, model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None) -> list[Tensor]:
        """Importance of each synapse for the task just learned: its Fisher value."""
        return fisher_diagonal(model, x, y, classes, self.samples)

    def task_done(self, model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None) -> None:
        self.importances.append(self.importance(model, x, y, classes))
        self.anchors.append([p.detach().clone() for p in _matrices(model)])

    def penalty(self, model: nn.Module) -> Tensor | None:
        if not self.importances or self.lam == 0:
            return None
        params = _matrices(model)
        total = sum(
            (f * (p - a).square()).sum()
            for fs, anchors in zip(self.importances, self.anchors)
            for f, a, p in zip(fs, anchors, params)
        )
        return 0.5 * self.lam * total

    def state_dict(self) -> dict[str, Any]:
        """Importances and anchors of every past task (tensors), plus the hyperparameters."""
        return {"lam": self.lam, "samples": self.samples,
                "importances": [list(f) for f in self.importances], "anchors": [list(a) for a in self.anchors]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.lam, self.samples = float(state["lam"]), int(state["samples"])
        self.importances = [list(f) for f in state["importances"]]
        self.anchors = [list(a) for a in state["anchors"]]


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

    def __init__(self, lam: float = 5000.0, gamma: float = 1.0, samples: int = 1000) -> None:
        self.lam = _check_positive(lam, "lam")
        self.gamma = float(gamma)
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
        self.samples = samples
        self.fisher: list[Tensor] = []
        self.anchor: list[Tensor] = []

    def task_done(self, model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None) -> None:
        new = fisher_diagonal(model, x, y, classes, self.samples)
        self.fisher = new if not self.fisher else [self.gamma * f + n for f, n in zip(self.fisher, new)]
        self.anchor = [p.detach().clone() for p in _matrices(model)]

    def penalty(self, model: nn.Module) -> Tensor | None:
        if not self.fisher or self.lam == 0:
            return None
        total = sum((f * (p - a).square()).sum() for f, a, p in zip(self.fisher, self.anchor, _matrices(model)))
        return 0.5 * self.lam * total

    def state_dict(self) -> dict[str, Any]:
        """The running Fisher and the anchor (tensors), plus the hyperparameters."""
        return {"lam": self.lam, "gamma": self.gamma, "samples": self.samples,
                "fisher": list(self.fisher), "anchor": list(self.anchor)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.lam, self.gamma, self.samples = float(state["lam"]), float(state["gamma"]), int(state["samples"])
        self.fisher, self.anchor = list(state["fisher"]), list(state["anchor"])


class RandomConsolidation(EWC):
    """EWC with each task's Fisher values randomly permuted across the synapses of each layer.

    The consolidation budget (the distribution of importances) is that of EWC, but it lands on
    random synapses: the paper's control showing that *which* synapses are consolidated matters.

    Example:
        >>> rc = RandomConsolidation(lam=1.0, seed=0)
        >>> rc.importance(torch.nn.Linear(3, 2), torch.randn(6, 3), torch.randint(0, 2, (6,)), None)[0].shape
        torch.Size([2, 3])
    """

    def __init__(self, lam: float = 5000.0, samples: int = 1000, seed: int = 0) -> None:
        super().__init__(lam, samples)
        self.generator = torch.Generator().manual_seed(int(seed))

    def importance(self, model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None) -> list[Tensor]:
        shuffled = []
        for f in super().importance(model, x, y, classes):
            order = torch.randperm(f.numel(), generator=self.generator).to(f.device)
            shuffled.append(f.flatten()[order].view_as(f))
        return shuffled

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])


class SynapticIntelligence(Plugin):
    """Synaptic intelligence (path-integral importance) on the weight matrices.

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

    def __init__(self, c: float = 0.1, xi: float = 0.1) -> None:
        self.c = _check_positive(c, "SI c")
        self.xi = _check_positive(xi, "SI xi", allow_zero=False)
        self.omega: list[Tensor] = []  # path integral of the current task
        self.big_omega: list[Tensor] = []  # accumulated importance Ω
        self.task_start: list[Tensor] = []  # θ when the current task began
        self.anchors: list[Tensor] = []  # θ* at the last task end
        self._before: list[Tensor] = []
        self._grads: list[Tensor] = []

    def before_step(self, model: nn.Module) -> None:
        params = _matrices(model)
        if not self.task_start:
            self.task_start = [p.detach().clone() for p in params]
            self.omega = [torch.zeros_like(p) for p in params]
        self._before = [p.detach().clone() for p in params]
        self._grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]

    def after_step(self, model: nn.Module) -> None:
        for w, p, old, g in zip(self.omega, _matrices(model), self._before, self._grads):
            w.sub_(g * (p.detach() - old))

    def task_done(self, model: nn.Module, x: Tensor, y: Tensor, classes: Sequence[int] | None) -> None:
        params = [p.detach().clone() for p in _matrices(model)]
        if not self.task_start:  # no step was taken in this task
            return
        contribution = [w / ((p - s).square() + self.xi) for w, p, s in zip(self.omega, params, self.task_start)]
        self.big_omega = contribution if not self.big_omega else [b + c for b, c in zip(self.big_omega, contribution)]
        self.anchors = params
        self.task_start = [p.clone() for p in params]
        self.omega = [torch.zeros_like(p) for p in params]

    def penalty(self, model: nn.Module) -> Tensor | None:
        if not self.big_omega or self.c == 0:
            return None
        return self.c * sum((o * (p - a).square()).sum() for o, a, p in zip(self.big_omega, self.anchors, _matrices(model)))

    def state_dict(self) -> dict[str, Any]:
        """Path integrals, importances and anchors (tensors), plus the hyperparameters."""
        # copies: omega grows in place as training goes on, and a snapshot must keep the values it was taken with
        return {"c": self.c, "xi": self.xi, **{key: [t.clone() for t in getattr(self, key)]
                                                for key in ("omega", "big_omega", "task_start", "anchors")}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.c, self.xi = float(state["c"]), float(state["xi"])
        for key in ("omega", "big_omega", "task_start", "anchors"):
            setattr(self, key, [t.clone() for t in state[key]])  # not the caller's tensors, which omega would change
