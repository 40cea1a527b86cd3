"""Functions compiled by ``torch.compile`` on first use, with an eager fallback."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["LazyCompiled"]


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


class LazyCompiled:
    """``fn`` compiled by ``torch.compile`` on its first call (never at import), else ``fn`` itself.

    Shapes are dynamic and Python floats are graph inputs, so new sizes and values do not
    recompile; ``options`` go to the compiler. Calls on ``meta`` tensors (shape inference) run ``fn`` eagerly. If
    compiling fails (no C++ compiler, unsupported
    platform, ...), it warns once and calls ``fn`` eagerly from then on; a call past torch's limit of compiled
    variants of one function (different input counts or dtypes in one process) runs eagerly, the others stay compiled. Used for
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
        self._compiled: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.broken or _on_meta(args):  # (meta tensors hold no data: shapes come from fn's ops, and a compile
            return self.fn(*args, **kwargs)  # failing on them would leave every later call eager)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=True, fullgraph=True, options=self.options)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as err:  # compilation failed before anything ran: run eagerly instead
            if _is_recompile_limit(err):  # this process compiled its variants (input counts, dtypes): new ones
                # run eagerly, the compiled ones stay in use
                if not self.limit_reached:
                    self.limit_reached = True
                    warnings.warn(f"the {self.what} has compiled torch's limit of variants in this process; new "
                                  "variants run eagerly (slower)", RuntimeWarning, stacklevel=2)
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
