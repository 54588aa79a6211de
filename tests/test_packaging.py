"""The wheel ships every source package of the repository under ``fedbeat``."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROLE_DIRS = ("aggregator", "broker", "device", "models", "tools")


def _source_packages() -> list[str]:
    names = []
    for role in ROLE_DIRS:
        for init in sorted((REPO / role).rglob("__init__.py")):
            parts = init.parent.relative_to(REPO).parts
            names.append(".".join(("fedbeat", *parts)))
    return names


def test_pyproject_lists_every_source_package() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    missing = sorted(set(_source_packages()) - listed)
    assert not missing, f"add to [tool.setuptools] packages: {missing}"


@pytest.mark.parametrize("package", _source_packages())
def test_every_source_package_is_importable_from_the_install(package: str) -> None:
    importlib.import_module(package)
