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
from fedbeat.tools.lazy_group import LazyGroup


class FedbeatGroup(LazyGroup):
    """The top-level group: user errors become one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from None


_COMMANDS = {name: f"fedbeat.tools.cli_{name}:{name}" for name in (
    "aggregator", "bench", "broker", "bundle", "data", "device", "evaluate", "keys", "model",
    "privacy", "simulate", "train")}


@click.group(cls=FedbeatGroup, lazy={**_COMMANDS, "experiment": "fedbeat.tools.cli:experiment"},
             context_settings={"help_option_names": ["-h", "--help"]})
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


@click.group(cls=LazyGroup, lazy={"robust": "fedbeat.tools.robust_experiment:robust",
                                  "ddg": "fedbeat.tools.ddg_experiment:ddg"})
def experiment() -> None:
    """Reproducible measurements on real data (their figures go in docs/results.md)."""


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="fedbeat", standalone_mode=True))
