"""A small helper that accumulates ONNX nodes, constants and graph inputs/outputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
"""ONNX opset of every generated graph. 17 is the newest with stable ScatterElements reduction,
LayerNorm-free primitives and ReduceMean-with-attribute semantics; onnxruntime 1.14+ runs it."""

IR_VERSION = 8
"""IR version written into every model: onnx >= 1.23 writes 14 by default, which onnxruntime
releases before 1.22 refuse. IR 8 is the one that introduced opset 17."""

BATCH = "N"
"""Symbolic name of the dynamic batch dimension."""

Shape = tuple[int | str, ...]


class GraphBuilder:
    """Collect nodes in topological order and produce an ``onnx.ModelProto``.

    Parameters
    ----------
    prefix
        Namespace for generated tensor names, so that forward and backward names never collide.
    """

    def __init__(self, prefix: str = "t") -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._prefix = prefix
        self._counter = 0
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}
        self.input_names: set[str] = set()
        self.known_shapes: dict[str, Shape] = {}

    def fresh(self, hint: str = "") -> str:
        self._counter += 1
        return f"{self._prefix}{self._counter}{'_' + hint if hint else ''}"

    def op(self, op_type: str, inputs: Sequence[str], *, name: str | None = None,
           n_outputs: int = 1, **attrs: Any) -> str:
        """Append one node and return its (first) output name.

        With ``n_outputs > 1`` the extra outputs are named ``<name>:1``, ``<name>:2`` …
        """
        out = name or self.fresh(op_type.lower())
        outputs = [out] + [f"{out}:{i}" for i in range(1, n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs,
                                           name=f"{op_type}_{out}", **attrs))
        return out

    def op_multi(self, op_type: str, inputs: Sequence[str], n_outputs: int,
                 **attrs: Any) -> list[str]:
        """Append a node with several outputs and return all their names."""
        first = self.op(op_type, inputs, n_outputs=n_outputs, **attrs)
        return [first] + [f"{first}:{i}" for i in range(1, n_outputs)]

    def const(self, value: np.ndarray) -> str:
        """A deduplicated initializer holding ``value``."""
        value = np.ascontiguousarray(value)
        key = (value.dtype.str, value.tobytes(), value.shape)
        if key not in self._consts:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(value, name))
            self._consts[key] = name
        return self._consts[key]

    def constant_value(self, name: str) -> np.ndarray | None:
        """The value of initializer ``name``, or None if it is not a constant of this graph."""
        for init in self.initializers:
            if init.name == name:
                return numpy_helper.to_array(init)
        return None

    def shape_like(self, tensor: str, shape: Shape, *, for_expand: bool = False) -> str:
        """A Reshape (or Expand) target for ``shape``.

        A constant when only the batch axis is symbolic, which spares a Shape node per use:
        the batch axis becomes -1 for Reshape, 1 for Expand (which broadcasts it). Otherwise
        the runtime shape of ``tensor``.
        """
        rest = shape[1:]
        if shape and all(isinstance(d, int) for d in rest):
            batch = -1 if not for_expand else 1
            first = shape[0] if isinstance(shape[0], int) else batch
            return self.const_i64([first, *[int(d) for d in rest]])
        return self.shape_of(tensor)

    def const_i64(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(values, dtype=np.int64))

    def const_f32(self, value: float) -> str:
        return self.const(np.asarray(value, dtype=np.float32))

    def shape_of(self, tensor: str) -> str:
        return self.op("Shape", [tensor])

    def add_input(self, name: str, elem_type: int, shape: Shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        self.input_names.add(name)
        return name

    def add_output(self, tensor: str, name: str, elem_type: int = TensorProto.FLOAT,
                   shape: Shape | None = None) -> None:
        """Expose ``tensor`` as graph output ``name`` (via Identity when the names differ)."""
        if tensor != name:
            self.op("Identity", [tensor], name=name)
        self.outputs.append(helper.make_tensor_value_info(
            name, elem_type, None if shape is None else list(shape)))

    def dropout_mask_input(self, layer: str, like: str) -> str:
        """Declare the scaled Bernoulli mask input for dropout layer ``layer``."""
        name = f"dropout_mask.{layer}"
        shape = self.static_shape(like)
        return self.add_input(name, TensorProto.FLOAT, (BATCH, *shape[1:]))

    def infer_shapes(self, outputs: Sequence[str]) -> dict[str, Shape]:
        """Run ONNX shape inference over the nodes emitted so far.

        Returns static shapes for every tensor; the batch axis appears as the symbol ``"N"``.
        """
        graph = helper.make_graph(list(self.nodes), "shapes", list(self.inputs),
                                  [helper.make_empty_tensor_value_info(o) for o in outputs],
                                  initializer=list(self.initializers))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        shapes: dict[str, Shape] = {}
        for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            if info.type.tensor_type.HasField("shape"):
                shapes[info.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                    for d in info.type.tensor_type.shape.dim)
        for init in inferred.graph.initializer:
            shapes[init.name] = tuple(init.dims)
        return shapes

    def static_shape(self, tensor: str) -> Shape:
        """Shape of ``tensor``, inferring shapes of the graph so far if it is not yet known."""
        if tensor not in self.known_shapes:
            self.known_shapes.update(self.infer_shapes([tensor]))
        return self.known_shapes[tensor]

    def model(self, graph_name: str, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs,
                                  initializer=self.initializers, doc_string=doc)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="fedbeat")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model
