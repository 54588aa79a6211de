"""Distributed DP on real MIT-BIH updates: the secure, discretised noise is the central noise.

The accuracy comparison over ten rounds is a measurement (``fedbeat experiment ddg``,
docs/results.md); this test checks the property it rests on, on real patients' updates: the
mean a DDG round decodes through SecAgg differs from the exact mean of the clipped updates by
noise with the same distribution as a trusted aggregator's Gaussian.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fedbeat.device.privacy.noise import SeededRandom
from fedbeat.device.trainer import Trainer
from fedbeat.models.manifest import load_model_dir
from fedbeat.models.params import Params
from fedbeat.models.zoo import create_architecture
from fedbeat.tools.datasets import load_dataset
from fedbeat.tools.ddg_experiment import DdgConfig, aggregate, devices_of
from fedbeat.tools.robust_experiment import RobustConfig, balanced_training

pytestmark = [pytest.mark.mitdb, pytest.mark.slow]

PATIENTS = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119")


def test_ddg_through_secagg_adds_the_central_noise_to_real_updates(
        mitdb_dir: Path, model_dirs: dict[str, Path]) -> None:
    model_dir = load_model_dir(model_dirs["ecg-cnn-s"])
    dataset = load_dataset(mitdb_dir, train_records=PATIENTS, test_records=())
    initial = Params.initial(create_architecture("ecg-cnn-s"), seed=0)
    trainer = Trainer(model_dir, threads=1, params=initial)
    devices = devices_of(dataset.train, trainer, per_patient=1)
    training = RobustConfig(rounds=1, lr=0.05)
    deltas = {d: v for d, v in balanced_training(trainer, devices, training)
              .deltas(initial.to_flat(), 0).items() if not isinstance(v, str)}
    assert len(deltas) == len(PATIENTS)
    privacy = DdgConfig(noise_multiplier=1.0, clip_norm=2.0, bits=16)
    layout = model_dir.manifest.layout
    exact = aggregate("clipped", deltas, privacy, layout, 0, 0)
    seeds = itertools.count(1)
    central = aggregate("central", deltas, privacy, layout, 0, 0,
                        source=lambda: SeededRandom(next(seeds))) - exact
    distributed = aggregate("ddg", deltas, privacy, layout, 0, 0,
                            source=lambda: SeededRandom(next(seeds))) - exact
    expected_std = privacy.noise_multiplier * privacy.clip_norm / len(deltas)
    assert float(central.std()) == pytest.approx(expected_std, rel=0.05)
    assert float(distributed.std()) == pytest.approx(expected_std, rel=0.05)
    assert abs(float(distributed.mean())) < 4 * expected_std / np.sqrt(distributed.size)
    # the same distribution, coordinate by coordinate (two-sample Kolmogorov–Smirnov)
    assert stats.ks_2samp(central, distributed).pvalue > 1e-3
    # and not the noise-free mean: the test can tell noise from no noise
    assert float(np.abs(distributed).max()) > 2 * expected_std
