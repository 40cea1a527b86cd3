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


def test_a_resume_under_a_scheduler_refuses_the_settings_the_scheduler_does_not_move():
    """Under any scheduler a resume exempted lr, momentum and betas from the comparison: ReduceLROnPlateau keeps no
    base rate, so lr 0.8 went on from a run of lr 0.4; StepLR moves no momentum, so momentum 0 went on from 0.9."""
    plateau = lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0, threshold=10.0)  # noqa: E731
    log = KeepCheckpoints()
    whole = _trainer(plateau, mode="shared").fit(_scenario(), log=log)
    later = torch.load(io.BytesIO(log.saved[1]), weights_only=True)  # (after two reductions of 0.4)
    assert later["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.004)
    assert _trainer(plateau, mode="shared").fit(_scenario(), resume=later).matrix == whole.matrix
    faster = _trainer(plateau, mode="shared")
    faster.make_optimizer = lambda model: torch.optim.SGD(model.parameters(), lr=0.8)
    with pytest.raises(ValueError, match=r"lr = 0.004.* which ReduceLROnPlateau's reductions \(factor 0.1\) do not "
                                         r"reach from this run's lr 0.8"):
        faster.fit(_scenario(), resume=later)
    log = KeepCheckpoints()
    with_momentum = _trainer(_step_lr, mode="shared")
    with_momentum.make_optimizer = lambda model: torch.optim.SGD(model.parameters(), lr=0.4, momentum=0.9)
    with_momentum.fit(_scenario(), log=log)
    mid = torch.load(io.BytesIO(log.saved[1]), weights_only=True)
    with pytest.raises(ValueError, match=r"the checkpoint's optimizer has momentum = 0.9 in param group 0, where the "
                                         r"run's settings give 0"):
        _trainer(_step_lr, mode="shared").fit(_scenario(), resume=mid)


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
    class OwnChain(ChainedOptimizer):  # (torch names the subclass)
        pass

    for chain in (ChainedOptimizer, OwnChain):
        whole_chain = ContinualTrainer(torch.nn.Linear(16, 4), lambda m: chain(*make_optimizer(m).optimizers),
                                       TrainerConfig(epochs=2, batch_size=50), progress=False,
                                       make_scheduler=_step_lr)  # (torch's TypeError, from inside it)
        with pytest.raises(ValueError, match=r"^make_scheduler got a ChainedOptimizer, which torch's schedulers do "
                                             r"not take: schedule one of its optimizers, e.g. lambda chained: "):
            whole_chain.fit(_scenario())


def _lambda_lr(gamma):
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: gamma ** epoch)


def _mid_task_checkpoint(make_scheduler):
    log = KeepCheckpoints()
    whole = _trainer(make_scheduler, mode="shared").fit(_scenario(), log=log)
    return torch.load(io.BytesIO(log.saved[1]), weights_only=True), whole


@pytest.mark.parametrize("slow, fast", [
    (lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 0.9 ** e),  # (the factor a constant of the code)
     lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 0.01 ** e)),
    (_lambda_lr(0.9), _lambda_lr(0.01)),  # (the factor captured by the closure)
    (lambda o: torch.optim.lr_scheduler.MultiplicativeLR(o, lambda e: 0.9),
     lambda o: torch.optim.lr_scheduler.MultiplicativeLR(o, lambda e: 0.5)),
], ids=["constant", "closure", "multiplicative"])
def test_a_run_resumed_with_another_lr_lambda_is_refused_and_with_the_same_one_resumes_exactly(slow, fast):
    """torch's state dict keeps None for a plain function, so a run resumed with LambdaLR(o, lambda e: 0.01 ** e)
    instead of 0.9 ** e was accepted silently and gave other numbers (the README promises a refusal)."""
    mid, whole = _mid_task_checkpoint(slow)
    kind = mid["scheduler"]["kind"]
    with pytest.raises(ValueError, match=rf"^the checkpoint's {kind} has another lr_lambdas\[0\] than this run's "
                                         r"\(its code, constants, defaults or captured values differ"):
        _trainer(fast, mode="shared").fit(_scenario(), resume=mid)
    assert _trainer(slow, mode="shared").fit(_scenario(), resume=mid).matrix == whole.matrix


def test_a_chained_schedulers_functions_and_a_cyclic_scale_fn_are_fingerprinted_too():
    from metaspike.continual.schedulers import function_fingerprints

    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    chained = torch.optim.lr_scheduler.SequentialLR(
        sgd, [torch.optim.lr_scheduler.ConstantLR(sgd, 0.5, 2), torch.optim.lr_scheduler.LambdaLR(sgd, lambda e: 1.0)],
        [2])
    cyclic = torch.optim.lr_scheduler.CyclicLR(sgd, 0.01, 0.1, scale_fn=lambda x: 0.5, scale_mode="iterations")
    assert list(function_fingerprints(chained)) == ["_schedulers[1].lr_lambdas[0]"]
    assert list(function_fingerprints(cyclic)) == ["scale_fn"]
    other = torch.optim.lr_scheduler.CyclicLR(sgd, 0.01, 0.1, scale_fn=lambda x: 0.25, scale_mode="iterations")
    with pytest.raises(ValueError, match=r"the checkpoint's CyclicLR has another scale_fn than this run's"):
        load_scheduler_record(other, scheduler_record(cyclic))


def test_the_fingerprint_tells_apart_what_changes_a_function_and_nothing_else():
    import functools
    import math

    from metaspike.continual.schedulers import function_fingerprint

    def make(gamma, floor=0.1):
        return lambda e: max(floor, gamma ** e)

    class Decay:
        def __init__(self, gamma):
            self.gamma = gamma

        def __call__(self, epoch):
            return self.gamma ** epoch

    same = [(make(0.9), make(0.9)), (lambda e: 0.9 ** e, lambda e: 0.9 ** e), (Decay(0.9), Decay(0.9)),
            (functools.partial(pow, 0.9), functools.partial(pow, 0.9)), (math.exp, math.exp)]
    differ = [(make(0.9), make(0.01)), (make(0.9), make(0.9, floor=0.2)), (lambda e: 0.9 ** e, lambda e: 0.9 * e),
              (lambda e, k=1: k, lambda e, k=2: k), (Decay(0.9), Decay(0.5)),
              (functools.partial(pow, 0.9), functools.partial(pow, 0.5)), (math.exp, math.log),
              (make(torch.tensor(0.9)), make(torch.tensor(0.9001)))]
    assert all(function_fingerprint(a) == function_fingerprint(b) for a, b in same)
    assert all(function_fingerprint(a) != function_fingerprint(b) for a, b in differ)


def test_the_same_source_gives_the_same_fingerprint_in_another_process():
    """A resumed run is another process: its hash seed orders a set of strings otherwise, its objects lie at other
    addresses; none of that may change the fingerprint (or every resume would be refused)."""
    import os
    import subprocess
    import sys

    source = ("import math\nGAMMA = 0.9\ndef make(floor):\n    return lambda e: max(floor, GAMMA ** e) if e not in "
              "{'a', 'b', 'c'} else math.exp(-e)\n")
    script = (f"{source}from metaspike.continual.schedulers import function_fingerprint\n"
              "print(function_fingerprint(make(0.125)))")
    printed = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
               for seed in ("1", "2")]
    assert printed[0] == printed[1] and len(printed[0]) == 64


def test_a_checkpoint_written_before_functions_were_fingerprinted_resumes_as_before():
    mid, whole = _mid_task_checkpoint(_lambda_lr(0.9))
    del mid["scheduler"]["functions"]  # (what checkpoints held before)
    assert _trainer(_lambda_lr(0.9), mode="shared").fit(_scenario(), resume=mid).matrix == whole.matrix


def test_a_function_without_code_to_fingerprint_is_warned_of_on_resume():
    """A partial of a numpy ufunc has no Python code: the resume cannot compare it, and says so."""
    import functools

    import numpy as np

    from metaspike.continual.schedulers import function_fingerprint

    power = functools.partial(np.power, 0.9)
    assert function_fingerprint(power) is None
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    record = scheduler_record(torch.optim.lr_scheduler.LambdaLR(sgd, power))
    with pytest.warns(UserWarning, match=r"the LambdaLR's lr_lambdas\[0\] has no Python code to fingerprint, so this "
                                         "resume cannot tell whether it is the checkpoint's"):
        load_scheduler_record(torch.optim.lr_scheduler.LambdaLR(sgd, power), record)
