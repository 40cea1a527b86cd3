"""The float32 products of large binary layers: torch.mm or oneDNN, chosen by the CPU, equal to float32 rounding."""

import pytest
import torch

from bnn import float32_products as products

U = 2.0**-24  # float32's unit roundoff


def libraries():
    return products.float32_libraries("cpu")


def assert_within_float32_rounding(got, a, b):
    """Each entry is a float32 sum of k terms: within k·u·Σ|terms| of the exact (float64) product."""
    exact = a.double() @ b.double()
    bound = a.shape[1] * U * (a.abs().double() @ b.abs().double())
    assert got.dtype == torch.float32 and got.shape == exact.shape
    assert ((got.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("library", products.LIBRARIES)
def test_each_library_gives_the_product_of_every_layout_a_binary_layer_passes(library):
    if library not in libraries():
        pytest.skip(f"this torch build has no {library} product")
    g = torch.Generator().manual_seed(0)
    x, signs = torch.randn(24, 300, generator=g), torch.randn(70, 300, generator=g).sign()
    grad = torch.randn(24, 70, generator=g)
    assert_within_float32_rounding(products.mm(x, signs.t(), library), x, signs.t())  # forward
    assert_within_float32_rounding(products.mm(grad, signs, library), grad, signs)  # grad_input
    out = torch.full((70, 300), float("nan"))
    assert products.mm(grad.t(), x, library, out=out) is out  # grad_weight, into a buffer
    assert_within_float32_rounding(out, grad.t(), x)


def test_onednn_fills_a_given_tensor_block_by_block_including_a_last_partial_block(monkeypatch):
    if "oneDNN" not in libraries():
        pytest.skip("this torch build has no oneDNN product")
    monkeypatch.setattr(products, "BLOCK_ELEMENTS", 3 * 50)  # blocks of 3 rows of 50: 7 rows -> 3 + 3 + 1
    g = torch.Generator().manual_seed(1)
    grad, x = torch.randn(5, 7, generator=g), torch.randn(5, 50, generator=g).sign()
    out = torch.full((7, 50), float("nan"))
    products.mm(grad.t(), x, "oneDNN", out=out)
    assert_within_float32_rounding(out, grad.t(), x)


def test_only_a_product_of_several_onednn_blocks_is_written_into_a_given_buffer(monkeypatch):
    """oneDNN computes into fresh memory of its own: a product of one block copied into a reused buffer cost a pass
    and saved nothing (0.2 ms of a 12 ms 784-1024-1024-10 training step)."""
    monkeypatch.setattr(products, "BLOCK_ELEMENTS", 3 * 50)
    assert products.writes_into_out("torch.mm", (3, 50)) and products.writes_into_out("torch.mm", (70, 300))
    assert not products.writes_into_out("oneDNN", (3, 50)) and not products.writes_into_out("oneDNN", (1, 500))
    assert products.writes_into_out("oneDNN", (4, 50))


def test_a_first_layer_on_onednn_keeps_its_buffer_only_where_blocks_bound_its_memory(monkeypatch):
    if "oneDNN" not in libraries():
        pytest.skip("this torch build has no oneDNN product")
    import bnn
    from bnn import binary_linear

    monkeypatch.setattr(binary_linear, "float32_library", lambda device: "oneDNN")
    monkeypatch.setattr(binary_linear, "FAST_MIN_NUMEL", 1)  # the fast path at this size
    g = torch.Generator().manual_seed(2)
    layer, x = bnn.BinaryLinear(50, 7), torch.rand(5, 50, generator=g)
    for blocks, buffered in [(products.BLOCK_ELEMENTS, False), (3 * 50, True)]:
        monkeypatch.setattr(products, "BLOCK_ELEMENTS", blocks)
        layer.weight.grad = None
        grad = torch.randn(5, 7, generator=g)
        layer(x).backward(grad)
        assert (layer.weight.grad.data_ptr() == layer.gradient_buffer().data_ptr()) == buffered
        assert_within_float32_rounding(layer.weight.grad, grad.t(), x)


@pytest.mark.parametrize(("vendor", "capability", "mkl", "expected"), [
    ("AuthenticAMD", "AVX512", True, "oneDNN"),  # MKL runs its AVX2 kernels on another vendor's AVX-512 CPU
    ("AuthenticAMD", "AVX2", True, "torch.mm"),
    ("GenuineIntel", "AVX512", True, "torch.mm"),
    (None, "AVX512", True, "torch.mm"),  # (no /proc/cpuinfo: not known)
    ("AuthenticAMD", "AVX512", False, "torch.mm")])  # (another BLAS)
def test_the_library_is_chosen_by_the_cpu_never_by_timing(vendor, capability, mkl, expected, monkeypatch):
    """Timed once per process, the choice flipped between processes on a CPU where the two ran alike, and with it the
    last bits of a first layer's output: a resumed run's numbers could differ from the uninterrupted run's."""
    if "oneDNN" not in libraries():
        pytest.skip("this torch build has no oneDNN product")
    monkeypatch.setattr(products, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    products.blas_runs_narrower_kernels.cache_clear()
    try:
        assert products.float32_library("cpu") == expected
        assert products.float32_library("meta") == "torch.mm"
    finally:
        products.blas_runs_narrower_kernels.cache_clear()


def test_the_cpu_vendor_is_read_from_proc_cpuinfo_where_there_is_one():
    vendor = products.cpu_vendor()
    try:
        with open("/proc/cpuinfo") as info:
            named = [line.split(":")[1].strip() for line in info if line.startswith("vendor_id")]
    except OSError:
        named = []
    assert vendor == (named[0] if named else None)


def test_only_torch_mm_off_the_cpu():
    assert products.float32_libraries("cuda") == ["torch.mm"]
    assert products.float32_libraries("meta") == ["torch.mm"]


def test_bad_names_get_one_line_naming_the_accepted_ones():
    with pytest.raises(ValueError, match="library must be one of 'torch.mm'.*got 'mkl'"):
        products.mm(torch.ones(2, 2), torch.ones(2, 2), "mkl")
    if "oneDNN" in libraries():
        with pytest.raises(ValueError, match="takes float32 matrices, got torch.float64 and torch.float32"):
            products.mm(torch.ones(2, 2, dtype=torch.float64), torch.ones(2, 2), "oneDNN")


@pytest.mark.parametrize("library", products.LIBRARIES)
def test_products_of_an_empty_batch_are_zero_sized_or_zero(library):
    if library not in libraries():
        pytest.skip(f"this torch build has no {library} product")
    assert products.mm(torch.empty(0, 30), torch.ones(30, 5), library).shape == (0, 5)
    out = torch.full((5, 30), float("nan"))
    assert torch.equal(products.mm(torch.empty(5, 0), torch.empty(0, 30), library, out=out), torch.zeros(5, 30))
