"""Forward pass of an architecture as ONNX nodes: inputs, parameter split, layers."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from fedbeat.models.graph.emit import BATCH, GraphBuilder, Shape
from fedbeat.models.params import ParamLayout
from fedbeat.models.zoo import INPUT_RR, INPUT_WINDOW, Architecture


def declare_data_inputs(g: GraphBuilder, arch: Architecture) -> None:
    g.add_input(INPUT_WINDOW, TensorProto.FLOAT, (BATCH, 1, arch.window_samples))
    g.add_input(INPUT_RR, TensorProto.FLOAT, (BATCH, arch.rr_features))


INPUT_PARAMS = "params"
"""The one parameter input of every graph: the flat float32 vector in layout order."""


def declare_param_inputs(g: GraphBuilder, layout: ParamLayout) -> None:
    """Declare the flat ``params`` input and split it into the named tensors layers read.

    One flat vector instead of one input per tensor: the optimizer then updates the whole
    model in a handful of nodes instead of several per tensor (node dispatch, not arithmetic,
    dominates small models), and it is the same vector an update travels as.
    """
    g.add_input(INPUT_PARAMS, TensorProto.FLOAT, (layout.size,))
    sizes = [int(np.prod(shape)) for _, shape in layout.entries]
    # 1-D tensors (biases) come out of the Split already shaped; only the rest need a Reshape.
    pieces = [name if len(shape) == 1 else f"{name}:flat" for name, shape in layout.entries]
    g.nodes.append(helper.make_node("Split", [INPUT_PARAMS, g.const_i64(sizes)], pieces,
                                    name="Split_params", axis=0))
    for piece, (name, shape) in zip(pieces, layout.entries, strict=True):
        if piece != name:
            g.op("Reshape", [piece, g.const_i64(list(shape))], name=name)


def flatten_concat(g: GraphBuilder, tensors: list[str], shapes: list[Shape]) -> str:
    """Concatenate tensors into one flat vector (the inverse of the parameter split)."""
    flat = [t if len(s) == 1 else g.op("Reshape", [t, g.const_i64([-1])])
            for t, s in zip(tensors, shapes, strict=True)]
    return g.op("Concat", flat, axis=0) if len(flat) > 1 else flat[0]


def emit_forward(g: GraphBuilder, arch: Architecture, *, training: bool) -> str:
    """Emit every layer in order; returns the logits tensor name (the last node's name)."""
    out = ""
    for node in arch.nodes:
        out = node.layer.emit(g, node.name, list(node.inputs), training=training)
    return out


def node_shapes(arch: Architecture) -> dict[str, Shape]:
    """Static output shape of every layer node, from an inference-mode forward pass."""
    g = GraphBuilder(prefix="s")
    declare_data_inputs(g, arch)
    declare_param_inputs(g, ParamLayout.from_architecture(arch))
    emit_forward(g, arch, training=False)
    shapes = g.infer_shapes([arch.output])
    return {node.name: shapes[node.name] for node in arch.nodes}
