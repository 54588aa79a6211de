"""``fedbeat keys``: create a fleet's keys, add and revoke devices, list the registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
from rich.table import Table

from fedbeat.tools import pki
from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, stderr, stdout

_T = TypeVar("_T")

KEYS_DIR = click.option(
    "--dir", "keys_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="The fleet key directory (written by `fedbeat keys init`).")


def _checked(call: Callable[[], _T]) -> _T:
    """Run ``call``, turning an invalid id or host name into a one-line usage error."""
    try:
        return call()
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@click.group()
def keys() -> None:
    """Create and manage a fleet's keys: CA, broker and aggregator keys, device identities.

    \b
    fedbeat keys init --dir keys --fleet ward-7 --broker-host mqtt.hospital.example
    fedbeat keys add-device dev-001 --dir keys     # then copy keys/devices/dev-001/ to it
    fedbeat keys revoke dev-001 --dir keys          # broker ACLs reload, then restart (CRL)
    fedbeat keys list --dir keys

    Private keys are written unencrypted with mode 0600. Keep the directory (above all
    ca/ca.key) on the aggregator's host or offline; see docs/keys-and-brokers.md.
    """


@keys.command()
@KEYS_DIR
@click.option("--fleet", required=True,
              help="Fleet id: 1-63 characters a-z, 0-9 and '-' (appears in every topic).")
@click.option("--broker-host", "broker_hosts", multiple=True, metavar="NAME",
              help="DNS name or IP address devices use to reach the broker (repeatable); "
                   "localhost, 127.0.0.1 and ::1 are always included.")
@click.option("--force", is_flag=True,
              help="Replace an existing fleet in DIR (every device then needs new keys).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def init(keys_dir: Path, fleet: str, broker_hosts: tuple[str, ...], force: bool,
         as_json: bool) -> None:
    """Create a fleet: CA and CRL, broker TLS certificate, aggregator keys, empty registry."""
    summary = _checked(lambda: pki.init_fleet(keys_dir, fleet, broker_hosts=broker_hosts,
                                              force=force))
    if as_json:
        emit_json({"fleet": summary.fleet, "dir": str(summary.keys_dir),
                   "broker_hosts": list(summary.broker_hosts)})
        return
    stderr.print(f"fleet [bold]{summary.fleet}[/] created in {summary.keys_dir}")
    stderr.print(f"broker certificate valid for: {', '.join(summary.broker_hosts)}")
    stderr.print("next: fedbeat keys add-device ID --dir " + str(keys_dir))


@keys.command("add-device")
@click.argument("device_id", metavar="ID")
@KEYS_DIR
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def add_device(device_id: str, keys_dir: Path, as_json: bool) -> None:
    """Create device ID's keys and client certificate and register it.

    ID is 1-64 characters A-Z, a-z, 0-9, '_' and '-' ('aggregator' is reserved). Copy the
    printed directory to the device; it holds everything the device needs and nothing else.
    """
    out = _checked(lambda: pki.add_device(keys_dir, device_id))
    if as_json:
        emit_json({"device_id": device_id, "device_dir": str(out)})
        return
    stderr.print(f"device [bold]{device_id}[/] added; copy this directory to the device "
                 "(keep modes, e.g. `scp -rp` or `rsync -a`):")
    stdout.print(str(out), markup=False, highlight=False)


@keys.command()
@click.argument("device_id", metavar="ID")
@KEYS_DIR
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def revoke(device_id: str, keys_dir: Path, as_json: bool) -> None:
    """Revoke device ID: mark it in the registry and regenerate the CRL (idempotent).

    The aggregator rejects the device's messages as soon as it re-reads the registry.
    `fedbeat broker run` reloads its ACLs within seconds and then denies the device every
    topic; a broker restart also makes TLS refuse its certificate (the CRL is read at start).
    For a Mosquitto service: rerun `fedbeat broker config`, then `systemctl reload mosquitto`.
    """
    record = _checked(lambda: pki.revoke_device(keys_dir, device_id))
    if as_json:
        emit_json({"device_id": device_id, "revoked_at": record.revoked_at})
        return
    stderr.print(f"device [bold]{device_id}[/] revoked at {record.revoked_at}; a running "
                 "`fedbeat broker run` denies it within seconds, a restart loads the new CRL")


@keys.command("list")
@KEYS_DIR
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(keys_dir: Path, as_json: bool) -> None:
    """List the fleet's devices, their certificate serials and revocation state."""
    fleet, records = pki.list_devices(keys_dir)
    if as_json:
        emit_json({"fleet": fleet, "devices": [
            {"device_id": r.device_id, "cert_serial": r.cert_serial, "added_at": r.added_at,
             "revoked_at": r.revoked_at} for r in records]})
        return
    table = Table("device", "added", "revoked", "certificate serial", title=f"fleet {fleet}")
    for r in records:
        table.add_row(r.device_id, r.added_at, r.revoked_at or "", r.cert_serial)
    stdout.print(table)
