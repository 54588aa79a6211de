"""``fedbeat simulate`` end to end: broker, aggregator and device daemons, then the report."""

from __future__ import annotations

import json
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
