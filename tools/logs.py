"""Plumbing shared by the long-running services' commands (aggregator, device): logs as text
or one JSON object a line, stopping on signals, writing example configurations."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (never payloads or keys)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, *, as_json: bool) -> None:
    """Log to stderr (journald picks it up under systemd); quiet paho's own chatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if as_json else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("paho").setLevel(logging.WARNING)


def stop_on_signals(logger: str) -> threading.Event:
    """An event set by SIGTERM or Ctrl-C, so a service loop can finish its step and close
    cleanly (systemd stops services with SIGTERM)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger(logger).info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def write_example_config(text: str, out: Path | None) -> None:
    """What the ``init-config`` commands do: print ``text``, or write it to a new file."""
    if out is None:
        click.echo(text)
        return
    if out.exists():
        raise click.ClickException(f"{out} exists; remove it or choose another --out")
    out.write_text(text, encoding="utf-8")
    click.echo(f"wrote {out}", err=True)
