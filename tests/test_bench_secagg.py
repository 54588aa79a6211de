"""``fedbeat bench secagg`` runs a small exact round and reports sane sizes and ratios."""

from __future__ import annotations

import json

from click.testing import CliRunner

from fedbeat.tools.cli import cli


def test_bench_secagg_reports_an_exact_sum_and_its_expansion() -> None:
    result = CliRunner().invoke(cli, ["bench", "secagg", "--devices", "12", "--model",
                                      "ecg-cnn-s", "--dropout", "0.25", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["params"], doc["padded_dim"], doc["bytes_per_value"]) == (4973, 5120, 3)
    (run,) = doc["runs"]
    assert (run["devices"], run["degree"], run["threshold"]) == (12, 11, 6)
    assert run["dropped"] == {"share": 1, "mask": 1, "unmask": 1}
    assert (run["contributors"], run["complete_devices"]) == (10, 9)
    assert run["sum_exact"] is True
    assert 0.5 < run["decode_error_rms"] / run["noise_stddev_of_sum"] < 2.0
    assert run["plain_float32_bytes"] == 4 * 4973
    assert run["plain_quantised_bytes"] == 5120 * 3
    assert run["device_bytes_up"] > run["masked_input_bytes"] > run["plain_quantised_bytes"]
    assert run["expansion_vs_quantised"] == run["device_bytes_up"] / (5120 * 3)
    assert 1.0 < run["expansion_vs_quantised"] < 2.0
    assert run["expansion_vs_float32"] < run["expansion_vs_quantised"]
    assert run["aggregator_bytes_in"] >= 9 * run["device_bytes_up"]
    for key in ("device_encode_s", "device_protocol_s", "aggregator_compute_s"):
        assert run[key] > 0, key
    assert set(run["cost_model"]["device_s"]) == {"key_agreement_and_aead", "shamir_split",
                                                  "mask_expansion"}


def test_bench_secagg_refuses_a_fleet_too_small_to_mask() -> None:
    result = CliRunner().invoke(cli, ["bench", "secagg", "--devices", "2", "--json"])
    assert result.exit_code != 0
    assert "--devices" in result.output


def test_authenticated_rounds_carry_certificates_and_still_sum_exactly() -> None:
    args = ["bench", "secagg", "--devices", "8", "--dropout", "0", "--json"]
    plain = json.loads(CliRunner().invoke(cli, args).stdout)["runs"][0]
    result = CliRunner().invoke(cli, [*args, "--authenticated"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["authenticated"] is True
    (signed,) = doc["runs"]
    assert signed["sum_exact"] is True
    # each neighbour's certificate (~450 B) and signature (~70 B) come down with its keys
    assert signed["device_bytes_down"] - plain["device_bytes_down"] > 7 * 400
    assert signed["device_bytes_up"] - plain["device_bytes_up"] > 400
