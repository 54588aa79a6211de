"""Model directories: complete builds load; corrupt, partial or foreign ones fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from fedbeat.models.manifest import MANIFEST_FILE, ModelFileError, load_model_dir


@pytest.fixture
def model_copy(model_dirs: dict[str, Path], tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model_dirs["ecg-cnn-s"], target)
    return target


def test_built_directory_loads_and_describes_itself(model_dirs: dict[str, Path]) -> None:
    loaded = load_model_dir(model_dirs["ecg-cnn-m"])
    m = loaded.manifest
    assert m.model == "ecg-cnn-m"
    assert m.opset == 17
    assert m.ir_version == 8
    assert set(m.optimizers) == {"sgd", "adam", "adamw"}
    assert {"inference", "dpsgd", "train_sgd", "apply_adamw", "params"} <= set(m.files)
    assert m.inputs.window_samples == 128
    assert len(m.inputs.rr_features) == 8
    assert m.dropout == {"head.drop": 0.3}
    assert loaded.initial_params().to_flat().size == m.num_params


def test_graphs_use_only_standard_onnx_ops(model_dirs: dict[str, Path]) -> None:
    loaded = load_model_dir(model_dirs["ecg-cnn-s"])
    for role, (name, _) in loaded.manifest.files.items():
        if not name.endswith(".onnx"):
            continue
        graph = onnx.load(loaded.path / name)
        assert graph.ir_version == 8, role
        assert [(o.domain, o.version) for o in graph.opset_import] == [("", 17)], role
        assert all(node.domain == "" for node in graph.graph.node), role


def test_tampered_graph_is_refused(model_copy: Path) -> None:
    graph = model_copy / "train_sgd.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"train_sgd\.onnx.*SHA-256"):
        load_model_dir(model_copy)


def test_missing_file_is_named(model_copy: Path) -> None:
    (model_copy / "params.bin").unlink()
    with pytest.raises(ModelFileError, match=r"params\.bin.*missing"):
        load_model_dir(model_copy)


def test_not_a_model_directory_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="fedbeat model build"):
        load_model_dir(tmp_path)


def test_malformed_manifest(model_copy: Path) -> None:
    (model_copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model_dir(model_copy)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("format_version", 99, "not supported"),
    ("layout_sha256", "0" * 64, "layout"),
    ("layout", [["x", [-1]]], "malformed"),
    ("files", {"params": {"path": "../../etc/passwd", "sha256": "0"}}, "plain file name"),
    ("model", None, None),
])
def test_manifest_fields_are_validated(model_copy: Path, field: str, value: object,
                                       message: str | None) -> None:
    path = model_copy / MANIFEST_FILE
    data = json.loads(path.read_text())
    if value is None:
        del data[field]
    else:
        data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match=message or "malformed"):
        load_model_dir(model_copy)


def test_graph_from_another_model_is_refused(model_dirs: dict[str, Path],
                                             model_copy: Path) -> None:
    shutil.copy(model_dirs["ecg-cnn-m"] / "inference.onnx", model_copy / "inference.onnx")
    with pytest.raises(ModelFileError, match="inference"):
        load_model_dir(model_copy)
