"""``fedbeat bench train``: training throughput and memory, onnxruntime graphs vs torch eager.

The question this answers is whether training on stock onnxruntime with our generated graphs
is a good deal against the obvious alternative, torch, on a small device: samples per second
and peak memory for the same model, parameters and batches, on one thread.

Every (engine, batch size) runs in its own fresh worker process
(:mod:`fedbeat.tools.bench_train_worker`) so that its peak RSS is its own and the onnxruntime
workers never have torch loaded. Workers run back to back, and with ``--rounds`` above one the
whole schedule is repeated with the engine order flipped, so slow drift on a noisy machine
does not consistently penalise one engine. Rates are medians over all timed repeats.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from fedbeat.models.zoo import ARCHITECTURES
from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, stderr, stdout

WORKER = "fedbeat.tools.bench_train_worker"
PLAIN = ("ort", "torch")
DP = ("ort-dp", "torch-dp")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
MaskSpec = dict[str, tuple[list[int], float]]


@dataclass(frozen=True)
class Settings:
    """What every worker is asked to do (the command's options)."""

    model: str
    batch_sizes: tuple[int, ...]
    steps: int
    warmup: int
    repeats: int
    rounds: int
    seed: int


@dataclass(frozen=True)
class Run:
    """One worker's job: an engine at a batch size, in a given round."""

    engine: str
    batch_size: int
    round: int


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


def schedule(settings: Settings) -> list[Run]:
    """Engines back to back per batch size; odd rounds flip each pair's order (torch first)."""
    runs: list[Run] = []
    for r in range(settings.rounds):
        for size in settings.batch_sizes:
            for pair in (PLAIN, DP):
                order = pair if r % 2 == 0 else pair[::-1]
                runs.extend(Run(engine, size, r) for engine in order)
    return runs


def child_env() -> dict[str, str]:
    """The parent's environment with every BLAS/OpenMP pool pinned to one thread."""
    env = dict(os.environ)
    env.update(dict.fromkeys(THREAD_ENV, "1"))
    return env


def run_worker(run: Run, settings: Settings, model_dir: Path, masks: MaskSpec) -> dict[str, Any]:
    """Start one worker process and return its JSON; a failure shows the worker's last words."""
    cmd = [sys.executable, "-m", WORKER, "--engine", run.engine, "--model", settings.model,
           "--model-dir", str(model_dir), "--batch-size", str(run.batch_size),
           "--steps", str(settings.steps), "--warmup", str(settings.warmup),
           "--repeats", str(settings.repeats), "--seed", str(settings.seed),
           "--masks", json.dumps(masks)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        lines = proc.stderr.strip().splitlines() or ["(no output)"]
        raise click.ClickException(f"{run.engine} worker (batch {run.batch_size}) failed: "
                                   f"{lines[-1]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if run.engine.startswith("ort") and result["torch_imported"]:
        raise click.ClickException(f"{run.engine} worker imported torch; its RSS is not its own")
    return result


def run_all(settings: Settings, model_dir: Path, masks: MaskSpec) -> list[dict[str, Any]]:
    """Run the whole schedule with a status line and one summary line per worker on stderr."""
    runs = schedule(settings)
    results = []
    with stderr.status("starting") as status:
        for i, run in enumerate(runs, 1):
            status.update(f"[{i}/{len(runs)}] round {run.round + 1}/{settings.rounds}: "
                          f"{run.engine}, batch {run.batch_size}")
            result = run_worker(run, settings, model_dir, masks)
            result["round"] = run.round
            results.append(result)
            stderr.print(f"  {run.engine:>8} batch {run.batch_size:<4} "
                         f"{result['samples_per_s']:8.0f} samples/s  "
                         f"{result['peak_rss_mb']:6.1f} MB peak RSS")
    return results


def _engine_summary(results: list[dict[str, Any]], engine: str, size: int) -> dict[str, Any]:
    mine = [r for r in results if r["engine"] == engine and r["batch_size"] == size]
    rates = [rate for r in mine for rate in r["repeat_samples_per_s"]]
    return {"samples_per_s": statistics.median(rates),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
            "first_losses": next(r["losses"] for r in mine if r["round"] == 0)}


def _loss_gap(ort_losses: list[float | None], torch_losses: list[float | None]) -> float | None:
    """Largest step-loss difference between the plain engines: both must train the same model."""
    pairs = [(a, b) for a, b in zip(ort_losses, torch_losses, strict=False)
             if a is not None and b is not None]
    return max((abs(a - b) for a, b in pairs), default=None)


def summarise_batch(results: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """The figures for one batch size: rates, ratios (ort / torch) and peak RSS."""
    s = {engine: _engine_summary(results, engine, size) for engine in (*PLAIN, *DP)}
    rate = {engine: s[engine]["samples_per_s"] for engine in s}
    rss = {engine: s[engine]["peak_rss_mb"] for engine in s}
    return {
        "ort_samples_per_s": rate["ort"],
        "torch_samples_per_s": rate["torch"],
        "speedup": rate["ort"] / rate["torch"],
        "ort_dp_samples_per_s": rate["ort-dp"],
        "torch_dp_samples_per_s": rate["torch-dp"],
        "dp_speedup": rate["ort-dp"] / rate["torch-dp"],
        "ort_peak_rss_mb": rss["ort"],
        "torch_peak_rss_mb": rss["torch"],
        "rss_ratio": rss["ort"] / rss["torch"],
        "ort_dp_peak_rss_mb": rss["ort-dp"],
        "torch_dp_peak_rss_mb": rss["torch-dp"],
        "loss_max_abs_diff": _loss_gap(s["ort"]["first_losses"], s["torch"]["first_losses"]),
    }


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


def report(settings: Settings, results: list[dict[str, Any]], num_params: int) -> dict[str, Any]:
    """The JSON document: the first batch size's figures at top level, all under by_batch_size."""
    from fedbeat.tools.bench_train_worker import CLIP_NORM, LR, MOMENTUM, NOISE_MULTIPLIER

    by_size = {str(size): summarise_batch(results, size) for size in settings.batch_sizes}
    first = by_size[str(settings.batch_sizes[0])]
    top = ("ort_samples_per_s", "torch_samples_per_s", "speedup", "ort_peak_rss_mb",
           "torch_peak_rss_mb", "dp_speedup")
    return {
        "model": settings.model, "num_params": num_params, "threads": 1,
        "batch_size": settings.batch_sizes[0], **{key: first[key] for key in top},
        "by_batch_size": by_size,
        "settings": {"steps": settings.steps, "warmup": settings.warmup,
                     "repeats": settings.repeats, "rounds": settings.rounds,
                     "seed": settings.seed, "optimizer": "sgd", "lr": LR, "momentum": MOMENTUM,
                     "dp": {"noise_multiplier": NOISE_MULTIPLIER, "clip_norm": CLIP_NORM,
                            "batches": "fixed (not Poisson-sampled)"}},
        "environment": environment(),
        "command": shlex.join(["fedbeat", *sys.argv[1:]]),
        "workers": [{k: v for k, v in r.items() if k != "losses"} for r in results],
    }


def print_table(doc: dict[str, Any]) -> None:
    """Human-readable summary: one row per batch size."""
    table = Table("batch", "ort samples/s", "torch samples/s", "speedup", "ort-dp samples/s",
                  "torch-dp samples/s", "dp speedup", "ort RSS MB", "torch RSS MB", "RSS ratio",
                  title=f"{doc['model']} ({doc['num_params']:,} parameters), one thread")
    for size, row in doc["by_batch_size"].items():
        table.add_row(size, f"{row['ort_samples_per_s']:.0f}", f"{row['torch_samples_per_s']:.0f}",
                      f"{row['speedup']:.2f}", f"{row['ort_dp_samples_per_s']:.0f}",
                      f"{row['torch_dp_samples_per_s']:.0f}", f"{row['dp_speedup']:.2f}",
                      f"{row['ort_peak_rss_mb']:.0f}", f"{row['torch_peak_rss_mb']:.0f}",
                      f"{row['rss_ratio']:.2f}")
    stdout.print(table)


@click.command()
@click.option("--model", "model", default="ecg-cnn-m", show_default=True,
              type=click.Choice(sorted(ARCHITECTURES)), help="Architecture to benchmark.")
@click.option("--batch-sizes", default="32,64", show_default=True,
              help="Comma-separated batch sizes; the first one's figures are also top-level.")
@click.option("--steps", default=100, show_default=True, type=click.IntRange(1),
              help="Training steps per timed repeat.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(0),
              help="Untimed steps before the first repeat (0 times one-off start-up costs too, "
              "e.g. torch's slow first call).")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1),
              help="Timed repeats inside each worker process.")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1),
              help="Times the whole schedule of worker processes runs (engine order flips).")
@click.option("--seed", default=0, show_default=True, help="Parameters, data and masks seed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def train(model: str, batch_sizes: str, steps: int, warmup: int, repeats: int, rounds: int,
          seed: int, as_json: bool) -> None:
    """Training throughput and peak memory: onnxruntime graphs vs torch eager, one thread.

    Same architecture, initial parameters, batches and dropout masks for every engine; each
    engine in its own process. Engines: ort (Trainer.fit, fused train_sgd graph), torch
    (eager float32, SGD momentum 0.9), ort-dp and torch-dp (DP-SGD on the same fixed batches;
    torch-dp uses torch.func vmap(grad) per-example gradients). Needs torch:
    pip install 'fedbeat[test]'.
    """
    settings = Settings(model, parse_batch_sizes(batch_sizes), steps, warmup, repeats, rounds,
                        seed)
    require_baseline()
    with tempfile.TemporaryDirectory(prefix="fedbeat-bench-") as tmp:
        model_dir = Path(tmp) / model
        stderr.print(f"building {model} graphs in a temporary directory")
        masks = build_graphs(model, model_dir, seed)
        results = run_all(settings, model_dir, masks)
    from fedbeat.models.zoo import create_architecture

    doc = report(settings, results, create_architecture(model).num_params())
    if as_json:
        emit_json(doc)
    else:
        print_table(doc)
