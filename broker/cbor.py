"""Strict CBOR decoding for bytes that arrive from the network.

``cbor2`` is a general-purpose decoder: it follows shared references, builds regexes, big
numbers and sets from semantic tags, accepts indefinite lengths and duplicate map keys. None of
that belongs in our protocol, and each is attack surface, so :func:`decode` turns it all off,
bounds the nesting depth, requires that the whole buffer is one item, and turns every decoder
failure into ``Rejected(MALFORMED)``. Field accessors (:func:`field`) check types the same way,
so protocol code never touches an unchecked value.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import cbor2

from fedbeat.broker.errors import Rejected, RejectReason

T = TypeVar("T")

MAX_DEPTH = 8

# Every semantic tag cbor2 would otherwise interpret for us (dates, bignums, decimals, shared
# references, regexes, MIME, UUIDs, string references, sets, IP addresses, self-describe).
# Tag 18 (COSE_Sign1) is the only tag the protocol uses; it reaches us as a plain CBORTag.
_INTERPRETED_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261,
                     1004, 55799)


def _refuse(decoder: Any) -> Any:
    raise cbor2.CBORDecodeError("semantic tag not allowed")


_SEMANTIC = {tag: _refuse for tag in _INTERPRETED_TAGS}


def encode(value: object) -> bytes:
    """Deterministic (canonical) CBOR, so that signed bytes can be rebuilt and compared."""
    return cbor2.dumps(value, canonical=True)


def decode(data: bytes, what: str) -> object:
    """Decode exactly one CBOR item from ``data`` or raise ``Rejected(MALFORMED)``.

    ``what`` names the structure in the error ("envelope", "chunk", …); the bytes never appear.
    """
    stream = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            stream, semantic_decoders=_SEMANTIC, max_depth=MAX_DEPTH, allow_indefinite=False,
            allow_duplicate_keys=False)
        value = decoder.decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError,
            MemoryError, UnicodeError, LookupError) as exc:
        raise Rejected(RejectReason.MALFORMED, f"{what} is not valid CBOR "
                       f"({type(exc).__name__})") from None
    if stream.tell() != len(data):
        raise Rejected(RejectReason.MALFORMED, f"{what} has trailing bytes")
    return value


def as_mapping(value: object, what: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise Rejected(RejectReason.MALFORMED, f"{what} must be a map")
    return value


def as_sequence(value: object, what: str, length: int | None = None) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)):
        raise Rejected(RejectReason.MALFORMED, f"{what} must be an array")
    if length is not None and len(value) != length:
        raise Rejected(RejectReason.MALFORMED, f"{what} must have {length} items")
    return value


def field(mapping: Mapping[Any, Any], key: object, kind: type[T], what: str) -> T:
    """``mapping[key]`` if present and of exactly ``kind`` (``bool`` is not an ``int``)."""
    if key not in mapping:
        raise Rejected(RejectReason.MALFORMED, f"{what}: missing field {key!r}")
    value = mapping[key]
    if kind is int and isinstance(value, bool):
        raise Rejected(RejectReason.MALFORMED, f"{what}: field {key!r} must be an integer")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind):
        raise Rejected(RejectReason.MALFORMED,
                       f"{what}: field {key!r} must be {kind.__name__}")
    return value


def bounded_int(mapping: Mapping[Any, Any], key: object, what: str, *, lo: int,
                hi: int) -> int:
    """An integer field within [lo, hi]; CBOR integers can be arbitrarily large."""
    value = field(mapping, key, int, what)
    if not lo <= value <= hi:
        raise Rejected(RejectReason.MALFORMED, f"{what}: field {key!r} out of range")
    return value
