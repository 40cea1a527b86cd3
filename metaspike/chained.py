"""Several optimizers stepped as one: e.g. :class:`~metaspike.bayesian.BiMU` for a model's Bayesian
synapses and Adam for its other parameters (output gains, biases, norm layers).

Anything that takes one optimizer (:class:`metaspike.continual.ContinualTrainer`, a training loop,
a checkpoint) takes a :class:`ChainedOptimizer`. Its param groups are the chained optimizers' own
group dicts (changing a group's ``lr`` changes that optimizer), and its state dict holds theirs.
torch's learning-rate schedulers take one ``torch.optim.Optimizer``: give each chained optimizer its own
(``StepLR(chained.optimizers[1], ...)``).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from metaspike.bayesian.optim import _DataGatedOptimizer, check_synapse_optimizers
from metaspike.checks import listed
from metaspike.optim import check_before_step
from metaspike.optimizer_state import own_state_tensors

__all__ = ["ChainedOptimizer", "needs_closure"]

#: What torch's learning-rate schedulers add to the param groups they schedule (``initial_lr``; OneCycleLR's and
#: CyclicLR's bounds): not a setting of any optimizer.
_SCHEDULER_KEYS = frozenset({"initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum"})


class ChainedOptimizer:
    """Step, zero and save several optimizers over disjoint parameters as one.

    torch's learning-rate schedulers refuse a chain (they take one ``torch.optim.Optimizer``): give each chained
    optimizer its own, e.g. ``StepLR(chain.optimizers[0], step_size=100)``.

    A step is all or nothing where a MESU, BiMU or metaplastic optimizer refuses it (for MESU and BiMU a gradient
    holding NaN or infinite values; for any of them a setting out of range or an unknown rule): each of them is
    checked before any optimizer steps. A metaplastic optimizer steps on a NaN gradient, as torch's optimizers do (its
    weights turn NaN).

    Args:
        *optimizers: ``torch.optim.Optimizer`` instances; no parameter may belong to two of them, none may need a
            closure at every step (``LBFGS``: it evaluates the loss several times a step; step it on its own), and
            only MESU and BiMU may hold the tensors of Bayesian synapses (another would train them as plain weights:
            :func:`~metaspike.bayesian.optim.check_synapse_optimizers`).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 2)
        >>> both = ChainedOptimizer(torch.optim.SGD([net.weight], lr=0.1), torch.optim.Adam([net.bias], lr=0.01))
        >>> net(torch.ones(1, 3)).sum().backward()
        >>> both.step(); both.zero_grad()
        >>> [group["lr"] for group in both.param_groups]
        [0.1, 0.01]
    """

    def __init__(self, *optimizers: Optimizer) -> None:
        if not optimizers:
            raise ValueError("ChainedOptimizer needs at least one optimizer")
        seen: set[int] = set()
        for i, optimizer in enumerate(optimizers):
            if not isinstance(optimizer, Optimizer):
                raise ValueError(f"optimizer {i} is a {type(optimizer).__name__}, not a torch.optim.Optimizer")
            if needs_closure(optimizer):
                raise ValueError(f"optimizer {i} ({type(optimizer).__name__}) needs a closure at every step, which "
                                 "a chain does not give it (it evaluates a closure once for all): step it on its own")
            ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
            if ids & seen:
                raise ValueError(f"optimizer {i} updates parameters that an earlier optimizer updates too")
            seen |= ids
        self.optimizers = list(optimizers)
        check_synapse_optimizers(self)  # (Adam beside BiMU, given model.parameters(), trained λ as plain weights)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Every chained optimizer's param groups, in order (the same dicts, not copies)."""
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self) -> dict[Any, Any]:
        """Per-parameter state of every chained optimizer (a merged view; the parameters are disjoint)."""
        return {p: s for optimizer in self.optimizers for p, s in optimizer.state.items()}

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` once (if given, with gradients on, as torch optimizers do), check every MESU, BiMU and
        metaplastic optimizer (:meth:`~metaspike.bayesian.optim.BiMU.check_step`,
        :func:`~metaspike.optim.check_before_step`: nothing steps if one of them would refuse), then step every
        optimizer; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            if isinstance(optimizer, _DataGatedOptimizer):
                optimizer.check_step()
            else:
                check_before_step(optimizer)
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or set to ``None``) the gradients of every chained optimizer's parameters."""
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizers": [state dict of each chained optimizer]}``."""
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned for a chain of the same optimizers, in the same order."""
        states = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if not isinstance(states, list) or len(states) != len(self.optimizers):
            found = len(states) if isinstance(states, list) else "no"
            raise ValueError(f"state_dict holds {found} optimizer states; this chain has {len(self.optimizers)}")
        for i, (optimizer, state) in enumerate(zip(self.optimizers, states)):
            foreign = self._others_settings(i, state)
            if foreign:  # (another optimizer's state: torch loaded SGD's into Adam, whose next step failed on 'betas')
                raise ValueError(f"state_dict: optimizer {i} of the chain ({type(optimizer).__name__}) was given a "
                                 f"state whose groups set {listed(foreign)}, which its own do not and another of the "
                                 "chain's does: a chain loads the state dict of a chain of the same optimizers in the "
                                 "same order")
        # all or nothing: a state that one optimizer refuses leaves every optimizer as it was
        saved = [copy.deepcopy(optimizer.state_dict()) for optimizer in self.optimizers]
        try:
            for optimizer, state in zip(self.optimizers, states):
                optimizer.load_state_dict(state)
        except Exception:
            for optimizer, state in zip(self.optimizers, saved):
                optimizer.load_state_dict(state)
            raise
        own_state_tensors(*self.optimizers)  # (a torch optimizer keeps the file's tensors, which one part may share
        # with another)

    def _others_settings(self, index: int, state: Any) -> list[str]:
        """The settings that the groups of ``state`` (the state dict given to optimizer ``index``) set, to anything
        but ``False`` or ``None``, which that optimizer's groups lack and another optimizer of the chain's hold: the
        state of another optimizer of the chain (saved in another order). Keys that torch's LR schedulers add to the
        groups they schedule are no optimizer's settings."""
        groups = state.get("param_groups") if isinstance(state, dict) else None
        if not isinstance(groups, list):
            return []

        def keys(optimizer: Optimizer) -> set[str]:
            return {key for group in optimizer.param_groups for key in group}

        others = set().union(*(keys(o) for k, o in enumerate(self.optimizers) if k != index))
        set_there = {str(key) for group in groups if isinstance(group, dict) for key, value in group.items()
                     if value is not False and value is not None}
        return sorted((set_there & others) - keys(self.optimizers[index]) - _SCHEDULER_KEYS)

    def __repr__(self) -> str:
        return f"ChainedOptimizer({', '.join(type(o).__name__ for o in self.optimizers)})"


def needs_closure(optimizer: Optimizer) -> bool:
    """Whether the class's ``step`` takes an argument without a default after ``self`` (``LBFGS.step(closure)``; the
    class's, as a learning-rate scheduler replaces an instance's ``step`` with a wrapper of its own signature).

    Example:
        >>> params = [torch.zeros(1, requires_grad=True)]
        >>> needs_closure(torch.optim.LBFGS(params)), needs_closure(torch.optim.SGD(params, lr=0.1))
        (True, False)
    """
    parameters = list(inspect.signature(type(optimizer).step).parameters.values())[1:]
    return any(parameter.default is inspect.Parameter.empty
               and parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
               for parameter in parameters)
