"""Robust rules keep every update of the round and combine them at the end.

That is their nature — a median or Multi-Krum needs all values at once — so their memory is
O(n · model) (float32 copies of each accepted update). Before any order-sensitive computation
the updates are sorted by device id (unique per aggregation), so ``result()`` does not depend on
the order of ``add()``.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedbeat.models.params import ParamLayout

from .base import AggregateResult, Aggregation, CheckedAggregation, CheckedUpdate, Strategy


@dataclass(frozen=True)
class KeptUpdate:
    """A validated update: float32 tensors in layout order."""

    device_id: str
    num_samples: int
    tensors: dict[str, np.ndarray]


class KeepAll(CheckedAggregation):
    """Keeps validated copies of the updates; hands them to the strategy sorted by device id."""

    def __init__(self, strategy: RobustStrategy, layout: ParamLayout,
                 current_version: int) -> None:
        super().__init__(layout, current_version)
        self._strategy = strategy
        self._kept: list[KeptUpdate] = []

    def _admit(self, update: CheckedUpdate) -> None:
        if update.update.base_version != self.current_version:
            raise ValueError(f"device {update.update.device_id} trained from model version "
                             f"{update.update.base_version}; this round aggregates onto version "
                             f"{self.current_version}")
        self._strategy.check_compatible(self._kept_form(update, copy=False), self._kept)

    def _fold(self, update: CheckedUpdate) -> None:
        self._kept.append(self._kept_form(update, copy=True))

    @staticmethod
    def _kept_form(update: CheckedUpdate, *, copy: bool) -> KeptUpdate:
        tensors = update.tensors
        return KeptUpdate(update.update.device_id, update.update.num_samples,
                          {name: value.copy() for name, value in tensors.items()} if copy
                          else tensors)

    def _finish(self) -> AggregateResult:
        ordered = sorted(self._kept, key=lambda u: u.device_id)
        return self._strategy.combine(ordered, self.layout)


class RobustStrategy(Strategy):
    """Base of the rules that need every update: variants override :meth:`combine` only."""

    needs_individual_updates: ClassVar[bool] = True

    def begin(self, layout: ParamLayout, current_version: int) -> Aggregation:
        return KeepAll(self, layout, current_version)

    def min_updates(self) -> int:
        """Fewest updates (per tensor) the rule accepts; set round minimums at least this high."""
        return 1

    def check_compatible(self, update: KeptUpdate, kept: list[KeptUpdate]) -> None:
        """Refuse an update that cannot be combined with those already kept (default: any)."""

    @abstractmethod
    def combine(self, updates: list[KeptUpdate], layout: ParamLayout) -> AggregateResult:
        """Aggregate the round's updates, given sorted by device id (at least one)."""


def per_tensor(updates: list[KeptUpdate], layout: ParamLayout,
               ) -> dict[str, tuple[np.ndarray, list[KeptUpdate]]]:
    """For each tensor anyone carried: the ``(n_t, size)`` stack and its contributors."""
    out: dict[str, tuple[np.ndarray, list[KeptUpdate]]] = {}
    for name in layout.names:
        carriers = [u for u in updates if name in u.tensors]
        if carriers:
            out[name] = (np.stack([u.tensors[name].ravel() for u in carriers]), carriers)
    return out
