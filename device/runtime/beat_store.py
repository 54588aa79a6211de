"""The device's local beat store: SQLite, bounded, oldest beats evicted first.

Beats never leave the device. Labelled beats (from annotations or clinician-confirmed events)
are trainable; unlabelled ones are kept for inference only. The store holds at most
``max_beats`` rows; inserting past that deletes the oldest, so a device that runs for months
keeps a fixed footprint (about 0.6 KB per beat: a 128-sample float32 window and 8 RR features).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np

from fedbeat.device.ecg.stream import StreamBeats
from fedbeat.models.spec import RR_FEATURES, WINDOW_SAMPLES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS beats (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    label INTEGER,
    window BLOB NOT NULL,
    rr BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS beats_label ON beats(label) WHERE label IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    beat_class INTEGER NOT NULL,
    probability REAL NOT NULL,
    model_version INTEGER NOT NULL
);
"""


class BeatStore:
    """Append beats, read the newest labelled ones for training; bounded in rows."""

    def __init__(self, path: Path, max_beats: int, *, max_events: int = 100_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        path.chmod(0o600)                         # patient data: owner only
        self.max_beats = max_beats
        self.max_events = max_events

    def add(self, beats: StreamBeats) -> int:
        """Store ``beats``; returns how many old beats were evicted to stay in bounds."""
        if len(beats) == 0:
            return 0
        now = time.time()
        labels = beats.labels if beats.labels is not None else [None] * len(beats)
        rows = [(now, None if label is None else int(label),
                 np.ascontiguousarray(w, "<f4").tobytes(), np.ascontiguousarray(r, "<f4").tobytes())
                for w, r, label in zip(beats.windows, beats.rr, labels, strict=True)]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO beats (received_at, label, window, rr) "
                                "VALUES (?, ?, ?, ?)", rows)
            return self._evict()

    def _evict(self) -> int:
        excess = self.count() - self.max_beats
        if excess <= 0:
            return 0
        self.db.execute("DELETE FROM beats WHERE id IN (SELECT id FROM beats ORDER BY id "
                        "LIMIT ?)", (excess,))
        return excess

    def count(self, *, labelled: bool = False) -> int:
        query = "SELECT COUNT(*) FROM beats" + (" WHERE label IS NOT NULL" if labelled else "")
        return int(self.db.execute(query).fetchone()[0])

    def labelled(self, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The newest ``limit`` labelled beats (windows, rr, labels), oldest first."""
        rows = self.db.execute("SELECT window, rr, label FROM beats WHERE label IS NOT NULL "
                               "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()[::-1]
        windows = np.frombuffer(b"".join(r[0] for r in rows), "<f4").reshape(-1, WINDOW_SAMPLES)
        rr = np.frombuffer(b"".join(r[1] for r in rows), "<f4").reshape(-1, len(RR_FEATURES))
        return windows.copy(), rr.copy(), np.array([r[2] for r in rows], dtype=np.int64)

    def log_events(self, classes: np.ndarray, probabilities: np.ndarray,
                   model_version: int) -> None:
        """Record beats the model calls arrhythmic (kept on the device, bounded)."""
        if classes.size == 0:
            return
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO events (at, beat_class, probability, model_version) "
                "VALUES (?, ?, ?, ?)",
                [(now, int(c), float(p), model_version)
                 for c, p in zip(classes, probabilities, strict=True)])
            self.db.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?",
                            (self.max_events,))

    def close(self) -> None:
        self.db.close()
