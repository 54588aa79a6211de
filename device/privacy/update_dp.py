"""Update-level DP: clip the whole model update to L2 norm C, then add N(0, σ²C²) per coordinate.

This is the Gaussian mechanism on the update (as in DP-FedAvg, McMahan et al. 2018, applied
locally on the device). All tensors are clipped *together* — one global L2 norm — so the
sensitivity bound covers the update as a whole. The noise comes from a
:class:`~fedbeat.device.privacy.noise.RandomSource`: :class:`SecureRandom` (ChaCha20 keyed from
``os.urandom``) unless a test passes a seeded source. What this buys, and how it is charged to
the budget, is in :func:`fedbeat.device.privacy.accountant.accounted_step` and ``docs/privacy.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedbeat.device.privacy.noise import RandomSource, SecureRandom


@dataclass(frozen=True)
class NoisedUpdate:
    """The privatised update and what may be logged about it.

    ``pre_clip_norm`` is the update's global L2 norm before clipping (a diagnostic for choosing
    C; it is computed from private data, so keep it on the device — logs, not metrics).
    """

    tensors: dict[str, np.ndarray]
    pre_clip_norm: float
    clipped: bool


def global_l2_norm(update: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all tensors of ``update`` taken together (accumulated in float64)."""
    total = 0.0
    for value in update.values():
        flat = np.asarray(value, dtype=np.float64).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_update(update: Mapping[str, np.ndarray], *, clip_norm: float
                ) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``update`` by min(1, C / ‖update‖₂) over all tensors together.

    Returns
    -------
    tuple
        ``(clipped float32 tensors, pre-clip norm)``. An update already within C is returned
        unchanged (as float32 copies).

    Raises
    ------
    ValueError
        ``clip_norm`` not positive and finite, an empty update, or a non-finite value.
    """
    if not (isinstance(clip_norm, int | float) and math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be positive and finite, got {clip_norm!r}")
    if not update:
        raise ValueError("the update has no tensors")
    for name, value in update.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"update tensor {name!r} has non-finite values; refusing to clip")
    norm = global_l2_norm(update)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    clipped = {}
    for name, value in update.items():
        array = np.asarray(value, dtype=np.float64)
        clipped[name] = (array * scale if scale < 1.0 else array).astype(np.float32)
    margin = 2.0**-20
    while scale < 1.0 and global_l2_norm(clipped) > clip_norm:
        # float32 rounding landed a hair above C: shrink a little more (a few ulps at most)
        again = global_l2_norm(clipped)
        clipped = {k: (v.astype(np.float64) * (clip_norm / again * (1 - margin)))
                   .astype(np.float32) for k, v in clipped.items()}
        margin *= 2
    return clipped, norm


def clip_and_noise(update: Mapping[str, np.ndarray], *, clip_norm: float,
                   noise_multiplier: float, rng: RandomSource | None = None) -> NoisedUpdate:
    """Clip ``update`` to L2 norm C (all tensors together), then add N(0, σ²C²) per coordinate.

    Parameters
    ----------
    update
        Tensor name → array (the model update, new − start). Not modified.
    clip_norm
        C > 0.
    noise_multiplier
        σ ≥ 0; the noise standard deviation is σ·C. σ = 0 only clips (and buys no privacy).
    rng
        The noise source; :class:`SecureRandom` by default. Never numpy's default generator.

    Returns
    -------
    NoisedUpdate
        float32 tensors with the input's names and shapes, the pre-clip norm, and whether
        clipping scaled the update down.

    Raises
    ------
    ValueError
        Bad ``clip_norm``/``noise_multiplier``, an empty update or non-finite values.
    """
    if not (isinstance(noise_multiplier, int | float) and math.isfinite(noise_multiplier)
            and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    clipped, norm = clip_update(update, clip_norm=clip_norm)
    std = float(noise_multiplier) * float(clip_norm)
    if std > 0:
        source = rng if rng is not None else SecureRandom()
        total = sum(v.size for v in clipped.values())
        noise = source.normal((total,), std)
        offset = 0
        for name, value in clipped.items():
            part = noise[offset:offset + value.size].reshape(value.shape)
            offset += value.size
            clipped[name] = (value.astype(np.float64) + part).astype(np.float32)
    return NoisedUpdate(clipped, norm, norm > clip_norm)
