"""Message bodies, and the one receive path every subscriber uses.

Sending: :func:`seal_update` (device → aggregator: tensors sealed to the aggregator, then
signed) and :func:`sign_plain` (round announcements, models, status: signed, not secret).

Receiving: :class:`Receiver` takes raw MQTT (topic, bytes) and applies, in order: size limit →
chunk reassembly → envelope structure → fleet and topic binding → the sender's key → signature →
replay and staleness. Only a message that passes all of them reaches the caller, and only then
is its payload opened (:func:`open_update`) or decoded (:func:`open_plain`). Every refusal is
counted by reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedbeat.broker import cbor, crypto, envelope
from fedbeat.broker.chunks import Reassembler, ReassemblyLimits, is_chunk
from fedbeat.broker.envelope import Header, KeyResolver, MessageType, SignedMessage
from fedbeat.broker.errors import Rejected, RejectionCounter, RejectReason
from fedbeat.broker.replay import ReplayGuard
from fedbeat.broker.tensors import Compressor, Float32, decode_tensors, encode_tensors
from fedbeat.broker.topics import AGGREGATOR_ID, FleetTopics

MAX_METRICS = 64
DEFAULT_MAX_ELEMENTS = 4_000_000      # 16 MB of float32 once decoded

LOSSLESS = Float32()
DEFAULT_LIMITS = ReassemblyLimits()
_REPLAY_CHECKED = (MessageType.UPDATE, MessageType.SECAGG, MessageType.DIRECT)
# A device's update topic carries everything it seals to the aggregator: plain-round updates
# and secure-aggregation stage messages (one ACL line, one subscription, one ordered queue).
_DEVICE_TOPIC_TYPES = {"update": (MessageType.UPDATE, MessageType.SECAGG),
                       "status": (MessageType.STATUS,)}


@dataclass(frozen=True)
class Update:
    """What a device reports for a round: tensors, how many examples made them, and metrics.

    ``metrics`` carries scalars such as the training loss and the privacy budget spent
    (``epsilon``), which the aggregator records per device.
    """

    num_samples: int
    tensors: dict[str, np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)


def encode_update(update: Update, compressor: Compressor = LOSSLESS) -> bytes:
    return cbor.encode({"n": update.num_samples,
                        "tensors": encode_tensors(update.tensors, compressor),
                        "metrics": {k: float(v) for k, v in update.metrics.items()}})


def decode_update(data: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS,
                  expected: Mapping[str, tuple[int, ...]] | None = None,
                  allow_subset: bool = False) -> Update:
    body = cbor.as_mapping(cbor.decode(data, "update"), "update")
    if set(body) != {"n", "tensors", "metrics"}:
        raise Rejected(RejectReason.MALFORMED, "update has unexpected fields")
    num_samples = cbor.bounded_int(body, "n", "update", lo=0, hi=2**40)
    metrics_map = cbor.as_mapping(body["metrics"], "update metrics")
    if len(metrics_map) > MAX_METRICS:
        raise Rejected(RejectReason.MALFORMED, "too many metrics")
    metrics = {}
    for key in metrics_map:
        if not isinstance(key, str) or len(key) > 64:
            raise Rejected(RejectReason.MALFORMED, "metric names must be short strings")
        value = cbor.field(metrics_map, key, float, "update metrics")
        if not math.isfinite(value):
            raise Rejected(RejectReason.MALFORMED, f"metric {key!r} is not finite")
        metrics[key] = value
    tensors = decode_tensors(body["tensors"], max_elements=max_elements, expected=expected,
                             allow_subset=allow_subset)
    return Update(num_samples, tensors, metrics)


def seal_update(header: Header, update: Update, *, signing_key: Ed25519PrivateKey,
                aggregator_key: X25519PublicKey, compressor: Compressor = LOSSLESS) -> bytes:
    """Encode, seal to the aggregator (bound to ``header``), then sign: the bytes to publish."""
    if header.type is not MessageType.UPDATE:
        raise ValueError("seal_update needs an UPDATE header")
    return _seal(header, encode_update(update, compressor), signing_key, aggregator_key)


def seal_secagg(header: Header, body: bytes, *, signing_key: Ed25519PrivateKey,
                aggregator_key: X25519PublicKey) -> bytes:
    """A secure-aggregation stage message (``broker.secagg.wire`` bytes), sealed and signed.

    Sealed although masked inputs and relayed shares are already hidden: the unmasking stage
    carries Shamir shares in the clear of SecAgg, and only the aggregator may collect them.
    """
    if header.type is not MessageType.SECAGG:
        raise ValueError("seal_secagg needs a SECAGG header")
    return _seal(header, body, signing_key, aggregator_key)


def _seal(header: Header, plaintext: bytes, signing_key: Ed25519PrivateKey,
          aggregator_key: X25519PublicKey) -> bytes:
    header_bytes = header.encode()
    sealed = crypto.seal(plaintext, aggregator_key, header_bytes)
    return envelope.sign(header, sealed, signing_key, header_bytes)


def open_secagg(message: SignedMessage, sealing_key: X25519PrivateKey) -> bytes:
    """The plaintext stage message of a verified SECAGG message (still to be decoded)."""
    if message.header.type is not MessageType.SECAGG:
        raise Rejected(RejectReason.UNKNOWN_TYPE, "not a secure-aggregation message")
    return crypto.open_sealed(message.payload, sealing_key, message.header_bytes)


def open_update(message: SignedMessage, sealing_key: X25519PrivateKey, **limits: Any) -> Update:
    """Decrypt and decode a verified UPDATE; ``limits`` go to :func:`decode_update`."""
    if message.header.type is not MessageType.UPDATE:
        raise Rejected(RejectReason.UNKNOWN_TYPE, "not an update")
    plaintext = crypto.open_sealed(message.payload, sealing_key, message.header_bytes)
    return decode_update(plaintext, **limits)


def sign_plain(header: Header, body: Mapping[str, Any], signing_key: Ed25519PrivateKey) -> bytes:
    """A signed, unencrypted message whose payload is a CBOR map."""
    return envelope.sign(header, cbor.encode(dict(body)), signing_key)


def open_plain(message: SignedMessage) -> Mapping[Any, Any]:
    """The CBOR map inside a verified plain message (still to be validated by its consumer)."""
    return cbor.as_mapping(cbor.decode(message.payload, message.header.type.value),
                           message.header.type.value)


class Receiver:
    """The receive path of one fleet (see the module docstring); not thread-safe.

    ``resolve_key`` maps a header to the key that must have signed it, raising
    ``Rejected(UNKNOWN_SENDER / REVOKED_SENDER)``. ``replay`` guards the non-retained types
    (updates and direct messages); round, model and status messages are retained, so the broker
    legitimately redelivers the same one on every subscribe, and their consumers compare round
    and model versions instead.
    """

    def __init__(self, fleet: str, resolve_key: KeyResolver, *,
                 replay: ReplayGuard | None = None,
                 limits: ReassemblyLimits = DEFAULT_LIMITS,
                 counter: RejectionCounter | None = None) -> None:
        self.topics = FleetTopics(fleet)
        self.resolve_key = resolve_key
        self.replay = replay
        self.limits = limits
        self.reassembler = Reassembler(limits)
        self.rejections = counter or RejectionCounter()

    def receive(self, topic: str, payload: bytes) -> SignedMessage | None:
        """The verified message, or ``None`` while a chunked transfer is incomplete.

        Raises ``Rejected`` after counting it; the caller decides whether to log and go on.
        """
        try:
            return self._receive(topic, payload)
        except Rejected as rejected:
            self.rejections.add(rejected.reason)
            raise
        finally:
            for _ in range(self.reassembler.expire()):
                self.rejections.add(RejectReason.CHUNK_TIMEOUT)

    def _receive(self, topic: str, payload: bytes) -> SignedMessage | None:
        expected_sender, expected_types = self._topic_binding(topic)
        if not payload:
            return None        # an empty retained message clears a topic: nothing to verify
        if is_chunk(payload):
            whole = self.reassembler.feed(expected_sender, payload)
            if whole is None:
                return None
            payload = whole
        unverified = envelope.parse(payload, self.limits.max_message_bytes)
        header = unverified.header
        if header.fleet != self.topics.fleet:
            raise Rejected(RejectReason.WRONG_FLEET, f"fleet {header.fleet!r}")
        if header.sender != expected_sender:
            raise Rejected(RejectReason.TOPIC_MISMATCH,
                           f"{header.sender!r} on {expected_sender!r}'s topic")
        if header.type not in expected_types:
            raise Rejected(RejectReason.UNKNOWN_TYPE,
                           f"{header.type.value} not expected on this topic")
        message = unverified.verify(self.resolve_key(header))
        if self.replay is not None and header.type in _REPLAY_CHECKED:
            self.replay.check(header)
        return message

    def _topic_binding(self, topic: str) -> tuple[str, tuple[MessageType, ...]]:
        device_topic = self.topics.parse_device_topic(topic)
        if device_topic is not None:
            if device_topic.kind == "inbox":         # the aggregator writes to a device's inbox
                return AGGREGATOR_ID, (MessageType.DIRECT,)
            return device_topic.device_id, _DEVICE_TOPIC_TYPES[device_topic.kind]
        if topic == self.topics.round:
            return AGGREGATOR_ID, (MessageType.ROUND,)
        if topic == self.topics.model or topic.startswith(self.topics.model + "/"):
            return AGGREGATOR_ID, (MessageType.MODEL,)
        if topic == self.topics.aggregator_status:
            return AGGREGATOR_ID, (MessageType.STATUS,)
        raise Rejected(RejectReason.UNKNOWN_TYPE, "topic is not part of the fleet's tree")
