"""Inference latency and weight memory: bit-packed ``bnn.pack`` model vs the same model in float32.

Builds a 784-4096-4096-10 ``bnn.MLP`` with population statistics fixed on random inputs, packs it,
checks that all predict the same, and times them at batch 1 and batch 64 under
``torch.inference_mode``, in one process: ``--repeats`` rounds, each running ``--calls``
consecutive calls of every model (so each runs with its own data in cache, as when serving, while
a busy machine slows all alike); the median call is reported. Models:

* ``bnn.MLP`` in eval mode as it is (it binarizes its hidden weights on every call),
* the same network in float32 with the ±1 weights binarized once beforehand (the fair float32
  baseline: a plain ``Linear -> BatchNorm1d -> sign`` stack),
* the packed model with its fast kernels (native C, else ``torch.compile``; built before timing).

Usage::

    python benchmarks/inference.py --hidden 4096 --repeats 10 --calls 10
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import bnn
from metaspike.quantizers import get_quantizer


def prebinarized(model: bnn.MLP) -> bnn.MLP:
    """A copy of ``model`` whose layers hold ``sign(W_h)`` as float32 weights and use them as they are."""
    twin = copy.deepcopy(model)
    for layer in twin.modules():
        if isinstance(layer, bnn.BinaryLinear):
            layer.weight.data = layer.visible_weight().detach()
            layer.weight_quantizer = get_quantizer("none")
    return twin


def _time_ms(fn, samples: list[float]) -> None:
    start = time.perf_counter()
    fn()
    samples.append((time.perf_counter() - start) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=10, help="consecutive calls of each model per round")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes = [784, args.hidden, args.hidden, 10]
    model = bnn.use_population_statistics(bnn.MLP(sizes), torch.rand(2000, 784)).eval()
    packed = bnn.pack(model)
    summary = bnn.summary(model)
    float_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {'-'.join(map(str, sizes))}")
    print(f"weight memory: float32 {float_bytes / 2**20:.2f} MiB, packed {packed.nbytes / 2**20:.2f} MiB "
          f"({float_bytes / packed.nbytes:.1f}x less; bnn.summary's 1-bit estimate {summary.packed_bytes / 2**20:.2f} MiB)")
    models = {"bnn.MLP": model, "float32 ±1": prebinarized(model)}
    for batch in args.batches:
        x = torch.rand(batch, 784)
        with torch.inference_mode():
            reference = model(x)
            assert torch.equal(models["float32 ±1"](x), reference)
        start = time.perf_counter()
        scores = packed(x)  # the first call builds or compiles the kernels if needed
        compile_s = time.perf_counter() - start
        assert torch.equal(scores, reference), "packed and float models disagree"
        runs = {**models, "packed": packed}
        times: dict[str, list[float]] = {name: [] for name in runs}
        with torch.inference_mode():
            for run in runs.values():
                run(x)
            for _ in range(args.repeats):  # rounds of a few consecutive calls each: steady-state caches
                for name, run in runs.items():
                    for _ in range(args.calls):
                        _time_ms(lambda: run(x), times[name])
        ms = {name: statistics.median(t) for name, t in times.items()}
        print(f"batch {batch:>3} (first packed call {compile_s:.1f} s):")
        for name in models:
            print(f"  {name:<11}{ms[name]:9.3f} ms  -> packed is {ms[name] / ms['packed']:6.2f}x faster")
        print(f"  {'packed':<11}{ms['packed']:9.3f} ms")


if __name__ == "__main__":
    main()
