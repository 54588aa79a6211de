"""The device's part in one secure-aggregation round, over MQTT.

After local training the device holds its encoded update (ring elements, already carrying its
share of the DDG noise). The session advertises keys, then answers each stage message the
aggregator sends to its inbox with the :class:`~fedbeat.broker.secagg.participant.Participant`
state machine, sealing every reply to the aggregator. A stage message that breaks the protocol
ends the session here: the device drops its secrets and is counted as a dropout, which SecAgg
tolerates, rather than answer something that could unmask it or a neighbour. Messages are
sent once (QoS 1), not through the outbox: a stage answer that arrives late is worthless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from fedbeat.broker.client import BrokerConnectionError
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.secagg import wire
from fedbeat.broker.secagg.credentials import Credentials, Trust
from fedbeat.broker.secagg.participant import Participant, Stage
from fedbeat.device.privacy.secure_round import SecureRound

log = logging.getLogger("fedbeat.device")


class SecAggSession:
    """One round; ``send`` seals and publishes a stage message's bytes to the aggregator."""

    def __init__(self, device_id: str, round_id: int, setup: SecureRound, encoded: np.ndarray,
                 send: Callable[[bytes], None], *, credentials: Credentials | None = None,
                 trust: Trust | None = None) -> None:
        self.round_id = round_id
        self.setup = setup
        self._encoded: np.ndarray | None = encoded
        self._send = send
        self.participant = Participant(device_id, setup.context, credentials=credentials,
                                       trust=trust)
        self.outcome = ""

    @property
    def finished(self) -> bool:
        return self.participant.stage is Stage.DONE

    def start(self) -> None:
        try:
            self._send(wire.encode(self.participant.advertise()))
        except BrokerConnectionError as lost:
            log.warning("round %d: could not advertise keys (%s)", self.round_id, lost)
            self._end("left: offline")

    def on_message(self, data: bytes) -> None:
        """Answer one stage message from the aggregator (already signature-verified)."""
        if self.finished:
            return
        try:
            message = wire.decode(data, self.setup.context)
            reply = self._answer(message)
        except (Rejected, ValueError) as refused:
            log.warning("round %d: leaving secure aggregation: %s", self.round_id, refused)
            self._end(f"left: {refused}")
            return
        if reply is not None:
            try:
                self._send(wire.encode(reply))
            except BrokerConnectionError as lost:     # offline: a dropout, not a crash
                log.warning("round %d: could not send a secure-aggregation message (%s); "
                            "leaving the round", self.round_id, lost)
                self._end("left: offline")

    def _answer(self, message: wire.Message) -> wire.Message | None:
        p = self.participant
        match message:
            case wire.NeighbourKeys():
                return p.share_keys(message)
            case wire.RelayedShares():
                if self._encoded is None:
                    raise Rejected(RejectReason.SECAGG_VIOLATION, "shares relayed twice")
                masked = p.mask(message, self._encoded)
                self._encoded = None
                return masked
            case wire.UnmaskRequest():
                revealed = p.unmask(message)
                self._end("unmasked")
                return revealed
            case wire.Abort(reason):
                log.info("round %d: secure aggregation aborted: %s", self.round_id, reason)
                self._end(f"aborted: {reason}")
                return None
            case _:
                raise Rejected(RejectReason.SECAGG_VIOLATION,
                               f"{type(message).__name__} is not sent to devices")

    def _end(self, outcome: str) -> None:
        self.participant.forget()
        self._encoded = None
        self.outcome = outcome
