"""MQTT test helpers shared by the broker and transport tests: a recording paho client.

Imported as ``mqtt_testing`` (``tests`` is on ``pythonpath``); the fixtures that use it live in
``tests/broker/conftest.py``.
"""

from __future__ import annotations

import queue
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fedbeat.broker.identity import CLIENT_CERT, CLIENT_KEY, KeyLayout
from fedbeat.broker.launch import free_port
from fedbeat.broker.mosquitto import MosquittoBroker, MosquittoConfig, find_mosquitto
from fedbeat.tools import pki

FLEET = "ward-7"
MOSQUITTO_MISSING = "install mosquitto (apt-get install mosquitto)"
TIMEOUT_S = 5.0


def require_mosquitto() -> None:
    """Skip the calling test or fixture when Mosquitto is not installed."""
    if find_mosquitto() is None:
        pytest.skip(MOSQUITTO_MISSING)


def make_mosquitto(keys: Path, data_dir: Path, **overrides: Any) -> MosquittoBroker:
    """A (not yet started) broker on loopback with TLS, TLS WebSockets and a plaintext
    listener, each on a free port; ``overrides`` replace :class:`MosquittoConfig` fields."""
    options: dict[str, Any] = {"port": free_port(), "bind": "127.0.0.1",
                               "websocket_port": free_port(),
                               "insecure_loopback_port": free_port()}
    options.update(overrides)
    return MosquittoBroker(MosquittoConfig(keys_dir=keys, data_dir=data_dir, **options))


def build_fleet(root: Path, *, devices: tuple[str, ...] = ("dev-a", "dev-b"),
                revoked: tuple[str, ...] = (), fleet: str = FLEET) -> Path:
    """A fleet key directory at ``root`` with ``devices`` registered and ``revoked`` revoked."""
    pki.init_fleet(root, fleet)
    for device in devices:
        pki.add_device(root, device)
    for device in revoked:
        pki.revoke_device(root, device)
    return root

@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class Probe:
    """A connected paho client that records what it receives (for assertions)."""

    client: mqtt.Client
    name: str
    messages: queue.Queue[Received] = field(default_factory=queue.Queue)
    subacks: queue.Queue[list[ReasonCode]] = field(default_factory=queue.Queue)

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        """Subscribe and wait for SUBACK; returns the granted QoS / reason code values."""
        result, _ = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        codes = self.subacks.get(timeout=TIMEOUT_S)
        return [c.value for c in codes]

    def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False) -> None:
        """Publish and wait until the broker acknowledged it (QoS 1) or it was sent (QoS 0)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=TIMEOUT_S)
        assert info.is_published(), f"{self.name}: publish to {topic} not acknowledged"

    def get(self, timeout_s: float = TIMEOUT_S) -> Received:
        return self.messages.get(timeout=timeout_s)

    def drain(self, wait_s: float = 0.3) -> list[Received]:
        """Everything received so far, after waiting ``wait_s`` for stragglers."""
        time.sleep(wait_s)
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _identity_files(identity: Path) -> tuple[Path, Path, Path]:
    """(ca, cert, key) of a device directory or of a keys directory's aggregator."""
    layout = KeyLayout(identity)
    if layout.fleet_file.exists():
        return layout.ca_cert, layout.aggregator_dir / CLIENT_CERT, \
            layout.aggregator_dir / CLIENT_KEY
    return identity / "ca.crt", identity / CLIENT_CERT, identity / CLIENT_KEY


class ConnectFailedError(Exception):
    """The client could not connect: TLS refused, CONNACK refused, or no answer."""


def connect(url: str, *, identity: Path | None = None, ca: Path | None = None,
            client_id: str | None = None, protocol: int = mqtt.MQTTv5,
            clean_start: bool = True) -> Probe:
    """Connect a paho client to ``url`` (mqtt://, mqtts://, wss://); raises ConnectFailedError."""
    parts = urlsplit(url)
    name = client_id or f"probe-{uuid.uuid4().hex[:8]}"
    transport = "websockets" if parts.scheme in ("ws", "wss") else "tcp"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol,
                         transport=transport,
                         clean_session=clean_start if protocol != mqtt.MQTTv5 else None)
    if transport == "websockets":
        client.ws_set_options(path=parts.path or "/mqtt")
    if parts.scheme in ("mqtts", "wss"):
        ca_file = ca
        cert = key = None
        if identity is not None:
            id_ca, cert, key = _identity_files(identity)
            ca_file = ca_file or id_ca
        client.tls_set(ca_certs=str(ca_file) if ca_file else None,
                       certfile=str(cert) if cert else None, keyfile=str(key) if key else None)
    probe = Probe(client, name)
    connected = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        outcome["rc"] = rc
        connected.set()

    def on_disconnect(c: mqtt.Client, u: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        outcome.setdefault("rc", rc)
        connected.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = lambda c, u, m: probe.messages.put(
        Received(m.topic, bytes(m.payload), bool(m.retain)))
    client.on_subscribe = lambda c, u, mid, codes, props: probe.subacks.put(codes)
    kwargs: dict[str, Any] = {}
    if protocol == mqtt.MQTTv5:
        kwargs["clean_start"] = clean_start
        if not clean_start:   # MQTT 5 ends a session at disconnect unless told otherwise
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            kwargs["properties"] = props
    try:
        client.connect(parts.hostname or "localhost", parts.port or 1883, keepalive=30,
                       **kwargs)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectFailedError(f"{type(exc).__name__}: {exc}") from None
    client.loop_start()
    if not connected.wait(TIMEOUT_S):
        client.loop_stop()
        raise ConnectFailedError("no CONNACK")
    rc = outcome["rc"]
    if not client.is_connected() or rc.is_failure:
        client.loop_stop()
        raise ConnectFailedError(f"refused: {rc}")
    return probe
