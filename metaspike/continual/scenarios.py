"""Task scenarios: how one or more datasets become a sequence of tasks.

A :class:`Scenario` is a list of training tasks, the tasks it is evaluated on (the same, except for
``stream`` and ``joint``), and a JSON-able ``definition`` (seeds, permutation indices, class groups)
saved with the results so the exact stream can be rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from metaspike.data import ArrayDataset, load_dataset

__all__ = [
    "Task",
    "Scenario",
    "permuted",
    "sequence",
    "split",
    "stream",
    "joint",
    "make_scenario",
    "available_scenarios",
]


@dataclass(frozen=True, eq=False)
class Task:
    """One task: training and test data, and optionally the classes its outputs are restricted to."""

    name: str
    train: ArrayDataset
    test: ArrayDataset
    classes: tuple[int, ...] | None = None


@dataclass(frozen=True, eq=False)
class Scenario:
    """A stream of tasks.

    Attributes:
        name: scenario kind (``"permuted"``, ``"sequence"``, ``"split"``, ``"stream"``, ``"joint"``).
        tasks: tasks trained one after the other.
        eval_tasks: tasks every evaluation covers (columns of the accuracy matrix).
        definition: everything needed to rebuild the stream (saved as ``scenario.json``).
        task_boundaries: whether the learner may be told where tasks change (``False`` for streams).
    """

    name: str
    tasks: tuple[Task, ...]
    eval_tasks: tuple[Task, ...]
    definition: dict[str, Any] = field(default_factory=dict)
    task_boundaries: bool = True

    @property
    def evaluates_training_tasks(self) -> bool:
        """True when the evaluated tasks are the trained ones (one accuracy-matrix column per task)."""
        return self.eval_tasks is self.tasks

    @property
    def num_classes(self) -> int:
        return max(len(t.train.classes) for t in self.tasks)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.tasks[0].train.x.shape[1:])


def _base(data: ArrayDataset) -> str:
    """Dataset name without its split suffix (``"mnist5k/train"`` -> ``"mnist5k"``)."""
    return data.name.split("/")[0]


def _check_count(n: int, what: str) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {n!r}")
    return int(n)


def _permute(data: ArrayDataset, perm: torch.Tensor, name: str) -> ArrayDataset:
    flat = data.x.reshape(len(data.x), -1)[:, perm].reshape(data.x.shape)
    return ArrayDataset(name=name, x=flat, y=data.y, classes=data.classes)


def permuted(train: ArrayDataset, test: ArrayDataset, n_tasks: int = 3, seed: int = 0) -> Scenario:
    """``n_tasks`` tasks, each a fixed random pixel permutation of the same dataset.

    The permutations come from ``seed`` and are stored in ``definition["permutations"]``.

    Example:
        >>> from metaspike.data import load_dataset
        >>> s = permuted(load_dataset("digits"), load_dataset("digits", "test"), n_tasks=2, seed=1)
        >>> [t.name for t in s.tasks]
        ['digits-perm1', 'digits-perm2']
    """
    n_tasks = _check_count(n_tasks, "number of tasks")
    rng = np.random.default_rng(seed)
    features = train.num_features
    perms = [rng.permutation(features) for _ in range(n_tasks)]
    tasks = []
    for i, perm in enumerate(perms, start=1):
        index = torch.from_numpy(perm)
        name = f"{_base(train)}-perm{i}"
        tasks.append(Task(name, _permute(train, index, name), _permute(test, index, name)))
    definition = {"dataset": _base(train), "seed": seed, "permutations": [p.tolist() for p in perms]}
    frozen = tuple(tasks)
    return Scenario("permuted", frozen, frozen, definition)


def sequence(datasets: Sequence[tuple[ArrayDataset, ArrayDataset]]) -> Scenario:
    """One task per ``(train, test)`` pair, in order (e.g. MNIST → Fashion-MNIST).

    Example:
        >>> from metaspike.data import load_dataset
        >>> pairs = [(load_dataset(n), load_dataset(n, "test")) for n in ("mnist5k", "digits")]
        >>> [t.name for t in sequence(pairs).tasks]
        ['mnist5k', 'digits']
    """
    if len(datasets) < 1:
        raise ValueError("a dataset sequence needs at least one dataset")
    shapes = {tuple(tr.x.shape[1:]) for tr, _ in datasets}
    if len(shapes) != 1:
        raise ValueError(f"datasets in a sequence must share one input shape, got {sorted(shapes)}")
    tasks = tuple(Task(_base(tr), tr, te) for tr, te in datasets)
    return Scenario("sequence", tasks, tasks, {"datasets": [_base(tr) for tr, _ in datasets]})


def split(
    train: ArrayDataset,
    test: ArrayDataset,
    groups: int | Sequence[Sequence[int]] = 5,
    mode: str = "task",
) -> Scenario:
    """Tasks made of class groups (``groups=5`` splits 10 classes into pairs 0-1, 2-3, ...).

    ``mode="task"`` (task-incremental): each task's outputs are restricted to its own classes at
    training and test time. ``mode="class"`` (class-incremental): one head over all classes.

    Example:
        >>> from metaspike.data import load_dataset
        >>> s = split(load_dataset("digits"), load_dataset("digits", "test"), groups=5)
        >>> s.tasks[1].classes
        (2, 3)
    """
    if mode not in ("task", "class"):
        raise ValueError(f"split mode must be 'task' or 'class', got {mode!r}")
    n_classes = len(train.classes)
    if isinstance(groups, int):
        n = _check_count(groups, "number of class groups")
        if n > n_classes:
            raise ValueError(f"cannot split {n_classes} classes into {n} groups")
        groups = [list(map(int, g)) for g in np.array_split(np.arange(n_classes), n)]
    flat = [c for g in groups for c in g]
    if not groups or any(len(g) == 0 for g in groups) or len(set(flat)) != len(flat) or not all(0 <= c < n_classes for c in flat):
        raise ValueError(f"class groups must be non-empty, disjoint and within 0..{n_classes - 1}, got {groups}")
    tasks = []
    for g in groups:
        name = f"{_base(train)}-classes{'-'.join(map(str, g))}"
        keep = torch.tensor(g)
        tr = train.subset(torch.isin(train.y, keep).nonzero().flatten(), name)
        te = test.subset(torch.isin(test.y, keep).nonzero().flatten(), name)
        tasks.append(Task(name, tr, te, tuple(g) if mode == "task" else None))
    definition = {"dataset": _base(train), "groups": [list(g) for g in groups], "mode": mode}
    frozen = tuple(tasks)
    return Scenario("split", frozen, frozen, definition)


def stream(train: ArrayDataset, test: ArrayDataset, n_subsets: int = 10, seed: int = 0) -> Scenario:
    """One dataset cut into ``n_subsets`` disjoint random subsets learned in turn, no task boundaries.

    Every evaluation uses the whole test set (one column in the accuracy matrix).

    Example:
        >>> from metaspike.data import load_dataset
        >>> s = stream(load_dataset("digits"), load_dataset("digits", "test"), n_subsets=4)
        >>> len(s.tasks), len(s.eval_tasks), s.task_boundaries
        (4, 1, False)
    """
    n_subsets = _check_count(n_subsets, "number of subsets")
    if n_subsets > len(train):
        raise ValueError(f"cannot cut {len(train)} samples into {n_subsets} subsets")
    order = np.random.default_rng(seed).permutation(len(train))
    parts = np.array_split(order, n_subsets)
    tasks = tuple(
        Task(f"{_base(train)}-part{i}", train.subset(torch.from_numpy(p), f"{_base(train)}-part{i}"), test)
        for i, p in enumerate(parts, start=1)
    )
    evaluation = (Task(f"{_base(test)}-test", test, test),)
    definition = {"dataset": _base(train), "seed": seed, "subsets": [p.tolist() for p in parts]}
    return Scenario("stream", tasks, evaluation, definition, task_boundaries=False)


def joint(scenario: Scenario) -> Scenario:
    """All tasks of ``scenario`` learned together (shuffled into one task): the upper bound.

    Example:
        >>> from metaspike.data import load_dataset
        >>> s = joint(permuted(load_dataset("digits"), load_dataset("digits", "test"), n_tasks=2))
        >>> len(s.tasks), len(s.eval_tasks)
        (1, 2)
    """
    if any(t.classes is not None for t in scenario.tasks):
        raise ValueError("joint training of task-incremental splits is not supported; use mode='class'")
    first = scenario.tasks[0].train
    x = torch.cat([t.train.x for t in scenario.tasks])
    y = torch.cat([t.train.y for t in scenario.tasks])
    classes = max((t.train.classes for t in scenario.tasks), key=len)
    data = ArrayDataset(name=f"joint-{_base(first)}", x=x, y=y, classes=classes)
    task = Task(data.name, data, data)
    definition = {"of": scenario.name, **scenario.definition}
    return Scenario("joint", (task,), scenario.eval_tasks, definition)


def available_scenarios() -> list[str]:
    """Scenario names accepted by :func:`make_scenario`.

    Example:
        >>> available_scenarios()
        ['joint', 'permuted', 'sequence', 'split', 'stream']
    """
    return ["joint", "permuted", "sequence", "split", "stream"]


def make_scenario(
    name: str,
    datasets: Sequence[str] = ("mnist5k",),
    tasks: int = 3,
    seed: int = 0,
    data_dir: str | None = None,
    split_mode: str = "task",
) -> Scenario:
    """Build a scenario by name from dataset names (what the CLI calls).

    ``tasks`` is the number of permutations (``permuted``, ``joint``), class groups (``split``) or
    subsets (``stream``); ``sequence`` uses one task per dataset. ``joint`` trains on the
    permuted tasks together.

    Example:
        >>> make_scenario("permuted", ["digits"], tasks=2).definition["seed"]
        0
    """
    if name not in available_scenarios():
        raise ValueError(f"unknown scenario {name!r}; available: {', '.join(available_scenarios())}")
    _check_count(tasks, "tasks")
    if not datasets:
        raise ValueError("give at least one dataset")
    pairs = [(load_dataset(d, "train", data_dir), load_dataset(d, "test", data_dir)) for d in datasets]
    if name == "sequence":
        return sequence(pairs)
    if len(pairs) != 1:
        raise ValueError(f"scenario {name!r} takes one dataset, got {len(pairs)}: {list(datasets)}")
    train, test = pairs[0]
    if name == "permuted":
        return permuted(train, test, tasks, seed)
    if name == "split":
        return split(train, test, tasks, split_mode)
    if name == "stream":
        return stream(train, test, tasks, seed)
    return joint(permuted(train, test, tasks, seed))
