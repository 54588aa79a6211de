"""Chunking: any order, duplicates, corruption, memory caps and timeouts."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbeat.broker.chunks import Chunk, Reassembler, ReassemblyLimits, is_chunk, split
from fedbeat.broker.errors import Rejected, RejectReason


def test_small_messages_travel_whole_and_large_ones_as_bounded_chunks() -> None:
    assert split(b"\xd2small", 1024) == [b"\xd2small"]
    message = os.urandom(5 * 1024 * 1024)
    frames = split(message, 128 * 1024)
    assert len(frames) == 41
    assert all(len(f) <= 128 * 1024 and is_chunk(f) for f in frames)


@given(st.binary(min_size=1, max_size=5000), st.integers(120, 700), st.randoms())
@settings(max_examples=150, deadline=None)
def test_reassembly_in_any_order_with_duplicates(message: bytes, limit: int,
                                                 rnd: random.Random) -> None:
    frames = split(message, limit)
    if len(frames) == 1:
        return
    delivery = frames + rnd.sample(frames, k=min(3, len(frames)))
    rnd.shuffle(delivery)
    reassembler = Reassembler()
    results = [r for f in delivery if (r := reassembler.feed("dev-a", f)) is not None]
    assert results == [message]
    assert reassembler.pending_bytes == 0


def test_late_duplicates_after_completion_are_ignored() -> None:
    frames = split(os.urandom(1000), 200)
    reassembler = Reassembler()
    outputs = [reassembler.feed("dev-a", f) for f in frames]
    assert outputs[-1] is not None
    assert all(reassembler.feed("dev-a", f) is None for f in frames)


def test_same_transfer_from_two_senders_is_kept_apart() -> None:
    frames = split(os.urandom(1000), 200)
    reassembler = Reassembler()
    for frame in frames[:-1]:
        reassembler.feed("dev-a", frame)
    assert reassembler.feed("dev-b", frames[-1]) is None
    assert reassembler.feed("dev-a", frames[-1]) is not None


def tampered(frame: bytes, **changes: object) -> bytes:
    chunk = Chunk.decode(frame, 1 << 30)
    fields = {**chunk.__dict__, **changes}
    return Chunk(**fields).encode()  # type: ignore[arg-type]


def test_corruption_is_caught_by_the_hash() -> None:
    frames = split(os.urandom(1000), 200)
    frames[2] = tampered(frames[2], data=bytes(len(Chunk.decode(frames[2], 1 << 20).data)))
    reassembler = Reassembler()
    for frame in frames[:-1]:
        reassembler.feed("dev-a", frame)
    with pytest.raises(Rejected) as excinfo:
        reassembler.feed("dev-a", frames[-1])
    assert excinfo.value.reason is RejectReason.CHUNK_HASH_MISMATCH
    assert reassembler.pending_bytes == 0


@pytest.mark.parametrize(("change", "expected"), [
    ({"total": 999}, RejectReason.CHUNK_MISMATCH),
    ({"count": 9}, RejectReason.CHUNK_MISMATCH),
    ({"sha256": bytes(32)}, RejectReason.CHUNK_MISMATCH),
    ({"data": b"different"}, RejectReason.CHUNK_MISMATCH),
])
def test_a_chunk_contradicting_its_transfer_drops_it(change: dict[str, object],
                                                     expected: RejectReason) -> None:
    frames = split(os.urandom(1000), 200)
    reassembler = Reassembler()
    reassembler.feed("dev-a", frames[0])
    bad = tampered(frames[0] if "data" in change else frames[1], **change)
    with pytest.raises(Rejected) as excinfo:
        reassembler.feed("dev-a", bad)
    assert excinfo.value.reason is expected
    assert reassembler.pending_bytes == 0


def test_data_beyond_the_declared_size_is_an_overflow() -> None:
    frames = split(os.urandom(1000), 200)
    reassembler = Reassembler()
    first = Chunk.decode(frames[0], 1 << 20)
    reassembler.feed("dev-a", frames[0])
    big = Chunk(first.transfer_id, 1, first.count, first.total, first.sha256,
                b"x" * (first.total - len(first.data) + 1)).encode()
    with pytest.raises(Rejected) as excinfo:
        reassembler.feed("dev-a", big)
    assert excinfo.value.reason is RejectReason.CHUNK_OVERFLOW


def test_memory_caps_per_sender_in_total_and_per_message() -> None:
    limits = ReassemblyLimits(max_message_bytes=10_000, max_pending_per_sender=15_000,
                              max_pending_total=25_000)
    reassembler = Reassembler(limits)
    reassembler.feed("dev-a", split(os.urandom(8000), 1000)[0])
    with pytest.raises(Rejected) as excinfo:        # dev-a would hold 16,000 declared bytes
        reassembler.feed("dev-a", split(os.urandom(8000), 1000)[0])
    assert excinfo.value.reason is RejectReason.CHUNK_OVERFLOW
    reassembler.feed("dev-b", split(os.urandom(8000), 1000)[0])
    reassembler.feed("dev-c", split(os.urandom(8000), 1000)[0])
    with pytest.raises(Rejected, match="memory is full"):
        reassembler.feed("dev-d", split(os.urandom(8000), 1000)[0])
    with pytest.raises(Rejected) as excinfo:
        reassembler.feed("dev-e", split(os.urandom(20_000), 1000)[0])
    assert excinfo.value.reason is RejectReason.OVERSIZED
    assert reassembler.pending_bytes == 24_000


def test_stalled_transfers_expire_and_free_their_memory() -> None:
    now = [0.0]
    reassembler = Reassembler(ReassemblyLimits(timeout_s=10), clock=lambda: now[0])
    frames = split(os.urandom(3000), 1000)
    reassembler.feed("dev-a", frames[0])
    now[0] = 5.0
    assert reassembler.expire() == 0
    now[0] = 11.0
    assert reassembler.expire() == 1
    assert reassembler.pending_bytes == 0
    # The rest of that transfer now starts a new one, which cannot complete without chunk 0.
    assert all(reassembler.feed("dev-a", f) is None for f in frames[1:])
