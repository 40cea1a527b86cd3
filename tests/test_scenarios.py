"""Scenarios build the task streams they promise, reproducibly."""

import re

import pytest
import torch

from metaspike.continual import joint, make_scenario, permuted, split, stream, task_subset
from metaspike.data import load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits"), load_dataset("digits", "test")


def test_permuted_tasks_apply_the_stored_permutations(digits):
    train, test = digits
    s = permuted(train, test, n_tasks=3, seed=5)
    assert len(s.tasks) == 3 and s.evaluates_training_tasks
    for task, perm in zip(s.tasks, s.definition["permutations"]):
        flat = train.x.reshape(len(train), -1)
        assert torch.equal(task.train.x.reshape(len(train), -1), flat[:, perm])
        assert torch.equal(task.test.y, test.y)
    assert s.definition["permutations"] == permuted(train, test, 3, seed=5).definition["permutations"]
    assert s.definition["permutations"] != permuted(train, test, 3, seed=6).definition["permutations"]
    assert len({tuple(p) for p in s.definition["permutations"]}) == 3


def test_split_task_and_class_incremental(digits):
    train, test = digits
    s = split(train, test, groups=5, mode="task")
    assert [t.classes for t in s.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    for task in s.tasks:
        assert set(task.train.y.unique().tolist()) == set(task.classes)
        assert set(task.test.y.unique().tolist()) == set(task.classes)
    assert sum(len(t.train) for t in s.tasks) == len(train)
    c = split(train, test, groups=[[0, 1, 2], [3, 4]], mode="class")
    assert [t.classes for t in c.tasks] == [None, None]
    with pytest.raises(ValueError, match="disjoint"):
        split(train, test, groups=[[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"mode 'task' restricts each task's outputs to its own classes, so the group "
                                         r"\[2\] of one class would train nothing"):
        split(train, test, groups=[[0, 1], [2]], mode="task")
    for mode in ("class", "class-growing"):  # (one head over more classes than the group's: a class alone trains)
        assert len(split(train, test, groups=[[0, 1], [2]], mode=mode).tasks) == 2


def test_class_groups_of_numpy_integers_are_recorded_as_python_ints(digits):
    import json

    import numpy as np

    s = split(*digits, groups=[[np.int64(0), np.int64(1)], np.array([2, 3])])
    assert json.loads(json.dumps(s.definition))["groups"] == [[0, 1], [2, 3]]  # (json.dumps refused numpy's int64)
    assert all(type(c) is int for group in s.definition["groups"] for c in group)


def test_stream_subsets_are_disjoint_and_cover_the_data(digits):
    train, test = digits
    s = stream(train, test, n_subsets=4, seed=0)
    subsets = s.definition["subsets"]
    assert sorted(i for part in subsets for i in part) == list(range(len(train)))
    assert not s.task_boundaries and len(s.eval_tasks) == 1
    assert torch.equal(s.tasks[2].train.x, train.x[subsets[2]])


def test_joint_concatenates_all_tasks(digits):
    train, test = digits
    base = permuted(train, test, n_tasks=2)
    j = joint(base)
    assert len(j.tasks) == 1 and len(j.tasks[0].train) == 2 * len(train)
    assert j.eval_tasks == base.eval_tasks


def test_sequence_of_two_digit_domains():
    s = make_scenario("sequence", ["mnist5k", "digits"])
    assert [t.name for t in s.tasks] == ["mnist5k", "digits"]
    assert s.input_shape == (1, 28, 28)
    assert len(make_scenario("sequence", ["mnist5k", "digits"], tasks=2).tasks) == 2
    with pytest.raises(ValueError, match=r"^tasks: the 'sequence' scenario has one task per dataset, 2 here .*tasks=5"):
        make_scenario("sequence", ["mnist5k", "digits"], tasks=5)  # (it was ignored: two tasks, not five)
    assert len(make_scenario("permuted", ["digits"]).tasks) == 3  # (no tasks given: the default)


def test_a_joint_training_set_that_cannot_fit_names_the_tasks(monkeypatch, capsys):
    """2,000 joint digits tasks under ulimit -v 3 GB: an allocation failure deep in the concatenation, whose advice
    named --hidden, --batch-size, --samples-per-task and --eval-samples, but not --tasks."""
    from metaspike.app.cli import main
    from metaspike.continual import scenarios

    one_task = make_scenario("permuted", ["digits"], tasks=1).tasks[0].train.x.nbytes
    monkeypatch.setattr(scenarios, "usable_memory", lambda: 5 * one_task)  # (3 tasks, twice: 6 tasks' sets)
    with pytest.raises(ValueError, match=r"^joint training of 3 tasks holds all their training sets at once .* give "
                                         "fewer tasks"):
        make_scenario("joint", ["digits"], tasks=3)
    assert len(make_scenario("joint", ["digits"], tasks=2).tasks[0].train) == 2 * len(load_dataset("digits"))
    assert main(["train", "--scenario", "joint", "--tasks", "3", "--dataset", "digits", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("metaspike: error: --tasks 3: --scenario joint training of 3 tasks ")


def test_bad_scenarios_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown scenario 'rotated'; available: joint, permuted"):
        make_scenario("rotated")
    with pytest.raises(ValueError, match="^tasks must be an integer >= 1, got 0"):
        make_scenario("permuted", ["digits"], tasks=0)
    with pytest.raises(ValueError, match="unknown dataset 'mnits'"):
        make_scenario("permuted", ["mnits"])
    with pytest.raises(ValueError, match="takes one dataset"):
        make_scenario("permuted", ["digits", "mnist5k"])


@pytest.mark.parametrize("seed", [float("nan"), -1, 2**64, "3"])
def test_scenario_seeds_are_checked(seed):
    with pytest.raises(ValueError, match="seed must be an integer in 0..18446744073709551615"):
        make_scenario("permuted", "digits", tasks=2, seed=seed)


def test_make_scenario_takes_one_dataset_name_as_a_string():
    assert [t.name for t in make_scenario("permuted", "digits", tasks=2).tasks] == ["digits-perm1", "digits-perm2"]


def test_a_class_group_without_samples_in_a_split_is_named_when_the_scenario_is_made():
    from metaspike.data import ArrayDataset

    classes = tuple(str(c) for c in range(4))
    train = ArrayDataset("toy", torch.rand(8, 1, 1, 3), torch.tensor([0, 1, 2, 3] * 2), classes)
    test = ArrayDataset("toy", torch.rand(4, 1, 1, 3), torch.tensor([0, 1, 0, 1]), classes)  # no 2 or 3 in the test split
    with pytest.raises(ValueError, match=r"class group \[2, 3\] has no test samples in toy: its test split holds only "
                                         r"the classes \[0, 1\] of 0..3; choose groups"):
        split(train, test, groups=2)


def test_a_hand_built_scenario_evaluating_its_own_tasks_keeps_per_task_statistics():
    from metaspike.continual import Scenario

    base = permuted(load_dataset("digits"), load_dataset("digits", "test"), n_tasks=2, seed=1)
    tasks = [base.tasks[0], base.tasks[1]]
    for train, evaluated in ((tasks, tasks), (tasks, list(tasks)), (tuple(tasks), tasks)):
        scenario = Scenario("mine", train, evaluated)
        assert scenario.evaluates_training_tasks and scenario.per_task_batchnorm
    other = permuted(load_dataset("digits"), load_dataset("digits", "test"), n_tasks=2, seed=2)
    for evaluated in ([tasks[1], tasks[0]], tasks[:1], list(other.tasks)):
        assert not Scenario("mine", tasks, evaluated).evaluates_training_tasks


def test_a_scenario_keeps_the_tasks_it_checked_when_the_callers_list_changes():
    from metaspike.continual import Scenario

    tasks = list(permuted(load_dataset("digits"), load_dataset("digits", "test"), n_tasks=2, seed=1).tasks)
    scenario = Scenario("mine", tasks, tasks)
    tasks.append("not a task")
    tasks[0] = "nor this"
    assert [t.name for t in scenario.tasks] == ["digits-perm1", "digits-perm2"] and scenario.tasks is scenario.eval_tasks


def test_scenario_arguments_that_do_not_fit_together_are_one_line():
    import numpy as np

    from metaspike.data import ArrayDataset

    train = ArrayDataset.from_tensors(torch.rand(20, 8, 8), torch.arange(20) % 4, "mine")
    with pytest.raises(ValueError, match=r"samples differ in shape: \[1, 8, 8\] and \[1, 7, 7\]"):
        permuted(train, ArrayDataset.from_tensors(torch.rand(6, 7, 7), torch.arange(6) % 4, "mine"))
    missing_class = ArrayDataset.from_tensors(torch.rand(6, 8, 8), torch.arange(6) % 3, "mine")  # no class 3
    with pytest.raises(ValueError, match=r"name different classes \(4 and 3; from index 3: \['3'\] and \[\]\)"):
        split(train, missing_class, groups=2)
    test = ArrayDataset.from_tensors(torch.rand(8, 8, 8), torch.arange(8) % 4, "mine")
    assert [t.classes for t in split(train, test, groups=np.array([[0, 1], [2, 3]])).tasks] == [(0, 1), (2, 3)]
    for groups in (torch.tensor([[0, 1], [2, 3]]), [torch.tensor([0, 1]), torch.tensor([2, 3])]):  # (as numpy's)
        assert [t.classes for t in split(train, test, groups=groups).tasks] == [(0, 1), (2, 3)]
    for bad in (2.0, "01", [0, 1], True, [torch.tensor(0), torch.tensor(1)]):
        with pytest.raises(ValueError, match="class groups must be a number of groups or a list of lists of classes"):
            split(train, test, groups=bad)


def test_tasks_named_alike_get_their_own_names_or_are_refused():
    from metaspike.continual import ContinualTrainer, Scenario, TrainerConfig, sequence

    pair = (load_dataset("digits"), load_dataset("digits", "test"))
    assert [t.name for t in sequence([pair, pair, pair]).tasks] == ["digits", "digits-2", "digits-3"]
    base = permuted(*pair, n_tasks=2, seed=1)
    twins = [base.tasks[0], type(base.tasks[1])(base.tasks[0].name, base.tasks[1].train, base.tasks[1].test)]
    trainer = ContinualTrainer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)),
                               lambda m: torch.optim.SGD(m.parameters(), lr=0.1), TrainerConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="names two tasks alike .*digits-perm1.*give each task its own name"):
        trainer.fit(Scenario("mine", twins, twins))


@pytest.mark.parametrize("seed, index, message", [(0, -1, "index must be a task index, an integer >= 0, got -1"),
                                                  (-1, 0, "seed must be an integer in 0..")])
def test_task_subset_names_a_bad_seed_or_index(seed, index, message):
    with pytest.raises(ValueError, match=message):
        task_subset(seed, index, 10, 3)


def test_make_scenario_refuses_a_split_mode_for_a_scenario_that_is_no_split():
    with pytest.raises(ValueError, match="split_mode applies to the 'split' scenario only, not 'permuted'"):
        make_scenario("permuted", "digits", tasks=2, split_mode="class")  # (it was dropped without a word)
    assert len(make_scenario("split", "digits", tasks=2, split_mode="class").tasks) == 2


@pytest.mark.parametrize("seed", [-1, 1.5, 2.0, 2**64, "1", True])
def test_task_permutation_names_a_bad_seed_as_task_subset_does(seed):
    from metaspike.continual import task_permutation

    message = r"seed must be an integer in 0\.\.18446744073709551615"
    for draw in (lambda: task_permutation(seed, 0, 5), lambda: task_subset(seed, 0, 10, 3)):
        with pytest.raises(ValueError, match=message):
            draw()


def test_sequence_reads_an_iterable_of_pairs_once_and_refuses_what_holds_no_pairs():
    from metaspike.continual import sequence
    from metaspike.data import ArrayDataset

    x, y = torch.rand(12, 6), torch.arange(12) % 3
    pairs = [(ArrayDataset.from_tensors(x, y, name), ArrayDataset.from_tensors(x[:6], y[:6], name))
             for name in ("a", "b")]
    listed = sequence(pairs)
    generated = sequence(pair for pair in pairs)  # (its len() was a bare TypeError, and it could be read only once)
    assert [t.name for t in generated.tasks] == [t.name for t in listed.tasks] == ["a", "b"]
    assert all(g.train is t.train and g.test is t.test for g, t in zip(generated.tasks, listed.tasks))
    assert generated.definition == listed.definition == {"datasets": ["a", "b"]}
    for bad, kind in ((pairs[0][0], "ArrayDataset"), (5, "int"), ("ab", "str")):
        with pytest.raises(ValueError, match=rf"^a dataset sequence takes a list \(or any iterable\) of \(train, test\) "
                                             rf"pairs, got {kind}$"):
            sequence(bad)
    with pytest.raises(ValueError, match="^a dataset sequence needs at least one dataset$"):
        sequence(iter(()))


@pytest.mark.parametrize("groups, found", [([[[0], [1]], [2]], "[0] (list)"), ([[0, [1]], [2]], "[1] (list)"),
                                           ([[0], [(1, 2)]], "(1, 2) (tuple)"), ([[0.0, 1.0], [2.0]], "0.0 (float)"),
                                           ([[True], [2]], "True (bool)")])
def test_class_groups_of_something_other_than_class_indices_are_one_line(groups, found):
    """A list inside a group was hashed first ("unhashable type: 'list'"); floats (np.arange(3.)) were told to be
    "non-empty, disjoint and within 0..2", which they were."""
    from metaspike.data import ArrayDataset

    x, y = torch.rand(12, 6), torch.arange(12) % 3
    train, test = ArrayDataset.from_tensors(x, y, "d"), ArrayDataset.from_tensors(x[:6], y[:6], "d")
    with pytest.raises(ValueError, match=rf"^class groups must hold class indices \(whole numbers\), got "
                                         rf"{re.escape(found)} in "):
        split(train, test, groups)
    with pytest.raises(ValueError, match=r"^class groups must be non-empty, disjoint and within 0\.\.2, got "):
        split(train, test, [[0, 3], [1]])


@pytest.mark.parametrize("datasets, found", [("own", "ArrayDataset"), (["digits", 3], "int"), (None, "NoneType")])
def test_make_scenario_given_your_own_dataset_names_the_argument_and_the_functions_that_take_it(datasets, found):
    """An ArrayDataset passed where dataset names belong failed with "TypeError: 'ArrayDataset' object is not
    iterable" from inside make_scenario."""
    from metaspike.data import ArrayDataset

    own = ArrayDataset.from_tensors(torch.rand(40, 8), torch.arange(40) % 4, "mine")
    with pytest.raises(ValueError, match=rf"^make_scenario's datasets must be dataset names \(one of .*digits.*\), got "
                                         rf"{found}; for your own data \(an ArrayDataset\) call permuted, split or "
                                         r"stream with its training and test sets, or sequence with \(train, test\) "
                                         r"pairs") as refused:
        make_scenario("permuted", own if datasets == "own" else datasets, tasks=2)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="^make_scenario's datasets must name at least one dataset$"):
        make_scenario("permuted", [], tasks=2)


def _stream(definition):
    from metaspike.continual import Scenario, Task, TaskStream
    from metaspike.data import ArrayDataset

    data = ArrayDataset.from_tensors(torch.rand(20, 4), torch.arange(20) % 2, "mine")
    tasks = TaskStream(3, lambda i: Task(f"t{i}", data, data), lambda i: f"t{i}", data.classes)
    return Scenario("mine", tasks, tasks, definition=definition)


def test_a_definition_of_arrays_tells_two_streams_apart():
    """numpy shortens an array's repr past 1000 numbers, which the run's identity hashed: two streams whose
    permutations differed in the middle were one stream to a resume (floats printed to 8 digits, a tensor's to 4)."""
    import numpy as np

    from metaspike.continual.trainer import TrainerConfig, run_identity

    def identity(definition):
        return run_identity(_stream(definition), TrainerConfig(epochs=1))["scenario"]

    perms = np.stack([np.random.default_rng(i).permutation(784) for i in range(3)])
    other = perms.copy()
    other[2, 100:700] = other[2, 100:700][::-1]
    assert identity({"perms": perms}) != identity({"perms": other})
    assert identity({"perms": torch.from_numpy(perms)}) != identity({"perms": torch.from_numpy(other)})
    assert identity({"w": torch.tensor([0.123451])}) != identity({"w": torch.tensor([0.123449])})
    assert identity({"w": np.array([1e-9])}) != identity({"w": np.array([1.1e-9])})
    assert identity({"perms": perms}) == identity({"perms": perms.copy()})  # (the values, not the object)
    floats = np.random.default_rng(0).random((3, 4))
    assert identity({"w": floats}) == identity({"w": np.asfortranarray(floats)})
    assert identity({"w": floats}) == identity({"w": floats.astype(">f8")})
    assert identity({"w": torch.tensor([1 + 2j]).conj()}) == identity({"w": torch.tensor([1 - 2j])})


def test_a_definitions_identity_is_kept_where_its_repr_was_whole():
    """A run saved before arrays were hashed by their bytes resumes where the repr it hashed showed every value: numpy
    numbers, small integer arrays and tensors; the built-in scenarios hold lists, as before."""
    import hashlib
    import json

    import numpy as np

    from metaspike.continual.trainer import TrainerConfig, run_identity

    names = [3, "t0", "t1", "t2"]
    for definition in ({"seed": np.int64(3), "order": np.arange(5), "classes": torch.tensor([1, 2]),
                        "groups": {0: [1, 2]}, "kinds": np.array(["cat", "dog"]), "day": np.datetime64("2026-12-06")},
                       None):
        before = json.dumps(["mine", definition, names, names, True, True, False], sort_keys=True, default=repr)
        assert (run_identity(_stream(definition), TrainerConfig(epochs=1))["scenario"]
                == hashlib.sha256(before.encode()).hexdigest())


@pytest.mark.parametrize("definition, message", [
    ([1, 2], "Scenario definition must be a dict of what rebuilds the stream .* or None, got list"),
    ("seed=1", "got str"),
])
def test_a_definition_that_is_not_a_dict_is_one_line(definition, message):
    with pytest.raises(ValueError, match=message):
        _stream(definition)
    assert _stream(None).definition is None  # (as before: no definition)


def test_joint_names_what_it_takes():
    from metaspike.continual import Scenario

    with pytest.raises(ValueError, match="joint takes a Scenario, got list"):
        joint([])
    with pytest.raises(ValueError, match="at least one task; 'none' has none"):
        joint(Scenario("none", [], []))
    assert len(joint(_stream({"seed": 1})).tasks) == 1  # (a stream made as it is reached joins too)
