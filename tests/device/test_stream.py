"""The streaming beat pipeline: chunking-independent, causal, equal to the offline reader.

Real records (100, 208, 232) need ``$FEDBEAT_DATA``; everything else runs on synthetic ECG.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbeat.device.ecg.mitdb import lead_preference, read_record_beats
from fedbeat.device.ecg.records import read_beat_annotations, read_lead
from fedbeat.device.ecg.stream import BeatStream, KnownPeaks, PeakSource, StreamBeats
from fedbeat.device.ecg.windows import WindowSampler
from fedbeat.models.spec import R_PEAK_INDEX, RR_FEATURES, SAMPLE_RATE_HZ, WINDOW_SAMPLES
from fedbeat.tools.cli import cli

RATES = (125.0, 250.0, 360.0, 500.0, 1000.0)


def synthetic_ecg(rate: float, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A crude ECG (Q, R, S and T bumps, baseline wander, noise) and its R-peak indices."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    times = 0.4 + np.cumsum(rng.uniform(0.35, 1.3, size=int(seconds / 0.35)))
    times = times[times < seconds - 0.1]
    ecg = 0.4 * np.sin(2 * np.pi * 0.25 * t) + rng.normal(0.0, 0.02, t.size) - 0.7
    for r in times:
        for offset, width, height in ((-0.03, 0.01, -0.2), (0.0, 0.012, 1.3),
                                      (0.03, 0.01, -0.3), (0.25, 0.05, 0.3)):
            ecg += height * np.exp(-0.5 * ((t - r - offset) / width) ** 2)
    return ecg, np.round(times * rate).astype(np.int64)


def feed(stream: BeatStream, signal: np.ndarray, cuts: list[int]) -> StreamBeats:
    """Push ``signal`` cut at the sorted positions ``cuts``; all emitted beats."""
    edges = [0, *sorted(cuts), signal.size]
    parts = [stream.push(signal[lo:hi]) for lo, hi in itertools.pairwise(edges)]
    return StreamBeats.concatenate(parts, labelled=stream.labelled)


def assert_same_beats(a: StreamBeats, b: StreamBeats) -> None:
    np.testing.assert_array_equal(a.r_peaks, b.r_peaks)
    np.testing.assert_array_equal(a.windows, b.windows)
    np.testing.assert_array_equal(a.rr, b.rr)
    if a.labels is None or b.labels is None:
        assert a.labels is None
        assert b.labels is None
    else:
        np.testing.assert_array_equal(a.labels, b.labels)


def prefix(beats: StreamBeats, n: int) -> StreamBeats:
    return StreamBeats(beats.windows[:n], beats.rr[:n], beats.r_peaks[:n],
                       None if beats.labels is None else beats.labels[:n])


def make_stream(rate: float, peaks: np.ndarray | None) -> BeatStream:
    """The QRS detector if ``peaks`` is None, else those known positions, labelled."""
    source = None if peaks is None else KnownPeaks(peaks, np.arange(peaks.size) % 5)
    return BeatStream(rate, peaks=source)


class DelayedPeaks:
    """Known peaks reported ``delay`` samples late, as a slow detector would."""

    def __init__(self, peaks: np.ndarray, delay: int) -> None:
        self.inner, self.delay = KnownPeaks(peaks), delay
        self.held = np.zeros(0, dtype=np.int64)
        self.received = 0

    def process(self, chunk: np.ndarray) -> np.ndarray:
        self.received += len(chunk)
        self.held = np.concatenate([self.held, self.inner.process(chunk)])
        due = self.held + self.delay < self.received
        out, self.held = self.held[due], self.held[~due]
        return out


# --- one code path: any chunking, offline and online --------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.data(), st.sampled_from(RATES), st.booleans())
def test_chunking_never_changes_the_beats(data: st.DataObject, rate: float,
                                          detector: bool) -> None:
    signal, peaks = synthetic_ecg(rate, 30.0, seed=int(rate))
    cuts = data.draw(st.lists(st.integers(0, signal.size), max_size=60))
    whole = make_stream(rate, None if detector else peaks).push(signal)
    assert len(whole) >= 20
    assert_same_beats(feed(make_stream(rate, None if detector else peaks), signal, cuts), whole)


@settings(max_examples=30, deadline=None)
@given(st.data(), st.sampled_from(RATES), st.booleans())
def test_appending_samples_never_changes_an_emitted_beat(data: st.DataObject, rate: float,
                                                         detector: bool) -> None:
    signal, peaks = synthetic_ecg(rate, 24.0, seed=7)
    other, other_peaks = synthetic_ecg(rate, 24.0, seed=data.draw(st.integers(8, 12)))
    split = data.draw(st.integers(0, signal.size))
    cuts = data.draw(st.lists(st.integers(0, split), max_size=20))
    early = feed(make_stream(rate, None if detector else peaks[peaks < split]), signal[:split],
                 cuts)
    altered = np.concatenate([signal[:split], other[split:]])
    altered_peaks = np.concatenate([peaks[peaks < split], other_peaks[other_peaks >= split]])
    late = make_stream(rate, None if detector else altered_peaks).push(altered)
    assert len(late) >= len(early)
    assert_same_beats(prefix(late, len(early)), early)


def test_the_offline_reader_is_the_stream(tmp_path: Path) -> None:
    """``lead_beats`` is one push of the whole lead with the annotations as peaks."""
    from fedbeat.device.ecg.records import BeatAnnotations, LeadSignal, lead_beats

    signal, peaks = synthetic_ecg(250.0, 40.0, seed=3)
    symbols = tuple("NVS"[i % 3] for i in range(peaks.size))
    annotations = BeatAnnotations(peaks, symbols)
    offline = lead_beats(LeadSignal("x", "MLII", 250.0, signal), annotations)
    online = feed(BeatStream(250.0, peaks=KnownPeaks(peaks, annotations.labels)), signal,
                  list(range(0, signal.size, 97)))
    np.testing.assert_array_equal(offline.windows, online.windows)
    np.testing.assert_array_equal(offline.rr, online.rr)
    np.testing.assert_array_equal(offline.labels, online.labels)
    np.testing.assert_array_equal(online.r_peaks, peaks[1:-1])       # first and last lack an RR


@pytest.mark.mitdb
@pytest.mark.parametrize("record", ["100", "208", "232"])
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), largest=st.sampled_from([700, 5_000, 40_000]))
def test_streaming_a_record_equals_the_offline_reader(mitdb_dir: Path, record: str, seed: int,
                                                      largest: int) -> None:
    lead = read_lead(mitdb_dir, record, lead_preference())
    annotations = read_beat_annotations(mitdb_dir, record)
    sizes = np.random.default_rng(seed).integers(0, largest, size=lead.signal.size // 100)
    cuts = np.cumsum(sizes)
    stream = BeatStream(lead.rate_hz, peaks=KnownPeaks(annotations.samples, annotations.labels))
    online = feed(stream, lead.signal, cuts[cuts < lead.signal.size].tolist())
    offline = read_record_beats(mitdb_dir, record)
    np.testing.assert_array_equal(online.windows, offline.windows)
    np.testing.assert_array_equal(online.rr, offline.rr)
    np.testing.assert_array_equal(online.labels, offline.labels)
    np.testing.assert_array_equal(online.r_peaks, annotations.samples[1:-1])
    assert stream.dropped == 0


# --- what comes out, and when ---------------------------------------------------------------------


def test_beats_have_the_model_contract() -> None:
    signal, peaks = synthetic_ecg(500.0, 20.0, seed=1)
    beats = make_stream(500.0, peaks).push(signal)
    assert beats.windows.shape == (len(beats), WINDOW_SAMPLES)
    assert beats.rr.shape == (len(beats), len(RR_FEATURES))
    assert (beats.windows.dtype, beats.rr.dtype, beats.r_peaks.dtype) == (
        np.float32, np.float32, np.int64)
    delay = np.abs(beats.windows).argmax(axis=1) - R_PEAK_INDEX          # the causal filter's
    assert np.all((delay >= 0) & (delay <= 2))                          # delay, under 11 ms
    np.testing.assert_allclose(beats.rr[:, 0], np.diff(peaks)[:-1] / 500.0, rtol=1e-6)
    np.testing.assert_allclose(beats.rr[:, 1], np.diff(peaks)[1:] / 500.0, rtol=1e-6)
    assert beats.labels is not None
    np.testing.assert_array_equal(beats.labels, (np.arange(peaks.size) % 5)[1:-1])


@pytest.mark.parametrize("rate", RATES)
def test_the_detector_finds_the_beats(rate: float) -> None:
    signal, peaks = synthetic_ecg(rate, 30.0, seed=2)
    stream = BeatStream(rate)
    beats = stream.push(signal)
    assert beats.labels is None
    assert len(beats) >= peaks.size - 3
    nearest = np.abs(beats.r_peaks[:, None] - peaks[None, :]).min(axis=1)
    assert np.all(nearest <= 0.01 * rate)


@pytest.mark.parametrize("rate", [125.0, 360.0])
def test_a_beat_is_emitted_once_its_window_and_next_peak_are_in(rate: float) -> None:
    signal, peaks = synthetic_ecg(rate, 15.0, seed=4)
    stream = make_stream(rate, peaks)
    emitted: dict[int, int] = {}
    for i in range(signal.size):
        for peak in stream.push(signal[i:i + 1]).r_peaks.tolist():
            emitted[peak] = i + 1                          # samples received at emission
    tail = round(stream.window_tail_s * rate)
    expected = {int(p): max(int(n) + 1, int(p) + tail)
                for p, n in itertools.pairwise(peaks[1:].tolist())}
    assert emitted == {p: n for p, n in expected.items() if n <= signal.size}
    assert stream.window_tail_s == pytest.approx(82 / SAMPLE_RATE_HZ, abs=2.5 / rate)


def test_state_stays_bounded_on_a_long_stream() -> None:
    signal, _ = synthetic_ecg(360.0, 240.0, seed=5)
    stream = BeatStream(360.0)
    for start in range(0, signal.size, 360):
        stream.push(signal[start:start + 360])
        assert stream.pending <= 3
    assert stream.received == signal.size


@pytest.mark.parametrize("rate", [125.0, 250.0, 360.0, 1000.0, 128.5])
def test_windows_sample_the_canonical_grid(rate: float) -> None:
    """Cubic interpolation recovers a band-limited signal at the 180 Hz grid times."""
    sampler = WindowSampler(rate)
    t = np.arange(round(3 * rate)) / rate
    freqs, phases = np.array([1.5, 6.0, 12.0, 20.0]), np.array([0.3, 1.1, 2.0, 0.7])

    def wave(times: np.ndarray) -> np.ndarray:
        return np.sin(2 * np.pi * freqs * times[..., None] + phases).sum(axis=-1)

    r = round(1.2 * rate)
    window = sampler.windows(wave(t)[sampler.index(np.array([r]))])[0]
    grid = r / rate + (np.arange(WINDOW_SAMPLES) - R_PEAK_INDEX) / SAMPLE_RATE_HZ
    np.testing.assert_allclose(window, wave(grid), atol=0.1 if rate < 200 else 0.02)
    assert window[R_PEAK_INDEX] == wave(t)[r]                          # exact at the R peak


def test_at_360_hz_windows_are_every_other_filtered_sample() -> None:
    sampler = WindowSampler(360.0)
    x = np.random.default_rng(0).normal(size=1000)
    window = sampler.windows(x[sampler.index(np.array([500]))])[0]
    np.testing.assert_array_equal(window, x[500 - 2 * R_PEAK_INDEX:500 + 2 * 83:2])
    assert (sampler.first, sampler.last) == (-90, 164)


# --- peak sources ---------------------------------------------------------------------------------


def test_late_peaks_are_windowed_while_the_ring_holds_them() -> None:
    signal, peaks = synthetic_ecg(250.0, 40.0, seed=6)
    prompt = BeatStream(250.0, peaks=KnownPeaks(peaks)).push(signal)
    late = BeatStream(250.0, peaks=DelayedPeaks(peaks, delay=500))       # 2 s late
    beats = late.push(signal)
    assert len(beats) >= len(prompt) - 4                    # peaks of the last 2 s never come
    assert_same_beats(prefix(prompt, len(beats)), beats)
    assert late.dropped == 0
    too_late = BeatStream(250.0, peaks=DelayedPeaks(peaks, delay=1300))  # 5.2 s: ring is 5 s
    assert len(too_late.push(signal)) == 0
    assert too_late.dropped > 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 10_000), max_size=40), st.integers(700, 1100))
def test_dropping_late_peaks_does_not_depend_on_chunking(cuts: list[int], delay: int) -> None:
    signal, peaks = synthetic_ecg(250.0, 40.0, seed=6)
    whole = BeatStream(250.0, peaks=DelayedPeaks(peaks, delay))
    chunked = BeatStream(250.0, peaks=DelayedPeaks(peaks, delay))
    assert_same_beats(feed(chunked, signal, cuts), whole.push(signal))
    assert chunked.dropped == whole.dropped


def test_a_custom_source_satisfies_the_protocol() -> None:
    source: PeakSource = DelayedPeaks(np.array([10, 20]), delay=0)
    assert source.process(np.zeros(15)).tolist() == [10]


def test_known_peaks_are_revealed_when_their_sample_arrives() -> None:
    source = KnownPeaks(np.array([3, 4, 9]))
    assert source.process(np.zeros(4)).tolist() == [3]
    assert source.process(np.zeros(0)).tolist() == []
    assert source.process(np.zeros(6)).tolist() == [4, 9]


@pytest.mark.parametrize(("samples", "labels", "message"), [
    (np.array([5, 5, 9]), None, "strictly increasing"),
    (np.array([-1, 5]), None, "strictly increasing"),
    (np.array([1.5, 3.0]), None, "sample indices"),
    (np.array([[1, 2]]), None, "1-D"),
    (np.array([1, 2]), np.array([0]), "one entry per R peak"),
])
def test_known_peaks_refuse_bad_positions(samples: np.ndarray, labels: np.ndarray | None,
                                          message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KnownPeaks(samples, labels)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, -360.0, float("nan"), float("inf"), 60.0])
def test_a_bad_sample_rate_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        BeatStream(rate, peaks=KnownPeaks(np.array([1])))


def test_the_detector_range_is_enforced() -> None:
    with pytest.raises(ValueError, match="sample rate"):                # the detector's own check
        BeatStream(90.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_chunk_with_nan_is_refused_and_changes_nothing(bad: float) -> None:
    signal, _ = synthetic_ecg(360.0, 20.0, seed=8)
    stream, clean = make_stream(360.0, None), make_stream(360.0, None)
    first = stream.push(signal[:3000])
    broken = signal[3000:3360].copy()
    broken[100] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite samples .* index 100"):
        stream.push(broken)
    assert_same_beats(StreamBeats.concatenate([first, stream.push(signal[3000:])],
                                              labelled=False), clean.push(signal))


def test_empty_chunks_and_bad_shapes() -> None:
    stream = make_stream(250.0, np.array([100, 300]))
    empty = stream.push(np.zeros(0))
    assert empty.windows.shape == (0, WINDOW_SAMPLES)
    assert empty.rr.shape == (0, len(RR_FEATURES))
    assert empty.labels is not None
    assert empty.labels.shape == (0,)
    assert stream.received == 0
    with pytest.raises(ValueError, match="1-D chunk"):
        stream.push(np.zeros((2, 10)))


# --- the benchmark command ------------------------------------------------------------------------


@pytest.mark.mitdb
def test_bench_pipeline_json(mitdb_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", "pipeline", "--data", str(mitdb_dir), "--record",
                                      "100", "--repeats", "1", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["seconds"] == pytest.approx(1805.56, abs=0.01)
    assert doc["beats_without_detector"] == read_record_beats(mitdb_dir, "100").labels.size
    assert abs(doc["beats"] - doc["beats_without_detector"]) <= 5
    assert doc["realtime_factor"] > 0
    assert doc["realtime_factor_without_detector"] > doc["realtime_factor"]
