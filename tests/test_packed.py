"""bnn.pack: bit-packed inference predicts exactly as the float model."""

from pathlib import Path

import copy

import numpy as np
import pytest
import torch

import bnn
from bnn.packed import PackedMLP, _popcount, pack_bits
from metaspike.data import load_dataset, read_idx

MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained briefly on mnist5k, with population statistics from its training data."""
    torch.manual_seed(0)
    train = load_dataset("mnist5k")
    model = bnn.MLP([784, 128, 64, 10])
    bnn.fit(model, train, epochs=1, lr=0.005, meta=1.0, progress=False)
    bnn.use_population_statistics(model, train.x)
    return model.eval()


def _mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    images = MNIST / "t10k-images-idx3-ubyte.gz"
    labels = MNIST / "t10k-labels-idx1-ubyte.gz"
    if not (images.is_file() and labels.is_file()):
        pytest.skip(f"real MNIST test split not found in {MNIST}")
    x = torch.from_numpy(read_idx(images).astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(read_idx(labels).astype(np.int64))


@pytest.mark.parametrize("compile", [False, True], ids=["torch-ops", "fast-kernels"])
def test_predictions_equal_the_float_model_on_the_real_mnist_test_split(trained, compile):
    x, y = _mnist_test()
    packed = bnn.pack(trained, compile=compile)
    with torch.no_grad():
        reference = trained(x)
    scores = packed(x)
    assert torch.equal(packed.predict(x), reference.argmax(1))
    assert torch.equal(scores, reference)  # even the class scores are the same floats
    assert (scores.argmax(1) == y).float().mean() > 0.8


def test_hidden_activations_equal_the_float_model(trained):
    x = load_dataset("mnist5k", "test").x
    packed = bnn.pack(trained, compile=False)
    with torch.no_grad():
        signs = torch.nn.Sequential(*list(trained)[:4])(x)  # Flatten, BinaryLinear, BatchNorm1d, sign
    a = bnn.packed._real_dot(x.flatten(1), packed.layers[0]["weight"])
    layer = packed.layers[0]
    fires = torch.where(layer["flip"], -a, a) >= layer["threshold"]
    assert torch.equal(fires, signs > 0)


def test_negative_batchnorm_scale_flips_the_comparison(trained):
    model = copy.deepcopy(trained)
    with torch.no_grad():
        for norm in (model[2], model[5]):
            norm.weight[::2] *= -1  # half the neurons get a negative scale
            norm.bias[::3] = 0.0
            norm.weight[1::7] = 0.0  # and some a zero scale (constant output)
    model.eval()
    packed = bnn.pack(model, compile=False)
    assert packed.layers[0]["flip"].any() and packed.layers[1]["flip"].any()
    x = load_dataset("mnist5k", "test").x
    with torch.no_grad():
        assert torch.equal(packed(x), model(x))


def test_batch_sizes_agree_and_single_samples_work(trained):
    x = load_dataset("mnist5k", "test").x[:40]
    packed = bnn.pack(trained, compile=False)
    whole = packed(x)
    single = torch.cat([packed(x[i : i + 1]) for i in range(len(x))])
    assert torch.equal(whole, single)


def test_torch_compiled_forward_equals_eager(trained, monkeypatch):
    monkeypatch.setattr(bnn.packed.native, "kernels", lambda: None)  # as on a machine without a C compiler
    x = load_dataset("mnist5k", "test").x[:64]
    compiled = bnn.pack(trained)
    assert compiled._native is None
    assert torch.equal(compiled(x), bnn.pack(trained, compile=False)(x))


@pytest.mark.skipif(bnn.native.kernels() is None, reason="no C compiler to build the native kernels")
def test_native_kernels_equal_eager_torch_ops_layer_by_layer(trained, monkeypatch):
    x = load_dataset("mnist5k", "test").x[:100].flatten(1)
    packed, lib = bnn.pack(trained, compile=False), bnn.native.kernels()
    first, second = packed.layers[0], packed.layers[1]
    a = bnn.packed._real_dot(x, first["weight"])
    assert torch.equal(bnn.native.real_layer(lib, x, first["weight"]), a)
    bits = pack_bits(torch.where(first["flip"], -a, a) >= first["threshold"])
    assert torch.equal(bnn.native.real_layer(lib, x, first["weight"], first["flip"], first["threshold"]), bits)
    hidden = bnn.packed._binary_dot(bits, second["weight"], 128)
    assert torch.equal(bnn.native.binary_layer(lib, bits, 128, second["weight"]), hidden)
    for work_per_thread in (1 << 40, 1):  # one thread, then outputs split between threads: the same bits
        monkeypatch.setattr(bnn.native, "MIN_WORK_PER_THREAD", work_per_thread)
        assert torch.equal(bnn.pack(trained)(x), bnn.pack(trained, compile=False)(x))


@pytest.mark.skipif(bnn.native.kernels() is None, reason="no C compiler to build the native kernels")
def test_native_kernels_build_once_into_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("METASPIKE_CACHE", str(tmp_path))
    lib = bnn.native.kernels.__wrapped__()
    (built,) = tmp_path.glob("packed_kernels-*.so")
    assert lib is not None and built.stat().st_size > 0
    assert bnn.native.kernels.__wrapped__()._name == str(built)  # the second call loads it, no rebuild
    assert [p.name for p in tmp_path.iterdir()] == [built.name]  # no scratch files left behind


def test_without_a_c_compiler_the_native_kernels_are_skipped_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("METASPIKE_CACHE", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="could not build the packed-inference kernels"):
        assert bnn.native.kernels.__wrapped__() is None


def test_memory_is_about_one_bit_per_weight(trained):
    packed = bnn.pack(trained, compile=False)
    weights = 784 * 128 + 128 * 64 + 64 * 10
    layers = packed.layer_bytes()
    assert [(l.inputs, l.outputs) for l in layers] == [(784, 128), (128, 64), (64, 10)]
    assert sum(l.weight_bytes for l in layers) == 128 * 98 + 64 * 2 * 8 + 10 * 1 * 8
    assert sum(l.weight_bytes for l in layers) < weights / 8 * 1.1
    assert bnn.summary(trained).float32_bytes / packed.nbytes > 25


def test_save_and_load_round_trip(trained, tmp_path):
    packed = bnn.pack(trained, compile=False)
    path = tmp_path / "model.pt"
    packed.save(path)
    torch.load(path, weights_only=True)  # plain tensors, ints, floats and strings
    loaded = PackedMLP.load(path, compile=False)
    x = load_dataset("mnist5k", "test").x[:100]
    assert loaded.sizes == packed.sizes
    assert torch.equal(loaded(x), packed(x))


def test_truncated_or_corrupted_files_raise_value_error(trained, tmp_path):
    path = tmp_path / "model.pt"
    bnn.pack(trained, compile=False).save(path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable packed BNN file"):
        PackedMLP.load(truncated)
    flipped = bytearray(data)
    flipped[len(data) // 3 : len(data) // 3 + 64] = bytes(64)
    corrupted = tmp_path / "corrupted.pt"
    corrupted.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="packed BNN file"):
        PackedMLP.load(corrupted)
    other = tmp_path / "other.pt"
    torch.save({"format": "something else"}, other)
    with pytest.raises(ValueError, match="is not a valid packed BNN file: it does not start with"):
        PackedMLP.load(other)
    wrong = torch.load(path, weights_only=True)
    wrong["layers"][1]["weight"] = wrong["layers"][1]["weight"][:, :1]
    torch.save(wrong, other)
    with pytest.raises(ValueError, match=r"layer 1 'weight' is \(64, 1\) torch.int64, expected \(64, 2\)"):
        PackedMLP.load(other)


def test_missing_population_statistics_are_named():
    with pytest.raises(ValueError, match="no population statistics; call bnn.use_population_statistics"):
        bnn.pack(bnn.MLP([784, 32, 10]))


def test_models_that_cannot_be_packed_are_rejected():
    relu = bnn.use_population_statistics(bnn.MLP([20, 8, 4], activation="relu"), torch.rand(50, 20))
    with pytest.raises(ValueError, match="followed by ReLU; pack needs sign activations"):
        bnn.pack(relu)
    real = bnn.use_population_statistics(bnn.MLP([20, 8, 4], weight_quantizer="none"), torch.rand(50, 20))
    with pytest.raises(ValueError, match="does not binarize its weights"):
        bnn.pack(real)
    with pytest.raises(ValueError, match="pack expects a bnn.MLP"):
        bnn.pack(torch.nn.Sequential(torch.nn.Linear(4, 2)))


def test_input_of_the_wrong_size_is_rejected(trained):
    with pytest.raises(ValueError, match=r"input of shape \(3, 100\) does not fit: expected .* 784 features"):
        bnn.pack(trained, compile=False)(torch.rand(3, 100))


def test_popcount_and_bit_packing():
    words = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 0x0F0F])
    assert _popcount(words).tolist() == [0, 1, 64, 63, 1, 8]
    bits = torch.rand(3, 70) > 0.5
    packed = pack_bits(bits)
    assert packed.shape == (3, 2) and packed.dtype == torch.int64
    unpacked = (packed.view(torch.uint8).unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    assert torch.equal(unpacked.view(3, -1)[:, :70].bool(), bits)
    assert not unpacked.view(3, -1)[:, 70:].any()
