"""The model directory manifest: what files a built model has, their hashes, and its contract.

A device loads a model directory with :func:`load_model_dir`, which checks every file's
SHA-256 before anything is parsed, so a truncated copy or a graph from another build fails with
a :class:`ModelFileError` that says which file and what to do, not with an onnxruntime
traceback. Imports json, hashlib and numpy only: this is on the device path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedbeat.models.params import ParamError, ParamLayout, Params

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


class ModelFileError(Exception):
    """A model directory is missing, corrupt, or was built for something else."""


@dataclass(frozen=True)
class InputSpec:
    """How beats must be prepared for this model (see ``fedbeat.models.spec``)."""

    sample_rate_hz: int
    window_samples: int
    r_peak_index: int
    rr_features: tuple[str, ...]
    classes: tuple[str, ...]


@dataclass(frozen=True)
class ModelManifest:
    """Everything a device needs to know about a built model directory."""

    model: str
    layout: ParamLayout
    inputs: InputSpec
    files: dict[str, tuple[str, str]]  # role -> (file name, sha256 hex)
    optimizers: tuple[str, ...]
    opset: int
    ir_version: int
    seed: int
    fedbeat_version: str
    dropout: dict[str, float] = field(default_factory=dict)  # layer -> rate (training only)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return self.layout.size

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model": self.model,
            "num_params": self.num_params,
            "layout": self.layout.to_json(),
            "layout_sha256": self.layout.digest(),
            "inputs": {
                "sample_rate_hz": self.inputs.sample_rate_hz,
                "window_samples": self.inputs.window_samples,
                "r_peak_index": self.inputs.r_peak_index,
                "rr_features": list(self.inputs.rr_features),
                "classes": list(self.inputs.classes),
            },
            "files": {role: {"path": p, "sha256": h} for role, (p, h) in self.files.items()},
            "optimizers": list(self.optimizers),
            "opset": self.opset,
            "ir_version": self.ir_version,
            "seed": self.seed,
            "dropout": self.dropout,
            "fedbeat_version": self.fedbeat_version,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, data: Any) -> ModelManifest:
        """Validate and parse; raises :class:`ModelFileError` naming the bad field."""
        try:
            if data["format_version"] != FORMAT_VERSION:
                raise ModelFileError(f"manifest format {data['format_version']!r} is not "
                                     f"supported (this fedbeat reads {FORMAT_VERSION}); "
                                     "rebuild the model with this version of fedbeat")
            layout = ParamLayout.from_json(data["layout"])
            if layout.digest() != data["layout_sha256"]:
                raise ModelFileError("manifest layout does not match its layout_sha256")
            spec = data["inputs"]
            files = {str(role): (str(entry["path"]), str(entry["sha256"]))
                     for role, entry in data["files"].items()}
            for _, (path, _) in files.items():
                if Path(path).name != path:
                    raise ModelFileError(f"manifest file entry {path!r} is not a plain file name")
            return cls(
                model=str(data["model"]),
                layout=layout,
                inputs=InputSpec(int(spec["sample_rate_hz"]), int(spec["window_samples"]),
                                 int(spec["r_peak_index"]), tuple(spec["rr_features"]),
                                 tuple(spec["classes"])),
                files=files,
                optimizers=tuple(str(o) for o in data["optimizers"]),
                opset=int(data["opset"]),
                ir_version=int(data["ir_version"]),
                seed=int(data["seed"]),
                dropout={str(k): float(v) for k, v in data.get("dropout", {}).items()},
                fedbeat_version=str(data["fedbeat_version"]),
                extra=dict(data.get("extra", {})),
            )
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, ParamError) as exc:
            raise ModelFileError(f"manifest is malformed ({type(exc).__name__}: {exc})") from None

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelDir:
    """A verified model directory."""

    path: Path
    manifest: ModelManifest

    def file(self, role: str) -> Path:
        try:
            name, _ = self.manifest.files[role]
        except KeyError:
            known = ", ".join(sorted(self.manifest.files))
            raise ModelFileError(f"model {self.manifest.model!r} at {self.path} has no "
                                 f"{role!r} file (it has: {known}); rebuild it with "
                                 "`fedbeat model build`") from None
        return self.path / name

    def initial_params(self) -> Params:
        try:
            return Params.load(self.manifest.layout, self.file("params"))
        except ParamError as exc:
            raise ModelFileError(f"{self.file('params')}: {exc}") from None


def load_model_dir(path: Path) -> ModelDir:
    """Read the manifest and check every listed file against its SHA-256.

    Raises
    ------
    ModelFileError
        If the directory, manifest or a file is missing, malformed or altered.
    """
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ModelFileError(f"{path} is not a fedbeat model directory (no {MANIFEST_FILE}); "
                             "create one with `fedbeat model build --model ecg-cnn-s --out DIR`")
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{manifest_path} is not valid JSON: {exc}") from None
    manifest = ModelManifest.from_json(data)
    for role, (name, expected) in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise ModelFileError(f"{file} ({role}) is missing; copy the whole model directory "
                                 "or rebuild it")
        if sha256_file(file) != expected:
            raise ModelFileError(f"{file} ({role}) does not match the SHA-256 in the manifest: "
                                 "the file is corrupt or from another build")
    return ModelDir(path, manifest)
