"""Who is who in a fleet: identifier rules, the key directory layout, and loading identities.

A fleet's keys live in one directory written by ``fedbeat keys init`` (see
``docs/keys-and-brokers.md``)::

    DIR/fleet.json                      {"fleet": ..., "created_at": ..., "version": 1}
    DIR/ca/ca.crt, ca/ca.key            fleet CA (ECDSA P-256, X.509) for TLS
    DIR/ca/crl.pem                      revoked client certificates
    DIR/broker/server.crt, server.key   the broker's TLS certificate
    DIR/aggregator/signing.key, .pub    Ed25519: signs round announcements and models
    DIR/aggregator/sealing.key, .pub    X25519: devices seal their updates to it
    DIR/aggregator/client.crt, .key     TLS client certificate, CN=aggregator
    DIR/registry.json                   device id -> signing public key, certificate serial, ...
    DIR/devices/<id>/                   everything one device needs (copy it to the device)

File formats: private keys are unencrypted PKCS#8 PEM written with mode 0600 (protect them with
file permissions and disk encryption, not a passphrase: an unattended device could not type
one); public keys are SubjectPublicKeyInfo PEM; certificates and the CRL are PEM. The registry
stores raw 32-byte public keys in base64.

This module is on the device path: it imports ``cryptography`` and the standard library only.
Key *generation* lives in ``fedbeat.tools.pki``.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedbeat.broker.topics import AGGREGATOR_ID, DEVICE_ID, FLEET_ID

FORMAT_VERSION = 1


class KeyFileError(Exception):
    """A key directory or key file is missing, unreadable, corrupt, or too widely readable.

    The message names the file and what to do; it never contains key material.
    """


def validate_fleet_id(fleet: str) -> str:
    """Return ``fleet`` if it is a valid fleet id, else raise ``ValueError``.

    A fleet id is 1–63 characters of lowercase letters, digits and ``-``, starting with a letter
    or digit. It appears in every topic (``fedbeat/<fleet>/…``), so MQTT wildcards and ``/`` are
    excluded by construction.
    """
    if not isinstance(fleet, str) or not FLEET_ID.fullmatch(fleet):
        raise ValueError(f"invalid fleet id {fleet!r}: use 1-63 characters a-z, 0-9 and '-', "
                         "starting with a letter or digit")
    return fleet


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is a valid device id, else raise ``ValueError``.

    A device id is 1–64 characters of letters, digits, ``_`` and ``-``, starting with a letter
    or digit, and is not ``aggregator``. It is the device's certificate CN, its MQTT user name
    for the broker's ACLs and a topic level, so ``+``, ``#`` and ``/`` must never occur.
    """
    if not isinstance(device_id, str) or not DEVICE_ID.fullmatch(device_id):
        raise ValueError(f"invalid device id {device_id!r}: use 1-64 characters A-Z, a-z, 0-9, "
                         "'_' and '-', starting with a letter or digit")
    if device_id == AGGREGATOR_ID:
        raise ValueError(f"device id {AGGREGATOR_ID!r} is reserved for the aggregator")
    return device_id


@dataclass(frozen=True)
class KeyLayout:
    """File names inside a fleet key directory; the writer and the loaders share them."""

    root: Path

    @property
    def fleet_file(self) -> Path:
        return self.root / "fleet.json"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def crl(self) -> Path:
        return self.ca_dir / "crl.pem"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def server_cert(self) -> Path:
        return self.broker_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.broker_dir / "server.key"

    @property
    def aggregator_dir(self) -> Path:
        return self.root / "aggregator"

    @property
    def registry(self) -> Path:
        return self.root / "registry.json"

    @property
    def devices_dir(self) -> Path:
        return self.root / "devices"

    def device_dir(self, device_id: str) -> Path:
        return self.devices_dir / validate_device_id(device_id)


# Names of files inside a role directory (aggregator/ or devices/<id>/).
SIGNING_KEY = "signing.key"
SIGNING_PUB = "signing.pub"
SEALING_KEY = "sealing.key"
SEALING_PUB = "sealing.pub"
CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"
DEVICE_FILE = "device.json"
DEVICE_CA_CERT = "ca.crt"
DEVICE_AGG_SIGNING_PUB = "aggregator-signing.pub"
DEVICE_AGG_SEALING_PUB = "aggregator-sealing.pub"

def check_private_file(path: Path) -> None:
    """Raise :class:`KeyFileError` unless ``path`` is a regular file only its owner can read.

    Like OpenSSH, a private key readable by group or others is refused rather than used: such a
    key must be assumed to be copied already. The fix is ``chmod 600``.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"missing key file {path}") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path} is not a regular file")
    if os.name == "posix" and st.st_mode & 0o077:
        raise KeyFileError(f"private key {path} is readable by group or others "
                           f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"missing file {path}") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None


def _load_private(path: Path) -> object:
    check_private_file(path)
    try:
        return serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from None


def _load_public(path: Path) -> object:
    try:
        return serialization.load_pem_public_key(_read(path))
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not a PEM public key") from None


def _wrong_type(path: Path, key: object, expected: str) -> KeyFileError:
    return KeyFileError(f"{path} holds a {type(key).__name__}, expected {expected}")


def load_ed25519_private(path: Path) -> Ed25519PrivateKey:
    """An unencrypted PKCS#8 PEM Ed25519 private key, after :func:`check_private_file`."""
    key = _load_private(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise _wrong_type(path, key, "Ed25519PrivateKey")
    return key


def load_x25519_private(path: Path) -> X25519PrivateKey:
    """An unencrypted PKCS#8 PEM X25519 private key, after :func:`check_private_file`."""
    key = _load_private(path)
    if not isinstance(key, X25519PrivateKey):
        raise _wrong_type(path, key, "X25519PrivateKey")
    return key


def load_ec_private(path: Path) -> ec.EllipticCurvePrivateKey:
    """An unencrypted PKCS#8 PEM ECDSA private key (the CA's), after the permission check."""
    key = _load_private(path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise _wrong_type(path, key, "EllipticCurvePrivateKey")
    return key


def load_ed25519_public(path: Path) -> Ed25519PublicKey:
    """A SubjectPublicKeyInfo PEM Ed25519 public key."""
    key = _load_public(path)
    if not isinstance(key, Ed25519PublicKey):
        raise _wrong_type(path, key, "Ed25519PublicKey")
    return key


def load_x25519_public(path: Path) -> X25519PublicKey:
    """A SubjectPublicKeyInfo PEM X25519 public key."""
    key = _load_public(path)
    if not isinstance(key, X25519PublicKey):
        raise _wrong_type(path, key, "X25519PublicKey")
    return key


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path``; any failure is a :class:`KeyFileError`."""
    try:
        data = json.loads(_read(path))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KeyFileError(f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise KeyFileError(f"{path} does not hold a JSON object")
    return data


def _check_version(data: dict[str, Any], path: Path) -> None:
    if data.get("version") != FORMAT_VERSION:
        raise KeyFileError(f"{path} has format version {data.get('version')!r}; this fedbeat "
                           f"reads version {FORMAT_VERSION}")


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise KeyFileError(f"missing file {path}")
    return path


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise KeyFileError(f"{what} {path} does not exist (create it with `fedbeat keys init`)")


def read_fleet(keys_dir: Path) -> str:
    """The fleet id recorded in ``keys_dir/fleet.json``."""
    layout = KeyLayout(Path(keys_dir))
    _require_dir(layout.root, "keys directory")
    data = read_json(layout.fleet_file)
    _check_version(data, layout.fleet_file)
    try:
        return validate_fleet_id(data.get("fleet", ""))
    except ValueError as exc:
        raise KeyFileError(f"{layout.fleet_file}: {exc}") from None


@dataclass(frozen=True)
class DeviceIdentity:
    """Everything a device holds: its own keys and what it trusts (read from ``devices/<id>/``).

    The TLS files are paths because paho-mqtt (OpenSSL) loads them itself.
    """

    fleet: str
    device_id: str
    signing_key: Ed25519PrivateKey
    aggregator_signing_key: Ed25519PublicKey
    aggregator_sealing_key: X25519PublicKey
    ca_cert: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def load(cls, device_dir: Path) -> DeviceIdentity:
        """Load a device directory written by ``fedbeat keys add-device``.

        Raises
        ------
        KeyFileError
            A file is missing, corrupt, of the wrong key type, or a private key is readable by
            group or others.
        """
        device_dir = Path(device_dir)
        _require_dir(device_dir, "device directory")
        info_path = device_dir / DEVICE_FILE
        info = read_json(info_path)
        _check_version(info, info_path)
        try:
            fleet = validate_fleet_id(info.get("fleet", ""))
            device_id = validate_device_id(info.get("device_id", ""))
        except ValueError as exc:
            raise KeyFileError(f"{info_path}: {exc}") from None
        client_key = device_dir / CLIENT_KEY
        check_private_file(client_key)
        return cls(
            fleet=fleet,
            device_id=device_id,
            signing_key=load_ed25519_private(device_dir / SIGNING_KEY),
            aggregator_signing_key=load_ed25519_public(device_dir / DEVICE_AGG_SIGNING_PUB),
            aggregator_sealing_key=load_x25519_public(device_dir / DEVICE_AGG_SEALING_PUB),
            ca_cert=_existing(device_dir / DEVICE_CA_CERT),
            client_cert=_existing(device_dir / CLIENT_CERT),
            client_key=client_key,
        )


@dataclass(frozen=True)
class AggregatorIdentity:
    """The aggregator's keys and where the device registry lives (read from the keys dir)."""

    fleet: str
    signing_key: Ed25519PrivateKey
    sealing_key: X25519PrivateKey
    ca_cert: Path
    client_cert: Path
    client_key: Path
    registry_path: Path

    @classmethod
    def load(cls, keys_dir: Path) -> AggregatorIdentity:
        """Load the aggregator's part of a fleet key directory.

        Raises
        ------
        KeyFileError
            As for :meth:`DeviceIdentity.load`, or the directory is not a fleet key directory.
        """
        layout = KeyLayout(Path(keys_dir))
        fleet = read_fleet(layout.root)
        agg = layout.aggregator_dir
        client_key = agg / CLIENT_KEY
        check_private_file(client_key)
        return cls(
            fleet=fleet,
            signing_key=load_ed25519_private(agg / SIGNING_KEY),
            sealing_key=load_x25519_private(agg / SEALING_KEY),
            ca_cert=_existing(layout.ca_cert),
            client_cert=_existing(agg / CLIENT_CERT),
            client_key=client_key,
            registry_path=_existing(layout.registry),
        )
