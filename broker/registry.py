"""The device registry the aggregator reads: which device ids exist, their keys, revocations.

``registry.json`` (written by ``fedbeat keys``, always replaced atomically)::

    {"version": 1, "fleet": "ward-7",
     "devices": {"dev-a": {"signing_public_key": "<base64 of the raw 32-byte Ed25519 key>",
                           "cert_serial": "<hex>", "added_at": "<ISO 8601 UTC>",
                           "revoked_at": null}}}

The aggregator looks up a sender's signing key with :meth:`DeviceRegistry.signing_key` and calls
:meth:`DeviceRegistry.reload_if_changed` now and then (a ``stat`` call), so ``fedbeat keys
revoke`` takes effect without a restart. The broker learns of revocations from the CRL, which
Mosquitto reads only at start: restart the broker too (see ``docs/keys-and-brokers.md``).
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedbeat.broker.envelope import Header, KeyResolver
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.identity import (
    FORMAT_VERSION,
    KeyFileError,
    read_json,
    validate_device_id,
    validate_fleet_id,
)
from fedbeat.broker.topics import AGGREGATOR_ID


@dataclass(frozen=True)
class DeviceRecord:
    """One registry entry. ``revoked_at`` is ``None`` while the device is trusted."""

    device_id: str
    signing_public_key: bytes
    cert_serial: str
    added_at: str
    revoked_at: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "signing_public_key": base64.b64encode(self.signing_public_key).decode("ascii"),
            "cert_serial": self.cert_serial,
            "added_at": self.added_at,
            "revoked_at": self.revoked_at,
        }

    @classmethod
    def from_json(cls, device_id: str, data: Any) -> DeviceRecord:
        """Parse one entry; raises ``ValueError`` saying what is wrong."""
        validate_device_id(device_id)
        if not isinstance(data, dict):
            raise ValueError(f"entry for {device_id!r} is not an object")
        try:
            key = base64.b64decode(data["signing_public_key"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise ValueError(f"entry for {device_id!r} has no valid signing_public_key") from None
        if len(key) != 32:
            raise ValueError(f"entry for {device_id!r}: signing key must be 32 bytes")
        revoked_at = data.get("revoked_at")
        fields = (data.get("cert_serial"), data.get("added_at"))
        if not all(isinstance(f, str) for f in fields) or not (
                revoked_at is None or isinstance(revoked_at, str)):
            raise ValueError(f"entry for {device_id!r} has malformed fields")
        return cls(device_id, key, data["cert_serial"], data["added_at"], revoked_at)


def registry_to_json(fleet: str, records: dict[str, DeviceRecord]) -> dict[str, Any]:
    """The JSON document for ``records`` (sorted by device id)."""
    return {"version": FORMAT_VERSION, "fleet": fleet,
            "devices": {i: records[i].to_json() for i in sorted(records)}}


def parse_registry(data: dict[str, Any], path: Path) -> tuple[str, dict[str, DeviceRecord]]:
    """Fleet and records of a registry document; raises :class:`KeyFileError` if malformed."""
    if data.get("version") != FORMAT_VERSION:
        raise KeyFileError(f"{path} has format version {data.get('version')!r}; this fedbeat "
                           f"reads version {FORMAT_VERSION}")
    devices = data.get("devices")
    if not isinstance(devices, dict):
        raise KeyFileError(f"{path} has no 'devices' object")
    try:
        fleet = validate_fleet_id(data.get("fleet", ""))
        records = {i: DeviceRecord.from_json(i, entry) for i, entry in devices.items()}
    except ValueError as exc:
        raise KeyFileError(f"{path}: {exc}") from None
    return fleet, records


def read_registry(path: Path) -> tuple[str, dict[str, DeviceRecord]]:
    """Read and parse ``registry.json``."""
    return parse_registry(read_json(path), path)


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


class DeviceRegistry:
    """Read-only view of ``registry.json`` for verifying senders; safe to share between threads.

    Public keys are parsed once per load, so :meth:`signing_key` is a dictionary lookup.
    """

    def __init__(self, path: Path, fleet: str, records: dict[str, DeviceRecord],
                 stamp: tuple[int, int, int]) -> None:
        self.path = path
        self.fleet = fleet
        self._lock = threading.Lock()
        self._set(records, stamp)

    def _set(self, records: dict[str, DeviceRecord], stamp: tuple[int, int, int]) -> None:
        keys = {i: Ed25519PublicKey.from_public_bytes(r.signing_public_key)
                for i, r in records.items() if not r.revoked}
        with self._lock:
            self._records = records
            self._keys = keys
            self._stamp = stamp

    @classmethod
    def load(cls, path: Path) -> DeviceRegistry:
        """Load ``registry.json``.

        Raises
        ------
        KeyFileError
            The file is missing or malformed.
        """
        path = Path(path)
        try:
            stamp = _stamp(path)
        except OSError:
            raise KeyFileError(f"missing device registry {path}") from None
        fleet, records = read_registry(path)
        return cls(path, fleet, records, stamp)

    def signing_key(self, device_id: str) -> Ed25519PublicKey:
        """The Ed25519 key that must have signed ``device_id``'s messages.

        Raises
        ------
        Rejected
            ``UNKNOWN_SENDER`` if no such device is registered, ``REVOKED_SENDER`` if it was
            revoked.
        """
        with self._lock:
            key = self._keys.get(device_id)
            record = self._records.get(device_id)
        if key is not None:
            return key
        if record is not None:
            raise Rejected(RejectReason.REVOKED_SENDER, f"device {device_id!r} was revoked")
        raise Rejected(RejectReason.UNKNOWN_SENDER, "sender not in the device registry")

    def reload_if_changed(self) -> bool:
        """Re-read the file if its mtime, size or inode changed; return whether it was reloaded.

        A file that vanished or is momentarily malformed keeps the previous contents (the writer
        replaces it atomically, so this should not happen) and raises :class:`KeyFileError`.
        """
        try:
            stamp = _stamp(self.path)
        except OSError:
            raise KeyFileError(f"device registry {self.path} disappeared") from None
        with self._lock:
            if stamp == self._stamp:
                return False
        fleet, records = read_registry(self.path)
        if fleet != self.fleet:
            raise KeyFileError(f"{self.path} now belongs to fleet {fleet!r}, not {self.fleet!r}")
        self._set(records, stamp)
        return True

    def device_ids(self) -> list[str]:
        """Ids of the devices that are registered and not revoked, sorted."""
        with self._lock:
            return sorted(self._keys)

    def records(self) -> list[DeviceRecord]:
        """Every entry, revoked ones included, sorted by id."""
        with self._lock:
            return [self._records[i] for i in sorted(self._records)]


def fleet_key_resolver(registry: DeviceRegistry,
                       aggregator_key: Ed25519PublicKey) -> KeyResolver:
    """The signer's key for a header: the aggregator's for its messages, the registry's for a
    device's. The registry is re-read when its file changes, so a revocation applies to the
    next message without a restart (a ``stat`` per message is the price)."""

    def resolve(header: Header) -> Ed25519PublicKey:
        if header.sender == AGGREGATOR_ID:
            return aggregator_key
        registry.reload_if_changed()
        return registry.signing_key(header.sender)
    return resolve
