"""Samples of the discrete Gaussian N_Z(0, σ²): P(x) ∝ exp(-x² / 2σ²) on the integers.

Distributed DP needs noise that lives on the integers, because SecAgg sums in a finite ring and
the sum of many devices' shares must itself be (close to) a discrete Gaussian (Kairouz, Liu and
Steinke, ICML 2021). The sampler is Algorithm 3 of Canonne, Kamath and Steinke ("The Discrete
Gaussian for Differential Privacy", NeurIPS 2020): draw from a discrete Laplace with scale
t = ⌊σ⌋ + 1 and accept with probability exp(-(|y| - σ²/t)² / 2σ²). Its output is exactly N_Z
when the coin flips are exact; here they are vectorised over numpy with 53-bit uniforms from a
cryptographically secure keystream (:class:`~fedbeat.device.privacy.noise.SecureRandom`), so
each probability is off by at most 2^-53 — and, unlike a rounded float Gaussian, what leaves
the device is an integer that carries no floating-point low-order bits. About 1.4 discrete
Laplace draws are spent per accepted sample for any σ ≥ 1.
"""

from __future__ import annotations

import math

import numpy as np

from fedbeat.device.privacy.noise import RandomSource


def _discrete_laplace(scale: int, count: int, source: RandomSource) -> np.ndarray:
    """``count`` draws with P(y) ∝ exp(-|y| / scale); slightly fewer after rejecting -0."""
    uniform = source.uniform(2 * count)
    magnitude = np.floor(-scale * np.log1p(-uniform[:count])).astype(np.int64)   # geometric
    negative = uniform[count:] < 0.5
    keep = ~(negative & (magnitude == 0))       # +0 and -0 are one point: count it once
    signed: np.ndarray = np.where(negative, -magnitude, magnitude)[keep]
    return signed


def sample(sigma: float, count: int, source: RandomSource) -> np.ndarray:
    """``count`` independent N_Z(0, sigma²) samples (int64); ``sigma = 0`` gives zeros."""
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError("sigma must be finite and non-negative")
    if sigma == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    scale = math.floor(sigma) + 1
    variance = sigma * sigma
    out = np.empty(count, dtype=np.int64)
    filled = 0
    while filled < count:
        wanted = count - filled
        candidates = _discrete_laplace(scale, int(wanted * 1.6) + 16, source)
        accept = source.uniform(candidates.size) < np.exp(
            -((np.abs(candidates) - variance / scale) ** 2) / (2.0 * variance))
        accepted = candidates[accept][:wanted]
        out[filled:filled + accepted.size] = accepted
        filled += accepted.size
    return out


def pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """The exact probabilities of ``support`` under N_Z(0, sigma²), for tests and accounting."""
    radius = math.ceil(40 * sigma) + 1
    everything = np.arange(-radius, radius + 1, dtype=np.float64)
    normaliser = float(np.exp(-everything**2 / (2 * sigma**2)).sum())
    return np.exp(-np.asarray(support, dtype=np.float64) ** 2 / (2 * sigma**2)) / normaliser
