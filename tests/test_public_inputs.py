"""Public helpers given an argument of the wrong kind: one ``ValueError`` naming the argument, never an
``AttributeError`` from inside the helper."""

from __future__ import annotations

import re

import pytest
import torch

from metaspike.data import default_data_dir
from metaspike.optim import MetaplasticAdam, inherit_rule_states
from metaspike.quantizers import magnitude_gate
from metaspike.rules.base import state_to_dict
from metaspike.snn import reset_states


def _optimizer() -> MetaplasticAdam:
    return MetaplasticAdam([{"params": [torch.nn.Parameter(torch.ones(2))], "consolidate": True}], meta=1.0)


@pytest.mark.parametrize(("call", "named"), [
    (lambda: reset_states([torch.nn.Linear(2, 2)]), "reset_states takes a torch.nn.Module, got list"),
    (lambda: inherit_rule_states(_optimizer(), 3), "previous must be a torch optimizer"),
    (lambda: inherit_rule_states({"lr": 1}, _optimizer()), "optimizer must be a torch optimizer"),
    (lambda: state_to_dict("counts"), "state_to_dict takes a rule's state record"),
    (lambda: default_data_dir(3), "the data folder must be a path"),
    (lambda: magnitude_gate([0.5, 2.0]), "magnitude_gate's input must be a real floating-point tensor, got list"),
    (lambda: magnitude_gate(torch.ones(2, dtype=torch.complex64)), "got torch.complex64"),
    (lambda: magnitude_gate(torch.ones(2, dtype=torch.int64)), "got torch.int64"),
])
def test_an_argument_of_the_wrong_kind_is_one_line_naming_it(call, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.").replace("(", r"\(")):
        call()


class _BytesPath:
    """An ``os.PathLike`` of bytes, which pathlib does not take."""

    def __fspath__(self) -> bytes:
        return b"m.pt"


def _nul_paths():
    from metaspike.app.compare import resume_comparison
    from metaspike.app.imports import import_modules
    from metaspike.app.reproduce import resume_reproduction
    from metaspike.app.runs import resume
    from metaspike.continual.results import latest_good_checkpoint, unique_directory
    from metaspike.files import as_path

    nul = r" 'x\x00y' holds a NUL character, which no file name may hold"
    return [(lambda: unique_directory("x\0y", "run"), "the results folder" + nul),
            (lambda: latest_good_checkpoint("x\0y"), "run folder" + nul),
            (lambda: default_data_dir("x\0y"), "the data folder" + nul),
            (lambda: import_modules(["x\0y"]), r"--import 'x\x00y': holds a NUL character"),
            (lambda: resume("x\0y"), "--resume" + nul),
            (lambda: resume_comparison("x\0y"), "--resume" + nul),
            (lambda: resume_reproduction("x\0y"), "--resume" + nul),
            (lambda: as_path(_BytesPath(), "packed BNN file"), "packed BNN file must be a path of text (a str, or an "
                                                               "os.PathLike whose __fspath__ returns one), got "
                                                               "_BytesPath returning bytes")]


@pytest.mark.parametrize("case", range(8))
def test_a_path_holding_a_nul_character_or_of_bytes_is_one_line_naming_it(case):
    """Python's system calls say only "embedded null byte", and h5py cut a NIR file's name at the NUL (it wrote another
    file); pathlib's TypeError for a bytes path named no argument."""
    call, message = _nul_paths()[case]
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        call()


_NO_USER = "~no-such-user-of-metaspike/runs"


def _unknown_home_folders():
    from metaspike.app.runs import resume
    from metaspike.continual.results import unique_directory

    unknown = f" '{_NO_USER}': the system knows no home folder for '~no-such-user-of-metaspike'"
    return [(lambda: resume(_NO_USER), "--resume" + unknown),
            (lambda: unique_directory(_NO_USER, "run"), "the results folder" + unknown),
            (lambda: default_data_dir(_NO_USER), "the data folder" + unknown)]


@pytest.mark.parametrize("case", range(3))
def test_a_path_under_an_unknown_users_home_folder_is_one_line_naming_it(case):
    """pathlib's expanduser raised "RuntimeError: Could not determine home directory." with a traceback."""
    call, message = _unknown_home_folders()[case]
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        call()


@pytest.mark.parametrize("argv", [["train", "--resume", _NO_USER], ["compare", "--resume", _NO_USER],
                                  ["train", "--dataset", "digits", "--out", _NO_USER],
                                  ["train", "--dataset", "digits", "--data-dir", _NO_USER],
                                  ["reproduce", "fig5ab", "--out", _NO_USER]])
def test_the_command_names_a_flag_under_an_unknown_users_home_folder(argv, capsys):
    from metaspike.app.cli import main

    assert main(argv) == 2
    flag = argv[-2]
    assert capsys.readouterr().err.strip() == (f"metaspike: error: {flag} '{_NO_USER}': the system knows no home "
                                               "folder for '~no-such-user-of-metaspike'")


def test_the_checks_leave_right_arguments_working():
    x = torch.tensor([-2.0, 0.5], requires_grad=True)
    magnitude_gate(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0]  # (|x| = 2 lies beyond 3·width/2, |x| = 0.5 on the box's edge)
    assert inherit_rule_states(_optimizer(), _optimizer()) == 0
    assert str(default_data_dir("~/sets")).endswith("sets")


def test_magnitude_gate_traces_with_torch_fx():
    """The input check took torch.fx's proxy for a wrong input."""
    import bnn

    traced = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(4, 3), bnn.MagnitudeGate()))
    x = torch.randn(5, 4)
    assert torch.equal(traced(x), magnitude_gate(traced.get_submodule("0")(x)))
