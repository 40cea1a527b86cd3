"""Stops (Ctrl-C, SIGTERM) inside ``metaspike.stops.handling_stops`` are never lost: not in a finalizer, and not where
native code calls Python and drops what it raises (a ``torch.compile`` guard, run before each compiled step, dropped
a SIGTERM and the run ended with status 0)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from metaspike import stops

ROOT = Path(__file__).resolve().parents[1]

_DROPPED_INSIDE_A_STEP = """
import os, signal, torch
from torch import nn
from metaspike.stops import handling_stops
from metaspike.training import train_epoch
steps = []
class Dropping(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
    def forward(self, x):
        if len(steps) == 1:  # (in the second step: what a compiled step's guard does with the handler's exception)
            try:
                os.kill(os.getpid(), SIGNUM)
                for _ in range(10**8):  # (the handler runs here)
                    pass
            except BaseException:
                pass
        return self.linear(x)
model = Dropping()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
optimizer.register_step_post_hook(lambda *_: steps.append(1))
with handling_stops():
    try:
        train_epoch(model, optimizer, torch.rand(40, 4), torch.randint(0, 3, (40,)), batch_size=5)
        print("trained on", len(steps))
    except KeyboardInterrupt as stop:  # (a handler of one's own, which does not call forget_kept_stop)
        print(type(stop).__name__, "after step", len(steps))
    train_epoch(model, optimizer, torch.rand(40, 4), torch.randint(0, 3, (40,)), batch_size=5)
    print("then trained on", len(steps))
try:
    with handling_stops():  # (a stop that leaves the block)
        os.kill(os.getpid(), SIGNUM)
        for _ in range(10**8):
            pass
except KeyboardInterrupt:
    print("stopped again")
train_epoch(model, optimizer, torch.rand(40, 4), torch.randint(0, 3, (40,)), batch_size=5)
print("after the block trained on", len(steps))
"""


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, "Terminated"), (signal.SIGINT, "KeyboardInterrupt")])
def test_a_stop_that_code_drops_inside_a_step_stops_training_after_that_step(signum, raised):
    """The stop is raised again at the step's end; once a handler took it, training goes on, in the block and after
    it (a stop that left the block, or one a handler of one's own took, stopped every later step of the process)."""
    code = _DROPPED_INSIDE_A_STEP.replace("SIGNUM", f"signal.{signum.name}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # (started in the
    # background, a process inherits Ctrl-C ignored, which handling_stops leaves ignored)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{raised} after step 2", "then trained on 10", "stopped again",
                                        "after the block trained on 18"], done.stderr


def test_outside_the_block_a_stop_is_not_remembered():
    """A library user's own process, which never asked for :func:`handling_stops`: a Ctrl-C it handles is not raised
    again by the next training step."""
    with pytest.raises(KeyboardInterrupt):
        stops.stop_on_sigint(signal.SIGINT, None)
    assert stops._kept == []
    stops.raise_kept_stop()  # (nothing remembered: returns)


def test_a_remembered_stop_is_raised_in_the_main_thread_only():
    """No signal lands in another thread: a training loop of one (a user's worker) is never stopped by a stop
    remembered for the main thread, which raises it."""
    stops._kept[:] = [stops.Terminated(), stops.RAISED, 1]
    try:
        elsewhere: list[BaseException] = []

        def train_step() -> None:
            try:
                stops.raise_kept_stop()
            except BaseException as err:  # (what the thread would have raised)
                elsewhere.append(err)

        worker = threading.Thread(target=train_step)
        worker.start()
        worker.join()
        assert elsewhere == []
        with pytest.raises(stops.Terminated):
            stops.raise_kept_stop()
        with pytest.raises(stops.Terminated):  # (raised again until a handler forgets it)
            stops.raise_kept_stop()
    finally:
        stops.forget_kept_stop()
    stops.raise_kept_stop()


@pytest.mark.parametrize("before", [signal.default_int_handler, signal.SIG_IGN])
def test_ctrl_c_is_remembered_where_python_handled_it_and_left_ignored_where_it_was(before):
    """A process started in the background inherits Ctrl-C ignored, and the command keeps ignoring it; Python's own
    handler is replaced by one that remembers the stop, and is back after the block."""
    previous = signal.signal(signal.SIGINT, before)
    try:
        with stops.handling_stops():
            inside = signal.getsignal(signal.SIGINT)
        assert inside is (stops.stop_on_sigint if before is signal.default_int_handler else signal.SIG_IGN)
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_signal_whose_handler_runs_while_a_handler_forgets_the_last_stop_raises_and_does_not_hang():
    """A signal's handler runs on the thread that holds the stops' lock (inside ``forget_kept_stop``, which the
    command's handler calls): it waited for that lock for ever, and the command could be ended by SIGKILL only."""
    code = ("import signal\nfrom metaspike import stops\nwith stops.handling_stops():\n    with stops._lock:\n"
            "        try:\n            stops.stop_on_sigint(signal.SIGINT, None)\n        except KeyboardInterrupt:\n"
            "            print('raised')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (done.returncode, done.stdout) == (0, "raised\n"), done.stderr


_DROPPED_IN_AN_EVALUATION = """
import os, signal, torch
from torch import nn
from metaspike.continual import ContinualTrainer, Scenario, Task, TrainerConfig
from metaspike.data import ArrayDataset
from metaspike.stops import handling_stops
steps, dropped = [], []
class Dropping(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
    def forward(self, x):
        if not self.training and len(steps) == 5 and not dropped:  # (the evaluation after the first epoch)
            dropped.append(1)
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10**8):  # (the handler runs here)
                    pass
            except BaseException:  # (what a compiled evaluation's guard does with it)
                pass
        return self.linear(x)
def task(name):
    data = ArrayDataset.from_tensors(torch.rand(40, 4), torch.randint(0, 3, (40,)), name)
    return Task(name, data, data)
def make_optimizer(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    return optimizer
trainer = ContinualTrainer(Dropping(), make_optimizer, TrainerConfig(epochs=3, batch_size=8), progress=False)
with handling_stops():
    try:
        tasks = [task("a"), task("b")]
        trainer.fit(Scenario("s", tasks, tasks))
        print("trained on", len(steps))
    except KeyboardInterrupt as stop:
        print(type(stop).__name__, "after step", len(steps))
"""


def test_a_stop_that_code_drops_in_an_evaluation_stops_the_fit_before_its_next_epoch():
    """It waited for the end of the whole run: every task trained, and the run was called complete."""
    done = subprocess.run([sys.executable, "-c", _DROPPED_IN_AN_EVALUATION], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["Terminated after step 5"], (done.stdout, done.stderr)
