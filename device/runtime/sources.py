"""Where a device's ECG comes from, behind one small interface.

Every source yields beats (:class:`~fedbeat.device.ecg.stream.StreamBeats`) on :meth:`poll`;
signal sources run the same streaming pipeline (:class:`~fedbeat.device.ecg.stream.BeatStream`:
causal filter, QRS detection, windows, RR features) that produced the training data, so there
is no train/deploy skew. Replays are paced at ``speed`` × real time (0 = as fast as possible),
so a laptop can simulate a day of wearing in minutes. Adding a BLE chest strap later means one
new class with ``poll`` and ``close``.
"""

from __future__ import annotations

__all__ = [
    "BeatsReplay",
    "SerialSource",
    "SignalReplay",
    "Source",
    "SourceError",
    "beats_file_source",
    "csv_source",
    "record_source",
    "synthetic_source",
]

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from fedbeat.device.config import SourceError
from fedbeat.device.ecg.errors import RecordError
from fedbeat.device.ecg.mitdb import lead_preference
from fedbeat.device.ecg.records import read_beat_annotations, read_lead
from fedbeat.device.ecg.stream import BeatStream, KnownPeaks, StreamBeats
from fedbeat.device.ecg.synthetic import synthetic_patient
from fedbeat.models.spec import RR_FEATURES, WINDOW_SAMPLES

FAST_CHUNK_S = 30.0       # seconds of signal per poll when replaying as fast as possible
MAX_CHUNK_S = 5.0         # at most this much signal per poll when paced
BEAT_PERIOD_S = 0.8       # synthetic beats arrive about this often (75 bpm) at speed 1


class Source(Protocol):
    """A stream of beats. ``labelled`` says whether beats carry reference labels."""

    name: str
    labelled: bool

    def poll(self) -> StreamBeats | None:
        """Beats that became available since the last call (maybe none); ``None`` once the
        source is exhausted (the end of a replayed record)."""

    def close(self) -> None: ...


def _empty(labelled: bool) -> StreamBeats:
    return StreamBeats(np.zeros((0, WINDOW_SAMPLES), np.float32),
                       np.zeros((0, len(RR_FEATURES)), np.float32), np.zeros(0, np.int64),
                       np.zeros(0, np.int64) if labelled else None)


class SignalReplay:
    """A whole recorded signal fed through the device pipeline at a pace."""

    def __init__(self, name: str, signal: np.ndarray, rate_hz: float, *,
                 peaks: KnownPeaks | None, speed: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.labelled = peaks is not None and peaks.labels is not None
        self.signal = signal
        self.rate_hz = rate_hz
        self.speed = speed
        self.clock = clock
        self.stream = BeatStream(rate_hz, peaks=peaks)
        self.position = 0
        self.started = clock()

    def poll(self) -> StreamBeats | None:
        if self.position >= self.signal.size:
            return None
        if self.speed == 0:
            due = self.position + int(FAST_CHUNK_S * self.rate_hz)
        else:
            elapsed = (self.clock() - self.started) * self.speed
            due = min(int(elapsed * self.rate_hz),
                      self.position + int(MAX_CHUNK_S * self.rate_hz))
        due = min(due, self.signal.size)
        if due <= self.position:
            return _empty(self.labelled)
        chunk = self.signal[self.position:due]
        self.position = due
        return self.stream.push(chunk)

    def close(self) -> None:
        pass


def record_source(directory: Path, record: str, *, lead: str = "", labels: bool = True,
                  speed: float = 1.0) -> SignalReplay:
    """Replay a WFDB record; with ``labels`` its beat annotations are the R peaks and labels
    (a labelled recording), otherwise the device's QRS detector finds the beats."""
    try:
        signal = read_lead(directory, record, lead_preference(lead or None))
        peaks = None
        if labels:
            annotations = read_beat_annotations(directory, record)
            peaks = KnownPeaks(annotations.samples, annotations.labels)
    except RecordError as exc:
        raise SourceError(f"[data] {exc}") from None
    return SignalReplay(f"record {record} ({signal.lead})", signal.signal, signal.rate_hz,
                        peaks=peaks, speed=speed)


def csv_source(path: Path, rate_hz: float, *, speed: float = 1.0) -> SignalReplay:
    """One number per line (or the first column): an unlabelled lead sampled at ``rate_hz``."""
    try:
        values = np.loadtxt(path, delimiter=",", usecols=0, ndmin=1, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise SourceError(f"[data] cannot read {path} as CSV samples ({exc})") from None
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise SourceError(f"[data] {path}: no samples, or non-numeric/NaN values")
    return SignalReplay(f"csv {path.name}", values, rate_hz, peaks=None, speed=speed)


class BeatsReplay:
    """Beats that were already cut and labelled, paced like a heart (one every
    :data:`BEAT_PERIOD_S` at speed 1; ``speed`` 0 hands them all over at once)."""

    labelled = True

    def __init__(self, name: str, windows: np.ndarray, rr: np.ndarray, labels: np.ndarray, *,
                 speed: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.windows, self.rr, self.labels = windows, rr, labels
        self.speed = speed
        self.clock = clock
        self.position = 0
        self.started = clock()

    def poll(self) -> StreamBeats | None:
        total = len(self.labels)
        if self.position >= total:
            return None
        if self.speed == 0:
            due = total
        else:
            due = min(total, int((self.clock() - self.started) * self.speed / BEAT_PERIOD_S))
        start, self.position = self.position, max(self.position, due)
        keep = slice(start, self.position)
        return StreamBeats(self.windows[keep], self.rr[keep],
                           np.arange(start, self.position, dtype=np.int64),
                           self.labels[keep].astype(np.int64))

    def close(self) -> None:
        pass


def synthetic_source(seed: int, *, speed: float = 1.0,
                     clock: Callable[[], float] = time.monotonic) -> BeatsReplay:
    """A simulated patient's labelled beats (``device/ecg/synthetic.py``).

    Everything made from it is synthetic, and the daemon says so in its logs (the name starts
    with ``SYNTHETIC``).
    """
    beats = synthetic_patient(seed)
    return BeatsReplay(f"SYNTHETIC patient {seed}", beats.windows, beats.rr, beats.labels,
                       speed=speed, clock=clock)


def beats_file_source(path: Path, *, speed: float = 1.0) -> BeatsReplay:
    """Labelled beats from a ``.npz`` file with ``windows`` (n, 128) float32, ``rr`` (n, 8)
    float32 and ``labels`` (n,) integer AAMI classes 0–4: beats a Holter analysis already
    cut and labelled, or one simulated device's share of a partitioned database."""
    names = ("windows", "rr", "labels")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in names if k not in arrays.files]
            if missing:
                raise SourceError(f"[data] {path} has no array {', '.join(missing)}; a beats "
                                  "file holds windows, rr and labels")
            windows, rr, labels = (np.asarray(arrays[k]) for k in names)
    except (OSError, ValueError) as exc:
        raise SourceError(f"[data] cannot read {path} as a beats file (.npz): {exc}") from None
    n = labels.shape[0] if labels.ndim == 1 else -1
    if windows.ndim == 3 and windows.shape[1] == 1:
        windows = windows[:, 0, :]
    problems = [
        (n >= 0, "labels must be one integer per beat"),
        (windows.shape == (n, WINDOW_SAMPLES), f"windows must be ({n}, {WINDOW_SAMPLES})"),
        (rr.shape == (n, len(RR_FEATURES)), f"rr must be ({n}, {len(RR_FEATURES)})"),
        (np.issubdtype(labels.dtype, np.integer) and bool(np.all((labels >= 0) & (labels < 5))),
         "labels must be AAMI class codes 0-4 (N S V F Q)"),
        (bool(np.isfinite(windows).all() and np.isfinite(rr).all()),
         "windows and rr must be finite"),
    ]
    for ok, what in problems:
        if not ok:
            raise SourceError(f"[data] {path}: {what}")
    return BeatsReplay(f"beats file {path.name}", windows.astype(np.float32),
                       rr.astype(np.float32), labels.astype(np.int64), speed=speed)


class SerialSource:
    """Samples as text lines (one integer or float per line) from a serial port (``pyserial``,
    the ``serial`` extra), unlabelled, through the QRS detector."""

    labelled = False

    def __init__(self, port: str, rate_hz: float, *, baudrate: int = 115200) -> None:
        try:
            import serial  # optional dependency, only on devices with a serial front end
        except ImportError:
            raise SourceError("[data] source = serial needs pyserial: pip install "
                              "'fedbeat[serial]'") from None
        try:
            self.port = serial.serial_for_url(port, baudrate=baudrate, timeout=0)
        except (serial.SerialException, ValueError) as exc:
            raise SourceError(f"[data] cannot open serial port {port}: {exc}") from None
        self.name = f"serial {port}"
        self.stream = BeatStream(rate_hz)
        self.pending = b""
        self.bad_lines = 0

    def poll(self) -> StreamBeats | None:
        self.pending += self.port.read(65536)
        lines = self.pending.split(b"\n")
        self.pending = lines.pop()
        samples = []
        for line in lines:
            try:
                samples.append(float(line))
            except ValueError:
                self.bad_lines += 1          # line noise on the wire: counted, skipped
        if not samples:
            return _empty(False)
        return self.stream.push(np.asarray(samples, dtype=np.float64))

    def close(self) -> None:
        self.port.close()
