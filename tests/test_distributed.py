"""Distributed training: two processes (gloo, CPU) take the same steps as one process with the whole batch."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bnn import MLP
from metaspike.distributed import sync_batchnorm, world
from metaspike.optim import MetaplasticAdam
from metaspike.training import train_epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(230, 784, generator=g, dtype=torch.float64), torch.randint(0, 10, (230,), generator=g)


def _train(shard=(0, 1)):
    """Three steps in float64 (see the tolerance argument in the test)."""
    torch.manual_seed(0)
    model = MLP([784, 64, 10]).double()
    if shard[1] > 1:
        sync_batchnorm(model)
    opt = MetaplasticAdam(model.parameters(), lr=0.005, meta=5.0)
    x, y = _data()
    loss = train_epoch(model, opt, x, y, 100, torch.Generator().manual_seed(1), shard=shard)
    return loss, [t.detach().clone() for t in (*model.parameters(), *model.buffers())]  # (running statistics too)


def _worker(rank: int, size: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    torch.set_num_threads(1)
    try:
        assert world() == (rank, size)
        loss, params = _train((rank, size))
        if rank == 0:
            torch.save({"loss": loss, "params": params}, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_take_the_same_steps_as_one(tmp_path, one_thread):
    out = str(tmp_path / "two.pt")
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    two = torch.load(out, weights_only=True)
    loss, params = _train()
    # 3 optimizer steps (batches of 100, 100, 30 split 50/50, 50/50, 15/15). The two runs sum the same
    # terms in another order, so each gradient differs by at most about batch·u·Σ|terms| with u = 2^-53
    # (float64): below 1e-13 here (terms of order one, batch 100). Adam divides the first moment by
    # sqrt(v) + eps, whose derivative is at most 1/eps = 1e8 where a gradient is tiny, so one step may
    # differ by lr·1e-13·1e8 = 5e-8 and three steps by 1.5e-7: atol 1e-6 holds on any CPU. In float32
    # (u = 2^-24) the same bound exceeds a whole step (lr), which is why the test runs in float64.
    assert two["loss"] == pytest.approx(loss, rel=1e-10)
    for p, q in zip(params, two["params"]):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_train_gives_the_single_process_accuracy_matrix(tmp_path):
    args = ["train", "--dataset", "digits", "--tasks", "2", "--epochs", "1", "--hidden", "64", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "metaspike", *args,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "Warning" not in two.stderr, two.stderr[-2000:]  # --quiet: no deprecation warning per BatchNorm call
    one = subprocess.run([sys.executable, "-m", "metaspike", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    name = "permuted-digits-meta5-30-seed1"
    read = lambda d: [[float(v) for v in line.split(",")[1:]] for line in (d / name / "accuracy_matrix.csv").read_text().splitlines()[1:]]
    matrix_two, matrix_one = read(tmp_path / "two"), read(tmp_path / "one")
    # The steps agree up to rounding (test_two_processes_take_the_same_steps_as_one bounds it); what rounding becomes
    # after a binary network's sign flips has no bound (helper runs of other settings ended 0.5-3.4 points apart), so
    # the matrices are compared for what both runs must show: every task learned well above chance (10 %).
    assert len(matrix_two) == len(matrix_one) == 2
    assert all(row[j] > 50.0 for matrix in (matrix_two, matrix_one) for j, row in enumerate(matrix))
    assert '"processes": 2' in (tmp_path / "two" / name / "config.json").read_text()


def test_a_world_size_that_is_no_whole_number_is_one_line(monkeypatch, tmp_path, capsys):
    from metaspike.app.cli import main

    monkeypatch.setenv("WORLD_SIZE", "abc")  # (it read "invalid literal for int() with base 10: 'abc'")
    assert main(["train", "--dataset", "digits", "--tasks", "1", "--quiet", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("metaspike: error: the environment variable WORLD_SIZE must be a whole number "
                                       ">= 1 (torchrun sets it), got 'abc'\n")


@pytest.mark.parametrize("model, message", [
    ("mlp", "parts of as few as 1, and each of the 2 processes needs a sample of every step; give --tasks 718 or "
            "fewer$"),
    ("bnn", "parts of as few as 1, and model 'bnn' has BatchNorm, which cannot train on one sample, and each of the 2 "
            r"processes needs 2 samples of every step; give --tasks 359 or fewer, or use a model without it \("),
])
def test_a_stream_cut_too_fine_for_the_processes_names_tasks(monkeypatch, model, message):
    """Under torchrun each process needs a sample of every step: a stream of parts smaller than that stopped inside
    training, naming train_epoch's argument x ("x has 3 samples, fewer than the smallest batch that trains")."""
    from metaspike.app.config import RunConfig
    from metaspike.app.runs import make_run_scenario

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=f"^--tasks 1000: --scenario stream cuts the 1,437 training samples into "
                                         f"{message}"):
        make_run_scenario(RunConfig(datasets=("digits",), scenario="stream", tasks=1000, model=model))


def test_sigterm_stops_a_process_whose_peer_never_comes(tmp_path):
    """The rendezvous waits inside torch's C++ code, where the command's SIGTERM handler never ran: the process kept
    waiting for a peer that never came. It now ends on SIGTERM while it waits."""
    import signal
    import time

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    args = ["train", "--dataset", "digits", "--tasks", "1", "--quiet", "--out", str(tmp_path)]
    process = subprocess.Popen([sys.executable, "-m", "metaspike", *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # rank 0 listens on MASTER_PORT once it waits in the rendezvous
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("the process never reached the rendezvous")
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) != 0
    finally:
        process.kill()
        process.wait()


def test_a_model_through_sync_batchnorm_pickles():
    """A model passed through sync_batchnorm could not be saved whole: its classes were made on the fly. (Its running
    statistics and num_batches_tracked, which stayed 0, are compared with one process's in the two-process test.)"""
    import pickle

    net = sync_batchnorm(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.BatchNorm2d(4)))
    again = pickle.loads(pickle.dumps(net))
    assert [type(m).__name__ for m in again[1:]] == ["GlobalBatchNorm1d", "GlobalBatchNorm2d"]


def _unseeded_worker(rank: int, size: int, port: int, out: str) -> None:
    """Each process builds its model from its own seed, as a script without a shared seed does."""
    from metaspike.continual import ContinualTrainer, TrainerConfig, split
    from metaspike.data import ArrayDataset

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        x, y = torch.rand(120, 8, generator=generator), torch.randint(0, 4, (120,), generator=generator)
        scenario = split(ArrayDataset.from_tensors(x[:80], y[:80], "mine"),
                         ArrayDataset.from_tensors(x[80:], y[80:], "mine"), groups=2)
        torch.manual_seed(rank)
        model = torch.nn.Linear(8, 4)
        with open(f"{out}.{rank}.bars", "w") as bars, contextlib.redirect_stderr(bars):
            ContinualTrainer(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                             TrainerConfig(epochs=1, batch_size=20)).fit(scenario)
        torch.save([t.detach().clone() for t in model.parameters()], f"{out}.{rank}")
        torch.manual_seed(rank)
        try:
            ContinualTrainer(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4)),
                             lambda m: torch.optim.SGD(m.parameters(), lr=0.1), TrainerConfig(epochs=1, batch_size=20),
                             progress=False).fit(scenario)
        except ValueError as err:
            torch.save(str(err), f"{out}.{rank}.err")
    finally:
        dist.destroy_process_group()


def test_the_trainer_starts_every_process_from_the_first_ones_weights(tmp_path, one_thread):
    """Processes that built their models from other seeds ended up to 0.1 apart, with other matrices, silently; and a
    model with BatchNorm not passed through sync_batchnorm trained on each process's slice. Only the first process
    draws progress bars (every process's were drawn, interleaved on one line)."""
    out = str(tmp_path / "params")
    mp.start_processes(_unseeded_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    first, second = (torch.load(f"{out}.{rank}", weights_only=True) for rank in (0, 1))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert "pass the model through metaspike.distributed.sync_batchnorm first" in torch.load(f"{out}.0.err")
    bars = [Path(f"{out}.{rank}.bars").read_text() for rank in (0, 1)]
    assert "task 2/2 mine" in bars[0] and "task 1/2 mine" not in bars[1] and "batch/s" not in bars[1]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_with_the_rate_encoder_draws_the_spikes_one_process_draws(tmp_path):
    """Every process is seeded alike and drew its slice's spikes from the generator's first numbers, so the slices of
    a batch saw the same spikes and the run took other steps than one process (task 2 after task 2: 73.9 against
    67.8). Each process now draws the whole batch's spikes and keeps its slice's: the first training batch's spikes
    of the two processes, put together, are one process's. (The accuracy matrices need not be equal: the processes
    average their gradients, which rounds otherwise than one process's sum over the batch; on an AMD EPYC Zen 4 that
    moved task 2 after task 2 from 67.78 to 68.33.)"""
    neuron = tmp_path / "rate_neuron.py"
    neuron.write_text(
        "import dataclasses, os\n"
        "import snntorch as snn\n"
        "import torch\n"
        "from metaspike.snn import RateEncoder, register_neuron, spiking_mlp, surrogate\n"
        f"OUT = {str(tmp_path)!r}\n"
        "def keep_first_training_spikes(module, args, spikes):\n"
        "    path = os.path.join(OUT, 'spikes.' + os.environ.get('RANK', 'one') + '.pt')\n"
        "    if module.training and not os.path.exists(path):\n"
        "        torch.save(spikes, path)\n"
        "def build(spec):\n"
        "    spec = dataclasses.replace(spec, encoder='rate')\n"
        "    model = spiking_mlp(spec, lambda n, out: snn.Leaky(beta=0.9, spike_grad=surrogate('fast_sigmoid'),\n"
        "                        init_hidden=True, output=out, reset_mechanism='none' if out else 'zero'))\n"
        "    for module in model.modules():\n"
        "        if isinstance(module, RateEncoder):\n"
        "            module.register_forward_hook(keep_first_training_spikes)\n"
        "    return model\n"
        "register_neuron('rate-leaky', build)\n")
    pytest.importorskip("snntorch")
    args = ["train", "--dataset", "digits", "--tasks", "1", "--epochs", "1", "--import", str(neuron), "--model",
            "rate-leaky", "--hidden", "32", "--num-steps", "4", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "metaspike", *args,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    one = subprocess.run([sys.executable, "-m", "metaspike", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    whole = torch.load(tmp_path / "spikes.one.pt")
    halves = [torch.load(tmp_path / f"spikes.{rank}.pt") for rank in (0, 1)]
    assert halves[0].shape[1] + halves[1].shape[1] == whole.shape[1] and halves[0].shape[1] > 0  # (steps, batch, ...)
    assert torch.equal(torch.cat(halves, dim=1), whole)
    assert not torch.equal(halves[0], halves[1][:, : halves[0].shape[1]])  # (what the bug drew: one slice's spikes)


def test_a_rate_encoder_in_a_shared_batch_draws_its_rows_of_the_whole_batchs_spikes():
    from metaspike.distributed import batch_slice
    from metaspike.snn import RateEncoder

    x = torch.rand(10, 7, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    whole = RateEncoder()(x, num_steps=3)
    for start, stop in [(0, 5), (5, 10), (3, 4)]:
        torch.manual_seed(5)
        with batch_slice(10, start):
            assert torch.equal(RateEncoder()(x[start:stop], num_steps=3), whole[:, start:stop])


def test_a_lost_peer_under_torchrun_is_one_line_naming_how_to_continue(monkeypatch):
    """kill -9 of one worker left the other to die with 40 lines from inside gloo ("Connection reset by peer")."""
    from metaspike.app import runs
    from metaspike.app.cli import _lost_process

    monkeypatch.setenv("WORLD_SIZE", "2")
    lost = _lost_process(RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:16774: Connection "
                                      "reset by peer. This is typically caused by a remote worker hanging\nmore"))
    lost_process = ("another process of this torchrun launch stopped ([gloo/transport/tcp/pair.cc:537] Read error "
                    "[127.0.0.1]:16774: Connection reset by peer. This is typically caused by a remote worker "
                    "hanging); that process's own message says why; ")
    assert lost == lost_process + "it stopped before the run's folder was made and shared, so no checkpoint was kept"
    err = RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:16774: Connection reset by peer. This "
                       "is typically caused by a remote worker hanging")
    monkeypatch.setattr(runs, "world", lambda: (1, 2))  # (the survivor is the second of two processes)
    with pytest.raises(RuntimeError) as caught, runs.named_for_lost_processes(Path("runs/a")):
        raise err
    assert _lost_process(caught.value) == lost_process + (  # (the folder each process knows, not a placeholder)
        "the run's folder keeps its last checkpoint: continue it as it ran, torchrun --nproc-per-node 2 -m metaspike "
        "train --resume runs/a")
    assert _lost_process(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None  # (raised as it is)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _lost_process(RuntimeError("Connection reset by peer")) is None


def _fit(processes: int):
    """bnn.fit for one epoch in float64 (three steps: the tolerance argument of the test above holds)."""
    import bnn

    torch.manual_seed(0)
    model = MLP([784, 64, 10]).double()
    if processes > 1:
        sync_batchnorm(model)
    seen = []
    model.register_forward_pre_hook(lambda _, inputs: seen.append(len(inputs[0])) if model.training else None)
    history = bnn.fit(model, _data(), epochs=1, batch_size=100, meta=5.0, seed=1, progress=False)
    return history[0]["loss"], [t.detach().clone() for t in (*model.parameters(), *model.buffers())], seen


def _fit_worker(rank: int, size: int, port: int, out: str) -> None:
    import bnn

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    torch.set_num_threads(1)
    try:
        torch.manual_seed(rank)  # (each process builds another model: fit starts them all from the first one's)
        _ = torch.rand(rank + 1)
        loss, params, seen = _fit(size)
        torch.save({"loss": loss, "params": params, "seen": seen}, f"{out}.{rank}")
        try:
            bnn.fit(MLP([784, 8, 10]).double(), _data(), epochs=1, progress=False)
        except ValueError as err:
            torch.save(str(err), f"{out}.{rank}.err")
    finally:
        dist.destroy_process_group()


def test_bnn_fit_under_a_process_group_trains_the_slices_of_one_batch(tmp_path, one_thread):
    """bnn.fit inside a user's process group trained every process on the whole data alone, without a word."""
    out = str(tmp_path / "fit")
    mp.start_processes(_fit_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    first, second = (torch.load(f"{out}.{rank}", weights_only=True) for rank in (0, 1))
    loss, params, seen = _fit(1)
    assert seen == [100, 100, 30] and first["seen"] == second["seen"] == [50, 50, 15]
    assert first["loss"] == pytest.approx(loss, rel=1e-10) and second["loss"] == first["loss"]
    for p, q, r in zip(params, first["params"], second["params"]):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)  # (the bound of the test above)
        assert torch.equal(q, r)  # (both processes hold the same model)
    assert "pass the model through metaspike.distributed.sync_batchnorm first" in torch.load(f"{out}.0.err")


def test_a_signal_the_process_ignores_stays_ignored_through_the_rendezvous():
    """A torchrun job started with Ctrl-C ignored (in the background) could be killed by Ctrl-C while its processes
    met: the rendezvous set every stop signal to end the process."""
    import signal

    from metaspike.distributed import _signals_end_the_process

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _signals_end_the_process():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
