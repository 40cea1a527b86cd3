"""Spike encoders: a batch ``[B, ...]`` in ``[0, 1]`` becomes ``[num_steps, B, ...]``.

* ``"rate"``: Poisson/Bernoulli spikes, each step fires with probability equal to the value.
* ``"latency"``: one spike per input, earlier for larger values (``t = round((1 - x)(T - 1))``);
  zero inputs never fire.
* ``"direct"``: the value itself as an input current at every step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaspike.allocator import usable_memory
from metaspike.checks import is_whole, unknown_name
from metaspike.distributed import current_batch_slice
from metaspike.function_transforms import values_unread

__all__ = ["RateEncoder", "LatencyEncoder", "DirectEncoder", "available_encoders", "get_encoder", "check_num_steps"]


def check_num_steps(num_steps: int) -> int:
    """``num_steps`` if it is an integer ``>= 1``, else one ``ValueError``.

    Example:
        >>> check_num_steps(8)
        8
    """
    if not is_whole(num_steps, 1):
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    return num_steps


def _check_unit_interval(x: Tensor, encoder: str) -> None:
    """The rate and latency encoders read each value as an intensity in ``[0, 1]``: anything else is refused (raw
    0-255 pixels would all fire at every step, standardized ones below the mean never)."""
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor of intensities in [0, 1] for the {encoder} encoder, got "
                         f"{x.dtype} (scale pixels: x.float() / 255)")
    if not x.numel() or values_unread():  # (a transform, an export cannot branch on values)
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"x holds NaN or infinite values; the {encoder} encoder takes intensities in [0, 1]")
    if bool(x.min() < 0) or bool(x.max() > 1):
        raise ValueError(f"x must hold intensities in [0, 1] for the {encoder} encoder, got values in "
                         f"[{x.min().item():g}, {x.max().item():g}] (scale raw pixels by 1/255; for standardized "
                         f"inputs use encoder='direct')")


CHECKED_ENCODING_BYTES = 2**28
"""Encoded batches from this size up (256 MiB) are checked against the memory this process may use first."""


def _check_encoding_fits(x: Tensor, num_steps: int, encoder: str) -> None:
    """``ValueError`` where an encoder that writes ``num_steps`` copies of ``x`` (rate, latency: the direct encoder's
    are views) would exceed the memory this process may use (torch's allocator error named no argument, and a size
    the system overcommits was killed later, unsaved). Checked in main memory only."""
    if torch.compiler.is_exporting():  # (the batch is a symbol: a comparison on it narrowed the batch exported for)
        return
    needed = num_steps * x.numel() * x.element_size()
    if needed < CHECKED_ENCODING_BYTES or x.device.type != "cpu":
        return
    available = usable_memory()
    if available is not None and needed > available:
        raise ValueError(f"the {encoder} encoder: num_steps={num_steps:,} encodes this batch of shape "
                         f"{tuple(x.shape)} as about {needed / 2**30:,.1f} GiB of spikes, and this process may use "
                         f"{available / 2**30:,.1f} GiB; give fewer time steps or a smaller batch")


class RateEncoder(nn.Module):
    """Bernoulli spikes with the input as firing probability per step.

    Under torchrun each process draws the spikes of the whole batch and keeps its slice's
    (:func:`metaspike.distributed.batch_slice`): the same spikes one process draws for those samples.

    Example:
        >>> RateEncoder()(torch.ones(2, 3), num_steps=4).shape
        torch.Size([4, 2, 3])
    """

    def forward(self, x: Tensor, num_steps: int) -> Tensor:
        check_num_steps(num_steps)
        _check_unit_interval(x, "rate")
        _check_encoding_fits(x, num_steps, "rate")
        shared = current_batch_slice()
        if shared is None or x.dim() == 0 or shared[1] + len(x) > shared[0]:
            return torch.bernoulli(x.unsqueeze(0).expand(num_steps, *x.shape))
        size, start = shared  # (bernoulli draws one number per entry, in order, whatever its probability)
        whole = x.new_zeros(num_steps, size, *x.shape[1:])
        whole[:, start : start + len(x)] = x
        return torch.bernoulli(whole)[:, start : start + len(x)]


class LatencyEncoder(nn.Module):
    """One spike per input value ``> 0``, at step ``round((1 - x)(num_steps - 1))``, computed in at least float32
    whatever the input's dtype (bfloat16 holds every integer only up to 256, float16 up to 2048); the spikes come in
    the input's dtype.

    Example:
        >>> LatencyEncoder()(torch.tensor([[1.0, 0.0, 0.5]]), num_steps=3)[:, 0]
        tensor([[1., 0., 0.],
                [0., 0., 1.],
                [0., 0., 0.]])
    """

    def forward(self, x: Tensor, num_steps: int) -> Tensor:
        check_num_steps(num_steps)
        _check_unit_interval(x, "latency")
        _check_encoding_fits(x, num_steps, "latency")
        exact = x.to(torch.promote_types(x.dtype, torch.float32))  # (float32 holds every whole step up to 2**24)
        when = torch.round((1 - exact) * (num_steps - 1)).long()
        steps = torch.arange(num_steps, device=x.device).view(-1, *([1] * x.dim()))
        return ((steps == when) & (x > 0)).to(x.dtype)


class DirectEncoder(nn.Module):
    """The input itself, repeated as a current at every step.

    Example:
        >>> DirectEncoder()(torch.tensor([[0.25]]), num_steps=2).flatten().tolist()
        [0.25, 0.25]
    """

    def forward(self, x: Tensor, num_steps: int) -> Tensor:
        check_num_steps(num_steps)
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor for the direct encoder, got {x.dtype}")
        if x.numel() and not values_unread() and not bool(torch.isfinite(x).all()):
            raise ValueError("x holds NaN or infinite values; the direct encoder feeds them as currents")
        return x.unsqueeze(0).expand(num_steps, *x.shape)


_ENCODERS: dict[str, type[nn.Module]] = {"rate": RateEncoder, "latency": LatencyEncoder, "direct": DirectEncoder}


def available_encoders() -> list[str]:
    """Encoder names.

    Example:
        >>> available_encoders()
        ['direct', 'latency', 'rate']
    """
    return sorted(_ENCODERS)


def get_encoder(encoder: str | nn.Module) -> nn.Module:
    """An encoder module by name (a module is returned as it is).

    Example:
        >>> type(get_encoder("rate")).__name__
        'RateEncoder'
    """
    if isinstance(encoder, nn.Module):
        return encoder
    try:
        return _ENCODERS[encoder]()
    except (KeyError, TypeError):
        raise ValueError(unknown_name("encoder", encoder, available_encoders())) from None
