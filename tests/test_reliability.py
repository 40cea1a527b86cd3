"""Damaged result files: checkpoints with changed tensor bytes, malformed run folders; one line naming the file."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from metaspike.app.plots import plot_run
from metaspike.continual.results import RunDirectory, latest_good_checkpoint, load_checkpoint, load_run


def _state(epochs_done: int) -> dict:
    from metaspike.continual.checkpoints import CHECKPOINT_FORMAT

    return {"format": CHECKPOINT_FORMAT, "position": {"task": 0, "epochs_done": epochs_done},
            "model": {"w": torch.arange(16, dtype=torch.float32) + epochs_done},
            "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}}


def _flip_tensor_bytes(checkpoint: Path) -> None:
    """Flip the first bytes of the first tensor's data file in the zip, keeping the zip itself valid."""
    with zipfile.ZipFile(checkpoint) as archive:
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    data_name = next(info.filename for info, _ in entries if info.filename.endswith("/data/0"))
    with zipfile.ZipFile(checkpoint, "w", zipfile.ZIP_STORED) as archive:
        for info, data in entries:
            if info.filename == data_name:
                data = bytes(b ^ 0xFF for b in data[:4]) + data[4:]
            archive.writestr(info, data)


def test_changed_tensor_bytes_are_caught_and_the_previous_checkpoint_used(tmp_path):
    run = RunDirectory.create(tmp_path, "run", {})
    run.checkpoint(_state(1))
    run.checkpoint(_state(2))
    newest = run.path / "checkpoint.pt"
    assert load_checkpoint(newest)["model"]["w"][0] == 2
    _flip_tensor_bytes(newest)
    assert torch.load(newest, weights_only=True)["position"]["epochs_done"] == 2  # torch alone sees nothing wrong
    with pytest.raises(ValueError) as info:
        load_checkpoint(newest)
    assert str(info.value) == f"checkpoint {newest} is damaged: its content does not match its checksum"
    state, warnings = latest_good_checkpoint(run.path)
    assert state["position"]["epochs_done"] == 1 and torch.equal(state["model"]["w"], torch.arange(16.0) + 1)
    assert "state_sha256" not in state
    assert warnings == [str(info.value)]


def test_unreadable_checkpoint_error_is_our_own_single_line(tmp_path):
    run = RunDirectory.create(tmp_path, "run", {})
    run.checkpoint(_state(1))
    path = run.path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"checkpoint {path} is truncated or corrupt (torch cannot read it: ")
    assert "\n" not in message and "\x1b" not in message and "weights_only" not in message


def test_checkpoint_without_a_checksum_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(_state(1), path)
    with pytest.raises(ValueError, match=r"checkpoint.pt lacks its checksum or the digest of its run's config.json"):
        load_checkpoint(path)


def test_an_accuracy_outside_0_100_in_a_results_file_is_one_line(tmp_path):
    """An edited 250 % was read back, and compare --resume wrote a forgetting of 174.72 points."""
    run = _run_folder(tmp_path)
    (run / "accuracy_matrix.csv").write_text("after_task,t1,t2\n1,250.0,\n2,85.5,91.0\n")
    with pytest.raises(ValueError, match=r"accuracy_matrix.csv line 2, column 't1': 250.0 is not an accuracy in "
                                         r"\[0, 100\]$"):
        load_run(run)
    (tmp_path / "curves").mkdir()
    run = _run_folder(tmp_path / "curves")
    (run / "curves.csv").write_text("task,epoch,global_epoch,loss,t1,t2\n1,1,1,0.5,-3,\n")
    with pytest.raises(ValueError, match=r"curves.csv line 2, column 't1': -3.0 is not an accuracy in \[0, 100\]$"):
        load_run(run)


def test_a_metrics_file_that_is_no_object_or_says_complete_as_a_string_is_one_line(tmp_path):
    from metaspike.app.runs import is_complete

    run = _run_folder(tmp_path)
    (run / "model.pt").write_bytes(b"")
    for text in ("[]", '{"complete": "false"}'):
        (run / "metrics.json").write_text(text)
        with pytest.raises(ValueError, match=r"metrics.json must be a JSON object whose 'complete' is true or false$"):
            is_complete(run)
    (run / "metrics.json").write_text('{"complete": false}')
    assert is_complete(run) is False


def test_the_run_lock_is_shared_as_the_umask_says(tmp_path):
    """The lock was made 0644 whatever the umask: a group member could write every file of a run but the lock."""
    import os

    from metaspike.app.runs import LOCK, run_lock

    before = os.umask(0o002)
    try:
        with run_lock(tmp_path):
            pass
    finally:
        os.umask(before)
    assert (tmp_path / LOCK).stat().st_mode & 0o777 == 0o664


def _run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"scenario": "permuted", "meta": 5.0, "epochs": 2}))
    (run / "accuracy_matrix.csv").write_text("after_task,t1,t2\n1,90.0,\n2,85.5,91.0\n")
    (run / "curves.csv").write_text("task,epoch,global_epoch,loss,t1,t2\n1,1,1,0.5,80,\n1,2,2,0.4,90,10\n"
                                    "2,1,3,0.3,88,80\n2,2,4,0.2,85.5,91\n")
    layer = {"shape": [4, 3], "edges": [-1.0, 0.0, 1.0], "counts": [5, 7]}
    (run / "hidden_weights.json").write_text(json.dumps([{"after_task": 1, "layers": {"0": layer}},
                                                         {"after_task": 2, "layers": {"0": layer}}]))
    return run


def test_a_good_run_folder_loads_and_plots(tmp_path):
    run = _run_folder(tmp_path)
    data = load_run(run)
    assert data["task_names"] == ["t1", "t2"]
    assert data["matrix"][1] == [85.5, 91.0] and data["matrix"][0][0] == 90.0 and data["matrix"][0][1] != data["matrix"][0][1]
    assert [p.name for p in plot_run(run)] == ["accuracy_curves.png", "hidden_weights.png"]


def test_a_long_stream_plots_without_a_legend_per_task_and_names_its_model(tmp_path, monkeypatch):
    import warnings

    import matplotlib.axes

    from metaspike.app import plots
    from metaspike.app.plots import _run_title

    run = tmp_path / "long"
    run.mkdir()
    tasks = 30  # beyond the legend's limit: tasks coloured by index with a colour bar
    names = [f"t{j + 1}" for j in range(tasks)]
    config = {"scenario": "permuted", "model": "bimu", "meta": [5.0, 30.0], "epochs": 1}
    (run / "config.json").write_text(json.dumps(config))
    rows = [[str(i), *(str(50.0 + j) if j < i else "" for j in range(tasks))] for i in range(1, tasks + 1)]
    (run / "accuracy_matrix.csv").write_text("\n".join([",".join(["after_task", *names]), *map(",".join, rows)]) + "\n")
    curves = [[str(i), "1", str(i), "0.5", *(str(50.0 + j) if j < i else "" for j in range(tasks))] for i in range(1, tasks + 1)]
    (run / "curves.csv").write_text("\n".join([",".join(["task", "epoch", "global_epoch", "loss", *names]),
                                               *map(",".join, curves)]) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's "Tight layout not applied" under a 30-entry legend
        assert plot_run(run)[0].name == "accuracy_curves.png"
    assert _run_title(config, run) == "permuted, bimu"  # BiMU has no meta
    assert _run_title({**config, "model": "bnn"}, run) == "permuted, bnn, meta = [5.0, 30.0]"
    assert _run_title({**config, "model": "bnn", "rule": "cascade"}, run) == "permuted, bnn, meta = [5.0, 30.0], rule cascade"
    assert _run_title({**config, "model": "bnn", "rule": "tanh"}, run) == "permuted, bnn, meta = [5.0, 30.0]"
    # at most MAX_DRAWN_TASKS curves, the first and last among them (60,000 tasks took a figure 131 s and 1.1 GB)
    monkeypatch.setattr(plots, "MAX_DRAWN_TASKS", 7)
    drawn, draw = [], matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, *a, **k: drawn.append(k.get("label")) or draw(ax, *a, **k))
    plot_run(run)
    assert [label for label in drawn if label.startswith("task")] == [f"task {j}" for j in (1, 6, 11, 15, 20, 25, 30)]


def test_a_results_folder_from_outside_draws_in_bounded_time_or_is_one_line(tmp_path):
    from metaspike.app.plots import MAX_HISTOGRAM_SNAPSHOTS, MAX_TITLE_PART, _evenly_chosen, _run_title

    run = _run_folder(tmp_path)
    with pytest.raises(ValueError, match=r"config.json: 'model' must be a string, got \['bnn'\]"):
        _run_title({"model": ["bnn"]}, run)
    title = _run_title({"scenario": "permuted", "model": "bnn", "meta": "9" * 10_000_000}, run)
    assert len(title) < 3 * MAX_TITLE_PART and title.endswith("...")
    layer = {"edges": [-1.0, 0.0, 1.0], "counts": [5, 7]}
    snapshots = [{"after_task": k, "layers": {"0": layer}} for k in range(1, 5001)]
    drawn = _evenly_chosen(snapshots, MAX_HISTOGRAM_SNAPSHOTS)
    assert len(drawn) == MAX_HISTOGRAM_SNAPSHOTS and drawn[0] is snapshots[0] and drawn[-1] is snapshots[-1]
    (run / "hidden_weights.json").write_text(json.dumps(snapshots))
    assert [p.name for p in plot_run(run)] == ["accuracy_curves.png", "hidden_weights.png"]
    # a lone surrogate (no encoding holds it) and $...$ (matplotlib's mathematics) failed inside matplotlib
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "model": "bnn\ud800", "scenario": "$x^$"}))
    assert [p.name for p in plot_run(run)] == ["accuracy_curves.png", "hidden_weights.png"]


@pytest.mark.parametrize("name, content, message", [
    ("accuracy_matrix.csv", "", "accuracy_matrix.csv is empty; was it cut short?"),
    ("accuracy_matrix.csv", "after_task,t1,t1\n1,90.0,\n2,85.5,91.0\n",
     "accuracy_matrix.csv names the column 't1' more than once in its header"),
    ("accuracy_matrix.csv", "after_task,t1,t2\n", "accuracy_matrix.csv holds no results (only its header)"),
    ("accuracy_matrix.csv", "after_task,t1,t2\n1,90.0,\n2,85.5,9", "accuracy_matrix.csv does not end with a line "
     "break, as every CSV file metaspike writes does: it was cut short"),
    ("accuracy_matrix.csv", "after_task,t1,t2\n1,90.0\n", "accuracy_matrix.csv line 2 has 2 cells, the header has 3"),
    ("accuracy_matrix.csv", "after_task,t1,t2\n1,90.0,abc\n",
     "accuracy_matrix.csv line 2, column 't2': 'abc' is not a finite number"),
    ("accuracy_matrix.csv", "after_task,t1,t2\n1,90.0,inf\n",
     "accuracy_matrix.csv line 2, column 't2': 'inf' is not a finite number"),
    ("accuracy_matrix.csv", "task,t1\n1,9\n", "accuracy_matrix.csv lacks the columns after_task in its header"),
    ("curves.csv", "task,epoch,global_epoch,loss,t1\n1,1,1,0.5,80\n", "curves.csv lacks the columns t2 in its header"),
    ("curves.csv", "global_epoch,t1,t2\n,80,90\n", "curves.csv line 2, column 'global_epoch': '' is not a finite number"),
    ("hidden_weights.json", '[{"after_task": 1, "layers": {"0": {"edges": [0', "hidden_weights.json is not valid JSON"),
    ("hidden_weights.json", '{"0": []}', "hidden_weights.json is malformed: expected a JSON list, found dict"),
    ("hidden_weights.json", '[{"after_task": 1}]',
     "hidden_weights.json is malformed: snapshot 1 is not an object with 'after_task' and 'layers'"),
    ("hidden_weights.json", '[{"after_task": 1, "layers": {"0": {"edges": [0, 1], "counts": [1, 2]}}}]',
     "hidden_weights.json is malformed: snapshot 1, layer '0': 2 counts need 3 edges, found 2"),
    ("hidden_weights.json", '[{"after_task": 1, "layers": {"0": {"edges": [0, "a"], "counts": [1]}}}]',
     "hidden_weights.json is malformed: snapshot 1, layer '0': 'edges' and 'counts' must be lists of finite numbers"),
    ("hidden_weights.json", '[{"after_task": 1, "layers": {"0": {"edges": [0, 1], "counts": [1]}}},'
                            ' {"after_task": 2, "layers": {"1": {"edges": [0, 1], "counts": [1]}}}]',
     "hidden_weights.json is malformed: snapshot 2 has layers 1, snapshot 1 has 0"),
    ("hidden_weights.json", '[{"after_task": 1, "layers": {"0": {"edges": [1, 0], "counts": [1]}}}]',
     "hidden_weights.json is malformed: snapshot 1, layer '0': 'edges' must not decrease from bin to bin"),
    ("hidden_weights.json", '[{"after_task": 1, "layers": {"0": {"edges": [-1e308, 1e308], "counts": [1]}}}]',
     "hidden_weights.json is malformed: snapshot 1, layer '0': 'edges' must not decrease from bin to bin and must lie "
     "within float32's range"),
    ("accuracy_matrix.csv",
     "after_task," + ",".join(f"t{i}" for i in range(20_000)) + "\n1," + ",".join(["5"] * 20_000) + "\n",
     "curves.csv lacks the columns t0, t3, t4, t5, t6, t7 and 19992 more in its header, which "),
    ("curves.csv", "global_epoch,t1,t2\n1e300,80,90\n",
     "global_epoch must hold increasing whole numbers in 1..1,000,000,000"),
    ("curves.csv", "global_epoch,t1,t2\n2,80,90\n1,80,90\n",
     "global_epoch must hold increasing whole numbers in 1..1,000,000,000"),
    ("hidden_weights.json", '[{"after_task": 1, "layers": {"0": {"edges": [0, 1], "counts": [-5]}}}]',
     "hidden_weights.json is malformed: snapshot 1, layer '0': 'counts' must be in [0, 2**53]"),
    # (numbers the figure cannot show: a log scale overflowing, a legend and a title of 4000 digits)
    ("hidden_weights.json", '[{"after_task": 1, "layers": {"0": {"edges": [0, 1], "counts": [1e308]}}}]',
     "hidden_weights.json is malformed: snapshot 1, layer '0': 'counts' must be in [0, 2**53]"),
    ("hidden_weights.json", '[{"after_task": 1' + "0" * 4000 + ', "layers": {}}]',
     "hidden_weights.json is malformed: snapshot 1: 'after_task' must be a task number in 1..1000000"),
    ("hidden_weights.json", '[{"after_task": 1, "layers": {"0": {"edges": [0, 1], "counts": [1], "shape": [1'
                            + "0" * 4000 + ', 2]}}}]',
     "hidden_weights.json is malformed: snapshot 1, layer '0': 'shape' must be a list of integers in [0, 2**53]"),
    ("hidden_weights.json", '[{"after_task": 1, "layers": {}}, {"after_task": 1, "layers": {}}]',
     "hidden_weights.json is malformed: snapshot 2: 'after_task' must be greater than the snapshot before's (1), "
     "found 1"),
    ("config.json", '{"meta": 5.0, "epo', "config.json is not valid JSON"),
    ("config.json", "[1, 2]", "config.json is malformed: expected a JSON object, found list"),
    ("metrics.json", "", "metrics.json is not valid JSON"),
    ("config.json", "[" * 100_000 + "]" * 100_000, "config.json is not valid JSON for metaspike (nested deeper"),
])
def test_a_malformed_run_file_gives_one_line_naming_it(tmp_path, name, content, message):
    run = _run_folder(tmp_path)
    (run / name).write_text(content)
    with pytest.raises(ValueError) as info:
        plot_run(run)
    assert str(run / name) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)
    assert not (run / "accuracy_curves.png").exists()


def test_a_compressed_archive_is_refused_before_torch_load_expands_it(tmp_path):
    """torch.save writes stored (uncompressed) zip members; a deflated member lets a small file inflate to gigabytes
    inside torch.load before anything is checked."""
    import io
    import zipfile

    import bnn
    from metaspike.continual.results import load_checkpoint
    from metaspike.files import check_torch_archive

    buffer = io.BytesIO()
    torch.save({"position": {}, "w": torch.zeros(1000, 1000)}, buffer)
    check_torch_archive(buffer.getvalue(), "plain")  # what torch.save writes passes
    deflated = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as out:
        for member in source.infolist():
            out.writestr(member.filename, source.read(member))
    assert len(deflated.getvalue()) < len(buffer.getvalue()) // 50
    for name in ("checkpoint.pt", "packed.pt"):
        (tmp_path / name).write_bytes(deflated.getvalue())
    with pytest.raises(ValueError, match="has compressed or oversized members, which torch.save never writes"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="has compressed or oversized members"):
        bnn.PackedMLP.load(tmp_path / "packed.pt")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_devices_pipes_and_folders_are_refused_by_every_reader_before_reading(tmp_path):
    """/dev/zero never ends and a pipe blocks its reader until someone writes: each loader refuses them (and a
    folder) from the file's type, with one line naming it, instead of reading until memory runs out or forever."""
    import bnn
    from metaspike.data import DataError, read_idx
    from metaspike.files import read_json

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    readers = {"checkpoint": load_checkpoint, "packed BNN file": bnn.PackedMLP.load, "JSON file": read_json,
               "IDX file": read_idx}
    for source in [tmp_path / "pipe", tmp_path / "folder"] + [Path("/dev/zero")] * Path("/dev/zero").exists():
        for what, read in readers.items():
            with pytest.raises(ValueError) as info:
                read(source)
            assert str(info.value) == f"{what} {source} is not a regular file (it is a device, pipe, socket or folder)"
    with pytest.raises(DataError):
        read_idx(tmp_path / "pipe")


def test_a_file_larger_than_the_memory_available_is_refused_by_every_reader_before_reading(tmp_path):
    """A sparse file takes no disk and claims any size: each reader of an outside file (checkpoints and packed models
    have no size of their own to expect) refuses one larger than the memory available, naming it, instead of asking
    for that much memory (a bare MemoryError, or a machine driven into swap); results CSVs are held to JSON's bound."""
    import bnn
    from metaspike.files import JSON_MAX_BYTES, memory_available

    available = memory_available()
    if available is None:
        pytest.skip("this system says nothing of its memory available")
    huge = tmp_path / "huge.pt"
    with open(huge, "wb") as handle:
        handle.truncate(available + (1 << 30))
    for what, read in {"checkpoint": load_checkpoint, "packed BNN file": bnn.PackedMLP.load}.items():
        with pytest.raises(ValueError, match=f"^{what} {huge} is [0-9,]+ bytes, more than the [0-9,]+ bytes of memory "
                                             "available to read it into$"):
            read(huge)
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "accuracy_matrix.csv", "wb") as handle:
        handle.truncate(JSON_MAX_BYTES + 1)
    with pytest.raises(ValueError, match=f"CSV file {run / 'accuracy_matrix.csv'} is [0-9,]+ bytes, more than the "
                                         f"{JSON_MAX_BYTES:,} this reader accepts"):
        load_run(run)


def _wait_until_it_catches(pid: int, signum: int) -> None:
    """Return once process ``pid`` has a handler for ``signum`` (Linux's /proc; elsewhere after half a second, by
    which the command is still importing torch): a fixed sleep could end before the handler was there on a loaded
    machine."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        time.sleep(0.5)
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        caught = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("SigCgt:")), "0")
        if int(caught, 16) >> (signum - 1) & 1:
            return
        time.sleep(0.005)
    pytest.fail(f"process {pid} never set a handler for signal {signum}")


@pytest.mark.parametrize("signum, status, line", [(signal.SIGINT, 130, "metaspike: interrupted"),
                                                  (signal.SIGTERM, 143, "metaspike: terminated (SIGTERM)")])
def test_a_stop_while_the_command_starts_is_one_line(tmp_path, signum, status, line):
    """Ctrl-C or a SIGTERM during the command's first second lands in its imports (torch's among them): one line,
    status 128 + the signal (a SIGTERM ended it without a word)."""
    command = [sys.executable, "-m", "metaspike", "train", "--dataset", "digits", "--tasks", "2", "--epochs", "1",
               "--hidden", "16", "--out", str(tmp_path)]
    # (a process started in the background inherits Ctrl-C ignored, and the command then keeps ignoring it)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_until_it_catches(process.pid, signal.SIGTERM)  # (its start-up handlers: both are set before torch loads)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == status, err
    assert err.strip() == line, err


@pytest.mark.parametrize("package", ["metaspike", "bnn"])
def test_an_older_torch_is_refused_at_import_with_one_line(tmp_path, package):
    """torch 2.3-2.10 compiled BiMU's weight samples wrongly, without an error: importing metaspike refuses them,
    from torch's version file (no torch is imported)."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise SystemExit('torch was imported')\n")
    (fake / "version.py").write_text("__version__ = '2.9.1+cpu'\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    done = subprocess.run([sys.executable, "-c", f"import {package}"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: metaspike needs torch 2.11 or newer, found torch 2.9.1+cpu: its torch.compile draws wrong "
        "Bayesian weight samples (pip install 'torch>=2.11')")


@pytest.mark.parametrize("name, config, message", [
    ("", {}, "a run's name must be one folder name"),
    ("a/b", {}, "a run's name must be one folder name"),
    ("run", {"optimizer": object()}, "the run's config cannot be written as JSON: Object of type object"),
    ("r\0n", {}, "a run's name must be one folder name \\(no '/', no NUL character\\)"),
    ("run", ["lr", 0.1], "the run's config must be a dict of settings, got list"),  # (written, then never loaded)
])
def test_a_run_directory_that_cannot_be_made_is_refused_before_its_folder_is(tmp_path, name, config, message):
    with pytest.raises(ValueError, match=message):
        RunDirectory.create(tmp_path, name, config)
    assert list(tmp_path.iterdir()) == []  # (an empty folder left behind made the next run "run-2")


def test_a_run_config_of_numpy_scalars_is_written_as_numbers(tmp_path):
    import numpy as np

    run = RunDirectory.create(tmp_path, "run", {"lr": np.float32(0.5), "epochs": np.int64(3), "m": torch.tensor(2.0)})
    assert json.loads((run.path / "config.json").read_text()) == {"lr": 0.5, "epochs": 3, "m": 2.0}


def _unreadable_to_zipfile(saved: bytes, inflated: int) -> bytes:
    """``saved`` (a torch.save archive) rewritten with its pickle deflated and padded to inflate by ``inflated`` zero
    bytes, and the last central-directory entry's comment ending in a ZIP64 locator "on disk 1": Python's zipfile
    refuses the archive ("span multiple disks"), torch's zip reader ignores the locator and inflates the member."""
    import io
    import struct

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(saved)) as source, zipfile.ZipFile(out, "w") as target:
        members = source.infolist()
        for k, member in enumerate(members):
            info = zipfile.ZipInfo(member.filename, date_time=(2020, 1, 1, 0, 0, 0))
            if k == len(members) - 1:
                info.comment = struct.pack("<4sIQI", b"PK\x06\x07", 1, 0, 2)
            data = source.read(member)
            if member.filename.endswith("data.pkl"):
                info.compress_type = zipfile.ZIP_DEFLATED
                data += bytes(inflated)  # (after the pickle's STOP opcode: never read)
            target.writestr(info, data)
    return out.getvalue()


def test_an_archive_pythons_zipfile_cannot_read_is_refused_before_torch_load_expands_it(tmp_path):
    """check_torch_archive bounds the members' sizes from zipfile's reading; an archive zipfile could not read was
    let through as "no zip archive", and torch's own reader then inflated it (a 1 MB file took 2.3 GB)."""
    import io

    import bnn

    buffer = io.BytesIO()
    torch.save(_state(1), buffer)
    hostile = _unreadable_to_zipfile(buffer.getvalue(), 1 << 22)
    assert len(hostile) < len(buffer.getvalue()) + 10_000  # 4 MiB of padding compresses to a few KB
    assert torch.load(io.BytesIO(hostile), weights_only=True)["position"]["epochs_done"] == 1  # torch reads it
    with pytest.raises(zipfile.BadZipFile, match="span multiple disks"):
        zipfile.ZipFile(io.BytesIO(hostile))
    packed = tmp_path / "good.pt"
    bnn.pack(bnn.use_population_statistics(bnn.MLP([8, 4, 2]), torch.rand(50, 8)).eval()).save(packed)
    (tmp_path / "checkpoint.pt").write_bytes(hostile)
    (tmp_path / "packed.pt").write_bytes(_unreadable_to_zipfile(packed.read_bytes(), 1 << 22))
    for what, path, load in [("checkpoint", tmp_path / "checkpoint.pt", load_checkpoint),
                             ("packed BNN file", tmp_path / "packed.pt", bnn.PackedMLP.load)]:
        with pytest.raises(ValueError) as info:
            load(path)
        assert str(info.value) == (
            f"{what} {path} starts as a zip archive but is not one Python's zipfile can read (BadZipFile: zipfiles "
            "that span multiple disks are not supported); torch.save writes plain zip archives, so it is damaged or "
            "was made by hand: refused before loading")


def test_a_zip_header_of_an_unknown_version_is_one_value_error(tmp_path):
    """One flipped bit in "version needed to extract" made zipfile raise NotImplementedError, which escaped
    load_checkpoint and PackedMLP.load instead of their one-line ValueError."""
    import bnn

    run = RunDirectory.create(tmp_path, "run", {})
    run.checkpoint(_state(1))
    packed = tmp_path / "packed.pt"
    bnn.pack(bnn.use_population_statistics(bnn.MLP([8, 4, 2]), torch.rand(50, 8)).eval()).save(packed)
    for what, path, load in [("checkpoint", run.path / "checkpoint.pt", load_checkpoint),
                             ("packed BNN file", packed, bnn.PackedMLP.load)]:
        raw = bytearray(path.read_bytes())
        raw[raw.find(b"PK\x01\x02") + 6] ^= 0x80  # low byte of the first central-directory entry's version needed
        path.write_bytes(bytes(raw))
        with pytest.raises(ValueError) as info:
            load(path)
        assert str(info.value).startswith(f"{what} {path} starts as a zip archive but is not one Python's zipfile "
                                          "can read (NotImplementedError: zip file version ")


def test_a_read_only_folder_is_named_before_anything_is_computed(tmp_path, monkeypatch):
    """writable_path, which a script calls before its work (the examples' --out), passed a folder of a read-only file
    system: the example trained its runs and then failed on the figure."""
    from metaspike.files import writable_path

    assert writable_path(tmp_path / "figure.png") == tmp_path / "figure.png"
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # (as a read-only mount answers, even to root)
    with pytest.raises(PermissionError, match=rf"^cannot write {re.escape(str(tmp_path))}/figure\.png: its folder .* "
                                              r"takes no new files \(read-only\)$"):
        writable_path(tmp_path / "figure.png")


def test_atomic_open_refuses_a_folder_before_writing_anything(tmp_path):
    """A folder as the target was written to a temporary file, fsynced, and then failed the rename with an
    IsADirectoryError naming that temporary file."""
    import bnn
    from metaspike.files import atomic_open

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "kept.txt").write_text("kept")
    written = []
    with pytest.raises(IsADirectoryError) as info:
        with atomic_open(folder, "wb") as handle:
            written.append(handle)
    assert str(info.value) == f"cannot write {folder}: it is a folder; name a file inside it or beside it"
    assert written == [] and sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    assert [p.name for p in folder.iterdir()] == ["kept.txt"]
    packed = bnn.pack(bnn.use_population_statistics(bnn.MLP([8, 4, 2]), torch.rand(50, 8)).eval())
    with pytest.raises(IsADirectoryError, match=f"cannot write {folder}: it is a folder"):
        packed.save(folder)
    link = tmp_path / "link"
    link.symlink_to(folder)
    with atomic_open(link) as handle:  # a link is replaced, as the rename does, never written through
        handle.write("new")
    assert not link.is_symlink() and link.read_text() == "new" and (folder / "kept.txt").read_text() == "kept"


def test_the_histograms_of_tiny_hidden_weights_are_read_back():
    """Edges rounded to 6 decimals repeated for weights below about 3e-5 (a zero-initialised readout at a tiny lr), and
    the reader refused the library's own file."""
    from metaspike.continual.checkpoints import check_histograms
    from metaspike.diagnostics import hidden_weight_histograms

    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight.uniform_(-3e-6, 3e-6)
    snapshot = hidden_weight_histograms(model)
    edges = snapshot["0"]["edges"]
    assert all(b > a for a, b in zip(edges, edges[1:]))
    check_histograms([{"after_task": 1, "layers": snapshot}], "hidden_weights.json")
    old = {"0": {**snapshot["0"], "edges": [round(e, 6) for e in edges]}}  # (as files before 2026-12-05 hold them)
    check_histograms([{"after_task": 1, "layers": old}], "hidden_weights.json")

    with torch.no_grad():  # (float32's largest: its range overflowed, the edges were written as null and refused)
        model[0].weight.copy_(torch.linspace(-3.4e38, 3.4e38, 32, dtype=torch.float64).view(4, 8))
    snapshot = hidden_weight_histograms(model)
    edges = snapshot["0"]["edges"]
    assert all(b > a for a, b in zip(edges, edges[1:])) and edges[0] == -edges[-1] == -3.4e38
    assert sum(snapshot["0"]["counts"]) == 32
    check_histograms([{"after_task": 1, "layers": snapshot}], "hidden_weights.json")
