"""``fedbeat bench transport``: what the secure wire format and the broker cost.

Two measurements, each against a baseline taken in the same run so the figures survive a noisy
machine:

* **Crypto** — for an update of ``--params`` float32 parameters: *seal + sign* (CBOR encode,
  HPKE seal to the aggregator, Ed25519 sign) and *verify + open* (parse, verify, HPKE open,
  strict decode), against plain CBOR encode/decode of the same update. Throughput is parameter
  bytes per second; the ratio is what security costs over serialisation alone.
* **End to end** — ``--devices`` MQTT clients publish ``--updates`` sealed updates in all
  through a real broker on loopback (Mosquitto with TLS and client certificates when installed,
  otherwise the embedded broker, said in the output) to one aggregator client that verifies,
  opens and decodes each, as the aggregator service will. ``lost`` counts updates that never
  arrived; anything but 0 is a bug.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from fedbeat.broker import envelope
from fedbeat.broker.client import MqttClient, TlsFiles
from fedbeat.broker.embedded import EmbeddedBroker
from fedbeat.broker.envelope import Header, MessageType
from fedbeat.broker.errors import Rejected
from fedbeat.broker.identity import AggregatorIdentity, DeviceIdentity
from fedbeat.broker.launch import BrokerProcess, free_port
from fedbeat.broker.messages import (
    Receiver,
    Update,
    decode_update,
    encode_update,
    open_update,
    seal_update,
)
from fedbeat.broker.mosquitto import MosquittoBroker, MosquittoConfig, find_mosquitto
from fedbeat.broker.registry import DeviceRegistry, fleet_key_resolver
from fedbeat.broker.replay import ReplayGuard
from fedbeat.broker.topics import AGGREGATOR_ID, FleetTopics
from fedbeat.tools import pki
from fedbeat.tools.output import emit_json, progress_bar, stderr, stdout

FLEET = "bench"
MB = 1e6


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()                                                     # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_crypto(keys: Path, params: int, repeats: int) -> dict[str, Any]:
    """Seal+sign and verify+open of one update against CBOR encode/decode alone."""
    device = DeviceIdentity.load(keys / "devices" / "dev-0")
    aggregator = AggregatorIdentity.load(keys)
    update = Update(100, {"params": np.random.default_rng(0).normal(size=params)
                          .astype(np.float32)}, {"loss": 0.5})
    plain = encode_update(update)
    signing_key = device.signing_key.public_key()

    def seal() -> bytes:
        header = Header.new(MessageType.UPDATE, fleet=FLEET, sender="dev-0", round=1)
        return seal_update(header, update, signing_key=device.signing_key,
                           aggregator_key=device.aggregator_sealing_key)

    sealed = seal()

    def open_() -> Update:
        message = envelope.verify(sealed, lambda header: signing_key, 1 << 30)
        return open_update(message, aggregator.sealing_key, max_elements=params)

    nbytes = params * 4
    t = {name: _median_seconds(fn, repeats) for name, fn in (
        ("encode", lambda: encode_update(update)), ("seal", seal),
        ("decode", lambda: decode_update(plain, max_elements=params)), ("open", open_))}
    return {
        "params": params, "update_bytes": len(sealed), "plain_bytes": len(plain),
        "seal_mb_per_s": nbytes / t["seal"] / MB, "open_mb_per_s": nbytes / t["open"] / MB,
        "encode_only_mb_per_s": nbytes / t["encode"] / MB,
        "decode_only_mb_per_s": nbytes / t["decode"] / MB,
        "seal_over_encode": t["seal"] / t["encode"], "open_over_decode": t["open"] / t["decode"],
        "seconds": t,
    }


def _start_broker(keys: Path, work: Path, kind: str) -> tuple[BrokerProcess, str, bool]:
    """(broker, URL, tls) — Mosquitto over TLS if installed (or asked), else amqtt."""
    if kind == "mosquitto" or (kind == "auto" and find_mosquitto() is not None):
        broker = MosquittoBroker(MosquittoConfig(keys_dir=keys, data_dir=work / "mosquitto",
                                                 port=free_port(), bind="127.0.0.1"))
        broker.start()
        return broker, broker.tls_url, True
    embedded = EmbeddedBroker()
    embedded.start()
    return embedded, embedded.url, False


def measure_end_to_end(keys: Path, work: Path, *, params: int, updates: int, devices: int,
                       broker_kind: str, show_progress: bool) -> dict[str, Any]:
    """Devices publish sealed updates; one aggregator client verifies and opens every one."""
    broker, url, tls = _start_broker(keys, work, broker_kind)
    aggregator = AggregatorIdentity.load(keys)
    registry = DeviceRegistry.load(aggregator.registry_path)
    receiver = Receiver(FLEET, fleet_key_resolver(registry, aggregator.signing_key.public_key()),
                        replay=ReplayGuard())
    topics = FleetTopics(FLEET)
    received: set[bytes] = set()
    done = threading.Event()
    lock = threading.Lock()

    def on_update(topic: str, payload: bytes) -> None:
        try:
            message = receiver.receive(topic, payload)
        except Rejected:
            return
        if message is None:
            return
        open_update(message, aggregator.sealing_key, max_elements=params)
        with lock:
            received.add(message.header.nonce)
            if len(received) >= updates:
                done.set()

    def tls_for(ident: AggregatorIdentity | DeviceIdentity) -> TlsFiles | None:
        return TlsFiles(ident.ca_cert, ident.client_cert, ident.client_key) if tls else None

    try:
        agg_client = MqttClient(url, AGGREGATOR_ID, tls=tls_for(aggregator))
        agg_client.subscribe(topics.all_updates, on_update)
        identities = [DeviceIdentity.load(keys / "devices" / f"dev-{i}") for i in range(devices)]
        clients = [MqttClient(url, ident.device_id, tls=tls_for(ident)) for ident in identities]
        vector = {"params": np.random.default_rng(1).normal(size=params).astype(np.float32)}
        per_device = [updates // devices + (i < updates % devices) for i in range(devices)]
        sent_nonces: list[bytes] = []
        with progress_bar("updates through the broker", updates,
                          enabled=show_progress) as advance:
            start = time.perf_counter()

            def run_device(i: int) -> None:
                ident, client = identities[i], clients[i]
                for _ in range(per_device[i]):
                    header = Header.new(MessageType.UPDATE, fleet=FLEET,
                                        sender=ident.device_id, round=1)
                    data = seal_update(header, Update(10, vector), signing_key=ident.signing_key,
                                       aggregator_key=ident.aggregator_sealing_key)
                    client.publish_message(topics.update(ident.device_id), data)
                    with lock:
                        sent_nonces.append(header.nonce)
                        advance(len(received), updates)

            with ThreadPoolExecutor(devices) as pool:
                list(pool.map(run_device, range(devices)))
            done.wait(timeout=60 + updates * 0.5)
            elapsed = time.perf_counter() - start
        for client in clients:
            client.close()
        agg_client.close()
    finally:
        broker.stop()
    lost = len(set(sent_nonces) - received)
    return {"broker": "mosquitto-tls" if tls else "embedded", "protocol": agg_client.protocol,
            "devices": devices, "updates": updates, "received": len(received), "lost": lost,
            "e2e_updates_per_s": len(received) / elapsed,
            "e2e_mb_per_s": len(received) * params * 4 / elapsed / MB,
            "rejections": receiver.rejections.snapshot(), "seconds": elapsed}


def _table(doc: dict[str, Any]) -> Table:
    crypto, e2e = doc["crypto"], doc["end_to_end"]
    table = Table("measure", "MB/s", "baseline MB/s", "ratio",
                  title=f"{crypto['params']:,}-parameter update ({crypto['update_bytes']:,} "
                        "bytes sealed)")
    table.add_row("seal + sign", f"{crypto['seal_mb_per_s']:.0f}",
                  f"{crypto['encode_only_mb_per_s']:.0f} (CBOR encode)",
                  f"{crypto['seal_over_encode']:.2f}x time")
    table.add_row("verify + open", f"{crypto['open_mb_per_s']:.0f}",
                  f"{crypto['decode_only_mb_per_s']:.0f} (CBOR decode)",
                  f"{crypto['open_over_decode']:.2f}x time")
    table.add_row(f"end to end via {e2e['broker']} ({e2e['devices']} devices)",
                  f"{e2e['e2e_mb_per_s']:.1f}", f"{e2e['e2e_updates_per_s']:.1f} updates/s",
                  f"lost {e2e['lost']}")
    return table


@click.command()
@click.option("--params", default=100_000, show_default=True, type=click.IntRange(1, 50_000_000),
              help="Float32 parameters per update.")
@click.option("--updates", default=200, show_default=True, type=click.IntRange(1),
              help="Updates sent through the broker in the end-to-end test.")
@click.option("--devices", default=4, show_default=True, type=click.IntRange(1, 256),
              help="Device clients publishing concurrently.")
@click.option("--repeats", default=20, show_default=True, type=click.IntRange(1),
              help="Timed repeats of each crypto operation; figures are medians.")
@click.option("--broker", "broker_kind", default="auto", show_default=True,
              type=click.Choice(["auto", "mosquitto", "embedded"]),
              help="auto: Mosquitto with TLS if installed, else the embedded broker.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def transport(params: int, updates: int, devices: int, repeats: int, broker_kind: str,
              as_json: bool) -> None:
    """Seal/sign and verify/open throughput, and end-to-end updates/s through a real broker.

    Keys for a throw-away fleet are generated in a temporary directory. JSON keys include
    seal_mb_per_s, open_mb_per_s, e2e_updates_per_s and lost.
    """
    with tempfile.TemporaryDirectory(prefix="fedbeat-bench-") as tmp:
        work = Path(tmp)
        keys = work / "keys"
        pki.init_fleet(keys, FLEET)
        for i in range(devices):
            pki.add_device(keys, f"dev-{i}")
        stderr.print(f"crypto: {repeats} repeats of a {params:,}-parameter update ...")
        crypto = measure_crypto(keys, params, repeats)
        stderr.print(f"end to end: {updates} updates from {devices} devices ...")
        e2e = measure_end_to_end(keys, work, params=params, updates=updates, devices=devices,
                                 broker_kind=broker_kind, show_progress=not as_json)
    doc = {"crypto": crypto, "end_to_end": e2e, "seal_mb_per_s": crypto["seal_mb_per_s"],
           "open_mb_per_s": crypto["open_mb_per_s"],
           "e2e_updates_per_s": e2e["e2e_updates_per_s"], "lost": e2e["lost"]}
    if e2e["broker"] == "embedded":
        stderr.print("[yellow]Mosquitto not found: end-to-end figures are for the embedded "
                     "broker[/yellow]")
    if as_json:
        emit_json(doc)
    else:
        stdout.print(_table(doc))
