"""Deployment through ``torch.export``: a trained binary or Bayesian model exports to a program that gives its
evaluation-mode outputs bit for bit (the program holds the same ±1 weights and runs the same ops)."""

import pytest
import torch
from torch import nn

import bnn
import metaspike


def _trained(model: nn.Module, x: torch.Tensor, steps: int = 3) -> nn.Module:
    """``model`` after a few SGD steps on random labels, in evaluation mode (so hidden weights have moved off their
    initial values and BatchNorm layers hold running statistics)."""
    y = torch.randint(0, 4, (x.shape[0],))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def _mlp() -> nn.Module:
    return bnn.MLP([20, 32, 32, 4])


def _convnet() -> nn.Module:
    return bnn.ConvNet(in_shape=(1, 8, 8), channels=(4, 8), hidden=16, num_classes=4)


def _binarized_torch() -> nn.Module:
    return metaspike.binarize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4)))


def _bayesian(kind: str) -> nn.Module:
    return metaspike.bayesianize(nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4)), kind)


def _spiking(encoder: str = "direct", input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """A binarized spiking classifier (its encoder's value checks read no values while torch.export traces)."""
    from metaspike.snn import SelfRecurrentLIF, SpikingClassifier

    network = nn.Sequential(nn.Linear(20, 32), SelfRecurrentLIF(32), nn.Linear(32, 4), SelfRecurrentLIF(4, output=True))
    return SpikingClassifier(metaspike.binarize(network), num_steps=3, encoder=encoder, readout="membrane",
                             input_shape=input_shape)


@pytest.mark.parametrize("build, shape", [
    (_mlp, (8, 20)),
    (_convnet, (8, 1, 8, 8)),
    (_binarized_torch, (8, 1, 8, 8)),
    (lambda: _bayesian("bimu"), (8, 20)),
    (lambda: _bayesian("mesu"), (8, 20)),
    (_spiking, (8, 20)),
], ids=["bnn.MLP", "bnn.ConvNet", "binarize", "bimu", "mesu", "spiking"])
def test_an_exported_model_gives_its_evaluation_outputs_bit_for_bit(build, shape):
    """At the exported batch size, and at any other where the batch dimension is exported as dynamic."""
    torch.manual_seed(0)
    model = _trained(build(), torch.randn(shape))
    program = torch.export.export(model, (torch.randn(shape),))
    fresh = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(program.module()(fresh), model(fresh))
    batch = torch.export.Dim("batch", min=2)
    dynamic = torch.export.export(model, (torch.randn(shape),), dynamic_shapes=({0: batch},))
    other = torch.randn(3, *shape[1:])
    with torch.no_grad():
        assert torch.equal(dynamic.module()(other), model(other))


@pytest.mark.parametrize("build, shape", [
    (_mlp, (8, 20)),
    (_convnet, (8, 1, 8, 8)),
    (_binarized_torch, (8, 1, 8, 8)),
    (lambda: _bayesian("bimu"), (8, 20)),
], ids=["bnn.MLP", "bnn.ConvNet", "binarize", "bimu"])
def test_an_exported_program_is_saved_and_loaded(build, shape, tmp_path):
    """bnn's layers wrote their signs under torch.no_grad(), which the program kept as a node torch.export.load
    refused ("wrap_with_set_grad_enabled is missing val field"): the program ran, but could not leave the process."""
    torch.manual_seed(0)
    model = _trained(build(), torch.randn(shape))
    torch.export.save(torch.export.export(model, (torch.randn(shape),)), tmp_path / "model.pt2")
    fresh = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(torch.export.load(tmp_path / "model.pt2").module()(fresh), model(fresh))


@pytest.mark.parametrize("encoder", ["latency", "direct"])
def test_a_spiking_classifier_exports_with_a_dynamic_batch_and_takes_encoded_input(encoder):
    """The latency encoder's memory check compared the symbolic batch with a bound, which narrowed the batch torch
    exported for (its solver failed); the check of input encoded beforehand read its values (a data-dependent guard)."""
    torch.manual_seed(0)
    model = _spiking(encoder, input_shape=(20,)).eval()
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (torch.rand(8, 20),), dynamic_shapes=({0: batch},))
    other = torch.rand(3, 20)
    with torch.no_grad():
        assert torch.equal(program.module()(other), model(other))
    encoded = model.encode(torch.rand(4, 20))  # ([num_steps, batch, 20]: taken as it is)
    program = torch.export.export(model, (encoded,))
    with torch.no_grad():
        assert torch.equal(program.module()(encoded), model(encoded))
