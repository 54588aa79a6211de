"""Assemble the graphs a device runs: inference, fused training steps, DP-SGD and apply steps.

Every graph takes parameters as inputs and returns new parameters as outputs, so one file
serves every round; the device never rewrites a graph.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from fedbeat.models.graph.backward import backward
from fedbeat.models.graph.emit import BATCH, GraphBuilder
from fedbeat.models.graph.forward import (
    declare_data_inputs,
    declare_param_inputs,
    emit_forward,
    infer_shapes,
)
from fedbeat.models.graph.loss import emit_weighted_cross_entropy
from fedbeat.models.graph.optim import OPTIMIZERS, declare_update_inputs, emit_update
from fedbeat.models.params import ParamLayout, Params
from fedbeat.models.zoo import Architecture

OUTPUT_LOGITS = "logits"
OUTPUT_PROBS = "probs"
OUTPUT_LOSS = "loss"
OUTPUT_NORMS = "per_example_norm"
INPUT_CLIP_NORM = "clip_norm"
CLIPPED_PREFIX = "clipped_sum."
GRAD_PREFIX = "grad."


def build_inference(arch: Architecture, params: Params | None = None) -> onnx.ModelProto:
    """Logits and class probabilities for a dynamic batch.

    With ``params`` the weights are embedded (a self-contained model to publish); without, they
    are graph inputs named as in the parameter layout (what the trainer feeds).
    """
    g = GraphBuilder(prefix="f")
    declare_data_inputs(g, arch)
    layout = ParamLayout.from_architecture(arch)
    if params is None:
        declare_param_inputs(g, layout)
    else:
        for name in layout.names:
            g.initializers.append(onnx.numpy_helper.from_array(params[name], name))
    logits = emit_forward(g, arch, training=False)
    g.add_output(logits, OUTPUT_LOGITS, shape=(BATCH, arch.num_classes))
    g.add_output(g.op("Softmax", [logits], axis=1), OUTPUT_PROBS,
                 shape=(BATCH, arch.num_classes))
    return g.model(f"{arch.name}-inference", "fedbeat inference graph")


def _forward_and_backward(g: GraphBuilder, arch: Architecture, *,
                          per_example: bool) -> tuple[str, dict[str, str]]:
    layout = ParamLayout.from_architecture(arch)
    declare_data_inputs(g, arch)
    declare_param_inputs(g, layout)
    logits = emit_forward(g, arch, training=True)
    forward_nodes = list(g.nodes)
    shapes = infer_shapes(g, [logits])
    loss = emit_weighted_cross_entropy(g, logits, arch.num_classes, per_example=per_example)
    grads = backward(g, forward_nodes, shapes, {logits: loss.dlogits}, list(layout.names),
                     per_example=per_example)
    g.add_output(loss.loss, OUTPUT_LOSS, shape=())
    return loss.loss, grads


def build_train_step(arch: Architecture, optimizer: str) -> onnx.ModelProto:
    """One fused step: forward, weighted cross-entropy, backward, FedProx, optimizer update."""
    spec = OPTIMIZERS[optimizer]
    g = GraphBuilder(prefix="t")
    _, grads = _forward_and_backward(g, arch, per_example=False)
    entries = ParamLayout.from_architecture(arch).entries
    declare_update_inputs(g, spec, entries)
    emit_update(g, spec, entries, grads)
    return g.model(f"{arch.name}-train-{optimizer}", f"fedbeat training step ({optimizer})")


def build_dpsgd_grad(arch: Architecture) -> onnx.ModelProto:
    """Per-example gradients, each clipped to L2 norm ``clip_norm``, summed over the batch.

    Abadi et al. 2016, Algorithm 1, lines 5-7 (minus the noise, which the device adds from a
    cryptographically secure source outside the graph). The clipping factor is
    ``clip_norm / max(norm_i, clip_norm)``, i.e. ``min(1, C / ||g_i||)`` without a division by
    zero for a zero gradient.
    """
    g = GraphBuilder(prefix="d")
    _, grads = _forward_and_backward(g, arch, per_example=True)
    layout = ParamLayout.from_architecture(arch)
    clip = g.add_input(INPUT_CLIP_NORM, TensorProto.FLOAT, ())
    flat = {}
    squares = []
    for name, _ in layout.entries:
        flat[name] = g.op("Flatten", [grads[name]], axis=1)                        # (N, size)
        squares.append(g.op("ReduceSumSquare", [flat[name]], axes=[1], keepdims=0))
    norm = g.op("Sqrt", [g.op("Sum", squares) if len(squares) > 1 else squares[0]])  # (N,)
    factor = g.op("Div", [clip, g.op("Max", [norm, clip])])
    row = g.op("Unsqueeze", [factor, g.const_i64([0])])                             # (1, N)
    for name, shape in layout.entries:
        summed = g.op("MatMul", [row, flat[name]])                                  # (1, size)
        g.add_output(g.op("Reshape", [summed, g.const_i64(list(shape))]),
                     CLIPPED_PREFIX + name, shape=shape)
    g.add_output(norm, OUTPUT_NORMS, shape=(BATCH,))
    return g.model(f"{arch.name}-dpsgd", "fedbeat DP-SGD clipped per-example gradient sum")


def build_apply(arch: Architecture, optimizer: str) -> onnx.ModelProto:
    """Apply an externally computed gradient (e.g. noised DP-SGD average) with an optimizer."""
    spec = OPTIMIZERS[optimizer]
    g = GraphBuilder(prefix="a")
    entries = ParamLayout.from_architecture(arch).entries
    for name, shape in entries:
        g.add_input(name, TensorProto.FLOAT, shape)
        g.add_input(GRAD_PREFIX + name, TensorProto.FLOAT, shape)
    declare_update_inputs(g, spec, entries)
    emit_update(g, spec, entries, {name: GRAD_PREFIX + name for name, _ in entries})
    return g.model(f"{arch.name}-apply-{optimizer}", f"fedbeat apply gradient ({optimizer})")


def build_gradient(arch: Architecture) -> onnx.ModelProto:
    """Loss and the batch gradient of every parameter (``grad.<name>``), without an update.

    Used to check gradients against autograd and to apply gradients computed elsewhere.
    """
    g = GraphBuilder(prefix="b")
    _, grads = _forward_and_backward(g, arch, per_example=False)
    for name, shape in ParamLayout.from_architecture(arch).entries:
        g.add_output(grads[name], GRAD_PREFIX + name, shape=shape)
    return g.model(f"{arch.name}-gradient", "fedbeat batch gradient")
