"""The lookup product of the backward pass (``bnn.native.signed_sums``): a real matrix times a ±1 one by tables of
signed subset sums, and a binary layer's gradients through it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnn
from bnn import binary_linear as fast
from bnn import native
from bnn.sign_buffers import SIGN_CODES

BUILDS = [(), ("-DPACKED_PORTABLE",)]  # this CPU's best path (AVX-512 where it has it), plain C
BUILD_NAMES = ["default", "portable-c"]
U = 2.0**-24  # float32's unit roundoff


def _build(flags: tuple[str, ...]):
    lib = native._kernels(native.FLAGS + flags)
    if lib is None:
        pytest.skip("no C compiler to build the native kernels")
    return lib


def numpy_codes(signs: np.ndarray) -> np.ndarray:
    """Bit i of entry (q, j): row 5q + i of column j is +1 (rows past the end: 0)."""
    k, n = signs.shape
    padded = np.zeros((-(-k // 5) * 5, n), dtype=np.uint8)
    padded[:k] = signs > 0
    return (padded.reshape(-1, 5, n) << np.arange(5, dtype=np.uint8)[None, :, None]).sum(1).astype(np.uint8)


def numpy_signed_sums(a: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """The float32 sums in the kernels' order: per group of 5, (((±a0 ± a1) ± a2) ± a3) ± a4, then the groups in
    turn."""
    m, k = a.shape
    out = np.zeros((m, signs.shape[1]), dtype=np.float32)
    for q in range(0, k, 5):
        group = np.zeros((m, signs.shape[1]), dtype=np.float32)
        for i in range(q, min(q + 5, k)):
            group = (group + a[:, i:i + 1] * signs[i][None, :]).astype(np.float32)
        out = (out + group).astype(np.float32)
    return out


def error_bound(a: torch.Tensor, k: int) -> torch.Tensor:
    """Per row: each term passes at most 4 table additions and ceil(k/5) - 1 accumulating ones, so the float32 result
    is within gamma(ceil(k/5) + 4) * sum|a| of the exact sum (gamma(n) = n u / (1 - n u)); float64 adds less than
    its own k u64 * sum|a|, covered by doubling."""
    n = -(-k // 5) + 4
    return 2 * (n * U / (1 - n * U)) * a.double().abs().sum(1, keepdim=True)


BLOCKED = ("-DSIGNED_TABLE_BYTES=4096",)  # tables for 32 (row, group) pairs at a time: blocks of rows and of groups


@pytest.mark.parametrize("flags", [*BUILDS, BLOCKED, BUILDS[1] + BLOCKED], ids=[*BUILD_NAMES, "blocked", "blocked-c"])
def test_codes_and_sums_equal_a_few_lines_of_numpy_in_the_same_order(flags, monkeypatch):
    lib = _build(flags)
    monkeypatch.setattr(native, "MIN_WORK_PER_THREAD", 1)  # several threads even at these sizes
    rng = np.random.default_rng(0)
    for m, k, n in [(1, 1, 1), (3, 5, 17), (5, 8, 64), (9, 37, 130), (4, 130, 16), (17, 301, 999), (6, 10, 80),
                    (300, 7, 33), (2, 0, 20)]:
        signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(k, n))
        a = rng.standard_normal((m, k)).astype(np.float32)
        codes = native.sign_codes(lib, torch.from_numpy(signs), threads=2)
        assert np.array_equal(codes.numpy(), numpy_codes(signs)), (m, k, n)
        assert torch.equal(native.sign_codes(lib, torch.from_numpy(signs).to(torch.int8), threads=2), codes)
        result = native.signed_sums(lib, torch.from_numpy(a), codes, n, threads=2)
        assert np.array_equal(result.numpy(), numpy_signed_sums(a, signs)), (m, k, n)


def test_every_build_gives_the_same_bits_and_the_error_stays_within_the_float32_bound():
    libs = [_build(flags) for flags in BUILDS]
    g = torch.Generator().manual_seed(1)
    # (the last: a result of 2**22 floats and more is written around the caches, some rows aligned, some not)
    for m, k, n in [(100, 1024, 256), (7, 4093, 33), (256, 100, 130), (1024, 37, 4100)]:
        a = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, k)  # magnitudes over six decades
        signs = torch.randint(0, 2, (k, n), generator=g).float() * 2 - 1
        results = [native.signed_sums(lib, a, native.sign_codes(lib, signs), n) for lib in libs]
        assert torch.equal(results[0], results[1]), (m, k, n)
        exact = a.double() @ signs.double()
        assert bool(((results[0].double() - exact).abs() <= error_bound(a, k)).all()), (m, k, n)


def test_a_transposed_or_broadcast_left_operand_is_read_in_place():
    lib = _build(())
    g = torch.Generator().manual_seed(2)
    signs = torch.randint(0, 2, (40, 70), generator=g).float() * 2 - 1
    codes = native.sign_codes(lib, signs)
    base = torch.randn(40, 9, generator=g)
    for a in (base.t(), base.t()[::2], torch.randn(1, 40, generator=g).expand(5, 40), -base.t()):
        assert torch.equal(native.signed_sums(lib, a, codes, 70), native.signed_sums(lib, a.contiguous(), codes, 70))


def test_a_large_column_strided_left_operand_is_copied_into_rows_with_the_same_sums(monkeypatch):
    lib = _build(())
    g = torch.Generator().manual_seed(3)
    grad = torch.randn(120, 600, generator=g)  # grad.T, as a weight gradient reads it: 72,000 entries
    signs = torch.randint(0, 2, (120, 33), generator=g).float() * 2 - 1
    codes = native.sign_codes(lib, signs)
    copied = []
    original_contiguous = torch.Tensor.contiguous
    monkeypatch.setattr(torch.Tensor, "contiguous", lambda t, *args: copied.append(t.shape) or original_contiguous(t))
    result = native.signed_sums(lib, grad.t(), codes, 33)
    assert (600, 120) in copied and grad.t().numel() >= native.ROWS_COPY_MIN_NUMEL
    monkeypatch.undo()
    expected = torch.from_numpy(numpy_signed_sums(grad.t().numpy(), signs.numpy()))
    assert torch.equal(result, expected)


@pytest.mark.parametrize("flags", BUILDS, ids=BUILD_NAMES)
def test_a_value_not_plus_or_minus_one_gives_no_codes(flags):
    lib = _build(flags)
    signs = torch.ones(9, 70)
    for bad in (0.0, -0.0, 0.5, float("nan"), float("inf")):
        for row, column in [(0, 0), (8, 69), (4, 33)]:
            y = signs.clone()
            y[row, column] = bad
            assert native.sign_codes(lib, y) is None, (bad, row, column)
    int8 = torch.ones(9, 130, dtype=torch.int8)
    int8[8, 129] = 0
    assert native.sign_codes(lib, int8) is None


def test_wrong_operands_get_one_line_naming_them():
    lib = _build(())
    codes = native.sign_codes(lib, torch.ones(8, 5))
    with pytest.raises(ValueError, match="binary layer codes is \\(2, 5\\) torch.uint8, expected \\(3, 5\\)"):
        native.signed_sums(lib, torch.ones(2, 11), codes, 5)
    with pytest.raises(ValueError, match="left operand is \\(2, 8\\) torch.float64"):
        native.signed_sums(lib, torch.ones(2, 8, dtype=torch.float64), codes, 5)
    with pytest.raises(ValueError, match="the output is \\(2, 4\\) torch.float32 on cpu, expected a contiguous"):
        native.signed_sums(lib, torch.ones(2, 8), codes, 5, out=torch.empty(2, 4))
    with pytest.raises(ValueError, match="signs is torch.float64, expected torch.float32 or torch.int8 values of"):
        native.sign_codes(lib, torch.ones(8, 5, dtype=torch.float64))


@pytest.fixture
def lookups(monkeypatch):
    """Every backward product of a ±1 operand by lookups (the portable build where the CPU lacks AVX-512: the same
    sums)."""
    lib = native.kernels()
    if lib is None:
        pytest.skip("no C compiler to build the native kernels")
    if not native.signed_sums_vectorized(lib):
        monkeypatch.setattr(native, "kernels", lambda: native._kernels(native.FLAGS + ("-DPACKED_PORTABLE",)))
    monkeypatch.setattr(fast, "real_product_kind", lambda device: "lookup")


def test_a_binary_layer_trains_with_lookup_gradients_within_the_float32_bound(lookups):
    torch.manual_seed(0)
    layer = bnn.BinaryLinear(2048, 512, bias=True)
    x = (torch.randint(0, 2, (37, 2048)).float() * 2 - 1).requires_grad_()
    assert fast.backward_products_used(x, layer) == {"grad_input": "lookup", "grad_weight": "lookup"}
    out = layer(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    signs = layer.signs().double()
    assert bool(((x.grad.double() - grad.double() @ signs).abs() <= error_bound(grad, 512)).all())
    exact_w = grad.double().t() @ x.detach().double()
    assert bool(((layer.weight.grad.double() - exact_w).abs() <= error_bound(grad.t(), 37)).all())
    assert torch.allclose(layer.bias.grad, grad.sum(0))


def test_the_lookup_codes_follow_the_signs_after_every_step(lookups):
    torch.manual_seed(1)
    layer = bnn.BinaryLinear(1024, 1024)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = (torch.randint(0, 2, (8, 1024)).float() * 2 - 1).requires_grad_()
    for _ in range(3):
        opt.zero_grad()
        layer(x).square().sum().backward()
        opt.step()
        codes, signs = layer.signs_as(SIGN_CODES, torch.float32)
        assert torch.equal(codes, native.sign_codes(native.kernels(), signs))
    x.grad = None
    out = layer(x)
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad, F.linear(torch.ones_like(out), layer.signs().t()))  # (integer sums: exact either way)


def test_a_real_valued_input_keeps_the_float32_weight_gradient(lookups):
    torch.manual_seed(2)
    layer = bnn.BinaryLinear(2048, 512)
    x = torch.rand(16, 2048)
    assert fast.backward_products_used(x, layer) == {"grad_weight": "float32"}
    layer(x).sum().backward()
    assert torch.allclose(layer.weight.grad, torch.ones(16, 512).t() @ x, rtol=1e-6, atol=1e-4)


def test_the_lookup_product_is_the_cpus_choice_not_a_timed_one(monkeypatch):
    """Two float32 products that add in other orders are chosen by the CPU, never by timing (a choice that flipped
    between processes would change a resumed run's last bits)."""
    lib = native.kernels()
    expected = "lookup" if lib is not None and native.signed_sums_vectorized(lib) else "float32"
    monkeypatch.setattr(fast, "best_times", lambda *args, **kwargs: pytest.fail("timed"))
    assert [fast.real_product_kind("cpu") for _ in range(3)] == [expected] * 3
    assert fast.real_product_kind("meta") == "float32"


def test_the_sums_do_not_depend_on_the_number_of_threads(monkeypatch):
    lib = _build(())
    monkeypatch.setattr(native, "MIN_WORK_PER_THREAD", 1)
    g = torch.Generator().manual_seed(3)
    a, signs = torch.randn(33, 700, generator=g), torch.randint(0, 2, (700, 1000), generator=g).float() * 2 - 1
    codes = native.sign_codes(lib, signs)
    results = [native.signed_sums(lib, a, codes, 1000, threads=threads) for threads in (1, 2, 3)]
    assert all(torch.equal(results[0], other) for other in results[1:])


@pytest.mark.parametrize("flags", BUILDS, ids=BUILD_NAMES)
def test_the_transposed_codes_are_the_codes_of_the_transpose(flags, monkeypatch):
    lib = _build(flags)
    monkeypatch.setattr(native, "MIN_WORK_PER_THREAD", 1)
    g = torch.Generator().manual_seed(4)
    for rows, n in [(1, 1), (3, 5), (64, 64), (65, 129), (130, 784), (7, 1000)]:
        signs = (torch.randint(0, 2, (rows, n), generator=g) * 2 - 1).to(torch.int8)
        codes = native.transposed_sign_codes(lib, signs, threads=2)
        assert np.array_equal(codes.numpy(), numpy_codes(signs.T.float().numpy())), (rows, n)
        for bad in (0, 2, -128):
            y = signs.clone()
            y[rows // 2, n - 1] = bad
            assert native.transposed_sign_codes(lib, y, threads=2) is None, (rows, n, bad)


def test_a_real_valued_input_takes_the_lookup_product_within_the_float32_bound(lookups):
    torch.manual_seed(5)
    layer = bnn.BinaryLinear(784, 2048, bias=True)
    x = torch.rand(33, 784)
    assert fast.product_used(x, layer) == "lookup"
    out = layer(x)
    exact = x.double() @ layer.signs().double().T + layer.bias.double()
    # the sum's error, and one rounding when the bias is added: at most u (sum|x| + |bias|) more
    bound = 2 * error_bound(x, 784) + U * layer.bias.double().abs()
    assert bool(((out.double() - exact).abs() <= bound).all())
    out.sum().backward()  # the weight gradient of a real-valued input stays float32
    torch.testing.assert_close(layer.weight.grad, torch.ones(33, 2048).T @ x)
