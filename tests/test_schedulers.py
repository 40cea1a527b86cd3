"""Learning-rate schedulers in ContinualTrainer: made with each optimizer, stepped per epoch, resumed exactly."""

import io

import pytest
import torch

from metaspike.continual import ContinualTrainer, TrainerConfig, split
from metaspike.continual.schedulers import load_scheduler_record, scheduler_record
from metaspike.data import ArrayDataset
from tests.test_resume import KeepCheckpoints


def _scenario():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(300, 16, generator=generator), torch.randint(0, 4, (300,), generator=generator)
    return split(ArrayDataset.from_tensors(x[:200], y[:200], "mine"),
                 ArrayDataset.from_tensors(x[200:], y[200:], "mine"), groups=2)


def _trainer(make_scheduler=None, optimizers=None, mode="per-task", epochs=3):
    torch.manual_seed(0)

    def make_optimizer(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.4)
        if optimizers is not None:
            optimizers.append(optimizer)
        return optimizer

    return ContinualTrainer(torch.nn.Linear(16, 4), make_optimizer,
                            TrainerConfig(epochs=epochs, batch_size=50, optimizer=mode),
                            progress=False, make_scheduler=make_scheduler)


def _step_lr(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)


@pytest.mark.parametrize("mode, final_lrs", [("per-task", [0.4 / 8, 0.4 / 8]), ("shared", [0.4 / 64])])
def test_the_scheduler_steps_once_per_epoch_and_starts_again_with_each_optimizer(mode, final_lrs):
    optimizers = []
    scheduled, plain = _trainer(_step_lr, optimizers, mode), _trainer(mode=mode)
    scheduled.fit(_scenario()), plain.fit(_scenario())
    assert [o.param_groups[0]["lr"] for o in optimizers] == pytest.approx(final_lrs)
    assert not torch.equal(scheduled.model.weight, plain.model.weight)  # the rate it set is what trained


def test_reduce_on_plateau_is_stepped_with_the_epoch_loss():
    optimizers = []
    _trainer(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0, threshold=10.0), optimizers).fit(
        _scenario())
    assert optimizers[0].param_groups[0]["lr"] < 0.4  # (a loss that does not fall by 10x counts as a plateau)


def test_a_run_resumed_mid_task_continues_its_schedule_exactly():
    log = KeepCheckpoints()
    whole = _trainer(_step_lr, mode="shared").fit(_scenario(), log=log)
    mid = torch.load(io.BytesIO(log.saved[1]), weights_only=True)
    assert mid["position"] == {"task": 0, "epochs_done": 2} and mid["scheduler"]["kind"] == "StepLR"
    assert _trainer(_step_lr, mode="shared").fit(_scenario(), resume=mid).matrix == whole.matrix
    with pytest.raises(ValueError, match="the checkpoint's run had a StepLR learning-rate scheduler and this one has "
                                         "none: resume with the same make_scheduler"):
        _trainer(mode="shared").fit(_scenario(), resume=mid)
    other = lambda o: torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.5)  # noqa: E731
    with pytest.raises(ValueError, match="the checkpoint's StepLR has step_size = 1, this run's 2"):
        _trainer(other, mode="shared").fit(_scenario(), resume=mid)
    faster = _trainer(_step_lr, mode="shared")
    faster.make_optimizer = lambda model: torch.optim.SGD(model.parameters(), lr=0.8)
    with pytest.raises(ValueError, match=r"the checkpoint's StepLR has base_lrs = \[0.4\], this run's \[0.8\]"):
        faster.fit(_scenario(), resume=mid)


def test_a_scheduler_of_another_optimizer_or_none_at_all_is_refused():
    stray = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="make_scheduler must build its scheduler over the optimizer it is given"):
        _trainer(lambda o: _step_lr(stray)).fit(_scenario())
    with pytest.raises(ValueError, match="make_scheduler must return a learning-rate scheduler .* int lacks step"):
        _trainer(lambda o: 3).fit(_scenario())
    with pytest.raises(ValueError, match="make_scheduler must be a function"):
        _trainer(_step_lr(stray))


def test_a_chained_scheduler_compares_its_parts_settings_not_their_progress():
    def chained(optimizer):
        return torch.optim.lr_scheduler.SequentialLR(
            optimizer, [torch.optim.lr_scheduler.ConstantLR(optimizer, 0.5, 2), _step_lr(optimizer)], [2])

    first = chained(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    for _ in range(3):
        first.optimizer.step()
        first.step()
    second = chained(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    load_scheduler_record(second, scheduler_record(first))
    assert second.last_epoch == 3


def test_a_scheduler_of_one_optimizer_of_a_chain_is_taken():
    """The README gives each chained optimizer its own scheduler; the trainer refused every scheduler of a chain."""
    from metaspike import ChainedOptimizer

    chains = []

    def make_optimizer(model):
        chain = ChainedOptimizer(torch.optim.SGD([model.weight], lr=0.4), torch.optim.SGD([model.bias], lr=0.1))
        chains.append(chain)
        return chain

    torch.manual_seed(0)
    trainer = ContinualTrainer(torch.nn.Linear(16, 4), make_optimizer, TrainerConfig(epochs=2, batch_size=50),
                               progress=False, make_scheduler=lambda chain: _step_lr(chain.optimizers[0]))
    trainer.fit(_scenario())
    assert [[o.param_groups[0]["lr"] for o in chain.optimizers] for chain in chains] == [[0.1, 0.1], [0.1, 0.1]]
