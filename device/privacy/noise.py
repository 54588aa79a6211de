"""Randomness for differential privacy, from the operating system's CSPRNG.

DP guarantees assume the adversary cannot predict the noise. numpy's default generator
(PCG64) is fast but not cryptographically secure: its state can be recovered from its outputs,
after which every later noise draw is known and subtracted. So noise and Poisson subsampling
draw from ``os.urandom`` here. Gaussians use the Box–Muller transform on 53-bit uniforms.

Known limit: floating-point Gaussian samples leak a little through their low-order bits
(Mironov 2012 showed this for Laplace; Holohan & Braghin 2021 for others). Secure aggregation
with the discrete Gaussian (issue "Secure aggregation") avoids floating point altogether.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

_TWO_POW_53 = float(2**53)


class RandomSource(Protocol):
    """Where DP randomness comes from (a parameter, so tests can make it reproducible)."""

    def uniform(self, size: int) -> np.ndarray:
        """``size`` float64 values uniform on [0, 1)."""
        ...

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        """float64 Gaussian samples with mean 0 and standard deviation ``std``."""
        ...


def _box_muller(uniform: np.ndarray, count: int) -> np.ndarray:
    half = (count + 1) // 2
    u1 = 1.0 - uniform[:half]            # (0, 1]: log is finite
    u2 = uniform[half:2 * half]
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]


class SecureRandom:
    """Uniforms and Gaussians built from ``os.urandom`` bytes."""

    def uniform(self, size: int) -> np.ndarray:
        words = np.frombuffer(os.urandom(8 * size), dtype=np.uint64)
        return (words >> np.uint64(11)).astype(np.float64) / _TWO_POW_53

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        count = int(np.prod(shape))
        return (std * _box_muller(self.uniform(2 * ((count + 1) // 2)), count)).reshape(shape)


class SeededRandom:
    """Reproducible randomness for tests and simulations. Provides **no privacy**."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def uniform(self, size: int) -> np.ndarray:
        return self._rng.random(size)

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self._rng.normal(0.0, std, size=shape)
