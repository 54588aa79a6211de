"""Five hundred steps on real MIT-BIH beats lower the loss (needs $FEDBEAT_DATA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedbeat.device.ecg.mitdb import read_record_beats
from fedbeat.device.privacy.noise import SeededRandom
from fedbeat.device.trainer import DpSgdConfig, TrainConfig, Trainer

RECORDS = ("106", "118", "119", "207", "208", "209", "223")   # DS1 records rich in S and V


@pytest.fixture(scope="module")
def real_beats(mitdb_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    records = [read_record_beats(mitdb_dir, r) for r in RECORDS]
    return (np.concatenate([r.windows for r in records]), np.concatenate([r.rr for r in records]),
            np.concatenate([r.labels for r in records]))


@pytest.mark.mitdb
@pytest.mark.slow
@pytest.mark.parametrize("model", ["ecg-cnn-s", "ecg-cnn-m"])
def test_training_on_real_beats_lowers_the_loss(model_dirs: dict[str, Path], model: str,
                                                real_beats: tuple[np.ndarray, ...]) -> None:
    windows, rr, labels = real_beats
    rng = np.random.default_rng(0)
    # 500 steps: at 300, ecg-cnn-s at lr 0.05 sometimes sits on a plateau (1 of 5 seeds
    # measured); at 500 every seed measured ends below half its starting loss.
    pick = rng.choice(labels.size, size=500 * 32, replace=False)
    trainer = Trainer(model_dirs[model])
    beats = trainer.beats(windows[pick], rr[pick], labels[pick])
    # Unweighted loss: class weights make the loss itself noisy, and this checks learning.
    result = trainer.fit(beats, TrainConfig(epochs=1, batch_size=32, lr=0.05))
    assert result.steps == 500
    assert result.losses[-50:].mean() < 0.6 * result.losses[:50].mean()
    # and the model separates V from N on these patients
    predicted = trainer.predict(beats).argmax(axis=1)
    v = labels[pick] == 2
    assert (predicted[v] == 2).mean() > 0.8


@pytest.mark.mitdb
@pytest.mark.slow
def test_dpsgd_on_real_beats_still_learns(model_dirs: dict[str, Path],
                                          real_beats: tuple[np.ndarray, ...]) -> None:
    windows, rr, labels = real_beats
    trainer = Trainer(model_dirs["ecg-cnn-s"])
    beats = trainer.beats(windows, rr, labels)
    config = TrainConfig(epochs=2, batch_size=128, lr=0.2, momentum=0.5)
    result = trainer.fit(beats, config, dp=DpSgdConfig(noise_multiplier=1.0, clip_norm=1.0),
                         noise=SeededRandom(0))
    losses = result.losses[np.isfinite(result.losses)]
    assert result.dp is not None
    assert result.dp.steps == 2 * round(len(beats) / 128)
    assert 0 < (result.clipped_fraction or 0) < 1
    assert losses[-20:].mean() < 0.8 * losses[:20].mean()
