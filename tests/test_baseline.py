"""The centralized baseline: patient-wise folds, epoch selection, the train command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedbeat.device.ecg.mitdb import DS1, patient_of
from fedbeat.tools.baseline import BaselineConfig, patient_folds
from fedbeat.tools.cli import cli


def test_folds_partition_the_records_by_patient() -> None:
    records = [*DS1, "202"]                      # 202 is 201's patient: they must stay together
    folds = patient_folds(records, 3, seed=0)
    assert sorted(r for fold in folds for r in fold) == sorted(records)
    assert len({r for fold in folds for r in fold}) == len(records)
    together = [fold for fold in folds if "201" in fold]
    assert "202" in together[0]
    sizes = [len({patient_of(r) for r in fold}) for fold in folds]
    assert max(sizes) - min(sizes) <= 1


def test_folds_are_deterministic_per_seed_and_vary_between_seeds() -> None:
    assert patient_folds(DS1, 3, seed=4) == patient_folds(DS1, 3, seed=4)
    assert patient_folds(DS1, 3, seed=4) != patient_folds(DS1, 3, seed=5)


def test_more_folds_than_patients_is_refused() -> None:
    with pytest.raises(ValueError, match="patients"):
        patient_folds(["100", "101"], 3, seed=0)
    with pytest.raises(ValueError, match="2 folds"):
        BaselineConfig(folds=1)


def test_train_command_selects_epochs_inside_the_training_split(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDBEAT_DATA", raising=False)
    out = tmp_path / "baseline"
    result = CliRunner().invoke(cli, ["train", "--model", "ecg-cnn-s", "--out", str(out),
                                      "--seeds", "0,1", "--folds", "2", "--max-epochs", "2",
                                      "--lr", "0.01,0.03", "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["synthetic"] is True
    for seed in summary["seeds"]:
        assert 1 <= seed["epochs"] <= 2
        assert len(seed["fold_val_macro_f1_nsvf"]) == 2                  # one curve per fold
        assert all(len(curve) == 2 for curve in seed["fold_val_macro_f1_nsvf"])
        by_lr = seed["mean_val_macro_f1_nsvf_by_lr"]
        assert set(by_lr) == {"0.01", "0.03"}
        best = max(max(curve) for curve in by_lr.values())             # best (lr, epoch) pair
        chosen = by_lr[str(seed["lr"])]
        assert max(chosen) == best
        assert seed["epochs"] == chosen.index(best) + 1
        assert (out / f"seed-{seed['seed']}" / "params.bin").stat().st_size == 4 * 4973
    report = summary["report"]
    assert report["split"] == "ds2"
    assert report["seeds"] == 2
    assert 0.0 <= report["macro_f1_nsvf"]["mean"] <= 1.0
    assert json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.parametrize(("option", "value"), [("--seeds", "a,b"), ("--seeds", "1,1"),
                                               ("--lr", "fast"), ("--lr", "0.01,-1")])
def test_bad_seed_or_rate_list_is_a_clear_error(tmp_path: Path, option: str, value: str) -> None:
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path), option, value])
    assert result.exit_code == 1
    assert option in result.stderr


@pytest.mark.parametrize(("field", "value"), [("weight_decay", -0.1), ("class_weight_cap", 0.5),
                                              ("average_epochs", 0)])
def test_bad_regularisation_settings_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        BaselineConfig(**{field: value})


def test_train_command_passes_regularisation_and_averaging_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDBEAT_DATA", raising=False)
    out = tmp_path / "baseline"
    result = CliRunner().invoke(cli, ["train", "--model", "ecg-cnn-s", "--out", str(out),
                                      "--seeds", "0", "--folds", "2", "--max-epochs", "3",
                                      "--weight-decay", "0.0005", "--class-weight-cap", "5",
                                      "--average-epochs", "2", "--report-split", "none",
                                      "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    seed = json.loads(result.stdout)["seeds"][0]
    assert seed["config"]["weight_decay"] == 0.0005
    assert seed["config"]["class_weight_cap"] == 5.0
    assert seed["config"]["average_epochs"] == 2
    assert all(len(curve) == 3 for curve in seed["fold_val_macro_f1_nsvf"])
