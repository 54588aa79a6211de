"""``fedbeat bench pipeline``: real-time factor of the device's streaming beat pipeline.

A record's lead is fed at its native rate, in device-like chunks, through
:class:`~fedbeat.device.ecg.stream.BeatStream` -- causal band-pass, QRS detection, beat windows
on the 180 Hz grid, amplitude normalisation and RR features -- and timed end to end. The same
signal is also run with the reference annotations as R peaks (no detector) and through the QRS
detector alone, so the detector's share of the time is measured, not guessed. The three
variants alternate within each repeat, so slow drift on a shared machine hits them alike; the
figures are medians over repeats. Everything runs in this one process and thread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from fedbeat.device.ecg.mitdb import lead_preference
from fedbeat.device.ecg.qrs import QrsDetector
from fedbeat.device.ecg.records import LeadSignal, read_beat_annotations, read_lead
from fedbeat.device.ecg.stream import BeatStream, KnownPeaks
from fedbeat.tools.datasets import DATA_ENV, find_mitdb
from fedbeat.tools.output import emit_json, stderr, stdout

VARIANTS = ("pipeline", "without_detector", "detector_only")
"""What is timed: the whole pipeline, the pipeline on annotation peaks, the QRS detector alone."""

WARMUP_S = 60.0
"""Seconds of signal run once through every variant before timing (imports, caches)."""


@dataclass(frozen=True)
class Timing:
    """One timed pass over the signal: wall-clock and CPU seconds, and what it produced."""

    wall_s: float
    cpu_s: float
    count: int
    """Beats emitted (R peaks for the detector alone)."""


def run_variant(variant: str, lead: LeadSignal, peaks: np.ndarray, chunk: int) -> Timing:
    """Feed ``lead`` in chunks of ``chunk`` samples through one variant; time it."""
    feed = _feeder(variant, lead.rate_hz, peaks)
    signal = lead.signal
    wall, cpu = time.perf_counter(), time.process_time()
    count = sum(feed(signal[start:start + chunk]) for start in range(0, signal.size, chunk))
    return Timing(time.perf_counter() - wall, time.process_time() - cpu, count)


def _feeder(variant: str, rate_hz: float, peaks: np.ndarray) -> Callable[[np.ndarray], int]:
    """A fresh consumer for ``variant``: takes a chunk, returns how many items it produced."""
    if variant == "detector_only":
        detector = QrsDetector(rate_hz)
        return lambda x: int(detector.process(x).size)
    source = KnownPeaks(peaks) if variant == "without_detector" else None
    stream = BeatStream(rate_hz, peaks=source)
    return lambda x: len(stream.push(x))


def measure(lead: LeadSignal, peaks: np.ndarray, chunk: int,
            repeats: int) -> dict[str, list[Timing]]:
    """Warm up, then time every variant ``repeats`` times, alternating their order."""
    warm = LeadSignal(lead.record, lead.lead, lead.rate_hz,
                      lead.signal[: round(WARMUP_S * lead.rate_hz)])
    for variant in VARIANTS:
        run_variant(variant, warm, peaks, chunk)
    timings: dict[str, list[Timing]] = {v: [] for v in VARIANTS}
    for repeat in range(repeats):
        order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            timings[variant].append(run_variant(variant, lead, peaks, chunk))
    return timings


def report(lead: LeadSignal, chunk_s: float, timings: dict[str, list[Timing]]) -> dict[str, Any]:
    """The JSON document: real-time factors (record seconds per wall-clock second) and counts."""
    seconds = lead.signal.size / lead.rate_hz
    wall = {v: statistics.median(t.wall_s for t in runs) for v, runs in timings.items()}
    cpu = {v: statistics.median(t.cpu_s for t in runs) for v, runs in timings.items()}
    return {
        "record": lead.record, "lead": lead.lead, "rate_hz": lead.rate_hz,
        "seconds": seconds, "chunk_s": chunk_s, "repeats": len(timings["pipeline"]),
        "realtime_factor": seconds / wall["pipeline"],
        "realtime_factor_without_detector": seconds / wall["without_detector"],
        "realtime_factor_detector_only": seconds / wall["detector_only"],
        "detector_share": wall["detector_only"] / wall["pipeline"],
        "beats": timings["pipeline"][0].count,
        "beats_without_detector": timings["without_detector"][0].count,
        "r_peaks_detected": timings["detector_only"][0].count,
        "wall_s": wall, "cpu_s": cpu,
    }


def _table(doc: dict[str, Any]) -> Table:
    table = Table("variant", "seconds", "real-time factor", "count",
                  title=f"record {doc['record']} ({doc['lead']}, {doc['rate_hz']:g} Hz, "
                        f"{doc['seconds']:.0f} s) in {doc['chunk_s']:g} s chunks")
    rows = (("pipeline (QRS detector)", "pipeline", "realtime_factor", "beats"),
            ("pipeline (annotation peaks)", "without_detector",
             "realtime_factor_without_detector", "beats_without_detector"),
            ("QRS detector alone", "detector_only", "realtime_factor_detector_only",
             "r_peaks_detected"))
    for name, variant, factor, count in rows:
        table.add_row(name, f"{doc['wall_s'][variant]:.3f}", f"{doc[factor]:,.0f}x",
                      f"{doc[count]:,}")
    return table


@click.command()
@click.option("--data", "data_dir", envvar=DATA_ENV, required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help=f"MIT-BIH directory or its parent (default ${DATA_ENV}).")
@click.option("--record", default="100", show_default=True, help="Record to stream.")
@click.option("--lead", default=None, help="Lead to read (default MLII, else V5).")
@click.option("--chunk-s", default=1.0, show_default=True,
              type=click.FloatRange(min=0.001, max=60.0), help="Seconds of signal per push.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1),
              help="Timed passes per variant; figures are medians.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def pipeline(data_dir: Path, record: str, lead: str | None, chunk_s: float, repeats: int,
             as_json: bool) -> None:
    """Real-time factor of the streaming beat pipeline on a whole record, on one core.

    The record's lead is pushed at its native rate in chunks of --chunk-s seconds through the
    device pipeline (filter, QRS detection, windows, RR features), then again with the
    reference annotations as R peaks, and through the QRS detector alone.
    """
    root = find_mitdb(data_dir)
    signal = read_lead(root, record, lead_preference(lead))
    peaks = read_beat_annotations(root, record).samples
    chunk = max(1, round(chunk_s * signal.rate_hz))
    stderr.print(f"streaming record {record} ({signal.signal.size / signal.rate_hz:.0f} s) "
                 f"{repeats} times per variant ...")
    doc = report(signal, chunk / signal.rate_hz, measure(signal, peaks, chunk, repeats))
    if as_json:
        emit_json(doc)
    else:
        stdout.print(_table(doc))
