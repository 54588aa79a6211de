"""Optimizer updates emitted as ONNX nodes, with torch.optim's exact update rules.

The same emitter serves the fused training step (forward + backward + update in one graph) and
the ``apply_*`` graphs that DP-SGD uses after adding noise outside the graph. Hyperparameters
are scalar graph inputs, so a round can change the learning rate without rebuilding graphs.

FedProx (Li et al. 2020, arXiv 1812.06127) adds ``mu/2 * ||w - w_global||^2`` to the local
objective; its gradient ``mu * (w - w_global)`` is added here, after any DP noise, because it
does not depend on data and so costs no privacy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from onnx import TensorProto

from fedbeat.models.graph.emit import GraphBuilder, Shape

FEDPROX_MU = "fedprox_mu"
GLOBAL_PREFIX = "global."
NEW_PREFIX = "new."


@dataclass(frozen=True)
class OptimizerSpec:
    """What an optimizer keeps per parameter and which scalar hyperparameters it reads."""

    name: str
    state: tuple[str, ...]
    hyperparams: tuple[str, ...]
    defaults: tuple[tuple[str, float], ...]


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("sgd", ("momentum_buffer",), ("lr", "momentum", "weight_decay"),
                         (("momentum", 0.9), ("weight_decay", 0.0))),
    "adam": OptimizerSpec("adam", ("exp_avg", "exp_avg_sq"),
                          ("lr", "beta1", "beta2", "eps", "weight_decay", "step"),
                          (("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8),
                           ("weight_decay", 0.0))),
    "adamw": OptimizerSpec("adamw", ("exp_avg", "exp_avg_sq"),
                           ("lr", "beta1", "beta2", "eps", "weight_decay", "step"),
                           (("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8),
                            ("weight_decay", 0.01))),
}


def state_name(param: str, slot: str) -> str:
    return f"{param}.{slot}"


def declare_update_inputs(g: GraphBuilder, spec: OptimizerSpec,
                          params: Sequence[tuple[str, Shape]]) -> None:
    """Declare hyperparameter, optimizer-state and FedProx inputs of an update."""
    for hp in (*spec.hyperparams, FEDPROX_MU):
        g.add_input(hp, TensorProto.FLOAT, ())
    for name, shape in params:
        g.add_input(GLOBAL_PREFIX + name, TensorProto.FLOAT, shape)
        for slot in spec.state:
            g.add_input(state_name(name, slot), TensorProto.FLOAT, shape)


def emit_update(g: GraphBuilder, spec: OptimizerSpec, params: Sequence[tuple[str, Shape]],
                grads: dict[str, str]) -> None:
    """Emit one optimizer step for every parameter and expose ``new.*`` outputs.

    ``declare_update_inputs`` must have run on the same builder.
    """
    bias_corrections: tuple[str, str] | None = None
    if spec.name in ("adam", "adamw"):
        one = g.const_f32(1.0)
        bias_corrections = (g.op("Sub", [one, g.op("Pow", ["beta1", "step"])]),
                            g.op("Sqrt", [g.op("Sub", [one, g.op("Pow", ["beta2", "step"])])]))
    for name, shape in params:
        grad = grads[name]
        prox = g.op("Mul", [FEDPROX_MU, g.op("Sub", [name, GLOBAL_PREFIX + name])])
        grad = g.op("Add", [grad, prox])
        if spec.name == "sgd":
            new_w, new_state = _sgd(g, name, grad)
        else:
            assert bias_corrections is not None
            new_w, new_state = _adam(g, name, grad, bias_corrections,
                                     decoupled=spec.name == "adamw")
        g.add_output(new_w, NEW_PREFIX + name, shape=shape)
        for slot, tensor in zip(spec.state, new_state, strict=True):
            g.add_output(tensor, NEW_PREFIX + state_name(name, slot), shape=shape)


def _sgd(g: GraphBuilder, w: str, grad: str) -> tuple[str, list[str]]:
    """torch.optim.SGD (dampening 0, not Nesterov): buf = m*buf + g; w -= lr*buf."""
    grad = g.op("Add", [grad, g.op("Mul", ["weight_decay", w])])
    buf = g.op("Add", [g.op("Mul", ["momentum", state_name(w, "momentum_buffer")]), grad])
    new_w = g.op("Sub", [w, g.op("Mul", ["lr", buf])])
    return new_w, [buf]


def _adam(g: GraphBuilder, name: str, grad: str, corrections: tuple[str, str], *,
          decoupled: bool) -> tuple[str, list[str]]:
    """torch.optim.Adam / AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019)."""
    one = g.const_f32(1.0)
    w = name
    if decoupled:
        w = g.op("Mul", [name, g.op("Sub", [one, g.op("Mul", ["lr", "weight_decay"])])])
    else:
        grad = g.op("Add", [grad, g.op("Mul", ["weight_decay", name])])
    m = g.op("Add", [g.op("Mul", ["beta1", state_name(name, "exp_avg")]),
                     g.op("Mul", [g.op("Sub", [one, "beta1"]), grad])])
    v = g.op("Add", [g.op("Mul", ["beta2", state_name(name, "exp_avg_sq")]),
                     g.op("Mul", [g.op("Sub", [one, "beta2"]), g.op("Mul", [grad, grad])])])
    bc1, sqrt_bc2 = corrections
    denom = g.op("Add", [g.op("Div", [g.op("Sqrt", [v]), sqrt_bc2]), "eps"])
    step = g.op("Div", [g.op("Mul", ["lr", m]), g.op("Mul", [bc1, denom])])
    return g.op("Sub", [w, step]), [m, v]
