"""``fedbeat bench device`` runs on a small model and reports every promised figure."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fedbeat.tools.cli import cli


@pytest.mark.slow
def test_bench_device_reports_the_promised_keys() -> None:
    result = CliRunner().invoke(cli, ["bench", "device", "--model", "ecg-cnn-s", "--beats", "64",
                                      "--repeats", "1", "--starts", "1", "--calls", "5",
                                      "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    for key in ("peak_rss_mb_training", "peak_rss_mb_imports_only", "cold_start_s",
                "cpu_s_per_round"):
        assert doc[key] > 0, key
    assert doc["peak_rss_mb_training"] >= doc["peak_rss_mb_imports_only"]
    assert set(doc["inference_us_per_beat"]) == {"onnx", "tflite_f32", "tflite_int8"}
    assert all(v is None or v > 0 for v in doc["inference_us_per_beat"].values())
    assert doc["inference_us_per_beat"]["onnx"] > 0
    for goal in ("peak_rss_mb_training", "cold_start_s"):
        assert isinstance(doc["goals"][goal]["met"], bool)
