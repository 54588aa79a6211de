"""Beat features are causal and labelled the AAMI way; synthetic patients are usable."""

from __future__ import annotations

import numpy as np

from fedbeat.device.ecg.aami import SYMBOL_TO_CLASS
from fedbeat.device.ecg.rr import rr_features
from fedbeat.device.ecg.synthetic import synthetic_patient
from fedbeat.device.ecg.windows import beat_windows
from fedbeat.models.spec import R_PEAK_INDEX, RR_FEATURES, WINDOW_SAMPLES


def test_aami_mapping_covers_the_standard_symbols() -> None:
    expected = {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"}
    for cls, symbols in expected.items():
        assert all(SYMBOL_TO_CLASS[s] == cls for s in symbols)
    assert "+" not in SYMBOL_TO_CLASS
    assert "~" not in SYMBOL_TO_CLASS


def test_rr_features_only_look_one_beat_ahead() -> None:
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.5, 1.2, size=60))
    base = rr_features(times)
    altered = times.copy()
    altered[41:] += np.cumsum(rng.uniform(0.0, 0.4, size=19))   # change beats 41 onwards
    changed = rr_features(altered)
    # rows are beats 1..n-2; beat i uses times up to i+1, so beats up to 39 are unaffected
    np.testing.assert_array_equal(base[:39], changed[:39])
    assert not np.array_equal(base[39], changed[39])


def test_rr_features_values_for_a_premature_beat() -> None:
    times = np.array([0.0, 1.0, 2.0, 3.0, 3.6, 5.0, 6.0])
    features = dict(zip(RR_FEATURES, rr_features(times)[3], strict=True))   # beat at 3.6 s
    assert np.isclose(features["pre_rr_s"], 0.6)
    assert np.isclose(features["post_rr_s"], 1.4)
    assert features["pre_rr_ratio"] < 0.7
    assert features["pre_post_ratio"] < 0.5


def test_windows_are_centred_and_causally_normalised() -> None:
    ecg = np.zeros(2000)
    peaks = np.arange(100, 1900, 150)
    ecg[peaks] = np.linspace(1.0, 3.0, peaks.size)
    windows, kept = beat_windows(ecg, peaks)
    assert windows.shape == (kept.size, WINDOW_SAMPLES)
    assert np.all(windows.argmax(axis=1) == R_PEAK_INDEX)
    # scaling uses only the past and the current beat: the first windows do not change when
    # the later beats grow
    ecg2 = ecg.copy()
    ecg2[peaks[6:]] *= 10
    windows2, _ = beat_windows(ecg2, peaks)
    np.testing.assert_array_equal(windows[:6], windows2[:6])


def test_synthetic_patients_are_reproducible_and_varied() -> None:
    a, b, c = synthetic_patient(1), synthetic_patient(1), synthetic_patient(2)
    np.testing.assert_array_equal(a.windows, b.windows)
    assert a.windows.shape[1] == WINDOW_SAMPLES
    assert a.rr.shape[1] == len(RR_FEATURES)
    assert not np.allclose(a.rr[:, 3].mean(), c.rr[:, 3].mean())      # different heart rates
    assert a.record.startswith("synthetic")
    counts = np.bincount(np.concatenate([synthetic_patient(s).labels for s in range(4)]),
                         minlength=5)
    assert np.all(counts[:4] > 0)
    v = a.labels == 2
    n = a.labels == 0
    assert a.rr[v, 4].mean() < a.rr[n, 4].mean()                        # V beats are premature
