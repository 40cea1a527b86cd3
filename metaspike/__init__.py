"""metaspike: metaplastic binary synapses for binarized and spiking networks that forget less.

The names below (and the subpackages, ``metaspike.snn``, ``metaspike.bayesian``, ...) are imported when first used,
so ``import metaspike`` alone imports neither torch nor the library: the ``metaspike`` command can answer Ctrl-C
while it is still starting (:mod:`metaspike.app.command`).

Example:
    >>> import torch, metaspike
    >>> net = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(784, 10)))
    >>> opt = metaspike.MetaplasticAdam(net.parameters(), lr=0.005, meta=1.35)
"""

import importlib as _importlib
import re as _re
import typing as _typing
from importlib import util as _util
from pathlib import Path as _Path

MIN_TORCH = (2, 11)
"""The oldest torch metaspike runs on: torch.compile in 2.3-2.10 drew BiMU's weight samples wrongly (a fused loop of
64-bit integer hashing and conversion to float gave zeros, then NaN), without an error."""


def torch_version_problem(found: str) -> str | None:
    """Why torch ``found`` (a version string) cannot run metaspike, or ``None`` where it can.

    Example:
        >>> torch_version_problem("2.13.0+cpu") is None, torch_version_problem("2.9.1")[:35]
        (True, 'metaspike needs torch 2.11 or newer')
    """
    numbers = tuple(int(part) for part in _re.findall(r"\d+", found)[:2])
    if len(numbers) == 2 and numbers < MIN_TORCH:
        oldest = ".".join(map(str, MIN_TORCH))
        return (f"metaspike needs torch {oldest} or newer, found torch {found}: its torch.compile draws wrong "
                f"Bayesian weight samples (pip install 'torch>={oldest}')")
    return None


def _check_torch() -> None:
    """Refuse an older torch at import, from the version file torch is built with, read without importing torch
    (``import metaspike`` imports no torch; importlib.metadata would take 25 ms to import)."""
    spec = _util.find_spec("torch")
    version_file = _Path(spec.origin).with_name("version.py") if spec and spec.origin else None
    try:
        text = version_file.read_text() if version_file else ""
    except (OSError, UnicodeDecodeError):  # (torch's own import will say what is wrong with it)
        return
    found = _re.search(r"^__version__\s*=\s*['\"]([^'\"]+)", text, _re.M)
    problem = torch_version_problem(found.group(1)) if found else None
    if problem:
        raise ImportError(problem)


_check_torch()

if _typing.TYPE_CHECKING:  # what the names are, for type checkers and editors
    from metaspike.bayesian import MESU, BiMU, bayesianize
    from metaspike.chained import ChainedOptimizer
    from metaspike.functional import consolidate
    from metaspike.optim import MetaplasticAdam, consolidates, metaplastic, param_groups
    from metaspike.population_statistics import use_population_statistics
    from metaspike.quantizers import magnitude_gate, ste_sign
    from metaspike.rules import available_rules, get_rule, register_rule
    from metaspike.synapse import binarize, binarized_once, hidden_weights, is_hidden_weight

__version__ = "0.2.0"

_HOMES = {
    "metaspike.bayesian": ("BiMU", "MESU", "bayesianize"),
    "metaspike.chained": ("ChainedOptimizer",),
    "metaspike.functional": ("consolidate",),
    "metaspike.optim": ("MetaplasticAdam", "consolidates", "metaplastic", "param_groups"),
    "metaspike.population_statistics": ("use_population_statistics",),
    "metaspike.quantizers": ("magnitude_gate", "ste_sign"),
    "metaspike.rules": ("available_rules", "get_rule", "register_rule"),
    "metaspike.synapse": ("binarize", "binarized_once", "hidden_weights", "is_hidden_weight"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "MetaplasticAdam", "metaplastic", "param_groups", "consolidates", "binarize", "binarized_once",
    "hidden_weights", "is_hidden_weight", "ste_sign", "magnitude_gate", "consolidate", "get_rule", "register_rule",
    "available_rules", "use_population_statistics", "bayesianize", "MESU", "BiMU", "ChainedOptimizer", "__version__",
]


def __getattr__(name: str) -> _typing.Any:
    """A public name from its module, or a subpackage, imported on first use and kept."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _HOME:
        value = getattr(_importlib.import_module(_HOME[name]), name)
    else:
        try:
            value = _importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":  # the subpackage exists and lacks something it imports
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | {name for name in globals() if not name.startswith("_")})
