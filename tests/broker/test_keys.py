"""``fedbeat keys`` and the identities devices and the aggregator load from its output."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.identity import (
    AggregatorIdentity,
    DeviceIdentity,
    KeyFileError,
    validate_device_id,
    validate_fleet_id,
)
from fedbeat.broker.registry import DeviceRegistry
from fedbeat.tools.cli import cli


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    code, out, _ = run("keys", "init", "--dir", str(keys), "--fleet", "ward-7",
                       "--broker-host", "mqtt.example.org", "--broker-host", "10.0.0.5",
                       "--json")
    assert code == 0, out
    assert json.loads(out)["fleet"] == "ward-7"
    for device in ("dev-a", "dev-b"):
        assert run("keys", "add-device", device, "--dir", str(keys))[0] == 0
    return keys


def test_init_writes_the_documented_layout_with_private_modes(fleet_dir: Path) -> None:
    expected = ["fleet.json", "registry.json", "ca/ca.crt", "ca/ca.key", "ca/crl.pem",
                "broker/server.crt", "broker/server.key",
                "aggregator/signing.key", "aggregator/signing.pub", "aggregator/sealing.key",
                "aggregator/sealing.pub", "aggregator/client.crt", "aggregator/client.key",
                *(f"devices/dev-a/{f}" for f in (
                    "device.json", "signing.key", "signing.pub", "client.crt", "client.key",
                    "ca.crt", "aggregator-signing.pub", "aggregator-sealing.pub"))]
    for name in expected:
        assert (fleet_dir / name).is_file(), name
    for path in fleet_dir.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        elif path.suffix == ".key":
            assert mode == 0o600, path
        else:
            assert mode & 0o022 == 0, path
    assert json.loads((fleet_dir / "fleet.json").read_text())["version"] == 1


def test_certificates_carry_the_identities_the_broker_acls_use(fleet_dir: Path) -> None:
    def load(rel: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((fleet_dir / rel).read_bytes())

    def cn(cert: x509.Certificate) -> str:
        return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    ca = load("ca/ca.crt")
    assert cn(load("devices/dev-a/client.crt")) == "dev-a"
    assert cn(load("aggregator/client.crt")) == "aggregator"
    server = load("broker/server.crt")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "mqtt.example.org"} <= set(san.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {
        "127.0.0.1", "::1", "10.0.0.5"}
    for rel in ("broker/server.crt", "aggregator/client.crt", "devices/dev-b/client.crt"):
        load(rel).verify_directly_issued_by(ca)


def test_identities_load_and_match_the_registry(fleet_dir: Path) -> None:
    device = DeviceIdentity.load(fleet_dir / "devices" / "dev-a")
    agg = AggregatorIdentity.load(fleet_dir)
    assert (device.fleet, device.device_id, agg.fleet) == ("ward-7", "dev-a", "ward-7")
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert device.aggregator_signing_key.public_bytes(*raw) == \
        agg.signing_key.public_key().public_bytes(*raw)
    assert device.aggregator_sealing_key.public_bytes(*raw) == \
        agg.sealing_key.public_key().public_bytes(*raw)
    registry = DeviceRegistry.load(agg.registry_path)
    assert registry.device_ids() == ["dev-a", "dev-b"]
    signature = device.signing_key.sign(b"update")
    registry.signing_key("dev-a").verify(signature, b"update")


def test_revoke_is_idempotent_and_the_registry_reloads(fleet_dir: Path) -> None:
    registry = DeviceRegistry.load(fleet_dir / "registry.json")
    assert not registry.reload_if_changed()
    code, out, _ = run("keys", "revoke", "dev-b", "--dir", str(fleet_dir), "--json")
    assert code == 0
    revoked_at = json.loads(out)["revoked_at"]
    code, out, _ = run("keys", "revoke", "dev-b", "--dir", str(fleet_dir), "--json")
    assert code == 0
    assert json.loads(out)["revoked_at"] == revoked_at
    assert registry.reload_if_changed()
    with pytest.raises(Rejected) as info:
        registry.signing_key("dev-b")
    assert info.value.reason is RejectReason.REVOKED_SENDER
    with pytest.raises(Rejected) as info:
        registry.signing_key("dev-zzz")
    assert info.value.reason is RejectReason.UNKNOWN_SENDER
    assert registry.device_ids() == ["dev-a"]
    crl = x509.load_pem_x509_crl((fleet_dir / "ca" / "crl.pem").read_bytes())
    serial = int(json.loads((fleet_dir / "registry.json").read_text())
                 ["devices"]["dev-b"]["cert_serial"], 16)
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert len(list(crl)) == 1


def test_list_shows_devices_and_revocations(fleet_dir: Path) -> None:
    run("keys", "revoke", "dev-a", "--dir", str(fleet_dir))
    code, out, _ = run("keys", "list", "--dir", str(fleet_dir), "--json")
    assert code == 0
    rows = {d["device_id"]: d for d in json.loads(out)["devices"]}
    assert rows["dev-a"]["revoked_at"] is not None
    assert rows["dev-b"]["revoked_at"] is None
    code, out, _ = run("keys", "list", "--dir", str(fleet_dir))
    assert code == 0
    assert "dev-a" in out
    assert "dev-b" in out


@pytest.mark.parametrize(("args", "message"), [
    (("keys", "revoke", "dev-zzz"), "no device 'dev-zzz'"),
    (("keys", "add-device", "bad/id"), "invalid device id"),
    (("keys", "add-device", "aggregator"), "reserved"),
    (("keys", "add-device", "dev-a"), "already registered"),
    (("keys", "init", "--fleet", "ward-7"), "already holds a fleet"),
    (("keys", "init", "--fleet", "Ward 7", "--force"), "invalid fleet id"),
])
def test_bad_input_is_one_clear_line(fleet_dir: Path, args: tuple[str, ...],
                                     message: str) -> None:
    code, _, err = run(*args, "--dir", str(fleet_dir))
    assert code == 1
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_revoked_ids_are_not_reused(fleet_dir: Path) -> None:
    run("keys", "revoke", "dev-a", "--dir", str(fleet_dir))
    code, _, err = run("keys", "add-device", "dev-a", "--dir", str(fleet_dir))
    assert code == 1
    assert "revoked" in err


def test_missing_keys_dir_is_one_clear_line(tmp_path: Path) -> None:
    for args in (("keys", "list"), ("keys", "add-device", "dev-a"), ("keys", "revoke", "x")):
        code, _, err = run(*args, "--dir", str(tmp_path / "nowhere"))
        assert code == 1
        assert "does not exist" in err
        assert len(err.strip().splitlines()) == 1


def test_force_replaces_a_fleet(fleet_dir: Path) -> None:
    code, _, _ = run("keys", "init", "--dir", str(fleet_dir), "--fleet", "ward-8", "--force")
    assert code == 0
    assert DeviceRegistry.load(fleet_dir / "registry.json").device_ids() == []
    assert not (fleet_dir / "devices" / "dev-a").exists()


def test_private_key_readable_by_others_is_refused(fleet_dir: Path) -> None:
    key = fleet_dir / "devices" / "dev-a" / "signing.key"
    os.chmod(key, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        DeviceIdentity.load(fleet_dir / "devices" / "dev-a")


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: (d / "signing.key").unlink(), "missing"),
    (lambda d: (d / "signing.key").write_text("not a key"), "not an unencrypted PEM"),
    (lambda d: (d / "aggregator-sealing.pub").write_bytes(
        (d / "signing.pub").read_bytes()), "expected X25519PublicKey"),
    (lambda d: (d / "device.json").write_text("{"), "not valid JSON"),
])
def test_damaged_device_dir_raises_key_file_error(fleet_dir: Path, damage: object,
                                                  message: str) -> None:
    device_dir = fleet_dir / "devices" / "dev-a"
    damage(device_dir)  # type: ignore[operator]
    with pytest.raises(KeyFileError, match=message):
        DeviceIdentity.load(device_dir)


def test_aggregator_identity_needs_a_fleet_dir(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        AggregatorIdentity.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyFileError, match="missing file"):
        AggregatorIdentity.load(tmp_path / "empty")


@pytest.mark.parametrize("good", ["a", "ward-7", "x" * 63, "0abc"])
def test_valid_fleet_ids(good: str) -> None:
    assert validate_fleet_id(good) == good


@pytest.mark.parametrize("bad", ["", "-a", "Ward", "a_b", "a/b", "a+", "x" * 64, "a b"])
def test_invalid_fleet_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid fleet id"):
        validate_fleet_id(bad)


@pytest.mark.parametrize("good", ["dev-a", "A", "rec_201", "x" * 64])
def test_valid_device_ids(good: str) -> None:
    assert validate_device_id(good) == good


@pytest.mark.parametrize("bad", ["", "_a", "a/b", "a+b", "a#", "x" * 65, "aggregator", "é"])
def test_invalid_device_ids(bad: str) -> None:
    with pytest.raises(ValueError, match=r"invalid device id|reserved"):
        validate_device_id(bad)
