"""The simulated fleet: which beats each device holds, how devices misbehave, and hosting
hundreds of device daemons in one process.

Devices are the real :class:`~fedbeat.device.runtime.service.DeviceService` — their own keys,
MQTT client, stores, outbox and privacy ledger — with two simulation-only additions that live
here and never on a real device: faults (offline rounds, stragglers) and attacks.

Hosting: a :class:`FleetHost` steps all its devices from one thread (each step is cheap when
nothing happens) and gives them one shared onnxruntime trainer, since in that thread training
never interleaves. That keeps a device's footprint at its MQTT client, a few SQLite handles and
its parameters, so a 2-core laptop holds a thousand; ``workers`` processes run one host each.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import multiprocessing
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from fedbeat.broker.netloop import NetworkLoop
from fedbeat.broker.rounds import Announcement
from fedbeat.device.config import DeviceConfig, load_device_config
from fedbeat.device.runtime.service import LOOP_S, DeviceService
from fedbeat.tools import partition
from fedbeat.tools.errors import UsageError
from fedbeat.tools.sim_scenario import FaultsSection, Scenario

log = logging.getLogger("fedbeat.simulate")

N, S, V, F, Q = range(5)
LABEL_FLIP = np.array([V, N, N, N, Q])
"""The label-flip attacker's lie: normal beats are ventricular, every arrhythmia is normal."""
MIT_BIH_POOL = 22
"""Simulated patients in the synthetic pool: as many as MIT-BIH DS1 has."""


@dataclass(frozen=True)
class DeviceData:
    """One device's share of the training pool, as a beats file the device replays."""

    path: Path
    patients: tuple[str, ...]
    class_counts: tuple[int, ...]


def training_pool(scenario: Scenario) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(windows, rr, labels, patient per beat) of every training beat of the scenario."""
    from fedbeat.device.ecg.mitdb import patient_of
    from fedbeat.tools.datasets import load_dataset

    if scenario.synthetic:
        patients = min(scenario.fleet.devices, MIT_BIH_POOL)
        dataset = load_dataset(None, synthetic_patients=patients * 4 // 3 + 1,
                               seed=scenario.fleet.seed)
        records = dataset.train[:patients]
        names = [f"synthetic-{i}" for i in range(len(records))]
    else:
        dataset = load_dataset(Path(scenario.fleet.data))
        records = dataset.train
        names = [patient_of(r.record) for r in records]
    groups = np.concatenate([np.full(len(r.labels), n) for r, n in zip(records, names,
                                                                       strict=True)])
    return (np.concatenate([r.windows for r in records]), np.concatenate([r.rr for r in records]),
            np.concatenate([r.labels for r in records]).astype(np.int64), groups)


def partition_pool(scenario: Scenario, labels: np.ndarray, groups: np.ndarray) -> list[np.ndarray]:
    """Beat indices per device, as the scenario's partition says."""
    f = scenario.fleet
    if f.partition == "iid":
        return partition.iid(labels.size, f.devices, seed=f.seed)
    if f.partition == "dirichlet":
        return partition.dirichlet(labels, f.devices, f.alpha, seed=f.seed)
    patients = partition.per_patient(groups)
    if f.devices <= len(patients):
        return patients[:f.devices]
    return partition.split_patients(groups, f.devices)


def write_device_data(scenario: Scenario, directory: Path) -> list[DeviceData]:
    """One beats file per device in ``directory``; raises :class:`UsageError` when the pool
    cannot give every device beats (e.g. more devices than beats)."""
    windows, rr, labels, groups = training_pool(scenario)
    try:
        parts = partition_pool(scenario, labels, groups)
    except ValueError as exc:
        raise UsageError(f"cannot deal {labels.size:,} beats to {scenario.fleet.devices:,} "
                         f"devices ({scenario.fleet.partition}): {exc}") from None
    directory.mkdir(parents=True, exist_ok=True)
    shares = []
    for i, index in enumerate(parts):
        path = directory / f"dev-{i:04d}.npz"
        np.savez(path, windows=windows[index], rr=rr[index], labels=labels[index])
        shares.append(DeviceData(path, tuple(sorted(set(groups[index].tolist()))),
                                 tuple(np.bincount(labels[index], minlength=5).tolist())))
    return shares


def fleet_beats(scenario: Scenario) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(windows, rr, labels) of every beat some device holds: what a centralized baseline on
    the same data trains on."""
    windows, rr, labels, groups = training_pool(scenario)
    index = np.sort(np.concatenate(partition_pool(scenario, labels, groups)))
    return windows[index], rr[index], labels[index]


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) from a hash of ``parts``: the same on every host and run."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def attackers(scenario: Scenario, devices: Sequence[str]) -> set[str]:
    """The devices that attack: a seeded, fixed choice of ``faults.malicious`` of them."""
    ranked = sorted(devices, key=lambda d: _unit(scenario.fleet.seed, "attacker", d))
    return set(ranked[:scenario.attackers])


def is_offline(seed: int, device: str, round_id: int, dropout: float) -> bool:
    """Whether ``device`` is offline for ``round_id``: independent per (device, round) with
    probability ``dropout``, and the same in every process and run with this seed."""
    return _unit(seed, "dropout", device, round_id) < dropout


def secagg_silence(seed: int, device: str, round_id: int, dropout: float) -> int | None:
    """The secure-aggregation stage message (1 = keys, 2 = relayed shares, 3 = unmask request)
    from which ``device`` stops answering in ``round_id``, or None: with probability
    ``dropout``, at a stage drawn uniformly — a wearable that loses its link mid-protocol."""
    u = _unit(seed, "secagg-dropout", device, round_id)
    return 1 + int(3 * u / dropout) if u < dropout else None


def straggler_delay(seed: int, device: str, round_id: int, median_s: float,
                    sigma: float) -> float:
    """A log-normal delay with median ``median_s`` (``sigma`` of its logarithm): most devices
    are prompt, a few are very late — what field deployments report."""
    if median_s <= 0:
        return 0.0
    u = min(max(_unit(seed, "straggler", device, round_id), 1e-12), 1 - 1e-12)
    return median_s * math.exp(sigma * NormalDist().inv_cdf(u))


class SimDevice(DeviceService):
    """A device daemon with the scenario's faults and, if chosen, its attack."""

    def __init__(self, config: DeviceConfig, *, faults: FaultsSection, seed: int,
                 malicious: bool, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.faults = faults
        self.seed = seed
        self.malicious = malicious
        self._first_seen: dict[int, float] = {}
        self._secagg_seen: dict[int, int] = {}

    def offline(self, round_id: int) -> bool:
        """Whether this device is offline for ``round_id`` (it neither trains nor answers)."""
        return is_offline(self.seed, self.me, round_id, self.faults.dropout)

    def delay_s(self, round_id: int) -> float:
        """Seconds this device lags behind a round's announcement."""
        return straggler_delay(self.seed, self.me, round_id, self.faults.straggler_median_s,
                               self.faults.straggler_sigma)

    def _maybe_train(self) -> None:
        a: Announcement | None = self.announcement
        if a is not None and a.state == "open":
            if self.offline(a.round):
                return
            seen = self._first_seen.setdefault(a.round, time.monotonic())
            if time.monotonic() - seen < self.delay_s(a.round):
                return
        super()._maybe_train()

    def _on_direct(self, body: Any) -> None:
        round_id = body.get("round") if body.get("kind") == "secagg" else None
        if isinstance(round_id, int):
            ordinal = self._secagg_seen[round_id] = self._secagg_seen.get(round_id, 0) + 1
            silent_from = secagg_silence(self.seed, self.me, round_id,
                                         self.faults.secagg_dropout)
            if silent_from is not None and ordinal >= silent_from:
                return                      # gone quiet: the aggregator's stage times out
        super()._on_direct(body)

    def _training_data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        windows, rr, labels = super()._training_data()
        if self.malicious and self.faults.attack == "label-flip":
            labels = LABEL_FLIP[labels]
        return windows, rr, labels

    def _update_tensors(self, update: Mapping[str, Any]) -> dict[str, np.ndarray]:
        tensors = super()._update_tensors(update)
        if not self.malicious:
            return tensors
        seed = int(_unit(self.seed, "gaussian", self.me, self.rounds_trained) * 2**32)
        return poison(tensors, self.faults.attack, self.faults.attack_scale, seed)


def poison(tensors: Mapping[str, np.ndarray], attack: str, k: float,
           seed: int) -> dict[str, np.ndarray]:
    """What an attacker sends instead of its honest update ``tensors`` (Δ): ``-k·Δ``
    (sign-flip), ``k·Δ`` (scale), or Gaussian noise with ``k`` times Δ's norm (gaussian);
    label-flip attackers send their update as trained (the lie is in the labels)."""
    if attack == "sign-flip":
        return {n: (-k * t).astype(np.float32) for n, t in tensors.items()}
    if attack == "scale":
        return {n: (k * t).astype(np.float32) for n, t in tensors.items()}
    if attack == "gaussian":
        rng = np.random.default_rng(seed)
        norm = math.sqrt(sum(float(np.sum(np.square(t, dtype=np.float64)))
                             for t in tensors.values()))
        std = k * norm / math.sqrt(max(1, sum(t.size for t in tensors.values())))
        return {n: rng.normal(0.0, std, t.shape).astype(np.float32) for n, t in tensors.items()}
    return dict(tensors)


@dataclass(frozen=True)
class HostedDevice:
    """What a host needs to start one device."""

    config: Path
    malicious: bool


class FleetHost:
    """Devices stepped from one thread, sharing one trainer."""

    def __init__(self, devices: Sequence[HostedDevice], scenario: Scenario,
                 broker_url: str = "") -> None:
        self.plan = list(devices)
        self.scenario = scenario
        self.broker_url = broker_url
        self.services: list[SimDevice] = []
        self.network: NetworkLoop | None = None

    def start(self) -> None:
        """Load and connect every device (raises on the first that cannot start)."""
        from fedbeat.device.trainer import Trainer

        self.network = NetworkLoop(name="devices-network")
        trainer: Trainer | None = None
        for planned in self.plan:
            config = load_device_config(planned.config)
            if self.broker_url:
                config = _with_broker(config, self.broker_url)
            device = SimDevice(config, faults=self.scenario.faults,
                               seed=self.scenario.fleet.seed, malicious=planned.malicious,
                               trainer=trainer, network=self.network)
            if trainer is None:
                trainer = device.trainer = Trainer(device.model_dir, threads=1)
            self.services.append(device)
            device.start()

    def run(self, stop: threading.Event | Any) -> None:
        """Step every device until ``stop`` is set."""
        while not stop.is_set():
            started = time.monotonic()
            for device in self.services:
                device.step()
            stop.wait(max(0.0, LOOP_S - (time.monotonic() - started)))

    def close(self) -> None:
        for device in self.services:
            try:
                device.close()
            except Exception:                     # one device's close must not strand others
                log.exception("closing %s", device.me)
        if self.network is not None:
            self.network.close()


def _with_broker(config: DeviceConfig, url: str) -> DeviceConfig:
    return dataclasses.replace(config, broker=dataclasses.replace(config.broker, url=url))


def host_devices(devices: Sequence[HostedDevice], scenario: Scenario, stop: Any,
                 broker_url: str = "", log_path: str = "") -> None:
    """Process entry point of one worker: host ``devices`` until ``stop`` is set."""
    if log_path:
        logging.basicConfig(filename=log_path, level=logging.INFO,
                            format="%(asctime)s %(processName)s %(name)s %(message)s")
    host = FleetHost(devices, scenario, broker_url)
    try:
        host.start()
        host.run(stop)
    finally:
        host.close()


def spawn_workers(devices: Sequence[HostedDevice], scenario: Scenario, workers: int,
                  stop: Any, *, broker_url: str = "",
                  log_path: str = "") -> list[multiprocessing.process.BaseProcess]:
    """``workers`` processes, each hosting every ``workers``-th device. Spawned, not forked:
    the parent runs threads (aggregator, MQTT) that a fork would copy mid-flight."""
    context = multiprocessing.get_context("spawn")
    processes: list[multiprocessing.process.BaseProcess] = []
    for w in range(workers):
        share = list(devices[w::workers])
        if not share:
            continue
        process = context.Process(target=host_devices, name=f"devices-{w}",
                                  args=(share, scenario, stop, broker_url, log_path),
                                  daemon=True)
        process.start()
        processes.append(process)
    return processes
