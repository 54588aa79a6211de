"""The embedded broker: amqtt (pure Python, MQTT 3.1.1) on loopback, for local simulation.

NOT SECURE: no TLS, no client certificates, no ACLs, no persistence. Any local process can
read and publish every topic. It exists so that ``fedbeat simulate`` and tests run without
installing Mosquitto; fleets with real devices use :mod:`fedbeat.broker.mosquitto`.

:class:`EmbeddedBroker` runs amqtt in a child process (``python -m fedbeat.broker.embedded``):
its own interpreter and event loop, so a simulated fleet's clients and the broker do not share
a GIL, and stopping it cannot leave tasks behind in the caller's loop. :func:`serve` runs it in
the foreground (``fedbeat broker run --embedded``).

amqtt itself is imported only inside the child (or by :func:`serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import ipaddress
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedbeat.broker.launch import LOOPBACK, BrokerError, BrokerProcess, free_port

DEFAULT_PORT = 1883

WARNING = ("embedded broker (amqtt, MQTT 3.1.1): NO TLS, NO client certificates, NO ACLs, "
           "NO persistence - any local process can read and forge every message. "
           "For local simulation only; use Mosquitto for real devices.")


def _check_loopback(host: str) -> str:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise BrokerError(f"the embedded broker listens on loopback only, not {host!r} "
                          "(it has no authentication)")
    return host


def amqtt_config(host: str, port: int) -> dict[str, Any]:
    """The amqtt configuration: one TCP listener, anonymous clients, no chatty plugins."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                    {"allow_anonymous": True}},
    }


async def serve(host: str = LOOPBACK, port: int = DEFAULT_PORT,
                stop: asyncio.Event | None = None) -> None:
    """Run amqtt until ``stop`` is set, or until SIGINT/SIGTERM when ``stop`` is ``None``.

    Raises
    ------
    BrokerError
        amqtt is not installed, ``host`` is not a loopback address, or it cannot listen.
    """
    _check_loopback(host)
    try:
        from amqtt.broker import Broker
        from amqtt.errors import BrokerError as AmqttBrokerError
    except ImportError:
        raise BrokerError("the embedded broker needs amqtt: pip install amqtt") from None
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    broker = Broker(amqtt_config(host, port))
    try:
        await broker.start()
    except AmqttBrokerError as exc:
        raise BrokerError(f"embedded broker cannot listen on {host}:{port}: {exc}") from None
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


class EmbeddedBroker(BrokerProcess):
    """amqtt in a child process on loopback.

    >>> with EmbeddedBroker() as broker:     # port 0: pick a free one
    ...     broker.url                       # 'mqtt://127.0.0.1:PORT'

    Parameters
    ----------
    port
        TCP port; 0 picks a free one (kept across :meth:`restart`).
    host
        A loopback address.
    log_path
        The child's stderr (default: a temporary file).
    """

    name = "embedded broker"

    def __init__(self, port: int = 0, *, host: str = LOOPBACK, log_path: Path | None = None,
                 startup_timeout_s: float = 15.0) -> None:
        self.host = _check_loopback(host)
        self.port = port or free_port(host)
        if log_path is None:
            log_path = Path(tempfile.mkdtemp(prefix="fedbeat-amqtt-")) / "amqtt.log"
        super().__init__(log_path=log_path, startup_timeout_s=startup_timeout_s)

    def _prepare(self) -> None:
        if importlib.util.find_spec("amqtt") is None:
            raise BrokerError("the embedded broker needs amqtt: pip install 'fedbeat[sim]' "
                              "(or install Mosquitto, e.g. apt-get install mosquitto)")
        super()._prepare()

    def _argv(self) -> Sequence[str]:
        return [sys.executable, "-m", "fedbeat.broker.embedded",
                "--host", self.host, "--port", str(self.port)]

    def _probe_ports(self) -> Sequence[tuple[str, int]]:
        return [(self.host, self.port)]

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT``: plaintext MQTT 3.1.1, no authentication."""
        return f"mqtt://{self.host}:{self.port}"


def main(argv: list[str] | None = None) -> None:
    """``python -m fedbeat.broker.embedded --port N``: the child process."""
    parser = argparse.ArgumentParser(description=WARNING)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    print(f"fedbeat: {WARNING}", file=sys.stderr, flush=True)
    try:
        asyncio.run(serve(args.host, args.port))
    except BrokerError as exc:
        print(f"fedbeat: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
