"""Export a fedbeat architecture and its parameters as a float32 TFLite flatbuffer.

Why not the TensorFlow converter: TensorFlow is not installed on the build machines (it is a
multi-GB dependency with no wheel for several device platforms) and never on the devices. A
``.tflite`` file is just a flatbuffer following a published schema, so the generated schema
package ``tflite`` plus ``flatbuffers`` write a valid file directly, layer by layer, with the
same parameters the ONNX graphs use (``fedbeat.models.graph.build.build_inference`` is the
numerical reference; the tests compare both to 1e-5).

Layout: TFLite kernels are NHWC, so a (N, C, T) activation is held as (N, 1, T, C) and every
1-D operation becomes its 2-D counterpart with a height-1 kernel. Feature vectors stay (N, F).
Flatten transposes back to channel-major before reshaping so its order matches ONNX's.

Batch: the inputs are ``window`` [1, 1, T] and ``rr`` [1, F] with a batch dimension that is
dynamic by default (``shape_signature`` -1), so an interpreter can ``resize_tensor_input`` to
any batch; with ``dynamic_batch=False`` the file has a fixed batch of 1, which is all a
wearable classifying beat by beat needs. Outputs are ``logits`` and ``probs`` [N, classes].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import tflite

from fedbeat.models import layers
from fedbeat.models.params import Params
from fedbeat.models.zoo import INPUT_RR, INPUT_WINDOW, Architecture

SCHEMA_VERSION = 3
"""TFLite schema version written into every model."""

FILE_IDENTIFIER = b"TFL3"
SIGNATURE_KEY = "serving_default"
OUTPUT_LOGITS = "logits"
OUTPUT_PROBS = "probs"

_DATA_ALIGNMENT = 16
"""Alignment of constant data, so that kernels (and XNNPACK) can use it in place."""

OptionValue = int | float | bool | tuple[int, ...]


class TFLiteExportError(ValueError):
    """The architecture cannot be expressed with the supported TFLite builtin operators."""


@dataclass(frozen=True)
class _Options:
    """One ``BuiltinOptions`` table: its schema name (e.g. ``Conv2DOptions``) and its fields."""

    kind: str
    fields: tuple[tuple[str, OptionValue], ...] = ()

    @property
    def union_type(self) -> int:
        return int(getattr(tflite.BuiltinOptions, self.kind))

    def build(self, b: flatbuffers.Builder) -> int:
        """Write the table (vectors first: flatbuffers forbids nesting) and return its offset."""
        vectors = {name: _int32_vector(b, value) for name, value in self.fields
                   if isinstance(value, tuple)}
        getattr(tflite, f"{self.kind}Start")(b)
        for name, value in self.fields:
            getattr(tflite, f"{self.kind}Add{name}")(b, vectors.get(name, value))
        return int(getattr(tflite, f"{self.kind}End")(b))


def _options(kind: str, **fields: OptionValue) -> _Options:
    return _Options(kind, tuple(fields.items()))


@dataclass(frozen=True)
class _Quant:
    """Affine quantization ``real = scale * (q - zero_point)``, per tensor or per channel.

    Per-channel parameters (one scale and zero point per index of ``axis``) serve int8
    convolution filters and their int32 biases; everything else is per tensor.
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: int
    buffer: int = 0
    batched: bool = False  # dimension 0 is the batch (dynamic when the graph allows it)
    quant: _Quant | None = None


@dataclass(frozen=True)
class _Op:
    opcode: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: _Options | None


@dataclass
class _Graph:
    """Tensors, constant buffers and operators of the single TFLite subgraph being built."""

    dynamic_batch: bool
    tensors: list[_Tensor] = field(default_factory=list)
    buffers: list[bytes] = field(default_factory=lambda: [b""])  # buffer 0: empty sentinel
    ops: list[_Op] = field(default_factory=list)
    opcodes: dict[int, int] = field(default_factory=dict)  # builtin code -> opcode index
    versions: dict[int, int] = field(default_factory=dict)  # builtin code -> version if not 1

    def _add(self, tensor: _Tensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def activation(self, name: str, shape: Sequence[int]) -> int:
        """A runtime tensor whose first dimension is the batch."""
        return self._add(_Tensor(name, tuple(shape), tflite.TensorType.FLOAT32, batched=True))

    def const(self, name: str, value: np.ndarray) -> int:
        """A constant tensor (float32 or int32) with its own data buffer."""
        types = {np.dtype(np.float32): tflite.TensorType.FLOAT32,
                 np.dtype(np.int32): tflite.TensorType.INT32}
        value = np.ascontiguousarray(value)
        if value.dtype not in types:
            raise TFLiteExportError(f"{name}: constants must be float32 or int32, "
                                    f"got {value.dtype}")
        self.buffers.append(value.astype(value.dtype.newbyteorder("<")).tobytes())
        return self._add(_Tensor(name, value.shape, types[value.dtype], len(self.buffers) - 1))

    def const_i32(self, name: str, values: Sequence[int] | np.ndarray) -> int:
        return self.const(name, np.asarray(values, dtype=np.int32))

    def const_f32(self, name: str, values: float | np.ndarray) -> int:
        return self.const(name, np.asarray(values, dtype=np.float32))

    def shape(self, index: int) -> tuple[int, ...]:
        return self.tensors[index].shape

    def op(self, code: str, inputs: Sequence[int], shape: Sequence[int], name: str,
           options: _Options | None = None) -> int:
        """Append builtin operator ``code``; returns its new (batched) output tensor."""
        builtin = int(getattr(tflite.BuiltinOperator, code))
        opcode = self.opcodes.setdefault(builtin, len(self.opcodes))
        out = self.activation(name, shape)
        self.ops.append(_Op(opcode, tuple(inputs), (out,), options))
        return out


# --------------------------------------------------------------------------- small op helpers

def _reshape(g: _Graph, x: int, shape: Sequence[int], name: str) -> int:
    """Reshape keeping the batch dimension (written as -1 so it follows a resized input)."""
    target = (-1, *shape[1:])
    return g.op("RESHAPE", [x, g.const_i32(f"{name}/shape", target)], shape, name,
                _options("ReshapeOptions", NewShape=target))


def _mean(g: _Graph, x: int, axes: Sequence[int], name: str, *, keep_dims: bool) -> int:
    shape = g.shape(x)
    if keep_dims:
        out = tuple(1 if i in axes else d for i, d in enumerate(shape))
    else:
        out = tuple(d for i, d in enumerate(shape) if i not in axes)
    return g.op("MEAN", [x, g.const_i32(f"{name}/axes", list(axes))], out, name,
                _options("ReducerOptions", KeepDims=keep_dims))


def _binary(g: _Graph, code: str, a: int, b: int, name: str) -> int:
    """ADD, SUB or MUL with NumPy broadcasting of the output shape."""
    shape = np.broadcast_shapes(g.shape(a), g.shape(b))
    kind = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions"}[code]
    return g.op(code, [a, b], shape, name, _options(kind, FusedActivationFunction=0))


def _pool(g: _Graph, code: str, x: int, kernel: int, stride: int, name: str) -> int:
    n, _, t, c = _require_rank(g, x, 4, name)
    out = (n, 1, (t - kernel) // stride + 1, c)  # VALID == ONNX floor mode without pads
    return g.op(code, [x], out, name, _options(
        "Pool2DOptions", Padding=tflite.Padding.VALID, StrideW=stride, StrideH=1,
        FilterWidth=kernel, FilterHeight=1, FusedActivationFunction=0))


def _require_rank(g: _Graph, x: int, rank: int, name: str) -> tuple[int, ...]:
    shape = g.shape(x)
    if len(shape) != rank:
        what = "a (N, C, T) sequence" if rank == 4 else "an (N, F) feature vector"
        raise TFLiteExportError(f"{name}: expects {what}, got a tensor of shape {shape} "
                                "(NHWC for sequences)")
    return shape


# ---------------------------------------------------------------------- one lowering per layer

def _lower_conv1d(g: _Graph, name: str, layer: layers.Conv1d, xs: list[int], params: Params) -> int:
    x = xs[0]
    n, _, t, c = _require_rank(g, x, 4, name)
    if c != layer.in_channels:
        raise TFLiteExportError(f"{name}: {c} input channels, layer expects {layer.in_channels}")
    if layer.padding:
        pads = [[0, 0], [0, 0], [layer.padding, layer.padding], [0, 0]]
        t += 2 * layer.padding
        x = g.op("PAD", [x, g.const_i32(f"{name}/paddings", np.array(pads))], (n, 1, t, c),
                 f"{name}/pad", _options("PadOptions"))
    weight = params[f"{name}.weight"].transpose(0, 2, 1)[:, None]  # (O, I, K) -> OHWI
    span = layer.dilation * (layer.kernel - 1) + 1
    out = (n, 1, (t - span) // layer.stride + 1, layer.out_channels)
    bias = params[f"{name}.bias"]
    inputs = [x, g.const_f32(f"{name}.weight", weight), g.const_f32(f"{name}.bias", bias)]
    return g.op("CONV_2D", inputs, out, name, _options(
        "Conv2DOptions", Padding=tflite.Padding.VALID, StrideW=layer.stride, StrideH=1,
        DilationWFactor=layer.dilation, DilationHFactor=1, FusedActivationFunction=0))


def _lower_group_norm(g: _Graph, name: str, layer: layers.GroupNorm, xs: list[int],
                      params: Params) -> int:
    """Statistics over (time, channels of the group) per example, as ONNX's primitive chain."""
    shape = n, _, t, c = _require_rank(g, xs[0], 4, name)
    if c != layer.channels:
        raise TFLiteExportError(f"{name}: {c} channels, layer expects {layer.channels}")
    grouped = _reshape(g, xs[0], (n, t, layer.groups, c // layer.groups), f"{name}/grouped")
    mean = _mean(g, grouped, (1, 3), f"{name}/mean", keep_dims=True)
    centred = _binary(g, "SUB", grouped, mean, f"{name}/centred")
    square = _binary(g, "MUL", centred, centred, f"{name}/square")
    var = _mean(g, square, (1, 3), f"{name}/var", keep_dims=True)
    eps = g.const_f32(f"{name}/eps", np.array([layer.eps]))
    inv_std = g.op("RSQRT", [_binary(g, "ADD", var, eps, f"{name}/var_eps")], g.shape(var),
                   f"{name}/inv_std")
    normed = _reshape(g, _binary(g, "MUL", centred, inv_std, f"{name}/normed"), shape,
                      f"{name}/restored")
    weight = g.const_f32(f"{name}.weight", params[f"{name}.weight"].reshape(c))
    bias = g.const_f32(f"{name}.bias", params[f"{name}.bias"].reshape(c))
    return _binary(g, "ADD", _binary(g, "MUL", normed, weight, f"{name}/scaled"), bias, name)


def _lower_linear(g: _Graph, name: str, layer: layers.Linear, xs: list[int], params: Params) -> int:
    n, f = _require_rank(g, xs[0], 2, name)
    if f != layer.in_features:
        raise TFLiteExportError(f"{name}: {f} input features, layer expects {layer.in_features}")
    inputs = [xs[0], g.const_f32(f"{name}.weight", params[f"{name}.weight"]),
              g.const_f32(f"{name}.bias", params[f"{name}.bias"])]
    return g.op("FULLY_CONNECTED", inputs, (n, layer.out_features), name, _options(
        "FullyConnectedOptions", FusedActivationFunction=0, KeepNumDims=False))


def _lower_relu(g: _Graph, name: str, layer: layers.ReLU, xs: list[int], params: Params) -> int:
    return g.op("RELU", xs[:1], g.shape(xs[0]), name)


def _lower_leaky_relu(g: _Graph, name: str, layer: layers.LeakyReLU, xs: list[int],
                      params: Params) -> int:
    return g.op("LEAKY_RELU", xs[:1], g.shape(xs[0]), name,
                _options("LeakyReluOptions", Alpha=layer.alpha))


def _lower_max_pool(g: _Graph, name: str, layer: layers.MaxPool1d, xs: list[int],
                    params: Params) -> int:
    return _pool(g, "MAX_POOL_2D", xs[0], layer.kernel, layer.stride or layer.kernel, name)


def _lower_avg_pool(g: _Graph, name: str, layer: layers.AvgPool1d, xs: list[int],
                    params: Params) -> int:
    return _pool(g, "AVERAGE_POOL_2D", xs[0], layer.kernel, layer.stride or layer.kernel, name)


def _lower_global_avg_pool(g: _Graph, name: str, layer: layers.GlobalAvgPool, xs: list[int],
                           params: Params) -> int:
    _require_rank(g, xs[0], 4, name)
    return _mean(g, xs[0], (1, 2), name, keep_dims=False)


def _lower_flatten(g: _Graph, name: str, layer: layers.Flatten, xs: list[int],
                   params: Params) -> int:
    """(N, 1, T, C) -> (N, C, 1, T) -> (N, C*T): ONNX's channel-major order."""
    shape = g.shape(xs[0])
    if len(shape) == 2:
        return xs[0]
    n, _, t, c = _require_rank(g, xs[0], 4, name)
    perm = g.const_i32(f"{name}/perm", [0, 3, 1, 2])
    channel_major = g.op("TRANSPOSE", [xs[0], perm], (n, c, 1, t), f"{name}/transpose",
                         _options("TransposeOptions"))
    return _reshape(g, channel_major, (n, c * t), name)


def _lower_identity(g: _Graph, name: str, layer: layers.Dropout, xs: list[int],
                    params: Params) -> int:
    return xs[0]  # dropout is the identity at inference


def _lower_add(g: _Graph, name: str, layer: layers.Add, xs: list[int], params: Params) -> int:
    if g.shape(xs[0]) != g.shape(xs[1]):
        raise TFLiteExportError(f"{name}: cannot add shapes {g.shape(xs[0])} and "
                                f"{g.shape(xs[1])}")
    return _binary(g, "ADD", xs[0], xs[1], name)


def _lower_concat(g: _Graph, name: str, layer: layers.Concat, xs: list[int], params: Params) -> int:
    """ONNX axis 1 (channels / features) is the last axis in both TFLite layouts."""
    shapes = [g.shape(x) for x in xs]
    if len({len(s) for s in shapes}) != 1 or len({s[:-1] for s in shapes}) != 1:
        raise TFLiteExportError(f"{name}: cannot concatenate shapes {shapes} on the channel axis")
    out = (*shapes[0][:-1], sum(s[-1] for s in shapes))
    return g.op("CONCATENATION", xs, out, name, _options(
        "ConcatenationOptions", Axis=len(out) - 1, FusedActivationFunction=0))


_Lowering = Callable[[_Graph, str, Any, list[int], Params], int]
"""(graph, node name, layer, input tensor indices, parameters) -> output tensor index."""

_LOWERINGS: dict[type, _Lowering] = {
    layers.Conv1d: _lower_conv1d,
    layers.GroupNorm: _lower_group_norm,
    layers.Linear: _lower_linear,
    layers.ReLU: _lower_relu,
    layers.LeakyReLU: _lower_leaky_relu,
    layers.MaxPool1d: _lower_max_pool,
    layers.AvgPool1d: _lower_avg_pool,
    layers.GlobalAvgPool: _lower_global_avg_pool,
    layers.Flatten: _lower_flatten,
    layers.Dropout: _lower_identity,
    layers.Add: _lower_add,
    layers.Concat: _lower_concat,
}
"""How each layer type becomes TFLite operators; a layer not listed cannot be exported."""


# ------------------------------------------------------------------------------ graph assembly

def _build_graph(arch: Architecture, params: Params, *,
                 dynamic_batch: bool) -> tuple[_Graph, list[int], list[int]]:
    """Lower every node; returns the graph and its input and output tensor indices."""
    g = _Graph(dynamic_batch=dynamic_batch)
    window = g.activation(INPUT_WINDOW, (1, 1, arch.window_samples))
    rr = g.activation(INPUT_RR, (1, arch.rr_features))
    values = {INPUT_WINDOW: _reshape(g, window, (1, 1, arch.window_samples, 1), "window/nhwc"),
              INPUT_RR: rr}
    for node in arch.nodes:
        lowering = _LOWERINGS.get(type(node.layer))
        if lowering is None:
            raise TFLiteExportError(f"node {node.name!r}: layer {type(node.layer).__name__} "
                                    "has no TFLite lowering")
        values[node.name] = lowering(g, node.name, node.layer, [values[i] for i in node.inputs],
                                     params)
    logits = values[arch.output]
    if logits in (window, rr) or g.shape(logits) != (1, arch.num_classes):
        raise TFLiteExportError(f"{arch.name}: the last node must compute (N, "
                                f"{arch.num_classes}) logits, got shape {g.shape(logits)}")
    g.tensors[logits].name = OUTPUT_LOGITS
    probs = g.op("SOFTMAX", [logits], g.shape(logits), OUTPUT_PROBS,
                 _options("SoftmaxOptions", Beta=1.0))
    return g, [window, rr], [logits, probs]


# ------------------------------------------------------------------------------- serialisation

def _int32_vector(b: flatbuffers.Builder, values: Sequence[int]) -> int:
    b.StartVector(4, len(values), 4)
    for value in reversed(values):
        b.PrependInt32(int(value))
    return int(b.EndVector())


def _offset_vector(b: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return int(b.EndVector())


def _aligned_bytes(b: flatbuffers.Builder, data: bytes) -> int:
    """A ubyte vector whose payload starts on a ``_DATA_ALIGNMENT`` boundary."""
    b.StartVector(1, len(data), _DATA_ALIGNMENT)
    b.head -= len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    return int(b.EndVector())


def _write_buffer(b: flatbuffers.Builder, data: bytes) -> int:
    payload = _aligned_bytes(b, data) if data else None
    tflite.BufferStart(b)
    if payload is not None:
        tflite.BufferAddData(b, payload)
    return int(tflite.BufferEnd(b))


def _write_quant(b: flatbuffers.Builder, quant: _Quant) -> int:
    b.StartVector(4, len(quant.scale), 4)
    for scale in reversed(quant.scale):
        b.PrependFloat32(float(scale))
    scales = int(b.EndVector())
    b.StartVector(8, len(quant.zero_point), 8)
    for zero_point in reversed(quant.zero_point):
        b.PrependInt64(int(zero_point))
    zero_points = int(b.EndVector())
    tflite.QuantizationParametersStart(b)
    tflite.QuantizationParametersAddScale(b, scales)
    tflite.QuantizationParametersAddZeroPoint(b, zero_points)
    tflite.QuantizationParametersAddQuantizedDimension(b, quant.axis)
    return int(tflite.QuantizationParametersEnd(b))


def _write_tensor(b: flatbuffers.Builder, tensor: _Tensor, dynamic_batch: bool) -> int:
    name = b.CreateString(tensor.name)
    shape = _int32_vector(b, tensor.shape)
    signature = None
    if tensor.batched and dynamic_batch:
        signature = _int32_vector(b, (-1, *tensor.shape[1:]))
    quant = _write_quant(b, tensor.quant) if tensor.quant is not None else None
    tflite.TensorStart(b)
    tflite.TensorAddShape(b, shape)
    if signature is not None:
        tflite.TensorAddShapeSignature(b, signature)
    tflite.TensorAddType(b, tensor.dtype)
    tflite.TensorAddBuffer(b, tensor.buffer)
    tflite.TensorAddName(b, name)
    if quant is not None:
        tflite.TensorAddQuantization(b, quant)
    return int(tflite.TensorEnd(b))


def _write_operator(b: flatbuffers.Builder, op: _Op) -> int:
    inputs = _int32_vector(b, op.inputs)
    outputs = _int32_vector(b, op.outputs)
    options = op.options.build(b) if op.options is not None else None
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, op.opcode)
    tflite.OperatorAddInputs(b, inputs)
    tflite.OperatorAddOutputs(b, outputs)
    if op.options is not None:
        tflite.OperatorAddBuiltinOptionsType(b, op.options.union_type)
        tflite.OperatorAddBuiltinOptions(b, options)
    return int(tflite.OperatorEnd(b))


def _write_opcode(b: flatbuffers.Builder, builtin: int, version: int = 1) -> int:
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(builtin, 127))
    tflite.OperatorCodeAddBuiltinCode(b, builtin)
    tflite.OperatorCodeAddVersion(b, version)
    return int(tflite.OperatorCodeEnd(b))


def _write_subgraph(b: flatbuffers.Builder, g: _Graph, inputs: list[int],
                    outputs: list[int]) -> int:
    tensors = _offset_vector(b, [_write_tensor(b, t, g.dynamic_batch) for t in g.tensors])
    operators = _offset_vector(b, [_write_operator(b, op) for op in g.ops])
    input_vec, output_vec = _int32_vector(b, inputs), _int32_vector(b, outputs)
    name = b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors)
    tflite.SubGraphAddInputs(b, input_vec)
    tflite.SubGraphAddOutputs(b, output_vec)
    tflite.SubGraphAddOperators(b, operators)
    tflite.SubGraphAddName(b, name)
    return int(tflite.SubGraphEnd(b))


def _write_tensor_map(b: flatbuffers.Builder, g: _Graph, index: int) -> int:
    name = b.CreateString(g.tensors[index].name)
    tflite.TensorMapStart(b)
    tflite.TensorMapAddName(b, name)
    tflite.TensorMapAddTensorIndex(b, index)
    return int(tflite.TensorMapEnd(b))


def _write_signature(b: flatbuffers.Builder, g: _Graph, inputs: list[int],
                     outputs: list[int]) -> int:
    """``serving_default`` signature, so ``get_signature_runner()`` works by tensor name."""
    input_vec = _offset_vector(b, [_write_tensor_map(b, g, i) for i in inputs])
    output_vec = _offset_vector(b, [_write_tensor_map(b, g, i) for i in outputs])
    key = b.CreateString(SIGNATURE_KEY)
    tflite.SignatureDefStart(b)
    tflite.SignatureDefAddInputs(b, input_vec)
    tflite.SignatureDefAddOutputs(b, output_vec)
    tflite.SignatureDefAddSignatureKey(b, key)
    tflite.SignatureDefAddSubgraphIndex(b, 0)
    return int(tflite.SignatureDefEnd(b))


def _serialise(g: _Graph, inputs: list[int], outputs: list[int], description: str) -> bytes:
    b = flatbuffers.Builder(1024)
    buffers = _offset_vector(b, [_write_buffer(b, data) for data in g.buffers])
    subgraphs = _offset_vector(b, [_write_subgraph(b, g, inputs, outputs)])
    codes = sorted(g.opcodes, key=g.opcodes.__getitem__)
    opcodes = _offset_vector(b, [_write_opcode(b, code, g.versions.get(code, 1))
                                 for code in codes])
    signatures = _offset_vector(b, [_write_signature(b, g, inputs, outputs)])
    text = b.CreateString(description)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, SCHEMA_VERSION)
    tflite.ModelAddOperatorCodes(b, opcodes)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddDescription(b, text)
    tflite.ModelAddBuffers(b, buffers)
    tflite.ModelAddSignatureDefs(b, signatures)
    b.Finish(tflite.ModelEnd(b), file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


# ------------------------------------------------------------------------------------ public API

def export_tflite(arch: Architecture, params: Params, *, dynamic_batch: bool = True) -> bytes:
    """Serialise the inference graph of ``arch`` with ``params`` as a float32 TFLite model.

    Parameters
    ----------
    arch
        The architecture; every layer type must have a TFLite lowering.
    params
        Its parameters (embedded as constant buffers).
    dynamic_batch
        Mark the batch dimension as dynamic (``shape_signature`` -1) so interpreters can
        resize it; ``False`` gives a model with a fixed batch of 1.

    Returns
    -------
    bytes
        The ``.tflite`` flatbuffer, with inputs ``window`` [N, 1, T] and ``rr`` [N, F] and
        outputs ``logits`` and ``probs`` [N, classes] (N is 1 in the stored shapes).

    Raises
    ------
    TFLiteExportError
        For a layer without a TFLite lowering or a graph whose shapes do not fit it.
    """
    g, inputs, outputs = _build_graph(arch, params, dynamic_batch=dynamic_batch)
    batch = "dynamic batch" if dynamic_batch else "batch 1"
    description = (f"fedbeat {arch.name} inference, float32, {batch}; inputs window "
                   f"[N,1,{arch.window_samples}] and rr [N,{arch.rr_features}], outputs logits "
                   f"and probs [N,{arch.num_classes}]")
    return _serialise(g, inputs, outputs, description)


def write_tflite(arch: Architecture, params: Params, path: Path | str, *,
                 dynamic_batch: bool = True) -> Path:
    """Export with :func:`export_tflite` and write the file; returns its path."""
    target = Path(path)
    target.write_bytes(export_tflite(arch, params, dynamic_batch=dynamic_batch))
    return target
