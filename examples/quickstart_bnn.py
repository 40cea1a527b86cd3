"""Quickstart: a binarized MLP learns three permuted-digit tasks in turn, with and without metaplasticity.

    python examples/quickstart_bnn.py      # 8 s on an idle 2-core AMD EPYC, 20 s with the cores shared
"""

import torch

import bnn
from metaspike.continual import ContinualTrainer, TrainerConfig, make_scenario
from metaspike.optim import MetaplasticAdam

scenario = make_scenario("permuted", ["digits"], tasks=3, seed=1)  # offline data, 3 pixel permutations
for meta in (0.0, 20.0):
    torch.manual_seed(0)
    model = bnn.MLP([784, 256, 10])  # binary weights, sign activations, BatchNorm
    trainer = ContinualTrainer(
        model, lambda m: MetaplasticAdam(m.parameters(), lr=0.005, meta=meta), TrainerConfig(epochs=15), progress=False
    )
    result = trainer.fit(scenario)
    final = ", ".join(f"{a:.1f}" for a in result.matrix[-1])
    print(f"meta={meta:>4}: accuracy per task after the last one = [{final}] %, forgetting = {result.metrics['forgetting']:.1f}")
print(bnn.summary(model))
