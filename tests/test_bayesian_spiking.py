"""BiMU synapses in a spiking model of the registry: it learns two permuted tasks and forgets less than the same
model with plain binary synapses (the ``"leaky+bimu"`` model kind)."""

import csv

import pytest
import torch

from metaspike.app.models import build_model, build_optimizer
from metaspike.bayesian import bimu_parameters, plain_parameters
from metaspike.chained import ChainedOptimizer
from metaspike.continual import ContinualTrainer, TrainerConfig, make_scenario

pytest.importorskip("snntorch")

BATCH = 50


def _two_tasks(kind: str, seed: int) -> list[list[float]]:
    scenario = make_scenario("permuted", ["digits"], tasks=2, seed=seed)
    torch.manual_seed(seed)
    model = build_model(kind, [64], scenario.input_shape, 10, num_steps=4)
    make = lambda m: build_optimizer(kind, m, lr=0.005, meta=0.0, batch_size=BATCH)  # noqa: E731
    trainer = ContinualTrainer(model, make, TrainerConfig(epochs=3, batch_size=BATCH, seed=seed), progress=False)
    return trainer.fit(scenario).matrix


def test_the_spiking_bimu_kind_has_binary_bayesian_synapses_and_a_learned_gain():
    model = build_model("leaky+bimu", [16], (1, 8, 8), 10, num_steps=2)
    optimizer = build_optimizer("leaky+bimu", model, lr=0.005, batch_size=BATCH)
    assert isinstance(optimizer, ChainedOptimizer)
    assert [p.shape for p in bimu_parameters(model)] == [(16, 64), (10, 16)]
    assert [p.shape for p in plain_parameters(model)] == [(16,), (10,)]  # one gain per output, nothing else
    bimu = optimizer.optimizers[0]
    assert bimu.defaults["likelihood_multiplier"] == 160.0 * BATCH and bimu.defaults["N"] == 250_000 / BATCH
    model.eval()
    assert model.network[1].weight.abs().unique().tolist() == [1.0]  # evaluation shows sign(λ)


def test_bimu_synapses_in_a_leaky_network_learn_two_tasks_and_forget_less_than_binary_ones():
    # Two seeds: the claim is about the mean forgetting (measured: BiMU 0.3-4.1 points, plain binary 5-26).
    bimu = [_two_tasks("leaky+bimu", seed) for seed in (0, 1)]
    plain = [_two_tasks("leaky", seed) for seed in (0, 1)]
    for matrix in bimu:
        assert matrix[0][0] > 60.0 and matrix[1][1] > 60.0  # learns each task (chance: 10 %)
    forgetting = lambda runs: sum(m[0][0] - m[1][0] for m in runs) / len(runs)  # noqa: E731
    assert forgetting(bimu) < forgetting(plain) - 5.0, (bimu, plain)


def test_a_neuron_comparison_runs_a_bimu_kind_once_and_judges_it_against_binary_synapses(tmp_path):
    from metaspike.app.compare import compare_neurons
    from metaspike.app.config import RunConfig

    base = RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(16,), num_steps=2, batch_size=50)
    path, rows = compare_neurons(base, ["leaky", "leaky+bimu"], [0, 50], out=tmp_path, progress=False)
    assert [r["setting"] for r in rows] == ["leaky meta=0", "leaky meta=50", "leaky+bimu"]
    tradeoff = {row["neuron"]: row for row in csv.DictReader(open(path / "tradeoff.csv"))}
    assert tradeoff["leaky+bimu"]["best_meta"] == "-" and tradeoff["leaky+bimu"]["rule"] == ""  # no m, no rule
    verdict = tradeoff["leaky+bimu"]["verdict"]
    assert "BiMU" in verdict and "m=0" in verdict  # judged against leaky at m = 0
    assert (path / "forgetting.png").stat().st_size > 0 and (path / "tradeoff.png").stat().st_size > 0


def test_a_spiking_classifier_of_sampled_bayesian_layers_gives_their_samples_first_and_takes_a_step():
    """Sampled layers (bnn.BayesianLinear(samples=S)) put S outputs first, which the loss and predictions read as
    weight samples; the classifier refused them as a time loop of the network's own."""
    import snntorch as snn
    from torch import nn

    import bnn
    from metaspike.bayesian import MESU, mesu_param_groups
    from metaspike.snn import SpikingClassifier
    from metaspike.training import classification_loss, predictions

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), bnn.BayesianLinear(16, 8, samples=3, evaluation_samples=5, evaluation="sample"),
                        snn.Leaky(0.9, init_hidden=True),
                        bnn.BayesianLinear(8, 2, samples=3, evaluation_samples=5, evaluation="sample"),
                        snn.Leaky(0.9, init_hidden=True, output=True))
    classifier = SpikingClassifier(net, num_steps=4, encoder="rate", readout="membrane")
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    mean = net[1].parametrizations.weight.original.detach().clone()
    loss = classification_loss(classifier(x), y)
    loss.backward()
    MESU(mesu_param_groups(net)).step()
    assert classifier(x).shape == (3, 6, 2) and not torch.equal(net[1].parametrizations.weight.original, mean)
    classifier.eval()
    assert classifier(x).shape == (5, 6, 2) and predictions(classifier(x)).shape == (6,)
    batch_first = SpikingClassifier(net, num_steps=4, encoder="rate",
                                    readout=lambda outputs: outputs[-1][1].transpose(0, 1))  # ([B, S, C]: not read so)
    with pytest.raises(ValueError, match=r"read out to shape \(6, 5, 2\) for a batch of 6; its sampled Bayesian layers "
                                         r"draw 5 weight samples: the readout must give \[5, 6, classes\], the samples "
                                         "first"):
        batch_first.eval()(x)
