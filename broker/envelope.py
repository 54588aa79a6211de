"""The signed envelope every fedbeat message travels in: a COSE_Sign1 (RFC 9052) structure.

Wire form (CBOR)::

    18([ protected: bstr .cbor Header, unprotected: {}, payload: bstr, signature: bstr(64) ])

``Header`` is a canonical CBOR map with the COSE labels ``1`` (alg, always ``-8`` = EdDSA) and
``4`` (kid = sender id, UTF-8) plus our own text labels: ``v`` protocol version, ``t`` message
type, ``f`` fleet, ``r`` round, ``m`` model version, ``ts`` created-at (ms since the Unix epoch),
``n`` 16-byte random nonce. The signature is Ed25519 over the COSE ``Sig_structure``
``["Signature1", protected, h'', payload]``, so any COSE library can check it.

Receiving is ordered so that nothing an unverified sender controls is parsed beyond the header:
size check → outer structure → header fields → the sender's key (from the registry) → signature
→ only then the payload (``broker/messages.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedbeat.broker import cbor, crypto
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.topics import AGGREGATOR_ID, DEVICE_ID, FLEET_ID

PROTOCOL_VERSION = 1
COSE_SIGN1_TAG = 18
COSE_ALG_EDDSA = -8
NONCE_BYTES = 16
MAX_HEADER_BYTES = 512
MAX_ROUND = 2**53 - 1          # stays exact in every JSON/JavaScript consumer



class MessageType(StrEnum):
    """What a message is; it decides who may sign it and how its payload is read."""

    ROUND = "round"      # aggregator: round announcement
    MODEL = "model"      # aggregator: global model
    DIRECT = "direct"    # aggregator → one device (its inbox)
    UPDATE = "update"    # device: model update, sealed to the aggregator
    SECAGG = "secagg"    # device: a secure-aggregation stage message, sealed to the aggregator
    STATUS = "status"    # device or aggregator: presence and progress

    def allows_sender(self, sender: str) -> bool:
        """Round, model and direct messages come only from the aggregator, updates only from
        devices; either may send status."""
        if self in (MessageType.ROUND, MessageType.MODEL, MessageType.DIRECT):
            return sender == AGGREGATOR_ID
        return self is MessageType.STATUS or sender != AGGREGATOR_ID


@dataclass(frozen=True)
class Header:
    """The signed metadata of one message (see the module docstring for the wire labels)."""

    type: MessageType
    fleet: str
    sender: str
    round: int
    model_version: int
    created_at_ms: int
    nonce: bytes
    version: int = PROTOCOL_VERSION

    @classmethod
    def new(cls, type: MessageType, *, fleet: str, sender: str, round: int = 0,
            model_version: int = 0, now: float | None = None) -> Header:
        """A header with a fresh random nonce, stamped with ``now`` (default: the clock)."""
        stamp = time.time() if now is None else now
        header = cls(type, fleet, sender, round, model_version, int(stamp * 1000),
                     os.urandom(NONCE_BYTES))
        header.validate()
        return header

    def validate(self) -> None:
        """Raise ``Rejected`` if any field is outside what the protocol allows."""
        if self.version != PROTOCOL_VERSION:
            raise Rejected(RejectReason.UNSUPPORTED_VERSION,
                           f"protocol version {self.version}, expected {PROTOCOL_VERSION}")
        if not FLEET_ID.fullmatch(self.fleet):
            raise Rejected(RejectReason.MALFORMED, "invalid fleet id")
        if not DEVICE_ID.fullmatch(self.sender):
            raise Rejected(RejectReason.MALFORMED, "invalid sender id")
        if not self.type.allows_sender(self.sender):
            raise Rejected(RejectReason.UNKNOWN_TYPE,
                           f"{self.type.value} messages cannot come from {self.sender!r}")
        for name in ("round", "model_version", "created_at_ms"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_ROUND:
                raise Rejected(RejectReason.MALFORMED, f"{name} out of range")
        if len(self.nonce) != NONCE_BYTES:
            raise Rejected(RejectReason.MALFORMED, "nonce must be 16 bytes")

    def encode(self) -> bytes:
        return cbor.encode({
            1: COSE_ALG_EDDSA, 4: self.sender.encode(), "v": self.version, "t": self.type.value,
            "f": self.fleet, "r": self.round, "m": self.model_version, "ts": self.created_at_ms,
            "n": self.nonce,
        })

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if len(data) > MAX_HEADER_BYTES:
            raise Rejected(RejectReason.MALFORMED, "header too large")
        fields = cbor.as_mapping(cbor.decode(data, "header"), "header")
        version = cbor.field(fields, "v", int, "header")
        if version != PROTOCOL_VERSION:
            raise Rejected(RejectReason.UNSUPPORTED_VERSION,
                           f"protocol version {version}, expected {PROTOCOL_VERSION}")
        if len(fields) != 9:
            raise Rejected(RejectReason.MALFORMED, "header has unexpected fields")
        if cbor.field(fields, 1, int, "header") != COSE_ALG_EDDSA:
            raise Rejected(RejectReason.MALFORMED, "header alg must be EdDSA (-8)")
        kind = cbor.field(fields, "t", str, "header")
        try:
            message_type = MessageType(kind)
        except ValueError:
            raise Rejected(RejectReason.UNKNOWN_TYPE, "unknown message type") from None
        try:
            sender = cbor.field(fields, 4, bytes, "header").decode("ascii")
        except UnicodeDecodeError:
            raise Rejected(RejectReason.MALFORMED, "invalid sender id") from None
        header = cls(
            message_type, cbor.field(fields, "f", str, "header"), sender,
            cbor.bounded_int(fields, "r", "header", lo=0, hi=MAX_ROUND),
            cbor.bounded_int(fields, "m", "header", lo=0, hi=MAX_ROUND),
            cbor.bounded_int(fields, "ts", "header", lo=0, hi=MAX_ROUND),
            cbor.field(fields, "n", bytes, "header"), version)
        header.validate()
        return header


@dataclass(frozen=True)
class SignedMessage:
    """A message whose signature has been verified; ``payload`` is still opaque bytes."""

    header: Header
    header_bytes: bytes
    payload: bytes


@dataclass(frozen=True)
class UnverifiedMessage:
    """The parts of an envelope before its signature is checked: use only to find the key."""

    header: Header
    header_bytes: bytes
    payload: bytes
    signature: bytes

    def verify(self, key: Ed25519PublicKey) -> SignedMessage:
        crypto.verify(self.signature, _sig_structure(self.header_bytes, self.payload), key)
        return SignedMessage(self.header, self.header_bytes, self.payload)


KeyResolver = Callable[[Header], Ed25519PublicKey]
"""Return the public key that must have signed a message with this header, or raise Rejected
(UNKNOWN_SENDER, REVOKED_SENDER, …)."""


def _sig_structure(header_bytes: bytes, payload: bytes) -> bytes:
    return cbor.encode(["Signature1", header_bytes, b"", payload])


def sign(header: Header, payload: bytes, key: Ed25519PrivateKey,
         header_bytes: bytes | None = None) -> bytes:
    """The encoded envelope. Pass ``header_bytes`` when the payload was sealed against them."""
    protected = header.encode() if header_bytes is None else header_bytes
    signature = crypto.sign(_sig_structure(protected, payload), key)
    return cbor.encode(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))


def parse(data: bytes, max_bytes: int) -> UnverifiedMessage:
    """Split an envelope into its parts and decode the header; nothing is trusted yet."""
    if len(data) > max_bytes:
        raise Rejected(RejectReason.OVERSIZED, f"{len(data)} bytes, limit {max_bytes}")
    outer: Any = cbor.decode(data, "envelope")
    if not isinstance(outer, cbor2.CBORTag) or outer.tag != COSE_SIGN1_TAG:
        raise Rejected(RejectReason.MALFORMED, "envelope is not a COSE_Sign1")
    protected, unprotected, payload, signature = cbor.as_sequence(outer.value, "envelope", 4)
    if not (isinstance(protected, bytes) and isinstance(payload, bytes)
            and isinstance(signature, bytes)) or unprotected != {}:
        raise Rejected(RejectReason.MALFORMED, "envelope fields have the wrong types")
    return UnverifiedMessage(Header.decode(protected), protected, payload, signature)


def verify(data: bytes, resolve_key: KeyResolver, max_bytes: int) -> SignedMessage:
    """Parse, find the signer's key, check the signature; raise ``Rejected`` on any failure."""
    message = parse(data, max_bytes)
    return message.verify(resolve_key(message.header))
