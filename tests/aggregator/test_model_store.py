"""The model registry: versions only grow, rollbacks copy bits, crashes and corruption are safe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedbeat.aggregator import model_store
from fedbeat.aggregator.model_store import (
    CURRENT_FILE,
    PARAMS_FILE,
    TFLITE_FILE,
    VERSION_FILE,
    VERSIONS_DIR,
    ModelStore,
    ModelStoreError,
    VersionReason,
    history_command,
    rollback_command,
)
from fedbeat.models.manifest import load_model_dir
from fedbeat.models.params import Params
from fedbeat.models.zoo import create_architecture

MODEL = "ecg-cnn-s"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One built model directory (ONNX graphs + manifest) for the whole module."""
    from fedbeat.models.graph.export import build_model_dir

    path = tmp_path_factory.mktemp("model") / MODEL
    build_model_dir(MODEL, path, seed=0, optimizers=("sgd",))
    return path


@pytest.fixture
def store(tmp_path: Path, model_dir: Path) -> ModelStore:
    opened = ModelStore.open(tmp_path / "registry", model_dir, now=lambda: 1_700_000_000.5)
    opened.initialize()
    return opened


def perturbed(store: ModelStore, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = store.current().params
    return (base + rng.normal(0.0, 0.01, base.shape)).astype(np.float32)


def entries(store: ModelStore) -> list[str]:
    return sorted(p.name for p in (store.root / VERSIONS_DIR).iterdir())


# --------------------------------------------------------------------------- semantics

def test_initialize_takes_the_model_directory_params_once(store: ModelStore,
                                                          model_dir: Path) -> None:
    first = store.current()
    assert (first.version, first.parent, first.reason) == (1, None, VersionReason.INITIAL)
    expected = load_model_dir(model_dir).initial_params().to_flat()
    assert first.params.tobytes() == expected.tobytes()
    assert first.created_at_ms == 1_700_000_000_500
    again = store.initialize(seed=99)              # idempotent: history is never rewritten
    assert again.version == 1
    assert store.versions() == [1]


def test_initialize_from_a_seed(tmp_path: Path, model_dir: Path) -> None:
    store = ModelStore.open(tmp_path / "r", model_dir)
    version = store.initialize(seed=5)
    expected = Params.initial(create_architecture(MODEL), seed=5).to_flat()
    assert version.params.tobytes() == expected.tobytes()


def test_commit_current_history_get(store: ModelStore) -> None:
    vectors = [perturbed(store, seed) for seed in range(3)]
    for round_id, vector in enumerate(vectors, start=1):
        made = store.commit(vector, round_id=round_id, metrics={"macro_f1": 0.5 + round_id})
        assert made.version == round_id + 1
        assert made.parent == round_id
    current = store.current()
    assert current.version == 4
    assert current.round_id == 3
    assert current.reason is VersionReason.ROUND
    assert dict(current.metrics) == {"macro_f1": 3.5}
    assert current.params.tobytes() == vectors[-1].tobytes()
    assert [v.version for v in store.history()] == [1, 2, 3, 4]
    assert store.get(2).params.tobytes() == vectors[0].tobytes()
    with pytest.raises(ValueError, match="read-only"):
        current.params[0] = 1.0                    # read-only: a published model stays put


def test_rollback_is_a_new_version_with_identical_bits(store: ModelStore) -> None:
    store.commit(perturbed(store, 1), round_id=1, metrics={"macro_f1": 0.6})
    store.commit(perturbed(store, 2), round_id=2)
    back = store.rollback(2, reason_note="round 2 was poisoned")
    source = store.get(2)
    assert back.version == 4
    assert back.parent == 3
    assert back.reason is VersionReason.ROLLBACK
    assert back.source_version == 2
    assert back.note == "round 2 was poisoned"
    assert back.round_id is None
    assert back.params.tobytes() == source.params.tobytes()
    assert back.params_sha256 == source.params_sha256
    assert (back.path / PARAMS_FILE).read_bytes() == (source.path / PARAMS_FILE).read_bytes()
    assert store.current().version == 4
    again = store.rollback(1)
    assert again.version == 5                      # versions only grow
    assert [v.version for v in store.history()] == [1, 2, 3, 4, 5]


def test_rollback_refuses_unknown_versions(store: ModelStore) -> None:
    for bad in (0, 7, -1):
        with pytest.raises(ModelStoreError, match=r"not in the registry|positive integers"):
            store.rollback(bad)
    assert store.current().version == 1


def test_commit_refuses_bad_params_and_metrics(store: ModelStore) -> None:
    good = perturbed(store, 0)
    nan = good.copy()
    nan[3] = np.nan
    with pytest.raises(ModelStoreError, match="NaN"):
        store.commit(nan, round_id=1)
    with pytest.raises(ModelStoreError, match="shape"):
        store.commit(good[:-1], round_id=1)
    with pytest.raises(ModelStoreError, match="not finite"):
        store.commit(good, round_id=1, metrics={"loss": float("inf")})
    with pytest.raises(ModelStoreError, match="round id"):
        store.commit(good, round_id=-1)
    assert store.versions() == [1]
    assert entries(store) == ["1"]


def test_empty_registry_explains_itself(tmp_path: Path, model_dir: Path) -> None:
    store = ModelStore.open(tmp_path / "r", model_dir)
    with pytest.raises(ModelStoreError, match="empty"):
        store.current()
    with pytest.raises(ModelStoreError, match="empty"):
        store.commit(np.zeros(store.layout.size, np.float32), round_id=1)


def test_retention_keeps_the_newest_and_never_the_current(tmp_path: Path,
                                                          model_dir: Path) -> None:
    store = ModelStore.open(tmp_path / "r", model_dir, keep=3)
    store.initialize()
    for round_id in range(1, 6):
        store.commit(perturbed(store, round_id), round_id=round_id)
    assert store.versions() == [4, 5, 6]
    assert entries(store) == ["4", "5", "6"]
    with pytest.raises(ModelStoreError, match="not in the registry"):
        store.get(2)
    single = ModelStore.open(tmp_path / "r", model_dir, keep=1)
    single.rollback(4)
    assert single.versions() == [7]


# --------------------------------------------------------------------------- crash safety

@pytest.mark.parametrize("failing_call", [1, 2])
def test_a_failed_replace_leaves_the_old_version_current(
        store: ModelStore, monkeypatch: pytest.MonkeyPatch, failing_call: int) -> None:
    """Call 1 renames the version directory into place, call 2 replaces CURRENT."""
    real_replace = os.replace
    calls = {"n": 0}

    def flaky(src: object, dst: object) -> None:
        calls["n"] += 1
        if calls["n"] == failing_call:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(model_store.os, "replace", flaky)
    with pytest.raises(OSError, match="No space"):
        store.commit(perturbed(store, 0), round_id=1)
    monkeypatch.setattr(model_store.os, "replace", real_replace)
    assert store.current().version == 1
    assert entries(store) == ["1"]                 # no temp dir, no uncommitted version
    assert store.commit(perturbed(store, 1), round_id=1).version == 2


def test_a_failed_write_leaves_no_temp_dir(store: ModelStore,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_store.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        store.commit(perturbed(store, 0), round_id=1)
    monkeypatch.undo()
    assert entries(store) == ["1"]
    assert store.current().version == 1


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    from pathlib import Path
    from fedbeat.aggregator import model_store
    from fedbeat.aggregator.model_store import ModelStore

    root, model_dir, target, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = ModelStore.open(Path(root), Path(model_dir))
    real = getattr(os, target)
    calls = [0]

    def crash(*args):
        calls[0] += 1
        if calls[0] == nth:
            os._exit(9)                      # no cleanup, no finally: as close to kill -9
        return real(*args)

    setattr(model_store.os, target, crash)
    params = store.current().params + np.float32(0.001)
    store.commit(params, round_id=7)
    os._exit(0)
""")


@pytest.mark.parametrize(("target", "nth", "expect"), [
    ("fsync", 1, 1),        # while writing params.bin into the temp directory
    ("fsync", 4, 1),        # after the files, before the directory rename
    ("replace", 1, 1),      # the rename of the version directory into place
    ("replace", 2, 1),      # the replace of CURRENT (new directory exists, not current)
    ("fsync", 7, 2),        # after CURRENT was replaced: the new version is current
])
def test_a_killed_commit_leaves_old_or_new_never_half(store: ModelStore, model_dir: Path,
                                                      target: str, nth: int,
                                                      expect: int) -> None:
    result = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(store.root),
                             str(model_dir), target, str(nth)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 9, result.stderr
    reopened = ModelStore.open(store.root, model_dir)
    current = reopened.current()                   # verifies every file
    assert current.version == expect
    assert entries(reopened) == [str(v) for v in range(1, expect + 1)]
    assert not list(store.root.glob("*.tmp"))
    assert reopened.commit(perturbed(reopened, 3), round_id=8).version == expect + 1


def test_open_removes_what_a_crash_leaves(store: ModelStore, model_dir: Path) -> None:
    versions = store.root / VERSIONS_DIR
    (versions / ".tmp-2-deadbeef").mkdir()
    (versions / ".tmp-2-deadbeef" / PARAMS_FILE).write_bytes(b"\0" * 10)
    shutil.copytree(versions / "1", versions / ".trash-1-cafe")
    shutil.copytree(versions / "1", versions / "2")         # renamed, CURRENT not yet updated
    (store.root / f"{CURRENT_FILE}.tmp").write_text("2\n")
    reopened = ModelStore.open(store.root, model_dir)
    assert entries(reopened) == ["1"]
    assert not (store.root / f"{CURRENT_FILE}.tmp").exists()
    assert reopened.current().version == 1


def test_a_garbled_current_file_is_a_clear_error(store: ModelStore, model_dir: Path) -> None:
    (store.root / CURRENT_FILE).write_text("two\n")
    with pytest.raises(ModelStoreError, match="version number"):
        ModelStore.open(store.root, model_dir)


# --------------------------------------------------------------------------- corruption

def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [PARAMS_FILE, TFLITE_FILE])
def test_a_flipped_bit_is_refused(store: ModelStore, name: str) -> None:
    store.commit(perturbed(store, 0), round_id=1)
    path = store.root / VERSIONS_DIR / "2" / name
    if not path.exists():
        pytest.skip("no TFLite file without the 'tflite' extra")
    flip_byte(path)
    with pytest.raises(ModelStoreError, match=f"version 2 is corrupt: .*{name}"):
        store.current()
    with pytest.raises(ModelStoreError, match="corrupt"):
        store.rollback(2)
    assert store.get(1).version == 1               # the others are still readable


def test_a_file_changed_after_loading_is_caught_before_use(store: ModelStore) -> None:
    version = store.current()
    flip_byte(version.path / PARAMS_FILE)
    with pytest.raises(ModelStoreError, match="corrupt"):
        version.read_file(PARAMS_FILE)


def test_version_json_is_checked(store: ModelStore) -> None:
    meta_path = store.root / VERSIONS_DIR / "1" / VERSION_FILE
    meta = json.loads(meta_path.read_text())
    meta_path.write_text("{not json")
    with pytest.raises(ModelStoreError, match="not valid JSON"):
        store.current()
    meta_path.write_text(json.dumps({**meta, "layout_digest": "0" * 64}))
    with pytest.raises(ModelStoreError, match="another parameter layout"):
        store.current()
    meta_path.write_text(json.dumps({**meta, "version": 3}))
    with pytest.raises(ModelStoreError, match="says version 3"):
        store.current()
    meta_path.write_text(json.dumps({**meta, "reason": "whim"}))
    with pytest.raises(ModelStoreError, match="whim"):
        store.current()
    meta_path.unlink()
    with pytest.raises(ModelStoreError, match="missing"):
        store.current()


def test_history_command_reports_a_corrupt_version_without_hiding_others(
        store: ModelStore, model_dir: Path) -> None:
    store.commit(perturbed(store, 0), round_id=1, metrics={"macro_f1": 0.5})
    store.commit(perturbed(store, 1), round_id=2)
    flip_byte(store.root / VERSIONS_DIR / "2" / PARAMS_FILE)
    rows = history_command(store.root, model_dir)
    assert [row["version"] for row in rows] == [1, 2, 3]
    assert "corrupt" in rows[1]["error"]
    assert "error" not in rows[0]
    assert [row["current"] for row in rows] == [False, False, True]
    assert rows[0]["reason"] == "initial"
    assert rows[2]["round_id"] == 2
    json.dumps(rows)                               # --json ready


def test_rollback_command(store: ModelStore, model_dir: Path) -> None:
    store.commit(perturbed(store, 0), round_id=1)
    row = rollback_command(store.root, model_dir, 1, note="bad round")
    assert (row["version"], row["source_version"], row["reason"]) == (3, 1, "rollback")
    with pytest.raises(ModelStoreError, match="already current"):
        rollback_command(store.root, model_dir, 3)
    with pytest.raises(ModelStoreError, match="not in the registry"):
        rollback_command(store.root, model_dir, 9)


# --------------------------------------------------------------------------- TFLite

def test_tflite_matches_onnxruntime_on_the_same_params(store: ModelStore,
                                                       model_dir: Path) -> None:
    pytest.importorskip("ai_edge_litert", reason="needs the 'tflite' extra")
    from fedbeat.device.tflite_model import TFLiteModel
    from fedbeat.device.trainer import Trainer

    version = store.commit(perturbed(store, 4), round_id=1)
    assert version.tflite_absent is None
    assert version.tflite_path is not None
    params = Params.from_flat(store.layout, version.params)
    trainer = Trainer(model_dir, params=params)
    rng = np.random.default_rng(0)
    manifest = store.model_dir.manifest
    windows = rng.standard_normal((16, 1, manifest.inputs.window_samples)).astype(np.float32)
    rr = rng.uniform(0.2, 2.0, (16, len(manifest.inputs.rr_features))).astype(np.float32)
    want = trainer.predict(trainer.beats(windows, rr))
    got = TFLiteModel(version.tflite_path).predict(windows, rr)
    assert float(np.max(np.abs(got - want))) <= 1e-5
    # The weights are baked in: another version's file gives other outputs.
    other = TFLiteModel(store.get(1).read_file(TFLITE_FILE)).predict(windows, rr)
    assert float(np.max(np.abs(other - want))) > 1e-4


def test_tflite_absence_is_recorded(store: ModelStore,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fedbeat.models.tflite_export", None)
    version = store.commit(perturbed(store, 0), round_id=1)
    assert version.tflite_path is None
    assert version.tflite_absent is not None
    assert "fedbeat[tflite]" in version.tflite_absent
    assert set(version.files) == {PARAMS_FILE}
    assert store.current().to_json()["tflite"] is False
