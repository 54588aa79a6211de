"""Many MQTT clients' network I/O on one thread.

paho's own loop (``loop_start``) gives every client a thread and watches its socket with
``select()``, which cannot see file descriptors above 1023. A device has one MQTT client, so that
is right for a device; a fleet simulation hosts hundreds of devices per process, each also
holding SQLite files open, and the 1024th descriptor silently breaks every later connection.
:class:`NetworkLoop` drives any number of paho clients through paho's documented external-loop
hooks (``on_socket_open/close/register_write/unregister_write``, ``loop_read/write/misc``) with
``selectors`` (epoll on Linux): one thread, no descriptor ceiling, and reconnects with backoff
like paho's loop would do.
"""

from __future__ import annotations

import contextlib
import logging
import random
import selectors
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger("fedbeat.broker.client")

MISC_EVERY_S = 1.0
"""How often each client's keepalive and retry bookkeeping runs (paho's loop does the same)."""


class NetworkLoop:
    """One thread serving the sockets of many :class:`paho.mqtt.client.Client` objects."""

    def __init__(self, name: str = "mqtt-network") -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._clients: dict[mqtt.Client, tuple[float, float]] = {}   # backoff min, max
        self._reconnect_at: dict[mqtt.Client, tuple[float, float]] = {}   # when, delay
        self._closing: set[mqtt.Client] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- clients -----------------------------------------------------------------------------

    def attach(self, client: mqtt.Client, *, reconnect_min_s: float,
               reconnect_max_s: float) -> None:
        """Serve ``client`` from now on; call before ``client.connect()``."""
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        with self._lock:
            self._clients[client] = (reconnect_min_s, reconnect_max_s)

    def detach(self, client: mqtt.Client) -> None:
        """Stop serving ``client`` (after ``client.disconnect()``); it is not reconnected."""
        with self._lock:
            self._clients.pop(client, None)
            self._reconnect_at.pop(client, None)
            self._closing.discard(client)
        sock = client.socket()
        if sock is not None:
            self._unregister(sock)

    def connection_lost(self, client: mqtt.Client) -> None:
        """Reconnect ``client`` after its backoff (called from its on_disconnect)."""
        with self._lock:
            if client not in self._clients:
                return
            low, high = self._clients[client]
            _, previous = self._reconnect_at.get(client, (0.0, 0.0))
            delay = min(high, max(low, previous * 2))
            # Jitter keeps a fleet that lost its broker from reconnecting in lockstep.
            self._reconnect_at[client] = (time.monotonic() + delay * random.uniform(0.5, 1.0),
                                          delay)
        self._wake()

    def connected(self, client: mqtt.Client) -> None:
        """``client`` is connected again: its next loss starts from the shortest backoff."""
        with self._lock:
            self._reconnect_at.pop(client, None)

    def close(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(10)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- paho's external-loop hooks (any thread) ---------------------------------------------

    def _on_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._set(sock, selectors.EVENT_READ, client)

    def _on_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._unregister(sock)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._set(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._set(sock, selectors.EVENT_READ, client)

    def _set(self, sock: Any, events: int, client: mqtt.Client) -> None:
        # epoll registration is safe from any thread; the selector's map is guarded here.
        with self._lock:
            try:
                self._selector.modify(sock, events, client)
            except KeyError:
                try:
                    self._selector.register(sock, events, client)
                except (ValueError, OSError):       # closed meanwhile: nothing to watch
                    return
            except (ValueError, OSError):
                return
        self._wake()

    def _unregister(self, sock: Any) -> None:
        with self._lock, contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(sock)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):          # already awake, or shutting down
            self._wake_w.send(b"\0")

    # -- the loop thread ---------------------------------------------------------------------

    def _run(self) -> None:
        next_misc = time.monotonic() + MISC_EVERY_S
        while not self._stop.is_set():
            try:
                events = self._selector.select(timeout=MISC_EVERY_S / 2)
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                raise
            for key, mask in events:
                if key.data is None:
                    self._drain_wake()
                    continue
                self._serve(key.data, mask)
            now = time.monotonic()
            if now >= next_misc:
                next_misc = now + MISC_EVERY_S
                with self._lock:
                    clients = list(self._clients)
                for client in clients:
                    client.loop_misc()
            self._reconnect_due(now)

    def _serve(self, client: mqtt.Client, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE:
                client.loop_write()
        except Exception:                   # one client's failure must not stop the others
            log.exception("network I/O of %s failed", client._client_id)

    def _reconnect_due(self, now: float) -> None:
        with self._lock:
            due = [c for c, (at, _) in self._reconnect_at.items() if at <= now]
            for client in due:
                _, delay = self._reconnect_at[client]
                self._reconnect_at[client] = (float("inf"), delay)   # until it answers
        for client in due:
            try:
                client.reconnect()
            except (OSError, ValueError) as exc:
                log.info("reconnecting %s failed (%s); retrying with backoff",
                         client._client_id, exc)
                self.connection_lost(client)

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):          # BlockingIOError: drained
            while self._wake_r.recv(4096):
                pass
