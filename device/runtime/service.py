"""The device daemon: learn from the wearer's heart without the data ever leaving.

One loop on the main thread (paho's network thread only queues messages):

1. pull beats from the source into the bounded local store, and run the current global model
   on them (arrhythmic beats go into the local event log);
2. handle messages: signed round announcements, signed global models (verified, swapped
   atomically, smoke-tested, rolled back on failure) and receipts for our updates;
3. when a round is open and this device is selected, eligible (enough labelled beats, privacy
   budget left, the power hook agrees) and holds the announced model: train with the ONNX
   training graph, form the delta, apply local DP, seal, sign, put it in the outbox, publish;
4. resend outbox entries that got no receipt, with backoff.

Nothing that leaves the device carries raw ECG: only the sealed update and status messages.
"""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import sqlite3
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedbeat.broker.client import ClientOptions, MqttClient, TlsFiles, Will
from fedbeat.broker.envelope import Header, MessageType
from fedbeat.broker.errors import Rejected
from fedbeat.broker.identity import DeviceIdentity
from fedbeat.broker.messages import (
    Receiver,
    Update,
    open_plain,
    seal_secagg,
    seal_update,
    sign_plain,
)
from fedbeat.broker.model_body import ReceivedModel, receive_model
from fedbeat.broker.rounds import Announcement, participates
from fedbeat.broker.secagg.credentials import Credentials, Trust
from fedbeat.broker.tensors import compressor_from_name
from fedbeat.broker.topics import FleetTopics
from fedbeat.device.config import DeviceConfig, SourceError
from fedbeat.device.privacy.ddg_accounting import equivalent_noise_multiplier
from fedbeat.device.privacy.ledger import BudgetExhausted, PrivacyLedger, Spend
from fedbeat.device.privacy.noise import SecureRandom
from fedbeat.device.privacy.secure_round import ddg_params, flatten, secure_round
from fedbeat.device.privacy.update_dp import clip_and_noise
from fedbeat.device.runtime.beat_store import BeatStore
from fedbeat.device.runtime.global_model import GlobalModel
from fedbeat.device.runtime.outbox import Outbox
from fedbeat.device.runtime.secagg_session import SecAggSession
from fedbeat.models.manifest import load_model_dir

if TYPE_CHECKING:
    from fedbeat.broker.netloop import NetworkLoop
    from fedbeat.device.ecg.stream import StreamBeats
    from fedbeat.device.runtime.sources import Source
    from fedbeat.device.trainer import Trainer

log = logging.getLogger("fedbeat.device")

LOOP_S = 0.05
ELIGIBILITY_S = 1.0           # how often an open round's eligibility checks are re-run
POWER_HOOK_S = 30.0           # a round waits at most this long after the charger is plugged in
MAX_MODEL_BYTES = 64 * 1024 * 1024
ARRHYTHMIC = (1, 2, 3)          # S, V, F in the AAMI class order N S V F Q


def open_source(config: DeviceConfig) -> Source:
    """The configured source; imported here because the signal pipeline pulls in scipy."""
    from fedbeat.device.runtime.sources import (
        SerialSource,
        beats_file_source,
        csv_source,
        record_source,
        synthetic_source,
    )

    d = config.data
    if d.source == "record":
        return record_source(config.path(d.path or "."), d.record, lead=d.lead,
                             labels=d.labels, speed=d.speed)
    if d.source == "csv":
        return csv_source(config.path(d.path), d.rate_hz, speed=d.speed)
    if d.source == "serial":
        return SerialSource(d.path, d.rate_hz)
    if d.source == "beats":
        return beats_file_source(config.path(d.path), speed=d.speed)
    return synthetic_source(d.seed, speed=d.speed)


def require_tflite() -> None:
    """Wearables run TFLite; say how to get it instead of failing at the first beat."""
    import importlib.util

    missing = [m for m in ("tflite", "flatbuffers") if importlib.util.find_spec(m) is None]
    runtime = any(importlib.util.find_spec(m) is not None
                  for m in ("ai_edge_litert", "tflite_runtime"))
    if missing or not runtime:
        raise SourceError("device.tier = \"wearable\" needs the TFLite interpreter and writer: "
                          "pip install 'fedbeat[tflite]'")


class DeviceService:
    """One device; :meth:`start`, then :meth:`run` until stopped."""

    def __init__(self, config: DeviceConfig, *, trainer: Trainer | None = None,
                 network: NetworkLoop | None = None) -> None:
        """``trainer``: an onnxruntime trainer for this model directory to use instead of
        loading one; ``network``: a shared MQTT network thread. A fleet simulation hosts
        hundreds of devices per process and steps them from one thread, so they can share
        both (training never interleaves)."""
        self.network = network
        self.config = config
        self.identity = DeviceIdentity.load(config.path(config.device.keys))
        self.me = self.identity.device_id
        self.topics = FleetTopics(self.identity.fleet)
        state = config.path(config.device.state_dir)
        # A device is provisioned when its state directory is first used: only then may a
        # privacy ledger be created. A ledger that disappears later stops the device rather
        # than silently resetting the patient's budget.
        fresh = not (state / "outbox.sqlite").exists()
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ledger = PrivacyLedger.open(state / "privacy-ledger.json", create=fresh)
        self.model_dir = load_model_dir(config.path(config.model.dir))
        self.layout = self.model_dir.manifest.layout
        self.global_model = GlobalModel(state / "model", self.layout,
                                        self.model_dir.initial_params())
        # The trainer (onnxruntime) and the source (scipy's signal pipeline) are set up right
        # after connecting (:meth:`start`): a device is reachable as early as possible.
        self.trainer: Trainer | None = trainer
        self.source: Source | None = None
        self.store = BeatStore(state / "beats.sqlite", config.store.max_beats)
        self.outbox = Outbox(state / "outbox.sqlite", retry_min_s=config.service.retry_min_s,
                             retry_max_s=config.service.retry_max_s)
        aggregator_key = self.identity.aggregator_signing_key
        self.receiver = Receiver(self.identity.fleet, lambda header: aggregator_key)
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.announcement: Announcement | None = None
        self.wearable = config.device.tier == "wearable"
        if self.wearable:
            require_tflite()
        self._tflite_model: Any = None
        self._tflite_version = -1
        self.bad_versions: set[int] = set()
        self._not_training: dict[int, str] = {}
        self._checked: tuple[Announcement | None, float] = (None, -math.inf)
        self._power_answer: tuple[float, str] = (-math.inf, "")
        self.offered: dict[int, ReceivedModel] = {}      # verified models not (yet) installed
        self.rounds_trained = 0
        self.secagg: SecAggSession | None = None
        self._credentials: tuple[Credentials, Trust] | None = None
        self._storage_warned = -math.inf
        self.source_done = False
        self.client: MqttClient | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        tls = TlsFiles(self.identity.ca_cert, self.identity.client_cert,
                       self.identity.client_key)

        def enqueue(topic: str, payload: bytes) -> None:
            self.messages.put((topic, payload))

        self.client = MqttClient(
            self.config.broker.url, self.me, tls=tls,
            will=Will(self.topics.status(self.me), self._status("offline")),
            options=ClientOptions(protocol=self.config.broker.protocol), network=self.network,
            subscriptions={self.topics.round: enqueue, self.topics.model: enqueue,
                           self.topics.model_chunks: enqueue,
                           self.topics.inbox(self.me): enqueue})
        log.info("%s connected to %s (MQTT %s); model v%d", self.me, self.client.url,
                 self.client.protocol, self.global_model.version)
        if self.trainer is None:
            from fedbeat.device.trainer import Trainer

            self.trainer = Trainer(self.model_dir, threads=self.config.device.threads)
        self.source = open_source(self.config)
        log.info("data: %s", self.source.name)
        if self.source.name.startswith("SYNTHETIC"):
            log.warning("data source is SYNTHETIC (%s): not clinical data", self.source.name)
        self.client.publish(self.topics.status(self.me), self._status("online"), retain=True)

    def run(self, stop: threading.Event, *, max_rounds: int = 0) -> None:
        """Until ``stop`` (or ``max_rounds`` trained rounds, for simulations and tests)."""
        while not stop.is_set():
            self.step()
            if max_rounds and self.rounds_trained >= max_rounds:
                return
            stop.wait(LOOP_S)

    def step(self) -> None:
        """One pass of the device loop: new beats, messages, maybe a round, resends. Cheap
        when nothing happened, so one thread can step many devices."""
        for step in (self._ingest_beats, self._handle_messages, self._maybe_train,
                     self._resend):
            try:
                step()
            except (sqlite3.OperationalError, OSError) as exc:
                self._storage_trouble(exc)

    def _storage_trouble(self, exc: Exception) -> None:
        """A full or failing disk: say so (at most once a minute) and keep running on what is
        already stored. Nothing is sent that the privacy ledger could not record first."""
        now = time.monotonic()
        if now - self._storage_warned >= 60.0:
            self._storage_warned = now
            log.error("local storage is failing (%s): new beats are not kept and no update is "
                      "sent until it recovers; free space in %s", exc,
                      self.config.path(self.config.device.state_dir))

    def close(self) -> None:
        if self.client is not None:
            if self.client.connected:
                self.client.publish(self.topics.status(self.me), self._status("offline"),
                                    retain=True, wait=False)
            self.client.close()
        if self.source is not None:
            self.source.close()
        self.store.close()
        self.outbox.close()

    # -- beats -------------------------------------------------------------------------------

    def _ingest_beats(self) -> None:
        if self.source_done or self.source is None:
            return
        beats = self.source.poll()
        if beats is None:
            self.source_done = True
            log.info("data source %s is exhausted; %d beats stored", self.source.name,
                     self.store.count())
            return
        if len(beats) == 0:
            return
        self.store.add(beats)
        self._infer(beats)

    def _infer(self, beats: StreamBeats) -> None:
        """Run the current global model on new beats; log arrhythmic ones on the device."""
        if self.wearable:
            probs = self._tflite().predict(beats.windows[:, None, :], beats.rr)
        else:
            self._runner().params = self.global_model.params
            probs = self._runner().predict(self._runner().beats(beats.windows, beats.rr))
        classes = probs.argmax(axis=1)
        flagged = np.isin(classes, ARRHYTHMIC)
        self.store.log_events(classes[flagged], probs[flagged].max(axis=1),
                              self.global_model.version)

    # -- messages ----------------------------------------------------------------------------

    def _handle_messages(self) -> None:
        while True:
            try:
                topic, payload = self.messages.get_nowait()
            except queue.Empty:
                return
            try:
                message = self.receiver.receive(topic, payload)
                if message is None:
                    continue
                kind = message.header.type
                if kind is MessageType.ROUND:
                    self._on_round(Announcement.from_body(open_plain(message)))
                elif kind is MessageType.MODEL:
                    received = receive_model(message, expected_layout=self.layout,
                                             max_bytes=MAX_MODEL_BYTES)
                    self._on_model(received.version, received)
                elif kind is MessageType.DIRECT:
                    self._on_direct(open_plain(message))
            except Rejected as rejected:
                log.warning("refused a message on %s: %s", topic, rejected)

    def _on_round(self, announcement: Announcement) -> None:
        self.announcement = announcement
        wanted = self.offered.get(announcement.model_version)
        if (wanted is not None and announcement.model_version != self.global_model.version
                and wanted.params_sha256 == announcement.model_sha256):
            # The signed, current announcement names an older model than ours (the aggregator
            # was reset or rolled back): install it, since only the aggregator can sign both.
            self._install(announcement.model_version, wanted, allow_older=True)
        if announcement.state != "open":
            self.outbox.expire_rounds_before(announcement.round + 1)
            if self.secagg is not None and self.secagg.round_id <= announcement.round:
                self.secagg = None            # the round is over: its secrets go with it
        log.info("round %d %s (model v%d)", announcement.round, announcement.state,
                 announcement.model_version)

    def _on_model(self, version: int, received: ReceivedModel) -> None:
        if version in self.bad_versions:
            return
        if version <= self.global_model.version:
            # Kept in case a signed announcement asks for exactly this model (see _on_round);
            # a replayed old model message alone never downgrades the device.
            self.offered = {version: received}
            a = self.announcement
            if a is not None and a.model_version == version:
                self._on_round(a)
            return
        self._install(version, received)

    def _install(self, version: int, received: ReceivedModel, *,
                 allow_older: bool = False) -> None:
        mismatched = received.mismatched_graphs(self.model_dir.manifest)
        if mismatched:
            log.error("model v%d was built for other graphs (%s); keeping v%d", version,
                      ", ".join(mismatched), self.global_model.version)
            self.bad_versions.add(version)
            return
        self.global_model.install(version, received.params, allow_older=allow_older)
        self.offered.pop(version, None)
        if not self._smoke_test():
            self.bad_versions.add(version)
            self.global_model.roll_back()
            log.error("model v%d produced non-finite outputs; rolled back to v%d", version,
                      self.global_model.version)
            return
        log.info("installed model v%d", version)

    def _tflite(self) -> Any:
        """The wearable's int8 TFLite model of the current parameters, quantised on the device
        with its own stored beats as calibration data (they never leave it); rebuilt when the
        global model changes."""
        if self._tflite_version != self.global_model.version or self._tflite_model is None:
            from fedbeat.device.tflite_model import TFLiteModel
            from fedbeat.models.tflite_export import export_tflite
            from fedbeat.models.tflite_quant import export_tflite_int8, representative_beats
            from fedbeat.models.zoo import create_architecture

            arch = create_architecture(self.model_dir.manifest.model)
            precision = self.config.device.tflite_precision
            if precision == "int8":
                windows, rr, _ = self.store.labelled(self.config.training.max_beats)
                if len(windows) < 16:
                    windows, rr = self._calibration_fallback()
                windows, rr = representative_beats(windows, rr, count=500)
                data = export_tflite_int8(arch, self.global_model.params, windows, rr)
            else:
                data = export_tflite(arch, self.global_model.params)
            self._tflite_model = TFLiteModel(data, threads=self.config.device.threads)
            self._tflite_version = self.global_model.version
            log.info("wearable: %s TFLite of model v%d (%d bytes)", precision,
                     self._tflite_version, len(data))
        return self._tflite_model

    def _calibration_fallback(self) -> tuple[np.ndarray, np.ndarray]:
        from fedbeat.device.ecg.synthetic import synthetic_patient

        patient = synthetic_patient(0)          # only until the device has beats of its own
        return patient.windows, patient.rr

    def _smoke_test(self) -> bool:
        windows, rr, _ = self.store.labelled(64)
        if len(windows) == 0:
            return True
        self._runner().params = self.global_model.params
        return bool(np.all(np.isfinite(self._runner().predict(self._runner().beats(windows, rr)))))

    def _on_direct(self, body: Any) -> None:
        if body.get("kind") == "secagg":
            session = self.secagg
            if session is not None and body.get("round") == session.round_id and \
                    isinstance(body.get("message"), bytes):
                session.on_message(body["message"])
            return
        if body.get("kind") != "receipt" or not isinstance(body.get("nonce"), bytes):
            return
        if self.outbox.answered(body["nonce"], bool(body.get("accepted")),
                                str(body.get("reason", ""))):
            outcome = "accepted" if body.get("accepted") else f"refused ({body['reason']})"
            log.info("round %s: update %s", body.get("round"), outcome)

    # -- training ----------------------------------------------------------------------------

    def _maybe_train(self) -> None:
        a = self.announcement
        if a is None or a.state != "open":
            return
        # The checks below query the stores and the privacy accountant: once a second is
        # plenty (beats arrive at about one a second), not on every 50 ms loop.
        now = time.monotonic()
        if a is self._checked[0] and now - self._checked[1] < ELIGIBILITY_S:
            return
        self._checked = (a, now)
        if a.round in self.outbox.rounds_answered():
            return
        if not participates(self.me, a.round, a.participation_seed, a.participation_fraction):
            return
        version = self.global_model.version
        if a.mode in ("sync", "secagg") and version != a.model_version:
            return                       # wait for the announced model to arrive
        if a.mode == "async" and not 0 <= a.model_version - version <= a.max_staleness:
            return
        reason = self._ineligible(a)
        if reason:
            # Re-checked every loop while the round is open: beats arrive, the charger gets
            # plugged in. Logged once per round and reason.
            if self._not_training.get(a.round) != reason:
                self._not_training = {a.round: reason}
                log.info("round %d: not training (yet): %s", a.round, reason)
            return
        self._train_and_send(a, version)

    def _ineligible(self, a: Announcement) -> str:
        labelled = self.store.count(labelled=True)
        if labelled < self.config.training.min_labelled_beats:
            return (f"{labelled} labelled beats, fewer than "
                    f"{self.config.training.min_labelled_beats}")
        if a.training.dp_mode == "none":
            if self.config.training.require_dp:
                return "the round asks for no differential privacy, and this device requires it"
        else:
            try:
                planned = self._planned_spend(a)
            except ValueError as exc:        # e.g. a secagg ring too small for the round
                return f"the round's privacy parameters do not work: {exc}"
            refusal = self.ledger.refusal_reason(
                budget_epsilon=self.config.training.epsilon_budget,
                delta=self.config.training.delta, planned_spend=planned)
            if refusal:
                return refusal
        if a.training.optimizer not in self.model_dir.manifest.optimizers:
            return f"the model directory has no {a.training.optimizer!r} optimizer graph"
        classes = len(self.model_dir.manifest.inputs.classes)
        if a.training.class_weight and len(a.training.class_weight) != classes:
            return (f"the round gives {len(a.training.class_weight)} class weights for a model "
                    f"of {classes} classes")
        return self._power_hook()

    def _power_hook(self) -> str:
        """Ask the configured hook (at most every POWER_HOOK_S seconds) whether to train now."""
        hook = self.config.training.power_hook
        if not hook:
            return ""
        now = time.monotonic()
        checked_at, answer = self._power_answer
        if now - checked_at < POWER_HOOK_S:
            return answer
        try:
            done = subprocess.run(hook, shell=True, timeout=30, check=False)
            answer = "" if done.returncode == 0 else \
                f"the power hook said no (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            answer = "the power hook timed out"
        self._power_answer = (now, answer)
        return answer

    def _sample_rate(self, a: Announcement) -> float:
        labelled = min(self.store.count(labelled=True), self.config.training.max_beats)
        return min(1.0, a.training.batch_size / max(1, labelled))

    def _planned_spend(self, a: Announcement) -> Spend:
        """What this round costs in privacy, exactly as the trainer will run it."""
        t = a.training
        if t.dp_mode == "dpsgd":
            q = self._sample_rate(a)
            return Spend(str(a.round), "dpsgd", t.noise_multiplier, sample_rate=q,
                         steps=t.epochs * max(1, round(1 / q)))
        if t.dp_mode == "ddg":
            params = ddg_params(a, self.layout)
            return Spend(str(a.round), "ddg",
                         equivalent_noise_multiplier(params, params.min_devices))
        return Spend(str(a.round), "update", t.noise_multiplier)

    def _runner(self) -> Trainer:
        if self.trainer is None:
            raise RuntimeError("DeviceService.start() sets up the trainer")
        return self.trainer

    def _train_and_send(self, a: Announcement, version: int) -> None:
        from fedbeat.device.trainer import (
            DpSgdConfig,
            TrainConfig,
            TrainingDivergedError,
            balanced_class_weight,
        )

        windows, rr, labels = self._training_data()
        beats = self._runner().beats(windows, rr, labels)
        seed = int.from_bytes(hashlib.sha256(f"{self.me}/{a.round}".encode()).digest()[:4],
                              "big")
        t = a.training
        classes = len(self.model_dir.manifest.inputs.classes)
        config = TrainConfig(
            epochs=t.epochs, batch_size=t.batch_size, lr=t.learning_rate, optimizer=t.optimizer,
            fedprox_mu=t.fedprox_mu, seed=seed,
            class_weight=t.class_weight or balanced_class_weight(labels, classes))
        self._runner().params = self.global_model.params
        dp = None
        if t.dp_mode == "dpsgd":
            dp = DpSgdConfig(t.noise_multiplier, t.clip_norm, sample_rate=self._sample_rate(a))
        started = time.perf_counter()
        try:
            result = self._runner().fit(beats, config, dp=dp, head_only=self.wearable)
        except TrainingDivergedError as exc:
            log.error("round %d: %s", a.round, exc)
            return
        # A wearable trains only the classifier head on frozen features and sends just those
        # tensors (a partial update, merged per tensor by the aggregator).
        tensors = self._update_tensors(result.update_tensors())
        if t.dp_mode == "update":
            noised = clip_and_noise(tensors, clip_norm=t.clip_norm,
                                    noise_multiplier=t.noise_multiplier)
            tensors = noised.tensors
        losses = result.losses[np.isfinite(result.losses)]
        metrics = {"loss": float(losses[-1]) if losses.size else 0.0,
                   "train_s": time.perf_counter() - started}
        if a.mode == "secagg":
            self._join_secure_aggregation(a, version, tensors)
            return
        if not self._charge_privacy(a, metrics):
            return
        header = Header.new(MessageType.UPDATE, fleet=self.identity.fleet, sender=self.me,
                            round=a.round, model_version=version)
        data = seal_update(header, Update(len(labels), tensors, metrics),
                           signing_key=self.identity.signing_key,
                           aggregator_key=self.identity.aggregator_sealing_key,
                           compressor=compressor_from_name(t.compression))
        topic = self.topics.update(self.me)
        self.outbox.add(header.nonce, a.round, topic, data)
        self.rounds_trained += 1
        log.info("round %d: trained on %d beats in %.1f s (loss %.3f); update of %d of %d "
                 "tensors queued", a.round, len(labels), metrics["train_s"], metrics["loss"],
                 len(tensors), len(self.layout.names))
        self._resend()

    def _charge_privacy(self, a: Announcement, metrics: dict[str, float]) -> bool:
        """Record the round's spend before anything derived from the data leaves; False (and
        the round skipped) when the budget would be exceeded. A crash after this point costs
        budget but never releases an unaccounted update."""
        if a.training.dp_mode == "none":
            return True
        try:
            self.ledger.record(self._planned_spend(a), now=time.time(),
                               budget_epsilon=self.config.training.epsilon_budget,
                               delta=self.config.training.delta)
        except BudgetExhausted as exc:
            log.warning("round %d: not sending: %s", a.round, exc.reason)
            self.outbox.skip(a.round, exc.reason)
            return False
        metrics["epsilon"] = self.ledger.spent(self.config.training.delta)
        return True

    def _join_secure_aggregation(self, a: Announcement, version: int,
                                 tensors: Mapping[str, np.ndarray]) -> None:
        """Encode the update into the round's ring (clip, rotate, round, DDG noise share) and
        start the SecAgg session; the aggregator will only ever see the sum."""
        try:
            setup = secure_round(a, self.identity.fleet, self.layout)
        except ValueError as exc:
            log.error("round %d: cannot take part in secure aggregation: %s", a.round, exc)
            self.outbox.skip(a.round, f"secure aggregation: {exc}")
            return
        if not self._charge_privacy(a, {}):
            return
        encoded = setup.encoder.encode(flatten(tensors, self.layout), SecureRandom())

        def send(body: bytes) -> None:
            header = Header.new(MessageType.SECAGG, fleet=self.identity.fleet, sender=self.me,
                                round=a.round, model_version=version)
            if self.client is not None:
                self.client.publish_message(self.topics.update(self.me), seal_secagg(
                    header, body, signing_key=self.identity.signing_key,
                    aggregator_key=self.identity.aggregator_sealing_key))

        self.outbox.skip(a.round, "sent through secure aggregation")
        credentials, trust = self._secagg_credentials()
        self.secagg = SecAggSession(self.me, a.round, setup, encoded, send,
                                    credentials=credentials, trust=trust)
        self.secagg.start()
        self.rounds_trained += 1
        log.info("round %d: trained; joined secure aggregation with %d values of %d bits",
                 a.round, setup.context.dim, setup.context.bits)

    def _secagg_credentials(self) -> tuple[Credentials, Trust]:
        """This device's certificate and key, which sign its SecAgg advertisements, and the
        fleet CA that every neighbour's must verify against (loaded once)."""
        if self._credentials is None:
            i = self.identity
            self._credentials = (Credentials.load(i.client_cert, i.client_key),
                                 Trust.load(i.ca_cert, i.fleet))
        return self._credentials

    def _training_data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The newest labelled beats (windows, RR features, labels) to train on."""
        return self.store.labelled(self.config.training.max_beats)

    def _update_tensors(self, update: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The tensors this device sends for a finished local training (before update-level
        DP noise). A fleet simulation's attackers override this and the method above."""
        return {name: np.asarray(t) for name, t in update.items()}

    def _resend(self) -> None:
        if self.client is None or not self.client.connected:
            return
        for pending in self.outbox.due():
            self.client.publish_message(pending.topic, pending.payload)
            self.outbox.sent(pending.nonce)

    # -- helpers -----------------------------------------------------------------------------

    def _status(self, state: str) -> bytes:
        header = Header.new(MessageType.STATUS, fleet=self.identity.fleet, sender=self.me)
        return sign_plain(header, {"state": state}, self.identity.signing_key)
