"""``bnn.summary(model)``: binary vs float parameters and their memory, per layer."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrize

from metaspike.synapse import binary_modules

__all__ = ["summary", "LayerSummary", "ModelSummary"]


@dataclass(frozen=True)
class LayerSummary:
    """Parameter counts of one layer (its own parameters, not its children's)."""

    name: str
    kind: str
    binary_params: int
    float_params: int

    @property
    def bits(self) -> int:
        """Memory at inference: 1 bit per binary weight, 32 per float parameter."""
        return self.binary_params + 32 * self.float_params


@dataclass(frozen=True)
class ModelSummary:
    """Per-layer rows and totals; ``str()`` gives a table."""

    layers: tuple[LayerSummary, ...]

    @property
    def binary_params(self) -> int:
        return sum(layer.binary_params for layer in self.layers)

    @property
    def float_params(self) -> int:
        return sum(layer.float_params for layer in self.layers)

    @property
    def packed_bytes(self) -> float:
        """Bytes with binary weights stored at 1 bit."""
        return sum(layer.bits for layer in self.layers) / 8

    @property
    def float32_bytes(self) -> float:
        """Bytes with every parameter stored as float32 (what a checkpoint of hidden weights holds)."""
        return 4 * (self.binary_params + self.float_params)

    @property
    def compression(self) -> float:
        return self.float32_bytes / self.packed_bytes if self.packed_bytes else 1.0

    def __str__(self) -> str:
        header = f"{'layer':<16}{'kind':<14}{'binary':>12}{'float':>10}{'1-bit kB':>11}{'32-bit kB':>11}"
        lines = [header, "-" * len(header)]
        for row in self.layers:
            total = row.binary_params + row.float_params
            lines.append(
                f"{row.name:<16}{row.kind:<14}{row.binary_params:>12,}{row.float_params:>10,}"
                f"{row.bits / 8 / 1024:>11.2f}{4 * total / 1024:>11.2f}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<30}{self.binary_params:>12,}{self.float_params:>10,}"
            f"{self.packed_bytes / 1024:>11.2f}{self.float32_bytes / 1024:>11.2f}"
        )
        lines.append(f"memory: {self.packed_bytes / 1024:.1f} kB packed vs {self.float32_bytes / 1024:.1f} kB float32 "
                     f"({self.compression:.1f}x smaller)")
        return "\n".join(lines)


def summary(model: nn.Module) -> ModelSummary:
    """Count binary and float parameters of ``model`` layer by layer.

    Binary parameters are the hidden weights of binary synapses (:class:`bnn.BinaryLinear`,
    :class:`bnn.BinaryConv2d` or layers changed by :func:`metaspike.binarize`); they cost one bit at
    inference. Everything else (biases, BatchNorm) is counted as float32.

    Example:
        >>> from bnn import MLP
        >>> s = summary(MLP([784, 100, 10]))
        >>> s.binary_params, s.float_params
        (79400, 220)
    """
    binary = {id(weight) for _, _, weight in binary_modules(model)}
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue  # counted with the layer it belongs to
        params = list(module.parameters(recurse=False))
        if parametrize.is_parametrized(module):
            params += list(module.parametrizations.parameters())  # type: ignore[union-attr]
        if not params:
            continue
        n_binary = sum(p.numel() for p in params if id(p) in binary)
        n_float = sum(p.numel() for p in params if id(p) not in binary)
        rows.append(LayerSummary(name or type(model).__name__, type(module).__name__, n_binary, n_float))
    return ModelSummary(tuple(rows))
