"""Scenarios, variants, partitions and faults of the fleet simulation (no broker needed)."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fedbeat.device.settings import ConfigError
from fedbeat.tools.cli import cli
from fedbeat.tools.errors import UsageError
from fedbeat.tools.sim_fleet import (
    attackers,
    fleet_beats,
    is_offline,
    poison,
    straggler_delay,
    write_device_data,
)
from fedbeat.tools.sim_scenario import Scenario, load_scenario, scenario_text
from fedbeat.tools.sim_variants import parse_variants
from fedbeat.tools.simulate import expected_participants


def test_a_written_scenario_reads_back_equal(tmp_path: Path) -> None:
    scenario = Scenario().replace({"fleet.devices": 40, "faults.dropout": 0.2,
                                   "aggregation.compression": "topk:0.1",
                                   "privacy.dp": "dpsgd"})
    path = tmp_path / "scenario.toml"
    path.write_text(scenario_text(scenario))
    assert load_scenario(path) == scenario
    assert load_scenario(path, {"fleet.rounds": 9}).fleet.rounds == 9


@pytest.mark.parametrize(("text", "message"), [
    ("[fleet]\ndevcies = 3\n", "unknown setting.*devcies"),
    ("[fleet]\ndevices = 'three'\n", "devices must be int"),
    ("[flet]\n", "unknown section"),
    ("[faults]\nmalicious = 0.6\n", "majority of attackers"),
    ("[aggregation]\ncompression = 'zip'\n", "compression must be"),
    ("[fleet]\npartition = 'random'\n", "partition must be"),
    ("not toml = = 1", "not a valid TOML"),
])
def test_a_bad_scenario_file_says_what_to_fix(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_scenario(path)


@pytest.mark.parametrize(("args", "message"), [
    (["--scenario", "missing.toml"], "no such file"),
    (["--malicious", "0.7"], "0.7"),
    (["--compression", "zip"], "compression must be"),
    (["--compare", "fedavg,fedavgg"], "unknown variant 'fedavgg'"),
    (["--compare", "krum+attack"], "no attackers"),
    (["--role", "devices"], "needs --out RUN_DIR"),
])
def test_bad_flags_are_clear_errors_not_tracebacks(tmp_path: Path, args: list[str],
                                                   message: str) -> None:
    result = CliRunner().invoke(cli, ["simulate", "--synthetic", "--out",
                                      str(tmp_path / "run"), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception,
                                                                     SystemExit)


def test_write_scenario_writes_the_flags_into_a_loadable_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    result = CliRunner().invoke(cli, ["simulate", "--synthetic", "--devices", "12",
                                      "--dropout", "0.1", "--write-scenario", str(path)])
    assert result.exit_code == 0, result.output
    scenario = load_scenario(path)
    assert (scenario.fleet.devices, scenario.faults.dropout) == (12, 0.1)


def test_variants_change_only_what_their_names_say() -> None:
    base = Scenario().replace({"faults.malicious": 0.2, "privacy.noise_multiplier": 0.7})
    variants = {v.name: v for v in parse_variants(
        "centralized,fedavg,fedavg+dp,fedavg+dp=1.5,krum+attack,fedavg+fedprox=0.1", base)}
    assert variants["centralized"].centralized
    assert variants["fedavg"].scenario.faults.malicious == 0.0
    assert variants["fedavg"].scenario.privacy.dp == "none"
    assert variants["fedavg+dp"].scenario.privacy.noise_multiplier == 0.7
    assert variants["fedavg+dp=1.5"].scenario.privacy == Scenario().privacy.__class__(
        dp="dpsgd", noise_multiplier=1.5)
    assert variants["krum+attack"].scenario.aggregation.strategy == "krum"
    assert variants["krum+attack"].scenario.faults.malicious == 0.2
    assert variants["fedavg+fedprox=0.1"].scenario.training.fedprox_mu == 0.1
    tuned = parse_variants("centralized+lr=0.02,fedavg+lr=0.1+epochs=2,fedavg+fedavgm=0.3", base)
    assert tuned[2].scenario.aggregation.server_optimizer == "fedavgm"
    assert tuned[2].scenario.aggregation.server_lr == 0.3
    assert tuned[0].scenario.training.learning_rate == 0.02
    assert (tuned[1].scenario.training.learning_rate, tuned[1].scenario.training.epochs) == (
        0.1, 2)
    secure = {v.name: v.scenario for v in parse_variants("fedavg+secagg,fedavg+ddg=1.5", base)}
    assert secure["fedavg+secagg"].aggregation.secagg
    assert secure["fedavg+secagg"].privacy.dp == "none"
    assert (secure["fedavg+ddg=1.5"].privacy.dp, secure["fedavg+ddg=1.5"].aggregation.secagg,
            secure["fedavg+ddg=1.5"].privacy.noise_multiplier) == ("ddg", True, 1.5)
    for bad in ("fedavg,fedavg", "fedavg+dpp", "centralized+dp", "fedavg+attack=2", "",
                "fedavg+lr", "fedavg+secagg=2", "centralized+ddg"):
        with pytest.raises(UsageError):
            parse_variants(bad, base)


@pytest.mark.parametrize("partition", ["patient", "iid", "dirichlet"])
def test_partitions_deal_every_beat_to_exactly_one_device(tmp_path: Path,
                                                           partition: str) -> None:
    scenario = Scenario().replace({"fleet.devices": 30, "fleet.partition": partition,
                                   "fleet.alpha": 0.3})
    shares = write_device_data(scenario, tmp_path)
    assert len(shares) == 30
    windows, _, labels = fleet_beats(scenario)
    counts = np.sum([s.class_counts for s in shares], axis=0)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=5))
    sizes = [sum(s.class_counts) for s in shares]
    assert sum(sizes) == len(windows)
    assert min(sizes) > 0
    if partition == "patient":                  # 30 devices over 22 patients: each one's own
        assert all(len(s.patients) == 1 for s in shares)
    if partition == "dirichlet":                # label skew: class mixes differ a lot
        shares_v = [s.class_counts[2] / sum(s.class_counts) for s in shares]
        assert max(shares_v) > 3 * statistics.median(shares_v)


def test_attackers_are_a_fixed_seeded_fraction() -> None:
    devices = [f"dev-{i:04d}" for i in range(50)]
    scenario = Scenario().replace({"fleet.devices": 50, "faults.malicious": 0.2})
    chosen = attackers(scenario, devices)
    assert len(chosen) == 10
    assert attackers(scenario, devices) == chosen
    assert attackers(scenario.replace({"fleet.seed": 1}), devices) != chosen


def test_attacks_transform_the_honest_update_as_documented() -> None:
    delta = {"w": np.array([1.0, -2.0, 3.0], np.float32), "b": np.array([0.5], np.float32)}
    np.testing.assert_array_equal(poison(delta, "sign-flip", 4.0, 0)["w"], [-4.0, 8.0, -12.0])
    np.testing.assert_array_equal(poison(delta, "scale", 4.0, 0)["b"], [2.0])
    noise = poison({"w": np.ones(100_000, np.float32)}, "gaussian", 3.0, 7)["w"]
    assert np.linalg.norm(noise) == pytest.approx(3.0 * np.sqrt(100_000), rel=0.02)
    assert abs(float(noise.mean())) < 0.05          # noise, not a scaled copy of the update
    np.testing.assert_array_equal(poison(delta, "label-flip", 4.0, 0)["w"], delta["w"])


def test_dropouts_and_straggler_delays_follow_their_distributions() -> None:
    offline = [is_offline(0, f"dev-{d}", r, 0.3) for d in range(200) for r in range(20)]
    assert statistics.mean(offline) == pytest.approx(0.3, abs=0.02)
    assert is_offline(0, "dev-1", 3, 0.3) == is_offline(0, "dev-1", 3, 0.3)
    delays = [straggler_delay(0, f"dev-{d}", r, 2.0, 1.0) for d in range(200) for r in range(20)]
    assert statistics.median(delays) == pytest.approx(2.0, rel=0.1)
    assert np.std(np.log(delays)) == pytest.approx(1.0, rel=0.1)       # log-normal, sigma 1
    assert straggler_delay(0, "dev-1", 1, 0.0, 1.0) == 0.0


def test_round_targets_follow_participation_and_dropout() -> None:
    assert expected_participants(Scenario().replace({"fleet.devices": 10}), 10) == (5, 10)
    scenario = Scenario().replace({"fleet.devices": 100, "faults.dropout": 0.3})
    minimum, target = expected_participants(scenario, 100)
    assert target < 70
    assert target > 55
    assert minimum == target // 2


@pytest.mark.parametrize(("overrides", "message"), [
    ({"privacy.dp": "ddg"}, "needs aggregation.secagg"),
    ({"aggregation.secagg": True, "aggregation.strategy": "median"}, "reveals only the sum"),
    ({"aggregation.secagg": True, "aggregation.norm_bound": True}, "reveals only the sum"),
    ({"aggregation.secagg": True, "privacy.dp": "update"}, "--dp ddg"),
    ({"aggregation.secagg": True, "aggregation.secagg_bits": 24}, "secagg_bits"),
    ({"faults.secagg_dropout": 1.0}, "secagg_dropout"),
])
def test_secure_aggregation_settings_that_cannot_work_are_named(overrides: dict[str, object],
                                                                message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Scenario().replace(overrides).validate()
