"""Every backward rule in ``GRAD_RULES`` against torch float64 autograd, one op per case.

Each case builds a tiny forward graph with :class:`GraphBuilder`, differentiates it with the
project's own walker (:func:`backward`) seeded by a random upstream gradient that is fed as a
graph input, runs forward and backward on stock onnxruntime, and compares with torch's
``y.backward(upstream)`` on the same float32 values promoted to float64. The error measure is
norm-wise: ``||ours - torch|| / ||torch||`` per tensor, at most 1e-5 (float32 graphs reach about
1e-7 on these sizes).

Data inputs carry a symbolic batch axis ``N``, as in the generated training graphs; inputs
named in ``OpCase.params`` are static (model parameters), which is what per-example mode keeps
the batch axis for.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from fedbeat.models.graph.backward import backward
from fedbeat.models.graph.emit import GraphBuilder, Shape
from fedbeat.models.graph.grad_rules import (
    GRAD_RULES,
    SLICE_IM2COL_BELOW_CHANNELS,
    UnsupportedOpError,
)

torch = pytest.importorskip("torch")

from models.graph_helpers import (  # noqa: E402
    BATCH_DIM,
    assert_rel,
    f64,
    run,
    single_threaded_torch,  # noqa: F401 (autouse)
)

N = 3
"""Batch size of every case."""

TOL = 1e-5
"""Norm-wise relative error allowed between the float32 graph and float64 autograd."""

Emit = Callable[[GraphBuilder], str]
TorchFn = Callable[[Mapping[str, "torch.Tensor"]], "torch.Tensor"]


@dataclass(frozen=True)
class OpCase:
    """One op under test: how to emit it in ONNX and how to compute it in torch.

    ``shapes`` are concrete (batch axis first for data inputs); ``params`` are the inputs
    without a batch axis; ``positive`` inputs are drawn from U(0.5, 2) (Sqrt, denominators);
    ``wrt`` defaults to every input.
    """

    op: str
    label: str
    shapes: Mapping[str, tuple[int, ...]]
    emit: Emit
    torch_fn: TorchFn
    params: frozenset[str] = frozenset()
    positive: frozenset[str] = frozenset()
    wrt: tuple[str, ...] | None = None

    @property
    def id(self) -> str:
        return f"{self.op}-{self.label}"

    @property
    def targets(self) -> tuple[str, ...]:
        return self.wrt if self.wrt is not None else tuple(self.shapes)

    def draw(self) -> tuple[np.random.Generator, dict[str, np.ndarray]]:
        """A generator seeded from the case id, and float32 input values."""
        rng = np.random.default_rng(zlib.crc32(self.id.encode()))
        values = {}
        for name, shape in self.shapes.items():
            if name in self.positive:
                values[name] = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
            else:
                values[name] = rng.standard_normal(size=shape).astype(np.float32)
        return rng, values

    def declared_shape(self, name: str) -> Shape:
        shape = self.shapes[name]
        return shape if name in self.params else (BATCH_DIM, *shape[1:])


@dataclass
class ForwardGraph:
    builder: GraphBuilder
    nodes: list[onnx.NodeProto]
    shapes: dict[str, Shape]
    output: str


def forward_graph(inputs: Mapping[str, Shape], emit: Emit) -> ForwardGraph:
    """Declare float inputs, emit the forward nodes and infer their static shapes."""
    g = GraphBuilder(prefix="o")
    for name, shape in inputs.items():
        g.add_input(name, TensorProto.FLOAT, shape)
    out = emit(g)
    nodes = list(g.nodes)
    return ForwardGraph(g, nodes, g.infer_shapes([out]), out)


def ort_gradients(case: OpCase, values: Mapping[str, np.ndarray], upstream: np.ndarray, *,
                  wrt: Sequence[str], per_example: bool
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Forward output and ``{input: gradient}`` from our backward pass run on onnxruntime."""
    fg = forward_graph({n: case.declared_shape(n) for n in case.shapes}, case.emit)
    assert case.op in {n.op_type for n in fg.nodes}, f"case {case.id} does not emit {case.op}"
    g = fg.builder
    seed = g.add_input("upstream", TensorProto.FLOAT, fg.shapes[fg.output])
    grads = backward(g, fg.nodes, fg.shapes, {fg.output: seed}, list(wrt),
                     per_example=per_example)
    g.add_output(fg.output, "y", shape=fg.shapes[fg.output])
    for name in wrt:
        shape = case.declared_shape(name)
        g.add_output(grads[name], f"grad.{name}",
                     shape=(BATCH_DIM, *shape) if per_example else shape)
    out = run(g.model(f"op-{case.op}", case.id), {**values, "upstream": upstream})
    return out["y"], {name: out[f"grad.{name}"] for name in wrt}


# --------------------------------------------------------------------------------------------
# Cases


def _binary(op: str, a: tuple[int, ...], b: tuple[int, ...], label: str,
            params: str = "") -> OpCase:
    fns = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}
    return OpCase(op, label, {"a": a, "b": b}, lambda g: g.op(op, ["a", "b"]),
                  lambda t: fns[op](t["a"], t["b"]), params=frozenset(params),
                  positive=frozenset("b" if op == "Div" else ""))


C, L = 4, 6
BROADCASTS = [  # (a shape, b shape, label, which inputs are parameters)
    ((N, C, L), (N, C, L), "same", ""),
    ((N, C, L), (C, 1), "NCL-C1", "b"),           # GroupNorm affine: (C, 1) against (N, C, L)
    ((C, 1), (N, C, L), "C1-NCL", "a"),
    ((N, C, L), (1, C, 1), "NCL-1C1", "b"),
    ((N, 1, L), (N, C, 1), "N1L-NC1", ""),         # both operands broadcast
    ((N, C, L), (N, C, 1), "NCL-NC1", ""),         # GroupNorm centring: x - mean
    ((N, C), (C,), "NC-C", "b"),
    ((N, C, L), (), "NCL-scalar", "b"),
]
BINARY_CASES = [_binary(op, a, b, label, params) for op in ("Add", "Sub", "Mul", "Div")
                for a, b, label, params in BROADCASTS]
SQUARE_CASE = OpCase("Mul", "x*x", {"x": (N, C, L)}, lambda g: g.op("Mul", ["x", "x"]),
                     lambda t: t["x"] * t["x"])  # one tensor on both inputs: gradients add up

UNARY_CASES = [
    OpCase("Neg", "x", {"x": (N, C, L)}, lambda g: g.op("Neg", ["x"]), lambda t: -t["x"]),
    OpCase("Identity", "x", {"x": (N, C, L)}, lambda g: g.op("Identity", ["x"]),
           lambda t: t["x"] * 1),
    OpCase("Relu", "x", {"x": (N, C, L)}, lambda g: g.op("Relu", ["x"]),
           lambda t: torch.relu(t["x"])),
    OpCase("LeakyRelu", "default-alpha", {"x": (N, C, L)}, lambda g: g.op("LeakyRelu", ["x"]),
           lambda t: torch.nn.functional.leaky_relu(t["x"], 0.01)),
    OpCase("LeakyRelu", "alpha0.1", {"x": (N, C, L)},
           lambda g: g.op("LeakyRelu", ["x"], alpha=0.1),
           lambda t: torch.nn.functional.leaky_relu(t["x"], 0.1)),
    OpCase("Sqrt", "x", {"x": (N, C, L)}, lambda g: g.op("Sqrt", ["x"]),
           lambda t: torch.sqrt(t["x"]), positive=frozenset("x")),
    OpCase("Reciprocal", "x", {"x": (N, C, L)}, lambda g: g.op("Reciprocal", ["x"]),
           lambda t: 1.0 / t["x"], positive=frozenset("x")),
]


def _reshape(target: list[int], torch_shape: tuple[int, ...]) -> OpCase:
    return OpCase("Reshape", f"to{target}", {"x": (N, C, L)},
                  lambda g: g.op("Reshape", ["x", g.const_i64(target)]),
                  lambda t: t["x"].reshape(torch_shape))


def _flatten(axis: int) -> OpCase:
    def torch_flatten(t: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = t["x"]
        return x.reshape(int(np.prod(x.shape[:axis])), -1)
    return OpCase("Flatten", f"axis{axis}", {"x": (N, C, L)},
                  lambda g: g.op("Flatten", ["x"], axis=axis), torch_flatten)


def _reduce_mean(axes: list[int], keepdims: int) -> OpCase:
    return OpCase("ReduceMean", f"axes{axes}-keepdims{keepdims}", {"x": (N, C, L)},
                  lambda g: g.op("ReduceMean", ["x"], axes=axes, keepdims=keepdims),
                  lambda t: t["x"].mean(dim=axes, keepdim=bool(keepdims)))


SHAPE_CASES = [
    _reshape([0, 2, -1], (N, 2, -1)),             # GroupNorm grouping
    _reshape([-1, C * L], (N, C * L)),
    _flatten(1),
    _flatten(2),
    _reduce_mean([2], 0),                          # GlobalAvgPool
    _reduce_mean([2], 1),                          # GroupNorm statistics
    _reduce_mean([-1], 1),
    _reduce_mean([1, 2], 0),
    _reduce_mean([1, 2], 1),
]


CONCAT_CONST = np.linspace(-1.0, 1.0, N * 2 * L, dtype=np.float32).reshape(N, 2, L)


def _concat_const(g: GraphBuilder) -> str:
    return g.op("Concat", ["x", g.const(CONCAT_CONST)], axis=1)


CONCAT_CASES = [
    OpCase("Concat", "axis1-three", {"a": (N, 2, L), "b": (N, 3, L), "c": (N, 1, L)},
           lambda g: g.op("Concat", ["a", "b", "c"], axis=1),
           lambda t: torch.cat([t["a"], t["b"], t["c"]], dim=1)),
    OpCase("Concat", "axis-1", {"a": (N, 5), "b": (N, 3)},
           lambda g: g.op("Concat", ["a", "b"], axis=-1),
           lambda t: torch.cat([t["a"], t["b"]], dim=-1)),
    OpCase("Concat", "one-input-wanted", {"a": (N, 2, L), "b": (N, 3, L)},
           lambda g: g.op("Concat", ["a", "b"], axis=1),
           lambda t: torch.cat([t["a"], t["b"]], dim=1), wrt=("b",)),
    OpCase("Concat", "with-constant", {"x": (N, 3, L)}, _concat_const,
           lambda t: torch.cat([t["x"], f64(CONCAT_CONST)], dim=1)),
]

GEMM_CASE = OpCase(
    "Gemm", "linear", {"x": (N, 7), "w": (5, 7), "bias": (5,)},
    lambda g: g.op("Gemm", ["x", "w", "bias"], transB=1),
    lambda t: torch.nn.functional.linear(t["x"], t["w"], t["bias"]),
    params=frozenset({"w", "bias"}))


def conv_output_padding(length: int, kernel: int, stride: int, padding: int,
                        dilation: int) -> int:
    """What the Conv rule's ConvTranspose must add back: ``(L + 2p - d(k-1) - 1) mod s``."""
    return (length + 2 * padding - dilation * (kernel - 1) - 1) % stride


def _conv(kernel: int, stride: int, padding: int, dilation: int, length: int,
          channels: int = 3) -> OpCase:
    # The weight-gradient rule builds im2col from slices below SLICE_IM2COL_BELOW_CHANNELS
    # input channels and by a channels-last Gather from there on: cases cover both.
    extra = conv_output_padding(length, kernel, stride, padding, dilation)
    return OpCase(
        "Conv", f"k{kernel}s{stride}p{padding}d{dilation}L{length}C{channels}-outpad{extra}",
        {"x": (N, channels, length), "w": (4, channels, kernel), "bias": (4,)},
        lambda g: g.op("Conv", ["x", "w", "bias"], kernel_shape=[kernel], strides=[stride],
                       pads=[padding, padding], dilations=[dilation]),
        lambda t: torch.nn.functional.conv1d(t["x"], t["w"], t["bias"], stride=stride,
                                             padding=padding, dilation=dilation),
        params=frozenset({"w", "bias"}))


CONV_CASES = [
    _conv(7, 1, 3, 1, 32, channels=1),                                # the 1-channel ECG stem
    _conv(3, 1, 1, 1, 20, channels=SLICE_IM2COL_BELOW_CHANNELS),
    _conv(3, 1, 2, 2, 21, channels=SLICE_IM2COL_BELOW_CHANNELS),
    _conv(3, 2, 1, 1, 32, channels=SLICE_IM2COL_BELOW_CHANNELS),
    _conv(5, 3, 0, 2, 23, channels=SLICE_IM2COL_BELOW_CHANNELS + 3),
    _conv(3, 1, 0, 1, 20),
    _conv(3, 1, 1, 2, 20),
    _conv(5, 1, 3, 1, 17),
    _conv(7, 1, 3, 1, 32),    # ecg-cnn stems
    _conv(5, 1, 0, 2, 19),
    _conv(3, 2, 1, 1, 32),    # ecg-cnn-m's strided block: output_padding 1
    _conv(3, 2, 1, 1, 17),
    _conv(5, 2, 1, 1, 16),
    _conv(5, 2, 0, 2, 23),
    _conv(7, 2, 3, 2, 30),
    _conv(3, 3, 0, 1, 20),    # output_padding 2
    _conv(7, 2, 3, 1, 25),
]


def _pool(op: str, kernel: int, stride: int, length: int) -> OpCase:
    # Training graphs expose MaxPool's Indices; tiling windows take the MaxUnpool path,
    # overlapping ones the scatter-add path.
    outputs = 2 if op == "MaxPool" else 1
    fn = (torch.nn.functional.max_pool1d if op == "MaxPool"
          else torch.nn.functional.avg_pool1d)
    label = f"k{kernel}s{stride}L{length}"
    return OpCase(op, label, {"x": (N, C, length)},
                  lambda g: g.op(op, ["x"], n_outputs=outputs, kernel_shape=[kernel],
                                 strides=[stride]),
                  lambda t: fn(t["x"], kernel, stride))


POOL_SHAPES = [(2, 2, 16), (2, 2, 17), (3, 2, 15), (3, 2, 16), (3, 3, 16), (2, 3, 17),
               (3, 3, 18)]
POOL_CASES = [_pool(op, k, s, length) for op in ("MaxPool", "AveragePool")
              for k, s, length in POOL_SHAPES]

LN_SCALE = np.linspace(0.5, 1.5, L, dtype=np.float32)
LN_BIAS = np.linspace(-0.3, 0.3, L, dtype=np.float32)


def _layer_norm(label: str, scale: np.ndarray, bias: np.ndarray | None) -> OpCase:
    """LayerNormalization over the last axis with constant scale (and bias): GroupNorm's core.

    The unit-scale, no-bias case takes the rule's shortcut (Y is x̂); the other the general path.
    """
    def emit(g: GraphBuilder) -> str:
        inputs = ["x", g.const(scale)] + ([] if bias is None else [g.const(bias)])
        return g.op("LayerNormalization", inputs, axis=-1, epsilon=1e-5, n_outputs=3)

    def torch_fn(t: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.layer_norm(
            t["x"], (L,), weight=f64(scale), bias=None if bias is None else f64(bias), eps=1e-5)

    return OpCase("LayerNormalization", label, {"x": (N, C, L)}, emit, torch_fn)


LN_CASES = [_layer_norm("unit", np.ones(L, dtype=np.float32), None),
            _layer_norm("scaled-biased", LN_SCALE, LN_BIAS)]

CASES = [*BINARY_CASES, SQUARE_CASE, *UNARY_CASES, *SHAPE_CASES, *CONCAT_CASES, GEMM_CASE,
         *CONV_CASES, *POOL_CASES, *LN_CASES]

PER_EXAMPLE_CASES = [
    GEMM_CASE,
    *(c for c in CONV_CASES if c.label.startswith(("k7s1p3d1", "k3s2p1d1L32", "k5s2p0d2",
                                                   "k5s3p0d2"))),
    # Parameters broadcast from the trailing axes, or of the data's rank with size 1 on the
    # batch axis, such as (1, C, 1).
    *(c for c in BINARY_CASES if c.params and (c.op == "Mul" or c.label == "C1-NCL")),
]


def _case_ids(cases: Sequence[OpCase]) -> list[str]:
    return [c.id for c in cases]


# --------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("case", CASES, ids=_case_ids(CASES))
def test_gradient_matches_autograd(case: OpCase) -> None:
    rng, values = case.draw()
    leaves = {n: f64(v).requires_grad_(n in case.targets) for n, v in values.items()}
    y = case.torch_fn(leaves)
    upstream = rng.standard_normal(size=tuple(y.shape)).astype(np.float32)
    y.backward(f64(upstream))

    out, grads = ort_gradients(case, values, upstream, wrt=case.targets, per_example=False)

    assert_rel(out, y, TOL, "forward")
    for name in case.targets:
        assert grads[name].shape == values[name].shape
        assert_rel(grads[name], leaves[name].grad, TOL, f"d{name}")


@pytest.mark.parametrize("case", PER_EXAMPLE_CASES, ids=_case_ids(PER_EXAMPLE_CASES))
def test_per_example_gradient_matches_vmap(case: OpCase) -> None:
    rng, values = case.draw()
    params = {n: f64(v) for n, v in values.items() if n in case.params}
    data = {n: f64(v) for n, v in values.items() if n not in case.params}
    out_shape = case.torch_fn({**params, **data}).shape
    upstream = rng.standard_normal(size=tuple(out_shape)).astype(np.float32)

    def example_loss(p: dict[str, torch.Tensor], d: dict[str, torch.Tensor],
                     up: torch.Tensor) -> torch.Tensor:
        single = {k: v.unsqueeze(0) for k, v in d.items()}
        return (case.torch_fn({**p, **single})[0] * up).sum()

    expected = torch.func.vmap(torch.func.grad(example_loss), in_dims=(None, 0, 0))(
        params, data, f64(upstream))

    _, grads = ort_gradients(case, values, upstream, wrt=sorted(case.params), per_example=True)

    for name in case.params:
        assert grads[name].shape == (N, *values[name].shape)
        assert_rel(grads[name], expected[name], TOL, f"per-example d{name}")


def test_every_rule_has_a_case() -> None:
    covered = {c.op for c in CASES}
    assert set(GRAD_RULES) <= covered, f"rules without a test: {set(GRAD_RULES) - covered}"
    assert {"Conv", "Gemm", "Mul"} <= {c.op for c in PER_EXAMPLE_CASES}


def test_conv_cases_cover_output_padding() -> None:
    pads = {int(c.label.rsplit("outpad", 1)[1]) for c in CONV_CASES}
    assert 0 in pads
    assert len(pads) >= 3, "want output_padding 0, 1 and 2 among the Conv cases"


def _op_without_rule() -> str:
    return next(op for op in ("Tanh", "Sigmoid", "Erf", "Softsign", "Round")
                if op not in GRAD_RULES)


def _param_then(op: str) -> Emit:
    return lambda g: g.op(op, [g.op("Mul", ["x", "w"])])


def _data_then_param(op: str) -> Emit:
    return lambda g: g.op("Mul", [g.op(op, ["x"]), "w"])


def _differentiate(emit: Emit, wrt: Sequence[str], inputs: Mapping[str, Shape] | None = None
                   ) -> dict[str, str]:
    fg = forward_graph(inputs or {"x": (BATCH_DIM, 4), "w": (4,)}, emit)
    seed = fg.builder.add_input("upstream", TensorProto.FLOAT, fg.shapes[fg.output])
    return backward(fg.builder, fg.nodes, fg.shapes, {fg.output: seed}, list(wrt))


def test_op_without_rule_raises() -> None:
    op = _op_without_rule()
    with pytest.raises(UnsupportedOpError, match=op) as info:
        _differentiate(_param_then(op), ["w"])
    assert info.value.op_type == op


def test_op_without_rule_off_the_gradient_path_is_ignored() -> None:
    grads = _differentiate(_data_then_param(_op_without_rule()), ["w"])
    assert set(grads) == {"w"}


CONV_INPUTS: dict[str, Shape] = {"x": (BATCH_DIM, 4, 12), "w": (4, 2, 3), "bias": (4,)}


@pytest.mark.parametrize(("emit", "inputs"), [
    (lambda g: g.op("Gemm", ["x", "w", "bias"]),
     {"x": (BATCH_DIM, 4), "w": (4, 3), "bias": (3,)}),
    (lambda g: g.op("Gemm", ["x", "w", "bias"], transB=1, alpha=2.0),
     {"x": (BATCH_DIM, 4), "w": (3, 4), "bias": (3,)}),
    (lambda g: g.op("Conv", ["x", "w", "bias"], kernel_shape=[3], group=2), CONV_INPUTS),
    (lambda g: g.op("AveragePool", [g.op("Mul", ["x", "w"])], kernel_shape=[2],
                    pads=[1, 1]),
     {"x": (BATCH_DIM, 4, 12), "w": (4, 1)}),
], ids=["gemm-transB0", "gemm-alpha", "conv-group2", "avgpool-pads"])
def test_unsupported_attributes_raise(emit: Emit, inputs: Mapping[str, Shape]) -> None:
    wrt = [n for n in inputs if n != "x"]
    with pytest.raises(UnsupportedOpError):
        _differentiate(emit, wrt, inputs)


def test_parameter_without_influence_raises() -> None:
    inputs: dict[str, Shape] = {"x": (BATCH_DIM, 4), "w": (4,), "unused": (4,)}
    with pytest.raises(ValueError, match="unused"):
        _differentiate(_data_then_param("Relu"), ["w", "unused"], inputs)


def test_maxpool_without_indices_raises() -> None:
    inputs: dict[str, Shape] = {"x": (BATCH_DIM, 4, 12), "w": (4, 1)}
    with pytest.raises(ValueError, match="Indices"):
        _differentiate(lambda g: g.op("MaxPool", [g.op("Mul", ["x", "w"])], kernel_shape=[2]),
                       ["w"], inputs)


@pytest.mark.parametrize(("kernel", "stride"), [(2, 2), (3, 2)])
def test_maxpool_sends_ties_to_the_first_maximum_like_torch(kernel: int, stride: int) -> None:
    """After a ReLU, pooling windows often hold equal zeros; torch routes to the first."""
    case = _pool("MaxPool", kernel, stride, 8)
    x = np.zeros((N, C, 8), dtype=np.float32)
    x[:, :, ::4] = 1.0                                   # windows (1, 0), (0, 0), (1, 0), (0, 0)
    out_len = (8 - kernel) // stride + 1
    upstream = np.arange(N * C * out_len, dtype=np.float32).reshape(N, C, out_len) + 1
    _, grads = ort_gradients(case, {"x": x}, upstream, wrt=["x"], per_example=False)
    leaf = f64(x).requires_grad_(True)
    torch.nn.functional.max_pool1d(leaf, kernel, stride).backward(f64(upstream))
    np.testing.assert_array_equal(grads["x"], leaf.grad.numpy())


def test_conv_cases_cover_both_im2col_layouts() -> None:
    for cases in (CONV_CASES, [c for c in PER_EXAMPLE_CASES if c.op == "Conv"]):
        channels = {c.shapes["x"][1] for c in cases}
        assert min(channels) < SLICE_IM2COL_BELOW_CHANNELS <= max(channels)
