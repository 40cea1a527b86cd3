"""On a CUDA GPU: the optimizers' updates equal the CPU's, the exact ±1 products equal float32 bit for bit at a
training step's sizes, and the command trains every kind of model end to end. Skipped where torch sees no GPU."""

import json

import pytest
import torch
import torch.nn.functional as F

import bnn
import metaspike
from bnn import binary_linear as fast
from metaspike.app.cli import main
from metaspike.bayesian import bimu_step, mesu_step
from metaspike.data import load_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
GPU = "cuda"

# A float32 operation rounds to within 2**-24 of its result; the updates below chain at most about ten of them, and
# tanh (compiled from expm1 on either device) adds about 1e-7 of relative error: 2**-18 of relative slack covers both
# with margin, and no rounding difference exceeds it.
UPDATE_RTOL = 2**-18


def test_metaplastic_adam_steps_on_the_gpu_as_on_the_cpu():
    torch.manual_seed(0)
    weight, grads = torch.randn(512, 300) * 0.5, [torch.randn(512, 300) for _ in range(5)]
    results = []
    for device in ("cpu", GPU):
        layer = bnn.BinaryLinear(300, 512, bias=False).to(device)
        w = layer.weight
        with torch.no_grad():
            w.copy_(weight)
        opt = metaspike.MetaplasticAdam(layer.parameters(), lr=0.005, meta=1.35)
        for grad in grads:
            w.grad = grad.to(device)
            opt.step()
        results.append(w.detach().cpu())
    # each of the 5 updates (about lr in size) within UPDATE_RTOL of the CPU's, and each weight rounded once per step
    torch.testing.assert_close(results[1], results[0], rtol=5 * 2**-24, atol=5 * 0.005 * UPDATE_RTOL)


def test_bimu_and_mesu_steps_on_the_gpu_as_on_the_cpu():
    torch.manual_seed(1)
    lam = torch.cat([torch.randn(4000), torch.tensor([30.0, -30.0, 0.0])])  # both signs, confident λ, zero λ
    grad = torch.cat([torch.randn(4000), torch.tensor([-2.0, 2.0, 0.0])])
    mu, sigma, grad_mu, grad_sigma = torch.randn(4003), torch.rand(4003) * 0.2 + 0.01, torch.randn(4003), grad
    bimu = dict(lr=4.9, lr_max=0.0023, likelihood_multiplier=161.3, kl_multiplier=3.76, N=700)
    mesu = dict(lr_mu=1.6, lr_sigma=2.1, sigma_prior=0.3, mu_prior=0.0, N=600_000, clamp_grad=0.36)
    on_cpu, on_gpu = ((bimu_step(lam.to(device), grad.to(device), **bimu).cpu(),
                       *(t.cpu() for t in mesu_step(mu.to(device), sigma.to(device), grad_mu.to(device),
                                                    grad_sigma.to(device), **mesu)))
                      for device in ("cpu", GPU))
    for gpu, cpu, before in zip(on_gpu, on_cpu, (lam, mu, sigma)):
        step = cpu - before
        torch.testing.assert_close(gpu - before, step, rtol=UPDATE_RTOL, atol=UPDATE_RTOL * step.abs().max().item())


@pytest.mark.parametrize("hidden", [1024, 4096])
def test_a_training_steps_exact_products_equal_float32_bit_for_bit(hidden):
    """Every product the GPU offers for ±1 activations by ±1 weights at batch 100, on activations whose sums come
    within a few units of the fan-in, where a rounded product would show."""
    torch.manual_seed(hidden)
    layer = bnn.BinaryLinear(hidden, hidden).to(GPU)
    signs = layer.signs()
    x = torch.cat([signs[:50], -signs[50:100]])
    x[:, :3] *= -1
    exact = x @ signs.T
    assert exact.abs().max() == hidden - 6
    kinds = fast.product_kinds(GPU, 100, hidden, hidden)
    assert "int8" in kinds  # int32 sums of int8 products
    for kind in kinds:
        assert torch.equal(fast.signs_product(x, layer.signs(fast._DTYPES[kind]), kind), exact), kind
    assert torch.equal(layer(x), exact)  # with the product the layer chose (timed on this GPU)


def test_a_compiled_binary_layer_on_the_gpu_gives_the_eager_output_and_gradients():
    """The straight-through gradient reaches the hidden weight of a ``torch.compile``'d layer (torch 2.11 left it zero
    on the CPU). One layer, no sign after it: the two differ only in the order of float32 sums of at most 2048
    terms, far below 1e-4 of the largest value."""
    torch.manual_seed(3)
    layer = bnn.BinaryLinear(2048, 512, bias=True).to(GPU)
    x = torch.randn(32, 2048, device=GPU)
    results = []
    for run in (layer, torch.compile(layer)):
        layer.zero_grad(set_to_none=True)
        out = run(x)
        out.square().mean().backward()
        results.append([out.detach(), layer.weight.grad.clone(), layer.bias.grad.clone()])
    for compiled, eager in zip(*reversed(results)):
        assert eager.abs().max() > 0
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4 * eager.abs().max().item())


def test_a_binarized_mlp_learns_digits_on_the_gpu_as_on_the_cpu():
    """The same model, data and batch order on both devices: the ±1 products are exact, so the runs differ only by
    rounding in the first layer, BatchNorm and the optimizer. Once a sign after BatchNorm flips by rounding the
    trajectories part like two seeds': six seeds of this run on a CPU ended at 96.7-98.3 % (AMD EPYC Zen 5), so
    the two must end within 5 points and above 90 %."""
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    accuracy = []
    for device in ("cpu", GPU):
        torch.manual_seed(0)
        model = bnn.MLP([train.x[0].numel(), 256, 256, 10]).to(device)
        opt = metaspike.MetaplasticAdam(model.parameters(), lr=0.005, meta=1.35)
        x, y = train.x.flatten(1).to(device), train.y.to(device)
        for epoch in range(3):
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch)).to(device)
            for batch in order.split(64):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[batch]), y[batch]).backward()
                opt.step()
        assert all(p.device.type == device for p in model.parameters())
        accuracy.append(metaspike.training.evaluate(model, test.x.flatten(1), test.y, device=device))
    assert accuracy[1] > 90 and abs(accuracy[1] - accuracy[0]) < 5, accuracy


@pytest.mark.parametrize("model, extra", [
    ("bnn", []),
    ("mlp", []),
    ("bimu", []),
    ("mesu", []),
    ("leaky", ["--num-steps", "4"]),
    ("leaky+bimu", ["--num-steps", "4"]),
    ("norse-lif", ["--num-steps", "4"]),
    # batch 1: the fused BiMU step (it needs more samples and units than one epoch of 64 units at batch 64: two CPU
    # runs of this case ended task 2 at 58 and 71 %)
    ("bimu", ["--batch-size", "1", "--samples-per-task", "1000", "--hidden", "100"]),
])
def test_the_command_trains_each_kind_of_model_on_the_gpu(tmp_path, model, extra):
    args = ["train", "--model", model, "--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "64",
            "--device", GPU, "--quiet", "--out", str(tmp_path), *extra]
    assert main(args) == 0
    (run,) = tmp_path.iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert metrics["complete"] is True and config["device"] == GPU
    assert metrics["final_accuracy"][-1] > 15, metrics  # the task just learned: above chance (10 %) after one epoch
