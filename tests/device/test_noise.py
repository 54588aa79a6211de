"""The DP randomness source: right distribution, from the OS CSPRNG."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedbeat.device.privacy.noise import SecureRandom, SeededRandom


def test_secure_uniform_range_and_distribution() -> None:
    u = SecureRandom().uniform(200_000)
    assert u.min() >= 0.0
    assert u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-4


@pytest.mark.parametrize("std", [0.01, 1.0, 4.0])
def test_secure_normal_matches_its_standard_deviation(std: float) -> None:
    z = SecureRandom().normal((400, 500), std)
    assert z.shape == (400, 500)
    # 200k samples: the sample std is within 1 % of sigma with overwhelming probability
    assert abs(z.std() / std - 1.0) < 0.01
    assert abs(z.mean()) < 5 * std / np.sqrt(z.size)
    assert stats.kstest(z.ravel() / std, "norm").pvalue > 1e-4


def test_secure_draws_differ_between_calls_and_odd_sizes_work() -> None:
    source = SecureRandom()
    a, b = source.normal((7,), 1.0), source.normal((7,), 1.0)
    assert a.shape == (7,)
    assert not np.array_equal(a, b)


def test_seeded_source_is_reproducible() -> None:
    assert np.array_equal(SeededRandom(3).normal((5,), 1.0), SeededRandom(3).normal((5,), 1.0))
