"""Time per training step: snnTorch Leaky network with binary metaplastic synapses vs float synapses.

Both models are the same ``784-256-10`` snnTorch ``Leaky`` network (``init_hidden=True``) in a
:class:`~metaspike.snn.SpikingClassifier`; the binary one has ``metaspike.binarize`` and
``MetaplasticAdam``, the float one ``torch.optim.Adam``. Steps alternate between the two so load
changes hit both alike; the ratio of median step times is printed (target <= 1.2).

    python benchmarks/snn_overhead.py [--steps 30] [--num-steps 8] [--batch-size 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import machine, positive_int, run_benchmark

import metaspike
from metaspike.snn import NetSpec, build_neuron_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=positive_int, default=30)
    parser.add_argument("--num-steps", type=positive_int, default=NetSpec().num_steps)
    parser.add_argument("--batch-size", type=positive_int, default=100)
    args = parser.parse_args()
    print(machine(), flush=True)
    spec = NetSpec(num_steps=args.num_steps)
    torch.manual_seed(0)
    binary = metaspike.binarize(build_neuron_model("leaky", spec))
    torch.manual_seed(0)
    plain = build_neuron_model("leaky", spec)
    optimizers = {
        "binary": (binary, metaspike.MetaplasticAdam(metaspike.param_groups(binary, 50.0), lr=0.005)),
        "float": (plain, torch.optim.Adam(plain.parameters(), lr=0.005)),
    }
    x, y = torch.rand(args.batch_size, 1, 28, 28), torch.randint(0, 10, (args.batch_size,))
    times: dict[str, list[float]] = {key: [] for key in optimizers}
    for step in range(args.steps + 3):
        for key, (model, opt) in optimizers.items():
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if step >= 3:  # warm-up steps are not counted
                times[key].append(time.perf_counter() - start)
    median = {key: statistics.median(t) for key, t in times.items()}
    print(f"time per training step (median of {args.steps}, batch {args.batch_size}, {args.num_steps} time steps, "
          f"{torch.get_num_threads()} threads)")
    for key, value in median.items():
        print(f"  {key:>6} synapses: {1000 * value:.1f} ms")
    print(f"  ratio binary / float: {median['binary'] / median['float']:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    run_benchmark(main)
