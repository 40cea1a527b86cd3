"""The float32 products of large binary layers: torch.mm or oneDNN, whichever is faster, equal to float32 rounding."""

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


def test_the_library_is_timed_once_per_shape_class(monkeypatch):
    calls = []
    monkeypatch.setattr(products, "_choices", {})
    monkeypatch.setattr(products, "_faster", lambda *key: calls.append(key) or "torch.mm")
    for m in (100, 120, 128, 300, 1000):  # row classes 65-128, 65-128, 65-128, 257+, 257+
        assert products.float32_library("cpu", "grad_input", m, 1024, 512) == "torch.mm"
    products.float32_library("cpu", "grad_weight", 100, 1024, 512)  # another product: timed on its own
    cpu = torch.device("cpu")
    assert calls == [(cpu, "grad_input", 100, 1024, 512), (cpu, "grad_input", 300, 1024, 512),
                     (cpu, "grad_weight", 100, 1024, 512)]


@pytest.mark.parametrize(("onednn_s", "expected"), [(1.0, "oneDNN"), (1.5, "torch.mm"), (2.0, "torch.mm")])
def test_onednn_is_taken_only_when_it_is_faster_by_the_margin(onednn_s, expected, monkeypatch):
    if "oneDNN" not in libraries():
        pytest.skip("this torch build has no oneDNN product")
    assert products.ONEDNN_MARGIN == 1.25
    monkeypatch.setattr(products, "best_times", lambda timed, device: {"torch.mm": 1.6, "oneDNN": onednn_s})
    assert products._faster(torch.device("cpu"), "forward", 8, 16, 16) == expected


@pytest.mark.parametrize("product", products.PRODUCTS)
def test_the_timing_probe_runs_each_product_and_picks_a_library_this_machine_has(product):
    assert products._faster(torch.device("cpu"), product, 8, 40, 24) in libraries()


def test_only_torch_mm_off_the_cpu():
    assert products.float32_libraries("cuda") == ["torch.mm"]
    assert products.float32_libraries("meta") == ["torch.mm"]


def test_bad_names_get_one_line_naming_the_accepted_ones():
    with pytest.raises(ValueError, match="product must be one of 'forward', 'grad_input', 'grad_weight', got 'fwd'"):
        products.float32_library("cpu", "fwd", 8, 8, 8)
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
    assert products._faster(torch.device("cpu"), "grad_weight", 0, 30, 5) == "torch.mm"
