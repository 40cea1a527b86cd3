"""ChainedOptimizer: several optimizers stepped, zeroed and saved as one."""

import copy

import pytest
import torch

from metaspike import BiMU, ChainedOptimizer
from metaspike.bayesian import bayesianize, bimu_parameters, plain_parameters


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
