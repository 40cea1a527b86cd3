"""An existing Norse network gets metaplastic binary synapses with one line, then learns two tasks.

    python examples/norse_metaplastic.py

Norse is used through ``norse.torch`` only (it does not import torchvision there). Trains on two
permuted versions of the offline ``digits`` data in turn and prints the accuracy matrix for
meta = 0 and meta = 50.
"""

import norse.torch as norse
import torch
from torch import nn

import metaspike
from metaspike.continual import ContinualTrainer, TrainerConfig, make_scenario
from metaspike.snn import SpikingClassifier


def norse_network() -> norse.SequentialState:
    """A plain Norse model: LIF hidden layer (SuperSpike surrogate), leaky-integrator output."""
    taus = dict(tau_syn_inv=torch.as_tensor(500.0), tau_mem_inv=torch.as_tensor(200.0))
    return norse.SequentialState(
        nn.Flatten(),
        nn.Linear(784, 128, bias=False), norse.LIFCell(norse.LIFParameters(**taus, method="super")),
        nn.Linear(128, 10, bias=False), norse.LICell(norse.LIParameters(**taus)),
    )


def main() -> None:
    scenario = make_scenario("permuted", ["digits"], tasks=2, seed=1)
    for meta in (0.0, 50.0):
        torch.manual_seed(1)
        network = metaspike.binarize(norse_network())  # <- the one line: ±1 synapses, hidden weights trained
        model = SpikingClassifier(network, num_steps=6, encoder="direct", readout="membrane", input_shape=(1, 28, 28))
        trainer = ContinualTrainer(
            model, lambda m: metaspike.MetaplasticAdam(metaspike.param_groups(m, meta), lr=0.005),
            TrainerConfig(epochs=3, batch_size=50), progress=False,
        )
        result = trainer.fit(scenario)
        rows = "  ".join("[" + ", ".join(f"{a:5.1f}" for a in row) + "]" for row in result.matrix)
        print(f"meta={meta:g}: accuracy matrix {rows}  ({result.seconds:.0f} s)")


if __name__ == "__main__":
    main()
