"""Causal filtering, beat windows around R peaks, and per-patient amplitude normalisation."""

from __future__ import annotations

import numpy as np
from scipy import signal as sps

from fedbeat.models.spec import R_PEAK_INDEX, SAMPLE_RATE_HZ, WINDOW_SAMPLES

AMPLITUDE_SMOOTHING = 0.05
"""EMA weight of each new beat's R amplitude in the patient's amplitude estimate."""


def causal_bandpass(ecg: np.ndarray, rate_hz: float = SAMPLE_RATE_HZ) -> np.ndarray:
    """0.5–40 Hz Butterworth band-pass run forward only, as a device can in real time.

    The high-pass removes baseline wander, the low-pass mains hum and muscle noise.
    """
    sos = sps.butter(2, [0.5, 40.0], btype="bandpass", fs=rate_hz, output="sos")
    filtered: np.ndarray = sps.sosfilt(sos, np.asarray(ecg, dtype=np.float64))
    return filtered


def beat_windows(ecg: np.ndarray, r_peaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut a ``WINDOW_SAMPLES`` window around each R peak and normalise it causally.

    Each window has its median removed and is divided by the patient's running R amplitude
    (an EMA over *earlier* beats, and this one), so no future data shapes a beat.

    Returns
    -------
    (windows, kept)
        ``windows`` (k, WINDOW_SAMPLES) float32 and the indices into ``r_peaks`` that fit.
    """
    r_peaks = np.asarray(r_peaks, dtype=np.int64)
    starts = r_peaks - R_PEAK_INDEX
    kept = np.flatnonzero((starts >= 0) & (starts + WINDOW_SAMPLES <= len(ecg)))
    if kept.size == 0:
        return np.zeros((0, WINDOW_SAMPLES), dtype=np.float32), kept
    index = starts[kept, None] + np.arange(WINDOW_SAMPLES)[None, :]
    windows = np.asarray(ecg, dtype=np.float64)[index]
    windows -= np.median(windows, axis=1, keepdims=True)
    amplitude = np.abs(windows[:, R_PEAK_INDEX])
    scale = np.empty_like(amplitude)
    running = max(float(amplitude[0]), 1e-6)
    for k, value in enumerate(amplitude):
        running = (1 - AMPLITUDE_SMOOTHING) * running + AMPLITUDE_SMOOTHING * value
        scale[k] = max(running, 1e-6)
    return (windows / scale[:, None]).astype(np.float32), kept
