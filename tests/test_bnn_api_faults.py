"""Regression tests for faults a new user met in the bnn API: pack's checks, BinaryConv2d's arguments and input sizes,
summary's bits per weight, population statistics of a multi-head model."""

import contextlib
import functools
import itertools
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import bnn
from metaspike.synapse import hidden_weights, is_hidden_weight


def _fixed(model: nn.Module, features: int) -> nn.Module:
    """``model`` with population statistics (of uniform noise) in eval mode, ready for bnn.pack."""
    torch.manual_seed(0)
    return bnn.use_population_statistics(model, torch.rand(64, features) * 2 - 1).eval()


# --- bnn.pack -------------------------------------------------------------------------------------------------------


def test_pack_refuses_a_model_ending_with_a_sign_activation_instead_of_dropping_it():
    """The packed model gave the last BatchNorm's scores where the float model gave their signs: 763 of 1,000
    predictions differed, without a word."""
    layers = [bnn.BinaryLinear(30, 16), nn.BatchNorm1d(16), bnn.SignActivation(), bnn.BinaryLinear(16, 10),
              nn.BatchNorm1d(10), bnn.SignActivation()]
    model = _fixed(nn.Sequential(*layers), 30)
    message = r"the model ends with a SignActivation after layer 1's BatchNorm1d, so its outputs are ±1"
    with pytest.raises(ValueError, match=message):
        bnn.pack(model)
    with pytest.raises(ValueError, match=message):  # (a no-op after it changes nothing)
        bnn.pack(nn.Sequential(*layers, nn.Dropout()).eval())
    without = nn.Sequential(*layers[:-1]).eval()  # what the message asks for packs, and predicts as it does
    x = torch.rand(200, 30) * 2 - 1
    assert torch.equal(bnn.pack(without, compile=False).predict(x), without(x).argmax(1))


def test_pack_refuses_a_plain_callable_input_quantizer_in_one_line():
    """A callable has no ``precision``: pack raised AttributeError from inside its checks."""
    first = nn.Sequential(bnn.BinaryLinear(30, 16, input_quantizer=lambda x: x), nn.BatchNorm1d(16),
                          bnn.SignActivation(), bnn.BinaryLinear(16, 10), nn.BatchNorm1d(10))
    with pytest.raises(ValueError, match=r"layer 0 quantizes its input \(input_quantizer <function"):
        bnn.pack(_fixed(first, 30))
    later = nn.Sequential(bnn.BinaryLinear(30, 16), nn.BatchNorm1d(16),
                          bnn.BinaryLinear(16, 10, input_quantizer=torch.sign), nn.BatchNorm1d(10))
    with pytest.raises(ValueError, match=r"layer 0 is followed by BinaryLinear; pack needs a bnn.SignActivation "
                                         r"there; layer 1 quantizes its input itself \(input_quantizer <built-in"):
        bnn.pack(_fixed(later, 30))


@pytest.mark.parametrize("wrap", ["ConvNet", "Sequential", "binarized"])
def test_pack_says_first_that_convolutional_layers_cannot_be_packed(wrap):
    """It told a ConvNet to put its layers in an nn.Sequential, and then refused that for another reason."""
    torch.manual_seed(0)
    convnet = bnn.ConvNet(in_shape=(1, 8, 8), channels=(4,), hidden=16)
    model = {"ConvNet": lambda: convnet, "Sequential": lambda: nn.Sequential(*convnet),
             "binarized": lambda: nn.Sequential(bnn.BinaryLinear(4, 4), nn.BatchNorm1d(4), bnn.SignActivation(),
                                                nn.Unflatten(1, (1, 2, 2)), nn.Conv2d(1, 2, 1))}[wrap]()
    kind, name = ("Conv2d", "4") if wrap == "binarized" else ("BinaryConv2d", "0")
    with pytest.raises(ValueError, match=f"pack cannot pack convolutional layers: module '{name}' of "
                                         f"{type(model).__name__} is a {kind}; pack takes MLPs"):
        bnn.pack(model.eval())


# --- BinaryConv2d ---------------------------------------------------------------------------------------------------


def test_binary_conv2d_takes_nn_conv2d_positional_arguments_in_their_order():
    """The sixth argument bound to ``bias`` (dilation 2 became a bias and dilation 1, without a word)."""
    args = (4, 8, 3, 2, 1, 2, 2, False, "reflect")  # in, out, kernel, stride, padding, dilation, groups, bias, mode
    torch_conv, binary, bayesian = nn.Conv2d(*args), bnn.BinaryConv2d(*args), bnn.BinaryBayesianConv2d(*args)
    for conv in (binary, bayesian):
        assert (conv.stride, conv.padding, conv.dilation, conv.groups, conv.bias, conv.padding_mode) == (
            torch_conv.stride, torch_conv.padding, torch_conv.dilation, torch_conv.groups, None,
            torch_conv.padding_mode)
    assert binary.weight.shape == torch_conv.weight.shape
    x = torch.rand(2, 4, 9, 9)
    assert binary(x).shape == torch_conv(x).shape == (2, 8, 4, 4)
    assert bnn.BinaryConv2d(4, 8, 3, 1, 0, 1, 1, True).bias is not None
    with pytest.raises(TypeError):  # the bnn arguments are keyword-only: no quantizer taken for a padding_mode's place
        bnn.BinaryConv2d(4, 8, 3, 1, 0, 1, 1, False, "zeros", "ste_sign")


@pytest.mark.parametrize("make", [lambda bias: bnn.BinaryConv2d(4, 8, 3, bias=bias),
                                  lambda bias: bnn.BinaryLinear(4, 8, bias)])
@pytest.mark.parametrize("bias", [2, "ste_sign", None, 1.0])
def test_a_bias_that_is_not_a_bool_is_refused_in_one_line(make, bias):
    with pytest.raises(ValueError, match=f"bias must be True or False, got {bias!r}"):
        make(bias)


def test_binary_conv2d_refuses_an_input_smaller_than_its_kernel_in_one_line():
    with pytest.raises(ValueError, match=r"BinaryConv2d takes inputs of at least 3x3 pixels \(height x width: its "
                                         r"kernel spans 3x3 .*\), got 2x2"):
        bnn.BinaryConv2d(4, 4, 3)(torch.rand(2, 4, 2, 2))
    with pytest.raises(ValueError, match=r"at least 3x1 pixels .*kernel spans 5x5 with kernel_size \(3, 3\) and "
                                         r"dilation \(2, 2\), padding \(1, 2\)\), got 2x9"):
        bnn.BinaryConv2d(4, 4, 3, padding=(1, 2), dilation=2)(torch.rand(4, 2, 9))
    with pytest.raises(ValueError, match=r"padding_mode 'reflect' takes inputs larger than its padding \(2x2 pixels "
                                         r"on a side, height x width\), got 2x9"):
        bnn.BinaryConv2d(4, 4, 5, padding=2, padding_mode="reflect")(torch.rand(1, 4, 2, 9))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")  # (torch's: both)
def test_layer_arguments_and_inputs_torch_fails_on_inside_are_one_line(tmp_path):
    """groups=2.0 (a TypeError in torch.empty), an init_width beyond float32 (uniform_'s "from is out of bounds"), a
    5-D input to a conv layer (conv2d's error); PackedMLP.load took compile="False" as true."""
    with pytest.raises(ValueError, match=r"^groups must be a positive integer that divides in_channels \(4\) and "
                                         r"out_channels \(4\), got 2.0$"):
        bnn.BinaryConv2d(4, 4, 3, groups=2.0)
    with pytest.raises(ValueError, match=r"^groups must be .* in_channels \(3\) and out_channels \(4\), got 2$"):
        bnn.BinaryConv2d(3, 4, 3, groups=2)  # (torch's own message, raised inside its constructor)
    with pytest.raises(ValueError, match=r"^init_width must be a finite number in \(0, 6.80565e\+38\] or None"):
        bnn.BinaryLinear(4, 4, init_width=1e39)
    with pytest.raises(ValueError, match=r"^BinaryConv2d takes inputs with 4 channels .*, got shape \(1, 1, 4, 5, 5\)"):
        bnn.BinaryConv2d(4, 4, 3)(torch.randn(1, 1, 4, 5, 5))
    path = tmp_path / "packed.pt"
    bnn.pack(bnn.use_population_statistics(bnn.MLP([6, 5, 3]), torch.randn(20, 6)).eval()).save(path)
    for compile in ("False", None, 2):
        with pytest.raises(ValueError, match=r"^compile must be True \(the fast kernels\) or False"):
            bnn.PackedMLP.load(path, compile=compile)
    assert bnn.PackedMLP.load(path, compile=False).sizes == [6, 5, 3]


@pytest.mark.filterwarnings("ignore:torch.nn.utils.weight_norm is deprecated:FutureWarning")
def test_binary_layers_under_torchs_weight_parametrizations_check_their_input_dtype():
    """The dtype of a layer's weight was read where a synapse keeps it (a bare KeyError under weight_norm, whose two
    tensors are original0 and original1, or under spectral_norm's hook)."""
    from torch.nn.utils import parametrizations, spectral_norm, weight_norm

    for wrap in (parametrizations.weight_norm, weight_norm, spectral_norm):
        layer = wrap(bnn.BinaryLinear(4, 3))
        assert layer(torch.randn(2, 4)).shape == (2, 3)
        with pytest.raises(ValueError, match=r"^BinaryLinear takes torch.float32 inputs"):
            layer(torch.randn(2, 4, dtype=torch.float64))


CONVS = {"BinaryConv2d": bnn.BinaryConv2d, "BayesianConv2d": bnn.BayesianConv2d,
         "BinaryBayesianConv2d": bnn.BinaryBayesianConv2d,
         "BayesianConv2d with samples": functools.partial(bnn.BayesianConv2d, samples=2),
         "BinaryBayesianConv2d with samples": functools.partial(bnn.BinaryBayesianConv2d, samples=2)}


@pytest.mark.parametrize("name", CONVS)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")  # (torch's: both)
def test_conv_layers_refuse_exactly_the_input_sizes_nn_conv2d_cannot_convolve(name):
    """Each geometry (kernel, dilation, padding, padding mode) on heights 0 to 6: each conv layer of bnn raises its
    one line, naming it, where torch's convolution fails and gives torch's output shape elsewhere (behind a sampled
    layer's sample dimension)."""
    for k, d, padding, mode in itertools.product((1, 2, 3, 4), (1, 2), (0, 1, 2, "same", "valid"),
                                                 ("zeros", "reflect", "replicate", "circular")):
        geometry = dict(kernel_size=(k, 1), dilation=(d, 1), padding_mode=mode,
                        padding=padding if isinstance(padding, str) else (padding, 0))
        if padding == "valid" and mode != "zeros":
            continue  # (torch refuses the pair when the layer is made)
        layer, reference = CONVS[name](2, 2, **geometry), nn.Conv2d(2, 2, **geometry)
        for height in range(7):
            x = torch.rand(1, 2, height, 3)
            try:
                expected = reference(x).shape
            except RuntimeError:
                expected = None
            if expected is None:
                with pytest.raises(ValueError, match=f"^{name.split()[0]} (with padding_mode .* )?takes inputs"):
                    layer(x)
            else:
                assert layer(x).shape[-4:] == expected, (geometry, height)


@pytest.mark.parametrize("make", [lambda: bnn.BayesianLinear(4, 3), lambda: bnn.BinaryBayesianLinear(4, 3, samples=2),
                                  lambda: bnn.BayesianConv2d(4, 3, 3), lambda: bnn.BinaryBayesianConv2d(4, 3, 3)])
def test_bayesian_layers_refuse_inputs_of_other_features_or_dtype_in_one_line(make):
    """Inputs torch's product failed on inside (its "mat1 and mat2 shapes", conv2d's channel count, "expected scalar
    type Float but found Long"): one line naming the layer, as bnn's binary layers give."""
    layer = make()
    name = type(layer).__mro__[1].__name__  # (the class before torch's parametrized subclass)
    shape = (2, 4) if isinstance(layer, nn.Linear) else (2, 4, 5, 5)
    wrong = (2, 5) if isinstance(layer, nn.Linear) else (2, 5, 5, 5)
    with pytest.raises(ValueError, match=f"^{name} takes inputs with 4 (features|channels)"):
        layer(torch.rand(wrong))
    with pytest.raises(ValueError, match=f"^{name} takes torch.float32 inputs, the dtype of its weights, got torch"):
        layer(torch.ones(shape, dtype=torch.long))
    assert layer(torch.rand(shape)).shape[-1 if isinstance(layer, nn.Linear) else -3] == 3


# --- bnn.summary ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ternary:
    """A Larq-style quantizer object carrying its precision: -1, 0 or +1 (2 bits)."""

    precision: int = 2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.where(x.abs() < 0.02, 0.0, torch.sign(x))
        return x + (q - x).detach()


def test_summary_counts_a_weight_at_its_quantizers_precision():
    """Every quantizer but "none" counted as 1 bit: a 2-bit ternary one and torch.tanh too."""
    n = 16 * 8
    for quantizer, binary, quantized, floats, bits in [("ste_sign", n, 0, 0, n), ("ste_sign_unclipped", n, 0, 0, n),
                                                      (_Ternary(), 0, n, 0, 2 * n), (torch.tanh, 0, 0, n, 32 * n),
                                                      ("none", 0, 0, n, 32 * n)]:
        counted = bnn.summary(nn.Sequential(bnn.BinaryLinear(16, 8, weight_quantizer=quantizer)), input_shape=(16,))
        assert (counted.binary_params, counted.quantized_params, counted.float_params) == (binary, quantized, floats)
        assert counted.packed_bytes == bits / 8 and counted.float32_bytes == 4 * n
        assert counted.binary_macs == 0 and counted.float_macs == n  # (a real input: 32-bit products for every kind)
    signs = nn.Sequential(bnn.SignActivation(), bnn.BinaryLinear(16, 8, weight_quantizer=_Ternary()))
    assert bnn.summary(signs, input_shape=(16,)).float_macs == n  # ±1 inputs, but 2-bit weights: no XNOR-popcount
    table = str(bnn.summary(nn.Sequential(bnn.BinaryLinear(16, 8, weight_quantizer=_Ternary()))))
    assert "quantized" in table.splitlines()[0] and "128" in table.splitlines()[2]


def test_the_optimizers_consolidate_the_same_hidden_weights_as_before():
    """summary reads the quantizer's precision; which weights are hidden weights (consolidated) does not: the built-in
    sign quantizers' and any user quantizer's, never "none"'s."""
    for quantizer, hidden in [("ste_sign", True), ("ste_sign_unclipped", True), (_Ternary(), True), (torch.tanh, True),
                              ("none", False)]:
        layer = bnn.BinaryLinear(4, 3, weight_quantizer=quantizer)
        assert is_hidden_weight(layer.weight) is hidden
        assert [w is layer.weight for w in hidden_weights(layer)] == ([True] if hidden else [])


@pytest.mark.parametrize("precision", [0, 2.0, "2", True])
def test_a_quantizer_precision_that_is_no_number_of_bits_is_refused_in_one_line(precision):
    with pytest.raises(ValueError, match=f"weight_quantizer .* has precision {precision!r}; a quantizer's precision is "
                                         "its bits per value, an integer >= 1"):
        bnn.BinaryLinear(4, 3, weight_quantizer=_Ternary(precision))


# --- bnn.use_population_statistics ----------------------------------------------------------------------------------


class _TwoHeads(nn.Module):
    """A task-incremental model: one body, a head per task, the current one used."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(bnn.BinaryLinear(16, 32), nn.BatchNorm1d(32), bnn.SignActivation())
        self.heads = nn.ModuleList([nn.Sequential(bnn.BinaryLinear(32, 2), nn.BatchNorm1d(2)) for _ in range(2)])
        self.task = 0

    def forward(self, x):
        return self.heads[self.task](self.body(x))


def test_population_statistics_skip_a_batchnorm_the_forward_pass_never_reaches_and_name_it():
    """It raised TypeError (None / int) from inside its arithmetic."""
    torch.manual_seed(0)
    model, x = _TwoHeads(), torch.rand(50, 16)
    with pytest.warns(UserWarning, match=r"never reached BatchNorm layer\(s\) 'heads.1.1' .*left as they were"):
        bnn.use_population_statistics(model, x)
    idle = model.heads[1][1]
    assert torch.equal(idle.running_mean, torch.zeros(2)) and torch.equal(idle.running_var, torch.ones(2))
    with torch.no_grad():
        a = model.heads[0][0](model.eval().body(x)).double()  # integers (sums of ±1 products): exact float64 sums
    fixed = model.heads[0][1]
    assert torch.equal(fixed.running_mean, a.mean(0).float())
    # the variance, from its two sums there and torch's two-pass formula here, both within a few float64 roundings
    # of the exact value: their float32 roundings are at most one float32 step (2^-23 relative) apart
    torch.testing.assert_close(fixed.running_var, a.var(0).float(), rtol=2**-23, atol=0)
    kept = fixed.running_mean.clone()
    model.task = 1
    with pytest.warns(UserWarning, match=r"'heads.0.1'"):
        bnn.use_population_statistics(model, x)
    assert torch.equal(fixed.running_mean, kept) and not torch.equal(idle.running_mean, torch.zeros(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model whose forward pass reaches every BatchNorm: no warning
        bnn.use_population_statistics(bnn.MLP([16, 8, 2]), x)


# --- device and dtype -----------------------------------------------------------------------------------------------

_LAYERS_WITH_FACTORY_ARGUMENTS = {
    "BinaryLinear": lambda **kw: bnn.BinaryLinear(6, 3, scale="channel", **kw),
    "BinaryConv2d": lambda **kw: bnn.BinaryConv2d(2, 3, 3, scale="layer", **kw),
    "BayesianLinear": lambda **kw: bnn.BayesianLinear(6, 3, **kw),
    "BayesianConv2d": lambda **kw: bnn.BayesianConv2d(2, 3, 3, **kw),
    "BinaryBayesianLinear": lambda **kw: bnn.BinaryBayesianLinear(6, 3, scale="channel", **kw),
    "BinaryBayesianConv2d": lambda **kw: bnn.BinaryBayesianConv2d(2, 3, 3, **kw),
}


@pytest.mark.parametrize("name", _LAYERS_WITH_FACTORY_ARGUMENTS)
def test_every_layer_takes_nn_linears_device_and_dtype(name):
    """The layers took no device or dtype: a float64 or meta-device model had to be built in float32 on the CPU and
    moved, unlike an nn.Linear."""
    layer = _LAYERS_WITH_FACTORY_ARGUMENTS[name](dtype=torch.float64)
    assert {p.dtype for p in layer.parameters()} == {torch.float64}
    x = torch.randn(4, 6, dtype=torch.float64) if "Linear" in name else torch.randn(4, 2, 5, 5, dtype=torch.float64)
    out = layer(x)
    out.sum().backward()
    assert out.dtype == torch.float64 and all(p.grad.dtype == torch.float64 for p in layer.parameters())
    if "Bayesian" not in name:
        assert {p.device.type for p in _LAYERS_WITH_FACTORY_ARGUMENTS[name](device="meta").parameters()} == {"meta"}
    else:  # (their synapses' state is drawn from the weight's values as they are built: one line, not "materialize")
        for meta in ({"device": "meta"}, None):
            with pytest.raises(ValueError, match=f"{name} draws its synapses' state .* cannot be built on the 'meta'"):
                with torch.device("meta") if meta is None else contextlib.nullcontext():
                    _LAYERS_WITH_FACTORY_ARGUMENTS[name](**(meta or {}))


@pytest.mark.parametrize("argument, value, named", [
    ("dtype", torch.int8, "dtype must be a floating-point torch.dtype"),
    ("dtype", "float64", "dtype must be a floating-point torch.dtype"),
    ("device", "gpu0", "device must name a torch device"),
    ("device", 2.5, "device must name a torch device"),
    *([] if torch.cuda.is_available() else [("device", "cuda:0", "device 'cuda:0': CUDA is not available")])])
@pytest.mark.parametrize("name", _LAYERS_WITH_FACTORY_ARGUMENTS)
def test_a_wrong_device_or_dtype_is_one_line_naming_it(name, argument, value, named):
    with pytest.raises(ValueError, match=named):
        _LAYERS_WITH_FACTORY_ARGUMENTS[name](**{argument: value})


def test_a_saved_or_copied_layer_leaves_its_gradient_buffer_behind(monkeypatch):
    """The weight-sized gradient buffer of a large layer went into torch.save(model), pickle and deepcopy: a
    1024x1024 layer saved to 8.4 MB after one training pass, twice its weight."""
    import copy
    import io

    from bnn import binary_linear

    # (a float32 weight gradient by oneDNN of one block takes no buffer: test_float32_products)
    monkeypatch.setattr(binary_linear, "float32_library", lambda device: "torch.mm")

    layer = bnn.BinaryLinear(1024, 1024)
    layer(torch.randn(4, 1024).sign()).sum().backward()
    assert layer._grad_buffer is not None
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    assert len(buffer.getvalue()) < 1.01 * 4 * layer.weight.numel()
    copied = copy.deepcopy(layer)
    assert copied._grad_buffer is None and layer._grad_buffer is not None
    copied.zero_grad(set_to_none=True)
    x = torch.randn(4, 1024).sign()
    copied(x).sum().backward()  # the copy trains, with a buffer of its own
    assert copied._grad_buffer is not None and copied._grad_buffer.data_ptr() != layer._grad_buffer.data_ptr()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_pack_refuses_a_model_of_another_precision_instead_of_predicting_otherwise(dtype):
    """A bfloat16 model packed without a word and then predicted 16 of 5,000 digits otherwise than itself: its
    BatchNorm rounds in bfloat16, the packed thresholds in float32. A float64 model whose BatchNorm mean lay within
    float32 rounding of an integer pre-activation predicted about a third of 2,000 inputs otherwise."""
    model = _fixed(bnn.MLP([64, 48, 32, 10]), 64).to(dtype)
    with pytest.raises(ValueError, match=f"pack takes a float32 model.*{str(dtype)}.*model.float"):
        bnn.pack(model)
    bnn.pack(model.float())  # as the message says


def test_a_nan_input_shows_as_nan_scores_instead_of_plausible_ones():
    """SignActivation read NaN as +1 (CPUs' sign(NaN) is 0): one NaN pixel, spread over the batch by BatchNorm's batch
    statistics, gave every sample of the batch finite scores (96 % accuracy fell to 11 % without a word)."""
    assert torch.isnan(bnn.SignActivation()(torch.tensor([float("nan"), 2.0, -0.0]))).tolist() == [True, False, False]
    torch.manual_seed(0)
    model = bnn.MLP([20, 16, 16, 3])
    x = torch.randn(8, 20)
    x[0, 4] = float("nan")
    scores = model(x)
    assert torch.isnan(scores).all()  # every sample: the batch statistics carry the NaN to all of them
    x[0, 4] = 0.0
    assert torch.isfinite(model(x)).all()


def test_the_eager_packed_model_bounds_its_first_layer_table_for_a_narrow_first_layer():
    """The eager path cut a batch into rows by its widest weight only, ignoring the first layer's (rows, groups, 256)
    float64 table: a 784-8-10 model took 21,399 rows a chunk, 4 GB of table (766 MB at batch 4,000)."""
    model = _fixed(bnn.MLP([784, 8, 10]), 784)
    packed = bnn.pack(model, compile=False)
    groups = packed.layers[0]["weight"].shape[0]
    assert packed._rows * 256 * groups <= 2**24  # 8-byte entries: at most 128 MB of table per chunk
    x = torch.rand(2 * packed._rows + 3, 784)
    assert torch.equal(packed(x), torch.cat([packed(x[i : i + 50]) for i in range(0, len(x), 50)]))


def test_population_statistics_that_overflow_the_layers_dtype_are_refused_and_change_nothing():
    """Finite inputs of about 1e30 gave a BatchNorm an infinite variance, silently (only ``pack`` refused it later);
    the layers fixed before the overflowing one keep the statistics they had."""
    torch.manual_seed(0)
    model = bnn.use_population_statistics(bnn.MLP([13, 8, 3]), torch.randn(64, 13))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^the statistics of BatchNorm layer '\d+' over x overflow torch.float32 "
                                         r"\(largest \|mean\| .*; torch.float32 holds up to 3.4e\+38\): scale x down"):
        bnn.use_population_statistics(model, torch.randn(64, 13) * 1e30)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
