"""Server optimizers: how the aggregated delta becomes the next global model.

Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR, arXiv 2003.00295), Algorithm 2:
with the aggregated delta ``Δ`` (the negative pseudo-gradient),

    m ← β1 m + (1 − β1) Δ
    v ← v + Δ²                                  (FedAdagrad)
    v ← β2 v + (1 − β2) Δ²                       (FedAdam)
    v ← v − (1 − β2) Δ² sign(v − Δ²)             (FedYogi)
    x ← x + η m / (√v + τ)

with ``m`` starting at 0 and ``v`` at τ² (the paper asks for ``v_{-1} ≥ τ²``); no bias
correction, as in the paper. β1 = 0.9 and β2 = 0.99 are the paper's fixed choices; η and τ it
tunes per task — η = 1e-2, τ = 1e-3 are starting points, not universal values.

Only coordinates of tensors that some update carried move (params, m and v alike): a
partial-update round leaves every other tensor, and its optimizer state, bit-identical.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from fedbeat.models.params import ParamLayout

from .base import AggregateResult, ServerOptimizer


def _check_params(params: np.ndarray, layout: ParamLayout) -> np.ndarray:
    params = np.asarray(params)
    if params.ndim != 1 or params.size != layout.size:
        raise ValueError(f"global parameters have shape {params.shape}, the layout needs "
                         f"({layout.size},)")
    if params.dtype != np.float32:
        raise ValueError(f"global parameters must be float32, got {params.dtype}")
    return params


def _updated_slices(result: AggregateResult,
                    layout: ParamLayout) -> list[tuple[slice, np.ndarray]]:
    """(slice of the flat vector, float64 delta) for each tensor the result carries."""
    shapes = {name: (shape, s) for name, shape, s in layout.slices()}
    unknown = sorted(set(result.delta) - set(shapes))
    if unknown:
        raise ValueError(f"aggregate has tensors {unknown} that are not in the model")
    out = []
    for name in layout.names:
        if name not in result.delta:
            continue
        shape, s = shapes[name]
        value = np.asarray(result.delta[name])
        if value.shape != shape:
            raise ValueError(f"aggregate tensor {name} has shape {value.shape}, "
                             f"the model needs {shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"aggregate tensor {name} contains NaN or infinity")
        out.append((s, value.astype(np.float64).ravel()))
    return out


def _check_positive(owner: str, **values: float) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{owner} {key} must be a positive finite number, got {value!r}")


class ServerSgd(ServerOptimizer):
    """``x ← x + lr · Δ``; ``lr = 1`` is plain FedAvg (McMahan et al. 2017). No state."""

    name: ClassVar[str] = "sgd"

    def __init__(self, *, lr: float = 1.0) -> None:
        _check_positive("sgd", lr=lr)
        self.lr = float(lr)

    def step(self, params: np.ndarray, result: AggregateResult,
             layout: ParamLayout) -> np.ndarray:
        params = _check_params(params, layout)
        out = params.copy()
        for s, delta in _updated_slices(result, layout):
            out[s] = (params[s].astype(np.float64) + self.lr * delta).astype(np.float32)
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"optimizer": np.array(self.name)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        _check_name(state, self.name, allowed={"optimizer"})


class ServerMomentum(ServerOptimizer):
    """FedAvgM (Hsu, Qi and Brown 2019, arXiv 1909.06335): ``m ← β m + Δ``,
    ``x ← x + lr · m``.

    Momentum on the server carries the direction of earlier rounds into each step, which damps
    the round-to-round swings of non-IID fleets (a round where the S-heavy patients happen to
    pull hard no longer undoes the last). With β = 0 it is :class:`ServerSgd`. Hsu et al. pair
    β = 0.9 with ``lr`` ≈ 1 − β … 1; the effective step is ``lr / (1 − β)`` once ``m`` settles.
    """

    name: ClassVar[str] = "fedavgm"

    def __init__(self, *, lr: float = 1.0, momentum: float = 0.9) -> None:
        _check_positive("fedavgm", lr=lr)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
                or not 0.0 <= momentum < 1.0:
            raise ValueError(f"fedavgm momentum must be in [0, 1), got {momentum!r}")
        self.lr, self.momentum = float(lr), float(momentum)
        self._m: np.ndarray | None = None

    def step(self, params: np.ndarray, result: AggregateResult,
             layout: ParamLayout) -> np.ndarray:
        params = _check_params(params, layout)
        if self._m is not None and self._m.size != layout.size:
            raise ValueError(f"optimizer state has {self._m.size} values, the model "
                             f"{layout.size}: state from another model")
        m = np.zeros(layout.size) if self._m is None else self._m.copy()
        out = params.copy()
        for s, delta in _updated_slices(result, layout):
            m[s] = self.momentum * m[s] + delta
            out[s] = (params[s].astype(np.float64) + self.lr * m[s]).astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError("fedavgm step produced non-finite parameters")
        self._m = m
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"optimizer": np.array(self.name)}
        if self._m is not None:
            state["m"] = self._m.copy()
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        _check_name(state, self.name, allowed={"optimizer", "m"})
        m = None
        if "m" in state:
            m = np.array(state["m"], dtype=np.float64)
            if m.ndim != 1 or not np.all(np.isfinite(m)):
                raise ValueError("fedavgm optimizer state: m must be a finite vector")
        self._m = m


def _check_name(state: Mapping[str, np.ndarray], name: str, *, allowed: set[str]) -> None:
    if "optimizer" not in state or str(np.asarray(state["optimizer"])) != name:
        found = str(np.asarray(state["optimizer"])) if "optimizer" in state else "nothing"
        raise ValueError(f"optimizer state is for {found!r}, not {name!r}")
    extra = sorted(set(state) - allowed)
    if extra:
        raise ValueError(f"{name} optimizer state has unexpected entries {extra}")


class AdaptiveOptimizer(ServerOptimizer):
    """FedAdagrad/FedAdam/FedYogi: the shared step; variants override :meth:`second_moment`."""

    def __init__(self, *, lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3) -> None:
        _check_positive(self.name, lr=lr, tau=tau)
        for key, value in (("beta1", beta1), ("beta2", beta2)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 <= value < 1.0:
                raise ValueError(f"{self.name} {key} must be in [0, 1), got {value!r}")
        self.lr, self.beta1, self.beta2, self.tau = float(lr), float(beta1), float(beta2), \
            float(tau)
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None
        self._steps = 0

    @abstractmethod
    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """The new ``v`` from the old ``v`` and ``Δ²`` (float64)."""

    def step(self, params: np.ndarray, result: AggregateResult,
             layout: ParamLayout) -> np.ndarray:
        params = _check_params(params, layout)
        updated = _updated_slices(result, layout)
        if self._m is None or self._v is None:
            m = np.zeros(layout.size, dtype=np.float64)
            v = np.full(layout.size, self.tau ** 2, dtype=np.float64)
        elif self._m.size != layout.size:
            raise ValueError(f"optimizer state has {self._m.size} values, the model "
                             f"{layout.size}: state from another model")
        else:
            m, v = self._m.copy(), self._v.copy()
        out = params.copy()
        for s, delta in updated:
            m[s] = self.beta1 * m[s] + (1.0 - self.beta1) * delta
            v[s] = self.second_moment(v[s], delta * delta)
            x = params[s].astype(np.float64) + self.lr * m[s] / (np.sqrt(v[s]) + self.tau)
            out[s] = x.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError(f"{self.name} step produced non-finite parameters")
        self._m, self._v = m, v
        self._steps += 1
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"optimizer": np.array(self.name), "steps": np.array(self._steps, np.int64)}
        if self._m is not None and self._v is not None:
            state["m"], state["v"] = self._m.copy(), self._v.copy()
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        _check_name(state, self.name, allowed={"optimizer", "steps", "m", "v"})
        if ("m" in state) != ("v" in state):
            raise ValueError(f"{self.name} optimizer state needs both m and v, or neither")
        steps = np.asarray(state.get("steps", 0))
        if steps.shape != () or not np.issubdtype(steps.dtype, np.integer) or int(steps) < 0:
            raise ValueError(f"{self.name} optimizer state has a bad step count")
        m = v = None
        if "m" in state:
            m = np.array(state["m"], dtype=np.float64)
            v = np.array(state["v"], dtype=np.float64)
            if m.ndim != 1 or m.shape != v.shape:
                raise ValueError(f"{self.name} optimizer state: m and v must be equal-length "
                                 "vectors")
            if not (np.all(np.isfinite(m)) and np.all(np.isfinite(v)) and np.all(v >= 0)):
                raise ValueError(f"{self.name} optimizer state has non-finite or negative "
                                 "moments")
        self._m, self._v, self._steps = m, v, int(steps)


class FedAdagrad(AdaptiveOptimizer):
    """``v ← v + Δ²`` (Reddi et al. 2021, Algorithm 2); β2 is unused."""

    name: ClassVar[str] = "fedadagrad"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        out: np.ndarray = v + delta_sq
        return out


class FedAdam(AdaptiveOptimizer):
    """``v ← β2 v + (1 − β2) Δ²`` (Reddi et al. 2021, Algorithm 2)."""

    name: ClassVar[str] = "fedadam"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1.0 - self.beta2) * delta_sq


class FedYogi(AdaptiveOptimizer):
    """``v ← v − (1 − β2) Δ² sign(v − Δ²)`` (Reddi et al. 2021; Zaheer et al. 2018)."""

    name: ClassVar[str] = "fedyogi"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        out: np.ndarray = v - (1.0 - self.beta2) * delta_sq * np.sign(v - delta_sq)
        return out
