"""Broker fixtures: a fleet's keys, a running Mosquitto (TLS + plaintext loopback), amqtt.

Reusable by any test under ``tests/broker`` (and by client/transport tests placed here):

* ``keys_dir`` — a fleet ``ward-7`` with devices ``dev-a`` and ``dev-b`` (session; read-only).
* ``make_keys(devices=..., revoked=...)`` — a fresh fleet in a temporary directory.
* ``mosquitto_tls`` — a :class:`MosquittoBroker` on ``keys_dir``: TLS with client certificates
  (``.tls_url``), TLS WebSockets (``.websocket_url``) and a plaintext loopback listener without
  authentication (``.insecure_url``) (session; do not restart it).
* ``start_mosquitto(keys_dir, **config)`` — a broker of one's own (stopped at teardown), for
  tests that restart or revoke.
* ``embedded_broker`` — amqtt on loopback (``.url``) (session).
* ``mqtt_connect(url, identity=...)`` — a connected :class:`Probe` (a recording paho client);
  ``identity`` is a device directory or the keys directory (for the aggregator).
* ``try_connect(url, identity=...)`` — ``"ok"`` or a short description of the failure.

Tests needing Mosquitto are skipped when the binary is absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mqtt_testing import (
    ConnectFailedError,
    Probe,
    build_fleet,
    connect,
    make_mosquitto,
    require_mosquitto,
)

from fedbeat.broker.embedded import EmbeddedBroker
from fedbeat.broker.mosquitto import MosquittoBroker


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fleet ``ward-7`` with ``dev-a`` and ``dev-b``; shared, so do not modify it."""
    return build_fleet(tmp_path_factory.mktemp("fleet") / "keys")


@pytest.fixture
def make_keys(tmp_path: Path) -> Callable[..., Path]:
    """``make_keys(devices=(...), revoked=(...), fleet=...)``: a fresh fleet directory."""
    counter = iter(range(1000))

    def make(**kwargs: Any) -> Path:
        return build_fleet(tmp_path / f"keys{next(counter)}", **kwargs)
    return make


@pytest.fixture(scope="session")
def mosquitto_tls(keys_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[MosquittoBroker]:
    """Mosquitto on ``keys_dir`` with TLS, TLS WebSockets and a plaintext loopback listener."""
    require_mosquitto()
    broker = make_mosquitto(keys_dir, tmp_path_factory.mktemp("mosquitto"))
    with broker:
        yield broker


@pytest.fixture
def start_mosquitto(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """``start_mosquitto(keys_dir, **MosquittoConfig fields)``: a started broker of one's own."""
    require_mosquitto()
    started: list[MosquittoBroker] = []

    def start(keys: Path, **overrides: Any) -> MosquittoBroker:
        broker = make_mosquitto(keys, tmp_path / f"mosquitto{len(started)}", **overrides)
        started.append(broker)
        return broker.start()
    yield start
    for broker in started:
        broker.stop()


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """amqtt on a free loopback port (plaintext MQTT 3.1.1, no authentication)."""
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture
def mqtt_connect() -> Iterator[Callable[..., Probe]]:
    """``mqtt_connect(url, identity=..., ...)``: a connected Probe, closed at teardown."""
    probes: list[Probe] = []

    def make(url: str, **kwargs: Any) -> Probe:
        probe = connect(url, **kwargs)
        probes.append(probe)
        return probe
    yield make
    for probe in probes:
        probe.close()


@pytest.fixture
def try_connect(mqtt_connect: Callable[..., Probe]) -> Callable[..., str]:
    """``try_connect(url, ...)`` → ``"ok"`` or why the connection failed."""
    def attempt(url: str, **kwargs: Any) -> str:
        try:
            mqtt_connect(url, **kwargs)
        except ConnectFailedError as exc:
            return str(exc)
        return "ok"
    return attempt
