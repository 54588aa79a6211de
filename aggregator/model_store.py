"""The aggregator's on-disk model registry: every global model it ever served, versioned.

Why a registry and not one ``params.bin``: a bad round (poisoned updates that slipped through,
a learning rate that diverged) must be undoable without losing the history that shows what
happened, and a device must never see a model version go backwards. So versions only grow:
``rollback`` writes a *new* version whose parameters equal an old one's bit for bit.

Layout under ``root``::

    root/versions/<N>/params.bin     flat little-endian float32 (``fedbeat.models.params``)
    root/versions/<N>/model.tflite   the TFLite model with these weights baked in (only when the
                                     'tflite' extra is importable; its absence is recorded)
    root/versions/<N>/version.json   metadata and the SHA-256 of every file above
    root/CURRENT                     the current version number
    root/published.json              what the last ``publish_model`` left retained on the broker
    root/LOCK                        flock(2) held while the registry changes

Crash safety (``kill -9`` at any instant leaves the old or the new version current, never a
half-written one): a version is written into ``versions/.tmp-<N>-<random>``, every file and the
directory are fsynced, the directory is renamed to ``versions/<N>`` and only then is ``CURRENT``
replaced (tmp + fsync + ``os.replace`` + fsync of ``root``). :meth:`ModelStore.open` removes what
a crash can leave behind: temp directories, half-deleted versions and a version directory newer
than ``CURRENT`` (renamed into place, never made current, so never published).

Every read recomputes the SHA-256 of every file of the version and refuses a mismatch with
:class:`ModelStoreError`: the registry is what the aggregator signs and publishes, so a flipped
bit on disk must stop publication instead of reaching a fleet under a valid signature.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from fedbeat.models.manifest import MANIFEST_FILE, ModelDir, load_model_dir, sha256_file
from fedbeat.models.params import ParamError, ParamLayout, Params

FORMAT_VERSION = 1
"""Format of ``version.json``; a reader refuses any other."""

VERSIONS_DIR = "versions"
CURRENT_FILE = "CURRENT"
PUBLISHED_FILE = "published.json"
LOCK_FILE = "LOCK"
PARAMS_FILE = "params.bin"
TFLITE_FILE = "model.tflite"
VERSION_FILE = "version.json"
MAX_VERSION = 2**53 - 1          # the envelope's model_version bound (broker.envelope.MAX_ROUND)
MAX_NOTE_CHARS = 500
MAX_METRICS = 64

_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ModelStoreError(Exception):
    """The model registry is missing, corrupt, or was asked for something it cannot do.

    The message names the version and file and says what to do; it is meant for the operator.
    """


class VersionReason(StrEnum):
    """Why a version exists (``version.json`` field ``reason``)."""

    INITIAL = "initial"      # the starting model, from the model directory or a seed
    ROUND = "round"          # aggregated from a round's updates
    ROLLBACK = "rollback"    # a copy of an earlier version (``source_version``)


@dataclass(frozen=True, eq=False)
class ModelVersion:
    """One verified version of the global model.

    ``params`` is the flat float32 vector in the layout of the store's model directory; it is
    read-only so that no caller can change a published model in memory by accident.
    """

    version: int
    parent: int | None
    params: np.ndarray
    params_sha256: str
    created_at_ms: int
    round_id: int | None
    reason: VersionReason
    source_version: int | None
    note: str
    metrics: Mapping[str, float]
    files: Mapping[str, str]                 # file name -> SHA-256 hex
    model: str
    layout_digest: str
    model_manifest_sha256: str
    tflite_absent: str | None                # why there is no model.tflite, else None
    path: Path = field(repr=False)

    @property
    def tflite_path(self) -> Path | None:
        """The verified ``model.tflite`` of this version, or ``None`` if it has none."""
        return self.path / TFLITE_FILE if TFLITE_FILE in self.files else None

    def read_file(self, name: str) -> bytes:
        """A file of this version, re-checked against its SHA-256 (it may have changed since).

        Raises
        ------
        ModelStoreError
            If the version has no such file or its content no longer matches.
        """
        if name not in self.files:
            raise ModelStoreError(f"model version {self.version} has no {name}")
        path = self.path / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelStoreError(f"{path}: cannot read ({exc.strerror})") from None
        if hashlib.sha256(data).hexdigest() != self.files[name]:
            raise ModelStoreError(_corrupt(self.version, path))
        return data

    def to_json(self) -> dict[str, Any]:
        """A summary for ``--json`` output and logs (no parameters)."""
        return {"version": self.version, "parent": self.parent,
                "created_at_ms": self.created_at_ms, "round_id": self.round_id,
                "reason": self.reason.value, "source_version": self.source_version,
                "note": self.note, "metrics": dict(self.metrics),
                "params_sha256": self.params_sha256, "model": self.model,
                "tflite": self.tflite_absent is None, "tflite_absent": self.tflite_absent}


def _corrupt(version: int, path: Path) -> str:
    return (f"model version {version} is corrupt: {path} does not match the SHA-256 in its "
            f"version.json; do not publish it - restore the directory from a backup or roll "
            f"back to another version (`fedbeat aggregator rollback VERSION`)")


# ------------------------------------------------------------------------------ file helpers

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content.

    tmp file + fsync + ``os.replace`` + fsync of the directory (the rename itself must be
    durable, or a power loss can bring the old name back).
    """
    tmp = path.with_name(f"{path.name}.tmp")
    _write_durable(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _remove_tree(path: Path) -> None:
    """Delete a version directory so that a crash never leaves it half-deleted under its name:
    rename it to a trash name first (``open`` finishes what a crash interrupted)."""
    trash = path.with_name(f"{_TRASH_PREFIX}{path.name}-{secrets.token_hex(4)}")
    os.replace(path, trash)
    _fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _validate_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if not isinstance(key, str) or not key or len(key) > 64:
            raise ModelStoreError(f"metric names must be non-empty strings of at most 64 "
                                  f"characters, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating,
                                                             np.integer)):
            raise ModelStoreError(f"metric {key!r} must be a number, got {type(value).__name__}")
        number = float(value)
        if not math.isfinite(number):
            raise ModelStoreError(f"metric {key!r} is not finite ({number})")
        out[key] = number
    if len(out) > MAX_METRICS:
        raise ModelStoreError(f"at most {MAX_METRICS} metrics per version, got {len(out)}")
    return out


# ------------------------------------------------------------------------------ version.json

def _field(data: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], where: str,
           *, nullable: bool = False) -> Any:
    if key not in data:
        raise ModelStoreError(f"{where}: missing field {key!r}")
    value = data[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ModelStoreError(f"{where}: field {key!r} has the wrong type")
    if not isinstance(value, kinds):
        raise ModelStoreError(f"{where}: field {key!r} has the wrong type")
    return value


class ModelStore:
    """The versioned registry of global models under ``root`` (see the module docstring).

    Use :meth:`open`. Reads are safe while another process commits (they see the old or the new
    version); changes (commit, rollback, pruning, clean-up) hold an exclusive ``flock`` on
    ``root/LOCK``, so a ``fedbeat aggregator rollback`` and a running service cannot both take
    the same version number.

    Parameters
    ----------
    root
        The registry directory (created if missing).
    model_dir
        The built model directory (``fedbeat model build``) whose layout every version has; its
        manifest is verified on open.
    keep
        Keep at most this many versions (oldest pruned first, the current one never); ``None``
        keeps all.
    now
        The clock (seconds since the Unix epoch), a parameter so tests can fix it.
    """

    def __init__(self, root: Path, model_dir: ModelDir, *, keep: int | None = None,
                 now: Callable[[], float] = time.time) -> None:
        if keep is not None and keep < 1:
            raise ModelStoreError(f"keep must be at least 1 (or unset to keep every version), "
                                  f"got {keep}")
        self.root = root
        self.model_dir = model_dir
        self.keep = keep
        self.now = now
        self.layout: ParamLayout = model_dir.manifest.layout
        self.layout_digest = self.layout.digest()
        self.manifest_sha256 = sha256_file(model_dir.path / MANIFEST_FILE)
        self._thread_lock = threading.Lock()

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, root: Path, model_dir: Path, *, keep: int | None = None,
             now: Callable[[], float] = time.time) -> ModelStore:
        """Open (creating if needed) the registry at ``root`` for the model at ``model_dir``.

        Cleans up what an interrupted commit or prune can leave (see the module docstring).

        Raises
        ------
        ModelStoreError
            If ``root`` cannot be used or ``CURRENT`` is unreadable.
        ModelFileError
            If ``model_dir`` is not a valid model directory.
        """
        store = cls(Path(root), load_model_dir(Path(model_dir)), keep=keep, now=now)
        try:
            (store.root / VERSIONS_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelStoreError(f"cannot create the model registry at {root}: "
                                  f"{exc.strerror}") from None
        with store._locked():
            store._recover()
        return store

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, (self.root / LOCK_FILE).open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _recover(self) -> None:
        versions = self.root / VERSIONS_DIR
        current = self._read_current()
        for entry in versions.iterdir():
            if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.isdigit() and int(entry.name) > current:
                _remove_tree(entry)       # renamed into place, never current: a crashed commit
        stale_tmp = self.root / f"{CURRENT_FILE}.tmp"
        stale_tmp.unlink(missing_ok=True)
        _fsync_dir(versions)

    def _read_current(self) -> int:
        path = self.root / CURRENT_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelStoreError(f"{path} is unreadable ({exc}); it should hold the current "
                                  f"version number") from None
        if not re.fullmatch(r"[1-9][0-9]{0,15}\n?", text):
            raise ModelStoreError(f"{path} does not hold a version number ({text[:20]!r}); "
                                  f"write the highest directory number under {VERSIONS_DIR}/ "
                                  f"into it")
        return int(text)

    # -- reading -------------------------------------------------------------------------

    def current_version(self) -> int:
        """The current version number, 0 for an empty registry (no verification)."""
        return self._read_current()

    def is_empty(self) -> bool:
        return self._read_current() == 0

    def versions(self) -> list[int]:
        """Version numbers on disk, ascending (pruned ones are gone)."""
        current = self._read_current()
        found = [int(entry.name) for entry in (self.root / VERSIONS_DIR).iterdir()
                 if entry.name.isdigit() and entry.is_dir()]
        return sorted(v for v in found if v <= current)

    def current(self) -> ModelVersion:
        """The current version, verified.

        Raises
        ------
        ModelStoreError
            If the store is empty (call :meth:`initialize`) or the version is corrupt.
        """
        current = self._read_current()
        if current == 0:
            raise ModelStoreError(f"the model registry at {self.root} is empty; start the "
                                  f"aggregator once (or call ModelStore.initialize) to create "
                                  f"version 1")
        return self.get(current)

    def get(self, version: int) -> ModelVersion:
        """Version ``version``, with every file checked against its SHA-256.

        Raises
        ------
        ModelStoreError
            If it does not exist (never did, or was pruned), is corrupt, or was made for
            another model layout.
        """
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ModelStoreError(f"model versions are positive integers, got {version!r}")
        current = self._read_current()
        path = self.root / VERSIONS_DIR / str(version)
        if version > current or not path.is_dir():
            known = self.versions()
            span = f"{known[0]}-{known[-1]}" if known else "none"
            raise ModelStoreError(f"model version {version} is not in the registry at "
                                  f"{self.root} (versions on disk: {span})")
        return self._load(version, path)

    def history(self) -> list[ModelVersion]:
        """Every version on disk, oldest first, each verified (raises on the first corrupt one;
        :func:`history_command` reports them one by one instead)."""
        return [self.get(v) for v in self.versions()]

    def _load(self, version: int, path: Path) -> ModelVersion:
        meta_path = path / VERSION_FILE
        where = str(meta_path)
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise ModelStoreError(f"model version {version} is corrupt: {meta_path} is "
                                  f"missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelStoreError(f"model version {version} is corrupt: {meta_path} is not "
                                  f"valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise ModelStoreError(f"{where}: must be a JSON object")
        if _field(meta, "format_version", int, where) != FORMAT_VERSION:
            raise ModelStoreError(f"{where}: format {meta['format_version']!r} is not supported "
                                  f"(this fedbeat reads {FORMAT_VERSION})")
        if _field(meta, "version", int, where) != version:
            raise ModelStoreError(f"{where}: says version {meta['version']}, directory is "
                                  f"{version}")
        files = _field(meta, "files", dict, where)
        if PARAMS_FILE not in files or not set(files) <= {PARAMS_FILE, TFLITE_FILE}:
            raise ModelStoreError(f"{where}: files must list {PARAMS_FILE} (and optionally "
                                  f"{TFLITE_FILE})")
        for name, digest in files.items():
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise ModelStoreError(f"{where}: bad SHA-256 for {name}")
            file = path / name
            if not file.is_file():
                raise ModelStoreError(f"model version {version} is corrupt: {file} is missing")
            if sha256_file(file) != digest:
                raise ModelStoreError(_corrupt(version, file))
        layout_digest = _field(meta, "layout_digest", str, where)
        model = _field(meta, "model", str, where)
        if layout_digest != self.layout_digest:
            raise ModelStoreError(
                f"model version {version} was made for model {model!r} with another parameter "
                f"layout than {self.model_dir.manifest.model!r} at {self.model_dir.path}; "
                f"point the aggregator at the model directory this registry was created with")
        raw = (path / PARAMS_FILE).read_bytes()
        try:
            params = Params.from_flat(self.layout, np.frombuffer(raw, dtype="<f4")).to_flat()
        except (ParamError, ValueError) as exc:
            raise ModelStoreError(f"model version {version}: {PARAMS_FILE} is unusable "
                                  f"({exc})") from None
        params.flags.writeable = False
        tflite_absent = _field(meta, "tflite_absent", str, where, nullable=True)
        if (tflite_absent is None) != (TFLITE_FILE in files):
            raise ModelStoreError(f"{where}: tflite_absent and files disagree")
        metrics = _field(meta, "metrics", dict, where)
        try:
            metrics = _validate_metrics(metrics)
            reason = VersionReason(_field(meta, "reason", str, where))
        except (ModelStoreError, ValueError) as exc:
            raise ModelStoreError(f"{where}: {exc}") from None
        return ModelVersion(
            version=version,
            parent=_field(meta, "parent", int, where, nullable=True),
            params=params,
            params_sha256=files[PARAMS_FILE],
            created_at_ms=_field(meta, "created_at_ms", int, where),
            round_id=_field(meta, "round_id", int, where, nullable=True),
            reason=reason,
            source_version=_field(meta, "source_version", int, where, nullable=True),
            note=_field(meta, "note", str, where),
            metrics=MappingProxyType(metrics),
            files=MappingProxyType(dict(files)),
            model=model,
            layout_digest=layout_digest,
            model_manifest_sha256=_field(meta, "model_manifest_sha256", str, where),
            tflite_absent=tflite_absent,
            path=path,
        )

    # -- writing -------------------------------------------------------------------------

    def initialize(self, params: Params | None = None, *, seed: int | None = None) -> ModelVersion:
        """Create version 1 if the registry is empty; otherwise return the current version.

        Idempotent, so the service can call it on every start. The parameters are ``params``
        if given, else a fresh initialisation with ``seed`` if given, else the model
        directory's own ``params.bin`` (what every device starts from too). On a non-empty
        registry both arguments are ignored: the history is never rewritten.
        """
        with self._locked():
            if self._read_current() != 0:
                return self.current()
            if params is None and seed is not None:
                from fedbeat.models.zoo import create_architecture

                params = Params.initial(create_architecture(self.model_dir.manifest.model),
                                        seed=seed)
            if params is None:
                params = self.model_dir.initial_params()
            return self._append(self._as_params(params), parent=None, round_id=None,
                                reason=VersionReason.INITIAL, metrics={}, note="")

    def commit(self, params_flat: np.ndarray | Params, *, round_id: int | None,
               metrics: Mapping[str, float] | None = None, note: str = "") -> ModelVersion:
        """Store the aggregate of a round as version N+1 and make it current.

        A crash at any point leaves version N or N+1 current, never a partial one (see the
        module docstring).

        Parameters
        ----------
        params_flat
            The new global parameters, flat float32 in the model's layout (or ``Params``).
        round_id
            The round that produced them.
        metrics
            Scalars to keep with the version (e.g. server-side validation macro-F1).

        Raises
        ------
        ModelStoreError
            On an empty registry, parameters that do not fit the layout or are not finite,
            or bad metrics.
        """
        metrics = _validate_metrics(metrics)
        params = self._as_params(params_flat)
        with self._locked():
            parent = self._read_current()
            if parent == 0:
                raise ModelStoreError("the model registry is empty: initialize it first")
            version = self._append(params, parent=parent, round_id=round_id,
                                   reason=VersionReason.ROUND, metrics=metrics, note=note)
            self._prune()
        return version

    def rollback(self, version: int, *, reason_note: str = "") -> ModelVersion:
        """Make ``version``'s parameters current again, as a *new* version N+1.

        Version numbers only grow, so a device that holds N never sees a lower number and
        always installs the rollback; ``source_version`` records where the parameters came
        from, and they are copied bit for bit (the file, not a re-encoding). The metrics are
        the source's (they describe these parameters); ``round_id`` is ``None``.

        Raises
        ------
        ModelStoreError
            If ``version`` does not exist (or was pruned) or is corrupt.
        """
        with self._locked():
            source = self.get(version)
            parent = self._read_current()
            params = Params.from_flat(self.layout, source.params)
            new = self._append(params, parent=parent, round_id=None,
                               reason=VersionReason.ROLLBACK, metrics=dict(source.metrics),
                               note=reason_note, source_version=source.version)
            if new.params_sha256 != source.params_sha256:      # a bit changed on the way
                raise ModelStoreError(f"rollback copy of version {version} differs from it")
            self._prune()
        return new

    def _as_params(self, params: np.ndarray | Params) -> Params:
        if isinstance(params, Params):
            if params.layout != self.layout:
                raise ModelStoreError("parameters have another layout than the model directory "
                                      f"{self.model_dir.path}")
            params = params.to_flat()
        try:
            return Params.from_flat(self.layout, np.asarray(params))
        except ParamError as exc:
            raise ModelStoreError(f"cannot store these parameters: {exc}") from None

    def _tflite(self, params: Params) -> tuple[bytes | None, str | None]:
        """(file content, None) or (None, why there is none)."""
        try:
            from fedbeat.models.tflite_export import TFLiteExportError, export_tflite
            from fedbeat.models.zoo import UnknownModelError, create_architecture
        except ImportError as exc:
            return None, (f"the 'tflite' extra is not installed ({exc.name} missing): "
                          f"pip install 'fedbeat[tflite]'")
        try:
            arch = create_architecture(self.model_dir.manifest.model)
            return export_tflite(arch, params), None
        except (UnknownModelError, TFLiteExportError) as exc:
            return None, f"TFLite export failed: {exc}"

    def _append(self, params: Params, *, parent: int | None, round_id: int | None,
                reason: VersionReason, metrics: dict[str, float], note: str,
                source_version: int | None = None) -> ModelVersion:
        """Write version ``current + 1`` and make it current; the caller holds the lock."""
        if len(note) > MAX_NOTE_CHARS:
            raise ModelStoreError(f"notes are at most {MAX_NOTE_CHARS} characters")
        if round_id is not None and (isinstance(round_id, bool) or not 0 <= round_id
                                     <= MAX_VERSION):
            raise ModelStoreError(f"round id must be a non-negative integer, got {round_id!r}")
        number = self._read_current() + 1
        if number > MAX_VERSION:
            raise ModelStoreError("the registry has run out of version numbers")
        versions = self.root / VERSIONS_DIR
        final = versions / str(number)
        tmp = versions / f"{_TMP_PREFIX}{number}-{secrets.token_hex(4)}"
        raw = params.to_flat().astype("<f4").tobytes()
        tflite_bytes, tflite_absent = self._tflite(params)
        try:
            tmp.mkdir()
            files = {PARAMS_FILE: hashlib.sha256(raw).hexdigest()}
            _write_durable(tmp / PARAMS_FILE, raw)
            if tflite_bytes is not None:
                _write_durable(tmp / TFLITE_FILE, tflite_bytes)
                files[TFLITE_FILE] = hashlib.sha256(tflite_bytes).hexdigest()
            meta = {
                "format_version": FORMAT_VERSION,
                "version": number,
                "parent": parent,
                "created_at_ms": int(self.now() * 1000),
                "round_id": round_id,
                "reason": reason.value,
                "source_version": source_version,
                "note": note,
                "metrics": metrics,
                "files": files,
                "layout_digest": self.layout_digest,
                "model": self.model_dir.manifest.model,
                "model_manifest_sha256": self.manifest_sha256,
                "tflite_absent": tflite_absent,
            }
            _write_durable(tmp / VERSION_FILE,
                           (json.dumps(meta, indent=2, allow_nan=False) + "\n").encode())
            _fsync_dir(tmp)
            os.replace(tmp, final)
            _fsync_dir(versions)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            write_atomic(self.root / CURRENT_FILE, f"{number}\n".encode())
        except BaseException:
            # CURRENT still names the old version; drop the new one so the next commit can
            # take its number (open() does the same after a crash here).
            if self._read_current() != number:
                _remove_tree(final)
            raise
        return self._load(number, final)

    def _prune(self) -> None:
        if self.keep is None:
            return
        current = self._read_current()
        old = [v for v in self.versions() if v != current]
        for version in old[:max(0, len(old) - (self.keep - 1))]:
            _remove_tree(self.root / VERSIONS_DIR / str(version))

    # -- publication record ----------------------------------------------------------------

    def read_published(self) -> dict[str, Any]:
        """What the last publication left retained on the broker (see ``model_message``):
        ``{"version": int, "whole": bool, "chunks": int}``; all zero/false if none."""
        path = self.root / PUBLISHED_FILE
        empty: dict[str, Any] = {"version": 0, "whole": False, "chunks": 0}
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return empty
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelStoreError(f"{path} is unreadable ({exc}); delete it and republish "
                                  f"(stale retained chunks may then need clearing by hand)"
                                  ) from None
        if (not isinstance(data, dict) or set(data) != set(empty)
                or not all(isinstance(data[k], type(empty[k])) for k in empty)):
            raise ModelStoreError(f"{path} is malformed; delete it and republish")
        return data

    def write_published(self, *, version: int, whole: bool, chunks: int) -> None:
        """Record what is retained on the broker now (atomically)."""
        write_atomic(self.root / PUBLISHED_FILE,
                     json.dumps({"version": version, "whole": whole, "chunks": chunks}).encode())


# ---------------------------------------------------------------------- CLI-facing helpers

def rollback_command(root: Path, model_dir: Path, version: int, *, note: str = "",
                     keep: int | None = None) -> dict[str, Any]:
    """``fedbeat aggregator rollback VERSION``: make ``version``'s parameters current again.

    Returns the new version's summary (``ModelVersion.to_json``). The running service picks it
    up at its next publication: it compares ``ModelStore.current().version`` with
    ``read_published()["version"]``.

    Raises
    ------
    ModelStoreError
        Unknown, pruned or corrupt version; empty registry.
    """
    store = ModelStore.open(root, model_dir, keep=keep)
    if store.is_empty():
        raise ModelStoreError(f"the model registry at {root} is empty: nothing to roll back")
    current = store.current()
    if version == current.version:
        raise ModelStoreError(f"version {version} is already current; nothing to do")
    return store.rollback(version, reason_note=note).to_json()


def history_command(root: Path, model_dir: Path) -> list[dict[str, Any]]:
    """``fedbeat aggregator models``: one summary per version, oldest first.

    A corrupt version does not hide the others: its row is ``{"version": N, "error": "..."}``.
    The current version's row has ``"current": true``.
    """
    store = ModelStore.open(root, model_dir)
    current = store.current_version()
    rows: list[dict[str, Any]] = []
    for number in store.versions():
        try:
            row = store.get(number).to_json()
        except ModelStoreError as exc:
            row = {"version": number, "error": str(exc)}
        row["current"] = number == current
        rows.append(row)
    return rows
