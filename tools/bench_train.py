"""``fedbeat bench train``: training throughput and memory, onnxruntime graphs vs torch eager.

The question this answers is whether training on stock onnxruntime with our generated graphs
is a good deal against the obvious alternative, torch, on a small device: samples per second
and peak memory for the same model, parameters and batches, on one thread.

The two engines of a pair (ort vs torch, ort-dp vs torch-dp) run as two long-lived worker
processes (:mod:`fedbeat.tools.bench_train_worker`) at the same time, each with its own peak RSS
and the onnxruntime one without torch, but never computing at the same time: this process
drives them alternately in short chunks of about 100 ms (order ort, torch, torch, ort, ...), so
a burst of noise on the shared machine hits both engines of a chunk pair alike. Throughput per
engine is the median over chunks; ``speedup`` is the median over chunk pairs of the paired
ratio (ort rate / torch rate of two neighbouring chunks), which cancels slow drift and most of
the bursts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import select
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import click
from rich.table import Table

from fedbeat.models.zoo import ARCHITECTURES
from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, stderr, stdout

WORKER = "fedbeat.tools.bench_train_worker"
PLAIN = ("ort", "torch")
DP = ("ort-dp", "torch-dp")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
PROBE_STEPS = 20          # warmup chunk size when --chunk-steps is automatic
START_TIMEOUT_S = 300.0   # a worker's imports and session set-up
CHUNK_TIMEOUT_S = 300.0   # one chunk
MaskSpec = dict[str, tuple[list[int], float]]


@dataclass(frozen=True)
class Settings:
    """What the command was asked to do (its options)."""

    model: str
    batch_sizes: tuple[int, ...]
    chunks: int
    warmup_chunks: int
    chunk_steps: int | None   # None: chosen from the warmup chunks to last about chunk_ms
    chunk_ms: float
    epoch_steps: int
    seed: int


@dataclass(frozen=True)
class Chunk:
    """One worker's answer to ``run``: steps, wall-clock seconds and step losses."""

    steps: int
    seconds: float
    losses: list[float | None]


@dataclass(frozen=True)
class PairRun:
    """Everything measured for one pair of engines at one batch size."""

    engines: tuple[str, str]
    batch_size: int
    chunk_steps: int
    chunks: dict[str, list[Chunk]]        # engine -> every chunk, warmup first
    finals: dict[str, dict[str, Any]]     # engine -> the worker's final report


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"32,64"`` -> ``(32, 64)``; a usage error for anything but positive integers."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--batch-sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes must be positive integers, got {text!r}")
    return sizes


def require_baseline() -> None:
    """Fail early, in one line, when the baseline or the graph builder is not installed.

    ``find_spec`` looks without importing, so the parent process stays light.
    """
    if importlib.util.find_spec("torch") is None:
        raise UsageError("the torch baseline is not installed; "
                         "run: pip install 'fedbeat[test]'")
    if importlib.util.find_spec("onnx") is None:
        raise UsageError("building the graphs needs onnx; run: pip install 'fedbeat[build]'")


def build_graphs(model: str, out_dir: Path, seed: int) -> MaskSpec:
    """Build the model directory (untimed) and read the dropout mask inputs' shapes.

    The workers need the shapes to draw the same masks as ``Trainer``; the torch workers cannot
    ask onnxruntime themselves without loading it.
    """
    from fedbeat.device.sessions import GraphRunner
    from fedbeat.models.graph.export import build_model_dir

    manifest = build_model_dir(model, out_dir, seed=seed, optimizers=("sgd",))
    runner = GraphRunner(out_dir / manifest.files["train_sgd"][0], threads=1)
    masks: MaskSpec = {}
    for layer, rate in manifest.dropout.items():
        name = f"dropout_mask.{layer}"
        if name in runner.input_names:
            masks[name] = (list(runner.input_shape(name)), rate)
    return masks


def child_env() -> dict[str, str]:
    """The parent's environment with every BLAS/OpenMP pool pinned to one thread."""
    env = dict(os.environ)
    env.update(dict.fromkeys(THREAD_ENV, "1"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- one worker process -----------------------------------------------------------------------


class Worker:
    """A long-lived worker process spoken to line by line; a context manager that reaps it.

    Workers start in their own session, so Ctrl-C reaches only this process, which then ends
    them in :meth:`close` (``terminate``, then ``kill``, always ``wait``): no zombies, no
    orphans. A worker whose parent dies sees end of input at its next read and exits.
    """

    def __init__(self, engine: str, batch_size: int, command: list[str], log: Path) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.log = log
        with open(log, "w") as err:     # the child keeps its own descriptor
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True, env=child_env(),
                                         start_new_session=True)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def read(self, timeout: float) -> dict[str, Any]:
        """The worker's next JSON line; a clear error if it died, hung or said nonsense."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.fail(f"no answer within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            self.fail("exited")
        try:
            message: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            self.fail(f"answered {line.strip()[:80]!r}")
        return message

    def request(self, command: str, timeout: float = CHUNK_TIMEOUT_S) -> dict[str, Any]:
        """Send one command line and return the answer."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.fail("exited")
        return self.read(timeout)

    def stop(self) -> dict[str, Any]:
        """Ask for the final report and wait for the process to exit."""
        final = self.request("stop")
        self.proc.wait(timeout=CHUNK_TIMEOUT_S)
        return final

    def fail(self, what: str) -> NoReturn:
        """Raise an error quoting the worker's last line on stderr."""
        self.close()
        lines = self.log.read_text(errors="replace").strip().splitlines() or ["(no output)"]
        raise click.ClickException(f"{self.engine} worker (batch {self.batch_size}) {what} "
                                   f"(exit status {self.proc.returncode}): {lines[-1]}")

    def close(self) -> None:
        """End the process if it still runs, reap it and close the pipes (idempotent)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def worker_command(engine: str, size: int, settings: Settings, model_dir: Path,
                   masks: MaskSpec) -> list[str]:
    """The command line that starts one worker."""
    return [sys.executable, "-m", WORKER, "--engine", engine, "--model", settings.model,
            "--model-dir", str(model_dir), "--batch-size", str(size),
            "--epoch-steps", str(settings.epoch_steps),
            "--chunk-steps", str(settings.chunk_steps or PROBE_STEPS),
            "--seed", str(settings.seed), "--masks", json.dumps(masks)]


# -- driving a pair ---------------------------------------------------------------------------


def chunk_order(pair: tuple[str, str], index: int) -> tuple[str, str]:
    """ABBA: chunk pair 0 runs (ort, torch), pair 1 (torch, ort), ... to cancel order effects."""
    return pair if index % 2 == 0 else (pair[1], pair[0])


def calibrate(chunks: dict[str, list[Chunk]], target_ms: float) -> int:
    """Steps per chunk so that a chunk lasts about ``target_ms`` on average over the pair.

    Parameters
    ----------
    chunks
        Each engine's warmup chunks so far.
    target_ms
        Wanted chunk duration.

    Returns
    -------
    int
        At least 1. From the median step time of each engine's warmup chunks after the first
        (which includes one-off costs such as torch's slow first call), averaged over the pair.
    """
    step_s = statistics.fmean(
        statistics.median(c.seconds / c.steps for c in (done[1:] or done))
        for done in chunks.values())
    return max(1, round(target_ms / 1000.0 / step_s))


def run_chunk(worker: Worker, steps: int) -> Chunk:
    """Ask one worker for one chunk."""
    answer = worker.request(f"run {steps}")
    if answer.get("steps") != steps:
        worker.fail(f"ran {answer.get('steps')} steps instead of {steps}")
    return Chunk(steps, float(answer["seconds"]), list(answer["losses"]))


def drive(workers: dict[str, Worker], pair: tuple[str, str],
          settings: Settings) -> tuple[int, dict[str, list[Chunk]]]:
    """Warmup chunks, then the timed ones, the engines taking turns in ABBA order.

    Parameters
    ----------
    workers
        The pair's running workers, by engine.
    pair
        ``(ort engine, torch engine)``.
    settings
        Chunk counts and size.

    Returns
    -------
    tuple[int, dict[str, list[Chunk]]]
        Steps per timed chunk, and every chunk of each engine (warmup first), so that the i-th
        chunks of the two engines ran back to back.
    """
    chunks: dict[str, list[Chunk]] = {engine: [] for engine in pair}
    steps = settings.chunk_steps or PROBE_STEPS
    for index in range(settings.warmup_chunks + settings.chunks):
        if index == settings.warmup_chunks and settings.chunk_steps is None:
            steps = calibrate(chunks, settings.chunk_ms)
        for engine in chunk_order(pair, index):
            chunks[engine].append(run_chunk(workers[engine], steps))
    return steps, chunks


def run_pair(pair: tuple[str, str], size: int, settings: Settings, model_dir: Path,
             masks: MaskSpec) -> PairRun:
    """Start both workers of a pair, drive them alternately, stop them; always reap them.

    Parameters
    ----------
    pair
        ``(ort engine, torch engine)``: :data:`PLAIN` or :data:`DP`.
    size
        Batch size.
    settings, model_dir, masks
        The command's options, the built model directory and the dropout mask shapes.

    Returns
    -------
    PairRun
        Every chunk and both workers' final reports.

    Raises
    ------
    click.ClickException
        A worker failed, hung, or (an onnxruntime one) imported torch.
    """
    with tempfile.TemporaryDirectory(prefix="fedbeat-bench-logs-") as logs, \
            contextlib.ExitStack() as stack:
        workers = {engine: stack.enter_context(
            Worker(engine, size, worker_command(engine, size, settings, model_dir, masks),
                   Path(logs) / f"{engine}.log")) for engine in pair}
        for worker in workers.values():
            worker.read(START_TIMEOUT_S)                 # {"ready": true, ...}
        steps, chunks = drive(workers, pair, settings)
        finals = {engine: worker.stop() for engine, worker in workers.items()}
    for engine, final in finals.items():
        if engine.startswith("ort") and final["torch_imported"]:
            raise click.ClickException(f"{engine} worker imported torch; its RSS is not its own")
    return PairRun(pair, size, steps, chunks, finals)


def run_all(settings: Settings, model_dir: Path, masks: MaskSpec) -> list[PairRun]:
    """Every pair at every batch size, one after the other, with a line per pair on stderr.

    No live status display: its refresh thread would compete with the workers for the CPU.
    """
    runs = []
    for size in settings.batch_sizes:
        for pair in (PLAIN, DP):
            stderr.print(f"batch {size}, {pair[0]} vs {pair[1]}: "
                         f"{settings.warmup_chunks} warmup + {settings.chunks} chunks each")
            runs.append(run_pair(pair, size, settings, model_dir, masks))
            stderr.print(pair_line(runs[-1], settings), soft_wrap=True)
    return runs


def pair_line(run: PairRun, settings: Settings) -> str:
    """One line of figures for a finished pair (stderr, for people watching)."""
    parts = [f"{e} {statistics.median(chunk_rates(run.chunks[e], run.batch_size, settings)):.0f}"
             f"/s {run.finals[e]['peak_rss_mb']:.0f} MB" for e in run.engines]
    line = (f"  {run.chunk_steps} steps/chunk: {parts[0]}, {parts[1]}, "
            f"paired ratio {paired_ratio(run, settings)[0]:.2f}")
    if run.engines == PLAIN:
        gap, compared = loss_check(run.chunks["ort"], run.chunks["torch"])
        line += f", first-chunk loss gap {_sci(gap)} over {compared} steps"
    return line


def _sci(value: float | None) -> str:
    """A loss gap for people: scientific notation, so a tiny gap never reads as 0.0."""
    return "n/a" if value is None else f"{value:.1e}"


# -- figures ----------------------------------------------------------------------------------


def chunk_rates(chunks: list[Chunk], size: int, settings: Settings) -> list[float]:
    """Samples per second of each timed (non-warmup) chunk."""
    return [c.steps * size / c.seconds for c in chunks[settings.warmup_chunks:]]


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def paired_ratio(run: PairRun, settings: Settings) -> tuple[float, float, float]:
    """Median and quartiles over chunk pairs of (ort engine's rate / torch engine's rate).

    The i-th timed chunks of the two engines ran back to back, so each ratio compares the
    engines under (nearly) the same machine conditions.

    Returns
    -------
    tuple[float, float, float]
        ``(median, first quartile, third quartile)`` of the paired ratios.
    """
    first, second = (chunk_rates(run.chunks[e], run.batch_size, settings) for e in run.engines)
    ratios = [a / b for a, b in zip(first, second, strict=True)]
    return (statistics.median(ratios), *_quartiles(ratios))


def loss_check(ort: list[Chunk], torch: list[Chunk]) -> tuple[float | None, int]:
    """Largest step-loss difference over the first chunk of the two plain engines.

    Both run their first chunk from the same initial parameters on the same batches, so the
    losses agree up to float32 rounding (a few 1e-7); anything larger means the engines do not
    train the same model.

    Parameters
    ----------
    ort, torch
        Each plain engine's chunks, warmup first.

    Returns
    -------
    tuple[float | None, int]
        The largest absolute difference (full precision: a 0.0 means identical losses) and the
        number of steps compared; ``(None, 0)`` unless both engines reported a finite loss for
        every step of the chunk, so missing losses never read as agreement.
    """
    steps = ort[0].steps
    a = [x for x in ort[0].losses if x is not None]
    b = [y for y in torch[0].losses if y is not None]
    if len(a) != steps or len(b) != steps or torch[0].steps != steps:
        return None, 0
    return max(abs(x - y) for x, y in zip(a, b, strict=True)), steps


def summarise_batch(runs: list[PairRun], size: int, settings: Settings) -> dict[str, Any]:
    """The figures for one batch size: rates, paired ratios (ort / torch) and peak RSS."""
    plain = next(r for r in runs if r.batch_size == size and r.engines == PLAIN)
    dp = next(r for r in runs if r.batch_size == size and r.engines == DP)
    rate = {e: statistics.median(chunk_rates(r.chunks[e], size, settings))
            for r in (plain, dp) for e in r.engines}
    rss = {e: r.finals[e]["peak_rss_mb"] for r in (plain, dp) for e in r.engines}
    speedup, dp_speedup = paired_ratio(plain, settings), paired_ratio(dp, settings)
    gap, compared = loss_check(plain.chunks["ort"], plain.chunks["torch"])
    return {
        "ort_samples_per_s": rate["ort"],
        "torch_samples_per_s": rate["torch"],
        "speedup": speedup[0],
        "speedup_quartiles": list(speedup[1:]),
        "speedup_of_medians": rate["ort"] / rate["torch"],
        "ort_dp_samples_per_s": rate["ort-dp"],
        "torch_dp_samples_per_s": rate["torch-dp"],
        "dp_speedup": dp_speedup[0],
        "dp_speedup_quartiles": list(dp_speedup[1:]),
        "dp_speedup_of_medians": rate["ort-dp"] / rate["torch-dp"],
        "ort_peak_rss_mb": rss["ort"],
        "torch_peak_rss_mb": rss["torch"],
        "rss_ratio": rss["ort"] / rss["torch"],
        "ort_dp_peak_rss_mb": rss["ort-dp"],
        "torch_dp_peak_rss_mb": rss["torch-dp"],
        "chunk_steps": plain.chunk_steps,
        "dp_chunk_steps": dp.chunk_steps,
        "loss_max_abs_diff": gap,
        "loss_steps_compared": compared,
        "first_chunk_losses": {e: plain.chunks[e][0].losses[:3] for e in PLAIN},
    }


def worker_record(run: PairRun, engine: str, settings: Settings) -> dict[str, Any]:
    """One worker's figures for the JSON document (every timed chunk's rate included)."""
    final = run.finals[engine]
    rates = chunk_rates(run.chunks[engine], run.batch_size, settings)
    timed = run.chunks[engine][settings.warmup_chunks:]
    return {"engine": engine, "batch_size": run.batch_size, "chunk_steps": run.chunk_steps,
            "chunks": len(timed), "samples_per_s": statistics.median(rates),
            "step_ms": 1000.0 * statistics.median(c.seconds / c.steps for c in timed),
            "peak_rss_mb": final["peak_rss_mb"], "ru_maxrss_mb": final["ru_maxrss_mb"],
            "torch_imported": final["torch_imported"],
            "onnxruntime_imported": final["onnxruntime_imported"],
            "chunk_samples_per_s": [round(r, 1) for r in rates]}


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment() -> dict[str, Any]:
    """Versions and machine, so figures from different runs can be told apart."""
    return {"python": platform.python_version(), "numpy": _version("numpy"),
            "onnxruntime": _version("onnxruntime"), "torch": _version("torch"),
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform()}


def settings_record(settings: Settings) -> dict[str, Any]:
    """The options and fixed hyperparameters, for the JSON document."""
    from fedbeat.tools.bench_train_worker import CLIP_NORM, LR, MOMENTUM, NOISE_MULTIPLIER

    return {"chunks": settings.chunks, "warmup_chunks": settings.warmup_chunks,
            "chunk_steps": settings.chunk_steps or "auto", "chunk_ms": settings.chunk_ms,
            "epoch_steps": settings.epoch_steps, "seed": settings.seed, "optimizer": "sgd",
            "lr": LR, "momentum": MOMENTUM,
            "dp": {"noise_multiplier": NOISE_MULTIPLIER, "clip_norm": CLIP_NORM,
                   "batches": "fixed (not Poisson-sampled)", "noise": "seeded PCG64"}}


def report(settings: Settings, runs: list[PairRun], num_params: int) -> dict[str, Any]:
    """The JSON document: the first batch size's figures at top level, all under by_batch_size."""
    by_size = {str(size): summarise_batch(runs, size, settings) for size in settings.batch_sizes}
    first = by_size[str(settings.batch_sizes[0])]
    top = ("ort_samples_per_s", "torch_samples_per_s", "speedup", "ort_peak_rss_mb",
           "torch_peak_rss_mb", "dp_speedup")
    return {
        "model": settings.model, "num_params": num_params, "threads": 1,
        "batch_size": settings.batch_sizes[0], **{key: first[key] for key in top},
        "by_batch_size": by_size,
        "settings": settings_record(settings),
        "environment": environment(),
        "command": shlex.join(["fedbeat", *sys.argv[1:]]),
        "workers": [worker_record(run, engine, settings)
                    for run in runs for engine in run.engines],
    }


def print_table(doc: dict[str, Any]) -> None:
    """Human-readable summary: one row per batch size."""
    table = Table("batch", "ort samples/s", "torch samples/s", "speedup", "ort-dp samples/s",
                  "torch-dp samples/s", "dp speedup", "ort RSS MB", "torch RSS MB", "RSS ratio",
                  "loss gap",
                  title=f"{doc['model']} ({doc['num_params']:,} parameters), one thread; "
                  "speedups are medians of paired chunk ratios")
    for size, row in doc["by_batch_size"].items():
        table.add_row(size, f"{row['ort_samples_per_s']:.0f}", f"{row['torch_samples_per_s']:.0f}",
                      f"{row['speedup']:.2f}", f"{row['ort_dp_samples_per_s']:.0f}",
                      f"{row['torch_dp_samples_per_s']:.0f}", f"{row['dp_speedup']:.2f}",
                      f"{row['ort_peak_rss_mb']:.0f}", f"{row['torch_peak_rss_mb']:.0f}",
                      f"{row['rss_ratio']:.2f}", _sci(row["loss_max_abs_diff"]))
    stdout.print(table)


@click.command()
@click.option("--model", "model", default="ecg-cnn-m", show_default=True,
              type=click.Choice(sorted(ARCHITECTURES)), help="Architecture to benchmark.")
@click.option("--batch-sizes", default="32,64", show_default=True,
              help="Comma-separated batch sizes; the first one's figures are also top-level.")
@click.option("--chunks", default=150, show_default=True, type=click.IntRange(1),
              help="Timed chunks per engine, per pair and batch size.")
@click.option("--warmup-chunks", default=3, show_default=True, type=click.IntRange(1),
              help="Untimed chunks per engine first (the first one also checks the losses).")
@click.option("--chunk-steps", default=None, type=click.IntRange(1),
              help="Training steps per chunk [default: chosen from the warmup chunks so that a "
              "chunk lasts about --chunk-ms].")
@click.option("--chunk-ms", default=100.0, show_default=True, type=click.FloatRange(min=1.0),
              help="Target chunk duration when --chunk-steps is automatic.")
@click.option("--epoch-steps", default=100, show_default=True, type=click.IntRange(1),
              help="The synthetic data set holds epoch-steps x batch examples; chunks cycle "
              "through its epochs.")
@click.option("--seed", default=0, show_default=True, help="Parameters, data and masks seed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def train(model: str, batch_sizes: str, chunks: int, warmup_chunks: int,
          chunk_steps: int | None, chunk_ms: float, epoch_steps: int, seed: int,
          as_json: bool) -> None:
    """Training throughput and peak memory: onnxruntime graphs vs torch eager, one thread.

    Same architecture, initial parameters, batches and dropout masks for every engine; each
    engine in its own process. The two engines of a pair run at the same time but take turns
    in short chunks (ort, torch, torch, ort, ...); speedups are medians of paired chunk ratios.
    Engines: ort (Trainer.fit, fused train_sgd graph), torch (eager float32, SGD momentum 0.9),
    ort-dp and torch-dp (DP-SGD on the same fixed batches; torch-dp uses torch.func
    vmap(grad) per-example gradients). Needs torch: pip install 'fedbeat[test]'.
    """
    settings = Settings(model, parse_batch_sizes(batch_sizes), chunks, warmup_chunks,
                        chunk_steps, chunk_ms, epoch_steps, seed)
    require_baseline()
    with tempfile.TemporaryDirectory(prefix="fedbeat-bench-") as tmp:
        model_dir = Path(tmp) / model
        stderr.print(f"building {model} graphs in a temporary directory")
        masks = build_graphs(model, model_dir, seed)
        runs = run_all(settings, model_dir, masks)
    from fedbeat.models.zoo import create_architecture

    doc = report(settings, runs, create_architecture(model).num_params())
    if as_json:
        emit_json(doc)
    else:
        print_table(doc)
