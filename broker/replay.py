"""Replay and staleness checks on verified envelope headers.

A message is refused if its (sender, round, nonce) was seen before, if its round is below the
receiver's floor (the round is over), or if its created-at stamp is further than ``max_skew_s``
from the receiver's clock. The skew bound is also what keeps memory bounded: a nonce only has to
be remembered until its stamp falls out of the window, because after that the message is refused
for its age anyway. A per-sender cap stops one device from filling the table.

Run these checks only after the signature verified, so an attacker cannot burn a device's
nonces with forged messages.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from fedbeat.broker.envelope import Header
from fedbeat.broker.errors import Rejected, RejectReason

DEFAULT_MAX_SKEW_S = 300.0
DEFAULT_MAX_NONCES_PER_SENDER = 4096


class ReplayGuard:
    """Remembers recent (sender, round, nonce) triples; not thread-safe."""

    def __init__(self, *, max_skew_s: float = DEFAULT_MAX_SKEW_S,
                 max_nonces_per_sender: int = DEFAULT_MAX_NONCES_PER_SENDER,
                 clock: Callable[[], float] = time.time) -> None:
        if max_skew_s <= 0:
            raise ValueError("max_skew_s must be positive")
        self.max_skew_ms = int(max_skew_s * 1000)
        self.max_nonces_per_sender = max_nonces_per_sender
        self.round_floor = 0
        self._clock = clock
        self._seen: set[tuple[str, int, bytes]] = set()
        self._expiry: list[tuple[int, str, int, bytes]] = []   # heap by forget-after time
        self._per_sender: dict[str, int] = {}

    def set_round_floor(self, round_id: int) -> None:
        """Refuse rounds below ``round_id`` from now on (the aggregator moved on)."""
        self.round_floor = max(self.round_floor, round_id)

    def check(self, header: Header) -> None:
        """Raise ``Rejected`` (STALE_ROUND, CLOCK_SKEW, REPLAY) or record the header."""
        now_ms = int(self._clock() * 1000)
        self._forget(now_ms)
        if header.round < self.round_floor:
            raise Rejected(RejectReason.STALE_ROUND,
                           f"round {header.round} is below {self.round_floor}")
        if abs(header.created_at_ms - now_ms) > self.max_skew_ms:
            raise Rejected(RejectReason.CLOCK_SKEW, "created-at is outside the skew bound")
        key = (header.sender, header.round, header.nonce)
        if key in self._seen:
            raise Rejected(RejectReason.REPLAY, f"nonce already seen from {header.sender}")
        if self._per_sender.get(header.sender, 0) >= self.max_nonces_per_sender:
            raise Rejected(RejectReason.REPLAY, f"{header.sender} sends faster than allowed")
        self._seen.add(key)
        self._per_sender[header.sender] = self._per_sender.get(header.sender, 0) + 1
        heapq.heappush(self._expiry, (header.created_at_ms + self.max_skew_ms, *key))

    def __len__(self) -> int:
        return len(self._seen)

    def _forget(self, now_ms: int) -> None:
        while self._expiry and self._expiry[0][0] < now_ms:
            _, sender, round_id, nonce = heapq.heappop(self._expiry)
            self._seen.discard((sender, round_id, nonce))
            left = self._per_sender[sender] - 1
            if left:
                self._per_sender[sender] = left
            else:
                del self._per_sender[sender]
