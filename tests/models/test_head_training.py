"""Head-only training (the wearable tier) against the full graphs and a float64 torch oracle.

The head's gradients must be the full model's gradients restricted to the head's tensors;
one head-only step must move the head as torch.optim moves it with the trunk frozen, and
leave every feature tensor bit for bit where it was.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest

from fedbeat.device.privacy.noise import SeededRandom
from fedbeat.device.trainer import DpSgdConfig, TrainConfig, Trainer
from fedbeat.models import layers
from fedbeat.models.graph.build import (
    INPUT_CLIP_NORM,
    INPUT_GRAD,
    OUTPUT_CLIPPED_SUM,
    OUTPUT_GRAD,
    OUTPUT_LOSS,
    OUTPUT_NORMS,
    build_apply,
    build_gradient,
)
from fedbeat.models.graph.export import build_model_dir
from fedbeat.models.graph.forward import INPUT_PARAMS
from fedbeat.models.graph.head import (
    INPUT_FEATURES,
    OUTPUT_FEATURES,
    OUTPUT_HEAD_GRAD,
    build_head_apply,
    build_head_dpsgd,
    build_head_features,
    build_head_gradient,
    build_head_train_step,
    split_head,
)
from fedbeat.models.graph.optim import FEDPROX_MU, INPUT_GLOBAL_PARAMS, NEW_PREFIX, OPTIMIZERS
from fedbeat.models.params import Params
from fedbeat.models.zoo import INPUT_RR, INPUT_WINDOW, Architecture, Node, create_architecture

torch = pytest.importorskip("torch")

import torch_oracle as oracle  # noqa: E402
from models.graph_helpers import (  # noqa: E402
    assert_rel,
    run,
    scalar,
    session,
    single_threaded_torch,  # noqa: F401 (autouse)
)
from models.test_training_graphs import Batch, make_batch  # noqa: E402

ARCH_NAMES = ("ecg-cnn-s", "ecg-cnn-m")
TOL = 1e-5
HEAD = {"ecg-cnn-s": ("head.fc.weight", "head.fc.bias", "logits.weight", "logits.bias"),
        "ecg-cnn-m": ("head.fc.weight", "head.fc.bias", "logits.weight", "logits.bias")}


@functools.cache
def graph(arch_name: str, kind: str, optimizer: str = "") -> onnx.ModelProto:
    arch = create_architecture(arch_name)
    return {"features": lambda: build_head_features(arch),
            "head_gradient": lambda: build_head_gradient(arch),
            "gradient": lambda: build_gradient(arch),
            "dpsgd_head": lambda: build_head_dpsgd(arch),
            "apply_head": lambda: build_head_apply(arch, optimizer),
            "apply": lambda: build_apply(arch, optimizer),
            "train_head": lambda: build_head_train_step(arch, optimizer)}[kind]()


def run_graph(arch: Architecture, kind: str, feed: dict[str, np.ndarray],
              optimizer: str = "") -> dict[str, np.ndarray]:
    return run(session(graph(arch.name, kind, optimizer)), feed)


@pytest.fixture(scope="module", params=ARCH_NAMES)
def arch(request: pytest.FixtureRequest) -> Architecture:
    return create_architecture(request.param)


@pytest.fixture(scope="module")
def start(arch: Architecture) -> Params:
    """A random point (N(0, 0.1^2)) so the head's updates are large against float32 spacing."""
    rng = np.random.default_rng(5)
    layout = Params.initial(arch, seed=0).layout
    return Params(layout, {n: 0.1 * rng.standard_normal(shape) for n, shape in layout.entries})


@pytest.fixture(scope="module")
def batch(arch: Architecture) -> Batch:
    return make_batch(arch, seed=21)


def features(arch: Architecture, params: Params, batch: Batch) -> np.ndarray:
    out = run_graph(arch, "features", {INPUT_WINDOW: batch.window, INPUT_RR: batch.rr,
                                       INPUT_PARAMS: params.to_flat()})
    return out[OUTPUT_FEATURES]


def head_feed(arch: Architecture, params: Params, batch: Batch) -> dict[str, np.ndarray]:
    feed = {k: v for k, v in batch.feed().items() if k not in (INPUT_WINDOW, INPUT_RR)}
    return {**feed, INPUT_FEATURES: features(arch, params, batch), INPUT_PARAMS: params.to_flat()}


def test_split_is_everything_after_join(arch: Architecture) -> None:
    split = split_head(arch)
    assert split.boundary == "join"
    assert split.tensors == HEAD[arch.name]
    assert [n.name for n in split.nodes] == ["head.fc", "head.act", "head.drop", "logits"]
    layout = Params.initial(arch, seed=0).layout
    assert split.offset + split.size == layout.size
    tail = [s for name, _, s in layout.slices() if name in split.tensors]
    assert tail[0].start == split.offset


def test_features_graph_is_the_join_output(arch: Architecture, start: Params,
                                           batch: Batch) -> None:
    """Same as the oracle's forward cut at ``join`` (no dropout before it)."""
    ours = features(arch, start, batch)
    assert ours.shape == (len(batch.labels), split_head(arch).features)
    cut = Architecture(arch.name, arch.nodes[:[n.name for n in arch.nodes].index("join") + 1])
    want = oracle.forward(cut, oracle.torch_params(start),
                          torch.from_numpy(batch.window.astype(np.float64)),
                          torch.from_numpy(batch.rr.astype(np.float64)))
    assert_rel(ours, want, TOL, "features")


def test_head_gradient_is_the_full_gradient_restricted(arch: Architecture, start: Params,
                                                       batch: Batch) -> None:
    split = split_head(arch)
    head = run_graph(arch, "head_gradient", head_feed(arch, start, batch))
    full = run_graph(arch, "gradient", {**batch.feed(), INPUT_PARAMS: start.to_flat()})
    np.testing.assert_allclose(head[OUTPUT_LOSS], full[OUTPUT_LOSS], rtol=1e-6)
    assert_rel(head[OUTPUT_HEAD_GRAD], full[OUTPUT_GRAD][split.offset:], 1e-6, "head vs full")
    tp = oracle.torch_params(start)
    loss = batch.loss(arch, tp)
    loss.backward()
    grads = dict(zip(split.tensors, np.split(head[OUTPUT_HEAD_GRAD], np.cumsum(
        [tp[n].numel() for n in split.tensors])[:-1]), strict=True))
    for name in split.tensors:
        assert_rel(grads[name].reshape(tp[name].shape), tp[name].grad, TOL, f"grad.{name}")


OPT_HYPER = {
    "sgd": {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.01},
    "adam": {"lr": 3e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-3, "weight_decay": 0.05},
    "adamw": {"lr": 3e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-3, "weight_decay": 0.1},
}


def torch_optimizer(optimizer: str, tensors: list[torch.Tensor]) -> torch.optim.Optimizer:
    h = {k: float(np.float32(v)) for k, v in OPT_HYPER[optimizer].items()}
    if optimizer == "sgd":
        return torch.optim.SGD(tensors, lr=h["lr"], momentum=h["momentum"],
                               weight_decay=h["weight_decay"])
    cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    return cls(tensors, lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
               weight_decay=h["weight_decay"])


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_head_steps_match_torch_with_a_frozen_trunk(arch: Architecture, start: Params,
                                                    batch: Batch, optimizer: str) -> None:
    """Two steps (state carried), FedProx on: head as torch.optim, trunk bit for bit."""
    split = split_head(arch)
    spec = OPTIMIZERS[optimizer]
    rng = np.random.default_rng(3)
    anchor = Params(start.layout, {n: v + 0.05 * rng.standard_normal(v.shape)
                                   for n, v in start.items()})
    mu = 0.3
    weights = start.to_flat()
    state = {f"state.{s}": np.zeros(split.size, np.float32) for s in spec.state}
    fixed = {**{k: scalar(v) for k, v in OPT_HYPER[optimizer].items()},
             FEDPROX_MU: scalar(mu), INPUT_GLOBAL_PARAMS: anchor.to_flat()}
    feats = features(arch, start, batch)
    feed = {k: v for k, v in batch.feed().items() if k not in (INPUT_WINDOW, INPUT_RR)}
    for step in (1, 2):
        out = run_graph(arch, "train_head", {**feed, **fixed, **state, INPUT_FEATURES: feats,
                                             INPUT_PARAMS: weights, "step": scalar(step)},
                        optimizer)
        weights = out[NEW_PREFIX + INPUT_PARAMS]
        state = {k: out[NEW_PREFIX + k] for k in state}
        assert all(v.shape == (split.size,) for v in state.values())
    new = Params.from_flat(start.layout, weights)
    for name in start:
        if name not in split.tensors:
            assert np.array_equal(new[name], start[name]), f"{name} moved"
            assert new[name].tobytes() == start[name].tobytes()

    tp = oracle.torch_params(start)
    head = [tp[n] for n in split.tensors]
    frozen = {n: t.detach() for n, t in tp.items()}
    opt = torch_optimizer(optimizer, head)
    mu64 = float(np.float32(mu))
    for _ in (1, 2):
        opt.zero_grad()
        params = {**frozen, **{n: tp[n] for n in split.tensors}}
        loss = batch.loss(arch, params)
        prox = sum(((tp[n] - torch.from_numpy(anchor[n].astype(np.float64))) ** 2).sum()
                   for n in split.tensors)
        (loss + 0.5 * mu64 * prox).backward()
        opt.step()
    for name in split.tensors:
        assert_rel(new[name] - start[name], tp[name].detach().numpy() - start[name], TOL,
                   f"update of {name}")


@functools.cache
def model_dir(tmp: str) -> Path:
    path = Path(tmp) / "ecg-cnn-s"
    build_model_dir("ecg-cnn-s", path, optimizers=("sgd",))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_dir(str(tmp_path_factory.mktemp("head")))


def toy_beats(trainer: Trainer, n: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classes a head can separate: the label shifts the RR features."""
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 5, n)
    rr = (rng.uniform(0.8, 1.2, (n, 8)) + 0.5 * labels[:, None]).astype(np.float32)
    return rng.standard_normal((n, 1, 128)).astype(np.float32), rr, labels


def test_trainer_head_only_fit_sends_a_partial_update(built: Path) -> None:
    trainer = Trainer(built)
    beats = trainer.beats(*toy_beats(trainer))
    start = trainer.params
    result = trainer.fit(beats, TrainConfig(epochs=15, lr=0.05, seed=1), head_only=True)
    assert result.partial
    assert result.trained == trainer.head_tensors == HEAD["ecg-cnn-s"]
    assert set(result.update_tensors()) == set(HEAD["ecg-cnn-s"])
    assert all(np.any(v) for v in result.update_tensors().values())
    for name in start:
        if name not in result.trained:
            assert result.params[name].tobytes() == start[name].tobytes(), name
            assert not np.any(result.update[name])
    assert result.losses[-10:].mean() < result.losses[:10].mean()
    assert result.steps == 15 * 4


def test_full_fit_reports_every_tensor(built: Path) -> None:
    trainer = Trainer(built)
    result = trainer.fit(trainer.beats(*toy_beats(trainer, 40)), TrainConfig(epochs=1))
    assert not result.partial
    assert set(result.update_tensors()) == set(trainer.manifest.layout.names)


def test_head_dpsgd_clips_each_example_head_gradient(arch: Architecture, start: Params,
                                                     batch: Batch) -> None:
    """Against per-example head gradients from the (torch-checked) head gradient graph."""
    split = split_head(arch)
    feed = head_feed(arch, start, batch)
    grads = []
    for i in range(len(batch.labels)):
        one = {k: v[i:i + 1] if k not in (INPUT_PARAMS, "class_weight") else v
               for k, v in feed.items()}
        grad = run_graph(arch, "head_gradient", one)[OUTPUT_HEAD_GRAD].astype(np.float64)
        grads.append(grad * batch.class_weight[batch.labels[i]])  # w[y] * CE_i, not normalised
    norms = np.array([np.linalg.norm(g) for g in grads])
    clip = float(np.float32(np.median(norms)))               # clips half of the examples
    expected = sum(g * min(1.0, clip / n) for g, n in zip(grads, norms, strict=True))
    out = run_graph(arch, "dpsgd_head", {**feed, INPUT_CLIP_NORM: scalar(clip)})
    assert out[OUTPUT_CLIPPED_SUM].shape == (split.size,)
    assert_rel(out[OUTPUT_NORMS], norms, TOL, "per-example norms")
    assert_rel(out[OUTPUT_CLIPPED_SUM], np.asarray(expected), TOL, "clipped sum")


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_head_apply_is_the_full_apply_on_the_head(arch: Architecture, start: Params,
                                                  optimizer: str) -> None:
    split = split_head(arch)
    spec = OPTIMIZERS[optimizer]
    rng = np.random.default_rng(4)
    grad = rng.standard_normal(split.size).astype(np.float32)
    anchor = start.to_flat() + 0.01
    fixed = {**{k: scalar(v) for k, v in OPT_HYPER[optimizer].items()}, "step": scalar(1),
             FEDPROX_MU: scalar(0.2), INPUT_GLOBAL_PARAMS: anchor, INPUT_PARAMS: start.to_flat()}
    head = run_graph(arch, "apply_head", {
        **fixed, INPUT_GRAD: grad,
        **{f"state.{s}": np.zeros(split.size, np.float32) for s in spec.state}}, optimizer)
    size = start.layout.size
    full = run_graph(arch, "apply", {
        **fixed, INPUT_GRAD: np.concatenate([np.zeros(split.offset, np.float32), grad]),
        **{f"state.{s}": np.zeros(size, np.float32) for s in spec.state}}, optimizer)
    new = head[NEW_PREFIX + INPUT_PARAMS]
    assert new[:split.offset].tobytes() == start.to_flat()[:split.offset].tobytes()
    np.testing.assert_allclose(new[split.offset:], full[NEW_PREFIX + INPUT_PARAMS][split.offset:],
                               rtol=1e-6, atol=1e-7)
    for s in spec.state:
        np.testing.assert_allclose(head[f"new.state.{s}"],
                                   full[f"new.state.{s}"][split.offset:], rtol=1e-6, atol=1e-9)


def test_trainer_head_only_dpsgd_keeps_the_trunk(built: Path) -> None:
    trainer = Trainer(built)
    beats = trainer.beats(*toy_beats(trainer, 64))
    start = trainer.params
    dp = DpSgdConfig(noise_multiplier=1.0, clip_norm=1.0)
    result = trainer.fit(beats, TrainConfig(epochs=2, batch_size=16, lr=0.05), dp=dp,
                         noise=SeededRandom(3), head_only=True)
    assert result.trained == HEAD["ecg-cnn-s"]
    assert result.dp is not None
    assert result.dp.steps == 2 * 4
    assert result.dp.sample_rate == 16 / 64
    assert result.clipped_fraction is not None
    for name in start:
        if name not in result.trained:
            assert result.params[name].tobytes() == start[name].tobytes(), name
    assert all(np.any(v) for v in result.update_tensors().values())


def test_head_must_read_only_the_features() -> None:
    nodes = (Node("rr.fc", layers.Linear(8, 4), (INPUT_RR,)),
             Node("join", layers.Concat(), ("rr.fc",)),
             Node("logits", layers.Linear(4, 5), ("rr.fc",)))
    with pytest.raises(ValueError, match="not after 'join'"):
        split_head(Architecture("test-leaky-head", nodes))
    with pytest.raises(ValueError, match="no node 'nope'"):
        split_head(create_architecture("ecg-cnn-s"), "nope")
