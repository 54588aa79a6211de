"""The SecAgg messages and their strict CBOR encoding (docs/protocol.md §10.2).

Every message is a CBOR map with a kind ``"k"``; the envelope around it (issue «Secure MQTT
transport») already binds it to a fleet, a round and an authenticated sender, so the bodies carry
only what the stage needs. :func:`decode` is the one entry point for bytes from the network: it
checks the kind, the exact field set, every type, every length and every count against the
round's :class:`~fedbeat.broker.secagg.params.RoundContext`, so memory taken from the network is
bounded by the vector size and the maximum degree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedbeat.broker import cbor
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.secagg import ring, shamir
from fedbeat.broker.secagg.credentials import (
    CACHE_ID_BYTES,
    DIGEST_BYTES,
    MAX_CERTIFICATE_BYTES,
    MAX_SIGNATURE_BYTES,
)
from fedbeat.broker.secagg.keys import PUBLIC_KEY_BYTES
from fedbeat.broker.secagg.params import MAX_DEGREE, RoundContext
from fedbeat.broker.topics import AGGREGATOR_ID, DEVICE_ID

SHARES_PLAINTEXT_BYTES = 2 * shamir.SHARE_BYTES       # self-mask seed share || mask key share
SHARES_CIPHERTEXT_BYTES = SHARES_PLAINTEXT_BYTES + 16  # + Poly1305 tag
MAX_INDEX = 1 << 20
MAX_REASON = 200


@dataclass(frozen=True)
class Peer:
    device_id: str
    index: int                 # the Shamir x coordinate of this device's shares
    cipher_public: bytes
    mask_public: bytes
    certificate: bytes = b""   # its advertisement, as relayed (credentials.py); empty: unsigned
    signature: bytes = b""
    digest: bytes = b""        # instead of the certificate: the SHA-256 of one the device has
    seed_digest: bytes = b""   # as advertised (it is part of what the signature covers)


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 0, device → aggregator: this round's two public keys, optionally signed."""

    cipher_public: bytes
    mask_public: bytes
    certificate: bytes = b""   # DER, issued by the fleet CA to this device
    signature: bytes = b""     # over credentials.advertisement(...)
    cache_id: bytes = b""      # names the neighbours' certificates this device remembers
    seed_digest: bytes = b""   # SHA-256 of the self-mask seed: checks its reconstruction


@dataclass(frozen=True)
class NeighbourKeys:
    """Stage 1, aggregator → device: its index, the threshold and its neighbours' keys."""

    index: int
    threshold: int
    peers: tuple[Peer, ...]


@dataclass(frozen=True)
class EncryptedShares:
    """Stage 1, device → aggregator: one sealed pair of shares per neighbour."""

    ciphertexts: tuple[tuple[str, bytes], ...]        # (recipient, ciphertext)


@dataclass(frozen=True)
class RelayedShares:
    """Stage 2, aggregator → device: the sealed shares its neighbours sent it."""

    ciphertexts: tuple[tuple[str, bytes], ...]        # (sender, ciphertext)


@dataclass(frozen=True)
class MaskedInput:
    """Stage 2, device → aggregator: the input plus all its masks, in the ring."""

    vector: bytes               # ring.pack(y, bits)


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 3, aggregator → device: which neighbours survived and which dropped."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class RevealedShares:
    """Stage 3, device → aggregator: self-mask shares of survivors, key shares of the dropped."""

    self_mask: tuple[tuple[str, bytes], ...]          # (owner, share)
    mask_key: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Abort:
    """Aggregator → devices: the round is over without a sum; forget its secrets."""

    reason: str


Message = (AdvertiseKeys | NeighbourKeys | EncryptedShares | RelayedShares | MaskedInput
           | UnmaskRequest | RevealedShares | Abort)


def encode(message: Message) -> bytes:
    match message:
        case AdvertiseKeys(cipher_public, mask_public, certificate, signature, cache_id,
                           seed_digest):
            body: dict[str, Any] = {"k": "advertise", "c": cipher_public, "s": mask_public,
                                    "x": certificate, "g": signature, "m": cache_id,
                                    "b": seed_digest}
        case NeighbourKeys(index, threshold, peers):
            body = {"k": "keys", "i": index, "t": threshold,
                    "p": [[p.device_id, p.index, p.cipher_public, p.mask_public,
                           p.certificate, p.signature, p.digest, p.seed_digest]
                          for p in peers]}
        case EncryptedShares(ciphertexts):
            body = {"k": "shares", "e": [list(pair) for pair in ciphertexts]}
        case RelayedShares(ciphertexts):
            body = {"k": "relay", "e": [list(pair) for pair in ciphertexts]}
        case MaskedInput(vector):
            body = {"k": "masked", "y": vector}
        case UnmaskRequest(survivors, dropped):
            body = {"k": "unmask", "a": list(survivors), "d": list(dropped)}
        case RevealedShares(self_mask, mask_key):
            body = {"k": "reveal", "b": [list(p) for p in self_mask],
                    "s": [list(p) for p in mask_key]}
        case Abort(reason):
            body = {"k": "abort", "r": reason}
    return cbor.encode(body)


def decode(data: bytes, context: RoundContext) -> Message:
    """The message in ``data`` or ``Rejected(MALFORMED)``; never another exception."""
    body = cbor.as_mapping(cbor.decode(data, "secagg message"), "secagg message")
    kind = body.get("k")
    fields = _FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise Rejected(RejectReason.MALFORMED, "unknown secagg message kind")
    if set(body) != fields | {"k"}:
        raise Rejected(RejectReason.MALFORMED, f"secagg {kind}: unexpected fields")
    what = f"secagg {kind}"
    match kind:
        case "advertise":
            cache_id = cbor.field(body, "m", bytes, what)
            if len(cache_id) not in (0, CACHE_ID_BYTES):
                raise Rejected(RejectReason.MALFORMED, f"{what}: cache id of a wrong length")
            seed_digest = cbor.field(body, "b", bytes, what)
            if len(seed_digest) not in (0, DIGEST_BYTES):
                raise Rejected(RejectReason.MALFORMED, f"{what}: seed digest of a wrong length")
            return AdvertiseKeys(_key(body, "c", what), _key(body, "s", what),
                                 *_credential(body, what), cache_id, seed_digest)
        case "keys":
            peers = tuple(_peer(item, what) for item in _items(body, "p", what))
            _unique([peer.device_id for peer in peers], what)
            _unique([str(peer.index) for peer in peers], what)
            return NeighbourKeys(cbor.bounded_int(body, "i", what, lo=1, hi=MAX_INDEX),
                                 cbor.bounded_int(body, "t", what, lo=1, hi=MAX_DEGREE), peers)
        case "shares":
            return EncryptedShares(_pairs(body, "e", what, SHARES_CIPHERTEXT_BYTES))
        case "relay":
            return RelayedShares(_pairs(body, "e", what, SHARES_CIPHERTEXT_BYTES))
        case "masked":
            vector = cbor.field(body, "y", bytes, what)
            if len(vector) != context.dim * ring.bytes_per_value(context.bits):
                raise Rejected(RejectReason.MALFORMED, f"{what}: wrong vector length")
            return MaskedInput(vector)
        case "unmask":
            return UnmaskRequest(_ids(body, "a", what), _ids(body, "d", what))
        case "reveal":
            return RevealedShares(_pairs(body, "b", what, shamir.SHARE_BYTES),
                                  _pairs(body, "s", what, shamir.SHARE_BYTES))
        case _:
            reason = cbor.field(body, "r", str, what)
            if len(reason) > MAX_REASON:
                raise Rejected(RejectReason.MALFORMED, f"{what}: reason too long")
            return Abort(reason)


_FIELDS: dict[str, set[str]] = {
    "advertise": {"c", "s", "x", "g", "m", "b"}, "keys": {"i", "t", "p"}, "shares": {"e"},
    "relay": {"e"}, "masked": {"y"}, "unmask": {"a", "d"}, "reveal": {"b", "s"}, "abort": {"r"},
}


def _items(body: Mapping[Any, Any], key: str, what: str) -> Sequence[Any]:
    items = cbor.as_sequence(body[key], f"{what} {key}")
    if len(items) > MAX_DEGREE:
        raise Rejected(RejectReason.MALFORMED, f"{what}: more than {MAX_DEGREE} entries")
    return items


def _device_id(value: object, what: str) -> str:
    if not isinstance(value, str) or DEVICE_ID.fullmatch(value) is None \
            or value == AGGREGATOR_ID:
        raise Rejected(RejectReason.MALFORMED, f"{what}: not a device id")
    return value


def _unique(ids: Sequence[str], what: str) -> None:
    if len(set(ids)) != len(ids):
        raise Rejected(RejectReason.MALFORMED, f"{what}: a device appears twice")


def _key(body: Mapping[Any, Any], key: str, what: str) -> bytes:
    raw = cbor.field(body, key, bytes, what)
    if len(raw) != PUBLIC_KEY_BYTES:
        raise Rejected(RejectReason.MALFORMED, f"{what}: public keys are 32 bytes")
    return raw


def _credential(body: Mapping[Any, Any], what: str) -> tuple[bytes, bytes]:
    certificate = cbor.field(body, "x", bytes, what)
    signature = cbor.field(body, "g", bytes, what)
    if len(certificate) > MAX_CERTIFICATE_BYTES or len(signature) > MAX_SIGNATURE_BYTES:
        raise Rejected(RejectReason.MALFORMED, f"{what}: certificate or signature too large")
    return certificate, signature


def _peer(item: object, what: str) -> Peer:
    device_id, index, cipher_public, mask_public, certificate, signature, digest, seed = \
        cbor.as_sequence(item, f"{what} peer", 8)
    fields = {"i": index, "c": cipher_public, "s": mask_public, "x": certificate,
              "g": signature, "h": digest, "b": seed}
    digests = [cbor.field(fields, key, bytes, what) for key in ("h", "b")]
    if any(len(d) not in (0, DIGEST_BYTES) for d in digests):
        raise Rejected(RejectReason.MALFORMED, f"{what}: a digest of a wrong length")
    return Peer(_device_id(device_id, what),
                cbor.bounded_int(fields, "i", what, lo=1, hi=MAX_INDEX),
                _key(fields, "c", what), _key(fields, "s", what), *_credential(fields, what),
                *digests)


def _pairs(body: Mapping[Any, Any], key: str, what: str,
           size: int) -> tuple[tuple[str, bytes], ...]:
    pairs = []
    for item in _items(body, key, what):
        device_id, blob = cbor.as_sequence(item, f"{what} entry", 2)
        if not isinstance(blob, bytes) or len(blob) != size:
            raise Rejected(RejectReason.MALFORMED, f"{what}: entries are {size} bytes")
        pairs.append((_device_id(device_id, what), blob))
    _unique([device_id for device_id, _ in pairs], what)
    return tuple(pairs)


def _ids(body: Mapping[Any, Any], key: str, what: str) -> tuple[str, ...]:
    ids = tuple(_device_id(item, what) for item in _items(body, key, what))
    _unique(ids, what)
    return ids
