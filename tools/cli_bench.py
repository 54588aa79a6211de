"""``fedbeat bench``: side-by-side performance measurements."""

from __future__ import annotations

import click


@click.group()
def bench() -> None:
    """Measure fedbeat against baselines, side by side in one run."""


def _register() -> None:
    from fedbeat.tools.bench_device import device
    from fedbeat.tools.bench_ingest import ingest
    from fedbeat.tools.bench_pipeline import pipeline
    from fedbeat.tools.bench_train import train
    from fedbeat.tools.bench_transport import transport

    bench.add_command(train)
    bench.add_command(pipeline)
    bench.add_command(transport)
    bench.add_command(ingest)
    bench.add_command(device)


_register()
