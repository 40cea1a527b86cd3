"""Work a run directory does once per part of a run's results, not once per write.

A long run's results grow by appending (a histogram snapshot, a row of the accuracy matrix, a curves row per task or
epoch), and every checkpoint and results file holds them all: checking, summing and formatting all of them at every
write made a 200-task stream spend 95 % of its time writing. A :class:`PartMemo` keeps, for each part (a list, tuple
or dict of plain values) of the last write, a copy of it and what was made of it (its text in a file, its share of a
checkpoint's checksum), and gives that back while the part is the same object and still equal to its copy: each
write formats the new parts only, and compares the others with their copies (in C, without a Python step per value).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch

__all__ = ["PLAIN_VALUES", "PartMemo", "is_plain"]

#: What ``torch.load(weights_only=True)`` reads back besides tensors and the lists, tuples and dicts of them: these
#: types exactly, not their subclasses (numpy's float64, a str enum).
PLAIN_VALUES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def is_plain(value: Any) -> bool:
    """Whether ``value`` is a plain value (:data:`PLAIN_VALUES`) or a dict, list or tuple of them at any depth: no
    tensor, no other object.

    Example:
        >>> is_plain({"edges": [0.5, 1.0], "shape": (4, 3)}), is_plain([torch.zeros(1)])
        (True, False)
    """
    if type(value) in PLAIN_VALUES:  # (exactly: numpy's float64 is a float that torch.load(weights_only=True) refuses)
        return True
    if type(value) in (dict, OrderedDict):
        return all(is_plain(key) and is_plain(item) for key, item in value.items())
    if type(value) in (list, tuple):
        return all(map(is_plain, value))
    return False


def _same(kept: Any, part: Any) -> bool:
    """Whether ``part`` still equals the copy ``kept`` of it (Python's ``==``: a value changed in place to an equal
    one of another type, ``1`` for ``1.0``, is not seen; a run never changes a result it has appended)."""
    try:
        return bool(kept == part)
    except Exception:  # (a tensor or array put in since: no plain part any more)
        return False


class PartMemo:
    """What was made of each plain part of the last write (see the module docs), kept while the part is unchanged.

    :meth:`get` gives back what :meth:`put` stored for ``part`` under the same ``key`` (where it sits: its place in
    a checksum, its row number in a file) while ``part`` is the same object and equal to the copy made then; anything
    else is ``None``, and the caller makes it anew. :meth:`forget_unused` (after each write) drops the parts that
    write did not use, so the memo holds one write's parts: the copies cost about the memory of the results, and what
    was made of them at most ``max_bytes`` (by the sizes :meth:`put` is told; ``None``: no bound), past which a new
    part is made anew at every write.

    Example:
        >>> memo, row = PartMemo(), [90.0, 85.5]
        >>> memo.put(row, 1, "1,90.0,85.5"); memo.forget_unused()
        >>> memo.get(row, 1), memo.get(row, 2)
        ('1,90.0,85.5', None)
        >>> row[1] = 80.0
        >>> memo.get(row, 1) is None
        True
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self._kept: dict[int, tuple[Any, Any, Any, Any, int]] = {}  # id -> (part, copy, key, what was made, size)
        self._used: dict[int, tuple[Any, Any, Any, Any, int]] = {}
        self._used_bytes = 0

    def _entry(self, part: Any) -> tuple[Any, Any, Any, Any, int] | None:
        """The entry of ``part`` (the same object, still equal to its copy), or ``None``."""
        entry = self._used.get(id(part)) or self._kept.get(id(part))
        return entry if entry is not None and entry[0] is part and _same(entry[1], part) else None

    def get(self, part: Any, key: Any) -> Any | None:
        """What :meth:`put` stored for ``part`` under ``key``, while ``part`` is unchanged; else ``None``."""
        entry = self._entry(part)
        if entry is None or entry[2] != key:
            return None
        if id(part) not in self._used:
            self._used[id(part)] = entry
            self._used_bytes += entry[4]
        return entry[3]

    def known(self, part: Any) -> bool:
        """Whether ``part`` is an unchanged part of the last write (so plain: :func:`is_plain`), under any key."""
        return self._entry(part) is not None

    def put(self, part: Any, key: Any, made: Any, size: int = 0) -> None:
        """Keep ``made`` (of ``size`` bytes) for ``part`` under ``key`` with a copy of ``part``, where ``part`` is
        plain (a part that holds a tensor may change in place unseen, and is made anew every time) and the memo has
        room for it."""
        if (self.max_bytes is None or self._used_bytes + size <= self.max_bytes) and is_plain(part):
            previous = self._used.get(id(part))
            self._used_bytes += size - (previous[4] if previous is not None else 0)
            self._used[id(part)] = (part, copy.deepcopy(part), key, made, size)

    def forget_unused(self) -> None:
        """Drop the parts not used since the last call (a write's parts stay for the next write)."""
        self._kept, self._used, self._used_bytes = self._used, {}, 0
