"""``fedbeat bench``: side-by-side performance measurements."""

from __future__ import annotations

import click

from fedbeat.tools.lazy_group import LazyGroup

_BENCHMARKS = {
    "train": "fedbeat.tools.bench_train:train",
    "pipeline": "fedbeat.tools.bench_pipeline:pipeline",
    "transport": "fedbeat.tools.bench_transport:transport",
    "ingest": "fedbeat.tools.bench_ingest:ingest",
    "device": "fedbeat.tools.bench_device:device",
    "simulate": "fedbeat.tools.bench_simulate:simulate",
    "secagg": "fedbeat.tools.bench_secagg:secagg",
}


@click.group(cls=LazyGroup, lazy=_BENCHMARKS)
def bench() -> None:
    """Measure fedbeat against baselines, side by side in one run."""
