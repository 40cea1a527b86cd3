"""bnn's Bayesian layers check their widths as bnn.BinaryLinear / bnn.BinaryConv2d do: one line naming the argument."""

import numpy as np
import pytest

import bnn

LINEAR = [bnn.BayesianLinear, bnn.BinaryBayesianLinear]
CONV = [bnn.BayesianConv2d, bnn.BinaryBayesianConv2d]
BAD_WIDTHS = [-1, 0, 3.5, 4.0, True]


def _message(make) -> str:
    with pytest.raises(ValueError) as caught:
        make()
    return str(caught.value)


@pytest.mark.parametrize("layer", LINEAR)
@pytest.mark.parametrize("bad", BAD_WIDTHS)
def test_a_bayesian_linear_layer_refuses_a_bad_width_with_binary_linears_line(layer, bad):
    assert _message(lambda: layer(bad, 2)) == _message(lambda: bnn.BinaryLinear(bad, 2))
    assert _message(lambda: layer(3, bad)) == f"out_features must be a positive integer, got {bad!r}"


@pytest.mark.parametrize("layer", CONV)
@pytest.mark.parametrize("bad", BAD_WIDTHS)
def test_a_bayesian_conv_layer_refuses_a_bad_width_with_binary_conv2ds_line(layer, bad):
    assert _message(lambda: layer(bad, 4, 3)) == _message(lambda: bnn.BinaryConv2d(bad, 4, 3))
    assert _message(lambda: layer(1, bad, 3)) == f"out_channels must be a positive integer, got {bad!r}"


@pytest.mark.parametrize("layer", LINEAR + CONV)
def test_a_bayesian_layer_takes_numpy_integer_widths_as_ints(layer):
    made = layer(np.int64(3), np.int64(2), *([3] if layer in CONV else []))
    assert made.weight.shape[:2] == (2, 3)
    widths = (made.in_features, made.out_features) if layer in LINEAR else (made.in_channels, made.out_channels)
    assert [type(width) for width in widths] == [int, int]  # as bnn.BinaryLinear stores them
