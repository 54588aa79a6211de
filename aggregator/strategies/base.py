"""What every aggregation strategy shares: the update and result records and three small ABCs.

A :class:`Strategy` starts one :class:`Aggregation` per round (or per FedBuff buffer) with
:meth:`Strategy.begin`; the aggregator folds accepted updates into it with
:meth:`Aggregation.add` and, when the round closes, takes :meth:`Aggregation.result`. A
:class:`ServerOptimizer` turns that aggregated delta into the next global parameters.

Every failure raises :class:`ValueError` with a message a user can act on; the aggregator maps it
to a rejection reason. ``result()`` never depends on the order of ``add()`` calls, because crash
recovery replays a round's updates in whatever order it finds them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedbeat.models.params import ParamLayout

from .aggregate import concat_float64, norm_and_range


@dataclass(frozen=True)
class ClientUpdate:
    """One device's contribution to a round.

    Attributes
    ----------
    device_id
        Who sent it; robust rules sort by it so their result does not depend on arrival order.
    num_samples
        Examples the device trained on (> 0), the FedAvg weight.
    tensors
        Float32 *deltas* (trained − global) by parameter name. The names are a subset of the
        layout's and the shapes are the layout's; a strict subset is a partial update (e.g. a
        wearable that trains only the classifier head).
    base_version
        The global model version the device trained from (FedBuff's staleness).
    """

    device_id: str
    num_samples: int
    tensors: Mapping[str, np.ndarray]
    base_version: int


@dataclass(frozen=True)
class AggregateResult:
    """One round's aggregated delta.

    Attributes
    ----------
    delta
        Aggregated float32 delta for every tensor that at least one update carried.
    contributors
        How many updates contributed to each tensor of ``delta``.
    weight
        Total weight (e.g. the sum of ``num_samples``), for logs.
    dropped
        Device ids a robust rule excluded (e.g. not chosen by Multi-Krum), sorted.
    """

    delta: dict[str, np.ndarray]
    contributors: dict[str, int]
    weight: float
    dropped: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class CheckedUpdate:
    """An update :func:`check_update` accepted, with what one pass over its values found.

    Attributes
    ----------
    update
        The update as given.
    tensors
        Its tensors as C-contiguous float32, in layout order.
    flat
        Their values concatenated in that order, as float64 (the fixed-point fold's input).
    norm
        L2 norm over all values (float64): the ingest's norm bound, and norm clipping.
    peak
        Largest magnitude of any value (the exact sum needs ``peak < 64``).
    """

    update: ClientUpdate
    tensors: dict[str, np.ndarray]
    flat: np.ndarray
    norm: float
    peak: float


def check_update(update: ClientUpdate, layout: ParamLayout) -> CheckedUpdate:
    """Validate an update against the layout, in one pass over its values.

    Raises
    ------
    ValueError
        Bad device id or sample count, no tensors, a name not in the layout, a wrong shape,
        a non-floating dtype, or NaN/infinity; the message names the device and tensor.
    """
    if not isinstance(update, ClientUpdate):
        raise ValueError(f"expected a ClientUpdate, got {type(update).__name__}")
    device = update.device_id
    if not isinstance(device, str) or not device:
        raise ValueError("update has an empty or non-string device id")
    n = update.num_samples
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"device {device}: num_samples must be a positive integer, got {n!r}")
    version = update.base_version
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"device {device}: base_version must be a non-negative integer, "
                         f"got {version!r}")
    if not update.tensors:
        raise ValueError(f"device {device}: update carries no tensors")
    shapes = dict(layout.entries)
    unknown = sorted(set(update.tensors) - set(shapes))
    if unknown:
        raise ValueError(f"device {device}: tensors {unknown} are not in the model "
                         f"(known: {list(layout.names)})")
    out: dict[str, np.ndarray] = {}
    for name, shape in layout.entries:  # layout order, whatever order the mapping has
        if name not in update.tensors:
            continue
        value = np.asarray(update.tensors[name])
        if value.shape != shape:
            raise ValueError(f"device {device}: tensor {name} has shape {value.shape}, "
                             f"the model needs {shape}")
        if value.dtype.kind != "f":
            raise ValueError(f"device {device}: tensor {name} has dtype {value.dtype}, "
                             "expected float32")
        out[name] = np.ascontiguousarray(value, dtype=np.float32)
    # One float64 copy of all values, then three reductions over it: the sum of squares, min
    # and max (NaN propagates into all three), instead of one reduction per tensor and check.
    flat = concat_float64(list(out.values()))
    norm, lowest, highest = norm_and_range(flat)
    if not math.isfinite(norm):
        for name, value in out.items():   # name the first offending tensor
            if not np.all(np.isfinite(value)):
                raise ValueError(f"device {device}: tensor {name} contains NaN or infinity")
    return CheckedUpdate(update, out, flat, norm, max(-lowest, highest))


class Aggregation(ABC):
    """One round's (or one FedBuff buffer's) accumulator.

    ``add(update)`` is ``fold(check_update(update, layout))``. A caller that must know an
    update will fold before it commits to it (the aggregator's ingest: commit, then fold) calls
    :func:`check_update` and :meth:`admit` first; :meth:`fold` of an admitted update does not
    refuse it as long as nothing else was folded in between.
    """

    @abstractmethod
    def add(self, update: ClientUpdate) -> None:
        """Fold one accepted update in; raises ValueError (and changes nothing) if refused."""

    @abstractmethod
    def admit(self, update: CheckedUpdate) -> None:
        """Raise ValueError if :meth:`fold` would refuse ``update`` now; changes nothing."""

    @abstractmethod
    def fold(self, update: CheckedUpdate) -> None:
        """:meth:`add` for an update that already passed :func:`check_update`."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of updates folded in so far."""

    @abstractmethod
    def result(self) -> AggregateResult:
        """The aggregate; after it, ``add`` is refused. Independent of the order of ``add``."""


class CheckedAggregation(Aggregation):
    """Template for aggregations: validation and bookkeeping here, the math in hooks.

    ``admit`` refuses an update after ``result``, a second update from the same device and a
    model version from the future, then asks :meth:`_admit`; ``fold`` admits, then calls
    :meth:`_fold`. ``result`` refuses an empty aggregation and caches :meth:`_finish`.
    """

    def __init__(self, layout: ParamLayout, current_version: int) -> None:
        if isinstance(current_version, bool) or not isinstance(current_version, int) \
                or current_version < 0:
            raise ValueError(f"current model version must be a non-negative integer, "
                             f"got {current_version!r}")
        self.layout = layout
        self.current_version = current_version
        self._devices: set[str] = set()
        self._result: AggregateResult | None = None

    def add(self, update: ClientUpdate) -> None:
        self.fold(check_update(update, self.layout))

    def admit(self, update: CheckedUpdate) -> None:
        if self._result is not None:
            raise ValueError("this aggregation is finished; start the next one with begin()")
        device = update.update.device_id
        if device in self._devices:
            raise ValueError(f"device {device} already contributed to this aggregation; one "
                             "update per device")
        if update.update.base_version > self.current_version:
            raise ValueError(f"device {device} trained from model version "
                             f"{update.update.base_version}, newer than the current "
                             f"{self.current_version}")
        self._admit(update)

    def fold(self, update: CheckedUpdate) -> None:
        self.admit(update)
        self._fold(update)
        self._devices.add(update.update.device_id)

    def __len__(self) -> int:
        return len(self._devices)

    def result(self) -> AggregateResult:
        if self._result is None:
            if not self._devices:
                raise ValueError("no updates to aggregate")
            self._result = self._finish()
        return self._result

    def _admit(self, update: CheckedUpdate) -> None:
        """Raise ValueError for what this rule refuses (default: nothing more)."""

    @abstractmethod
    def _fold(self, update: CheckedUpdate) -> None:
        """Take an admitted update; must not refuse it (refusals belong in :meth:`_admit`)."""

    @abstractmethod
    def _finish(self) -> AggregateResult:
        """Compute the result from what was folded in (at least one update)."""


class Strategy(ABC):
    """An aggregation rule: starts one :class:`Aggregation` per round.

    Attributes
    ----------
    name
        The registry name (``create_strategy(name)``).
    needs_individual_updates
        True when the rule must see each update in the clear (robust rules, clipping): secure
        aggregation, which reveals only the sum, cannot serve it.
    """

    name: ClassVar[str]
    needs_individual_updates: ClassVar[bool]

    @abstractmethod
    def begin(self, layout: ParamLayout, current_version: int) -> Aggregation:
        """Start aggregating updates onto global model ``current_version``."""


class ServerOptimizer(ABC):
    """Turns an aggregated delta into the next global parameters (Reddi et al. 2021, ServerOpt).

    ``step`` takes and returns a flat float32 vector; tensors nobody updated come back
    bit-identical. The state (e.g. Adam moments) is persisted by the aggregator through
    ``state_dict``/``load_state_dict`` for crash recovery.
    """

    name: ClassVar[str]

    @abstractmethod
    def step(self, params: np.ndarray, result: AggregateResult,
             layout: ParamLayout) -> np.ndarray:
        """Next global parameters (a new array; ``params`` is not modified)."""

    @abstractmethod
    def state_dict(self) -> dict[str, np.ndarray]:
        """The optimizer's state as arrays (copies)."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore a state from :meth:`state_dict`; raises ValueError for a foreign state."""
