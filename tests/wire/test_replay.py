"""Replay guard: duplicates, stale rounds, clock skew, bounded memory."""

from __future__ import annotations

import dataclasses

import pytest

from fedbeat.broker.envelope import Header, MessageType
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.replay import ReplayGuard


def header(round_id: int = 5, now: float = 1000.0, sender: str = "dev-a") -> Header:
    return Header.new(MessageType.UPDATE, fleet="f", sender=sender, round=round_id, now=now)


def test_the_same_nonce_twice_is_a_replay_but_a_fresh_one_passes() -> None:
    guard = ReplayGuard(clock=lambda: 1000.0)
    first = header()
    guard.check(first)
    with pytest.raises(Rejected) as excinfo:
        guard.check(first)
    assert excinfo.value.reason is RejectReason.REPLAY
    guard.check(header())
    # The same nonce in another round or from another sender is a different message.
    guard.check(dataclasses.replace(first, round=6))
    guard.check(dataclasses.replace(first, sender="dev-b"))


def test_rounds_below_the_floor_are_stale() -> None:
    guard = ReplayGuard(clock=lambda: 1000.0)
    guard.set_round_floor(5)
    guard.set_round_floor(3)              # the floor never moves back
    with pytest.raises(Rejected) as excinfo:
        guard.check(header(round_id=4))
    assert excinfo.value.reason is RejectReason.STALE_ROUND
    guard.check(header(round_id=5))


@pytest.mark.parametrize(("stamp", "ok"), [(1000.0, True), (1299.0, True), (701.0, True),
                                           (1301.0, False), (699.0, False)])
def test_created_at_must_be_within_the_skew_bound(stamp: float, ok: bool) -> None:
    guard = ReplayGuard(max_skew_s=300, clock=lambda: 1000.0)
    if ok:
        guard.check(header(now=stamp))
    else:
        with pytest.raises(Rejected) as excinfo:
            guard.check(header(now=stamp))
        assert excinfo.value.reason is RejectReason.CLOCK_SKEW


def test_memory_is_bounded_by_the_skew_window_and_per_sender_cap() -> None:
    now = [1000.0]
    guard = ReplayGuard(max_skew_s=10, max_nonces_per_sender=3, clock=lambda: now[0])
    old = header(now=1000.0)
    guard.check(old)
    guard.check(header(now=1000.0))
    guard.check(header(now=1000.0))
    with pytest.raises(Rejected, match="faster"):
        guard.check(header(now=1000.0))
    guard.check(header(now=1000.0, sender="dev-b"))      # other senders are not affected
    now[0] = 1011.0
    guard.check(header(now=1011.0))                     # the old nonces were forgotten
    assert len(guard) == 1
    with pytest.raises(Rejected) as excinfo:           # and the old message is now too old
        guard.check(old)
    assert excinfo.value.reason is RejectReason.CLOCK_SKEW
