"""The bnn API: the paper's MLP, summary, population statistics, fit/evaluate."""

import copy
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import bnn
import metaspike
from metaspike.data import ArrayDataset, load_dataset


def test_mlp_matches_the_paper_architecture():
    torch.manual_seed(0)
    model = bnn.MLP([784, 64, 32, 10])
    linears = [m for m in model if isinstance(m, bnn.BinaryLinear)]
    norms = [m for m in model if isinstance(m, nn.BatchNorm1d)]
    signs = [m for m in model if isinstance(m, bnn.SignActivation)]
    assert [(l.in_features, l.out_features) for l in linears] == [(784, 64), (64, 32), (32, 10)]
    assert all(l.bias is None for l in linears)
    assert all(n.affine and not n.track_running_stats for n in norms) and len(norms) == 3
    assert len(signs) == 2  # between layers, not after the output
    assert all(l.weight.abs().max() <= 0.05 for l in linears)
    assert all(l.weight.abs().max() > 0.04 for l in linears)  # uniform over the whole width 0.1
    x = torch.rand(5, 1, 28, 28)
    assert model(x).shape == (5, 10)


@pytest.mark.parametrize("sizes", [[784], [784, 2.7, 10], [784, 0, 10], [784, True, 10]])
def test_mlp_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="sizes must list at least 2 positive integer widths"):
        bnn.MLP(sizes)


def test_sizes_and_widths_take_numpy_integers_and_name_what_is_not_a_width():
    import numpy as np

    labels = np.array([0, 3, 9])
    assert bnn.MLP([64, 32, labels.max() + 1]).sizes == (64, 32, 10)  # (a numpy integer, as y.max() + 1 gives)
    assert bnn.MLP(np.array([64, 10])).sizes == (64, 10)
    assert bnn.BinaryLinear(np.int64(4), 2).in_features == 4
    with pytest.raises(ValueError, match=r"sizes must list at least 2 positive integer widths .* got 64$"):
        bnn.MLP(64)
    with pytest.raises(ValueError, match=r"in_features must be a positive integer, got 64.0"):
        bnn.BinaryLinear(64.0, 10)
    with pytest.raises(ValueError, match=r"out_channels must be a positive integer, got 0"):
        bnn.BinaryConv2d(3, 0, 3)


def test_a_packed_model_is_evaluated_by_bnn_evaluate_and_refused_by_what_trains():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    model = bnn.MLP([784, 32, 10])
    bnn.fit(model, train, epochs=1, progress=False)
    bnn.use_population_statistics(model, train.x).eval()
    packed = bnn.pack(model)
    assert bnn.evaluate(packed, test) == bnn.evaluate(model, test)
    assert bnn.evaluate(packed, (test.x, test.y), batch_size=7) == bnn.evaluate(model, test)
    with pytest.raises(ValueError, match=r"model must be a torch nn.Module to train, got PackedMLP \(a packed model "
                                         r"only predicts: bnn.evaluate takes it\)"):
        bnn.fit(packed, train)
    with pytest.raises(ValueError, match="model must be a torch nn.Module with BatchNorm layers, got PackedMLP"):
        bnn.use_population_statistics(packed, train.x)
    with pytest.raises(ValueError, match=r"labels of data must be int64 class indices, got dtype torch.float32"):
        bnn.evaluate(packed, (test.x, test.y.float()))
    with pytest.raises(ValueError, match=r"labels of data go up to 10 but the model has 10 outputs"):
        bnn.evaluate(packed, (test.x, test.y + 1))
    with pytest.raises(ValueError, match="model must be a torch nn.Module or a bnn.PackedMLP, got str"):
        bnn.evaluate("model.pt", test)


def test_population_statistics_of_a_layer_past_2_to_the_24_weights():
    """Its fingerprint's probe places came from a float32 ``linspace``, whose last one rounded past the end above 2^24
    entries: an ``IndexError`` from inside torch."""
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(4096, 4097, bias=False), nn.BatchNorm1d(4097)), torch.randn(4, 4096)
    bnn.use_population_statistics(model, x)
    with torch.no_grad():
        assert torch.allclose(model[1].running_mean, model[0](x).mean(0), atol=1e-5)


@pytest.mark.parametrize("x, got", [(lambda t: t.numpy(), "a ndarray: gather"), (lambda t: [(t, t)], "a list: gather"),
                                    (lambda t: ArrayDataset.from_tensors(t, torch.zeros(8, dtype=torch.long), "d"),
                                     r"a ArrayDataset: pass its inputs tensor, its \.x$")])
def test_population_statistics_name_inputs_that_are_not_one_tensor(x, got):
    with pytest.raises(ValueError, match=f"x must be one tensor of training inputs, got {got}"):
        bnn.use_population_statistics(bnn.MLP([4, 3, 2]), x(torch.rand(8, 4)))


def test_population_statistics_take_the_token_indices_an_embedding_model_reads():
    model = nn.Sequential(nn.Embedding(20, 6), nn.Flatten(), nn.BatchNorm1d(18), nn.Linear(18, 2))
    tokens = torch.randint(0, 20, (50, 3))
    bnn.use_population_statistics(model, tokens)
    assert model[2].running_mean.shape == (18,)


def test_summary_counts_binary_and_float_parameters():
    s = bnn.summary(bnn.MLP([784, 100, 10]))
    assert s.binary_params == 784 * 100 + 100 * 10
    assert s.float_params == 2 * (100 + 10)
    assert s.packed_bytes == (79400 + 32 * 220) / 8
    assert s.float32_bytes == 4 * (79400 + 220)
    text = str(s)
    assert "BinaryLinear" in text and "smaller" in text


def test_summary_of_a_binarized_foreign_model():
    from metaspike import binarize

    net = binarize(nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2)))
    s = bnn.summary(net)
    assert (s.binary_params, s.float_params) == (60, 7 + 7)  # biases and the learned gains (5 + 2 channels)


def test_summary_counts_a_tied_weight_once_and_probes_in_the_models_dtype():
    from metaspike import binarize

    class Tied(nn.Module):  # one weight, two layers
        def __init__(self):
            super().__init__()
            self.encode, self.decode = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)
            self.decode.weight = self.encode.weight

        def forward(self, x):
            return self.decode(torch.tanh(self.encode(x)))

    for model, binary, floats in ((binarize(Tied(), scale=None), 64, 0), (Tied(), 0, 64)):
        counted = bnn.summary(model, input_shape=(8,))
        assert (counted.binary_params, counted.float_params) == (binary, floats)
        assert counted.binary_macs + counted.float_macs == 2 * 64  # (both layers run: their products count)
    for dtype in (torch.float64, torch.bfloat16):  # (the probe was float32 whatever the model)
        model = bnn.MLP([4, 3]).to(dtype)
        assert bnn.summary(model, input_shape=(4,)).float_macs == 12


def test_summary_counts_one_bit_and_32_bit_macs_per_sample():
    model = bnn.ConvNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = bnn.summary(model, input_shape=(1, 28, 28))
    rows = {row.name: row for row in s.layers}
    first_conv = rows["0"]  # real pixels in: 32-bit; one MAC per output element and kernel entry
    assert (first_conv.binary_macs, first_conv.float_macs) == (0, 32 * 28 * 28 * 1 * 3 * 3)
    assert rows["4"].binary_macs == 64 * 14 * 14 * 32 * 3 * 3 and rows["4"].float_macs == 0  # ±1 in, ±1 weights
    assert s.binary_macs == sum(r.binary_macs for r in s.layers) and "1-bit MACs" in str(s)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # no statistics updated
    real = bnn.summary(bnn.MLP([20, 8, 4], weight_quantizer="none"), input_shape=(20,))
    assert real.binary_macs == 0 and real.float_macs == 20 * 8 + 8 * 4  # real weights: all 32-bit
    with pytest.raises(ValueError, match=r"forward pass on input_shape \(3,\) failed"):
        bnn.summary(bnn.MLP([20, 8, 4]), input_shape=(3,))


def test_summary_of_a_compiled_model_is_that_of_the_model_it_wraps_and_compiles_nothing():
    """A torch.compile'd model's counting pass compiled it, logging graph breaks at the counting hooks, and named its
    layers "_orig_mod.1", ...: the summary reads the model it wraps."""
    model = bnn.MLP([20, 8, 4])
    expected = bnn.summary(model, input_shape=(20,))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # (what other tests of the process compiled)
    s = bnn.summary(torch.compile(model), input_shape=(20,))
    assert s == expected and s.layers[0].name == "1"
    in_place, in_part = copy.deepcopy(model), copy.deepcopy(model)
    in_place.compile()  # (compiled in place: the same module, whose calls run compiled)
    in_part[4] = torch.compile(in_part[4])  # (a compiled layer: its rows named as the model names it, once)
    assert bnn.summary(in_place, input_shape=(20,)) == expected
    assert bnn.summary(in_part, input_shape=(20,)) == expected
    assert torch._dynamo.utils.counters["stats"]["calls_captured"] == 0


def test_summary_leaves_the_states_a_forward_pass_sets_in_the_models_modules():
    """Its counting pass left its probe's membrane in a spiking neuron (snnTorch's init_hidden=True), which the user's
    next step of a batch of the probe's size started from."""

    class Membrane(nn.Module):  # (a neuron that keeps its state in an attribute, as snnTorch's init_hidden does)
        def __init__(self) -> None:
            super().__init__()
            self.mem = torch.zeros(0)
            self.last_input = None  # (a state that starts as None: it was deleted, not put back)

        def forward(self, x):
            self.mem = x if self.mem.shape != x.shape else 0.9 * self.mem + x
            self.spikes_seen = self.mem.gt(1)
            self.last_input = x
            self.register_buffer("trace", x, persistent=False)
            return self.mem

    model = metaspike.binarize(nn.Sequential(nn.Linear(6, 8), Membrane()))
    x = torch.rand(2, 6)
    fresh = model(x).detach()
    model[1].mem, model[1].last_input = torch.zeros(0), None
    del model[1].spikes_seen, model[1].trace
    bnn.summary(model, input_shape=(6,))
    assert model[1].mem.shape == (0,) and not hasattr(model[1], "spikes_seen") and model[1].last_input is None
    assert "trace" not in model[1]._buffers and not model[1]._non_persistent_buffers_set
    assert torch.equal(model(x), fresh)


def test_summary_counts_layers_called_with_keywords_bilinear_layers_and_token_inputs():
    """The counting hooks read positional inputs only (a layer called as fc(input=x) failed the summary, blaming the
    forward pass); nn.Bilinear counted 0 MACs; a model of token ids could not be probed with random real numbers."""
    class Keywords(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x, _ = self.attention(query=x, key=x, value=x, need_weights=False)
            return self.fc(input=x)

    s = bnn.summary(Keywords(), input_shape=(5, 8))
    assert s.float_macs == 4 * 5 * 8 * 8 + 2 * 5 * 5 * 8 + 5 * 8 * 3  # projections, attention, fc
    bilinear = nn.Bilinear(3, 4, 5)
    tokens = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(40, 3))
    with pytest.raises(ValueError, match="give a model of token ids example_input="):
        bnn.summary(tokens, input_shape=(5,))
    counted = bnn.summary(tokens, example_input=torch.randint(0, 20, (4, 5)))
    assert counted.float_macs == 40 * 3 and counted.binary_macs == 0
    with pytest.raises(ValueError, match="not both"):
        bnn.summary(tokens, input_shape=(5,), example_input=torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^example_input must be a tensor holding a batch"):
        bnn.summary(tokens, example_input=torch.tensor(3))

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.bilinear = bilinear

        def forward(self, x):
            return self.bilinear(x[:, :3], input2=x[:, 3:])

    assert bnn.summary(Pair(), input_shape=(7,)).float_macs == 5 * 3 * 4


def test_summary_counts_the_products_of_a_multi_head_attention():
    """A MultiheadAttention does its projections itself and never calls its out_proj: summary counted 0 MACs."""
    tokens, width, hidden = 5, 32, 64
    s = bnn.summary(nn.TransformerEncoderLayer(width, 4, hidden, batch_first=True), input_shape=(tokens, width))
    rows = {row.name: row for row in s.layers}
    projections = tokens * width * 3 * width + tokens * width * width  # in_proj (q, k, v) and out_proj
    scores_and_mix = 2 * tokens * tokens * width  # queries by keys, weights by values
    assert (rows["self_attn"].binary_macs, rows["self_attn"].float_macs) == (0, projections + scores_and_mix)
    assert rows["self_attn.out_proj"].float_macs == 0  # (counted with its attention, which never calls it)
    assert s.float_macs == projections + scores_and_mix + 2 * tokens * width * hidden


def test_summary_counts_the_products_of_recurrent_layers():
    """nn.RNN/LSTM/GRU and Norse's recurrent cells multiply their weight matrices themselves: summary counted 0 MACs
    (a tenth of a recurrent spiking model's compute). Each matrix multiplies one vector per sample and time step."""
    steps, features, hidden = 5, 12, 8
    lstm = nn.LSTM(features, hidden, num_layers=2, bidirectional=True, batch_first=True)

    class Last(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.cell = lstm, nn.GRUCell(2 * hidden, hidden)

        def forward(self, x):
            return self.cell(self.lstm(x)[0][:, -1])

    rows = {row.name: row for row in bnn.summary(Last(), input_shape=(steps, features)).layers}
    gates = 4 * hidden  # (an LSTM: four gates; layer 1 of a bidirectional stack reads both directions, 2 * hidden)
    per_step = 2 * (gates * features + gates * hidden) + 2 * (gates * 2 * hidden + gates * hidden)
    assert (rows["lstm"].binary_macs, rows["lstm"].float_macs) == (0, steps * per_step)
    assert rows["cell"].float_macs == 3 * hidden * 2 * hidden + 3 * hidden * hidden  # (a GRU cell: three gates, once)
    gru = nn.GRU(features, hidden, batch_first=True)
    nn.utils.parametrizations.weight_norm(gru, "weight_hh_l0")  # (a parametrized weight is an attribute, no parameter)
    assert bnn.summary(gru, input_shape=(steps, features)).float_macs == steps * (3 * hidden * features
                                                                                 + 3 * hidden * hidden)
    norse = pytest.importorskip("norse.torch")
    cell = norse.SequentialState(norse.LIFRecurrentCell(features, hidden))
    assert bnn.summary(cell, input_shape=(features,)).float_macs == hidden * features + hidden * hidden


def test_population_statistics_fixed_under_inference_mode_leave_a_model_that_trains_and_evaluates():
    """Under torch.inference_mode the new statistics were inference tensors: the model's next forward pass failed in
    torch ("Inference tensors cannot be saved for backward")."""
    torch.manual_seed(0)
    model = bnn.MLP([4, 3, 2])
    with torch.inference_mode():
        bnn.use_population_statistics(model, torch.randn(10, 4))
    assert not any(buffer.is_inference() for buffer in model.buffers())
    assert model.eval()(torch.randn(2, 4)).shape == (2, 2)
    model.train()(torch.randn(4, 4)).sum().backward()
    assert model[1].weight.grad is not None


def test_population_statistics_make_single_sample_prediction_consistent():
    torch.manual_seed(0)
    model = bnn.MLP([20, 32, 4])
    x = torch.randn(300, 20) * 2 + 1
    bnn.use_population_statistics(model, x)
    first_norm = model[2]
    h = x @ torch.sign(model[1].weight.detach()).T
    torch.testing.assert_close(first_norm.running_mean, h.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first_norm.running_var, h.var(0), rtol=1e-4, atol=1e-4)
    model.eval()
    batch = model(x[:50])
    single = torch.cat([model(x[i : i + 1]) for i in range(50)])
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-5)


def test_fit_learns_real_digits_and_evaluate_agrees():
    torch.manual_seed(0)
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    model = bnn.MLP([784, 256, 10])
    history = bnn.fit(model, train, epochs=5, lr=0.005, test=test, progress=False)
    assert len(history) == 5
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["test_accuracy"] > 85.0
    assert bnn.evaluate(model, test) == pytest.approx(history[-1]["test_accuracy"])


def test_fit_warns_where_the_model_learned_nothing():
    """bnn.fit said nothing of a run that stayed at the untrained model's accuracy, as the continual trainer does."""
    import warnings

    from metaspike.training import LearnedNothingWarning

    train, test = load_dataset("digits"), load_dataset("digits", "test")
    torch.manual_seed(0)
    with pytest.warns(LearnedNothingWarning, match=r"never rose 5 points or more above what predicting the most "
                                                   r"common test class scores \(\d+\.\d %, best ") as seen:
        bnn.fit(bnn.MLP([784, 32, 10]), train, epochs=1, lr=1e-12, test=test, progress=False)
    assert seen[0].filename == __file__  # (the warning points at the caller's line)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LearnedNothingWarning)
        model = bnn.MLP([784, 32, 10])
        bnn.fit(model, train, epochs=1, test=test, progress=False)
        # (trained already, for another epoch: it rises little above where it starts, far above chance)
        bnn.fit(model, train, epochs=1, lr=1e-4, test=test, progress=False, seed=1)
        bnn.fit(bnn.MLP([784, 32, 10]), train, epochs=1, lr=1e-12, progress=False)  # (no test set: nothing to say)


def test_fit_rejects_input_of_the_wrong_size():
    x, y = torch.rand(10, 100), torch.randint(0, 10, (10,))
    with pytest.raises(ValueError, match=r"shape \(100,\) \(100 values\) but the model expects 784 input features"):
        bnn.fit(bnn.MLP([784, 16, 10]), (x, y), progress=False)


def test_fit_rejects_nan_and_bad_labels():
    x = torch.rand(10, 784)
    x[3, 5] = float("nan")
    with pytest.raises(ValueError, match="contains NaN"):
        bnn.fit(bnn.MLP([784, 16, 10]), (x, torch.zeros(10, dtype=torch.long)), progress=False)
    with pytest.raises(ValueError, match="go up to 12 but the model has 10 outputs"):
        bnn.fit(bnn.MLP([784, 16, 10]), (torch.rand(10, 784), torch.full((10,), 12)), progress=False)
    with pytest.raises(ValueError, match="must be int64"):
        bnn.fit(bnn.MLP([784, 16, 10]), (torch.rand(10, 784), torch.zeros(10)), progress=False)


def test_a_model_of_one_output_is_refused_where_cross_entropy_would_train_nothing():
    x, y = torch.rand(10, 64), torch.zeros(10, dtype=torch.long)
    message = "the model returns one output per sample; .* over one class cross-entropy is always 0"
    with pytest.raises(ValueError, match=message):
        bnn.fit(bnn.MLP([64, 8, 1]), (x, y), progress=False)
    with pytest.raises(ValueError, match=message):
        bnn.evaluate(bnn.MLP([64, 8, 1]), (x, y))
    assert len(bnn.fit(bnn.MLP([64, 8, 2]), (x, y), epochs=1, progress=False)) == 1  # (two outputs train)


def test_labels_of_another_shape_are_refused_where_they_would_broadcast():
    """[N, 1] labels compared with [N] predictions broadcast to [N, N]: an accuracy of 3093 %."""
    model, x, y = bnn.MLP([784, 16, 10]), torch.rand(30, 784), torch.randint(0, 10, (30,))
    with pytest.raises(ValueError, match=r"labels of input must have shape \[N\], one class index per sample, got "
                                         r"\[30, 1\]"):
        bnn.evaluate(model, (x, y[:, None]))
    with pytest.raises(ValueError, match=r"must have shape \[N\].* got \[30, 1\]"):
        bnn.fit(model, (x, y), test=(x, y[:, None]), progress=False)


def test_float16_training_is_refused_before_its_updates_turn_nan():
    """Adam's eps of 1e-8 is 0 in float16: a weight whose moments are both 0 gets 0/0."""
    x, y = torch.rand(300, 784), torch.randint(0, 10, (300,))
    with pytest.raises(ValueError, match=r"data is torch.float16 but the model's parameters are torch.float32; "
                                         r"convert the data \(x.to\(torch.float32\)\)"):
        bnn.fit(bnn.MLP([784, 16, 10]), (x.half(), y), progress=False)
    model = bnn.MLP([784, 16, 10]).half()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"the optimizer's eps 1e-08 is 0 in torch.float16, the dtype of its "
                                         r"parameters: its updates would turn NaN"):
        bnn.fit(model, (x.half(), y), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    history = bnn.fit(bnn.MLP([784, 16, 10]).bfloat16(), (x.bfloat16(), y), progress=False)  # bfloat16 trains
    assert all(math.isfinite(epoch["loss"]) for epoch in history)


@pytest.mark.parametrize("kwargs, message", [
    (dict(channels=(0,)), r"channels must be positive integers, got \(0,\)"),
    (dict(channels=(2.5,)), r"channels must be positive integers"),
    (dict(hidden=0), r"hidden must be a positive integer, got 0"),
    (dict(num_classes=-1), r"num_classes must be a positive integer"),
    (dict(in_shape=(1, 28.9, 28)), r"in_shape must be positive integers"),
    (dict(in_shape=(28, 28)), r"in_shape must be \(channels, height, width\)"),
    (dict(activation="tanh"), r"activation must be 'sign' or 'relu'"),
])
def test_convnet_names_a_bad_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bnn.ConvNet(**kwargs)


def test_models_name_an_input_that_does_not_fit_them():
    with pytest.raises(ValueError, match=r"MLP takes inputs of shape \(batch, 784\) .* got \(4, 100\)"):
        bnn.MLP([784, 32, 10])(torch.rand(4, 100))
    assert bnn.MLP([784, 32, 10])(torch.rand(4, 1, 28, 28)).shape == (4, 10)  # any shape of 784 values per sample
    with pytest.raises(ValueError, match=r"ConvNet takes inputs of shape \(batch, 1, 28, 28\), got \(2, 28, 28\)"):
        bnn.ConvNet()(torch.rand(2, 28, 28))
    with pytest.raises(ValueError, match=r"activation must be 'sign' or 'relu'"):
        bnn.MLP([4, 3], activation="tanh")  # checked without a hidden layer too
    for x in (torch.rand(4, 784, dtype=torch.float64), torch.randint(0, 255, (4, 784), dtype=torch.uint8)):
        with pytest.raises(ValueError, match=rf"MLP takes torch.float32 inputs, the dtype of its weights, got {x.dtype}"):
            bnn.MLP([784, 32, 10])(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # (autocast casts what it takes)
        assert bnn.MLP([784, 32, 10])(torch.rand(4, 784, dtype=torch.bfloat16)).shape == (4, 10)


def test_layers_name_an_input_that_does_not_fit_them():
    layer, conv = bnn.BinaryLinear(8, 4), bnn.BinaryConv2d(3, 4, 3)
    for x in (torch.rand(3, 7), torch.rand(())):
        with pytest.raises(ValueError, match=rf"BinaryLinear takes inputs with 8 features .* got shape {re.escape(str(tuple(x.shape)))}"):
            layer(x)
    for x in (torch.rand(2, 2, 8, 8), torch.rand(8, 8)):
        with pytest.raises(ValueError, match=r"BinaryConv2d takes inputs with 3 channels"):
            conv(x)
    for x in (torch.rand(3, 8, dtype=torch.float64), torch.randint(0, 2, (3, 8))):
        with pytest.raises(ValueError, match=rf"BinaryLinear takes torch.float32 inputs, .* got {x.dtype}: convert"):
            layer(x)
    with pytest.raises(ValueError, match=r"BinaryLinear takes a tensor, got list"):
        layer([0.0] * 8)
    assert layer(torch.rand(5, 2, 8)).shape == (5, 2, 4) and conv(torch.rand(3, 8, 8)).shape == (4, 6, 6)  # as nn's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.rand(3, 8)).shape == (3, 4)  # (autocast casts what it takes)


class _PixelsToPlusMinusOne(nn.Module):
    def forward(self, x):
        return x.float() / 127.5 - 1


def test_a_layers_input_check_takes_what_its_quantizer_gives_and_draws_no_weight_sample(monkeypatch):
    """The dtype is checked after the input quantizer (one that turns uint8 pixels into floats is fine), and read from
    the parameters: reading a Bayesian layer's weight would draw a sample, and move torch's generator."""
    import bnn.layers

    layer = bnn.BinaryLinear(4, 3, input_quantizer=_PixelsToPlusMinusOne())
    assert layer(torch.randint(0, 256, (2, 4), dtype=torch.uint8)).shape == (2, 3)
    conv = bnn.BinaryConv2d(1, 2, 3, input_quantizer=_PixelsToPlusMinusOne())
    assert conv(torch.ones(1, 1, 4, 4, dtype=torch.bool)).shape == (1, 2, 2, 2)
    torch.manual_seed(0)
    model = metaspike.bayesianize(nn.Sequential(bnn.BinaryLinear(4, 3)), "bimu", scale=None)
    synapse = model[0].parametrizations.weight[0]
    draws = []
    synapse.register_forward_hook(lambda *args: draws.append(1))
    model(torch.rand(2, 4))
    checked = len(draws)
    monkeypatch.setattr(bnn.layers, "_quantized_input", lambda layer, x: layer.input_quantizer(x))  # (no check)
    model(torch.rand(2, 4))
    assert checked == len(draws) - checked


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
@pytest.mark.parametrize("shape", ["linear", "large linear", "conv"])
def test_a_bayesianized_binary_layer_uses_one_weight_sample_per_forward_pass(kind, shape):
    """A forward pass read the weight several times (its signs, the tensor the straight-through gradient reaches,
    the gradient buffer's shape), and each read of a Bayesian weight draws a sample: the product used one sample and
    the gradient reached another. Now one sample serves the pass: the output is its product and the synapse's
    gradient is what that sample's graph gives. The values are integers well below 2^24 (±1 inputs, weights and
    output gradients), so both sides are exact and compared bit for bit."""
    torch.manual_seed(0)
    layer = {"linear": lambda: bnn.BinaryLinear(40, 30), "large linear": lambda: bnn.BinaryLinear(1024, 1024),
             "conv": lambda: bnn.BinaryConv2d(3, 4, 3)}[shape]()  # (the large one's size takes the fast product
    # when its weight is not sampled)
    metaspike.bayesianize(layer, kind, scale=None)
    seen = []
    layer.parametrizations.weight[0].register_forward_hook(lambda module, args, out: seen.append(out))
    x = torch.randn(8, *((layer.in_features,) if shape != "conv" else (3, 6, 6))).sign()
    out = layer(x)
    assert len({id(sample) for sample in seen}) == 1
    sample = seen[0]
    if shape == "conv":
        assert torch.equal(out, nn.functional.conv2d(x, sample.sign()))
    else:
        assert torch.equal(out, x @ sample.sign().T)
    grad = torch.randn_like(out).sign()
    out.backward(grad, retain_graph=True)
    weight_grad = (torch.nn.grad.conv2d_weight(x, sample.shape, grad) if shape == "conv" else grad.T @ x)
    tensors = [t for t in layer.parameters() if t.requires_grad]
    expected = torch.autograd.grad(sample, tensors, weight_grad)
    for tensor, want in zip(tensors, expected):
        assert torch.equal(tensor.grad, want)


_COMPILED_AGAINST_EAGER = """
import torch, bnn, metaspike
grads = []
for compile_it in (True, False):
    torch.manual_seed(0)
    model = metaspike.bayesianize(bnn.MLP([8, 4, 2]), "bimu")
    run = torch.compile(model) if compile_it else model
    x = torch.rand(16, 8)
    for _ in range(3):
        run(x).sum().backward()
    grads.append([p.grad for p in model.parameters()])
for compiled, eager in zip(*grads):
    torch.testing.assert_close(compiled, eager)  # (float32 sums, which inductor may order otherwise)
"""


def test_a_compiled_bayesianized_bnn_model_trains_as_the_eager_one(working_compiler):
    """torch.compile of a bayesianized bnn.MLP failed at its second pass inside dynamo: the layers' sign buffers kept
    a weak reference to the last pass's weight sample, dead by then. A sampled weight now takes the quantizer, as in a
    torch.func transform; the compiled model draws the samples eager draws (README), so the gradients agree. (In a
    child process: under pytest the failure did not show.)"""
    run = subprocess.run([sys.executable, "-c", _COMPILED_AGAINST_EAGER], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]


def test_evaluating_or_summarising_a_sampling_model_leaves_torchs_generator_as_it_was():
    """bnn.evaluate's input check ran a Bayesian model that samples in evaluation on torch's own generator: each call
    scored differently, and evaluating between epochs changed how the model trained (the documented promise of
    metaspike.training.evaluate); bnn.summary's probe pass did the same."""
    torch.manual_seed(0)
    model = metaspike.bayesianize(bnn.MLP([784, 32, 10]), "bimu", evaluation="sample")
    test = load_dataset("digits", "test")
    state = torch.get_rng_state()
    scores = [bnn.evaluate(model, test) for _ in range(3)]
    bnn.summary(model, input_shape=(784,))
    assert torch.equal(torch.get_rng_state(), state)
    assert len(set(scores)) == 1


def test_summary_counts_a_mesu_synapses_width_once():
    model = metaspike.bayesianize(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), "mesu")
    counted = bnn.summary(model, input_shape=(64,))
    assert counted.float_params + counted.binary_params == sum(p.numel() for p in model.parameters())  # mu, sigma, bias
    # (its last line described "1-bit binary weights ... 1.0x smaller" that a MESU model has none of)
    assert str(counted).splitlines()[-1] == f"memory: {counted.float32_bytes / 1024:.1f} kB float32; no binary or " \
        "quantized weights"


def test_one_sample_asks_for_population_statistics_first():
    """BatchNorm with the batch's statistics (the paper's) is undefined for one sample, in eval mode too."""
    model = bnn.MLP([784, 32, 10]).eval()
    with pytest.raises(ValueError, match=r"got one sample.*bnn.use_population_statistics\(model, x_train\)"):
        model(torch.rand(1, 784))
    bnn.use_population_statistics(model, torch.rand(50, 784))
    assert model(torch.rand(1, 784)).shape == (1, 10)
    with pytest.raises(ValueError, match=r"got one sample"):
        model.train()(torch.rand(1, 784))  # training normalises with the batch's statistics again


def test_a_test_set_of_one_sample_is_named_as_such_not_as_samples_of_a_shape_that_does_not_fit():
    """The trainer's trial pass turned the model's one-sample refusal into "samples of shape (64,) do not fit the
    model", a shape that fits, and advised batches of 2, which a test set of one sample cannot give."""
    from metaspike.continual import ContinualTrainer, Scenario, Task, TrainerConfig

    x, y = torch.rand(41, 64), torch.arange(41) % 2
    task = Task("one", *(ArrayDataset.from_tensors(x[part], y[part], "d", classes=("a", "b"))
                         for part in (slice(0, 40), slice(40, None))))
    trainer = ContinualTrainer(bnn.MLP([64, 16, 2]), lambda m: torch.optim.Adam(m.parameters(), 1e-2),
                               TrainerConfig(epochs=1, batch_size=20), progress=False)
    with pytest.raises(ValueError, match=r"^test data of task 'one' holds one sample, and the model's BatchNorm "
                                         r"normalises by the statistics of the batch .*use_population_statistics"):
        trainer.fit(Scenario("s", [task], [task]))


def test_convnet_trains_a_step():
    net = bnn.ConvNet(in_shape=(1, 28, 28), channels=(8, 16), hidden=32)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in net.parameters())


def test_magnitude_gate_fires_beyond_its_width_and_its_surrogate_is_a_signed_box_around_each_threshold():
    from bnn import MagnitudeGate

    gate = MagnitudeGate(width=2.0)
    x = torch.tensor([-3.5, -2.9, -2.0, -0.9, 0.0, 0.9, 1.1, 2.0, 2.9, 3.1], requires_grad=True)
    y = gate(x)
    assert y.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]  # |x| > 2 fires; exactly 2 does not
    y.sum().backward()
    # +1 on (1, 3), -1 on (-3, -1): half a width around each threshold, signed as |x| grows
    assert x.grad.tolist() == [0, -1, -1, 0, 0, 0, 1, 1, 1, 0]
    for bad in (0, -1.0, float("inf"), True, "1"):
        with pytest.raises(ValueError, match="width must be a finite number > 0"):
            MagnitudeGate(bad)


def test_population_statistics_take_any_number_of_samples_and_keep_the_mode():
    torch.manual_seed(0)
    x = torch.randn(1001, 20)  # in chunks of 1000 the last would hold one sample
    a, b = bnn.MLP([20, 16, 3]).train(), bnn.MLP([20, 16, 3])
    b.load_state_dict(a.state_dict())
    bnn.use_population_statistics(a, x)
    bnn.use_population_statistics(b, x, batch_size=7)
    assert a.training
    # the same float64 sums in other groupings: equal to float32 rounding of the stored statistics
    for norm_a, norm_b in zip([m for m in a.modules() if isinstance(m, nn.BatchNorm1d)],
                              [m for m in b.modules() if isinstance(m, nn.BatchNorm1d)]):
        assert torch.allclose(norm_a.running_mean, norm_b.running_mean, rtol=1e-6, atol=1e-7)
        assert torch.allclose(norm_a.running_var, norm_b.running_var, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 2, got 0"):
        bnn.use_population_statistics(a, x, batch_size=0)
    with pytest.raises(ValueError, match="x holds NaN or infinite values"):
        bnn.use_population_statistics(a, x.index_fill(0, torch.tensor([3]), float("nan")))


def test_pack_refuses_a_model_with_non_finite_values():
    torch.manual_seed(0)
    model = bnn.use_population_statistics(bnn.MLP([20, 16, 3]), torch.randn(50, 20)).eval()
    norm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    norm.running_var[2] = float("nan")
    with pytest.raises(ValueError, match="layer 0 holds NaN or infinite values"):
        bnn.pack(model, compile=False)


@pytest.mark.parametrize("wrap", [nn.utils.parametrizations.weight_norm, nn.utils.parametrizations.orthogonal,
                                  nn.utils.parametrizations.spectral_norm])
def test_binarize_refuses_a_weight_under_a_parametrization_and_changes_nothing(wrap):
    """Under an orthogonal parametrization the layer showed sign(Q(W)) while the optimizers consolidated W: the
    shown sign was not the hidden weight's, without a word (weight_norm's several tensors were refused already)."""
    layer = wrap(nn.Linear(4, 4))
    net = nn.Sequential(nn.Linear(4, 4), layer)
    with pytest.raises(ValueError, match=r"layer '1' already has a weight parametrization; binarize needs plain "
                                         r"weights .*exclude=\['1'\]"):
        metaspike.binarize(net)
    assert not metaspike.hidden_weights(net) and not hasattr(net[0], "output_gain")
    metaspike.binarize(net, exclude=["1"])  # (the remedy it names)


def test_sign_activation_checks_its_clip_value_when_built():
    with pytest.raises(ValueError, match="clip_value must be a number > 0 or None, got -1"):
        bnn.SignActivation(clip_value=-1)


@pytest.mark.parametrize("test_data, message", [
    ((torch.rand(6, 20), torch.tensor([7, 8, 9, 7, 8, 9])), "go up to 9 but the model has 3 outputs"),
    ((torch.full((6, 20), float("nan")), torch.zeros(6, dtype=torch.long)), "test data contains NaN"),
    ((torch.rand(6, 19), torch.zeros(6, dtype=torch.long)), "test data samples have shape"),
])
def test_fit_checks_its_test_data_before_training(test_data, message):
    """The test set was used only after an epoch: wrong labels read as 0 % and NaN inputs as 40 %."""
    model = bnn.MLP([20, 8, 3])
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        bnn.fit(model, (torch.rand(10, 20), torch.randint(0, 3, (10,))), epochs=1, test=test_data, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused before training


def test_fit_names_numpy_data_negative_labels_and_a_bad_seed():
    import numpy as np

    model, x = bnn.MLP([20, 8, 3]), torch.rand(10, 20)
    with pytest.raises(ValueError, match=r"train must hold torch tensors .* torch.from_numpy"):
        bnn.fit(model, (np.zeros((10, 20), np.float32), np.zeros(10, np.int64)), progress=False)
    with pytest.raises(ValueError, match="labels of training data must be class indices >= 0, got -1"):
        bnn.fit(model, (x, torch.full((10,), -1)), progress=False)
    with pytest.raises(ValueError, match="seed must be an integer"):
        bnn.fit(model, (x, torch.zeros(10, dtype=torch.long)), seed="a", progress=False)
    with pytest.raises(ValueError, match="device must name a torch device"):
        bnn.evaluate(model, (x, torch.zeros(10, dtype=torch.long)), device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda': CUDA is not available on this machine"):
            bnn.fit(model, (x, torch.zeros(10, dtype=torch.long)), device="cuda", progress=False)


def test_summary_counts_every_weight_sample_and_names_what_it_cannot_count():
    """A Bayesian layer with S weight samples does S products per input sample; the probe batch was miscounted."""
    for samples in (1, 3):
        layer = bnn.BinaryBayesianLinear(30, 20, samples=samples)
        counted = bnn.summary(nn.Sequential(layer), input_shape=30)  # an int is one sample's shape too
        assert counted.binary_macs + counted.float_macs == 600 * samples
    packed_like = object()
    with pytest.raises(ValueError, match="summary takes a torch model"):
        bnn.summary(packed_like)
    with pytest.raises(ValueError, match="input_shape must be one sample's shape"):
        bnn.summary(bnn.MLP([4, 3, 2]), input_shape=(4, "x"))


def test_summary_counts_every_run_of_a_layer_transposed_convolutions_and_bimu_weights_as_one_bit():
    class Twice(nn.Module):  # one layer on real inputs, then on ±1 ones
        def __init__(self):
            super().__init__()
            self.shared = bnn.BinaryLinear(16, 16)

        def forward(self, x):
            return self.shared(torch.sign(self.shared(x)) + (torch.sign(self.shared(x)) == 0))

    counted = bnn.summary(Twice(), input_shape=(16,))
    assert (counted.binary_macs, counted.float_macs) == (256, 2 * 256)  # by hand: three runs of 16 x 16
    transposed = metaspike.binarize(nn.Sequential(nn.ConvTranspose2d(2, 3, 3)), layer_types=nn.ConvTranspose2d,
                                    scale=None)
    # by hand: every input element (2 x 5 x 5) meets out_channels x kernel (3 x 3 x 3) weights
    assert bnn.summary(transposed, input_shape=(2, 5, 5)).float_macs == 2 * 5 * 5 * 3 * 3 * 3
    bimu = metaspike.bayesianize(nn.Sequential(nn.Linear(16, 8, bias=False)), "bimu", scale=None)
    rows = bnn.summary(bimu).layers
    assert (rows[0].binary_params, rows[0].float_params) == (128, 0)  # λ: ±1 weights at inference, one bit each
    long_name = nn.Sequential()
    long_name.add_module("a_rather_long_layer_name", bnn.BinaryLinear(4, 2))
    lines = str(bnn.summary(long_name)).splitlines()
    assert lines[2].split()[:2] == ["a_rather_long_layer_name", "BinaryLinear"]


@pytest.mark.parametrize("make, x", [(lambda: bnn.MLP([20, 8, 3]), torch.rand(16, 20)),
                                     (lambda: bnn.ConvNet((1, 8, 8), channels=(4,), hidden=8, num_classes=3),
                                      torch.rand(16, 1, 8, 8))])
def test_a_model_saved_with_population_statistics_loads_into_a_fresh_one(make, x):
    import copy

    trained = bnn.use_population_statistics(make(), x).eval()
    fresh = make()
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh.eval()(x[:1]), trained(x[:1]))  # one sample: the population statistics are in use
    copy.deepcopy(fresh)


def test_saved_population_statistics_load_in_the_models_dtype():
    trained = bnn.use_population_statistics(bnn.MLP([4, 8, 3]).double(), torch.rand(16, 4, dtype=torch.float64))
    fresh = bnn.MLP([4, 8, 3]).double()
    fresh.load_state_dict(trained.state_dict())
    x = torch.rand(2, 4, dtype=torch.float64)
    assert fresh[2].running_mean.dtype == torch.float64 and torch.equal(fresh.eval()(x), trained.eval()(x))


def test_a_bnn_model_saves_whole_after_a_forward_pass(tmp_path):
    import pickle

    model = bnn.MLP([6, 8, 3]).eval()
    x = torch.randn(4, 6)
    expected = model(x)  # (the pass writes the sign buffers, a cache with a weak reference)
    torch.save(model, tmp_path / "model.pt")
    for copied in (torch.load(tmp_path / "model.pt", weights_only=False), pickle.loads(pickle.dumps(model))):
        assert torch.equal(copied(x), expected)


@pytest.mark.parametrize("kwargs", [dict(groups=4), dict(dilation=2, padding=2), dict(padding_mode="reflect"),
                                    dict(padding_mode="circular", stride=2), dict(padding="same", groups=2)])
def test_binary_conv2d_takes_the_arguments_of_nn_conv2d(kwargs):
    """The ±1 product equals nn.Conv2d's with the same arguments and sign(W_h) as its weight."""
    torch.manual_seed(0)
    conv = bnn.BinaryConv2d(4, 4, 3, padding=kwargs.pop("padding", 1), **kwargs)
    reference = nn.Conv2d(4, 4, 3, padding=conv.padding, bias=False, **kwargs)
    with torch.no_grad():
        reference.weight.copy_(torch.sign(conv.weight))
    x = torch.sign(torch.randn(2, 4, 9, 9))
    assert torch.equal(conv(x), reference(x))  # integer sums of ±1: exact in float32


def test_an_mlp_larger_than_memory_is_one_line(monkeypatch):
    monkeypatch.setattr(bnn.models, "usable_memory", lambda: 1 << 30)
    with pytest.raises(ValueError, match=r"sizes \[784, 1048576, 10\]: 832,569,344 float32 hidden weights take 3 GiB, "
                                         r"more than the 1 GiB this process may use"):
        bnn.MLP([784, 2**20, 10])


def test_a_convnet_larger_than_memory_is_one_line(monkeypatch):
    monkeypatch.setattr(bnn.models, "usable_memory", lambda: 1 << 30)
    # by hand: 9·1·64 conv weights + 64·(4096/2)² inputs to the classifier x 16 hidden units + 16·10
    with pytest.raises(ValueError, match=r"in_shape \(1, 4096, 4096\), channels \[64\], hidden 16: 4,294,968,032 "
                                         r"float32 hidden weights take 16 GiB, more than the 1 GiB this process may use"):
        bnn.ConvNet((1, 4096, 4096), (64,), 16, 10)


def test_a_convolutions_geometry_and_a_scales_shape_are_one_line_and_fit_takes_batch_size_one():
    """kernel_size 0, stride 0 and padding -1 failed in the forward pass inside oneDNN; Scale(-1) inside torch;
    bnn.fit refused batch_size=1 even for a model without BatchNorm, which train_epoch trains."""
    import bnn
    from metaspike.snn import Scale

    for make, message in [(lambda: bnn.BinaryConv2d(3, 4, 0), "kernel_size must be an integer >= 1"),
                          (lambda: bnn.BayesianConv2d(3, 4, 3, stride=0), "stride must be an integer >= 1"),
                          (lambda: bnn.BinaryBayesianConv2d(3, 4, 3, padding=-1), "padding must be an integer >= 0"),
                          (lambda: Scale(-1), "shape must be a positive integer"),
                          (lambda: Scale(3, init=float("nan")), "init must be a finite number, got nan")]:
        with pytest.raises(ValueError, match=f"^{message}"):
            make()
    model = torch.nn.Sequential(bnn.BinaryLinear(4, 3), torch.nn.LayerNorm(3, elementwise_affine=False))
    data = (torch.rand(6, 4), torch.randint(0, 3, (6,)))
    assert len(bnn.fit(model, data, epochs=1, batch_size=1, progress=False)) == 1
    # lists, as nn.Conv2d takes them (they were refused as not "a pair"): the same layer as with tuples
    listed, paired = bnn.BinaryConv2d(3, 4, [3, 2], stride=[2, 1], padding=[1, 0]), bnn.BinaryConv2d(3, 4, (3, 2))
    assert (listed.kernel_size, listed.stride, listed.padding) == ((3, 2), (2, 1), (1, 0))
    paired.load_state_dict(listed.state_dict())
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(listed(x), torch.nn.functional.conv2d(x, paired.weight.sign(), stride=(2, 1), padding=(1, 0)))
    for kernel in ([3, 3, 3], [3], (3,)):  # (one value in a sequence failed in the forward pass, inside torch)
        with pytest.raises(ValueError, match=r"^kernel_size must be an integer >= 1 or a pair of them, got "):
            bnn.BinaryConv2d(3, 4, kernel)


def test_a_slice_of_an_mlp_or_convnet_is_a_sequential_of_its_layers():
    """torch rebuilds a slice with the model's own class, which an MLP built from its sizes refused in a misleading
    line ("sizes must list at least 2 positive integer widths ..., got ['0', '1', '2']")."""
    mlp, conv = bnn.MLP([784, 256, 10]), bnn.ConvNet(channels=(8,), hidden=16)
    features = mlp[:3]
    assert type(features) is torch.nn.Sequential and list(features) == list(mlp)[:3]
    x = torch.rand(4, 784)
    assert torch.equal(features(x), mlp[2](mlp[1](mlp[0](x))))
    assert type(conv[:4]) is torch.nn.Sequential and conv[:4](torch.rand(2, 1, 28, 28)).shape == (2, 8, 14, 14)
    assert isinstance(mlp[1], bnn.BinaryLinear)


def _modes(model: nn.Module) -> list[bool]:
    return [module.training for module in model.modules()]


@pytest.mark.parametrize("call", ["evaluate", "summary", "use_population_statistics", "fisher_diagonal"])
def test_calls_that_evaluate_leave_every_module_in_its_own_mode(call):
    """BatchNorm frozen by .eval() inside a training model (fine-tuning), and dropout kept on inside an evaluating
    one (Monte Carlo dropout): the calls restored the model's own mode to every module (a helper: the frozen
    BatchNorm went back to batch statistics and the outputs changed without a word)."""
    from metaspike.continual.baselines import fisher_diagonal

    torch.manual_seed(0)
    x, y = torch.rand(200, 64), torch.randint(0, 10, (200,))
    run = {"evaluate": lambda m: bnn.evaluate(m, (x, y)), "summary": lambda m: bnn.summary(m, input_shape=(64,)),
           "use_population_statistics": lambda m: bnn.use_population_statistics(m, x),
           "fisher_diagonal": lambda m: fisher_diagonal(m, x[:20], y[:20])}[call]
    model = bnn.use_population_statistics(nn.Sequential(*bnn.MLP([64, 32, 10]), nn.Dropout(0.5)), x)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.eval()
    frozen = _modes(model)
    before = model[:-1](x[:8]).detach()
    run(model)
    assert _modes(model) == frozen
    assert torch.equal(model[:-1](x[:8]).detach(), before)  # (the population statistics, not the batch's)
    model.eval()
    model[-1].train()  # Monte Carlo dropout
    sampling = _modes(model)
    run(model)
    assert _modes(model) == sampling
    with pytest.raises(ValueError):  # (a call that fails part-way restores them too)
        bnn.evaluate(model, (x[:, :10], y))
    assert _modes(model) == sampling


def test_a_module_shared_by_parents_in_other_modes_gets_its_own_mode_back():
    """Restored by train() parent after parent, the shared layer took the mode of the last parent that held it."""
    from metaspike.modes import evaluation_mode

    shared = nn.Linear(8, 3)
    model = nn.ModuleDict({"a": nn.Sequential(shared), "b": nn.Sequential(shared)})
    model.train()
    model["b"].eval()
    shared.train()
    with evaluation_mode(model):
        assert not any(_modes(model))
    assert (model.training, model["a"].training, model["b"].training, shared.training) == (True, True, False, True)
