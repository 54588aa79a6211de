"""Device daemons and the aggregator, all real processes, through Mosquitto with TLS.

Three ``fedbeat device run`` processes (synthetic patients, replayed as fast as possible) and
one ``fedbeat aggregator run`` complete two federated rounds: the devices receive the signed
model, train with the ONNX training graphs, and their sealed updates are accepted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from aggregator_harness import AggregatorProcess, write_config
from click.testing import CliRunner

from fedbeat.aggregator.model_store import ModelStore
from fedbeat.broker.mosquitto import MosquittoBroker
from fedbeat.device.config import example_device_config, load_device_config
from fedbeat.device.privacy.ledger import PrivacyLedger
from fedbeat.device.runtime.outbox import Outbox
from fedbeat.models.manifest import load_model_dir
from fedbeat.tools.cli import cli

pytestmark = pytest.mark.slow


def device_config(tmp: Path, keys: Path, device: str, url: str, model_dir: Path,
                  seed: int, tier: str = "pi") -> Path:
    path = tmp / f"{device}.toml"
    path.write_text(example_device_config(**{
        "device.keys": str(keys / "devices" / device), "device.state_dir": str(tmp / device),
        "device.tier": tier,
        "broker.url": url, "model.dir": str(model_dir), "data.source": "synthetic",
        "data.seed": seed, "data.speed": 0.0, "training.min_labelled_beats": 100,
        "service.retry_min_s": 1.0}))
    return path


def test_device_daemons_complete_rounds_with_the_aggregator(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet_keys: Path,
        model_dirs: dict[str, Path]) -> None:
    model_dir = model_dirs["ecg-cnn-s"]
    state = tmp_path / "aggregator-state"
    config = write_config(tmp_path / "aggregator.toml", keys=fleet_keys,
                          broker=mosquitto.tls_url, model_dir=model_dir, state_dir=state,
                          rounds__rounds=2, rounds__min_participants=3,
                          rounds__target_participants=3)
    aggregator = AggregatorProcess(config, tmp_path / "aggregator.log").start()
    devices = []
    for i in range(3):      # dev-2 is a wearable: int8 TFLite inference, head-only training
        path = device_config(tmp_path, fleet_keys, f"dev-{i}", mosquitto.tls_url, model_dir, i,
                             tier="wearable" if i == 2 else "pi")
        log = (tmp_path / f"dev-{i}.log").open("wb")
        devices.append((subprocess.Popen(
            [sys.executable, "-m", "fedbeat", "device", "run", "--config", str(path),
             "--rounds", "2"], stdout=log, stderr=log), path))
    try:
        assert aggregator.wait(240) == 0, aggregator.output()
        for process, _ in devices:
            assert process.wait(60) == 0
    finally:
        for process, _ in devices:
            if process.poll() is None:
                process.kill()
        aggregator.stop()
    versions = ModelStore.open(state / "models", model_dir).history()
    assert [v.version for v in versions] == [1, 2, 3]
    initial = load_model_dir(model_dir).initial_params().to_flat()
    assert not np.array_equal(versions[-1].params, initial)       # training moved the model
    assert np.all(np.isfinite(versions[-1].params))
    layout = load_model_dir(model_dir).manifest.layout
    head = load_model_dir(model_dir).manifest.extra["head"]["tensors"]
    for _, path in devices:
        cfg = load_device_config(path)
        outbox = Outbox(cfg.path(cfg.device.state_dir) / "outbox.sqlite", retry_min_s=1,
                        retry_max_s=2)
        assert outbox.rounds_answered() == {1, 2}
        outbox.close()
        log = (tmp_path / f"{cfg.path(cfg.device.keys).name}.log").read_text()
        assert "installed model v1" in log
        assert "SYNTHETIC" in log
        sent = f"of {len(layout.names)} tensors queued"
        if cfg.device.tier == "wearable":       # head only: a partial update
            assert "wearable: int8 TFLite of model v" in log
            assert f"update of {len(head)} {sent}" in log
        else:
            assert f"update of {len(layout.names)} {sent}" in log


def test_device_config_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "device.toml"
    bad.write_text('[data]\nsource = "bluetooth"\n')
    result = CliRunner().invoke(cli, ["device", "run", "--config", str(bad)])
    assert result.exit_code == 1
    assert "data.source must be one of" in result.output
    assert "Traceback" not in result.output


def test_local_dp_spends_budget_and_stops_at_it(
        tmp_path: Path, mosquitto: MosquittoBroker, fleet_keys: Path,
        model_dirs: dict[str, Path]) -> None:
    """Update-level DP with σ = 5: one round costs ε ≈ 2.0 (δ = 1e-5), two would cost ≈ 2.9,
    so with a budget of 2.5 each device trains once and refuses the second round."""
    model_dir = model_dirs["ecg-cnn-s"]
    state = tmp_path / "aggregator-state"
    config = write_config(tmp_path / "aggregator.toml", keys=fleet_keys,
                          broker=mosquitto.tls_url, model_dir=model_dir, state_dir=state,
                          rounds__rounds=2, rounds__min_participants=2,
                          rounds__target_participants=2, rounds__deadline_s=20.0,
                          rounds__max_extensions=0, rounds__dp_mode="update",
                          rounds__noise_multiplier=5.0, rounds__clip_norm=1.0)
    processes = []
    for i in (3, 4):
        path = device_config(tmp_path, fleet_keys, f"dev-{i}", mosquitto.tls_url, model_dir, i)
        text = path.read_text().replace("epsilon_budget = 10.0", "epsilon_budget = 2.5")
        path.write_text(text)
        log = (tmp_path / f"dev-{i}.log").open("wb")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "fedbeat", "device", "run", "--config", str(path)],
            stdout=log, stderr=log))
    # Devices first: round 2 is meant to time out, round 1 must not.
    aggregator = AggregatorProcess(config, tmp_path / "aggregator.log").start()
    try:
        assert aggregator.wait(240) == 0, aggregator.output()
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)
        aggregator.stop()
    doc = json.loads(CliRunner().invoke(cli, ["aggregator", "status", "--config", str(config),
                                              "--json"]).stdout)
    assert [r["state"] for r in reversed(doc["rounds"])] == ["closed", "aborted"]
    for row in doc["devices"]:
        assert row["epsilon"] == pytest.approx(2.0, abs=0.15)     # reported in the update
    for i in (3, 4):
        log = (tmp_path / f"dev-{i}.log").read_text()
        assert "would take ε from" in log
        assert "above the budget of 2.5" in log
        spent = PrivacyLedger.open(tmp_path / f"dev-{i}" / "privacy-ledger.json").spent(1e-5)
        assert spent == pytest.approx(2.0, abs=0.15)
        assert spent < 2.5
