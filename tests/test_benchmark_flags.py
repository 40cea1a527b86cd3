"""The benchmark and example scripts check their flags before they measure anything: one argparse line naming the
flag, never a traceback after minutes of training, a run counted twice or earlier runs read back as new ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *flags: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / script), *flags], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


@pytest.mark.parametrize("script, flags, message", [
    ("benchmarks/train_throughput.py", ["--out", "."], "argument --out: . is a folder; name a file"),
    ("benchmarks/sweep_default.py", ["--seeds", "1", "1"], "argument --seeds: 1 is given twice"),
    ("benchmarks/sweep_default.py", ["--dataset", "bogus", "--csv", "s.csv"], "unknown dataset 'bogus'"),
    ("benchmarks/rules_forgetting.py", ["--switch", "abc"], "argument --switch: must be a number >= 0 or one per"),
    ("benchmarks/long_stream.py", ["--no-steps", "--out", "earlier"], "argument --out: earlier holds 1 run(s) of an "
                                                                      "earlier benchmark; give another folder, or "
                                                                      "--resume"),
    ("benchmarks/neuron_tradeoff.py", ["--seeds", "x", "--out", "nt"], "argument --seeds: must be an integer in 0.."),
    ("benchmarks/own_conv_snn.py", ["--meta", "0", "0"], "argument --meta: 0.0 is given twice"),
    ("benchmarks/long_stream.py", ["--steps-only", "--no-steps"], "argument --no-steps: --steps-only runs the "
                                                                  "step-cost part alone"),
    ("benchmarks/rules_forgetting.py", ["--cascade", "5,30"], "argument --cascade: --meta takes one value or one per "
                                                              "layer (3 for --hidden 512 512), got 2"),
    ("benchmarks/rules_forgetting.py", ["--tanh", "0"], "argument --tanh: m = 0 is the plain BNN, which runs once"),
    ("benchmarks/rules_forgetting.py", ["--cascade", "5", "5,5,5"], "argument --cascade: 5.0 and 5.0,5.0,5.0 would be "
                                                                    "one run (permuted-mnist5k-meta5-cascade-seed1)"),
    ("examples/snntorch_tutorial_metaplastic.py", ["--meta", "-1"], "argument --meta: must be a finite number >= 0"),
    ("examples/snntorch_tutorial_metaplastic.py", ["--out", "none/x.png"], "argument --out: cannot write none/x.png: "
                                                                          "its folder none does not exist"),
    ("examples/snntorch_bimu.py", ["--out", "earlier"], "argument --out: cannot write earlier: it is a folder"),
])
def test_a_bad_flag_is_one_line_before_anything_runs(tmp_path, script, flags, message):
    (tmp_path / "afile").write_text("")
    (tmp_path / "earlier" / "runs" / "SGD" / "seed1").mkdir(parents=True)
    done = _run(script, *flags, cwd=tmp_path)
    assert done.returncode == 2 and f"error: {message}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "earlier"]  # (nothing written or made)


def test_a_long_stream_resumed_with_the_other_allocator_is_one_line(tmp_path):
    """A table's runs were resumed without --release-freed-memory after a start with it: their timings mixed two
    allocators, and nothing recorded either."""
    (tmp_path / "earlier" / "runs" / "SGD" / "seed1").mkdir(parents=True)
    (tmp_path / "earlier" / "freed_memory.json").write_text('{"freed_memory": "returned"}\n')
    done = _run("benchmarks/long_stream.py", "--no-steps", "--resume", "--methods", "SGD", "--out", "earlier",
                cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(
        "error: argument --release-freed-memory: the runs in earlier ran with freed memory returned; go on with "
        "--release-freed-memory, so that one table does not mix two allocators' timings"), done.stderr
    (tmp_path / "earlier" / "freed_memory.json").write_text("")  # (a damaged record: one line, no JSON traceback)
    done = _run("benchmarks/long_stream.py", "--no-steps", "--resume", "--methods", "SGD", "--out", "earlier",
                cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("freed_memory.json is damaged: it must hold "
                                                         '{"freed_memory": "kept"} or "returned"'), done.stderr


_HEADER = "setting,runs,settings,evaluated_mean_mean,evaluated_mean_std\n"


_MERGE_CASES = [  # (the second folder's table.csv, --out, what the error line says)
    (_HEADER + "SGD,3,,54.5,0.4\n", "first", "argument --out: first is one of the --merge folders; give a new folder"),
    (_HEADER + "EVIL,3,,1,1\n", "merged", "second/table.csv line 2 names the method 'EVIL', which this benchmark does "
                                          "not run"),
    (_HEADER + "SGD,3\n", "merged", "second/table.csv line 2 has 2 cells, its header 5"),
    (_HEADER + "SGD,3,,nan,1\n", "merged", "second/table.csv line 2 holds 'nan' where a finite number"),
    (_HEADER + "SGD,x,,1,1\n", "merged", "second/table.csv line 2: the count of runs must be a whole number >= 1"),
    (_HEADER + "SGD,\u00b2,,1,1\n", "merged", "second/table.csv line 2: the count of runs must be a whole number"),
    (_HEADER + "SGD,3,,1_000,1\n", "merged", "second/table.csv line 2 holds '1_000' where a finite number"),
    (_HEADER + "SGD,3,,1,1\nSGD,3,,1,1\n", "merged", "second/table.csv line 3 names the method 'SGD' a second time"),
    ("a,b\n", "merged", "second/table.csv is not a table of this benchmark"),
    ("", "merged", "second/table.csv is not a table of this benchmark"),
    ("\udcff", "merged", "second/table.csv cannot be read as a CSV table ('utf-8' codec can't decode"),
]

#: Runs ``long_stream.py --merge second first --out OUT`` in each case's folder, in one process (one import of torch)
_MERGES = """
import contextlib, io, json, os, runpy, sys
sys.path.insert(0, sys.argv_benchmarks)
outcomes = []
for case in sorted(os.listdir("."), key=int):
    os.chdir(case)
    sys.argv = ["long_stream.py", "--merge", "second", "first", "--out", open("out.txt").read()]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            runpy.run_path(os.path.join(sys.argv_benchmarks, "long_stream.py"), run_name="__main__")
            status = 0
        except SystemExit as stop:
            status = stop.code
    outcomes.append([status, err.getvalue()])
    os.chdir("..")
print(json.dumps(outcomes))
"""


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> tuple[Path, list]:
    """Each of :data:`_MERGE_CASES` merged in a folder of its own: ``(the folders' parent, [status, stderr] each)``."""
    root = tmp_path_factory.mktemp("merges")
    for case, (second, out, _) in enumerate(_MERGE_CASES):
        for folder, table in (("first", _HEADER + "BiMU,3,,59.5,0.5\n"), ("second", second)):
            (root / str(case) / folder).mkdir(parents=True)
            (root / str(case) / folder / "table.csv").write_bytes(table.encode("utf-8", "surrogateescape"))
        (root / str(case) / "out.txt").write_text(out)
    done = _run_code(_MERGES, root)
    assert done.returncode == 0, done.stderr
    return root, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", range(len(_MERGE_CASES)))
def test_a_merge_checks_every_table_and_never_writes_over_one(merged, case):
    """``--merge C A --out C`` wrote over C's table.csv, dropping its rows of methods the benchmark does not name
    without a word; short rows, NaN and text were copied into the merged table, and an empty or undecodable table
    ended in a traceback."""
    root, outcomes = merged
    second, _, message = _MERGE_CASES[case]
    status, stderr = outcomes[case]
    assert status == 2 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("long_stream.py: error: ")
    assert message in stderr.strip().splitlines()[-1], stderr
    assert (root / str(case) / "second" / "table.csv").read_bytes() == second.encode("utf-8", "surrogateescape")
    assert not (root / str(case) / "merged").exists()


_STOPPED_LONG_STREAM = """
import os, runpy, signal, sys, time
sys.argv = ["long_stream.py", "--no-steps", "--methods", "SGD", "EWC-Online", "--seeds", "3", "--out", "out"]
sys.path.insert(0, sys.argv_benchmarks)
import metaspike.app.reproduce.long_stream as streams
def run(*args, **kwargs):  # a SIGTERM while the runs train
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
streams.run = run
runpy.run_path(os.path.join(sys.argv_benchmarks, "long_stream.py"), run_name="__main__")
"""


def _run_code(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -c code`` in ``cwd``, where ``sys.argv_benchmarks`` in ``code`` names the benchmarks' folder."""
    code = code.replace("sys.argv_benchmarks", repr(str(ROOT / "benchmarks")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_a_stopped_benchmark_ends_in_one_line_that_says_how_to_go_on(tmp_path):
    done = _run_code(_STOPPED_LONG_STREAM, tmp_path)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "long_stream.py: terminated; the runs so far are kept in out: go on with python benchmarks/long_stream.py "
        "--out out --resume --no-steps --seeds 3 --methods SGD EWC-Online"), done.stderr
    assert "Traceback" not in done.stderr


_TERMINATED_TWICE = """
import os, signal, sys, time
sys.path.insert(0, sys.argv_benchmarks)
from common import run_benchmark
def main():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    finally:  # the second SIGTERM arrives while the first one unwinds, DELAY seconds after it
        time.sleep(DELAY)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)
run_benchmark(main)
"""


@pytest.mark.parametrize("delay, status, last_line", [(0.0, 143, "-c: terminated"), (1.5, -signal.SIGTERM, None)])
def test_a_sigterm_sent_twice_at_once_stops_with_its_line_and_a_later_one_ends_the_process(tmp_path, delay, status,
                                                                                          last_line):
    """GNU ``timeout`` sends its SIGTERM to the process and then to the process's group: the second one, while the
    first unwound, ended the process as the system's default does, without the line that says it was stopped. A
    second one a second or more later still ends it at once."""
    done = _run_code(_TERMINATED_TWICE.replace("DELAY", str(delay)), tmp_path)
    assert done.returncode == status, done.stderr
    lines = done.stderr.strip().splitlines()
    assert (lines[-1] if lines else None) == last_line, done.stderr


def test_a_stop_kept_from_a_finalizer_and_sent_again_is_raised_even_within_a_second_of_the_first():
    """The handler that lets a SIGTERM repeated within a second pass also took the one a finalizer's stop is sent again
    as (``keeping_stops``): the stop was lost and a run stopped in a finalizer ended with status 0 (one CI in four)."""
    from metaspike import stops

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(stops.Terminated):
            stops.stop_on_sigterm(signal.SIGTERM, None)
        repeated = signal.getsignal(signal.SIGTERM)
        assert repeated(signal.SIGTERM, None) is None  # (a repeat at once: the same stop, let pass)
        stops._kept[:] = [stops.Terminated(), stops.SENT, 1]  # (kept from a finalizer, and sent again)
        with pytest.raises(stops.Terminated):
            repeated(signal.SIGTERM, None)
    finally:
        stops.forget_kept_stop()
        signal.signal(signal.SIGTERM, previous)


_STOPPED_IN_A_FINALIZER = """
import gc, os, signal, sys, time
sys.path.insert(0, sys.argv_benchmarks)
from common import run_benchmark
class DrawnFigure:  # (matplotlib's figures run such finalizers while they are drawn)
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # (the handler runs here, inside the finalizer, where Python only prints what it raises)
def main():
    DrawnFigure()
    gc.collect()
    for _ in range(50):  # (the stop, sent again from a thread, lands within these 5 s: a sleep of 0.1 s ends first)
        time.sleep(0.1)
    print("finished")
run_benchmark(main)
"""


def test_a_sigterm_landing_in_a_finalizer_still_stops_a_benchmark(tmp_path):
    """Python only prints what a signal's handler raises inside a finalizer: the benchmark went on and ended with
    status 0."""
    done = _run_code(_STOPPED_IN_A_FINALIZER, tmp_path)
    assert done.returncode == 143 and "finished" not in done.stdout, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines()[-1] == "-c: terminated", done.stderr
