"""Fleet partitioners: exact partitions, deterministic per seed, the skew they promise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbeat.device.ecg.mitdb import patient_of as mitdb_patient
from fedbeat.tools.partition import Partition, dirichlet, iid, per_patient, split_patients


def assert_exact_partition(parts: Partition, n: int) -> None:
    """Disjoint, complete, no empty device, each device's indices ascending."""
    assert all(p.size > 0 and p.dtype == np.int64 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def mean_label_entropy(labels: np.ndarray, parts: Partition) -> float:
    """Mean over devices of the entropy (bits) of the device's label distribution."""
    entropies = []
    for p in parts:
        freq = np.bincount(labels[p]) / p.size
        freq = freq[freq > 0]
        entropies.append(float(-(freq * np.log2(freq)).sum()))
    return float(np.mean(entropies))


@st.composite
def record_groups(draw: st.DrawFn) -> np.ndarray:
    """Per-beat record names, records concatenated one after another."""
    names = draw(st.lists(st.sampled_from(["100", "201", "202", "203", "208", "x"]),
                          min_size=1, max_size=6, unique=True))
    sizes = draw(st.lists(st.integers(1, 40), min_size=len(names), max_size=len(names)))
    return np.repeat(names, sizes)


IMBALANCED = np.random.default_rng(0).choice(5, size=4000, p=[0.7, 0.1, 0.1, 0.07, 0.03])


# -- iid -------------------------------------------------------------------------------------

@given(st.integers(1, 300), st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_iid_is_an_even_exact_partition(n: int, devices: int, seed: int) -> None:
    devices = min(devices, n)
    parts = iid(n, devices, seed=seed)
    assert len(parts) == devices
    assert_exact_partition(parts, n)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_deterministic_per_seed() -> None:
    first, again, other = iid(100, 4, seed=1), iid(100, 4, seed=1), iid(100, 4, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("devices", [0, 11])
def test_iid_refuses_impossible_fleets(devices: int) -> None:
    with pytest.raises(ValueError, match="n_devices"):
        iid(10, devices, seed=0)


# -- per patient -----------------------------------------------------------------------------

@given(record_groups())
def test_per_patient_keeps_each_patient_on_one_device(groups: np.ndarray) -> None:
    parts = per_patient(groups, patient_of=mitdb_patient)
    assert_exact_partition(parts, groups.size)
    patients = np.array([mitdb_patient(g) for g in groups])
    assert len(parts) == np.unique(patients).size
    assert all(np.unique(patients[p]).size == 1 for p in parts)


def test_per_patient_merges_records_201_and_202_only_when_asked() -> None:
    groups = np.repeat(["202", "100", "201"], [3, 2, 4])
    assert [p.tolist() for p in per_patient(groups)] == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    merged = per_patient(groups, patient_of=mitdb_patient)
    assert [p.tolist() for p in merged] == [[0, 1, 2, 5, 6, 7, 8], [3, 4]]


# -- patients split over devices -------------------------------------------------------------

@given(record_groups(), st.integers(0, 30))
def test_split_patients_gives_runs_of_one_patient(groups: np.ndarray, extra: int) -> None:
    patients = np.array([mitdb_patient(g) for g in groups])
    devices = min(np.unique(patients).size + extra, groups.size)
    parts = split_patients(groups, devices, patient_of=mitdb_patient)
    assert len(parts) == devices
    assert_exact_partition(parts, groups.size)
    for p in parts:
        assert np.unique(patients[p]).size == 1
        mine = np.flatnonzero(patients == patients[p[0]])      # that patient's beats, in order
        start = np.searchsorted(mine, p[0])
        assert np.array_equal(mine[start:start + p.size], p)     # a consecutive run of them


def test_split_patients_shares_devices_by_beats() -> None:
    groups = np.repeat(["a", "b"], [900, 100])
    sizes = [p.size for p in split_patients(groups, 10)]
    assert sizes == [100] * 10


def test_split_patients_needs_a_device_per_patient() -> None:
    with pytest.raises(ValueError, match="3 patients"):
        split_patients(np.repeat(["a", "b", "c"], 5), 2)


# -- Dirichlet label skew --------------------------------------------------------------------

@given(st.integers(0, 2**32 - 1), st.floats(0.05, 100), st.integers(1, 8))
def test_dirichlet_is_an_exact_partition(seed: int, alpha: float, devices: int) -> None:
    parts = dirichlet(IMBALANCED, devices, alpha, seed=seed, min_size=5)
    assert len(parts) == devices
    assert_exact_partition(parts, IMBALANCED.size)
    assert min(p.size for p in parts) >= 5


def test_dirichlet_is_deterministic_per_seed() -> None:
    first = dirichlet(IMBALANCED, 6, 0.5, seed=3)
    again = dirichlet(IMBALANCED, 6, 0.5, seed=3)
    other = dirichlet(IMBALANCED, 6, 0.5, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_dirichlet_skew_grows_as_alpha_falls() -> None:
    def entropy(alpha: float) -> float:
        return float(np.mean([mean_label_entropy(IMBALANCED,
                                                 dirichlet(IMBALANCED, 10, alpha, seed=s))
                              for s in range(5)]))

    entropies = [entropy(alpha) for alpha in (1000.0, 1.0, 0.1)]
    assert entropies[0] > entropies[1] > entropies[2]
    assert entropies[0] == pytest.approx(mean_label_entropy(IMBALANCED, [np.arange(4000)]),
                                         abs=0.05)                # near the global label mix


def test_dirichlet_min_size_is_met_by_resampling_or_refused() -> None:
    parts = dirichlet(IMBALANCED, 10, 0.1, seed=0, min_size=20)   # most draws fail this
    assert min(p.size for p in parts) >= 20
    with pytest.raises(ValueError, match="raise alpha"):
        dirichlet(IMBALANCED, 40, 0.001, seed=0, min_size=50, max_tries=5)
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet(IMBALANCED, 10, 1.0, seed=0, min_size=401)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("inf"), float("nan")])
def test_dirichlet_refuses_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        dirichlet(IMBALANCED, 2, alpha, seed=0)
