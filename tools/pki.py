"""Key generation for a fleet: the CA, TLS certificates, the CRL, signing/sealing keys, registry.

Off the device path (devices only *load* keys, with :mod:`fedbeat.broker.identity`). Decisions:

* TLS uses ECDSA P-256 certificates (every TLS stack and Mosquitto's OpenSSL accept them);
  message signatures use Ed25519 and sealing uses X25519, separate keys for separate jobs.
* The CA is valid for 20 years and leaf certificates for 10: a device in a drawer must not
  brick itself on an expiry date; revocation (the CRL) is how trust is withdrawn. The CRL's
  ``nextUpdate`` is set to the CA's expiry, because OpenSSL refuses *every* client once a CRL
  has expired.
* A certificate's CN is the MQTT identity: Mosquitto uses it as the user name
  (``use_identity_as_username``) that its ACLs are written against.
* Files are written atomically (temporary file + rename); private keys 0600, directories 0700.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedbeat.broker import identity as ident
from fedbeat.broker.identity import (
    FORMAT_VERSION,
    KeyFileError,
    KeyLayout,
    load_ec_private,
    read_fleet,
    validate_device_id,
    validate_fleet_id,
)
from fedbeat.broker.registry import DeviceRecord, read_registry, registry_to_json
from fedbeat.broker.topics import AGGREGATOR_ID

CA_VALIDITY = dt.timedelta(days=20 * 365)
LEAF_VALIDITY = dt.timedelta(days=10 * 365)
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")

_PrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey | X25519PrivateKey


class KeyExistsError(Exception):
    """Refusing to overwrite keys that already exist."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _mkdir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` atomically; mode 0600 for private files, 0644 otherwise."""
    _mkdir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write(path, (json.dumps(data, indent=2) + "\n").encode(), private=False)


def _private_pem(key: _PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_pem(key: _PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _name(common_name: str, fleet: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"fedbeat fleet {fleet}"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca(fleet: str, now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"fedbeat {fleet} CA", fleet)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _make_leaf(common_name: str, fleet: str, ca_key: ec.EllipticCurvePrivateKey,
               ca_cert: x509.Certificate, now: dt.datetime, *, server_names: tuple[str, ...] = ()
               ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, fleet)).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if server_names:
        builder = builder.add_extension(_san(server_names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write(path, cert.public_bytes(serialization.Encoding.PEM), private=False)


def _make_crl(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
              records: dict[str, DeviceRecord], now: dt.datetime) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(ca_cert.not_valid_after_utc)
    )
    for record in records.values():
        if record.revoked_at is None:
            continue
        revoked_at = dt.datetime.fromisoformat(record.revoked_at.replace("Z", "+00:00"))
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(record.cert_serial, 16))
            .revocation_date(revoked_at)
            .build())
    return builder.sign(ca_key, hashes.SHA256())


@dataclass(frozen=True)
class FleetSummary:
    """What ``keys init`` created."""

    fleet: str
    keys_dir: Path
    broker_hosts: tuple[str, ...]


def init_fleet(keys_dir: Path, fleet: str, *, broker_hosts: tuple[str, ...] = (),
               force: bool = False) -> FleetSummary:
    """Create a fleet key directory (CA, CRL, broker and aggregator keys, empty registry).

    Raises
    ------
    ValueError
        ``fleet`` or a broker host name is invalid.
    KeyExistsError
        ``keys_dir`` already holds a fleet and ``force`` is false.
    """
    validate_fleet_id(fleet)
    for host in broker_hosts:
        if not host or (any(c in host for c in " /\\@:") and not _is_ip(host)):
            raise ValueError(f"invalid broker host name {host!r}")
    layout = KeyLayout(Path(keys_dir))
    if layout.fleet_file.exists() and not force:
        raise KeyExistsError(f"{layout.root} already holds a fleet; use --force to replace it "
                             "(every device would need new keys)")
    if force:
        for sub in (layout.ca_dir, layout.broker_dir, layout.aggregator_dir, layout.devices_dir):
            shutil.rmtree(sub, ignore_errors=True)
        layout.registry.unlink(missing_ok=True)
    _mkdir(layout.root)
    now = _now()

    ca_key, ca_cert = _make_ca(fleet, now)
    _write(layout.ca_key, _private_pem(ca_key), private=True)
    _write_cert(layout.ca_cert, ca_cert)
    _write(layout.crl, _make_crl(ca_key, ca_cert, {}, now).public_bytes(
        serialization.Encoding.PEM), private=False)

    names = (*DEFAULT_SERVER_NAMES, *broker_hosts)
    server_key, server_cert = _make_leaf("fedbeat broker", fleet, ca_key, ca_cert, now,
                                         server_names=names)
    _write(layout.server_key, _private_pem(server_key), private=True)
    _write_cert(layout.server_cert, server_cert)

    agg = layout.aggregator_dir
    signing = Ed25519PrivateKey.generate()
    sealing = X25519PrivateKey.generate()
    _write(agg / ident.SIGNING_KEY, _private_pem(signing), private=True)
    _write(agg / ident.SIGNING_PUB, _public_pem(signing), private=False)
    _write(agg / ident.SEALING_KEY, _private_pem(sealing), private=True)
    _write(agg / ident.SEALING_PUB, _public_pem(sealing), private=False)
    client_key, client_cert = _make_leaf(AGGREGATOR_ID, fleet, ca_key, ca_cert, now)
    _write(agg / ident.CLIENT_KEY, _private_pem(client_key), private=True)
    _write_cert(agg / ident.CLIENT_CERT, client_cert)

    _mkdir(layout.devices_dir)
    _write_json(layout.registry, registry_to_json(fleet, {}))
    _write_json(layout.fleet_file, {"fleet": fleet, "created_at": _iso(now),
                                    "version": FORMAT_VERSION})
    return FleetSummary(fleet, layout.root, tuple(names))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _load_ca(layout: KeyLayout) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key = load_ec_private(layout.ca_key)
    try:
        ca_cert = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    except FileNotFoundError:
        raise KeyFileError(f"missing file {layout.ca_cert}") from None
    except ValueError:
        raise KeyFileError(f"{layout.ca_cert} is not a PEM certificate") from None
    return ca_key, ca_cert


def _open_fleet(keys_dir: Path) -> tuple[KeyLayout, str, dict[str, DeviceRecord]]:
    layout = KeyLayout(Path(keys_dir))
    fleet = read_fleet(layout.root)
    registry_fleet, records = read_registry(layout.registry)
    if registry_fleet != fleet:
        raise KeyFileError(f"{layout.registry} belongs to fleet {registry_fleet!r}, "
                           f"not {fleet!r}")
    return layout, fleet, records


class UnknownDeviceError(Exception):
    """The device id is not in the registry."""


def add_device(keys_dir: Path, device_id: str) -> Path:
    """Create a device's keys and certificate, register it, and return its directory.

    ``devices/<id>/`` is self-contained: copy it to the device (``DeviceIdentity.load``).

    Raises
    ------
    ValueError
        Invalid device id.
    KeyExistsError
        The id is registered already (revoked ids are never reused: pick a new id).
    KeyFileError
        ``keys_dir`` is not a fleet key directory.
    """
    validate_device_id(device_id)
    layout, fleet, records = _open_fleet(keys_dir)
    if device_id in records:
        state = "was revoked; ids are not reused, pick a new one" if records[device_id].revoked \
            else "is already registered"
        raise KeyExistsError(f"device {device_id!r} {state}")
    ca_key, ca_cert = _load_ca(layout)
    now = _now()
    out = layout.device_dir(device_id)
    if out.exists():
        shutil.rmtree(out)  # left over from an interrupted add: not in the registry
    signing = Ed25519PrivateKey.generate()
    client_key, client_cert = _make_leaf(device_id, fleet, ca_key, ca_cert, now)
    _write(out / ident.SIGNING_KEY, _private_pem(signing), private=True)
    _write(out / ident.SIGNING_PUB, _public_pem(signing), private=False)
    _write(out / ident.CLIENT_KEY, _private_pem(client_key), private=True)
    _write_cert(out / ident.CLIENT_CERT, client_cert)
    shutil.copyfile(layout.ca_cert, out / ident.DEVICE_CA_CERT)
    shutil.copyfile(layout.aggregator_dir / ident.SIGNING_PUB, out / ident.DEVICE_AGG_SIGNING_PUB)
    shutil.copyfile(layout.aggregator_dir / ident.SEALING_PUB, out / ident.DEVICE_AGG_SEALING_PUB)
    _write_json(out / ident.DEVICE_FILE, {"fleet": fleet, "device_id": device_id,
                                          "version": FORMAT_VERSION})
    raw = signing.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    records[device_id] = DeviceRecord(device_id, raw, format(client_cert.serial_number, "x"),
                                      _iso(now))
    _write_json(layout.registry, registry_to_json(fleet, records))
    return out


def revoke_device(keys_dir: Path, device_id: str) -> DeviceRecord:
    """Mark ``device_id`` revoked and regenerate the CRL; revoking twice changes nothing.

    Raises
    ------
    UnknownDeviceError
        No such device in the registry.
    """
    validate_device_id(device_id)
    layout, fleet, records = _open_fleet(keys_dir)
    if device_id not in records:
        raise UnknownDeviceError(f"no device {device_id!r} in {layout.registry} "
                                 "(see `fedbeat keys list`)")
    ca_key, ca_cert = _load_ca(layout)
    now = _now()
    record = records[device_id]
    if record.revoked_at is None:
        record = DeviceRecord(record.device_id, record.signing_public_key, record.cert_serial,
                              record.added_at, _iso(now))
        records[device_id] = record
        _write_json(layout.registry, registry_to_json(fleet, records))
    crl = _make_crl(ca_key, ca_cert, records, now)
    _write(layout.crl, crl.public_bytes(serialization.Encoding.PEM), private=False)
    return record


def list_devices(keys_dir: Path) -> tuple[str, list[DeviceRecord]]:
    """The fleet id and every registry entry, sorted by id."""
    _, fleet, records = _open_fleet(keys_dir)
    return fleet, [records[i] for i in sorted(records)]
