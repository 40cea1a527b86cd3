"""The quadratic binary task (paper Fig. 5a,b): the optimum moves, metaplastic synapses keep their signs.

Binary weights ``w = sign(W_h)`` (straight-through gradient to the hidden weights ``W_h``) minimise
``L(w) = ½ (w − θ*)ᵀ H (w − θ*)`` with ``H`` a seeded random positive-definite matrix and ``θ*`` a
real-valued optimum that binary weights cannot reach exactly, so the gradient keeps pushing the
hidden weights and ``|W_h|`` grows where the push is consistent. After ``steps`` updates toward
``θ*₁`` the optimum moves to an independent ``θ*₂``. With metaplasticity (m > 0) the hidden weights
keep more of the signs they had at the end of task 1, and the task-1 loss rises less.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metaspike.app.tables import comparison_csv
from metaspike.files import atomic_write_text
from metaspike.optim import MetaplasticAdam
from metaspike.quantizers import ste_sign

__all__ = ["QuadraticTask", "train_quadratic", "reproduce_fig5ab"]


@dataclass(frozen=True)
class QuadraticTask:
    """``L(w) = ½ (w − θ*)ᵀ H (w − θ*)``: ``H = QΛQᵀ`` with eigenvalues in ``[0.1, 1]``, ``θ* ~ N(0, 1)``.

    Example:
        >>> task = QuadraticTask.random(4, seed=0)
        >>> task.loss(task.optimum).item()
        0.0
    """

    hessian: Tensor
    optimum: Tensor

    @classmethod
    def random(cls, dim: int, seed: int) -> "QuadraticTask":
        if dim < 1:
            raise ValueError(f"dimension must be >= 1, got {dim}")
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
        eigenvalues = 0.1 + 0.9 * torch.rand(dim, generator=g)
        return cls((q * eigenvalues) @ q.T, torch.randn(dim, generator=g))

    def moved(self, seed: int) -> "QuadraticTask":
        """The same curvature with a new, independent optimum."""
        return QuadraticTask(self.hessian, torch.randn(len(self.optimum), generator=torch.Generator().manual_seed(seed)))

    def loss(self, w: Tensor) -> Tensor:
        d = w.flatten() - self.optimum
        return 0.5 * d @ self.hessian @ d


def train_quadratic(
    task1: QuadraticTask, task2: QuadraticTask, meta: float, steps: int = 500, lr: float = 0.01, seed: int = 0
) -> dict[str, Any]:
    """Train binary weights on ``task1`` then ``task2`` with MetaplasticAdam; return what happened.

    Returns the fraction (%) of task-1 signs kept after task 2, the losses of both tasks after each
    phase, and the loss curves (``curve1``/``curve2``: task-1/task-2 loss at every step).

    Example:
        >>> t1 = QuadraticTask.random(20, seed=0)
        >>> out = train_quadratic(t1, t1.moved(1), meta=0.0, steps=50)
        >>> 0.0 <= out["signs_kept"] <= 100.0
        True
    """
    dim = len(task1.optimum)
    hidden = torch.nn.Parameter(0.01 * torch.randn(1, dim, generator=torch.Generator().manual_seed(seed)))
    optimizer = MetaplasticAdam([{"params": [hidden], "consolidate": True}], lr=lr, meta=meta)
    curve1, curve2 = [], []
    for task in (task1, task2):
        for _ in range(steps):
            optimizer.zero_grad()
            task.loss(ste_sign(hidden, clip_value=None)).backward()
            optimizer.step()
            with torch.no_grad():
                w = hidden.sign()
                curve1.append(task1.loss(w).item())
                curve2.append(task2.loss(w).item())
        if task is task1:
            signs1 = hidden.detach().sign().clone()
            after1 = {"loss1_after_task1": curve1[-1], "loss2_after_task1": curve2[-1]}
    kept = (hidden.detach().sign() == signs1).float().mean().item()
    return {
        "meta": meta, "signs_kept": 100.0 * kept, **after1,
        "loss1_after_task2": curve1[-1], "loss2_after_task2": curve2[-1],
        "loss1_increase": curve1[-1] - after1["loss1_after_task1"], "curve1": curve1, "curve2": curve2,
    }


#: The task is tiny, so it is the same at both scales: 100 synapses, 500 Adam steps (lr 0.01) per
#: optimum. |W_h| then reaches ~5, so the paper's m values apply directly (no CPU-scale mapping).
SETTINGS = {"dim": 100, "steps": 500, "metas": (0.0, 0.5, 1.0, 1.35)}


def reproduce_fig5ab(scale: str, seeds: Sequence[int], root: Path, paper: dict[str, str]) -> list[dict[str, Any]]:
    """Run the quadratic task for each m and seed; write ``table.csv`` and ``fig5ab.png`` into ``root``.

    ``scale`` is accepted for a uniform interface; the task is the same at both (see :data:`SETTINGS`).

    Example:
        >>> rows = reproduce_fig5ab("cpu", [1, 2, 3], Path("runs/fig5ab"), {})  # doctest: +SKIP
    """
    from metaspike.app.plots import pyplot, save_figure
    from metaspike.app.tables import mean_std

    settings = SETTINGS
    rows, first = [], []
    for meta in settings["metas"]:
        runs = []
        for seed in seeds:
            task1 = QuadraticTask.random(settings["dim"], seed)
            runs.append(train_quadratic(task1, task1.moved((seed + 10_000) % 2**64), meta, settings["steps"], seed=seed))
        first.append(runs[0])
        row: dict[str, Any] = {"setting": f"m={meta:g}", "paper": paper.get(f"m={meta:g}", "n/a"), "runs": len(runs)}
        for key in ("signs_kept", "loss1_after_task1", "loss1_after_task2", "loss1_increase", "loss2_after_task2"):
            row[key] = mean_std([r[key] for r in runs])
        rows.append(row)
    atomic_write_text(root / "table.csv", comparison_csv(rows, ("setting", "paper", "runs")))
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for run in first:
        axes[0].plot(run["curve1"], label=f"m={run['meta']:g}")
        axes[1].plot(run["curve2"], label=f"m={run['meta']:g}")
    for ax, name in zip(axes, ("task-1 loss", "task-2 loss")):
        ax.axvline(settings["steps"], color="0.7", lw=0.8)
        ax.set_xlabel("step (optimum moves at the grey line)")
        ax.set_ylabel(name)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(f"quadratic binary task, seed {seeds[0]}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, root / "fig5ab.png")
    return rows
