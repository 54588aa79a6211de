"""``fedbeat broker``: run Mosquitto for a fleet (or the embedded broker), or write its config."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import click

from fedbeat.broker.identity import KeyLayout, read_fleet
from fedbeat.broker.mosquitto import (
    KIB,
    MIB,
    BrokerLimits,
    MosquittoBroker,
    MosquittoConfig,
    find_mosquitto,
    write_config,
)
from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, stderr

_DEFAULTS = BrokerLimits()


def default_data_dir(fleet: str) -> Path:
    """``$XDG_STATE_HOME/fedbeat/broker-<fleet>`` (``~/.local/state/...`` by default)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "fedbeat" / f"broker-{fleet}"


def _limits(max_packet_kib: int, max_queued_messages: int, max_queued_mib: int) -> BrokerLimits:
    try:
        return BrokerLimits(max_packet_bytes=max_packet_kib * KIB,
                            max_queued_messages=max_queued_messages,
                            max_queued_bytes=max_queued_mib * MIB)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _config(keys_dir: Path, data_dir: Path | None, port: int, bind: str | None,
            websocket_port: int | None, insecure_port: int | None,
            limits: BrokerLimits) -> MosquittoConfig:
    fleet = read_fleet(keys_dir)
    try:
        return MosquittoConfig(keys_dir=keys_dir, data_dir=data_dir or default_data_dir(fleet),
                               port=port, bind=bind, websocket_port=websocket_port,
                               insecure_loopback_port=insecure_port, limits=limits)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@click.group()
def broker() -> None:
    """Run the fleet's MQTT broker.

    Mosquitto (when installed) gets a generated configuration: TLS with client certificates
    from the fleet CA, per-device ACLs, persistence, deliberate queue and size limits.
    Without Mosquitto, or with --embedded, the embedded broker (amqtt) runs on loopback with
    no security at all, for local simulation only. See docs/keys-and-brokers.md.
    """


_KEYS = click.option("--keys", "keys_dir", required=True,
                     type=click.Path(file_okay=False, path_type=Path),
                     help="Fleet key directory (from `fedbeat keys init`).")
_DATA = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Generated config and persistence database "
                          "[default: ~/.local/state/fedbeat/broker-<fleet>].")
_PORT = click.option("--port", type=int, default=None,
                     help="TLS listener port [default: 8883; embedded: 1883].")
_BIND = click.option("--bind", default=None, metavar="ADDR",
                     help="Address of the TLS/WebSocket listeners [default: all interfaces].")
_WS = click.option("--websocket-port", type=int, default=None,
                   help="Also serve MQTT over TLS WebSockets on this port (e.g. 443 where "
                        "firewalls block 8883); same client-certificate rules.")
_INSECURE = click.option("--insecure-loopback-port", type=int, default=None,
                         help="Also open a PLAINTEXT listener on 127.0.0.1 with no "
                              "authentication or ACLs (local development only).")
_PACKET = click.option("--max-packet-kib", type=int, default=_DEFAULTS.max_packet_bytes // KIB,
                       show_default=True,
                       help="Largest MQTT packet; bigger ones disconnect the sender.")
_QMSG = click.option("--max-queued-messages", type=int,
                     default=_DEFAULTS.max_queued_messages, show_default=True,
                     help="Per-client queue for slow/offline subscribers (Mosquitto drops "
                          "silently beyond it).")
_QMIB = click.option("--max-queued-mib", type=int,
                     default=_DEFAULTS.max_queued_bytes // MIB, show_default=True,
                     help="Per-client queue size in MiB (same caveat).")


@broker.command()
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Fleet key directory (from `fedbeat keys init`); optional with --embedded.")
@_PORT
@_BIND
@_WS
@_DATA
@_INSECURE
@click.option("--embedded", is_flag=True,
              help="Run the embedded amqtt broker even if Mosquitto is installed.")
@_PACKET
@_QMSG
@_QMIB
def run(keys_dir: Path | None, port: int | None, bind: str | None, websocket_port: int | None,
        data_dir: Path | None, insecure_loopback_port: int | None, embedded: bool,
        max_packet_kib: int, max_queued_messages: int, max_queued_mib: int) -> None:
    """Run the broker in the foreground until Ctrl-C.

    \b
    fedbeat broker run --keys keys                       # TLS on 8883
    fedbeat broker run --keys keys --websocket-port 443  # plus WebSockets for firewalls
    fedbeat broker run --keys keys --embedded            # amqtt, loopback, NO security
    """
    if keys_dir is not None:
        read_fleet(keys_dir)  # a clear error for a wrong --keys before anything starts
    if embedded or find_mosquitto() is None:
        _run_embedded(port, why="--embedded" if embedded else "mosquitto is not installed")
        return
    if keys_dir is None:
        raise UsageError("Mosquitto needs the fleet's keys: pass --keys DIR "
                         "(or --embedded for an insecure local broker)")
    config = _config(keys_dir, data_dir, port or 8883, bind, websocket_port,
                     insecure_loopback_port,
                     _limits(max_packet_kib, max_queued_messages, max_queued_mib))
    broker_ = MosquittoBroker(config, foreground=True)
    stderr.print(f"mosquitto for fleet [bold]{broker_.fleet}[/]: "
                 + ", ".join(f"{k} {v}" for k, v in broker_.urls.items()))
    stderr.print(f"config and data in {config.data_dir}")
    if insecure_loopback_port is not None:
        stderr.print("[bold red]WARNING[/]: plaintext listener on 127.0.0.1:"
                     f"{insecure_loopback_port} has NO authentication and NO ACLs")
    try:
        broker_.start()
        code = _watch_registry(broker_, keys_dir)
    except KeyboardInterrupt:
        broker_.stop()
        code = 0
    if code:
        raise UsageError(f"mosquitto exited with status {code} (see its log above)")


def _watch_registry(broker_: MosquittoBroker, keys_dir: Path, *, every_s: float = 2.0) -> int:
    """Wait for the broker to exit; reload its ACLs whenever the device registry changes, so
    ``fedbeat keys revoke`` cuts a device off within seconds."""
    registry = KeyLayout(keys_dir).registry

    def stamp() -> tuple[int, int, int] | None:
        try:
            st = registry.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    seen = stamp()
    while True:
        code = broker_.wait(every_s)
        if code is not None:
            return code
        now = stamp()
        if now != seen and now is not None:
            seen = now
            broker_.reload()
            stderr.print("device registry changed: ACLs reloaded (revocations in force)")


def _run_embedded(port: int | None, *, why: str) -> None:
    from fedbeat.broker.embedded import DEFAULT_PORT, WARNING, serve

    port = port or DEFAULT_PORT
    stderr.print(f"[bold red]WARNING[/] ({why}): {WARNING}")
    stderr.print(f"embedded broker on mqtt://127.0.0.1:{port} (Ctrl-C to stop)")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C before serve() handles signals
        asyncio.run(serve("127.0.0.1", port))


@broker.command()
@_KEYS
@click.option("--out", "data_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory for mosquitto.conf, acl and the persistence database.")
@click.option("--port", type=int, default=8883, show_default=True, help="TLS listener port.")
@_BIND
@_WS
@_PACKET
@_QMSG
@_QMIB
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def config(keys_dir: Path, data_dir: Path, port: int, bind: str | None,
           websocket_port: int | None, max_packet_kib: int, max_queued_messages: int,
           max_queued_mib: int, as_json: bool) -> None:
    """Write the Mosquitto configuration without running it (for a system service).

    Then: mosquitto -c OUT/mosquitto.conf. The paths inside are absolute; the broker runs
    as the user who wrote the config and must be able to read the key files.
    """
    cfg = _config(keys_dir, data_dir, port, bind, websocket_port, None,
                  _limits(max_packet_kib, max_queued_messages, max_queued_mib))
    conf = write_config(cfg)
    if as_json:
        emit_json({"config": str(conf), "acl": str(conf.parent / "acl")})
        return
    stderr.print(f"wrote {conf} and {conf.parent / 'acl'}; run: mosquitto -c {conf}")
