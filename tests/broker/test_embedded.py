"""The embedded broker (amqtt) and ``fedbeat broker`` run in the foreground."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from mqtt_testing import Probe, connect

from fedbeat.broker.embedded import EmbeddedBroker
from fedbeat.broker.launch import BrokerError, free_port
from fedbeat.broker.mosquitto import find_mosquitto
from fedbeat.tools.cli import cli


def test_embedded_broker_round_trips_qos1_and_retained(
        embedded_broker: EmbeddedBroker, mqtt_connect: Callable[..., Probe]) -> None:
    sub = mqtt_connect(embedded_broker.url, protocol=mqtt.MQTTv311)
    pub = mqtt_connect(embedded_broker.url, protocol=mqtt.MQTTv311)
    sub.subscribe("fedbeat/ward-7/device/+/update")
    pub.publish("fedbeat/ward-7/device/dev-a/update", b"u" * 20_000)
    got = sub.get()
    assert (got.topic, len(got.payload)) == ("fedbeat/ward-7/device/dev-a/update", 20_000)
    pub.publish("fedbeat/ward-7/round", b"round 1", retain=True)
    late = mqtt_connect(embedded_broker.url, protocol=mqtt.MQTTv311)
    late.subscribe("fedbeat/ward-7/round")
    got = late.get()
    assert (got.payload, got.retain) == (b"round 1", True)


def test_embedded_broker_stops_cleanly_and_frees_its_port() -> None:
    broker = EmbeddedBroker().start()
    pid = broker.pid
    assert pid is not None
    broker.stop()
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with EmbeddedBroker(broker.port) as again:        # the port is usable again at once
        connect(again.url, protocol=mqtt.MQTTv311).close()


def test_embedded_broker_refuses_a_non_loopback_address() -> None:
    with pytest.raises(BrokerError, match="loopback only"):
        EmbeddedBroker(host="0.0.0.0")


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            connect(f"mqtt://127.0.0.1:{port}", protocol=mqtt.MQTTv311).close()
            return
        except Exception:
            time.sleep(0.1)
    raise AssertionError("broker did not come up")


def _foreground(args: list[str]) -> tuple[int, str]:
    """Run ``fedbeat broker run ...`` as a user would, probe it, then press Ctrl-C."""
    port = int(args[args.index("--insecure-loopback-port" if "--insecure-loopback-port" in args
                                else "--port") + 1])
    proc = subprocess.Popen([sys.executable, "-m", "fedbeat", "broker", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_port(port, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode()


def test_broker_run_embedded_warns_loudly_and_stops_on_ctrl_c() -> None:
    code, err = _foreground(["--embedded", "--port", str(free_port())])
    assert code == 0, err
    assert "NO TLS" in err
    assert "Traceback" not in err


def test_broker_run_mosquitto_in_the_foreground(keys_dir: Path, tmp_path: Path) -> None:
    if find_mosquitto() is None:
        pytest.skip("install mosquitto (apt-get install mosquitto)")
    code, err = _foreground(["--keys", str(keys_dir), "--port", str(free_port()),
                             "--bind", "127.0.0.1", "--data-dir", str(tmp_path / "data"),
                             "--insecure-loopback-port", str(free_port())])
    assert code == 0, err
    assert "mosquitto for fleet ward-7" in err
    assert (tmp_path / "data" / "mosquitto.conf").is_file()


def test_broker_config_writes_files(keys_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["broker", "config", "--keys", str(keys_dir), "--out",
                                      str(tmp_path / "conf"), "--websocket-port", "443",
                                      "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert "protocol websockets" in Path(written["config"]).read_text()
    assert "%u" in Path(written["acl"]).read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["broker", "run", "--keys", "no-such-keys-dir"], "does not exist"),
    (["broker", "config", "--keys", "no-such-keys-dir", "--out", "never-written"],
     "does not exist"),
])
def test_broker_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
