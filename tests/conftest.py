"""Shared fixtures: where the real ECG data lives, and small deterministic inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_ENV = "FEDBEAT_DATA"


def find_mitdb() -> Path | None:
    """The MIT-BIH directory named by $FEDBEAT_DATA (either the database or its parent)."""
    root = os.environ.get(DATA_ENV)
    if not root:
        return None
    for candidate in (Path(root), Path(root) / "mitdb"):
        if (candidate / "100.hea").is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def mitdb_dir() -> Path:
    """Path to the MIT-BIH Arrhythmia Database; skips the test when it is not configured."""
    path = find_mitdb()
    if path is None:
        pytest.skip(f"MIT-BIH data not found: set {DATA_ENV} to a directory holding mitdb/ "
                    "(e.g. the shared data bundle) to run this test")
    return path


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both reference models built once per test session (graphs need the ``onnx`` extra)."""
    from fedbeat.models.graph.export import build_model_dir

    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name in ("ecg-cnn-s", "ecg-cnn-m"):
        build_model_dir(name, root / name, seed=0)
        dirs[name] = root / name
    return dirs
