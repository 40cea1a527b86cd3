"""Which layers binarize and bayesianize change, and that a call that fails changes nothing."""

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import metaspike
from metaspike import bayesianize, binarize
from metaspike.bayesian import (
    MESU,
    BiMU,
    bayesian_modules,
    bimu_parameters,
    make_bayesian,
    mesu_param_groups,
    plain_parameters,
    sampled_product,
)
from metaspike.layer_selection import select_layers, synapse_parametrization
from metaspike.synapse import binary_modules, weight_matrices


def _blocks() -> nn.Sequential:
    return nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)), nn.Linear(4, 2))


def _snapshot(model: nn.Module) -> tuple[list[str], list[torch.Tensor], int]:
    """Parameter names, their values and the number of forward hooks: what a failed call must leave alone."""
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    return [n for n, _ in model.named_parameters()], [p.detach().clone() for p in model.parameters()], hooks


def _unchanged(model: nn.Module, before: tuple[list[str], list[torch.Tensor], int]) -> bool:
    names, values, hooks = _snapshot(model)
    return names == before[0] and hooks == before[2] and all(torch.equal(a, b) for a, b in zip(values, before[1]))


@pytest.mark.parametrize("convert", [binarize, lambda m, **kw: bayesianize(m, "bimu", **kw),
                                     lambda m, **kw: bayesianize(m, "mesu", **kw)])
def test_excluding_a_block_excludes_its_layers_and_a_string_is_one_name(convert):
    net = convert(_blocks(), exclude="0")
    changed = [n for n, _, _ in binary_modules(net)] + [n for n, *_ in bayesian_modules(net)]
    assert changed == ["1"]
    net = convert(_blocks(), exclude="0.2", layer_types=nn.Linear)  # one class is accepted as well
    changed = [n for n, _, _ in binary_modules(net)] + [n for n, *_ in bayesian_modules(net)]
    assert changed == ["0.0", "1"]


@pytest.mark.parametrize("bad, message", [
    (dict(exclude=["7"]), "exclude names layers \\(or weight matrices\\) that do not exist"),
    (dict(exclude=[0]), "exclude must be a layer name or a sequence of names"),
    (dict(layer_types="Linear"), "layer_types must be an nn.Module class"),
    (dict(layer_types=[int]), "layer_types must be an nn.Module class"),
])
def test_bad_selections_name_the_argument(bad, message):
    with pytest.raises(ValueError, match=message):
        select_layers(_blocks(), **bad)


def test_a_lazy_layer_asks_for_a_forward_pass_first():
    net = nn.Sequential(nn.LazyLinear(3))
    for convert in (binarize, bayesianize):
        with pytest.raises(ValueError, match="lazy weight .* run one forward pass first"):
            convert(net)


@pytest.mark.parametrize("bad", [dict(temperature=0), dict(lambda_init=-1), dict(sigma_init=-1),
                                 dict(evaluation="mean"), dict(scale="kernel")])
def test_a_bayesianize_with_a_bad_setting_leaves_the_model_as_it_was(bad):
    net = _blocks()
    before = _snapshot(net)
    with pytest.raises(ValueError):
        bayesianize(net, "bimu", **bad)
    assert _unchanged(net, before)


def test_a_bayesianize_that_meets_a_binarized_layer_late_changes_nothing():
    net = binarize(_blocks(), exclude=["0"])  # only the last layer is binary
    before = _snapshot(net)
    # (named as binarize's synapse, with the way out; it said "already has a weight parametrization", as for torch's)
    with pytest.raises(ValueError, match=r"^layer '1' is already a binary synapse \(metaspike.binarize\); "
                                         r"bayesianize\(\.\.\., 'mesu'\) needs plain weights: leave it out with "
                                         r"exclude=\['1'\]$"):
        bayesianize(net, "mesu")
    assert _unchanged(net, before)


def test_a_bayesianize_that_meets_the_other_kind_names_it():
    net = bayesianize(_blocks(), "bimu", exclude=["1"])
    before = _snapshot(net)
    with pytest.raises(ValueError, match=r"layer '0.0' is already a 'bimu' synapse; bayesianize\(\.\.\., 'mesu'\) "
                                         r"needs plain weights: leave it out with exclude=\['0.0'\]"):
        bayesianize(net, "mesu")
    assert _unchanged(net, before)


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_binarize_refuses_bayesian_synapses(kind):
    net = bayesianize(_blocks(), kind)
    before = _snapshot(net)
    with pytest.raises(ValueError, match=f"layer '0.0' is already a '{kind}' synapse"):
        binarize(net)
    assert _unchanged(net, before)
    assert synapse_parametrization(net[1]).kind == kind


def test_a_second_bayesianize_is_a_no_op_only_with_the_same_settings():
    net = bayesianize(_blocks(), "bimu", temperature=0.5)
    before = _snapshot(net)
    bayesianize(net, "bimu", temperature=0.5)
    assert _unchanged(net, before)
    with pytest.raises(ValueError, match="layer '0.0' is already a 'bimu' synapse with temperature=0.5"):
        bayesianize(net, "bimu")
    with pytest.raises(ValueError, match="evaluation='mode'"):
        bayesianize(net, "bimu", temperature=0.5, evaluation="sample")
    with pytest.raises(ValueError, match="layer '0.0' is already a 'bimu' synapse with scale='channel'; bayesianize "
                                         "leaves such layers as they are"):
        bayesianize(net, "bimu", temperature=0.5, scale=None)
    assert _unchanged(net, before)
    mesu = bayesianize(_blocks(), "mesu", sigma_init=0.1)
    with pytest.warns(UserWarning, match=r"'0.0', '0.2', '1' already are 'mesu' synapses and keep their own values; "
                                         r"sigma_init=0.5 starts only the layers this call converts"):
        bayesianize(mesu, "mesu", sigma_init=0.5)


def test_a_second_binarize_with_another_gain_is_refused():
    net = binarize(_blocks())
    before = _snapshot(net)
    binarize(net)  # the same settings: nothing to do
    with pytest.raises(ValueError, match="layer '0.0' is a binary synapse already, with scale='channel'; binarize "
                                         "leaves such layers as they are, so scale=None would not apply"):
        binarize(net, scale=None)
    assert _unchanged(net, before)


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6, bias=False), nn.Linear(6, 6, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_tied_weights_share_one_synapse_listed_once():
    net = bayesianize(_Tied(), "mesu")
    assert synapse_parametrization(net.a) is synapse_parametrization(net.b)  # one σ for the one μ
    assert [p.shape for p in mesu_param_groups(net)[0]["params"]] == [(6, 6), (6, 6)]
    net = bayesianize(_Tied(), "bimu", scale=None)
    (lam,) = bimu_parameters(net)
    assert net.b.parametrizations.weight.original is lam


def test_the_bayesian_optimizers_refuse_a_tensor_listed_twice():
    lam = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="params lists a tensor more than once"):
        BiMU([lam, lam])


def test_sampled_product_checks_its_input_before_drawing():
    linear = bayesianize(nn.Sequential(nn.Linear(5, 3)), "mesu")[0]
    conv = bayesianize(nn.Sequential(nn.Conv2d(2, 4, 3)), "mesu")[0]
    wrong_features, wrong_channels = torch.zeros(7, 6), torch.zeros(3, 3, 6, 6)
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match=r"x must have shape \(B, in=5\)"):
        sampled_product(linear, wrong_features, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, C=2, H, W\)"):
        sampled_product(conv, wrong_channels, 4)
    with pytest.raises(ValueError, match="x must be a tensor, got list"):
        sampled_product(linear, [[0.0] * 5], 4)
    assert torch.equal(torch.get_rng_state(), state)  # no weight sample was drawn for a refused call


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_a_layer_without_inputs_gets_a_finite_gain():
    layer = bayesianize(nn.Sequential(nn.Linear(0, 3)), "bimu")[0]
    assert torch.isfinite(layer.output_gain.alpha).all()
    assert torch.equal(layer.eval()(torch.zeros(2, 0)), layer.bias.expand(2, 3))


def test_the_bayesian_optimizers_refuse_a_models_other_parameters():
    """`BiMU(model.parameters())`, the torch idiom, would run the BiMU rule on biases, gains and norm weights."""
    net = bayesianize(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2)), "bimu")
    with pytest.raises(ValueError, match=r"BiMU params: 6 of 8 tensors .* Pass bimu_parameters\(model\)"):
        BiMU(net.parameters())
    assert len(BiMU(bimu_parameters(net)).param_groups[0]["params"]) == 2
    gaussian = bayesianize(nn.Sequential(nn.Linear(4, 3, bias=False)), "mesu")
    mu, sigma = mesu_param_groups(gaussian)[0]["params"]
    with pytest.raises(ValueError, match="tensor 0 is a MESU width where a MESU mean belongs"):
        MESU([sigma, mu])
    with pytest.raises(ValueError, match="tensor 0 is a MESU mean where a BiMU latent weight belongs"):
        BiMU([mu])
    optimizer = BiMU(bimu_parameters(net))
    with pytest.raises(ValueError, match="is not a synapse tensor"):
        optimizer.add_param_group({"params": [net[1].weight]})
    BiMU([nn.Parameter(torch.zeros(3))])  # tensors made by hand carry no mark: taken as given
    copied = copy.deepcopy(net)  # torch copies a parameter's data only: the copy marks its tensors again
    with pytest.raises(ValueError, match="is not a synapse tensor"):
        BiMU(copied.parameters())
    gaussian_copy = copy.deepcopy(bayesianize(nn.Sequential(nn.Linear(4, 3)), "mesu"))  # (marks last as it lives)
    with pytest.raises(ValueError, match="tensor 0 is not a synapse tensor"):
        MESU(gaussian_copy.parameters())  # its bias first


@pytest.mark.parametrize("make", [lambda: nn.ConvTranspose2d(3, 6, 2), lambda: nn.Bilinear(5, 6, 3),
                                  lambda: nn.Embedding(20, 8)])
@pytest.mark.parametrize("kind", ["sign", "bimu"])
def test_a_gain_goes_only_where_the_output_channels_are_known(make, kind):
    """A per-channel gain takes the weight's first axis as the output channels, which holds for Linear and Conv
    only: elsewhere it scaled the wrong axis (or broke the forward pass), silently at call time."""
    layer = make()
    net = nn.Sequential(layer)
    call = (lambda **kw: binarize(net, layer_types=type(layer), **kw)) if kind == "sign" else (
        lambda **kw: bayesianize(net, "bimu", layer_types=type(layer), **kw))
    with pytest.raises(ValueError, match=f"layer '0' \\({type(layer).__name__}\\): a learned output gain fits"):
        call()
    assert synapse_parametrization(layer) is None  # refused before anything changed
    call(scale=None)  # the synapse alone fits any weight
    assert synapse_parametrization(layer).kind == kind


@pytest.mark.parametrize("scale", ["channel", "layer"])
def test_a_gain_on_gaussian_synapses_starts_at_one(scale):
    """MESU's μ keeps the float weight, so a gain started at mean |W| (as for ±1 weights) shrank a pretrained layer's
    output 5-8 times, without a word."""
    torch.manual_seed(0)
    float_layer = nn.Linear(8, 6)
    x = torch.randn(5, 8)
    layer = make_bayesian(copy.deepcopy(float_layer), "mesu", scale=scale).eval()  # (evaluation: μ)
    assert torch.equal(layer.output_gain.alpha, torch.ones_like(layer.output_gain.alpha))
    torch.testing.assert_close(layer(x), float_layer(x))
    binary = make_bayesian(copy.deepcopy(float_layer), "bimu", scale=scale)  # (±1 weights: the float weight's size)
    size = float_layer.weight.detach().abs()
    expected = size.mean(1) if scale == "channel" else size.mean()
    torch.testing.assert_close(binary.output_gain.alpha.detach().flatten(), expected.flatten())


def test_synapses_are_refused_on_unmaterialized_weights_and_non_models():
    with pytest.raises(ValueError, match="layer '0' has its weight on the 'meta' device: materialize"):
        binarize(nn.Sequential(nn.Linear(3, 2, device="meta")))
    with pytest.raises(ValueError, match="weight on the 'meta' device"):
        bayesianize(nn.Sequential(nn.Linear(3, 2, device="meta")), "mesu")
    with pytest.raises(ValueError, match="expected a torch nn.Module to put synapses on, got str"):
        binarize("model")
    with pytest.raises(ValueError, match="exclude must be a layer name or a sequence of names, got 3"):
        bayesianize(nn.Sequential(nn.Linear(3, 2)), exclude=3)


@pytest.mark.parametrize("kind", ["sign", "bimu", "mesu"])
def test_synapses_are_refused_on_complex_weights_before_anything_changes(kind):
    # (a sign, a Gaussian width or a probability of a complex weight means nothing: torch's sign refused it only at
    # the first forward pass, and MESU took a complex width)
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="layer '1' has torch.complex64 weights: a synapse needs real floating-point"):
        binarize(net) if kind == "sign" else bayesianize(net, kind)
    assert not any(torch.nn.utils.parametrize.is_parametrized(layer) for layer in net)


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_bayesian_synapses_are_refused_on_layers_with_sparse_gradients(kind):
    net = nn.Sequential(nn.Embedding(10, 4, sparse=True))
    with pytest.raises(ValueError, match=r"layer '0' \(Embedding\) makes sparse gradients; Bayesian synapses need "
                                         "dense ones: make it with sparse=False"):
        bayesianize(net, kind, layer_types=nn.Embedding, scale=None)
    dense = bayesianize(nn.Sequential(nn.Embedding(10, 4)), kind, layer_types=nn.Embedding, scale=None)
    dense(torch.tensor([1, 3])).sum().backward()  # (dense gradients reach the synapse's tensors)
    assert all(t.grad is not None and t.grad.layout == torch.strided for _, _, _, ts in bayesian_modules(dense)
               for t in ts)


@pytest.mark.parametrize("kind", ["sign", "bimu", "mesu"])
def test_tied_weights_are_one_weight_matrix_for_the_baselines(kind):
    net = _Tied()
    net = binarize(net) if kind == "sign" else bayesianize(net, kind)
    assert [name for name, _ in weight_matrices(net)] == ["a"]


@pytest.mark.parametrize("kind", ["sign", "bimu", "mesu"])
def test_a_float_model_lists_a_tied_weight_where_first_used_as_its_synapses_do(kind):
    """The float model listed a tied weight where it was last used (layers 2, 0, 5 here), its synapses where first
    used (0, 2, 5): per-layer settings given in that order then went to other layers once the model was converted."""
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    net[4].weight = net[0].weight  # tied: two layers, one weight
    before = [name for name, _ in weight_matrices(net)]
    converted = binarize(net) if kind == "sign" else bayesianize(net, kind)
    assert before == [name for name, _ in weight_matrices(converted)] == ["0", "2", "5"]


@pytest.mark.parametrize("kind", ["sign", "bimu", "mesu"])
def test_weight_matrices_left_float_by_a_layer_kind_without_synapses_are_named(kind):
    """An LSTM's matrices (or a Norse recurrent cell's) would train as float weights and never be consolidated."""
    def call(net, **kw):
        return binarize(net, **kw) if kind == "sign" else bayesianize(net, kind, **kw)

    with pytest.warns(UserWarning, match=r"left 2 weight matrices float.*\(0.weight_ih_l0, 0.weight_hh_l0\)"):
        call(nn.Sequential(nn.LSTM(3, 4), nn.Linear(4, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call(nn.Sequential(nn.LSTM(3, 4), nn.Linear(4, 2)), exclude="0")  # left out on purpose
        call(nn.Sequential(nn.Conv1d(2, 2, 1), nn.Flatten(), nn.Linear(4, 2)), layer_types=nn.Linear)
        call(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2)))
        # elementwise parameters of several dimensions are no weight matrices: a LayerNorm over [C, H, W], a
        # per-channel neuron parameter of shape (C, 1, 1) (both were named, and their exclusion advised)
        call(nn.Sequential(nn.Conv2d(1, 8, 3), nn.LayerNorm([8, 6, 6])))
        call(nn.Sequential(nn.Conv2d(1, 8, 3), _PerChannelScale(8)))
        # a second call for other layer types: the first call's synapses hold their hidden weights in their
        # parametrizations (named "left float": 0.parametrizations.weight.original)
        net = call(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(36, 3)), layer_types=nn.Conv2d)
        call(net, layer_types=nn.Linear)


class _PerChannelScale(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.full((channels, 1, 1), 0.9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.beta


@pytest.mark.parametrize("kind", ["sign", "bimu", "mesu"])
@pytest.mark.parametrize("scale", ["channel", None])
def test_a_named_layer_type_without_a_weight_parameter_is_refused(kind, scale):
    """Naming nn.LSTM (or a Norse LIFRecurrentCell) in layer_types converted nothing of it, with a warning that
    advised excluding it: a synapse is made of a layer's `weight` parameter, which such a layer does not have."""
    def call(net, **kw):
        return binarize(net, scale=scale, **kw) if kind == "sign" else bayesianize(net, kind, scale=scale, **kw)

    net = nn.Sequential(nn.LSTM(3, 4), nn.Linear(4, 2))
    before = _snapshot(net)
    with pytest.raises(ValueError, match=r"^layer_types names LSTM, but no LSTM layer has a 'weight' parameter "
                                         r"\(layer '0': its weight matrices are weight_ih_l0, weight_hh_l0\); "
                                         r"synapses are made of a layer's 'weight' parameter only"):
        call(net, layer_types=(nn.Linear, nn.LSTM))
    assert _unchanged(net, before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # excluded: no layer of the class is asked for
        call(nn.Sequential(nn.LSTM(3, 4), nn.Linear(4, 2)), layer_types=(nn.Linear, nn.LSTM), exclude="0")


class _MaybeWeighted(nn.Module):
    """A layer whose matrix is its `weight` parameter or, built with ``weighted=False``, another one."""

    def __init__(self, weighted: bool):
        super().__init__()
        setattr(self, "weight" if weighted else "matrix", nn.Parameter(torch.randn(2, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ getattr(self, "weight", getattr(self, "matrix", None)).T


@pytest.mark.parametrize("kind", ["sign", "bimu", "mesu"])
def test_a_named_layer_left_float_is_not_told_to_be_excluded(kind):
    """Layers of a named class that lack the `weight` parameter others of it have are named apart, without the
    advice to exclude them (the opposite of what the caller asked)."""
    net = nn.Sequential(_MaybeWeighted(True), _MaybeWeighted(False), nn.LSTM(2, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        binarize(net, _MaybeWeighted, scale=None) if kind == "sign" else bayesianize(
            net, kind, layer_types=_MaybeWeighted, scale=None)
    messages = [str(w.message) for w in caught if w.category is UserWarning]
    what = "binarize" if kind == "sign" else "bayesianize"
    assert messages[0] == (f"{what} left 1 weight matrices float in layers of a type named in layer_types (1.matrix): "
                           "their layers have no 'weight' parameter, and synapses are made of a layer's 'weight' "
                           "parameter only; they train as float weights and are not consolidated")
    assert messages[1].startswith(f"{what} left 2 weight matrices float, in layers it does not make synapses of "
                                  "(2.weight_ih_l0, 2.weight_hh_l0)") and "exclude" in messages[1]
    assert len(messages) == 2 and synapse_parametrization(net[0]) is not None


@pytest.mark.parametrize("kind", ["sign", "bimu", "mesu"])
def test_attention_layers_stay_float_because_attention_bypasses_their_forward_pass(kind):
    """nn.MultiheadAttention multiplies by out_proj.weight itself: a gain on out_proj would never act."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True))
    with pytest.warns(UserWarning, match=r"\(0.self_attn.in_proj_weight, 0.self_attn.out_proj.weight\)"):
        net = binarize(net) if kind == "sign" else bayesianize(net, kind)
    layer = net[0]
    assert synapse_parametrization(layer.self_attn.out_proj) is None
    assert synapse_parametrization(layer.linear1) is not None and synapse_parametrization(layer.linear2) is not None
    net.eval()
    with torch.no_grad():
        assert torch.isfinite(net(torch.randn(2, 5, 8))).all()


def _convert(kind: str, model: nn.Module, **kwargs) -> nn.Module:
    return binarize(model, **kwargs) if kind == "sign" else bayesianize(model, kind, **kwargs)


@pytest.mark.parametrize("kind", ["sign", "bimu", "mesu"])
def test_excluding_one_of_two_tied_layers_is_refused_before_anything_changes(kind):
    """The excluded layer kept reading the other layer's hidden weight (or MESU's mu) and the optimizers consolidated
    it, without a word; naming a tied embedding in exclude also silenced the tie warning."""
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 4, bias=False), nn.Linear(4, 2))
    net[2].weight = net[0].weight
    before = _snapshot(net)
    with pytest.raises(ValueError, match="^exclude names '0', whose weight is also the weight of layer '2', which "
                                         "becomes a synapse"):
        _convert(kind, net, exclude=["0"])
    assert _unchanged(net, before)
    _convert(kind, net, exclude=["0", "2"])  # both excluded: nothing tied to a synapse
    assert synapse_parametrization(net[0]) is None and synapse_parametrization(net[2]) is None


@pytest.mark.parametrize("kind", ["sign", "bimu", "mesu"])
@pytest.mark.parametrize("layer", [lambda: nn.Embedding(5, 4, padding_idx=0),
                                   lambda: nn.EmbeddingBag(5, 4, padding_idx=1)], ids=["Embedding", "EmbeddingBag"])
def test_an_embedding_with_a_padding_row_is_refused(kind, layer):
    """torch keeps the padding row at zero; as a synapse it was +1 forever (sign), a random ±1 row (BiMU) or noise
    (MESU), so sums over padded sequences depended on the padding."""
    net = nn.Sequential(layer())
    before = _snapshot(net)
    with pytest.raises(ValueError, match=r"^layer '0' \(Embedding(Bag)?\) has padding_idx=\d, whose row torch keeps"):
        _convert(kind, net, layer_types=(nn.Embedding, nn.EmbeddingBag), scale=None)
    assert _unchanged(net, before)


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_a_bayesian_embedding_with_max_norm_is_refused(kind):
    """F.embedding renormalises the weight's rows in place: on a sample the first training pass failed in autograd."""
    net = nn.Sequential(nn.Embedding(6, 4, max_norm=1.0))
    with pytest.raises(ValueError, match=r"^layer '0' \(Embedding\) has max_norm=1.0"):
        bayesianize(net, kind, layer_types=nn.Embedding, scale=None)


def test_a_pruned_layer_is_told_to_remove_the_pruning():
    net = nn.Sequential(nn.Linear(4, 4))
    prune.l1_unstructured(net[0], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"remove the hook first \(.*prune.remove\) or leave the layer float"):
        binarize(net)


@pytest.mark.parametrize("kind", ["sign", "bimu", "mesu"])
def test_a_module_tied_to_a_synapse_layer_is_named(kind):
    """An embedding tied to the output layer (language models) reads the synapse's float state, not its weight."""
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(10, 6)
            self.out = nn.Linear(6, 10, bias=False)
            self.out.weight = self.embedding.weight

        def forward(self, tokens):
            return self.out(self.embedding(tokens))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        binarize(Tied()) if kind == "sign" else bayesianize(Tied(), kind)
    assert [str(w.message).split(": ")[0] for w in caught] == [
        f"{'binarize' if kind == 'sign' else 'bayesianize'} made synapses of weight tensors that other modules use too "
        "(embedding.weight)"]


def test_a_deep_copy_keeps_its_synapse_roles():
    """torch copies a parameter's data only; the Bayesian parametrizations mark the copies again."""
    from metaspike.bayesian import synapse_role

    net = copy.deepcopy(bayesianize(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2)), "bimu"))
    assert [synapse_role(p) for p in net.parameters()].count("latent") == 2
    with pytest.raises(ValueError, match="BiMU params: 6 of 8 tensors"):
        BiMU(net.parameters())


def test_other_parameters_in_an_earlier_group_are_refused_too():
    from metaspike.bayesian import plain_parameters

    net = bayesianize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), "bimu")
    with pytest.raises(ValueError, match="is not a synapse tensor"):
        BiMU([{"params": plain_parameters(net)}, {"params": bimu_parameters(net)}])


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_metaplastic_adam_and_param_groups_refuse_bayesian_synapses(kind):
    """Adam would train λ, μ and σ as plain weights (σ may turn negative; BiMU stays at chance), silently."""
    import bnn
    from metaspike import MetaplasticAdam, param_groups

    net = bayesianize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), kind)
    with pytest.raises(ValueError, match=r"param_groups, MetaplasticAdam and bnn.fit train binary synapses only"):
        param_groups(net, 5.0)
    role = "latent" if kind == "bimu" else "mean and width"
    with pytest.raises(ValueError, match=rf"MetaplasticAdam got the {role} tensors of Bayesian synapses"):
        MetaplasticAdam(net.parameters(), lr=0.01)
    with pytest.raises(ValueError, match=r"train binary synapses only"):
        bnn.fit(net, (torch.randn(8, 4), torch.randint(0, 3, (8,))), epochs=1, progress=False)
    MetaplasticAdam(plain_parameters(net), lr=0.01)  # the biases and gains alone are fine
    with pytest.raises(ValueError, match=rf"metaplastic\(SGD\) got the {role} tensors of Bayesian synapses"):
        metaspike.metaplastic(torch.optim.SGD(net.parameters(), lr=0.01), meta=0.0)
    hooked = metaspike.metaplastic(torch.optim.SGD(plain_parameters(net), lr=0.01))
    with pytest.raises(ValueError, match=rf"a metaplastic optimizer got the {role} tensors of Bayesian synapses"):
        hooked.add_param_group({"params": bimu_parameters(net) if kind == "bimu" else mesu_param_groups(net)[0]["params"]})


@pytest.mark.parametrize("kind", ["bimu", "mesu"])
def test_an_optimizer_built_before_bayesianize_refuses_to_step_the_synapses_it_made(kind):
    """bayesianize turns the weights an optimizer already holds into λ or μ: MetaplasticAdam stepped them as plain
    consolidated weights (MESU's σ in no optimizer), without a word."""
    from metaspike import MetaplasticAdam, param_groups

    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    adam = MetaplasticAdam(param_groups(net, 5.0), lr=0.01)
    hooked = metaspike.metaplastic(torch.optim.SGD(net.parameters(), lr=0.01), meta=1.0)
    bayesianize(net, kind)
    out = net(torch.randn(2, 4))
    (out if out.dim() == 2 else out.mean(0)).sum().backward()
    before = [p.detach().clone() for p in net.parameters()]
    role = "latent" if kind == "bimu" else "mean"
    for optimizer, owner in ((adam, "MetaplasticAdam"), (hooked, r"metaplastic\(SGD\)")):
        with pytest.raises(ValueError, match=rf"^{owner} holds the {role} tensors of Bayesian synapses \(bayesianize "
                                             r"made them after the optimizer was built\); train them with"):
            optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # (refused before anything moved)
    with pytest.raises(TypeError, match=r"^MetaplasticAdam takes the model's parameters or param groups, not the model"):
        MetaplasticAdam(net)


@pytest.mark.parametrize("kind, role", [("bimu", "BiMU latent weight"), ("mesu", "MESU mean")])
@pytest.mark.parametrize("make", [lambda p: torch.optim.Adam(p, lr=0.01), lambda p: torch.optim.SGD(p, lr=0.1)])
def test_a_torch_optimizer_built_before_bayesianize_warns_that_it_trains_the_synapses_as_plain_weights(kind, role,
                                                                                                     make):
    """A torch optimizer built before bayesianize went on training λ or μ as plain weights without a word (Adam on a
    BiMU network: digits' first task at 35 %, then 26 %; on MESU a noisy float network whose σ never trained). Its
    first step warns, once; one over the other parameters says nothing."""
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    early = make(net.parameters())
    bayesianize(net, kind, scale=None)
    plain = make(plain_parameters(net))
    out = net(torch.randn(2, 4))
    (out if out.dim() == 2 else out.mean(0)).sum().backward()
    with pytest.warns(UserWarning, match=rf"^{type(early).__name__} holds the {role} tensors of Bayesian synapses "
                                         r"\(given model.parameters\(\) of a Bayesian model, or built before "
                                         r"bayesianize made them of the weights it held\) and trains them as plain "
                                         r"weights; train them with"):
        early.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        early.step()  # (said once)
        plain.step()
    bayesianize(nn.Sequential(nn.Linear(2, 2)), kind)  # (synapses made again: said again at the next step)
    with pytest.warns(UserWarning, match="trains them as plain weights"):
        early.step()

    class Unhashable(torch.optim.SGD):  # (__eq__ without __hash__: a dictionary of optimizers failed at every step)
        def __eq__(self, other):
            return self is other

    Unhashable(plain_parameters(net), lr=0.1).step()

    class Sealed(torch.optim.SGD):  # (refuses new attributes once built: the check's mark failed its step)
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.sealed = True

        def __setattr__(self, name, value):
            if self.__dict__.get("sealed") and name not in self.__dict__:
                raise AttributeError(name)
            super().__setattr__(name, value)

    Sealed(plain_parameters(net), lr=0.1).step()


@pytest.mark.parametrize("kind", ["sign", "bimu"])
def test_a_zero_initialised_layer_gets_a_gain_that_passes_gradients(kind):
    """A gain started at mean |W| = 0 would pass no gradient to the synapses."""
    layer = nn.Linear(16, 3)
    nn.init.zeros_(layer.weight)
    net = binarize(nn.Sequential(layer)) if kind == "sign" else bayesianize(nn.Sequential(layer), kind)
    assert torch.allclose(net[0].output_gain.alpha, torch.full((3,), 0.5 / 16 ** 0.5))
    net(torch.randn(4, 16)).square().sum().backward()
    hidden = [p for name, p in net.named_parameters() if name.endswith("original")]
    assert hidden and all(p.grad is not None and p.grad.abs().max() > 0 for p in hidden)


@pytest.mark.parametrize("wrap", [torch.nn.utils.weight_norm, torch.nn.utils.spectral_norm])
@pytest.mark.parametrize("convert", [binarize, bayesianize])
def test_a_layer_whose_weight_a_hook_computes_is_named_not_skipped(wrap, convert):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the hook-based wrappers
        model = nn.Sequential(wrap(nn.Linear(4, 4)), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"layer '0' \(Linear\) has a weight that is no parameter .* remove the hook "
                                         r"first \(torch.nn.utils.remove_weight_norm, remove_spectral_norm, "
                                         r"prune.remove\) or leave the layer float \(exclude=\['0'\]\)"):
        convert(model)
    assert synapse_parametrization(model[2]) is None  # nothing changed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert(model, exclude="0")
    assert synapse_parametrization(model[2]) is not None and synapse_parametrization(model[0]) is None
    assert [name for name, _ in select_layers(nn.Sequential(model[0]))] == []  # elsewhere such a layer is left out


def test_models_moved_to_meta_infer_shapes_and_leave_the_compiled_paths_in_use(working_compiler):
    """Shape inference on ``meta`` (FLOP counters, model summaries): a wide bnn model ran into torch's autocast query
    (no meta autocast), and a Bayesian one compiled its sampling loop for meta, failed, and left it eager for good."""
    import copy

    import bnn
    from metaspike.bayesian.synapses import _compiled_gaussian_sample

    x = torch.rand(5, 784)
    wide = bnn.MLP([784, 1024, 10])  # (large enough for the compiled sign pass and the fast products)
    assert wide.to("meta")(x.to("meta")).shape == (5, 10)
    model = bayesianize(nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)), "mesu")
    copy.deepcopy(model).to("meta")(x.to("meta")).sum().backward()
    assert not _compiled_gaussian_sample.broken
    assert model(x).shape == (5, 10)


def test_a_matrix_held_directly_is_silenced_by_its_own_name_and_a_layers_weight_is_refused():
    """The warning's advice (exclude) accepted module names only: a matrix held by a module with layers of its own
    could be silenced only by leaving those layers float too."""
    import warnings

    import metaspike

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.W1 = nn.Parameter(torch.randn(6, 5))
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            return self.fc(x @ self.W1)

    net = nn.Sequential(Block())
    with pytest.warns(UserWarning, match=r"left 1 weight matrices float, .*\(0.W1\).* name them \(or a layer that "
                                         r"holds them, such as an LSTM\)"):
        metaspike.binarize(net, scale=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binary = metaspike.binarize(nn.Sequential(Block()), scale=None, exclude=["0.W1"])
    assert torch.nn.utils.parametrize.is_parametrized(binary[0].fc)  # the block's own layer is still a synapse
    with pytest.raises(ValueError, match=r"^exclude names the weight '0.fc.weight': name its layer '0.fc' to leave "
                                         r"it float$"):
        metaspike.binarize(nn.Sequential(Block()), scale=None, exclude=["0.fc.weight"])


class _Aliased(nn.Module):
    """A layer registered under two names: ``head`` and ``blocks.1``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(3, 4)
        self.head = nn.Linear(8, 2)
        self.blocks = nn.ModuleList([nn.Linear(4, 8), self.head])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


@pytest.mark.parametrize("kind", ["sign", "bimu"])
@pytest.mark.parametrize("exclude", ["blocks", "blocks.1", "head"])
def test_a_layer_registered_twice_is_excluded_by_either_name(kind, exclude):
    """named_modules gives a module once, under its first name: exclude='blocks' left the aliased head a synapse, and
    exclude='blocks.1' (its other name) was refused as a layer that does not exist."""
    net = _Aliased()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (and no "left float" warning for what was excluded on purpose)
        net = binarize(net, exclude=exclude) if kind == "sign" else bayesianize(net, kind, exclude=exclude)
    expected = ["stem"] if exclude == "blocks" else ["stem", "blocks.0"]
    assert [name for name, _ in weight_matrices(net)] == expected
