"""Plasticity diagnostics: hidden-weight histograms, sign-flip rates, consolidated fractions, layer ranking.

* :func:`hidden_weight_histograms`: the distribution of ``W_h`` per layer (the paper's Fig. 2g,h).
* :func:`sign_snapshot` / :func:`flip_rates`: the fraction of each layer's binary weights that changed
  sign since a snapshot (e.g. over one epoch).
* :func:`consolidated_fractions`: the fraction of each layer's synapses whose updates toward zero are
  damped to less than half (a unit update toward zero keeps less than 0.5) under the optimizer's own ``meta``.
* :func:`plasticity_ranking`: layers ordered by how much they still change (mean flip rate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.optim import Optimizer

from metaspike.layer_selection import synapse_role
from metaspike.optim import consolidates
from metaspike.rules import get_rule
from metaspike.synapse import is_hidden_weight, weight_matrices

__all__ = ["hidden_weight_histograms", "HISTOGRAM_QUANTITIES", "sign_snapshot", "flip_rates", "consolidated_fractions",
           "plasticity_ranking"]


#: What a histogram's values are, by the tensor's role (:func:`~metaspike.layer_selection.synapse_role`): a binary
#: synapse's hidden weight, a BiMU latent weight, a MESU mean, or a float layer's weight.
HISTOGRAM_QUANTITIES = {"hidden": "hidden weight", "latent": "latent lambda", "mean": "mean mu", "float": "weight"}


def _quantity(weight: torch.Tensor) -> str:
    role = synapse_role(weight)
    return HISTOGRAM_QUANTITIES[role if role is not None else "hidden" if is_hidden_weight(weight) else "float"]


@torch.no_grad()
def hidden_weight_histograms(model: nn.Module, bins: int = 60) -> dict[str, dict[str, list[float]]]:
    """Histogram of ``W_h`` for each layer: ``{layer: {"edges": [...], "counts": [...], "median_abs": m,
    "quantity": q}}``, where ``q`` (:data:`HISTOGRAM_QUANTITIES`) says what was counted: ``W_h``, or for Bayesian
    synapses the tensor whose sign is the most probable weight (BiMU's ``λ``, MESU's ``μ``).

    Example:
        >>> h = hidden_weight_histograms(torch.nn.Sequential(torch.nn.Linear(3, 2)), bins=4)
        >>> len(h["0"]["counts"])
        4
    """
    result = {}
    for name, weight in weight_matrices(model):
        w = weight.detach().float().flatten().cpu()
        bound = max(float(w.abs().max()), 1e-6)  # (counted and spaced relative to it: the width of a float32 range
        counts = torch.histc(w / bound, bins=bins, min=-1.0, max=1.0)  # near its largest values overflowed to inf)
        edges = torch.linspace(-bound, bound, bins + 1, dtype=torch.float64)
        result[name] = {
            "shape": list(weight.shape),
            # (7 significant digits, not 6 decimals, which made the edges of weights below about 3e-5 repeat)
            "edges": [float(f"{e:.7g}") for e in edges.tolist()],
            "counts": [int(c) for c in counts.tolist()],
            "median_abs": float(w.abs().median()),
            "quantity": _quantity(weight),
        }
    return result


@torch.no_grad()
def sign_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """The sign (``W_h >= 0``) of every weight matrix, by layer name, to compare with later.

    Example:
        >>> snap = sign_snapshot(torch.nn.Sequential(torch.nn.Linear(3, 2)))
        >>> snap["0"].shape
        torch.Size([2, 3])
    """
    return {name: weight.detach() >= 0 for name, weight in weight_matrices(model)}  # the sign ste_sign shows


@torch.no_grad()
def flip_rates(before: dict[str, torch.Tensor], model: nn.Module) -> dict[str, float]:
    """Fraction of each layer's binary weights whose sign changed since ``before``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
        >>> snap = sign_snapshot(net)
        >>> with torch.no_grad():
        ...     _ = net[0].weight.neg_()
        >>> flip_rates(snap, net)["0"] > 0.9
        True
    """
    return {name: float(((weight.detach() >= 0) != before[name]).float().mean())
            for name, weight in weight_matrices(model) if name in before}


@torch.no_grad()
def consolidated_fractions(model: nn.Module, optimizer: Optimizer, threshold: float = 0.5) -> dict[str, float]:
    """Fraction of each layer's synapses whose updates toward zero are damped below ``threshold``.

    Uses the ``meta`` and ``rule`` of the optimizer's param group holding each weight matrix
    (layers outside any metaplastic group, or that their group does not consolidate, count as 0:
    :func:`metaspike.optim.consolidates`; Bayesian synapses, which consolidate by their own rule, are left out). The damping of a synapse is what the rule keeps
    of a unit update toward zero; rules with per-synapse state (``cascade``, ``switch``) damp by their
    history, not by ``W_h`` alone, and give ``nan``.

    Example:
        >>> from metaspike.optim import MetaplasticAdam
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
        >>> consolidated_fractions(net, MetaplasticAdam(net.parameters(), meta=0.0))
        {'0': 0.0}
    """
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    fractions = {}
    for name, weight in weight_matrices(model):
        if synapse_role(weight) is not None:
            continue
        group = groups.get(id(weight))
        if group is None or not group.get("meta") or not consolidates(weight, group):
            fractions[name] = 0.0
            continue
        rule = get_rule(group.get("rule", "tanh"))
        if not rule.elementwise:
            fractions[name] = math.nan
            continue
        hidden = weight.detach()
        toward_zero = torch.where(hidden >= 0, 1.0, -1.0).to(hidden.dtype)
        kept, _ = rule.step(hidden, toward_zero, group["meta"], rule.init_state(hidden))
        fractions[name] = float((kept.abs() < threshold).float().mean())
    return fractions


def plasticity_ranking(rows: Sequence[dict[str, float]]) -> list[tuple[str, float]]:
    """Layers ranked from most to least plastic by their mean flip rate over ``rows`` (one per epoch).

    Example:
        >>> plasticity_ranking([{"0": 0.1, "3": 0.02}, {"0": 0.05, "3": 0.0}])
        [('0', 0.075), ('3', 0.01)]
    """
    if not rows:
        return []
    layers = list(rows[0])
    means = {layer: sum(row[layer] for row in rows) / len(rows) for layer in layers}
    return sorted(((layer, round(value, 6)) for layer, value in means.items()), key=lambda item: -item[1])
