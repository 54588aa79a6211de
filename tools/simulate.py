"""``fedbeat simulate``: a whole federation on one machine, and a report a person can read.

Everything is the real thing: a real MQTT broker (Mosquitto with TLS and client certificates
when installed, else the embedded broker), the aggregator service, and N device daemons — the
same ``DeviceService`` that ``fedbeat device run`` starts — each its own MQTT client with its own
keys, local store, outbox and privacy ledger. They run as threads of this process (the broker
as a child process), which keeps a laptop run small; the round clock is the aggregator's.

Data: MIT-BIH when a data directory is given or found (``--data`` / ``$FEDBEAT_DATA``): the DS1
patients are the devices (record 201 and 202 are one patient) and DS2 is the test set; without
it, simulated patients — said on screen, in ``config.json`` and in the report.

Output in ``runs/<timestamp>/``: ``metrics.jsonl`` (one line per round), ``config.json``,
``model/`` (the inference graph and the final ``params.bin``, plus ``model.tflite`` when the
``tflite`` extra is installed) and ``report.html``.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedbeat.aggregator.config import example_config, load_config
from fedbeat.aggregator.service import DATABASE, MODELS, AggregatorService
from fedbeat.aggregator.store import StateStore
from fedbeat.broker.embedded import EmbeddedBroker
from fedbeat.broker.launch import BrokerProcess, free_port
from fedbeat.broker.mosquitto import MosquittoBroker, MosquittoConfig, find_mosquitto
from fedbeat.device.config import example_device_config, load_device_config
from fedbeat.device.ecg.mitdb import DS1, patient_of
from fedbeat.device.runtime.service import DeviceService
from fedbeat.tools import pki

FLEET = "sim"


@dataclass(frozen=True)
class Scenario:
    """What to simulate; every field has a default that finishes in a few minutes."""

    devices: int = 8
    rounds: int = 5
    model: str = "ecg-cnn-s"
    data: str = ""                  # MIT-BIH directory; empty: simulated patients
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    strategy: str = "fedavg"
    dp_mode: str = "none"
    noise_multiplier: float = 0.0
    clip_norm: float = 1.0
    participation: float = 1.0
    broker: str = "auto"            # auto (Mosquitto if installed), mosquitto, embedded
    deadline_s: float = 120.0
    seed: int = 0

    @property
    def synthetic(self) -> bool:
        return not self.data


def device_sources(scenario: Scenario) -> list[dict[str, Any]]:
    """Per-device data settings: one MIT-BIH DS1 patient per device, or simulated patients."""
    if scenario.synthetic:
        return [{"data.source": "synthetic", "data.seed": scenario.seed * 1000 + i}
                for i in range(scenario.devices)]
    patients = sorted({patient_of(r) for r in DS1})
    chosen = patients[:scenario.devices]
    return [{"data.source": "record", "data.path": str(Path(scenario.data).resolve()),
             "data.record": p, "data.labels": True} for p in chosen]


def _start_broker(scenario: Scenario, keys: Path, work: Path) -> tuple[BrokerProcess, str, str]:
    """(broker, URL, MQTT protocol for devices)."""
    use_mosquitto = scenario.broker == "mosquitto" or (
        scenario.broker == "auto" and find_mosquitto() is not None)
    if use_mosquitto:
        broker = MosquittoBroker(MosquittoConfig(keys_dir=keys, data_dir=work / "broker",
                                                 port=free_port(), bind="127.0.0.1"))
        broker.start()
        return broker, broker.tls_url, "auto"
    embedded = EmbeddedBroker(log_path=work / "broker.log")
    embedded.start()
    return embedded, embedded.url, "3.1.1"


def _write_aggregator_config(scenario: Scenario, work: Path, url: str, devices: int) -> Path:
    path = work / "aggregator.toml"
    path.write_text(example_config(**{
        "fleet.keys": "keys", "fleet.broker": url, "fleet.state_dir": "aggregator",
        "model.dir": "model", "rounds.rounds": scenario.rounds,
        "rounds.min_participants": max(1, devices // 2),
        "rounds.target_participants": devices, "rounds.deadline_s": scenario.deadline_s,
        "rounds.participation_fraction": scenario.participation,
        "rounds.epochs": scenario.epochs, "rounds.batch_size": scenario.batch_size,
        "rounds.learning_rate": scenario.learning_rate, "rounds.dp_mode": scenario.dp_mode,
        "rounds.noise_multiplier": scenario.noise_multiplier,
        "rounds.clip_norm": scenario.clip_norm, "aggregation.strategy": scenario.strategy,
        "evaluation.data": ("synthetic" if scenario.synthetic
                            else str(Path(scenario.data).resolve())),
        "evaluation.split": "ds2", "service.seed": scenario.seed}), encoding="utf-8")
    return path


def _write_device_config(work: Path, device: str, url: str, protocol: str,
                         source: dict[str, Any]) -> Path:
    path = work / "devices" / f"{device}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(example_device_config(**{
        "device.keys": f"../keys/devices/{device}", "device.state_dir": f"state-{device}",
        "broker.url": url, "broker.protocol": protocol, "model.dir": "../model",
        "data.speed": 0.0, "training.min_labelled_beats": 50, **source}), encoding="utf-8")
    return path


class RoundRecorder:
    """Turns the aggregator's state into ``metrics.jsonl`` lines as rounds finish."""

    def __init__(self, database: Path, out: Path, devices: int,
                 participation: float) -> None:
        self.database = database
        self.out = out
        self.expected = devices * participation
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
        return {
            "round": round_id, "state": state,
            "model_version": (metrics or {}).get("model_version"),
            "participants": len(updates),
            "dropouts": max(0, round(self.expected) - len(updates)),
            "rejections": store.rejection_counts(),
            "bytes": sum(u["bytes"] for u in updates),
            "loss": sum(losses) / len(losses) if losses else None,
            "epsilon": dict(self.epsilon),
            "seconds": round(self._lap(), 3),
            "evaluation": (metrics or {}).get("evaluation"),
        }


def _export_final_model(work: Path, model_dir: Path, out: Path) -> None:
    """The final global model: inference graph + params, and TFLite when available."""
    from fedbeat.aggregator.model_store import ModelStore

    current = ModelStore.open(work / "aggregator" / MODELS, model_dir).current()
    out.mkdir(exist_ok=True)
    shutil.copy2(model_dir / "inference.onnx", out / "inference.onnx")
    (out / "params.bin").write_bytes(current.params.astype("<f4").tobytes())
    if current.tflite_path is not None:
        shutil.copy2(current.tflite_path, out / "model.tflite")
    (out / "version.json").write_text(json.dumps(current.to_json(), indent=2))


def run_simulation(scenario: Scenario, out: Path,
                   on_round: Callable[[dict[str, Any]], None] = lambda line: None) -> Path:
    """Run ``scenario`` in ``out`` (created); returns ``out``. Raises on setup errors."""
    from fedbeat.models.graph.export import build_model_dir  # onnx: off the device path

    out.mkdir(parents=True, exist_ok=False)
    sources = device_sources(scenario)
    devices = [f"dev-{i:03d}" for i in range(len(sources))]
    keys = out / "keys"
    pki.init_fleet(keys, FLEET)
    for device in devices:
        pki.add_device(keys, device)
    model_dir = out / "model"
    build_model_dir(scenario.model, model_dir, seed=scenario.seed)
    (out / "config.json").write_text(json.dumps(
        {**asdict(scenario), "synthetic": scenario.synthetic, "devices": len(devices)},
        indent=2))
    broker, url, protocol = _start_broker(scenario, keys, out)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    services: list[DeviceService] = []
    aggregator: AggregatorService | None = None
    try:
        aggregator = AggregatorService(load_config(
            _write_aggregator_config(scenario, out, url, len(devices))))
        aggregator.start()
        agg_thread = threading.Thread(target=aggregator.run, args=(stop,), daemon=True)
        agg_thread.start()
        for device, source in zip(devices, sources, strict=True):
            config = load_device_config(_write_device_config(out, device, url, protocol,
                                                             source))
            service = DeviceService(config)
            service.start()
            services.append(service)
            thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
            thread.start()
            threads.append(thread)
        recorder = RoundRecorder(out / "aggregator" / DATABASE, out / "metrics.jsonl",
                                 len(devices), scenario.participation)
        while agg_thread.is_alive():
            agg_thread.join(0.5)
            for line in recorder.poll():
                on_round(line)
        for line in recorder.poll():
            on_round(line)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for service in services:
            service.close()
        if aggregator is not None:
            aggregator.close()
        broker.stop()
    _export_final_model(out, model_dir, out / "final-model")
    from fedbeat.tools.sim_report import write_report

    write_report(out)
    return out
