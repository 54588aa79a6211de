"""Robust rules against straightforward references, and under 20 % malicious updates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedbeat.aggregator.strategies import (
    AggregateResult,
    ClientUpdate,
    FedAvg,
    Median,
    MultiKrum,
    NormBounded,
    Strategy,
    TrimmedMean,
)
from fedbeat.aggregator.strategies.aggregate import krum_scores
from fedbeat.models.params import ParamLayout

LAYOUT = ParamLayout((("conv.w", (4, 3, 5)), ("conv.b", (4,)), ("head.w", (3, 8)),
                      ("head.b", (3,))))
HEAD = ("head.w", "head.b")


def _delta(rng: np.random.Generator, names: tuple[str, ...] | None = None,
           scale: float = 0.01) -> dict[str, np.ndarray]:
    shapes = dict(LAYOUT.entries)
    return {n: (rng.standard_normal(shapes[n]) * scale).astype(np.float32)
            for n in (names or LAYOUT.names)}


def _aggregate(strategy: Strategy, updates: list[ClientUpdate]) -> AggregateResult:
    agg = strategy.begin(LAYOUT, 0)
    for u in updates:
        agg.add(u)
    return agg.result()


def _flat(tensors: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([tensors[n].ravel() for n in LAYOUT.names if n in tensors])


# --- against references ---------------------------------------------------------------------


@pytest.mark.parametrize(("n", "beta"), [(5, 0.2), (10, 0.1), (11, 0.25), (9, 0.0), (30, 0.3)])
def test_trimmed_mean_matches_scipy(n: int, beta: float) -> None:
    rng = np.random.default_rng(n)
    updates = [ClientUpdate(f"d{i}", int(rng.integers(1, 100)), _delta(rng), 0)
               for i in range(n)]
    result = _aggregate(TrimmedMean(trim_fraction=beta), updates)
    for name in LAYOUT.names:
        stack = np.stack([u.tensors[name].astype(np.float64) for u in updates])
        ref = stats.trim_mean(stack, beta, axis=0)  # cuts int(beta * n) from each end
        np.testing.assert_allclose(result.delta[name], ref, rtol=1e-6, atol=1e-9)
        assert result.delta[name].dtype == np.float32
    assert result.weight == sum(u.num_samples for u in updates)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 13])
def test_median_matches_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    updates = [ClientUpdate(f"d{i}", 7, _delta(rng), 0) for i in range(n)]
    result = _aggregate(Median(), updates)
    for name in LAYOUT.names:
        stack = np.stack([u.tensors[name].astype(np.float64) for u in updates])
        np.testing.assert_allclose(result.delta[name], np.median(stack, axis=0), rtol=1e-7)


def test_coordinate_rules_work_per_tensor_on_partial_updates() -> None:
    rng = np.random.default_rng(1)
    updates = [ClientUpdate(f"d{i}", 5, _delta(rng, HEAD if i % 2 else None), 0)
               for i in range(10)]
    med = _aggregate(Median(), updates)
    trim = _aggregate(TrimmedMean(trim_fraction=0.2), updates)
    assert med.contributors == {"conv.w": 5, "conv.b": 5, "head.w": 10, "head.b": 10}
    for name in LAYOUT.names:
        stack = np.stack([u.tensors[name] for u in updates if name in u.tensors])
        np.testing.assert_allclose(med.delta[name], np.median(stack.astype(np.float64), axis=0),
                                   rtol=1e-7)
        np.testing.assert_allclose(trim.delta[name],
                                   stats.trim_mean(stack.astype(np.float64), 0.2, axis=0),
                                   rtol=1e-6, atol=1e-9)


def _naive_krum_scores(flat: np.ndarray, f: int) -> np.ndarray:
    n = flat.shape[0]
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((flat[i].astype(np.float64) - flat[j]) ** 2))
                   for j in range(n) if j != i)
        scores.append(sum(d[:n - f - 2]))
    return np.array(scores)


@pytest.mark.parametrize(("n", "f", "m"), [(5, 1, 1), (9, 2, None), (12, 3, 4), (7, 0, 7)])
def test_multi_krum_matches_a_naive_reference(n: int, f: int, m: int | None) -> None:
    rng = np.random.default_rng(n * 10 + f)
    updates = [ClientUpdate(f"d{i:02d}", int(rng.integers(1, 1000)),
                            _delta(rng, scale=float(rng.uniform(0.005, 0.05))), 0)
               for i in range(n)]
    flat = np.stack([_flat(dict(u.tensors)) for u in updates])
    ref_scores = _naive_krum_scores(flat, f)
    np.testing.assert_allclose(krum_scores(flat, f), ref_scores, rtol=1e-12)
    chosen = sorted(np.argsort(ref_scores, kind="stable")[:(n - f if m is None else m)])
    result = _aggregate(MultiKrum(num_byzantine=f, num_selected=m), updates)
    assert result.dropped == tuple(u.device_id for i, u in enumerate(updates) if i not in chosen)
    weights = np.array([updates[i].num_samples for i in chosen], dtype=np.float64)
    for name in LAYOUT.names:
        stack = np.stack([updates[i].tensors[name].astype(np.float64) for i in chosen])
        ref = np.tensordot(weights, stack, axes=(0, 0)) / weights.sum()
        np.testing.assert_allclose(result.delta[name], ref, rtol=1e-6, atol=1e-10)
    assert result.contributors == {name: len(chosen) for name in LAYOUT.names}
    assert result.weight == weights.sum()


# --- refusals -------------------------------------------------------------------------------


def test_rules_refuse_rounds_too_small_for_them() -> None:
    rng = np.random.default_rng(0)
    four = [ClientUpdate(f"d{i}", 5, _delta(rng), 0) for i in range(4)]
    with pytest.raises(ValueError, match=r"num_byzantine=1 needs at least 5 updates, got 4"):
        _aggregate(MultiKrum(num_byzantine=1), four)
    with pytest.raises(ValueError, match=r"num_selected=5 of 4"):
        _aggregate(MultiKrum(num_byzantine=0, num_selected=5), four)
    with pytest.raises(ValueError, match=r"trims nothing from 4 updates of conv\.w; it needs "
                                         r"at least 5"):
        _aggregate(TrimmedMean(trim_fraction=0.2), four)
    assert MultiKrum(num_byzantine=1).min_updates() == 5
    assert MultiKrum(num_byzantine=1, num_selected=9).min_updates() == 9
    assert TrimmedMean(trim_fraction=0.2).min_updates() == 5
    assert TrimmedMean(trim_fraction=0.1).min_updates() == 10
    assert TrimmedMean(trim_fraction=0.3).min_updates() == 4
    assert TrimmedMean(trim_fraction=0.0).min_updates() == 1
    assert Median().min_updates() == 1


def test_multi_krum_refuses_mixing_partial_and_full_updates() -> None:
    rng = np.random.default_rng(0)
    agg = MultiKrum(num_byzantine=1).begin(LAYOUT, 0)
    agg.add(ClientUpdate("full", 5, _delta(rng), 0))
    with pytest.raises(ValueError, match="Krum cannot mix partial and full updates"):
        agg.add(ClientUpdate("head-only", 5, _delta(rng, HEAD), 0))
    assert len(agg) == 1
    # an all-partial round is fine: Krum runs on the tensors they carry
    only_head = [ClientUpdate(f"w{i}", 5, _delta(rng, HEAD), 0) for i in range(6)]
    result = _aggregate(MultiKrum(num_byzantine=1), only_head)
    assert set(result.delta) == set(HEAD)


def test_robust_rules_accept_large_finite_values_fedavg_refuses() -> None:
    rng = np.random.default_rng(0)
    updates = [ClientUpdate(f"d{i}", 5, _delta(rng, scale=100.0), 0) for i in range(5)]
    for strategy in (Median(), TrimmedMean(trim_fraction=0.2), MultiKrum(num_byzantine=1)):
        assert np.all(np.isfinite(_aggregate(strategy, updates).delta["conv.w"]))
    with pytest.raises(ValueError, match="too large"):
        _aggregate(FedAvg(), updates)


# --- norm bounding --------------------------------------------------------------------------


def test_norm_bounding_clips_each_update_over_all_its_tensors() -> None:
    rng = np.random.default_rng(4)
    updates = [ClientUpdate(f"d{i}", 10 * (i + 1), _delta(rng, HEAD if i == 2 else None,
                                                          scale=0.1 * (i + 1)), 0)
               for i in range(4)]
    max_norm = 0.5
    result = _aggregate(NormBounded(FedAvg(), max_norm), updates)
    clipped = []
    for u in updates:
        norm = np.linalg.norm(_flat(dict(u.tensors)).astype(np.float64))
        factor = min(1.0, max_norm / norm)
        clipped.append({k: v.astype(np.float64) * factor for k, v in u.tensors.items()})
    for name in LAYOUT.names:
        pairs = [(u.num_samples, c[name]) for u, c in zip(updates, clipped, strict=True)
                 if name in c]
        ref = sum(w * x for w, x in pairs) / sum(w for w, _ in pairs)
        np.testing.assert_allclose(result.delta[name], ref, rtol=1e-6, atol=1e-9)


def test_norm_bounding_leaves_small_updates_bit_identical() -> None:
    rng = np.random.default_rng(5)
    updates = [ClientUpdate(f"d{i}", 3, _delta(rng), 0) for i in range(6)]
    plain = _aggregate(Median(), updates)
    bounded = _aggregate(NormBounded(Median(), 1e3), updates)
    assert {k: v.tobytes() for k, v in plain.delta.items()} == \
        {k: v.tobytes() for k, v in bounded.delta.items()}


# --- under attack ---------------------------------------------------------------------------

N_DEVICES = 20
N_MALICIOUS = 4  # 20 %


def _attacked_round(attack: str, seed: int) -> tuple[list[ClientUpdate], np.ndarray, set[str]]:
    """Honest deltas share a direction (norm ~1) plus noise; 20 % are sign-flipped (×−5) or
    scaled ×100. Returns the updates, the honest weighted mean and the malicious ids."""
    rng = np.random.default_rng(seed)
    direction = _delta(rng, scale=0.02)
    updates, malicious = [], set()
    for i in range(N_DEVICES):
        noise = _delta(rng, scale=0.01)
        tensors = {k: (direction[k] + noise[k]).astype(np.float32) for k in LAYOUT.names}
        device = f"dev-{int(rng.integers(0, 10**6)):06d}-{i}"  # malicious ids not sorted last
        if i < N_MALICIOUS:
            factor = -5.0 if attack == "sign-flip" else 100.0
            tensors = {k: (v * factor).astype(np.float32) for k, v in tensors.items()}
            malicious.add(device)
        updates.append(ClientUpdate(device, int(rng.integers(200, 400)), tensors, 0))
    honest = [u for u in updates if u.device_id not in malicious]
    w = np.array([u.num_samples for u in honest], dtype=np.float64)
    honest_mean = w @ np.stack([_flat(dict(u.tensors)) for u in honest]).astype(np.float64) \
        / w.sum()
    return updates, honest_mean, malicious


@pytest.mark.parametrize("attack", ["sign-flip", "scale-100"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_robust_rules_stay_near_the_honest_mean_while_fedavg_is_pulled_away(
        attack: str, seed: int) -> None:
    updates, honest_mean, malicious = _attacked_round(attack, seed)
    honest_norms = sorted(np.linalg.norm(_flat(dict(u.tensors))) for u in updates
                          if u.device_id not in malicious)
    rules: dict[str, Strategy] = {
        "fedavg": FedAvg(),
        "median": Median(),
        "trimmed-mean": TrimmedMean(trim_fraction=0.2),
        "krum": MultiKrum(num_byzantine=N_MALICIOUS),
        "norm-bounded-fedavg": NormBounded(FedAvg(), float(np.median(honest_norms))),
    }
    scale = np.linalg.norm(honest_mean)
    error = {name: np.linalg.norm(_flat(_aggregate(rule, updates).delta) - honest_mean) / scale
             for name, rule in rules.items()}
    # measured (seeds 0-2): fedavg 1.1-1.2 (sign flip) / 18-20 (×100); median 0.14-0.20;
    # trimmed mean 0.17-0.22; Multi-Krum ~1e-8 (it keeps exactly the honest ones); norm-bounded
    # FedAvg 0.05-0.07 (×100) but 0.38-0.42 under sign flips: clipping bounds a flipped update
    # to an honest-sized one, which still pulls by 2 · 20 % — the known limit of norm bounding
    assert error["fedavg"] > (1.0 if attack == "sign-flip" else 10.0), error
    assert error["krum"] < 1e-4, error
    for name in ("median", "trimmed-mean"):
        assert error[name] < 0.35, error
        assert error[name] < error["fedavg"] / 4, (name, error)
    bound = 0.5 if attack == "sign-flip" else 0.15
    assert error["norm-bounded-fedavg"] < bound, error
    assert error["norm-bounded-fedavg"] < error["fedavg"] / 2, error


@pytest.mark.parametrize("attack", ["sign-flip", "scale-100"])
def test_multi_krum_drops_exactly_the_malicious_updates(attack: str) -> None:
    for seed in range(3):
        updates, _, malicious = _attacked_round(attack, seed)
        result = _aggregate(MultiKrum(num_byzantine=N_MALICIOUS), updates)
        assert set(result.dropped) == malicious
        assert result.dropped == tuple(sorted(malicious))
        plain_krum = _aggregate(MultiKrum(num_byzantine=N_MALICIOUS, num_selected=1), updates)
        assert len(plain_krum.dropped) == N_DEVICES - 1
        assert not malicious & (set(u.device_id for u in updates) - set(plain_krum.dropped))
