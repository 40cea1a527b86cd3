"""Plasticity diagnostics: hidden-weight histograms per layer."""

from __future__ import annotations

import torch
from torch import nn

from metaspike.synapse import weight_matrices

__all__ = ["hidden_weight_histograms"]


@torch.no_grad()
def hidden_weight_histograms(model: nn.Module, bins: int = 60) -> dict[str, dict[str, list[float]]]:
    """Histogram of ``W_h`` for each layer: ``{layer: {"edges": [...], "counts": [...], "median_abs": m}}``.

    Example:
        >>> h = hidden_weight_histograms(torch.nn.Sequential(torch.nn.Linear(3, 2)), bins=4)
        >>> len(h["0"]["counts"])
        4
    """
    result = {}
    for name, weight in weight_matrices(model):
        w = weight.detach().float().flatten().cpu()
        bound = max(float(w.abs().max()), 1e-6)
        counts = torch.histc(w, bins=bins, min=-bound, max=bound)
        edges = torch.linspace(-bound, bound, bins + 1)
        result[name] = {
            "shape": list(weight.shape),
            "edges": [round(e, 6) for e in edges.tolist()],
            "counts": [int(c) for c in counts.tolist()],
            "median_abs": float(w.abs().median()),
        }
    return result
