"""The ``fedbeat`` command line: one entry point for every role.

Command groups appear here as they are built (``data``, ``model``, ``train``, ``evaluate``,
``bench``, ``experiment``, ``keys``, ``broker``, ``aggregator`` and ``device`` today;
``simulate`` and ``bundle`` as their issues land).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from fedbeat import __version__
from fedbeat.tools.errors import USER_ERRORS


class FedbeatGroup(click.Group):
    """A click group that shows user errors as one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=FedbeatGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fedbeat")
def cli() -> None:
    """Privacy-preserving federated learning for ECG arrhythmia detection.

    \b
    Typical first steps:
      fedbeat model build --model ecg-cnn-s --out models/ecg-cnn-s
      fedbeat model train models/ecg-cnn-s        # synthetic data unless --data
      fedbeat data info $FEDBEAT_DATA             # what an MIT-BIH copy holds
      fedbeat train --model ecg-cnn-s --out runs/baseline --data $FEDBEAT_DATA
      fedbeat bench train --model ecg-cnn-m --json
      fedbeat keys init --dir keys --fleet ward-7 && fedbeat keys add-device dev-001 --dir keys
      fedbeat broker run --keys keys
    """


@click.group()
def experiment() -> None:
    """Reproducible measurements on real data (their figures go in docs/results.md)."""


def _register() -> None:
    from fedbeat.tools.cli_aggregator import aggregator
    from fedbeat.tools.cli_bench import bench
    from fedbeat.tools.cli_broker import broker
    from fedbeat.tools.cli_bundle import bundle
    from fedbeat.tools.cli_data import data
    from fedbeat.tools.cli_device import device
    from fedbeat.tools.cli_evaluate import evaluate
    from fedbeat.tools.cli_keys import keys
    from fedbeat.tools.cli_model import model
    from fedbeat.tools.cli_privacy import privacy
    from fedbeat.tools.cli_train import train
    from fedbeat.tools.robust_experiment import robust

    cli.add_command(aggregator)
    cli.add_command(data)
    cli.add_command(device)
    cli.add_command(model)
    cli.add_command(train)
    cli.add_command(evaluate)
    cli.add_command(bench)
    cli.add_command(keys)
    cli.add_command(broker)
    cli.add_command(bundle)
    cli.add_command(privacy)
    experiment.add_command(robust)
    cli.add_command(experiment)


_register()


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="fedbeat", standalone_mode=True))
