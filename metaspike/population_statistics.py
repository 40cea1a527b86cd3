"""Fixed (population) BatchNorm statistics, so a trained BNN can predict one sample at a time.

Used by ``bnn.pack`` (as ``bnn.use_population_statistics``) and by the EWC baseline, whose
per-sample Fisher needs a network in which one sample has a defined output.

The paper's BatchNorm normalises with the statistics of the evaluated batch
(``track_running_stats=False``), which is undefined for a single sample.
:func:`use_population_statistics` estimates each BatchNorm layer's mean and variance on data
(layer by layer, with the earlier layers already fixed) and makes the model use them in eval mode.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from metaspike.checks import is_whole, nan_or_infinite
from metaspike.compiled import uncompiled
from metaspike.modes import evaluation_mode

__all__ = ["use_population_statistics", "accept_saved_population_statistics", "statistics_outdated",
           "evaluates_with_batch_statistics"]


@torch.no_grad()
def use_population_statistics(model: nn.Module, x: Tensor, batch_size: int = 1000) -> nn.Module:
    """Fix every BatchNorm layer of ``model`` to the mean/variance of its input over ``x``.

    Afterwards ``model.eval()`` predicts with those statistics (any batch size, including 1);
    ``model.train()`` still normalises with batch statistics. Returns ``model``; the model keeps its training or
    evaluation mode. ``x`` (at least 2 finite samples) runs in near-equal chunks of at least ``batch_size`` (an
    integer >= 2) samples: the BatchNorm layers not fixed yet normalise each chunk by its own statistics. A BatchNorm
    layer the forward pass never reaches (the head of another task in a multi-head model) keeps its statistics, and
    one warning names it.

    Example:
        >>> from bnn import MLP
        >>> model = use_population_statistics(MLP([784, 64, 10]), torch.rand(500, 784)).eval()
        >>> model(torch.rand(1, 784)).shape
        torch.Size([1, 10])
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module with BatchNorm layers, got {type(model).__name__}")
    if not isinstance(x, Tensor):
        gather = ("pass its inputs tensor, its .x" if isinstance(getattr(x, "x", None), Tensor) else
                  "gather them first (e.g. torch.cat([x for x, _ in loader]), or torch.as_tensor(array, "
                  "dtype=torch.float32))")
        raise ValueError(f"x must be one tensor of training inputs, got a {type(x).__name__}: {gather}")
    norms = [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer to fix")
    if len(x) < 2:
        raise ValueError(f"need at least 2 samples to estimate statistics, got {len(x)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or infinite values; the statistics need finite inputs")
    if not is_whole(batch_size, 2):
        raise ValueError(f"batch_size must be an integer >= 2, got {batch_size!r}")
    # near-equal chunks of at least batch_size samples (>= 2): the layers not fixed yet normalise with batch statistics
    chunks = torch.arange(len(x)).tensor_split(max(1, len(x) // batch_size))
    # (no inference tensors, even under torch.inference_mode: the model's next forward pass with gradients could not
    # save them for its backward pass)
    before = [(norm, norm.running_mean, norm.running_var, norm.num_batches_tracked) for _, norm in norms]
    with evaluation_mode(model), torch.inference_mode(False), torch.no_grad():
        try:
            unreached = _fix_each(model, norms, x, chunks)
        except BaseException:  # (the layers fixed before the failure get their statistics back: all or nothing)
            for norm, *statistics in before:
                norm.running_mean, norm.running_var, norm.num_batches_tracked = statistics
            raise
    if unreached:
        warnings.warn(f"use_population_statistics: the forward pass on x never reached BatchNorm layer(s) "
                      f"{', '.join(map(repr, unreached))} (a head not in use?); their statistics are left as they "
                      "were: fix them with a call that runs through them (e.g. with that head selected)",
                      stacklevel=3)  # (the caller of use_population_statistics, past no_grad)
    owner = uncompiled(model)  # (the record stays with the model a torch.compile'd one wraps)
    owner.__dict__[_FIXED_WITH] = _fingerprints(owner)
    return model


#: The attribute (of the module given to :func:`use_population_statistics`) holding what its weights and statistics
#: were when the statistics were fixed, for :func:`statistics_outdated`.
_FIXED_WITH = "_population_statistics_fixed_with"
_PROBES = 64  # entries of each tensor kept: a training step moves nearly every weight, so one of 64 moves


def _fingerprint(t: Tensor) -> Tensor:
    """``_PROBES`` entries of ``t`` at fixed, evenly spread places, as float64 on the CPU: compared exactly, they
    change when the tensor is trained and not when it is moved, converted to a wider dtype or summed by other
    threads."""
    flat = t.detach().reshape(-1)
    count = min(_PROBES, flat.numel())  # (integer places: float32's linspace rounded the last past the end above 2^24)
    places = torch.arange(count, device=flat.device) * max(flat.numel() - 1, 0) // max(count - 1, 1)
    return flat[places].to("cpu", torch.float64)


def _fingerprints(model: nn.Module) -> dict[str, dict[str, Tensor]]:
    """By name, the fingerprints of ``model``'s BatchNorm running means and of the parameters registered before its
    last BatchNorm (those after it, a classifier head, do not change the statistics)."""
    statistics, weights = {}, {}
    last_norm = max((i for i, m in enumerate(model.modules()) if isinstance(m, _BatchNorm)), default=-1)
    for i, (name, module) in enumerate(model.named_modules()):
        if isinstance(module, _BatchNorm) and module.running_mean is not None:
            statistics[name] = _fingerprint(module.running_mean)
        if i < last_norm:
            weights.update({f"{name}.{key}": _fingerprint(p) for key, p in module.named_parameters(recurse=False)})
    return {"weights": weights, "statistics": statistics}


def _equal(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def statistics_outdated(model: nn.Module) -> bool:
    """Whether a module of ``model`` whose BatchNorm statistics :func:`use_population_statistics` fixed has had its
    weights changed since, while the statistics stayed (training does not update fixed statistics: evaluation and
    ``bnn.pack`` would use ones measured on other weights). Statistics fixed again or loaded since count as new; the
    parameters after the last BatchNorm (a head trained on fixed features) do not count. A copy keeps the record.

    Example:
        >>> from bnn import MLP
        >>> model = use_population_statistics(MLP([4, 3, 2]), torch.rand(8, 4))
        >>> before = statistics_outdated(model)
        >>> with torch.no_grad():
        ...     _ = model[1].weight.mul_(-1)
        >>> before, statistics_outdated(model)
        (False, True)
    """
    for module in model.modules():
        fixed = module.__dict__.get(_FIXED_WITH)
        if fixed is None:
            continue
        now = _fingerprints(module)
        if now["statistics"].keys() != fixed["statistics"].keys() or not all(
                _equal(t, fixed["statistics"][name]) for name, t in now["statistics"].items()):
            continue  # (statistics fixed again, loaded or replaced: they go with the weights they came with)
        if any(name in fixed["weights"] and not _equal(t, fixed["weights"][name]) for name, t in now["weights"].items()):
            return True
    return False


def _fix_each(model: nn.Module, norms: list[tuple[str, _BatchNorm]], x: Tensor,
              chunks: tuple[Tensor, ...]) -> list[str]:
    """Fix each of ``norms`` (``(name, layer)`` in forward order) to the statistics of its input over ``x``, earlier
    layers fixed when a later one is measured; returns the names of those the forward pass never reached (left as
    they were)."""
    unreached = []
    for name, norm in norms:
        measured = _input_statistics(model, norm, x, chunks)
        if measured is None:
            unreached.append(name)
            continue
        mean, var, count = measured
        dtype = norm.weight.dtype if norm.weight is not None else torch.float32
        mean, var = mean.to(dtype), var.to(dtype)
        if any(nan_or_infinite(mean)) or any(nan_or_infinite(var)):  # (float64 sums, then the layer's dtype)
            raise ValueError(f"the statistics of BatchNorm layer {name!r} over x overflow {dtype} (largest |mean| "
                             f"{measured[0].abs().max().item():.3g}, largest variance {measured[1].max().item():.3g}; "
                             f"{dtype} holds up to {torch.finfo(dtype).max:.3g}): scale x down, e.g. standardize it")
        norm.running_mean, norm.running_var = mean, var
        norm.num_batches_tracked = torch.tensor(count, dtype=torch.long)
    return unreached


def _input_statistics(model: nn.Module, norm: _BatchNorm, x: Tensor,
                      chunks: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, int] | None:
    """``(mean, unbiased variance, count)`` per channel of what ``norm`` receives while ``model`` runs on ``x`` chunk
    by chunk (float64); ``None`` when the forward pass never calls ``norm`` (a head not in use)."""
    total = sq_total = None
    count = 0

    def record(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        nonlocal total, sq_total, count
        h = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1).double()
        s, sq = h.sum(1), h.square().sum(1)
        total = s if total is None else total + s
        sq_total = sq if sq_total is None else sq_total + sq
        count += h.shape[1]

    handle = norm.register_forward_pre_hook(record)
    try:
        for index in chunks:
            model(x[index])
    finally:
        handle.remove()
    if total is None:
        return None
    mean = total / count
    var = (sq_total / count - mean.square()).clamp_min(0) * count / max(count - 1, 1)
    return mean, var, count


def _make_room_for_statistics(module: _BatchNorm, state_dict: dict, prefix: str, *args: object) -> None:
    saved = state_dict.get(prefix + "running_mean")
    if isinstance(saved, Tensor) and module.running_mean is None:
        like = module.weight if module.weight is not None else saved  # the layer's dtype and device
        module.running_mean = torch.zeros(module.num_features, dtype=like.dtype, device=like.device)
        module.running_var = torch.ones(module.num_features, dtype=like.dtype, device=like.device)
        module.num_batches_tracked = torch.tensor(0, dtype=torch.long, device=like.device)


def accept_saved_population_statistics(model: nn.Module) -> nn.Module:
    """Let ``model``'s BatchNorm layers that normalise with batch statistics load a state dict saved after
    :func:`use_population_statistics` (which adds the running mean and variance): without it, a fresh model of the
    same sizes refuses those keys. ``bnn.MLP`` and ``bnn.ConvNet`` call it. Returns ``model``.

    Example:
        >>> from bnn import MLP
        >>> saved = use_population_statistics(MLP([4, 3, 2]), torch.rand(8, 4)).state_dict()
        >>> fresh = MLP([4, 3, 2])  # (accept_saved_population_statistics was called by MLP)
        >>> fresh.load_state_dict(saved); fresh[2].running_mean.shape
        <All keys matched successfully>
        torch.Size([3])
    """
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.register_load_state_dict_pre_hook(_make_room_for_statistics)
    return model


def evaluates_with_batch_statistics(model: nn.Module) -> bool:
    """Whether a BatchNorm layer of ``model`` normalises by the statistics of each batch in eval mode too (it keeps
    no running statistics, fixed or tracked).

    Example:
        >>> evaluates_with_batch_statistics(nn.BatchNorm1d(3, track_running_stats=False))
        True
    """
    return any(isinstance(m, _BatchNorm) and m.running_mean is None for m in model.modules())
