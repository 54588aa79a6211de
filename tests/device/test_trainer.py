"""The device trainer: learning, reproducibility, batching, DP-SGD bounds, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedbeat.device.beats import Beats, InvalidBeatsError
from fedbeat.device.ecg.synthetic import synthetic_patient
from fedbeat.device.privacy.noise import SeededRandom
from fedbeat.device.trainer import DpSgdConfig, TrainConfig, Trainer, TrainingDivergedError
from fedbeat.models.manifest import MANIFEST_FILE, ModelFileError, sha256_file


@pytest.fixture(scope="module")
def patient() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = synthetic_patient(7, beats=400)
    return p.windows, p.rr, p.labels


def _beats(trainer: Trainer, patient: tuple[np.ndarray, np.ndarray, np.ndarray],
           n: int | None = None) -> Beats:
    w, r, y = patient
    return trainer.beats(w[:n], r[:n], y[:n])


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_fit_lowers_the_loss(model_dirs: dict[str, Path], patient: tuple[np.ndarray, ...],
                             optimizer: str) -> None:
    trainer = Trainer(model_dirs["ecg-cnn-s"])
    lr = 0.05 if optimizer == "sgd" else 3e-3
    result = trainer.fit(_beats(trainer, patient),
                         TrainConfig(epochs=4, batch_size=32, lr=lr, optimizer=optimizer))
    first, last = result.losses[:10].mean(), result.losses[-10:].mean()
    assert last < 0.6 * first, (first, last)
    assert np.array_equal(trainer.params.to_flat(), result.params.to_flat())


def test_fit_is_reproducible_from_the_seed(model_dirs: dict[str, Path],
                                           patient: tuple[np.ndarray, ...]) -> None:
    def run(seed: int) -> np.ndarray:
        trainer = Trainer(model_dirs["ecg-cnn-m"])
        return trainer.fit(_beats(trainer, patient, 128),
                           TrainConfig(epochs=1, batch_size=32, seed=seed)).params.to_flat()

    assert np.array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_final_partial_batch_is_trained(model_dirs: dict[str, Path],
                                        patient: tuple[np.ndarray, ...]) -> None:
    trainer = Trainer(model_dirs["ecg-cnn-s"])
    result = trainer.fit(_beats(trainer, patient, 70), TrainConfig(epochs=2, batch_size=32))
    assert result.steps == 6                      # 32 + 32 + 6 per epoch
    assert result.examples_seen == 140
    assert np.all(np.isfinite(result.losses))


def test_update_is_new_minus_start(model_dirs: dict[str, Path],
                                   patient: tuple[np.ndarray, ...]) -> None:
    trainer = Trainer(model_dirs["ecg-cnn-s"])
    start = trainer.params.to_flat()
    result = trainer.fit(_beats(trainer, patient, 64), TrainConfig(epochs=1))
    np.testing.assert_array_equal(result.update.to_flat(), result.params.to_flat() - start)
    assert np.linalg.norm(result.update.to_flat()) > 0


def test_fedprox_pulls_towards_the_global_model(model_dirs: dict[str, Path],
                                                patient: tuple[np.ndarray, ...]) -> None:
    def drift(mu: float) -> float:
        trainer = Trainer(model_dirs["ecg-cnn-s"])
        result = trainer.fit(_beats(trainer, patient),
                             TrainConfig(epochs=3, lr=0.05, fedprox_mu=mu))
        return float(np.linalg.norm(result.update.to_flat()))

    assert drift(1.0) < 0.8 * drift(0.0)


def test_dpsgd_steps_are_bounded_by_the_clipping_norm(model_dirs: dict[str, Path],
                                                      patient: tuple[np.ndarray, ...]) -> None:
    """With sigma = 0 and plain SGD, each step moves at most lr * |B| * C / (q n)."""
    trainer = Trainer(model_dirs["ecg-cnn-s"])
    beats = _beats(trainer, patient, 200)
    clip, lr, q = 1e-3, 0.5, 0.25
    result = trainer.fit(beats, TrainConfig(epochs=1, lr=lr, momentum=0.0),
                         dp=DpSgdConfig(noise_multiplier=0.0, clip_norm=clip, sample_rate=q),
                         noise=SeededRandom(0))
    assert result.dp is not None
    assert result.dp.steps == 4
    assert result.dp.sample_rate == q
    assert result.clipped_fraction == 1.0           # every gradient is far above 1e-3
    bound = result.steps * lr * clip * len(beats) / (q * len(beats))
    assert 0 < np.linalg.norm(result.update.to_flat()) <= bound


def test_dpsgd_noise_scales_with_the_multiplier(model_dirs: dict[str, Path],
                                                patient: tuple[np.ndarray, ...]) -> None:
    def update_norm(sigma: float) -> float:
        trainer = Trainer(model_dirs["ecg-cnn-s"])
        config = TrainConfig(epochs=1, lr=0.1, momentum=0.0)
        dp = DpSgdConfig(noise_multiplier=sigma, clip_norm=0.1, sample_rate=0.5)
        result = trainer.fit(_beats(trainer, patient, 100), config, dp=dp, noise=SeededRandom(1))
        return float(np.linalg.norm(result.update.to_flat()))

    # Pure noise on ~5k coordinates: norm ~ steps^0.5 * lr * sigma * C * sqrt(d) / (q n)
    quiet, loud = update_norm(0.0), update_norm(50.0)
    expected = np.sqrt(2) * 0.1 * 50.0 * 0.1 * np.sqrt(4973) / 50
    assert loud > 5 * quiet
    assert 0.7 * expected < loud < 1.3 * expected


def test_predict_returns_probabilities(model_dirs: dict[str, Path],
                                       patient: tuple[np.ndarray, ...]) -> None:
    trainer = Trainer(model_dirs["ecg-cnn-m"])
    probs = trainer.predict(_beats(trainer, patient, 50))
    assert probs.shape == (50, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    w, r, _ = patient
    assert trainer.predict(trainer.beats(w[:0], r[:0])).shape == (0, 5)


@pytest.mark.parametrize(("change", "message"), [
    (lambda w, r, y: (w[:, :100], r, y), "windows must have shape"),
    (lambda w, r, y: (np.where(np.arange(w.shape[1]) == 3, np.nan, w), r, y), "NaN"),
    (lambda w, r, y: (w, r[:, :5], y), "rr must have shape"),
    (lambda w, r, y: (w, r, y + 5), "class indices"),
    (lambda w, r, y: (w, r, y.astype(np.float32)), "integers"),
    (lambda w, r, y: (w.astype(str), r, y), "numeric"),
])
def test_bad_beats_are_refused_with_a_reason(model_dirs: dict[str, Path],
                                             patient: tuple[np.ndarray, ...],
                                             change: object, message: str) -> None:
    trainer = Trainer(model_dirs["ecg-cnn-s"])
    w, r, y = (a[:10] for a in patient)
    with pytest.raises(InvalidBeatsError, match=message):
        trainer.beats(*change(w, r, y))  # type: ignore[operator]


def test_training_needs_labels(model_dirs: dict[str, Path],
                               patient: tuple[np.ndarray, ...]) -> None:
    trainer = Trainer(model_dirs["ecg-cnn-s"])
    w, r, _ = patient
    with pytest.raises(InvalidBeatsError, match="labelled"):
        trainer.fit(trainer.beats(w[:10], r[:10]), TrainConfig())


@pytest.mark.parametrize("kwargs", [
    {"optimizer": "rmsprop"}, {"epochs": 0}, {"lr": 0.0}, {"lr": float("nan")},
    {"class_weight": (0.0,) * 5}, {"momentum": -1.0},
])
def test_bad_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is checked by the CLI tests
        TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_graph_built_for_another_model_is_refused(model_dirs: dict[str, Path],
                                                  tmp_path: Path,
                                                  patient: tuple[np.ndarray, ...]) -> None:
    """Even with a manifest re-hashed to match, a foreign graph fails before training."""
    target = tmp_path / "mixed"
    shutil.copytree(model_dirs["ecg-cnn-s"], target)
    shutil.copy(model_dirs["ecg-cnn-m"] / "train_sgd.onnx", target / "train_sgd.onnx")
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    manifest["files"]["train_sgd"]["sha256"] = sha256_file(target / "train_sgd.onnx")
    (target / MANIFEST_FILE).write_text(json.dumps(manifest))
    trainer = Trainer(target)
    with pytest.raises(ModelFileError, match="another model"):
        trainer.fit(_beats(trainer, patient, 10), TrainConfig())


def test_divergence_is_reported_not_returned(model_dirs: dict[str, Path],
                                             patient: tuple[np.ndarray, ...]) -> None:
    trainer = Trainer(model_dirs["ecg-cnn-s"])
    before = trainer.params.to_flat()
    with pytest.raises(TrainingDivergedError, match="lower the learning rate"):
        trainer.fit(_beats(trainer, patient, 64), TrainConfig(epochs=3, lr=1e30))
    np.testing.assert_array_equal(trainer.params.to_flat(), before)   # nothing half-applied
