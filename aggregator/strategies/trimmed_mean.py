"""Coordinate-wise β-trimmed mean (Yin et al. 2018, ICML, arXiv 1803.01498)."""

from __future__ import annotations

import math
from typing import ClassVar

from fedbeat.models.params import ParamLayout

from .aggregate import trimmed_count, trimmed_mean
from .base import AggregateResult
from .buffered import KeptUpdate, RobustStrategy, per_tensor


class TrimmedMean(RobustStrategy):
    """Per coordinate, drop the ``floor(β·n)`` largest and smallest values and average the rest.

    Unweighted: a sample count is a claim the device makes, and weighting by it would let one
    device with a large claim dominate. Partial updates are trimmed per tensor over the updates
    that carried it.

    Parameters
    ----------
    trim_fraction
        ``β`` in ``[0, 0.5)``; tolerates fewer than ``β·n`` Byzantine values per coordinate.

    Raises
    ------
    ValueError
        From ``result()``, if a tensor has so few contributors that ``floor(β·n) = 0`` (nothing
        would be trimmed, silently giving up robustness).
    """

    name: ClassVar[str] = "trimmed-mean"

    def __init__(self, *, trim_fraction: float = 0.1) -> None:
        if isinstance(trim_fraction, bool) or not isinstance(trim_fraction, (int, float)) \
                or not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trimmed-mean trim_fraction must be in [0, 0.5), "
                             f"got {trim_fraction!r}")
        self.trim_fraction = float(trim_fraction)

    def min_updates(self) -> int:
        if self.trim_fraction == 0:
            return 1
        m = math.ceil(1.0 / self.trim_fraction)  # then fix floating-point edge cases
        while trimmed_count(m, self.trim_fraction) < 1:
            m += 1
        while m > 1 and trimmed_count(m - 1, self.trim_fraction) >= 1:
            m -= 1
        return m

    def combine(self, updates: list[KeptUpdate], layout: ParamLayout) -> AggregateResult:
        shapes = dict(layout.entries)
        delta, contributors = {}, {}
        for name, (stack, carriers) in per_tensor(updates, layout).items():
            n = len(carriers)
            if n < self.min_updates():
                raise ValueError(f"trimmed mean with trim_fraction={self.trim_fraction} trims "
                                 f"nothing from {n} updates of {name}; it needs at least "
                                 f"{self.min_updates()}")
            delta[name] = trimmed_mean(stack, self.trim_fraction).reshape(shapes[name])
            contributors[name] = n
        return AggregateResult(delta=delta, contributors=contributors,
                               weight=float(sum(u.num_samples for u in updates)))
