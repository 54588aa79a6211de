"""The numeric kernels of aggregation, as plain functions over numpy arrays.

Nothing here knows about rounds, devices or strategies; the strategy classes call these.

Exact, order-independent weighted sums
--------------------------------------
A crashed aggregator replays a round's accepted updates in whatever order it finds them on
disk, and the new global model must equal an uninterrupted run's bit for bit. Floating-point
addition is not associative, so a streaming float sum depends on arrival order. Instead every
delta value ``x`` is quantised to a fixed-point integer ``q = rint(x · 2^30)`` (resolution
2^-30 ≈ 9.3e-10, far below float32 precision of typical deltas), multiplied by an integer weight
``w`` and summed in int64. Integer addition is exact, associative and commutative, so the sum is
the same for every order.

Bounds: ``|x| < 64`` gives ``|q| ≤ 2^36``; a weight digit ``w < 2^24`` gives ``|q·w| < 2^60``.
Each product is split into its low 32 bits (``0 ≤ lo < 2^32``) and the rest (``|hi| < 2^28``),
and the two parts are summed in separate int64 arrays, so at least 2^31 updates fit without
overflow. A streaming sum adds the products into one more int64 array first and carries it
into the two parts only when the bound ``Σ ceil(peak_i · 2^30) · w_i`` of what it holds would
reach 2^62; the integer total, and so the result, is the same. Larger integer weights (up to
2^48) are split into base-2^24 digits, one pair of arrays per digit. Only at the end is the
integer total ``hi·2^32 + lo`` turned into float64, divided by ``2^30 · Σ weight`` and cast
to float32 — a deterministic function of integers.
"""

from __future__ import annotations

import math

import numpy as np

FIXED_POINT_BITS = 30
"""Fractional bits of the fixed-point accumulator: resolution 2^-30 ≈ 9.3e-10."""
MAX_ABS_DELTA = 64.0
"""Largest accepted |delta| value (exclusive) in an exact sum; the ingest's norm bound keeps
real updates far below it."""
WEIGHT_DIGIT_BITS = 24
MAX_EXACT_WEIGHT = 1 << (2 * WEIGHT_DIGIT_BITS)
"""Integer weights of an exact sum must be below 2^48 (two base-2^24 digits)."""

PARTIAL_SUM_LIMIT = 1 << 62
"""A partial sum of products is carried into ``(lo, hi)`` before its bound could reach this
(int64 holds ±2^63)."""

_SCALE = float(1 << FIXED_POINT_BITS)
_LOW_BITS = 32
_LOW_MASK = np.int64((1 << _LOW_BITS) - 1)
_DIGIT_MASK = (1 << WEIGHT_DIGIT_BITS) - 1


def check_fixed_point_range(values: np.ndarray, *, name: str) -> None:
    """Refuse values the exact sum cannot hold.

    Raises
    ------
    ValueError
        If any value is not finite or has ``|x| ≥ 64`` (the bound that keeps the exact sum from
        overflowing); the message names the tensor.
    """
    x = np.asarray(values)
    if x.size:
        peak = float(np.max(np.abs(x)))
        if not math.isfinite(peak):
            raise ValueError(f"{name}: update contains NaN or infinity")
        if peak >= MAX_ABS_DELTA:
            raise ValueError(f"{name}: update value {peak:.6g} is too large (|delta| must be "
                             f"below {MAX_ABS_DELTA:g}); bound update norms at ingest")


def fixed_point(flat: np.ndarray) -> np.ndarray:
    """``rint(x · 2^30)`` as int64 of float64 values already known to be finite with
    ``|x| < 64`` (:func:`check_fixed_point_range`); ``flat`` is not modified."""
    # Scaling by a power of two is exact in float64; rint rounds half to even, deterministically.
    x = flat * _SCALE
    np.rint(x, out=x)
    return x.astype(np.int64)


def quantize(values: np.ndarray, *, name: str) -> np.ndarray:
    """Fixed-point int64 form ``rint(x · 2^30)`` of a float delta.

    Raises
    ------
    ValueError
        As :func:`check_fixed_point_range`.
    """
    check_fixed_point_range(values, name=name)
    return fixed_point(np.asarray(values, dtype=np.float64))


def concat_float64(tensors: list[np.ndarray]) -> np.ndarray:
    """All values of several tensors, in order, as one new float64 vector (a single pass)."""
    if not tensors:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([t.ravel() for t in tensors], dtype=np.float64)


def norm_and_range(flat: np.ndarray) -> tuple[float, float, float]:
    """L2 norm, smallest and largest value of a float64 vector; NaN anywhere makes all three
    NaN. The norm is numpy's pairwise sum of squares, not BLAS, so it does not depend on the
    BLAS build or its threads."""
    if not flat.size:
        return 0.0, 0.0, 0.0
    return math.sqrt(float(np.sum(flat * flat))), float(flat.min()), float(flat.max())


def weight_digits(weight: int) -> list[int]:
    """Base-2^24 digits of an integer weight, least significant first (at most two)."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 < weight < MAX_EXACT_WEIGHT:
        raise ValueError(f"exact-sum weight must be an integer in [1, 2^48), got {weight!r}")
    digits = [weight & _DIGIT_MASK]
    if weight >> WEIGHT_DIGIT_BITS:
        digits.append(weight >> WEIGHT_DIGIT_BITS)
    return digits


def accumulate_exact(lo: np.ndarray, hi: np.ndarray, q: np.ndarray, digit: int) -> None:
    """Add ``q · digit`` into the split int64 accumulator ``(lo, hi)`` in place, exactly.

    ``q`` comes from :func:`quantize` (``|q| ≤ 2^36``) and ``0 ≤ digit < 2^24``, so the product
    fits int64; ``lo`` gains the low 32 bits (non-negative), ``hi`` the arithmetic rest.
    """
    if not 0 <= digit <= _DIGIT_MASK:
        raise ValueError(f"weight digit {digit} outside [0, 2^24)")
    if digit == 0:
        return
    product = q * np.int64(digit)
    low = np.bitwise_and(product, _LOW_MASK)
    lo += low
    np.right_shift(product, _LOW_BITS, out=product)
    hi += product


def fixed_point_bound(peak: float) -> int:
    """An upper bound on ``|rint(x · 2^30)|`` for ``|x| ≤ peak``."""
    return math.ceil(peak * _SCALE)


def carry_exact(lo: np.ndarray, hi: np.ndarray, partial: np.ndarray) -> None:
    """Move an int64 partial sum (of products ``q · digit``) into the split accumulator
    ``(lo, hi)`` exactly, as :func:`accumulate_exact` would have, and zero it."""
    lo += partial & _LOW_MASK
    np.right_shift(partial, _LOW_BITS, out=partial)
    hi += partial
    partial.fill(0)


def exact_total(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The float64 value of ``hi · 2^32 + lo`` (a deterministic function of the integers)."""
    carry = lo >> _LOW_BITS
    low = lo & _LOW_MASK
    high = hi + carry
    out: np.ndarray = high.astype(np.float64) * float(1 << _LOW_BITS) + low.astype(np.float64)
    return out


def exact_mean(digit_sums: list[tuple[np.ndarray, np.ndarray]], denominator: int) -> np.ndarray:
    """Finish an exact weighted sum: ``Σ_k total_k · 2^(24k) / (2^30 · denominator)`` as float32.

    ``digit_sums[k]`` is the ``(lo, hi)`` pair that accumulated weight digit ``k``.
    """
    if denominator <= 0:
        raise ValueError("exact mean needs a positive total weight")
    total = np.zeros(digit_sums[0][0].shape, dtype=np.float64)
    for k, (lo, hi) in enumerate(digit_sums):
        total += exact_total(lo, hi) * float(1 << (WEIGHT_DIGIT_BITS * k))
    out: np.ndarray = (total / (_SCALE * float(denominator))).astype(np.float32)
    return out


def weighted_mean(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Float64 weighted mean over axis 0 of an ``(n, ...)`` stack, cast to float32.

    Deterministic for a given row order; callers fix the order (sorted by device id).

    Raises
    ------
    ValueError
        Unless there is one positive weight per row.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != stack.shape[0] or not np.all(w > 0):
        raise ValueError("weighted mean needs one positive weight per row")
    acc = np.zeros(stack.shape[1:], dtype=np.float64)
    for weight, row in zip(w, stack, strict=True):  # row by row: no BLAS, a fixed order
        acc += weight * row.astype(np.float64)
    out: np.ndarray = (acc / w.sum()).astype(np.float32)
    return out


def trimmed_count(n: int, trim_fraction: float) -> int:
    """How many values a β-trimmed mean drops at each end: ``floor(β · n)``."""
    return math.floor(trim_fraction * n)


def trimmed_mean(stack: np.ndarray, trim_fraction: float) -> np.ndarray:
    """Coordinate-wise β-trimmed mean (Yin et al. 2018, arXiv 1803.01498), unweighted.

    Per coordinate, the ``floor(β·n)`` largest and smallest values are dropped and the rest
    averaged. Sorting each coordinate makes the result independent of the row order.
    """
    n = stack.shape[0]
    k = trimmed_count(n, trim_fraction)
    if n - 2 * k < 1:
        raise ValueError(f"trimmed mean with beta={trim_fraction} leaves nothing of {n} values")
    ordered = np.sort(stack, axis=0)
    kept = ordered[k:n - k].astype(np.float64)
    out: np.ndarray = (kept.sum(axis=0) / (n - 2 * k)).astype(np.float32)
    return out


def coordinate_median(stack: np.ndarray) -> np.ndarray:
    """Coordinate-wise median (Yin et al. 2018), unweighted; mean of the middle two for even n."""
    ordered = np.sort(stack, axis=0).astype(np.float64)
    n = ordered.shape[0]
    mid = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2.0
    return np.asarray(mid, dtype=np.float32)


def pairwise_sq_distances(flat: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of an ``(n, d)`` matrix, in float64.

    Computed from differences (not the Gram trick) so close updates with large norms keep their
    precision; row by row, so memory stays O(n·d).
    """
    x = flat.astype(np.float64)
    n = x.shape[0]
    dist = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        diff = x[i + 1:] - x[i]
        row = np.einsum("ij,ij->i", diff, diff)
        dist[i, i + 1:] = row
        dist[i + 1:, i] = row
    return dist


def krum_scores(flat: np.ndarray, num_byzantine: int) -> np.ndarray:
    """Krum scores (Blanchard et al. 2017, NeurIPS, "Machine Learning with Adversaries").

    The score of update i is the sum of squared distances to its ``n − f − 2`` nearest other
    updates. Requires ``n > 2f + 2``.
    """
    n = flat.shape[0]
    if n <= 2 * num_byzantine + 2:
        raise ValueError(f"Krum with f={num_byzantine} needs more than {2 * num_byzantine + 2} "
                         f"updates, got {n}")
    dist = pairwise_sq_distances(flat)
    neighbours = n - num_byzantine - 2
    scores = np.empty(n, dtype=np.float64)
    for i in range(n):
        others = np.delete(dist[i], i)
        scores[i] = np.sort(others)[:neighbours].sum()
    return scores


def multi_krum_select(scores: np.ndarray, num_selected: int) -> np.ndarray:
    """Indices of the ``m`` lowest scores; ties go to the lower index (a stable sort)."""
    if not 1 <= num_selected <= scores.shape[0]:
        raise ValueError(f"Multi-Krum cannot select {num_selected} of {scores.shape[0]} updates")
    return np.sort(np.argsort(scores, kind="stable")[:num_selected])


def l2_norm(tensors: list[np.ndarray]) -> float:
    """L2 norm over all values of several tensors, in float64 (numpy's pairwise sum, not BLAS,
    so the result does not depend on the BLAS build or its threads)."""
    total = 0.0
    for t in tensors:
        x = t.astype(np.float64).ravel()
        total += float(np.sum(x * x))
    return math.sqrt(total)


def clip_scale(norm: float, max_norm: float) -> float:
    """Factor ``min(1, C / ‖Δ‖)`` that bounds a norm (Sun et al. 2019, arXiv 1911.07963)."""
    if norm <= max_norm:
        return 1.0
    return max_norm / norm


def staleness_weight(staleness: int) -> float:
    """FedBuff's staleness discount ``s(τ) = 1 / √(1 + τ)`` (Nguyen et al. 2022, AISTATS)."""
    if staleness < 0:
        raise ValueError(f"staleness must be non-negative, got {staleness}")
    return 1.0 / math.sqrt(1.0 + staleness)
