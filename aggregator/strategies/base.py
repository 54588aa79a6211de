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


def check_update(update: ClientUpdate, layout: ParamLayout) -> dict[str, np.ndarray]:
    """Validate an update against the layout; return its tensors as C-contiguous float32.

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
    total = 0.0
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
        value = np.ascontiguousarray(value, dtype=np.float32)
        # one float64 sum per tensor is finite exactly when every float32 value is (it cannot
        # overflow): a single reduction instead of isfinite + all
        total += float(np.sum(value, dtype=np.float64))
        if not math.isfinite(total):
            raise ValueError(f"device {device}: tensor {name} contains NaN or infinity")
        out[name] = value
    return out


class Aggregation(ABC):
    """One round's (or one FedBuff buffer's) accumulator."""

    @abstractmethod
    def add(self, update: ClientUpdate) -> None:
        """Fold one accepted update in; raises ValueError (and changes nothing) if refused."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of updates folded in so far."""

    @abstractmethod
    def result(self) -> AggregateResult:
        """The aggregate; after it, ``add`` is refused. Independent of the order of ``add``."""


class CheckedAggregation(Aggregation):
    """Template for aggregations: validation and bookkeeping here, the math in two hooks.

    ``add`` validates the update, refuses a second update from the same device, a model version
    from the future, and additions after ``result``; then calls :meth:`_fold`. ``result`` refuses
    an empty aggregation and caches :meth:`_finish`.
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
        if self._result is not None:
            raise ValueError("this aggregation is finished; start the next one with begin()")
        tensors = check_update(update, self.layout)
        if update.device_id in self._devices:
            raise ValueError(f"device {update.device_id} already contributed to this "
                             "aggregation; one update per device")
        if update.base_version > self.current_version:
            raise ValueError(f"device {update.device_id} trained from model version "
                             f"{update.base_version}, newer than the current "
                             f"{self.current_version}")
        self._fold(update, tensors)
        self._devices.add(update.device_id)

    def __len__(self) -> int:
        return len(self._devices)

    def result(self) -> AggregateResult:
        if self._result is None:
            if not self._devices:
                raise ValueError("no updates to aggregate")
            self._result = self._finish()
        return self._result

    @abstractmethod
    def _fold(self, update: ClientUpdate, tensors: dict[str, np.ndarray]) -> None:
        """Take a validated update (tensors float32, in layout order); raise to refuse it."""

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
