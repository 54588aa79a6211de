"""RR-interval features computed causally, as a device computes them on a live stream.

For beat ``i`` the features use R-peak times up to beat ``i + 1`` (the post-RR interval needs the
next beat, so a beat is classified one beat late), never later ones. "Patient RR" is an
exponential moving average of all RR intervals seen so far, a running estimate of the wearer's
own rhythm: ratios to it measure prematurity relative to *this* patient, which is what carries
S-beat detection across patients (de Chazal et al. 2004; Mondéjar-Guerra et al. 2019).

:class:`RrTracker` is the stateful core, fed one R peak at a time; :func:`rr_features` runs it
over a whole recording, and the streaming pipeline (:mod:`fedbeat.device.ecg.stream`) runs it
on a live signal, so both compute the same numbers.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from fedbeat.models.spec import RR_FEATURES

LOCAL_BEATS = 8
"""Number of preceding RR intervals in the local mean."""

PATIENT_SMOOTHING = 0.02
"""EMA weight of each new RR interval in the patient average (about 50 beats of memory)."""


class RrTracker:
    """RR features of a stream of R peaks, one beat behind (bounded state: a few numbers).

    Feed R-peak times in order with :meth:`add`; each time returns the features of the
    previous beat, whose post-RR interval the new time completes.
    """

    def __init__(self) -> None:
        self.last_time: float | None = None
        """Time of the latest R peak, in seconds."""
        self.pre: float | None = None
        """Pre-RR interval of the latest R peak (None until two peaks have been seen)."""
        self.recent: deque[float] = deque(maxlen=LOCAL_BEATS)
        """The latest ``LOCAL_BEATS`` intervals, ending with ``pre``."""
        self.patient: float | None = None
        """EMA of all intervals up to and including ``pre``."""

    def add(self, time_s: float) -> np.ndarray | None:
        """Take the next R-peak time; return the previous beat's features, if it has a pre-RR.

        Returns
        -------
        numpy.ndarray or None
            Shape (8,) float32, columns in ``RR_FEATURES`` order, for the beat before
            ``time_s``; None for the first two peaks (no beat with both intervals yet).

        Raises
        ------
        ValueError
            ``time_s`` is not later than the previous R peak.
        """
        if self.last_time is None:
            self.last_time = time_s
            return None
        interval = time_s - self.last_time
        if not interval > 0:
            raise ValueError("R-peak times must be strictly increasing")
        features = None if self.pre is None else self._features(interval)
        self.recent.append(interval)
        self.patient = interval if self.patient is None else (
            (1 - PATIENT_SMOOTHING) * self.patient + PATIENT_SMOOTHING * interval)
        self.pre, self.last_time = interval, time_s
        return features

    def _features(self, post: float) -> np.ndarray:
        pre, patient = self.pre, self.patient
        assert pre is not None
        assert patient is not None
        local = sum(self.recent) / len(self.recent)
        return np.array([pre, post, local, patient, pre / patient, post / patient,
                         local / patient, pre / post], dtype=np.float64).astype(np.float32)


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
    tracker = RrTracker()
    rows = [tracker.add(t) for t in times.tolist()]
    return np.stack([row for row in rows if row is not None])
