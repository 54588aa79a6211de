"""``fedbeat experiment robust`` on synthetic patients: the wiring, not the figures.

The figures come from MIT-BIH (docs/results.md). Here a small synthetic fleet checks that the
attackers really poison, that each rule is the library's and is configured for the attacker
count, and that round 1's local training is shared between variants while later rounds are not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fedbeat.device.ecg.records import RecordBeats
from fedbeat.device.ecg.synthetic import synthetic_patient
from fedbeat.models.manifest import load_model_dir
from fedbeat.models.params import Params
from fedbeat.models.zoo import create_architecture
from fedbeat.tools.cli import cli
from fedbeat.tools.robust_experiment import (
    ExperimentResult,
    RobustConfig,
    Variant,
    choose_attackers,
    poison,
    run_experiment,
)

DEVICES = 8
ROUNDS = 2
VARIANTS = [Variant("fedavg", "none"), Variant("fedavg", "scale"), Variant("median", "none"),
            Variant("median", "scale"), Variant("krum", "scale")]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> ExperimentResult:
    from fedbeat.models.graph.export import build_model_dir

    path = tmp_path_factory.mktemp("robust") / "model"
    build_model_dir("ecg-cnn-s", path, optimizers=("sgd",))
    patients = _patients()
    return run_experiment(load_model_dir(path), patients[:DEVICES], patients[DEVICES:],
                          VARIANTS, RobustConfig(rounds=ROUNDS, scale_factor=100.0))


def _patients() -> list[RecordBeats]:
    """Ten small synthetic patients: eight devices, two to test on."""
    return [synthetic_patient(seed, beats=500) for seed in range(DEVICES + 2)]


def _run(result: ExperimentResult, name: str) -> np.ndarray:
    return next(r.params for r in result.runs if r.variant.name == name)


def test_scaled_updates_throw_fedavg_far_off_while_the_median_barely_moves(
        experiment: ExperimentResult) -> None:
    """How far the ×100 attack moved each rule's global model from the same rule's clean run,
    relative to how far clean training moved it: FedAvg's attacked model is many clean runs
    away, the median's a fraction of one."""
    initial = Params.initial(create_architecture("ecg-cnn-s"), seed=0).to_flat()

    def drift(rule: str) -> float:
        clean, attacked = _run(experiment, f"{rule}/none"), _run(experiment, f"{rule}/scale")
        return float(np.linalg.norm(attacked - clean) / np.linalg.norm(clean - initial))

    # measured (synthetic seeds 0, 1): fedavg 146, 84; median 0.27, 0.26
    assert drift("fedavg") > 10.0
    assert drift("median") < 0.5
    assert drift("median") < drift("fedavg") / 20


def test_multi_krum_drops_exactly_the_attackers(experiment: ExperimentResult) -> None:
    krum = next(r for r in experiment.runs if r.variant.name == "krum/scale")
    assert len(experiment.attackers) == round(0.2 * DEVICES)
    for log in krum.rounds:
        assert log.dropped == experiment.attackers
        assert set(log.attack_factors) == set(experiment.attackers)


def test_round_one_is_trained_once_later_rounds_per_distinct_model(
        experiment: ExperimentResult) -> None:
    distinct_after_round_one = len({_run(experiment, v.name).tobytes() for v in VARIANTS})
    assert experiment.local_fits == DEVICES * ROUNDS * len(VARIANTS) - experiment.shared_fits
    assert experiment.shared_fits >= DEVICES * (len(VARIANTS) - 1)  # round 1
    assert distinct_after_round_one == len(VARIANTS)


def test_every_variant_is_scored_after_every_round(experiment: ExperimentResult) -> None:
    for run in experiment.runs:
        assert [log.round for log in run.rounds] == list(range(1, ROUNDS + 1))
        assert all(log.metrics is not None for log in run.rounds)
        assert run.final is run.rounds[-1].metrics
        assert run.final is not None
        assert run.final.total == sum(len(p.labels) for p in _patients()[DEVICES:])


def test_attackers_are_a_fixed_seeded_fifth_and_poison_stays_in_the_wire_range() -> None:
    ids = [f"{i:03d}" for i in range(22)]
    chosen = choose_attackers(ids, 0.2, seed=0)
    assert chosen == choose_attackers(ids, 0.2, seed=0) != choose_attackers(ids, 0.2, seed=1)
    assert len(chosen) == 4
    delta = np.array([0.5, -0.25, 0.0], dtype=np.float32)
    flipped, factor = poison(delta, "sign-flip", RobustConfig(flip_factor=5.0))
    assert factor == -5.0
    np.testing.assert_allclose(flipped, -5.0 * delta)
    scaled, factor = poison(delta, "scale", RobustConfig(scale_factor=1000.0))
    assert 0 < factor < 128                          # 0.5 · 128 = 64 would be refused
    assert float(np.max(np.abs(scaled))) < 64.0


def test_the_command_runs_on_synthetic_data_and_emits_json(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FEDBEAT_DATA", raising=False)
    result = CliRunner().invoke(cli, ["experiment", "robust", "--rounds", "1", "--rules",
                                      "fedavg,trimmed-mean,norm-bounded", "--attacks",
                                      "sign-flip", "--final-only", "--json", "--out",
                                      str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["synthetic"] is True
    assert [(v["rule"], v["attack"]) for v in report["variants"]] == [
        ("fedavg", "sign-flip"), ("trimmed-mean", "sign-flip"), ("norm-bounded", "sign-flip")]
    assert report["local_fits"] == len(report["devices"])       # one round: trained once
    bounded = report["variants"][2]["rounds"][0]
    assert bounded["max_norm"] == pytest.approx(bounded["median_update_norm"])
    assert all(0.0 <= v["ds2"]["accuracy"] <= 1.0 for v in report["variants"])
    assert (tmp_path / "robust.json").is_file()
    assert (tmp_path / "params-median-none.bin").exists() is False
    assert (tmp_path / "params-fedavg-sign-flip.bin").stat().st_size == 4 * 4973
