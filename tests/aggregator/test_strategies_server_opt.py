"""Server optimizers against Reddi et al. 2021 (Algorithm 2), written out inline; state
round trips; partial rounds leave other tensors and their moments untouched."""

from __future__ import annotations

import io

import numpy as np
import pytest

from fedbeat.aggregator.strategies import (
    AggregateResult,
    FedAdagrad,
    FedAdam,
    FedYogi,
    ServerSgd,
    create_server_optimizer,
)
from fedbeat.models.params import ParamLayout

LAYOUT = ParamLayout((("conv.w", (4, 3, 5)), ("conv.b", (4,)), ("head.w", (3, 8)),
                      ("head.b", (3,))))
HEAD = ("head.w", "head.b")


def _result(rng: np.random.Generator, names: tuple[str, ...] = LAYOUT.names,
            scale: float = 0.05) -> AggregateResult:
    shapes = dict(LAYOUT.entries)
    delta = {n: (rng.standard_normal(shapes[n]) * scale).astype(np.float32) for n in names}
    return AggregateResult(delta=delta, contributors={n: 3 for n in names}, weight=3.0)


def _flat_delta(result: AggregateResult) -> tuple[np.ndarray, np.ndarray]:
    """The delta as a flat float64 vector (zeros elsewhere) and the mask of updated values."""
    delta = np.zeros(LAYOUT.size)
    mask = np.zeros(LAYOUT.size, dtype=bool)
    for name, _, s in LAYOUT.slices():
        if name in result.delta:
            delta[s] = result.delta[name].ravel()
            mask[s] = True
    return delta, mask


def _paper_reference(variant: str, x0: np.ndarray, results: list[AggregateResult], *,
                     lr: float, beta1: float, beta2: float, tau: float) -> list[np.ndarray]:
    """Algorithm 2 of Reddi et al. 2021, one coordinate at a time, plain Python floats."""
    x = [float(v) for v in x0]
    m = [0.0] * len(x)
    v = [tau * tau] * len(x)  # v_{-1} ≥ τ²
    out = []
    for result in results:
        delta, mask = _flat_delta(result)
        for i in range(len(x)):
            if not mask[i]:
                continue
            d = float(delta[i])
            m[i] = beta1 * m[i] + (1 - beta1) * d
            if variant == "fedadagrad":
                v[i] = v[i] + d * d
            elif variant == "fedadam":
                v[i] = beta2 * v[i] + (1 - beta2) * d * d
            else:  # fedyogi
                sign = (v[i] - d * d > 0) - (v[i] - d * d < 0)
                v[i] = v[i] - (1 - beta2) * d * d * sign
            x[i] = float(np.float32(x[i] + lr * m[i] / (v[i] ** 0.5 + tau)))
        out.append(np.array(x, dtype=np.float32))
    return out


@pytest.mark.parametrize("variant", ["fedadagrad", "fedadam", "fedyogi"])
@pytest.mark.parametrize("hyper", [
    {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    {"lr": 0.3, "beta1": 0.5, "beta2": 0.9, "tau": 0.05},
])
def test_adaptive_optimizers_follow_the_paper_step_by_step(variant: str,
                                                           hyper: dict[str, float]) -> None:
    rng = np.random.default_rng(7)
    x0 = rng.standard_normal(LAYOUT.size).astype(np.float32)
    # full rounds, a head-only round, and a round with tiny deltas (Yogi's sign flips)
    results = [_result(rng), _result(rng, HEAD), _result(rng), _result(rng, scale=1e-4),
               _result(rng, ("conv.w",))]
    expected = _paper_reference(variant, x0, results, **hyper)
    opt = create_server_optimizer(variant, **hyper)
    x = x0
    for step, result in enumerate(results):
        x = opt.step(x, result, LAYOUT)
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, expected[step], rtol=1e-6, atol=1e-7,
                                   err_msg=f"step {step}")


def test_defaults_are_the_documented_ones() -> None:
    for opt in (FedAdam(), FedYogi(), FedAdagrad()):
        assert (opt.lr, opt.beta1, opt.beta2, opt.tau) == (1e-2, 0.9, 0.99, 1e-3)
    assert ServerSgd().lr == 1.0


def test_yogi_and_adam_differ_as_the_paper_says_on_one_coordinate() -> None:
    layout = ParamLayout((("w", (1,)),))
    tau, beta2 = 1e-3, 0.99
    result = AggregateResult({"w": np.array([0.1], np.float32)}, {"w": 1}, 1.0)
    d = float(np.float32(0.1))
    # v0 = τ² = 1e-6 < Δ² = 0.01: Yogi adds (1-β2)Δ² (sign −1), Adam moves toward Δ²
    v_yogi = tau**2 + (1 - beta2) * d * d
    v_adam = beta2 * tau**2 + (1 - beta2) * d * d
    m = 0.1 * d
    for opt, v in ((FedYogi(), v_yogi), (FedAdam(), v_adam)):
        x = opt.step(np.zeros(1, np.float32), result, layout)
        assert x[0] == np.float32(1e-2 * m / (v**0.5 + tau))
        np.testing.assert_allclose(opt.state_dict()["v"], [v], rtol=1e-15)
        np.testing.assert_allclose(opt.state_dict()["m"], [m], rtol=1e-15)


def test_sgd_adds_lr_times_delta_and_leaves_others_bit_identical() -> None:
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal(LAYOUT.size).astype(np.float32)
    result = _result(rng, HEAD)
    delta, mask = _flat_delta(result)
    x = ServerSgd(lr=0.5).step(x0, result, LAYOUT)
    np.testing.assert_allclose(x[mask], x0[mask] + 0.5 * delta[mask], rtol=1e-6)
    assert x[~mask].tobytes() == x0[~mask].tobytes()
    assert x0.tobytes() == x0.copy().tobytes()  # input untouched
    one = ServerSgd().step(x0, result, LAYOUT)
    assert one[mask].tobytes() == (x0[mask] + delta[mask].astype(np.float32)).tobytes()


@pytest.mark.parametrize("variant", ["fedadagrad", "fedadam", "fedyogi"])
def test_partial_rounds_leave_other_moments_untouched(variant: str) -> None:
    rng = np.random.default_rng(9)
    opt = create_server_optimizer(variant)
    x = opt.step(rng.standard_normal(LAYOUT.size).astype(np.float32), _result(rng), LAYOUT)
    before = opt.state_dict()
    result = _result(rng, HEAD)
    _, mask = _flat_delta(result)
    x2 = opt.step(x, result, LAYOUT)
    after = opt.state_dict()
    for key in ("m", "v"):
        assert after[key][~mask].tobytes() == before[key][~mask].tobytes()
        assert not np.array_equal(after[key][mask], before[key][mask])
    assert x2[~mask].tobytes() == x[~mask].tobytes()
    assert int(after["steps"]) == 2


@pytest.mark.parametrize("variant", ["sgd", "fedadagrad", "fedadam", "fedyogi"])
def test_state_dict_round_trip_through_npz_continues_bit_identically(variant: str) -> None:
    rng = np.random.default_rng(11)
    results = [_result(rng) for _ in range(4)]
    x = rng.standard_normal(LAYOUT.size).astype(np.float32)
    original = create_server_optimizer(variant)
    for r in results[:2]:
        x = original.step(x, r, LAYOUT)
    buffer = io.BytesIO()
    np.savez(buffer, **original.state_dict())  # what the aggregator persists
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as stored:
        restored = create_server_optimizer(variant)
        restored.load_state_dict({k: stored[k] for k in stored.files})
    y = x.copy()
    for r in results[2:]:
        x = original.step(x, r, LAYOUT)
        y = restored.step(y, r, LAYOUT)
    assert x.tobytes() == y.tobytes()
    state_a, state_b = original.state_dict(), restored.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert state_a[key].tobytes() == state_b[key].tobytes()


def test_a_fresh_state_round_trips_and_foreign_states_are_refused() -> None:
    fresh = FedAdam().state_dict()
    FedAdam().load_state_dict(fresh)
    with pytest.raises(ValueError, match="state is for 'fedadam', not 'fedyogi'"):
        FedYogi().load_state_dict(fresh)
    with pytest.raises(ValueError, match="not 'sgd'"):
        ServerSgd().load_state_dict(fresh)
    with pytest.raises(ValueError, match="state is for 'nothing'"):
        FedAdam().load_state_dict({})
    rng = np.random.default_rng(0)
    opt = FedAdam()
    opt.step(np.zeros(LAYOUT.size, np.float32), _result(rng), LAYOUT)
    state = opt.state_dict()
    with pytest.raises(ValueError, match="both m and v"):
        FedAdam().load_state_dict({k: v for k, v in state.items() if k != "v"})
    with pytest.raises(ValueError, match="non-finite or negative"):
        FedAdam().load_state_dict({**state, "v": -state["v"]})
    with pytest.raises(ValueError, match="unexpected entries"):
        FedAdam().load_state_dict({**state, "u": state["m"]})
    other = FedAdam()
    other.load_state_dict({**state, "m": state["m"][:5], "v": state["v"][:5]})
    with pytest.raises(ValueError, match="state from another model"):
        other.step(np.zeros(LAYOUT.size, np.float32), _result(rng), LAYOUT)


@pytest.mark.parametrize("variant", ["sgd", "fedadam", "fedyogi"])
def test_step_refuses_bad_params_and_results(variant: str) -> None:
    rng = np.random.default_rng(0)
    opt = create_server_optimizer(variant)
    good = _result(rng)
    params = np.zeros(LAYOUT.size, np.float32)
    with pytest.raises(ValueError, match="layout needs"):
        opt.step(params[:-1], good, LAYOUT)
    with pytest.raises(ValueError, match="must be float32"):
        opt.step(params.astype(np.float64), good, LAYOUT)
    bad_shape = AggregateResult({"head.b": np.zeros(4, np.float32)}, {"head.b": 1}, 1.0)
    with pytest.raises(ValueError, match=r"head\.b has shape \(4,\)"):
        opt.step(params, bad_shape, LAYOUT)
    unknown = AggregateResult({"lstm": np.zeros(4, np.float32)}, {"lstm": 1}, 1.0)
    with pytest.raises(ValueError, match=r"\['lstm'\] that are not in the model"):
        opt.step(params, unknown, LAYOUT)
    nan = AggregateResult({"head.b": np.array([0, np.nan, 0], np.float32)}, {"head.b": 1}, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        opt.step(params, nan, LAYOUT)
