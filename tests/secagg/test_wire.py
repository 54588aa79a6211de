"""SecAgg wire messages: exact round trips, and nothing from the network escapes as a crash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbeat.broker import cbor
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.secagg import ring, shamir, wire
from fedbeat.broker.secagg.params import RoundContext

CONTEXT = RoundContext("f", 1, 16, 20)
KEY = bytes(range(32))
CIPHERTEXT = bytes(wire.SHARES_CIPHERTEXT_BYTES)
SHARE = bytes(shamir.SHARE_BYTES)

SAMPLES: list[wire.Message] = [
    wire.AdvertiseKeys(KEY, KEY[::-1]),
    wire.AdvertiseKeys(KEY, KEY, b"\x30" * 500, b"\x30" * 70, b"cacheid!"),
    wire.NeighbourKeys(3, 2, (wire.Peer("a", 1, KEY, KEY), wire.Peer("b", 2, KEY, KEY,
                                                                      b"cert", b"sig"),
                              wire.Peer("c", 4, KEY, KEY, b"", b"sig", KEY))),
    wire.EncryptedShares((("a", CIPHERTEXT), ("b", CIPHERTEXT))),
    wire.RelayedShares((("a", CIPHERTEXT),)),
    wire.MaskedInput(bytes(16 * ring.bytes_per_value(20))),
    wire.UnmaskRequest(("a", "b"), ("c",)),
    wire.RevealedShares((("a", SHARE),), (("c", SHARE),)),
    wire.Abort("too few devices"),
]


def _decoded_or_reason(data: bytes) -> wire.Message | RejectReason:
    try:
        return wire.decode(data, CONTEXT)
    except Rejected as refused:
        return refused.reason


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: wire.Message) -> None:
    assert wire.decode(wire.encode(message), CONTEXT) == message


@pytest.mark.parametrize("body", [
    {"k": "advertise", "c": KEY, "s": KEY[:31], "x": b"", "g": b"", "m": b""},
    {"k": "advertise", "c": KEY, "s": KEY, "x": b"", "g": b"", "m": b"", "extra": 1},
    {"k": "advertise", "c": KEY, "s": KEY, "x": b"", "g": b""},
    {"k": "advertise", "c": KEY, "s": KEY, "x": bytes(3000), "g": b"", "m": b""},
    {"k": "advertise", "c": KEY, "s": KEY, "x": b"", "g": bytes(100), "m": b""},
    {"k": "advertise", "c": KEY, "s": KEY, "x": b"", "g": b"", "m": b"short"},
    {"k": "keys", "i": 1, "t": 1, "p": [["a", 2, KEY, KEY]]},
    {"k": "keys", "i": 1, "t": 1, "p": [["a", 2, KEY, KEY, b"", b"", b"not 32 bytes"]]},
    {"k": "keys", "i": 0, "t": 1, "p": []},
    {"k": "keys", "i": 1, "t": 1, "p": [["a", 2, KEY, KEY, b"", b"", b""],
                                         ["a", 3, KEY, KEY, b"", b"", b""]]},
    {"k": "keys", "i": 1, "t": 1, "p": [["a", 2, KEY, KEY, b"", b"", b""],
                                         ["b", 2, KEY, KEY, b"", b"", b""]]},
    {"k": "shares", "e": [["a/b", CIPHERTEXT]]},
    {"k": "shares", "e": [["a", CIPHERTEXT[:-1]]]},
    {"k": "shares", "e": [["a", CIPHERTEXT]] * 600},
    {"k": "masked", "y": bytes(47)},
    {"k": "unmask", "a": ["a", "a"], "d": []},
    {"k": "reveal", "b": [["a", SHARE + b"x"]], "s": []},
    {"k": "abort", "r": "x" * 1000},
    {"k": "sum", "v": 1},
    {"c": KEY, "s": KEY},
])
def test_malformed_bodies_are_refused_with_a_reason(body: dict[str, object]) -> None:
    with pytest.raises(Rejected) as refused:
        wire.decode(cbor.encode(body), CONTEXT)
    assert refused.value.reason is RejectReason.MALFORMED


@settings(max_examples=400)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    outcome = _decoded_or_reason(data)
    if isinstance(outcome, RejectReason):
        assert outcome is RejectReason.MALFORMED


_cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=70) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner,
                                                                max_size=3),
    max_leaves=8)


@settings(max_examples=400)
@given(st.sampled_from(sorted({"advertise", "keys", "shares", "relay", "masked", "unmask",
                               "reveal", "abort"})),
       st.dictionaries(st.sampled_from(["c", "s", "i", "t", "p", "e", "y", "a", "d", "b", "r",
                                        "x", "g", "m"]),
                       _cbor_values, max_size=4))
def test_structured_garbage_of_every_kind_is_refused_cleanly(kind: str,
                                                             fields: dict[str, object]) -> None:
    outcome = _decoded_or_reason(cbor.encode({"k": kind, **fields}))
    if isinstance(outcome, RejectReason):
        assert outcome is RejectReason.MALFORMED
    else:
        assert wire.decode(wire.encode(outcome), CONTEXT) == outcome


@settings(max_examples=300)
@given(st.sampled_from(SAMPLES), st.integers(min_value=0), st.integers(0, 255))
def test_flipped_bytes_of_valid_messages_decode_or_are_refused(message: wire.Message,
                                                               position: int, value: int) -> None:
    data = bytearray(wire.encode(message))
    data[position % len(data)] = value
    outcome = _decoded_or_reason(bytes(data))
    if isinstance(outcome, RejectReason):
        assert outcome is RejectReason.MALFORMED
