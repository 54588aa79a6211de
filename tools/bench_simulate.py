"""``fedbeat bench simulate``: how big a fleet this machine simulates, how fast, in how much
memory.

Runs ``fedbeat simulate`` as a child process (broker, aggregator and device workers are its
descendants) and samples the resident memory of the whole process tree from ``/proc`` every
``--sample-s``: the peak of that sum is the figure that matters on a laptop, not any single
process's peak (which is all ``/usr/bin/time`` reports). Linux only, as ``/proc`` is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click

from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, stderr

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as handle:
                found += [int(c) for c in handle.read().split()]
        except OSError:
            continue
    return found


def tree_rss_bytes(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, now."""
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
                total += int(handle.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
        pending += _children(pid)
    return total


class PeakSampler:
    """The largest :func:`tree_rss_bytes` of a process tree while it runs."""

    def __init__(self, pid: int, every_s: float) -> None:
        self.pid = pid
        self.every_s = every_s
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self.stop.wait(self.every_s)

    def __enter__(self) -> PeakSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def measure(args: list[str], out: Path, every_s: float) -> dict[str, Any]:
    """Run ``fedbeat simulate ARGS --out OUT --json``; wall time, peak tree RSS, its result."""
    command = [sys.executable, "-m", "fedbeat", "simulate", *args, "--out", str(out), "--json"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    with PeakSampler(process.pid, every_s) as sampler:
        stdout, stderr_text = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise UsageError(f"the simulation failed (exit {process.returncode}):\n"
                         f"{stderr_text[-2000:]}")
    result = json.loads(stdout)
    rounds = [r for r in result["rounds"] if r.get("state") == "closed"]
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(sampler.peak / 2**20, 1),
            "rounds_closed": len(rounds), "rounds_per_min": round(len(rounds) / wall * 60, 2),
            "round_s": [r["seconds"] for r in result["rounds"]],
            "participants": [r["participants"] for r in result["rounds"]],
            "macro_f1": result["macro_f1"], "bytes_total": result["bytes_total"]}


@click.command()
@click.option("--devices", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--model", default="ecg-cnn-s", show_default=True)
@click.option("--workers", default=os.cpu_count() or 1, show_default="the core count",
              type=click.IntRange(1, 64), help="Device processes.")
@click.option("--partition", default="iid", show_default=True,
              type=click.Choice(["patient", "dirichlet", "iid"]))
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="MIT-BIH directory (default: simulated patients).")
@click.option("--sample-s", default=0.25, show_default=True, type=float,
              help="How often the memory of the process tree is sampled.")
@click.option("--json", "as_json", is_flag=True)
def simulate(devices: int, rounds: int, model: str, workers: int, partition: str,
             data_dir: Path | None, sample_s: float, as_json: bool) -> None:
    """Wall time, peak total RSS and rounds/min of one fleet simulation.

    \b
      fedbeat bench simulate --devices 1000 --rounds 5 --model ecg-cnn-s --json
      fedbeat bench simulate --devices 100 --rounds 20
    """
    args = ["--devices", str(devices), "--rounds", str(rounds), "--model", model,
            "--workers", str(workers), "--partition", partition]
    args += ["--data", str(data_dir)] if data_dir else ["--synthetic"]
    stderr.print(f"simulating {devices} devices x {rounds} rounds of {model} "
                 f"({workers} device processes)...")
    with tempfile.TemporaryDirectory(prefix="fedbeat-bench-sim-") as tmp:
        result = {"devices": devices, "rounds": rounds, "model": model, "workers": workers,
                  "partition": partition, "data": "mitdb" if data_dir else "synthetic",
                  "cpus": os.cpu_count(), **measure(args, Path(tmp) / "run", sample_s)}
    if as_json:
        emit_json(result)
        return
    stderr.print(f"{result['wall_s']} s wall, peak {result['peak_rss_mb']} MB RSS in total, "
                 f"{result['rounds_per_min']} rounds/min (rounds: {result['round_s']} s)")
