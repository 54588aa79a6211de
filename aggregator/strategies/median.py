"""Coordinate-wise median (Yin et al. 2018, ICML, arXiv 1803.01498)."""

from __future__ import annotations

from typing import ClassVar

from fedbeat.models.params import ParamLayout

from .aggregate import coordinate_median
from .base import AggregateResult
from .buffered import KeptUpdate, RobustStrategy, per_tensor


class Median(RobustStrategy):
    """Per coordinate, the median of the updates that carried the tensor (unweighted).

    Robust while fewer than half of a tensor's contributors are Byzantine; with one or two
    contributors it is just their mean, so small rounds get no protection from it.
    """

    name: ClassVar[str] = "median"

    def combine(self, updates: list[KeptUpdate], layout: ParamLayout) -> AggregateResult:
        shapes = dict(layout.entries)
        delta, contributors = {}, {}
        for name, (stack, carriers) in per_tensor(updates, layout).items():
            delta[name] = coordinate_median(stack).reshape(shapes[name])
            contributors[name] = len(carriers)
        return AggregateResult(delta=delta, contributors=contributors,
                               weight=float(sum(u.num_samples for u in updates)))
