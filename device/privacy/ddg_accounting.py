"""The privacy of a sum of distributed discrete Gaussian shares (Kairouz et al., Theorem 1).

n devices each add N_Z(0, s²) with s = σ/γ (integer units). The sum of their noise is not
exactly a discrete Gaussian, but close: with τ = 10 Σ_{k=1}^{n-1} exp(-2π² s² k/(k+1)), releasing
the sum of vectors whose rounded L2 norm is at most Δ satisfies, at every Rényi order α,

    RDP(α) ≤ min( α Δ²/(2 n σ²) + τ d ,  (α/2) (Δ/(√n σ) + τ √d)² )

(Proposition 14 / Eq. 17). τ is negligible once s ≳ 1, and the first term is then the central
Gaussian mechanism's α/(2z²) up to the rounding inflation Δ/c. Rounds compose by adding RDP;
participation is decided by a public rule, not secret sampling, so no amplification is claimed.
The actual number of contributors n (survivors of the SecAgg round, at least ``min_devices``)
is what enters: fewer survivors, less noise, larger ε — the aggregator reports it per round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedbeat.device.privacy.accountant import DEFAULT_ORDERS, epsilon_from_rdp
from fedbeat.device.privacy.ddg import DdgParams


def tau(local_stddev_integer: float, devices: int) -> float:
    """The divergence of a sum of ``devices`` discrete Gaussians from one (Theorem 1)."""
    s2 = local_stddev_integer**2
    return 10.0 * sum(math.exp(-2 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, devices))


def ddg_rdp(params: DdgParams, devices: int,
            orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP at ``orders`` of one round whose sum holds ``devices`` contributions."""
    if devices < 1:
        raise ValueError("a sum needs at least one device")
    if params.noise_multiplier == 0 or params.local_stddev / params.granularity < 0.5:
        # no noise, or less than half a ring step per device: outside what Theorem 1 covers
        # (Proposition 14 assumes each share's stddev is at least 1/2 in integer units)
        return np.full(len(orders), np.inf)
    sigma2 = devices * params.local_stddev**2             # noise variance of the sum
    scale = params.rounded_norm_bound / math.sqrt(sigma2)
    t = tau(params.local_stddev / params.granularity, devices)
    d = params.padded_dim
    alphas = np.asarray(orders, dtype=np.float64)
    return np.minimum(alphas * scale**2 / 2 + t * d, alphas / 2 * (scale + t * math.sqrt(d)) ** 2)


def equivalent_noise_multiplier(params: DdgParams, devices: int) -> float:
    """σ_eq whose Gaussian RDP α/(2σ_eq²) bounds :func:`ddg_rdp` at every order.

    The second term of Theorem 1's minimum is exactly a Gaussian mechanism's RDP with
    multiplier 1 / (Δ/(√n σ) + τ√d), so a device's ledger can charge that (conservative) value.
    """
    if params.noise_multiplier == 0 or params.local_stddev / params.granularity < 0.5:
        return 0.0
    scale = params.rounded_norm_bound / (math.sqrt(devices) * params.local_stddev)
    t = tau(params.local_stddev / params.granularity, devices)
    return 1.0 / (scale + t * math.sqrt(params.padded_dim))


def ddg_epsilon(params: DdgParams, devices_per_round: Sequence[int], delta: float) -> float:
    """(ε, δ) after the rounds listed (each entry: that round's number of contributors)."""
    total = np.zeros(len(DEFAULT_ORDERS))
    for devices in devices_per_round:
        total = total + ddg_rdp(params, devices)
    return epsilon_from_rdp(rdp=total, delta=delta)[0]
