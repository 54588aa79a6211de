"""The device's outbox: sealed updates survive restarts and network loss until answered.

An update is written here (already sealed and signed) before it is published, and stays until
the aggregator's receipt arrives — accepted or refused — or its round is over. Unanswered
updates are resent with exponential backoff, always as the *same bytes*: the aggregator's
replay guard and its once-per-device-and-round rule make a resend harmless, so the aggregator
never counts an update twice however often the network drops the answer.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    nonce BLOB PRIMARY KEY,
    round_id INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    reason TEXT NOT NULL DEFAULT ''
);
"""


@dataclass(frozen=True)
class Pending:
    nonce: bytes
    round_id: int
    topic: str
    payload: bytes
    attempts: int


class Outbox:
    """SQLite-backed; ``retry_min_s`` doubles per attempt up to ``retry_max_s``."""

    def __init__(self, path: Path, *, retry_min_s: float, retry_max_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        path.chmod(0o600)
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s

    def add(self, nonce: bytes, round_id: int, topic: str, payload: bytes) -> None:
        self.db.execute("INSERT OR IGNORE INTO outbox (nonce, round_id, topic, payload, "
                        "created_at, next_attempt) VALUES (?, ?, ?, ?, ?, 0)",
                        (nonce, round_id, topic, payload, time.time()))

    def due(self, now: float | None = None) -> list[Pending]:
        """Pending updates whose next attempt is due, oldest first."""
        rows = self.db.execute("SELECT nonce, round_id, topic, payload, attempts FROM outbox "
                               "WHERE state = 'pending' AND next_attempt <= ? ORDER BY "
                               "created_at", (time.time() if now is None else now,)).fetchall()
        return [Pending(bytes(r[0]), r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    def sent(self, nonce: bytes, now: float | None = None) -> None:
        """Record an attempt and schedule the next one (exponential backoff)."""
        now = time.time() if now is None else now
        attempts = self.db.execute("SELECT attempts FROM outbox WHERE nonce = ?",
                                   (nonce,)).fetchone()
        if attempts is None:
            return
        delay = min(self.retry_max_s, self.retry_min_s * 2 ** int(attempts[0]))
        self.db.execute("UPDATE outbox SET attempts = attempts + 1, next_attempt = ? "
                        "WHERE nonce = ?", (now + delay, nonce))

    def answered(self, nonce: bytes, accepted: bool, reason: str) -> bool:
        """Apply a receipt; False if it names no pending update of ours."""
        cursor = self.db.execute("UPDATE outbox SET state = ?, reason = ?, payload = x'' "
                                 "WHERE nonce = ? AND state = 'pending'",
                                 ("accepted" if accepted else "rejected", reason, nonce))
        return cursor.rowcount == 1

    def expire_rounds_before(self, round_id: int) -> int:
        """Give up on unanswered updates of rounds that are over; returns how many."""
        cursor = self.db.execute("UPDATE outbox SET state = 'expired', payload = x'' "
                                 "WHERE state = 'pending' AND round_id < ?", (round_id,))
        return cursor.rowcount

    def skip(self, round_id: int, reason: str) -> None:
        """Record that this device sat a round out (and why), so it never trains for it."""
        self.db.execute("INSERT OR IGNORE INTO outbox (nonce, round_id, topic, payload, "
                        "created_at, next_attempt, state, reason) VALUES (?, ?, '', x'', ?, 0, "
                        "'skipped', ?)", (b"skip:%d" % round_id, round_id, time.time(), reason))

    def rounds_answered(self) -> set[int]:
        """Rounds this device already sent an update for (never train twice for one)."""
        return {int(r[0]) for r in self.db.execute("SELECT DISTINCT round_id FROM outbox")}

    def close(self) -> None:
        self.db.close()
