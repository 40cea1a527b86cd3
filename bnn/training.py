"""A short training entry point for users with one dataset: :func:`fit` and :func:`evaluate`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bnn.packed import PackedMLP
from metaspike import training
from metaspike.checks import check_device, check_seed, is_whole
from metaspike.data import ArrayDataset
from metaspike.distributed import start_alike, world
from metaspike.optim import MetaplasticAdam, param_groups

__all__ = ["fit", "evaluate"]

Data = ArrayDataset | tuple[Tensor, Tensor]


def _tensors(data: Data, what: str) -> tuple[Tensor, Tensor]:
    if isinstance(data, ArrayDataset):
        return data.x, data.y
    if isinstance(data, (tuple, list)) and len(data) == 2:
        if not all(isinstance(t, Tensor) for t in data):
            kinds = ", ".join(type(t).__name__ for t in data)
            raise ValueError(f"{what} must hold torch tensors (inputs, labels), got ({kinds}); convert numpy arrays "
                             "with torch.from_numpy")
        return data[0], data[1]
    raise ValueError(f"{what} must be an ArrayDataset or a pair (inputs, labels), got {type(data).__name__}")


def fit(
    model: nn.Module,
    train: Data,
    epochs: int = 10,
    lr: float = 0.005,
    meta: float | Sequence[float] = 0.0,
    batch_size: int = 100,
    test: Data | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``model`` with :class:`metaspike.MetaplasticAdam`; return one record per epoch.

    Each record has ``epoch``, ``loss`` and, when ``test`` is given, ``test_accuracy`` (percent); a run whose test
    accuracy never rose :data:`~metaspike.training.LEARNED_MARGIN` points above what predicting the test set's most
    common class scores ends with a :class:`~metaspike.training.LearnedNothingWarning` (a model given already trained,
    for more epochs, is measured against that too, not against where it starts).

    Under ``torchrun`` (an initialised process group) every process trains on its slice of each mini-batch and the
    gradients are averaged, so the processes take the steps one process would with the whole batch; every process
    starts from the first one's weights, and a model with BatchNorm must first pass through
    :func:`metaspike.distributed.sync_batchnorm` (it is refused otherwise). A last batch of an epoch too short to give
    every process a sample (with BatchNorm two) is skipped, where one process trains on it: the runs then differ.
    Only the first process shows progress.

    Example:
        >>> import bnn
        >>> from metaspike.data import load_dataset
        >>> model = bnn.MLP([784, 128, 10])
        >>> history = bnn.fit(model, load_dataset("digits"), epochs=2, test=load_dataset("digits", "test"), progress=False)
        >>> history[-1]["test_accuracy"] > 50
        True
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module to train, got {type(model).__name__}"
                         + (" (a packed model only predicts: bnn.evaluate takes it)" if isinstance(model, PackedMLP)
                            else ""))
    if not is_whole(epochs, 1):
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not is_whole(batch_size, 1):  # (a model with BatchNorm needs 2: train_epoch says so, naming why)
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    seed = check_seed("seed", seed)
    check_device(device)
    x, y = _tensors(train, "train")
    model.to(device)
    training.check_inputs(model, x.to(device), y.to(device), what="training data")
    test_xy = _tensors(test, "test") if test is not None else None
    if test_xy is not None:  # checked before an epoch is spent, not found wrong after it
        training.check_inputs(model, test_xy[0].to(device), test_xy[1].to(device), what="test data")
    rank, processes = world()
    start_alike(model)
    optimizer = MetaplasticAdam(param_groups(model, meta), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * -(-len(x) // batch_size), desc="fit", unit="batch")
    history = []
    try:
        for epoch in range(1, epochs + 1):
            loss = training.train_epoch(model, optimizer, x, y, batch_size, generator, device=device, progress=bar,
                                        shard=(rank, processes))
            record = {"epoch": epoch, "loss": loss}
            if test_xy is not None:
                record["test_accuracy"] = training.evaluate(model, *test_xy, device=device)
            history.append(record)
    finally:
        if bar is not None:
            bar.close()
    if test_xy is not None and rank == 0:
        _warn_if_learned_nothing(test_xy[1], max(record["test_accuracy"] for record in history))
    return history


def _warn_if_learned_nothing(labels: Tensor, best: float) -> None:
    """A :class:`~metaspike.training.LearnedNothingWarning` where the ``best`` test accuracy of a run rose less than
    :data:`~metaspike.training.LEARNED_MARGIN` points above the share of the most common of the test ``labels``
    (what a model that always predicts it scores), which left room for it (a test set of one class has none)."""
    margin = training.LEARNED_MARGIN
    chance = 100.0 * int(torch.bincount(labels.cpu()).max()) / len(labels)
    if best - chance < margin <= 100.0 - chance:
        warnings.warn(training.LearnedNothingWarning(
            f"bnn.fit: the test accuracy never rose {margin:g} points or more above what predicting the most common "
            f"test class scores ({chance:.1f} %, best {best:.1f} %): the model learned nothing; check lr, meta and "
            "the data's labels, and in a spiking model whether its hidden neurons fire"), stacklevel=3)


def evaluate(model: nn.Module | PackedMLP, data: Data, batch_size: int = 1000, device: str = "cpu") -> float:
    """Accuracy of ``model`` (a torch model, or a :class:`bnn.PackedMLP` on the CPU) on ``data`` in percent.

    Example:
        >>> import bnn
        >>> from metaspike.data import load_dataset
        >>> 0 <= bnn.evaluate(bnn.MLP([784, 32, 10]), load_dataset("digits", "test")) <= 100
        True
    """
    check_device(device)
    x, y = _tensors(data, "data")
    if isinstance(model, PackedMLP):
        return _packed_accuracy(model, x, y, batch_size, device)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module or a bnn.PackedMLP, got {type(model).__name__}")
    training.check_inputs(model.to(device), x.to(device), y.to(device))
    return training.evaluate(model, x, y, batch_size, device=device)


def _packed_accuracy(model: PackedMLP, x: Tensor, y: Tensor, batch_size: int, device: str) -> float:
    """Accuracy (%) of a packed model, which runs on the CPU, in batches of ``batch_size``."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"device {device!r}: a bnn.PackedMLP runs on the CPU; leave device as 'cpu'")
    if not is_whole(batch_size, 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if len(x) == 0:
        raise ValueError("data is empty")
    training.check_labels(y, len(x), model.sizes[-1], "data")
    correct = sum(int((model.predict(x[i:i + batch_size]) == y[i:i + batch_size].cpu()).sum())
                  for i in range(0, len(x), batch_size))
    return 100.0 * correct / len(x)
