"""Functions compiled by ``torch.compile`` on first use, with an eager fallback."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["LazyCompiled", "LARGE_TENSOR_LOOPS"]

LARGE_TENSOR_LOOPS = {"cpp.dynamic_threads": True}
"""Compiler options for a function over large tensors: its CPU loops always run in a parallel region of as many
threads as the process has when it runs. Without them inductor decides from the sizes of the call that compiled the
kernel, and its cache keeps that kernel for every later size: a ``MetaplasticAdam`` step compiled once on a small
``fused=True`` tensor ran every later process's 1024 x 1024 update on one thread (0.94 ms an optimizer step of
784-1024-1024-10 compiled afresh, 1.42-1.52 ms from that cached kernel; 2-core AMD EPYC Zen 5, two threads)."""


def _is_recompile_limit(err: Exception) -> bool:
    """Whether ``err`` is torch's refusal of one more compiled variant of a function than it allows
    (``torch._dynamo.config.recompile_limit``, with ``fullgraph=True``); told by name: importing torch's compiler
    to compare classes would slow every ``import metaspike``."""
    return type(err).__name__ == "FailOnRecompileLimitHit" and type(err).__module__.startswith("torch._dynamo")


def _on_meta(args: tuple[Any, ...]) -> bool:
    """Whether the first tensor among ``args`` (or inside a first list or tuple of them) is on the ``meta`` device."""
    for value in args:
        if isinstance(value, (list, tuple)) and value:
            value = value[0]
        if isinstance(value, torch.Tensor):
            return value.device.type == "meta"
    return False


def _signature(value: Any) -> Any:
    """What tells two calls' arguments apart for the compiled variants: each tensor's dtype, device, shape and
    strides, each list's or tuple's items, a number's type (numbers are graph inputs), any other object itself (a
    plan the function is specialised on)."""
    if isinstance(value, torch.Tensor):
        return value.dtype, value.device, tuple(value.shape), value.stride()
    if isinstance(value, (list, tuple)):
        return type(value), tuple(_signature(item) for item in value)
    if isinstance(value, dict):
        return tuple((key, _signature(item)) for key, item in value.items())
    if value is None or isinstance(value, (bool, int, float, str)):
        return type(value)
    return type(value), id(value)


class LazyCompiled:
    """``fn`` compiled by ``torch.compile`` on its first call (never at import), else ``fn`` itself.

    Shapes are dynamic and Python floats are graph inputs, so new sizes and values do not
    recompile; ``options`` go to the compiler. Calls on ``meta`` tensors (shape inference) run ``fn`` eagerly. If
    compiling fails (no C++ compiler, unsupported
    platform, ...), it warns once and calls ``fn`` eagerly from then on; a call past torch's limit of compiled
    variants of one function (different input counts or dtypes in one process) runs eagerly, the others stay compiled;
    arguments of the same dtypes, shapes and strides as such a call then run eagerly at once, without asking torch's
    compiler again (which costs more than the call and logs a warning each time). Used for
    MetaplasticAdam's fused step, the sign buffers of large binary layers and ``bnn.pack``.

    Example:
        >>> double = LazyCompiled(lambda x: 2 * x, "doubling")  # nothing is compiled yet
        >>> double.broken
        False
    """

    def __init__(self, fn: Callable[..., Any], what: str, options: dict[str, Any] | None = None) -> None:
        self.fn = fn
        self.what = what
        self.options = options
        self.broken = False
        self.limit_reached = False
        self.last_call_eager = False  # (whether the last call ran fn eagerly: a caller with a faster way may take it)
        self._eager_signatures: set[Any] = set()  # (the arguments past the limit of variants)
        self._compiled: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.last_call_eager = True
        if self.broken or _on_meta(args):  # (meta tensors hold no data: shapes come from fn's ops, and a compile
            return self.fn(*args, **kwargs)  # failing on them would leave every later call eager)
        signature = _signature((args, kwargs)) if self.limit_reached else None
        if signature is not None and signature in self._eager_signatures:
            return self.fn(*args, **kwargs)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=True, fullgraph=True, options=self.options)
        try:
            result = self._compiled(*args, **kwargs)
            self.last_call_eager = False
            return result
        except Exception as err:  # compilation failed before anything ran: run eagerly instead
            if _is_recompile_limit(err):  # this process compiled its variants (input counts, dtypes): new ones
                # run eagerly, the compiled ones stay in use
                if not self.limit_reached:
                    self.limit_reached = True
                    warnings.warn(f"the {self.what} has compiled torch's limit of variants in this process; new "
                                  "variants run eagerly (slower)", RuntimeWarning, stacklevel=2)
                self._eager_signatures.add(_signature((args, kwargs)))
                return self.fn(*args, **kwargs)
            self.broken = True
            result = self.fn(*args, **kwargs)  # (an error of fn itself is raised here, without the compiler's words)
            warnings.warn(
                f"torch.compile of the {self.what} failed ({type(err).__name__}: {err}); "
                "running it eagerly (slower) from now on",
                RuntimeWarning,
                stacklevel=2,
            )
            return result
