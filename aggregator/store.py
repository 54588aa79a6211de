"""The aggregator's durable state in SQLite (WAL): rounds, accepted updates, devices, metrics.

Crash recovery rests on one rule: **an update is accepted exactly when its row commits.** The
row holds the update's decoded tensors, so after a crash (even ``kill -9``) the open round's
aggregate is rebuilt by replaying its rows; the aggregation is order-independent bit for bit
(``aggregator/strategies``), so the rebuilt aggregate equals the lost in-memory one. The primary
key ``(round_id, device_id)`` makes "at most once per device and round" a database constraint,
not a hope. When a round closes, its new model version is committed to the model store first
and the round row last, so a crash in between is detected and finished on restart; the
tensors of closed rounds are deleted (their digests stay as an audit trail).

Several accepted updates may share one commit (:meth:`StateStore.transaction`, group commit);
none of them is acknowledged before it.

Durability is chosen, not accidental: WAL with ``synchronous=NORMAL`` writes every commit to
the WAL file before the commit returns, so it survives a crash of the process (``kill -9``,
OOM) completely; it calls ``fsync`` only at checkpoints. After a power loss or kernel crash the
commits since the last checkpoint may therefore be lost although their updates were
acknowledged; the round then simply has fewer updates. ``synchronous=FULL`` would close that
gap with one ``fsync`` per commit (per group, with group commit).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedbeat.broker import cbor

SCHEMA_VERSION = 1
PAGE_BYTES = 32768
"""SQLite page size of a new database. An accepted row carries its update's tensors (about
200 KB for ``ecg-cnn-m``): in 32 KB pages that is 7 overflow pages written to the WAL per
commit instead of 49 of SQLite's default 4 KB, which costs less CPU per commit (measured in
``docs/benchmarks.md``, aggregator ingest)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round_id INTEGER PRIMARY KEY,
    model_version INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'closed', 'aborted')),
    opened_at REAL NOT NULL,
    deadline REAL NOT NULL,
    extensions INTEGER NOT NULL DEFAULT 0,
    closed_at REAL,
    result_version INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    announcement TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS accepted (
    round_id INTEGER NOT NULL REFERENCES rounds(round_id),
    device_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    digest TEXT NOT NULL,
    num_samples INTEGER NOT NULL,
    base_version INTEGER NOT NULL,
    accepted_at REAL NOT NULL,
    metrics TEXT NOT NULL,
    tensors BLOB,
    bytes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (round_id, device_id)
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    accepted INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    last_seen REAL,
    epsilon REAL
);
CREATE TABLE IF NOT EXISTS rejections (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS round_metrics (round_id INTEGER PRIMARY KEY, metrics TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


@dataclass(frozen=True)
class RoundRow:
    round_id: int
    model_version: int
    state: str
    opened_at: float
    deadline: float
    extensions: int
    closed_at: float | None
    result_version: int | None
    reason: str
    announcement: dict[str, Any]


@dataclass(frozen=True)
class AcceptedUpdate:
    round_id: int
    device_id: str
    nonce: bytes
    digest: str
    num_samples: int
    base_version: int
    metrics: dict[str, float]
    tensors: dict[str, np.ndarray]
    bytes: int = 0                       # size of the signed, sealed message on the wire


def encode_tensors(tensors: Mapping[str, np.ndarray]) -> bytes:
    """Exact bytes of each array with its dtype and shape (CBOR): update tensors in a row's
    blob, and the server optimizer's state (which may hold integers or strings too)."""
    out = {}
    for name, value in tensors.items():
        array = np.asarray(value, order="C")   # no copy when contiguous; keeps 0-d arrays 0-d
        if array.dtype.hasobject:
            raise TypeError(f"{name}: object arrays cannot be stored")
        out[name] = [array.dtype.str, list(array.shape), array.tobytes()]
    return cbor.encode(out)


def decode_tensors(blob: bytes) -> dict[str, np.ndarray]:
    data = cbor.decode(blob, "stored tensors")
    assert isinstance(data, Mapping)
    return {name: np.frombuffer(raw, np.dtype(dtype)).reshape(shape).copy()
            for name, (dtype, shape, raw) in data.items()}


class StateStore:
    """One SQLite database; every method is one transaction. Not shared across threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        # Takes effect only when the file is created (an existing database keeps its size).
        self.db.execute(f"PRAGMA page_size={PAGE_BYTES}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(_SCHEMA)
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        elif int(version) != SCHEMA_VERSION:
            raise RuntimeError(f"{path}: schema version {version}, this fedbeat reads "
                               f"{SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    # -- meta and blobs ------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def get_blob(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM blobs WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    # -- rounds ------------------------------------------------------------------------------

    def open_round(self, round_id: int, model_version: int, deadline: float,
                   announcement: Mapping[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO rounds (round_id, model_version, state, opened_at, deadline, "
            "announcement) VALUES (?, ?, 'open', ?, ?, ?)",
            (round_id, model_version, time.time(), deadline, json.dumps(dict(announcement))))

    def extend_round(self, round_id: int, deadline: float,
                     announcement: Mapping[str, Any]) -> None:
        self.db.execute("UPDATE rounds SET deadline = ?, extensions = extensions + 1, "
                        "announcement = ? WHERE round_id = ?",
                        (deadline, json.dumps(dict(announcement)), round_id))

    def finish_round(self, round_id: int, state: str, *, result_version: int | None,
                     reason: str, optimizer_state: bytes | None = None,
                     announcement: Mapping[str, Any] | None = None) -> None:
        """Close or abort a round, drop its tensors and save the server optimizer, atomically."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "UPDATE rounds SET state = ?, closed_at = ?, result_version = ?, reason = ?, "
                "announcement = COALESCE(?, announcement) WHERE round_id = ?",
                (state, time.time(), result_version, reason,
                 json.dumps(dict(announcement)) if announcement is not None else None,
                 round_id))
            self.db.execute("UPDATE accepted SET tensors = NULL WHERE round_id = ?", (round_id,))
            if optimizer_state is not None:
                self.db.execute("INSERT OR REPLACE INTO blobs VALUES ('server_optimizer', ?)",
                                (optimizer_state,))

    def _round(self, row: tuple[Any, ...]) -> RoundRow:
        return RoundRow(round_id=row[0], model_version=row[1], state=row[2], opened_at=row[3],
                        deadline=row[4], extensions=row[5], closed_at=row[6],
                        result_version=row[7], reason=row[8], announcement=json.loads(row[9]))

    def open_round_row(self) -> RoundRow | None:
        row = self.db.execute("SELECT * FROM rounds WHERE state = 'open' "
                              "ORDER BY round_id DESC LIMIT 1").fetchone()
        return None if row is None else self._round(row)

    def rounds(self, limit: int = 1000) -> list[RoundRow]:
        rows = self.db.execute("SELECT * FROM rounds ORDER BY round_id DESC LIMIT ?",
                               (limit,)).fetchall()
        return [self._round(r) for r in rows]

    def last_round_id(self) -> int:
        row = self.db.execute("SELECT MAX(round_id) FROM rounds").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # -- updates -----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction around several :meth:`accept` calls (group commit): their rows
        commit together when the block ends, or none of them if it raises.

        Until then nothing is durable: acknowledge none of these updates before the block
        has returned.
        """
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            yield

    def accept(self, update: AcceptedUpdate) -> bool:
        """Record an accepted update; False if this device already has one in the round.

        Commits at once, or with the enclosing :meth:`transaction`.
        """
        if self.db.in_transaction:
            return self._insert(update)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            return self._insert(update)

    def _insert(self, update: AcceptedUpdate) -> bool:
        inserted = self.db.execute(
            "INSERT INTO accepted (round_id, device_id, nonce, digest, num_samples, "
            "base_version, accepted_at, metrics, tensors, bytes) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (round_id, device_id) DO NOTHING",
            (update.round_id, update.device_id, update.nonce, update.digest,
             update.num_samples, update.base_version, time.time(),
             json.dumps(update.metrics), encode_tensors(update.tensors), update.bytes))
        if inserted.rowcount != 1:
            return False
        self.db.execute(
            "INSERT INTO devices (device_id, accepted, last_seen, epsilon) "
            "VALUES (?, 1, ?, ?) ON CONFLICT(device_id) DO UPDATE SET "
            "accepted = accepted + 1, last_seen = excluded.last_seen, "
            "epsilon = COALESCE(excluded.epsilon, epsilon)",
            (update.device_id, time.time(), update.metrics.get("epsilon")))
        return True

    def has_update(self, round_id: int, device_id: str) -> bool:
        row = self.db.execute("SELECT 1 FROM accepted WHERE round_id = ? AND device_id = ?",
                              (round_id, device_id)).fetchone()
        return row is not None

    def accepted_updates(self, round_id: int) -> Iterator[AcceptedUpdate]:
        """The round's updates with their tensors, in device-id order (one at a time)."""
        cursor = self.db.execute(
            "SELECT round_id, device_id, nonce, digest, num_samples, base_version, metrics, "
            "tensors FROM accepted WHERE round_id = ? AND tensors IS NOT NULL "
            "ORDER BY device_id", (round_id,))
        for row in cursor:
            yield AcceptedUpdate(row[0], row[1], bytes(row[2]), row[3], row[4], row[5],
                                 json.loads(row[6]), decode_tensors(bytes(row[7])))

    def round_updates(self, round_id: int) -> list[dict[str, Any]]:
        """Who contributed to a round, with how many examples, metrics and bytes (no tensors)."""
        rows = self.db.execute("SELECT device_id, num_samples, metrics, bytes FROM accepted "
                               "WHERE round_id = ? ORDER BY device_id", (round_id,)).fetchall()
        return [{"device_id": d, "num_samples": n, "metrics": json.loads(m), "bytes": b}
                for d, n, m, b in rows]

    def record_rejection(self, reason: str, device_id: str | None) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO rejections VALUES (?, 1) ON CONFLICT(reason) "
                            "DO UPDATE SET count = count + 1", (reason,))
            if device_id is not None:
                self.db.execute(
                    "INSERT INTO devices (device_id, rejected, last_seen) VALUES (?, 1, ?) "
                    "ON CONFLICT(device_id) DO UPDATE SET rejected = rejected + 1, "
                    "last_seen = excluded.last_seen", (device_id, time.time()))

    def rejection_counts(self) -> dict[str, int]:
        return {r: int(c) for r, c in
                self.db.execute("SELECT reason, count FROM rejections ORDER BY reason")}

    def devices(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT device_id, accepted, rejected, last_seen, epsilon "
                               "FROM devices ORDER BY device_id").fetchall()
        return [dict(zip(("device_id", "accepted", "rejected", "last_seen", "epsilon"), r,
                         strict=True)) for r in rows]

    # -- metrics -----------------------------------------------------------------------------

    def save_round_metrics(self, round_id: int, metrics: Mapping[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO round_metrics VALUES (?, ?)",
                        (round_id, json.dumps(dict(metrics))))

    def round_metrics(self) -> list[dict[str, Any]]:
        return [{"round": r, **json.loads(m)} for r, m in
                self.db.execute("SELECT round_id, metrics FROM round_metrics ORDER BY round_id")]
