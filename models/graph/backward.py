"""The one backward walker: reverse-mode differentiation of an ONNX node list.

Like micrograd's ``backward`` and tinygrad's ``compute_gradient``: walk the forward nodes in
reverse topological order, ask :data:`GRAD_RULES` for each node's input gradients, and sum
gradients where a tensor fans out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import onnx

from fedbeat.models.graph.emit import GraphBuilder, Shape
from fedbeat.models.graph.grad_rules import GRAD_RULES, GradContext, UnsupportedOpError


def active_tensors(nodes: Sequence[onnx.NodeProto], sources: Iterable[str]) -> set[str]:
    """Tensors whose value depends on any of ``sources`` (forward reachability)."""
    active = set(sources)
    for node in nodes:
        if any(i in active for i in node.input):
            active.update(o for o in node.output if o)
    return active


def backward(g: GraphBuilder, nodes: Sequence[onnx.NodeProto], shapes: Mapping[str, Shape],
             seeds: Mapping[str, str], wrt: Sequence[str], *,
             per_example: bool = False) -> dict[str, str]:
    """Emit the backward pass and return ``{tensor: gradient tensor}`` for each name in ``wrt``.

    Parameters
    ----------
    g
        Builder that receives the backward nodes.
    nodes
        Forward nodes in topological order.
    shapes
        Static shapes of forward tensors (from ONNX shape inference).
    seeds
        Gradients of the outputs to start from, e.g. ``{"logits": "dlogits"}``.
    wrt
        Tensors to differentiate with respect to (the parameters).
    per_example
        Keep the batch axis on parameter gradients: ``(N, *shape)``, for DP-SGD clipping.

    Raises
    ------
    UnsupportedOpError
        A node on a gradient path has an op type without a rule.
    ValueError
        A tensor in ``wrt`` does not influence the seeds.
    """
    active = active_tensors(nodes, wrt)
    ctx = GradContext(g=g, shapes=dict(shapes), active=active, params=frozenset(wrt),
                      per_example=per_example)
    grads: dict[str, str] = dict(seeds)
    for node in reversed(nodes):
        out_grads = [grads.get(o) for o in node.output]
        if out_grads[0] is None or not any(i in active for i in node.input):
            continue
        rule = GRAD_RULES.get(node.op_type)
        if rule is None:
            raise UnsupportedOpError(node.op_type)
        in_grads = rule(ctx, node, out_grads)
        if len(in_grads) != len(node.input):
            raise RuntimeError(f"gradient rule for {node.op_type} returned {len(in_grads)} "
                               f"gradients for {len(node.input)} inputs")
        for name, grad in zip(node.input, in_grads, strict=True):
            if grad is None or name not in active:
                continue
            grads[name] = g.op("Add", [grads[name], grad]) if name in grads else grad
    missing = [w for w in wrt if w not in grads]
    if missing:
        raise ValueError(f"these tensors do not influence the output: {missing}")
    return {w: grads[w] for w in wrt}
