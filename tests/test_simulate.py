"""``fedbeat simulate`` end to end: broker, aggregator and device daemons, then the report."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fedbeat.broker.mosquitto import find_mosquitto
from fedbeat.tools.cli import cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_a_small_synthetic_federation_runs_and_reports(tmp_path: Path, broker: str) -> None:
    if broker == "mosquitto" and find_mosquitto() is None:
        pytest.skip("install mosquitto (apt-get install mosquitto)")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["simulate", "--devices", "3", "--rounds", "2",
                                      "--synthetic", "--broker", broker, "--out", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2]
    for line in lines:
        assert line["state"] == "closed"
        assert line["participants"] == 3
        assert line["bytes"] > 3 * 4 * 4000             # three sealed ecg-cnn-s updates
        assert line["evaluation"]["beats"] > 0          # held-out simulated patients
        assert "SYNTHETIC" in line["evaluation"]["data"]
    assert json.loads((out / "config.json").read_text())["synthetic"] is True
    params = np.frombuffer((out / "final-model" / "params.bin").read_bytes(), "<f4")
    assert params.size > 4000
    assert np.all(np.isfinite(params))
    report = (out / "report.html").read_text()
    assert "SYNTHETIC" in report
    assert "<svg" in report


def _lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_scenario_with_dropouts_stragglers_and_attackers_completes(tmp_path: Path) -> None:
    scenario = tmp_path / "faulty.toml"
    scenario.write_text("[fleet]\ndevices = 14\nrounds = 3\nbroker = 'embedded'\n"
                        "[aggregation]\nstrategy = 'krum'\ndeadline_s = 20.0\n"
                        "[faults]\ndropout = 0.2\nstraggler_median_s = 0.5\nmalicious = 0.15\n"
                        "attack = 'scale'\nattack_scale = 50.0\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["simulate", "--synthetic", "--scenario", str(scenario),
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout)
    lines = final["rounds"]
    assert [line["round"] for line in lines] == [1, 2, 3]
    assert all(line["state"] == "closed" for line in lines)
    # 20 % offline each round (seeded: the same devices every run) — some rounds miss devices.
    assert sum(line["participants"] for line in lines) < 3 * 14
    # Scaled by 50, the attackers' updates exceed the norm bound and are refused by name.
    assert lines[-1]["rejections"].get("norm_exceeded", 0) >= 1
    config = json.loads((out / "config.json").read_text())
    assert len(config["attackers"]) == 2
    assert final["macro_f1"] is not None
    assert set(final) >= {"macro_f1", "per_class", "rounds", "epsilon_max", "bytes_total",
                          "report"}


def test_devices_in_worker_processes_with_compression_and_dp(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["simulate", "--synthetic", "--devices", "6", "--rounds",
                                      "2", "--workers", "2", "--broker", "embedded",
                                      "--compression", "i8", "--dp", "dpsgd", "--sigma", "1.0",
                                      "--partition", "iid", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout)
    assert [line["participants"] for line in final["rounds"]] == [6, 6]
    # int8 updates: about a quarter of the float32 bytes of the same model (plus framing).
    params = np.frombuffer((out / "model" / "params.bin").read_bytes(), "<f4").size
    assert final["rounds"][0]["bytes"] < 6 * params * 4 * 0.4
    assert 0 < final["epsilon_max"] < 10
    assert "devices-0" in (out / "simulation.log").read_text()      # a worker process logged


def test_compare_runs_every_variant_on_the_same_data_into_one_report(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = CliRunner().invoke(cli, ["simulate", "--synthetic", "--devices", "3", "--rounds",
                                      "2", "--broker", "embedded", "--compare",
                                      "centralized,fedavg,fedavg+dp=1.0", "--out", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout)
    assert set(final["variants"]) == {"centralized", "fedavg", "fedavg+dp=1.0"}
    assert final["variants"]["fedavg"]["epsilon_max"] == 0.0
    assert final["variants"]["fedavg+dp=1.0"]["epsilon_max"] > 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert [v["name"] for v in comparison["variants"]] == ["centralized", "fedavg",
                                                          "fedavg+dp=1.0"]
    report = (out / "report.html").read_text()
    for name in final["variants"]:
        assert name in report
    # Same data: the centralized run trained on exactly the beats the devices held.
    fed = json.loads((out / "fedavg" / "config.json").read_text())["device_classes"]
    held = np.sum(list(fed.values()), axis=0)
    central = json.loads((out / "centralized" / "config.json").read_text())
    assert central["train_beats"] == int(held.sum())


def test_one_fleet_carried_by_an_aggregator_host_and_two_device_hosts(tmp_path: Path) -> None:
    if find_mosquitto() is None:
        pytest.skip("install mosquitto (apt-get install mosquitto)")
    run = tmp_path / "shared-run"
    base = [sys.executable, "-m", "fedbeat", "simulate"]
    aggregator = subprocess.Popen(
        [*base, "--role", "aggregator", "--synthetic", "--devices", "4", "--rounds", "2",
         "--broker", "mosquitto", "--out", str(run), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hosts: list[subprocess.Popen[str]] = []
    try:
        deadline = time.monotonic() + 120
        while not (run / "aggregator.toml").exists():      # written after the device configs
            assert aggregator.poll() is None, aggregator.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        url = (run / "broker-url").read_text().strip()
        hosts = [subprocess.Popen([*base, "--role", "devices", "--out", str(run),
                                   "--broker-url", url, "--shard", shard],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for shard in ("1/2", "2/2")]
        out, err = aggregator.communicate(timeout=180)
        assert aggregator.returncode == 0, err
        for host in hosts:                    # they leave once they saw the last round end
            _, host_err = host.communicate(timeout=60)
            assert host.returncode == 0, host_err
            assert "hosted 2 devices" in host_err
    finally:
        for process in (aggregator, *hosts):
            if process.poll() is None:
                process.kill()
    final = json.loads(out)
    assert [line["participants"] for line in final["rounds"]] == [4, 4]


def test_secure_aggregation_with_distributed_dp_survives_dropouts_mid_protocol(
        tmp_path: Path) -> None:
    """--secagg --dp ddg end to end over MQTT: devices offline for a round and devices that go
    silent between protocol stages; the rounds still close on the survivors' exact sum, the
    aggregator never holds an individual update, and ε comes from the secure sum."""
    from fedbeat.aggregator.store import StateStore

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["simulate", "--synthetic", "--devices", "10", "--rounds",
                                      "2", "--secagg", "--dp", "ddg", "--sigma", "1.0",
                                      "--epsilon-budget", "30",     # ledger: ε 17.6 for two
                                      "--dropout", "0.1", "--secagg-dropout", "0.3",
                                      "--deadline", "15", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout)
    lines = final["rounds"]
    assert [line["state"] for line in lines] == ["closed", "closed"]
    for line in lines:
        stages = line["secagg"]["stages"]
        assert 3 <= line["participants"] == stages["masked"] <= stages["shared"]
        assert stages["shared"] <= stages["advertised"] <= 10
        assert line["secagg"]["bytes_in"] > line["participants"] * 5120 * 3   # masked inputs
    # seeded faults: some devices went quiet after advertising their keys
    assert any(line["secagg"]["stages"]["masked"] < line["secagg"]["stages"]["advertised"]
               for line in lines)
    assert 0 < lines[0]["secagg"]["epsilon_total"] < lines[1]["secagg"]["epsilon_total"]
    assert final["epsilon_max"] == pytest.approx(lines[1]["secagg"]["epsilon_total"])
    store = StateStore(out / "aggregator" / "aggregator.sqlite")
    try:
        assert all(store.round_updates(r) == [] for r in (1, 2))   # no update in the clear
    finally:
        store.close()
    report = (out / "report.html").read_text()
    assert "Secure aggregation overhead" in report
    initial = np.frombuffer((out / "model" / "params.bin").read_bytes(), "<f4")
    trained = np.frombuffer((out / "final-model" / "params.bin").read_bytes(), "<f4")
    assert np.all(np.isfinite(trained))
    assert not np.array_equal(initial, trained)


def test_secure_aggregation_with_a_robust_strategy_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["simulate", "--synthetic", "--secagg", "--strategy",
                                      "krum", "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "reveals only the sum" in result.output
    assert "Traceback" not in result.output


def test_secure_round_with_too_many_silent_devices_aborts_and_says_why(tmp_path: Path) -> None:
    """Most devices go quiet mid-protocol: the aggregator aborts before anyone reveals a share
    and the run reports the reason."""
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["simulate", "--synthetic", "--devices", "6", "--rounds",
                                      "1", "--secagg", "--secagg-dropout", "0.9",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    (line,) = json.loads(result.stdout)["rounds"]
    assert line["state"] == "aborted"
    assert "fewer than the minimum" in line["secagg"]["reason"]
    assert line["secagg"]["stages"]["revealed"] == 0
    assert "fewer than the minimum" in (out / "report.html").read_text()
