"""Training throughput of metaspike vs a re-implementation of the paper authors' training step.

Both train the same 784-H-H-10 binarized MLP (BatchNorm with batch statistics, sign activations
with a hard-tanh straight-through gradient) with metaplastic Adam (``meta > 0``) at batch 100.

* **metaspike**: ``bnn.MLP`` + :class:`metaspike.MetaplasticAdam`. The hidden weight is the
  parameter; its signs are written once per step into persistent float32 and bfloat16 buffers
  (one compiled pass); products of ±1 inputs with ±1 weights run in bfloat16, which is exact; the
  weight gradient is written into a reused buffer (see :mod:`metaspike.binary_linear`); the
  optimizer updates the hidden weight in place (one fused, compiled loop per weight matrix).
* **authors' style** (written here from the description of the code published with Laborieux et
  al. 2021): the layer keeps the hidden weight in ``weight.org`` and, before each forward pass,
  sets ``weight.data = sign(weight.org)``; after the backward pass the hidden weight is copied back
  into ``weight.data``, the optimizer steps with separate tensor operations, and the result is
  copied into ``weight.org``.

Timings are interleaved in one process (a busy machine slows both alike); the script prints
samples/s of both, their ratio, the share of metaspike's step spent in matrix products
(``torch.profiler``), and the test accuracy of both after one epoch on ``mnist5k``.

Usage::

    python benchmarks/train_throughput.py --hidden 1024 4096
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

import bnn
from metaspike import training
from metaspike.data import load_dataset
from metaspike.optim import MetaplasticAdam

BATCH = 100
LR = 0.005
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


# --------------------------------------------------------------------------------------------
# The authors' style of training step
# --------------------------------------------------------------------------------------------


class AuthorsSign(torch.autograd.Function):
    """``torch.sign`` forward; the gradient passes where ``|x| <= 1``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class AuthorsBinaryLinear(nn.Linear):
    """Linear layer holding the hidden weight in ``weight.org``; ``weight.data`` is its sign."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != 784:
            x.data = torch.sign(x.data)
        if not hasattr(self.weight, "org"):
            self.weight.org = self.weight.data.clone()
        self.weight.data = torch.sign(self.weight.org)
        return F.linear(x, self.weight)


class AuthorsMLP(nn.Module):
    """Linear -> BatchNorm -> sign per hidden layer; Linear -> BatchNorm at the output."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.linears = nn.ModuleList(AuthorsBinaryLinear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(b, affine=True, track_running_stats=False) for b in sizes[1:])

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for i, (linear, norm) in enumerate(zip(self.linears, self.norms)):
            x = norm(linear(x))
            if i < len(self.linears) - 1:
                x = AuthorsSign.apply(x)
        return x


class AuthorsAdamMeta(Optimizer):
    """Metaplastic Adam written as separate tensor operations, in the authors' style."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, meta: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, meta=meta))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.data
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p.data)
                    state["exp_avg_sq"] = torch.zeros_like(p.data)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction1 = 1 - beta1 ** state["step"]
                bias_correction2 = 1 - beta2 ** state["step"]
                denom = exp_avg_sq.sqrt() / math.sqrt(bias_correction2) + group["eps"]
                step_size = group["lr"] / bias_correction1
                binary_weight_before_update = torch.sign(p.data)
                condition_consolidation = torch.mul(binary_weight_before_update, exp_avg) > 0.0
                decay = torch.ones_like(p.data) - torch.pow(torch.tanh(group["meta"] * torch.abs(p.data)), 2)
                decayed_exp_avg = torch.mul(decay, exp_avg)
                if p.dim() == 1:
                    p.data.addcdiv_(exp_avg, denom, value=-step_size)
                else:
                    p.data.addcdiv_(torch.where(condition_consolidation, decayed_exp_avg, exp_avg), denom, value=-step_size)


def authors_step(model: nn.Module, optimizer: Optimizer, x: Tensor, y: Tensor) -> float:
    """One training step as in the authors' loop: copy hidden weights around the optimizer step."""
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    hidden = [p for p in model.parameters() if hasattr(p, "org")]
    for p in hidden:
        p.data.copy_(p.org)
    optimizer.step()
    for p in hidden:
        p.org.copy_(p.data)
    return loss.item()


# --------------------------------------------------------------------------------------------
# metaspike's training step
# --------------------------------------------------------------------------------------------


def metaspike_step(model: nn.Module, optimizer: Optimizer, x: Tensor, y: Tensor) -> float:
    """One training step with ``bnn.MLP`` and ``MetaplasticAdam``."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


Step = Callable[[nn.Module, Optimizer, Tensor, Tensor], float]


def make_pair(hidden: int, meta: float, seed: int) -> dict[str, tuple[nn.Module, Optimizer, Step]]:
    """Both models, with the same initial hidden weights, and their optimizers and steps."""
    torch.manual_seed(seed)
    ours = bnn.MLP([784, hidden, hidden, 10])
    theirs = AuthorsMLP([784, hidden, hidden, 10])
    with torch.no_grad():
        for mine, other in zip([m for m in ours if isinstance(m, bnn.BinaryLinear)], theirs.linears):
            other.weight.copy_(mine.weight)
    return {
        "metaspike": (ours, MetaplasticAdam(ours.parameters(), lr=LR, meta=meta), metaspike_step),
        "authors": (theirs, AuthorsAdamMeta(theirs.parameters(), lr=LR, meta=meta), authors_step),
    }


def throughput(hidden: int, meta: float, rounds: int, steps_per_round: int) -> dict[str, float]:
    """Median seconds per step of both, measured in interleaved rounds on random data."""
    pair = make_pair(hidden, meta, seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(BATCH, 1, 28, 28, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
    for model, opt, step in pair.values():  # warm-up (allocations; metaspike compiles its fused step)
        for _ in range(2):
            step(model, opt, x, y)
    times: dict[str, list[float]] = {name: [] for name in pair}
    for _ in range(rounds):
        for name, (model, opt, step) in pair.items():
            for _ in range(steps_per_round):
                start = time.perf_counter()
                step(model, opt, x, y)
                times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(t) for name, t in times.items()}
    for name, (model, opt, step) in pair.items():
        result[f"{name} matmul share"] = matmul_share(lambda: step(model, opt, x, y))
    return result


def matmul_share(step: Callable[[], object], steps: int = 3) -> float:
    """Fraction of the wall time of ``step`` spent in matrix products (self time of mm/addmm/bmm)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall_us = (time.perf_counter() - start) * 1e6
    matmul_us = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMUL_OPS)
    return matmul_us / wall_us


def one_epoch_accuracy(hidden: int, meta: float, seed: int) -> dict[str, float]:
    """Test accuracy (%) of both after one epoch on mnist5k, same initial weights and batch order."""
    train, test = load_dataset("mnist5k"), load_dataset("mnist5k", "test")
    result = {}
    for name, (model, opt, step) in make_pair(hidden, meta, seed).items():
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        model.train()
        for start in range(0, len(train) - BATCH + 1, BATCH):
            index = order[start : start + BATCH]
            step(model, opt, train.x[index], train.y[index])
        result[name] = training.evaluate(model, test.x, test.y)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--meta", type=float, default=1.35)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1, help="seeds for the one-epoch accuracy check")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the one-epoch accuracy check")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, meta {args.meta}")
    for hidden in args.hidden:
        t = throughput(hidden, args.meta, args.rounds, args.steps_per_round)
        ours, theirs = BATCH / t["metaspike"], BATCH / t["authors"]
        print(f"784-{hidden}-{hidden}-10:")
        print(f"  metaspike      {ours:8.1f} samples/s  ({t['metaspike'] * 1e3:7.1f} ms/step, "
              f"{100 * t['metaspike matmul share']:.0f}% in matmuls)")
        print(f"  authors' style {theirs:8.1f} samples/s  ({t['authors'] * 1e3:7.1f} ms/step, "
              f"{100 * t['authors matmul share']:.0f}% in matmuls)")
        print(f"  speed-up       {ours / theirs:8.2f}x")
        if not args.no_accuracy:
            for seed in range(args.seeds):
                acc = one_epoch_accuracy(hidden, args.meta, seed)
                print(f"  one epoch on mnist5k, seed {seed}: test accuracy metaspike {acc['metaspike']:.1f}%, "
                      f"authors' style {acc['authors']:.1f}%")


if __name__ == "__main__":
    main()
