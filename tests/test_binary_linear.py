"""The fast product of large binary layers: the fastest exact product, reused gradient memory."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import bnn
from bnn import binary_linear as fast
from bnn import float32_products, native
from bnn.product_timing import size_class
from bnn.sign_buffers import COMPILED_SIGNS_MIN_NUMEL
from metaspike.quantizers import binary_sign

IN, OUT = 2048, 512  # exactly FAST_MIN_NUMEL weights: the fast path applies
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.fixture
def layer():
    torch.manual_seed(0)
    assert IN * OUT >= fast.FAST_MIN_NUMEL
    return bnn.BinaryLinear(IN, OUT)


def near_signs(signs: torch.Tensor, flips: int) -> torch.Tensor:
    """±1 inputs equal to the rows of ``signs`` but ``flips`` entries: sums near ±fan-in, which bfloat16 cannot hold."""
    x = signs.clone()
    x[:, :flips] *= -1
    return torch.cat([x, -x, torch.randn_like(x).sign()])


@pytest.mark.parametrize("device", DEVICES)
def test_every_product_this_machine_can_run_equals_the_float32_product(device):
    torch.manual_seed(0)
    layer = bnn.BinaryLinear(IN, OUT).to(device)
    signs = layer.signs()
    x = near_signs(signs[:24], flips=3)  # 72 rows; sums up to 2042 in magnitude
    exact = x @ signs.T
    assert exact.abs().max() == IN - 6
    kinds = fast.product_kinds(device, x.shape[0], IN, OUT)
    assert kinds[-1] == "float32"
    for kind in kinds:
        signs_of_kind = layer.signs(fast._DTYPES[kind])
        assert torch.equal(fast.signs_product(x, signs_of_kind, kind), exact), kind


@pytest.mark.parametrize("kind", fast.PRODUCT_KINDS)
def test_a_layer_forced_to_each_product_gives_the_float32_product(layer, kind, monkeypatch):
    x = near_signs(layer.signs()[:8], flips=5)
    if kind not in fast.product_kinds("cpu", x.shape[0], IN, OUT):
        pytest.skip(f"{kind} is not exact for these sizes on this machine")
    monkeypatch.setattr(fast, "product_kind", lambda *shape: kind)
    assert fast.product_used(x, layer) == kind
    assert torch.equal(layer(x), x @ layer.signs().T)


def test_bfloat16_is_offered_only_where_it_is_exact():
    assert "bfloat16" in fast.product_kinds("cpu", 64, 256, 64)  # every sum fits bfloat16's 8 bits
    assert ("bfloat16" in fast.product_kinds("cpu", 64, 257, 64)) == fast._float32_out_of_bf16("cpu")


def test_a_fan_in_of_one_is_never_given_to_the_cpus_int8_product_and_stays_exact():
    """torch 2.13's CPU _int_mm returned unset memory for k = 1; every other exact product is right there."""
    assert "int8" not in fast.product_kinds("cpu", 3, 1, 1 << 18) and "int8" in fast.product_kinds("cpu", 3, 2, 64)
    layer = bnn.BinaryLinear(1, 1 << 18)
    x = torch.tensor([[1.0], [-1.0], [1.0]])
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(layer(x), x @ layer.signs().T)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_int8_on_cuda_only_for_the_shapes_torch_int_mm_accepts():
    assert "int8" in fast.product_kinds("cuda", 17, 64, 64)
    for m, k, n in [(16, 64, 64), (32, 60, 64), (32, 64, 60)]:
        assert "int8" not in fast.product_kinds("cuda", m, k, n)


def test_the_product_is_timed_once_per_shape_class(monkeypatch):
    calls = []
    monkeypatch.setattr(fast, "_choices", {})
    monkeypatch.setattr(fast, "_fastest", lambda *shape: calls.append(shape) or "float32")
    for m in (100, 120, 128, 300, 1000):  # classes 65-128, 65-128, 65-128, 257+, 257+
        assert fast.product_kind("cpu", m, 1024, 1024) == "float32"
    assert calls == [(torch.device("cpu"), 100, 1024, 1024), (torch.device("cpu"), 300, 1024, 1024)]


def test_the_rows_of_one_shape_class_have_the_same_candidate_products(monkeypatch):
    """A class's timed choice serves all its row counts: CUDA's int8 takes more than 16 rows, and 16 shared a class
    with 17-31, so a choice of int8 timed at 24 rows went to a 16-row batch, which torch._int_mm refuses."""
    monkeypatch.setattr(fast, "_float32_out_of_bf16", lambda device_type: True)  # (asks no GPU)
    for device in ("cpu", "cuda"):
        kinds: dict[int, set[tuple[str, ...]]] = {}
        for m in range(0, 600):
            kinds.setdefault(size_class(m), set()).add(tuple(fast.product_kinds(device, m, 1024, 1024)))
        assert all(len(found) == 1 for found in kinds.values()), (device, kinds)
    assert size_class(16) != size_class(17) and size_class(256) != size_class(257)


def test_the_timing_probe_picks_a_product_this_machine_can_run():
    assert fast._fastest(torch.device("cpu"), 32, 512, 256, rounds=1) in fast.product_kinds("cpu", 32, 512, 256)


@pytest.mark.parametrize("slowdown, timed", [(fast.EMULATED_SLOWDOWN * 2, False), (fast.EMULATED_SLOWDOWN / 2, True)])
def test_an_emulated_product_is_not_timed(slowdown, timed, monkeypatch):
    """Where torch emulates int8 and bfloat16 (AVX2 CPUs: 23x and 8x float32's time), each probe of a large layer's
    shape class ran them for seconds (the first step of 784-4096-4096-10 took 36 s), a candidate that never won."""
    monkeypatch.setattr(fast, "kind_slowdown", lambda device, kind: slowdown)
    monkeypatch.setattr(fast, "product_kinds", lambda device, m, k, n: ["int8", "bfloat16", "float32"])
    offered = []
    monkeypatch.setattr(fast, "best_times", lambda products, *args: offered.append(sorted(products))
                        or dict.fromkeys(products, 1.0))
    assert fast._fastest(torch.device("cpu"), 32, 512, 256) == ("int8" if timed else "float32")
    assert offered == ([["bfloat16", "float32", "int8"]] if timed else [])


def test_the_screen_times_each_exact_kind_this_machine_offers():
    cpu = torch.device("cpu")
    for kind in fast.product_kinds(cpu, 128, 512, 512):
        if kind not in ("popcount", "float32"):  # (popcount is never screened: it is our own kernel, not emulated)
            assert 0 < fast.kind_slowdown(cpu, kind) < float("inf")


@pytest.mark.parametrize("row, expected", [(None, True), (0, False), (5, False)])
def test_is_binary_input_reads_every_row_not_only_the_first(row, expected):
    x = torch.where(torch.rand(8, 6, generator=torch.Generator().manual_seed(0)) < 0.5, -1.0, 1.0)
    if row is not None:
        x[row, 3] = 0.5
    assert fast.is_binary_input(x) is expected
    assert fast.is_binary_input(x.t()) is expected  # (a transposed view: its first row is another slice)
    assert fast.is_binary_input(x[:0]) is True and fast.is_binary_input(torch.tensor(-1.0)) is True


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 0.0, 1.0000001, -0.9999999])
def test_is_binary_input_refuses_any_value_whose_magnitude_is_not_one(value):
    x = torch.ones(4, 300)
    x[2, 7] = value
    assert fast.is_binary_input(x) is False
    assert fast.is_binary_input(-torch.ones(4, 300, dtype=torch.bfloat16)) is True
    assert fast.is_binary_input(torch.tensor([-1, 1], dtype=torch.int8)) is True
    assert fast.is_binary_input(torch.tensor([-128, 1], dtype=torch.int8)) is False  # (abs(-128) overflows to -128)


def test_real_valued_input_keeps_the_float32_product(layer):
    x = torch.rand(16, IN)
    assert not fast.is_binary_input(x)
    torch.testing.assert_close(layer(x), x @ torch.where(layer.weight >= 0, 1.0, -1.0).T, rtol=0, atol=1e-4)


@pytest.mark.parametrize("library", float32_products.LIBRARIES)
@pytest.mark.parametrize("binary_input", [True, False])
@pytest.mark.parametrize("precision", fast.PRECISIONS)
def test_gradients_equal_those_of_f_linear(binary_input, precision, library, monkeypatch):
    if library not in float32_products.float32_libraries("cpu"):
        pytest.skip(f"this torch build has no {library} product")
    monkeypatch.setattr(fast, "float32_library", lambda *shape: library)
    torch.manual_seed(1)
    layer = bnn.BinaryLinear(IN, OUT, bias=True, precision=precision)
    x0 = torch.randn(32, IN)
    x0 = x0.sign() if binary_input else x0
    x = x0.clone().requires_grad_()
    grad_out = torch.randn(32, OUT)
    out = layer(x)
    out.backward(grad_out)
    ours = (layer.weight.grad.clone(), layer.bias.grad.clone(), x.grad.clone())
    layer.zero_grad()
    x_ref = x0.clone().requires_grad_()
    reference = F.linear(x_ref, layer.visible_weight(), layer.bias)
    reference.backward(grad_out)
    # both sides are float32 sums of n terms, possibly in another order (another library: torch.mm or oneDNN),
    # each within n·u·Σ|terms| of the exact sum (u = 2^-24); |signs| = 1; the bias is one more term
    u = 2.0**-24
    forward_bound = (IN + 1) * u * (x0.abs().sum(1, keepdim=True) + layer.bias.detach().abs())
    assert ((out - reference).abs() <= 2 * forward_bound).all()
    wants = (layer.weight.grad, layer.bias.grad, x_ref.grad)
    if precision == "float32":
        g = grad_out.abs()
        bounds = (32 * u * (g.T @ x0.abs()), 32 * u * g.sum(0), OUT * u * g.sum(1, keepdim=True).expand(32, IN))
        for got, want, bound in zip(ours, wants, bounds):
            assert ((got - want).abs() <= 2 * bound).all()
        return
    # bfloat16 keeps 8 significant bits of each factor: relative error up to 2**-8 per product, partly cancelling
    for got, want in zip(ours, wants):
        torch.testing.assert_close(got, want, rtol=2**-7, atol=2**-7 * grad_out.abs().max() * 32**0.5)


@pytest.mark.parametrize("slowdown", [20.0, 1.0])
def test_bfloat16_precision_warns_once_where_bfloat16_products_are_slower_than_float32(slowdown, monkeypatch):
    # CPUs without bfloat16 instructions emulate them (an AVX2 EPYC: 17x slower than float32), so the opt-in backfires
    monkeypatch.setattr(fast, "bfloat16_slowdown", lambda device: slowdown)
    fast._warn_if_bfloat16_is_slow.cache_clear()
    layer = bnn.BinaryLinear(IN, OUT, precision="bfloat16")
    x = torch.randn(8, IN).sign().requires_grad_()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                layer(x).sum().backward()
    finally:
        fast._warn_if_bfloat16_is_slow.cache_clear()
    ours = [w for w in caught if "precision='bfloat16'" in str(w.message)]
    assert all(w.filename == __file__ for w in ours)  # the caller's line, not one inside torch's Module.__call__
    messages = [str(w.message) for w in ours]
    assert messages == (["BinaryLinear(precision='bfloat16'): bfloat16 products take 20x as long as float32 ones "
                         "on this cpu (it has no bfloat16 instructions); precision='float32' is faster and more "
                         "precise here"]
                        if slowdown > fast.SLOW_BFLOAT16 else [])


def test_precision_names_its_accepted_values():
    with pytest.raises(ValueError, match="precision must be one of 'float32', 'bfloat16'"):
        bnn.BinaryLinear(4, 3, precision="bf16")
    layer = bnn.BinaryLinear(4, 3)
    with pytest.raises(ValueError, match="precision"):
        layer.precision = "half"
    assert layer.precision == "float32"


def test_the_weight_gradient_reuses_one_buffer_once_the_last_gradient_is_dropped(layer, monkeypatch):
    # (a float32 weight gradient by oneDNN of one block takes no buffer: test_float32_products)
    monkeypatch.setattr(fast, "float32_library", lambda device: "torch.mm")
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
    others = [layer.signs(dtype) for dtype in (torch.bfloat16, torch.int8)]
    signs = layer.signs()
    expected = torch.where(layer.weight >= 0, 1.0, -1.0)
    assert torch.equal(signs, expected) and all(torch.equal(other.float(), expected) for other in others)
    with torch.no_grad():
        layer.weight.neg_()  # a new version: every buffer is rewritten in place
    assert layer.signs() is signs
    assert torch.equal(signs, torch.where(layer.weight >= 0, 1.0, -1.0))
    assert all(torch.equal(other.float(), signs) for other in others)


@pytest.mark.usefixtures("working_compiler")  # (asserts compiled behaviour)
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


@pytest.mark.parametrize("precision", fast.PRECISIONS)
def test_a_training_step_writes_only_the_sign_buffers_it_uses_in_one_pass(precision, monkeypatch):
    from bnn import sign_buffers

    passes = []
    write, native_write = sign_buffers._compiled_signs_into, sign_buffers._native_int8_signs_into
    monkeypatch.setattr(sign_buffers, "_compiled_signs_into", lambda w, outs: passes.append(len(outs)) or write(w, outs))
    monkeypatch.setattr(sign_buffers, "_native_int8_signs_into",
                        lambda w, outs: native_write(w, outs) and not passes.append(len(outs)))
    torch.manual_seed(4)
    layer = bnn.BinaryLinear(IN, OUT, precision=precision)
    x = torch.randn(8, IN).sign().requires_grad_()
    layer(x).sum().backward()
    kind = fast.product_used(x, layer)
    forward = torch.int8 if kind == "popcount" else fast._DTYPES[kind]  # bits are packed from the int8 signs
    lookup = fast.backward_products_used(x, layer)["grad_input"] == "lookup"
    backward = torch.int8 if lookup else getattr(torch, precision)  # (the lookup codes are made from the int8 signs)
    assert passes == [len({forward, backward})]


@pytest.mark.parametrize("sizes", [[20, 16, 3], [1100, 1024, 3]])  # the plain and the fast (>= 2**20 weights) path
def test_a_layer_used_twice_before_one_backward_trains_as_nn_linear_does(sizes):
    """The sign buffers were rewritten in place while a graph still held them for its backward pass."""
    torch.manual_seed(0)
    model = bnn.MLP(sizes)
    x, y = torch.sign(torch.randn(8, sizes[0])), torch.randint(0, sizes[-1], (8,))
    loss = F.cross_entropy(model(x), y) + F.cross_entropy(model(-x), y)  # two forwards, one backward
    with torch.no_grad():
        model(x)  # a validation pass between a forward and its backward
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_model_first_run_under_inference_mode_still_trains():
    model = bnn.MLP([1100, 1024, 3])
    with torch.inference_mode():
        model.eval()(torch.rand(4, 1100))
    model.train()
    F.cross_entropy(model(torch.rand(4, 1100)), torch.tensor([0, 1, 2, 0])).backward()


def test_autocast_runs_the_plain_product():
    """Under autocast torch chooses the product's precision; the fast path's float32 gradient buffer crashed."""
    model = bnn.MLP([1100, 1024, 3])
    layer = next(m for m in model.modules() if isinstance(m, bnn.BinaryLinear) and m.weight.numel() >= 1 << 20)
    x = torch.sign(torch.randn(4, 1100))
    assert fast.product_used(x, layer) != "F.linear"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast.product_used(x, layer) == "F.linear"
        loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()


def test_inference_mode_then_training_inside_one_binarized_once_block():
    import metaspike

    model = bnn.MLP([1100, 1024, 3])
    with metaspike.binarized_once():
        with torch.inference_mode():
            model.eval()(torch.rand(4, 1100))
        model.train()
        F.cross_entropy(model(torch.rand(4, 1100)), torch.tensor([0, 1, 2, 0])).backward()


@pytest.mark.parametrize("kind", fast.PRODUCT_KINDS)
def test_second_derivatives_and_forward_mode_tangents_equal_the_straight_through_f_linear(layer, kind, monkeypatch):
    """A gradient penalty (create_graph=True) crashed in torch's out= product, or, with weight.grad held, gave a
    gradient cut off from the hidden weight; forward-mode AD had no tangent rule. Both now equal what F.linear with
    a straight-through ±1 weight gives, to float32 rounding: each side's sum of n terms is within n·u·Σ|terms| of
    the exact one (u = 2^-24), the bound the test computes from its data."""
    import torch.autograd.forward_ad as fwAD

    if kind not in fast.product_kinds("cpu", 4, IN, OUT):
        pytest.skip(f"no exact {kind} product here")
    monkeypatch.setattr(fast, "product_kind", lambda *shape: kind)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2, (4, IN), generator=g).float().mul(2).sub(1).requires_grad_()
    weight = torch.randn(4, OUT, generator=g)
    hidden = layer.weight.detach().clone().requires_grad_()

    def penalty_gradients(forward, weight_param):
        (grad_x,) = torch.autograd.grad((forward(x) * weight).sum(), x, create_graph=True)
        return torch.autograd.grad(grad_x.square().sum(), weight_param)[0]

    reference = penalty_gradients(lambda v: F.linear(v, hidden + (layer.signs() - hidden).detach()), hidden)
    assert fast.product_used(x.detach(), layer) != "F.linear"
    layer(x.detach()).sum().backward()  # weight.grad now holds the reused buffer
    u = 2.0**-24
    row_sums = weight.abs().sum(1, keepdim=True).expand(4, IN)  # Σ|terms| of each grad_x = weight @ signs entry
    # the penalty's gradient 2·weightᵀ @ grad_x: grad_x's own error (OUT terms) carried through, and its 4-term sum's
    bound = 2 * weight.abs().T @ (OUT * u * row_sums) + 2 * 4 * u * (weight.abs().T @ row_sums)
    difference = (penalty_gradients(layer, layer.weight) - reference).abs()
    assert (difference <= 2 * bound).all()  # (each side within the bound of the exact value)
    tangent = torch.randn(3, IN, generator=g)
    with fwAD.dual_level():
        out = fwAD.unpack_dual(layer(fwAD.make_dual(x.detach()[:3], tangent))).tangent
    tangent_bound = IN * u * tangent.abs().sum(1, keepdim=True)
    assert ((out - tangent @ layer.signs().T).abs() <= 2 * tangent_bound).all()


@pytest.mark.parametrize("library", float32_products.LIBRARIES)
def test_a_mid_sized_layer_takes_the_fast_product_only_where_onednn_computes_its_float32_products(library, monkeypatch):
    monkeypatch.setattr(fast, "float32_library", lambda *shape: library)
    mid = bnn.BinaryLinear(1024, fast.ONEDNN_FAST_MIN_NUMEL // 1024)
    below = bnn.BinaryLinear(1024, fast.ONEDNN_FAST_MIN_NUMEL // 1024 - 1)
    x = torch.randn(8, 1024)
    assert fast.product_used(x, mid) == (fast.real_product_kind("cpu") if library == "oneDNN" else "F.linear")
    assert fast.product_used(x, below) == "F.linear"


@pytest.mark.parametrize("library", float32_products.LIBRARIES)
def test_an_empty_batch_trains_a_large_layer_to_a_zero_gradient(layer, library, monkeypatch):
    if library not in float32_products.float32_libraries("cpu"):
        pytest.skip(f"this torch build has no {library} product")
    monkeypatch.setattr(fast, "float32_library", lambda *shape: library)
    x = torch.empty(0, IN).requires_grad_()
    assert fast.product_used(x.detach(), layer) in fast.PRODUCT_KINDS  # (the fast path, not F.linear)
    layer(x).sum().backward()
    assert torch.equal(layer.weight.grad, torch.zeros(OUT, IN)) and x.grad.shape == (0, IN)


def test_a_large_layer_used_twice_in_one_graph_gets_the_sum_of_both_uses_gradients():
    """The saved sign buffer was the buffer itself, which holds no extra reference to its memory: the second forward
    pass saw it free and rewrote it in place, and backward failed ("modified by an inplace operation")."""
    torch.manual_seed(0)
    layer = bnn.BinaryLinear(1024, 1024)
    assert layer.weight.numel() >= fast.FAST_MIN_NUMEL  # (the fast product, with its sign buffers)
    x1, x2 = torch.rand(8, 1024, requires_grad=True), torch.rand(8, 1024, requires_grad=True)
    (layer(x1) * layer(x2)).sum().backward()  # one graph, the layer twice
    together = layer.weight.grad.clone(), x1.grad.clone(), x2.grad.clone()
    layer.weight.grad = x1.grad = x2.grad = None
    y1, y2 = layer(x1), layer(x2)
    (y1 * y2.detach()).sum().backward()  # each use on its own: the same products, summed in the other order
    (y1.detach() * y2).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(together, (layer.weight.grad, x1.grad, x2.grad)))


@pytest.mark.parametrize("features", [16, 1024])  # (F.linear and the fast product: both read the sign buffers)
def test_a_weight_given_new_data_inside_binarized_once_shows_its_new_signs(features):
    """The buffers were keyed on the weight's version, which ``weight.data = ...`` (vector_to_parameters does so)
    keeps: the layer went on showing the old signs inside the block, and a weight of another shape broke it."""
    import metaspike

    def expected(x):  # sign(W_h) with sign(0) = +1, by F.linear (exact: ±1 weights, sums of at most 1024 terms)
        return F.linear(x, torch.where(layer.weight.detach() >= 0, 1.0, -1.0))

    torch.manual_seed(0)
    layer = bnn.BinaryLinear(features, 8)
    x = torch.randint(-1, 2, (3, features)).float()  # (integer entries: every product and sum exact in float32)
    with metaspike.binarized_once():
        assert torch.equal(layer(x), expected(x))
        layer.weight.data = -layer.weight.detach().clone()
        assert torch.equal(layer(x), expected(x))
        layer.weight.data = torch.randn(5, features)
        assert torch.equal(layer(x), expected(x))


def _native_build(flags: tuple[str, ...]):
    lib = native._kernels(native.FLAGS + flags)
    if lib is None:
        pytest.skip("no C compiler to build the native kernels")
    return lib


@pytest.mark.parametrize("flags", [(), ("-DPACKED_PORTABLE",)], ids=["default", "portable-c"])
def test_packed_signs_are_pack_bits_and_a_value_not_plus_or_minus_one_is_refused(flags, monkeypatch):
    """The packer reads 8 floats (32 int8 values) a vector and the rest one by one; each value must be exactly ±1 (a
    NaN, 0 or -0.0 would be counted as -1 or +1 where the float32 product gives NaN or 0)."""
    from bnn.packed import pack_bits

    lib = _native_build(flags)
    monkeypatch.setattr(native, "MIN_WORK_PER_THREAD", 1)  # several threads even for these sizes
    g = torch.Generator().manual_seed(0)
    for rows, n in [(1, 1), (3, 7), (130, 8), (5, 63), (67, 64), (2, 65), (129, 1000)]:
        x = torch.randint(0, 2, (rows, n), generator=g).float() * 2 - 1
        assert torch.equal(native.pack_signs(lib, x, threads=2), pack_bits(x > 0)), (rows, n)
        assert torch.equal(native.pack_signs(lib, x.to(torch.int8), threads=2), pack_bits(x > 0)), (rows, n)
        for bad in (0.0, -0.0, 0.5, 2.0, float("nan"), float("inf"), -float("inf")):
            for row, column in [(0, 0), (rows - 1, n - 1), (rows // 2, n // 2)]:
                y = x.clone()
                y[row, column] = bad
                assert native.pack_signs(lib, y, threads=2) is None, (rows, n, bad, row, column)
                if bad in (0.0, 2.0):  # (int8 holds no other of them; -128 too is neither +1 nor -1)
                    for value in (int(bad), -128):
                        y8 = x.to(torch.int8)
                        y8[row, column] = value
                        assert native.pack_signs(lib, y8, threads=2) is None, (rows, n, value, row, column)


@pytest.mark.parametrize("flags", [(), ("-DPACKED_PORTABLE",)], ids=["default", "portable-c"])
def test_native_int8_signs_are_binary_sign_at_every_size_and_thread_count(flags, monkeypatch):
    """The int8 sign pass of the sign buffers: 16 floats a vector compare with AVX-512, the rest one by one; 0, -0.0
    and NaN are +1 as binary_sign gives them on CPUs."""
    lib = _native_build(flags)
    monkeypatch.setattr(native, "MIN_WORK_PER_THREAD", 1)  # several threads even for these sizes
    special = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), -1e-45, 1e-45, -1e-30])
    g = torch.Generator().manual_seed(5)
    for n in [1, 8, 15, 16, 17, 64, 65, 1000, 4099]:
        w = torch.randn(n, generator=g)
        w[torch.randint(0, n, (min(n, 8),), generator=g)] = special[: min(n, 8)]
        expected = binary_sign(w).to(torch.int8)
        for threads in (1, 2, 3):
            out = torch.zeros(n, dtype=torch.int8)
            assert native.int8_signs(lib, w, out, threads=threads) is out and torch.equal(out, expected), (n, threads)
    weight = torch.randn(7, 9, generator=g)
    assert torch.equal(native.int8_signs(lib, weight.T, torch.empty(9, 7, dtype=torch.int8)),
                       binary_sign(weight.T).to(torch.int8))  # a transposed view is read in its own order
    with pytest.raises(ValueError, match="hidden weight: the output is .* expected a contiguous"):
        native.int8_signs(lib, weight, torch.empty(9, 7, dtype=torch.int8).T)
    with pytest.raises(ValueError, match="hidden weight: the output is list, expected a contiguous"):
        native.int8_signs(lib, weight, [0] * 63)
    with pytest.raises(ValueError, match="the output holds 62 entries, the weight 63"):
        native.int8_signs(lib, weight, torch.empty(62, dtype=torch.int8))
    with pytest.raises(ValueError, match="hidden weight weight is .* torch.float64"):
        native.int8_signs(lib, weight.double(), torch.empty(63, dtype=torch.int8))


@pytest.mark.parametrize("flags", [(), ("-DPACKED_PORTABLE",)], ids=["default", "portable-c"])
def test_the_popcount_product_equals_the_float32_product_at_every_size(flags):
    lib = _native_build(flags)
    g = torch.Generator().manual_seed(1)
    for batch, n, out in [(1, 1, 1), (5, 65, 3), (7, 1000, 130), (64, 2048, 64)]:
        x = torch.randint(0, 2, (batch, n), generator=g).float() * 2 - 1
        w = torch.randint(0, 2, (out, n), generator=g).float() * 2 - 1
        x[0] = w[0]  # a sum of +n, the largest
        assert torch.equal(native.popcount_product(lib, x, native.prepared_signs(lib, w)), x @ w.T), (batch, n, out)


def test_a_nan_hidden_weight_counts_as_binary_sign_says_under_the_popcount_product(layer, monkeypatch):
    if "popcount" not in fast.product_kinds("cpu", 8, IN, OUT):
        pytest.skip("no popcount product here")
    monkeypatch.setattr(fast, "product_kind", lambda *shape: "popcount")
    with torch.no_grad():
        layer.weight[3, 5] = float("nan")
    x = torch.randint(0, 2, (8, IN), generator=torch.Generator().manual_seed(2)).float() * 2 - 1
    reference = F.linear(x, binary_sign(layer.weight.detach()))  # (torch.sign(NaN) is 0 on CPUs: the sign +1)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            assert torch.equal(layer(x), reference)


def test_the_popcount_signs_are_packed_once_per_binarized_once_block(layer, monkeypatch):
    import metaspike

    if "popcount" not in fast.product_kinds("cpu", 8, IN, OUT):
        pytest.skip("no popcount product here")
    monkeypatch.setattr(fast, "product_kind", lambda *shape: "popcount")
    packs = []
    prepared_signs = native.prepared_signs
    monkeypatch.setattr(native, "prepared_signs", lambda *a, **k: packs.append(1) or prepared_signs(*a, **k))
    x = torch.ones(8, IN)
    expected = x @ layer.signs().T
    packs.clear()
    for _ in range(3):
        assert torch.equal(layer(x), expected)
    assert len(packs) == 3  # outside a block, every forward pass sees the weight as it is now
    packs.clear()
    with metaspike.binarized_once():
        outputs = [layer(x) for _ in range(3)]
    assert len(packs) == 1 and all(torch.equal(out, expected) for out in outputs)


@pytest.mark.parametrize("sizes", [(16, 8), (IN, OUT)], ids=["small", "fast-path"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_a_forward_mode_tangent_of_the_hidden_weight_passes_straight_through(sizes, requires_grad):
    """A dual hidden weight (functional_call, torch.func.jvp over parameters) lost its tangent on the fast path or
    failed inside torch (sign's out= form has no forward derivative); its tangent is now the straight-through one."""
    import torch.autograd.forward_ad as fwAD
    from torch.func import functional_call

    torch.manual_seed(0)
    layer = bnn.BinaryLinear(*sizes)
    x, tangent = torch.randn(4, sizes[0]), torch.randn(sizes[1], sizes[0])
    with fwAD.dual_level():
        weight = fwAD.make_dual(layer.weight.detach().clone().requires_grad_(requires_grad), tangent)
        out = fwAD.unpack_dual(functional_call(layer, {"weight": weight}, (x,)))
    assert torch.equal(out.primal, F.linear(x, layer.signs()))
    u = 2.0**-24  # each side's sum of n terms is within n·u·Σ|terms| of the exact one
    bound = sizes[0] * u * (x.abs() @ tangent.abs().T)
    assert ((out.tangent - x @ tangent.T).abs() <= 2 * bound).all()


@pytest.mark.parametrize("kind", ["popcount", "float32"])
def test_two_threads_running_one_layer_get_its_product(layer, kind, monkeypatch):
    """Two threads running one large layer read each other's half-written sign buffer (sign, +0.5, sign in place):
    the float32 product was wrong for a few calls in a thousand, the popcount product's packer refused the buffer and
    the next call failed on its missing bits. One thread at a time now checks, rewrites and hands out the buffers."""
    import threading

    if kind not in fast.product_kinds("cpu", 64, IN, OUT):
        pytest.skip(f"no {kind} product here")
    monkeypatch.setattr(fast, "product_kind", lambda *shape: kind)
    x = torch.randint(0, 2, (64, IN), generator=torch.Generator().manual_seed(3)).float() * 2 - 1
    expected = x @ binary_sign(layer.weight.detach()).T
    failures: list[object] = []

    def run() -> None:
        try:
            for _ in range(300):
                with torch.no_grad():
                    if not torch.equal(layer(x), expected):
                        failures.append("wrong")
        except Exception as err:  # (the test's own report: any error of a thread)
            failures.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_new_data_given_inside_a_block_is_seen_even_at_the_address_just_freed(layer):
    """Inside binarized_once the buffers are keyed by the weight's version and address; `weight.data = ...` keeps the
    version, and the new values could land at the address of the data just freed: the old signs were used (178 of
    200 outputs in a tester's run). The buffers now hold the memory they were written from while the key names it."""
    import metaspike

    x = torch.randint(0, 2, (8, IN), generator=torch.Generator().manual_seed(4)).float() * 2 - 1
    with metaspike.binarized_once():
        layer(x)
        for _ in range(20):
            layer.weight.data = torch.randn_like(layer.weight)  # (the old data freed: its address free for the new)
            assert torch.equal(layer(x), x @ binary_sign(layer.weight.detach()).T)


def test_a_sequence_input_takes_the_fast_product_row_by_row():
    """A (B, T, F) input went to F.linear (2.0-2.5x slower than its rows flattened); now each position is one row of
    the fast product: the output as F.linear's (±1 inputs: exact), gradients as the flattened rows'."""
    torch.manual_seed(0)
    layer = bnn.BinaryLinear(IN, OUT, bias=False)
    x = torch.randn(3, 5, IN).sign().requires_grad_()
    rows = x.detach().reshape(-1, IN).requires_grad_()
    assert fast.product_used(x, layer) == fast.product_used(rows, layer) != "F.linear"
    out = layer(x)
    assert out.shape == (3, 5, OUT) and torch.equal(out, F.linear(x, layer.visible_weight()))
    out.square().sum().backward()
    weight_grad = layer.weight.grad.clone()
    layer.weight.grad = None
    layer(rows).square().sum().backward()
    assert torch.equal(x.grad.reshape(-1, IN), rows.grad) and torch.equal(weight_grad, layer.weight.grad)
    with pytest.raises(ValueError, match=f"takes inputs with {IN} features in the last dimension"):
        layer(torch.ones(2, 3, IN + 1))


def test_int8_signs_are_written_without_a_float_pass_and_equal_binary_sign():
    """An eager pass with int8 buffers only (inference, or a layer training with lookups) wrote sign(W) into a fresh
    weight-sized float tensor first: 30 ms a call for a 784-4096-4096-10 bnn.MLP at batch 1 instead of 7-9."""
    from bnn.sign_buffers import SignBuffers

    w = torch.tensor([[-2.0, -0.0, 0.0, 3.0, float("nan"), float("inf"), -float("inf"), -1e-30]])
    signs = SignBuffers().signs(w, torch.int8)
    assert signs.tolist() == binary_sign(w).to(torch.int8).tolist() == [[-1, 1, 1, 1, 1, 1, -1, -1]]
    big = torch.randn(1100, 1024)  # (above COMPILED_SIGNS_MIN_NUMEL: the compiled pass, under inference_mode eager)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            assert torch.equal(SignBuffers().signs(big, torch.int8), binary_sign(big).to(torch.int8))


def test_a_sparse_input_takes_torchs_own_product_at_every_size():
    """A sparse input reached the ±1 check of a large layer, whose slicing failed inside torch (as_strided on
    SparseCPU), while a small layer and nn.Linear took it."""
    layer = bnn.BinaryLinear(1025, 1024)  # (2**20 weights and more: the fast products on every CPU)
    x = torch.rand(3, 1025).round() * 2 - 1
    assert fast.product_used(x.to_sparse(), layer) == "F.linear"
    assert torch.equal(layer(x.to_sparse()), layer(x))  # (±1 sums are exact on every path)
