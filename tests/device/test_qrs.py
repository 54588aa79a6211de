"""The streaming QRS detector: chunking never matters, it is causal, finds real beats at any
device rate, rejects bad input clearly; and the AAMI EC57 scoring that grades it."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import resample_poly

from fedbeat.device.ecg.qrs import QrsDetector, detect_qrs
from fedbeat.tools.cli import cli
from fedbeat.tools.qrs_eval import (
    Reference,
    Score,
    flutter_episodes,
    gross,
    match_beats,
    outside,
    read_reference,
    score_record,
)

RATE = 360.0
# (offset from R in s, width in s, amplitude in mV) of P, Q, R, S and T
WAVES = ((-0.2, 0.025, 0.12), (-0.03, 0.01, -0.1), (0.0, 0.012, 1.0), (0.03, 0.01, -0.2),
         (0.28, 0.05, 0.3))


def synthetic_ecg(seconds: float, rate: float = RATE, seed: int = 0) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """A sum-of-Gaussians ECG with baseline wander and noise, and its R-peak indices."""
    rng = np.random.default_rng(seed)
    beats = np.cumsum(rng.uniform(0.6, 1.1, size=int(seconds / 0.6)))
    beats = beats[beats < seconds - 0.5]
    t = np.arange(int(seconds * rate)) / rate
    ecg = 0.2 * np.sin(2 * np.pi * 0.2 * t) + rng.normal(0.0, 0.01, size=t.size)
    for beat in beats:
        for offset, width, amplitude in WAVES:
            ecg += amplitude * np.exp(-0.5 * ((t - beat - offset) / width) ** 2)
    return ecg, np.round(beats * rate).astype(np.int64)


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ecg, beats = synthetic_ecg(30.0)
    return ecg, beats, detect_qrs(ecg, RATE)


def stream(ecg: np.ndarray, cuts: list[int], *, flush: bool = True) -> np.ndarray:
    detector = QrsDetector(RATE)
    bounds = [0, *cuts, ecg.size]
    found = [detector.process(ecg[a:b]) for a, b in itertools.pairwise(bounds)]
    return np.concatenate([*found, detector.flush() if flush else np.zeros(0, np.int64)])


# -- the detector on synthetic signals ----------------------------------------------------------

def test_finds_every_synthetic_beat_on_its_r_peak(synthetic: tuple[np.ndarray, ...]) -> None:
    _, beats, found = synthetic
    assert found.dtype == np.int64
    assert found.size == beats.size
    assert np.abs(found - beats).max() <= 2          # R peak to within 6 ms


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 30 * int(RATE) - 1), max_size=40, unique=True))
def test_any_chunking_gives_identical_peaks(synthetic: tuple[np.ndarray, ...],
                                            cuts: list[int]) -> None:
    ecg, _, whole = synthetic
    np.testing.assert_array_equal(stream(ecg, sorted(cuts)), whole)


@pytest.mark.parametrize("flush", [False, True])
def test_sample_by_sample_gives_identical_peaks(synthetic: tuple[np.ndarray, ...],
                                                flush: bool) -> None:
    part = synthetic[0][: 8 * int(RATE)]
    one_by_one = stream(part, list(range(1, part.size)), flush=flush)
    np.testing.assert_array_equal(one_by_one, stream(part, [], flush=flush))
    assert one_by_one.size >= 8


@pytest.mark.parametrize("cut_s", [1.0, 2.5, 7.3, 19.9])
def test_appending_samples_never_changes_reported_peaks(synthetic: tuple[np.ndarray, ...],
                                                        cut_s: float) -> None:
    ecg, _, _ = synthetic
    cut = int(cut_s * RATE)
    prefix = stream(ecg[:cut], [], flush=False)
    full = stream(ecg, [cut], flush=False)
    np.testing.assert_array_equal(full[:prefix.size], prefix)
    # bounded latency: after learning, every beat older than max_delay_s has been reported
    delay = QrsDetector(RATE).max_delay_s
    if cut_s > 2.0:
        assert np.all(np.isin(full[full + delay * RATE < cut - 1], prefix))
    assert delay <= 0.45


def test_recovers_after_a_huge_artefact() -> None:
    ecg, beats = synthetic_ecg(40.0, seed=3)
    ecg[int(10 * RATE):int(10.05 * RATE)] += 80.0          # electrode pop, 80 mV
    found = detect_qrs(ecg, RATE)
    late = beats[beats > 20 * RATE]                       # recovery takes at most 8 s
    tp, fn, _ = match_beats(late, found[found > 20 * RATE], tolerance=54)
    assert fn == 0
    assert tp == late.size


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0, -360, float("nan"), float("inf"), 50])
def test_bad_sample_rate_is_a_value_error(rate: float) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        QrsDetector(rate)


def test_nan_is_a_value_error_and_leaves_the_state_alone(synthetic: tuple[np.ndarray, ...]
                                                          ) -> None:
    ecg, _, whole = synthetic
    detector = QrsDetector(RATE)
    first = detector.process(ecg[:3000])
    bad = ecg[3000:3100].copy()
    bad[50] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        detector.process(bad)
    rest = detector.process(ecg[3000:])
    np.testing.assert_array_equal(np.concatenate([first, rest, detector.flush()]), whole)


@pytest.mark.parametrize("level", [0.0, 5.0, -1.2])
def test_flat_line_gives_no_beats(level: float) -> None:
    detector = QrsDetector(RATE)
    assert detector.process(np.full(int(20 * RATE), level)).size == 0
    assert detector.flush().size == 0
    assert detect_qrs(np.zeros(0), RATE).size == 0


def test_wrong_shapes_and_use_after_flush_are_value_errors() -> None:
    detector = QrsDetector(RATE)
    with pytest.raises(ValueError, match="1-D"):
        detector.process(np.zeros((2, 100)))
    detector.flush()
    with pytest.raises(ValueError, match="flushed"):
        detector.process(np.zeros(10))


# -- EC57 scoring -------------------------------------------------------------------------------

def test_matching_is_one_to_one_within_the_window() -> None:
    reference = np.array([100, 400, 700, 1000])
    detected = np.array([60, 95, 452, 455, 1160])           # 95 and 60 compete for 100
    assert match_beats(reference, detected, tolerance=54) == (2, 2, 3)
    assert match_beats(reference, reference + 54, tolerance=54) == (4, 0, 0)
    assert match_beats(reference, reference + 55, tolerance=54) == (0, 4, 4)
    assert match_beats(np.zeros(0), np.zeros(0), tolerance=54) == (0, 0, 0)


def test_flutter_episodes_are_left_out() -> None:
    episodes = flutter_episodes(["N", "[", "!", "]", "N", "["], np.array([5, 10, 15, 20, 30, 40]))
    np.testing.assert_array_equal(episodes[0], [10, 20])
    assert episodes.shape == (2, 2)
    np.testing.assert_array_equal(outside(np.array([5, 10, 15, 25, 45]), episodes), [5, 25])
    ref = Reference("x", np.zeros(360), RATE, np.array([5, 30]), episodes)
    assert score_record(ref, np.array([6, 12, 31])) == Score("x", 2, 0, 0, 1.0, 0.0)


def test_gross_figures_sum_counts_before_dividing() -> None:
    total = gross([Score("a", 90, 10, 0), Score("b", 10, 0, 10)])
    assert (total.tp, total.fn, total.fp) == (100, 10, 10)
    assert total.sensitivity == pytest.approx(100 / 110)
    assert total.positive_predictivity == pytest.approx(100 / 110)
    assert Score("empty", 0, 0, 0).sensitivity == 1.0


# -- real records (MIT-BIH) ---------------------------------------------------------------------

# Minimum (Se, +P) per record; measured 100: 100/100, 105: 99.46/98.58 (noise),
# 208: 99.59/99.93 (frequent PVCs), 232: 100/99.16 (pauses of up to 6 s).
REAL_RECORDS = {"100": (0.999, 0.999), "105": (0.99, 0.98), "208": (0.99, 0.99),
                "232": (0.995, 0.985)}


@pytest.mark.mitdb
@pytest.mark.parametrize("record", sorted(REAL_RECORDS))
def test_detects_real_beats(mitdb_dir: Path, record: str) -> None:
    ref = read_reference(mitdb_dir, record)
    score = score_record(ref, detect_qrs(ref.signal, ref.sample_rate_hz))
    se, ppv = REAL_RECORDS[record]
    assert score.sensitivity >= se
    assert score.positive_predictivity >= ppv


@pytest.mark.mitdb
@pytest.mark.parametrize("rate", [125, 500])
def test_detects_real_beats_at_other_device_rates(mitdb_dir: Path, rate: int) -> None:
    ref = read_reference(mitdb_dir, "208")
    ratio = Fraction(rate) / Fraction(int(ref.sample_rate_hz))
    signal = resample_poly(ref.signal, ratio.numerator, ratio.denominator)
    beats = np.round(ref.beats * float(ratio)).astype(np.int64)
    found = detect_qrs(signal, rate)
    tp, fn, fp = match_beats(beats, found, tolerance=round(0.15 * rate))
    assert tp / (tp + fn) >= 0.99
    assert tp / (tp + fp) >= 0.99
    # the R peak lands where the annotation is, to within a sample or two
    nearest = found[np.clip(np.searchsorted(found, beats), 0, found.size - 1)]
    assert abs(np.median(nearest - beats)) <= 1


# -- the command line ---------------------------------------------------------------------------

def test_cli_without_data_is_a_one_line_error(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDBEAT_DATA", raising=False)
    for args in ([], ["--data", str(tmp_path)]):
        result = CliRunner().invoke(cli, ["data", "qrs-eval", *args])
        assert result.exit_code == 1
        assert result.stderr.startswith("Error:")
        assert "Traceback" not in result.stderr


@pytest.mark.mitdb
def test_cli_json(mitdb_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["data", "qrs-eval", "--data", str(mitdb_dir),
                                      "--records", "100", "--chunk-s", "1", "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert [r["record"] for r in out["records"]] == ["100"]
    assert out["gross"]["beats"] == 2273
    assert out["gross"]["se"] >= 0.999
    assert out["gross"]["realtime_factor"] > 100
    bad = CliRunner().invoke(cli, ["data", "qrs-eval", "--data", str(mitdb_dir),
                                   "--records", "100,999"])
    assert bad.exit_code == 1
    assert "999" in bad.stderr
