"""Training throughput of metaspike vs a re-implementation of the paper authors' training step.

Both train the same 784-H-H-10 binarized MLP (BatchNorm with batch statistics, sign activations
with a hard-tanh straight-through gradient) with metaplastic Adam (``meta > 0``) at batch 100.

* **metaspike**: ``bnn.MLP`` + :class:`metaspike.MetaplasticAdam`. The hidden weight is the
  parameter; its signs are written once per step into persistent buffers (one compiled pass); each
  product of ±1 inputs by ±1 weights uses the fastest exact product of the machine (popcount of packed bits, int8,
  bfloat16 or float32, timed once per process and shape; see :mod:`bnn.binary_linear`); each backward product of
  a real gradient by a ±1 operand uses the faster of ``torch.mm`` and, with AVX-512, native table lookups (both
  float32); the other float32 products (the first layer's) go to ``torch.mm`` or oneDNN, whichever runs the CPU's
  widest kernels (:mod:`bnn.float32_products`); the weight gradient is written into a reused buffer; the optimizer updates the hidden weight in place (one fused,
  compiled loop per weight matrix). Run twice: with the default float32 backward products, and
  with the opt-in ``precision="bfloat16"`` ones (``metaspike bf16``; left out where torch emulates bfloat16).
* **authors' style** (written here from the description of the code published with Laborieux et
  al. 2021): the layer keeps the hidden weight in ``weight.org`` and, before each forward pass,
  sets ``weight.data = sign(weight.org)``; after the backward pass the hidden weight is copied back
  into ``weight.data``, the optimizer steps with separate tensor operations, and the result is
  copied into ``weight.org``.

Both run with freed memory kept in the process (:func:`metaspike.allocator.keep_freed_memory`, as the
``metaspike`` command runs): with glibc's default (``--release-freed-memory``) the authors' step, which allocates
its temporaries anew every step, faults them in again from the system, and by how much depends on what the process
freed before (glibc moves its thresholds as it goes): its 784-1024-1024-10 step took 68 ms when that size ran first
and 36 ms when it ran after 4096, so figures taken that way depend on the order of ``--hidden``.

Timings are interleaved in one process (a busy machine slows all alike): each round runs
``--steps-per-round`` steps of every contestant; the speed-up is the median over rounds of the
same round's ratio, with its range. The script also prints the product each binary layer used,
where the step's time goes (``torch.profiler``: matrix products, optimizer, BatchNorm, the rest)
and the test accuracy of all after one epoch on ``mnist5k``. It also checks, at each
binary layer of the timed step, that every exact product the device offers equals the float32 product bit for bit
(``torch.equal``). The CPU model, its relevant flags, torch's version and threads and the load average head the
output, which also goes to ``benchmarks/results/runs/train_throughput_<cpu-kind>_<N>thread(s).txt`` (git-ignored;
e.g. ``runs/train_throughput_amd-epyc-avx2-family23_1thread.txt``), so figures from different machines and thread
counts are never mixed and a trial run never replaces published figures; publishing into ``benchmarks/results/``
takes an explicit ``--out``. With ``--device cuda`` both contestants run on the GPU, the GPU's name heads the output
and the file is ``runs/train_throughput_cuda-<gpu>_<N>thread(s).txt``; there the step's shares come from the GPU
time of its kernels (``torch.profiler`` with CUDA activity).

Usage::

    python benchmarks/train_throughput.py --hidden 1024 4096 --seeds 3 \
        --out benchmarks/results/train_throughput_<cpu-kind>.txt
    python benchmarks/train_throughput.py --device cuda --hidden 4096
    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --hidden 64 --rounds 1 --steps-per-round 1 --no-accuracy
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import (
    FLAGS,
    cpu,
    load_average_line,
    machine,
    nonnegative_float,
    output_file,
    positive_int,
    run_benchmark,
    run_file,
)
from torch import Tensor, nn
from torch.optim import Optimizer

import bnn
from bnn.binary_linear import (
    _DTYPES,
    LOOKUP_EVENT,
    POPCOUNT_EVENT,
    SLOW_BFLOAT16,
    backward_products_used,
    bfloat16_slowdown,
    product_kinds,
    product_used,
    signs_product,
)
from bnn.float32_products import float32_library
from metaspike import training
from metaspike.allocator import keep_freed_memory
from metaspike.checks import check_device
from metaspike.data import load_dataset
from metaspike.optim import MetaplasticAdam

BATCH = 100
LR = 0.005
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_int_mm", "mkldnn::_linear_pointwise", POPCOUNT_EVENT,
              LOOKUP_EVENT)
BATCH_NORM_OPS = ("aten::native_batch_norm", "aten::native_batch_norm_backward")


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
Contestants = dict[str, tuple[nn.Module, Optimizer, Step]]


def with_bfloat16(device: torch.device) -> bool:
    """Whether the opt-in bfloat16 backward products are worth timing on ``device``: not where torch emulates them
    (``BinaryLinear(precision="bfloat16")`` warns there; an AVX2-only AMD EPYC took 13 s a step at 4096)."""
    return bfloat16_slowdown(device) <= SLOW_BFLOAT16


def make_contestants(hidden: int, meta: float, seed: int, device: torch.device) -> Contestants:
    """metaspike (float32 and, where the device has bfloat16 products, bfloat16 backward products) and the authors'
    style, same initial hidden weights, on ``device``."""
    sizes = [784, hidden, hidden, 10]
    torch.manual_seed(seed)
    ours = bnn.MLP(sizes)
    ours_bf16 = bnn.MLP(sizes)
    ours_bf16.load_state_dict(ours.state_dict())
    for layer in ours_bf16.modules():
        if isinstance(layer, bnn.BinaryLinear):
            layer.precision = "bfloat16"
    theirs = AuthorsMLP(sizes)
    with torch.no_grad():
        for mine, other in zip([m for m in ours if isinstance(m, bnn.BinaryLinear)], theirs.linears):
            other.weight.copy_(mine.weight)
    ours, ours_bf16, theirs = ours.to(device), ours_bf16.to(device), theirs.to(device)
    bf16 = {"metaspike bf16": (ours_bf16, MetaplasticAdam(ours_bf16.parameters(), lr=LR, meta=meta), metaspike_step)}
    return {
        "metaspike": (ours, MetaplasticAdam(ours.parameters(), lr=LR, meta=meta), metaspike_step),
        **(bf16 if with_bfloat16(device) else {}),
        "authors": (theirs, AuthorsAdamMeta(theirs.parameters(), lr=LR, meta=meta), authors_step),
    }


def products_used(model: nn.Module, x: Tensor) -> list[str]:
    """``"<in>x<out>: <product>"`` for each binary layer of ``model``, as a training step on ``x`` computes it, for a
    layer of ±1 inputs which exact products equal the float32 one bit for bit (all of them, or the run stops), and its
    backward products; each float32 product names its library (``"float32 by oneDNN"``, see
    :mod:`bnn.float32_products`)."""
    seen: list[str] = []

    def record(layer: nn.Module, args: tuple[Tensor, ...]) -> None:
        library = float32_library(args[0].device)

        def named(kind: str) -> str:
            return f"{kind} by {library}" if kind == "float32" else kind

        used = product_used(args[0], layer)
        backward = ", ".join(f"{name} {named(kind)}" for name, kind in backward_products_used(args[0], layer).items())
        seen.append(f"{layer.in_features}x{layer.out_features}: {named(used)}"
                    f"{exact_products(layer, args[0])}{f' (backward: {backward})' if backward else ''}")

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, bnn.BinaryLinear)]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def exact_products(layer: nn.Module, x: Tensor) -> str:
    """``" (int8 = bfloat16 = float32 bit for bit)"`` for the exact products of ``layer`` on ±1 input ``x``, checked
    with ``torch.equal``; ``""`` for a layer whose input is not ±1. A product that differs stops the benchmark."""
    x = x.detach().flatten(1)
    if x.shape[1] != layer.in_features or not bool(x.abs().eq(1).all()):
        return ""
    with torch.no_grad():
        exact = x @ layer.signs().T
        kinds = product_kinds(x.device, *x.shape, layer.out_features)
        for kind in kinds:
            if not torch.equal(signs_product(x, layer.signs(_DTYPES[kind]), kind), exact):
                raise SystemExit(f"the {kind} product of a {layer.in_features}x{layer.out_features} layer on "
                                 f"{x.device} differs from the float32 product")
    return f" ({' = '.join(kinds)} bit for bit)"


def throughput(hidden: int, meta: float, rounds: int, steps_per_round: int, device: torch.device) -> dict[str, object]:
    """Per contestant: the median seconds per step of each round and where the time goes, on random data."""
    contestants = make_contestants(hidden, meta, seed=0, device=device)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(BATCH, 1, 28, 28, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
    x, y = x.to(device), y.to(device)
    for model, opt, step in contestants.values():  # warm-up (allocations, timing probes, compiled steps)
        for _ in range(2):
            step(model, opt, x, y)
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, (model, opt, step) in contestants.items():
            samples = []
            for _ in range(steps_per_round):
                start = time.perf_counter()
                step(model, opt, x, y)  # (returns the loss as a float: the device has finished the step)
                samples.append(time.perf_counter() - start)
            times[name].append(statistics.median(samples))
    shares = {name: time_shares(lambda m=model, o=opt, s=step: s(m, o, x, y), device)
              for name, (model, opt, step) in contestants.items()}
    return {"times": times, "shares": shares, "products": products_used(contestants["metaspike"][0], x)}


def time_shares(step: Callable[[], object], device: torch.device, steps: int = 3) -> dict[str, float]:
    """Fractions of the wall time of ``step`` in matrix products, the optimizer step and BatchNorm: the CPU time of
    those operators, or on a GPU the time of the kernels they launched."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall_us = (time.perf_counter() - start) * 1e6
    events = prof.key_averages()
    own, total = ("self_device_time_total", "device_time_total") if gpu else ("self_cpu_time_total", "cpu_time_total")
    return {
        "products": sum(getattr(e, own) for e in events if e.key in MATMUL_OPS) / wall_us,
        "optimizer": sum(getattr(e, total) for e in events if e.key.startswith("Optimizer.step#")) / wall_us,
        "BatchNorm": sum(getattr(e, own) for e in events if e.key in BATCH_NORM_OPS) / wall_us,
    }


def one_epoch_accuracy(hidden: int, meta: float, seed: int, device: torch.device) -> dict[str, float]:
    """Test accuracy (%) of each contestant after one epoch on mnist5k, same initial weights and batch order."""
    train, test = load_dataset("mnist5k"), load_dataset("mnist5k", "test")
    x, y = train.x.to(device), train.y.to(device)
    result = {}
    for name, (model, opt, step) in make_contestants(hidden, meta, seed, device).items():
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).to(device)
        model.train()
        for start in range(0, len(train) - BATCH + 1, BATCH):
            index = order[start : start + BATCH]
            step(model, opt, x[index], y[index])
        result[name] = training.evaluate(model, test.x, test.y, device=device)
    return result


def gpu(device: torch.device) -> tuple[str, str]:
    """``(name, kind)`` of the CUDA ``device``, e.g. ``("NVIDIA H200", "cuda-nvidia-h200")``."""
    name = torch.cuda.get_device_name(device)
    return name, "cuda-" + "-".join(re.findall(r"[a-z0-9]+", name.lower()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=positive_int, nargs="+", default=[1024, 4096])
    parser.add_argument("--meta", type=nonnegative_float, default=1.35)
    parser.add_argument("--rounds", type=positive_int, default=10)
    parser.add_argument("--steps-per-round", type=positive_int, default=3)
    parser.add_argument("--seeds", type=positive_int, default=1, help="seeds for the one-epoch accuracy check")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the one-epoch accuracy check")
    parser.add_argument("--out", type=output_file, default=None,
                        help="results file (default: the git-ignored results/runs/train_throughput_<kind>_<N>thread(s)"
                             ".txt; publish with --out benchmarks/results/train_throughput_<kind>.txt)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    parser.add_argument("--release-freed-memory", action="store_true",
                        help="keep glibc's default of returning freed memory (the metaspike command keeps it)")
    args = parser.parse_args()
    try:
        device = check_device(args.device, "--device")
    except ValueError as err:
        parser.error(str(err))
    kept = not args.release_freed_memory and keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    _, kind, flags = cpu()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    say(machine())
    say(f"flags: {' '.join(flags) or 'none of ' + ', '.join(FLAGS)}")
    if device.type == "cuda":
        gpu_name, kind = gpu(device)
        say(f"GPU: {gpu_name} ({device}); both contestants run on it")
    say(load_average_line("before"))
    if not with_bfloat16(device):
        say(f"metaspike bf16 left out: bfloat16 products take {bfloat16_slowdown(device):.1f}x float32's time on this "
            f"{device.type} (emulated; BinaryLinear(precision='bfloat16') warns there)")
    say(f"batch {BATCH}, meta {args.meta}, "
        f"{args.rounds} rounds of {args.steps_per_round} steps each; freed memory "
        f"{'kept' if kept else 'returned to the system'} (metaspike.allocator)")
    for hidden in args.hidden:
        result = throughput(hidden, args.meta, args.rounds, args.steps_per_round, device)
        times, shares = result["times"], result["shares"]
        say(f"784-{hidden}-{hidden}-10: products of metaspike's binary layers: {'; '.join(result['products'])}")
        for name, per_round in times.items():
            share = shares[name]
            say(f"  {name:15s} {BATCH / statistics.median(per_round):8.1f} samples/s  "
                f"({statistics.median(per_round) * 1e3:7.1f} ms/step; products {100 * share['products']:.0f}%, "
                f"optimizer {100 * share['optimizer']:.0f}%, BatchNorm {100 * share['BatchNorm']:.0f}%)")
        for name in [n for n in times if n != "authors"]:
            ratios = [a / b for a, b in zip(times["authors"], times[name])]
            say(f"  speed-up of {name + ':':15s} {statistics.median(ratios):5.2f}x "
                f"(rounds: {min(ratios):.2f}-{max(ratios):.2f}x)")
        if not args.no_accuracy:
            for seed in range(args.seeds):
                acc = one_epoch_accuracy(hidden, args.meta, seed, device)
                say(f"  one epoch on mnist5k, seed {seed}: test accuracy "
                    + ", ".join(f"{name} {value:.1f}%" for name, value in acc.items()))
    say(load_average_line("after"))
    out = args.out or run_file("train_throughput", kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    run_benchmark(main)
