"""Hypothesis fuzzing of every decoder that reads network bytes.

Over 10,000 cases in all: random bytes, random CBOR structures, and valid messages that were
truncated, extended, bit-flipped, spliced, replayed or sealed to the wrong key. The property is
the same everywhere: the decoder either accepts a message that is genuinely valid or raises
``Rejected`` with a named reason (which the receiver counts); no other exception ever escapes.
"""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire.fleet_keys import FLEET, Fleet, make_fleet

from fedbeat.broker import chunks, envelope
from fedbeat.broker.envelope import Header, MessageType
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.messages import Receiver, Update, decode_update, open_update, seal_update
from fedbeat.broker.replay import ReplayGuard
from fedbeat.broker.tensors import decode_tensors
from fedbeat.broker.topics import FleetTopics

FUZZ = settings(max_examples=2000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FLEET_KEYS: Fleet = make_fleet()
TOPICS = FleetTopics(FLEET)
TOPIC_CHOICES = [TOPICS.update("dev-a"), TOPICS.status("dev-b"), TOPICS.round, TOPICS.model,
                 TOPICS.model_chunk(0), TOPICS.inbox("dev-a"), "fedbeat/x/round", "junk"]
UPDATE = Update(10, {"w": np.linspace(-1, 1, 500, dtype=np.float32)}, {"loss": 0.1})


def valid_update(sender: str = "dev-a") -> bytes:
    header = Header.new(MessageType.UPDATE, fleet=FLEET, sender=sender, round=2)
    return seal_update(header, UPDATE, signing_key=FLEET_KEYS.devices[sender],
                       aggregator_key=FLEET_KEYS.aggregator_sealing.public_key())


VALID = valid_update()
VALID_FRAMES = chunks.split(VALID, 400)

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
    | st.binary(max_size=64) | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.integers(-5, 10) | st.text(max_size=3), inner, max_size=6)
    | st.builds(cbor2.CBORTag, st.sampled_from([18, 24, 1, 2, 28, 29, 258, 1000]), inner),
    max_leaves=20)


def receive_all(rx: Receiver, topic: str, payloads: list[bytes]) -> list[Any]:
    """Feed payloads; return accepted messages; check every refusal is named and counted."""
    accepted, reasons = [], []
    for payload in payloads:
        try:
            message = rx.receive(topic, payload)
        except Rejected as rejected:
            reasons.append(rejected.reason)
            continue
        if message is not None:
            accepted.append(message)
    assert all(isinstance(reason, RejectReason) for reason in reasons)
    assert rx.rejections.total() == len(reasons)
    return accepted


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from(TOPIC_CHOICES))
def test_random_bytes_on_any_topic(data: bytes, topic: str) -> None:
    assert receive_all(Receiver(FLEET, FLEET_KEYS.resolve), topic, [data]) == []


@FUZZ
@given(cbor_values, st.sampled_from(TOPIC_CHOICES))
def test_random_cbor_structures(value: Any, topic: str) -> None:
    try:
        data = cbor2.dumps(value)
    except (ValueError, TypeError, OverflowError):
        return
    assert receive_all(Receiver(FLEET, FLEET_KEYS.resolve), topic, [data]) == []
    for decoder in (lambda: envelope.Header.decode(data), lambda: decode_update(data),
                    lambda: chunks.Chunk.decode(data, 1 << 20),
                    lambda: decode_tensors(value, max_elements=1000)):
        with contextlib.suppress(Rejected):
            decoder()


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(VALID) * 8 - 1)),
    st.tuples(st.just("truncate"), st.integers(0, len(VALID) - 1)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("overwrite"), st.integers(0, len(VALID) - 1), st.binary(min_size=1,
                                                                              max_size=8)),
)


def mutate(data: bytes, mutation: tuple[Any, ...]) -> bytes:
    """Apply one mutation; positions wrap around so one strategy serves messages of any size."""
    kind = mutation[0]
    if kind == "flip":
        out = bytearray(data)
        bit = mutation[1] % (len(data) * 8)
        out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)
    if kind == "truncate":
        return data[:mutation[1] % len(data)]
    if kind == "extend":
        return data + mutation[1]
    position, patch = mutation[1] % len(data), mutation[2]
    out = bytearray(data)
    out[position:position + len(patch)] = patch
    return bytes(out)


@FUZZ
@given(mutations)
def test_mutated_sealed_updates_are_always_refused(mutation: tuple[Any, ...]) -> None:
    data = mutate(VALID, mutation)
    if data == VALID:
        return
    rx = Receiver(FLEET, FLEET_KEYS.resolve, replay=ReplayGuard())
    accepted = receive_all(rx, TOPICS.update("dev-a"), [data])
    # A mutation can only pass verification if it left the signed bytes intact (e.g. an
    # equivalent re-encoding); then the payload must still open to the original update.
    for message in accepted:
        update = open_update(message, FLEET_KEYS.aggregator_sealing)
        np.testing.assert_array_equal(update.tensors["w"], UPDATE.tensors["w"])


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID_FRAMES) - 1),
                          st.none() | mutations), min_size=1, max_size=40))
def test_chunk_streams_with_mutations_duplicates_and_reordering(
        plan: list[tuple[int, tuple[Any, ...] | None]]) -> None:
    frames = [VALID_FRAMES[i] if m is None else mutate(VALID_FRAMES[i], m) for i, m in plan]
    rx = Receiver(FLEET, FLEET_KEYS.resolve, replay=ReplayGuard())
    for message in receive_all(rx, TOPICS.update("dev-a"), frames):
        assert message.payload == envelope.parse(VALID, 1 << 20).payload
    assert rx.reassembler.pending_bytes <= rx.limits.max_pending_per_sender


@settings(max_examples=1000, deadline=None)
@given(st.integers(1, 5))
def test_replays_and_wrong_keys_are_refused(copies: int) -> None:
    data = valid_update("dev-b")
    rx = Receiver(FLEET, FLEET_KEYS.resolve, replay=ReplayGuard())
    accepted = receive_all(rx, TOPICS.update("dev-b"), [data] * (copies + 1))
    assert len(accepted) == 1
    assert rx.rejections.snapshot() == {"replay": copies}
    with pytest.raises(Rejected) as excinfo:
        open_update(accepted[0], X25519PrivateKey.generate())
    assert excinfo.value.reason is RejectReason.DECRYPT_FAILED


update_bodies = st.fixed_dictionaries({
    "n": st.integers(-2, 2**41) | st.booleans(),
    "tensors": st.lists(st.fixed_dictionaries(
        {"name": st.text(max_size=4), "shape": st.lists(st.integers(-1, 70), max_size=3),
         "dtype": st.sampled_from(["f32", "f16", "i8", "u8"]), "data": st.binary(max_size=80)},
        optional={"scale": st.floats(), "index": st.binary(max_size=40)}), max_size=3),
    "metrics": st.dictionaries(st.text(max_size=70), st.floats() | st.integers(), max_size=3),
})


@FUZZ
@given(update_bodies)
def test_update_bodies_decode_or_are_refused(body: dict[str, Any]) -> None:
    try:
        update = decode_update(cbor2.dumps(body), max_elements=10_000)
    except Rejected:
        return
    assert all(np.all(np.isfinite(t)) for t in update.tensors.values())
    assert update.num_samples >= 0
