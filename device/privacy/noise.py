"""Randomness for differential privacy, from a cryptographically secure generator.

DP guarantees assume the adversary cannot predict the noise. numpy's default generator
(PCG64) is fast but not cryptographically secure: its state can be recovered from its outputs,
after which every later noise draw is known and subtracted. So noise and Poisson subsampling
come from :class:`SecureRandom`: the ChaCha20 keystream under a fresh 256-bit key and nonce from
``os.urandom`` on every call (the construction of Linux's own ``getrandom``; RFC 8439), which
is about three times faster than reading ``os.urandom`` for the ~200 KB a DP step needs.
Gaussians use the Box–Muller transform on 53-bit uniforms.

Known limit: floating-point Gaussian samples leak a little through their low-order bits
(Mironov 2012 showed this for Laplace; Holohan & Braghin 2021 for others). Secure aggregation
with the discrete Gaussian (issue "Secure aggregation") avoids floating point altogether.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_TWO_POW_53 = float(2**53)


class RandomSource(Protocol):
    """Where DP randomness comes from (a parameter, so tests can make it reproducible)."""

    def uniform(self, size: int) -> np.ndarray:
        """``size`` float64 values uniform on [0, 1)."""
        ...

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        """float64 Gaussian samples with mean 0 and standard deviation ``std``."""
        ...


def _box_muller(uniform: np.ndarray, count: int, std: float) -> np.ndarray:
    """``count`` N(0, std²) samples from ``2 * ceil(count / 2)`` uniforms on [0, 1)."""
    half = (count + 1) // 2
    radius = np.log1p(-uniform[:half])  # log(1 - u): u < 1, so finite
    radius *= -2.0
    np.sqrt(radius, out=radius)
    radius *= std
    angle = uniform[half:2 * half]
    angle *= 2.0 * np.pi
    out = np.empty(2 * half)
    np.multiply(radius, np.cos(angle), out=out[:half])
    np.multiply(radius, np.sin(angle), out=out[half:])
    return out[:count]


def _keystream(nbytes: int) -> bytes:
    key, nonce = os.urandom(32), os.urandom(16)
    encryptor = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
    return encryptor.update(bytes(nbytes))


class SecureRandom:
    """Uniforms and Gaussians from a freshly keyed ChaCha20 keystream (see module docstring)."""

    def uniform(self, size: int) -> np.ndarray:
        words = np.frombuffer(_keystream(8 * size), dtype=np.uint64)
        values = (words >> np.uint64(11)).astype(np.float64)
        values /= _TWO_POW_53
        return values

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        count = int(np.prod(shape))
        uniform = self.uniform(2 * ((count + 1) // 2))
        return _box_muller(uniform, count, std).reshape(shape)


class SeededRandom:
    """Reproducible randomness for tests and simulations. Provides **no privacy**."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def uniform(self, size: int) -> np.ndarray:
        return self._rng.random(size)

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self._rng.normal(0.0, std, size=shape)
