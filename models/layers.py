"""The layer vocabulary of fedbeat models.

Each layer is a frozen dataclass that knows its parameters (names, shapes, initialisation) and
how to emit its forward pass as standard ONNX operators. Gradients are *not* written per layer:
``fedbeat.models.graph.backward`` differentiates the emitted ONNX nodes with one rule per ONNX
op, so a layer made of existing ops needs no new gradient code.

Normalisation is :class:`GroupNorm` (Wu & He 2018), not BatchNorm: its statistics are computed
per example, so nothing about one patient's batch statistics is averaged into another patient's
model, it works at batch size 1 on a wearable, and — decisive for DP-SGD — each example's
gradient depends on that example alone, which per-example clipping requires (BatchNorm couples
the examples of a batch and breaks the sensitivity bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from fedbeat.models.graph.emit import GraphBuilder


@dataclass(frozen=True)
class ParamSpec:
    """One named parameter tensor of a layer."""

    suffix: str
    shape: tuple[int, ...]
    fan_in: int
    init: str  # "uniform_fan_in" (torch's default for Conv/Linear), "ones" or "zeros"

    def initialise(self, rng: np.random.Generator) -> np.ndarray:
        """Draw the initial value; ``uniform_fan_in`` matches torch's Conv/Linear default."""
        if self.init == "ones":
            return np.ones(self.shape, dtype=np.float32)
        if self.init == "zeros":
            return np.zeros(self.shape, dtype=np.float32)
        bound = 1.0 / math.sqrt(self.fan_in)
        return rng.uniform(-bound, bound, size=self.shape).astype(np.float32)


class Layer(Protocol):
    """What every layer provides."""

    def param_specs(self) -> tuple[ParamSpec, ...]: ...

    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        """Emit the forward nodes; return the output tensor name."""
        ...


class _NoParams:
    def param_specs(self) -> tuple[ParamSpec, ...]:
        return ()


@dataclass(frozen=True)
class Conv1d:
    """1-D convolution over (batch, channels, time)."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1

    def param_specs(self) -> tuple[ParamSpec, ...]:
        fan_in = self.in_channels * self.kernel
        return (
            ParamSpec("weight", (self.out_channels, self.in_channels, self.kernel), fan_in,
                      "uniform_fan_in"),
            ParamSpec("bias", (self.out_channels,), fan_in, "uniform_fan_in"),
        )

    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        return g.op(
            "Conv", [inputs[0], f"{name}.weight", f"{name}.bias"], name=name,
            kernel_shape=[self.kernel], strides=[self.stride],
            pads=[self.padding, self.padding], dilations=[self.dilation],
        )


@dataclass(frozen=True)
class Linear:
    """Fully connected layer over (batch, features)."""

    in_features: int
    out_features: int

    def param_specs(self) -> tuple[ParamSpec, ...]:
        return (
            ParamSpec("weight", (self.out_features, self.in_features), self.in_features,
                      "uniform_fan_in"),
            ParamSpec("bias", (self.out_features,), self.in_features, "uniform_fan_in"),
        )

    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        return g.op("Gemm", [inputs[0], f"{name}.weight", f"{name}.bias"], name=name, transB=1)


@dataclass(frozen=True)
class GroupNorm:
    """Group normalisation over (batch, channels, time) with a per-channel affine transform.

    Emitted as ONNX ``LayerNormalization`` over (batch, groups, channels/groups * time): one
    fused kernel in onnxruntime instead of a dozen elementwise nodes, with a closed-form
    backward rule (``grad_rules._layer_norm_grad``). The affine part stays a Mul and an Add on
    (channels, 1) parameters, so per-example gradients need nothing special.
    """

    groups: int
    channels: int
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.channels % self.groups:
            raise ValueError(f"GroupNorm: {self.channels} channels do not split into "
                             f"{self.groups} groups")

    def param_specs(self) -> tuple[ParamSpec, ...]:
        return (
            ParamSpec("weight", (self.channels, 1), self.channels, "ones"),
            ParamSpec("bias", (self.channels, 1), self.channels, "zeros"),
        )

    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        x = inputs[0]
        grouped = g.op("Reshape", [x, g.const_i64([0, self.groups, -1])])
        unit_scale = g.const(np.ones(_group_elements(g.static_shape(x), self.groups),
                                     dtype=np.float32))
        # Mean and InvStdDev are what the backward rule needs; inference graphs skip them.
        normed_groups = g.op("LayerNormalization", [grouped, unit_scale], axis=-1,
                             epsilon=self.eps, n_outputs=3 if training else 1)
        normed = g.op("Reshape", [normed_groups, g.shape_like(x, g.static_shape(x))])
        scaled = g.op("Mul", [normed, f"{name}.weight"])
        return g.op("Add", [scaled, f"{name}.bias"], name=name)


def _group_elements(shape: tuple[int | str, ...], groups: int) -> int:
    channels, length = shape[1], shape[2]
    if not (isinstance(channels, int) and isinstance(length, int)) or length <= 0:
        raise ValueError("GroupNorm needs the static (channels, time) size of its input")
    return channels * length // groups


@dataclass(frozen=True)
class ReLU(_NoParams):
    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        return g.op("Relu", inputs[:1], name=name)


@dataclass(frozen=True)
class LeakyReLU(_NoParams):
    alpha: float = 0.01

    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        return g.op("LeakyRelu", inputs[:1], name=name, alpha=self.alpha)


@dataclass(frozen=True)
class MaxPool1d(_NoParams):
    kernel: int
    stride: int | None = None

    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        # The Indices output is what the backward pass routes gradients through.
        return g.op("MaxPool", inputs[:1], name=name, n_outputs=2 if training else 1,
                    kernel_shape=[self.kernel], strides=[self.stride or self.kernel])


@dataclass(frozen=True)
class AvgPool1d(_NoParams):
    kernel: int
    stride: int | None = None

    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        return g.op("AveragePool", inputs[:1], name=name, kernel_shape=[self.kernel],
                    strides=[self.stride or self.kernel])


@dataclass(frozen=True)
class GlobalAvgPool(_NoParams):
    """Mean over time: (batch, channels, time) -> (batch, channels)."""

    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        return g.op("ReduceMean", inputs[:1], name=name, axes=[2], keepdims=0)


@dataclass(frozen=True)
class Flatten(_NoParams):
    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        return g.op("Flatten", inputs[:1], name=name, axis=1)


@dataclass(frozen=True)
class Dropout(_NoParams):
    """Inverted dropout, active only in training graphs.

    The mask is a graph input (``dropout_mask.<name>``, already scaled by 1/(1-p)) drawn by the
    trainer from its seeded generator, so training is reproducible and the ONNX graph needs no
    random operator.
    """

    p: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"Dropout probability must be in [0, 1), got {self.p}")

    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        if not training or self.p == 0.0:
            return g.op("Identity", inputs[:1], name=name)
        mask = g.dropout_mask_input(name, inputs[0])
        return g.op("Mul", [inputs[0], mask], name=name)


@dataclass(frozen=True)
class Add(_NoParams):
    """Residual sum of two tensors of the same shape."""

    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        return g.op("Add", inputs[:2], name=name)


@dataclass(frozen=True)
class Concat(_NoParams):
    """Concatenate along the feature/channel axis."""

    def emit(self, g: GraphBuilder, name: str, inputs: list[str], *, training: bool) -> str:
        return g.op("Concat", inputs, name=name, axis=1)
