"""``fedbeat bench device``: what one device costs in memory, start-up, CPU and latency.

Every measurement runs in a **fresh child process** (``python -c`` or ``python -m fedbeat``),
so resident memory and start-up are those of a real device process, not of this one (which
has built the model and holds onnx):

* **Training** — a child loads :class:`~fedbeat.device.trainer.Trainer` (one onnxruntime
  thread) on the built model directory and trains one local round: one epoch over
  ``--beats`` synthetic beats (concatenated synthetic patients, saved by the parent), batch 32.
  It reports its peak RSS (``VmHWM`` from ``/proc/self/status``; ``ru_maxrss`` would not do,
  Linux carries it across ``execve`` from the parent) and the CPU-seconds (``process_time``)
  of the fit.
  Baselines in the same run: a child that only does the same imports, and the RSS just before
  ``fit`` (model loaded, beats in memory), so the training's own share is visible.
* **Cold start** — an embedded broker and a throw-away fleet; ``python -m fedbeat device run``
  on a synthetic source, timed from spawn to its "connected to" log line, then terminated;
  median of ``--starts``. Baselines: a bare ``python -c pass`` and ``import fedbeat.tools.cli``
  (what every ``fedbeat`` command pays before it does anything).
* **Inference** — µs per beat at batch 1 (a beat arrives about once a second) for ONNX
  (``Trainer.predict``), TFLite float32 and int8 (quantised with the training beats as
  calibration data), each in its own child with one thread; beside it the per-beat time in
  batches of 256 and the child's peak RSS.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from fedbeat.tools.output import emit_json, stderr, stdout

RSS_GOAL_MB = 120.0
COLD_START_GOAL_S = 2.0
CONNECTED = "connected to"
FLEET = "bench"
BATCH = 256

_CHILD = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
mode = args["mode"]

def rss_mb():
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child would report
    # the (larger) high-water mark of the parent that spawned it.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

out = {}
if mode in ("imports", "train", "onnx"):
    import numpy as np
    from fedbeat.device.trainer import Trainer, TrainConfig
else:
    import numpy as np
    from fedbeat.device.tflite_model import TFLiteModel
out["rss_mb_imports"] = rss_mb()
if mode != "imports":
    data = np.load(args["beats"])
    windows, rr, labels = data["windows"], data["rr"], data["labels"]
if mode == "train":
    trainer = Trainer(args["model_dir"], threads=1)
    beats = trainer.beats(windows, rr, labels)
    out["rss_mb_before_fit"] = rss_mb()
    cpu, wall = time.process_time(), time.perf_counter()
    result = trainer.fit(beats, TrainConfig(epochs=1, batch_size=args["batch_size"]))
    out["cpu_s"] = time.process_time() - cpu
    out["wall_s"] = time.perf_counter() - wall
    out["steps"] = result.steps
elif mode in ("onnx", "tflite"):
    if mode == "onnx":
        trainer = Trainer(args["model_dir"], threads=1)
        def predict(w, r):
            return trainer.predict(trainer.beats(w, r))
    else:
        with open(args["tflite"], "rb") as f:
            model = TFLiteModel(f.read(), threads=1)
        def predict(w, r):
            return model.predict(w[:, None, :], r)
    for i in range(20):
        predict(windows[i:i + 1], rr[i:i + 1])
    times = []
    for i in range(args["calls"]):
        j = i % len(windows)
        w, r = windows[j:j + 1], rr[j:j + 1]
        t = time.perf_counter()
        predict(w, r)
        times.append(time.perf_counter() - t)
    times.sort()
    out["us_per_beat_batch1"] = times[len(times) // 2] * 1e6
    n = min(args["batch"], len(windows))
    predict(windows[:n], rr[:n])
    batch_times = []
    for _ in range(args["batch_repeats"]):
        t = time.perf_counter()
        predict(windows[:n], rr[:n])
        batch_times.append((time.perf_counter() - t) / n)
    batch_times.sort()
    out["us_per_beat_batched"] = batch_times[len(batch_times) // 2] * 1e6
    out["batch"] = n
out["rss_mb"] = rss_mb()
print(json.dumps(out))
"""


def _child(args: dict[str, Any]) -> dict[str, Any]:
    """Run :data:`_CHILD` in a fresh interpreter and return the JSON it prints."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise click.ClickException(f"benchmark child ({args['mode']}) failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def write_beats(path: Path, count: int) -> int:
    """Concatenate synthetic patients until ``count`` beats; save them to ``path`` (.npz)."""
    from fedbeat.device.ecg.synthetic import synthetic_patient

    windows, rr, labels = [], [], []
    have, seed = 0, 0
    while have < count:
        patient = synthetic_patient(seed)
        windows.append(patient.windows)
        rr.append(patient.rr)
        labels.append(patient.labels)
        have += len(patient.labels)
        seed += 1
    np.savez(path, windows=np.concatenate(windows)[:count].astype(np.float32),
             rr=np.concatenate(rr)[:count].astype(np.float32),
             labels=np.concatenate(labels)[:count].astype(np.int64))
    return min(have, count)


def measure_training(model_dir: Path, beats: Path, repeats: int) -> dict[str, Any]:
    """Peak RSS and CPU-seconds of one local round, against an imports-only child."""
    imports, rounds = [], []
    for _ in range(repeats):                       # alternate so load hits both alike
        imports.append(_child({"mode": "imports"}))
        rounds.append(_child({"mode": "train", "model_dir": str(model_dir), "beats": str(beats),
                              "batch_size": 32}))
    return {
        "peak_rss_mb_training": statistics.median(r["rss_mb"] for r in rounds),
        "peak_rss_mb_before_fit": statistics.median(r["rss_mb_before_fit"] for r in rounds),
        "peak_rss_mb_imports_only": statistics.median(r["rss_mb"] for r in imports),
        "cpu_s_per_round": statistics.median(r["cpu_s"] for r in rounds),
        "wall_s_per_round": statistics.median(r["wall_s"] for r in rounds),
        "steps_per_round": rounds[0]["steps"], "repeats": repeats,
    }


def _time_to_connected(config: Path, timeout: float) -> float:
    """Spawn ``fedbeat device run``; seconds until its "connected to" line (then stop it)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "fedbeat", "device", "run", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    connected = threading.Event()
    seen: list[str] = []
    elapsed: list[float] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if CONNECTED in line and not connected.is_set():
                elapsed.append(time.perf_counter() - start)
                connected.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    connected.wait(timeout)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(5)
    if not elapsed:
        raise click.ClickException(f"device did not log {CONNECTED!r} within {timeout:.0f} s:\n"
                                   + "".join(seen[-20:]))
    return elapsed[0]


def measure_cold_start(work: Path, model_dir: Path, starts: int) -> dict[str, Any]:
    """Median seconds from spawning ``fedbeat device run`` to connected, beside bare Python."""
    from fedbeat.broker.embedded import EmbeddedBroker
    from fedbeat.device.config import example_device_config
    from fedbeat.tools import pki

    keys = work / "keys"
    pki.init_fleet(keys, FLEET)
    device_keys = pki.add_device(keys, "dev-1")
    times, bare, cli = [], [], []
    with EmbeddedBroker() as broker:
        for i in range(starts):
            config = work / f"device-{i}.toml"
            config.write_text(example_device_config(**{
                "device.keys": str(device_keys), "device.state_dir": str(work / f"state-{i}"),
                "broker.url": broker.url, "model.dir": str(model_dir),
                "data.source": "synthetic", "data.speed": 0.0,
                "broker.protocol": "3.1.1"}))   # the embedded broker speaks 3.1.1 only
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - start)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import fedbeat.tools.cli"], check=True)
            cli.append(time.perf_counter() - start)
            times.append(_time_to_connected(config, timeout=60.0))
    return {"cold_start_s": statistics.median(times), "cold_start_all_s": times,
            "python_start_s": statistics.median(bare),
            "cli_import_s": statistics.median(cli), "starts": starts}


def measure_inference(work: Path, model: str, model_dir: Path, beats: Path, *, calls: int,
                      calibration: int) -> dict[str, Any]:
    """µs per beat at batch 1 and batched for ONNX and (with the tflite extra) TFLite."""
    common = {"beats": str(beats), "calls": calls, "batch": BATCH, "batch_repeats": 5}
    results: dict[str, Any] = {"onnx": _child({"mode": "onnx", "model_dir": str(model_dir),
                                               **common})}
    try:
        from fedbeat.models.tflite_export import export_tflite
        from fedbeat.models.tflite_quant import export_tflite_int8
    except ImportError:
        stderr.print("[yellow]tflite extra not installed: TFLite figures skipped[/yellow]")
        results["tflite_f32"] = results["tflite_int8"] = None
        return results
    from fedbeat.models.manifest import load_model_dir
    from fedbeat.models.zoo import create_architecture

    arch = create_architecture(model)
    params = load_model_dir(model_dir).initial_params()
    data = np.load(beats)
    files = {"tflite_f32": export_tflite(arch, params),
             "tflite_int8": export_tflite_int8(arch, params, data["windows"][:calibration],
                                               data["rr"][:calibration])}
    for name, content in files.items():
        path = work / f"{name}.tflite"
        path.write_bytes(content)
        results[name] = {**_child({"mode": "tflite", "tflite": str(path), **common}),
                         "file_bytes": len(content)}
    return results


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _table(doc: dict[str, Any]) -> Table:
    goals = doc["goals"]
    table = Table("measure", "value", "baseline", "goal",
                  title=f"{doc['model']}: one device process ({doc['beats']:,} beats per round)")
    ok = {True: "[green]met[/green]", False: "[red]not met[/red]"}
    table.add_row("peak RSS, training one round", f"{doc['peak_rss_mb_training']:.0f} MB",
                  f"{doc['peak_rss_mb_imports_only']:.0f} MB imports only, "
                  f"{doc['training']['peak_rss_mb_before_fit']:.0f} MB before fit",
                  f"≤ {RSS_GOAL_MB:.0f} MB {ok[goals['peak_rss_mb_training']['met']]}")
    table.add_row("CPU per round", f"{doc['cpu_s_per_round']:.2f} CPU-s",
                  f"{doc['training']['wall_s_per_round']:.2f} s wall", "")
    table.add_row("cold start to connected", f"{doc['cold_start_s']:.2f} s",
                  f"{doc['cold_start']['python_start_s']:.2f} s bare python, "
                  f"{doc['cold_start']['cli_import_s']:.2f} s CLI import",
                  f"≤ {COLD_START_GOAL_S:.0f} s {ok[goals['cold_start_s']['met']]}")
    for name, label in (("onnx", "ONNX"), ("tflite_f32", "TFLite float32"),
                        ("tflite_int8", "TFLite int8")):
        r = doc["inference"][name]
        table.add_row(f"inference per beat, {label}",
                      _fmt(doc["inference_us_per_beat"][name], ".0f", " µs"),
                      "" if r is None else f"{r['us_per_beat_batched']:.0f} µs batched "
                                           f"({r['batch']}), RSS {r['rss_mb']:.0f} MB", "")
    return table


@click.command()
@click.option("--model", default="ecg-cnn-m", show_default=True, help="Zoo architecture.")
@click.option("--beats", "n_beats", default=2000, show_default=True,
              type=click.IntRange(32, 200_000), help="Synthetic beats in the training round.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1),
              help="Training children (and imports-only baselines); figures are medians.")
@click.option("--starts", default=5, show_default=True, type=click.IntRange(1),
              help="Cold starts of the device daemon; the figure is the median.")
@click.option("--calls", default=500, show_default=True, type=click.IntRange(1),
              help="Timed batch-1 inference calls per runtime; the figure is the median.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def device(model: str, n_beats: int, repeats: int, starts: int, calls: int,
           as_json: bool) -> None:
    """Peak training RSS, cold start, CPU per round and inference latency of one device.

    Each figure comes from a fresh child process. JSON keys include peak_rss_mb_training,
    peak_rss_mb_imports_only, cold_start_s, cpu_s_per_round, inference_us_per_beat
    (onnx, tflite_f32, tflite_int8) and goals.
    """
    from fedbeat.models.graph.export import build_model_dir  # onnx: off the device path

    with tempfile.TemporaryDirectory(prefix="fedbeat-bench-") as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        stderr.print(f"building {model} ...")
        build_model_dir(model, model_dir, seed=0)
        beats = work / "beats.npz"
        n_beats = write_beats(beats, n_beats)
        stderr.print(f"training: {repeats} × (imports-only child, one round of {n_beats} beats)")
        training = measure_training(model_dir, beats, repeats)
        stderr.print(f"cold start: {starts} × fedbeat device run ...")
        cold = measure_cold_start(work, model_dir, starts)
        stderr.print(f"inference: {calls} batch-1 calls per runtime ...")
        inference = measure_inference(work, model, model_dir, beats, calls=calls,
                                      calibration=min(n_beats, 500))
    doc: dict[str, Any] = {
        "model": model, "beats": n_beats,
        "peak_rss_mb_training": training["peak_rss_mb_training"],
        "peak_rss_mb_imports_only": training["peak_rss_mb_imports_only"],
        "cold_start_s": cold["cold_start_s"],
        "cpu_s_per_round": training["cpu_s_per_round"],
        "inference_us_per_beat": {name: None if r is None else r["us_per_beat_batch1"]
                                  for name, r in inference.items()},
        "goals": {
            "peak_rss_mb_training": {"goal": RSS_GOAL_MB,
                                     "met": training["peak_rss_mb_training"] <= RSS_GOAL_MB},
            "cold_start_s": {"goal": COLD_START_GOAL_S,
                             "met": cold["cold_start_s"] <= COLD_START_GOAL_S},
        },
        "training": training, "cold_start": cold, "inference": inference,
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
    }
    if as_json:
        emit_json(doc)
    else:
        stdout.print(_table(doc))
