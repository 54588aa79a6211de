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
    INPUT_PARAMS,
    declare_data_inputs,
    declare_param_inputs,
    emit_forward,
    flatten_concat,
)
from fedbeat.models.graph.loss import emit_weighted_cross_entropy
from fedbeat.models.graph.optim import OPTIMIZERS, declare_update_inputs, emit_update
from fedbeat.models.params import ParamLayout, Params
from fedbeat.models.zoo import Architecture

OUTPUT_LOGITS = "logits"
OUTPUT_PROBS = "probs"
OUTPUT_LOSS = "loss"
OUTPUT_NORMS = "per_example_norm"
OUTPUT_CLIPPED_SUM = "clipped_sum"
OUTPUT_GRAD = "grad"
INPUT_GRAD = "grad"
INPUT_CLIP_NORM = "clip_norm"


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
                          per_example: bool) -> dict[str, str]:
    """Emit data and parameter inputs, forward, loss and backward; return gradients by name."""
    layout = ParamLayout.from_architecture(arch)
    declare_data_inputs(g, arch)
    declare_param_inputs(g, layout)
    logits = emit_forward(g, arch, training=True)
    forward_nodes = list(g.nodes)
    shapes = g.infer_shapes([logits])
    loss = emit_weighted_cross_entropy(g, logits, arch.num_classes, per_example=per_example)
    grads = backward(g, forward_nodes, shapes, {logits: loss.dlogits}, list(layout.names),
                     per_example=per_example)
    g.add_output(loss.loss, OUTPUT_LOSS, shape=())
    return grads


def _flat_gradient(g: GraphBuilder, arch: Architecture) -> tuple[str, int]:
    layout = ParamLayout.from_architecture(arch)
    grads = _forward_and_backward(g, arch, per_example=False)
    flat = flatten_concat(g, [grads[name] for name in layout.names],
                          [shape for _, shape in layout.entries])
    return flat, layout.size


def build_train_step(arch: Architecture, optimizer: str) -> onnx.ModelProto:
    """One fused step: forward, weighted cross-entropy, backward, FedProx, optimizer update."""
    spec = OPTIMIZERS[optimizer]
    g = GraphBuilder(prefix="t")
    grad, size = _flat_gradient(g, arch)
    declare_update_inputs(g, spec, size)
    emit_update(g, spec, INPUT_PARAMS, grad, size)
    return g.model(f"{arch.name}-train-{optimizer}", f"fedbeat training step ({optimizer})")


def build_dpsgd_grad(arch: Architecture) -> onnx.ModelProto:
    """Per-example gradients, each clipped to L2 norm ``clip_norm``, summed over the batch.

    Abadi et al. 2016, Algorithm 1, lines 5-7 (minus the noise, which the device adds from a
    cryptographically secure source outside the graph). The clipping factor is
    ``clip_norm / max(norm_i, clip_norm)``, i.e. ``min(1, C / ||g_i||)`` without a division by
    zero for a zero gradient. Output ``clipped_sum`` is flat, in layout order.
    """
    g = GraphBuilder(prefix="d")
    grads = _forward_and_backward(g, arch, per_example=True)
    layout = ParamLayout.from_architecture(arch)
    clip = g.add_input(INPUT_CLIP_NORM, TensorProto.FLOAT, ())
    flat = [g.op("Flatten", [grads[name]], axis=1) for name in layout.names]     # (N, size)
    squares = [g.op("ReduceSumSquare", [f], axes=[1], keepdims=0) for f in flat]
    norm = g.op("Sqrt", [g.op("Sum", squares) if len(squares) > 1 else squares[0]])  # (N,)
    factor = g.op("Div", [clip, g.op("Max", [norm, clip])])
    row = g.op("Unsqueeze", [factor, g.const_i64([0])])                             # (1, N)
    sums = [g.op("MatMul", [row, f]) for f in flat]                                # (1, size)
    g.add_output(flatten_concat(g, sums, [(1, -1)] * len(sums)), OUTPUT_CLIPPED_SUM,
                 shape=(layout.size,))
    g.add_output(norm, OUTPUT_NORMS, shape=(BATCH,))
    return g.model(f"{arch.name}-dpsgd", "fedbeat DP-SGD clipped per-example gradient sum")


def build_apply(arch: Architecture, optimizer: str) -> onnx.ModelProto:
    """Apply an externally computed flat gradient (e.g. the noised DP-SGD average)."""
    spec = OPTIMIZERS[optimizer]
    g = GraphBuilder(prefix="a")
    size = ParamLayout.from_architecture(arch).size
    g.add_input(INPUT_PARAMS, TensorProto.FLOAT, (size,))
    g.add_input(INPUT_GRAD, TensorProto.FLOAT, (size,))
    declare_update_inputs(g, spec, size)
    emit_update(g, spec, INPUT_PARAMS, INPUT_GRAD, size)
    return g.model(f"{arch.name}-apply-{optimizer}", f"fedbeat apply gradient ({optimizer})")


def build_gradient(arch: Architecture) -> onnx.ModelProto:
    """Loss and the flat batch gradient ``grad``, without an update.

    Used to check gradients against autograd and to apply gradients computed elsewhere.
    """
    g = GraphBuilder(prefix="b")
    grad, size = _flat_gradient(g, arch)
    g.add_output(grad, OUTPUT_GRAD, shape=(size,))
    return g.model(f"{arch.name}-gradient", "fedbeat batch gradient")
