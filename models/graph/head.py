"""Head-only training: the classifier head learns on frozen features (the wearable tier).

The *head* is every node after the feature boundary, the ``join`` Concat of the waveform and
RR branches: ``head.fc``, ``head.act``, ``head.drop`` and ``logits`` in both zoo models. The
convolutional trunk and the RR branch (``rr.*``) are the *features* and stay frozen; their
output for a beat does not change during a fit, so it is computed once (``head_features``
graph) and every step then costs only the head's two small matrix products.

The graphs keep the contract of the full ones: they take the whole flat ``params`` vector
(and ``global_params`` for FedProx) and return the whole ``new.params``, whose feature part is
the input copied through unchanged, bit for bit. Optimizer state (``state.*``) covers only the
head: the slice ``params[offset:]``, since the head's tensors are the tail of the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from fedbeat.models.graph.backward import backward
from fedbeat.models.graph.build import (
    INPUT_CLIP_NORM,
    INPUT_GRAD,
    OUTPUT_CLIPPED_SUM,
    OUTPUT_NORMS,
)
from fedbeat.models.graph.emit import BATCH, GraphBuilder, Shape
from fedbeat.models.graph.forward import (
    INPUT_PARAMS,
    declare_data_inputs,
    declare_param_inputs,
    flatten_concat,
    node_shapes,
)
from fedbeat.models.graph.loss import emit_weighted_cross_entropy
from fedbeat.models.graph.optim import (
    FEDPROX_MU,
    INPUT_GLOBAL_PARAMS,
    NEW_PREFIX,
    OPTIMIZERS,
    emit_step,
    state_input,
)
from fedbeat.models.params import ParamLayout
from fedbeat.models.zoo import Architecture, Node

HEAD_BOUNDARY = "join"
"""Name of the node whose output is the frozen feature vector the head trains on."""

INPUT_FEATURES = "features"
OUTPUT_FEATURES = "features"
OUTPUT_HEAD_GRAD = "head_grad"


@dataclass(frozen=True)
class HeadSplit:
    """Where an architecture splits into frozen features and a trainable head.

    Attributes
    ----------
    boundary
        The node whose output the head reads (``join``).
    features
        Width of that output: the head's input, shape (N, features).
    nodes
        The head's nodes, in order.
    tensors
        The head's parameter names: what a head-only update carries.
    offset, size
        The head's slice ``params[offset:offset + size]`` of the flat vector (the tail).
    """

    boundary: str
    features: int
    nodes: tuple[Node, ...]
    tensors: tuple[str, ...]
    offset: int
    size: int


def split_head(arch: Architecture, boundary: str = HEAD_BOUNDARY) -> HeadSplit:
    """Split ``arch`` after node ``boundary``.

    Raises
    ------
    ValueError
        No such node, a feature vector that is not (N, F), a head node that reads anything but
        the boundary or earlier head nodes, no head parameters, or head parameters that are
        not the tail of the layout.
    """
    names = [node.name for node in arch.nodes]
    if boundary not in names:
        raise ValueError(f"{arch.name}: no node {boundary!r} to split the head at")
    nodes = arch.nodes[names.index(boundary) + 1:]
    allowed = {boundary}
    for node in nodes:
        outside = [i for i in node.inputs if i not in allowed]
        if outside:
            raise ValueError(f"{arch.name}: head node {node.name!r} reads {outside}, which "
                             f"are not after {boundary!r}; the features would not be frozen")
        allowed.add(node.name)
    shape = node_shapes(arch)[boundary]
    if len(shape) != 2 or not isinstance(shape[1], int):
        raise ValueError(f"{arch.name}: {boundary!r} gives shape {shape}, not (N, features)")
    head = {node.name for node in nodes}
    layout = ParamLayout.from_architecture(arch)
    tensors = tuple(name for name in layout.names if name.rsplit(".", 1)[0] in head)
    if not tensors:
        raise ValueError(f"{arch.name}: nothing after {boundary!r} has parameters")
    if layout.names[-len(tensors):] != tensors:
        raise ValueError(f"{arch.name}: the head's parameters {list(tensors)} are not the "
                         "tail of the parameter layout")
    size = sum(int(np.prod(s)) for name, s in layout.entries if name in tensors)
    return HeadSplit(boundary, int(shape[1]), nodes, tensors, layout.size - size, size)


def build_head_features(arch: Architecture) -> onnx.ModelProto:
    """The frozen features, ``features`` (N, F): the forward pass up to the boundary."""
    split = split_head(arch)
    g = GraphBuilder(prefix="x")
    declare_data_inputs(g, arch)
    declare_param_inputs(g, ParamLayout.from_architecture(arch))
    for node in arch.nodes:
        node.layer.emit(g, node.name, list(node.inputs), training=False)
        if node.name == split.boundary:
            break
    g.add_output(split.boundary, OUTPUT_FEATURES, shape=(BATCH, split.features))
    return _prune(g.model(f"{arch.name}-head-features", "fedbeat frozen features for the head"))


def _prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes whose outputs nothing reads (the head's parameter reshapes)."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    onnx.checker.check_model(model, full_check=True)
    return model


def _head_forward_backward(g: GraphBuilder, arch: Architecture, split: HeadSplit, *,
                           per_example: bool) -> tuple[str, str, dict[str, str]]:
    """Inputs, head forward, loss and backward; returns (frozen slice, head slice, gradients).

    With ``per_example`` the gradients keep the batch axis, (N, *shape), for DP-SGD.
    """
    layout = ParamLayout.from_architecture(arch)
    g.add_input(INPUT_FEATURES, TensorProto.FLOAT, (BATCH, split.features))
    g.add_input(INPUT_PARAMS, TensorProto.FLOAT, (layout.size,))
    frozen, head = g.op_multi("Split", [INPUT_PARAMS, g.const_i64([split.offset, split.size])],
                              2, axis=0)
    entries = layout.entries[-len(split.tensors):]
    sizes = [int(np.prod(shape)) for _, shape in entries]
    pieces = [name if len(shape) == 1 else f"{name}:flat" for name, shape in entries]
    g.nodes.append(helper.make_node("Split", [head, g.const_i64(sizes)], pieces,
                                    name="Split_head", axis=0))
    for piece, (name, shape) in zip(pieces, entries, strict=True):
        if piece != name:
            g.op("Reshape", [piece, g.const_i64(list(shape))], name=name)
    g.op("Identity", [INPUT_FEATURES], name=split.boundary)
    logits = ""
    for node in split.nodes:
        logits = node.layer.emit(g, node.name, list(node.inputs), training=True)
    forward_nodes = list(g.nodes)
    shapes = g.infer_shapes([logits])
    loss = emit_weighted_cross_entropy(g, logits, arch.num_classes, per_example=per_example)
    grads = backward(g, forward_nodes, shapes, {logits: loss.dlogits}, list(split.tensors),
                     per_example=per_example)
    g.add_output(loss.loss, "loss", shape=())
    return frozen, head, grads


def _flat_head_gradient(g: GraphBuilder, arch: Architecture, split: HeadSplit,
                        grads: dict[str, str]) -> str:
    layout = ParamLayout.from_architecture(arch)
    shapes: list[Shape] = [shape for _, shape in layout.entries[-len(split.tensors):]]
    return flatten_concat(g, [grads[name] for name in split.tensors], shapes)


def _declare_head_update(g: GraphBuilder, optimizer: str, split: HeadSplit,
                         size: int) -> str:
    """Hyperparameter, FedProx and head-sized state inputs; returns the anchor's head slice."""
    spec = OPTIMIZERS[optimizer]
    for hp in (*spec.hyperparams, FEDPROX_MU):
        g.add_input(hp, TensorProto.FLOAT, ())
    g.add_input(INPUT_GLOBAL_PARAMS, TensorProto.FLOAT, (size,))
    for slot in spec.state:
        g.add_input(state_input(slot), TensorProto.FLOAT, (split.size,))
    return g.op("Slice", [INPUT_GLOBAL_PARAMS, g.const_i64([split.offset]),
                          g.const_i64([size]), g.const_i64([0])])


def _emit_head_update(g: GraphBuilder, optimizer: str, split: HeadSplit, size: int,
                      frozen: str, head: str, grad: str, global_head: str) -> None:
    """Optimizer step on the head slice; ``new.params`` = frozen part + new head."""
    spec = OPTIMIZERS[optimizer]
    new_head, new_state = emit_step(g, spec, head, grad, global_head)
    g.add_output(g.op("Concat", [frozen, new_head], axis=0), NEW_PREFIX + INPUT_PARAMS,
                 shape=(size,))
    for slot, tensor in zip(spec.state, new_state, strict=True):
        g.add_output(tensor, NEW_PREFIX + state_input(slot), shape=(split.size,))


def build_head_train_step(arch: Architecture, optimizer: str) -> onnx.ModelProto:
    """One fused head-only step on frozen ``features``: loss, head backward, FedProx, update.

    Inputs as ``train_<optimizer>`` but ``features`` (N, F) instead of ``window`` and ``rr``,
    and ``state.*`` of the head's size. ``new.params`` is the full vector, its feature part
    copied from ``params``.
    """
    split = split_head(arch)
    size = ParamLayout.from_architecture(arch).size
    g = GraphBuilder(prefix="h")
    frozen, head, grads = _head_forward_backward(g, arch, split, per_example=False)
    grad = _flat_head_gradient(g, arch, split, grads)
    global_head = _declare_head_update(g, optimizer, split, size)
    _emit_head_update(g, optimizer, split, size, frozen, head, grad, global_head)
    return g.model(f"{arch.name}-train-head-{optimizer}",
                   f"fedbeat head-only training step ({optimizer})")


def build_head_gradient(arch: Architecture) -> onnx.ModelProto:
    """Loss and ``head_grad``, the flat gradient of the head's tensors (for checks)."""
    split = split_head(arch)
    g = GraphBuilder(prefix="hg")
    _, _, grads = _head_forward_backward(g, arch, split, per_example=False)
    g.add_output(_flat_head_gradient(g, arch, split, grads), OUTPUT_HEAD_GRAD,
                 shape=(split.size,))
    return g.model(f"{arch.name}-head-gradient", "fedbeat head-only batch gradient")


def build_head_dpsgd(arch: Architecture) -> onnx.ModelProto:
    """DP-SGD on the head: per-example head gradients clipped to ``clip_norm``, summed.

    As :func:`fedbeat.models.graph.build.build_dpsgd_grad` on frozen ``features``;
    ``clipped_sum`` has the head's size. The norm is the head gradient's: the trunk's gradient
    is not computed, and not released.
    """
    split = split_head(arch)
    g = GraphBuilder(prefix="hd")
    _, _, grads = _head_forward_backward(g, arch, split, per_example=True)
    clip = g.add_input(INPUT_CLIP_NORM, TensorProto.FLOAT, ())
    flat = [g.op("Flatten", [grads[name]], axis=1) for name in split.tensors]      # (N, size)
    squares = [g.op("ReduceSumSquare", [f], axes=[1], keepdims=0) for f in flat]
    norm = g.op("Sqrt", [g.op("Sum", squares)])                                      # (N,)
    factor = g.op("Div", [clip, g.op("Max", [norm, clip])])
    row = g.op("Unsqueeze", [factor, g.const_i64([0])])                              # (1, N)
    sums = [g.op("MatMul", [row, f]) for f in flat]                                 # (1, size)
    row_shapes: list[Shape] = [(1, -1)] * len(sums)
    g.add_output(flatten_concat(g, sums, row_shapes), OUTPUT_CLIPPED_SUM, shape=(split.size,))
    g.add_output(norm, OUTPUT_NORMS, shape=(BATCH,))
    return g.model(f"{arch.name}-dpsgd-head", "fedbeat DP-SGD on the head")


def build_head_apply(arch: Architecture, optimizer: str) -> onnx.ModelProto:
    """Apply a head-sized flat ``grad`` (the noised DP-SGD average) to the head only."""
    split = split_head(arch)
    size = ParamLayout.from_architecture(arch).size
    g = GraphBuilder(prefix="ha")
    g.add_input(INPUT_PARAMS, TensorProto.FLOAT, (size,))
    g.add_input(INPUT_GRAD, TensorProto.FLOAT, (split.size,))
    frozen, head = g.op_multi("Split", [INPUT_PARAMS, g.const_i64([split.offset, split.size])],
                              2, axis=0)
    global_head = _declare_head_update(g, optimizer, split, size)
    _emit_head_update(g, optimizer, split, size, frozen, head, INPUT_GRAD, global_head)
    return g.model(f"{arch.name}-apply-head-{optimizer}",
                   f"fedbeat apply a head gradient ({optimizer})")
