"""One training-throughput measurement in a fresh process, for ``fedbeat bench train``.

Run as ``python -m fedbeat.tools.bench_train_worker --engine ort ...``; prints one JSON line.

Each engine runs in its own process so that its peak resident set size (:func:`peak_rss_mb`)
counts only what that engine needed: the onnxruntime engines never import torch, and the torch
engines never open an onnxruntime session. Every engine trains the same architecture from the same
initial parameters on the same batches (same examples, same dropout masks, same class weights):
the batches follow exactly the order :class:`~fedbeat.device.trainer.Trainer` draws them in, so
the plain engines' losses can be compared step by step as a check that both compute the same
thing.
"""

from __future__ import annotations

import os

# Before numpy (and torch) load their thread pools: one thread everywhere.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402 - the environment must be set before numpy is imported
import json  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402

from fedbeat.models.params import Params  # noqa: E402
from fedbeat.models.spec import NUM_CLASSES, RR_FEATURES, WINDOW_SAMPLES  # noqa: E402
from fedbeat.models.zoo import Architecture, create_architecture  # noqa: E402

if TYPE_CHECKING:
    from fedbeat.device.beats import Beats
    from fedbeat.device.trainer import TrainConfig, Trainer

ENGINES = ("ort", "torch", "ort-dp", "torch-dp")
LR = 0.01
MOMENTUM = 0.9
NOISE_MULTIPLIER = 1.0
CLIP_NORM = 1.0
MASK_PREFIX = "dropout_mask."


@dataclass(frozen=True)
class Batch:
    """One step's inputs, already indexed out of the data set (numpy, float32/int64)."""

    window: np.ndarray
    rr: np.ndarray
    labels: np.ndarray
    masks: dict[str, np.ndarray]  # graph input name ("dropout_mask.<layer>") -> scaled mask


@dataclass(frozen=True)
class Data:
    """A fixed synthetic data set plus the class weights every engine uses."""

    windows: np.ndarray
    rr: np.ndarray
    labels: np.ndarray
    class_weight: np.ndarray

    def take(self, count: int) -> Data:
        return Data(self.windows[:count], self.rr[:count], self.labels[:count], self.class_weight)


@dataclass(frozen=True)
class Job:
    """What to measure (the parsed command line)."""

    engine: str
    model: str
    model_dir: Path | None
    batch_size: int
    steps: int
    warmup: int
    repeats: int
    seed: int
    masks: dict[str, tuple[tuple[int, ...], float]]  # input name -> (shape without batch, rate)


def synthetic_data(n: int, seed: int) -> Data:
    """Seeded random beats; throughput does not depend on the values, only on the shapes.

    Labels cover all classes and the class weights are the inverse class frequency, so the
    weighted loss exercises the same code as real, imbalanced data.
    """
    rng = np.random.default_rng(seed)
    windows = rng.standard_normal((n, 1, WINDOW_SAMPLES)).astype(np.float32)
    rr = (1.0 + 0.2 * rng.standard_normal((n, len(RR_FEATURES)))).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=n).astype(np.int64)
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    weight = (n / (NUM_CLASSES * np.maximum(counts, 1.0))).astype(np.float32)
    return Data(windows, rr, labels, weight)


def plan_batches(data: Data, batch_size: int, seed: int,
                 masks: dict[str, tuple[tuple[int, ...], float]]) -> list[Batch]:
    """The batches ``Trainer.fit`` draws for one epoch with ``TrainConfig(seed=seed)``.

    Same generator, same order of draws (one permutation, then each batch's dropout masks), so
    an engine fed these batches sees exactly what the onnxruntime trainer sees.
    """
    rng = np.random.default_rng(seed)
    n = len(data.labels)
    order = rng.permutation(n)
    batches = []
    for begin in range(0, n, batch_size):
        idx = order[begin:begin + batch_size]
        drawn = {}
        for name, (shape, rate) in masks.items():
            keep = rng.random((len(idx), *shape)) >= rate
            drawn[name] = keep.astype(np.float32) / np.float32(1.0 - rate)
        batches.append(Batch(data.windows[idx], data.rr[idx], data.labels[idx], drawn))
    return batches


# -- onnxruntime engines (must not import torch) ----------------------------------------------


@dataclass(frozen=True)
class Engine:
    """``prepare`` turns data into an engine's inputs (untimed); ``run`` trains on them (timed).

    ``run`` returns the step losses (NaN where an engine does not compute one).
    """

    prepare: Callable[[Data], Any]
    run: Callable[[Any], list[float]]


def _ort_trainer(job: Job) -> Trainer:
    from fedbeat.device.trainer import Trainer

    if job.model_dir is None:
        raise SystemExit("--model-dir is required for the onnxruntime engines")
    return Trainer(job.model_dir, threads=1)


def _ort_config(data: Data, job: Job) -> TrainConfig:
    from fedbeat.device.trainer import TrainConfig

    return TrainConfig(epochs=1, batch_size=job.batch_size, lr=LR, momentum=MOMENTUM,
                       optimizer="sgd", class_weight=tuple(float(w) for w in data.class_weight),
                       seed=job.seed)


def ort_engine(job: Job) -> Engine:
    """The product path: ``Trainer.fit`` for one epoch (fused ``train_sgd`` graph).

    Shuffling, dropout masks and feeding parameters and momentum back each step all happen
    inside the timed call, as on a device; only the one-off input validation is untimed.
    """
    trainer = _ort_trainer(job)
    trainer.sessions.get("train_sgd")      # open the session now, never inside a timed call

    def prepare(part: Data) -> tuple[Beats, TrainConfig]:
        return trainer.beats(part.windows, part.rr, part.labels), _ort_config(part, job)

    def run(prepared: tuple[Beats, TrainConfig]) -> list[float]:
        result = trainer.fit(*prepared)
        return [float(x) for x in result.losses]

    return Engine(prepare, run)


def ort_dp_engine(job: Job) -> Engine:
    """DP-SGD on fixed batches: ``dpsgd`` graph, Gaussian noise in numpy, ``apply_sgd`` graph.

    Mirrors ``Trainer._fit_dpsgd`` step for step (same feeds, same float64 noise then float32
    average) except that the batch is the fixed one rather than a Poisson sample, and the noise
    comes from seeded PCG64 rather than the OS CSPRNG, so both DP engines do the same work.
    """
    from fedbeat.device.privacy.noise import SeededRandom

    trainer = _ort_trainer(job)
    grad_runner = trainer.sessions.get("dpsgd")
    apply_runner = trainer.sessions.get("apply_sgd")
    noise = SeededRandom(job.seed)
    params = trainer.params.to_flat()              # flat, in layout order, as the graphs take

    def prepare(part: Data) -> tuple[list[Batch], TrainConfig]:
        return plan_batches(part, job.batch_size, job.seed, job.masks), _ort_config(part, job)

    def run(prepared: tuple[list[Batch], TrainConfig]) -> list[float]:
        nonlocal params
        batches, config = prepared
        grad_feed = trainer._constant_feed(config, grad_runner, trainer.params)
        grad_feed["clip_norm"] = np.asarray(CLIP_NORM, dtype=np.float32)
        apply_feed = trainer._constant_feed(config, apply_runner, trainer.params)
        state = trainer._initial_state("sgd")        # each fit starts with fresh momentum
        losses = []
        for step, batch in enumerate(batches):
            grad_feed.update(window=batch.window, rr=batch.rr, labels=batch.labels)
            grad_feed.update(batch.masks)
            grad_feed["params"] = params
            out = grad_runner.run(grad_feed)
            losses.append(float(out["loss"]))
            total = out["clipped_sum"]
            noisy = total + noise.normal(total.shape, NOISE_MULTIPLIER * CLIP_NORM)
            apply_feed["grad"] = (noisy / len(batch.labels)).astype(np.float32)
            apply_feed["params"] = params
            apply_feed.update(state)
            apply_feed["step"] = np.asarray(step + 1, dtype=np.float32)
            out = apply_runner.run(apply_feed)
            params = out["new.params"]
            state = {k: out[f"new.{k}"] for k in state}
        return losses

    return Engine(prepare, run)


# -- torch engines ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchBatch:
    """A :class:`Batch` converted to tensors ahead of time (untimed, which favours torch)."""

    window: Any
    rr: Any
    labels: Any
    masks: dict[str, Any]  # layer name -> mask, as tools.torch_reference.forward wants


def _torch_setup(job: Job) -> tuple[Architecture, dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.manual_seed(job.seed)
    arch = create_architecture(job.model)
    initial = Params.initial(arch, seed=job.seed)
    params = {n: torch.tensor(v, dtype=torch.float32, requires_grad=True)
              for n, v in initial.items()}
    return arch, params


def _torch_prepare(job: Job) -> Callable[[Data], list[TorchBatch]]:
    import torch

    def prepare(part: Data) -> list[TorchBatch]:
        return [TorchBatch(torch.from_numpy(b.window), torch.from_numpy(b.rr),
                           torch.from_numpy(b.labels),
                           {k.removeprefix(MASK_PREFIX): torch.from_numpy(v)
                            for k, v in b.masks.items()})
                for b in plan_batches(part, job.batch_size, job.seed, job.masks)]

    return prepare


def torch_engine(job: Job, class_weight: np.ndarray) -> Engine:
    """Eager float32 torch: reference forward, weighted cross-entropy, backward, SGD momentum."""
    import torch
    import torch.nn.functional as F

    from fedbeat.tools.torch_reference import forward

    arch, params = _torch_setup(job)
    weight = torch.from_numpy(class_weight)

    def run(batches: list[TorchBatch]) -> list[float]:
        opt = torch.optim.SGD(list(params.values()), lr=LR, momentum=MOMENTUM)
        losses = []
        for b in batches:
            opt.zero_grad(set_to_none=True)
            logits = forward(arch, params, b.window, b.rr, b.masks)
            loss = F.cross_entropy(logits, b.labels, weight=weight)
            torch.autograd.backward(loss)
            opt.step()
            losses.append(loss.detach())
        return [float(x) for x in losses]

    return Engine(_torch_prepare(job), run)


def torch_dp_engine(job: Job, class_weight: np.ndarray) -> Engine:
    """Opacus-style DP-SGD with ``torch.func``: ``vmap(grad(...))`` per-example gradients.

    Per example: loss ``w[y] * CE`` (as the dpsgd graph), the gradient of every parameter; one
    L2 norm across all parameters; factor ``C / max(norm, C)`` (= min(1, C/norm)); sum; add
    N(0, (sigma C)^2) noise; divide by the batch size; SGD momentum step.
    """
    import torch
    import torch.nn.functional as F
    from torch.func import grad, vmap

    from fedbeat.tools.torch_reference import forward

    arch, params = _torch_setup(job)
    weight = torch.from_numpy(class_weight)
    std = NOISE_MULTIPLIER * CLIP_NORM

    def one_loss(p: dict[str, Any], window: Any, rr: Any, label: Any,
                 masks: dict[str, Any]) -> Any:
        logits = forward(arch, p, window[None], rr[None], {k: m[None] for k, m in masks.items()})
        return F.cross_entropy(logits, label[None], weight=weight, reduction="sum")

    per_example = vmap(grad(one_loss), in_dims=(None, 0, 0, 0, 0))

    def step(b: TorchBatch, opt: Any) -> None:
        grads = per_example({n: p.detach() for n, p in params.items()},
                            b.window, b.rr, b.labels, b.masks)
        size = len(b.labels)
        norm = torch.sqrt(sum(g.reshape(size, -1).pow(2).sum(dim=1) for g in grads.values()))
        factor = CLIP_NORM / torch.clamp(norm, min=CLIP_NORM)
        for n, g in grads.items():
            clipped = torch.einsum("b,b...->...", factor, g)
            params[n].grad = (clipped + std * torch.randn_like(clipped)) / size
        opt.step()

    def run(batches: list[TorchBatch]) -> list[float]:
        opt = torch.optim.SGD(list(params.values()), lr=LR, momentum=MOMENTUM)
        for b in batches:
            step(b, opt)
        return [float("nan")] * len(batches)

    return Engine(_torch_prepare(job), run)


# -- measurement ------------------------------------------------------------------------------


def make_engine(job: Job, data: Data) -> Engine:
    """The engine ``job.engine`` names; torch is imported only by the torch engines."""
    if job.engine == "ort":
        return ort_engine(job)
    if job.engine == "ort-dp":
        return ort_dp_engine(job)
    if job.engine == "torch":
        return torch_engine(job, data.class_weight)
    if job.engine == "torch-dp":
        return torch_dp_engine(job, data.class_weight)
    raise SystemExit(f"unknown engine {job.engine!r}")


def measure(job: Job) -> dict[str, Any]:
    """Warm up, then time ``repeats`` runs of ``steps`` steps; returns the worker's JSON."""
    data = synthetic_data(job.steps * job.batch_size, job.seed)
    engine = make_engine(job, data)
    if job.warmup:
        engine.run(engine.prepare(data.take(job.warmup * job.batch_size)))
    prepared = engine.prepare(data)
    times: list[float] = []
    losses: list[float] = []
    for _ in range(job.repeats):
        started = time.perf_counter()
        got = engine.run(prepared)
        times.append(time.perf_counter() - started)
        losses = losses or got
    return _result(job, times, losses)


def _result(job: Job, times: list[float], losses: list[float]) -> dict[str, Any]:
    samples = job.steps * job.batch_size
    rates = [samples / t for t in times]
    return {
        "engine": job.engine,
        "batch_size": job.batch_size,
        "steps": job.steps,
        "samples_per_s": statistics.median(rates),
        "repeat_samples_per_s": rates,
        "step_ms": 1000.0 * statistics.median(times) / job.steps,
        "peak_rss_mb": peak_rss_mb(),
        "ru_maxrss_mb": _ru_maxrss_mb(),
        "torch_imported": "torch" in sys.modules,
        "onnxruntime_imported": "onnxruntime" in sys.modules,
        "losses": [x if math.isfinite(x) else None for x in losses],
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB: ``VmHWM`` from /proc where there is one.

    Not ``ru_maxrss`` on Linux: the kernel folds the high-water mark of the address space a
    process had *before* ``exec`` into it, and a child forked (or vforked) from the benchmark
    parent starts with the parent's whole RSS, so ``ru_maxrss`` reports at least the parent's
    size (about 150 MB here, onnx and onnxruntime loaded). ``VmHWM`` belongs to the address space
    created by ``exec``: the engine's own peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return _ru_maxrss_mb()


def _ru_maxrss_mb() -> float:
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0   # bytes there, KiB here
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def parse_args(argv: Sequence[str] | None = None) -> Job:
    """Parse the worker's command line (argparse, so the worker imports nothing extra)."""
    parser = argparse.ArgumentParser(prog="python -m fedbeat.tools.bench_train_worker")
    parser.add_argument("--engine", required=True, choices=ENGINES)
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--masks", default="{}",
                        help='JSON {"dropout_mask.<layer>": [[dims...], rate]}')
    args = parser.parse_args(argv)
    masks = {k: (tuple(int(d) for d in v[0]), float(v[1]))
             for k, v in json.loads(args.masks).items()}
    if min(args.batch_size, args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error("batch size, steps and repeats must be positive, warmup non-negative")
    return Job(args.engine, args.model, args.model_dir, args.batch_size, args.steps,
               args.warmup, args.repeats, args.seed, masks)


def main(argv: Sequence[str] | None = None) -> None:
    """Measure once and print the result as one JSON line on stdout."""
    job = parse_args(argv)
    sys.stdout.write(json.dumps(measure(job)) + "\n")


if __name__ == "__main__":
    main()
