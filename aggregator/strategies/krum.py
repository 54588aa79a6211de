"""Multi-Krum (Blanchard et al. 2017, NeurIPS, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent")."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedbeat.models.params import ParamLayout

from .aggregate import krum_scores, multi_krum_select, weighted_mean
from .base import AggregateResult
from .buffered import KeptUpdate, RobustStrategy


class MultiKrum(RobustStrategy):
    """Keep the ``m`` updates with the lowest Krum scores and average them by ``num_samples``.

    The score of an update is the sum of squared distances (over all its tensors) to its
    ``n − f − 2`` nearest neighbours; Krum needs ``n > 2f + 2``. Scores are computed on the
    updates sorted by device id and ties go to the smaller device id, so the choice does not
    depend on arrival order.

    Partial updates: Krum compares whole updates, and filling missing tensors with zeros would
    make a head-only update look close to everything (or far from it), so mixing is refused —
    every update of a round must carry the same tensors as the first one accepted. Run
    partial-update devices in their own rounds, or use the median or trimmed mean, which work
    per tensor.

    Parameters
    ----------
    num_byzantine
        ``f``, how many Byzantine updates to tolerate (required: there is no safe default).
    num_selected
        ``m``; default ``n − f``. ``m = 1`` is plain Krum.
    """

    name: ClassVar[str] = "krum"

    def __init__(self, *, num_byzantine: int, num_selected: int | None = None) -> None:
        if isinstance(num_byzantine, bool) or not isinstance(num_byzantine, int) \
                or num_byzantine < 0:
            raise ValueError(f"krum num_byzantine must be a non-negative integer, "
                             f"got {num_byzantine!r}")
        if num_selected is not None and (isinstance(num_selected, bool)
                                         or not isinstance(num_selected, int)
                                         or num_selected < 1):
            raise ValueError(f"krum num_selected must be a positive integer, "
                             f"got {num_selected!r}")
        self.num_byzantine = num_byzantine
        self.num_selected = num_selected

    def min_updates(self) -> int:
        return max(2 * self.num_byzantine + 3, self.num_selected or 1)

    def check_compatible(self, update: KeptUpdate, kept: list[KeptUpdate]) -> None:
        if kept and set(update.tensors) != set(kept[0].tensors):
            raise ValueError(f"device {update.device_id} sent tensors {sorted(update.tensors)}, "
                             f"but this Multi-Krum round aggregates {sorted(kept[0].tensors)}; "
                             "Krum cannot mix partial and full updates")

    def combine(self, updates: list[KeptUpdate], layout: ParamLayout) -> AggregateResult:
        n, f = len(updates), self.num_byzantine
        if n <= 2 * f + 2:
            raise ValueError(f"Multi-Krum with num_byzantine={f} needs at least {2 * f + 3} "
                             f"updates, got {n}")
        m = n - f if self.num_selected is None else self.num_selected
        if m > n:
            raise ValueError(f"Multi-Krum cannot select num_selected={m} of {n} updates")
        names = [name for name in layout.names if name in updates[0].tensors]
        flat = np.stack([np.concatenate([u.tensors[name].ravel() for name in names])
                         for u in updates])
        chosen = multi_krum_select(krum_scores(flat, f), m)
        keep = [updates[i] for i in chosen]
        weights = np.array([u.num_samples for u in keep], dtype=np.float64)
        shapes = dict(layout.entries)
        delta = {name: weighted_mean(np.stack([u.tensors[name] for u in keep]), weights)
                 .reshape(shapes[name]) for name in names}
        chosen_ids = {u.device_id for u in keep}
        return AggregateResult(delta=delta, contributors={name: m for name in names},
                               weight=float(weights.sum()),
                               dropped=tuple(u.device_id for u in updates
                                             if u.device_id not in chosen_ids))
