"""``fedbeat bench ingest`` runs on a small model and accepts every update it generates."""

from __future__ import annotations

import json

from click.testing import CliRunner

from fedbeat.tools.cli import cli


def test_bench_ingest_reports_the_promised_keys_and_accepts_every_update() -> None:
    result = CliRunner().invoke(cli, [
        "bench", "ingest", "--model", "ecg-cnn-s", "--updates", "20", "--devices", "10",
        "--repeats", "1", "--memory-updates", "10", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["updates"] == 20
    assert doc["rounds"] == 2                  # 10 devices, accepted once per (device, round)
    assert doc["accepted"] == 20
    assert doc["rejected"] == {}
    for key in ("updates_per_s", "updates_per_s_without_store", "updates_per_cpu_s"):
        assert doc[key] > 0
    assert set(doc["stage_seconds"]) == {"verify", "open", "decode", "validate", "store",
                                         "accumulate"}
    assert all(seconds > 0 for seconds in doc["stage_seconds"].values())
    rows = {(row["strategy"], row["updates"]): row for row in doc["memory"]}
    assert set(rows) == {(s, 10) for s in ("fedavg", "median", "trimmed-mean", "krum")}
    assert all(row["accepted"] == row["updates"] for row in rows.values())
    # The robust rules keep every update; FedAvg's streaming sums do not grow with them.
    assert rows[("median", 10)]["held_bytes"] > rows[("fedavg", 10)]["held_bytes"]
