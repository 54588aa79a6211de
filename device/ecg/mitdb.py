"""MIT-BIH Arrhythmia Database records as labelled beats (Moody & Mark 2001, PhysioNet).

The reference annotations give the R peaks here; live devices use the QRS detector instead.
Inter-patient split of de Chazal et al. 2004: train on DS1, test on DS2, paced records
(102, 104, 107, 217) excluded. Records 201 and 202 come from the same patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbeat.device.ecg.aami import CLASS_INDEX, SYMBOL_TO_CLASS
from fedbeat.device.ecg.rr import rr_features
from fedbeat.device.ecg.windows import beat_windows, causal_bandpass
from fedbeat.models.spec import SAMPLE_RATE_HZ

DS1 = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122", "124",
       "201", "203", "205", "207", "208", "209", "215", "220", "223", "230")
DS2 = ("100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210", "212",
       "213", "214", "219", "221", "222", "228", "231", "232", "233", "234")
PACED = ("102", "104", "107", "217")
PREFERRED_LEAD = "MLII"


class RecordError(ValueError):
    """A record that cannot be read or has no usable beats."""


@dataclass(frozen=True)
class RecordBeats:
    """Beats of one record: windows (n, W), rr (n, 8), labels (n,) as AAMI class indices."""

    record: str
    windows: np.ndarray
    rr: np.ndarray
    labels: np.ndarray


def read_record_beats(directory: Path, record: str) -> RecordBeats:
    """Read a record with ``wfdb``, resample to the canonical rate and extract labelled beats.

    The lead is chosen by name (MLII), not position: record 114 has its leads swapped.
    """
    import wfdb  # optional dependency (extra "data"); imported here to keep devices lean

    path = directory / record
    try:
        header = wfdb.rdheader(str(path))
        names = list(header.sig_name)
        channel = names.index(PREFERRED_LEAD) if PREFERRED_LEAD in names else 0
        signals, fields = wfdb.rdsamp(str(path), channels=[channel])
        annotation = wfdb.rdann(str(path), "atr")
    except (OSError, ValueError) as exc:
        raise RecordError(f"cannot read record {record} in {directory}: {exc}") from None
    rate = float(fields["fs"])
    ecg = _resample(signals[:, 0], rate)
    symbols = np.asarray(annotation.symbol)
    is_beat = np.array([s in SYMBOL_TO_CLASS for s in symbols])
    samples = np.asarray(annotation.sample)[is_beat]
    labels = np.array([CLASS_INDEX[SYMBOL_TO_CLASS[s]] for s in symbols[is_beat]], dtype=np.int64)
    r_peaks = np.round(samples * SAMPLE_RATE_HZ / rate).astype(np.int64)
    features = rr_features(r_peaks / SAMPLE_RATE_HZ)          # beats 1 .. n-2
    inner = slice(1, len(r_peaks) - 1)
    windows, kept = beat_windows(causal_bandpass(ecg), r_peaks[inner])
    if kept.size == 0:
        raise RecordError(f"record {record} has no complete beats")
    return RecordBeats(record, windows, features[kept], labels[inner][kept])


def _resample(ecg: np.ndarray, rate_hz: float) -> np.ndarray:
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(SAMPLE_RATE_HZ) / Fraction(rate_hz).limit_denominator(1000)
    if ratio == 1:
        return np.asarray(ecg, dtype=np.float64)
    return np.asarray(resample_poly(ecg, ratio.numerator, ratio.denominator), dtype=np.float64)
