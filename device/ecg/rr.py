"""RR-interval features computed causally, as a device computes them on a live stream.

For beat ``i`` the features use R-peak times up to beat ``i + 1`` (the post-RR interval needs the
next beat, so a beat is classified one beat late), never later ones. "Patient RR" is an
exponential moving average of all RR intervals seen so far, a running estimate of the wearer's
own rhythm: ratios to it measure prematurity relative to *this* patient, which is what carries
S-beat detection across patients (de Chazal et al. 2004; Mondéjar-Guerra et al. 2019).
"""

from __future__ import annotations

import numpy as np

from fedbeat.models.spec import RR_FEATURES

LOCAL_BEATS = 8
"""Number of preceding RR intervals in the local mean."""

PATIENT_SMOOTHING = 0.02
"""EMA weight of each new RR interval in the patient average (about 50 beats of memory)."""


def rr_features(r_times_s: np.ndarray) -> np.ndarray:
    """Features of every beat but the first and last (which lack a pre- or post-RR).

    Parameters
    ----------
    r_times_s
        R-peak times in seconds, increasing.

    Returns
    -------
    numpy.ndarray
        Shape (len(r_times_s) - 2, 8), float32, columns in ``RR_FEATURES`` order, for beats
        ``1 .. len - 2``.
    """
    times = np.asarray(r_times_s, dtype=np.float64)
    if times.ndim != 1 or times.size < 3:
        return np.zeros((0, len(RR_FEATURES)), dtype=np.float32)
    if np.any(np.diff(times) <= 0):
        raise ValueError("R-peak times must be strictly increasing")
    rr = np.diff(times)                      # rr[k] = times[k+1] - times[k]
    pre, post = rr[:-1], rr[1:]              # for beats 1 .. n-2
    csum = np.concatenate([[0.0], np.cumsum(rr)])
    idx = np.arange(1, times.size - 1)       # pre-RR of beat i is rr[i-1]
    lo = np.maximum(0, idx - LOCAL_BEATS)
    local = (csum[idx] - csum[lo]) / (idx - lo)
    patient = np.empty_like(pre)
    avg = rr[0]
    for k, value in enumerate(pre):          # EMA over intervals up to and including pre-RR
        avg = value if k == 0 else (1 - PATIENT_SMOOTHING) * avg + PATIENT_SMOOTHING * value
        patient[k] = avg
    features = np.stack([pre, post, local, patient, pre / patient, post / patient,
                         local / patient, pre / post], axis=1)
    return features.astype(np.float32)
