"""Synthetic ECG patients for zero-setup demos and tests. Not clinical data.

Each beat is a sum of five Gaussian waves (P, Q, R, S, T) in the spirit of ECGSYN
(McSharry et al. 2003), with class-dependent morphology and timing: S beats come early with an
ectopic P wave and a normal QRS; V beats come early with no P wave, a wide QRS, an inverted T
and a compensatory pause; F beats fuse the two; Q beats are noise-corrupted. Every patient has
its own heart rate, amplitude, wave shapes and noise, so inter-patient generalisation is still
a task. Anything produced from this module must say "synthetic".
"""

from __future__ import annotations

import numpy as np

from fedbeat.device.ecg.mitdb import RecordBeats
from fedbeat.device.ecg.rr import rr_features
from fedbeat.device.ecg.windows import beat_windows, causal_bandpass
from fedbeat.models.spec import SAMPLE_RATE_HZ

# (offset from R in s, width in s, amplitude in mV) for P, Q, R, S, T
_Wave = tuple[float, float, float]
_WAVES: dict[str, tuple[_Wave, ...]] = {
    "N": ((-0.20, 0.025, 0.15), (-0.03, 0.010, -0.12), (0.0, 0.012, 1.0),
          (0.03, 0.010, -0.25), (0.25, 0.050, 0.30)),
    "S": ((-0.14, 0.020, -0.10), (-0.03, 0.010, -0.12), (0.0, 0.012, 1.0),
          (0.03, 0.010, -0.25), (0.24, 0.050, 0.28)),
    "V": ((-0.20, 0.025, 0.0), (-0.06, 0.030, -0.20), (0.0, 0.040, 1.3),
          (0.07, 0.040, -0.60), (0.32, 0.070, -0.40)),
}
_WAVES["F"] = tuple(((n[0] + v[0]) / 2, (n[1] + v[1]) / 2, (n[2] + v[2]) / 2)
                    for n, v in zip(_WAVES["N"], _WAVES["V"], strict=True))
_WAVES["Q"] = _WAVES["N"]

# Preceding-interval factor range and whether the next interval compensates
_TIMING = {"N": (0.95, 1.05), "S": (0.55, 0.80), "V": (0.50, 0.75), "F": (0.85, 0.95),
           "Q": (0.80, 1.20)}
DEFAULT_MIX = (0.86, 0.04, 0.07, 0.02, 0.01)
CLASS_NAMES = ("N", "S", "V", "F", "Q")


def synthetic_patient(seed: int, *, beats: int = 1200,
                      class_mix: tuple[float, ...] = DEFAULT_MIX) -> RecordBeats:
    """One synthetic patient's labelled beats, reproducible from ``seed``.

    The class mix varies around ``class_mix`` from patient to patient (Dirichlet), as real
    arrhythmia burdens do.
    """
    rng = np.random.default_rng([seed, 0xECB])
    mix = rng.dirichlet(np.asarray(class_mix) * 50.0)
    labels = rng.choice(len(CLASS_NAMES), size=beats, p=mix)
    base_rr = rng.uniform(0.6, 1.15)
    jitter = rng.uniform(0.85, 1.15, size=(5, 3))          # this patient's wave shapes
    gain = rng.uniform(0.5, 2.0)
    times = _beat_times(rng, labels, base_rr)
    duration = times[-1] + 1.0
    t = np.arange(int(duration * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    ecg = np.zeros_like(t)
    for r_time, label in zip(times, labels, strict=True):
        name = CLASS_NAMES[label]
        for (offset, width, amp), (jo, jw, ja) in zip(_WAVES[name], jitter, strict=True):
            centre = r_time + offset * jo
            lo, hi = np.searchsorted(t, [centre - 5 * width * jw, centre + 5 * width * jw])
            ecg[lo:hi] += gain * amp * ja * np.exp(-0.5 * ((t[lo:hi] - centre) / (width * jw)) ** 2)
    ecg += 0.1 * gain * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t)   # baseline wander
    ecg += rng.normal(0.0, rng.uniform(0.01, 0.04) * gain, size=t.size)
    noisy = labels == CLASS_NAMES.index("Q")
    r_idx = np.round(times * SAMPLE_RATE_HZ).astype(np.int64)
    for r in r_idx[noisy]:
        span = slice(max(0, r - 40), r + 80)
        ecg[span] += rng.normal(0.0, 0.3 * gain, size=ecg[span].size)
    features = rr_features(times)
    windows, kept = beat_windows(causal_bandpass(ecg), r_idx[1:-1])
    return RecordBeats(f"synthetic-{seed}", windows, features[kept], labels[1:-1][kept])


def _beat_times(rng: np.random.Generator, labels: np.ndarray, base_rr: float) -> np.ndarray:
    intervals = np.empty(labels.size)
    pending_pause = 0.0
    for k, label in enumerate(labels):
        lo, hi = _TIMING[CLASS_NAMES[label]]
        factor = rng.uniform(lo, hi)
        intervals[k] = base_rr * factor + pending_pause
        # V beats are followed by a full compensatory pause, S beats by a partial one.
        pending_pause = {"V": base_rr * (1 - factor), "S": 0.3 * base_rr * (1 - factor)}.get(
            CLASS_NAMES[label], 0.0)
        intervals[k] *= rng.normal(1.0, 0.02)
    return 1.0 + np.cumsum(intervals)
