"""A real aggregator process, a real Mosquitto, and scripted devices: the service test bench.

Imported as ``aggregator_harness`` (``tests`` is on ``pythonpath``). Devices here are real MQTT
clients with their own certificates and keys that react to signed round announcements; their
"training" is a deterministic delta drawn from (device, round), so two runs (one of them
killed and restarted) see exactly the same updates and must end with bit-identical models.
"""

from __future__ import annotations

import hashlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedbeat.aggregator.config import example_config
from fedbeat.broker.client import ClientOptions, MqttClient, TlsFiles
from fedbeat.broker.envelope import Header, MessageType
from fedbeat.broker.identity import DeviceIdentity
from fedbeat.broker.messages import Receiver, Update, open_plain, seal_update
from fedbeat.broker.rounds import Announcement, participates
from fedbeat.broker.topics import AGGREGATOR_ID, FleetTopics
from fedbeat.models.manifest import load_model_dir

TIMEOUT_S = 60.0


def write_config(path: Path, *, keys: Path, broker: str, model_dir: Path, state_dir: Path,
                 **settings: Any) -> Path:
    """An aggregator TOML with test-friendly timing; ``settings`` as ``section.key=value``."""
    overrides = {"fleet.keys": str(keys), "fleet.broker": broker, "model.dir": str(model_dir),
                 "fleet.state_dir": str(state_dir), "rounds.deadline_s": 30.0,
                 "rounds.min_participants": 2, "rounds.target_participants": 4}
    overrides.update({k.replace("__", "."): v for k, v in settings.items()})
    path.write_text(example_config(**overrides), encoding="utf-8")
    return path


_STARTED: list[AggregatorProcess] = []


def stop_all_aggregators() -> None:
    """Stop every aggregator a test started: one left running after a failed assertion would
    share the client id ``aggregator`` with the next test's and take its session over."""
    while _STARTED:
        _STARTED.pop().stop()


@dataclass
class AggregatorProcess:
    """``fedbeat aggregator run`` as a child process, its log kept for failures."""

    config: Path
    log: Path
    crash_at: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AggregatorProcess:
        env = dict(os.environ)
        env.pop("FEDBEAT_TEST_CRASH_AT", None)
        if self.crash_at:
            env["FEDBEAT_TEST_CRASH_AT"] = self.crash_at
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fedbeat", "aggregator", "run", "--config",
                 str(self.config)], stdout=out, stderr=out, env=env)
        _STARTED.append(self)
        return self

    def wait(self, timeout_s: float = TIMEOUT_S) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def scripted_delta(layout_entries: list[tuple[str, tuple[int, ...]]], device: str,
                   round_id: int, scale: float = 0.01) -> dict[str, np.ndarray]:
    """The same small delta for the same (device, round), on every run."""
    seed = int.from_bytes(hashlib.sha256(f"{device}/{round_id}".encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(shape) * scale).astype(np.float32)
            for name, shape in layout_entries}


@dataclass
class Device:
    """A device that answers each open round it is selected for with one scripted update."""

    url: str
    directory: Path
    model_dir: Path
    num_samples: int = 100
    answer_rounds: bool = True
    tamper: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    sent: dict[int, bytes] = field(default_factory=dict)
    receipts: queue.Queue[dict[Any, Any]] = field(default_factory=queue.Queue)
    announcements: queue.Queue[Announcement] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        self.identity = DeviceIdentity.load(self.directory)
        self.topics = FleetTopics(self.identity.fleet)
        self.layout = list(load_model_dir(self.model_dir).manifest.layout.entries)
        agg_key = self.identity.aggregator_signing_key
        self.receiver = Receiver(self.identity.fleet, lambda header: agg_key)
        self.lock = threading.Lock()
        tls = TlsFiles(self.identity.ca_cert, self.identity.client_cert, self.identity.client_key)
        # A clean session: the broker is shared by a test module, and a persistent session
        # would hand this device round announcements queued during earlier tests.
        self.client = MqttClient(self.url, self.identity.device_id, tls=tls,
                                 options=ClientOptions(clean_start=True))
        self.client.subscribe(self.topics.inbox(self.identity.device_id), self._on_inbox)
        self.client.subscribe(self.topics.round, self._on_round)

    def _on_inbox(self, topic: str, payload: bytes) -> None:
        message = self.receiver.receive(topic, payload)
        if message is not None:
            self.receipts.put(dict(open_plain(message)))

    def _on_round(self, topic: str, payload: bytes) -> None:
        message = self.receiver.receive(topic, payload)
        if message is None:
            return
        announcement = Announcement.from_body(open_plain(message))
        self.announcements.put(announcement)
        me = self.identity.device_id
        # Scripted devices take part in plain rounds only; a secure-aggregation round (perhaps
        # retained from an earlier test on the module's broker) is not theirs to answer.
        if announcement.mode == "secagg":
            return
        if not self.answer_rounds or announcement.state != "open" or not participates(
                me, announcement.round, announcement.participation_seed,
                announcement.participation_fraction):
            return
        with self.lock:
            if announcement.round in self.sent:
                return
            data = self.update_for(announcement.round, announcement.model_version)
            self.sent[announcement.round] = data
        self.client.publish(self.topics.update(me), data, wait=False)

    def update_for(self, round_id: int, model_version: int, *,
                   tensors: dict[str, np.ndarray] | None = None,
                   num_samples: int | None = None) -> bytes:
        """A sealed, signed update (scripted unless ``tensors`` is given)."""
        if tensors is None:
            tensors = scripted_delta(self.layout, self.identity.device_id, round_id)
            if self.tamper is not None:
                tensors = self.tamper(tensors)
        header = Header.new(MessageType.UPDATE, fleet=self.identity.fleet,
                            sender=self.identity.device_id, round=round_id,
                            model_version=model_version)
        update = Update(num_samples or self.num_samples, tensors, {"loss": 0.5})
        return seal_update(header, update, signing_key=self.identity.signing_key,
                           aggregator_key=self.identity.aggregator_sealing_key)

    def next_receipt(self, timeout_s: float = TIMEOUT_S) -> dict[Any, Any]:
        return self.receipts.get(timeout=timeout_s)

    def close(self) -> None:
        self.client.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S,
               what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


__all__ = ["AGGREGATOR_ID", "AggregatorProcess", "Device", "scripted_delta",
           "stop_all_aggregators", "wait_until", "write_config"]
