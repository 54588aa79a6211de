"""The distributed discrete Gaussian mechanism (Kairouz, Liu & Steinke, ICML 2021).

Each device turns its clipped update into a vector of ring elements that SecAgg can sum:

1. **clip** to L2 norm ``c`` (user-level sensitivity);
2. **scale** by 1/γ, so that one integer step is γ in update units;
3. **rotate**: random signs, a random permutation and a blockwise Walsh–Hadamard transform,
   all from the round's public seed. The rotation is orthogonal (norms unchanged) and spreads
   the energy evenly over coordinates, so the sum is unlikely to wrap around the ring;
4. **round stochastically** (unbiased), retrying until the rounded norm is within the bound
   Δ that the privacy analysis assumes ("conditional rounding", Proposition 22 of the paper);
5. **add noise** N_Z(0, σ²/γ²) per coordinate, σ = z·c/√n_min: n_min devices' shares sum to at
   least the central noise z·c;
6. **reduce modulo 2^bits** ("modular clipping"): this is the SecAgg input.

The aggregator receives only the ring sum; :meth:`DdgEncoder.decode_sum` maps it to signed
integers, undoes the rotation and multiplies by γ. γ is chosen so the sum of ``n_max`` devices
stays inside the ring with ``k`` standard deviations of headroom (Eq. 61 of the paper).
The privacy of the sum is in :mod:`~fedbeat.device.privacy.ddg_accounting`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from fedbeat.broker.secagg import ring
from fedbeat.device.privacy import discrete_gaussian
from fedbeat.device.privacy.noise import RandomSource

MAX_BITS = 20
MAX_BLOCK = 1024
MAX_ROUNDING_TRIES = 1000


class RoundingError(ArithmeticError):
    """Conditional rounding kept failing: β is far too small for this vector."""


@dataclass(frozen=True)
class DdgParams:
    """Everything a device and the aggregator must share to encode and decode one round."""

    dim: int                      # parameters in the update
    clip_norm: float              # c
    noise_multiplier: float       # z: central noise stddev = z * c; 0 = quantise only
    min_devices: int              # n_min: the noise is split as if only this many contribute
    max_devices: int              # n_max: the ring must hold this many devices' sum
    bits: int = 20
    beta: float = math.exp(-0.5)  # conditional rounding: retry probability bound
    headroom: float = 4.0         # k: standard deviations of the sum the ring must hold

    def __post_init__(self) -> None:
        if not self.dim > 0:
            raise ValueError("dim must be positive")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError("clip_norm must be a positive number")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError("noise_multiplier must be non-negative")
        if not 1 <= self.min_devices <= self.max_devices:
            raise ValueError("need 1 <= min_devices <= max_devices")
        if not 2 <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be between 2 and {MAX_BITS}")
        if not 0 < self.beta < 1 or not self.headroom > 0:
            raise ValueError("beta must be in (0, 1) and headroom positive")
        if 4.0**self.bits <= self.headroom**2 * self.max_devices:
            raise ValueError(f"{self.bits} bits cannot hold the rounding error of "
                             f"{self.max_devices} devices; use more bits")

    @property
    def block(self) -> int:
        return min(MAX_BLOCK, 1 << max(0, (self.dim - 1).bit_length()))

    @property
    def padded_dim(self) -> int:
        """The ring vector's length: ``dim`` rounded up to whole Hadamard blocks."""
        return -(-self.dim // self.block) * self.block

    @property
    def local_stddev(self) -> float:
        """σ: each device's noise stddev in update units."""
        return self.noise_multiplier * self.clip_norm / math.sqrt(self.min_devices)

    @property
    def granularity(self) -> float:
        """γ: the smallest γ for which k stddevs of the n_max-device sum fit in 2^bits."""
        n = self.max_devices
        signal = self.clip_norm**2 * n * n / self.padded_dim   # all updates aligned (worst)
        spread = signal + self.local_stddev**2 * n
        return 2 * self.headroom * math.sqrt(spread / (4.0**self.bits - self.headroom**2 * n))

    @property
    def rounded_norm_bound(self) -> float:
        """Δ: the L2 bound (in update units) conditional rounding guarantees (Theorem 1)."""
        c, gamma, d = self.clip_norm, self.granularity, self.padded_dim
        loose = (c + gamma * math.sqrt(d)) ** 2
        tight = (c * c + gamma * gamma * d / 4 + math.sqrt(2 * math.log(1 / self.beta))
                 * gamma * (c + gamma * math.sqrt(d) / 2))
        return math.sqrt(min(loose, tight))


def _hadamard(blocks: np.ndarray) -> np.ndarray:
    """Orthonormal Walsh–Hadamard transform of each row (its own inverse)."""
    out = blocks.astype(np.float64, copy=True)
    rows, width = out.shape
    h = 1
    while h < width:
        view = out.reshape(rows, width // (2 * h), 2, h)
        left, right = view[:, :, 0, :].copy(), view[:, :, 1, :]
        view[:, :, 0, :] += right
        view[:, :, 1, :] = left - right
        h *= 2
    return out / math.sqrt(width)


class DdgEncoder:
    """The round's rotation and the encode/decode pair; build one per round from its seed."""

    def __init__(self, params: DdgParams, seed: bytes) -> None:
        self.params = params
        rng = np.random.default_rng(np.frombuffer(
            hashlib.sha256(b"fedbeat/v1/ddg-rotation\x00" + seed).digest(), dtype=np.uint32))
        self._signs = rng.choice(np.array([-1.0, 1.0]), size=params.padded_dim)
        self._permutation = rng.permutation(params.padded_dim)

    def rotate(self, vector: np.ndarray) -> np.ndarray:
        padded = np.zeros(self.params.padded_dim)
        padded[:self.params.dim] = vector
        mixed = (padded * self._signs)[self._permutation]
        return _hadamard(mixed.reshape(-1, self.params.block)).reshape(-1)

    def unrotate(self, rotated: np.ndarray) -> np.ndarray:
        mixed = _hadamard(rotated.reshape(-1, self.params.block)).reshape(-1)
        padded = np.empty_like(mixed)
        padded[self._permutation] = mixed
        unrotated: np.ndarray = (padded * self._signs)[:self.params.dim]
        return unrotated

    def encode(self, update: np.ndarray, source: RandomSource) -> np.ndarray:
        """Steps 1–6 of the module docstring: a float update → uint32 ring elements."""
        p = self.params
        flat = np.asarray(update, dtype=np.float64).reshape(-1)
        if flat.size != p.dim or not np.all(np.isfinite(flat)):
            raise ValueError(f"update must be {p.dim} finite values")
        norm = float(np.linalg.norm(flat))
        if norm > p.clip_norm:
            flat = flat * (p.clip_norm / norm)
        scaled = self.rotate(flat) / p.granularity
        rounded = self._conditional_round(scaled, source)
        noise = discrete_gaussian.sample(p.local_stddev / p.granularity, rounded.size, source)
        return ring.from_signed(rounded + noise, p.bits)

    def _conditional_round(self, scaled: np.ndarray, source: RandomSource) -> np.ndarray:
        bound = self.params.rounded_norm_bound / self.params.granularity
        floor = np.floor(scaled)
        for _ in range(MAX_ROUNDING_TRIES):
            rounded: np.ndarray = (floor + (source.uniform(scaled.size) < scaled - floor)
                                   ).astype(np.int64)
            if float(np.linalg.norm(rounded)) <= bound:
                return rounded
        raise RoundingError("stochastic rounding exceeded its norm bound "
                            f"{MAX_ROUNDING_TRIES} times")

    def decode_sum(self, ring_sum: np.ndarray) -> np.ndarray:
        """The ring sum of the devices' encodings → the (noisy) sum of their clipped updates."""
        p = self.params
        return self.unrotate(ring.centered(ring_sum, p.bits).astype(np.float64) * p.granularity)
