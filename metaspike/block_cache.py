"""Blocks in which each synapse's weight is taken once: :func:`binarized_once`, and what layers use inside one.

A spiking network runs its layers once per time step; inside a block a binary weight's sign (or a Bayesian
synapse's weight sample) is taken once and reused. :func:`reuse_in_block` is that reuse for parametrized synapses;
:func:`signs_cache_key` tells a layer with its own sign buffers (``bnn``) whether it may reuse them.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["binarized_once", "reuse_in_block", "signs_cache_key"]


_block_ids = itertools.count(1)
_open_blocks: list[int] = []
_depth = 0  # how many blocks are open: what compiled code reads (an int, whose value it guards on; the ids would
# make it compile anew for every block)


def signs_cache_key() -> int | None:
    """Inside :func:`binarized_once`, a number that identifies the block; ``None`` outside.

    A layer that keeps its ±1 weights in a buffer may reuse the buffer only while this key (and
    the hidden weight's version) is the one it was written under; outside a block it rewrites the
    buffer on every forward pass, so no edit of the hidden weights (``.data`` included) is missed.

    Example:
        >>> signs_cache_key() is None
        True
    """
    return _open_blocks[-1] if _open_blocks else None


# inside a block: per (parametrization, its first tensor), what the weight was made under, the weight, and weak
# references to the two (ids are reused once an object is freed: a model made in the block after another was freed
# may get its ids, and its fresh tensors start at version 0 again)
_block_weights: dict[tuple[int, int, Any], tuple[tuple[Any, ...], Any, weakref.ref, weakref.ref]] = {}


def reuse_in_block(parametrization: nn.Module, tensors: tuple[Tensor, ...], make: Callable[[], Tensor],
                   variant: Any = None) -> Tensor:
    """The weight ``make()`` shows for a synapse's ``tensors``: inside :func:`binarized_once`, made once and reused
    while the tensors keep their versions (an optimizer step changes them in place), the grad mode (a weight made
    under ``no_grad`` has no graph to train through) and the parametrization's mode; outside a block, made anew.
    ``variant`` tells apart what one synapse makes in several forms (``S`` weight samples of a sampled layer).

    Example:
        >>> w, synapse = nn.Parameter(torch.randn(3)), nn.Identity()
        >>> with binarized_once():
        ...     a = reuse_in_block(synapse, (w,), lambda: w.sign())
        ...     a is reuse_in_block(synapse, (w,), lambda: w.sign())
        True
    """
    if not _depth:
        return make()
    return _made_once(parametrization, tensors, make, variant)


# Outside a compiled graph: the lookup keys on objects and tensor versions, which torch.compile would guard on (a
# recompilation after every optimizer step, until its limit); the weight it gives is an input of the graph.
@torch.compiler.disable
def _made_once(parametrization: nn.Module, tensors: tuple[Tensor, ...], make: Callable[[], Tensor],
               variant: Any) -> Tensor:
    key = (id(parametrization), id(tensors[0]), variant)
    # (the storage, dtype and device too: ``model.double()`` or ``.to(device)`` swaps a tensor's data in place of
    # it, which keeps its version)
    made_under = (*((t._version, _data_address(t), t.dtype, t.device) for t in tensors), torch.is_grad_enabled(),
                  parametrization.training)
    found = _block_weights.get(key)
    if found is None or found[0] != made_under or found[2]() is not parametrization or found[3]() is not tensors[0]:
        found = _block_weights[key] = (made_under, make(), weakref.ref(parametrization), weakref.ref(tensors[0]))
    return found[1]


def _data_address(tensor: Tensor) -> int | None:
    """Where ``tensor``'s data lies; ``None`` for a tensor without storage of its own (one that ``torch.func``
    transforms wrap around another, whose own version and identity say the rest)."""
    try:
        return tensor.data_ptr()
    except RuntimeError:
        return None


@contextmanager
def binarized_once() -> Iterator[None]:
    """A block in which each binary weight's sign (and each Bayesian synapse's weight sample) is taken once and
    reused.

    Use it around a spiking time loop or an evaluation, so the sign is taken once per block rather
    than once per time step or batch. A weight is taken again after its tensors change in place (an
    optimizer step), and when the grad mode changes (an evaluation under ``no_grad`` between training
    steps), so a training loop may run inside the block. In-place edits through ``.data`` are not seen (a tensor
    given new data, by ``model.double()`` for one, is). A sampled (BiMU, MESU) weight is one sample for the whole
    block: gradient accumulation over several micro-batches (or truncated backpropagation through time in chunks)
    adds each ``backward``'s gradient through that one sample, which keeps what its backward needs for as long as
    it is used, so no ``retain_graph=True`` is needed (open the block per micro-batch to sample each anew).

    Example:
        >>> from metaspike import binarize
        >>> net = binarize(torch.nn.Sequential(torch.nn.Linear(4, 3)))
        >>> with binarized_once():
        ...     out = sum(net(torch.randn(2, 4)) for _ in range(5))
    """
    global _depth
    _open_blocks.append(next(_block_ids))
    _depth += 1
    try:
        yield
    finally:
        _open_blocks.pop()
        _depth -= 1
        if not _open_blocks:
            _block_weights.clear()
