"""``fedbeat simulate``: a whole federation on one machine, and a report a person can read.

Everything is the real thing: a real MQTT broker (Mosquitto with TLS and client certificates
when installed, else the embedded broker), the aggregator service, and N device daemons — the
same ``DeviceService`` that ``fedbeat device run`` starts — each its own MQTT client with its own
keys, local store, outbox and privacy ledger (hosted many to a thread: :mod:`.sim_fleet`).

Data: MIT-BIH when a data directory is given or found (``--data`` / ``$FEDBEAT_DATA``): the DS1
patients' beats are dealt to the devices as the scenario's partition says, and DS2 is the test
set; without it, simulated patients — said on screen, in ``config.json`` and in the report.

Output in the run directory: ``metrics.jsonl`` (one line per round), ``config.json``,
``final-model/`` (inference graph, ``params.bin``, ``model.tflite`` with the ``tflite`` extra)
and ``report.html``; ``keys/``, ``devices/`` and ``data/`` are what a ``--role devices`` host
on another machine needs.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedbeat.aggregator.config import example_config, load_config
from fedbeat.aggregator.service import DATABASE, MODELS, AggregatorService
from fedbeat.aggregator.store import StateStore
from fedbeat.broker.embedded import EmbeddedBroker
from fedbeat.broker.launch import BrokerProcess, free_port
from fedbeat.broker.mosquitto import MosquittoBroker, MosquittoConfig, find_mosquitto
from fedbeat.device.config import example_device_config
from fedbeat.device.trainer import balanced_class_weight
from fedbeat.tools import pki
from fedbeat.tools.errors import UsageError
from fedbeat.tools.sim_fleet import (
    DeviceData,
    FleetHost,
    HostedDevice,
    attackers,
    spawn_workers,
    write_device_data,
)
from fedbeat.tools.sim_scenario import Scenario, load_scenario, scenario_text

FLEET = "sim"
CONFIG_NAME = "config.json"
SCENARIO_NAME = "scenario.toml"
LOG_NAME = "simulation.log"
BROKER_URL_NAME = "broker-url"

OnRound = Callable[[dict[str, Any]], None]

log = logging.getLogger("fedbeat.simulate")


@dataclass(frozen=True)
class Fleet:
    """A prepared run directory: keys, model, device data and configurations."""

    out: Path
    devices: list[str]
    data: list[DeviceData]
    attackers: set[str]

    def hosted(self, shard: tuple[int, int] = (1, 1)) -> list[HostedDevice]:
        """The devices of shard ``i`` of ``n`` (every n-th, starting at the i-th)."""
        index, count = shard
        return [HostedDevice(self.out / "devices" / f"{d}.toml", d in self.attackers)
                for d in self.devices[index - 1::count]]


def prepare(scenario: Scenario, out: Path, *, broker_hosts: tuple[str, ...] = ()) -> Fleet:
    """Create ``out`` with the fleet's keys, model, per-device beats and the configuration."""
    from fedbeat.models.graph.export import build_model_dir  # onnx: off the device path

    out.mkdir(parents=True, exist_ok=False)
    data = write_device_data(scenario, out / "data")
    devices = [f"dev-{i:04d}" for i in range(len(data))]
    keys = out / "keys"
    pki.init_fleet(keys, FLEET, broker_hosts=broker_hosts)
    for device in devices:
        pki.add_device(keys, device)
    build_model_dir(scenario.fleet.model, out / "model", seed=scenario.fleet.seed)
    chosen = attackers(scenario, devices)
    (out / SCENARIO_NAME).write_text(scenario_text(scenario), encoding="utf-8")
    summary = {f"{name}.{key}": value for name, section in scenario.to_json().items()
               for key, value in section.items()}
    (out / CONFIG_NAME).write_text(json.dumps({
        "synthetic": scenario.synthetic, "devices": len(devices),
        "data": "SYNTHETIC simulated patients" if scenario.synthetic
        else "MIT-BIH DS1 (train, on the devices), DS2 (test, on the aggregator)",
        "attackers": sorted(chosen), **summary,
        "device_classes": {d: list(share.class_counts) for d, share in zip(devices, data,
                                                                            strict=True)},
    }, indent=2))
    return Fleet(out, devices, data, chosen)


def expected_participants(scenario: Scenario, devices: int) -> tuple[int, int]:
    """(min, target) participants: a round closes as soon as ``target`` updates are in. With
    partial participation or dropouts the count per round varies, so the target sits two
    standard deviations below the expectation (the deadline catches the rest)."""
    p = scenario.aggregation.participation * (1 - scenario.faults.dropout)
    mean = devices * p
    target = devices if p >= 1 else max(1, math.floor(mean - 2 * math.sqrt(mean * (1 - p))))
    minimum = max(1, target // 2)
    if scenario.aggregation.secagg:
        # Key advertisement closes at the target: a secure sum of one or two devices would be
        # no secret at all, so wait for at least three (and abort below two).
        target = min(devices, max(target, 3))
        minimum = min(target, max(minimum, 2))
    if scenario.aggregation.strategy == "krum":
        # Multi-Krum tolerates f attackers only among n >= 2f + 3 updates.
        minimum = min(devices, max(minimum, 2 * krum_byzantine(scenario) + 3))
        target = max(target, minimum)
    return minimum, target


def krum_byzantine(scenario: Scenario) -> int:
    """The f that Multi-Krum is told to tolerate: the scenario's attackers (at least 1)."""
    return max(1, scenario.attackers)


def _aggregator_config(scenario: Scenario, fleet: Fleet, url: str) -> Path:
    a, t, p = scenario.aggregation, scenario.training, scenario.privacy
    minimum, target = expected_participants(scenario, len(fleet.devices))
    path = fleet.out / "aggregator.toml"
    path.write_text(example_config(**{
        "fleet.keys": "keys", "fleet.broker": url, "fleet.state_dir": "aggregator",
        "model.dir": "model", "rounds.rounds": scenario.fleet.rounds,
        "rounds.min_participants": minimum, "rounds.target_participants": target,
        "rounds.deadline_s": a.deadline_s, "rounds.participation_fraction": a.participation,
        "rounds.epochs": t.epochs, "rounds.batch_size": t.batch_size,
        "rounds.learning_rate": t.learning_rate, "rounds.optimizer": t.optimizer,
        "rounds.fedprox_mu": t.fedprox_mu, "rounds.dp_mode": p.dp,
        "rounds.noise_multiplier": p.noise_multiplier if p.dp != "none" else 0.0,
        "rounds.clip_norm": p.clip_norm, "rounds.compression": a.compression,
        "rounds.class_weight": _class_weight(scenario, fleet),
        "aggregation.strategy": a.strategy, "aggregation.server_optimizer": a.server_optimizer,
        "aggregation.server_lr": a.server_lr, "aggregation.max_update_norm": a.max_update_norm,
        "aggregation.norm_bound": a.norm_bound, "aggregation.buffer_size": a.buffer_size,
        "aggregation.krum_byzantine": krum_byzantine(scenario),
        "secagg.enabled": a.secagg, "secagg.bits": a.secagg_bits,
        "secagg.stage_timeout_s": a.secagg_stage_timeout_s,
        "evaluation.data": ("synthetic" if scenario.synthetic
                            else str(Path(scenario.fleet.data).resolve())),
        "evaluation.split": "ds2", "service.seed": scenario.fleet.seed}), encoding="utf-8")
    return path


def _class_weight(scenario: Scenario, fleet: Fleet) -> str:
    """``rounds.class_weight``: the fleet's balanced weights (``global``), none (``local``),
    or the scenario's own list."""
    choice = scenario.training.class_weight
    if choice == "local":
        return ""
    if choice != "global":
        return choice
    counts = np.sum([share.class_counts for share in fleet.data], axis=0)
    labels = np.repeat(np.arange(counts.size), counts)
    return ",".join(f"{w:.6g}" for w in balanced_class_weight(labels, counts.size))


def _device_configs(scenario: Scenario, fleet: Fleet, url: str, protocol: str) -> None:
    directory = fleet.out / "devices"
    directory.mkdir(exist_ok=True)
    for device, share in zip(fleet.devices, fleet.data, strict=True):
        (directory / f"{device}.toml").write_text(example_device_config(**{
            "device.keys": f"../keys/devices/{device}", "device.state_dir": f"state-{device}",
            "broker.url": url, "broker.protocol": protocol, "model.dir": "../model",
            "data.source": "beats", "data.path": f"../data/{share.path.name}",
            "data.speed": 0.0, "store.max_beats": 200_000,
            "training.min_labelled_beats": scenario.training.min_beats,
            "training.epsilon_budget": scenario.privacy.epsilon_budget,
            "training.delta": scenario.privacy.delta}), encoding="utf-8")


@contextmanager
def _broker(scenario: Scenario, fleet: Fleet, listen: str) -> Iterator[tuple[str, str]]:
    """(URL, MQTT protocol for devices) of a broker running for the ``with`` block."""
    use_mosquitto = scenario.fleet.broker == "mosquitto" or (
        scenario.fleet.broker == "auto" and find_mosquitto() is not None)
    broker: BrokerProcess
    if use_mosquitto:
        broker = MosquittoBroker(MosquittoConfig(
            keys_dir=fleet.out / "keys", data_dir=fleet.out / "broker", port=free_port(),
            bind=listen or "127.0.0.1"))
        broker.start()
        url, protocol = broker.tls_url, "auto"
    else:
        if listen:
            raise UsageError("--listen needs Mosquitto: the embedded broker is loopback-only "
                             "and unencrypted (install mosquitto)")
        embedded = EmbeddedBroker(log_path=fleet.out / "broker.log")
        embedded.start()
        broker, url, protocol = embedded, embedded.url, "3.1.1"
    try:
        yield url, protocol
    finally:
        broker.stop()


DDG_EPSILON_KEY = "every device (distributed DP)"
"""Under DDG every contributor gets the same ε from the secure sum: one curve for all."""


class RoundRecorder:
    """Turns the aggregator's state into ``metrics.jsonl`` lines as rounds finish."""

    def __init__(self, database: Path, out: Path, expected: float) -> None:
        self.database = database
        self.out = out
        self.expected = expected
        self.done: set[int] = set()
        self.epsilon: dict[str, float] = {}
        self.started = time.monotonic()

    def _lap(self) -> float:
        """Seconds since the previous round was recorded (the first: since the start)."""
        now = time.monotonic()
        lap, self.started = now - self.started, now
        return lap

    def poll(self) -> list[dict[str, Any]]:
        """New finished rounds since the last call, appended to the file."""
        if not self.database.exists():
            return []
        store = StateStore(self.database)
        try:
            metrics = {m["round"]: m for m in store.round_metrics()}
            finished = [r for r in reversed(store.rounds()) if r.round_id not in self.done
                        and (r.state == "aborted"
                             or (r.state == "closed" and r.round_id in metrics))]
            lines = [self._line(store, r.round_id, r.state, metrics.get(r.round_id))
                     for r in finished]
        finally:
            store.close()
        with self.out.open("a", encoding="utf-8") as handle:
            for line in lines:
                handle.write(json.dumps(line) + "\n")
        return lines

    def _line(self, store: StateStore, round_id: int, state: str,
              metrics: dict[str, Any] | None) -> dict[str, Any]:
        self.done.add(round_id)
        updates = store.round_updates(round_id)
        losses = [u["metrics"]["loss"] for u in updates if "loss" in u["metrics"]]
        for u in updates:
            if "epsilon" in u["metrics"]:
                self.epsilon[u["device_id"]] = u["metrics"]["epsilon"]
        participants, sent = len(updates), sum(u["bytes"] for u in updates)
        secure = (metrics or {}).get("secagg")
        if secure:        # the aggregator saw only the sum: count from the protocol instead
            participants, sent = secure["contributors"], secure["bytes_in"] + secure["bytes_out"]
            if secure.get("epsilon_total") is not None:
                self.epsilon[DDG_EPSILON_KEY] = secure["epsilon_total"]
        return {
            "round": round_id, "state": state,
            "model_version": (metrics or {}).get("model_version"),
            "participants": participants,
            "dropouts": max(0, round(self.expected) - participants),
            "rejections": store.rejection_counts(),
            "bytes": sent,
            "secagg": secure,
            "loss": sum(losses) / len(losses) if losses else None,
            "epsilon": dict(self.epsilon),
            "seconds": round(self._lap(), 3),
            "evaluation": (metrics or {}).get("evaluation"),
        }


def _export_final_model(out: Path) -> None:
    """The final global model: inference graph + params, and TFLite when available."""
    from fedbeat.aggregator.model_store import ModelStore

    model_dir = out / "model"
    current = ModelStore.open(out / "aggregator" / MODELS, model_dir).current()
    final = out / "final-model"
    final.mkdir(exist_ok=True)
    shutil.copy2(model_dir / "inference.onnx", final / "inference.onnx")
    (final / "params.bin").write_bytes(current.params.astype("<f4").tobytes())
    if current.tflite_path is not None:
        shutil.copy2(current.tflite_path, final / "model.tflite")
    (final / "version.json").write_text(json.dumps(current.to_json(), indent=2))


@contextmanager
def _devices(scenario: Scenario, fleet: Fleet, stop: threading.Event) -> Iterator[None]:
    """The fleet's devices running for the ``with`` block: in a thread of this process with
    one worker, else in ``workers`` spawned processes."""
    hosted = fleet.hosted()
    workers = min(scenario.fleet.workers, len(hosted))
    if workers <= 1:
        host = FleetHost(hosted, scenario)
        thread = threading.Thread(target=host.run, args=(stop,), daemon=True, name="devices")
        host.start()
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(30)
            host.close()
        return
    import multiprocessing

    process_stop = multiprocessing.get_context("spawn").Event()
    processes = spawn_workers(hosted, scenario, workers, process_stop,
                              log_path=str(fleet.out / LOG_NAME))
    try:
        yield
    finally:
        process_stop.set()
        for process in processes:
            process.join(60)
            if process.is_alive():
                process.kill()


def run_simulation(scenario: Scenario, out: Path, on_round: OnRound = lambda line: None, *,
                   with_devices: bool = True, listen: str = "") -> Path:
    """Run ``scenario`` in ``out`` (created); returns ``out``.

    ``with_devices=False`` runs only the broker and the aggregator (``--role aggregator``):
    devices join from other processes or machines (``--role devices``). ``listen`` is the
    address Mosquitto binds to (loopback by default) and names in its certificate.
    """
    fleet = prepare(scenario, out, broker_hosts=(listen,) if listen else ())
    with _logging_to(out / LOG_NAME), _broker(scenario, fleet, listen) as (url, protocol):
        (out / BROKER_URL_NAME).write_text(url + "\n", encoding="utf-8")
        _device_configs(scenario, fleet, url, protocol)
        aggregator = AggregatorService(load_config(_aggregator_config(scenario, fleet, url)))
        stop = threading.Event()
        aggregator.start()
        try:
            agg_thread = threading.Thread(target=aggregator.run, args=(stop,), daemon=True,
                                          name="aggregator")
            agg_thread.start()
            participation = scenario.aggregation.participation * (1 - scenario.faults.dropout)
            recorder = RoundRecorder(out / "aggregator" / DATABASE, out / "metrics.jsonl",
                                     len(fleet.devices) * participation)
            devices = _devices(scenario, fleet, stop) if with_devices else nullcontext()
            with devices:
                while agg_thread.is_alive():
                    agg_thread.join(0.5)
                    for line in recorder.poll():
                        on_round(line)
                for line in recorder.poll():
                    on_round(line)
        finally:
            stop.set()
            aggregator.close()
    _export_final_model(out)
    from fedbeat.tools.sim_report import write_report

    write_report(out)
    return out


@contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """The services' logs (every device's too) go to ``path`` for the ``with`` block: a
    thousand devices would drown the progress bar."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def run_devices(run_dir: Path, broker_url: str, shard: tuple[int, int],
                stop: threading.Event) -> int:
    """``--role devices``: host shard ``i``/``n`` of a prepared run's devices against
    ``broker_url`` until the run's last round is over (or ``stop``). Returns devices hosted."""
    scenario = load_scenario(run_dir / SCENARIO_NAME)
    devices = sorted(p.stem for p in (run_dir / "devices").glob("*.toml"))
    fleet = Fleet(run_dir, devices, [], attackers(scenario, devices))
    host = FleetHost(fleet.hosted(shard), scenario, broker_url)
    try:
        host.start()
        thread = threading.Thread(target=host.run, args=(stop,), daemon=True)
        thread.start()
        while thread.is_alive() and not _run_over(host, scenario.fleet.rounds):
            thread.join(1.0)
    finally:
        stop.set()
        host.close()
    return len(host.services)


def _run_over(host: FleetHost, rounds: int) -> bool:
    """Whether a hosted device has seen the last round finish."""
    return any(d.announcement is not None and d.announcement.round >= rounds
               and d.announcement.state != "open" for d in host.services)
