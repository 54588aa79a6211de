"""Why a message from the network was refused: one named reason per failure, and a counter.

Every decoder on the receive path raises :class:`Rejected` with a :class:`RejectReason` instead
of letting a parser's own exception escape. Services count rejections by reason
(:class:`RejectionCounter`) and log the reason, never the offending bytes: a rejected update
may still hold a patient's data.
"""

from __future__ import annotations

import threading
from collections import Counter
from enum import StrEnum


class RejectReason(StrEnum):
    """A stable, machine-readable name for each way a message can fail.

    The values appear in logs, metrics and ``--json`` output; renaming one is a protocol change.
    """

    OVERSIZED = "oversized"                    # larger than the configured message limit
    MALFORMED = "malformed"                    # not the CBOR structure the protocol defines
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_TYPE = "unknown_type"              # message type not known or not expected here
    WRONG_FLEET = "wrong_fleet"
    UNKNOWN_SENDER = "unknown_sender"          # no key registered for the sender id
    REVOKED_SENDER = "revoked_sender"
    TOPIC_MISMATCH = "topic_mismatch"          # the sender in the envelope is not the topic's
    BAD_SIGNATURE = "bad_signature"
    DECRYPT_FAILED = "decrypt_failed"          # sealed to another key, tampered, or misbound
    REPLAY = "replay"                          # (sender, round, nonce) seen before
    STALE_ROUND = "stale_round"
    CLOCK_SKEW = "clock_skew"                  # created-at too far from the receiver's clock
    BAD_TENSOR = "bad_tensor"                  # dtype, shape, size or values not acceptable
    CHUNK_MISMATCH = "chunk_mismatch"          # chunks of one transfer disagree on its manifest
    CHUNK_OVERFLOW = "chunk_overflow"          # a sender holds more partial data than allowed
    CHUNK_HASH_MISMATCH = "chunk_hash_mismatch"
    CHUNK_TIMEOUT = "chunk_timeout"            # a transfer did not complete in time
    # Checks the aggregator makes on an opened update (docs/protocol.md §8).
    NOT_OPEN = "not_open"                      # no round is open, or it is another round
    WRONG_MODEL_VERSION = "wrong_model_version"
    DUPLICATE = "duplicate"                    # this device already contributed to the round
    NORM_EXCEEDED = "norm_exceeded"            # update's L2 norm above the configured bound
    NOT_SELECTED = "not_selected"              # the participation rule excludes this device
    SECAGG_VIOLATION = "secagg_violation"      # a SecAgg message out of order or against the rules


class Rejected(Exception):  # noqa: N818 - a verdict on input, not a bug
    """A message was refused for ``reason``; ``detail`` is safe to log (no payload bytes)."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


class RejectionCounter:
    """Thread-safe tally of rejections by reason (MQTT callbacks run on the network thread)."""

    def __init__(self) -> None:
        self._counts: Counter[RejectReason] = Counter()
        self._lock = threading.Lock()

    def add(self, reason: RejectReason) -> None:
        with self._lock:
            self._counts[reason] += 1

    def snapshot(self) -> dict[str, int]:
        """Counts keyed by the reason's wire name, for logs and ``--json``."""
        with self._lock:
            return {reason.value: n for reason, n in sorted(self._counts.items())}

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())
