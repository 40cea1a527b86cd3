"""Argument predicates shared by every layer: one meaning of "a finite number" and "a whole number".

``bool`` is an ``int`` to Python but never a number here (``True`` as a learning rate or a count is a
mistake); numpy scalars count as numbers (they are ``numbers.Real`` / ``numbers.Integral``).
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import re
import reprlib
import traceback
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["registered_name", "check_keys_kept", "listed", "is_number", "is_finite_number", "is_whole", "number_in",
           "finite_number", "FLOAT32_MAX", "FLOAT32_TINY",
           "MAX_SEED", "check_seed", "check_device", "state_dict_groups", "check_eps_holds", "ModelError",
           "raised_at", "defined_at", "in_metaspike", "is_nan", "first_line", "shown", "check_generator_state",
           "lacking_methods", "unknown_name", "check_no_misspelled_setting", "nan_or_infinite",
           "stored_values"]


class TrainingDiverged(RuntimeError):
    """The loss, or a gradient, became NaN or infinite; training stopped before a step on it (the weights may already
    hold the NaN or infinite values that made it so: the last step before it produced them); or an epoch was refused
    before it began, a plugin's penalty too stiff for SGD to follow (:mod:`metaspike.penalty_stability`). Raised by
    :func:`metaspike.training.train_epoch` and by the MESU and BiMU steps.

    Example:
        >>> issubclass(TrainingDiverged, RuntimeError)
        True
    """


class ModelError(ValueError):
    """A model that cannot work whatever data it is given (a module keeping its state between calls, ...): what a
    check of the data against the model passes on as it is, instead of blaming the data's shape.

    Example:
        >>> issubclass(ModelError, ValueError)
        True
    """

FLOAT32_MAX = 3.4028234663852886e38
"""float32's largest number (``torch.finfo(torch.float32).max``): the bound of a setting that multiplies float32
tensors, beyond which it would turn infinite."""
FLOAT32_TINY = 1.1754943508222875e-38
"""float32's smallest normal number (``torch.finfo(torch.float32).tiny``)."""

MAX_SEED = 2**64 - 1
"""The largest seed: torch's and numpy's seeds are 64-bit."""


def lacking_methods(owner: Any, names: Sequence[str]) -> list[str]:
    """The names of ``names`` that ``owner`` has no callable for (a plugin's hooks, a scheduler's methods).

    Example:
        >>> lacking_methods([], ("append", "step"))
        ['step']
    """
    return [name for name in names if not callable(getattr(owner, name, None))]


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (not a ``bool``), finite or not.

    Example:
        >>> is_number(2.5), is_number(float("inf")), is_number(True), is_number("3")
        (True, True, False, False)
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite real number (not a ``bool``, NaN or ±inf, nor an integer beyond float's range:
    JSON holds integers of any length, ``"lr": 10**400`` among them, which every float computation would overflow).

    Example:
        >>> is_finite_number(0), is_finite_number(float("nan")), is_finite_number(False), is_finite_number(10**400)
        (True, False, False, False)
    """
    if not is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # (math converts to float first: an integer beyond its range)
        return False


def is_nan(value: Any) -> bool:
    """Whether ``value`` is a NaN number (a result file's "not measured"); an integer never is, however large (which
    ``math.isnan`` would overflow on).

    Example:
        >>> is_nan(float("nan")), is_nan(None), is_nan(10**400), is_nan("nan")
        (True, False, False, False)
    """
    return is_number(value) and value != value  # (NaN is the one number unequal to itself: no conversion needed)


#: How :func:`shown` writes a value: a few items of each container, a few levels deep, each text cut short.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 3, 60, 60, 60


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its class's name where it has none: an error quoted in one line.

    Example:
        >>> first_line(RuntimeError("mat1 and mat2 shapes cannot be multiplied\\nmore")), first_line(KeyError())
        ('mat1 and mat2 shapes cannot be multiplied', 'KeyError')
    """
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def shown(value: Any) -> str:
    """``value``'s ``repr`` bounded in depth and length, for an error message about a value read from a file (whose
    plain ``repr`` may take as long as the file is, raise ``RecursionError`` when nested 100,000 deep, or raise
    ``ValueError`` for an integer of more than 4300 digits).

    Example:
        >>> shown([[[[[1]]]]]), len(shown("x" * 10**6)), shown(10**5000)
        ('[[[[...]]]]', 60, '<an integer of 16610 bits>')
    """
    try:
        return _SHOWN.repr(value)
    except ValueError:  # (an integer beyond Python's digit limit: reprlib converts it whole before it cuts)
        return f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<a {type(value).__name__}>"


def listed(names: Sequence[Any], first: int = 6) -> str:
    """The first ``first`` of ``names`` (each as :func:`shown` gives it), and how many more: a list in an error
    message stays one short line however long the list read from a file is.

    Example:
        >>> listed(["a", "b"]), listed([f"t{i}" for i in range(20)], 3)
        ('a, b', 't0, t1, t2 and 17 more')
    """
    names = list(names)
    shown_names = ", ".join(name if isinstance(name, str) and len(name) <= 60 else shown(name)
                            for name in names[:first])
    return shown_names + (f" and {len(names) - first} more" if len(names) > first else "")


def unknown_name(what: str, name: Any, available: Iterable[str]) -> str:
    """The message for a ``name`` that is none of ``available``: what it was taken for, the names there are, and the
    closest of them where one is close (a typo).

    Example:
        >>> unknown_name("dataset", "mnist5kk", ["digits", "mnist", "mnist5k"])
        "unknown dataset 'mnist5kk'; available: digits, mnist, mnist5k; did you mean 'mnist5k'?"
    """
    available = list(available)
    near = _closest(name, available) if isinstance(name, str) else []
    return (f"unknown {what} {shown(name)}; available: {', '.join(available)}"
            + (f"; did you mean {near[0]!r}?" if near else ""))


def _closest(name: str, available: list[str]) -> list[str]:
    """The one name of ``available`` that ``name`` differs from only in case, else the closest by difflib (which
    compares case-sensitively: ``'Atan'`` came nearer ``'tanh'`` than ``'atan'``); empty where none is close."""
    same_but_case = [known for known in available if known.lower() == name.lower()]
    return same_but_case[:1] or difflib.get_close_matches(name, available, n=1)


def check_no_misspelled_setting(owner: str, group: dict[str, Any], settings: Iterable[str]) -> None:
    """One ``ValueError`` where a param ``group`` holds a key that is none of ``owner``'s ``settings`` but a misspelling
    of one (``lrmax`` beside ``lr_max``), which then keeps its default without a word: the same but for case, or one
    letter added, dropped, changed or two swapped in a key of at least 4 letters (closer matching took the keys
    torch's schedulers add, ``max_momentum`` beside ``momentum``, and short keys of one's own such as ``lr0``). Other
    keys pass, as torch.optim lets a group carry them (a ``name`` of one's own, a scheduler's ``initial_lr``).

    Example:
        >>> check_no_misspelled_setting("BiMU", {"params": [], "name": "readout"}, ["lr", "lr_max"])
        >>> check_no_misspelled_setting("BiMU", {"params": [], "lrmax": 0.01}, ["lr", "lr_max"])
        Traceback (most recent call last):
        ...
        ValueError: a param group of BiMU sets 'lrmax', which is not one of its settings: did you mean 'lr_max'? (BiMU's settings: lr, lr_max)
    """
    settings = [name for name in settings if name != "params"]
    for key in group:
        if not isinstance(key, str) or key == "params" or key in settings:
            continue
        meant = next((name for name in settings if _misspelled(key.lower(), name.lower())), None)
        if meant is not None:
            raise ValueError(f"a param group of {owner} sets {key!r}, which is not one of its settings: did you mean "
                             f"{meant!r}? ({owner}'s settings: {', '.join(sorted(settings))})")


def _misspelled(key: str, name: str) -> bool:
    """Whether ``key`` is ``name`` or, for a key of at least 4 letters, one edit from it: a letter added, dropped or
    changed, or two neighbours swapped."""
    if key == name:
        return True
    if len(key) < 4 or abs(len(key) - len(name)) > 1:
        return False
    if len(key) == len(name):
        differ = [i for i, (a, b) in enumerate(zip(key, name)) if a != b]
        return len(differ) == 1 or (len(differ) == 2 and differ[1] == differ[0] + 1
                                    and key[differ[0]] == name[differ[1]] and key[differ[1]] == name[differ[0]])
    shorter, longer = sorted((key, name), key=len)
    return any(longer[:i] + longer[i + 1:] == shorter for i in range(len(longer)))


def is_whole(value: Any, low: int) -> bool:
    """Whether ``value`` is an integer (not a ``bool`` or a float) ``>= low``.

    Example:
        >>> is_whole(3, 1), is_whole(0, 1), is_whole(3.0, 1), is_whole(True, 0)
        (True, False, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


NAME_CHARACTERS = 64
"""The longest name a rule or model may be registered under (:func:`registered_name`)."""


def registered_name(what: str, name: Any, note: str = "") -> str:
    """``name`` for a registered rule or model (named in run folders, so never a path): letters, digits, ``_``,
    ``.`` or ``-``, from a letter or digit, at most :data:`NAME_CHARACTERS` of them (a run folder's name holds it
    beside the dataset and ``m`` values); else a ``ValueError`` naming ``what`` and ``note``.

    Example:
        >>> registered_name("a rule's name", "my-rule.v2")
        'my-rule.v2'
        >>> registered_name("a rule's name", "x/../escaped")
        Traceback (most recent call last):
        ...
        ValueError: a rule's name must be 1 to 64 letters, digits, '_', '.' or '-' (it names run folders), got 'x/../escaped'
    """
    if not isinstance(name, str) or not re.fullmatch(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{NAME_CHARACTERS - 1}}}", name):
        raise ValueError(f"{what} must be 1 to {NAME_CHARACTERS} letters, digits, '_', '.' or '-' "
                         f"({note or 'it names run folders'}), got {shown(name)}")
    return name


def number_in(name: str, value: Any, low: float, high: float | None = None, *, open_low: bool = False,
              open_high: bool = False, note: str = "") -> float:
    """``value`` as a float if it is a finite number from ``low`` (excluded when ``open_low``) to ``high`` (no bound
    when ``None``; excluded when ``open_high``), else a ``ValueError`` naming ``name``, the accepted range and
    ``note`` (why the range is what it is).

    Example:
        >>> number_in("gamma", 0.5, 0, 1)
        0.5
        >>> number_in("beta", 1.0, 0, 1, open_high=True)
        Traceback (most recent call last):
        ...
        ValueError: beta must be a finite number in [0, 1), got 1.0
        >>> number_in("threshold", 0, 0.01)
        Traceback (most recent call last):
        ...
        ValueError: threshold must be a finite number >= 0.01, got 0
    """
    ok = is_finite_number(value) and (value > low if open_low else value >= low)
    if high is not None:
        ok = ok and (value < high if open_high else value <= high)
    if not ok:
        if high is None:
            accepted = f"{'>' if open_low else '>='} {low:g}"
        else:
            accepted = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        given = (f" (a {type(value).__name__}: give a Python number, its .item())"  # (a tensor, an array)
                 if not is_number(value) and hasattr(value, "item") else "")
        raise ValueError(f"{name} must be a finite number {accepted}{' ' + note if note else ''}, got "
                         f"{shown(value)}{given}")
    return float(value)


def finite_number(name: str, value: Any, *, positive: bool) -> float:
    """``value`` as a float if it is a finite number ``> 0`` (``positive``) or ``>= 0``, else a ``ValueError``
    naming ``name`` and the accepted range.

    Example:
        >>> finite_number("width", 2, positive=True)
        2.0
        >>> finite_number("width", 0, positive=True)
        Traceback (most recent call last):
        ...
        ValueError: width must be a finite number > 0, got 0
    """
    return number_in(name, value, 0.0, open_low=positive)


def check_seed(name: str, value: Any) -> int:
    """``value`` as an int if it is a whole number in ``0..MAX_SEED``, else a ``ValueError`` naming ``name``.

    Example:
        >>> check_seed("seed", 3)
        3
        >>> check_seed("seed", 1.5)
        Traceback (most recent call last):
        ...
        ValueError: seed must be an integer in 0..18446744073709551615 (seeds are 64-bit), got 1.5
    """
    if not (is_whole(value, 0) and value <= MAX_SEED):
        raise ValueError(f"{name} must be an integer in 0..{MAX_SEED} (seeds are 64-bit), got {shown(value)}")
    return int(value)


def state_dict_groups(state_dict: Any) -> list[dict[str, Any]]:
    """The param groups of an optimizer's state dict (a file from outside), checked to be a list of dicts.

    Example:
        >>> state_dict_groups({"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]})
        [{'lr': 0.1, 'params': [0]}]
    """
    groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        raise ValueError("state_dict must be an optimizer's state dict, with a list of param groups")
    return groups


def check_generator_state(state: Any, what: str, device: Any = None) -> None:
    """A ``ValueError`` naming ``what`` unless ``state`` is a state torch's CPU generator takes (``torch.Generator``'s
    ``set_state``, ``torch.set_rng_state``), or the generator of ``device`` where one is given (a CUDA generator's
    state is another size): tried on a scratch generator, since a tensor of the right size and dtype read from a file
    may still hold no valid state, which torch refuses with a ``RuntimeError`` only when it is set (after the rest of a
    checkpoint was put in place).

    Example:
        >>> import torch
        >>> check_generator_state(torch.Generator().get_state(), "generator")
        >>> check_generator_state(torch.full_like(torch.Generator().get_state(), 255), "the checkpoint's generator")
        Traceback (most recent call last):
        ...
        ValueError: the checkpoint's generator is not a state of torch's generator
    """
    import torch

    try:
        torch.Generator(*([] if device is None else [device])).set_state(state)
    except (RuntimeError, TypeError):
        on = "" if device is None else f" on {torch.device(device).type}"
        raise ValueError(f"{what} is not a state of torch's generator{on}") from None


def stored_values(tensor: Any) -> Any:
    """The values ``tensor`` stores, detached, as a real strided tensor the elementwise kernels take: a sparse tensor's
    nonzeros, a complex one's real and imaginary parts (of its logical value), a float8 one widened to float32 (which
    keeps NaN, infinities and signs).

    Example:
        >>> import torch
        >>> stored_values(torch.tensor([0.0, -2.0]).to_sparse()).tolist()
        [-2.0]
        >>> stored_values(torch.tensor([1 - 2j])).tolist()
        [[1.0, -2.0]]
    """
    import torch

    values = tensor.detach()
    if values.layout != torch.strided:
        values = values.coalesce().values() if values.is_sparse else values.values()
    if values.is_complex():
        return torch.view_as_real(values.resolve_conj())
    return values.float() if values.is_floating_point() and values.element_size() == 1 else values


def nan_or_infinite(tensor: Any) -> tuple[bool, bool]:
    """Whether ``tensor`` holds NaN, and else whether it holds an infinite value, from one ``aminmax`` pass over its
    stored values (NaN propagates; 3 ms for 4096 x 4096 on one thread, where ``isfinite(t).all()`` took 52 and
    ``isinf(t).any()`` 17): a sparse tensor's nonzeros, a complex one's parts, a float8 one widened; a lazy parameter
    not yet made and a meta tensor hold none.

    Example:
        >>> import torch
        >>> nan_or_infinite(torch.tensor([1.0, -math.inf])), nan_or_infinite(torch.tensor([math.inf, math.nan]))
        ((False, True), (True, False))
    """
    import torch
    from torch.nn.parameter import is_lazy

    if is_lazy(tensor) or tensor.device.type == "meta":
        return False, False
    values = stored_values(tensor)
    if not values.is_floating_point() or values.numel() == 0:
        return False, False
    low, high = (float(v) for v in torch.aminmax(values))
    nan = math.isnan(low) or math.isnan(high)
    return nan, not nan and (math.isinf(low) or math.isinf(high))


def check_keys_kept(group: dict[str, Any], keys: Iterable[str]) -> None:
    """One ``ValueError`` naming the first of ``keys`` that an optimizer's param ``group`` lost (deleted by a hand
    since the group was added, where the step would stop at a bare ``KeyError``).

    Example:
        >>> check_keys_kept({"params": [], "lr": 0.1}, ("lr",))
        >>> check_keys_kept({"params": []}, ("lr",))
        Traceback (most recent call last):
        ...
        ValueError: a param group has no 'lr' setting (deleted by a hand?); set it again, e.g. group['lr'] = optimizer.defaults['lr']
    """
    lost = [key for key in keys if key not in group]
    if lost:
        raise ValueError(f"a param group has no {lost[0]!r} setting (deleted by a hand?); set it again, "
                         f"e.g. group[{lost[0]!r}] = optimizer.defaults[{lost[0]!r}]")


def check_eps_holds(group: dict[str, Any]) -> None:
    """A ``ValueError`` where an optimizer param group's ``eps`` is 0 in the dtype of its parameters (Adam's 1e-8
    in float16): a weight whose gradient moments are both 0 would get the update 0/0, NaN.

    Example:
        >>> import torch
        >>> check_eps_holds({"eps": 1e-8, "params": [torch.zeros(2, dtype=torch.float16)]})
        Traceback (most recent call last):
        ...
        ValueError: the optimizer's eps 1e-08 is 0 in torch.float16, the dtype of its parameters: its updates would turn NaN; train a float32 or bfloat16 model (for float16 arithmetic, torch.autocast over a float32 model), or give an eps that dtype holds
    """
    import torch

    eps = group.get("eps")
    if not is_number(eps) or eps <= 0:
        return
    dtypes = {p.dtype for p in group.get("params", ()) if isinstance(p, torch.Tensor) and p.is_floating_point()}
    vanishing = sorted(str(d) for d in dtypes if torch.tensor(eps, dtype=d) == 0)
    if vanishing:
        raise ValueError(f"the optimizer's eps {eps:g} is 0 in {', '.join(vanishing)}, the dtype of its parameters: "
                         "its updates would turn NaN; train a float32 or bfloat16 model (for float16 arithmetic, "
                         "torch.autocast over a float32 model), or give an eps that dtype holds")


def check_device(device: Any, name: str = "device", meta_allowed: bool = False) -> Any:
    """``device`` as a ``torch.device`` if it names one this machine has (or ``meta``, for shapes only, where
    ``meta_allowed``), else a ``ValueError`` naming ``name`` (torch itself fails later, deep inside ``.to()``, on a
    CUDA device a CPU-only build lacks).

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} must name a torch device ('cpu', 'cuda', 'cuda:1', ...), got {device!r}") from None
    if parsed.type == "meta" and not meta_allowed:
        raise ValueError(f"{name} 'meta' holds shapes without values, nothing can be trained or measured on it; use "
                         "'cpu' or 'cuda'")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} {device!r}: CUDA is not available on this machine (torch {torch.__version__})")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"{name} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return parsed


def raised_at(err: BaseException, file: str | None = None) -> str:
    """Where ``err`` was raised, as ``"name.py line N"``: a ``SyntaxError``'s own place, else the innermost frame of its
    traceback (only frames of ``file`` when given); ``""`` when none is known. Used to name the line of a user's
    module or builder that failed, in a one-line error.

    Example:
        >>> try:
        ...     int("x")
        ... except ValueError as err:
        ...     raised_at(err).startswith("<doctest")
        True
    """
    if isinstance(err, SyntaxError) and err.filename and err.lineno:
        return f"{Path(err.filename).name} line {err.lineno}"
    frames = [f for f in traceback.extract_tb(err.__traceback__) if file is None or Path(f.filename) == Path(file)]
    return f"{Path(frames[-1].filename).name} line {frames[-1].lineno}" if frames else ""


def defined_at(function: Any) -> str:
    """Where ``function`` (a method too) is defined, as ``"name.py line N"`` (:func:`raised_at`'s form); ``""`` for one
    without Python code. Used to name a user's builder or rule that is wrong before it ran.

    Example:
        >>> defined_at(defined_at).startswith("checks.py line ")
        True
    """
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    return f"{Path(code.co_filename).name} line {code.co_firstlineno}" if code is not None else ""


_PACKAGE = Path(__file__).resolve().parent


def in_metaspike(filename: str) -> bool:
    """Whether the source file ``filename`` is metaspike's own (whose errors are written as one line already), not a
    user's module or another library.

    Example:
        >>> in_metaspike(__file__), in_metaspike("mylab.py")
        (True, False)
    """
    return _in_package(os.path.abspath(filename))


@lru_cache(maxsize=4096)
def _in_package(path: str) -> bool:
    """Whether the absolute ``path`` resolves into metaspike's package (asked at every optimizer step of a rule, where
    resolving the path each time cost 0.05 ms)."""
    return Path(path).resolve().is_relative_to(_PACKAGE)
