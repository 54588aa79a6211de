"""Int8 post-training quantization of the TFLite export, calibrated on real beats.

The scheme is TFLite's int8 specification (what its converter writes and what integer-only
kernels, e.g. TFLite Micro on a microcontroller-class wearable, run):

- convolution filters: int8, symmetric (zero point 0), one scale per output channel;
- fully connected weights: int8, symmetric, one scale per tensor;
- biases: int32, zero point 0, scale ``input_scale * weight_scale`` (per channel for convs);
- activations: int8, asymmetric per tensor, ranges from a calibration run over
  representative beats (min/max of every intermediate tensor of the float32 model);
- operators that move values without arithmetic (reshape, transpose, pad, pooling,
  concatenation) keep one scale and zero point between their inputs and output, as the int8
  kernels require: their tensors share the union of their calibrated ranges;
- GroupNorm: int8 squares cannot resolve groups whose variances span two orders of magnitude,
  which was the main accuracy cost measured on MIT-BIH (``docs/wearable.md``). So by default
  (``groupnorm="int16"``) each GroupNorm runs on symmetric int16 tensors (TFLite's 16x8
  kernels) between a QUANTIZE from int8 and a QUANTIZE back, and the file stays
  integer-only; ``"float"`` runs it in float32 instead, ``"int8"`` like everything else.
  Convolutions, fully connected layers, pooling, activations and all weights are int8.

Edges: with ``io="float32"`` (the default, what the device runner wants) the file keeps float
``window``/``rr`` inputs and ``logits``/``probs`` outputs: a QUANTIZE op after each input, a
DEQUANTIZE op on the logits, and the five-way softmax in float. With ``io="int8"`` the inputs
and outputs themselves are int8 (``probs`` with TFLite's fixed 1/256 scale) and the caller
quantizes (:class:`fedbeat.device.tflite_model.TFLiteModel` does it from the file's parameters).

Calibrate with training beats only (DS1, or the device's own), never with the test set.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tflite

from fedbeat.models import layers
from fedbeat.models.params import Params
from fedbeat.models.tflite_export import (
    OUTPUT_LOGITS,
    TFLiteExportError,
    _build_graph,
    _Graph,
    _Op,
    _Options,
    _Quant,
    _serialise,
    _Tensor,
)
from fedbeat.models.zoo import Architecture

IO_TYPES = ("float32", "int8")
DEFAULT_CALIBRATION_BEATS = 2000
"""How many representative beats :func:`representative_beats` picks by default."""
GROUPNORM_MODES = ("float", "int16", "int8")
DEFAULT_COVERAGE = {"float": 1.0, "int16": 1.0, "int8": 0.999}
"""Share of a tensor's calibration values its int8 range covers (the rest saturate), by
GroupNorm mode; chosen on held-out DS1 beats (``docs/wearable.md``)."""
_SAMPLES_PER_BATCH = 16384

_INT8_MIN, _INT8_MAX = -128, 127
_SAME_PARAMS = {"RESHAPE", "TRANSPOSE", "PAD", "MAX_POOL_2D", "AVERAGE_POOL_2D",
                "CONCATENATION"}
"""Int8 kernels that require their data inputs and output to share scale and zero point."""

_INT8_VERSIONS = {"CONV_2D": 3, "FULLY_CONNECTED": 4, "ADD": 2, "SUB": 2, "MUL": 2, "MEAN": 2,
                  "TRANSPOSE": 2, "PAD": 2, "MAX_POOL_2D": 2, "AVERAGE_POOL_2D": 2, "RELU": 2,
                  "LEAKY_RELU": 2, "CONCATENATION": 2, "RSQRT": 2, "DEQUANTIZE": 2,
                  "SOFTMAX": 2, "QUANTIZE": 1, "RESHAPE": 1}
"""Operator versions of the int8 kernels (TFLite's ``op_version.cc``); SOFTMAX only when int8."""

_CODE_NAMES = {int(v): k for k, v in vars(tflite.BuiltinOperator).items()
               if not k.startswith("_") and isinstance(v, int)}

Ranges = dict[int, tuple[float, float]]
"""Calibrated (min, max) by tensor index of the float graph."""


class CalibrationError(ValueError):
    """The calibration beats are missing, malformed or not finite."""


def representative_beats(windows: np.ndarray, rr: np.ndarray, *,
                         count: int = DEFAULT_CALIBRATION_BEATS,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded uniform sample of at most ``count`` beats (without replacement), in order."""
    windows, rr = _check_beats(windows, rr)
    n = windows.shape[0]
    if count < 1:
        raise CalibrationError(f"count must be at least 1, got {count}")
    if n <= count:
        return windows, rr
    idx = np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
    return windows[idx], rr[idx]


def export_tflite_int8(arch: Architecture, params: Params, windows: np.ndarray, rr: np.ndarray,
                       *, dynamic_batch: bool = True, io: str = "float32",
                       groupnorm: str = "int16", coverage: float | None = None,
                       batch_size: int = 256) -> bytes:
    """Quantize the inference graph of ``arch`` to int8 and serialise it.

    Parameters
    ----------
    arch, params
        As for :func:`fedbeat.models.tflite_export.export_tflite`.
    windows, rr
        Representative beats, (n, 1, T) or (n, T) and (n, F) float: the activation ranges
        come from running the float32 model on them. Use training beats only.
    dynamic_batch
        As for the float32 export.
    io
        "float32": float inputs and outputs around an int8 body (QUANTIZE/DEQUANTIZE at the
        edges); "int8": int8 inputs and outputs (the caller quantizes).
    groupnorm
        How GroupNorm runs: "int16" (symmetric int16 statistics between QUANTIZE ops, the
        file stays integer-only), "float" (float32 between a DEQUANTIZE and a QUANTIZE) or
        "int8" (int8 like the rest; its statistics are then the main error, see
        ``docs/wearable.md``).
    coverage
        Share of each activation's calibration values its range covers (see
        :func:`calibrate`); by default :data:`DEFAULT_COVERAGE` for the GroupNorm mode.
    batch_size
        Beats per interpreter call during calibration.

    Raises
    ------
    CalibrationError
        Bad calibration beats, or no TFLite interpreter to calibrate with.
    TFLiteExportError
        The graph cannot be quantized (a constant in an unexpected place).
    """
    if io not in IO_TYPES:
        raise ValueError(f"io must be one of {', '.join(IO_TYPES)}, got {io!r}")
    if groupnorm not in GROUPNORM_MODES:
        raise ValueError(f"groupnorm must be one of {', '.join(GROUPNORM_MODES)}, "
                         f"got {groupnorm!r}")
    windows, rr = _check_beats(windows, rr, arch)
    g, inputs, outputs = _build_graph(arch, params, dynamic_batch=dynamic_batch)
    coverage = DEFAULT_COVERAGE[groupnorm] if coverage is None else coverage
    ranges = calibrate(g, inputs, outputs, windows, rr, coverage=coverage, batch_size=batch_size)
    norms = [n.name for n in arch.nodes if isinstance(n.layer, layers.GroupNorm)]
    inputs, outputs = _quantize(g, inputs, outputs, ranges, io=io,
                                island_nodes=norms if groupnorm != "int8" else (),
                                island=groupnorm)
    batch = "dynamic batch" if dynamic_batch else "batch 1"
    edges = "float32 input/output" if io == "float32" else "int8 input/output"
    body = {"int8": "int8 full-integer", "int16": "int8 with int16 GroupNorm, integer-only",
            "float": "int8 with float32 GroupNorm"}[groupnorm]
    description = (f"fedbeat {arch.name} inference, {body} ({edges}), {batch}; "
                   f"calibrated on {windows.shape[0]} beats; inputs window "
                   f"[N,1,{arch.window_samples}] and rr [N,{arch.rr_features}], outputs logits "
                   f"and probs [N,{arch.num_classes}]")
    return _serialise(g, inputs, outputs, description)


def write_tflite_int8(arch: Architecture, params: Params, path: Path | str, windows: np.ndarray,
                      rr: np.ndarray, *, dynamic_batch: bool = True, io: str = "float32",
                      groupnorm: str = "int16", coverage: float | None = None) -> Path:
    """Export with :func:`export_tflite_int8` and write the file; returns its path."""
    target = Path(path)
    target.write_bytes(export_tflite_int8(arch, params, windows, rr, dynamic_batch=dynamic_batch,
                                          io=io, groupnorm=groupnorm, coverage=coverage))
    return target


# ------------------------------------------------------------------------------- calibration

def _check_beats(windows: np.ndarray, rr: np.ndarray,
                 arch: Architecture | None = None) -> tuple[np.ndarray, np.ndarray]:
    windows = np.asarray(windows, dtype=np.float32)
    rr = np.asarray(rr, dtype=np.float32)
    if windows.ndim == 2:
        windows = windows[:, None, :]
    if windows.ndim != 3 or windows.shape[1] != 1 or rr.ndim != 2 \
            or rr.shape[0] != windows.shape[0]:
        raise CalibrationError(f"calibration beats need windows (n, 1, T) and rr (n, F), got "
                               f"{windows.shape} and {rr.shape}")
    if arch is not None and (windows.shape[2] != arch.window_samples
                             or rr.shape[1] != arch.rr_features):
        raise CalibrationError(f"{arch.name} takes windows of {arch.window_samples} samples "
                               f"and {arch.rr_features} RR features, got {windows.shape[2]} "
                               f"and {rr.shape[1]}")
    if windows.shape[0] == 0:
        raise CalibrationError("no calibration beats: int8 ranges come from representative "
                               "beats (e.g. --calibration with DS1 data)")
    if not (np.all(np.isfinite(windows)) and np.all(np.isfinite(rr))):
        raise CalibrationError("calibration beats contain NaN or infinity")
    return windows, rr


def calibrate(g: _Graph, inputs: list[int], outputs: list[int], windows: np.ndarray,
              rr: np.ndarray, *, coverage: float = 1.0, batch_size: int = 256) -> Ranges:
    """(min, max) of every activation tensor of float graph ``g`` over the beats.

    The range is the ``1 - coverage`` and ``coverage`` quantiles of the tensor's values over
    the beats (from a seeded sample of at most 16,384 values per tensor and batch), so a rare
    artefact (MIT-BIH has RR features of 100 beside a median of 1) saturates instead of costing
    every other beat its resolution. ``coverage=1`` is plain min/max.
    """
    if not 0.5 < coverage <= 1.0:
        raise CalibrationError(f"coverage must be in (0.5, 1], got {coverage}")
    from fedbeat.device.tflite_model import TFLiteRuntimeMissingError, load_interpreter_class

    try:
        interpreter_class = load_interpreter_class()
    except TFLiteRuntimeMissingError as exc:
        raise CalibrationError(f"calibration runs the float32 model: {exc}") from None
    calibration_graph = copy.copy(g)
    calibration_graph.dynamic_batch = True
    content = _serialise(calibration_graph, inputs, outputs, "fedbeat calibration")
    kwargs: dict[str, Any] = {}
    resolvers = getattr(sys.modules[interpreter_class.__module__], "OpResolverType", None)
    if resolvers is not None:  # keep every intermediate tensor: no delegate fuses them away
        kwargs["experimental_op_resolver_type"] = resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = interpreter_class(model_content=content, num_threads=1,
                                    experimental_preserve_all_tensors=True, **kwargs)
    activations = [i for i, t in enumerate(g.tensors)
                   if t.buffer == 0 and t.dtype == tflite.TensorType.FLOAT32]
    samples: dict[int, list[np.ndarray]] = {i: [] for i in activations}
    rng = np.random.default_rng(0)
    batch = 0
    for begin in range(0, windows.shape[0], batch_size):
        w, r = windows[begin:begin + batch_size], rr[begin:begin + batch_size]
        if w.shape[0] != batch:
            interpreter.resize_tensor_input(inputs[0], list(w.shape))
            interpreter.resize_tensor_input(inputs[1], list(r.shape))
            interpreter.allocate_tensors()
            batch = w.shape[0]
        interpreter.set_tensor(inputs[0], w)
        interpreter.set_tensor(inputs[1], r)
        interpreter.invoke()
        for i in activations:
            value = interpreter.get_tensor(i).ravel()
            if value.size > _SAMPLES_PER_BATCH:
                value = rng.choice(value, _SAMPLES_PER_BATCH, replace=False)
            samples[i].append(np.array(value))
    tail = 100.0 * (1.0 - coverage)
    ranges = {}
    for i in activations:
        values = np.concatenate(samples[i])
        ranges[i] = (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
    bad = [g.tensors[i].name for i, (a, b) in ranges.items()
           if not (np.isfinite(a) and np.isfinite(b))]
    if bad:
        raise CalibrationError(f"calibration gave non-finite ranges for {bad}")
    return ranges


# ------------------------------------------------------------------------------ quantization

def _affine(lo: float, hi: float) -> _Quant:
    """Asymmetric int8 parameters covering [lo, hi] and representing 0 exactly."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (_INT8_MAX - _INT8_MIN), 1e-12)
    zero_point = int(np.clip(round(_INT8_MIN - lo / scale), _INT8_MIN, _INT8_MAX))
    return _Quant((float(np.float32(scale)),), (zero_point,))


def _quantize_array(value: np.ndarray, quant: _Quant, dtype: type[np.integer],
                    axis: int | None = None) -> bytes:
    scale = np.asarray(quant.scale, dtype=np.float64)
    zero_point = np.asarray(quant.zero_point, dtype=np.float64)
    if axis is not None:
        shape = [1] * value.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    info = np.iinfo(dtype)
    q = np.clip(np.round(value.astype(np.float64) / scale) + zero_point, info.min, info.max)
    return q.astype(np.dtype(dtype).newbyteorder("<")).tobytes()


def _const_value(g: _Graph, index: int) -> np.ndarray:
    t = g.tensors[index]
    return np.frombuffer(g.buffers[t.buffer], dtype="<f4").reshape(t.shape)


def _set_const(g: _Graph, index: int, data: bytes, dtype: int, quant: _Quant) -> None:
    t = g.tensors[index]
    g.buffers[t.buffer] = data
    t.dtype, t.quant = dtype, quant


class _Classes:
    """Union-find over tensor indices: tensors that must share quantization parameters."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, i: int) -> int:
        self.parent.setdefault(i, i)
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def _add_op(g: _Graph, code: str, inputs: Sequence[int], outputs: Sequence[int],
            position: int) -> None:
    builtin = int(getattr(tflite.BuiltinOperator, code))
    opcode = g.opcodes.setdefault(builtin, len(g.opcodes))
    g.ops.insert(position, _Op(opcode, tuple(inputs), tuple(outputs), None))


def _repoint(g: _Graph, old: int, new: int) -> None:
    g.ops[:] = [_Op(op.opcode, tuple(new if i == old else i for i in op.inputs), op.outputs,
                    op.options) for op in g.ops]


def _island(g: _Graph, node: str, ranges: Ranges, *, int16: bool) -> set[int]:
    """Cut GroupNorm ``node`` out of the int8 graph: its input goes through a DEQUANTIZE
    (float32 island) or a QUANTIZE to int16, its output through a QUANTIZE back to int8.

    Returns the island's tensors (activations and constants), which the int8 pass skips.
    """
    names = {i: t.name for i, t in enumerate(g.tensors)}
    island = {i for i, name in names.items()
              if name in (node, f"{node}.weight", f"{node}.bias") or name.startswith(node + "/")}
    output = next(i for i, name in names.items() if name == node)
    first = next(k for k, op in enumerate(g.ops) if op.outputs[0] in island)
    source = g.ops[first].inputs[0]
    entry = len(g.tensors)
    g.tensors.append(_Tensor(f"{node}/{'int16' if int16 else 'float'}_input",
                             g.tensors[source].shape, tflite.TensorType.FLOAT32, batched=True))
    ranges[entry] = ranges[source]
    op = g.ops[first]
    g.ops[first] = _Op(op.opcode, (entry, *op.inputs[1:]), op.outputs, op.options)
    _add_op(g, "QUANTIZE" if int16 else "DEQUANTIZE", [source], [entry], first)
    exit_ = len(g.tensors)
    g.tensors.append(_Tensor(f"{node}/int8", g.tensors[output].shape,
                             tflite.TensorType.FLOAT32, batched=True))
    ranges[exit_] = ranges[output]
    _repoint(g, output, exit_)
    producer = next(k for k, op in enumerate(g.ops) if op.outputs[0] == output)
    _add_op(g, "QUANTIZE", [output], [exit_], producer + 1)
    return island | {entry}


def _quantize_int16(g: _Graph, codes: dict[int, str], island: set[int],
                    ranges: Ranges) -> None:
    """Symmetric int16 for the islands' activations and constants (TFLite's 16x8 scheme:
    zero point 0); ADD and SUB get ``PotScaleInt16=False`` for general int16 scales."""
    classes = _Classes()
    for op in g.ops:
        if codes[op.opcode] in _SAME_PARAMS and op.outputs[0] in island:
            classes.union(op.inputs[0], op.outputs[0])
    amax: dict[int, float] = {}
    for i in island & set(ranges):
        root = classes.find(i)
        amax[root] = max(amax.get(root, 0.0), abs(ranges[i][0]), abs(ranges[i][1]))
    for i in island & set(ranges):
        g.tensors[i].dtype = tflite.TensorType.INT16
        g.tensors[i].quant = _symmetric16(amax[classes.find(i)])
    for k, op in enumerate(g.ops):
        if op.outputs[0] not in island:
            continue
        for x in op.inputs:
            t = g.tensors[x]
            if t.buffer != 0 and t.dtype == tflite.TensorType.FLOAT32:
                value = _const_value(g, x)
                quant = _symmetric16(float(np.abs(value).max()))
                _set_const(g, x, _quantize_array(value, quant, np.int16),
                           tflite.TensorType.INT16, quant)
        if codes[op.opcode] in ("ADD", "SUB") and op.options is not None:
            options = _Options(op.options.kind, (*op.options.fields, ("PotScaleInt16", False)))
            g.ops[k] = _Op(op.opcode, op.inputs, op.outputs, options)


def _symmetric16(amax: float) -> _Quant:
    return _Quant((float(np.float32(max(amax, 1e-12) / 32767.0)),), (0,))


def _quantize(g: _Graph, inputs: list[int], outputs: list[int], ranges: Ranges, *,
              io: str, island_nodes: Sequence[str] = (),
              island: str = "float") -> tuple[list[int], list[int]]:
    """Rewrite float graph ``g`` in place as int8; returns its new input and output tensors.

    ``island_nodes`` (GroupNorm nodes) run in float32 (``island="float"``) or int16, between
    a DEQUANTIZE or QUANTIZE and a QUANTIZE back to int8.
    """
    logits, probs = outputs
    softmax = g.ops[-1]
    if softmax.outputs != (probs,):
        raise TFLiteExportError("expected the graph to end with the softmax")
    ranges = dict(ranges)
    new_inputs = list(inputs)
    kept_float: set[int] = set()
    for node in island_nodes:
        kept_float |= _island(g, node, ranges, int16=island == "int16")
    if io == "float32":
        for k, x in enumerate(inputs):                      # float input -> QUANTIZE -> int8
            t = g.tensors[x]
            q = len(g.tensors)
            g.tensors.append(_Tensor(f"{t.name}/int8", t.shape, t.dtype, batched=True))
            ranges[q] = ranges[x]
            _repoint(g, x, q)
            _add_op(g, "QUANTIZE", [x], [q], k)
        # int8 logits -> DEQUANTIZE -> float logits -> float SOFTMAX -> probs
        g.tensors[logits].name = f"{OUTPUT_LOGITS}/int8"
        float_logits = len(g.tensors)
        g.tensors.append(_Tensor(OUTPUT_LOGITS, g.tensors[logits].shape,
                                 tflite.TensorType.FLOAT32, batched=True))
        _repoint(g, logits, float_logits)
        _add_op(g, "DEQUANTIZE", [logits], [float_logits], len(g.ops) - 1)
        float_edges = {*inputs, float_logits, probs}
        new_outputs = [float_logits, probs]
    else:
        float_edges = set()
        new_outputs = list(outputs)

    float_edges |= kept_float
    classes = _Classes()
    codes = {index: _CODE_NAMES[code] for code, index in g.opcodes.items()}
    for op in g.ops:
        if codes[op.opcode] in _SAME_PARAMS and op.outputs[0] not in kept_float:
            data = op.inputs if codes[op.opcode] == "CONCATENATION" else op.inputs[:1]
            for x in data:
                classes.union(x, op.outputs[0])
    bounds: dict[int, tuple[float, float]] = {}
    for i, (lo, hi) in ranges.items():
        if i in float_edges:
            continue
        root = classes.find(i)
        a, b = bounds.get(root, (lo, hi))
        bounds[root] = (min(a, lo), max(b, hi))
    for i in ranges:
        if i not in float_edges:
            g.tensors[i].dtype = tflite.TensorType.INT8
            g.tensors[i].quant = _affine(*bounds[classes.find(i)])
    if io == "int8":                                         # TFLite's int8 softmax output
        g.tensors[probs].quant = _Quant((1.0 / 256.0,), (-128,))
    if island == "int16":
        _quantize_int16(g, codes, kept_float, ranges)

    for op in g.ops:
        code = codes[op.opcode]
        consts = [(k, x) for k, x in enumerate(op.inputs)
                  if g.tensors[x].buffer != 0 and g.tensors[x].dtype == tflite.TensorType.FLOAT32
                  and x not in kept_float]
        if not consts:
            continue
        if code in ("CONV_2D", "FULLY_CONNECTED"):
            in_scale = g.tensors[op.inputs[0]].quant
            assert in_scale is not None
            weight = _const_value(g, op.inputs[1])
            per_channel = code == "CONV_2D"
            if per_channel:
                amax = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)
            else:
                amax = np.array([np.abs(weight).max()])
            w_scale = np.where(amax > 0, amax / _INT8_MAX, 1.0).astype(np.float32)
            w_quant = _Quant(tuple(float(s) for s in w_scale), (0,) * w_scale.size)
            _set_const(g, op.inputs[1], _quantize_array(
                weight, w_quant, np.int8, 0 if per_channel else None),
                tflite.TensorType.INT8, w_quant)
            b_scale = (np.float64(in_scale.scale[0]) * w_scale.astype(np.float64))
            b_quant = _Quant(tuple(float(s) for s in b_scale), (0,) * b_scale.size)
            _set_const(g, op.inputs[2], _quantize_array(
                _const_value(g, op.inputs[2]), b_quant, np.int32, 0 if per_channel else None),
                tflite.TensorType.INT32, b_quant)
        elif code in ("ADD", "SUB", "MUL"):
            for _, x in consts:
                value = _const_value(g, x)
                quant = _affine(float(value.min()), float(value.max()))
                _set_const(g, x, _quantize_array(value, quant, np.int8),
                           tflite.TensorType.INT8, quant)
        else:
            raise TFLiteExportError(f"{code}: cannot quantize its float constant inputs")

    for code in g.opcodes:
        name = _CODE_NAMES[code]
        if _INT8_VERSIONS.get(name, 1) > 1 and not (name == "SOFTMAX" and io == "float32"):
            g.versions[code] = _INT8_VERSIONS[name]
    return new_inputs, new_outputs
