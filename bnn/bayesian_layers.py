"""Bayesian layers: ``nn.Linear`` / ``nn.Conv2d`` whose weights are Bayesian synapses.

* :class:`BayesianLinear`, :class:`BayesianConv2d`: Gaussian weights ``(μ, σ)``, trained by
  :class:`metaspike.bayesian.MESU`.
* :class:`BinaryBayesianLinear`, :class:`BinaryBayesianConv2d`: binary weights with latent ``λ``,
  trained by :class:`metaspike.bayesian.BiMU`.

They are the plain torch layers with the parametrizations of :func:`metaspike.bayesian.make_bayesian`
(so :func:`metaspike.bayesian.bayesian_modules` and the optimizers' helpers find them), plus a
``samples`` argument: with ``samples=None`` a forward pass draws one weight sample and the output is
the usual ``(B, out)``; with ``samples=S`` it draws ``S`` weight samples and runs them batched
(:func:`metaspike.bayesian.sampled_forward`), the output gets a leading ``S``: ``(S, B, out)``. A
following sampled layer takes that ``(S, B, ...)`` input sample by sample. So a sampled layer reads an input
with one more dimension than the layer's own (3-D for a linear layer) as such an ``(S, B, ...)`` output; any
other leading dimension, e.g. a sequence in ``(B, T, features)``, must be folded into the batch first
(``x.flatten(0, 1)``), or the layer would read ``B == S`` rows as samples. The modules between sampled layers see
that ``(S, B, ...)`` output too: ``BatchNorm1d`` would read it as ``(N, C, L)`` (the batch as channels: an error, or
silently wrong where ``B`` equals the channels) and 2-D pooling or ``BatchNorm2d`` refuse 5-D inputs, so wrap such a
module to fold the samples into the batch around it (``m(h.flatten(0, 1)).unflatten(0, h.shape[:2])``). Average the loss over
the flattened ``S·B`` outputs (e.g. ``F.cross_entropy(out.flatten(0, 1), y.repeat(S))``): the
gradient is then the mean of the ``S`` per-sample gradients, as the authors' multi-sample steps use.

Biases (off by default) are not Bayesian; train them with any torch optimizer
(:func:`metaspike.bayesian.plain_parameters`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnn.layers import (
    check_conv_geometry,
    check_conv_input,
    check_features,
    check_layer_input_dtype,
    check_widths,
    factory_kwargs,
)
from metaspike.bayesian.synapses import SampledForward, make_bayesian

__all__ = ["BayesianLinear", "BayesianConv2d", "BinaryBayesianLinear", "BinaryBayesianConv2d"]


def _check_not_meta(layer: nn.Module) -> None:
    """One line where ``layer`` was built on the ``meta`` device (``device="meta"``, or inside ``torch.device("meta")``):
    its σ or λ are drawn from its weight's values as it is built, and a meta tensor holds none."""
    if layer.weight.device.type == "meta":
        raise ValueError(f"{type(layer).__name__} draws its synapses' state from its weight's values when it is built, "
                         "so it cannot be built on the 'meta' device (device='meta' or a torch.device('meta') context), "
                         "which holds shapes only; build it on 'cpu' or 'cuda'")


class _LinearInput:
    """Checks a linear layer's input in one line (a tensor of its parameters' dtype with ``in_features`` in the last
    dimension) before the layer's pass, instead of torch's error from inside the product."""

    in_features: int

    def check_input(self, x: Tensor) -> None:
        check_features(self, x, self.in_features, -1, "features in the last dimension")  # type: ignore[arg-type]
        check_layer_input_dtype(self, x)  # type: ignore[arg-type]


class _Conv2dInput:
    """The same for a 2-D convolution: ``in_channels`` third from the end, at most one leading dimension beside the
    batch where the layer draws several samples (an ``(S, B, C, H, W)`` input), images the kernel fits."""

    in_channels: int
    samples: int | None

    def check_input(self, x: Tensor) -> None:
        # (a sampled layer takes an (S, B, C, H, W) input too, and says itself what else it takes)
        check_conv_input(self, x, 4 if self.samples is None else 5)  # type: ignore[arg-type]
        check_layer_input_dtype(self, x)  # type: ignore[arg-type]


class BayesianLinear(_LinearInput, SampledForward, nn.Linear):
    """``nn.Linear`` with Gaussian (MESU) synapses: ``weight`` is ``μ + σ·ε`` in training mode.

    Args:
        in_features, out_features: as in ``nn.Linear``.
        bias: add a (non-Bayesian) bias.
        samples: weight samples per forward pass (see the module docstring); ``None``: one, output ``(B, out)``.
        evaluation_samples: weight samples per forward pass in evaluation mode (``None``: ``samples``); a larger
            ensemble predicts better (BiMU on the 100-task stream: 5 → 100 samples added about 4 points).
        sigma_init: initial width ``σ`` (``μ`` keeps ``nn.Linear``'s initialisation).
        evaluation: ``"mode"`` (evaluation shows ``μ``) or ``"sample"``.
        device, dtype: where the parameters live and their floating-point type, as in ``nn.Linear``; not the
            ``meta`` device, which holds no values to draw the synapses' state from.

    Example:
        >>> import torch
        >>> layer = BayesianLinear(8, 3, samples=4)
        >>> layer(torch.randn(5, 8)).shape
        torch.Size([4, 5, 3])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        samples: int | None = None,
        evaluation_samples: int | None = None,
        sigma_init: float = 0.1,
        evaluation: str = "mode",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        in_features, out_features = check_widths(in_features=in_features, out_features=out_features)
        super().__init__(in_features, out_features, bias=bias, **factory_kwargs(device, dtype))
        _check_not_meta(self)
        self._set_samples(samples, evaluation_samples, evaluation)
        make_bayesian(self, "mesu", sigma_init=sigma_init, evaluation=evaluation)


class BayesianConv2d(_Conv2dInput, SampledForward, nn.Conv2d):
    """``nn.Conv2d`` with Gaussian (MESU) synapses; ``nn.Conv2d``'s arguments, and the others as in
    :class:`BayesianLinear`.

    Example:
        >>> import torch
        >>> conv = BayesianConv2d(1, 4, kernel_size=3, padding=1, samples=2)
        >>> conv(torch.randn(3, 1, 8, 8)).shape
        torch.Size([2, 3, 4, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        *,
        samples: int | None = None,
        evaluation_samples: int | None = None,
        sigma_init: float = 0.1,
        evaluation: str = "mode",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        in_channels, out_channels = check_widths(in_channels=in_channels, out_channels=out_channels)
        check_conv_geometry(kernel_size, stride, padding, dilation)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
                         **factory_kwargs(device, dtype))
        _check_not_meta(self)
        self._set_samples(samples, evaluation_samples, evaluation)
        make_bayesian(self, "mesu", sigma_init=sigma_init, evaluation=evaluation)


class BinaryBayesianLinear(_LinearInput, SampledForward, nn.Linear):
    """``nn.Linear`` with binary (BiMU) synapses: ``weight`` is a relaxed ±1 sample in training mode.

    Args:
        in_features, out_features: as in ``nn.Linear``.
        bias: add a (non-Bayesian) bias.
        samples: weight samples per forward pass (see the module docstring); ``None``: one, output ``(B, out)``.
        evaluation_samples: weight samples per forward pass in evaluation mode (``None``: ``samples``); a larger
            ensemble predicts better (BiMU on the 100-task stream: 5 → 100 samples added about 4 points).
        lambda_init: ``λ`` starts ``N(0, lambda_init²)``.
        temperature: ``τ`` of the relaxed training sample.
        evaluation: ``"mode"`` (evaluation shows ``sign(λ)``) or ``"sample"`` (a Bernoulli sample).
        scale: learned output gain (``"channel"``, ``"layer"``; default ``None``, as for
            :class:`bnn.BinaryLinear`: a following normalisation sets the scale).
        device, dtype: where the parameters live and their floating-point type, as in ``nn.Linear``; not the
            ``meta`` device, which holds no values to draw the synapses' state from.

    Example:
        >>> layer = BinaryBayesianLinear(8, 3).eval()
        >>> layer.weight.abs().unique()
        tensor([1.])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        samples: int | None = None,
        evaluation_samples: int | None = None,
        lambda_init: float = 0.1,
        temperature: float = 1.0,
        evaluation: str = "mode",
        scale: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        in_features, out_features = check_widths(in_features=in_features, out_features=out_features)
        super().__init__(in_features, out_features, bias=bias, **factory_kwargs(device, dtype))
        _check_not_meta(self)
        self._set_samples(samples, evaluation_samples, evaluation)
        make_bayesian(self, "bimu", lambda_init=lambda_init, temperature=temperature, evaluation=evaluation, scale=scale)


class BinaryBayesianConv2d(_Conv2dInput, SampledForward, nn.Conv2d):
    """``nn.Conv2d`` with binary (BiMU) synapses; ``nn.Conv2d``'s arguments, and the others as in
    :class:`BinaryBayesianLinear`.

    Example:
        >>> import torch
        >>> conv = BinaryBayesianConv2d(1, 4, kernel_size=3)
        >>> conv(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 4, 6, 6])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        *,
        samples: int | None = None,
        evaluation_samples: int | None = None,
        lambda_init: float = 0.1,
        temperature: float = 1.0,
        evaluation: str = "mode",
        scale: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        in_channels, out_channels = check_widths(in_channels=in_channels, out_channels=out_channels)
        check_conv_geometry(kernel_size, stride, padding, dilation)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
                         **factory_kwargs(device, dtype))
        _check_not_meta(self)
        self._set_samples(samples, evaluation_samples, evaluation)
        make_bayesian(self, "bimu", lambda_init=lambda_init, temperature=temperature, evaluation=evaluation, scale=scale)
