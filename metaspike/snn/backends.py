"""Optional spiking backends (snnTorch, Norse), surrogate gradients by name, and state reset.

snnTorch and Norse are imported only when a feature needs them; without them the feature raises
``ImportError`` naming the pip command. Norse is imported as ``norse.torch`` only (it never
imports torchvision at that level).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor, nn

from metaspike.checks import FLOAT32_MAX, number_in, unknown_name
from metaspike.snn.spikes import surrogate_spike

__all__ = [
    "require_snntorch", "require_norse", "available_surrogates", "surrogate", "surrogate_parameters", "norse_method",
    "reset_states",
    "state_reset",
]

SpikeFunction = Callable[[Tensor], Tensor]

# (Norse's metadata asks for torchvision, which need not import beside the torch installed: leave its dependencies)
_PIP = {"snntorch": "pip install snntorch", "norse": "pip install --no-deps norse"}
#: What installs a module the backends import but pip's --no-deps left out (the snn extra has them all).
_DEPENDENCY_PIP = {"nir": "nir nirtorch", "nirtorch": "nir nirtorch"}


def _require(module: str, package: str) -> ModuleType:
    """``module``, or one ImportError with the pip command that installs what is missing: the package itself, or a
    module it imports (Norse installed with ``--no-deps`` lacks nir and nirtorch)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = (getattr(err, "name", None) or "").split(".")[0]
        if missing and missing != package.split(".")[0] and importlib.util.find_spec(package) is not None:
            raise ImportError(f"{package} is installed but cannot import {missing!r}, which it needs: pip install "
                              f"{_DEPENDENCY_PIP.get(missing, missing)} ({err})") from None
        raise ImportError(f"this feature needs {package}: {_PIP[package]} ({err})") from None


def require_snntorch() -> ModuleType:
    """The ``snntorch`` module, or ``ImportError`` saying ``pip install snntorch``."""
    return _require("snntorch", "snntorch")


def require_norse() -> ModuleType:
    """The ``norse.torch`` module, or ``ImportError`` saying ``pip install --no-deps norse``."""
    return _require("norse.torch", "norse")


def _triangular_gradient(x: Tensor, grad: Tensor) -> Tensor:
    """``grad·max(0, 1 − |x|)``. (snnTorch 0.9's ``surrogate.triangular`` gives ``+1`` below the threshold and ``−1``
    at and above it: a model trained with it reached 41 % on digits where atan reached 82 %.)"""
    return grad * (1 - x.abs()).clamp(min=0)


SIGMOID_SLOPE = 25.0
"""Default ``k`` of the sigmoid surrogate ``d/dx sigmoid(k·x)`` (snnTorch's default)."""


def _sigmoid_gradient(x: Tensor, grad: Tensor, slope: float) -> Tensor:
    """``grad·k·σ(kx)·(1 − σ(kx))``, finite for every ``x``. (snnTorch 1.0's ``surrogate.sigmoid`` forms
    ``k·e^{−kx} / (e^{−kx} + 1)²``, whose square overflows float32 below ``x ≈ −3.5`` at ``k = 25``: NaN gradients,
    which a binarized Leaky network on digits met at its first step and never left chance.)"""
    s = torch.sigmoid(slope * x)
    return grad * (slope * s * (1 - s))


# name -> the spike function, from snntorch.surrogate and the surrogate's parameters; metaspike's own: name -> its
# surrogate gradient; Norse's: name -> its threshold method
_SNNTORCH_SURROGATES: dict[str, Callable[..., SpikeFunction]] = {
    "fast_sigmoid": lambda s, slope: s.fast_sigmoid(slope=slope),
    "atan": lambda s, alpha: s.atan(alpha=alpha),
    "straight_through": lambda s: s.straight_through_estimator(),
}
_OWN_SURROGATES = {"sigmoid": _sigmoid_gradient, "triangular": _triangular_gradient}  # (snnTorch's ones fail)
_NORSE_SURROGATES = {"superspike": "super", "tanh": "tanh", "triangle": "triangle"}
#: name -> {parameter: default}: what each surrogate takes, under the name its own library gives it
_SURROGATE_PARAMETERS: dict[str, dict[str, float]] = {
    "fast_sigmoid": {"slope": 25.0}, "atan": {"alpha": 2.0}, "straight_through": {},
    "sigmoid": {"slope": SIGMOID_SLOPE}, "triangular": {},
    "superspike": {}, "tanh": {"alpha": 100.0}, "triangle": {"alpha": 0.3},
}
#: The alpha Norse's threshold is given for SuperSpike, whose gradient ``1/(|x| + 1)²`` ignores it (Norse 1.1)
_SUPERSPIKE_ALPHA = 100.0


def available_surrogates() -> list[str]:
    """Surrogate-gradient names: snnTorch's and Norse's.

    Example:
        >>> available_surrogates()
        ['atan', 'fast_sigmoid', 'sigmoid', 'straight_through', 'superspike', 'tanh', 'triangle', 'triangular']
    """
    return sorted(_SURROGATE_PARAMETERS)


def _check_surrogate(name: str) -> None:
    if name not in available_surrogates():
        raise ValueError(unknown_name("surrogate", name, available_surrogates()))


def surrogate_parameters(name: str, **overrides: float) -> dict[str, float]:
    """The parameters of surrogate ``name``: its defaults with ``overrides`` in place, each checked to be a number
    ``> 0`` up to float32's largest (a larger one is infinite in a float32 model: NaN gradients); one ``ValueError``
    for a name the surrogate does not take.

    Example:
        >>> surrogate_parameters("fast_sigmoid", slope=10)
        {'slope': 10.0}
        >>> surrogate_parameters("atan")
        {'alpha': 2.0}
    """
    _check_surrogate(name)
    accepted = _SURROGATE_PARAMETERS[name]
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        takes = f"takes {', '.join(accepted)}" if accepted else "takes no parameters"
        raise ValueError(f"surrogate {name!r} {takes}, got {', '.join(unknown)}")
    return {key: number_in(f"the {key} of surrogate {name!r}", overrides.get(key, default), 0.0, FLOAT32_MAX,
                           open_low=True) for key, default in accepted.items()}


def surrogate(name: str, **parameters: float) -> SpikeFunction:
    """Spike function ``x -> heaviside(x)`` whose gradient is the named surrogate, shaped by ``parameters``.

    ``"atan"`` (``alpha``, default 2), ``"fast_sigmoid"`` (``slope``, 25) and ``"straight_through"`` come from
    ``snntorch.surrogate``; ``"sigmoid"`` (``d/dx sigmoid(slope·x)``, ``slope`` 25) and ``"triangular"``
    (``max(0, 1 − |x|)``) are metaspike's own, since snnTorch's give NaN or wrong-signed gradients; Norse names come
    from ``norse.torch.functional`` (``alpha``: ``"tanh"`` 100, the slope of ``tanh(alpha·x)``; ``"triangle"`` 0.3, the
    height of ``alpha·max(0, 1 − |x|)``; ``"superspike"`` takes none, since Norse's SuperSpike gradient
    ``1/(|x| + 1)²`` ignores its alpha).
    Usable as snnTorch's ``spike_grad`` or in plain torch. The spikes have the
    input's dtype (snnTorch's own functions return float32 spikes whatever the input, which a model moved to float64
    then fails on; so does an snnTorch neuron built without ``spike_grad``, whose default is snnTorch's arctangent).

    Example:
        >>> x = torch.tensor([-0.5, 0.5], requires_grad=True)
        >>> spikes = surrogate("sigmoid", slope=4.0)(x); spikes
        tensor([0., 1.], grad_fn=<...>)
        >>> spikes.sum().backward(); x.grad  # 4·σ(±2)·(1 − σ(±2))
        tensor([0.4200, 0.4200])
    """
    values = surrogate_parameters(name, **parameters)
    if name in _OWN_SURROGATES:
        gradient = _OWN_SURROGATES[name]
        return lambda x: surrogate_spike(x, gradient, *values.values())
    if name in _SNNTORCH_SURROGATES:
        module = importlib.import_module(require_snntorch().__name__ + ".surrogate")
        spike = _SNNTORCH_SURROGATES[name](module, *values.values())
        return lambda x: spike(x).to(x.dtype)
    threshold = importlib.import_module(require_norse().__name__ + ".functional.threshold").threshold
    method, alpha = _NORSE_SURROGATES[name], values.get("alpha", _SUPERSPIKE_ALPHA)
    return lambda x: threshold(x, method, alpha)


def norse_method(name: str, **parameters: float) -> tuple[str, float]:
    """Norse's ``(method, alpha)`` for a Norse surrogate name and its ``parameters``
    (:func:`surrogate_parameters`; ``ValueError`` for any other name or a parameter it does not take).

    Example:
        >>> norse_method("superspike")
        ('super', 100.0)
        >>> norse_method("tanh", alpha=20)
        ('tanh', 20.0)
    """
    _check_surrogate(name)
    if name not in _NORSE_SURROGATES:
        raise ValueError(f"Norse neurons take surrogate {', '.join(sorted(_NORSE_SURROGATES))}, got {name!r}")
    return _NORSE_SURROGATES[name], surrogate_parameters(name, **parameters).get("alpha", _SUPERSPIKE_ALPHA)


def reset_states(model: nn.Module) -> None:
    """Zero the hidden state of every neuron in ``model`` (and only in ``model``).

    Walks ``model.modules()``: snnTorch neurons get ``reset_mem()``, modules with a
    ``reset_state()`` method (e.g. :class:`metaspike.snn.SelfRecurrentLIF`) get that. Norse keeps
    state outside its modules, so it needs nothing here. snnTorch's class-wide registry
    (``snntorch.utils.reset``) is never used, so two models never reset each other.

    Example:
        >>> from metaspike.snn import SelfRecurrentLIF
        >>> layer = SelfRecurrentLIF(2); _ = layer(Tensor([[2.0, 0.0]]))
        >>> reset_states(nn.Sequential(layer)); layer.v is None
        True
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"reset_states takes a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        reset = state_reset(module)
        if reset is not None:
            reset()


def state_reset(module: nn.Module) -> Callable[[], None] | None:
    """What :func:`reset_states` calls to reset ``module``'s hidden state: its ``reset_state()`` method, or a snnTorch
    neuron's ``reset_mem()``; ``None`` for a module it leaves alone.

    Example:
        >>> from metaspike.snn import SelfRecurrentLIF
        >>> state_reset(SelfRecurrentLIF(2)) is not None, state_reset(nn.Linear(2, 2))
        (True, None)
    """
    if callable(getattr(module, "reset_state", None)):
        return module.reset_state
    snntorch = sys.modules.get("snntorch")
    if snntorch is not None and isinstance(module, snntorch.SpikingNeuron):
        return module.reset_mem
    return None
