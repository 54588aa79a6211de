"""A secure-aggregation round inside the aggregator service (docs/protocol.md §10).

The service announces a ``mode = "secagg"`` round as usual; selected devices train, encode
their update into the round's ring and advertise keys. :class:`SecureRoundDriver` then runs
the :class:`~fedbeat.broker.secagg.coordinator.Coordinator` over MQTT: stage messages arrive
sealed on the devices' update topics, and the driver answers on each device's inbox. Stage 0
(advertise) closes at the target number of devices or the round deadline; every later stage
when all its devices answered or after ``stage_timeout_s``. The result is the mean of the
contributors' clipped updates plus the DDG noise — never any device's update on its own.

What the driver keeps is the protocol state, in memory only: a crash or restart mid-round
loses the devices' ephemeral keys with it, so the service aborts such a round on recovery and
opens the next one (nothing was accepted individually, so nothing accepted is lost).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedbeat.aggregator.ingest import Outcome
from fedbeat.aggregator.strategies.base import AggregateResult
from fedbeat.broker.envelope import SignedMessage
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.messages import open_secagg
from fedbeat.broker.rounds import Announcement, participates
from fedbeat.broker.secagg import wire
from fedbeat.broker.secagg.coordinator import Coordinator, Phase, SecAggAborted
from fedbeat.broker.secagg.credentials import CertificateMemo, Trust
from fedbeat.device.privacy.ddg_accounting import ddg_epsilon
from fedbeat.device.privacy.secure_round import secure_round
from fedbeat.models.params import ParamLayout, Params

log = logging.getLogger("fedbeat.aggregator")

Send = Callable[[str, bytes], None]
"""Publish a stage message (wire bytes) to one device's inbox."""


class Progress(Enum):
    WAITING = "waiting"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass
class Overhead:
    """What secure aggregation cost the aggregator this round (for metrics and the report)."""

    bytes_in: int = 0
    bytes_out: int = 0
    compute_s: float = 0.0
    stages: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "compute_s": self.compute_s, "stages": dict(self.stages)}


class SecureRoundDriver:
    """One secure round: :meth:`receive` sealed stage messages, :meth:`tick` the clock."""

    def __init__(self, announcement: Announcement, fleet: str, layout: ParamLayout,
                 sealing_key: X25519PrivateKey, send: Send, *, trust: Trust | None = None,
                 memo: CertificateMemo | None = None) -> None:
        """``trust``: the fleet CA, against which every key advertisement must verify;
        ``memo``: which certificates each device has checked in earlier rounds."""
        self.announcement = announcement
        self.layout = layout
        self.setup = secure_round(announcement, fleet, layout)
        self.coordinator = Coordinator(
            self.setup.context, min_participants=max(2, announcement.min_participants),
            max_participants=self.setup.params.max_devices, graph=self.setup.graph,
            graph_seed=self.setup.seed, trust=trust, memo=memo)
        self.sealing_key = sealing_key
        self.send = send
        self.overhead = Overhead()
        self.stage_deadline = announcement.deadline_ms / 1000.0
        self.expected: set[str] = set()
        self.reason = ""
        self.result: AggregateResult | None = None
        self.contributors: tuple[str, ...] = ()

    # -- messages ----------------------------------------------------------------------------

    def receive(self, message: SignedMessage) -> Outcome:
        """Take one verified SECAGG message; a refusal is an outcome, never an exception."""
        header = message.header
        sender = header.sender
        try:
            if header.round != self.announcement.round:
                raise Rejected(RejectReason.NOT_OPEN, f"round {header.round} is not open")
            if header.model_version != self.announcement.model_version:
                raise Rejected(RejectReason.WRONG_MODEL_VERSION,
                               f"trained from version {header.model_version}")
            a = self.announcement
            if not participates(sender, a.round, a.participation_seed, a.participation_fraction):
                raise Rejected(RejectReason.NOT_SELECTED, "not selected for this round")
            started = time.perf_counter()
            body = open_secagg(message, self.sealing_key)
            self.coordinator.receive(sender, wire.decode(body, self.setup.context))
            self.overhead.compute_s += time.perf_counter() - started
            self.overhead.bytes_in += len(message.header_bytes) + len(message.payload)
        except Rejected as rejected:
            return Outcome(False, rejected.reason, rejected.detail, sender, header.round,
                           secagg=True)
        return Outcome(True, None, "", sender, header.round, secagg=True)

    # -- the clock ---------------------------------------------------------------------------

    def tick(self, now: float) -> Progress:
        """Close the current stage when it is complete or its time is up."""
        phase = self.coordinator.phase
        if phase is Phase.ABORTED:
            return Progress.ABORTED
        if phase is Phase.DONE:
            return Progress.FINISHED
        answered = self._answered(phase)
        complete = (answered >= self.announcement.target_participants
                    if phase is Phase.ADVERTISE else answered >= len(self.expected))
        if not complete and now < self.stage_deadline:
            return Progress.WAITING
        return self._advance(now)

    def _answered(self, phase: Phase) -> int:
        key = {Phase.ADVERTISE: "advertised", Phase.SHARE: "shared", Phase.MASK: "masked",
               Phase.UNMASK: "revealed"}[phase]
        return self.coordinator.stage_sizes[key]

    def _advance(self, now: float) -> Progress:
        started = time.perf_counter()
        try:
            outgoing = self.coordinator.advance()
            if self.coordinator.phase is Phase.DONE:
                self._finish()
        except SecAggAborted as aborted:
            self.reason = aborted.reason
            self._deliver(dict(aborted.notify))
            self.overhead.compute_s += time.perf_counter() - started
            self.overhead.stages = self.coordinator.stage_sizes
            return Progress.ABORTED
        self._deliver(outgoing)
        self.overhead.compute_s += time.perf_counter() - started
        self.overhead.stages = self.coordinator.stage_sizes
        self.expected = set(outgoing)
        self.stage_deadline = now + self.announcement.secagg.stage_timeout_s
        return Progress.FINISHED if self.result is not None else Progress.WAITING

    def _deliver(self, outgoing: dict[str, wire.Message]) -> None:
        for device, message in outgoing.items():
            data = wire.encode(message)
            self.overhead.bytes_out += len(data)
            self.send(device, data)

    def _finish(self) -> None:
        total = self.coordinator.result()
        n = len(total.contributors)
        mean = self.setup.encoder.decode_sum(total.vector) / n
        delta = dict(Params.from_flat(self.layout, mean))
        self.contributors = total.contributors
        self.result = AggregateResult(delta, {name: n for name in delta}, float(n),
                                      dropped=total.dropped)
        log.info("secure round %d: unmasked the sum of %d device(s); %d dropped",
                 self.announcement.round, n, len(total.dropped))

    def epsilon(self, delta: float, earlier_rounds: list[int]) -> float | None:
        """ε of a device that took part in this round's sum and in the earlier rounds listed
        (their contributor counts); None without DDG noise or without a sum."""
        params = self.setup.params
        if params.noise_multiplier == 0 or not self.contributors:
            return None
        return ddg_epsilon(params, [*earlier_rounds, len(self.contributors)], delta)
