"""An existing snnTorch network gets metaplastic binary synapses with one line, then learns two tasks.

    python examples/snntorch_metaplastic.py

Trains on two permuted versions of the offline ``digits`` data, one after the other, and prints the
accuracy matrix (row: after task i, column: task j) for meta = 0 and meta = 50.
"""

import snntorch as snn
import torch
from torch import nn

import metaspike
from metaspike.continual import ContinualTrainer, TrainerConfig, make_scenario
from metaspike.snn import SpikingClassifier, surrogate


def snntorch_network() -> nn.Sequential:
    """A plain snnTorch model, as in snnTorch's tutorials (one call per time step).

    Nothing in it knows about binary synapses: ``metaspike.binarize`` adds a learned gain per output
    channel to each layer, which keeps the neurons' input where the float layer had it.
    """
    spike_grad = surrogate("atan")
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 128), snn.Leaky(beta=0.9, spike_grad=spike_grad, init_hidden=True),
        nn.Linear(128, 10),
        snn.Leaky(beta=0.9, spike_grad=spike_grad, init_hidden=True, output=True, reset_mechanism="none"),
    )


def main() -> None:
    scenario = make_scenario("permuted", ["digits"], tasks=2, seed=1)
    for meta in (0.0, 50.0):
        torch.manual_seed(1)
        network = metaspike.binarize(snntorch_network())  # <- the one line: ±1 synapses, hidden weights trained
        model = SpikingClassifier(network, num_steps=6, encoder="rate", readout="membrane", input_shape=(1, 28, 28))
        trainer = ContinualTrainer(
            model, lambda m: metaspike.MetaplasticAdam(metaspike.param_groups(m, meta), lr=0.005),
            TrainerConfig(epochs=3, batch_size=50), progress=False,
        )
        result = trainer.fit(scenario)
        rows = "  ".join("[" + ", ".join(f"{a:5.1f}" for a in row) + "]" for row in result.matrix)
        print(f"meta={meta:g}: accuracy matrix {rows}  ({result.seconds:.0f} s)")


if __name__ == "__main__":
    main()
