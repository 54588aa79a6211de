"""The generated training graphs of both reference architectures against a float64 torch oracle.

Gradients, DP-SGD clipping, optimizer updates, FedProx and inference all run on stock
onnxruntime in float32 and are compared with ``tests/torch_oracle.py`` in float64, fed the very
same float32 inputs. Tensors are compared norm-wise (``||ours - torch|| / ||torch||``) at 1e-5;
the float32 graphs land near 1e-6.

Parameters, gradients, clipped sums and optimizer state cross the graph boundary as flat vectors
in layout order; they are split back into named tensors (``Params.from_flat``) so that every
tensor is compared on its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fedbeat.models.graph.build import (
    INPUT_CLIP_NORM,
    INPUT_GRAD,
    OUTPUT_CLIPPED_SUM,
    OUTPUT_GRAD,
    OUTPUT_LOGITS,
    OUTPUT_LOSS,
    OUTPUT_NORMS,
    OUTPUT_PROBS,
    build_apply,
    build_dpsgd_grad,
    build_gradient,
    build_inference,
    build_train_step,
)
from fedbeat.models.graph.emit import OPSET
from fedbeat.models.graph.forward import INPUT_PARAMS, node_shapes
from fedbeat.models.graph.loss import INPUT_CLASS_WEIGHT, INPUT_LABELS
from fedbeat.models.graph.optim import (
    FEDPROX_MU,
    INPUT_GLOBAL_PARAMS,
    NEW_PREFIX,
    OPTIMIZERS,
    state_input,
)
from fedbeat.models.layers import Dropout
from fedbeat.models.params import ParamLayout, Params
from fedbeat.models.zoo import INPUT_RR, INPUT_WINDOW, Architecture, create_architecture

torch = pytest.importorskip("torch")

import torch_oracle as oracle  # noqa: E402
from models.graph_helpers import (  # noqa: E402
    assert_rel,
    f64,
    rel_err,
    run,
    scalar,
    session,
    single_threaded_torch,  # noqa: F401 (autouse)
)

ARCH_NAMES = ("ecg-cnn-s", "ecg-cnn-m")
BATCH = 6
TOL = 1e-5
"""Norm-wise relative error allowed per tensor between a float32 graph and float64 torch."""

Tensors = dict[str, "torch.Tensor"]
Arrays = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# Inputs and the oracle


@dataclass(frozen=True)
class Batch:
    """One minibatch with everything a training graph reads besides parameters."""

    window: np.ndarray
    rr: np.ndarray
    labels: np.ndarray
    class_weight: np.ndarray
    masks: Arrays            # scaled dropout masks by dropout node name

    def feed(self) -> Arrays:
        return {INPUT_WINDOW: self.window, INPUT_RR: self.rr, INPUT_LABELS: self.labels,
                INPUT_CLASS_WEIGHT: self.class_weight,
                **{f"dropout_mask.{k}": v for k, v in self.masks.items()}}

    def loss(self, arch: Architecture, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The class-weighted mean cross-entropy the training graphs minimise, in float64."""
        logits = oracle.forward(arch, params, f64(self.window), f64(self.rr),
                                {k: f64(v) for k, v in self.masks.items()})
        return oracle.loss_fn(logits, torch.from_numpy(self.labels), f64(self.class_weight))

    def example_loss(self, arch: Architecture) -> Callable[..., torch.Tensor]:
        """``(params, window, rr, label, masks) -> w[y] * CE`` for one example (for vmap)."""
        weight = f64(self.class_weight)

        def loss(params: Tensors, window: torch.Tensor, rr: torch.Tensor,
                 label: torch.Tensor, masks: Tensors) -> torch.Tensor:
            logits = oracle.forward(arch, params, window[None], rr[None],
                                    {k: v[None] for k, v in masks.items()})
            ce = torch.nn.functional.cross_entropy(logits, label[None])
            return ce * torch.gather(weight, 0, label[None])[0]
        return loss


def make_batch(arch: Architecture, seed: int) -> Batch:
    """Random windows and RR features, every class present, non-uniform class weights."""
    rng = np.random.default_rng(seed)
    shapes = node_shapes(arch)
    masks = {}
    for node in arch.nodes:
        if isinstance(node.layer, Dropout):
            keep = 1.0 - node.layer.p
            shape = (BATCH, *shapes[node.inputs[0]][1:])
            masks[node.name] = ((rng.random(shape) < keep) / keep).astype(np.float32)
    return Batch(
        window=rng.standard_normal((BATCH, 1, arch.window_samples)).astype(np.float32),
        rr=rng.uniform(0.3, 1.6, (BATCH, arch.rr_features)).astype(np.float32),
        labels=rng.permutation(np.arange(BATCH) % arch.num_classes).astype(np.int64),
        class_weight=rng.uniform(0.5, 3.0, arch.num_classes).astype(np.float32),
        masks=masks,
    )


@functools.cache
def graph(arch_name: str, kind: str, optimizer: str = "") -> onnx.ModelProto:
    arch = create_architecture(arch_name)
    builders: dict[str, Callable[[], onnx.ModelProto]] = {
        "inference": lambda: build_inference(arch),
        "inference-embedded": lambda: build_inference(arch, initial_params(arch_name)),
        "gradient": lambda: build_gradient(arch),
        "dpsgd": lambda: build_dpsgd_grad(arch),
        "train": lambda: build_train_step(arch, optimizer),
        "apply": lambda: build_apply(arch, optimizer),
    }
    return builders[kind]()


@functools.cache
def cached_session(arch_name: str, kind: str, optimizer: str = "") -> ort.InferenceSession:
    return session(graph(arch_name, kind, optimizer))


@functools.cache
def initial_params(arch_name: str) -> Params:
    return Params.initial(create_architecture(arch_name), seed=7)


def run_graph(arch: Architecture, kind: str, feed: Mapping[str, np.ndarray],
              optimizer: str = "") -> Arrays:
    return run(cached_session(arch.name, kind, optimizer), feed)


def flat_feed(params: Params) -> Arrays:
    """The one parameter input every non-embedded graph takes: the flat layout-order vector."""
    return {INPUT_PARAMS: params.to_flat()}


def unflatten(layout: ParamLayout, vector: np.ndarray) -> Arrays:
    """A flat graph output (gradient, clipped sum, weights, state) as named tensors."""
    assert vector.shape == (layout.size,), f"flat output {vector.shape} != ({layout.size},)"
    assert vector.dtype == np.float32, vector.dtype
    return dict(Params.from_flat(layout, vector))


def ort_gradient(arch: Architecture, params: Params, batch: Batch) -> Arrays:
    out = run_graph(arch, "gradient", {**batch.feed(), **flat_feed(params)})
    return unflatten(params.layout, out[OUTPUT_GRAD])


@pytest.fixture(scope="module", params=ARCH_NAMES)
def arch(request: pytest.FixtureRequest) -> Architecture:
    return create_architecture(request.param)


@pytest.fixture(scope="module")
def params(arch: Architecture) -> Params:
    return initial_params(arch.name)


@pytest.fixture(scope="module")
def start(arch: Architecture) -> Params:
    """A random point for the optimizer tests, entries ~ N(0, 0.1^2).

    Updates are compared as ``w_end - w_start`` in float32, so each output carries up to half
    a float32 spacing of ``w`` (6e-8 at the GroupNorm scales' initial 1.0). Weights of this
    size keep that rounding below 1e-6 of the updates.
    """
    rng = np.random.default_rng(13)
    layout = initial_params(arch.name).layout
    return Params(layout, {n: 0.1 * rng.standard_normal(shape) for n, shape in layout.entries})


@pytest.fixture(scope="module")
def batch(arch: Architecture) -> Batch:
    return make_batch(arch, seed=11)


# --------------------------------------------------------------------------------------------
# (a) gradient graph vs autograd; (b) vs central finite differences


def test_gradient_matches_autograd(arch: Architecture, params: Params, batch: Batch) -> None:
    assert any(v.min() == 0.0 for v in batch.masks.values()), "dropout should drop something"
    out = run_graph(arch, "gradient", {**batch.feed(), **flat_feed(params)})
    grads = unflatten(params.layout, out[OUTPUT_GRAD])
    tp = oracle.torch_params(params)
    loss = batch.loss(arch, tp)
    loss.backward()
    assert_rel(out[OUTPUT_LOSS], loss, TOL, "loss")
    for name in params:
        assert_rel(grads[name], tp[name].grad, TOL, f"grad.{name}")


FD_STEP = 1e-7
"""Central-difference step in float64. Truncation error is O(h^2) ~ 1e-14 and round-off about
1e-16 * |loss| / h ~ 1e-9, both far below the tolerance, and the step is small enough that the
probability of crossing a ReLU/MaxPool kink stays negligible."""

FD_TOL = 1e-5
"""For a direction v, ``|fd - <g_ours, v>| <= FD_TOL * ||g_S|| * ||v||``, with g_S the gradient
restricted to the tensors v touches. That is the per-tensor norm-wise float32 budget of test (a)
carried over to a directional derivative by Cauchy-Schwarz; the finite difference itself is
exact to ~1e-9 in float64. (Observed: at most 3% of that bound, i.e. within 3e-6 of |fd|.)"""


def fd_directions(grads: Arrays, rng: np.random.Generator) -> list[Arrays]:
    """One random coordinate per tensor (among its non-negligible entries), three random unit
    directions over all parameters, and the unit gradient direction."""
    directions: list[Arrays] = []
    for name, g in grads.items():
        flat = np.abs(g.ravel())
        candidates = np.flatnonzero(flat >= 0.1 * flat.max())
        unit = np.zeros(g.size)
        unit[rng.choice(candidates)] = 1.0
        directions.append({name: unit.reshape(g.shape)})
    for _ in range(3):
        raw = {n: rng.standard_normal(g.shape) for n, g in grads.items()}
        scale = np.sqrt(sum(float((v ** 2).sum()) for v in raw.values()))
        directions.append({n: v / scale for n, v in raw.items()})
    norm = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    directions.append({n: g.astype(np.float64) / norm for n, g in grads.items()})
    return directions


def test_gradient_matches_finite_differences(arch: Architecture, params: Params,
                                             batch: Batch) -> None:
    grads = ort_gradient(arch, params, batch)
    base = {n: f64(v) for n, v in params.items()}

    def loss_at(direction: Arrays, h: float) -> float:
        shifted = {n: base[n] + h * torch.from_numpy(direction[n]) if n in direction
                   else base[n] for n in base}
        with torch.no_grad():
            return float(batch.loss(arch, shifted))

    for direction in fd_directions(grads, np.random.default_rng(5)):
        fd = (loss_at(direction, FD_STEP) - loss_at(direction, -FD_STEP)) / (2 * FD_STEP)
        ours = sum(float((grads[n].astype(np.float64) * d).sum()) for n, d in direction.items())
        g_norm = np.sqrt(sum(float((grads[n].astype(np.float64) ** 2).sum())
                             for n in direction))
        v_norm = np.sqrt(sum(float((d ** 2).sum()) for d in direction.values()))
        bound = FD_TOL * g_norm * v_norm
        assert abs(fd - ours) <= bound, \
            f"direction over {sorted(direction)[:3]}...: fd {fd:.9g} vs ours {ours:.9g}"


# --------------------------------------------------------------------------------------------
# (c) DP-SGD per-example clipping


def test_dpsgd_matches_vmap_grad(arch: Architecture, params: Params, batch: Batch) -> None:
    tp = {n: t.detach() for n, t in oracle.torch_params(params).items()}
    per_example = torch.func.vmap(torch.func.grad(batch.example_loss(arch)),
                                  in_dims=(None, 0, 0, 0, 0))(
        tp, f64(batch.window), f64(batch.rr), torch.from_numpy(batch.labels),
        {k: f64(v) for k, v in batch.masks.items()})
    norms = torch.sqrt(sum((g.reshape(BATCH, -1) ** 2).sum(1) for g in per_example.values()))
    clip = float(np.float32(np.median(norms.numpy())))      # half the examples get clipped

    out = run_graph(arch, "dpsgd", {**batch.feed(), **flat_feed(params),
                                    INPUT_CLIP_NORM: scalar(clip)})
    sums = unflatten(params.layout, out[OUTPUT_CLIPPED_SUM])

    ours_norms = out[OUTPUT_NORMS]
    assert float(np.max(np.abs(ours_norms - norms.numpy()) / norms.numpy())) <= TOL
    clipped = ours_norms > clip
    np.testing.assert_array_equal(clipped, norms.numpy() > clip)
    assert clipped.any(), "no example was clipped"
    assert (~clipped).any(), "every example was clipped"
    factor = torch.clamp(clip / norms, max=1.0)
    for name, g in per_example.items():
        expected = (g * factor.reshape(-1, *[1] * (g.dim() - 1))).sum(0)
        assert_rel(sums[name], expected, TOL, f"clipped_sum.{name}")


# --------------------------------------------------------------------------------------------
# (d) optimizers, (e) FedProx


@dataclass(frozen=True)
class OptConfig:
    label: str
    optimizer: str
    hyper: Mapping[str, float]

    def value(self, name: str) -> float:
        """The hyperparameter as the graph sees it (float32), for torch too."""
        return float(np.float32(self.hyper[name]))

    def torch_optimizer(self, tensors: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(tensors, lr=self.value("lr"), momentum=self.value("momentum"),
                                   weight_decay=self.value("weight_decay"))
        adam = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        return adam(tensors, lr=self.value("lr"),
                    betas=(self.value("beta1"), self.value("beta2")),
                    eps=self.value("eps"), weight_decay=self.value("weight_decay"))


# Updates are compared as w_end - w_start. The graphs return float32 weights, rounded to half a
# float32 spacing of w, so learning rates (with the N(0, 0.1^2) start point) are chosen to make
# updates large against that spacing: `assert_same_trajectory` checks that the rounding stays
# below TOL / 5, so the comparison measures the update arithmetic and not the output format.
# (lr is never 1.0, which would hide a missing multiplication by lr.)
#
# Adam's eps is 1e-3, on the scale of the gradient entries, for two reasons. It checks where eps
# enters the update (after the bias-corrected square root); with 1e-8 it would hardly matter.
# And with eps = 1e-8 the update lr * g / (|g| + eps) turns the ~1e-9 absolute float32 error of
# a near-zero gradient entry (e.g. grad + weight_decay * w cancelling to 6e-9) into an O(lr)
# difference: that measures float32 conditioning, not the update rule. Given identical
# gradients (test_apply_matches_torch_optim) the default eps is compared too.
ADAM_HYPER = {"lr": 3e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-3}
OPT_CONFIGS = [
    OptConfig("sgd-momentum-wd", "sgd", {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.01}),
    OptConfig("adam", "adam", {**ADAM_HYPER, "weight_decay": 0.0}),
    OptConfig("adam-l2", "adam", {**ADAM_HYPER, "weight_decay": 0.05}),
    OptConfig("adamw-wd", "adamw", {**ADAM_HYPER, "weight_decay": 0.1}),
]
APPLY_CONFIGS = [
    *OPT_CONFIGS,
    OptConfig("adam-eps1e-8", "adam", {**ADAM_HYPER, "eps": 1e-8, "weight_decay": 0.0}),
    OptConfig("adamw-eps1e-8", "adamw", {**ADAM_HYPER, "eps": 1e-8, "weight_decay": 0.01}),
]
STEPS = 3


@dataclass
class Trajectory:
    weights: Arrays
    state: Arrays     # "<param>.<slot>"


def slot_key(param: str, slot: str) -> str:
    """Per-tensor optimizer state key in a :class:`Trajectory` (torch keeps state per tensor)."""
    return f"{param}.{slot}"


def ort_steps(arch: Architecture, kind: str, config: OptConfig, start: Params,
              per_step: Sequence[Arrays], *, global_params: Mapping[str, np.ndarray] | None = None,
              mu: float = 0.0) -> Trajectory:
    """Run ``kind`` ("train" or "apply") once per feed, feeding new weights and state back.

    Weights, state and the FedProx anchor travel as flat vectors; the result is split back into
    named tensors.
    """
    spec = OPTIMIZERS[config.optimizer]
    layout = start.layout
    weights = start.to_flat()
    state = {state_input(s): np.zeros(layout.size, dtype=np.float32) for s in spec.state}
    anchor = Params(layout, global_params if global_params is not None else start).to_flat()
    fixed = {**{h: scalar(config.value(h)) for h in config.hyper}, FEDPROX_MU: scalar(mu),
             INPUT_GLOBAL_PARAMS: anchor}
    for step, extra in enumerate(per_step, start=1):
        out = run_graph(arch, kind, {**extra, **fixed, INPUT_PARAMS: weights, **state,
                                     "step": scalar(step)}, config.optimizer)
        weights = out[NEW_PREFIX + INPUT_PARAMS]
        state = {s: out[NEW_PREFIX + s] for s in state}
    named_state = {slot_key(n, s): v for s in spec.state
                   for n, v in unflatten(layout, state[state_input(s)]).items()}
    return Trajectory(unflatten(layout, weights), named_state)


def torch_steps(config: OptConfig, start: Params,
                per_step: Sequence[Callable[[Tensors], None]]) -> Trajectory:
    """The same steps with torch.optim in float64; each callable fills ``.grad``."""
    tp = oracle.torch_params(start)
    opt = config.torch_optimizer(list(tp.values()))
    for fill_grads in per_step:
        opt.zero_grad()
        fill_grads(tp)
        opt.step()
    state = {slot_key(n, s): opt.state[t][s].numpy()
             for n, t in tp.items() for s in OPTIMIZERS[config.optimizer].state}
    return Trajectory({n: t.detach().numpy() for n, t in tp.items()}, state)


def float32_rounding(weights: np.ndarray, update: np.ndarray) -> float:
    """Norm of half the float32 spacing at ``weights``, relative to the norm of ``update``."""
    half_spacing = np.spacing(np.abs(weights).astype(np.float32)).astype(np.float64) / 2
    return float(np.linalg.norm(half_spacing) / np.linalg.norm(update))


def assert_same_trajectory(ours: Trajectory, ref: Trajectory, start: Params) -> None:
    for name in start:
        update = ref.weights[name] - start[name]
        assert float32_rounding(ref.weights[name], update) <= TOL / 5, \
            f"{name}: update too small to compare in float32 (test setup)"
        assert_rel(ours.weights[name] - start[name], update, TOL, f"update of {name}")
    for slot, value in ref.state.items():
        if np.any(value):
            assert_rel(ours.state[slot], value, TOL, slot)


@pytest.mark.parametrize("config", OPT_CONFIGS, ids=[c.label for c in OPT_CONFIGS])
def test_train_step_matches_torch_optim(arch: Architecture, start: Params,
                                        config: OptConfig) -> None:
    batches = [make_batch(arch, seed=100 + k) for k in range(STEPS)]
    ours = ort_steps(arch, "train", config, start, [b.feed() for b in batches])

    def backprop(b: Batch) -> Callable[[Tensors], None]:
        return lambda tp: b.loss(arch, tp).backward()

    ref = torch_steps(config, start, [backprop(b) for b in batches])
    assert_same_trajectory(ours, ref, start)


@pytest.mark.parametrize("config", APPLY_CONFIGS, ids=[c.label for c in APPLY_CONFIGS])
def test_apply_matches_torch_optim(arch: Architecture, start: Params,
                                   config: OptConfig) -> None:
    rng = np.random.default_rng(3)
    grads = [{n: (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
              for n, v in start.items()} for _ in range(STEPS)]
    ours = ort_steps(arch, "apply", config, start,
                     [{INPUT_GRAD: Params(start.layout, g).to_flat()} for g in grads])

    def assign(g: Arrays) -> Callable[[Tensors], None]:
        def fill(tp: Tensors) -> None:
            for n, t in tp.items():
                t.grad = f64(g[n])
        return fill

    ref = torch_steps(config, start, [assign(g) for g in grads])
    assert_same_trajectory(ours, ref, start)


def test_fedprox_sgd_step_matches_proximal_loss(arch: Architecture, start: Params,
                                                batch: Batch) -> None:
    mu = 0.5
    config = OPT_CONFIGS[0]
    rng = np.random.default_rng(9)
    # A global model far enough away that the proximal pull (lr * mu * 0.5 per entry) is of
    # the size of the gradient step, not a rounding-level correction to it.
    global_params = {n: (v + 0.5 * rng.standard_normal(v.shape)).astype(np.float32)
                     for n, v in start.items()}
    ours = ort_steps(arch, "train", config, start, [batch.feed()],
                     global_params=global_params, mu=mu)
    plain = ort_steps(arch, "train", config, start, [batch.feed()])

    def proximal(tp: Tensors) -> None:
        prox = sum(((t - f64(global_params[n])) ** 2).sum() for n, t in tp.items())
        (batch.loss(arch, tp) + 0.5 * mu * prox).backward()

    ref = torch_steps(config, start, [proximal])
    assert_same_trajectory(ours, ref, start)
    moved = {n: ours.weights[n] - plain.weights[n] for n in start}
    assert max(rel_err(moved[n], -config.value("lr") * mu * (start[n] - global_params[n]))
               for n in start) <= TOL, "the proximal pull is lr * mu * (global - w)"


# --------------------------------------------------------------------------------------------
# (f) inference, (g) graph format


def test_inference_matches_oracle(arch: Architecture, params: Params, batch: Batch) -> None:
    feed = {INPUT_WINDOW: batch.window, INPUT_RR: batch.rr}
    out = run_graph(arch, "inference", {**feed, **flat_feed(params)})
    with torch.no_grad():
        logits = oracle.forward(arch, oracle.torch_params(params), f64(batch.window),
                                f64(batch.rr))
    assert_rel(out[OUTPUT_LOGITS], logits, TOL, "logits")
    assert_rel(out[OUTPUT_PROBS], torch.softmax(logits, dim=1), TOL, "probs")

    embedded_model = graph(arch.name, "inference-embedded")
    assert {i.name for i in embedded_model.graph.input} == {INPUT_WINDOW, INPUT_RR}
    # Same graph, same kernels: bit-identical once MLAS stops prepacking the embedded weights.
    exact = [run(session(m, prepack=False), {**feed, **flat_feed(params)})
             for m in (graph(arch.name, "inference"), embedded_model)]
    for name in (OUTPUT_LOGITS, OUTPUT_PROBS):
        np.testing.assert_array_equal(exact[1][name], exact[0][name])
    # With prepacking (the default) only the float32 summation order of constant GEMMs moves.
    embedded = run_graph(arch, "inference-embedded", feed)
    assert_rel(embedded[OUTPUT_LOGITS], out[OUTPUT_LOGITS], 1e-6, "embedded logits")


GRAPH_KINDS = [("inference", ""), ("inference-embedded", ""), ("gradient", ""), ("dpsgd", ""),
               *(("train", o) for o in OPTIMIZERS), *(("apply", o) for o in OPTIMIZERS)]


@pytest.mark.parametrize(("kind", "optimizer"), GRAPH_KINDS,
                         ids=[f"{k}-{o}" if o else k for k, o in GRAPH_KINDS])
def test_graph_is_plain_opset17(arch: Architecture, kind: str, optimizer: str) -> None:
    model = graph(arch.name, kind, optimizer)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert not model.functions
    for node in model.graph.node:
        assert node.domain == "", f"{node.op_type} is in domain {node.domain!r}"
        schema = onnx.defs.get_schema(node.op_type, OPSET, "")
        assert schema.domain == "", node.op_type
        assert not schema.deprecated, node.op_type
    onnx.checker.check_model(model, full_check=True)
    assert cached_session(arch.name, kind, optimizer) is not None
