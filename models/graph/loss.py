"""Class-weighted softmax cross-entropy and its gradient, emitted directly.

The gradient is the closed form ``softmax(z) - onehot(y)`` (as ``Exp(LogSoftmax(z))``), scaled
by each example's class weight. For the batch loss the scale is divided by the sum of the
weights in the batch, which matches ``torch.nn.functional.cross_entropy(weight=...)``. For
DP-SGD each example's gradient is that of its own weighted loss ``w[y_i] * CE_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from fedbeat.models.graph.emit import GraphBuilder

INPUT_LABELS = "labels"
INPUT_CLASS_WEIGHT = "class_weight"


@dataclass(frozen=True)
class LossTensors:
    loss: str          # scalar: weighted mean loss of the batch
    dlogits: str       # (N, C): gradient of the loss the backward pass should follow


def emit_weighted_cross_entropy(g: GraphBuilder, logits: str, num_classes: int, *,
                                per_example: bool) -> LossTensors:
    """Emit loss and logits gradient; adds the ``labels`` and ``class_weight`` inputs."""
    labels = g.add_input(INPUT_LABELS, TensorProto.INT64, ("N",))
    class_weight = g.add_input(INPUT_CLASS_WEIGHT, TensorProto.FLOAT, (num_classes,))
    log_probs = g.op("LogSoftmax", [logits], axis=1)
    onehot = g.op("OneHot", [labels, g.const(np.asarray(num_classes, dtype=np.int64)),
                             g.const(np.asarray([0.0, 1.0], dtype=np.float32))], axis=-1)
    nll = g.op("Neg", [g.op("ReduceSum", [g.op("Mul", [log_probs, onehot]),
                                          g.const_i64([1])], keepdims=0)])          # (N,)
    weights = g.op("Gather", [class_weight, labels], axis=0)                         # (N,)
    weighted = g.op("Mul", [nll, weights])
    total_weight = g.op("ReduceSum", [weights, g.const_i64([0])], keepdims=0)
    loss = g.op("Div", [g.op("ReduceSum", [weighted, g.const_i64([0])], keepdims=0),
                        total_weight])
    residual = g.op("Sub", [g.op("Exp", [log_probs]), onehot])                       # (N, C)
    scale = weights if per_example else g.op("Div", [weights, total_weight])
    dlogits = g.op("Mul", [residual, g.op("Unsqueeze", [scale, g.const_i64([1])])])
    return LossTensors(loss=loss, dlogits=dlogits)
