"""FedAvg (McMahan et al. 2017, arXiv 1602.05629): the sample-weighted mean of the deltas.

Streaming with O(model) memory and an exact, order-independent fixed-point sum (see
:mod:`.aggregate`): each update is folded into two int64 arrays per tensor and then forgotten.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedbeat.models.params import ParamLayout

from .aggregate import (
    MAX_ABS_DELTA,
    PARTIAL_SUM_LIMIT,
    carry_exact,
    check_fixed_point_range,
    exact_mean,
    fixed_point,
    fixed_point_bound,
    weight_digits,
)
from .base import (
    AggregateResult,
    Aggregation,
    CheckedAggregation,
    CheckedUpdate,
    ClientUpdate,
    Strategy,
)

MAX_NUM_SAMPLES = 1 << 24
"""``num_samples`` must be below 2^24 so one weight digit keeps the exact sum in int64."""


class _DigitSum:
    """The exact sum of ``q · digit`` for one weight digit: the split ``(lo, hi)`` of
    :func:`.aggregate.accumulate_exact`, plus a plain int64 partial sum that each update is
    added to (one multiply and one add) and that is carried into ``(lo, hi)`` before its bound
    could overflow."""

    def __init__(self, size: int) -> None:
        self.lo = np.zeros(size, np.int64)
        self.hi = np.zeros(size, np.int64)
        self.partial = np.zeros(size, np.int64)
        self.bound = 0
        """Upper bound on ``|partial|``, kept below ``PARTIAL_SUM_LIMIT``."""

    def make_room(self, step: int) -> None:
        if self.bound + step >= PARTIAL_SUM_LIMIT:
            self.carry()
        self.bound += step

    def carry(self) -> None:
        carry_exact(self.lo, self.hi, self.partial)
        self.bound = 0


class StreamingMean(CheckedAggregation):
    """Exact weighted mean per tensor, folding each update into int64 sums and keeping nothing
    else of it (only its device id, to refuse duplicates).

    Memory is O(model): three flat int64 arrays per weight digit (FedAvg: one digit, 24 bytes
    per parameter). Partial updates add only to the tensors they carry; each tensor has its own
    weight sum, so its mean is over its own contributors.
    """

    def __init__(self, strategy: FedAvg, layout: ParamLayout, current_version: int) -> None:
        super().__init__(layout, current_version)
        self._strategy = strategy
        self._slices = {name: s for name, _, s in layout.slices()}
        self._size = layout.size
        self._sums: list[_DigitSum] = []
        self._denominators: dict[str, int] = {}
        self._contributors: dict[str, int] = {}
        self._numerator_total = 0

    def _admit(self, update: CheckedUpdate) -> None:
        weight_digits(self._strategy.weights(update.update, self.current_version)[0])
        if not update.peak < MAX_ABS_DELTA:
            for name, value in update.tensors.items():   # name the first offending tensor
                check_fixed_point_range(value, name=name)

    def _fold(self, update: CheckedUpdate) -> None:
        numerator, denominator = self._strategy.weights(update.update, self.current_version)
        digits = weight_digits(numerator)
        q = fixed_point(update.flat)         # one vector op for all tensors, in layout order
        bound = fixed_point_bound(update.peak)
        if len(update.tensors) == len(self._slices):
            parts = [(slice(0, self._size), slice(0, self._size))]
        else:                                # a partial update: each tensor to its own slice
            parts, offset = [], 0
            for name, value in update.tensors.items():
                parts.append((self._slices[name], slice(offset, offset + value.size)))
                offset += value.size
        while len(self._sums) < len(digits):
            self._sums.append(_DigitSum(self._size))
        for k, (sums, digit) in enumerate(zip(self._sums, digits, strict=False)):
            sums.make_room(bound * digit)
            # q itself becomes the last digit's product: no temporary for FedAvg's one digit
            product = np.multiply(q, digit, out=q) if k == len(digits) - 1 else q * digit
            for into, out_of in parts:
                sums.partial[into] += product[out_of]
        for name in update.tensors:
            self._denominators[name] = self._denominators.get(name, 0) + denominator
            self._contributors[name] = self._contributors.get(name, 0) + 1
        self._numerator_total += numerator

    def _finish(self) -> AggregateResult:
        for sums in self._sums:
            sums.carry()
        shapes = dict(self.layout.entries)
        delta = {}
        for name in self.layout.names:
            if name in self._denominators:
                s = self._slices[name]
                totals = [(d.lo[s], d.hi[s]) for d in self._sums]
                delta[name] = exact_mean(totals, self._denominators[name]).reshape(shapes[name])
        contributors = {name: self._contributors[name] for name in delta}
        return AggregateResult(delta=delta, contributors=contributors,
                               weight=self._numerator_total / self._strategy.weight_unit)


class FedAvg(Strategy):
    """Sample-weighted federated averaging of deltas, streaming and exact.

    The delta of each tensor is ``Σ n_i Δ_i / Σ n_i`` over the updates that carried it, computed
    with a 2^-30 fixed-point resolution and independent of arrival order. Every update must be
    trained from the current model version and have ``|Δ| < 64`` everywhere and
    ``num_samples < 2^24``.

    Variants change :meth:`weights` only (see :class:`~.fedbuff.FedBuff`).
    """

    name: ClassVar[str] = "fedavg"
    needs_individual_updates: ClassVar[bool] = False
    weight_unit: ClassVar[int] = 1
    """Integer weights are ``weight_unit`` times the real weight reported in the result."""

    def begin(self, layout: ParamLayout, current_version: int) -> Aggregation:
        return StreamingMean(self, layout, current_version)

    def weights(self, update: ClientUpdate, current_version: int) -> tuple[int, int]:
        """Integer ``(numerator, denominator)`` weights of one update.

        The tensor mean is ``Σ numerator_i Δ_i / Σ denominator_i``; FedAvg uses
        ``num_samples`` for both.

        Raises
        ------
        ValueError
            If the update was trained from another model version or has too many samples.
        """
        if update.base_version != current_version:
            raise ValueError(f"device {update.device_id} trained from model version "
                             f"{update.base_version}; this round aggregates onto version "
                             f"{current_version}")
        return self._sample_weight(update), self._sample_weight(update)

    @staticmethod
    def _sample_weight(update: ClientUpdate) -> int:
        if update.num_samples >= MAX_NUM_SAMPLES:
            raise ValueError(f"device {update.device_id}: num_samples {update.num_samples} "
                             f"must be below 2^24 = {MAX_NUM_SAMPLES}")
        return update.num_samples
