"""Ingest: from MQTT bytes to an update folded into the round, or a named rejection.

verify → open → validate → accept exactly once → fold. Each step refuses with a
:class:`~fedbeat.broker.errors.RejectReason`; the caller counts and logs it and sends the
device a receipt. Acceptance is the database commit (``aggregator/store.py``); messages that
wait together share one commit (:meth:`Ingest.process_many`), and none is acknowledged before
it. The strategy admits an update before its row is written, so a written row always folds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedbeat.aggregator.store import AcceptedUpdate, StateStore
from fedbeat.aggregator.strategies.aggregate import MAX_ABS_DELTA
from fedbeat.aggregator.strategies.base import Aggregation, ClientUpdate, check_update
from fedbeat.broker.envelope import MessageType, SignedMessage
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.messages import Receiver, open_update
from fedbeat.broker.rounds import participates
from fedbeat.models.params import ParamLayout

GROUP_COMMIT = 16
"""Most waiting messages the service ingests under one commit (:meth:`Ingest.process_many`):
enough to share most of a commit's cost, few enough that the first waits a few ms at most."""


@dataclass(frozen=True)
class OpenRound:
    """What an update must match to be accepted into the round that is open now."""

    round_id: int
    model_version: int
    participation_seed: str
    participation_fraction: float
    max_staleness: int | None = None     # set in asynchronous (FedBuff) mode
    max_norm: float | None = None        # overrides the service's bound (update-level DP)


@dataclass(frozen=True)
class Outcome:
    """The verdict on one message. ``device_id``/``nonce`` are set once the sender is proven."""

    accepted: bool
    reason: RejectReason | None = None
    detail: str = ""
    device_id: str | None = None
    round_id: int | None = None
    nonce: bytes | None = None
    secagg: bool = False          # a secure-aggregation stage message, not an update


class Ingest:
    """Applies the pipeline for one fleet; callers serialise calls (one lock with round close)."""

    def __init__(self, receiver: Receiver, sealing_key: X25519PrivateKey, layout: ParamLayout,
                 store: StateStore, *, max_update_norm: float) -> None:
        self.receiver = receiver
        self.sealing_key = sealing_key
        self.layout = layout
        self.shapes = dict(layout.entries)
        self.max_elements = layout.size
        self.store = store
        self.max_update_norm = max_update_norm

    def process(self, topic: str, payload: bytes, open_round: OpenRound | None,
                aggregation: Aggregation | None) -> Outcome | None:
        """Handle one MQTT message; ``None`` while a chunked update is still incomplete."""
        return self.process_many([(topic, payload)], open_round, aggregation)[0]

    def process_many(self, messages: Sequence[tuple[str, bytes]], open_round: OpenRound | None,
                     aggregation: Aggregation | None, *,
                     secure: Callable[[SignedMessage], Outcome] | None = None
                     ) -> list[Outcome | None]:
        """Handle several waiting MQTT messages, ``(topic, payload)``, under one commit.

        Each goes through the same steps as :meth:`process`, in order, and each accepted one is
        folded right after its row is written, so the later messages see the earlier ones (a
        second update from the same device is a duplicate). The rows commit together when all
        are done (group commit): acknowledge none of them before this returns. If the commit
        fails it raises, and the aggregation then holds updates the database does not: the
        caller must drop it and rebuild the round from the store (the service exits and
        recovers on restart).

        ``secure`` takes the verified secure-aggregation stage messages of a SecAgg round
        (``aggregator/secure_round.py``); without one they are refused as ``not_open``.
        """
        with self.store.transaction():
            return [self._process_one(topic, payload, open_round, aggregation, secure)
                    for topic, payload in messages]

    def _process_one(self, topic: str, payload: bytes, open_round: OpenRound | None,
                     aggregation: Aggregation | None,
                     secure: Callable[[SignedMessage], Outcome] | None) -> Outcome | None:
        try:
            message = self.receiver.receive(topic, payload)
        except Rejected as rejected:
            return Outcome(False, rejected.reason, rejected.detail)
        if message is not None and message.header.type is MessageType.SECAGG:
            outcome = secure(message) if secure is not None else Outcome(
                False, RejectReason.NOT_OPEN, "no secure-aggregation round is open",
                message.header.sender, message.header.round)
            if outcome.reason is not None:
                self.receiver.rejections.add(outcome.reason)
            return outcome
        if message is None or message.header.type is not MessageType.UPDATE:
            return None
        header = message.header
        try:
            update = self._check(message.header.sender, header.round, header.model_version,
                                 open_round)
            opened = open_update(message, self.sealing_key, max_elements=self.max_elements,
                                 expected=self.shapes, allow_subset=True)
            if aggregation is None:
                raise Rejected(RejectReason.NOT_OPEN, "no round is open")
            # One pass over the values: shapes, finiteness, norm and largest magnitude.
            try:
                checked = check_update(ClientUpdate(header.sender, opened.num_samples,
                                                    opened.tensors, header.model_version),
                                       self.layout)
            except ValueError as exc:
                raise Rejected(RejectReason.BAD_TENSOR, str(exc)) from None
            bound = update.max_norm or self.max_update_norm
            if checked.norm > bound:
                raise Rejected(RejectReason.NORM_EXCEEDED,
                               f"L2 norm {checked.norm:.3g} above {bound:g}")
            # Checked before the commit: the exact sum refuses such values, and an accepted
            # update must always fold.
            if checked.peak >= MAX_ABS_DELTA:
                raise Rejected(RejectReason.BAD_TENSOR,
                               f"a value beyond ±{MAX_ABS_DELTA:g} (exact aggregation's range)")
            try:       # whatever else the strategy would refuse (sample count, full buffer, …)
                aggregation.admit(checked)
            except ValueError as exc:
                raise Rejected(RejectReason.BAD_TENSOR, str(exc)) from None
            digest = hashlib.sha256(message.header_bytes)
            digest.update(message.payload)
            accepted = AcceptedUpdate(
                update.round_id, header.sender, header.nonce, digest.hexdigest(),
                opened.num_samples, header.model_version, opened.metrics, opened.tensors,
                len(message.header_bytes) + len(message.payload))
            if not self.store.accept(accepted):
                raise Rejected(RejectReason.DUPLICATE, "already accepted in this round")
        except Rejected as rejected:
            self.receiver.rejections.add(rejected.reason)
            return Outcome(False, rejected.reason, rejected.detail, header.sender,
                           header.round, header.nonce)
        aggregation.fold(checked)
        return Outcome(True, None, "", header.sender, header.round, header.nonce)

    def _check(self, device_id: str, round_id: int, model_version: int,
               open_round: OpenRound | None) -> OpenRound:
        if open_round is None:
            raise Rejected(RejectReason.NOT_OPEN, "no round is open")
        if open_round.max_staleness is not None:
            # FedBuff: any recent enough base model; the update counts towards the buffer that
            # is filling now, whichever round it was announced in.
            staleness = open_round.model_version - model_version
            if not 0 <= staleness <= open_round.max_staleness:
                raise Rejected(RejectReason.WRONG_MODEL_VERSION,
                               f"trained from version {model_version}; accepted are "
                               f"{open_round.model_version - open_round.max_staleness} to "
                               f"{open_round.model_version}")
        elif round_id != open_round.round_id:
            raise Rejected(RejectReason.NOT_OPEN, f"round {round_id} is not open")
        elif model_version != open_round.model_version:
            raise Rejected(RejectReason.WRONG_MODEL_VERSION,
                           f"trained from version {model_version}, round uses "
                           f"{open_round.model_version}")
        if not participates(device_id, open_round.round_id, open_round.participation_seed,
                            open_round.participation_fraction):
            raise Rejected(RejectReason.NOT_SELECTED, "not selected for this round")
        if self.store.has_update(open_round.round_id, device_id):
            raise Rejected(RejectReason.DUPLICATE, "already accepted in this round")
        return open_round
