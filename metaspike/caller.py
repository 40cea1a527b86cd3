"""Where a warning points: past metaspike, bnn and torch, to the user's own line.

Example:
    >>> import warnings
    >>> def library_function():
    ...     warnings.warn("shown at the caller's line", stacklevel=user_stacklevel())
"""

from __future__ import annotations

import os
import sys

import torch

__all__ = ["LIBRARY_PATHS", "user_stacklevel"]

_PACKAGES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_PATHS = tuple(os.path.join(path, "") for path in (os.path.join(_PACKAGES, "metaspike"),
                                                          os.path.join(_PACKAGES, "bnn"),
                                                          os.path.dirname(os.path.abspath(torch.__file__))))
"""Where the library's own code lives (metaspike, bnn beside it, torch), each folder ending in a separator."""


def user_stacklevel() -> int:
    """The ``stacklevel`` (for a warning issued by this function's caller) of the first frame outside the library:
    the user's line, however deep in metaspike, bnn or torch (a module's ``__call__``, a decorator's wrapper) the
    warning is issued.

    Example:
        >>> user_stacklevel() >= 1
        True
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(LIBRARY_PATHS):
        frame, level = frame.f_back, level + 1
    return level
