"""torch.func transforms (grad, vmap) over binary synapses, activations and spikes; Bayesian synapses refuse them.

Tolerances: the transforms compute the same straight-through gradients with the same products, but a batch's
gradient sums its samples inside one matrix product while vmap sums per-sample gradients afterwards, and bnn's fast
product may sum in another order: float32 sums of a few terms of size about 1 agree to about 1e-6 relative, so 1e-5.
"""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import bnn
import metaspike
from metaspike.quantizers import magnitude_gate, ste_sign
from metaspike.snn.recurrent import fast_sigmoid_spike


def _loss(model, params, buffers, x):
    return functional_call(model, (params, buffers), (x,)).pow(2).sum()


def _gradients_agree(model, x):
    """torch.func.grad equals loss.backward(); the per-sample gradients of vmap sum to the batch's."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    transformed = grad(lambda p: _loss(model, p, buffers, x))(params)
    model.zero_grad()
    model(x).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert torch.allclose(transformed[name], p.grad, rtol=1e-5, atol=1e-5), name
    per_sample = vmap(grad(lambda p, xi: _loss(model, p, buffers, xi[None])), in_dims=(None, 0))(params, x)
    for name, g in transformed.items():
        assert per_sample[name].shape == (len(x), *g.shape)
        assert torch.allclose(per_sample[name].sum(0), g, rtol=1e-5, atol=1e-5), name
    return transformed


def test_a_binarized_torch_model_takes_grad_and_vmap():
    torch.manual_seed(0)
    model = metaspike.binarize(nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)))
    gradients = _gradients_agree(model, torch.randn(5, 8))
    assert any(g.abs().sum() > 0 for g in gradients.values())


def test_bnn_layers_leave_their_sign_buffers_inside_a_transform():
    torch.manual_seed(0)
    model = nn.Sequential(bnn.BinaryLinear(8, 6), bnn.SignActivation(), bnn.BinaryLinear(6, 3))
    _gradients_agree(model, torch.randn(5, 8))
    conv = nn.Sequential(bnn.BinaryConv2d(1, 2, 3, padding=1), nn.Flatten())
    _gradients_agree(conv, torch.randn(3, 1, 4, 4))


def test_activations_and_spikes_take_vmap():
    x = torch.randn(4, 7)
    assert torch.equal(vmap(magnitude_gate)(x), magnitude_gate(x))
    assert torch.equal(vmap(grad(lambda v: ste_sign(v).sum()))(x), (x.abs() <= 1).float())
    surrogate = vmap(grad(lambda v: fast_sigmoid_spike(v).sum()))(x)
    assert torch.allclose(surrogate, 1 / (25 * x.abs() + 1) ** 2, rtol=1e-6, atol=0)  # (the same float32 operations)


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_bayesian_synapses_in_training_refuse_a_transform_in_one_line(kind):
    model = metaspike.bayesianize(nn.Sequential(nn.Linear(8, 3)), kind)
    params = {name: p.detach() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"^MESU and BiMU synapses in training do not run under torch.func transforms"):
        grad(lambda p: _loss(model, p, {}, torch.randn(2, 8)))(params)


def test_a_spiking_classifier_gives_per_sample_gradients():
    """The encoders skip their value checks inside a transform (a transform cannot branch on values); the direct
    encoder and metaspike's own neuron then run under vmap(grad)."""
    from metaspike.snn import SelfRecurrentLIF, SpikingClassifier

    torch.manual_seed(0)
    step = nn.Sequential(nn.Linear(6, 5), SelfRecurrentLIF(5), nn.Linear(5, 3))
    model = metaspike.binarize(SpikingClassifier(step, num_steps=4, encoder="direct", readout="membrane"))
    _gradients_agree(model, torch.rand(4, 6) * 3)


def test_the_triangular_surrogate_takes_vmap():
    from metaspike.snn import surrogate

    spike = surrogate("triangular")
    x = torch.tensor([-0.5, 0.2, 1.5])
    assert torch.equal(vmap(grad(lambda v: spike(v).sum()))(x), torch.tensor([0.5, 0.8, 0.0]))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool])
def test_the_sign_of_an_integer_tensor_is_one_line(dtype):
    """The in-place steps of the sign raised torch's "result type Float can't be cast to the desired output type"."""
    import bnn
    from metaspike import ste_sign

    message = rf"^the tensor to binarize must be floating point \(its signs are ±1.0\), got {dtype}; convert it"
    for sign in (ste_sign, bnn.SignActivation()):
        with pytest.raises(ValueError, match=message):
            sign(torch.ones(3, dtype=dtype))
