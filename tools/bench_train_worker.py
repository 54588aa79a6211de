"""One long-lived training engine for ``fedbeat bench train``, driven chunk by chunk over pipes.

Run as ``python -m fedbeat.tools.bench_train_worker --engine ort ...``. The worker sets its
engine up (untimed), prints one JSON line ``{"ready": true, ...}`` and then follows a line
protocol on stdin/stdout:

``run [N]``
    Train for the next ``N`` steps (default ``--chunk-steps``), continuing from where the
    previous chunk stopped: same parameters, optimizer state, step counter and batch stream.
    Answer one JSON line ``{"seconds": ..., "steps": N, "losses": [...]}``: the chunk's
    wall-clock time (``time.perf_counter``) and its step losses (``null`` for a non-finite one;
    an empty list for an engine that computes none).
``stop``
    Print the final report (peak RSS from ``VmHWM``, which modules were imported) and exit.
    End of input means the same, so a worker whose parent died exits at its next read.

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
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import IO, TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402

from fedbeat.models.params import Params  # noqa: E402
from fedbeat.models.spec import NUM_CLASSES, RR_FEATURES, WINDOW_SAMPLES  # noqa: E402
from fedbeat.models.zoo import Architecture, create_architecture  # noqa: E402
from fedbeat.tools.process_memory import peak_rss_mb, ru_maxrss_mb  # noqa: E402

if TYPE_CHECKING:
    from fedbeat.device.trainer import TrainConfig, Trainer

ENGINES = ("ort", "torch", "ort-dp", "torch-dp")
LR = 0.01
MOMENTUM = 0.9
NOISE_MULTIPLIER = 1.0
CLIP_NORM = 1.0
MASK_PREFIX = "dropout_mask."
FIT_EPOCHS = 1000  # epochs per Trainer.fit call in the ort engine: more than any run needs
MaskSpec = dict[str, tuple[tuple[int, ...], float]]  # input name -> (shape without batch, rate)


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


@dataclass(frozen=True)
class Job:
    """What to run (the parsed command line)."""

    engine: str
    model: str
    model_dir: Path | None
    batch_size: int
    epoch_steps: int
    chunk_steps: int
    seed: int
    masks: MaskSpec


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


def plan_batches(data: Data, batch_size: int, seed: int, masks: MaskSpec) -> Iterator[Batch]:
    """The batches ``Trainer.fit`` draws with ``TrainConfig(seed=seed, epochs=FIT_EPOCHS)``.

    Same generator, same order of draws (per epoch one permutation, then each batch's dropout
    masks), so an engine fed these batches sees exactly what the onnxruntime trainer sees.

    Parameters
    ----------
    data
        The synthetic data set (one epoch).
    batch_size, seed
        As in ``TrainConfig``.
    masks
        Dropout mask inputs: name -> (shape without the batch axis, rate).

    Yields
    ------
    Batch
        Endlessly: after ``FIT_EPOCHS`` epochs it starts over, as the ort engine's next
        ``fit`` does. Batches are cut when needed, inside the timed chunk, as in ``Trainer.fit``
        (about 25 us a step).
    """
    n = len(data.labels)
    while True:
        rng = np.random.default_rng(seed)
        for _ in range(FIT_EPOCHS):
            order = rng.permutation(n)
            for begin in range(0, n, batch_size):
                idx = order[begin:begin + batch_size]
                drawn = {}
                for name, (shape, rate) in masks.items():
                    keep = rng.random((len(idx), *shape)) >= rate
                    drawn[name] = keep.astype(np.float32) / np.float32(1.0 - rate)
                yield Batch(data.windows[idx], data.rr[idx], data.labels[idx], drawn)


# -- the line protocol ------------------------------------------------------------------------


class StopTraining(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside a training loop when the parent says ``stop`` (or closes stdin)."""


class ChunkDriver:
    """Runs the line protocol from inside an engine's endless training loop.

    The engine calls :meth:`record` with each step's loss (any object ``float()`` accepts) and
    :meth:`step_done` after each step; at the end of a chunk ``step_done`` stops the clock,
    answers, and blocks until the next command, so time spent waiting is never counted.
    """

    def __init__(self, job: Job, commands: IO[str], replies: IO[str]) -> None:
        self.job = job
        self.commands = commands
        self.replies = replies
        self.total_steps = 0
        self._target = 0
        self._done = 0
        self._losses: list[Any] = []
        self._started = 0.0

    def send(self, message: dict[str, Any]) -> None:
        """Write one JSON line and flush it."""
        self.replies.write(json.dumps(message) + "\n")
        self.replies.flush()

    def start(self) -> None:
        """Wait for the first command and start its clock (raises :class:`StopTraining`)."""
        self._next_command()

    def record(self, loss: Any) -> None:
        """Keep one step's loss; converted to float only after the chunk's clock stops."""
        self._losses.append(loss)

    def step_done(self) -> None:
        """Count a step; at the end of the chunk answer and wait for the next command."""
        self._done += 1
        if self._done < self._target:
            return
        seconds = time.perf_counter() - self._started
        self.total_steps += self._done
        self.send({"seconds": seconds, "steps": self._done,
                   "losses": [_finite_or_none(float(x)) for x in self._losses]})
        self._next_command()

    def _next_command(self) -> None:
        line = self.commands.readline()
        words = line.split()
        if not words or words[0] == "stop":
            raise StopTraining
        if words[0] != "run" or len(words) > 2:
            raise SystemExit(f"bench worker: unknown command {line.strip()!r}")
        self._target = int(words[1]) if len(words) == 2 else self.job.chunk_steps
        if self._target < 1:
            raise SystemExit(f"bench worker: a chunk needs at least one step, got {line!r}")
        self._done = 0
        self._losses = []
        self._started = time.perf_counter()


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


Train = Callable[[ChunkDriver], None]
"""An engine's training loop: trains forever, reporting every step to the driver."""


# -- onnxruntime engines (must not import torch) ----------------------------------------------


def _ort_trainer(job: Job) -> Trainer:
    from fedbeat.device.trainer import Trainer

    if job.model_dir is None:
        raise SystemExit("--model-dir is required for the onnxruntime engines")
    return Trainer(job.model_dir, threads=1)


def _ort_config(data: Data, job: Job, epochs: int = 1) -> TrainConfig:
    from fedbeat.device.trainer import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=job.batch_size, lr=LR, momentum=MOMENTUM,
                       optimizer="sgd", class_weight=tuple(float(w) for w in data.class_weight),
                       seed=job.seed)


def ort_engine(job: Job, data: Data) -> Train:
    """The product path: one ``Trainer.fit`` call (fused ``train_sgd`` graph) spans all chunks.

    The chunk boundaries are in ``fit``'s progress callback, so parameters, momentum and the
    batch order carry over exactly as in one long fit. Shuffling, dropout masks and feeding
    parameters and momentum back each step all happen inside the timed chunks, as on a device.
    Each step's loss is read by wrapping the session runner's ``run`` (one extra Python call).
    """
    trainer = _ort_trainer(job)
    runner = trainer.sessions.get("train_sgd")   # open the session now, never inside a chunk
    beats = trainer.beats(data.windows, data.rr, data.labels)
    config = _ort_config(data, job, epochs=FIT_EPOCHS)
    inner = runner.run

    def train(driver: ChunkDriver) -> None:
        def probe(feed: dict[str, Any]) -> dict[str, np.ndarray]:
            out = inner(feed)
            driver.record(out["loss"])
            return out

        runner.run = probe  # type: ignore[method-assign]
        while True:       # a second fit restarts momentum; no default run gets that far
            trainer.fit(beats, config, progress=lambda done, total: driver.step_done())

    return train


def ort_dp_engine(job: Job, data: Data) -> Train:
    """DP-SGD on fixed batches: ``dpsgd`` graph, Gaussian noise in numpy, ``apply_sgd`` graph.

    Mirrors ``Trainer._fit_dpsgd`` step for step (same feeds, same float64 noise then float32
    average) except that the batch is the fixed one rather than a Poisson sample, and the noise
    comes from seeded PCG64 rather than the ChaCha20 CSPRNG, so both DP engines do the same work.
    """
    from fedbeat.device.privacy.noise import SeededRandom

    trainer = _ort_trainer(job)
    grad_runner = trainer.sessions.get("dpsgd")
    apply_runner = trainer.sessions.get("apply_sgd")
    noise = SeededRandom(job.seed)
    config = _ort_config(data, job)
    grad_feed = trainer._constant_feed(config, grad_runner, trainer.params)
    grad_feed["clip_norm"] = np.asarray(CLIP_NORM, dtype=np.float32)
    apply_feed = trainer._constant_feed(config, apply_runner, trainer.params)
    batches = plan_batches(data, job.batch_size, job.seed, job.masks)

    def train(driver: ChunkDriver) -> None:
        params = trainer.params.to_flat()            # flat, in layout order, as the graphs take
        state = trainer._initial_state("sgd")
        for step, batch in enumerate(batches, 1):
            grad_feed.update(window=batch.window, rr=batch.rr, labels=batch.labels)
            grad_feed.update(batch.masks)
            grad_feed["params"] = params
            out = grad_runner.run(grad_feed)
            driver.record(out["loss"])
            total = out["clipped_sum"]
            noisy = total + noise.normal(total.shape, NOISE_MULTIPLIER * CLIP_NORM)
            apply_feed["grad"] = (noisy / len(batch.labels)).astype(np.float32)
            apply_feed["params"] = params
            apply_feed.update(state)
            apply_feed["step"] = np.asarray(step, dtype=np.float32)
            out = apply_runner.run(apply_feed)
            params = out["new.params"]
            state = {k: out[f"new.{k}"] for k in state}
            driver.step_done()

    return train


# -- torch engines ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchBatch:
    """A :class:`Batch` as tensors (``torch.from_numpy``: no copy)."""

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


def _torch_batches(job: Job, data: Data) -> Iterator[TorchBatch]:
    """:func:`plan_batches` as tensors, cut inside the timed chunk like the ort engines'."""
    import torch

    for b in plan_batches(data, job.batch_size, job.seed, job.masks):
        yield TorchBatch(torch.from_numpy(b.window), torch.from_numpy(b.rr),
                         torch.from_numpy(b.labels),
                         {k.removeprefix(MASK_PREFIX): torch.from_numpy(v)
                          for k, v in b.masks.items()})


def torch_engine(job: Job, data: Data) -> Train:
    """Eager float32 torch: reference forward, weighted cross-entropy, backward, SGD momentum."""
    import torch
    import torch.nn.functional as F

    from fedbeat.tools.torch_reference import forward

    arch, params = _torch_setup(job)
    weight = torch.from_numpy(data.class_weight)
    opt = torch.optim.SGD(list(params.values()), lr=LR, momentum=MOMENTUM)
    batches = _torch_batches(job, data)

    def train(driver: ChunkDriver) -> None:
        for b in batches:
            opt.zero_grad(set_to_none=True)
            logits = forward(arch, params, b.window, b.rr, b.masks)
            loss = F.cross_entropy(logits, b.labels, weight=weight)
            torch.autograd.backward(loss)
            opt.step()
            driver.record(loss.detach())
            driver.step_done()

    return train


def torch_dp_engine(job: Job, data: Data) -> Train:
    """Opacus-style DP-SGD with ``torch.func``: ``vmap(grad(...))`` per-example gradients.

    Per example: loss ``w[y] * CE`` (as the dpsgd graph), the gradient of every parameter; one
    L2 norm across all parameters; factor ``C / max(norm, C)`` (= min(1, C/norm)); sum; add
    N(0, (sigma C)^2) noise; divide by the batch size; SGD momentum step. No loss is computed.
    """
    import torch
    import torch.nn.functional as F
    from torch.func import grad, vmap

    from fedbeat.tools.torch_reference import forward

    arch, params = _torch_setup(job)
    weight = torch.from_numpy(data.class_weight)
    std = NOISE_MULTIPLIER * CLIP_NORM
    opt = torch.optim.SGD(list(params.values()), lr=LR, momentum=MOMENTUM)
    batches = _torch_batches(job, data)

    def one_loss(p: dict[str, Any], window: Any, rr: Any, label: Any,
                 masks: dict[str, Any]) -> Any:
        logits = forward(arch, p, window[None], rr[None], {k: m[None] for k, m in masks.items()})
        return F.cross_entropy(logits, label[None], weight=weight, reduction="sum")

    per_example = vmap(grad(one_loss), in_dims=(None, 0, 0, 0, 0))

    def train(driver: ChunkDriver) -> None:
        for b in batches:
            grads = per_example({n: p.detach() for n, p in params.items()},
                                b.window, b.rr, b.labels, b.masks)
            size = len(b.labels)
            norm = torch.sqrt(sum(g.reshape(size, -1).pow(2).sum(dim=1) for g in grads.values()))
            factor = CLIP_NORM / torch.clamp(norm, min=CLIP_NORM)
            for n, g in grads.items():
                clipped = torch.einsum("b,b...->...", factor, g)
                params[n].grad = (clipped + std * torch.randn_like(clipped)) / size
            opt.step()
            driver.step_done()

    return train


# -- the worker -------------------------------------------------------------------------------


def make_engine(job: Job, data: Data) -> Train:
    """The engine ``job.engine`` names, set up; torch is imported only by the torch engines."""
    factories: dict[str, Callable[[Job, Data], Train]] = {
        "ort": ort_engine, "ort-dp": ort_dp_engine,
        "torch": torch_engine, "torch-dp": torch_dp_engine}
    if job.engine not in factories:
        raise SystemExit(f"unknown engine {job.engine!r}")
    return factories[job.engine](job, data)


def serve(job: Job, commands: IO[str], replies: IO[str]) -> None:
    """Set the engine up, say ready, run chunks until ``stop``, then print the final report.

    Parameters
    ----------
    job
        What to run.
    commands
        Where ``run [N]`` / ``stop`` lines come from (stdin).
    replies
        Where the JSON lines go (stdout; nothing else may write there).
    """
    data = synthetic_data(job.epoch_steps * job.batch_size, job.seed)
    train = make_engine(job, data)
    driver = ChunkDriver(job, commands, replies)
    driver.send({"ready": True, "engine": job.engine, "batch_size": job.batch_size,
                 "pid": os.getpid()})
    try:
        driver.start()
        train(driver)
        raise SystemExit(f"{job.engine} engine stopped training by itself")
    except StopTraining:
        pass
    with contextlib.suppress(BrokenPipeError):   # the parent is gone: nobody to tell
        driver.send(final_report(job, driver.total_steps))


def final_report(job: Job, steps: int) -> dict[str, Any]:
    """What the parent needs once the chunks are over: peak memory and what was imported."""
    return {
        "final": True,
        "engine": job.engine,
        "batch_size": job.batch_size,
        "steps": steps,
        "peak_rss_mb": peak_rss_mb(),
        "ru_maxrss_mb": ru_maxrss_mb(),
        "torch_imported": "torch" in sys.modules,
        "onnxruntime_imported": "onnxruntime" in sys.modules,
    }


def parse_args(argv: Sequence[str] | None = None) -> Job:
    """Parse the worker's command line (argparse, so the worker imports nothing extra)."""
    parser = argparse.ArgumentParser(prog="python -m fedbeat.tools.bench_train_worker")
    parser.add_argument("--engine", required=True, choices=ENGINES)
    parser.add_argument("--model", required=True)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epoch-steps", type=int, default=100,
                        help="the synthetic data set holds epoch-steps x batch-size examples")
    parser.add_argument("--chunk-steps", type=int, default=20,
                        help="steps of a bare 'run' command")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--masks", default="{}",
                        help='JSON {"dropout_mask.<layer>": [[dims...], rate]}')
    args = parser.parse_args(argv)
    masks = {k: (tuple(int(d) for d in v[0]), float(v[1]))
             for k, v in json.loads(args.masks).items()}
    if min(args.batch_size, args.epoch_steps, args.chunk_steps) < 1:
        parser.error("batch size, epoch steps and chunk steps must be positive")
    return Job(args.engine, args.model, args.model_dir, args.batch_size, args.epoch_steps,
               args.chunk_steps, args.seed, masks)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the line protocol on stdin/stdout until ``stop``."""
    serve(parse_args(argv), sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
