"""Binary synapses: sign forward, straight-through backward, one-call binarize of any model."""

import contextlib
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnn
import metaspike
from metaspike.quantizers import ste_sign
from metaspike.synapse import binarize, binarized_once, hidden_weights


def test_unclipped_ste_sign_is_binary_and_passes_the_gradient_straight_through():
    w = torch.tensor([-0.3, 0.0, 2.0, -5.0], requires_grad=True)
    out = ste_sign(w, clip_value=None)
    assert out.tolist() == [-1.0, 1.0, 1.0, -1.0]
    (out * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert w.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_ste_sign_passes_the_gradient_only_where_abs_x_le_clip_value_as_larq_does():
    x = torch.tensor([-2.0, -1.0, 0.3, 1.5], requires_grad=True)
    ste_sign(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    y = torch.tensor([-2.0, -1.0, 0.3, 1.5], requires_grad=True)
    ste_sign(y, clip_value=1.5).sum().backward()
    assert y.grad.tolist() == [0.0, 1.0, 1.0, 1.0]
    for wrong in (-1, True):  # (True was taken as clip_value 1, where every other number refuses a bool)
        with pytest.raises(ValueError, match=f"clip_value must be a number > 0 or None, got {wrong}"):
            ste_sign(y, clip_value=wrong)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("clip_value", [1.0, 0.3, 1e-45])
def test_ste_sign_equals_its_formulas_bit_for_bit_on_nan_inf_signed_zeros_and_the_clip_boundary(dtype, clip_value):
    """The sign is computed by a clamp and the mask as 0/1 floats (faster than bool masks): the values of
    ``where(isnan(x), x, binary_sign(x))`` (a NaN stays NaN; its payload is the clamp's), and the bits of
    ``grad * (|x| <= clip).to(dtype)``, ±0 and NaN payloads included."""
    nan, inf = float("nan"), float("inf")
    special = torch.tensor([nan, -0.0, 0.0, 1.0, -1.0, 1.0000001, -1.0000001, inf, -inf, 1e-45, -1e-45, -3.0, 0.3])
    x = torch.cat([special, 2 * torch.randn(500, generator=torch.Generator().manual_seed(0))]).to(dtype)
    grad = torch.cat([torch.tensor([1.0, -2.0, inf, nan, 3.0, -4.0, 5.0, nan, -inf, -1.0, 2.0, -0.0, 0.0]),
                      torch.randn(500, generator=torch.Generator().manual_seed(1))]).to(dtype)
    leaf = x.clone().requires_grad_()
    out = ste_sign(leaf, clip_value)
    out.backward(grad)
    expected_out = torch.where(torch.isnan(x), x, metaspike.quantizers.binary_sign(x))
    expected_grad = grad * (x.abs() <= clip_value).to(dtype)
    bits = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}[dtype]
    assert torch.equal(out.isnan(), x.isnan())
    assert torch.equal(out.detach()[~x.isnan()].view(bits), expected_out[~x.isnan()].view(bits))
    assert torch.equal(leaf.grad.view(bits), expected_grad.view(bits))


def test_ste_sign_gives_a_channels_last_activation_a_channels_last_gradient():
    x = torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last).requires_grad_()
    ste_sign(x).sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x.grad, (x.detach().abs() <= 1).float())


def test_ste_sign_builds_a_graph_for_a_second_derivative_and_runs_under_vmap():
    x = torch.tensor([-0.5, 2.0, 0.25], requires_grad=True)
    (grad,) = torch.autograd.grad((ste_sign(x) * x).sum(), x, create_graph=True)
    assert grad.requires_grad and grad.tolist() == [-1.5, 1.0, 1.25]  # sign(x) + x·1[|x| <= 1]
    per_row = torch.func.vmap(torch.func.grad(lambda row: ste_sign(row).sum()))(torch.tensor([[-0.5, 2.0], [3.0, 0.1]]))
    assert per_row.tolist() == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize("clip_value", [None, 1.0])
def test_a_compiled_ste_sign_gives_the_eager_value_and_gradient(clip_value, working_compiler):
    """torch 2.11 compiled the sign's in-place steps to a zero gradient: a compiled bnn model learned nothing."""
    x = torch.tensor([-2.0, -0.3, 0.0, -0.0, 0.7, 1.5])
    weights = torch.arange(1.0, 7.0)
    results = []
    for fn in (ste_sign, torch.compile(ste_sign)):
        w = x.clone().requires_grad_()
        out = fn(w, clip_value)
        (out * weights).sum().backward()
        results.append((out.tolist(), w.grad.tolist()))
    assert results[1] == results[0]
    assert results[0][0] == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]


def test_a_data_edit_of_the_hidden_weights_reaches_the_next_forward_pass():
    layer = bnn.BinaryLinear(4, 3)
    x = torch.ones(1, 4)
    before = layer(x)
    layer.weight.data.mul_(-1)  # does not bump the version counter
    assert torch.equal(layer(x), -before)
    with binarized_once():  # inside a block the signs are taken once ...
        first = layer(x)
        with torch.no_grad():
            layer.weight.mul_(-1)  # ... and again after a (versioned) in-place change, as an optimizer step makes
        assert torch.equal(layer(x), -first)


def test_binarize_puts_sign_weights_on_an_existing_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    hidden = [net[0].weight.detach().clone(), net[2].weight.detach().clone()]
    binarize(net, scale=None)  # the bare sign; the gain has its own tests in tests/test_scale.py
    x = torch.randn(7, 5)
    expected = F.linear(torch.tanh(F.linear(x, torch.sign(hidden[0]), net[0].bias)), torch.sign(hidden[1]), net[2].bias)
    torch.testing.assert_close(net(x), expected)
    weights = hidden_weights(net)
    assert [torch.equal(w, h) for w, h in zip(weights, hidden)] == [True, True]
    assert all(w.requires_grad for w in weights)


def test_gradient_reaches_the_hidden_weight_unchanged():
    torch.manual_seed(1)
    layer = nn.Linear(3, 2, bias=False)
    binarize(layer, scale=None)
    x = torch.randn(4, 3)
    layer(x).sum().backward()
    # d/dW of sum(x @ sign(W).T) is the column sums of x, for every output row, straight through
    expected = x.sum(0).expand(2, 3)
    torch.testing.assert_close(hidden_weights(layer)[0].grad, expected)


def test_binarize_excludes_named_layers_and_rejects_models_without_layers():
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    binarize(net, exclude=["0"])
    assert len(hidden_weights(net)) == 1
    with pytest.raises(ValueError, match="ReLU has no layer to binarize"):
        binarize(nn.ReLU())
    with pytest.raises(ValueError, match=r"MultiheadAttention has no layer to binarize \(looked for Linear, .*\); the "
                                         "layers inside a MultiheadAttention are left out: it multiplies by their "
                                         "weights without calling their forward pass, where a synapse's learned "
                                         "output gain acts"):
        binarize(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match="exclude names layers \\(or weight matrices\\) that do not exist"):
        binarize(nn.Sequential(nn.Linear(2, 2)), exclude=["7"])


@pytest.mark.parametrize("convert", [binarize,
                                     lambda net, exclude: metaspike.bayesianize(net, "mesu", exclude=exclude)])
def test_an_exclude_that_leaves_out_every_layer_is_named_as_the_cause(convert):
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"^exclude=\['0', '2'\] leaves Sequential no layer to .*: it names or holds "
                                         r"every one of its 2 Linear, Conv1d, Conv2d, Conv3d layers$"):
        convert(net, exclude=["0", "2"])
    with pytest.raises(ValueError, match=r"^exclude='' leaves .* layers \('' names the model itself\)$"):
        convert(net, exclude="")


def test_binarize_is_idempotent():
    net = binarize(binarize(nn.Sequential(nn.Linear(3, 3))))
    assert len(hidden_weights(net)) == 1


def test_a_synapse_taken_off_by_torchs_remove_parametrizations_leaves_a_float_layer_and_one_gain():
    """After torch's remove_parametrizations the weight kept its mark: MetaplasticAdam went on consolidating a float
    layer, and MESU's roles made MetaplasticAdam refuse a plain model; binarizing the layer again added a second gain
    hook (the output scaled by α²)."""
    from torch.nn.utils import parametrize

    def float_again(model):
        for layer in (model[0], model[2]):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        return model

    def weight_change(meta):
        torch.manual_seed(0)
        model = float_again(binarize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), scale=None))
        assert not any(metaspike.is_hidden_weight(p) for p in model.parameters())
        optimizer = metaspike.MetaplasticAdam([{"params": list(model.parameters())}], lr=0.1, meta=meta)
        before = model[0].weight.detach().clone()
        model(torch.randn(16, 4)).pow(2).sum().backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (meta, and nothing to consolidate: its warning)
            optimizer.step()
        return model[0].weight.detach() - before

    assert torch.equal(weight_change(0.0), weight_change(30.0))
    gaussian = metaspike.bayesianize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), "mesu").eval()
    metaspike.MetaplasticAdam(float_again(gaussian).parameters())  # (refused as holding MESU means before)

    layer = nn.Linear(4, 3)
    binarize(nn.Sequential(layer))
    parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    with pytest.raises(ValueError, match=r"^layer '0' keeps the output gain of an earlier synapse, with "
                                         r"scale='channel' .* give scale='channel'$"):
        binarize(nn.Sequential(layer), scale="layer")
    binarize(nn.Sequential(layer))
    x, signs = torch.randn(2, 4), torch.where(layer.parametrizations.weight.original >= 0, 1.0, -1.0)
    assert torch.allclose(layer(x), layer.output_gain.alpha * (x @ signs.T) + layer.bias)
    assert metaspike.is_hidden_weight(layer.parametrizations.weight.original)


class _ReadsItsLayersWeight(nn.Module):
    """A model whose forward multiplies by its second layer's weight itself, never calling the layer."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return F.linear(torch.relu(self.fc1(x)), self.fc2.weight, self.fc2.bias)


class _TiedDecoder(nn.Module):
    """A model that calls its encoder once a pass and reads the encoder's weight many times more (a tied decoder)."""

    def __init__(self):
        super().__init__()
        self.enc, self.out = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        h = self.enc(x)
        for _ in range(12):
            h = torch.tanh(F.linear(h, self.enc.weight.t()))
        return self.out(h)


@pytest.mark.parametrize("convert", [binarize, lambda model: metaspike.bayesianize(model, "bimu")])
def test_a_gain_whose_layer_is_never_called_is_named_once(convert):
    """The learned output gain acts in the layer's forward pass: a parent reading layer.weight itself left it
    unapplied and untrained (alpha.grad stayed None), silently. A model that calls its layers warns nothing, in a
    binarized_once block too, nor one that calls a layer and reads its weight many times more in the same pass."""
    model = convert(_ReadsItsLayersWeight())
    optimizer = torch.optim.Adam(model.parameters(), fused=True)  # (updates in place without moving versions)
    with pytest.warns(UserWarning, match=r"^the weight of layer 'fc2' \(Linear, α of shape \(3,\)\) was read 10 times "
                                         r"in training passes and the layer was never called .* scale=None$") as caught:
        for _ in range(25):
            optimizer.zero_grad()
            model(torch.randn(16, 4)).square().mean().backward()
            optimizer.step()
    assert sum("was read 10 times" in str(w.message) for w in caught) == 1
    for calling in (convert(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))), convert(_TiedDecoder())):
        optimizer = torch.optim.Adam(calling.parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.filterwarnings("ignore", "Adam holds the BiMU latent weight")  # (Adam trains λ here on purpose)
            for block in (binarized_once, contextlib.nullcontext):
                with block():
                    for _ in range(15):
                        optimizer.zero_grad()
                        calling(torch.randn(16, 4)).square().mean().backward()
                        optimizer.step()
            for _ in range(15):  # (reads of a layer that was called)
                calling[0].weight if isinstance(calling, nn.Sequential) else calling.enc.weight


def test_binarized_once_computes_the_sign_once_per_forward_block(monkeypatch):
    import metaspike.synapse

    net = binarize(nn.Sequential(nn.Linear(3, 3)))
    calls = []
    real = metaspike.synapse.ste_sign
    monkeypatch.setattr(metaspike.synapse, "ste_sign", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    with binarized_once():
        for _ in range(5):
            net(torch.randn(2, 3))
    assert len(calls) == 1


def test_binarized_once_never_gives_a_new_model_the_signs_of_a_freed_one(monkeypatch):
    # a model made in a block after another was freed may get the freed one's object ids (the interpreter reuses
    # them), and its weights start at version 0 again: here the ids are made to collide on purpose
    import metaspike.block_cache

    torch.manual_seed(0)
    old, new = (binarize(nn.Sequential(nn.Linear(4, 3)), scale=None) for _ in range(2))
    same_id = {id(new[0].parametrizations.weight[0]): id(old[0].parametrizations.weight[0]),
               id(hidden_weights(new)[0]): id(hidden_weights(old)[0])}
    monkeypatch.setattr(metaspike.block_cache, "id", lambda obj: same_id.get(id(obj), id(obj)), raising=False)
    x = torch.randn(3, 4)
    with torch.no_grad(), binarized_once():
        old(x)
        out = new(x)
    assert torch.equal(out, torch.addmm(new[0].bias, x, hidden_weights(new)[0].sign().t()))


def test_binarized_once_takes_the_sign_again_after_a_dtype_change():
    net = binarize(nn.Sequential(nn.Linear(4, 3)), scale=None)
    with binarized_once():
        net(torch.randn(2, 4))
        net.double()  # (the parameters keep their identity and version, with new data)
        out = net(torch.randn(2, 4, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_binary_linear_matches_sign_matmul_and_trains_hidden_weights():
    torch.manual_seed(2)
    layer = bnn.BinaryLinear(6, 4)
    assert layer.bias is None
    assert layer.weight.abs().max() <= 0.05
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), x @ torch.sign(layer.weight.detach()).T)
    assert hidden_weights(layer) == [layer.weight]


def test_binary_conv_matches_sign_conv():
    torch.manual_seed(3)
    conv = bnn.BinaryConv2d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, torch.sign(conv.weight.detach()), padding=1))


def test_float_quantizer_keeps_real_weights():
    layer = bnn.BinaryLinear(4, 2, weight_quantizer="none")
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x), x @ layer.weight.detach().T)
    assert hidden_weights(layer) == []
    with pytest.raises(ValueError, match="unknown quantizer 'sgn'"):
        bnn.BinaryLinear(4, 2, weight_quantizer="sgn")


def test_binary_weights_are_reused_until_the_hidden_weights_change():
    torch.manual_seed(4)
    layer = bnn.BinaryLinear(6, 4)
    x = torch.randn(3, 6)
    with torch.no_grad():
        first = layer.visible_weight()
        assert layer.visible_weight() is first  # reused, not recomputed
        before = first.clone()
        torch.testing.assert_close(layer(x), x @ torch.sign(layer.weight).T)
    opt = torch.optim.SGD(layer.parameters(), lr=10.0)
    (layer(x).sum() + layer(2 * x).sum()).backward()  # two forward passes in one step share the buffer
    torch.testing.assert_close(layer.weight.grad, 3 * x.sum(0).expand(4, 6))
    opt.step()  # changes the hidden weights (and their version): the buffer is rewritten in place
    with torch.no_grad():
        assert layer.visible_weight() is first
        torch.testing.assert_close(first, torch.sign(layer.weight))
        assert not torch.equal(first, before)


def test_rewriting_signs_after_a_step_is_caught_by_a_retained_graph():
    torch.manual_seed(0)
    model = bnn.MLP([6, 5, 3])
    x = torch.randn(8, 6)
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    loss = model(x).sum()
    loss.backward(retain_graph=True)
    opt.step()
    model(x)  # rewrites the ±1 buffers the first graph saved
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_gain_no_optimizer_trains_is_named_after_a_few_dozen_steps():
    """An optimizer built before binarize lacks the gains it adds: they get gradients but never change."""
    for built_first in (True, False):
        net = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 2))
        opt = metaspike.MetaplasticAdam(net.parameters(), lr=0.01, meta=5.0) if built_first else None
        metaspike.binarize(net)
        opt = opt or metaspike.MetaplasticAdam(net.parameters(), lr=0.01, meta=5.0)
        named = _idle_gain_warnings(net, opt, torch.randn(16, 8))
        assert len(named) == (2 if built_first else 0)  # once per gain


def _idle_gain_warnings(net: nn.Module, opt, x: torch.Tensor) -> list[str]:
    """The messages of the warnings that a gain no optimizer trains gives over enough training steps of ``net``."""
    import warnings

    from metaspike.gain import IDLE_STEPS_WARNED

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(IDLE_STEPS_WARNED + 5):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            opt.step()
    return [str(w.message) for w in caught if "has held a gradient through" in str(w.message)]


@pytest.mark.parametrize("kind", ["sign", "bimu"])
def test_a_gain_no_optimizer_trains_is_named_by_its_layer(kind):
    """Layers of one width have gains of one shape: the warning names each layer's path, not only its gain's shape."""
    from metaspike.bayesian import BiMU, bimu_parameters
    from metaspike.gain import attach_output_gain

    net = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Sequential(nn.Linear(4, 4), nn.Tanh()), nn.Linear(4, 4))
    if kind == "sign":
        opt = metaspike.MetaplasticAdam(net.parameters(), lr=0.01, meta=5.0)  # built first: it lacks the gains
        metaspike.binarize(net)
    else:
        opt = BiMU(bimu_parameters(metaspike.bayesianize(net, "bimu")))  # the gains' parameters forgotten
    named = sorted(message.split(" has held")[0] for message in _idle_gain_warnings(net, opt, torch.randn(16, 8)))
    assert named == [f"the learned output gain of layer {name!r} (Linear, α of shape (4,))" for name in ("0", "2.0", "3")]
    unnamed = nn.Linear(8, 4)
    attach_output_gain(unnamed, "layer")
    assert unnamed.output_gain.describe(unnamed) == "a Linear layer (α of shape ())"


@pytest.mark.parametrize("set_to_none", [True, False])
def test_passes_between_steps_do_not_count_as_a_gain_left_out(set_to_none):
    """Many passes before one step (accumulated micro-batches; a layer called at every time step of a spiking
    model, with gradients zeroed in place) are no sign that an optimizer lacks the gain."""
    import warnings

    from metaspike.gain import IDLE_STEPS_WARNED

    net = metaspike.binarize(nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 2)))
    opt = metaspike.MetaplasticAdam(net.parameters(), lr=0.01, meta=5.0)
    x = torch.randn(4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            opt.zero_grad(set_to_none=set_to_none)
            for _ in range(IDLE_STEPS_WARNED + 5):  # micro-batches
                net(x).pow(2).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=set_to_none)
            state = torch.zeros(4, 2)
            for _ in range(IDLE_STEPS_WARNED + 5):  # time steps of one pass
                state = 0.9 * state + net(x)
            state.pow(2).sum().backward()
            opt.step()


def test_sampled_forward_watches_for_a_gain_no_optimizer_trains():
    """BiMU trains the latent weights only: a gain left out of every optimizer (plain_parameters forgotten) is named
    when the layer runs through sampled_forward too, not only through its forward hook."""
    import warnings

    from metaspike.bayesian import BiMU, bimu_parameters, sampled_forward
    from metaspike.gain import IDLE_STEPS_WARNED

    layer = metaspike.bayesianize(nn.Sequential(nn.Linear(8, 4)), "bimu")[0]
    opt = BiMU(bimu_parameters(layer))
    x = torch.randn(6, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(IDLE_STEPS_WARNED + 5):
            opt.zero_grad()
            sampled_forward(layer, x, samples=2).pow(2).mean().backward()
            opt.step()
    assert sum("has held a gradient through" in str(w.message) for w in caught) == 1


def test_a_gain_that_grows_past_its_bound_is_named_once():
    """A gain whose largest |α| passes GROWTH_WARNED times its start is named in one warning, at most
    GROWTH_CHECK_EVERY updates later; growth below the bound, and passes without an update, say nothing."""
    import warnings

    from metaspike.gain import GROWTH_CHECK_EVERY, GROWTH_WARNED

    net = metaspike.binarize(nn.Sequential(nn.Linear(8, 4)))
    alpha = net[0].output_gain.alpha
    start = float(alpha.detach().abs().max())
    x = torch.randn(3, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            alpha.mul_(GROWTH_WARNED / 2)  # half the bound: no warning however often it is read
        for _ in range(3 * GROWTH_CHECK_EVERY):
            net(x)
            with torch.no_grad():
                alpha.add_(0.0)  # an update that changes nothing
        assert not [w for w in caught if "is diverging" in str(w.message)]
        with torch.no_grad():
            alpha.mul_(3.0)  # 1.5 times the bound
        for _ in range(3 * GROWTH_CHECK_EVERY):
            net(x)
            with torch.no_grad():
                alpha.add_(0.0)
    named = [w for w in caught if "is diverging" in str(w.message)]
    assert len(named) == 1 and f"from {start:.3g}" in str(named[0].message)
    assert "gain_lr" in str(named[0].message)
    assert str(named[0].message).startswith("the learned output gain of layer '0' (Linear, α of shape (4,)) has grown")


def _digits_standardized():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-3), torch.tensor(y)


@pytest.mark.parametrize("gain_lr", [None, 0.05 / 8])
def test_sgd_at_a_float_models_lr_diverges_in_the_gains_unless_they_get_their_own(gain_lr):
    """SGD (lr 0.05, momentum 0.9) trains the float 64-64-10 MLP on standardised digits; binarized, its gains
    diverge at that lr (the warning names them) and accuracy falls, while a gain_lr of lr / √fan_in learns."""
    import warnings

    x, y = _digits_standardized()
    torch.manual_seed(0)
    net = metaspike.binarize(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)))
    params = net.parameters() if gain_lr is None else metaspike.param_groups(net, 1.35, gain_lr=gain_lr)
    opt = metaspike.metaplastic(torch.optim.SGD(params, lr=0.05, momentum=0.9), meta=1.35)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            for batch in torch.randperm(len(x)).split(32):
                opt.zero_grad()
                nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
                opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    diverging = [w for w in caught if "is diverging" in str(w.message)]
    if gain_lr is None:
        assert len(diverging) >= 1 and accuracy < 0.8
    else:
        assert not diverging and accuracy > 0.85


def test_param_groups_gives_the_gains_their_own_learning_rate():
    net = metaspike.binarize(nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)))
    groups = metaspike.param_groups(net, [2.0, 1.0], gain_lr=1e-3)
    gains = [net[0].output_gain.alpha, net[2].output_gain.alpha]
    assert [g.get("lr") for g in groups] == [None, None, 1e-3, None]
    assert groups[2]["params"] == gains and groups[2]["consolidate"] is False and groups[2]["meta"] == 0.0
    every = [p for g in groups for p in g["params"]]
    assert len(every) == len(list(net.parameters())) == len({id(p) for p in every})
    with pytest.raises(ValueError, match=r"gain_lr must be"):
        metaspike.param_groups(net, 1.0, gain_lr=-1.0)
    plain = metaspike.binarize(nn.Sequential(nn.Linear(6, 3)), scale=None)
    with pytest.raises(ValueError, match="no learned output gains"):
        metaspike.param_groups(plain, 1.0, gain_lr=1e-3)


@pytest.mark.parametrize("hooked", [False, True])
def test_a_meta_edited_out_of_range_after_construction_is_refused_before_the_step(hooked):
    """A group's meta set to -2 after the optimizer was built would invert the rule (damping updates away from zero
    instead of toward it); the step refuses it and leaves the weights as they were."""
    net = metaspike.binarize(nn.Sequential(nn.Linear(4, 3)))
    opt = (metaspike.metaplastic(torch.optim.SGD(net.parameters(), lr=0.1), meta=2.0) if hooked
           else metaspike.MetaplasticAdam(net.parameters(), lr=0.1, meta=2.0))
    net(torch.randn(5, 4)).sum().backward()
    opt.param_groups[0]["meta"] = -2.0
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match="a param group's meta must be"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))


@pytest.mark.parametrize("kind, key", [("hooked", "meta"), ("hooked", "rule"), ("hooked", "lr"), ("hooked", "momentum"),
                                       ("hooked", "foreach"), ("adam", "meta"), ("adam", "lr"),
                                       ("bimu", "lr"), ("mesu", "N"), ("mesu", "lr")])
def test_a_setting_deleted_from_a_param_group_is_named_before_the_step(kind, key):
    """A group's key deleted by a hand stopped the step at a bare KeyError (or, for a hooked optimizer's meta, left
    the check to skip the group; for its own settings, torch's KeyError from inside its step); the step names the key
    and changes nothing."""
    net = nn.Sequential(nn.Linear(4, 3))
    if kind in ("bimu", "mesu"):
        metaspike.bayesianize(net, kind)
        opt = (metaspike.BiMU(metaspike.bayesian.bimu_parameters(net)) if kind == "bimu"
               else metaspike.MESU(metaspike.bayesian.mesu_param_groups(net)))
    else:
        metaspike.binarize(net)
        opt = (metaspike.metaplastic(torch.optim.SGD(net.parameters(), lr=0.1), meta=2.0) if kind == "hooked"
               else metaspike.MetaplasticAdam(net.parameters(), lr=0.1, meta=2.0))
    net(torch.randn(5, 4)).sum().backward()
    del opt.param_groups[0][key]
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match=f"^a param group has no '{key}' setting"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))


@pytest.mark.parametrize("make", [lambda ps: torch.optim.LBFGS(ps, max_iter=2), lambda ps: torch.optim.Adafactor(ps)])
def test_a_hooked_lbfgs_or_adafactor_steps_after_a_load_or_a_copy(make):
    """torch's __setstate__ (in load_state_dict and a copy) adds "differentiable" to the defaults of these two, which
    their groups never hold: the check for deleted settings refused every step after it ("deleted by a hand?")."""
    torch.manual_seed(0)
    net = metaspike.binarize(nn.Sequential(nn.Linear(4, 2)))
    x = torch.randn(8, 4)

    def closure():
        opt.zero_grad()
        loss = net(x).pow(2).mean()
        loss.backward()
        return loss

    opt = metaspike.metaplastic(make(net.parameters()), meta=2.0)
    opt.step(closure)
    saved = opt.state_dict()
    opt = metaspike.metaplastic(make(net.parameters()), meta=2.0)
    opt.load_state_dict(saved)
    before = [p.detach().clone() for p in net.parameters()]
    opt.step(closure)
    assert any(not torch.equal(p, b) for p, b in zip(net.parameters(), before))
    if not isinstance(opt, torch.optim.LBFGS):  # (torch's own LBFGS cannot be deep-copied)
        opt = copy.deepcopy(opt)
        opt.step(closure)


def test_a_compiled_model_inside_binarized_once_is_not_recompiled_at_every_step(working_compiler):
    """The block's weight cache keys on objects and tensor versions; traced, it made torch.compile recompile after
    every optimizer step until its limit (a reviewer's compiled SNN: 52 s for 15 steps, 0.3 s eager)."""
    torch.manual_seed(0)
    net = binarize(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)))
    compiled = torch.compile(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.rand(4, 8), torch.tensor([0, 1, 2, 0])

    def train_steps(count: int) -> list[float]:
        losses = []
        with binarized_once():
            for _ in range(count):
                loss = F.cross_entropy(compiled(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        return losses

    train_steps(2)  # (compiled once for training)
    with torch._dynamo.config.patch(error_on_recompile=True):
        losses = train_steps(4)
    assert losses[-1] < losses[0]


def _binary_models() -> list:
    """Builders of a bnn model and of a binarized torch model."""
    return [lambda: bnn.MLP([4, 5, 2]), lambda: binarize(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)))]


def _restored(build, how: str) -> nn.Module:
    """A model from ``build``, deep-copied, pickled whole (torch.save; torch refuses a parametrized model, so the bnn
    model only) or loaded by assignment into another one."""
    import copy
    import io

    if how == "deepcopy":
        return copy.deepcopy(build())
    if how == "pickle":
        buffer = io.BytesIO()
        torch.save(build(), buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=False)
    model = build()
    model.load_state_dict(build().state_dict(), assign=True)
    return model


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "assign"])
@pytest.mark.parametrize("which", [0, 1])
def test_a_copied_unpickled_or_assign_loaded_binary_model_marks_its_hidden_weights_before_any_pass(how, which):
    """torch makes new parameters there; they were unmarked until the first forward pass, so BiMU took the copy's
    parameters (it refuses the original's) and an optimizer's first decisions missed them."""
    from metaspike.bayesian import BiMU
    from metaspike.synapse import is_hidden_weight

    build = _binary_models()[which]
    if how == "pickle" and which == 1:
        pytest.skip("torch refuses to pickle a parametrized model")
    original, restored = build(), _restored(build, how)
    marked = [name for name, p in original.named_parameters() if is_hidden_weight(p)]
    assert len(marked) == 2
    assert [name for name, p in restored.named_parameters() if is_hidden_weight(p)] == marked
    with pytest.raises(ValueError, match="BiMU"):
        BiMU(restored.parameters())


def test_a_gain_left_out_of_the_optimizer_is_named_after_an_assign_load():
    """The gain's watch kept its layer's tensors as listed at the first pass: after load_state_dict(assign=True) it
    read the replaced ones, whose versions no step changes, and never warned."""
    from metaspike.optim import MetaplasticAdam

    net = binarize(nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 2)))
    x = torch.randn(16, 8)
    for _ in range(2):  # training passes, the second with the gains' gradients: the watch lists the tensors
        net(x).pow(2).sum().backward()
    net.load_state_dict(binarize(nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 2))).state_dict(), assign=True)
    opt = MetaplasticAdam([p for name, p in net.named_parameters() if "output_gain" not in name], lr=0.01, meta=5.0)
    assert len(_idle_gain_warnings(net, opt, x)) == 2  # once per gain


@pytest.mark.parametrize("kind", ["sign", "bimu"])
def test_a_synapse_encoder_with_a_padding_mask_runs_its_nested_inference(kind):
    """nn.TransformerEncoder turns its input into a nested tensor at inference with a padding mask, and the layers'
    learned gains multiplied it by a dense α: a RuntimeError from inside torch. The gain now scales each part."""
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0), 2)
    with pytest.warns(UserWarning, match="left 4 weight matrices float"):  # (the attention's, as documented)
        encoder = binarize(encoder) if kind == "sign" else metaspike.bayesianize(encoder, kind)
    encoder.eval()
    x = torch.randn(3, 5, 16)
    pad = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 0, 1, 1, 1]]).bool()
    dense = encoder(x, src_key_padding_mask=pad)  # (gradients on: the dense path)
    with torch.no_grad():
        nested = encoder(x, src_key_padding_mask=pad)
    kept = ~pad
    torch.testing.assert_close(nested[kept], dense.detach()[kept])


def test_a_functional_call_with_non_leaf_parameters_reads_no_gradient_of_a_gain():
    """Under torch.func.functional_call with parameters computed in the graph (a MAML inner step), every training
    pass made torch warn that a non-leaf tensor's .grad was read, from the gain's check for a missing optimizer."""
    from torch.func import functional_call

    net = binarize(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)))
    adapted = {name: p * 1.0 for name, p in net.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = functional_call(net, adapted, (torch.randn(4, 8),))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
