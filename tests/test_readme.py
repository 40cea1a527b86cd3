"""The README's Python tour runs as written."""

import copy
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_tour_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    result = namespace["result"]
    assert len(result.matrix) == 2 and result.matrix[0][0] > 80
    assert namespace["history"][-1]["test_accuracy"] > 80
    assert "memory:" in capsys.readouterr().out


def test_readme_own_data_block_runs():
    import torch
    from sklearn.datasets import load_digits

    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "from_tensors" in b)
    x, y = load_digits(return_X_y=True)
    x = x / 16.0  # float64 features in [0, 1]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    namespace = {"torch": torch, "model": model, "x_train": x[:1400], "y_train": y[:1400], "x_test": x[1400:],
                 "y_test": y[1400:]}
    exec(compile(block, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert len(result.matrix) == 2 and result.matrix[0][0] > 80  # classes 0 and 1 after the first task


def test_readme_plugin_block_runs_and_its_penalty_acts():
    import torch
    from sklearn.datasets import load_digits

    from metaspike.continual import split
    from metaspike.data import ArrayDataset

    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "Plugin" in b)
    x, y = load_digits(return_X_y=True)
    train = ArrayDataset.from_tensors(x[:1400] / 16.0, y[:1400], "mine")
    test = ArrayDataset.from_tensors(x[1400:] / 16.0, y[1400:], "mine")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    namespace = {"model": model, "make_optimizer": lambda m: torch.optim.SGD(m.parameters(), lr=0.1)}
    exec(compile(block, "README.md", "exec"), namespace)
    trainer, anchor = namespace["trainer"], namespace["trainer"].plugins[0]
    plain = copy.deepcopy(model)
    scenario = split(train, test, groups=[[0, 1], [2, 3]], mode="class")
    result = trainer.fit(scenario)
    assert len(result.matrix) == 2 and all(torch.equal(p, a) for p, a in zip(model.parameters(), anchor.anchor))
    from metaspike.continual import ContinualTrainer, TrainerConfig

    ContinualTrainer(plain, namespace["make_optimizer"], TrainerConfig(epochs=3)).fit(scenario)
    assert not torch.equal(plain[1].weight, model[1].weight)  # (the penalty pulled task 2's training back)


def test_readme_spiking_blocks_run_as_pasted_and_their_optimizer_trains_the_network():
    """They used a network they never defined (``my_snntorch_sequential``), and imported neither nn nor snnTorch."""
    import pytest
    import torch

    pytest.importorskip("snntorch")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
              if "my_snntorch_sequential = " in b]
    assert len(blocks) == 2
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        network, optimizer = namespace["network"], namespace["optimizer"]
        first = next(p for p in network.parameters()).detach().clone()
        with __import__("metaspike").binarized_once():
            out = network(torch.rand(4, 1, 28, 28))
        (out[1] if isinstance(out, tuple) else out).sum().backward()
        optimizer.step()
        assert not torch.equal(next(p for p in network.parameters()), first)
