"""Forward pass of an architecture as ONNX nodes, plus static shape discovery."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from fedbeat.models.graph.emit import BATCH, GraphBuilder, Shape
from fedbeat.models.params import ParamLayout
from fedbeat.models.zoo import INPUT_RR, INPUT_WINDOW, Architecture


def declare_data_inputs(g: GraphBuilder, arch: Architecture) -> None:
    g.add_input(INPUT_WINDOW, TensorProto.FLOAT, (BATCH, 1, arch.window_samples))
    g.add_input(INPUT_RR, TensorProto.FLOAT, (BATCH, arch.rr_features))


def declare_param_inputs(g: GraphBuilder, layout: ParamLayout) -> None:
    for name, shape in layout.entries:
        g.add_input(name, TensorProto.FLOAT, shape)


def emit_forward(g: GraphBuilder, arch: Architecture, *, training: bool) -> str:
    """Emit every layer in order; returns the logits tensor name (the last node's name)."""
    if training:
        g.known_shapes.update(node_shapes(arch))
    out = ""
    for node in arch.nodes:
        out = node.layer.emit(g, node.name, list(node.inputs), training=training)
    return out


def infer_shapes(g: GraphBuilder, outputs: list[str]) -> dict[str, Shape]:
    """Run ONNX shape inference over the nodes emitted so far.

    Returns static shapes for every tensor; the batch axis appears as the symbol ``"N"``.
    """
    graph = helper.make_graph(list(g.nodes), "shapes", list(g.inputs),
                              [helper.make_empty_tensor_value_info(o) for o in outputs],
                              initializer=list(g.initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    shapes: dict[str, Shape] = {}
    infos = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    for info in infos:
        if not info.type.tensor_type.HasField("shape"):
            continue
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                  for d in dims)
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def node_shapes(arch: Architecture) -> dict[str, Shape]:
    """Static output shape of every layer node, from an inference-mode forward pass."""
    g = GraphBuilder(prefix="s")
    declare_data_inputs(g, arch)
    declare_param_inputs(g, ParamLayout.from_architecture(arch))
    emit_forward(g, arch, training=False)
    shapes = infer_shapes(g, [arch.output])
    return {node.name: shapes[node.name] for node in arch.nodes}
