"""Mosquitto as fedbeat configures it: TLS client certificates, CRL, ACLs, listeners, limits.

Every check runs against a real broker with plain paho-mqtt clients, and every "refused" test
has a positive control beside it, so a broker that refuses everything cannot pass.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqtt_testing import FLEET, ConnectFailedError, Probe, make_mosquitto, require_mosquitto

from fedbeat.broker.launch import BrokerError, free_port
from fedbeat.broker.mosquitto import (
    BrokerLimits,
    MosquittoBroker,
    MosquittoConfig,
    render_config,
)
from fedbeat.tools import pki

T = f"fedbeat/{FLEET}"


def dev(keys: Path, device: str) -> Path:
    return keys / "devices" / device


# -- TLS and identity ----------------------------------------------------------------------------

def test_device_and_aggregator_connect_with_their_certificates(
        mosquitto_tls: MosquittoBroker, keys_dir: Path, try_connect: Callable[..., str]) -> None:
    assert try_connect(mosquitto_tls.tls_url, identity=dev(keys_dir, "dev-a")) == "ok"
    assert try_connect(mosquitto_tls.tls_url, identity=keys_dir) == "ok"


def test_certificate_from_another_ca_is_refused(
        mosquitto_tls: MosquittoBroker, keys_dir: Path, make_keys: Callable[..., Path],
        try_connect: Callable[..., str]) -> None:
    other = make_keys(devices=("dev-a",))  # same device id, another fleet CA
    # Trusting our broker's CA, but presenting a certificate signed by the other CA.
    outcome = try_connect(mosquitto_tls.tls_url, identity=dev(other, "dev-a"),
                          ca=keys_dir / "ca" / "ca.crt")
    assert outcome != "ok"
    assert try_connect(mosquitto_tls.websocket_url, identity=dev(other, "dev-a"),
                       ca=keys_dir / "ca" / "ca.crt") != "ok"
    # ...and a device of the other fleet does not trust our broker either.
    assert try_connect(mosquitto_tls.tls_url, identity=dev(other, "dev-a")) != "ok"


def test_client_without_certificate_is_refused(
        mosquitto_tls: MosquittoBroker, keys_dir: Path, try_connect: Callable[..., str]) -> None:
    assert try_connect(mosquitto_tls.tls_url, ca=keys_dir / "ca" / "ca.crt") != "ok"
    assert try_connect(mosquitto_tls.websocket_url, ca=keys_dir / "ca" / "ca.crt") != "ok"


def test_websocket_listener_uses_client_certificates_and_acls(
        acl_broker: MosquittoBroker, keys_dir: Path, mqtt_connect: Callable[..., Probe]
        ) -> None:
    assert acl_broker.websocket_url is not None
    agg = mqtt_connect(acl_broker.tls_url, identity=keys_dir)
    agg.subscribe(f"{T}/device/+/update")
    a_ws = mqtt_connect(acl_broker.websocket_url, identity=dev(keys_dir, "dev-a"))
    a_ws.publish(f"{T}/device/dev-b/update", b"forged over ws")   # CN dev-a: not allowed
    a_ws.publish(f"{T}/device/dev-a/update", b"own over ws")
    assert agg.get().payload == b"own over ws"
    assert agg.drain() == []


def test_revoked_device_is_cut_off_by_reload_and_refused_after_restart(
        make_keys: Callable[..., Path], start_mosquitto: Callable[..., MosquittoBroker],
        mqtt_connect: Callable[..., Probe], try_connect: Callable[..., str]) -> None:
    keys = make_keys()
    broker = start_mosquitto(keys)
    agg = mqtt_connect(broker.tls_url, identity=keys)
    agg.subscribe(f"{T}/device/+/update")
    b = mqtt_connect(broker.tls_url, identity=dev(keys, "dev-b"))
    b.subscribe(f"{T}/round")
    pki.revoke_device(keys, "dev-b")
    broker.reload()                    # ACLs: the open connection loses every topic
    b.publish(f"{T}/device/dev-b/update", b"after revocation")
    agg.publish(f"{T}/round", b"round 2")
    a = mqtt_connect(broker.tls_url, identity=dev(keys, "dev-a"))
    a.publish(f"{T}/device/dev-a/update", b"control")
    assert agg.get().payload == b"control"
    assert agg.drain() == []
    assert b.drain() == []
    broker.restart()                   # CRL: the TLS listener refuses the certificate
    assert try_connect(broker.tls_url, identity=dev(keys, "dev-b")) != "ok"
    assert try_connect(broker.tls_url, identity=dev(keys, "dev-a")) == "ok"


def test_revoked_device_gets_no_traffic_over_websockets(
        make_keys: Callable[..., Path], start_mosquitto: Callable[..., MosquittoBroker],
        mqtt_connect: Callable[..., Probe]) -> None:
    # Mosquitto 2.0's WebSocket listener ignores the CRL, so the ACL deny must hold there.
    keys = make_keys(revoked=("dev-b",))
    broker = start_mosquitto(keys)
    assert broker.websocket_url is not None
    agg = mqtt_connect(broker.tls_url, identity=keys)
    agg.subscribe(f"{T}/device/+/update")
    try:
        b = mqtt_connect(broker.websocket_url, identity=dev(keys, "dev-b"))
    except ConnectFailedError:
        return                         # a later Mosquitto that checks the CRL here: fine
    b.subscribe(f"{T}/round")
    b.publish(f"{T}/device/dev-b/update", b"revoked over ws")
    agg.publish(f"{T}/round", b"r", retain=True)
    a = mqtt_connect(broker.websocket_url, identity=dev(keys, "dev-a"))
    a.publish(f"{T}/device/dev-a/update", b"control")
    assert agg.get().payload == b"control"
    assert agg.drain() == []
    assert b.drain() == []


def test_device_added_while_running_connects_without_restart(
        make_keys: Callable[..., Path], start_mosquitto: Callable[..., MosquittoBroker],
        try_connect: Callable[..., str]) -> None:
    keys = make_keys(devices=("dev-a",))
    broker = start_mosquitto(keys)
    pki.add_device(keys, "dev-new")   # the ACLs are patterns on the CN: nothing to reload
    assert try_connect(broker.tls_url, identity=dev(keys, "dev-new")) == "ok"


# -- ACLs -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def acl_broker(keys_dir: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[MosquittoBroker]:
    """A broker of this module's own: no retained messages left by other test modules."""
    require_mosquitto()
    with make_mosquitto(keys_dir, tmp_path_factory.mktemp("acl-broker")) as broker:
        yield broker


@pytest.fixture
def fleet(acl_broker: MosquittoBroker, keys_dir: Path, mqtt_connect: Callable[..., Probe]
          ) -> dict[str, Probe]:
    url = acl_broker.tls_url
    return {"agg": mqtt_connect(url, identity=keys_dir),
            "a": mqtt_connect(url, identity=dev(keys_dir, "dev-a")),
            "b": mqtt_connect(url, identity=dev(keys_dir, "dev-b"))}


def test_device_cannot_publish_on_another_devices_update_topic(fleet: dict[str, Probe]) -> None:
    agg, a = fleet["agg"], fleet["a"]
    agg.subscribe(f"{T}/device/+/update")
    a.publish(f"{T}/device/dev-b/update", b"forged")
    a.publish(f"{T}/device/dev-a/update", b"genuine")        # control, same publisher
    assert agg.get().topic == f"{T}/device/dev-a/update"
    assert agg.drain() == []


def test_device_cannot_read_another_devices_update_or_inbox(fleet: dict[str, Probe]) -> None:
    agg, a, b = fleet["agg"], fleet["a"], fleet["b"]
    for topic in (f"{T}/device/dev-b/update", f"{T}/device/dev-b/inbox",
                  f"{T}/device/+/update", f"{T}/#"):
        a.subscribe(topic)   # Mosquitto 2.0 grants it; delivery is filtered per message
    b.subscribe(f"{T}/device/dev-b/inbox")
    agg.subscribe(f"{T}/device/+/update")
    b.publish(f"{T}/device/dev-b/update", b"b's sealed update")
    agg.publish(f"{T}/device/dev-b/inbox", b"for b only")
    assert agg.get().payload == b"b's sealed update"           # controls: the messages exist
    assert b.get().payload == b"for b only"
    assert a.drain() == []


def test_device_reads_public_topics_and_its_inbox_but_cannot_write_them(
        fleet: dict[str, Probe]) -> None:
    agg, a = fleet["agg"], fleet["a"]
    for topic in (f"{T}/round", f"{T}/model/#", f"{T}/aggregator/status",
                  f"{T}/device/dev-a/inbox"):
        a.subscribe(topic)                    # model/# also matches model itself
    agg.subscribe(f"{T}/#")
    for topic in (f"{T}/round", f"{T}/model", f"{T}/aggregator/status",
                  f"{T}/device/dev-a/inbox"):
        a.publish(topic, b"device forging " + topic.encode())
    agg.drain()
    assert [m for m in agg.drain(0.2) if m.payload.startswith(b"device forging")] == []
    sent = {f"{T}/round": b"r", f"{T}/model": b"m", f"{T}/model/chunk/0": b"c",
            f"{T}/aggregator/status": b"s", f"{T}/device/dev-a/inbox": b"i"}
    for topic, payload in sent.items():
        agg.publish(topic, payload)
    got = {m.topic: m.payload for m in (a.get() for _ in sent)}
    assert got == sent


def test_device_status_is_retained_and_read_by_the_aggregator_only(
        fleet: dict[str, Probe], acl_broker: MosquittoBroker, keys_dir: Path,
        mqtt_connect: Callable[..., Probe]) -> None:
    a, b = fleet["a"], fleet["b"]
    a.publish(f"{T}/device/dev-a/status", b"online", retain=True)
    b.subscribe(f"{T}/device/dev-a/status")
    late_agg = mqtt_connect(acl_broker.tls_url, identity=keys_dir)
    late_agg.subscribe(f"{T}/device/dev-a/status")
    got = late_agg.get()
    assert (got.topic, got.payload, got.retain) == (f"{T}/device/dev-a/status", b"online", True)
    assert b.drain() == []
    a.publish(f"{T}/device/dev-a/status", b"", retain=True)   # clear for other tests


def test_aggregator_reads_every_update_also_through_a_shared_subscription(
        fleet: dict[str, Probe]) -> None:
    agg, a, b = fleet["agg"], fleet["a"], fleet["b"]
    assert agg.subscribe(f"$share/workers/{T}/device/+/update") == [1]
    a.publish(f"{T}/device/dev-a/update", b"from a")
    b.publish(f"{T}/device/dev-b/update", b"from b")
    assert {agg.get().payload, agg.get().payload} == {b"from a", b"from b"}


def test_acl_is_scoped_to_the_fleet(fleet: dict[str, Probe]) -> None:
    agg, a = fleet["agg"], fleet["a"]
    agg.subscribe("fedbeat/other-fleet/#")
    a.subscribe("fedbeat/other-fleet/round")
    a.publish("fedbeat/other-fleet/device/dev-a/update", b"x")
    agg.publish("fedbeat/other-fleet/round", b"y")
    assert agg.drain() == []
    assert a.drain() == []


def test_insecure_loopback_listener_needs_no_certificate(
        acl_broker: MosquittoBroker, mqtt_connect: Callable[..., Probe]) -> None:
    assert acl_broker.insecure_url is not None
    sub = mqtt_connect(acl_broker.insecure_url)
    pub = mqtt_connect(acl_broker.insecure_url)
    sub.subscribe("dev/test")
    pub.publish("dev/test", b"plain")
    assert sub.get().payload == b"plain"


# -- limits, persistence, configuration --------------------------------------------------------

def test_oversized_packet_disconnects_the_sender(
        make_keys: Callable[..., Path], start_mosquitto: Callable[..., MosquittoBroker],
        mqtt_connect: Callable[..., Probe]) -> None:
    keys = make_keys(devices=("dev-a",))
    broker = start_mosquitto(keys, limits=BrokerLimits(max_packet_bytes=64 * 1024))
    agg = mqtt_connect(broker.tls_url, identity=keys)
    agg.subscribe(f"{T}/device/+/update")
    # The broker disconnects the sender: loud, not a silent drop. (MQTT 5 clients are told the
    # limit in CONNACK, but paho 2.2 does not enforce it locally, so both versions get here.)
    for protocol in (mqtt.MQTTv311, mqtt.MQTTv5):
        a = mqtt_connect(broker.tls_url, identity=dev(keys, "dev-a"), protocol=protocol)
        a.publish(f"{T}/device/dev-a/update", b"x" * 60_000)
        assert len(agg.get().payload) == 60_000
        a.client.publish(f"{T}/device/dev-a/update", b"x" * 70_000, qos=1)
        deadline = time.monotonic() + 5
        while a.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not a.client.is_connected()
    assert agg.drain(0.5) == []


def test_queued_qos1_messages_survive_a_broker_restart(
        make_keys: Callable[..., Path], start_mosquitto: Callable[..., MosquittoBroker],
        mqtt_connect: Callable[..., Probe]) -> None:
    keys = make_keys(devices=("dev-a",))
    broker = start_mosquitto(keys)
    agg = mqtt_connect(broker.tls_url, identity=keys, client_id="agg-1", clean_start=False)
    agg.subscribe(f"{T}/device/+/update")
    agg.close()                                     # offline, session kept
    a = mqtt_connect(broker.tls_url, identity=dev(keys, "dev-a"))
    a.publish(f"{T}/device/dev-a/update", b"queued while the aggregator was away")
    a.close()
    broker.restart()
    agg = mqtt_connect(broker.tls_url, identity=keys, client_id="agg-1", clean_start=False)
    assert agg.get().payload == b"queued while the aggregator was away"


def test_config_has_the_documented_settings(keys_dir: Path, tmp_path: Path) -> None:
    files = render_config(MosquittoConfig(keys_dir, tmp_path, port=8883, websocket_port=443))
    conf, acl = files["mosquitto.conf"], files["acl"]
    for line in ("require_certificate true", "use_identity_as_username true",
                 "allow_anonymous false", "persistence true", "max_packet_size 262144",
                 "max_queued_messages 10000", "listener 8883", "listener 443",
                 "protocol websockets", f"crlfile {(keys_dir / 'ca' / 'crl.pem').resolve()}"):
        assert line in conf, line
    assert "message_size_limit" not in conf.replace("# - max_packet", "").split(
        "deliberately NOT used")[1].split("\n", 1)[1]
    assert "127.0.0.1" not in conf   # no plaintext listener unless asked
    assert f"pattern write fedbeat/{FLEET}/device/%u/update" in acl
    assert f"user aggregator\ntopic readwrite fedbeat/{FLEET}/#" in acl


def test_start_failure_reports_the_log(keys_dir: Path, tmp_path: Path) -> None:
    if shutil.which("true") is None:
        pytest.skip("needs /bin/true")
    busy = free_port()
    config = MosquittoConfig(keys_dir, tmp_path, port=busy, bind="127.0.0.1")
    broker = MosquittoBroker(config, executable="/bin/false")
    with pytest.raises(BrokerError, match="exited with status 1"):
        broker.start()
