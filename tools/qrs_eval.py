"""QRS detector evaluation the AAMI EC57 way, on the MIT-BIH Arrhythmia Database.

Detections are matched one-to-one to reference beat annotations within +/-150 ms; per record
this gives true positives (TP), false negatives (FN, missed beats) and false positives (FP),
sensitivity Se = TP / (TP + FN) and positive predictivity +P = TP / (TP + FP). The gross
figures sum TP, FN and FP over records before dividing (ANSI/AAMI EC57:2012; the convention
of ``bxb`` in the WFDB software).

Protocol (see docs/qrs.md): whole records from their first sample; the detector's 2 s learning
phase is not excluded (it reports those beats when learning ends). Ventricular flutter
episodes, between ``[`` and ``]`` annotations (record 207 only), are excluded: references
and detections inside them are not counted, as EC57 prescribes for QRS detection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedbeat.device.ecg.aami import SYMBOL_TO_CLASS
from fedbeat.device.ecg.mitdb import PREFERRED_LEAD
from fedbeat.device.ecg.qrs import QrsDetector, detect_qrs
from fedbeat.tools.errors import UsageError

MATCH_WINDOW_S = 0.150
"""Largest distance between a detection and the reference beat it matches (EC57)."""

FLUTTER_START, FLUTTER_END = "[", "]"


@dataclass(frozen=True)
class Score:
    """Beat-by-beat counts of one record, or of several summed (gross), and detector speed."""

    record: str
    tp: int
    fn: int
    fp: int
    duration_s: float = 0.0
    """Length of the signal the detector ran over."""
    detector_s: float = 0.0
    """Wall-clock time the detector took (reading the record excluded)."""

    @property
    def sensitivity(self) -> float:
        """Se = TP / (TP + FN); 1.0 when there was nothing to find."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def positive_predictivity(self) -> float:
        """+P = TP / (TP + FP); 1.0 when nothing was detected."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def realtime_factor(self) -> float | None:
        """Seconds of signal processed per second of detector time (None if not timed)."""
        return self.duration_s / self.detector_s if self.detector_s > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {"record": self.record, "beats": self.tp + self.fn, "tp": self.tp, "fn": self.fn,
                "fp": self.fp, "se": self.sensitivity, "ppv": self.positive_predictivity,
                "duration_s": self.duration_s, "detector_s": self.detector_s,
                "realtime_factor": self.realtime_factor}


@dataclass(frozen=True)
class Reference:
    """One record's lead and reference beats, as read from the database."""

    record: str
    signal: np.ndarray
    sample_rate_hz: float
    beats: np.ndarray
    excluded: np.ndarray     # (k, 2) inclusive sample ranges left out of the comparison


def match_beats(reference: np.ndarray, detected: np.ndarray,
                tolerance: int) -> tuple[int, int, int]:
    """Match detections to reference beats one-to-one within ``tolerance`` samples.

    Both sequences are walked in time order, pairing each reference beat with the earliest
    unmatched detection within reach. On a line, with a symmetric window, this greedy walk
    finds a largest possible matching.

    Returns
    -------
    (tp, fn, fp)
    """
    ref = np.sort(np.asarray(reference, dtype=np.int64))
    det = np.sort(np.asarray(detected, dtype=np.int64))
    i = j = tp = 0
    while i < ref.size and j < det.size:
        if det[j] < ref[i] - tolerance:
            j += 1
        elif det[j] > ref[i] + tolerance:
            i += 1
        else:
            tp += 1
            i += 1
            j += 1
    return tp, int(ref.size) - tp, int(det.size) - tp


def outside(samples: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """The samples that lie in none of the inclusive ``excluded`` ranges."""
    samples = np.asarray(samples, dtype=np.int64)
    keep = np.ones(samples.size, dtype=bool)
    for start, end in np.asarray(excluded, dtype=np.int64).reshape(-1, 2):
        keep &= (samples < start) | (samples > end)
    return samples[keep]


def flutter_episodes(symbols: Sequence[str], samples: np.ndarray) -> np.ndarray:
    """Inclusive sample ranges between ``[`` and ``]`` annotations (an open ``[`` runs on)."""
    episodes: list[tuple[int, int]] = []
    start: int | None = None
    for symbol, sample in zip(symbols, np.asarray(samples, dtype=np.int64), strict=True):
        if symbol == FLUTTER_START and start is None:
            start = int(sample)
        elif symbol == FLUTTER_END and start is not None:
            episodes.append((start, int(sample)))
            start = None
    if start is not None:
        episodes.append((start, np.iinfo(np.int64).max))
    return np.array(episodes, dtype=np.int64).reshape(-1, 2)


def score_record(ref: Reference, detected: np.ndarray, detector_s: float = 0.0) -> Score:
    """EC57 counts of ``detected`` against ``ref``, flutter episodes excluded."""
    tolerance = round(MATCH_WINDOW_S * ref.sample_rate_hz)
    tp, fn, fp = match_beats(outside(ref.beats, ref.excluded),
                             outside(detected, ref.excluded), tolerance)
    return Score(ref.record, tp, fn, fp, ref.signal.size / ref.sample_rate_hz, detector_s)


def gross(scores: Iterable[Score]) -> Score:
    """Gross totals: counts and times summed over records (EC57)."""
    items = list(scores)
    return Score("gross", sum(s.tp for s in items), sum(s.fn for s in items),
                 sum(s.fp for s in items), sum(s.duration_s for s in items),
                 sum(s.detector_s for s in items))


def stream_detect(signal: np.ndarray, sample_rate_hz: float, chunk: int | None = None
                  ) -> np.ndarray:
    """Run a fresh :class:`QrsDetector` over ``signal``, whole or ``chunk`` samples at a time."""
    if chunk is None:
        return detect_qrs(signal, sample_rate_hz)
    detector = QrsDetector(sample_rate_hz)
    found = [detector.process(signal[i:i + chunk]) for i in range(0, signal.size, chunk)]
    return np.concatenate([*found, detector.flush()])


def list_records(directory: Path) -> list[str]:
    """Records in a WFDB directory: those with a header and reference annotations."""
    return sorted(p.stem for p in directory.glob("*.hea") if p.with_suffix(".atr").is_file())


def select_records(directory: Path, wanted: str | None) -> list[str]:
    """All annotated records, or the comma-separated ``wanted`` ones (which must exist)."""
    available = list_records(directory)
    if not wanted:
        return available
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise UsageError(f"no annotated record {', '.join(unknown) or '(none given)'} in "
                         f"{directory}; available: {', '.join(available)}")
    return names


def read_reference(directory: Path, record: str) -> Reference:
    """Read a record at its native rate: lead MLII by name where present, else channel 0."""
    import wfdb  # optional dependency (extra "data")

    path = str(directory / record)
    try:
        names = list(wfdb.rdheader(path).sig_name)
        channel = names.index(PREFERRED_LEAD) if PREFERRED_LEAD in names else 0
        signals, fields = wfdb.rdsamp(path, channels=[channel])
        annotation = wfdb.rdann(path, "atr")
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read record {record} in {directory}: {exc}") from None
    symbols = list(annotation.symbol)
    samples = np.asarray(annotation.sample, dtype=np.int64)
    is_beat = np.array([s in SYMBOL_TO_CLASS for s in symbols], dtype=bool)
    return Reference(record, np.asarray(signals[:, 0], dtype=np.float64), float(fields["fs"]),
                     samples[is_beat], flutter_episodes(symbols, samples))


def evaluate_records(directory: Path, records: Sequence[str], *, chunk_s: float | None = None,
                     progress: Callable[[int, int], None] | None = None) -> list[Score]:
    """Detect QRS complexes in each record and score them against its annotations.

    Parameters
    ----------
    directory
        WFDB directory holding the records.
    records
        Record names.
    chunk_s
        Feed the detector this many seconds at a time, as a device would; default: each
        record in one call. The detections are the same either way; only the speed differs.
    progress
        Called as ``progress(done, total)`` after each record.
    """
    scores = []
    for done, record in enumerate(records, start=1):
        ref = read_reference(directory, record)
        chunk = None if chunk_s is None else max(1, round(chunk_s * ref.sample_rate_hz))
        started = time.perf_counter()
        detected = stream_detect(ref.signal, ref.sample_rate_hz, chunk)
        scores.append(score_record(ref, detected, time.perf_counter() - started))
        if progress is not None:
            progress(done, len(records))
    return scores
