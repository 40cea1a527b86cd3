"""The fast product of large binary layers: exact bfloat16 products, reused gradient memory."""

import pytest
import torch
import torch.nn.functional as F

import bnn
from bnn import binary_linear as fast
from bnn.sign_buffers import COMPILED_SIGNS_MIN_NUMEL

IN, OUT = 2048, 512  # exactly FAST_MIN_NUMEL weights: the fast path applies


@pytest.fixture
def layer():
    torch.manual_seed(0)
    assert IN * OUT >= fast.FAST_MIN_NUMEL
    return bnn.BinaryLinear(IN, OUT)


def test_bfloat16_product_of_signs_is_exactly_the_float32_product(layer):
    x = torch.randn(64, IN).sign()
    signs = layer.signs()
    exact = x @ signs.T
    bf16 = fast._product(x, signs, layer.signs(torch.bfloat16), None)
    assert bf16.dtype == torch.float32
    assert torch.equal(bf16, exact)
    assert torch.equal(layer(x), exact)


def test_real_valued_input_keeps_the_float32_product(layer):
    x = torch.rand(16, IN)
    assert not fast.is_binary_input(x)
    torch.testing.assert_close(layer(x), x @ torch.where(layer.weight >= 0, 1.0, -1.0).T, rtol=0, atol=1e-4)


@pytest.mark.parametrize("binary_input", [True, False])
def test_gradients_equal_those_of_f_linear(binary_input):
    torch.manual_seed(1)
    layer = bnn.BinaryLinear(IN, OUT, bias=True)
    x0 = torch.randn(32, IN)
    x0 = x0.sign() if binary_input else x0
    x = x0.clone().requires_grad_()
    grad_out = torch.randn(32, OUT)
    layer(x).backward(grad_out)
    ours = (layer.weight.grad.clone(), layer.bias.grad.clone(), x.grad.clone())
    layer.zero_grad()
    x_ref = x0.clone().requires_grad_()
    F.linear(x_ref, layer.visible_weight(), layer.bias).backward(grad_out)
    for got, want in zip(ours, (layer.weight.grad, layer.bias.grad, x_ref.grad)):
        torch.testing.assert_close(got, want)


def test_the_weight_gradient_reuses_one_buffer_once_the_last_gradient_is_dropped(layer):
    x = torch.randn(8, IN).sign()
    buffer = layer.gradient_buffer()
    for _ in range(2):
        layer.weight.grad = None  # what zero_grad(set_to_none=True) does
        layer(x).sum().backward()
        assert layer.weight.grad.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(layer.weight.grad, x.sum(0).expand(OUT, IN))


def test_a_gradient_still_referenced_elsewhere_is_never_overwritten(layer):
    x = torch.randn(8, IN).sign()
    layer(x).sum().backward()
    kept = layer.weight.grad  # e.g. stored by a plugin or a logger
    expected = kept.clone()
    layer.weight.grad = None
    layer(-x).sum().backward()
    assert layer.weight.grad.data_ptr() != kept.data_ptr()
    assert torch.equal(kept, expected)
    torch.testing.assert_close(layer.weight.grad, -expected)


def test_gradients_accumulate_over_two_backward_passes(layer):
    x = torch.randn(8, IN).sign()
    layer(x).sum().backward()
    layer(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, 2 * x.sum(0).expand(OUT, IN))


def test_autograd_grad_results_are_not_overwritten_by_later_steps(layer):
    x = torch.randn(8, IN).sign()
    (first,) = torch.autograd.grad(layer(x).sum(), layer.weight)
    expected = first.clone()
    layer(-x).sum().backward()
    assert torch.equal(first, expected)


def test_large_layers_get_their_signs_from_one_compiled_pass_equal_to_eager():
    torch.manual_seed(2)
    layer = bnn.BinaryLinear(1024, COMPILED_SIGNS_MIN_NUMEL // 1024)
    with torch.no_grad():
        layer.weight[0, :3] = torch.tensor([0.0, -0.0, -1e-30])
    signs, signs_bf16 = layer.signs(), layer.signs(torch.bfloat16)
    expected = torch.where(layer.weight >= 0, 1.0, -1.0)
    assert torch.equal(signs, expected) and torch.equal(signs_bf16.float(), expected)
    with torch.no_grad():
        layer.weight.neg_()  # a new version: both buffers are rewritten in place
    assert layer.signs() is signs
    assert torch.equal(signs, torch.where(layer.weight >= 0, 1.0, -1.0))
    assert torch.equal(signs_bf16.float(), signs)


def test_a_compiled_model_with_large_binary_layers_matches_eager():
    torch.manual_seed(3)
    model = bnn.MLP([IN, OUT, 10])
    x, y = torch.rand(16, IN), torch.randint(0, 10, (16,))
    eager = model(x)
    F.cross_entropy(eager, y).backward()
    expected = model[1].weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model)(x)
    F.cross_entropy(compiled, y).backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(model[1].weight.grad, expected)
