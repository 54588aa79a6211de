"""One small MQTT client over paho-mqtt 2.x, used by devices, the aggregator and the simulator.

What it adds to paho, and why:

* **URLs** — ``mqtt://``, ``mqtts://``, ``ws://``, ``wss://`` (hospital networks often allow
  only 443), so every role is configured the same way.
* **Protocol negotiation** — MQTT 5 where the broker speaks it (session expiry, message expiry,
  the broker's maximum packet size, shared subscriptions), else MQTT 3.1.1 (the embedded
  broker). Nothing in fedbeat *needs* MQTT 5: all metadata lives in the signed envelope.
* **Persistent sessions** — a fixed client id with ``clean_start=False`` (3.1.1:
  ``clean_session=False``), so QoS 1 messages published while a subscriber was away are
  delivered when it returns; subscriptions are renewed whenever the broker lost the session.
* **Reconnect with exponential backoff** (paho's loop thread, 1 s doubling to 60 s).
* **Flow control** — :meth:`MqttClient.publish` returns only when the broker acknowledged the
  message (QoS 1 PUBACK), and at most ``max_inflight`` messages are unacknowledged, so a
  publisher can never run ahead of the broker. Handlers run on the network thread and the PUBACK
  to the broker is sent only after the handler returns, so a slow receiver slows its broker
  queue down instead of having messages dropped in its own process; the broker's queue limits
  (``broker/mosquitto.py``) are sized so the broker does not drop them either.
* **Chunking** — :meth:`MqttClient.publish_message` splits a message that exceeds the chunk
  limit (and the broker's advertised maximum packet size) with :mod:`fedbeat.broker.chunks`.

Receivers must be idempotent: QoS 1 means *at least* once. The receive path
(:class:`fedbeat.broker.messages.Receiver`) refuses duplicates by nonce.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fedbeat.broker.chunks import DEFAULT_CHUNK_LIMIT, split
from fedbeat.broker.netloop import NetworkLoop

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
"""Called with (topic, payload) for every message on a subscribed filter."""


@dataclass(frozen=True)
class Delivery:
    """A received message whose QoS 1 acknowledgement is the receiver's to send.

    With ``manual_ack`` the broker gets the PUBACK only when :meth:`ack` is called, e.g. after
    the message was committed to a database: a crash before that makes the broker deliver it
    again, and the broker sends no more than its in-flight window of unacknowledged messages,
    which bounds what a receiver can have queued in memory.
    """

    topic: str
    payload: bytes
    mid: int
    qos: int
    _client: mqtt.Client = field(repr=False)

    def ack(self) -> None:
        if self.qos > 0:
            self._client.ack(self.mid, self.qos)


AckHandler = Callable[[Delivery], None]
"""Called with each :class:`Delivery` when the client was made with ``manual_ack=True``."""

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}
_MQTT5_PACKET_HEADROOM = 512      # topic, properties and fixed header around a payload
CLOSE_WAIT_S = 2.0               # a shared network loop gets this long to send DISCONNECT
MAX_UNCLAIMED = 10_000            # messages held for a handler not yet registered


class BrokerConnectionError(Exception):
    """The broker could not be reached or refused us; the message says what to check."""


@dataclass(frozen=True)
class BrokerUrl:
    """Where a broker listens: ``scheme://host:port[/path]``."""

    scheme: str
    host: str
    port: int
    path: str = "/mqtt"

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"broker URL {url!r} must look like mqtt://HOST:PORT "
                             "(schemes: mqtt, mqtts, ws, wss)")
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise ValueError(f"broker URL {url!r} has an invalid port") from None
        return cls(parts.scheme, parts.hostname, port, parts.path or "/mqtt")

    @property
    def tls(self) -> bool:
        return self.scheme in ("mqtts", "wss")

    @property
    def websocket(self) -> bool:
        return self.scheme in ("ws", "wss")

    def __str__(self) -> str:
        path = self.path if self.websocket else ""
        return f"{self.scheme}://{self.host}:{self.port}{path}"


@dataclass(frozen=True)
class TlsFiles:
    """The fleet CA (to check the broker) and this client's certificate and key."""

    ca_cert: Path
    client_cert: Path | None = None
    client_key: Path | None = None


@dataclass(frozen=True)
class Will:
    """Last will: what the broker publishes for us if we vanish (device presence)."""

    topic: str
    payload: bytes
    retain: bool = True


@dataclass(frozen=True)
class ClientOptions:
    """Connection behaviour; the defaults suit a device on a flaky network."""

    protocol: str = "auto"                 # "auto", "5" or "3.1.1"
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600  # MQTT 5: how long the broker keeps our session
    max_inflight: int = 16
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    connect_timeout_s: float = 10.0
    # amqtt neither answers nor closes an MQTT 5 CONNECT that carries properties, so with
    # protocol "auto" silence for this long means "try 3.1.1" (a slow MQTT 5 broker then
    # simply gets 3.1.1, which loses nothing the protocol needs).
    mqtt5_probe_timeout_s: float = 3.0
    publish_timeout_s: float = 60.0
    chunk_limit: int = DEFAULT_CHUNK_LIMIT
    # Start without the broker's stored session (no queued messages, no old subscriptions):
    # for short-lived tools and tests. Devices and the aggregator keep their sessions.
    clean_start: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in ("auto", "5", "3.1.1"):
            raise ValueError(f"protocol must be auto, 5 or 3.1.1, got {self.protocol!r}")


class MqttClient:
    """A connected MQTT client; use as a context manager or call :meth:`close`."""

    def __init__(self, url: str, client_id: str, *, tls: TlsFiles | None = None,
                 will: Will | None = None, options: ClientOptions | None = None,
                 subscriptions: Mapping[str, Handler] | Mapping[str, AckHandler] | None = None,
                 manual_ack: bool = False, network: NetworkLoop | None = None) -> None:
        """``network``: serve this client from a shared :class:`NetworkLoop` thread instead
        of a thread of its own (a process hosting many clients)."""
        self.url = BrokerUrl.parse(url)
        if self.url.tls and tls is None:
            raise ValueError(f"{self.url.scheme} needs TLS files (the fleet CA at least)")
        self.client_id = client_id
        self.tls = tls
        self.will = will
        self.options = options or ClientOptions()
        # Handlers exist before the connection does: with a persistent session the broker
        # delivers what it queued for us right after CONNACK, before any subscribe() call.
        self.manual_ack = manual_ack
        self._handlers: dict[str, tuple[Any, int]] = {
            topic_filter: (handler, 1) for topic_filter, handler in (subscriptions or {}).items()}
        self._unclaimed: deque[Delivery] = deque(maxlen=MAX_UNCLAIMED)
        self._connected = threading.Event()
        self._answered = threading.Event()     # CONNACK or a closed socket, during connect
        self._connack: str | None = None
        self._lock = threading.Lock()
        self.max_packet_bytes: int | None = None
        self.bytes_published = 0          # payload bytes handed to the broker (for metrics)
        self.protocol = ""
        self.network = network
        self._closing = False
        self._client = self._connect_any()

    # -- connection ------------------------------------------------------------------------

    def _connect_any(self) -> mqtt.Client:
        if self.options.protocol in ("auto", "5"):
            try:
                return self._connect(MQTTProtocolVersion.MQTTv5)
            except BrokerConnectionError:
                if self.options.protocol == "5":
                    raise
                log.info("broker %s did not accept MQTT 5; using MQTT 3.1.1", self.url)
        return self._connect(MQTTProtocolVersion.MQTTv311)

    def _connect(self, protocol: MQTTProtocolVersion) -> mqtt.Client:
        v5 = protocol == MQTTProtocolVersion.MQTTv5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol,
            clean_session=None if v5 else self.options.clean_start,
            transport="websockets" if self.url.websocket else "tcp", manual_ack=self.manual_ack)
        if self.url.websocket:
            client.ws_set_options(path=self.url.path)
        if self.tls is not None and self.url.tls:
            client.tls_set_context(self._ssl_context())
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload, qos=1, retain=self.will.retain)
        client.max_inflight_messages_set(self.options.max_inflight)
        client.max_queued_messages_set(0)          # paho's own queue: unbounded, we pace
        client.reconnect_delay_set(int(self.options.reconnect_min_s),
                                   int(self.options.reconnect_max_s))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        properties = None
        if v5:
            properties = _properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = (0 if self.options.clean_start
                                                else self.options.session_expiry_s)
        self._connected.clear()
        self._answered.clear()
        self._connack = None
        if self.network is not None:
            self.network.attach(client, reconnect_min_s=self.options.reconnect_min_s,
                                reconnect_max_s=self.options.reconnect_max_s)
        try:
            client.connect(self.url.host, self.url.port, self.options.keepalive_s,
                           clean_start=(self.options.clean_start if v5
                                        else mqtt.MQTT_CLEAN_START_FIRST_ONLY),
                           properties=properties)
        except (OSError, ssl.SSLError) as exc:
            self._stop_network(client)
            raise BrokerConnectionError(self._explain(exc)) from None
        if self.network is None:
            client.loop_start()
        probing = v5 and self.options.protocol == "auto"
        self._answered.wait(self.options.mqtt5_probe_timeout_s if probing
                            else self.options.connect_timeout_s)
        if not self._connected.is_set():
            client.disconnect()
            self._stop_network(client)
            raise BrokerConnectionError(
                f"{self.url} refused {self.client_id!r}: {self._connack or 'no answer'}; "
                "check the client certificate, the broker's ACL and that it is a fleet broker")
        self.protocol = "5" if v5 else "3.1.1"
        return client

    def _stop_network(self, client: mqtt.Client) -> None:
        if self.network is None:
            client.loop_stop()
            return
        # Let the shared loop send DISCONNECT and close the socket (a clean close: no last
        # will), then stop serving the client.
        deadline = time.monotonic() + CLOSE_WAIT_S
        while client.socket() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        self.network.detach(client)

    def _explain(self, exc: BaseException) -> str:
        if isinstance(exc, ssl.SSLError):
            return (f"TLS with {self.url} failed ({exc.reason or exc}): is the broker's "
                    "certificate from this fleet's CA, and ours not revoked?")
        if isinstance(exc, ConnectionRefusedError):
            return (f"nothing listens at {self.url}: start the broker "
                    "(fedbeat broker run) or check the URL")
        return f"cannot reach {self.url}: {exc}"

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.tls is not None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                             cafile=str(self.tls.ca_cert))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls.client_cert is not None:
            context.load_cert_chain(str(self.tls.client_cert),
                                    str(self.tls.client_key) if self.tls.client_key else None)
        return context

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            self._connack = str(reason)
            client.disconnect()             # a refused client must not retry forever
            self._answered.set()
            return
        maximum = getattr(properties, "MaximumPacketSize", None) if properties else None
        self.max_packet_bytes = int(maximum) if maximum else None
        with self._lock:
            handlers = dict(self._handlers)
        if not flags.session_present:       # the broker forgot our subscriptions
            for topic_filter, (_, qos) in handlers.items():
                client.subscribe(topic_filter, qos=qos)
        self._connected.set()
        self._answered.set()
        if self.network is not None:
            self.network.connected(client)

    def _on_disconnect(self, client: mqtt.Client, userdata: object,
                       flags: mqtt.DisconnectFlags, reason: ReasonCode,
                       properties: Properties | None) -> None:
        self._connected.clear()
        if not self._answered.is_set():     # closed before any CONNACK: e.g. MQTT 5 refused
            self._connack = f"connection closed ({reason})"
            self._answered.set()
            return
        if self._closing:
            return
        if reason.is_failure:
            log.warning("lost %s (%s); reconnecting with backoff", self.url, reason)
        if self.network is not None:
            self.network.connection_lost(client)

    def _on_message(self, client: mqtt.Client, userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        delivery = Delivery(message.topic, bytes(message.payload), message.mid, message.qos,
                            client)
        with self._lock:
            matching = [(f, h) for f, (h, _) in self._handlers.items()
                        if mqtt.topic_matches_sub(_plain_filter(f), message.topic)]
            if not matching:
                # Queued for our session before the matching subscribe() call: keep it for
                # the handler that is about to be registered instead of dropping it.
                self._unclaimed.append(delivery)
                return
        for topic_filter, handler in matching:
            self._dispatch(topic_filter, handler, delivery)

    def _dispatch(self, topic_filter: str, handler: Any, delivery: Delivery) -> None:
        try:
            if self.manual_ack:
                handler(delivery)
            else:
                handler(delivery.topic, delivery.payload)
        except Exception:                   # a handler bug must not kill the network thread
            log.exception("handler for %s failed", topic_filter)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until (re)connected or ``timeout_s`` passed; True if connected."""
        return self._connected.wait(timeout_s)

    # -- messaging ---------------------------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: Handler | AckHandler, qos: int = 1) -> None:
        """Call ``handler`` for every message on ``topic_filter`` (kept across reconnects).

        ``handler`` takes (topic, payload), or a :class:`Delivery` with ``manual_ack``.
        """
        with self._lock:
            self._handlers[topic_filter] = (handler, qos)
            plain = _plain_filter(topic_filter)
            claimed = [d for d in self._unclaimed if mqtt.topic_matches_sub(plain, d.topic)]
            for delivery in claimed:
                self._unclaimed.remove(delivery)
        for delivery in claimed:
            self._dispatch(topic_filter, handler, delivery)
        result, _ = self._client.subscribe(topic_filter, qos=qos)
        if result not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BrokerConnectionError(f"subscribe to {topic_filter} failed: "
                                   f"{mqtt.error_string(result)}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                expiry_s: int | None = None, wait: bool = True) -> None:
        """Publish with QoS 1; with ``wait`` (default) return once the broker acknowledged it.

        While disconnected the message waits in paho's queue and goes out after reconnecting;
        ``expiry_s`` (MQTT 5 only) lets the broker discard it if nobody fetched it in time.
        """
        properties = None
        if expiry_s is not None and self.protocol == "5":
            properties = _properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = expiry_s
        info = self._client.publish(topic, payload, qos=1, retain=retain,
                                    properties=properties)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BrokerConnectionError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self.bytes_published += len(payload)
        if wait:
            try:
                info.wait_for_publish(self.options.publish_timeout_s)
            except (RuntimeError, ValueError) as exc:
                raise BrokerConnectionError(f"publish to {topic} failed: {exc}") from None
            if not info.is_published():
                raise BrokerConnectionError(f"{self.url} did not acknowledge a message on {topic} "
                                       f"within {self.options.publish_timeout_s:.0f} s")

    def chunk_limit(self) -> int:
        """Largest payload to publish whole: our limit, or less if the broker says so."""
        limit = self.options.chunk_limit
        if self.max_packet_bytes:
            limit = min(limit, self.max_packet_bytes - _MQTT5_PACKET_HEADROOM)
        return limit

    def publish_message(self, topic: str, message: bytes, *, retain: bool = False,
                        expiry_s: int | None = None) -> int:
        """Publish an encoded envelope, chunked when needed; returns the number of frames.

        Retained messages that need chunks are published as ``<topic>/<index>`` so that each
        chunk is kept by the broker (a topic retains only its last message).
        """
        frames = split(message, self.chunk_limit())
        for index, frame in enumerate(frames):
            target = f"{topic}/{index}" if retain and len(frames) > 1 else topic
            self.publish(target, frame, retain=retain, expiry_s=expiry_s)
        return len(frames)

    def close(self) -> None:
        """Disconnect cleanly (no last will) and stop the network thread."""
        self._closing = True
        self._client.disconnect()
        self._stop_network(self._client)

    def __enter__(self) -> MqttClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain_filter(topic_filter: str) -> str:
    """The filter a message's topic is matched against: ``$share/<group>/`` removed."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho ships no hints here
