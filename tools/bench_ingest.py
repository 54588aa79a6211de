"""``fedbeat bench ingest``: sealed updates per second through one aggregator core, and memory.

Three measurements on pre-generated updates (sealed and signed by a throw-away fleet of
``--devices`` keys before any timing; ``--updates`` in all, spread over rounds so that each
(device, round) is accepted once):

* **Full path** — :meth:`Ingest.process_many <fedbeat.aggregator.ingest.Ingest.process_many>`
  exactly as the service runs it when updates wait in its queue (groups of
  :data:`~fedbeat.aggregator.ingest.GROUP_COMMIT`, one commit each): verify (parse, key lookup,
  Ed25519, replay) → HPKE open → strict decode → validate (one pass: shapes, finite values,
  norm, largest value; the strategy admits it) → write the row to SQLite (WAL,
  ``synchronous=NORMAL``) → fold into FedAvg's exact streaming sums → commit.
  ``updates_per_s`` is this figure. Beside it, in the same repeat, the same path with one
  commit per update (``updates_per_s_one_commit_each``: the service when updates arrive one at
  a time) and with the store replaced by an in-memory set (``updates_per_s_without_store``),
  so the cost of the commit is a ratio measured under the same load.
* **Stages** — the pieces called one after another on the same updates, each timed over all of
  them: ``verify`` (:meth:`Receiver.receive`), ``open`` (HPKE), ``decode`` (CBOR and tensors),
  ``validate`` (round checks, ``check_update``'s single pass, norm bound, ``admit``), ``store``
  (duplicate check, digest and the SQLite rows, committed in the same groups) and
  ``accumulate`` (``Aggregation.fold``: the fixed-point fold). Their sum is compared with the
  full path.
* **Memory** — peak traced Python/numpy memory (``tracemalloc``) while N updates go through the
  full path into one round's aggregation and ``result()`` is taken, for FedAvg (streaming, flat
  in N) and the robust rules (which keep every update: O(N · model)). SQLite's own page cache is
  not traced (it is bounded by its ``cache_size``).

Everything runs in this one thread; figures are medians over ``--repeats``, and the variants
alternate within each repeat so that load from other processes hits them alike.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from fedbeat.aggregator.ingest import GROUP_COMMIT, Ingest, OpenRound
from fedbeat.aggregator.store import AcceptedUpdate, StateStore
from fedbeat.aggregator.strategies import Aggregation, ClientUpdate, Strategy, create_strategy
from fedbeat.aggregator.strategies.aggregate import MAX_ABS_DELTA
from fedbeat.aggregator.strategies.base import CheckedUpdate, check_update
from fedbeat.broker import crypto
from fedbeat.broker.envelope import Header, MessageType, SignedMessage
from fedbeat.broker.identity import AggregatorIdentity, DeviceIdentity
from fedbeat.broker.messages import Receiver, Update, decode_update, seal_update
from fedbeat.broker.registry import DeviceRegistry, fleet_key_resolver
from fedbeat.broker.replay import ReplayGuard
from fedbeat.broker.rounds import participates
from fedbeat.broker.topics import FleetTopics
from fedbeat.models.manifest import load_model_dir
from fedbeat.models.params import ParamLayout
from fedbeat.tools import pki
from fedbeat.tools.output import emit_json, stderr, stdout

FLEET = "bench"
MODEL_VERSION = 0
PARTICIPATION_SEED = "bench"
MAX_UPDATE_NORM = 10.0
"""The service's default ``[aggregation] max_update_norm``."""
MAX_SKEW_S = 3600.0
"""Replay window: generous so that slow repeats never age the pre-generated updates out."""
STAGES = ("verify", "open", "decode", "validate", "store", "accumulate")
MEMORY_STRATEGIES = ("fedavg", "median", "trimmed-mean", "krum")
MB = 1e6

Message = tuple[str, bytes]
"""(MQTT topic, payload) as the aggregator receives it."""


@dataclass(frozen=True)
class Workload:
    """Sealed updates ready to ingest, by round (round ids start at 1)."""

    keys: Path
    layout: ParamLayout
    rounds: list[list[Message]]

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.rounds)

    def open_round(self, round_id: int) -> OpenRound:
        return OpenRound(round_id, MODEL_VERSION, PARTICIPATION_SEED, 1.0)


class MemoryStore(StateStore):
    """The two calls ingest makes on the store, answered from a set: the path without SQLite."""

    def __init__(self) -> None:  # deliberately no database
        self._accepted: set[tuple[int, str]] = set()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        yield

    def accept(self, update: AcceptedUpdate) -> bool:
        key = (update.round_id, update.device_id)
        if key in self._accepted:
            return False
        self._accepted.add(key)
        return True

    def has_update(self, round_id: int, device_id: str) -> bool:
        return (round_id, device_id) in self._accepted

    def close(self) -> None:
        self._accepted.clear()


def build_workload(work: Path, *, model: str, devices: int, updates: int, update_norm: float,
                   seed: int) -> Workload:
    """A throw-away fleet, the model's layout and ``updates`` sealed updates from ``devices``."""
    keys = work / "keys"
    pki.init_fleet(keys, FLEET)
    device_ids = [f"dev-{i:04d}" for i in range(devices)]
    for device_id in device_ids:
        pki.add_device(keys, device_id)
    from fedbeat.models.graph.export import build_model_dir  # onnx: off the device
    build_model_dir(model, work / "model", seed=0)
    layout = load_model_dir(work / "model").manifest.layout
    identities = [DeviceIdentity.load(keys / "devices" / d) for d in device_ids]
    topics = FleetTopics(FLEET)
    rng = np.random.default_rng(seed)
    scale = np.float32(update_norm / math.sqrt(layout.size))
    rounds: list[list[Message]] = []
    for start in range(0, updates, devices):
        round_id = len(rounds) + 1
        messages = []
        for ident in identities[:min(devices, updates - start)]:
            tensors = {name: rng.standard_normal(shape, dtype=np.float32) * scale
                       for name, shape in layout.entries}
            update = Update(int(rng.integers(50, 2000)), tensors,
                            {"loss": float(rng.uniform(0.1, 1.0)), "epsilon": 1.0})
            header = Header.new(MessageType.UPDATE, fleet=FLEET, sender=ident.device_id,
                                round=round_id, model_version=MODEL_VERSION)
            payload = seal_update(header, update, signing_key=ident.signing_key,
                                  aggregator_key=ident.aggregator_sealing_key)
            messages.append((topics.update(ident.device_id), payload))
        rounds.append(messages)
    return Workload(keys, layout, rounds)


def _receiver(keys: Path) -> Receiver:
    aggregator = AggregatorIdentity.load(keys)
    registry = DeviceRegistry.load(aggregator.registry_path)
    return Receiver(FLEET, fleet_key_resolver(registry, aggregator.signing_key.public_key()),
                    replay=ReplayGuard(max_skew_s=MAX_SKEW_S))


def _sqlite_store(work: Path, workload: Workload, rounds: int | None = None) -> StateStore:
    """A fresh database with the workload's rounds open (opening is not ingest: untimed)."""
    path = Path(tempfile.mkdtemp(prefix="state-", dir=work)) / "aggregator.sqlite"
    store = StateStore(path)
    for round_id in range(1, (rounds or len(workload.rounds)) + 1):
        store.open_round(round_id, MODEL_VERSION, time.time() + 3600, {})
    return store


def _strategy(name: str, updates: int) -> Strategy:
    if name == "trimmed-mean":
        return create_strategy(name, trim_fraction=0.1)
    if name == "krum":      # tolerate 20 % Byzantine updates where Krum allows it (n > 2f + 2)
        return create_strategy(name, num_byzantine=max(0, min(updates // 5, (updates - 3) // 2)))
    return create_strategy(name)


@dataclass(frozen=True)
class PathRun:
    seconds: float
    cpu_seconds: float
    accepted: int
    rejected: dict[str, int]


def run_full_path(workload: Workload, store: StateStore, strategy: str = "fedavg", *,
                  group: int = GROUP_COMMIT) -> PathRun:
    """Every update through ``Ingest.process_many`` in groups of ``group`` (one commit each),
    one round after another; timed."""
    aggregator = AggregatorIdentity.load(workload.keys)
    ingest = Ingest(_receiver(workload.keys), aggregator.sealing_key, workload.layout, store,
                    max_update_norm=MAX_UPDATE_NORM)
    rounds = [(workload.open_round(i + 1), _strategy(strategy, len(messages))
               .begin(workload.layout, MODEL_VERSION), messages)
              for i, messages in enumerate(workload.rounds)]
    accepted = 0
    rejected: dict[str, int] = {}
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    for open_round, aggregation, messages in rounds:
        for start in range(0, len(messages), group):
            outcomes = ingest.process_many(messages[start:start + group], open_round,
                                           aggregation)
            for outcome in outcomes:
                if outcome is not None and outcome.accepted:
                    accepted += 1
                else:
                    reason = "incomplete" if outcome is None or outcome.reason is None \
                        else outcome.reason.value
                    rejected[reason] = rejected.get(reason, 0) + 1
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    return PathRun(seconds, cpu_seconds, accepted, rejected)


def _timed(fn: Callable[[], list[Any]]) -> tuple[tuple[float, float], list[Any]]:
    """((wall seconds, CPU seconds), result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu), out


def run_stages(workload: Workload, store: StateStore) -> dict[str, tuple[float, float]]:
    """(Wall, CPU) seconds per stage over all updates, each fed by the previous one's output.

    The calls are those of ``Ingest.process_many``; ``validate`` mirrors its checks (round,
    model version, participation, ``check_update``, the norm and peak bounds, ``admit``).
    """
    aggregator = AggregatorIdentity.load(workload.keys)
    receiver = _receiver(workload.keys)
    shapes = dict(workload.layout.entries)
    max_elements = workload.layout.size
    items = [(round_id, topic, payload) for round_id, messages in enumerate(workload.rounds, 1)
             for topic, payload in messages]
    aggregations = [_strategy("fedavg", len(m)).begin(workload.layout, MODEL_VERSION)
                    for m in workload.rounds]
    seconds: dict[str, tuple[float, float]] = {}
    gc.collect()

    def verify() -> list[SignedMessage]:
        out = []
        for _, topic, payload in items:
            message = receiver.receive(topic, payload)
            if message is None:
                raise RuntimeError("a whole update did not come out of the receiver")
            out.append(message)
        return out

    seconds["verify"], messages = _timed(verify)
    seconds["open"], plaintexts = _timed(lambda: [
        crypto.open_sealed(m.payload, aggregator.sealing_key, m.header_bytes)
        for m in messages])
    seconds["decode"], updates = _timed(lambda: [
        decode_update(p, max_elements=max_elements, expected=shapes, allow_subset=True)
        for p in plaintexts])

    def validate() -> list[CheckedUpdate]:
        out = []
        for (round_id, _, _), message, update in zip(items, messages, updates, strict=True):
            header = message.header
            open_round = workload.open_round(round_id)
            ok = (header.round == open_round.round_id
                  and header.model_version == open_round.model_version
                  and participates(header.sender, header.round, open_round.participation_seed,
                                   open_round.participation_fraction))
            checked = check_update(ClientUpdate(header.sender, update.num_samples,
                                                update.tensors, header.model_version),
                                   workload.layout)
            if not (ok and checked.norm <= MAX_UPDATE_NORM and checked.peak < MAX_ABS_DELTA):
                raise RuntimeError("a generated update failed validation")
            aggregations[round_id - 1].admit(checked)
            out.append(checked)
        return out

    seconds["validate"], checked_updates = _timed(validate)

    def commit() -> list[bool]:
        out = []
        for start in range(0, len(messages), GROUP_COMMIT):
            with store.transaction():
                for message, update in zip(messages[start:start + GROUP_COMMIT],
                                           updates[start:start + GROUP_COMMIT], strict=True):
                    header = message.header
                    fresh = not store.has_update(header.round, header.sender)
                    digest = hashlib.sha256(message.header_bytes)
                    digest.update(message.payload)
                    row = AcceptedUpdate(header.round, header.sender, header.nonce,
                                         digest.hexdigest(), update.num_samples,
                                         header.model_version, update.metrics, update.tensors)
                    out.append(fresh and store.accept(row))
        return out

    seconds["store"], committed = _timed(commit)
    if not all(committed):
        raise RuntimeError("the store refused a generated update")

    def accumulate() -> list[None]:
        for (round_id, _, _), checked in zip(items, checked_updates, strict=True):
            aggregations[round_id - 1].fold(checked)
        return []

    seconds["accumulate"], _ = _timed(accumulate)
    return seconds


def measure_memory(work: Path, workload: Workload, strategy: str, updates: int
                   ) -> dict[str, Any]:
    """Traced peak while ``updates`` go into one round's aggregation and ``result()`` is taken."""
    if updates > len(workload.rounds[0]):
        raise click.UsageError(f"memory for {updates} updates needs at least {updates} devices")
    sub = Workload(workload.keys, workload.layout, [workload.rounds[0][:updates]])
    aggregator = AggregatorIdentity.load(workload.keys)
    store = _sqlite_store(work, sub)
    ingest = Ingest(_receiver(workload.keys), aggregator.sealing_key, workload.layout, store,
                    max_update_norm=MAX_UPDATE_NORM)
    open_round = sub.open_round(1)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        aggregation: Aggregation = _strategy(strategy, updates).begin(workload.layout,
                                                                      MODEL_VERSION)
        accepted = 0
        for topic, payload in sub.rounds[0]:
            outcome = ingest.process(topic, payload, open_round, aggregation)
            accepted += bool(outcome is not None and outcome.accepted)
        held = tracemalloc.get_traced_memory()[0] - base
        start = time.perf_counter()
        aggregation.result()
        result_s = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        store.close()
    return {"strategy": strategy, "updates": updates, "accepted": accepted,
            "held_bytes": held, "peak_bytes": peak, "result_s": result_s}


def measure(work: Path, workload: Workload, *, repeats: int, memory_counts: Sequence[int],
            krum_max_updates: int) -> dict[str, Any]:
    """The whole benchmark on a built workload (see the module docstring)."""
    n = workload.count
    full: list[PathRun] = []
    single: list[PathRun] = []
    bare: list[PathRun] = []
    stages: dict[str, list[tuple[float, float]]] = {stage: [] for stage in STAGES}
    run_full_path(workload, MemoryStore())                             # warm-up
    for repeat in range(repeats):
        stderr.print(f"repeat {repeat + 1}/{repeats}: full path, one commit each, without "
                     "store, stages ...")
        store = _sqlite_store(work, workload)
        try:
            full.append(run_full_path(workload, store))
        finally:
            store.close()
        store = _sqlite_store(work, workload)
        try:
            single.append(run_full_path(workload, store, group=1))
        finally:
            store.close()
        bare.append(run_full_path(workload, MemoryStore()))
        store = _sqlite_store(work, workload)
        try:
            for stage, seconds in run_stages(workload, store).items():
                stages[stage].append(seconds)
        finally:
            store.close()
    full_s = statistics.median(r.seconds for r in full)
    bare_s = statistics.median(r.seconds for r in bare)
    single_s = statistics.median(r.seconds for r in single)
    full_cpu_s = statistics.median(r.cpu_seconds for r in full)
    bare_cpu_s = statistics.median(r.cpu_seconds for r in bare)
    stage_s = {stage: statistics.median(w for w, _ in values) / n
               for stage, values in stages.items()}
    stage_cpu_s = {stage: statistics.median(c for _, c in values) / n
                   for stage, values in stages.items()}
    stage_total = sum(stage_s.values())
    memory = []
    for strategy in MEMORY_STRATEGIES:
        for count in memory_counts:
            if strategy == "krum" and count > krum_max_updates:
                continue
            stderr.print(f"memory: {strategy}, {count} updates ...")
            memory.append(measure_memory(work, workload, strategy, count))
    return {
        "updates": n, "rounds": len(workload.rounds), "devices": len(workload.rounds[0]),
        "params": workload.layout.size, "repeats": repeats,
        "group_commit": GROUP_COMMIT,
        "accepted": min(r.accepted for r in full + single + bare),
        "rejected": {k: v for r in full + single + bare for k, v in r.rejected.items()},
        "updates_per_s": n / full_s,
        "updates_per_s_one_commit_each": n / single_s,
        "updates_per_cpu_s_one_commit_each":
            n / statistics.median(r.cpu_seconds for r in single),
        "updates_per_s_without_store": n / bare_s,
        "store_share": 1.0 - bare_s / full_s,
        "seconds_per_update": full_s / n,
        "seconds_per_update_without_store": bare_s / n,
        "updates_per_cpu_s": n / full_cpu_s,
        "updates_per_cpu_s_without_store": n / bare_cpu_s,
        "cpu_over_wall": statistics.median(r.cpu_seconds / r.seconds
                                           for r in full + single + bare),
        "stage_seconds": stage_s,
        "stage_cpu_seconds": stage_cpu_s,
        "stage_share": {stage: s / stage_total for stage, s in stage_s.items()},
        "stages_over_full_path": stage_total * n / full_s,
        "memory": memory,
    }


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def _tables(doc: dict[str, Any], goal: float) -> tuple[Table, Table]:
    speed = Table("measure", "updates/s", "per update", "CPU per update", "share", title=(
        f"ingest of {doc['params']:,}-parameter updates, one thread ({doc['updates']:,} "
        f"updates, {doc['devices']} devices × {doc['rounds']} rounds, median of "
        f"{doc['repeats']})"))
    speed.add_row(f"full path, commit per {doc['group_commit']}", f"{doc['updates_per_s']:,.0f}",
                  _us(doc["seconds_per_update"]), _us(1 / doc["updates_per_cpu_s"]),
                  f"goal {goal:,.0f}: {'met' if doc['updates_per_s'] >= goal else 'NOT met'}")
    speed.add_row("full path, commit per update", f"{doc['updates_per_s_one_commit_each']:,.0f}",
                  _us(1 / doc["updates_per_s_one_commit_each"]),
                  _us(1 / doc["updates_per_cpu_s_one_commit_each"]), "")
    speed.add_row("full path, no store", f"{doc['updates_per_s_without_store']:,.0f}",
                  _us(doc["seconds_per_update_without_store"]),
                  _us(1 / doc["updates_per_cpu_s_without_store"]),
                  f"store {doc['store_share']:.0%} of full")
    for stage in STAGES:
        seconds = doc["stage_seconds"][stage]
        speed.add_row(f"  stage: {stage}", f"{1 / seconds:,.0f}", _us(seconds),
                      _us(doc["stage_cpu_seconds"][stage]),
                      f"{doc['stage_share'][stage]:.0%}")
    speed.add_row("  stages summed", "", "", "", f"{doc['stages_over_full_path']:.2f}x full path")
    memory = Table("strategy", "updates", "held MB", "peak MB", "result()", title=(
        "traced peak memory of one round (tracemalloc; SQLite page cache not included)"))
    for row in doc["memory"]:
        memory.add_row(row["strategy"], str(row["updates"]), f"{row['held_bytes'] / MB:.1f}",
                       f"{row['peak_bytes'] / MB:.1f}", f"{row['result_s'] * 1e3:,.0f} ms")
    return speed, memory


@click.command()
@click.option("--model", default="ecg-cnn-m", show_default=True,
              help="Model whose layout the updates carry.")
@click.option("--updates", default=900, show_default=True, type=click.IntRange(1),
              help="Updates ingested per timed repeat (spread over rounds of --devices).")
@click.option("--devices", default=300, show_default=True, type=click.IntRange(1, 10_000),
              help="Device keys in the throw-away fleet; one update per device and round.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1),
              help="Timed repeats; figures are medians.")
@click.option("--memory-updates", "memory_counts", multiple=True, type=click.IntRange(1),
              default=(10, 100, 300), show_default=True,
              help="Round sizes for the memory table (each needs that many devices).")
@click.option("--krum-max-updates", default=300, show_default=True, type=click.IntRange(0),
              help="Skip Multi-Krum memory rows above this size (its result() is O(n²·d)).")
@click.option("--update-norm", default=1.0, show_default=True,
              type=click.FloatRange(0, MAX_UPDATE_NORM, min_open=True),
              help="L2 norm of the generated deltas (the ingest bound is 10).")
@click.option("--goal", default=1000.0, show_default=True, type=click.FloatRange(0),
              help="updates/s the full path should reach (shown in the table).")
@click.option("--seed", default=0, show_default=True, help="Seed of the generated deltas.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ingest(model: str, updates: int, devices: int, repeats: int, memory_counts: tuple[int, ...],
           krum_max_updates: int, update_norm: float, goal: float, seed: int,
           as_json: bool) -> None:
    """Aggregator ingest throughput (verify → open → decode → validate → commit → accumulate)
    on one thread, and peak memory per round size for FedAvg and the robust rules.

    Keys for a throw-away fleet and the updates are generated first, untimed. JSON keys include
    updates_per_s (full path with the SQLite commit), updates_per_s_without_store,
    stage_seconds (per update) and memory (one row per strategy and round size).
    """
    too_big = [n for n in memory_counts if n > devices]
    if too_big:
        raise click.UsageError(f"--memory-updates {too_big} need --devices ≥ {max(too_big)}")
    with tempfile.TemporaryDirectory(prefix="fedbeat-bench-") as tmp:
        work = Path(tmp)
        stderr.print(f"generating {devices} device keys and {updates} sealed {model} "
                     "updates ...")
        workload = build_workload(work, model=model, devices=devices, updates=updates,
                                  update_norm=update_norm, seed=seed)
        doc = measure(work, workload, repeats=repeats, memory_counts=sorted(set(memory_counts)),
                      krum_max_updates=krum_max_updates)
    doc["model"] = model
    doc["goal_updates_per_s"] = goal
    doc["goal_met"] = doc["updates_per_s"] >= goal
    if as_json:
        emit_json(doc)
    else:
        for table in _tables(doc, goal):
            stdout.print(table)
