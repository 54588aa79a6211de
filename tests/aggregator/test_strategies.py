"""FedAvg and FedBuff: exact streaming sums, order independence, partial updates, memory,
staleness weights, and the registry's and validation's error messages."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbeat.aggregator.strategies import (
    AggregateResult,
    ClientUpdate,
    FedAvg,
    FedBuff,
    Median,
    MultiKrum,
    NormBounded,
    Strategy,
    TrimmedMean,
    create_server_optimizer,
    create_strategy,
)
from fedbeat.aggregator.strategies.aggregate import (
    accumulate_exact,
    exact_mean,
    exact_total,
    quantize,
)
from fedbeat.aggregator.strategies.base import check_update
from fedbeat.models.params import ParamLayout

LAYOUT = ParamLayout((("conv.w", (4, 3, 5)), ("conv.b", (4,)), ("head.w", (3, 8)),
                      ("head.b", (3,))))
HEAD = ("head.w", "head.b")


def random_delta(rng: np.random.Generator, layout: ParamLayout = LAYOUT, *,
                 names: tuple[str, ...] | None = None, scale: float = 0.01,
                 ) -> dict[str, np.ndarray]:
    shapes = dict(layout.entries)
    return {name: (rng.standard_normal(shapes[name]) * scale).astype(np.float32)
            for name in (names or layout.names)}


def random_updates(seed: int, n: int, *, partial: bool = True, version: int = 0,
                   max_staleness: int = 0) -> list[ClientUpdate]:
    """``n`` updates with distinct ids; with ``partial`` every third carries only the head."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        names = HEAD if partial and i % 3 == 2 else None
        base = version - int(rng.integers(0, max_staleness + 1))
        out.append(ClientUpdate(f"dev-{i:03d}", int(rng.integers(1, 5000)),
                                random_delta(rng, names=names), base))
    return out


def aggregate(strategy: Strategy, updates: list[ClientUpdate], *, version: int = 0,
              layout: ParamLayout = LAYOUT) -> AggregateResult:
    agg = strategy.begin(layout, version)
    for update in updates:
        agg.add(update)
    assert len(agg) == len(updates)
    return agg.result()


def result_bytes(result: AggregateResult) -> dict[str, bytes]:
    return {name: value.tobytes() for name, value in result.delta.items()}



def _reference_weighted_mean(updates: list[ClientUpdate], weights: list[float],
                             name: str, normaliser: float | None = None) -> np.ndarray:
    carriers = [(u, w) for u, w in zip(updates, weights, strict=True) if name in u.tensors]
    total = sum(w * u.tensors[name].astype(np.float64) for u, w in carriers)
    denom = sum(w for _, w in carriers) if normaliser is None else normaliser
    return np.asarray(total / denom)


# --- order independence, for every strategy ---------------------------------------------------

ORDER_CASES: dict[str, tuple[object, bool]] = {
    # name: (factory, partial updates allowed)
    "fedavg": (FedAvg, True),
    "fedbuff": (lambda: FedBuff(buffer_size=64, max_staleness=4), True),
    "fedbuff-samples": (lambda: FedBuff(buffer_size=64, max_staleness=4, sample_weighted=True),
                        True),
    "trimmed-mean": (lambda: TrimmedMean(trim_fraction=0.2), True),
    "median": (Median, True),
    "krum": (lambda: MultiKrum(num_byzantine=2), False),
    "norm-bounded-fedavg": (lambda: NormBounded(FedAvg(), 0.05), True),
    "norm-bounded-median": (lambda: NormBounded(Median(), 0.05), True),
}


@pytest.mark.parametrize("case", sorted(ORDER_CASES))
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(7, 16), data=st.data())
def test_result_bytes_do_not_depend_on_arrival_order(case: str, seed: int, n: int,
                                                     data: st.DataObject) -> None:
    factory, partial = ORDER_CASES[case]
    stale = 4 if case.startswith("fedbuff") else 0
    updates = random_updates(seed, n, partial=partial, version=10, max_staleness=stale)
    order = data.draw(st.permutations(range(n)))
    first = aggregate(factory(), updates, version=10)  # type: ignore[operator]
    second = aggregate(factory(), [updates[i] for i in order], version=10)  # type: ignore[operator]
    assert result_bytes(first) == result_bytes(second)
    assert first.contributors == second.contributors
    assert first.dropped == second.dropped
    assert first.weight == second.weight


# --- FedAvg: exactness, partial updates, memory ----------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40),
       scale=st.sampled_from([1e-4, 1e-2, 1.0, 10.0]))
def test_fedavg_matches_the_float64_weighted_mean(seed: int, n: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    updates = [ClientUpdate(f"d{i}", int(rng.integers(1, 2**24)),
                            random_delta(rng, scale=scale), 0) for i in range(n)]
    result = aggregate(FedAvg(), updates)
    for name in LAYOUT.names:
        ref = _reference_weighted_mean(updates, [u.num_samples for u in updates], name)
        got = result.delta[name]
        assert got.dtype == np.float32
        # every value: float32 rounding plus at most the 2^-31 quantisation error ...
        assert np.all(np.abs(got - ref) <= np.abs(ref) * 2**-24 + 2**-31)
        # ... which is below 1e-6 relative for deltas of 1e-2 and up (tiny deltas keep the
        # absolute 2^-31: finer than a float32 parameter's ulp once |param| ≥ 2^-7)
        if scale >= 1e-2:
            err = np.linalg.norm(got.astype(np.float64) - ref)
            assert err <= 1e-6 * np.linalg.norm(ref)
    assert result.weight == sum(u.num_samples for u in updates)
    assert result.contributors == {name: n for name in LAYOUT.names}


def test_fedavg_partial_updates_average_each_tensor_over_its_own_contributors() -> None:
    updates = random_updates(3, 9, partial=True)  # every third carries only the head
    result = aggregate(FedAvg(), updates)
    full = [u for u in updates if "conv.w" in u.tensors]
    assert result.contributors == {"conv.w": len(full), "conv.b": len(full), "head.w": 9,
                                   "head.b": 9}
    for name in LAYOUT.names:
        ref = _reference_weighted_mean(updates, [u.num_samples for u in updates], name)
        np.testing.assert_allclose(result.delta[name], ref, rtol=1e-6, atol=1e-9)


def test_tensors_nobody_updated_are_absent_and_stay_bit_identical_after_a_step() -> None:
    rng = np.random.default_rng(0)
    updates = [ClientUpdate(f"w{i}", 10 + i, random_delta(rng, names=HEAD), 0)
               for i in range(5)]
    result = aggregate(FedAvg(), updates)
    assert set(result.delta) == set(HEAD)
    params = rng.standard_normal(LAYOUT.size).astype(np.float32)
    for opt in ("sgd", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        new = create_server_optimizer(opt).step(params, result, LAYOUT)
        for name, _, s in LAYOUT.slices():
            if name in HEAD:
                assert not np.array_equal(new[s], params[s]), (opt, name)
            else:
                assert new[s].tobytes() == params[s].tobytes(), (opt, name)


def test_fedavgm_is_heavy_ball_momentum_on_the_aggregate_and_resumes_from_its_state() -> None:
    rng = np.random.default_rng(8)
    params = rng.standard_normal(LAYOUT.size).astype(np.float32)
    deltas = [aggregate(FedAvg(), random_updates(3, 10 + r, partial=False)) for r in range(3)]
    flat = [np.concatenate([d.delta[n].ravel() for n in LAYOUT.names]).astype(np.float64)
            for d in deltas]
    opt = create_server_optimizer("fedavgm", lr=0.5, momentum=0.9)
    x, m = params.astype(np.float64), np.zeros(LAYOUT.size)
    got = params
    for r, delta in enumerate(deltas):
        if r == 2:                                  # a restart between rounds
            state = opt.state_dict()
            opt = create_server_optimizer("fedavgm", lr=0.5, momentum=0.9)
            opt.load_state_dict(state)
        got = opt.step(got, delta, LAYOUT)
        m = 0.9 * m + flat[r]
        x = x + 0.5 * m
        np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)
    zero = create_server_optimizer("fedavgm", lr=1.0, momentum=0.0)
    sgd = create_server_optimizer("sgd")
    assert zero.step(params, deltas[0], LAYOUT).tobytes() == \
        sgd.step(params, deltas[0], LAYOUT).tobytes()


def test_fedavg_with_sgd_lr_one_is_the_weighted_mean_of_trained_models() -> None:
    rng = np.random.default_rng(5)
    params = rng.standard_normal(LAYOUT.size).astype(np.float32)
    updates = random_updates(5, 6, partial=False)
    new = create_server_optimizer("sgd").step(params, aggregate(FedAvg(), updates), LAYOUT)
    weights = np.array([u.num_samples for u in updates], dtype=np.float64)
    trained = np.stack([params + np.concatenate([u.tensors[n].ravel() for n in LAYOUT.names])
                        for u in updates]).astype(np.float64)
    np.testing.assert_allclose(new, weights @ trained / weights.sum(), rtol=1e-6, atol=1e-6)


def _traced_growth(strategy: Strategy, n: int, layout: ParamLayout) -> int:
    rng = np.random.default_rng(1)
    agg = strategy.begin(layout, 0)
    tracemalloc.start()
    try:
        for i in range(n):
            agg.add(ClientUpdate(f"device-{i:05d}", 100,
                                 random_delta(rng, layout, scale=0.01), 0))
            if i == 0:
                after_first, _ = tracemalloc.get_traced_memory()
        after_all, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after_all - after_first


def test_fedavg_memory_does_not_grow_with_the_number_of_updates() -> None:
    layout = ParamLayout((("a", (200, 250)), ("b", (50,))))
    model_bytes = 4 * layout.size
    growth_10 = _traced_growth(FedAvg(), 10, layout)
    growth_200 = _traced_growth(FedAvg(), 200, layout)
    # only the device ids are kept (for refusing duplicates: well under 1 KB each), never an
    # array per update (which would be 200 KB each here)
    assert growth_200 - growth_10 < 190 * 1024
    assert growth_200 - growth_10 < 0.5 * model_bytes
    # the check can fail: a strategy that keeps updates grows by a model per update
    kept = _traced_growth(Median(), 12, layout)
    assert kept > 10 * model_bytes


# --- the exact accumulator ------------------------------------------------------------------


def test_exact_accumulator_equals_python_integers_at_the_extremes() -> None:
    q = np.array([2**36, -(2**36), 2**36 - 1, -1, 0, 12345], dtype=np.int64)
    lo = np.zeros_like(q)
    hi = np.zeros_like(q)
    digit = 2**24 - 1
    adds = 5000
    for _ in range(adds):
        accumulate_exact(lo, hi, q, digit)
    exact = [int(v) * digit * adds for v in q]
    got = exact_total(lo, hi)
    for g, e in zip(got, exact, strict=True):
        assert g == pytest.approx(float(e), rel=1e-15, abs=0)
    # the low part grows by < 2^32 per update: 2^31 updates fit in int64
    assert np.all(lo >= 0)
    assert np.all(lo < adds * 2**32)


def test_exact_mean_resolution_is_two_to_the_minus_thirty() -> None:
    x = np.array([2**-30, 2**-31 * 0.9, -(2**-30) * 3, 63.999], dtype=np.float64)
    q = quantize(x.astype(np.float32), name="t")
    lo, hi = np.zeros_like(q), np.zeros_like(q)
    accumulate_exact(lo, hi, q, 7)
    mean = exact_mean([(lo, hi)], 7)
    np.testing.assert_allclose(mean, x.astype(np.float32), atol=2**-31, rtol=1e-7)
    assert mean[1] == 0.0  # below half the resolution rounds to zero


@pytest.mark.parametrize("value", [64.0, -64.0, 1e6, np.inf, np.nan])
def test_quantize_refuses_values_that_could_overflow(value: float) -> None:
    with pytest.raises(ValueError, match="w9"):
        quantize(np.array([0.0, value], dtype=np.float32), name="w9")


def test_a_refused_update_leaves_the_sums_untouched() -> None:
    updates = random_updates(11, 5, partial=False)
    clean = aggregate(FedAvg(), updates)
    agg = FedAvg().begin(LAYOUT, 0)
    for u in updates[:3]:
        agg.add(u)
    bad = dict(random_delta(np.random.default_rng(0)))
    bad["head.b"] = np.array([0.0, 100.0, 0.0], dtype=np.float32)  # conv.* fold first
    with pytest.raises(ValueError, match=r"head\.b"):
        agg.add(ClientUpdate("evil", 10, bad, 0))
    for u in updates[3:]:
        agg.add(u)
    assert len(agg) == 5
    assert result_bytes(agg.result()) == result_bytes(clean)


def test_check_update_finds_norm_and_peak_in_one_pass() -> None:
    rng = np.random.default_rng(3)
    delta = random_delta(rng)
    checked = check_update(ClientUpdate("d", 5, delta, 0), LAYOUT)
    values = np.concatenate([delta[name].ravel() for name in LAYOUT.names]).astype(np.float64)
    assert checked.norm == pytest.approx(float(np.sqrt(np.sum(values**2))), rel=1e-12)
    assert checked.peak == float(np.max(np.abs(values)))
    assert list(checked.tensors) == list(LAYOUT.names)
    assert np.array_equal(checked.flat, values)


def test_admit_refuses_what_fold_would_and_changes_nothing() -> None:
    rng = np.random.default_rng(4)
    agg = FedAvg().begin(LAYOUT, 0)
    too_many = check_update(ClientUpdate("d", 2**24, random_delta(rng), 0), LAYOUT)
    with pytest.raises(ValueError, match="below 2"):
        agg.admit(too_many)
    assert len(agg) == 0
    buffer = FedBuff(buffer_size=1).begin(LAYOUT, 0)
    first = check_update(ClientUpdate("a", 5, random_delta(rng), 0), LAYOUT)
    buffer.admit(first)
    buffer.fold(first)
    with pytest.raises(ValueError, match="buffer is full"):
        buffer.admit(check_update(ClientUpdate("b", 5, random_delta(rng), 0), LAYOUT))
    assert len(buffer) == 1


def test_fedavg_partial_sums_carry_exactly_at_the_extremes() -> None:
    # |x| near 64 and weights near 2^24: each product is near 2^60, so the partial sum is
    # carried into (lo, hi) every few updates. The result must equal folding every update
    # straight into (lo, hi), bit for bit, in any order.
    rng = np.random.default_rng(5)
    # (all positive, so 20 of them would overflow a single int64 sum: 20 · 2^60 > 2^63)
    updates = [ClientUpdate(f"d{i:02d}", int(rng.integers(2**23, 2**24)),
                            {name: np.clip(np.abs(value) * 1e4, 0.0, 63.99).astype(np.float32)
                             for name, value in random_delta(rng).items()}, 0)
               for i in range(20)]
    flat = {u.device_id: np.concatenate([np.asarray(u.tensors[name], np.float64).ravel()
                                         for name in LAYOUT.names]) for u in updates}
    lo, hi = np.zeros(LAYOUT.size, np.int64), np.zeros(LAYOUT.size, np.int64)
    for u in updates:
        accumulate_exact(lo, hi, quantize(flat[u.device_id], name="all"), u.num_samples)
    expected = exact_mean([(lo, hi)], sum(u.num_samples for u in updates))
    for order in (updates, updates[::-1]):
        result = aggregate(FedAvg(), order)
        got = np.concatenate([result.delta[name].ravel() for name in LAYOUT.names])
        assert got.tobytes() == expected.tobytes()


# --- FedBuff -------------------------------------------------------------------------------


def test_fedbuff_discounts_by_staleness_and_divides_by_the_buffer_count() -> None:
    rng = np.random.default_rng(2)
    version = 9
    taus = [0, 3, 8, 1]
    updates = [ClientUpdate(f"d{i}", int(rng.integers(1, 900)), random_delta(rng),
                            version - tau) for i, tau in enumerate(taus)]
    s = [1 / np.sqrt(1 + tau) for tau in taus]
    result = aggregate(FedBuff(buffer_size=4, max_staleness=8), updates, version=version)
    for name in LAYOUT.names:
        ref = _reference_weighted_mean(updates, s, name, normaliser=len(updates))
        np.testing.assert_allclose(result.delta[name], ref, rtol=2e-6, atol=1e-8)
    assert result.weight == pytest.approx(sum(s), rel=1e-6)

    weighted = aggregate(FedBuff(buffer_size=4, max_staleness=8, sample_weighted=True),
                         updates, version=version)
    n = [u.num_samples for u in updates]
    for name in LAYOUT.names:
        ref = _reference_weighted_mean(updates, [a * b for a, b in zip(n, s, strict=True)],
                                       name, normaliser=sum(n))
        np.testing.assert_allclose(weighted.delta[name], ref, rtol=2e-6, atol=1e-8)
    assert weighted.weight == pytest.approx(sum(a * b for a, b in zip(n, s, strict=True)),
                                            rel=1e-6)


def test_fedbuff_staleness_factor_values() -> None:
    assert FedBuff.staleness_factor(0) == 2**20
    assert FedBuff.staleness_factor(3) == 2**19
    assert FedBuff.staleness_factor(8) == round(2**20 / 3)


def test_fedbuff_refuses_too_stale_future_and_overflowing_updates() -> None:
    rng = np.random.default_rng(0)
    agg = FedBuff(buffer_size=2, max_staleness=3).begin(LAYOUT, 10)
    with pytest.raises(ValueError, match=r"4 versions behind 10 \(max_staleness 3\)"):
        agg.add(ClientUpdate("old", 5, random_delta(rng), 6))
    with pytest.raises(ValueError, match="newer than the current"):
        agg.add(ClientUpdate("future", 5, random_delta(rng), 11))
    agg.add(ClientUpdate("a", 5, random_delta(rng), 7))
    agg.add(ClientUpdate("b", 5, random_delta(rng), 10))
    with pytest.raises(ValueError, match="buffer is full"):
        agg.add(ClientUpdate("c", 5, random_delta(rng), 10))
    assert len(agg) == 2


# --- validation and the registry ------------------------------------------------------------

ALL_STRATEGIES = [FedAvg, lambda: FedBuff(buffer_size=8), Median,
                  lambda: TrimmedMean(trim_fraction=0.2), lambda: MultiKrum(num_byzantine=1),
                  lambda: NormBounded(FedAvg(), 1.0)]


def _bad_updates() -> list[tuple[ClientUpdate, str]]:
    good = random_delta(np.random.default_rng(0))
    nan = dict(good)
    nan["conv.b"] = np.array([0.0, np.nan, 0.0, 0.0], dtype=np.float32)
    wrong_shape = dict(good)
    wrong_shape["head.w"] = np.zeros((8, 3), np.float32)
    unknown = dict(good)
    unknown["lstm.w"] = np.zeros(3, np.float32)
    ints = dict(good)
    ints["head.b"] = np.zeros(3, np.int32)
    return [
        (ClientUpdate("d", 1, nan, 0), r"conv\.b contains NaN"),
        (ClientUpdate("d", 1, wrong_shape, 0), r"head\.w has shape \(8, 3\)"),
        (ClientUpdate("d", 1, unknown, 0), r"\['lstm\.w'\] are not in the model"),
        (ClientUpdate("d", 1, ints, 0), "dtype int32"),
        (ClientUpdate("d", 0, good, 0), "num_samples must be a positive integer"),
        (ClientUpdate("d", 1, {}, 0), "carries no tensors"),
        (ClientUpdate("", 1, good, 0), "device id"),
        (ClientUpdate("d", 1, good, -1), "base_version"),
    ]


@pytest.mark.parametrize("factory", ALL_STRATEGIES)
def test_every_strategy_refuses_bad_updates_with_a_reason(factory: object) -> None:
    for update, message in _bad_updates():
        agg = factory().begin(LAYOUT, 0)  # type: ignore[operator]
        with pytest.raises(ValueError, match=message):
            agg.add(update)
        assert len(agg) == 0


@pytest.mark.parametrize("factory", ALL_STRATEGIES)
def test_every_strategy_refuses_duplicates_empty_rounds_and_late_adds(factory: object) -> None:
    updates = random_updates(4, 5, partial=False)
    agg = factory().begin(LAYOUT, 0)  # type: ignore[operator]
    with pytest.raises(ValueError, match="no updates"):
        agg.result()
    for u in updates:
        agg.add(u)
    with pytest.raises(ValueError, match="already contributed"):
        agg.add(updates[0])
    result = agg.result()
    assert agg.result() is result
    with pytest.raises(ValueError, match="finished"):
        agg.add(ClientUpdate("late", 3, updates[0].tensors, 0))


def test_synchronous_strategies_refuse_updates_from_another_version() -> None:
    rng = np.random.default_rng(0)
    for strategy in (FedAvg(), Median(), NormBounded(TrimmedMean(), 1.0)):
        agg = strategy.begin(LAYOUT, 4)
        with pytest.raises(ValueError, match="trained from model version 3"):
            agg.add(ClientUpdate("d", 5, random_delta(rng), 3))


def test_fedavg_refuses_huge_values_and_sample_counts() -> None:
    rng = np.random.default_rng(0)
    agg = FedAvg().begin(LAYOUT, 0)
    with pytest.raises(ValueError, match="below 2"):
        agg.add(ClientUpdate("d", 2**24, random_delta(rng), 0))
    with pytest.raises(ValueError, match=r"conv\.w: update value .* too large"):
        agg.add(ClientUpdate("d", 5, random_delta(rng, scale=100.0), 0))


def test_create_strategy_builds_every_name_and_wraps_max_norm() -> None:
    assert isinstance(create_strategy("fedavg"), FedAvg)
    assert isinstance(create_strategy("median"), Median)
    trimmed = create_strategy("trimmed-mean", trim_fraction=0.25)
    assert isinstance(trimmed, TrimmedMean)
    assert trimmed.trim_fraction == 0.25
    krum = create_strategy("krum", num_byzantine=2, num_selected=3)
    assert isinstance(krum, MultiKrum)
    assert (krum.num_byzantine, krum.num_selected) == (2, 3)
    buff = create_strategy("fedbuff", buffer_size=5, max_staleness=2, sample_weighted=True)
    assert isinstance(buff, FedBuff)
    assert (buff.buffer_size, buff.max_staleness, buff.sample_weighted) == (5, 2, True)
    bounded = create_strategy("median", max_norm=2.5)
    assert isinstance(bounded, NormBounded)
    assert isinstance(bounded.inner, Median)
    assert bounded.max_norm == 2.5
    assert bounded.needs_individual_updates
    assert not create_strategy("fedavg").needs_individual_updates
    assert create_strategy("krum", num_byzantine=0).needs_individual_updates


@pytest.mark.parametrize(("name", "options", "message"), [
    ("fedprox", {}, r"unknown strategy 'fedprox'; choose one of \['fedavg', 'fedbuff', "
                    r"'krum', 'median', 'trimmed-mean'\]"),
    ("median", {"beta": 0.1}, r"no option\(s\) \['beta'\]; its options are \['max_norm'\]"),
    ("trimmed-mean", {"beta": 0.1}, r"its options are \['max_norm', 'trim_fraction'\]"),
    ("krum", {}, r"needs option\(s\) \['num_byzantine'\]"),
    ("trimmed-mean", {"trim_fraction": 0.5}, r"trim_fraction must be in \[0, 0\.5\)"),
    ("krum", {"num_byzantine": -1}, "num_byzantine must be"),
    ("krum", {"num_byzantine": 1, "num_selected": 0}, "num_selected must be"),
    ("fedbuff", {"buffer_size": 0}, "buffer_size must be"),
    ("fedbuff", {"max_staleness": -2}, "max_staleness must be"),
    ("fedavg", {"max_norm": 0.0}, "max_norm must be a positive"),
    ("fedavg", {"max_norm": float("nan")}, "max_norm must be a positive"),
])
def test_create_strategy_explains_bad_names_and_options(name: str, options: dict[str, object],
                                                        message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_strategy(name, **options)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("adam", {}, r"unknown server optimizer 'adam'; choose one of \['fedadagrad', 'fedadam', "
                 r"'fedavgm', 'fedyogi', 'sgd'\]"),
    ("fedavgm", {"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ("sgd", {"momentum": 0.9}, r"no option\(s\) \['momentum'\]; its options are \['lr'\]"),
    ("sgd", {"lr": 0.0}, "lr must be a positive"),
    ("fedadam", {"beta1": 1.0}, r"beta1 must be in \[0, 1\)"),
    ("fedyogi", {"tau": -1e-3}, "tau must be a positive"),
])
def test_create_server_optimizer_explains_bad_names_and_options(
        name: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_server_optimizer(name, **options)
