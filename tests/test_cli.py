"""The fedbeat command line: results as JSON, clear errors, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedbeat.tools.cli import cli


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(autouse=True)
def no_data_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests exercise the synthetic default; MIT-BIH runs are tested elsewhere."""
    monkeypatch.delenv("FEDBEAT_DATA", raising=False)


@pytest.fixture
def sgd_model(tmp_path: Path) -> Path:
    """``ecg-cnn-s`` built with the SGD graphs only (the quickest build)."""
    code, _, _ = run("model", "build", "--model", "ecg-cnn-s", "--out", str(tmp_path / "m"),
                     "--optimizer", "sgd")
    assert code == 0
    return tmp_path / "m"


def test_help_lists_every_group_and_each_one_loads() -> None:
    """Groups are imported lazily; every name in --help must still resolve to a command."""
    code, out, _ = run("--help")
    assert code == 0
    listed = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()]
    assert {"model", "bench", "simulate", "device", "aggregator"} <= set(listed)
    for name in listed:
        sub_code, sub_out, _ = run(name, "--help")
        assert sub_code == 0, name
        assert "Usage:" in sub_out


def test_model_list_json() -> None:
    code, out, _ = run("model", "list", "--json")
    rows = {r["model"]: r["params"] for r in json.loads(out)}
    assert code == 0
    assert rows["ecg-cnn-s"] <= 10_000
    assert 30_000 <= rows["ecg-cnn-m"] <= 100_000


def test_build_info_train_round_trip(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    code, out, _ = run("model", "build", "--model", "ecg-cnn-s", "--out", str(model_dir),
                       "--optimizer", "sgd", "--json")
    assert code == 0
    assert json.loads(out)["num_params"] == 4973
    code, out, _ = run("model", "info", str(model_dir), "--json")
    assert code == 0
    assert json.loads(out)["optimizers"] == ["sgd"]
    code, out, _ = run("model", "train", str(model_dir), "--epochs", "1", "--json",
                       "--out", str(tmp_path / "trained.bin"))
    summary = json.loads(out)
    assert code == 0
    assert summary["synthetic"] is True
    assert "SYNTHETIC" in summary["data"]
    assert summary["loss_last"] < summary["loss_first"]
    assert summary["aami"]["beats"] == summary["test_beats"]
    assert summary["aami"]["accuracy"] == summary["test_accuracy"]
    assert (tmp_path / "trained.bin").stat().st_size == 4 * 4973


def test_train_prints_the_aami_metrics(sgd_model: Path) -> None:
    code, out, err = run("model", "train", str(sgd_model), "--epochs", "1")
    assert code == 0
    assert "SYNTHETIC DATA" in err
    for text in ("SYNTHETIC test set", "+P", "macro-F1 (N,S,V,F)", "confusion matrix"):
        assert text in out


def test_unknown_model_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run("model", "build", "--model", "nope", "--out", str(tmp_path))
    assert code == 2
    assert "ecg-cnn-s" in err


def test_broken_model_dir_is_one_clear_line(tmp_path: Path) -> None:
    code, _, err = run("model", "info", str(tmp_path))
    assert code == 1
    assert "fedbeat model build" in err
    assert "Traceback" not in err


def test_optimizer_not_built_is_explained(sgd_model: Path) -> None:
    code, _, err = run("model", "train", str(sgd_model), "--optimizer", "adam")
    assert code == 1
    assert "without optimizer 'adam'" in err


def test_missing_data_dir_is_explained(sgd_model: Path, tmp_path: Path) -> None:
    code, _, err = run("model", "train", str(sgd_model), "--data", str(tmp_path))
    assert code == 1
    assert "no MIT-BIH records" in err


def test_build_with_tflite_writes_a_model_the_device_runner_loads(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    import numpy as np

    from fedbeat.device.tflite_model import TFLiteModel

    code, out, _ = run("model", "build", "--model", "ecg-cnn-s", "--out", str(tmp_path / "m"),
                       "--optimizer", "sgd", "--tflite", "--json")
    assert code == 0
    assert json.loads(out)["tflite"] == "model.tflite"
    probs = TFLiteModel(tmp_path / "m" / "model.tflite").predict(
        np.zeros((3, 128), dtype=np.float32), np.ones((3, 8), dtype=np.float32))
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
