"""``fedbeat data``: ECG records, their contents, and QRS detection quality."""

from __future__ import annotations

import click


@click.group()
def data() -> None:
    """Download, inspect and check ECG databases (PhysioNet WFDB format)."""


def _register() -> None:
    from fedbeat.tools.data_qrs import qrs_eval
    from fedbeat.tools.data_records import download, info

    data.add_command(download)
    data.add_command(info)
    data.add_command(qrs_eval)


_register()
