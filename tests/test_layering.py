"""The device path stays lean: no onnx, torch, TensorFlow or aggregator code on a wearable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fedbeat

PACKAGE_ROOT = Path(fedbeat.__file__).parent
FORBIDDEN_ON_DEVICE = ("onnx", "torch", "tensorflow", "fedbeat.aggregator", "fedbeat.tools")
DEVICE_MODULES = (
    "fedbeat.device.trainer",
    "fedbeat.device.tflite_model",
    "fedbeat.device.ecg.rr",
    "fedbeat.models.manifest",
    "fedbeat.models.params",
    "fedbeat.models.zoo",
)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE_ROOT / "device").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE_ROOT)))
def test_device_sources_import_nothing_forbidden(path: Path) -> None:
    bad = [name for name in _imports(path)
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_ON_DEVICE)]
    assert not bad, f"{path.name} imports {bad}"


def test_importing_the_device_path_loads_no_heavy_framework() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in DEVICE_MODULES)
        + "heavy = [m for m in ('onnx', 'torch', 'tensorflow') if m in sys.modules]\n"
        + "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"device path imported: {out.stdout.strip()}"


def test_installed_wheel_has_no_generic_top_level_packages() -> None:
    import importlib.util

    for generic in ("models", "device", "tools", "broker", "aggregator"):
        spec = importlib.util.find_spec(generic)
        assert spec is None or "site-packages" not in str(spec.origin or ""), generic
    assert (PACKAGE_ROOT / "py.typed").is_file()


def test_the_cli_starts_without_onnx_or_torch() -> None:
    """A device install has neither: every command module must import them lazily."""
    code = ("import sys\nimport fedbeat.tools.cli\n"
            "print(','.join(m for m in ('onnx', 'torch', 'tensorflow', 'wfdb', 'amqtt') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing the CLI loaded: {out.stdout.strip()}"
