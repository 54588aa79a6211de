"""``fedbeat data download`` and ``fedbeat data info``: get a PhysioNet database, describe one."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.table import Column, Table

from fedbeat.device.ecg.errors import RecordError
from fedbeat.device.ecg.mitdb import lead_preference
from fedbeat.device.ecg.records import (
    list_records,
    read_beat_annotations,
    read_header,
)
from fedbeat.models.spec import CLASSES
from fedbeat.tools.datasets import DATA_ENV
from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, stderr, stdout

DATABASES = ("mitdb", "incartdb", "svdb")
"""Beat-annotated PhysioNet databases the readers understand (reference annotator ``atr``)."""

DOWNLOAD_TIMEOUT_S = 10.0
"""How long ``download`` waits for PhysioNet to answer before calling the machine offline."""


@dataclass(frozen=True)
class RecordSummary:
    """What ``data info`` shows for one record."""

    record: str
    leads: tuple[str, ...]
    lead: str | None
    """The lead training reads by default (MLII, else V5), or None if the record has neither."""
    rate_hz: float
    samples: int | None
    duration_s: float | None
    beats: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"record": self.record, "leads": list(self.leads), "lead": self.lead,
                "fs": self.rate_hz, "samples": self.samples, "duration_s": self.duration_s,
                "beats": self.beats, "total": sum(self.beats.values())}


def summarize_record(directory: Path, record: str) -> RecordSummary:
    """Header, file sizes and annotations of one record (the samples are not decoded).

    Raises
    ------
    RecordError
        The record is missing files, truncated or malformed.
    """
    header = read_header(directory, record)
    beats = read_beat_annotations(directory, record).counts()
    lead = next((name for name in lead_preference() if name in header.leads), None)
    return RecordSummary(record, header.leads, lead, header.rate_hz, header.samples,
                         header.duration_s, beats)


@click.command()
@click.argument("directory", envvar=DATA_ENV, type=click.Path(exists=True, file_okay=False,
                                                                path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(directory: Path, as_json: bool) -> None:
    """Describe the records in DIRECTORY (default $FEDBEAT_DATA; a database or its parent).

    Lists each record's leads, the lead training reads, sampling rate, duration and beats per
    AAMI class, with totals. Headers, file sizes and annotations are checked; records that fail
    are listed with the reason, and the exit status is then 1.
    """
    root = _record_dir(directory)
    summaries: list[RecordSummary] = []
    errors: list[dict[str, str]] = []
    for record in list_records(root):
        try:
            summaries.append(summarize_record(root, record))
        except RecordError as exc:
            errors.append({"record": record, "error": str(exc)})
    if as_json:
        emit_json({"directory": str(root), "records": [s.to_json() for s in summaries],
                   "totals": _totals(summaries), "errors": errors})
    else:
        _print_table(root, summaries, errors)
    if errors:
        raise click.exceptions.Exit(1)


def _record_dir(directory: Path) -> Path:
    for candidate in (directory, directory / "mitdb"):
        if list_records(candidate):
            return candidate
    raise UsageError(f"{directory} holds no WFDB records (.hea/.atr files, here or in mitdb/); "
                     "get them with 'fedbeat data download mitdb --dir DIR'")


def _totals(summaries: list[RecordSummary]) -> dict[str, Any]:
    beats = {name: sum(s.beats[name] for s in summaries) for name in CLASSES}
    return {"records": len(summaries),
            "duration_s": sum(s.duration_s or 0.0 for s in summaries),
            "beats": beats, "total": sum(beats.values())}


def _print_table(root: Path, summaries: list[RecordSummary],
                 errors: list[dict[str, str]]) -> None:
    table = Table(*(Column(name, no_wrap=True) for name in ("record", "leads", "lead")),
                  title=str(root), box=None, pad_edge=False)
    for name in ("Hz", "length", *CLASSES, "total"):
        table.add_column(name, justify="right", no_wrap=True)
    for s in summaries:
        table.add_row(s.record, "/".join(s.leads), s.lead or "-", f"{s.rate_hz:g}",
                      _minutes(s.duration_s), *_counts(s.beats))
    totals = _totals(summaries)
    table.add_row(f"all {totals['records']}", "", "", "", _minutes(totals["duration_s"]),
                  *_counts(totals["beats"]), style="bold")
    stdout.print(table)
    for error in errors:
        stderr.print(f"[red]error[/]: {error['error']}", highlight=False)


def _counts(beats: dict[str, int]) -> list[str]:
    return [f"{beats[name]:,}" for name in CLASSES] + [f"{sum(beats.values()):,}"]


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@click.command()
@click.argument("database", type=click.Choice(DATABASES))
@click.option("--dir", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory to download the records into (created if needed).")
@click.option("--timeout", "timeout_s", default=DOWNLOAD_TIMEOUT_S, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for PhysioNet to answer before giving up.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def download(database: str, out_dir: Path, timeout_s: float, as_json: bool) -> None:
    """Download a PhysioNet DATABASE (needs internet access; mitdb is about 100 MB).

    Without internet access, copy the database from a machine that has it and point --data or
    $FEDBEAT_DATA at that directory instead.
    """
    wfdb = _wfdb()
    url = f"{wfdb.io.download.PN_CONTENT_URL.rstrip('/')}/{database}/"   # wfdb's first request
    problem = unreachable(url, timeout_s)
    if problem is not None:
        raise UsageError(_offline_message(database, f"no answer from {url}: {problem}"))
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):   # wfdb prints progress; stdout is JSON
            wfdb.dl_database(database, str(out_dir))
    except (OSError, ValueError) as exc:
        raise UsageError(_offline_message(database, f"download failed: {exc}")) from None
    result = {"database": database, "dir": str(out_dir), "records": len(list_records(out_dir)),
              "seconds": round(time.perf_counter() - started, 1)}
    if as_json:
        emit_json(result)
    else:
        stderr.print(f"[green]downloaded[/] {result['records']} records of {database} to "
                     f"{out_dir}; use them with --data {out_dir} or ${DATA_ENV}")


def unreachable(url: str, timeout_s: float) -> str | None:
    """Why ``url`` gives no good answer within ``timeout_s`` seconds, or None if it does.

    An HTTP error status counts as no answer: it is what a proxy or captive portal sends in
    the server's place. The request runs in a daemon thread so that a name lookup that hangs
    (which the socket timeout does not cover) cannot hold the command up either.
    """
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s):
                outcome.append(None)
        except urllib.error.HTTPError as exc:
            outcome.append(f"HTTP {exc.code} {exc.reason}")
        except (OSError, ValueError) as exc:
            outcome.append(str(getattr(exc, "reason", exc)))

    thread = threading.Thread(target=attempt, name="physionet-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"no answer within {timeout_s:g} s"


def _offline_message(database: str, problem: str) -> str:
    return (f"cannot download {database} ({problem}). Without internet access, copy the "
            f"database (.hea, .dat and .atr files) from a machine that has it and point "
            f"--data DIR or ${DATA_ENV} at that directory")


def _wfdb() -> Any:
    try:
        import wfdb
        import wfdb.io.download
    except ImportError:
        raise UsageError("downloading needs the wfdb package: "
                         "pip install 'fedbeat[data]'") from None
    return wfdb
