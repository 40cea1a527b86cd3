"""LazyCompiled (metaspike.compiled): a call runs its function once, compiled or eagerly, whatever torch does.

The functions here change their argument in place, so a second run shows: each adds 1 to a tensor of zeros once.
Adding 1 to 0 and doubling are exact in float32, so the results are compared exactly.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from metaspike.compiled import LazyCompiled, compiling_disabled


def _add_one_(x: torch.Tensor) -> torch.Tensor:
    x.add_(1)
    return x * 2


def _switched_off(how: str, monkeypatch: pytest.MonkeyPatch) -> contextlib.AbstractContextManager:
    """A context in which ``torch.compile`` runs functions uncompiled, in each way a user (or a tool) switches it
    off."""
    if how == "TORCHDYNAMO_DISABLE":
        monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
        return contextlib.nullcontext()
    return {
        "TORCH_COMPILE_DISABLE": lambda: torch._dynamo.config.patch(disable=True),  # (what the variable sets)
        "force_eager": lambda: torch.compiler.set_stance("force_eager"),
        "dispatch mode": lambda: FlopCounterMode(display=False),
    }[how]()


SWITCHES = ["TORCH_COMPILE_DISABLE", "TORCHDYNAMO_DISABLE", "force_eager", "dispatch mode"]


@pytest.mark.parametrize("how", SWITCHES)
def test_while_compiling_is_switched_off_a_call_runs_once_eagerly_without_a_word(how, monkeypatch):
    """With TORCH_COMPILE_DISABLE=1 (or under a dispatch mode) torch.compile(fullgraph=True) ran the function and then
    raised "found no compiled frames"; LazyCompiled took that for a failed compile and ran it again: every fused
    optimizer's first step was applied twice. Under TORCHDYNAMO_DISABLE=1 and force_eager it ran once but was reported
    compiled."""
    lazy = LazyCompiled(_add_one_, "test function")
    x = torch.zeros(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (switched off on purpose: nothing to warn about)
        with _switched_off(how, monkeypatch):
            assert compiling_disabled() and lazy.runs_eagerly()
            result = lazy(x)
    assert torch.equal(x, torch.ones(3)) and torch.equal(result, torch.full((3,), 2.0))
    assert lazy.last_call_eager and not lazy.broken


@pytest.mark.usefixtures("working_compiler")
@pytest.mark.parametrize("how", SWITCHES)
def test_switched_on_again_the_function_compiles(how, monkeypatch):
    """Called under a dispatch mode, torch's wrapper marked the function's code as skipped for good: every later call
    ran it uncompiled and raised again."""
    lazy = LazyCompiled(_add_one_, "test function")
    x = torch.zeros(3)
    with _switched_off(how, monkeypatch):
        lazy(x)
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    result = lazy(x)
    assert torch.equal(x, torch.full((3,), 2.0)) and torch.equal(result, torch.full((3,), 4.0))
    assert not lazy.last_call_eager and not lazy.runs_eagerly()


@pytest.fixture
def compiling_on(monkeypatch):
    """Compiling switched on whatever the environment: the stand-ins of torch's wrapper below are called only then."""
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    with torch._dynamo.config.patch(disable=False):
        yield


def _torch_wrapper_that_ran(fn, error: Exception):
    """A stand-in for torch's compiled wrapper that runs ``fn`` uncompiled, then raises ``error``."""
    def wrapper(*args):
        fn(*args)
        raise error
    return wrapper


@pytest.mark.usefixtures("compiling_on")
def test_a_function_torch_ran_uncompiled_and_then_refused_is_not_run_again():
    """The switches above are read before the call; for any other reason torch skips the frame, its error after the
    run is one line, and the function is not run a second time."""
    lazy = LazyCompiled(_add_one_, "test function")
    lazy._compiled = _torch_wrapper_that_ran(_add_one_, RuntimeError(
        "torch.compile with fullgraph=True found no compiled frames. Skipped frames:\n  - some reason"))
    x = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"^torch.compile ran the test function uncompiled, then raised \("
                                           r"RuntimeError: torch.compile with fullgraph=True found no compiled frames. "
                                           r"Skipped frames:\); its changes are made") as raised:
        lazy(x)
    assert "\n" not in str(raised.value) and raised.value.__cause__ is None
    assert torch.equal(x, torch.ones(3)) and lazy.broken
    lazy(x)  # (eagerly from now on, as torch skips the frame)
    assert torch.equal(x, torch.full((3,), 2.0))


@pytest.mark.usefixtures("compiling_on")
def test_an_error_of_the_compiled_code_while_it_ran_is_raised_and_not_run_again():
    lazy = LazyCompiled(_add_one_, "test function")
    lazy._compiled = _torch_wrapper_that_ran(_add_one_, torch.OutOfMemoryError("out of memory"))
    x = torch.zeros(3)
    with pytest.raises(torch.OutOfMemoryError, match="out of memory"):
        lazy(x)
    assert torch.equal(x, torch.ones(3)) and not lazy.broken


def _failed_compile(inner: Exception):
    """A stand-in for torch's compiled wrapper whose compile fails (before anything ran), as inductor's errors do."""
    def wrapper(*args):
        raise torch._dynamo.exc.BackendCompilerFailed(lambda: None, inner, None)
    return wrapper


@pytest.mark.usefixtures("compiling_on")
def test_a_failed_compile_warns_in_one_line_before_it_runs_eagerly_once():
    """Without a C++ compiler each function warned with torch's many lines; and the warning came after the eager run,
    so under warnings-as-errors the call raised after it had changed its arguments."""
    lazy = LazyCompiled(_add_one_, "test function")
    lazy._compiled = _failed_compile(RuntimeError("no C++ compiler here\nCommand: g++ ...\nmore"))
    x = torch.zeros(3)
    with pytest.warns(RuntimeWarning) as caught:
        result = lazy(x)
    assert [str(w.message) for w in caught] == [
        "torch.compile of the test function failed (RuntimeError: no C++ compiler here); running it eagerly (slower) "
        "from now on"]
    assert torch.equal(x, torch.ones(3)) and torch.equal(result, torch.full((3,), 2.0))
    assert lazy.broken and lazy.last_call_eager

    strict = LazyCompiled(_add_one_, "test function")
    strict._compiled = _failed_compile(RuntimeError("no C++ compiler here"))
    x = torch.zeros(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="torch.compile of the test function failed"):
            strict(x)
    assert torch.equal(x, torch.zeros(3))  # (stopped before anything changed)


@pytest.mark.usefixtures("compiling_on")
def test_torchs_own_warnings_while_compiling_are_shown_not_raised_under_warnings_as_errors():
    """Inductor warns (`torch.jit.script_method` is deprecated) while it compiles; under python -W error that failed
    every compile. A warning from a torch module during the call (here a stand-in of torch's wrapper) is shown;
    another module's warning is still raised."""
    torch_module = {"__name__": "torch._inductor.stand_in", "warnings": warnings}
    exec("def warn():\n    warnings.warn('deprecated inside torch', DeprecationWarning)", torch_module)
    lazy = LazyCompiled(_add_one_, "test function")
    lazy._compiled = lambda x: torch_module["warn"]() or _add_one_(x)
    x = torch.zeros(3)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("error")
        result = lazy(x)
        assert any(f[0] == "error" for f in warnings.filters)  # (the user's filters are back)
    assert [str(w.message) for w in shown] == ["deprecated inside torch"]
    assert torch.equal(x, torch.ones(3)) and torch.equal(result, torch.full((3,), 2.0)) and not lazy.last_call_eager

    lazy._compiled = lambda x: warnings.warn("the user's own", DeprecationWarning) or _add_one_(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DeprecationWarning, match="the user's own"):
            lazy(x)


@pytest.mark.usefixtures("working_compiler")
def test_a_first_compile_under_python_w_error_compiles():
    """Inductor's deprecation warning comes at its first compile in a process: a process of its own."""
    code = ("import torch\nfrom metaspike.compiled import LazyCompiled\n"
            "lazy = LazyCompiled(lambda x: x.add_(1), 'test function')\nx = torch.zeros(3)\nlazy(x)\n"
            "assert torch.equal(x, torch.ones(3)) and not lazy.last_call_eager, (x, lazy.last_call_eager)\n")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.usefixtures("working_compiler")
def test_an_error_raised_by_the_function_itself_reaches_the_caller_and_later_calls_stay_compiled():
    """A user's rule refusing its input raised its own error once, but marked the update broken: every later step of
    the process ran eagerly (slower) without a word."""
    refuse = {"now": True}

    def add_one_unless_refused(x: torch.Tensor) -> torch.Tensor:
        if refuse["now"]:
            raise ValueError("this rule refuses the step")
        return _add_one_(x)

    lazy = LazyCompiled(add_one_unless_refused, "test function")
    x = torch.zeros(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no warning: the error is the function's own)
        with pytest.raises(ValueError, match="this rule refuses the step"):
            lazy(x)
    assert torch.equal(x, torch.zeros(3)) and not lazy.broken
    refuse["now"] = False
    assert torch.equal(lazy(x), torch.full((3,), 2.0)) and torch.equal(x, torch.ones(3))
    assert not lazy.broken and not lazy.last_call_eager


_SIGNS_OF_A_LARGE_LAYER = """
import torch
from bnn.sign_buffers import _compiled_signs_into
w = torch.randn(512 * 2048, generator=torch.Generator().manual_seed(0))
out = torch.empty_like(w)
_compiled_signs_into(w, [out])
assert not _compiled_signs_into.last_call_eager
print(torch.backends.cpu.get_cpu_capability(), int((out != torch.where(w < 0, -1.0, 1.0)).sum()))
"""


def test_compiled_code_of_one_vector_width_is_not_taken_for_another(tmp_path, working_compiler):
    """torch's cache of compiled code gave a kernel compiled where AVX-512 was taken to a process that takes AVX2
    (ATEN_CPU_CAPABILITY=avx2, as a cache carried to another machine would), which wrote half of the signs wrong
    (524,288 of 1,048,576). The width is now part of the key: each process's signs are right. (On a CPU without
    AVX-512 both processes take AVX2, and the test checks the signs only.)"""
    env = {key: value for key, value in os.environ.items() if key != "ATEN_CPU_CAPABILITY"}
    env.update(TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    for capability in (None, "avx2"):
        run = subprocess.run([sys.executable, "-c", _SIGNS_OF_A_LARGE_LAYER], capture_output=True, text=True,
                             timeout=300, env=env if capability is None else {**env, "ATEN_CPU_CAPABILITY": capability})
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.split()[-1] == "0", run.stdout
