"""Optimizer updates emitted as ONNX nodes, with torch.optim's exact update rules.

The same emitter serves the fused training step (forward + backward + update in one graph) and
the ``apply_*`` graphs that DP-SGD uses after adding noise outside the graph. Hyperparameters
are scalar graph inputs, so a round can change the learning rate without rebuilding graphs.
Parameters, gradients and optimizer state are flat vectors in layout order, so an update costs
a handful of nodes whatever the number of tensors.

FedProx (Li et al. 2020, arXiv 1812.06127) adds ``mu/2 * ||w - w_global||^2`` to the local
objective; its gradient ``mu * (w - w_global)`` is added here, after any DP noise, because it
does not depend on data and so costs no privacy.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

from fedbeat.models.graph.emit import GraphBuilder

FEDPROX_MU = "fedprox_mu"
INPUT_GLOBAL_PARAMS = "global_params"
STATE_PREFIX = "state."
NEW_PREFIX = "new."


@dataclass(frozen=True)
class OptimizerSpec:
    """What an optimizer keeps per parameter and which scalar hyperparameters it reads."""

    name: str
    state: tuple[str, ...]
    hyperparams: tuple[str, ...]


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("sgd", ("momentum_buffer",), ("lr", "momentum", "weight_decay")),
    "adam": OptimizerSpec("adam", ("exp_avg", "exp_avg_sq"),
                          ("lr", "beta1", "beta2", "eps", "weight_decay", "step")),
    "adamw": OptimizerSpec("adamw", ("exp_avg", "exp_avg_sq"),
                           ("lr", "beta1", "beta2", "eps", "weight_decay", "step")),
}


def state_input(slot: str) -> str:
    return STATE_PREFIX + slot


def declare_update_inputs(g: GraphBuilder, spec: OptimizerSpec, size: int) -> None:
    """Declare hyperparameter, optimizer-state and FedProx inputs of an update."""
    for hp in (*spec.hyperparams, FEDPROX_MU):
        g.add_input(hp, TensorProto.FLOAT, ())
    g.add_input(INPUT_GLOBAL_PARAMS, TensorProto.FLOAT, (size,))
    for slot in spec.state:
        g.add_input(state_input(slot), TensorProto.FLOAT, (size,))


def emit_update(g: GraphBuilder, spec: OptimizerSpec, params: str, grad: str,
                size: int) -> None:
    """Emit one optimizer step on the flat ``params`` and expose ``new.*`` outputs.

    ``declare_update_inputs`` must have run on the same builder.
    """
    new_w, new_state = emit_step(g, spec, params, grad, INPUT_GLOBAL_PARAMS)
    g.add_output(new_w, NEW_PREFIX + params, shape=(size,))
    for slot, tensor in zip(spec.state, new_state, strict=True):
        g.add_output(tensor, NEW_PREFIX + state_input(slot), shape=(size,))


def emit_step(g: GraphBuilder, spec: OptimizerSpec, params: str, grad: str,
              global_params: str) -> tuple[str, list[str]]:
    """The update itself: FedProx term, then the optimizer; returns new weights and state.

    ``params``, ``grad`` and ``global_params`` are flat tensors of one size; the state inputs
    (``state.<slot>``) must have that size too. The head-only graphs pass slices here.
    """
    prox = g.op("Mul", [FEDPROX_MU, g.op("Sub", [params, global_params])])
    grad = g.op("Add", [grad, prox])
    if spec.name == "sgd":
        return _sgd(g, params, grad)
    return _adam(g, params, grad, decoupled=spec.name == "adamw")


def _sgd(g: GraphBuilder, w: str, grad: str) -> tuple[str, list[str]]:
    """torch.optim.SGD (dampening 0, not Nesterov): buf = m*buf + g; w -= lr*buf."""
    grad = g.op("Add", [grad, g.op("Mul", ["weight_decay", w])])
    buf = g.op("Add", [g.op("Mul", ["momentum", state_input("momentum_buffer")]), grad])
    new_w = g.op("Sub", [w, g.op("Mul", ["lr", buf])])
    return new_w, [buf]


def _adam(g: GraphBuilder, w: str, grad: str, *, decoupled: bool) -> tuple[str, list[str]]:
    """torch.optim.Adam / AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019)."""
    one = g.const_f32(1.0)
    bias_correction1 = g.op("Sub", [one, g.op("Pow", ["beta1", "step"])])
    sqrt_bias_correction2 = g.op("Sqrt", [g.op("Sub", [one, g.op("Pow", ["beta2", "step"])])])
    decayed = w
    if decoupled:
        decayed = g.op("Mul", [w, g.op("Sub", [one, g.op("Mul", ["lr", "weight_decay"])])])
    else:
        grad = g.op("Add", [grad, g.op("Mul", ["weight_decay", w])])
    m = g.op("Add", [g.op("Mul", ["beta1", state_input("exp_avg")]),
                     g.op("Mul", [g.op("Sub", [one, "beta1"]), grad])])
    v = g.op("Add", [g.op("Mul", ["beta2", state_input("exp_avg_sq")]),
                     g.op("Mul", [g.op("Sub", [one, "beta2"]), g.op("Mul", [grad, grad])])])
    denom = g.op("Add", [g.op("Div", [g.op("Sqrt", [v]), sqrt_bias_correction2]), "eps"])
    step = g.op("Div", [g.op("Mul", ["lr", m]), g.op("Mul", [bias_correction1, denom])])
    return g.op("Sub", [decayed, step]), [m, v]
