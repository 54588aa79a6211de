"""The distributed discrete Gaussian: exact sampler, lossless ring encoding, honest accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedbeat.broker.secagg import ring
from fedbeat.broker.secagg.loopback import run_round
from fedbeat.broker.secagg.params import RoundContext
from fedbeat.device.privacy import discrete_gaussian
from fedbeat.device.privacy.accountant import epsilon_from_rdp, rdp_gaussian
from fedbeat.device.privacy.ddg import DdgEncoder, DdgParams
from fedbeat.device.privacy.ddg_accounting import ddg_epsilon, ddg_rdp, tau
from fedbeat.device.privacy.noise import SeededRandom


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.5, 12.0])
def test_sampler_matches_the_exact_discrete_gaussian_by_chi_square(sigma: float) -> None:
    samples = discrete_gaussian.sample(sigma, 60_000, SeededRandom(int(sigma * 10)))
    radius = math.ceil(4 * sigma) + 1
    support = np.arange(-radius, radius + 1)
    expected = discrete_gaussian.pmf(sigma, support) * samples.size
    observed = np.array([np.count_nonzero(samples == x) for x in support], dtype=np.float64)
    tails = samples.size - observed.sum()                 # beyond ±radius, pooled
    expected_tails = samples.size - expected.sum()
    keep = expected >= 5
    observed_bins = np.append(observed[keep], tails + observed[~keep].sum())
    expected_bins = np.append(expected[keep], expected_tails + expected[~keep].sum())
    _, p_value = stats.chisquare(observed_bins, expected_bins)
    assert p_value > 1e-3


def test_sampler_rejects_a_continuous_gaussian_rounded_to_integers() -> None:
    """The chi-square test has power: a rounded N(0, σ²) at small σ does not pass as N_Z."""
    sigma = 0.4
    rounded = np.rint(np.random.default_rng(0).normal(0, sigma, 60_000)).astype(int)
    support = np.arange(-2, 3)
    expected = discrete_gaussian.pmf(sigma, support) * rounded.size
    observed = np.array([np.count_nonzero(rounded == x) for x in support], dtype=np.float64)
    _, p_value = stats.chisquare(observed, expected * observed.sum() / expected.sum())
    assert p_value < 1e-6


def test_sampler_output_is_integer_and_zero_noise_is_zero() -> None:
    assert discrete_gaussian.sample(3.0, 10, SeededRandom(1)).dtype == np.int64
    assert not discrete_gaussian.sample(0.0, 10, SeededRandom(1)).any()
    with pytest.raises(ValueError, match="sigma"):
        discrete_gaussian.sample(math.nan, 10, SeededRandom(1))


PARAMS = DdgParams(dim=1000, clip_norm=1.0, noise_multiplier=1.0, min_devices=8,
                   max_devices=10, bits=16)


def test_rotation_is_orthogonal_and_invertible() -> None:
    encoder = DdgEncoder(PARAMS, b"seed")
    x = np.random.default_rng(1).normal(size=PARAMS.dim)
    rotated = encoder.rotate(x)
    assert rotated.size == PARAMS.padded_dim == 1024
    assert math.isclose(float(np.linalg.norm(rotated)), float(np.linalg.norm(x)), rel_tol=1e-12)
    np.testing.assert_allclose(encoder.unrotate(rotated), x, atol=1e-12)
    assert not np.allclose(DdgEncoder(PARAMS, b"other").rotate(x), rotated)


def test_rotation_flattens_a_spike() -> None:
    spike = np.zeros(PARAMS.dim)
    spike[3] = 1.0
    rotated = DdgEncoder(PARAMS, b"s").rotate(spike)
    assert float(np.abs(rotated).max()) <= 1 / math.sqrt(PARAMS.block) + 1e-12


def _updates(count: int, seed: int) -> list[np.ndarray]:
    """Correlated updates, as in a real round: one shared direction plus device noise."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=PARAMS.dim)
    return [common / np.linalg.norm(common) * rng.uniform(0.5, 3.0)
            + rng.normal(0, 0.02, PARAMS.dim) for _ in range(count)]


def _clipped(update: np.ndarray, clip: float) -> np.ndarray:
    return update * min(1.0, clip / float(np.linalg.norm(update)))


def test_noiseless_encoding_decodes_to_the_clipped_sum_up_to_rounding() -> None:
    params = DdgParams(dim=1000, clip_norm=1.0, noise_multiplier=0.0, min_devices=10,
                       max_devices=10, bits=20)
    encoder = DdgEncoder(params, b"r1")
    updates = _updates(10, seed=2)
    total = np.zeros(params.padded_dim, dtype=np.uint32)
    for update in updates:
        total = (total + encoder.encode(update, SeededRandom(len(update)))) & np.uint32(2**20 - 1)
    exact = sum(_clipped(u, 1.0) for u in updates)
    error = encoder.decode_sum(total) - exact
    # stochastic rounding: 10 devices, each coordinate off by at most γ, unbiased
    assert float(np.abs(error).max()) <= 10 * params.granularity
    assert abs(float(error.mean())) < params.granularity


def test_noisy_encoding_through_secagg_has_the_central_noise_level() -> None:
    encoder = DdgEncoder(PARAMS, b"r2")
    updates = _updates(10, seed=3)
    inputs = {f"d{i}": encoder.encode(u, SeededRandom(i)) for i, u in enumerate(updates)}
    context = RoundContext("f", 1, PARAMS.padded_dim, PARAMS.bits)
    result = run_round(inputs, context, min_participants=8, drop={"share": {"d0", "d1"}})
    assert len(result.contributors) == 8
    decoded = encoder.decode_sum(result.vector)
    exact = sum(_clipped(u, 1.0) for u in updates[2:])
    noise_std = float((decoded - exact).std())
    # 8 devices × σ² = z²c²: the survivors carry the whole central noise
    assert noise_std == pytest.approx(PARAMS.noise_multiplier * PARAMS.clip_norm, rel=0.1)


def test_the_ring_holds_the_sum_of_max_devices_without_wrapping() -> None:
    encoder = DdgEncoder(PARAMS, b"r3")
    updates = [np.full(PARAMS.dim, 1.0)] * PARAMS.max_devices     # all aligned: worst case
    total = np.zeros(PARAMS.padded_dim, dtype=np.int64)
    for i, update in enumerate(updates):
        total += ring.centered(encoder.encode(update, SeededRandom(i)), PARAMS.bits)
    assert int(np.abs(total).max()) < 2 ** (PARAMS.bits - 1)


def test_conditional_rounding_respects_the_norm_bound_of_the_analysis() -> None:
    encoder = DdgEncoder(PARAMS.__class__(**{**PARAMS.__dict__, "noise_multiplier": 0.0}),
                         b"r4")
    update = _updates(1, seed=4)[0]
    signed = ring.centered(encoder.encode(update, SeededRandom(5)), PARAMS.bits)
    bound = encoder.params.rounded_norm_bound / encoder.params.granularity
    assert float(np.linalg.norm(signed)) <= bound


def test_ddg_epsilon_approaches_the_central_gaussian_and_grows_with_fewer_survivors() -> None:
    params = DdgParams(dim=4973, clip_norm=1.0, noise_multiplier=1.1, min_devices=16,
                       max_devices=22, bits=20)
    central = epsilon_from_rdp(rdp=rdp_gaussian(noise_multiplier=1.1) * 20, delta=1e-5)[0]
    distributed = ddg_epsilon(params, [16] * 20, delta=1e-5)
    assert central <= distributed <= central * 1.01
    assert ddg_epsilon(params, [22] * 20, delta=1e-5) < distributed
    assert ddg_epsilon(params, [16] * 10, delta=1e-5) < distributed


def test_too_little_integer_noise_is_charged_by_tau() -> None:
    assert tau(0.2, 50) > 1.0
    assert tau(5.0, 50) < 1e-100
    base = {"dim": 100, "clip_norm": 1.0, "noise_multiplier": 0.1, "min_devices": 50,
            "max_devices": 50}
    coarse, fine = DdgParams(**base, bits=11), DdgParams(**base, bits=20)  # type: ignore[arg-type]
    share = coarse.local_stddev / coarse.granularity
    assert 0.5 <= share < 1.0                          # under a ring step per device
    charged = ddg_rdp(coarse, 50, [2.0])[0] - ddg_rdp(fine, 50, [2.0])[0]
    assert tau(share, 50) > 0.01
    assert charged >= tau(share, 50) * coarse.padded_dim    # Theorem 1's τ·d term is there
    # below half a step per device the theorem does not apply: no finite guarantee
    too_coarse = DdgParams(**base, bits=10)  # type: ignore[arg-type]
    assert too_coarse.local_stddev / too_coarse.granularity < 0.5
    assert np.isinf(ddg_rdp(too_coarse, 50)).all()
    assert np.isinf(ddg_rdp(DdgParams(dim=10, clip_norm=1.0, noise_multiplier=0.0, min_devices=2,
                                      max_devices=2), 2)).all()


@pytest.mark.parametrize(("changes", "message"), [
    ({"bits": 24}, "bits"), ({"bits": 4, "max_devices": 1000}, "more bits"),
    ({"clip_norm": 0.0}, "clip_norm"), ({"min_devices": 11}, "min_devices"),
    ({"noise_multiplier": -1.0}, "noise_multiplier"),
])
def test_bad_parameters_are_refused_with_a_reason(changes: dict[str, object],
                                                  message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DdgParams(**{**PARAMS.__dict__, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [20, 12, 8])
def test_device_ledger_charge_bounds_the_ddg_rdp_at_every_order(bits: int) -> None:
    from fedbeat.device.privacy.accountant import DEFAULT_ORDERS, RdpAccountant
    from fedbeat.device.privacy.ddg_accounting import equivalent_noise_multiplier
    from fedbeat.device.privacy.ledger import Spend

    params = DdgParams(dim=4973, clip_norm=1.0, noise_multiplier=1.2, min_devices=11,
                       max_devices=22, bits=bits)
    sigma_eq = equivalent_noise_multiplier(params, params.min_devices)
    accountant = RdpAccountant()
    Spend("7", "ddg", sigma_eq).charge(accountant)
    charged = accountant.rdp()
    # the ledger protects any change of the patient's data: twice the add/remove sensitivity,
    # four times the RDP of Theorem 1
    assert np.all(charged >= 4 * ddg_rdp(params, params.min_devices, DEFAULT_ORDERS) - 1e-12)
    # and it is not wildly loose: at fine granularity it is the central Gaussian's charge
    if bits == 20:
        np.testing.assert_allclose(charged, rdp_gaussian(noise_multiplier=0.6), rtol=1e-3)


def test_privacy_ddg_command_matches_the_central_gaussian_and_refuses_bad_flags() -> None:
    import json

    from click.testing import CliRunner

    from fedbeat.tools.cli import cli

    result = CliRunner().invoke(cli, ["privacy", "ddg", "--sigma", "1", "--rounds", "20",
                                      "--min-devices", "11", "--devices", "22", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["sum_noise_multiplier"] == pytest.approx(math.sqrt(2))
    assert doc["epsilon"] == pytest.approx(doc["epsilon_central_gaussian"], rel=1e-3)
    assert doc["ledger_noise_multiplier"] == pytest.approx(1.0, rel=1e-3)
    for bad in (["--sigma", "0", "--min-devices", "5"],
                ["--sigma", "1", "--min-devices", "5", "--devices", "3"],
                ["--sigma", "1", "--min-devices", "1000", "--bits", "4"]):
        refused = CliRunner().invoke(cli, ["privacy", "ddg", *bad])
        assert refused.exit_code != 0
        assert "Error" in refused.output
        assert "Traceback" not in refused.output
