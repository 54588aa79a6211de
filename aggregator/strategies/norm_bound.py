"""Norm bounding as a wrapper around any strategy (Sun et al. 2019, "Can You Really Backdoor
Federated Learning?", arXiv 1911.07963)."""

from __future__ import annotations

import math
from typing import ClassVar

from fedbeat.models.params import ParamLayout

from .aggregate import clip_scale
from .base import (
    AggregateResult,
    Aggregation,
    CheckedUpdate,
    ClientUpdate,
    Strategy,
    check_update,
)


class _Clipping(Aggregation):
    """Scales each update to L2 norm at most ``max_norm``, then passes it to the inner rule."""

    def __init__(self, inner: Aggregation, layout: ParamLayout, max_norm: float) -> None:
        self._inner = inner
        self._layout = layout
        self._max_norm = max_norm
        self.clipped = 0
        """How many updates were scaled down (for logs)."""

    def add(self, update: ClientUpdate) -> None:
        self.fold(check_update(update, self._layout))

    def admit(self, update: CheckedUpdate) -> None:
        self._inner.admit(self._clip(update))

    def fold(self, update: CheckedUpdate) -> None:
        clipped = self._clip(update)
        self._inner.fold(clipped)
        self.clipped += clipped is not update

    def _clip(self, update: CheckedUpdate) -> CheckedUpdate:
        scale = clip_scale(update.norm, self._max_norm)
        if scale >= 1.0:
            return update
        tensors = {name: (value.astype("float64") * scale).astype("float32")
                   for name, value in update.tensors.items()}
        u = update.update
        return check_update(ClientUpdate(u.device_id, u.num_samples, tensors, u.base_version),
                            self._layout)

    def __len__(self) -> int:
        return len(self._inner)

    def result(self) -> AggregateResult:
        return self._inner.result()


class NormBounded(Strategy):
    """Clip each update's L2 norm, over all the tensors it carries, to ``max_norm`` before the
    inner strategy sees it: ``Δ ← Δ · min(1, C/‖Δ‖)``.

    Bounds how far any one device (e.g. a ×100-scaled backdoor) can move the aggregate: with
    FedAvg, at most ``C · n_i / Σ n``. A wrapper, so it composes with any strategy. It needs each
    update in the clear, so secure aggregation cannot serve it (clip on the device instead).
    Clipping is per update and deterministic, so the inner rule's order independence holds.
    """

    name: ClassVar[str] = "norm-bounded"
    needs_individual_updates: ClassVar[bool] = True

    def __init__(self, inner: Strategy, max_norm: float) -> None:
        if not isinstance(inner, Strategy):
            raise ValueError(f"NormBounded wraps a Strategy, got {type(inner).__name__}")
        if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) \
                or not math.isfinite(max_norm) or max_norm <= 0:
            raise ValueError(f"max_norm must be a positive finite number, got {max_norm!r}")
        self.inner = inner
        self.max_norm = float(max_norm)

    def begin(self, layout: ParamLayout, current_version: int) -> Aggregation:
        return _Clipping(self.inner.begin(layout, current_version), layout, self.max_norm)
