"""Running a broker as a child process: start, readiness by connect probe, clean stop.

Shared by :class:`fedbeat.broker.mosquitto.MosquittoBroker` and
:class:`fedbeat.broker.embedded.EmbeddedBroker`. Readiness means every listener accepts a TCP
connection (the broker binds all listeners before it serves, so a client connecting afterwards
is served); if the process exits first, :class:`BrokerError` carries the end of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

LOOPBACK = "127.0.0.1"


class BrokerError(Exception):
    """A broker could not be configured, started or stopped; the message says why."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, *, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file (empty if it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class BrokerProcess:
    """A broker child process with a log file; subclasses say how to launch it.

    Use as a context manager (``with broker: ...``) or call :meth:`start` / :meth:`stop`.
    """

    name = "broker"

    def __init__(self, *, log_path: Path | None, startup_timeout_s: float = 15.0) -> None:
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- what subclasses provide -------------------------------------------------------------
    def _argv(self) -> Sequence[str]:
        raise NotImplementedError

    def _probe_ports(self) -> Sequence[tuple[str, int]]:
        """(host, port) of every listener that must accept connections before we are ready."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write configuration before each start (default: nothing)."""

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        """Start the process and wait until every listener accepts connections.

        Raises
        ------
        BrokerError
            The process exited during start-up or did not listen within
            ``startup_timeout_s``; the message includes the end of its log.
        """
        if self.running:
            return self
        self._prepare()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        out = self._log if self._log is not None else None
        try:
            self._proc = subprocess.Popen(list(self._argv()), stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=out)
        except OSError as exc:
            self._close_log()
            raise BrokerError(f"cannot start {self.name}: {exc.strerror}") from None
        deadline = time.monotonic() + self.startup_timeout_s
        pending = list(self._probe_ports())
        while pending:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                self._close_log()
                raise BrokerError(self._failure(f"exited with status {code} while starting"))
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(self._failure(
                    f"did not listen on {pending} within {self.startup_timeout_s:.0f} s"))
            if _accepts(*pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.02)
        return self

    def _failure(self, what: str) -> str:
        log = tail(self.log_path) if self.log_path is not None else ""
        where = f" (log: {self.log_path})" if self.log_path is not None else ""
        return f"{self.name} {what}{where}" + (f":\n{log}" if log else "")

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM (the broker saves its state), then SIGKILL after ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()

    def restart(self) -> Self:
        """Stop and start again on the same ports (persistent state survives)."""
        self.stop()
        return self.start()

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Block until the process exits (foreground use) and return its exit status, or
        ``None`` if it is still running after ``timeout_s``."""
        if self._proc is None:
            return 0
        try:
            code = self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        self._proc = None
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __del__(self) -> None:
        # Last resort: never leave an orphaned broker behind a crashed test or script.
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
