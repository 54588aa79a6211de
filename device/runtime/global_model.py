"""The global model a device runs: verified on arrival, swapped atomically, previous kept.

A model message is accepted only after its signature (the receive path), its body (layout,
length, SHA-256, finite values: :mod:`fedbeat.broker.model_body`) and its graph hashes (it must
belong to the graphs this device runs) check out, and only if its version is newer. The new
parameters are written to a temporary file, fsynced and renamed over ``current``; the old ones
become ``previous``. If the new model then fails its smoke test (non-finite outputs on stored
beats), the device rolls back to ``previous``. On start, a corrupt ``current`` falls back to
``previous``, then to the model directory's initial parameters (version 0).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from fedbeat.models.params import ParamError, ParamLayout, Params

log = logging.getLogger("fedbeat.device")


def _write_durable(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class GlobalModel:
    """``directory`` holds ``current.bin``/``.json`` and ``previous.bin``/``.json``."""

    def __init__(self, directory: Path, layout: ParamLayout, initial: Params) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        self.layout = layout
        self.version = 0
        self.params = initial
        for slot in ("current", "previous"):
            loaded = self._load(slot)
            if loaded is not None:
                self.version, self.params = loaded
                if slot == "previous":
                    log.warning("current model unreadable; running the previous one "
                                "(v%d)", self.version)
                break

    def _load(self, slot: str) -> tuple[int, Params] | None:
        meta_path, bin_path = self.directory / f"{slot}.json", self.directory / f"{slot}.bin"
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            raw = bin_path.read_bytes()
            if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
                raise ValueError("hash mismatch")
            params = Params.from_flat(self.layout, np.frombuffer(raw, "<f4"))
            return int(meta["version"]), params
        except (OSError, ValueError, KeyError, TypeError, ParamError) as exc:
            log.error("model file %s is corrupt (%s); ignoring it", bin_path, exc)
            return None

    def install(self, version: int, params: Params, *, allow_older: bool = False) -> bool:
        """Make ``params`` current if ``version`` is newer (or, with ``allow_older``, different);
        the old model becomes previous."""
        if version == self.version or (version < self.version and not allow_older):
            return False
        raw = params.to_flat().astype("<f4").tobytes()
        current_bin, current_meta = self.directory / "current.bin", self.directory / "current.json"
        if current_meta.exists():
            os.replace(current_bin, self.directory / "previous.bin")
            os.replace(current_meta, self.directory / "previous.json")
        _write_durable(current_bin, raw)
        _write_durable(current_meta, json.dumps(
            {"version": version, "sha256": hashlib.sha256(raw).hexdigest()}).encode())
        self.version, self.params = version, params
        return True

    def roll_back(self) -> bool:
        """Return to the previous model (after a failed smoke test); False if there is none."""
        previous = self._load("previous")
        if previous is None:
            return False
        os.replace(self.directory / "previous.bin", self.directory / "current.bin")
        os.replace(self.directory / "previous.json", self.directory / "current.json")
        self.version, self.params = previous
        return True
