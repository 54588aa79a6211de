"""Many MQTT clients on one shared network thread (the fleet simulation's hosting model)."""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedbeat.broker.client import ClientOptions, MqttClient
from fedbeat.broker.mosquitto import MosquittoBroker
from fedbeat.broker.netloop import NetworkLoop

TIMEOUT_S = 15.0


@pytest.fixture
def network() -> Iterator[NetworkLoop]:
    loop = NetworkLoop()
    yield loop
    loop.close()


def _inbox(client: MqttClient, topic: str) -> queue.Queue[bytes]:
    received: queue.Queue[bytes] = queue.Queue()
    client.subscribe(topic, lambda t, payload: received.put(payload))
    return received


def test_forty_clients_share_one_thread_and_all_deliver(mosquitto_tls: MosquittoBroker,
                                                        network: NetworkLoop) -> None:
    url = mosquitto_tls.insecure_url
    assert url is not None
    threads_before = threading.active_count()
    clients = [MqttClient(url, f"netloop-{i}", network=network,
                          options=ClientOptions(clean_start=True)) for i in range(40)]
    try:
        assert threading.active_count() == threads_before     # no thread per client
        listener = MqttClient(url, "netloop-listener", network=network,
                              options=ClientOptions(clean_start=True))
        inbox = _inbox(listener, "netloop/+/hello")
        for i, client in enumerate(clients):
            client.publish(f"netloop/{i}/hello", f"hi {i}".encode())   # waits for PUBACK
        got = {inbox.get(timeout=TIMEOUT_S) for _ in clients}
        assert got == {f"hi {i}".encode() for i in range(len(clients))}
        listener.close()
    finally:
        for client in clients:
            client.close()


@contextlib.contextmanager
def _descriptors_taken(count: int) -> Iterator[None]:
    """Hold ``count`` descriptors open so that new sockets get numbers above 1023."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the descriptor limit ({hard}) is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_sockets_above_descriptor_1023_work(mosquitto_tls: MosquittoBroker,
                                            network: NetworkLoop) -> None:
    # paho's own loop uses select(), which cannot watch descriptors >= 1024: a process hosting
    # hundreds of devices (each with SQLite files open) gets there.
    url = mosquitto_tls.insecure_url
    assert url is not None
    with _descriptors_taken(1100):
        client = MqttClient(url, "netloop-high-fd", network=network,
                            options=ClientOptions(clean_start=True))
        try:
            sock = client._client.socket()
            assert sock is not None
            assert sock.fileno() >= 1024
            inbox = _inbox(client, "netloop/high")
            client.publish("netloop/high", b"above select's limit")
            assert inbox.get(timeout=TIMEOUT_S) == b"above select's limit"
        finally:
            client.close()


def test_a_shared_loop_reconnects_after_a_broker_restart(
        start_mosquitto: Callable[..., MosquittoBroker], make_keys: Callable[..., Path],
        network: NetworkLoop) -> None:
    broker = start_mosquitto(make_keys())
    url = broker.insecure_url
    assert url is not None
    fast = ClientOptions(reconnect_min_s=0.2, reconnect_max_s=1.0)
    listener = MqttClient(url, "netloop-listener", network=network, options=fast)
    inbox = _inbox(listener, "netloop/after")
    sender = MqttClient(url, "netloop-sender", network=network, options=fast)
    broker.restart()
    assert sender.wait_connected(TIMEOUT_S)
    assert listener.wait_connected(TIMEOUT_S)
    sender.publish("netloop/after", b"after the restart")
    assert inbox.get(timeout=TIMEOUT_S) == b"after the restart"
    sender.close()
    listener.close()
    assert not sender.connected
