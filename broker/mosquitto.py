"""Mosquitto for a fleet: configuration generated from ``broker/templates``, and a launcher.

One broker serves one fleet. The configuration has

* a TLS listener (default 8883) that requires a client certificate from the fleet CA, checks
  the CRL, and uses the certificate's CN as the user name for the ACLs;
* optionally the same on a WebSocket listener (e.g. 443, for networks that block 8883);
* optionally a plaintext listener on 127.0.0.1 without authentication, for development and
  tests only;
* per-device ACLs by pattern (a device writes only ``device/<its id>/update`` and ``…/status``,
  reads only its inbox and the fleet's public topics; the aggregator reads and writes the whole
  fleet);
* persistence and deliberate queue and packet limits (:class:`BrokerLimits`).

Revocation has two layers. The ACL file gets a ``topic deny #`` block for every revoked
device; Mosquitto re-reads it on SIGHUP (:meth:`MosquittoBroker.reload`), which cuts off the
device's traffic at once on every listener, including connections already open. The CRL makes
the TLS listener refuse the device's handshake, but Mosquitto reads it only at start
(:meth:`MosquittoBroker.restart`), and Mosquitto 2.0's WebSocket listener does not check it at
all, which is why the ACL layer exists.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fedbeat.broker.identity import KeyFileError, KeyLayout, read_fleet
from fedbeat.broker.launch import LOOPBACK, BrokerError, BrokerProcess
from fedbeat.broker.registry import read_registry

MOSQUITTO_ENV = "FEDBEAT_MOSQUITTO"
"""Environment variable naming the mosquitto executable, if it is not on PATH."""

_SEARCH_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto",
                 "/opt/homebrew/sbin/mosquitto", "/usr/local/opt/mosquitto/sbin/mosquitto")

KIB = 1024
MIB = 1024 * 1024


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable: ``$FEDBEAT_MOSQUITTO``, PATH, then the usual sbin
    directories (Debian installs it in /usr/sbin, which is often not on a user's PATH)."""
    explicit = os.environ.get(MOSQUITTO_ENV)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in _SEARCH_PATHS if os.access(p, os.X_OK)), None)


@dataclass(frozen=True)
class BrokerLimits:
    """Queue and size limits (see ``docs/keys-and-brokers.md`` for the arithmetic).

    Parameters
    ----------
    max_packet_bytes
        Largest MQTT packet accepted; a larger one disconnects its sender. Twice the default
        128 KiB chunk size, so a chunk plus its envelope always fits with room to spare, while
        an unchunked multi-megabyte model is refused here as it would be by a cloud broker.
    max_queued_messages, max_queued_bytes
        Per client: QoS 1 messages held for a slow or offline subscriber. Mosquitto drops
        further messages *silently* once either is reached, so these hold a whole round for
        the aggregator: e.g. 1,000 devices × 4 chunks of 128 KiB = 4,000 messages, 512 MiB.
    max_inflight_messages
        Per client: QoS 1 messages being delivered before their PUBACK.
    persistent_client_expiration
        Sessions of clients gone this long are discarded (Mosquitto duration syntax: 14d).
    autosave_interval_s
        Seconds between saves of the in-memory database (also saved on clean shutdown).
    """

    max_packet_bytes: int = 256 * KIB
    max_queued_messages: int = 10_000
    max_queued_bytes: int = 512 * MIB
    max_inflight_messages: int = 64
    persistent_client_expiration: str = "14d"
    autosave_interval_s: int = 60

    def __post_init__(self) -> None:
        if self.max_packet_bytes < 1024:
            raise ValueError("max_packet_bytes must be at least 1024")
        for name in ("max_queued_messages", "max_queued_bytes", "max_inflight_messages",
                     "autosave_interval_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive (0 would mean unlimited)")


@dataclass(frozen=True)
class MosquittoConfig:
    """Where the keys and state are and which listeners to open.

    Parameters
    ----------
    keys_dir
        Fleet key directory; the broker uses ``ca/ca.crt``, ``ca/crl.pem`` and ``broker/``.
    data_dir
        Generated configuration, persistence database and (for the Python API) the log.
    port
        TLS listener (client certificates required).
    bind
        Address of the TLS and WebSocket listeners; ``None`` for every interface.
    websocket_port
        Optional MQTT-over-WebSockets listener with the same TLS and client-certificate
        settings.
    insecure_loopback_port
        Optional plaintext listener on 127.0.0.1 with no authentication and no ACLs.
    """

    keys_dir: Path
    data_dir: Path
    port: int = 8883
    bind: str | None = None
    websocket_port: int | None = None
    insecure_loopback_port: int | None = None
    limits: BrokerLimits = field(default_factory=BrokerLimits)

    def __post_init__(self) -> None:
        ports = [p for p in (self.port, self.websocket_port, self.insecure_loopback_port)
                 if p is not None]
        if any(not 0 < p < 65536 for p in ports):
            raise ValueError(f"ports must be 1-65535, got {ports}")
        if len(set(ports)) != len(ports):
            raise ValueError(f"listeners need distinct ports, got {ports}")


_TEMPLATES = ("mosquitto.conf", "acl", "listener-tls.conf", "listener-insecure.conf")


def _template(name: str) -> string.Template:
    text = resources.files("fedbeat.broker").joinpath("templates", name).read_text()
    return string.Template(text)


def _path(path: Path) -> str:
    """An absolute path Mosquitto's config parser can read (it splits on whitespace)."""
    text = str(path.resolve())
    if any(c.isspace() for c in text):
        raise BrokerError(f"Mosquitto cannot use a path containing whitespace: {text!r}")
    return text


def render_config(config: MosquittoConfig) -> dict[str, str]:
    """The generated files, by name: ``mosquitto.conf`` and ``acl``.

    Raises
    ------
    KeyFileError
        ``config.keys_dir`` is not a fleet key directory or lacks the broker's files.
    """
    layout = KeyLayout(Path(config.keys_dir))
    fleet = read_fleet(layout.root)
    for needed in (layout.ca_cert, layout.crl, layout.server_cert, layout.server_key,
                   layout.registry):
        if not needed.is_file():
            raise KeyFileError(f"missing {needed} (re-run `fedbeat keys init`)")
    data_dir = Path(config.data_dir)
    tls = {
        "ca_cert": _path(layout.ca_cert), "crl": _path(layout.crl),
        "server_cert": _path(layout.server_cert), "server_key": _path(layout.server_key),
        "acl_file": _path(data_dir / "acl"), "bind": config.bind or "",
    }
    listeners = [_template("listener-tls.conf").substitute(tls, port=config.port,
                                                           protocol="mqtt")]
    if config.websocket_port is not None:
        listeners.append(_template("listener-tls.conf").substitute(
            tls, port=config.websocket_port, protocol="websockets"))
    if config.insecure_loopback_port is not None:
        listeners.append(_template("listener-insecure.conf").substitute(
            port=config.insecure_loopback_port))
    limits = config.limits
    conf = _template("mosquitto.conf").substitute(
        fleet=fleet, user=getpass.getuser(), data_dir=_path(data_dir),
        autosave_interval_s=limits.autosave_interval_s,
        persistent_client_expiration=limits.persistent_client_expiration,
        max_packet_bytes=limits.max_packet_bytes, max_queued_messages=limits.max_queued_messages,
        max_queued_bytes=limits.max_queued_bytes,
        max_inflight_messages=limits.max_inflight_messages,
        listeners="".join(listeners),
    )
    _, records = read_registry(layout.registry)
    revoked = "".join(f"\nuser {r.device_id}\ntopic deny #\n"
                      for r in records.values() if r.revoked)
    if revoked:
        revoked = "\n# Revoked devices (fedbeat keys revoke): no access at all." + revoked
    acl = _template("acl").substitute(fleet=fleet, revoked=revoked)
    return {"mosquitto.conf": conf, "acl": acl}


def write_config(config: MosquittoConfig) -> Path:
    """Write the generated files into ``config.data_dir`` (mode 0700); return the conf path."""
    files = render_config(config)
    data_dir = Path(config.data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, text in files.items():
        (data_dir / name).write_text(text)
    return data_dir / "mosquitto.conf"


def _connect_host(bind: str | None) -> str:
    # The broker certificate always names localhost; other binds are used as given.
    return "localhost" if bind in (None, "", "0.0.0.0", "::", LOOPBACK, "::1") else bind


class MosquittoBroker(BrokerProcess):
    """A Mosquitto process for one fleet.

    >>> with MosquittoBroker(MosquittoConfig(keys, data, port=free_port())) as broker:
    ...     broker.tls_url   # 'mqtts://localhost:PORT'

    Parameters
    ----------
    config
        Listeners, keys and limits.
    executable
        The mosquitto binary (default: :func:`find_mosquitto`).
    log_path
        Where the broker's log goes (default ``data_dir/mosquitto.log``); ``None`` with
        ``foreground=True`` leaves it on this process's stderr.
    """

    name = "mosquitto"

    def __init__(self, config: MosquittoConfig, *, executable: str | None = None,
                 log_path: Path | None = None, foreground: bool = False,
                 startup_timeout_s: float = 15.0) -> None:
        exe = executable or find_mosquitto()
        if exe is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto, brew "
                              f"install mosquitto, or set {MOSQUITTO_ENV}); for local "
                              "simulation use the embedded broker")
        if log_path is None and not foreground:
            log_path = Path(config.data_dir) / "mosquitto.log"
        super().__init__(log_path=log_path, startup_timeout_s=startup_timeout_s)
        self.config = config
        self.executable = exe
        self.fleet = read_fleet(Path(config.keys_dir))
        self.host = _connect_host(config.bind)

    def _prepare(self) -> None:
        write_config(self.config)

    def reload(self) -> None:
        """Regenerate the configuration and make Mosquitto re-read it (SIGHUP).

        Applies the ACLs, hence revocations, to new and open connections alike; listener and
        TLS settings (including the CRL) need :meth:`restart`.
        """
        write_config(self.config)
        if not self.running or self.pid is None:
            return
        before = self._reloads()
        os.kill(self.pid, signal.SIGHUP)
        if self.log_path is None:
            return
        deadline = time.monotonic() + 5.0
        while self._reloads() == before and time.monotonic() < deadline:
            time.sleep(0.02)

    def _reloads(self) -> int:
        """How often the log says the config was reloaded (so reload() can wait for it)."""
        if self.log_path is None:
            return 0
        try:
            return self.log_path.read_text(errors="replace").count("Reloading config")
        except OSError:
            return 0

    def _argv(self) -> Sequence[str]:
        return [self.executable, "-c", str(Path(self.config.data_dir) / "mosquitto.conf")]

    def _probe_ports(self) -> Sequence[tuple[str, int]]:
        probe = LOOPBACK if self.host == "localhost" else self.host
        ports = [(probe, self.config.port)]
        if self.config.websocket_port is not None:
            ports.append((probe, self.config.websocket_port))
        if self.config.insecure_loopback_port is not None:
            ports.append((LOOPBACK, self.config.insecure_loopback_port))
        return ports

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def tls_url(self) -> str:
        """``mqtts://HOST:PORT`` of the TLS listener (client certificate required)."""
        return f"mqtts://{self.host}:{self.config.port}"

    @property
    def websocket_url(self) -> str | None:
        """``wss://HOST:PORT/mqtt`` of the WebSocket listener, if any."""
        if self.config.websocket_port is None:
            return None
        return f"wss://{self.host}:{self.config.websocket_port}/mqtt"

    @property
    def insecure_url(self) -> str | None:
        """``mqtt://127.0.0.1:PORT`` of the plaintext development listener, if any."""
        if self.config.insecure_loopback_port is None:
            return None
        return f"mqtt://{LOOPBACK}:{self.config.insecure_loopback_port}"

    @property
    def urls(self) -> dict[str, str]:
        """Every listener's URL by kind (``tls``, ``websocket``, ``insecure``)."""
        urls = {"tls": self.tls_url, "websocket": self.websocket_url,
                "insecure": self.insecure_url}
        return {k: v for k, v in urls.items() if v is not None}
