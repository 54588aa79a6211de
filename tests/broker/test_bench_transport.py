"""``fedbeat bench transport`` runs end to end on a small update and loses nothing."""

from __future__ import annotations

import json

from click.testing import CliRunner

from fedbeat.tools.cli import cli


def test_bench_transport_reports_the_promised_keys_and_loses_nothing() -> None:
    result = CliRunner().invoke(cli, ["bench", "transport", "--params", "3000", "--updates",
                                      "12", "--devices", "3", "--repeats", "2", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["lost"] == 0
    assert doc["end_to_end"]["received"] == 12
    assert doc["end_to_end"]["rejections"] == {}
    for key in ("seal_mb_per_s", "open_mb_per_s", "e2e_updates_per_s"):
        assert doc[key] > 0
    # Sealing adds a fixed overhead: header, signature, HPKE enc and tag, not a multiple.
    assert 0 < doc["crypto"]["update_bytes"] - doc["crypto"]["plain_bytes"] < 400
