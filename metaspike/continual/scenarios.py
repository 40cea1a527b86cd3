"""Task scenarios: how one or more datasets become a sequence of tasks.

A :class:`Scenario` is a sequence of training tasks, the tasks it is evaluated on (the same, except for
``stream`` and ``joint``), and a JSON-able ``definition`` (seeds, permutation indices, class groups)
saved with the results so the exact stream can be rebuilt.

A permuted stream is lazy (:class:`TaskStream`): task ``k`` is made when it is reached, from the seed
and ``k`` alone (:func:`task_permutation`, :func:`task_subset`), so a stream of 100,000 tasks costs
nothing until it is trained, and only a few tasks are held at a time.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import torch

from metaspike.allocator import usable_memory
from metaspike.checks import check_seed, is_whole, listed, unknown_name
from metaspike.data import ArrayDataset, available_datasets, load_dataset

__all__ = [
    "Task",
    "TaskStream",
    "Scenario",
    "made_when_reached",
    "task_permutation",
    "task_subset",
    "LISTED_PERMUTATIONS",
    "permuted",
    "sequence",
    "split",
    "SPLIT_MODES",
    "stream",
    "joint",
    "make_scenario",
    "available_scenarios",
]


@dataclass(frozen=True, eq=False)
class Task:
    """One task: training and test data (:class:`~metaspike.data.ArrayDataset`), and optionally the classes its
    outputs are restricted to.

    Example:
        >>> data = ArrayDataset.from_tensors(torch.rand(8, 4), torch.arange(8) % 2, "mine")
        >>> Task("mine", data, data).name
        'mine'
    """

    name: str
    train: ArrayDataset
    test: ArrayDataset
    classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a task's name must be a non-empty str, got {self.name!r}")
        try:
            _check_samples(self.train, self.test)
            if self.classes is not None:
                object.__setattr__(self, "classes", _checked_classes(self.classes, self.train, self.test))
        except ValueError as err:
            raise ValueError(f"Task {self.name!r}: {err}") from None


def _checked_classes(classes: Any, train: ArrayDataset, test: ArrayDataset) -> tuple[int, ...]:
    """A task's ``classes`` as a tuple of distinct class indices that hold every label of its training and test sets
    (a label outside them would be masked out of the outputs: an infinite loss, a test sample never right)."""
    if isinstance(classes, (set, frozenset)):  # (no order of its own: in increasing order where it has one)
        try:
            classes = sorted(classes)
        except TypeError:
            classes = list(classes)
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence | np.ndarray | torch.Tensor):
        raise ValueError(f"classes must be a sequence of class indices (e.g. (0, 1)), got {type(classes).__name__}")
    values = classes.tolist() if isinstance(classes, np.ndarray | torch.Tensor) else list(classes)
    if not isinstance(values, list):  # (a 0-d array or tensor)
        raise ValueError(f"classes must be a sequence of class indices (e.g. (0, 1)), got one number {values!r}")
    wrong = [c for c in values if not is_whole(c, 0)]
    if wrong:
        raise ValueError(f"classes must be class indices, integers >= 0 (the labels' values, not the class names), "
                         f"got {wrong[0]!r}")
    indices = tuple(int(c) for c in values)
    if not indices or len(set(indices)) != len(indices):
        raise ValueError(f"classes must name at least one class, each once, got {indices}")
    for part, data in (("training", train), ("test", test)):
        outside = sorted(set(data.y.unique().tolist()) - set(indices))
        if outside:
            raise ValueError(f"its {part} labels include {outside[:5]}, outside its classes {indices}: a label "
                             "outside them would be masked out of the outputs")
    return indices


class TaskStream(Sequence[Task]):
    """A sequence of ``count`` tasks, each made by ``make(index)`` when it is first reached.

    The last ``keep`` tasks made are held (a trainer alternates between the task it trains and the
    tasks it evaluates); older ones are dropped and made again if needed, so memory stays bounded
    however long the stream. ``names(index)`` gives a task's name without making it.

    Example:
        >>> from metaspike.data import load_dataset
        >>> s = permuted(load_dataset("digits"), load_dataset("digits", "test"), n_tasks=100_000)
        >>> len(s.tasks), s.tasks.name(99_999), len(s.tasks.cached)
        (100000, 'digits-perm100000', 0)
    """

    def __init__(self, count: int, make: Callable[[int], Task], names: Callable[[int], str],
                 classes: tuple[int, ...], keep: int = 8) -> None:
        self.count = _check_count(count, "count")
        self._make, self._names, self.classes = make, names, tuple(classes)
        self.keep = _check_count(keep, "keep")
        self.cached: OrderedDict[int, Task] = OrderedDict()

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        """``TaskStream(100000 tasks, first 'perm1', 8 kept)``: never the tasks' data."""
        return f"TaskStream({self.count} tasks, first {self._names(0)!r}, {self.keep} kept)"

    def _index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"task index must be an integer, got {index!r}")
        if not -self.count <= index < self.count:
            raise IndexError(f"task index {index} out of range for a stream of {self.count} tasks")
        return int(index) % self.count

    @overload
    def __getitem__(self, index: int) -> Task: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Task, ...]: ...

    def __getitem__(self, index: int | slice) -> Task | tuple[Task, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(self.count)))
        i = self._index(index)
        if i in self.cached:
            self.cached.move_to_end(i)
            return self.cached[i]
        task = self._make(i)
        self.cached[i] = task
        if len(self.cached) > self.keep:
            self.cached.popitem(last=False)
        return task

    def name(self, index: int) -> str:
        """The name of task ``index`` (0-based), without making the task."""
        return self._names(self._index(index))


def made_when_reached(tasks: Sequence[Task]) -> bool:
    """Whether a sequence of tasks may make its tasks when indexed (a :class:`TaskStream`, or a sequence of one's own
    other than a list or tuple): it is never walked through, and its tasks are checked as they are reached.

    Example:
        >>> made_when_reached([]), made_when_reached(permuted(load_dataset("digits"), load_dataset("digits", "test"),
        ...                                                   n_tasks=3).tasks)
        (False, True)
    """
    return not isinstance(tasks, (list, tuple))


@dataclass(frozen=True, eq=False)
class Scenario:
    """A stream of tasks.

    Attributes:
        name: scenario kind (``"permuted"``, ``"sequence"``, ``"split"``, ``"stream"``, ``"joint"``).
        tasks: tasks trained one after the other (a list is kept as a tuple, so changing the list later does not
            change the scenario that was checked).
        eval_tasks: tasks every evaluation covers (columns of the accuracy matrix; a list is kept as a tuple too).
        definition: everything needed to rebuild the stream (saved as ``scenario.json``).
        task_boundaries: whether the learner may be told where tasks change (``False`` for streams).
        task_known_at_test: whether an evaluation may be told which task it tests (``False`` for class-incremental
            splits, whose single head must tell all classes apart without it).
        growing_head: whether the single head grows with the classes seen (class-incremental, ``task_known_at_test``
            ``False``): each task then names the classes it brings (``Task.classes``), and training and evaluation
            use only the outputs of the tasks trained so far (:meth:`seen_classes`); the classes to come are masked
            out, so training never pushes their outputs down, and the tasks not yet trained are not scored.
    """

    name: str
    tasks: Sequence[Task]
    eval_tasks: Sequence[Task]
    definition: dict[str, Any] = field(default_factory=dict)
    task_boundaries: bool = True
    task_known_at_test: bool = True
    growing_head: bool = False

    def __repr__(self) -> str:
        """The scenario's kind, sizes and flags, e.g. ``Scenario('permuted', 3 tasks, 3 evaluated,
        task_boundaries=True, task_known_at_test=True, growing_head=False)``: never the tasks' data or the
        definition's permutations (thousands of numbers).

        Example:
            >>> from metaspike.data import load_dataset
            >>> permuted(load_dataset("digits"), load_dataset("digits", "test"), n_tasks=3)
            Scenario('permuted', 3 tasks, 3 evaluated, task_boundaries=True, task_known_at_test=True, growing_head=False)
        """
        return (f"Scenario({self.name!r}, {len(self.tasks)} tasks, {len(self.eval_tasks)} evaluated, "
                f"task_boundaries={self.task_boundaries}, task_known_at_test={self.task_known_at_test}, "
                f"growing_head={self.growing_head})")

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a scenario's name must be a non-empty str, got {self.name!r}")
        if self.definition is not None and not isinstance(self.definition, dict):  # (scenario.json holds its keys)
            raise ValueError(f"Scenario definition must be a dict of what rebuilds the stream (seeds, permutations) "
                             f"or None, got {type(self.definition).__name__}")
        kept: dict[int, tuple] = {}  # a list is kept as a tuple (one list given twice as one tuple): what is checked
        for key in ("tasks", "eval_tasks"):  # here is what trains, whatever happens to the caller's list later
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, kept.setdefault(id(value), tuple(value)))
        for key in ("tasks", "eval_tasks"):
            value = getattr(self, key)
            if isinstance(value, TaskStream):
                continue
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise ValueError(f"Scenario {key} must be a sequence of Task(name, train, test), got "
                                 f"{type(value).__name__}")
            shown = [value[0]] if made_when_reached(value) and len(value) else value
            wrong = next((t for t in shown if not isinstance(t, Task)), None)
            if wrong is not None:
                raise ValueError(f"Scenario {key} must hold Task(name, train, test) objects (a task's training and "
                                 f"test sets together), got a {type(wrong).__name__}")
        for key in ("task_boundaries", "task_known_at_test", "growing_head"):
            if not isinstance(getattr(self, key), (bool, np.bool_)):
                raise ValueError(f"Scenario {key} must be True or False, got {getattr(self, key)!r}")
            object.__setattr__(self, key, bool(getattr(self, key)))
        if self.growing_head:
            self._check_growing_head()
        elif not self.task_known_at_test and not made_when_reached(self.tasks) and any(
                t.classes is not None for t in self.tasks):
            warnings.warn(f"Scenario {self.name!r}: its tasks name their classes, so each trains on its own outputs "
                          "only (the labels trick), while a class-incremental scenario (task_known_at_test=False) is "
                          "scored on every output; for a head that grows with the classes give growing_head=True, for "
                          "training on every output give the tasks classes=None", stacklevel=3)

    def _check_growing_head(self) -> None:
        """A growing head needs a class-incremental scenario whose tasks (listed, each naming its classes) are the
        evaluated ones."""
        if self.task_known_at_test or not self.task_boundaries:
            raise ValueError("Scenario growing_head needs task_known_at_test=False (class-incremental: a task known at "
                             "test time is scored on its own classes, Task.classes) and task_boundaries=True (the head "
                             "grows where a task begins)")
        if made_when_reached(self.tasks) or not self.evaluates_training_tasks:
            raise ValueError("Scenario growing_head needs its tasks as a list or tuple, evaluated on themselves "
                             "(eval_tasks the same tasks): the head grows with the tasks trained so far")
        unnamed = next((t.name for t in self.tasks if t.classes is None), None)
        if unnamed is not None:
            raise ValueError(f"Scenario growing_head needs every task to name the classes it brings; task {unnamed!r} "
                             "has classes=None")
        seen: set[int] = set()
        for task in self.tasks:
            again = sorted(seen.intersection(task.classes))  # type: ignore[arg-type]
            if again:
                raise ValueError(f"Scenario growing_head needs each class brought by one task; task {task.name!r} "
                                 f"brings {again} again (its test samples would count for two tasks)")
            seen.update(task.classes)  # type: ignore[arg-type]

    def seen_classes(self, trained: int) -> tuple[int, ...] | None:
        """The outputs of a growing head after ``trained`` tasks (counting one in training): the classes of those
        tasks in the order they came; ``None`` (every output) without a growing head or before the first task.

        Example:
            >>> s = split(load_dataset("digits"), load_dataset("digits", "test"), groups=5, mode="class-growing")
            >>> s.seen_classes(2), s.seen_classes(0)
            ((0, 1, 2, 3), None)
        """
        if not self.growing_head or trained == 0:
            return None
        return tuple(dict.fromkeys(c for task in self.tasks[:trained] for c in task.classes))  # type: ignore[union-attr]

    @property
    def per_task_batchnorm(self) -> bool:
        """Whether per-task BatchNorm statistics may be used: each task trained with its own and evaluated with its
        own (tasks with boundaries, evaluated one by one, known at test time); else the statistics are shared."""
        return self.task_boundaries and self.evaluates_training_tasks and self.task_known_at_test

    @property
    def evaluates_training_tasks(self) -> bool:
        """True when the evaluated tasks are the trained ones (one accuracy-matrix column per task): the same sequence,
        or sequences of the same task objects in the same order (``Scenario("mine", tasks, list(tasks))``)."""
        if self.eval_tasks is self.tasks:
            return True
        if made_when_reached(self.tasks) or made_when_reached(self.eval_tasks):
            return False  # (a lazy stream is evaluated on itself; comparing would make every task)
        return len(self.eval_tasks) == len(self.tasks) and all(e is t for e, t in zip(self.eval_tasks, self.tasks))

    @property
    def num_classes(self) -> int:
        if isinstance(self.tasks, TaskStream):
            return len(self.tasks.classes)
        return max(len(t.train.classes) for t in self.tasks)

    @property
    def eval_task_names(self) -> list[str]:
        """Names of the evaluated tasks, without making the tasks of a lazy stream."""
        if isinstance(self.eval_tasks, TaskStream):
            return [self.eval_tasks.name(j) for j in range(len(self.eval_tasks))]
        return [t.name for t in self.eval_tasks]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.tasks[0].train.x.shape[1:])


def _base(data: ArrayDataset) -> str:
    """Dataset name without its split suffix (``"mnist5k/train"`` -> ``"mnist5k"``)."""
    return data.name.split("/")[0]


def _check_samples(train: ArrayDataset, test: ArrayDataset) -> None:
    """A scenario's data must be datasets (:class:`~metaspike.data.ArrayDataset`) that hold samples to train and
    test on."""
    for part, data in (("training", train), ("test", test)):
        if not isinstance(data, ArrayDataset):
            raise ValueError(f"the {part} set must be a metaspike.data.ArrayDataset (from your own tensors or numpy "
                             f"arrays: ArrayDataset.from_tensors(x, y, name)), got {type(data).__name__}")
        if len(data) == 0:
            raise ValueError(f"the {part} set {data.name!r} holds no samples")
    if tuple(train.x.shape[1:]) != tuple(test.x.shape[1:]):
        raise ValueError(f"the training and test sets' samples differ in shape: {list(train.x.shape[1:])} and "
                         f"{list(test.x.shape[1:])}")
    if train.classes != test.classes:
        first = next(i for i, (a, b) in enumerate(zip(train.classes + (None,), test.classes + (None,))) if a != b)
        raise ValueError(f"the training and test sets name different classes ({len(train.classes)} and "
                         f"{len(test.classes)}; from index {first}: {list(train.classes[first:first + 3])} and "
                         f"{list(test.classes[first:first + 3])}); give both the same classes "
                         "(ArrayDataset.from_tensors(..., classes=...))")


def _check_count(n: int, what: str) -> int:
    if not is_whole(n, 1):
        raise ValueError(f"{what} must be an integer >= 1, got {n!r}")
    return int(n)


def _permute(data: ArrayDataset, perm: torch.Tensor, name: str, rows: torch.Tensor | None = None) -> ArrayDataset:
    """``data`` (only ``rows`` when given) with its pixels reordered by ``perm``."""
    flat = data.x.reshape(len(data.x), -1)
    y = data.y
    if rows is not None:
        flat, y = flat.index_select(0, rows), y.index_select(0, rows)
    x = flat.index_select(1, perm).reshape(len(flat), *data.x.shape[1:])
    return ArrayDataset(name=name, x=x, y=y, classes=data.classes)


DEFAULT_TASKS = 3
""":func:`make_scenario`'s number of tasks where none is given (``sequence``: one per dataset)."""

#: Streams up to this many tasks list every permutation in ``definition["permutations"]``; longer
#: ones record only how the permutations are derived (``definition["permutations_from"]``).
LISTED_PERMUTATIONS = 100
#: Permutations of one seed are drawn in order; the generator state is kept every this many tasks,
#: so reaching task ``k`` draws at most this many permutations.
_STATE_EVERY = 1024


class _Permutations:
    """Permutation ``k`` of a seed: the ``k``-th draw of ``numpy.random.default_rng(seed).permutation``.

    Keeps the generator state before draw ``k`` for every multiple ``k`` of ``_STATE_EVERY`` and after
    the latest draw, so tasks reached in order cost one draw each.
    """

    def __init__(self, seed: int, features: int) -> None:
        self.features = features
        self.states = {0: np.random.default_rng(seed).bit_generator.state}
        self.cursor = (0, self.states[0])

    def __call__(self, index: int) -> np.ndarray:
        start = max(k for k in self.states if k <= index)
        state = self.cursor[1] if start <= self.cursor[0] <= index else self.states[start]
        start = self.cursor[0] if start <= self.cursor[0] <= index else start
        rng = np.random.default_rng()
        rng.bit_generator.state = state
        for k in range(start, index + 1):
            if k % _STATE_EVERY == 0:
                self.states.setdefault(k, rng.bit_generator.state)
            perm = rng.permutation(self.features)
        self.cursor = (index + 1, rng.bit_generator.state)
        return perm


def task_permutation(seed: int, index: int, features: int) -> np.ndarray:
    """The pixel permutation of task ``index`` (0-based) of a permuted stream with ``seed``.

    It is the ``index``-th consecutive draw ``numpy.random.default_rng(seed).permutation(features)``,
    so the first tasks of a stream do not depend on its length.

    Example:
        >>> p = task_permutation(0, 1, 5)
        >>> bool((p == np.random.default_rng(0).permutation(5)).all()), sorted(p.tolist())
        (False, [0, 1, 2, 3, 4])
    """
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be an integer >= 0, got {index!r}")
    return _Permutations(check_seed("seed", seed), _check_count(features, "features"))(int(index))


def task_subset(seed: int, index: int, size: int, samples: int) -> np.ndarray:
    """The sorted indices of the ``samples`` training samples (out of ``size``) task ``index`` uses.

    Drawn without replacement by ``numpy.random.default_rng([seed, index]).choice``.

    Example:
        >>> task_subset(0, 3, 10, 4).tolist() == task_subset(0, 3, 10, 4).tolist()
        True
    """
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or not 1 <= samples <= size:
        raise ValueError(f"samples must be an integer in 1..{size} (the training set's size), got {samples!r}")
    check_seed("seed", seed)
    if not is_whole(index, 0):
        raise ValueError(f"index must be a task index, an integer >= 0, got {index!r}")
    return np.sort(np.random.default_rng([int(seed), int(index)]).choice(size, int(samples), replace=False))


def permuted(train: ArrayDataset, test: ArrayDataset, n_tasks: int = 3, seed: int = 0,
             samples_per_task: int | None = None) -> Scenario:
    """``n_tasks`` tasks, each a fixed random pixel permutation of the same dataset, made when reached.

    Task ``k``'s permutation is :func:`task_permutation` ``(seed, k)``; with ``samples_per_task``, task
    ``k`` trains on the subset :func:`task_subset` ``(seed, k)`` of the training set (and is tested on
    the whole test set). Streams of up to :data:`LISTED_PERMUTATIONS` tasks list their permutations in
    ``definition["permutations"]``.

    Example:
        >>> from metaspike.data import load_dataset
        >>> s = permuted(load_dataset("digits"), load_dataset("digits", "test"), n_tasks=2, seed=1)
        >>> [t.name for t in s.tasks]
        ['digits-perm1', 'digits-perm2']
    """
    n_tasks = _check_count(n_tasks, "number of tasks")
    seed = check_seed("seed", seed)
    _check_samples(train, test)
    if samples_per_task is not None and not (is_whole(samples_per_task, 1) and samples_per_task <= len(train)):
        raise ValueError(f"samples_per_task must be an integer in 1..{len(train)} (the training set's size), "
                         f"got {samples_per_task!r}")
    features = train.num_features
    permutations = _Permutations(seed, features)

    def name(i: int) -> str:
        return f"{_base(train)}-perm{i + 1}"

    def make(i: int) -> Task:
        index = torch.from_numpy(permutations(i))
        rows = None if samples_per_task is None else torch.from_numpy(task_subset(seed, i, len(train), samples_per_task))
        return Task(name(i), _permute(train, index, name(i), rows), _permute(test, index, name(i)))

    definition: dict[str, Any] = {"dataset": _base(train), "seed": seed}
    if n_tasks <= LISTED_PERMUTATIONS:
        definition["permutations"] = [permutations(i).tolist() for i in range(n_tasks)]
    else:
        definition["permutations_from"] = (f"task k (0-based) uses the k-th consecutive draw of "
                                           f"numpy.random.default_rng({seed}).permutation({features})")
    if samples_per_task is not None:
        definition["samples_per_task"] = samples_per_task
        definition["subsets_from"] = (f"task k trains on sorted(numpy.random.default_rng([{seed}, k])"
                                      f".choice({len(train)}, {samples_per_task}, replace=False))")
    tasks = TaskStream(n_tasks, make, name, train.classes)
    return Scenario("permuted", tasks, tasks, definition)


def sequence(datasets: Iterable[tuple[ArrayDataset, ArrayDataset]]) -> Scenario:
    """One task per ``(train, test)`` pair, in order (e.g. MNIST → Fashion-MNIST); ``datasets`` is a list of pairs or
    any iterable of them (a generator is read once).

    Example:
        >>> from metaspike.data import load_dataset
        >>> pairs = [(load_dataset(n), load_dataset(n, "test")) for n in ("mnist5k", "digits")]
        >>> [t.name for t in sequence(pairs).tasks]
        ['mnist5k', 'digits']
    """
    if isinstance(datasets, (str, bytes)) or not isinstance(datasets, Iterable):
        raise ValueError(f"a dataset sequence takes a list (or any iterable) of (train, test) pairs, got "
                         f"{type(datasets).__name__}")
    datasets = list(datasets)
    if len(datasets) < 1:
        raise ValueError("a dataset sequence needs at least one dataset")
    for pair in datasets:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"a dataset sequence takes (train, test) pairs, got {type(pair).__name__}")
        _check_samples(*pair)
    shapes = {tuple(tr.x.shape[1:]) for tr, _ in datasets}
    if len(shapes) != 1:
        raise ValueError(f"datasets in a sequence must share one input shape, got {sorted(shapes)}")
    names: list[str] = []
    for tr, _ in datasets:  # a dataset named again gets its count ("digits", "digits-2"): results are keyed by name
        base, count = _base(tr), 1
        while (name := base if count == 1 else f"{base}-{count}") in names:
            count += 1
        names.append(name)
    tasks = tuple(Task(name, tr, te) for name, (tr, te) in zip(names, datasets))
    return Scenario("sequence", tasks, tasks, {"datasets": [_base(tr) for tr, _ in datasets]})


#: How :func:`split` builds its tasks: task-incremental, class-incremental, class-incremental with a growing head.
SPLIT_MODES = ("task", "class", "class-growing")


def split(
    train: ArrayDataset,
    test: ArrayDataset,
    groups: int | Sequence[Sequence[int]] = 5,
    mode: str = "task",
) -> Scenario:
    """Tasks made of class groups (``groups=5`` splits 10 classes into pairs 0-1, 2-3, ...).

    ``mode="task"`` (task-incremental): each task's outputs are restricted to its own classes at
    training and test time (so every group needs 2 classes or more). ``mode="class"`` (class-incremental): one head
    over all classes.
    ``mode="class-growing"`` (class-incremental with a growing head, :attr:`Scenario.growing_head`): one head over the
    classes of the tasks trained so far, in training and at test time; the classes to come are masked out.

    Example:
        >>> from metaspike.data import load_dataset
        >>> s = split(load_dataset("digits"), load_dataset("digits", "test"), groups=5)
        >>> s.tasks[1].classes
        (2, 3)
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"split mode must be one of {', '.join(map(repr, SPLIT_MODES))}, got {mode!r}")
    _check_samples(train, test)
    n_classes = len(train.classes)
    if isinstance(groups, (np.ndarray, torch.Tensor)):
        groups = groups.tolist()
    if not (isinstance(groups, (int, np.integer)) and not isinstance(groups, bool)) and not (
            isinstance(groups, (list, tuple)) and all(isinstance(g, (list, tuple, range)) or (
                isinstance(g, (np.ndarray, torch.Tensor)) and g.ndim == 1) for g in groups)):
        raise ValueError(f"class groups must be a number of groups or a list of lists of classes, got {groups!r}")
    if isinstance(groups, (list, tuple)):
        groups = [g.tolist() if isinstance(g, (np.ndarray, torch.Tensor)) else g for g in groups]
    if isinstance(groups, (int, np.integer)):
        n = _check_count(groups, "number of class groups")
        if n > n_classes:
            raise ValueError(f"cannot split {n_classes} classes into {n} groups")
        groups = [list(map(int, g)) for g in np.array_split(np.arange(n_classes), n)]
    flat = [c for g in groups for c in g]
    unwhole = next((c for c in flat if not is_whole(c, -math.inf)), None)
    if unwhole is not None:  # (0.0 and True are no class indices: named, not a "non-empty, disjoint" puzzle)
        raise ValueError(f"class groups must hold class indices (whole numbers), got {unwhole!r} "
                         f"({type(unwhole).__name__}) in {groups}")
    if (not groups or any(len(g) == 0 for g in groups) or not all(0 <= c < n_classes for c in flat)
            or len(set(flat)) != len(flat)):  # (every one an integer by now, so hashable)
        raise ValueError(f"class groups must be non-empty, disjoint and within 0..{n_classes - 1}, got {groups}")
    alone = next((list(g) for g in groups if len(g) == 1), None)
    if mode == "task" and alone is not None:  # (its loss is 0 and its accuracy 100 %, trained or not)
        raise ValueError(f"mode 'task' restricts each task's outputs to its own classes, so the group {alone} of one "
                         "class would train nothing (cross-entropy over one class is 0) and always be predicted right: "
                         "give every group 2 classes or more, or use mode 'class' or 'class-growing'")
    tasks = []
    for g in groups:
        name = f"{_base(train)}-classes{'-'.join(map(str, g))}"
        keep = torch.tensor(g)
        tr = train.subset(torch.isin(train.y, keep).nonzero().flatten(), name)
        te = test.subset(torch.isin(test.y, keep).nonzero().flatten(), name)
        for part, data in (("training", tr), ("test", te)):
            if len(data) == 0:
                held = sorted(set((train if part == "training" else test).y.tolist()))
                raise ValueError(f"class group {list(g)} has no {part} samples in {_base(train)}: its {part} split "
                                 f"holds only the classes [{listed(held, 12)}] of 0..{n_classes - 1}; choose groups "
                                 "of classes that both splits hold, or data with samples of every class")
        tasks.append(Task(name, tr, te, None if mode == "class" else tuple(g)))
    definition = {"dataset": _base(train), "groups": [[int(c) for c in g] for g in groups], "mode": mode}  # (JSON)
    frozen = tuple(tasks)
    return Scenario("split", frozen, frozen, definition, task_known_at_test=mode == "task",
                    growing_head=mode == "class-growing")


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
    _check_samples(train, test)
    seed = check_seed("seed", seed)
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
    if not isinstance(scenario, Scenario):
        raise ValueError(f"joint takes a Scenario, got {type(scenario).__name__}")
    if not len(scenario.tasks):
        raise ValueError(f"joint needs a scenario with at least one task; {scenario.name!r} has none")
    if scenario.task_known_at_test and any(t.classes is not None for t in scenario.tasks):
        raise ValueError("joint training of task-incremental splits is not supported; use mode='class'")
    first = scenario.tasks[0].train
    _check_joint_fits(len(scenario.tasks), first)
    x = torch.cat([t.train.x for t in scenario.tasks])
    y = torch.cat([t.train.y for t in scenario.tasks])
    classes = max((t.train.classes for t in scenario.tasks), key=len)
    data = ArrayDataset(name=f"joint-{_base(first)}", x=x, y=y, classes=classes)
    task = Task(data.name, data, data)
    definition = {"of": scenario.name, **(scenario.definition or {})}
    return Scenario("joint", (task,), scenario.eval_tasks, definition, task_known_at_test=scenario.task_known_at_test)


def _check_joint_fits(count: int, first: ArrayDataset) -> None:
    """One ``ValueError`` naming the number of tasks where the joint training set of ``count`` tasks the size of
    ``first`` would not fit in the memory this process may use (every task's set is held, then concatenated: twice
    its size), rather than an allocation failure deep in the concatenation."""
    needed = 2 * count * first.x.nbytes
    available = usable_memory()
    if available is not None and needed > available:
        raise ValueError(f"joint training of {count} tasks holds all their training sets at once ({len(first):,} "
                         f"samples each, twice while they are put together): about {needed / 2**30:.1f} GiB, and this "
                         f"process may use {available / 2**30:.1f} GiB (the machine's memory, its container's limit or "
                         "ulimit -v); give fewer tasks")


#: The scenarios of one dataset by name (``sequence`` takes several), each built from the train and test sets and
#: ``make_scenario``'s tasks, seed, split mode and samples per task: a new scenario is one function and one entry here.
_ONE_DATASET: dict[str, Callable[..., Scenario]] = {
    "joint": lambda train, test, tasks, seed, mode, samples: joint(permuted(train, test, tasks, seed)),
    "permuted": lambda train, test, tasks, seed, mode, samples: permuted(train, test, tasks, seed, samples),
    "split": lambda train, test, tasks, seed, mode, samples: split(train, test, tasks, mode),
    "stream": lambda train, test, tasks, seed, mode, samples: stream(train, test, tasks, seed),
}


def available_scenarios() -> list[str]:
    """Scenario names accepted by :func:`make_scenario`.

    Example:
        >>> available_scenarios()
        ['joint', 'permuted', 'sequence', 'split', 'stream']
    """
    return sorted(["sequence", *_ONE_DATASET])


def _dataset_names(datasets: Any) -> list[str]:
    """``datasets`` (one name, or a list or tuple of names) as a list of names; one ``ValueError`` naming the argument
    for anything else (your own ``ArrayDataset`` goes to the scenario functions, not to :func:`make_scenario`).

    Example:
        >>> _dataset_names("digits"), _dataset_names(("mnist", "fashion-mnist"))
        (['digits'], ['mnist', 'fashion-mnist'])
    """
    if isinstance(datasets, str):  # one name, not a sequence of one-letter names
        return [datasets]
    names = list(datasets) if isinstance(datasets, (list, tuple)) else None
    stray = type(datasets) if names is None else next((type(d) for d in names if not isinstance(d, str)), None)
    if stray is not None:
        raise ValueError(f"make_scenario's datasets must be dataset names (one of {', '.join(available_datasets())}; "
                         f"e.g. 'mnist5k' or ['mnist', 'fashion-mnist']), got {stray.__name__}; for your own data (an "
                         "ArrayDataset) call permuted, split or stream with its training and test sets, or sequence "
                         "with (train, test) pairs (joint takes one of those scenarios)")
    if not names:
        raise ValueError("make_scenario's datasets must name at least one dataset")
    return names


def make_scenario(
    name: str,
    datasets: str | Sequence[str] = ("mnist5k",),
    tasks: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    split_mode: str = "task",
    samples_per_task: int | None = None,
) -> Scenario:
    """Build a scenario by name from dataset names (what the CLI calls); ``datasets`` may be one name.

    ``tasks`` is the number of permutations (``permuted``, ``joint``), class groups (``split``) or
    subsets (``stream``), 3 when not given; ``sequence`` has one task per dataset and refuses another number.
    ``joint`` trains on the permuted tasks together. ``samples_per_task`` (``permuted`` only) trains each task on a
    seeded subset of that many training samples.

    Example:
        >>> make_scenario("permuted", ["digits"], tasks=2).definition["seed"]
        0
    """
    if name not in available_scenarios():
        raise ValueError(unknown_name("scenario", name, available_scenarios()))
    datasets = _dataset_names(datasets)
    if tasks is None:
        tasks = len(datasets) if name == "sequence" else DEFAULT_TASKS
    _check_count(tasks, "tasks")
    if name == "sequence" and tasks != len(datasets):
        raise ValueError(f"tasks: the 'sequence' scenario has one task per dataset, {len(datasets)} here "
                         f"({', '.join(datasets)}), got tasks={tasks}")
    check_seed("seed", seed)
    if samples_per_task is not None and name != "permuted":
        raise ValueError(f"samples_per_task applies to the 'permuted' scenario only, not {name!r}")
    if split_mode != "task" and name != "split":
        raise ValueError(f"split_mode applies to the 'split' scenario only, not {name!r}")
    pairs = [(load_dataset(d, "train", data_dir), load_dataset(d, "test", data_dir)) for d in datasets]
    if name == "sequence":
        return sequence(pairs)
    if len(pairs) != 1:
        raise ValueError(f"scenario {name!r} takes one dataset, got {len(pairs)}: {list(datasets)}")
    return _ONE_DATASET[name](*pairs[0], tasks, seed, split_mode, samples_per_task)
