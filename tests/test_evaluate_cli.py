"""``fedbeat evaluate``: AAMI metrics of a model directory, trained parameters or a .tflite file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from fedbeat.models.metrics import AamiMetrics
from fedbeat.tools.cli import cli

SYNTHETIC_DS2 = ["synthetic-9", "synthetic-10", "synthetic-11"]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["evaluate", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: str) -> dict[str, Any]:
    code, out, err = run(*args, "--json")
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture(autouse=True)
def no_mitdb(monkeypatch: pytest.MonkeyPatch) -> None:
    """Synthetic patients unless a test passes --data itself."""
    monkeypatch.delenv("FEDBEAT_DATA", raising=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedbeat.models.graph.export import build_model_dir

    path = tmp_path_factory.mktemp("evaluate") / "ecg-cnn-s"
    build_model_dir("ecg-cnn-s", path, seed=0, optimizers=("sgd",))
    return path


@pytest.fixture(scope="module")
def trained_params(model_dir: Path) -> Path:
    """Parameters unlike the initial ones, written as `fedbeat model train --out` does."""
    from fedbeat.models.manifest import load_model_dir
    from fedbeat.models.params import Params

    initial = load_model_dir(model_dir).initial_params()
    noise = np.random.default_rng(0).normal(0, 0.1, initial.layout.size)
    path = model_dir.parent / "trained.bin"
    Params.from_flat(initial.layout, initial.to_flat() + noise).save(path)
    return path


def test_synthetic_json_reports_the_aami_metrics(model_dir: Path) -> None:
    result = run_json("--model-dir", str(model_dir))
    assert result["synthetic"] is True
    assert "SYNTHETIC" in result["data"]
    assert (result["split"], result["records"]) == ("ds2", SYNTHETIC_DS2)
    aami = result["aami"]
    assert aami["beats"] == sum(map(sum, aami["confusion_matrix"])) > 0
    assert set(aami["per_class"]) == {"N", "S", "V", "F", "Q"}
    assert {"macro_f1_nsvf", "macro_f1_nsv", "accuracy"} <= set(aami)


def test_table_output_says_synthetic(model_dir: Path) -> None:
    code, out, err = run("--model-dir", str(model_dir), "--records", "synthetic-9")
    assert code == 0
    assert "SYNTHETIC DATA" in err
    assert "SYNTHETIC DS2" in out
    for text in ("+P", "macro-F1 (N,S,V,F)", "macro-F1 (N,S,V)", "confusion matrix"):
        assert text in out


def test_params_file_is_what_gets_evaluated(model_dir: Path, trained_params: Path) -> None:
    from fedbeat.device.trainer import Trainer
    from fedbeat.models.manifest import load_model_dir
    from fedbeat.models.params import Params
    from fedbeat.tools.datasets import load_dataset, stack

    result = run_json("--model-dir", str(model_dir), "--params", str(trained_params),
                      "--split", "ds1", "--records", "synthetic-0,synthetic-3")
    assert result["params"] == str(trained_params)
    loaded = load_model_dir(model_dir)
    trainer = Trainer(loaded, params=Params.load(loaded.manifest.layout, trained_params))
    patients = [p for p in load_dataset(None).train if p.record in ("synthetic-0", "synthetic-3")]
    windows, rr, labels = stack(patients)
    expected = AamiMetrics.from_labels(
        labels, trainer.predict(trainer.beats(windows, rr)).argmax(axis=1))
    assert result["aami"] == expected.to_json()
    initial = run_json("--model-dir", str(model_dir), "--split", "ds1",
                       "--records", "synthetic-0,synthetic-3")
    assert initial["aami"]["confusion_matrix"] != result["aami"]["confusion_matrix"]


def test_tflite_agrees_with_onnx_runtime(model_dir: Path, trained_params: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    from fedbeat.models.manifest import load_model_dir
    from fedbeat.models.params import Params
    from fedbeat.models.tflite_export import write_tflite
    from fedbeat.models.zoo import create_architecture

    layout = load_model_dir(model_dir).manifest.layout
    tflite = model_dir.parent / "trained.tflite"
    write_tflite(create_architecture("ecg-cnn-s"), Params.load(layout, trained_params), tflite)
    args = ("--records", "synthetic-10")
    onnx = run_json("--model-dir", str(model_dir), "--params", str(trained_params), *args)
    lite = run_json("--tflite", str(tflite), *args)
    assert lite["runtime"] == "tflite"
    assert lite["aami"]["beats"] == onnx["aami"]["beats"]
    assert lite["aami"]["accuracy"] == pytest.approx(onnx["aami"]["accuracy"], abs=0.005)


def test_params_of_the_wrong_size_is_one_clear_line(model_dir: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"\0" * 40)
    code, _, err = run("--model-dir", str(model_dir), "--params", str(wrong))
    assert code == 1
    assert "--params" in err
    assert "layout needs" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_model_dir_is_one_clear_line(tmp_path: Path) -> None:
    code, _, err = run("--model-dir", str(tmp_path))
    assert code == 1
    assert "fedbeat model build" in err
    assert "Traceback" not in err


def test_unknown_record_is_named(model_dir: Path) -> None:
    code, _, err = run("--model-dir", str(model_dir), "--records", "synthetic-9,nope")
    assert code == 1
    assert "nope not in split ds2" in err
    assert "synthetic-10" in err


@pytest.mark.parametrize("args", [
    ("--split", "ds3"),
    (),                                                     # neither --model-dir nor --tflite
    ("--tflite", "{model}/params.bin", "--model-dir", "{model}"),
    ("--tflite", "{model}/params.bin", "--params", "{model}/params.bin"),
])
def test_bad_option_combinations_are_usage_errors(model_dir: Path, args: tuple[str, ...]) -> None:
    if "--tflite" not in args and "--model-dir" not in args and args:
        args = (*args, "--model-dir", "{model}")
    code, _, err = run(*(a.format(model=model_dir) for a in args))
    assert code == 2
    assert "Error" in err


@pytest.mark.mitdb
def test_mitdb_record_is_evaluated(model_dir: Path, mitdb_dir: Path) -> None:
    from fedbeat.device.ecg.mitdb import read_record_beats

    result = run_json("--model-dir", str(model_dir), "--data", str(mitdb_dir),
                      "--records", "100")
    assert result["synthetic"] is False
    assert "SYNTHETIC" not in result["data"]
    assert result["aami"]["beats"] == read_record_beats(mitdb_dir, "100").labels.size


@pytest.mark.mitdb
def test_mitdb_record_outside_the_split_is_refused(model_dir: Path, mitdb_dir: Path) -> None:
    code, _, err = run("--model-dir", str(model_dir), "--data", str(mitdb_dir),
                       "--split", "ds1", "--records", "100")
    assert code == 1
    assert "100 not in split ds1" in err
