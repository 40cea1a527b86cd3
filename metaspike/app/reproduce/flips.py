"""Which synapses matter (paper Fig. 5c-e): the loss increase caused by flipping binary weights, binned by |W_h|.

A BNN is trained on one task; the hidden weights of its first layer are cut into bins of equal
count by ``|W_h|``; flipping the sign of the same number of randomly chosen synapses from each bin
raises the training loss more for bins of larger ``|W_h|``: the hidden-weight magnitude measures
how important a synapse is, which is what metaplasticity consolidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metaspike.app.tables import comparison_csv
from metaspike.continual.baselines import fisher_sample_indices
from metaspike.data import ArrayDataset, load_dataset
from metaspike.files import atomic_write_text
from metaspike.modes import evaluation_mode
from metaspike.synapse import weight_matrices

__all__ = ["flip_loss_increase", "loss_sample", "reproduce_fig5cde", "LOSS_SAMPLES"]

#: How many training samples the loss increase is measured on.
LOSS_SAMPLES = 2000


@torch.no_grad()
def flip_loss_increase(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, bins: int = 5, flips: int = 2000, repeats: int = 3,
    layer: int = 0, seed: int = 0,
) -> list[dict[str, float]]:
    """Loss increase on ``(x, y)`` when ``flips`` synapses of one |W_h| bin of ``layer`` change sign.

    Returns one record per bin (smallest |W_h| first): the bin's |W_h| range and the mean loss
    increase over ``repeats`` random draws. The model is left unchanged.

    Example:
        >>> import bnn
        >>> out = flip_loss_increase(bnn.MLP([16, 32, 4]), torch.randn(50, 16), torch.randint(0, 4, (50,)),
        ...                          bins=2, flips=10, repeats=1)
        >>> [sorted(r) for r in out][0]
        ['high', 'loss_increase', 'low']
    """
    weight = weight_matrices(model)[layer][1]
    if flips > weight.numel() // bins:
        raise ValueError(f"cannot flip {flips} synapses per bin: layer {layer} has {weight.numel()} in {bins} bins")
    generator = torch.Generator().manual_seed(seed)
    order = weight.abs().flatten().argsort()
    records = []
    with evaluation_mode(model):
        base = F.cross_entropy(model(x), y).item()
        for members in order.tensor_split(bins):
            increases = []
            for _ in range(repeats):
                chosen = members[torch.randperm(len(members), generator=generator)[:flips]]
                flat = weight.view(-1)
                flat[chosen] = -flat[chosen]
                increases.append(F.cross_entropy(model(x), y).item() - base)
                flat[chosen] = -flat[chosen]
            magnitudes = weight.abs().flatten()[members]
            records.append({"low": magnitudes.min().item(), "high": magnitudes.max().item(),
                            "loss_increase": sum(increases) / repeats})
    return records


def loss_sample(train: ArrayDataset, samples: int = LOSS_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``samples`` training samples the loss increase is measured on: the first, or evenly spaced ones where the
    first miss classes, as in a split stored by class (mnist5k's first 2,000 are classes 0-4 only), by
    :func:`~metaspike.continual.baselines.fisher_sample_indices`, which picks EWC's Fisher samples the same way.

    Example:
        >>> x, y = loss_sample(load_dataset("mnist5k"))
        >>> len(y), sorted(y.unique().tolist()) == list(range(10))
        (2000, True)
    """
    chosen = fisher_sample_indices(train.y, samples)
    return train.x[chosen], train.y[chosen]


def reproduce_fig5cde(scale: str, seeds: Sequence[int], root: Path, paper: dict[str, str],
                      data_dir: str | None = None, device: str = "cpu") -> list[dict[str, Any]]:
    """Train a BNN per seed (on ``device``), measure the flip loss increase per |W_h| bin (on the CPU); write
    ``table.csv`` and ``fig5cde.png``.

    CPU scale: ``MLP([784, 256, 256, 10])`` on mnist5k for 5 epochs; paper scale (assumed, not the
    paper's stated setting): 1024-1024 on MNIST for 20 epochs. Both use m = 1.35 mapped to the scale. The loss is
    measured on :data:`LOSS_SAMPLES` training samples of every class (:func:`loss_sample`).

    Example:
        >>> rows = reproduce_fig5cde("cpu", [1], Path("runs/fig5cde"), {})  # doctest: +SKIP
    """
    import bnn
    from metaspike.app.plots import pyplot, save_figure
    from metaspike.app.reproduce.scales import meta_at
    from metaspike.app.tables import mean_std

    paper_scale = scale == "paper"
    dataset, hidden, epochs = ("mnist", 1024, 20) if paper_scale else ("mnist5k", 256, 5)
    train = load_dataset(dataset, "train", data_dir)
    x, y = loss_sample(train)
    meta = meta_at(scale, 1.35)
    per_seed = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = bnn.MLP([784, hidden, hidden, 10])
        bnn.fit(model, train, epochs=epochs, meta=meta, seed=seed, device=device, progress=False)
        model.cpu()
        per_seed.append(flip_loss_increase(model, x, y, flips=(784 * hidden) // 10, seed=seed))
    rows = []
    for k in range(len(per_seed[0])):
        rows.append({"setting": f"bin {k + 1} (|W_h| quantile {20 * k}-{20 * (k + 1)}%)",
                     "paper": paper.get(f"bin {k + 1}", "n/a"), "runs": len(per_seed),
                     "low": mean_std([s[k]["low"] for s in per_seed]), "high": mean_std([s[k]["high"] for s in per_seed]),
                     "loss_increase": mean_std([s[k]["loss_increase"] for s in per_seed])})
    atomic_write_text(root / "table.csv", comparison_csv(rows, ("setting", "paper", "runs")))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.bar(range(1, len(rows) + 1), [r["loss_increase"][0] for r in rows], yerr=[r["loss_increase"][1] for r in rows],
           capsize=3)
    ax.set_xlabel("|W_h| bin of layer 1 (1: smallest 20%)")
    ax.set_ylabel(f"training-loss increase, {(784 * hidden) // 10} flips")
    ax.set_title(f"flipping synapses, BNN m={meta:g} on {dataset}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, root / "fig5cde.png")
    return rows
