"""The model input contract: what every fedbeat architecture consumes and produces.

One canonical sampling rate and one beat window keep devices that sample anywhere from 125 to
1000 Hz interchangeable: they resample before windowing, so a global model fits every device.
The RR features beside the waveform are what makes supraventricular (S) beats separable across
patients (de Chazal et al. 2004), so they are part of the contract, not an add-on.
"""

from typing import Final

SAMPLE_RATE_HZ: Final = 180
"""Canonical sampling rate of beat windows, in Hz."""

WINDOW_SAMPLES: Final = 128
"""Beat window length in samples (about 0.71 s at 180 Hz)."""

R_PEAK_INDEX: Final = 45
"""Index of the R peak in the window: 0.25 s (P wave, PR) before it, 0.46 s (QRS, T) after."""

RR_FEATURES: Final = (
    "pre_rr_s",
    "post_rr_s",
    "local_rr_s",
    "patient_rr_s",
    "pre_rr_ratio",
    "post_rr_ratio",
    "local_rr_ratio",
    "pre_post_ratio",
)
"""RR-interval features, in order: raw intervals in seconds, then ratios to the patient's
running average RR (prematurity), and pre-RR over post-RR (compensatory pause)."""

CLASSES: Final = ("N", "S", "V", "F", "Q")
"""AAMI EC57 beat classes, in logit order."""

NUM_CLASSES: Final = len(CLASSES)
