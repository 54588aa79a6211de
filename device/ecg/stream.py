"""The device's streaming beat pipeline: a live ECG lead in, model inputs out.

:class:`BeatStream` turns samples at the device's native rate (125-1000 Hz) into exactly what
training used -- the offline reader (:func:`fedbeat.device.ecg.records.lead_beats`) runs this
same class over a whole record with the reference annotations as R peaks -- so there is no
train/deploy skew. Per chunk:

1. causal 0.5-40 Hz band-pass at the native rate (:class:`~.windows.CausalBandpass`, state
   carried), written into a ring buffer of the last ``buffer_s`` seconds;
2. R peaks from a :class:`PeakSource`: the streaming QRS detector by default, or
   :class:`KnownPeaks` (annotations) to replay a labelled record;
3. once a beat's window has all its samples, the window is read on the canonical 180 Hz grid
   around the R peak (cubic interpolation, :class:`~.windows.WindowSampler`), median-removed
   and divided by the running R amplitude (:class:`~.windows.AmplitudeNormaliser`);
4. RR features from the R-peak times (:class:`~.rr.RrTracker`, state carried); a beat is
   emitted once its post-RR is known, i.e. when the next R peak is.

Latency: a beat is emitted when its window is complete, ``window_tail_s`` (0.456 s plus at
most two samples: 0.458 s at 360 Hz) after its R peak, *and* the next R peak is known -- with
known peaks as soon as that peak's sample arrives, with the QRS detector up to its
``max_delay_s`` (about 0.41 s) later, or at a search-back (1.66 average RR after the previous
beat); in the detector's first 2 s (learning) nothing is reported. So from an R peak to its
beat: ``max(window_tail_s, post-RR + detector delay)``, plus up to one chunk for the samples to
reach :meth:`BeatStream.push`. At 75 bpm that is about 1.2 s; a pause before the next beat
delays the beat by the pause (the post-RR interval is part of its features).

Memory is bounded: the filter state, a ring of ``buffer_s`` seconds of the filtered signal,
beats waiting for their window's last samples (no more than R peaks fit in 0.46 s) and one
beat waiting for its post-RR. Windows are cut as soon as their samples are in, so a long pause
does not need a longer buffer. A peak the source reports so late that its window has already
left the ring is used for RR timing but yields no beat (``dropped``): with the default 5 s
ring and 1 s blocks, a peak reported within 3.75 s of itself is always windowed, one reported
more than 4.75 s late never (the QRS detector's search-back stays within 3.75 s down to
about 30 bpm, and its learning phase reports its first peaks within 2.5 s).

Chunking never changes the output: chunks are processed in pieces split at fixed positions
(every ``BLOCK_S`` of samples), and whether a late window is still in the ring is decided
against the end of the piece's block, which is the same for every chunking.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np

from fedbeat.device.ecg.qrs import QrsDetector
from fedbeat.device.ecg.rr import RrTracker
from fedbeat.device.ecg.windows import BAND_HZ, AmplitudeNormaliser, CausalBandpass, WindowSampler
from fedbeat.models.spec import RR_FEATURES, WINDOW_SAMPLES

BUFFER_S: Final = 5.0
"""Default length of the ring buffer of filtered signal, in seconds."""

BLOCK_S: Final = 1.0
"""Chunks are processed in pieces that never straddle a multiple of this many seconds."""


class PeakSource(Protocol):
    """Where R peaks come from: fed every raw sample, in order, chunk by chunk."""

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed the next raw samples; return the R peaks newly known (absolute int indices).

        Peaks must come in increasing order over all calls, and each must be earlier than the
        number of samples fed so far.
        """
        ...


class KnownPeaks:
    """R peaks known in advance (reference annotations), revealed once their sample arrives.

    Parameters
    ----------
    samples
        R-peak sample indices at the stream's rate, strictly increasing, non-negative.
    labels
        Optional class index of every peak (AAMI), carried through to the emitted beats.

    Raises
    ------
    ValueError
        The positions are not strictly increasing integers from 0, or ``labels`` does not have
        one entry per position.
    """

    def __init__(self, samples: np.ndarray, labels: np.ndarray | None = None) -> None:
        positions = np.asarray(samples)
        if positions.ndim != 1 or (positions.size and not np.issubdtype(positions.dtype,
                                                                        np.integer)):
            raise ValueError(f"R-peak positions must be a 1-D array of sample indices, got "
                             f"{positions.dtype} array of shape {positions.shape}")
        if positions.size and (positions[0] < 0 or np.any(np.diff(positions) <= 0)):
            raise ValueError("R-peak positions must be strictly increasing sample indices >= 0")
        if labels is not None and np.shape(labels) != positions.shape:
            raise ValueError(f"labels must have one entry per R peak ({positions.size}), got "
                             f"shape {np.shape(labels)}")
        self.samples = positions.astype(np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self._received = 0
        self._next = 0

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Count the chunk's samples; return the positions that now lie in the signal."""
        self._received += len(chunk)
        end = int(np.searchsorted(self.samples, self._received))
        found, self._next = self.samples[self._next:end], end
        return found


@dataclass(frozen=True)
class StreamBeats:
    """Beats emitted by one :meth:`BeatStream.push`, in order.

    ``windows`` (k, 128) float32, ``rr`` (k, 8) float32, ``r_peaks`` (k,) int64 R-peak sample
    indices at the native rate, ``labels`` (k,) int64 when the peaks come with labels.
    """

    windows: np.ndarray
    rr: np.ndarray
    r_peaks: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.r_peaks.size)

    @classmethod
    def concatenate(cls, parts: list[StreamBeats], *, labelled: bool) -> StreamBeats:
        """All beats of ``parts`` in order (an empty result if there are none)."""
        if not parts:
            return cls(np.zeros((0, WINDOW_SAMPLES), dtype=np.float32),
                       np.zeros((0, len(RR_FEATURES)), dtype=np.float32),
                       np.zeros(0, dtype=np.int64),
                       np.zeros(0, dtype=np.int64) if labelled else None)
        labels = [p.labels for p in parts if p.labels is not None]
        return cls(np.concatenate([p.windows for p in parts]),
                   np.concatenate([p.rr for p in parts]),
                   np.concatenate([p.r_peaks for p in parts]),
                   np.concatenate(labels) if labelled else None)


@dataclass
class _Beat:
    """A beat between its R peak becoming known and its emission."""

    peak: int
    label: int
    window: np.ndarray | None = None
    rr: np.ndarray | None = None

    @property
    def complete(self) -> bool:
        return self.window is not None and self.rr is not None


@dataclass
class _Ring:
    """The last ``capacity`` samples of a signal, addressed by absolute sample index."""

    capacity: int
    end: int = 0
    data: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.data = np.zeros(self.capacity)

    @property
    def start(self) -> int:
        """Absolute index of the oldest sample still held."""
        return max(0, self.end - self.capacity)

    def write(self, x: np.ndarray) -> None:
        """Append ``x`` (at most ``capacity`` samples)."""
        head = self.end % self.capacity
        first = min(x.size, self.capacity - head)
        self.data[head:head + first] = x[:first]
        self.data[:x.size - first] = x[first:]
        self.end += x.size

    def take(self, index: np.ndarray) -> np.ndarray:
        """Samples at absolute ``index`` (all in ``[start, end)``)."""
        samples: np.ndarray = self.data[index % self.capacity]
        return samples


class BeatStream:
    """Streaming beat pipeline: raw ECG chunks in, normalised windows and RR features out.

    Parameters
    ----------
    sample_rate_hz
        The lead's sampling rate (devices: 125-1000 Hz); above 80 Hz, and within the QRS
        detector's 100-2000 Hz when it is the peak source.
    peaks
        Where R peaks come from; by default a :class:`~.qrs.QrsDetector` on the same samples.
        :class:`KnownPeaks` replays annotated positions and carries their labels.
    buffer_s
        Length of the ring buffer of filtered signal, in seconds (at least 3).

    Raises
    ------
    ValueError
        A sampling rate that is not a finite number above 80 Hz, or a buffer under 3 s.
    """

    def __init__(self, sample_rate_hz: float, *, peaks: PeakSource | None = None,
                 buffer_s: float = BUFFER_S) -> None:
        rate = float(sample_rate_hz)
        if not math.isfinite(rate) or rate <= 2 * BAND_HZ[1]:
            raise ValueError(f"sample rate must be a finite number of Hz above "
                             f"{2 * BAND_HZ[1]:g} (twice the filter's upper edge), got "
                             f"{sample_rate_hz!r}")
        if not buffer_s >= 3 * BLOCK_S:
            raise ValueError(f"buffer_s must be at least {3 * BLOCK_S:g} s, got {buffer_s!r}")
        self.sample_rate_hz = rate
        self._source: PeakSource = QrsDetector(rate) if peaks is None else peaks
        self._labels = peaks.labels if isinstance(peaks, KnownPeaks) else None
        self._filter = CausalBandpass(rate, settle=True)
        self._sampler = WindowSampler(rate)
        self._normaliser = AmplitudeNormaliser()
        self._rr = RrTracker()
        self._ring = _Ring(round(buffer_s * rate))
        self._block = max(1, round(BLOCK_S * rate))
        self._waiting: deque[_Beat] = deque()   # beats in R-peak order, not yet emitted
        self._latest: _Beat | None = None       # the latest peak's beat, awaiting its post-RR
        self._peaks_seen = 0
        self.dropped = 0
        """Beats whose R peak was reported after their window had left the ring buffer."""

    @property
    def received(self) -> int:
        """Number of samples pushed so far."""
        return self._ring.end

    @property
    def labelled(self) -> bool:
        """Whether emitted beats carry labels (the peak source is labelled :class:`KnownPeaks`)."""
        return self._labels is not None

    @property
    def pending(self) -> int:
        """Beats whose R peak is known but that are not emitted yet (bounded, see module)."""
        return len(self._waiting)

    @property
    def window_tail_s(self) -> float:
        """Time from an R peak to the last sample its window needs."""
        return (self._sampler.last + 1) / self.sample_rate_hz

    def push(self, chunk: np.ndarray) -> StreamBeats:
        """Feed the next raw samples; return the beats completed by them, in order.

        Raises
        ------
        ValueError
            The chunk is not 1-D, or holds NaN or infinite samples. The chunk is then rejected
            whole before any state changes: the stream stays usable, and the caller either
            pushes the next good chunk (treating the gap as contiguous signal) or starts a new
            stream after a long dropout.
        """
        x = np.asarray(chunk, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"expected a 1-D chunk of samples, got shape {x.shape}")
        if not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x))[0])
            raise ValueError(f"ECG chunk holds NaN or infinite samples (first at index {bad} "
                             "of the chunk); the chunk was rejected, the stream is unchanged")
        parts = [self._piece(x[lo:hi]) for lo, hi in self._pieces(x.size)]
        return StreamBeats.concatenate([p for p in parts if len(p)],
                                       labelled=self.labelled)

    def _pieces(self, size: int) -> list[tuple[int, int]]:
        """Split a chunk of ``size`` samples at absolute multiples of the block length."""
        start = self.received
        cuts = range((start // self._block + 1) * self._block, start + size, self._block)
        edges = [0, *(c - start for c in cuts), size]
        return [(lo, hi) for lo, hi in itertools.pairwise(edges) if hi > lo]

    def _piece(self, x: np.ndarray) -> StreamBeats:
        self._ring.write(self._filter.process(x))
        for peak in self._source.process(x).tolist():
            self._reveal(int(peak))
        self._cut_windows()
        return self._emit()

    def _reveal(self, peak: int) -> None:
        """Take a newly known R peak: RR features of the previous beat, a new pending beat."""
        features = self._rr.add(peak / self.sample_rate_hz)
        if self._latest is not None:
            self._latest.rr = features
        ordinal, self._peaks_seen = self._peaks_seen, self._peaks_seen + 1
        self._latest = None
        if ordinal == 0:                               # no pre-RR: never a beat
            return
        if not self._window_available(peak):
            if peak + self._sampler.first >= 0:        # a window cut by the stream start is
                self.dropped += 1                      # not a late peak
            return
        label = -1 if self._labels is None else int(self._labels[ordinal])
        self._latest = _Beat(peak, label)
        self._waiting.append(self._latest)

    def _window_available(self, peak: int) -> bool:
        """Whether the window of ``peak`` starts in the signal and is still (or will be) held.

        Judged against the end of the current block rather than the current sample, so the
        answer does not depend on how the signal was chunked.
        """
        block_end = -(-self.received // self._block) * self._block
        return peak + self._sampler.first >= max(0, block_end - self._ring.capacity)

    def _cut_windows(self) -> None:
        """Read and normalise, in order, every waiting window whose samples have all arrived."""
        ready = [b for b in self._waiting
                 if b.window is None and b.peak + self._sampler.last < self.received]
        if not ready:
            return
        peaks = np.array([b.peak for b in ready], dtype=np.int64)
        assert peaks[0] + self._sampler.first >= self._ring.start, "window left the ring"
        windows = self._sampler.windows(self._ring.take(self._sampler.index(peaks)))
        for beat, window in zip(ready, self._normaliser.normalise(windows), strict=True):
            beat.window = window

    def _emit(self) -> StreamBeats:
        """Pop the leading beats that have both their window and their RR features."""
        done: list[_Beat] = []
        while self._waiting and self._waiting[0].complete:
            done.append(self._waiting.popleft())
        if not done:
            return StreamBeats.concatenate([], labelled=self.labelled)
        return StreamBeats(np.stack([b.window for b in done if b.window is not None]),
                           np.stack([b.rr for b in done if b.rr is not None]),
                           np.array([b.peak for b in done], dtype=np.int64),
                           None if self._labels is None else
                           np.array([b.label for b in done], dtype=np.int64))
