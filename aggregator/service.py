"""The aggregator service: announce rounds, ingest updates, aggregate, publish, recover.

Threads: paho's network thread only queues each delivery; the main thread
(:meth:`AggregatorService.run`) ingests them one by one and runs the round clock, so all state
has one owner and needs no lock. Updates are acknowledged to the broker (``manual_ack``) only
after they were committed or refused: a crash before that makes the broker deliver them again,
and the broker's in-flight window bounds how many can wait in our queue. (Chunk frames are
acknowledged on arrival: holding them would exhaust that window; a device whose transfer was
lost resends the update when no receipt comes.)

Recovery (after SIGTERM, a crash or ``kill -9``) needs no special mode: on start the service
reads the open round from SQLite, replays its accepted updates into a fresh aggregation
(order-independent, so bit-identical), finishes a close that a crash interrupted (the model
store already holds the new version), and carries on.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import queue
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedbeat.aggregator.config import AggregatorConfig, ConfigError, class_weights
from fedbeat.aggregator.evaluation import SYNTHETIC, Evaluator
from fedbeat.aggregator.ingest import GROUP_COMMIT, Ingest, OpenRound, Outcome
from fedbeat.aggregator.metrics import MetricsUnavailableError, ServiceMetrics
from fedbeat.aggregator.model_message import publish_model
from fedbeat.aggregator.model_store import ModelStore, ModelVersion
from fedbeat.aggregator.rounds import (
    FINAL_REFUSALS,
    Decision,
    RoundPolicy,
    abort_reason,
    decide,
)
from fedbeat.aggregator.secure_round import Progress, SecureRoundDriver
from fedbeat.aggregator.store import RoundRow, StateStore, decode_tensors, encode_tensors
from fedbeat.aggregator.strategies import (
    Aggregation,
    ClientUpdate,
    ServerOptimizer,
    Strategy,
    create_server_optimizer,
    create_strategy,
)
from fedbeat.broker.chunks import is_chunk
from fedbeat.broker.client import Delivery, MqttClient, TlsFiles, Will
from fedbeat.broker.envelope import Header, MessageType
from fedbeat.broker.identity import AggregatorIdentity
from fedbeat.broker.messages import Receiver, sign_plain
from fedbeat.broker.registry import DeviceRegistry, fleet_key_resolver
from fedbeat.broker.replay import ReplayGuard
from fedbeat.broker.rounds import Announcement, SecAggConfig, TrainingConfig
from fedbeat.broker.secagg.credentials import CertificateMemo, Trust
from fedbeat.broker.topics import AGGREGATOR_ID, FleetTopics
from fedbeat.device.privacy.secure_round import ddg_params

log = logging.getLogger("fedbeat.aggregator")

CRASH_ENV = "FEDBEAT_TEST_CRASH_AT"
"""Fault injection for the crash-recovery tests: ``point`` or ``point:N`` makes the process
SIGKILL itself the N-th time it reaches ``point`` (see :meth:`AggregatorService._crash_point`)."""

DATABASE = "aggregator.sqlite"
EPSILON_DELTA = 1e-5
"""δ of the (ε, δ) the aggregator reports for distributed-DP (DDG) rounds."""
MODELS = "models"
TICK_S = 0.1


def build_strategy(config: AggregatorConfig) -> Strategy:
    """The configured aggregation rule, norm-bounded if asked (config names → options)."""
    a = config.aggregation
    options: dict[str, Any] = {}
    if a.strategy == "trimmed-mean":
        options["trim_fraction"] = a.trim_fraction
    elif a.strategy == "krum":
        options["num_byzantine"] = a.krum_byzantine
        if a.krum_keep:
            options["num_selected"] = a.krum_keep
    elif a.strategy == "fedbuff":
        options.update(buffer_size=a.buffer_size, max_staleness=a.max_staleness)
    if a.norm_bound:
        options["max_norm"] = a.max_update_norm
    try:
        return create_strategy(a.strategy, **options)
    except ValueError as exc:
        raise ConfigError(f"[aggregation] {exc}") from None


def build_server_optimizer(config: AggregatorConfig) -> ServerOptimizer:
    try:
        return create_server_optimizer(config.aggregation.server_optimizer,
                                       lr=config.aggregation.server_lr)
    except ValueError as exc:
        raise ConfigError(f"[aggregation] {exc}") from None


class RoundAnswers:
    """Which devices answered the open round without an accepted update (their update was
    refused for good): in memory only — after a restart the round simply waits as before."""

    def __init__(self, round_id: int = -1) -> None:
        self.round_id = round_id
        self.refused: set[str] = set()
        self.accepted: set[str] = set()

    def note(self, outcome: Outcome) -> None:
        if outcome.device_id is None or outcome.round_id != self.round_id:
            return
        if outcome.accepted:
            self.accepted.add(outcome.device_id)
        elif outcome.reason in FINAL_REFUSALS:
            self.refused.add(outcome.device_id)

    def refused_count(self, round_id: int) -> int:
        return len(self.refused - self.accepted) if round_id == self.round_id else 0


class AggregatorService:
    """One fleet's aggregator; :meth:`start`, then :meth:`run` until stopped."""

    def __init__(self, config: AggregatorConfig, *, clock: Any = time.time) -> None:
        self.config = config
        self.clock = clock
        self.identity = AggregatorIdentity.load(config.path(config.fleet.keys))
        self.topics = FleetTopics(self.identity.fleet)
        state_dir = config.path(config.fleet.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = StateStore(state_dir / DATABASE)
        self.models = ModelStore.open(state_dir / MODELS, config.path(config.model.dir),
                                      keep=config.model.keep_versions or None)
        self.models.initialize()
        self.layout = self.models.layout
        self.strategy = build_strategy(config)
        self.secure_mode = config.secagg.enabled
        if self.secure_mode and (self.strategy.needs_individual_updates
                                 or config.aggregation.strategy != "fedavg"):
            raise ConfigError(
                f"[secagg] reveals only the sum of the updates, but aggregation.strategy = "
                f"{config.aggregation.strategy!r}"
                f"{' with norm_bound' if config.aggregation.norm_bound else ''} must see each "
                "update: use strategy = \"fedavg\" without norm_bound (devices clip to "
                "rounds.clip_norm themselves), or turn secure aggregation off")
        self.optimizer = build_server_optimizer(config)
        saved = self.store.get_blob("server_optimizer")
        if saved is not None:
            self.optimizer.load_state_dict(decode_tensors(saved))
        self.registry = DeviceRegistry.load(self.identity.registry_path)
        self.receiver = Receiver(
            self.identity.fleet,
            fleet_key_resolver(self.registry, self.identity.signing_key.public_key()),
            replay=ReplayGuard(max_skew_s=config.service.max_skew_s))
        self.ingest = Ingest(self.receiver, self.identity.sealing_key, self.layout, self.store,
                             max_update_norm=config.aggregation.max_update_norm)
        r = config.rounds
        self.policy = RoundPolicy(r.min_participants, r.target_participants, r.deadline_s,
                                  r.max_extensions)
        self.async_mode = config.aggregation.strategy == "fedbuff"
        self.inbox: queue.Queue[Delivery] = queue.Queue()
        self.answered = RoundAnswers()
        self.round: RoundRow | None = None
        self.aggregation: Aggregation | None = None
        self.secure: SecureRoundDriver | None = None
        self.trust: Trust | None = None
        self.certificates = CertificateMemo()     # which devices checked which certificates
        self.rounds_closed = 0
        self.evaluator = self._evaluator()
        self.client: MqttClient | None = None
        self._crash_counts: dict[str, int] = {}
        self.metrics: ServiceMetrics | None = None
        self.metrics_port = 0
        if config.service.metrics_port:
            try:
                self.metrics = ServiceMetrics()
            except MetricsUnavailableError as exc:
                raise ConfigError(str(exc)) from None
        self._published_seen = 0
        if self.secure_mode:
            self._check_secure_ring()

    def _check_secure_ring(self) -> None:
        """Refuse at start a ring the rounds' numbers cannot use (rather than fail when a
        round opens): too few bits for the devices' rounding, a bad clip, …"""
        announcement = self._announcement(0, self.models.current(), self.clock())
        try:
            ddg_params(announcement, self.layout)
        except ValueError as exc:
            raise ConfigError(f"[secagg] with [rounds]: {exc}") from None

    def _evaluator(self) -> Evaluator | None:
        e = self.config.evaluation
        if not e.data:
            return None
        data = Path(SYNTHETIC) if e.data == SYNTHETIC else self.config.path(e.data)
        return Evaluator(self.config.path(self.config.model.dir), data, e.split,
                         max_beats=e.max_beats, seed=self.config.service.seed)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect, recover the open round (or open one) and subscribe to updates."""
        tls = TlsFiles(self.identity.ca_cert, self.identity.client_cert,
                       self.identity.client_key)
        offline = self._sign_status("offline")
        self.client = MqttClient(self.config.fleet.broker, AGGREGATOR_ID, tls=tls,
                                 will=Will(self.topics.aggregator_status, offline),
                                 subscriptions={self.topics.all_updates: self.inbox.put},
                                 manual_ack=True)
        log.info("connected to %s (MQTT %s)", self.client.url, self.client.protocol)
        if self.metrics is not None:
            s = self.config.service
            try:
                self.metrics_port = self.metrics.serve(s.metrics_port, s.metrics_bind)
            except OSError as exc:
                raise ConfigError(f"service.metrics_port {s.metrics_port} on {s.metrics_bind}: "
                                  f"{exc.strerror or exc}; choose a free port") from None
            log.info("metrics on http://%s:%d/metrics", s.metrics_bind, self.metrics_port)
        self._recover()
        self.client.publish(self.topics.aggregator_status, self._sign_status("online"),
                            retain=True)

    def run(self, stop: threading.Event) -> None:
        """Ingest and the round clock; returns when ``stop`` is set or the rounds are done."""
        next_tick = 0.0
        while not stop.is_set():
            if self._done():
                log.info("completed %d round(s); stopping", self.rounds_closed)
                return
            try:
                delivery = self.inbox.get(timeout=TICK_S)
            except queue.Empty:
                delivery = None
            if delivery is not None:
                self._on_update(delivery)
            if time.monotonic() >= next_tick:
                self._tick()
                next_tick = time.monotonic() + TICK_S

    def close(self) -> None:
        """Graceful stop: the open round stays open in the database and resumes on restart."""
        if self.client is not None:
            if self.client.connected:
                self.client.publish(self.topics.aggregator_status,
                                    self._sign_status("offline"), retain=True, wait=False)
            self.client.close()
        if self.metrics is not None:
            self.metrics.close()
        self.store.close()

    def _done(self) -> bool:
        limit = self.config.rounds.rounds
        return bool(limit) and self.store.last_round_id() >= limit and self.round is None

    # -- rounds ------------------------------------------------------------------------------

    def _recover(self) -> None:
        row = self.store.open_round_row()
        current = self.models.current()
        self._publish_model(current)
        if row is None:
            self._open_next_round()
            return
        if row.announcement.get("mode") == "secagg":
            self.round = row
            if current.round_id == row.round_id:     # crashed after committing the new model
                self._finish_committed_round(row, current)
                return
            # The devices' ephemeral keys and our protocol state died with the old process.
            self._abort(row, "the aggregator restarted during secure aggregation; the round "
                             "cannot resume (no update was accepted individually)")
            return
        log.info("resuming round %d", row.round_id)
        self.round, self.aggregation = row, self.strategy.begin(self.layout, row.model_version)
        for stored in self.store.accepted_updates(row.round_id):
            self.aggregation.add(ClientUpdate(stored.device_id, stored.num_samples,
                                              stored.tensors, stored.base_version))
        self._set_round_floor(row.round_id)
        if current.round_id == row.round_id:       # crashed after committing the new model
            self._close_round()
            return
        assert self.client is not None
        self.client.publish(self.topics.round, self._sign_announcement(row.announcement),
                            retain=True)

    def _open_next_round(self) -> None:
        if self.config.rounds.rounds and self.store.last_round_id() >= self.config.rounds.rounds:
            self.round = None
            return
        current = self.models.current()
        round_id = self.store.last_round_id() + 1
        deadline = self.clock() + self.config.rounds.deadline_s
        announcement = self._announcement(round_id, current, deadline)
        self.store.open_round(round_id, current.version, deadline, announcement.to_body())
        self.round = self.store.open_round_row()
        self.aggregation = self.strategy.begin(self.layout, current.version)
        self.answered = RoundAnswers(round_id)
        self._set_round_floor(round_id)
        if self.secure_mode:
            self.secure = SecureRoundDriver(announcement, self.identity.fleet, self.layout,
                                            self.identity.sealing_key, self._send_secagg,
                                            trust=self._trust(), memo=self.certificates)
        self._announce(announcement)
        if self.metrics is not None:
            self.metrics.open_round.set(round_id)
            self.metrics.model_version.set(current.version)
        log.info("round %d open%s: model v%d, deadline in %.0f s", round_id,
                 " (secure aggregation)" if self.secure_mode else "", current.version,
                 self.config.rounds.deadline_s)

    def _set_round_floor(self, round_id: int) -> None:
        """Updates announced for earlier rounds are stale, except in FedBuff mode, where an
        update may come from any of the last ``max_staleness`` buffers."""
        assert self.receiver.replay is not None
        slack = self.config.aggregation.max_staleness if self.async_mode else 0
        self.receiver.replay.set_round_floor(max(0, round_id - slack))

    def _announcement(self, round_id: int, model: ModelVersion, deadline: float,
                      state: str = "open", reason: str = "") -> Announcement:
        r = self.config.rounds
        seed = hashlib.sha256(f"{self.config.service.seed}/{round_id}".encode()).hexdigest()[:16]
        training = TrainingConfig(r.epochs, r.batch_size, r.learning_rate, r.optimizer,
                                  r.fedprox_mu, r.dp_mode, r.clip_norm, r.noise_multiplier,
                                  r.compression, class_weights(r.class_weight))
        a, s = self.config.aggregation, self.config.secagg
        target = a.buffer_size if self.async_mode else r.target_participants
        mode = "async" if self.async_mode else "secagg" if s.enabled else "sync"
        secagg = SecAggConfig(s.bits, s.dropout_tolerance, s.stage_timeout_s) if s.enabled \
            else SecAggConfig()
        return Announcement(round_id, model.version, model.params_sha256, int(deadline * 1000),
                            min(r.min_participants, target), target, r.participation_fraction,
                            seed, training, state, reason, mode=mode,
                            max_staleness=a.max_staleness if self.async_mode else 0,
                            secagg=secagg)

    def _announce(self, announcement: Announcement) -> None:
        assert self.client is not None
        self.client.publish(self.topics.round, self._sign_announcement(announcement.to_body()),
                            retain=True)

    def _tick(self) -> None:
        self._count_published()
        if self.round is None:
            return
        row = self.round
        current = self.models.current_version()
        if current != row.model_version and self.models.current().round_id != row.round_id:
            self._abort(row, f"model rolled back to v{current} by an operator")
            return
        if self.secure is not None:
            progress = self.secure.tick(self.clock())
            if progress is Progress.FINISHED:
                self._close_round()
            elif progress is Progress.ABORTED:
                self._abort(row, f"secure aggregation: {self.secure.reason}")
            return
        accepted = len(self.aggregation or ())
        if self.async_mode:      # a FedBuff buffer closes when full; there is no deadline
            if accepted >= self.config.aggregation.buffer_size:
                self._close_round()
            return
        decision = decide(self.policy, accepted=accepted, now=self.clock(),
                          deadline=row.deadline, extensions=row.extensions,
                          refused=self.answered.refused_count(row.round_id))
        if decision is Decision.CLOSE:
            self._close_round()
        elif decision is Decision.EXTEND:
            deadline = self.clock() + self.policy.deadline_s
            announcement = self._announcement(row.round_id, self.models.get(row.model_version),
                                              deadline)
            self.store.extend_round(row.round_id, deadline, announcement.to_body())
            self.round = self.store.open_round_row()
            self._announce(announcement)
            log.warning("round %d extended: %d of %d minimum updates", row.round_id,
                        len(self.aggregation or ()), self.policy.min_participants)
        elif decision is Decision.ABORT:
            self._abort(row, abort_reason(self.policy, len(self.aggregation or ()),
                                          row.extensions))

    def _abort(self, row: RoundRow, reason: str) -> None:
        model = self.models.get(row.model_version)
        announcement = self._announcement(row.round_id, model, row.deadline, "aborted", reason)
        self.store.finish_round(row.round_id, "aborted", result_version=None, reason=reason,
                                announcement=announcement.to_body())
        self._announce(announcement)
        log.warning("round %d aborted: %s", row.round_id, reason)
        self._save_secure_metrics(row.round_id)
        self._count_round("aborted")
        self._forget_round()
        self._publish_model(self.models.current())
        self._open_next_round()

    def _forget_round(self) -> None:
        self.round = None
        self.aggregation = None
        self.secure = None

    def _close_round(self) -> None:
        row, aggregation = self.round, self.aggregation
        assert row is not None
        assert aggregation is not None
        started = time.perf_counter()
        if self.secure is not None and self.secure.result is not None:
            result, participants = self.secure.result, len(self.secure.contributors)
        else:
            result, participants = aggregation.result(), len(aggregation)
        base = self.models.get(row.model_version)
        params = self.optimizer.step(np.array(base.params, dtype=np.float32), result,
                                     self.layout)
        current = self.models.current()
        self._crash_point("before-model-commit")
        if current.round_id == row.round_id:
            version = current                      # committed before a crash: finish the close
            if not np.array_equal(version.params, params):
                log.error("round %d: recomputed model differs from the committed v%d",
                          row.round_id, version.version)
        else:
            metrics = {"participants": float(participants), "weight": float(result.weight)}
            version = self.models.commit(params, round_id=row.round_id, metrics=metrics)
        self._crash_point("after-model-commit")
        self._publish_model(version)
        evaluation = self.evaluator.evaluate(params) if self.evaluator is not None else None
        if evaluation is not None:
            log.info("round %d: model v%d on %s: macro-F1 (N,S,V,F) %s", row.round_id,
                     version.version, evaluation["data"], evaluation.get("macro_f1_nsvf"))
        self.store.save_round_metrics(row.round_id, {
            "evaluation": evaluation,
            "model_version": version.version, "participants": participants,
            "dropped": list(result.dropped), "weight": result.weight,
            "delta_norm": float(np.linalg.norm(params - base.params)),
            "close_s": time.perf_counter() - started,
            "rejections": self.store.rejection_counts(),
            **self._secure_metrics()})
        log.info("round %d closed: %d update(s) → model v%d", row.round_id, participants,
                 version.version)
        self._count_round("closed", participants)
        self._mark_closed(row, version)

    def _mark_closed(self, row: RoundRow, version: ModelVersion) -> None:
        """Record and announce that ``row`` produced ``version`` (with the optimizer's state),
        then open the next round."""
        announcement = self._announcement(row.round_id, self.models.get(row.model_version),
                                          row.deadline, "closed", f"model v{version.version}")
        self.store.finish_round(row.round_id, "closed", result_version=version.version,
                                reason="", optimizer_state=encode_tensors(
                                    self.optimizer.state_dict()),
                                announcement=announcement.to_body())
        self._crash_point("after-round-closed")
        self._announce(announcement)
        self.rounds_closed += 1
        self._forget_round()
        self._open_next_round()

    def _count_published(self) -> None:
        if self.metrics is None or self.client is None:
            return
        sent = self.client.bytes_published
        self.metrics.bytes_out.inc(sent - self._published_seen)
        self._published_seen = sent

    def _count_round(self, state: str, participants: int | None = None) -> None:
        if self.metrics is None:
            return
        self.metrics.rounds.labels(state).inc()
        if participants is not None:
            self.metrics.participants.set(participants)
        self.metrics.model_version.set(self.models.current_version())
        if self.secure is not None:
            self.metrics.secagg_stages(self.secure.overhead.stages)

    def _secure_metrics(self) -> dict[str, Any]:
        """The secure round's overhead and, with DDG noise, the ε of its sum (δ = 1e-5)."""
        if self.secure is None:
            return {}
        earlier = [m["secagg"]["contributors"] for m in self.store.round_metrics()
                   if m.get("secagg") and m["secagg"].get("contributors")
                   and m["round"] != self.secure.announcement.round]
        contributors = len(self.secure.contributors)
        return {"secagg": {**self.secure.overhead.as_dict(), "contributors": contributors,
                           "epsilon_round": self.secure.epsilon(EPSILON_DELTA, []),
                           "epsilon_total": self.secure.epsilon(EPSILON_DELTA, earlier),
                           "delta": EPSILON_DELTA, "reason": self.secure.reason}}

    def _save_secure_metrics(self, round_id: int) -> None:
        if self.secure is not None:
            self.store.save_round_metrics(round_id, self._secure_metrics())

    def _trust(self) -> Trust:
        """The fleet CA every key advertisement must verify against (loaded once: it caches
        the device certificates it has checked)."""
        if self.trust is None:
            self.trust = Trust.load(self.identity.ca_cert, self.identity.fleet)
        return self.trust

    def _send_secagg(self, device_id: str, data: bytes) -> None:
        """A secure-aggregation stage message to one device's inbox (signed, not sealed:
        shares inside are already end-to-end encrypted, the rest is public)."""
        assert self.client is not None
        assert self.round is not None
        header = Header.new(MessageType.DIRECT, fleet=self.identity.fleet,
                            sender=AGGREGATOR_ID, round=self.round.round_id)
        body = {"kind": "secagg", "round": self.round.round_id, "message": data}
        self.client.publish_message(self.topics.inbox(device_id),
                                    sign_plain(header, body, self.identity.signing_key))

    def _finish_committed_round(self, row: RoundRow, version: ModelVersion) -> None:
        """Close a secure round whose model was committed before a crash. Its sum cannot be
        recomputed (nothing was stored per device), so the committed model stands as it is;
        the server optimizer keeps its state from before the round (with momentum or Adam,
        that round's step is missing from it)."""
        log.warning("round %d: finishing a secure round committed before a restart; the "
                    "server optimizer state does not include its step", row.round_id)
        self._publish_model(version)
        self._mark_closed(row, version)

    def _publish_model(self, version: ModelVersion) -> None:
        assert self.client is not None
        published = self.models.read_published()
        if published.get("version") == version.version:
            return
        publish_model(self.client, self.topics, version, self.models,
                      self.identity.signing_key)

    # -- ingest ------------------------------------------------------------------------------

    def _on_update(self, delivery: Delivery) -> None:
        room = GROUP_COMMIT
        if self.async_mode and self.aggregation is not None:
            buffer_size = self.config.aggregation.buffer_size
            if len(self.aggregation) >= buffer_size:
                self._tick()               # a full FedBuff buffer closes before more come in
            room = max(1, buffer_size - len(self.aggregation or ()))
        deliveries = [delivery]            # and whatever else is already waiting: one commit
        while len(deliveries) < room and not self.inbox.empty():
            deliveries.append(self.inbox.get_nowait())
        for d in deliveries:
            if is_chunk(d.payload):
                d.ack()
        open_round = None
        if self.round is not None:
            ann = self.round.announcement
            open_round = OpenRound(
                self.round.round_id, self.round.model_version, ann["participation_seed"],
                ann["participation_fraction"],
                self.config.aggregation.max_staleness if self.async_mode else None,
                self._noised_norm_bound(ann["training"]))
        started = time.perf_counter()
        outcomes = self.ingest.process_many(
            [(d.topic, d.payload) for d in deliveries], open_round, self.aggregation,
            secure=self.secure.receive if self.secure is not None else None)
        self._count_ingest(deliveries, outcomes, time.perf_counter() - started)
        for d, outcome in zip(deliveries, outcomes, strict=True):
            if outcome is not None:
                self.answered.note(outcome)
                if outcome.accepted and outcome.secagg:
                    log.debug("round %s: secure-aggregation message from %s", outcome.round_id,
                              outcome.device_id)
                elif outcome.accepted:
                    log.info("round %s: accepted update from %s (%d in)", outcome.round_id,
                             outcome.device_id, len(self.aggregation or ()))
                    self._crash_point("after-accept")
                else:
                    assert outcome.reason is not None
                    self.store.record_rejection(outcome.reason.value, outcome.device_id)
                    log.warning("rejected update from %s: %s (%s)", outcome.device_id or "?",
                                outcome.reason.value, outcome.detail)
                self._receipt(outcome)
            if not is_chunk(d.payload):
                d.ack()

    def _count_ingest(self, deliveries: list[Delivery], outcomes: list[Outcome | None],
                      seconds: float) -> None:
        """Bytes in, verdicts and latency (a group commit's time, shared by its messages)."""
        if self.metrics is None:
            return
        m = self.metrics
        m.bytes_in.inc(sum(len(d.payload) for d in deliveries))
        for outcome in outcomes:
            if outcome is None:
                continue
            m.latency.observe(seconds)
            if outcome.accepted and outcome.secagg:
                m.secagg_messages.inc()
            elif outcome.accepted:
                m.accepted.inc()
            elif outcome.reason is not None:
                m.rejected.labels(outcome.reason.value).inc()

    def _noised_norm_bound(self, training: dict[str, Any]) -> float | None:
        """With update-level DP a device adds N(0, σ²C²) to every coordinate of its clipped
        update, so an honest update's norm is about σC√d: allow C + σC(√d + 5) (the norm of a
        d-dimensional Gaussian exceeds σ√d by more than 5σ with probability below 1e-10)."""
        if training.get("dp_mode") != "update":
            return None
        c, sigma = float(training["clip_norm"]), float(training["noise_multiplier"])
        return c + sigma * c * (math.sqrt(self.layout.size) + 5.0)

    def _receipt(self, outcome: Outcome) -> None:
        """Tell a proven sender what became of its update, so its outbox can stop resending."""
        if outcome.device_id is None or outcome.nonce is None or self.client is None:
            return
        header = Header.new(MessageType.DIRECT, fleet=self.identity.fleet,
                            sender=AGGREGATOR_ID, round=outcome.round_id or 0)
        body = {"kind": "receipt", "round": outcome.round_id or 0, "nonce": outcome.nonce,
                "accepted": outcome.accepted,
                "reason": outcome.reason.value if outcome.reason else ""}
        self.client.publish(self.topics.inbox(outcome.device_id),
                            sign_plain(header, body, self.identity.signing_key), wait=False)

    # -- helpers -----------------------------------------------------------------------------

    def _sign_status(self, state: str) -> bytes:
        header = Header.new(MessageType.STATUS, fleet=self.identity.fleet, sender=AGGREGATOR_ID)
        return sign_plain(header, {"state": state}, self.identity.signing_key)

    def _sign_announcement(self, body: dict[str, Any]) -> bytes:
        header = Header.new(MessageType.ROUND, fleet=self.identity.fleet, sender=AGGREGATOR_ID,
                            round=int(body["round"]), model_version=int(body["model_version"]))
        return sign_plain(header, body, self.identity.signing_key)

    def _crash_point(self, point: str) -> None:
        spec = os.environ.get(CRASH_ENV)
        if not spec:
            return
        name, _, nth = spec.partition(":")
        if name != point:
            return
        self._crash_counts[point] = self._crash_counts.get(point, 0) + 1
        if self._crash_counts[point] == int(nth or 1):
            log.error("fault injection: SIGKILL at %s", spec)
            os.kill(os.getpid(), signal.SIGKILL)


def status(config: AggregatorConfig) -> dict[str, Any]:
    """What ``fedbeat aggregator status --json`` prints: read-only, safe while running."""
    state_dir = config.path(config.fleet.state_dir)
    store = StateStore(state_dir / DATABASE)
    try:
        rounds = store.rounds(limit=50)
        return {
            "rounds": [{k: v for k, v in asdict(r).items() if k != "announcement"}
                       for r in rounds],
            "open_round": next((r.round_id for r in rounds if r.state == "open"), None),
            "metrics": store.round_metrics(),
            "rejections": store.rejection_counts(),
            "devices": store.devices(),
        }
    finally:
        store.close()
