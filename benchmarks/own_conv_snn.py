"""Metaplasticity on a user's own snnTorch conv SNN: how much of task 1 each m keeps, and at what cost to task 2.

The network is written as an snnTorch tutorial writes one, not taken from metaspike's registry: conv 8 (3x3), max-pool,
``Leaky``, conv 16 (3x3), ``Leaky``, linear, ``Leaky`` (output), ``init_hidden=True``, rate-coded input over 25 steps,
the readout the output membrane averaged over the steps; ``metaspike.binarize`` makes its synapses binary in one line.
Two tasks: scikit-learn's 8x8 digits (scaled to [0, 1], 1,437 training and 360 test images) and the same images under
one fixed pixel permutation; Adam at ``--lr`` through ``MetaplasticAdam(param_groups(net, m))``, ``--epochs`` a task,
batch 64. ``--freeze-gains`` leaves the learned output gains (never consolidated) at their start (``gain_lr=0``);
``--freeze-unconsolidated`` lets every parameter no consolidation acts on (gains, biases) learn during task 1 only
(:class:`metaspike.continual.FreezeUnconsolidated`, called as the trainer calls it). ``--network norse`` trains a Norse
conv SNN instead (conv 8, LIF, max-pool, linear, leaky-integrator readout, its largest membrane over the steps), and
``--network cnn`` a CNN of torch layers with BatchNorm (two conv-BatchNorm-ReLU blocks, a linear readout).
Prints, per m, task 1's accuracy after task 1, then task 1's and task 2's after task 2 (means over ``--seeds``), and
writes them to ``--out``/own_conv_snn.csv with the network, the settings, the CPU and torch's threads: each call writes
the file anew, so give each network and setting its own ``--out`` (``benchmarks/results/own_conv_snn_zen5`` holds the
rows of six such calls, put together).

    OMP_NUM_THREADS=1 python benchmarks/own_conv_snn.py [--meta 0 5 10 30] [--seeds 0 1 2] [--freeze-gains]
        [--freeze-unconsolidated]
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import (
    RUNS,
    check_distinct,
    machine,
    machine_fields,
    nonnegative_float,
    output_folder,
    positive_float,
    positive_int,
    run_benchmark,
    seed_int,
)
from torch import nn

import metaspike
from metaspike.continual import FreezeUnconsolidated

STEPS = 25
BATCH = 64


def digits_tasks(split_seed: int = 0, permutation_seed: int = 123) -> list[tuple[torch.Tensor, ...]]:
    """``(x_train, y_train, x_test, y_test)`` of the two tasks: the digits, then their pixels under one permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    train, test = order[:1437], order[1437:]
    permutation = torch.randperm(64, generator=torch.Generator().manual_seed(permutation_seed))

    def permuted(images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, permutation].view_as(images)

    return [(x[train], y[train], x[test], y[test]),
            (permuted(x[train]), y[train], permuted(x[test]), y[test])]


def conv_snn() -> nn.Sequential:
    """The user's network, binarized in one line."""
    import snntorch as snn
    from snntorch import surrogate

    spike = surrogate.fast_sigmoid(slope=25)
    return metaspike.binarize(nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.MaxPool2d(2), snn.Leaky(0.9, spike_grad=spike, init_hidden=True),
        nn.Conv2d(8, 16, 3, padding=1), snn.Leaky(0.9, spike_grad=spike, init_hidden=True), nn.Flatten(),
        nn.Linear(16 * 3 * 3, 10), snn.Leaky(0.9, spike_grad=spike, init_hidden=True, output=True)))


def scores(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The output membrane averaged over the time steps of rate-coded ``x``."""
    from snntorch import spikegen, utils

    utils.reset(net)
    spikes, membranes = spikegen.rate(x, num_steps=STEPS), []
    with metaspike.binarized_once():
        for step in spikes:
            _, membrane = net(step)
            membranes.append(membrane)
    return torch.stack(membranes).mean(0)


def norse_conv_snn() -> nn.Module:
    """A Norse user's conv SNN, binarized in one line: conv 8 (3x3), LIF, max-pool, linear, leaky-integrator readout."""
    import norse.torch as norse

    return metaspike.binarize(norse.SequentialState(
        nn.Conv2d(1, 8, 3), norse.LIFCell(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 3 * 3, 10), norse.LICell()))


def norse_scores(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The readout's largest membrane over the time steps of rate-coded ``x`` (Norse's tutorials' readout)."""
    state, outputs = None, []
    with metaspike.binarized_once():
        for _ in range(STEPS):
            output, state = net((torch.rand_like(x) < x).float(), state)
            outputs.append(output)
    return torch.stack(outputs).max(0).values


def batchnorm_cnn() -> nn.Sequential:
    """A plain CNN of torch layers with BatchNorm (running statistics), binarized in one line."""
    return metaspike.binarize(nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4 * 4, 10)))


#: Each ``--network``: how it is built and how it scores a batch.
NETWORKS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module, torch.Tensor], torch.Tensor]]] = {
    "snntorch": (conv_snn, scores), "norse": (norse_conv_snn, norse_scores),
    "cnn": (batchnorm_cnn, lambda net, x: net(x))}


def two_tasks(meta: float, seed: int, epochs: int, lr: float, freeze_gains: bool,
              freeze_unconsolidated: bool = False, network: str = "snntorch") -> tuple[float, float, float]:
    """Task 1's accuracy after task 1, task 1's and task 2's after task 2 (percent)."""
    torch.manual_seed(seed)
    tasks = digits_tasks()
    build, scores = NETWORKS[network]
    net = build()
    optimizer = metaspike.MetaplasticAdam(
        metaspike.param_groups(net, meta, gain_lr=0.0 if freeze_gains else None), lr=lr)
    freezing = [FreezeUnconsolidated(after_tasks=1)] if freeze_unconsolidated else []
    after = []
    for x_train, y_train, _, _ in tasks:
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(y_train))
            for start in range(0, len(y_train), BATCH):
                batch = order[start:start + BATCH]
                loss = F.cross_entropy(scores(net, x_train[batch]), y_train[batch])
                optimizer.zero_grad()
                loss.backward()
                for plugin in freezing:
                    plugin.before_step(net)
                optimizer.step()
        for plugin in freezing:
            plugin.task_done(net, x_train, y_train, None)
        net.eval()
        with torch.no_grad():
            after.append([100 * (scores(net, x).argmax(-1) == y).float().mean().item() for _, _, x, y in tasks])
    return after[0][0], after[1][0], after[1][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta", type=nonnegative_float, nargs="+", default=[0.0, 5.0, 10.0, 30.0])
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=positive_int, default=4)
    parser.add_argument("--lr", type=positive_float, default=5e-3)
    parser.add_argument("--network", choices=list(NETWORKS), default="snntorch",
                        help="the user's network: the snnTorch conv SNN (default), a Norse conv SNN, or a CNN of torch "
                             "layers with BatchNorm")
    parser.add_argument("--freeze-gains", action="store_true", help="leave the learned output gains at their start")
    parser.add_argument("--freeze-unconsolidated", action="store_true",
                        help="let the parameters no consolidation acts on (gains, biases) learn during task 1 only")
    parser.add_argument("--out", type=output_folder, default=RUNS / "own_conv_snn", help="folder of own_conv_snn.csv")
    args = parser.parse_args()
    check_distinct(parser, "--seeds", args.seeds)
    check_distinct(parser, "--meta", args.meta)
    print(machine(), flush=True)
    rows = []
    print(f"{'meta':>6} {'task 1 after task 1':>20} {'task 1 after task 2':>20} {'task 2 after task 2':>20}")
    for meta in args.meta:
        runs = [two_tasks(meta, seed, args.epochs, args.lr, args.freeze_gains, args.freeze_unconsolidated, args.network)
                for seed in args.seeds]
        means = [statistics.fmean(column) for column in zip(*runs)]
        print(f"{meta:>6g} {means[0]:>20.1f} {means[1]:>20.1f} {means[2]:>20.1f}", flush=True)
        rows.append({"network": args.network, "meta": meta, "gains": "frozen" if args.freeze_gains else "trained",
                     "unconsolidated": "task 1 only" if args.freeze_unconsolidated else "every task",
                     "seeds": len(args.seeds),
                     "task1_after_task1": round(means[0], 2), "task1_after_task2": round(means[1], 2),
                     "task2_after_task2": round(means[2], 2), **machine_fields()})
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "own_conv_snn.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"table: {args.out / 'own_conv_snn.csv'}")


if __name__ == "__main__":
    run_benchmark(main)
