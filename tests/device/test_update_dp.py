"""Update-level DP: global clipping and Gaussian noise of the right size, from a RandomSource."""

from __future__ import annotations

import numpy as np
import pytest

from fedbeat.device.privacy.noise import SecureRandom, SeededRandom
from fedbeat.device.privacy.update_dp import clip_and_noise, clip_update, global_l2_norm


def _update(scale: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)          # test data only, not noise
    return {"conv.weight": (scale * rng.standard_normal((8, 1, 5))).astype(np.float32),
            "conv.bias": (scale * rng.standard_normal(8)).astype(np.float32),
            "fc.weight": (scale * rng.standard_normal((5, 40))).astype(np.float32)}


@pytest.mark.parametrize("scale", [0.3, 3.0, 1e4])
def test_clipping_bounds_the_global_norm(scale: float) -> None:
    update = _update(scale)
    clipped, norm = clip_update(update, clip_norm=1.0)
    assert norm == pytest.approx(global_l2_norm(update))
    assert norm > 1.0
    assert global_l2_norm(clipped) <= 1.0
    assert global_l2_norm(clipped) == pytest.approx(1.0, rel=1e-5)
    ratio = clipped["fc.weight"] / update["fc.weight"]
    assert np.allclose(ratio, ratio.flat[0], rtol=1e-5)          # one scale for all tensors
    assert np.allclose(clipped["conv.bias"] / update["conv.bias"], ratio.flat[0], rtol=1e-5)


def test_an_update_within_the_bound_is_unchanged() -> None:
    update = _update(0.001)
    clipped, norm = clip_update(update, clip_norm=1.0)
    assert norm < 1.0
    for name, value in update.items():
        assert np.array_equal(clipped[name], value)
        assert clipped[name].dtype == np.float32


def test_noise_std_is_sigma_times_c() -> None:
    update = {"w": np.zeros((500, 400), np.float32), "b": np.zeros(1000, np.float32)}
    out = clip_and_noise(update, clip_norm=0.5, noise_multiplier=1.3, rng=SeededRandom(7))
    noise = np.concatenate([v.ravel() for v in out.tensors.values()]).astype(np.float64)
    assert out.pre_clip_norm == 0.0
    assert not out.clipped
    assert noise.std() == pytest.approx(1.3 * 0.5, rel=0.01)
    assert abs(noise.mean()) < 5 * 0.65 / np.sqrt(noise.size)
    again = clip_and_noise(update, clip_norm=0.5, noise_multiplier=1.3, rng=SeededRandom(7))
    assert all(np.array_equal(again.tensors[k], out.tensors[k]) for k in update)


def test_secure_noise_by_default_and_shapes_kept() -> None:
    update = _update(10.0)
    a = clip_and_noise(update, clip_norm=1.0, noise_multiplier=1.0)
    b = clip_and_noise(update, clip_norm=1.0, noise_multiplier=1.0, rng=SecureRandom())
    assert a.clipped
    assert a.pre_clip_norm == pytest.approx(global_l2_norm(update))
    for name, value in update.items():
        assert a.tensors[name].shape == value.shape
        assert a.tensors[name].dtype == np.float32
        assert not np.array_equal(a.tensors[name], b.tensors[name])
    assert all(np.array_equal(v, _update(10.0)[k]) for k, v in update.items())   # input untouched


def test_zero_sigma_only_clips() -> None:
    update = _update(5.0)
    out = clip_and_noise(update, clip_norm=2.0, noise_multiplier=0.0)
    clipped, _ = clip_update(update, clip_norm=2.0)
    assert all(np.array_equal(out.tensors[k], clipped[k]) for k in update)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"clip_norm": 0.0, "noise_multiplier": 1.0}, "clip_norm"),
    ({"clip_norm": float("inf"), "noise_multiplier": 1.0}, "clip_norm"),
    ({"clip_norm": 1.0, "noise_multiplier": -1.0}, "noise_multiplier"),
])
def test_bad_parameters_are_refused(kwargs: dict[str, float], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        clip_and_noise(_update(1.0), **kwargs)


def test_non_finite_or_empty_updates_are_refused() -> None:
    update = _update(1.0)
    update["conv.bias"][0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        clip_and_noise(update, clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="no tensors"):
        clip_and_noise({}, clip_norm=1.0, noise_multiplier=1.0)
