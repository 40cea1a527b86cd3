"""``bnn.summary(model)``: binary vs float parameters and their memory, per layer; with an input shape,
also the multiply-accumulates per sample, split into 1-bit ones (±1 weight times ±1 input: an XNOR and a
popcount) and 32-bit ones (everything else)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from bnn.binary_linear import is_binary_input
from metaspike.bayesian.synapses import bayesian_modules
from metaspike.compiled import is_compiled_wrapper, uncompiled
from metaspike.modes import evaluation_mode, states_kept
from metaspike.synapse import BinarySynapse, binary_modules
from metaspike.training import random_numbers_apart

__all__ = ["summary", "LayerSummary", "ModelSummary"]


@dataclass(frozen=True)
class LayerSummary:
    """Parameter counts of one layer (its own parameters, not its children's)."""

    name: str
    kind: str
    binary_params: int
    float_params: int
    binary_macs: int = 0
    float_macs: int = 0
    quantized_params: int = 0
    quantized_bits: int = 0

    @property
    def bits(self) -> int:
        """Memory at inference: 1 bit per binary weight, 32 per float parameter, a quantized weight's precision for
        each of those (:attr:`quantized_bits`)."""
        return self.binary_params + 32 * self.float_params + self.quantized_bits


@dataclass(frozen=True)
class ModelSummary:
    """Per-layer rows and totals; ``str()`` gives a table."""

    layers: tuple[LayerSummary, ...]
    counted_macs: bool = False

    @property
    def binary_macs(self) -> int:
        """Multiply-accumulates per sample with both operands ±1 (XNOR-popcount), if counted."""
        return sum(layer.binary_macs for layer in self.layers)

    @property
    def float_macs(self) -> int:
        """Other multiply-accumulates per sample (real input or real weights), if counted."""
        return sum(layer.float_macs for layer in self.layers)

    @property
    def binary_params(self) -> int:
        return sum(layer.binary_params for layer in self.layers)

    @property
    def float_params(self) -> int:
        return sum(layer.float_params for layer in self.layers)

    @property
    def quantized_params(self) -> int:
        """Weights whose quantizer gives another precision than 1 or 32 bits (counted at that precision)."""
        return sum(layer.quantized_params for layer in self.layers)

    @property
    def packed_bytes(self) -> float:
        """Bytes with binary weights stored at 1 bit and every other parameter at 32: an estimate for any model. A
        packed MLP's own count, :attr:`bnn.PackedMLP.nbytes`, differs by what packing folds and adds (BatchNorm
        becomes a threshold and a flip bit per neuron)."""
        return sum(layer.bits for layer in self.layers) / 8

    @property
    def float32_bytes(self) -> float:
        """Bytes with every parameter stored as float32 (what a checkpoint of hidden weights holds)."""
        return 4 * (self.binary_params + self.float_params + self.quantized_params)

    @property
    def compression(self) -> float:
        return self.float32_bytes / self.packed_bytes if self.packed_bytes else 1.0

    def __str__(self) -> str:
        macs = self.counted_macs
        names = max(16, *(len(row.name) + 2 for row in self.layers)) if self.layers else 16
        kinds = max(14, *(len(row.kind) + 2 for row in self.layers)) if self.layers else 14
        quantized = self.quantized_params > 0  # (a column only for models that have such weights)
        header = f"{'layer':<{names}}{'kind':<{kinds}}{'binary':>12}{'float':>10}"
        header += f"{'quantized':>11}" if quantized else ""
        header += f"{'packed kB' if quantized else '1-bit kB':>11}{'32-bit kB':>11}"
        header += f"{'1-bit MACs':>13}{'32-bit MACs':>13}" if macs else ""
        lines = [header, "-" * len(header)]
        for row in self.layers:
            total = row.binary_params + row.float_params + row.quantized_params
            lines.append(
                f"{row.name:<{names}}{row.kind:<{kinds}}{row.binary_params:>12,}{row.float_params:>10,}"
                + (f"{row.quantized_params:>11,}" if quantized else "")
                + f"{row.bits / 8 / 1024:>11.2f}{4 * total / 1024:>11.2f}"
                + (f"{row.binary_macs:>13,}{row.float_macs:>13,}" if macs else "")
            )
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<{names + kinds}}{self.binary_params:>12,}{self.float_params:>10,}"
            + (f"{self.quantized_params:>11,}" if quantized else "")
            + f"{self.packed_bytes / 1024:>11.2f}{self.float32_bytes / 1024:>11.2f}"
            + (f"{self.binary_macs:>13,}{self.float_macs:>13,}" if macs else "")
        )
        if self.binary_params or quantized:
            lines.append(f"memory: {self.packed_bytes / 1024:.1f} kB with 1-bit binary weights"
                         f"{' and quantized ones at their precision' if quantized else ''} vs "
                         f"{self.float32_bytes / 1024:.1f} kB float32 ({self.compression:.1f}x smaller)")
        else:  # (a float or MESU model: "1-bit binary weights, 1.0x smaller" described weights it has none of)
            lines.append(f"memory: {self.float32_bytes / 1024:.1f} kB float32; no binary or quantized weights")
        return "\n".join(lines)


def summary(model: nn.Module, input_shape: Sequence[int] | None = None, *,
            example_input: Tensor | None = None) -> ModelSummary:
    """Count binary and float parameters of ``model`` layer by layer.

    Binary parameters are the hidden weights of binary synapses (:class:`bnn.BinaryLinear`,
    :class:`bnn.BinaryConv2d` or layers changed by :func:`metaspike.binarize`) and the latent weights
    of BiMU synapses (whose weights are ±1 too); they cost one bit at inference. A ``bnn`` layer's weights count at its
    weight quantizer's ``precision`` (:attr:`bnn.BinaryLinear.weight_bits`): binary for the sign quantizers (1 bit),
    ``quantized_params`` at that many bits for another precision, float for a callable without one. Everything else
    (biases, BatchNorm, MESU's Gaussian weights) is counted as float32; a weight shared by two layers (tied) is counted
    once, with the first. With ``input_shape`` (one sample's shape,
    without the batch dimension), a forward pass on two random samples (uniform in [0, 1), in the dtype of the model's
    first floating-point parameter) also counts the
    multiply-accumulates per sample of every linear, bilinear, (transposed) convolution, multi-head attention and
    recurrent layer (``nn.RNN``/``LSTM``/``GRU`` and their cells, Norse's recurrent cells), every time the layer runs (a
    spiking network's time steps, a layer used twice): 1-bit where both the weights and the input are ±1, 32-bit
    otherwise (an attention's, its output projection included, and a recurrent layer's, whose matrices stay float, are
    all 32-bit). A model whose input is not real numbers (token ids for an ``nn.Embedding``) is given
    ``example_input`` instead: a batch, the batch dimension first, whose pass is counted and divided by its size.

    Example:
        >>> from bnn import MLP
        >>> s = summary(MLP([784, 100, 10]), input_shape=(784,))
        >>> s.binary_params, s.float_params
        (79400, 220)
        >>> s.binary_macs, s.float_macs  # the first layer sees real pixels
        (1000, 78400)
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"summary takes a torch model (bnn or binarized), got {type(model).__name__}")
    model = uncompiled(model)  # (a compiled model's counting pass compiled it, logging graph breaks at its hooks)
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if input_shape is not None and not (isinstance(input_shape, Sequence) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in input_shape)):
        raise ValueError(f"input_shape must be one sample's shape, a sequence of positive integers, got {input_shape!r}")
    if example_input is not None and input_shape is not None:
        raise ValueError("summary takes input_shape (random real samples) or example_input (a batch of yours), "
                         "not both")
    if example_input is not None and not (isinstance(example_input, Tensor) and example_input.dim() >= 1
                                          and len(example_input) >= 1):
        raise ValueError(f"example_input must be a tensor holding a batch of one sample or more (batch dimension "
                         f"first), got {_described(example_input)}")
    probe = example_input if input_shape is None else _random_probe(model, input_shape)
    what = f"input_shape {tuple(input_shape)}" if input_shape is not None else "example_input"
    macs = _count_macs(model, probe, what) if probe is not None else {}
    bits = {id(weight): n for _, weight, n in _quantized_layers(model)}  # (the other tensors: 32 bits)
    # a parametrization's modules (a MESU synapse holds sigma) are counted with the layer they belong to
    in_parametrizations = {id(inner) for module in model.modules() if parametrize.is_parametrized(module)
                           for inner in module.parametrizations.modules()}  # type: ignore[union-attr]
    rows = []
    counted: set[int] = set()  # (a weight shared by two layers, tied, is counted with the first)
    for name, module in model.named_modules():
        if id(module) in in_parametrizations or is_compiled_wrapper(module):  # (the model it wraps: the next row)
            continue
        name = _without_wrappers(name)
        params = list(module.parameters(recurse=False))
        if parametrize.is_parametrized(module):
            params += list(module.parametrizations.parameters())  # type: ignore[union-attr]
        params = [p for p in params if id(p) not in counted]
        counted.update(map(id, params))
        if not params and name not in macs:
            continue
        precision = [bits.get(id(p), 32) for p in params]
        n_binary = sum(p.numel() for p, n in zip(params, precision) if n == 1)
        n_float = sum(p.numel() for p, n in zip(params, precision) if n == 32)
        quantized = [(p.numel(), n) for p, n in zip(params, precision) if n not in (1, 32)]
        rows.append(LayerSummary(name or type(model).__name__, type(module).__name__, n_binary, n_float,
                                 *macs.get(name, (0, 0)), sum(numel for numel, _ in quantized),
                                 sum(numel * n for numel, n in quantized)))
    return ModelSummary(tuple(rows), counted_macs=probe is not None)


def _quantized_layers(model: nn.Module) -> list[tuple[nn.Module, Tensor, int]]:
    """``(layer, its trained tensor, bits per weight)`` of every layer that shows quantized weights: binary synapses
    (the hidden weight; a ``bnn`` layer's quantizer says its bits, :class:`metaspike.synapse.BinarySynapse`) and BiMU
    synapses (the latent weight, 1 bit)."""
    layers = [(layer, weight, layer.weight_bits if isinstance(layer, BinarySynapse) else 1)
              for _, layer, weight in binary_modules(model)]
    return layers + [(layer, tensors[0], 1) for _, layer, kind, tensors in bayesian_modules(model) if kind == "bimu"]


_TRANSPOSED_LAYERS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PRODUCT_LAYERS = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *_TRANSPOSED_LAYERS)


def _without_wrappers(name: str) -> str:
    """A layer's name as the user's model names it: a submodule compiled by ``torch.compile`` sits one level down, as
    ``<name>._orig_mod``."""
    return name.replace("._orig_mod", "")


def _described(value: object) -> str:
    """A value as an error shows it: a tensor by its shape and dtype, anything else by its type."""
    return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else f"a {type(value).__name__}"


def _random_probe(model: nn.Module, input_shape: Sequence[int]) -> Tensor:
    """Two random samples of ``input_shape``, in the dtype and on the device of the model's first floating-point
    parameter (two: BatchNorm with batch statistics needs more than one)."""
    like = next((p for p in model.parameters() if p.is_floating_point()), torch.empty(0))
    with random_numbers_apart(like.device):  # (the probe leaves training's random numbers as they were)
        return torch.rand(2, *input_shape, dtype=like.dtype, device=like.device)


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    """A layer's forward argument, given by position or by name (``fc(input=x)``, ``attention(query=q, ...)``)."""
    return args[index] if len(args) > index else kwargs.get(name)


@torch.no_grad()
def _count_macs(model: nn.Module, probe: Tensor, what: str) -> dict[str, tuple[int, int]]:
    """``{layer name: (1-bit MACs, 32-bit MACs)}`` per sample, from one forward pass on ``probe`` (a batch; ``what``
    names it in an error)."""
    binary_layers = {id(layer) for layer, _, bits in _quantized_layers(model) if bits == 1}
    counts: dict[str, tuple[int, int]] = {}
    samples = len(probe)

    def hook(name: str):
        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> None:
            inputs = [_argument(args, kwargs, 0, "input1" if isinstance(module, nn.Bilinear) else "input")]
            if isinstance(module, nn.Bilinear):
                inputs.append(_argument(args, kwargs, 1, "input2"))
            quantizer = getattr(module, "input_quantizer", None)
            if quantizer is not None:
                inputs = [quantizer(x) for x in inputs]
            weight = module.weight
            # outputs of one sample x inputs per output (a layer of S weight samples gives S outputs per sample); a
            # transposed convolution: inputs of one sample x outputs per input; a bilinear layer: in1 x in2 per output
            shaped = inputs[0] if isinstance(module, _TRANSPOSED_LAYERS) else output
            total = shaped.numel() // samples * weight[0].numel()
            one_bit = id(module) in binary_layers and all(is_binary_input(x) for x in inputs)
            ones, floats = counts.get(name, (0, 0))  # (a layer that runs again: each time step, a shared layer)
            counts[name] = (ones + total, floats) if one_bit else (ones, floats + total)

        return record

    def attention_hook(name: str):
        def record(module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any],
                   output: object) -> None:
            ones, floats = counts.get(name, (0, 0))
            query, key, value = (_argument(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
            counts[name] = (ones, floats + _attention_macs(module, query, key, value) // samples)

        return record

    def recurrent_hook(name: str):
        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: object) -> None:
            ones, floats = counts.get(name, (0, 0))
            counts[name] = (ones, floats + _recurrent_macs(module, _argument(args, kwargs, 0, "input")) // samples)

        return record

    layers = list(model.named_modules())
    layers = [(_without_wrappers(name), layer) for name, layer in layers]
    handles = [layer.register_forward_hook(hook(name), with_kwargs=True) for name, layer in layers
               if isinstance(layer, _PRODUCT_LAYERS)]
    handles += [layer.register_forward_hook(recurrent_hook(name), with_kwargs=True) for name, layer in layers
                if _recurrent_matrices(layer)]
    handles += [layer.register_forward_hook(attention_hook(name), with_kwargs=True) for name, layer in layers
                if isinstance(layer, nn.MultiheadAttention)]
    try:
        # in evaluation mode no running statistics are updated (the paper's BatchNorm still uses the batch's); eager:
        # a model or submodule compiled in place, model.compile(), compiled the counting pass, logging graph breaks at
        # its hooks; a Bayesian model's samples leave training's random numbers; a spiking neuron's membrane, set by
        # the probe, does not start the user's next step (snnTorch's init_hidden=True)
        with (evaluation_mode(model), states_kept(model), random_numbers_apart(probe.device),
              torch.compiler.set_stance("force_eager")):
            model(probe)
    except Exception as err:
        hint = " (input_shape probes with random real numbers: give a model of token ids example_input=)"
        raise ValueError(f"summary: a forward pass on {what} failed: {err}"
                         f"{hint if what.startswith('input_shape') else ''}") from None
    finally:
        for handle in handles:
            handle.remove()
    return counts


#: The weight matrices of a Norse recurrent cell (``LIFRecurrentCell``, ``LSNNRecurrentCell``, ...): each multiplies
#: one vector per sample at each call (a time step).
_CELL_MATRICES = ("input_weights", "recurrent_weights")


def _recurrent_matrices(module: nn.Module) -> list[Tensor]:
    """The weight matrices a recurrent layer multiplies by its own code: torch's ``nn.RNN``/``LSTM``/``GRU`` and their
    cells (``weight_ih_l0``, ``weight_hh_l0``, ..., an LSTM's ``weight_hr``), a Norse recurrent cell's
    :data:`_CELL_MATRICES`; empty for any other module."""
    if isinstance(module, nn.RNNBase):  # (read as attributes: a parametrized weight, weight_norm say, is one too)
        names = [name for name in module._flat_weights_names if name.startswith("weight")]
    elif isinstance(module, nn.RNNCellBase):
        names = ["weight_ih", "weight_hh"]
    else:
        names = [name for name in _CELL_MATRICES if isinstance(getattr(module, name, None), Tensor)]
        names = names if _CELL_MATRICES[0] in names else []
    return [getattr(module, name) for name in names]


def _recurrent_macs(module: nn.Module, x: object) -> int:
    """Multiply-accumulates of one call of a recurrent layer on the whole batch: each of its weight matrices times one
    vector per sample and time step (a stacked or bidirectional RNN's included: each layer's and direction's
    matrices run once per step)."""
    matrices = _recurrent_matrices(module)
    data = x.data if isinstance(x, nn.utils.rnn.PackedSequence) else x  # (a packed sequence: every step's rows)
    if not isinstance(data, Tensor):
        return 0
    vectors = data.numel() // max(matrices[0].shape[-1], 1)  # (samples x time steps: the input's rows)
    return vectors * sum(m.numel() for m in matrices)


def _attention_macs(attention: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor) -> int:
    """Multiply-accumulates of one call of ``attention`` on the whole batch, all real-valued: the projections of the
    queries, keys and values and of the output (``out_proj``, whose weight the attention reads without calling it),
    and the two products of the attention itself (queries by keys, weights by values)."""
    embed = attention.embed_dim
    keys = key.shape[1 if attention.batch_first and key.dim() == 3 else 0]  # (an unbatched key is (S, kdim))
    projections = (2 * query.numel() + key.numel() + value.numel()) * embed
    return projections + 2 * query.numel() * keys
