"""Shared fixtures: where the real ECG data lives, and small deterministic inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedbeat.tools.datasets import DATA_ENV, default_data_dir, find_mitdb
from fedbeat.tools.errors import UsageError


def configured_mitdb() -> Path | None:
    """The MIT-BIH directory named by $FEDBEAT_DATA, found the way the CLI finds it."""
    root = default_data_dir()
    if root is None:
        return None
    try:
        return find_mitdb(root)
    except UsageError:
        return None


@pytest.fixture(scope="session")
def mitdb_dir() -> Path:
    """Path to the MIT-BIH Arrhythmia Database; skips the test when it is not configured."""
    path = configured_mitdb()
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
