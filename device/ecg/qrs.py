"""Streaming QRS detection on one ECG lead, as a device runs it on a live signal.

The detector follows Pan & Tompkins (1985), with the decision rules as studied by Hamilton &
Tompkins (1986) and implemented in Hamilton's open-source detector (Hamilton 2002):

1. Front end: band-pass 5-15 Hz, derivative, absolute value, moving-window integration
   (150 ms). Hamilton (2002) takes the absolute value where Pan & Tompkins square; it keeps
   the dynamic range small, so tall ectopic beats do not lift the threshold above the normal
   beats that follow them.
2. Candidate peaks: maxima of the integrated signal that no larger value follows or precedes
   within the 200 ms refractory period (Hamilton 2002 holds each peak 200 ms in case a bigger
   one comes along).
3. Decision: a candidate is a QRS if it exceeds ``noise + f * (signal - noise)``, where the
   signal and noise levels are running averages of QRS and non-QRS candidate heights (Pan &
   Tompkins 1985). While the last eight RR intervals are irregular the threshold is lowered
   (Pan & Tompkins halve it; here x0.7). A candidate within 360 ms of the last QRS whose
   steepest slope is under half that QRS's is a T wave.
4. Search-back: with no QRS for 1.66 average RR intervals (Pan & Tompkins 1985), the
   largest candidate since then, and at least 360 ms after the last QRS so that it is no T
   wave (Hamilton 2002), is a QRS if it exceeds half the threshold; until a QRS is found,
   later candidates face that half threshold too.
5. Recovery: after 8 s without a QRS the levels are learnt again from the last 8 s
   (Hamilton 2002), so one huge artefact cannot silence the detector.
6. The reported index is the largest ``|x|`` of the lead band-passed 0.5-40 Hz (the band beat
   windows are cut from) in the 200 ms before the integrated peak, corrected for that
   filter's group delay, so it lands on the R peak (or the dominant deflection of the QRS).

Everything is causal and streaming: filters carry their state between chunks (``zi``), a few
hundred milliseconds of history are kept, and any chunking of the input gives bit-identical
results.

References
----------
Pan J, Tompkins WJ. A real-time QRS detection algorithm. IEEE Trans Biomed Eng
32(3):230-236 (1985).
Hamilton PS, Tompkins WJ. Quantitative investigation of QRS detection rules using the
MIT/BIH arrhythmia database. IEEE Trans Biomed Eng 33(12):1157-1165 (1986).
Hamilton P. Open source ECG analysis. Computers in Cardiology 29:101-104 (2002).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import signal as sps
from scipy.ndimage import maximum_filter1d

MIN_RATE_HZ = 100.0
MAX_RATE_HZ = 2000.0
"""Sampling rates the filters can be designed for (evaluated at 125-1000 Hz)."""

_RR_MEMORY = 8
"""Intervals (and levels) the RR averages remember (Pan & Tompkins 1985)."""


@dataclass(frozen=True)
class QrsParams:
    """Constants of the detector; the defaults are the evaluated configuration (docs/qrs.md)."""

    band_hz: tuple[float, float] = (5.0, 15.0)
    """Detection band: QRS energy in, P/T waves, baseline wander and mains hum out."""
    refine_band_hz: tuple[float, float] = (0.5, 40.0)
    """Band in which the R peak is located (the band of ``windows.causal_bandpass``)."""
    integration_s: float = 0.15
    """Moving-window integration width, about the widest QRS (Pan & Tompkins 1985)."""
    refractory_s: float = 0.2
    """No two QRS complexes closer than this; a peak is held this long for a bigger one."""
    search_s: float = 0.2
    """How far before the integrated peak the R peak is looked for."""
    learning_s: float = 2.0
    """Learning phase that initialises the levels (Pan & Tompkins 1985)."""
    threshold_fraction: float = 0.35
    """``f`` in threshold = noise + f x (signal - noise)."""
    irregular_factor: float = 0.7
    """Threshold multiplier while the last eight RR intervals are irregular."""
    search_back_rr: float = 1.66
    """Search back after this many average RR intervals without a QRS (Pan & Tompkins 1985)."""
    search_back_fraction: float = 0.5
    """Search-back threshold as a fraction of the threshold (Pan & Tompkins 1985)."""
    t_wave_s: float = 0.36
    """Candidates closer than this to the last QRS face the T-wave slope test."""
    t_wave_slope_ratio: float = 0.5
    """A T wave's steepest slope is under this fraction of the previous QRS's."""
    recovery_s: float = 8.0
    """Learn the levels again after this long without a QRS (Hamilton 2002)."""
    min_amplitude: float = 0.02
    """Candidates below this amplitude in the refine band (input units, mV) are ignored."""
    rr_init_s: float = 1.0
    """Average RR interval assumed before two beats have been seen."""


@dataclass(frozen=True)
class _Peak:
    """A candidate: integrated-signal peak and what the decision rules need about it."""

    index: int          # absolute index of the integrated-signal peak
    height: float       # integrated-signal value there
    slope: float        # steepest |derivative| in the search window
    r_peak: int         # absolute index to report if it is a QRS
    amplitude: float    # |refine-band signal| at the R peak


class _FrontEnd:
    """Band-pass, derivative, |.|, moving-window integration and refine band, chunk by chunk.

    Every stage carries exact state between chunks (filter ``zi``, the last samples, a running
    sum accumulated in sample order), so any chunking gives bit-identical output. The two
    fourth-order Butterworth band-passes run as ``scipy.signal.lfilter`` in transfer-function
    form: at this order it agrees with the second-order-section form to 2e-9 (relative, worst
    case 0.5-40 Hz at 2000 Hz) and costs a fifth of ``sosfilt``'s per-call overhead, which
    dominates for the short chunks a device feeds.
    """

    def __init__(self, rate: float, params: QrsParams) -> None:
        self.rate = rate
        self.band = sps.butter(2, params.band_hz, btype="bandpass", fs=rate)
        self.refine = sps.butter(2, params.refine_band_hz, btype="bandpass", fs=rate)
        self.width = max(1, round(params.integration_s * rate))
        self.zi_band = np.zeros(len(self.band[0]) - 1)
        self.zi_refine = np.zeros(len(self.refine[0]) - 1)
        self.started = False
        self.last_input = 0.0
        self.last_band = 0.0
        self.slope_tail = np.zeros(self.width)
        self.running_sum = 0.0

    def refine_delay(self) -> int:
        """Group delay of the refine band-pass at QRS frequencies (15 Hz), in samples."""
        _, delay = sps.group_delay(self.refine, w=[15.0], fs=self.rate)
        return round(float(delay[0]))

    def run(self, x: np.ndarray) -> np.ndarray:
        """Rows: integrated |slope|, |slope| and |refine-band signal| of the chunk ``x``."""
        if not self.started:       # start in steady state at the first sample: no step
            self.zi_band = sps.lfilter_zi(*self.band) * x[0]
            self.zi_refine = sps.lfilter_zi(*self.refine) * x[0]
            self.started = True
        self.last_input = float(x[-1])
        band, self.zi_band = sps.lfilter(*self.band, x, zi=self.zi_band)
        refine, self.zi_refine = sps.lfilter(*self.refine, x, zi=self.zi_refine)
        slope = np.empty_like(band)
        slope[0] = band[0] - self.last_band
        np.subtract(band[1:], band[:-1], out=slope[1:])
        slope = np.abs(slope, out=slope) * self.rate
        self.last_band = float(band[-1])
        return np.stack([self._integrate(slope), slope, np.abs(refine)])

    def _integrate(self, values: np.ndarray) -> np.ndarray:
        """Moving average over ``width`` samples, as a running sum added in sample order."""
        extended = np.concatenate([self.slope_tail, values])
        change = extended[self.width:] - extended[:-self.width]
        total = np.cumsum(np.concatenate([[self.running_sum], change]))[1:]
        self.running_sum = float(total[-1])
        self.slope_tail = extended[-self.width:]
        average: np.ndarray = np.maximum(total, 0.0) / self.width
        return average


class _Levels:
    """Running signal and noise peak levels and the threshold between them (P&T 1985)."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.signal = 0.0
        self.noise = 0.0

    @property
    def threshold(self) -> float:
        return self.noise + self.fraction * (self.signal - self.noise)

    def learn(self, heights: np.ndarray) -> None:
        """Start from a stretch of candidate heights: half the largest, half the median."""
        if heights.size:
            self.signal = 0.5 * float(heights.max())
            self.noise = 0.5 * float(np.median(heights))

    def qrs(self, height: float, weight: float) -> None:
        self.signal += weight * (height - self.signal)

    def not_qrs(self, height: float) -> None:
        self.noise += 0.125 * (height - self.noise)


class _RrHistory:
    """RR AVERAGE1 and RR AVERAGE2 of Pan & Tompkins (1985), in samples."""

    def __init__(self, initial: float) -> None:
        self.initial = initial
        self.recent: deque[float] = deque(maxlen=_RR_MEMORY)
        self.regular: deque[float] = deque(maxlen=_RR_MEMORY)
        self.outliers = 0

    def average(self) -> float:
        """Mean of recent intervals that lay within 92-116 % of this average (RR AVERAGE2)."""
        source = self.regular or self.recent
        return sum(source) / len(source) if source else self.initial

    def irregular(self) -> bool:
        """Some of the last eight intervals lie outside 92-116 % of the average."""
        if len(self.recent) < _RR_MEMORY:
            return False
        average = self.average()
        return not 0.92 * average <= min(self.recent) <= max(self.recent) <= 1.16 * average

    def add(self, interval: float) -> None:
        """Record an interval; after eight outliers in a row the rhythm has changed: adopt it."""
        average = self.average()
        self.recent.append(interval)
        if not self.regular or 0.92 * average <= interval <= 1.16 * average:
            self.regular.append(interval)
            self.outliers = 0
            return
        self.outliers += 1
        if self.outliers >= _RR_MEMORY:
            self.regular = deque(self.recent, maxlen=_RR_MEMORY)
            self.outliers = 0


class _Decider:
    """The sequential decision rules, run once per candidate in time order.

    Timed rules (search-back, recovery) fire when their time has passed, before any later
    candidate is classified, so the outcome does not depend on how the input was chunked.
    """

    def __init__(self, rate: float, params: QrsParams) -> None:
        self.params = params
        self.levels = _Levels(params.threshold_fraction)
        self.rr = _RrHistory(params.rr_init_s * rate)
        self.learn_until = round(params.learning_s * rate)
        self.t_wave = round(params.t_wave_s * rate)
        self.recovery = round(params.recovery_s * rate)
        self.ready = False
        self.pending: list[_Peak] = []              # learning phase, at most ~10 candidates
        self.recent: deque[_Peak] = deque(maxlen=round(params.recovery_s / params.refractory_s))
        self.last: _Peak | None = None
        self.last_reported = -1
        self.best_missed: _Peak | None = None
        self.overdue = False
        self.quiet_since = 0

    def feed(self, peaks: list[_Peak], horizon: int) -> list[int]:
        """Classify ``peaks``, all the candidates up to ``horizon``; return new R peaks."""
        out: list[int] = []
        for peak in peaks:
            if not self.ready and peak.index < self.learn_until:
                self.pending.append(peak)
                continue
            if not self.ready:
                self._start(out)
            self._step(peak, out)
        if not self.ready and horizon >= self.learn_until - 1:
            self._start(out)
        if self.ready:
            self._run_timed_rules(horizon, out)
        return out

    def _start(self, out: list[int]) -> None:
        """End of the learning phase: initial levels from its candidates, then replay them."""
        pending = [p for p in self.pending if p.amplitude >= self.params.min_amplitude]
        self.levels.learn(np.array([p.height for p in pending]))
        self.ready, self.pending = True, []
        for peak in pending:
            self._step(peak, out)

    def _step(self, peak: _Peak, out: list[int]) -> None:
        self._run_timed_rules(peak.index - 1, out)
        if peak.amplitude < self.params.min_amplitude:
            return
        self.recent.append(peak)
        if peak.height > self._threshold() and not self._is_t_wave(peak):
            self._accept(peak, out, weight=0.25 if self.overdue else 0.125)
            return
        self.levels.not_qrs(peak.height)
        if self._may_be_missed_beat(peak):
            self.best_missed = peak

    def _threshold(self) -> float:
        threshold = self.levels.threshold
        if self.overdue:
            threshold *= self.params.search_back_fraction
        if self.rr.irregular():
            threshold *= self.params.irregular_factor
        return threshold

    def _is_t_wave(self, peak: _Peak) -> bool:
        """Soon after a QRS and much less steep than it (Pan & Tompkins 1985)."""
        if self.last is None or peak.index - self.last.index >= self.t_wave:
            return False
        return peak.slope < self.params.t_wave_slope_ratio * self.last.slope

    def _may_be_missed_beat(self, peak: _Peak) -> bool:
        """The largest candidate so far, and late enough not to be a T wave (Hamilton 2002)."""
        if self.last is not None and peak.index - self.last.index < self.t_wave:
            return False
        return self.best_missed is None or peak.height > self.best_missed.height

    def _search_back_due(self) -> float:
        start = self.last.index if self.last is not None else 0
        return start + self.params.search_back_rr * self.rr.average()

    def _run_timed_rules(self, time: int, out: list[int]) -> None:
        """Fire, in time order, the search-backs and recoveries due at or before ``time``."""
        while True:
            relearn_at = self.quiet_since + self.recovery
            if not self.overdue and self._search_back_due() <= min(time, relearn_at):
                self._search_back(out)
            elif relearn_at <= time:
                self._relearn(relearn_at)
            else:
                return

    def _search_back(self, out: list[int]) -> None:
        missed = self.best_missed
        if missed is not None and missed.height > (self.params.search_back_fraction
                                                   * self.levels.threshold):
            self._accept(missed, out, weight=0.25)
        else:
            self.overdue = True

    def _relearn(self, time: int) -> None:
        since = time - self.recovery
        self.levels.learn(np.array([p.height for p in self.recent if p.index > since]))
        self.quiet_since = time

    def _accept(self, peak: _Peak, out: list[int], weight: float) -> None:
        self.levels.qrs(peak.height, weight)
        if self.last is not None:
            self.rr.add(float(peak.index - self.last.index))
        self.last, self.quiet_since = peak, peak.index
        self.best_missed, self.overdue = None, False
        if peak.r_peak > self.last_reported:
            out.append(peak.r_peak)
            self.last_reported = peak.r_peak


class QrsDetector:
    """Causal streaming QRS detector (Pan & Tompkins 1985; Hamilton & Tompkins 1986).

    See the module docstring for the algorithm and docs/qrs.md for its evaluation.

    Feed samples with :meth:`process` in chunks of any size; each call returns the R peaks
    confirmed during that call as absolute sample indices (counted from the first sample ever
    fed), in increasing order. The concatenation of all results is the same for every
    chunking, and a peak once reported is never revised.

    Latency: a QRS is confirmed when its integrated peak has been followed by one refractory
    period (200 ms) with no larger value; the reported R peak lies at most ``search_s``
    (200 ms) plus the refine-filter delay (7 ms) before that, so a beat is reported at most
    ``max_delay_s`` (0.41 s) after its R peak; typically 0.33 s (the integrated peak trails
    the R peak by a median 125 ms on MIT-BIH). Exceptions: a beat found by search-back is
    reported when the search-back fires, 1.66 average RR intervals after the previous beat;
    beats in the 2 s learning phase are reported when it ends.

    State is bounded: filter states, ``refractory_s + search_s`` (0.4 s) of three signals, at
    most 40 recent candidates and a few scalars.

    Parameters
    ----------
    sample_rate_hz
        Sampling rate of the lead in Hz, 100-2000 (evaluated at 125-1000).
    params
        Detector constants; the defaults are the evaluated configuration.

    Raises
    ------
    ValueError
        If the sampling rate is not a finite number in the supported range.
    """

    def __init__(self, sample_rate_hz: float, params: QrsParams | None = None) -> None:
        rate = float(sample_rate_hz)
        if not np.isfinite(rate) or not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
            raise ValueError(f"sample rate must be {MIN_RATE_HZ:g}-{MAX_RATE_HZ:g} Hz, "
                             f"got {sample_rate_hz!r}")
        self.params = params or QrsParams()
        self.sample_rate_hz = rate
        self._front = _FrontEnd(rate, self.params)
        self._decider = _Decider(rate, self.params)
        self._refractory = max(1, round(self.params.refractory_s * rate))
        self._search = max(1, round(self.params.search_s * rate))
        self._shift = self._front.refine_delay()
        self._history = self._refractory + max(self._refractory + 1, self._search)
        self._signals = np.zeros((3, self._history))    # samples before the first are zero
        self._received = 0
        self._next = 0          # first sample not yet examined as a candidate
        self._closed = False

    @property
    def max_delay_s(self) -> float:
        """Longest time from an R peak to its report, outside learning and search-back."""
        return (self._refractory + self._search + self._shift) / self.sample_rate_hz

    @property
    def samples_seen(self) -> int:
        """Number of samples fed so far."""
        return self._received

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed the next samples; return the R peaks they confirm.

        Parameters
        ----------
        chunk
            1-D array of finite samples of the lead, in mV (any length, also 0 or 1).

        Returns
        -------
        numpy.ndarray
            int64 absolute sample indices of newly confirmed R peaks, increasing.

        Raises
        ------
        ValueError
            If the chunk is not 1-D, holds NaN or infinity (the detector's state is then
            unchanged), or the detector has been flushed.
        """
        if self._closed:
            raise ValueError("the detector was flushed; create a new one for a new stream")
        x = np.asarray(chunk, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"expected a 1-D chunk of samples, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("ECG samples must be finite; the chunk holds NaN or infinity")
        if x.size == 0:
            return np.zeros(0, dtype=np.int64)
        signals = np.concatenate([self._signals, self._front.run(x)], axis=1)
        base = self._received - self._history       # absolute index of signals[:, 0]
        self._received += x.size
        horizon = self._received - 1 - self._refractory
        peaks = self._candidates(signals, base, horizon)
        self._signals = signals[:, -self._history:]
        return np.asarray(self._decider.feed(peaks, horizon), dtype=np.int64)

    def flush(self) -> np.ndarray:
        """End of stream: confirm what the last samples allow, then close the detector.

        The signal is continued with its last value for ``max_delay_s`` so that the final
        beats are confirmed; only peaks inside the real signal are returned.
        """
        if self._closed or self._received == 0:
            self._closed = True
            return np.zeros(0, dtype=np.int64)
        end = self._received
        tail = self.process(np.full(self._history + self._shift, self._front.last_input))
        self._closed = True
        return tail[tail < end]

    def _candidates(self, signals: np.ndarray, base: int, horizon: int) -> list[_Peak]:
        """Integrated peaks in [next, horizon] with no larger value within one refractory."""
        if horizon < self._next:
            return []
        lo, hi, r = self._next - base, horizon - base, self._refractory
        self._next = horizon + 1
        integrated = signals[0]
        # trailing[k] = max(integrated[j - r + 1 .. j]) with j = k + lo - r - 1
        trailing = maximum_filter1d(integrated[lo - r - 1:hi + r + 1], size=r,
                                    origin=(r - 1) // 2, mode="constant", cval=-np.inf)
        value = integrated[lo:hi + 1]
        before = trailing[r:r + value.size]         # max over [i - r, i - 1]
        after = trailing[2 * r + 1:]                # max over [i + 1, i + r]
        found = np.flatnonzero((value > before) & (value >= after) & (value > 0.0)) + lo
        return self._describe(signals, base, found)

    def _describe(self, signals: np.ndarray, base: int, found: np.ndarray) -> list[_Peak]:
        """Slope, R peak and amplitude of each candidate, from the search window before it."""
        if found.size == 0:
            return []
        window = found[:, None] + np.arange(-self._search, 1)[None, :]
        refine = signals[2][window]
        at = refine.argmax(axis=1)
        r_peaks = np.maximum(window[np.arange(found.size), at] + base - self._shift, 0)
        slopes = signals[1][window].max(axis=1)
        return [_Peak(int(i) + base, float(signals[0][i]), float(s), int(r), float(a))
                for i, s, r, a in zip(found, slopes, r_peaks, refine.max(axis=1), strict=True)]


def detect_qrs(signal: np.ndarray, sample_rate_hz: float) -> np.ndarray:
    """R-peak sample indices of a whole recording, streamed through :class:`QrsDetector`.

    Parameters
    ----------
    signal
        1-D array of one lead, in mV.
    sample_rate_hz
        Its sampling rate.

    Returns
    -------
    numpy.ndarray
        int64 sample indices of the R peaks, increasing.
    """
    detector = QrsDetector(sample_rate_hz)
    found = detector.process(signal)
    return np.concatenate([found, detector.flush()])
