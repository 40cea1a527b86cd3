"""ChainedOptimizer: several optimizers stepped, zeroed and saved as one."""

import copy

import pytest
import torch

from metaspike import MESU, BiMU, ChainedOptimizer
from metaspike.bayesian import bayesianize, bimu_parameters, mesu_param_groups, plain_parameters
from metaspike.checks import TrainingDiverged


def _model_and_chain():
    torch.manual_seed(0)
    model = bayesianize(torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 3)), "bimu")
    chain = ChainedOptimizer(BiMU(bimu_parameters(model), likelihood_multiplier=50.0),
                             torch.optim.Adam(plain_parameters(model), lr=0.01))
    return model, chain


def _steps(model, chain, count: int) -> None:
    for _ in range(count):
        chain.zero_grad()
        model(torch.randn(5, 6)).pow(2).mean().backward()
        chain.step()


def test_a_chain_steps_every_optimizer_and_resumes_exactly_from_its_state_dict():
    model, chain = _model_and_chain()
    _steps(model, chain, 3)
    saved_model, saved_chain = {k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(chain.state_dict())
    torch.manual_seed(7)
    _steps(model, chain, 2)
    expected = [p.detach().clone() for p in model.parameters()]

    restored, other = _model_and_chain()
    restored.load_state_dict(saved_model)
    other.load_state_dict(saved_chain)
    torch.manual_seed(7)
    _steps(restored, other, 2)
    assert all(torch.equal(a, b) for a, b in zip(expected, restored.parameters()))
    assert len(chain.param_groups) == 2 and chain.state  # both optimizers' groups and state are visible


def test_a_chain_refuses_shared_parameters_other_objects_and_foreign_state():
    model, chain = _model_and_chain()
    with pytest.raises(ValueError, match="optimizer 1 updates parameters that an earlier optimizer updates too"):
        ChainedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(plain_parameters(model), lr=0.1))
    with pytest.raises(ValueError, match="optimizer 0 is a list, not a torch.optim.Optimizer"):
        ChainedOptimizer([])
    with pytest.raises(ValueError, match="ChainedOptimizer needs at least one optimizer"):
        ChainedOptimizer()
    with pytest.raises(ValueError, match="state_dict holds 1 optimizer states; this chain has 2"):
        chain.load_state_dict({"optimizers": [chain.optimizers[0].state_dict()]})
    with pytest.raises(ValueError, match="state_dict holds no optimizer states; this chain has 2"):
        chain.load_state_dict(chain.optimizers[0].state_dict())
    swapped = ChainedOptimizer(*reversed(chain.optimizers))
    before = copy.deepcopy(swapped.state_dict())
    first = type(swapped.optimizers[0]).__name__
    with pytest.raises(ValueError, match=rf"^state_dict: optimizer 0 of the chain \({first}\) was given a state "
                                         r"whose groups set .+, which its own do not and another of the chain's "
                                         "does: a chain loads the state dict of a chain of the same optimizers in the "
                                         "same order$"):
        swapped.load_state_dict(chain.state_dict())  # (the chain's order differs: which one failed was not said)
    assert repr(swapped.state_dict()) == repr(before)  # (all or nothing)
    edited = copy.deepcopy(chain.state_dict())
    edited["optimizers"][0]["param_groups"][0]["N"] = -5.0  # (the right optimizer, a bad setting: its own words)
    with pytest.raises(ValueError, match=r"^N must be a finite number in \[1, "):
        chain.load_state_dict(edited)
    # SGD's state loaded into Adam without a word (before any step, torch's load takes it), whose step failed on betas
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    sgd_first = ChainedOptimizer(torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.Adam(b.parameters()))
    with pytest.raises(ValueError, match=r"^state_dict: optimizer 0 of the chain \(Adam\) was given a state whose "
                                         r"groups set dampening, momentum, which its own do not"):
        ChainedOptimizer(torch.optim.Adam(a.parameters()), torch.optim.SGD(b.parameters(), lr=0.1)).load_state_dict(
            sgd_first.state_dict())
    torch.optim.lr_scheduler.StepLR(sgd_first.optimizers[0], 1)  # (initial_lr in its groups: not another's setting)
    other_model = torch.nn.Linear(3, 2, bias=False)
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):  # (torch's own words)
        ChainedOptimizer(torch.optim.SGD(other_model.parameters(), lr=0.1),
                         torch.optim.Adam(b.parameters())).load_state_dict(sgd_first.state_dict())
    with pytest.raises(ValueError, match="^Adam holds the BiMU latent weight tensors of Bayesian synapses"):
        ChainedOptimizer(torch.optim.Adam(model.parameters()))  # (in a loop of one's own too, not only a trainer's)


@pytest.mark.parametrize("bimu_first", [True, False])
def test_a_non_finite_gradient_changes_nothing_whatever_the_order_of_the_chain(bimu_first):
    """BiMU refuses a NaN gradient; Adam, stepped before it, wrote NaN into the other parameters."""
    torch.manual_seed(0)
    model = bayesianize(torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 3)), "bimu")
    bimu, adam = BiMU(bimu_parameters(model)), torch.optim.Adam(plain_parameters(model), lr=0.01)
    chain = ChainedOptimizer(*((bimu, adam) if bimu_first else (adam, bimu)))
    x = torch.randn(5, 6)
    x[0, 0] = float("nan")
    model(x).pow(2).mean().backward()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TrainingDiverged, match="BiMU.step: the gradient of parameter 0 of param group 0 holds NaN"):
        chain.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not adam.state and not bimu.state
    assert [type(o).__name__ for o in chain.optimizers] == (["BiMU", "Adam"] if bimu_first else ["Adam", "BiMU"])


def test_a_non_finite_gradient_of_a_later_bayesian_optimizer_changes_nothing_of_an_earlier_one():
    torch.manual_seed(0)
    binary = bayesianize(torch.nn.Sequential(torch.nn.Linear(6, 4)), "bimu", scale=None)
    gaussian = bayesianize(torch.nn.Sequential(torch.nn.Linear(6, 4)), "mesu", scale=None)
    chain = ChainedOptimizer(BiMU(bimu_parameters(binary)), MESU(mesu_param_groups(gaussian)))
    x = torch.randn(5, 6)
    binary(x).pow(2).mean().backward()
    x[0, 0] = float("inf")
    gaussian(x).pow(2).mean().backward()
    before = [copy.deepcopy(m.state_dict()) for m in (binary, gaussian)]
    with pytest.raises(TrainingDiverged, match="MESU.step: the gradient of parameter 0 of param group 0 holds NaN"):
        chain.step()
    for saved, model in zip(before, (binary, gaussian)):
        assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_a_metaplastic_adam_setting_edited_out_of_range_changes_nothing_of_an_earlier_optimizer():
    """MetaplasticAdam checks its groups before a step, as MESU and BiMU do: in a chain every one is checked before
    any steps, so a refused step leaves every model as it was."""
    import metaspike

    torch.manual_seed(0)
    binary = bayesianize(torch.nn.Sequential(torch.nn.Linear(6, 4)), "bimu", scale=None)
    hidden = metaspike.binarize(torch.nn.Sequential(torch.nn.Linear(6, 4, bias=False)), scale=None)
    adam = metaspike.MetaplasticAdam(hidden.parameters(), meta=1.0)
    chain = ChainedOptimizer(BiMU(bimu_parameters(binary)), adam)
    x = torch.randn(5, 6)
    (binary(x).pow(2).mean() + hidden(x).pow(2).mean()).backward()
    before = [copy.deepcopy(m.state_dict()) for m in (binary, hidden)]
    for key, value, message in (("meta", -1.0, r"a param group's meta must be a finite number in \[0, "),
                                ("rule", "bogus", "unknown consolidation rule 'bogus'"),
                                ("lr", torch.tensor(float("nan")), "a param group's lr must be a finite number")):
        good = adam.param_groups[0][key]
        adam.param_groups[0][key] = value  # (a hand's or a scheduler's edit: meta -1 would invert the rule)
        with pytest.raises(ValueError, match=message):
            chain.step()
        adam.param_groups[0][key] = good
        for saved, model in zip(before, (binary, hidden)):
            assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    # an optimizer metaplastic() hooked: its groups' meta and rule are checked before the chain steps too
    sgd = metaspike.metaplastic(torch.optim.SGD(hidden.parameters(), lr=0.1), meta=1.0)
    chain = ChainedOptimizer(BiMU(bimu_parameters(binary)), sgd)
    sgd.param_groups[0]["meta"] = -1.0
    with pytest.raises(ValueError, match=r"a param group's meta must be a finite number in \[0, "):
        chain.step()
    for saved, model in zip(before, (binary, hidden)):
        assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_a_chain_refuses_an_optimizer_that_needs_a_closure_at_every_step():
    model, chain = _model_and_chain()
    with pytest.raises(ValueError, match=r"^optimizer 1 \(LBFGS\) needs a closure at every step, which a chain does "
                                         r"not give it \(it evaluates a closure once for all\): step it on its own$"):
        ChainedOptimizer(chain.optimizers[0], torch.optim.LBFGS(plain_parameters(model)))
    scheduled = torch.optim.Adam(plain_parameters(model), lr=0.01)
    torch.optim.lr_scheduler.StepLR(scheduled, step_size=10)  # (its wrapper of step reads (self, closure=None))
    assert ChainedOptimizer(chain.optimizers[0], scheduled).optimizers[1] is scheduled


def test_a_chain_state_whose_parts_share_a_tensor_loads_them_apart():
    """A state dict of a chain whose SGD momentum was its Adam's first moment (one tensor in the file) was stepped
    twice a step; each part's own load cannot see the other part's tensors, so the chain gives them memory of their
    own together."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    chain = ChainedOptimizer(torch.optim.SGD([a], lr=0.1, momentum=0.9), torch.optim.Adam([b], lr=0.1))
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    chain.step()
    state = chain.state_dict()
    state["optimizers"][0]["state"][0]["momentum_buffer"] = state["optimizers"][1]["state"][0]["exp_avg"]
    chain.load_state_dict(state)
    momentum = chain.optimizers[0].state[a]["momentum_buffer"]
    moment = chain.optimizers[1].state[b]["exp_avg"]
    assert torch.equal(momentum, moment) and momentum.data_ptr() != moment.data_ptr()
