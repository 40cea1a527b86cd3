"""Functions compiled by ``torch.compile`` on first use, with an eager fallback."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["LazyCompiled"]


class LazyCompiled:
    """``fn`` compiled by ``torch.compile`` on its first call (never at import), else ``fn`` itself.

    Shapes are dynamic and Python floats are graph inputs, so new sizes and values do not
    recompile; ``options`` go to the compiler. If compiling fails (no C++ compiler, unsupported
    platform, ...), it warns once and calls ``fn`` eagerly from then on. Used for
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
        self._compiled: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.broken:
            return self.fn(*args, **kwargs)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=True, fullgraph=True, options=self.options)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as err:  # compilation failed before anything ran: run eagerly instead
            self.broken = True
            warnings.warn(
                f"torch.compile of the {self.what} failed ({type(err).__name__}: {err}); "
                "running it eagerly (slower) from now on",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.fn(*args, **kwargs)
