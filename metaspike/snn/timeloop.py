"""The time loop: encoder → spiking network (one call per step) → readout, as one ``nn.Module``.

:class:`SpikingClassifier` maps a batch ``[B, *input_shape]`` (or an already encoded
``[num_steps, B, *input_shape]``) to logits, so the continual trainer takes it like any classifier.
"""

from __future__ import annotations

import inspect
import math
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from metaspike.bayesian.synapses import drawn_samples
from metaspike.caller import user_stacklevel
from metaspike.checks import ModelError, first_line, is_whole, listed
from metaspike.compiled import uncompiled
from metaspike.function_transforms import values_unread
from metaspike.snn.backends import reset_states, state_reset
from metaspike.snn.encoders import check_num_steps, get_encoder
from metaspike.snn.readouts import Readout, get_readout, membrane
from metaspike.snn.recurrent import SelfRecurrentLIF
from metaspike.synapse import binarized_once

__all__ = ["SpikingClassifier"]


def _takes_state(network: nn.Module) -> bool:
    """Norse's convention: a module whose ``forward`` has a ``state`` argument returns ``(out, state)``."""
    return "state" in inspect.signature(network.forward).parameters


def _norse_bases(*names: str) -> tuple[type, ...]:
    """Norse's base classes of those ``names`` in ``norse.torch.module.snn``, where a Norse module has loaded it
    (none otherwise): ``"SNNCell", "SNNRecurrentCell"`` are the one-step cells, ``"SNN", "SNNRecurrent"`` the modules
    that run a time sequence per call (the recurrent ones derive from neither of the others)."""
    snn = sys.modules.get("norse.torch.module.snn")
    return tuple(getattr(snn, name) for name in names if hasattr(snn, name))


_NORSE_CELLS, _NORSE_SEQUENCES = ("SNNCell", "SNNRecurrentCell"), ("SNN", "SNNRecurrent")


def holds_norse_cells(modules: Sequence[nn.Module]) -> bool:
    """Whether any of ``modules`` is a Norse cell (``LIFCell``, ``LICell``, ``LIFRecurrentCell``, ...), which returns
    ``(output, state)`` and so needs Norse's ``SequentialState`` to thread its state, not an ``nn.Sequential``.

    Example:
        >>> holds_norse_cells([nn.Linear(2, 2), nn.ReLU()])
        False
    """
    cells = _norse_bases(*_NORSE_CELLS)
    return bool(cells) and any(isinstance(module, cells) for module in modules)


def _check_one_step_modules(network: nn.Module) -> None:
    """Refuse Norse's time-first modules (``LIF``, ``LI``, ``LSNN``, ``LIFRecurrent``, ..., and a ``Lift`` of
    anything that keeps a state): they read their input's first dimension as time, so called once per step with
    ``[B, ...]`` they would run the batch as a sequence (one sample's state flowing into the next); and Norse cells in
    a plain ``nn.Sequential``, which cannot thread their states; and snnTorch neurons built without
    ``init_hidden=True`` there (each call would start from a fresh membrane and pass ``(spikes, membrane)`` on as the
    next layer's input)."""
    _check_snntorch_neurons(network)
    time_first = _norse_bases(*_NORSE_SEQUENCES)
    if not time_first:
        return
    lift = getattr(sys.modules.get("norse.torch"), "Lift", ())
    for name, module in network.named_modules():
        where = f"module {name!r}" if name else "the network"
        if type(module) is nn.Sequential and holds_norse_cells(module):
            raise ValueError(f"network: {where} is an nn.Sequential holding Norse cells, which return (output, state) "
                             "pairs it would pass on as inputs; put them in norse.torch.SequentialState")
        if isinstance(module, time_first):
            raise ValueError(f"network: {where} is Norse's {type(module).__name__}, which runs a whole time sequence "
                             f"per call; SpikingClassifier calls the network once per time step: use "
                             f"{type(module).__name__}Cell (or another Norse *Cell)")
        lifted = getattr(module, "lifted_module", None) if isinstance(module, lift) else None
        neuron = _first_neuron(lifted) if isinstance(lifted, nn.Module) else None
        if neuron is None and getattr(module, "is_stateful", False):  # (Norse's own test: a forward taking a state)
            neuron = lifted
        if neuron is not None:  # (a lifted stateless layer maps each row alike: taken)
            holding = "" if neuron is lifted else f" holding a {type(neuron).__name__}"
            raise ValueError(f"network: {where} is Norse's Lift of a {type(lifted).__name__}{holding}, which runs it "
                             "over its input's first dimension as time (one sample's state flowing into the next); "
                             f"SpikingClassifier calls the network once per time step: use the "
                             f"{type(lifted).__name__} without Lift")


def _first_neuron(module: nn.Module) -> nn.Module | None:
    """The first module in ``module`` (itself included) that keeps a state from one call to the next: a Norse cell,
    a snnTorch neuron, a module with a ``reset_state()`` (:func:`~metaspike.snn.backends.state_reset`)."""
    return next((m for m in module.modules() if holds_norse_cells([m]) or state_reset(m) is not None), None)


#: snnTorch modules that run a whole time sequence per call (time first); ``snntorch.Leaky(init_hidden=True)`` runs
#: one step.
_SNNTORCH_TIME_FIRST = ("LeakyParallel", "StateLeaky")


def _check_snntorch_neurons(network: nn.Module) -> None:
    """Refuse snnTorch's time-first modules, and a snnTorch neuron built without ``init_hidden=True``, or with
    ``output=True``, inside an ``nn.Sequential`` where a layer follows it (it returns ``(spikes, membrane)``, which
    that layer would take as its input; as the network's last module its pair is the output the readout takes)."""
    snntorch = sys.modules.get("snntorch")
    neuron = getattr(snntorch, "SpikingNeuron", None)  # (a snnTorch neuron has loaded it)
    if neuron is None:
        return
    time_first = tuple(getattr(snntorch, name) for name in _SNNTORCH_TIME_FIRST if hasattr(snntorch, name))
    for name, module in network.named_modules():
        if isinstance(module, time_first):
            raise ValueError(f"network: {f'module {name!r}' if name else 'the network'} is snnTorch's "
                             f"{type(module).__name__}, which runs a whole time sequence per call (its input's first "
                             "dimension is time); SpikingClassifier calls the network once per time step: use "
                             "snntorch.Leaky(init_hidden=True)")
    last = _last_module(network)[1]
    for name, module in network.named_modules():
        if type(module) is not nn.Sequential:
            continue
        for child_name, child in module.named_children():
            if not isinstance(child, neuron) or child is last:
                continue
            where = ".".join(part for part in (name, child_name) if part)
            if not getattr(child, "init_hidden", True):
                raise ValueError(f"network: module {where!r} is a snnTorch {type(child).__name__} built without "
                                 "init_hidden=True: in an nn.Sequential it returns (spikes, membrane), which the next "
                                 "layer would take as its input; build it with init_hidden=True (SpikingClassifier "
                                 "resets the hidden state at every call)")
            if getattr(child, "output", False):
                raise ValueError(f"network: module {where!r} is a snnTorch {type(child).__name__} built with "
                                 "output=True: in an nn.Sequential it returns (spikes, membrane), which the next layer "
                                 "would take as its input; only the network's last neuron may be built with output=True")


def _last_module(network: nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` of the module whose output is ``network``'s: the last of nested ``nn.Sequential`` and Norse
    ``SequentialState`` containers (the network itself when it is neither)."""
    chain = (nn.Sequential, getattr(sys.modules.get("norse.torch"), "SequentialState", nn.Sequential))
    name, module = "", network
    while type(module) in chain and len(module):
        key = list(module._modules)[-1]
        name, module = ".".join(part for part in (name, key) if part), module[-1]
    return name, module


def _warn_membrane_of_spikes(network: nn.Module) -> None:
    """The membrane readout on a network whose last module is a neuron that returns its spikes only (a snnTorch
    neuron or :class:`~metaspike.snn.SelfRecurrentLIF` without ``output=True``, a Norse spiking cell) averages
    spikes, not a membrane: the logits are spike rates, of a few values (all zero before training; such a network
    still learns, a reviewer's to 89.9 % against 93.2 % with a membrane). One warning naming the fix."""
    name, module = _last_module(network)
    kind = type(module).__name__
    neurons = (SelfRecurrentLIF, getattr(sys.modules.get("snntorch"), "SpikingNeuron", SelfRecurrentLIF))
    norse = sys.modules.get("norse.torch")  # (loaded by Norse modules)
    cells = _norse_bases(*_NORSE_CELLS)
    integrators = tuple(getattr(norse, cell) for cell in ("LICell", "LIBoxCell") if hasattr(norse, cell))
    if isinstance(module, neurons) and not getattr(module, "output", True) and getattr(module, "init_hidden", True):
        fix = f"build it with output=True ({kind} then returns (spikes, membrane))"
    elif cells and isinstance(module, cells) and not isinstance(module, integrators):
        fix = "end the network with a Norse LICell (a leaky integrator, whose output is its voltage)"
    else:
        return
    warnings.warn(f"readout='membrane' reads the last module's membrane potential, but module {name!r} ({kind}) "
                  f"returns its spikes only, so the logits are spike rates: {fix}, or read the spikes with "
                  "readout='count'", stacklevel=3)


#: How torch's errors about operands of two dtypes begin or read, op by op ("mat1 and mat2 must have the same dtype",
#: a convolution's "Input type (double) and bias type (float) should be the same", "expected scalar type Float but
#: found Double", PReLU's "Type promoting not supported"): an error of another kind is passed on as it is, whatever
#: the dtypes.
_MIXED_DTYPE_WORDS = ("dtype", "Input type (", "expected scalar type", "expected m1 and m2 to have the same",
                      "Type promoting not supported")


def _mixed_dtypes(network: nn.Module, x: Tensor, err: RuntimeError) -> Exception | None:
    """What to raise where a pass failed with ``err`` on mixed dtypes (:data:`_MIXED_DTYPE_WORDS`): input of another
    dtype than the network's weights (convert it); in a network of another dtype than float32, the snnTorch neuron
    whose own spike function made float32 spikes (snnTorch's functions do, whatever their input), and the fix, or the
    Norse neurons, whose float32 parameters ``.to()`` leaves; else ``None``."""
    if not any(words in str(err) for words in _MIXED_DTYPE_WORDS):
        return None
    weights = next((p.dtype for p in network.parameters() if p.is_floating_point()), None)
    if x.is_floating_point() and weights not in (None, x.dtype):
        return ValueError(f"SpikingClassifier: input of {x.dtype} for a network of {weights} weights; convert it "
                          f"with x.to({weights}) (or the network with network.to({x.dtype}))")
    if weights in (None, torch.float32):
        return None
    for name, module in network.named_modules():
        spike = getattr(module, "spike_grad", None)
        if spike is not None and str(getattr(spike, "__module__", "")).startswith("snntorch"):
            return ModelError(f"network: module {name!r} ({type(module).__name__}) spikes through snnTorch's own "
                              f"spike function, which returns float32 spikes whatever its input, so a {weights} "
                              "network fails on mixed dtypes; build its neurons with "
                              "spike_grad=metaspike.snn.surrogate('atan') (or another name), which keeps the input's "
                              "dtype")
    cells = [f"{name!r} ({type(module).__name__})" for name, module in network.named_modules()
             if type(getattr(module, "p", None)).__module__.startswith("norse")]  # (a cell's LIFParameters...)
    if cells:
        return ModelError(f"network: a {weights} network failed on mixed dtypes, and its Norse neurons "
                          f"({listed(cells)}) keep their parameters (time constants, thresholds) as float32 tensors "
                          "that network.to() does not convert, which some of them mix into their states; run the "
                          "network in float32 (or find the module that makes float32 tensors)")
    return None


def _held_tensors(value: Any) -> Any:
    """The identities of the tensors ``value`` holds (a tensor, or a tuple, list or dict of them, nested), in its
    shape; ``None`` where it holds none."""
    if isinstance(value, Tensor):
        return id(value)
    items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else ()
    held = tuple(_held_tensors(item) for item in items)
    return held if any(h is not None for h in held) else None


def _unreset_tensors(network: nn.Module) -> dict[tuple[str, str], Any]:
    """The tensors that the modules :func:`reset_states` leaves alone hold in attributes (a tensor, or a tuple, list
    or dict of them: a state passed by hand) and in buffers, by ``(module name, attribute)``, with the identities of
    the tensors each holds now (parameters and buffers updated in place keep theirs)."""
    return {(name, key): held for name, module in network.named_modules() if state_reset(module) is None
            for key, value in [*vars(module).items(), *module._buffers.items()]
            if key not in _MODULE_INTERNALS and (held := _held_tensors(value)) is not None}


#: What every ``nn.Module`` keeps in its ``__dict__`` (its parameters, buffers, children and hooks): not a state.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def _refuse_kept_state(network: nn.Module, before: dict[tuple[str, str], Any]) -> None:
    """One :class:`~metaspike.checks.ModelError` for a module :func:`reset_states` leaves alone that set a tensor attribute during the call
    (``before``: :func:`_unreset_tensors` at its start): a state the next call would start from."""
    for (name, key), held in _unreset_tensors(network).items():
        if before.get((name, key)) != held:
            module = network.get_submodule(name)
            raise ModelError(f"network: module {name!r} ({type(module).__name__}) keeps the tensor {key!r} from one "
                             "call to the next, and metaspike.snn.reset_states does not reset it: give "
                             f"{type(module).__name__} a reset_state() method that drops it (otherwise each batch "
                             "starts from the last one's state)")


def _spikes_only(x: Tensor) -> bool:
    """Whether ``x`` holds 0 and 1 only, as encoded spikes do (a network's per-position outputs on real-valued input
    are more than ``[batch, classes]`` without anything encoded twice)."""
    return bool(((x == 0) | (x == 1)).all())


def _warn_encoded_again(classifier: nn.Module, given: tuple[int, ...], logits: tuple[int, ...]) -> None:
    """The warning, given once per classifier (its caller asks whether it was): logits of more than ``[batch,
    classes]`` from a classifier without ``input_shape``, what spikes encoded beforehand ``[num_steps, batch, ...]``
    give when they are encoded again (``num_steps`` times the compute, each time step read as a batch)."""
    classifier._warned_encoded_again = True
    warnings.warn(f"SpikingClassifier: input {given} gave logits {logits}, not [batch, classes]: {_ENCODED_AGAIN}",
                  UserWarning, stacklevel=user_stacklevel())


#: Why spikes encoded beforehand fail or give logits of too many dimensions without ``input_shape``, and the fix.
_ENCODED_AGAIN = ("an input with a dimension more than its samples, as spikes encoded beforehand ([num_steps, batch, "
                  "...]), is encoded again without input_shape; give input_shape=<one sample's shape> so that encoded "
                  "input is taken as it is")


#: What a network that runs its own time loop (as snnTorch's tutorials write them) gives, and the fix.
_OWN_TIME_LOOP = ("if the network runs its own time loop and stacks its records over time ([steps, batch, ...]): "
                  "SpikingClassifier runs the time steps itself and calls the network once per step, so give it a "
                  "network of one step (and train a network with its own loop in a loop of your own)")


class SpikingClassifier(nn.Module):
    """Run ``network`` for ``num_steps`` steps on encoded input and read logits out.

    The hidden state of every neuron inside ``network`` is reset at the start of each call (see
    :func:`metaspike.snn.reset_states`). A module it cannot reset (no ``reset_state()``) that puts a new tensor in an
    attribute or buffer during the first call is named in one error; a state such a module updates in place is not
    detected (BatchNorm's running statistics change in place too) and carries over. Norse-style networks
    (``forward(x, state)``, e.g.
    ``SequentialState``) get their state threaded through the steps. Binary weights are computed
    once per call (:func:`metaspike.binarized_once`), not once per step, and so are Bayesian weight samples: a network
    of sampled Bayesian layers (``bnn.BayesianLinear(..., samples=S)``) reads out to ``[S, B, classes]``, the samples
    first, as :func:`metaspike.training.classification_loss` and :func:`~metaspike.training.predictions` take them.

    Args:
        network: one time step: input ``[B, *input_shape]`` → output tensor or ``(spikes, membrane)``.
        num_steps: time steps per sample (>= 1).
        encoder: ``"rate"``, ``"latency"``, ``"direct"`` or an encoder module.
        readout: ``"count"``, ``"membrane"`` or a callable on the list of step outputs. ``"membrane"`` on a
            network whose last module is a neuron that returns spikes only (a snnTorch neuron without
            ``output=True``, a Norse ``LIFCell``: anything but an ``LICell``) reads spikes: a warning names the fix.
            ``"count"`` sums whatever the last module returns first: on a network ending in a leaky integrator (a
            Norse ``LICell``) that is its voltage, unchecked here (the registry's models refuse it).
        input_shape: shape of one sample; when given, inputs are checked against it and
            pre-encoded inputs ``[num_steps, B, *input_shape]`` (time-first) are accepted. Without it every input is
            encoded (logits of more than two dimensions warn once: spikes encoded beforehand were encoded again).

    Example:
        >>> import torch
        >>> net = SpikingClassifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), num_steps=5,
        ...                         encoder="direct", readout="membrane", input_shape=(1, 2, 2))
        >>> net(torch.rand(8, 1, 2, 2)).shape
        torch.Size([8, 3])
    """

    def __init__(
        self,
        network: nn.Module,
        num_steps: int = 8,
        encoder: str | nn.Module = "rate",
        readout: str | Readout = "membrane",
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise ValueError(f"network must be a torch nn.Module (one time step's network), got "
                             f"{type(network).__name__}")
        structure = uncompiled(network)  # (torch.compile(network)'s wrapper: its modules are the network's)
        _check_one_step_modules(structure)
        self.network = network
        self.num_steps = check_num_steps(num_steps)
        self.encoder = get_encoder(encoder)
        self.readout = get_readout(readout)
        if self.readout is membrane:
            _warn_membrane_of_spikes(structure)
        if is_whole(input_shape, 1):  # (one number: a sample of that many features)
            input_shape = (input_shape,)
        if input_shape is not None and (not isinstance(input_shape, Sequence) or isinstance(input_shape, str)
                                        or not all(is_whole(s, 1) for s in input_shape) or not len(input_shape)):
            raise ValueError(f"input_shape must be a non-empty sequence of integers >= 1, got {input_shape!r}")
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        if self.input_shape is not None:
            self.in_features = math.prod(self.input_shape)
        self._stateful = _takes_state(structure)
        self._state_checked = False  # (the first call checks that no module keeps a state past reset_states)

    def encode(self, x: Tensor) -> Tensor:
        """``[B, *input_shape]`` → ``[num_steps, B, *input_shape]``; encoded input is checked and kept."""
        if not isinstance(x, Tensor):
            raise ValueError(f"input must be a torch tensor, got {type(x).__name__} (torch.as_tensor(x) makes one)")
        shape = self.input_shape
        if shape is None or tuple(x.shape[1:]) == shape:
            return self._encoded(x)
        if tuple(x.shape[2:]) == shape and x.dim() == len(shape) + 2:
            if x.shape[0] != self.num_steps:
                flipped = ("; it looks batch-first ([batch, num_steps, ...]): x.transpose(0, 1) makes it time-first"
                           if x.shape[1] == self.num_steps else "")
                raise ValueError(f"encoded input is time-first, [num_steps={self.num_steps}, batch, "
                                 f"{', '.join(map(str, shape))}], but has {x.shape[0]} in its first dimension{flipped}")
            if not x.is_floating_point():
                raise ValueError(f"encoded input must be floating point (spikes as 0.0 and 1.0), got {x.dtype}: "
                                 "convert it with x.float()")
            if not values_unread() and not bool(torch.isfinite(x).all()):
                raise ValueError("encoded input holds NaN or infinite values; only finite inputs are accepted")
            return x
        raise ValueError(
            f"input of shape {tuple(x.shape)} does not fit: expected [batch, {', '.join(map(str, shape))}] "
            f"or [num_steps={self.num_steps}, batch, {', '.join(map(str, shape))}]"
        )

    def _encoded(self, x: Tensor) -> Tensor:
        """``x`` through the encoder, whose output must be ``[num_steps, B, ...]`` (an encoder of one's own that
        returned ``[B, ...]`` had its batch read as time steps, silently; what follows the batch is the encoder's to
        shape)."""
        steps = self.encoder(x, self.num_steps)
        if not isinstance(steps, Tensor) or steps.dim() < 2 or steps.shape[:2] != (self.num_steps, x.shape[0]):
            got = tuple(steps.shape) if isinstance(steps, Tensor) else type(steps).__name__
            raise ValueError(f"encoder {type(self.encoder).__name__} must return "
                             f"[num_steps={self.num_steps}, batch={len(x)}, ...] for input of shape {tuple(x.shape)}, "
                             f"got {got}")
        return steps

    def forward(self, x: Tensor) -> Tensor:
        # torch.compile(model): its tracer broke inside the time loop's try block; the network itself compiles
        if (torch.compiler.is_compiling() and not torch.compiler.is_exporting()  # (export traces the whole loop)
                and not getattr(self, "_warned_compiled", False)):
            self._warn_compiled()
        return self._time_loop(x)

    @torch.compiler.disable
    def _warn_compiled(self) -> None:
        """Warn, once, that ``torch.compile(model)`` runs the time loop eagerly (outside the tracer, which cannot read
        the frames that name the user's line)."""
        self._warned_compiled = True
        warnings.warn("torch.compile of a SpikingClassifier runs its time loop eagerly; compile its network instead, "
                      "SpikingClassifier(torch.compile(network), ...), to compile each time step", RuntimeWarning,
                      stacklevel=user_stacklevel())

    @torch.compiler.disable
    def _time_loop(self, x: Tensor) -> Tensor:
        """The forward pass: ``x`` encoded, the network run once per time step, its outputs read out."""
        steps = self.encode(x)
        reset_states(self.network)
        unreset = None if self._state_checked else _unreset_tensors(self.network)
        state = None
        outputs = []
        try:
            with binarized_once():
                for x_t in steps:
                    if self._stateful:
                        out, state = self.network(x_t, state)
                    else:
                        out = self.network(x_t)
                    outputs.append(out)
        except RuntimeError as err:
            mixed = _mixed_dtypes(self.network, x, err)
            if mixed is not None:
                raise mixed from err
            if self.input_shape is None and x.dim() > 2 and _spikes_only(x):  # (a convolution given 5-D input)
                raise ValueError(f"SpikingClassifier: the network failed on a step of input {tuple(x.shape)} of 0s "
                                 f"and 1s ({first_line(err)}); if these are spikes: {_ENCODED_AGAIN}") from err
            if self.input_shape is None and hasattr(err, "add_note"):  # (the network's own error, as it is, and a hint)
                err.add_note(f"SpikingClassifier was given input of shape {tuple(x.shape)} and no input_shape; if that "
                             "shape is what failed, give input_shape=(one sample's shape) to have inputs checked "
                             "against it")
            raise
        finally:  # no autograd graph stays behind in the neurons: the model stays copyable and frees that memory
            reset_states(self.network)
        if unreset is not None:  # (the first call: a state kept past the reset would start the next call)
            _refuse_kept_state(self.network, unreset)
            self._state_checked = True
        logits = self.readout(outputs)
        batch = steps.shape[1]  # (logits that lost or moved it were silently wrong; (B,) is one logit a sample)
        # (the modules walked only where the logits have a dimension more than [batch, classes])
        samples = drawn_samples(self.network) if isinstance(logits, Tensor) and logits.dim() > 2 else set()
        if len(samples) == 1 and logits.dim() == 3 and logits.shape[:2] == (*samples, batch):
            return logits  # (Bayesian layers' weight samples first: the loss and predictions read them so)
        if samples:
            fix = ("give every sampled layer the same samples (and evaluation_samples)" if len(samples) > 1 else
                   f"the readout must give [{next(iter(samples))}, {batch}, classes], the samples first, as the loss "
                   "and predictions read them")
            raise ValueError(f"SpikingClassifier: the network's outputs read out to shape {tuple(logits.shape)} for a "
                             f"batch of {batch}; its sampled Bayesian layers draw {listed(sorted(samples))} weight "
                             f"samples: {fix}")
        stacked = isinstance(logits, Tensor) and logits.dim() > 2 and logits.shape[1] == batch
        if isinstance(logits, Tensor) and (logits.dim() == 0 or logits.shape[0] != batch):
            raise ValueError(f"SpikingClassifier: the network's outputs read out to shape {tuple(logits.shape)} for a "
                             f"batch of {batch}: the batch must come first, [{batch}, ...] ([{batch}, classes], or "
                             f"[{batch}] for one logit a sample)" + (f"; {_OWN_TIME_LOOP}" if stacked else ""))
        warned = getattr(self, "_warned_encoded_again", False) or getattr(self, "_warned_own_loop", False)
        if isinstance(logits, Tensor) and logits.dim() > 2 and not warned:  # (one warning a classifier, the likelier)
            if self.input_shape is None and x.dim() > 2 and _spikes_only(x):  # (the pass over x last)
                _warn_encoded_again(self, tuple(x.shape), tuple(logits.shape))
            elif stacked and batch > 1:  # ([B, B, ...]: as many steps of the network's own as samples)
                self._warned_own_loop = True
                warnings.warn(f"SpikingClassifier: the network's outputs read out to shape {tuple(logits.shape)} for "
                              f"a batch of {batch}, not [batch, classes]; {_OWN_TIME_LOOP}", UserWarning,
                              stacklevel=user_stacklevel())
        return logits
