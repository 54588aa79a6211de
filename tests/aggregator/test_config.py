"""The aggregator's TOML configuration: complete defaults, strict parsing, clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedbeat.aggregator.config import (
    SECTIONS,
    AggregatorConfig,
    ConfigError,
    example_config,
    load_config,
)
from fedbeat.tools.cli import cli


def test_the_example_is_complete_and_loads_as_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(example_config())
    config = load_config(path)
    defaults = AggregatorConfig(base_dir=tmp_path)
    assert config == defaults
    # Every setting appears in its section, under a comment explaining it.
    text = example_config()
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        for f in dataclasses.fields(cls):
            assert f"# {f.metadata['doc']}\n{f.name} = " in text


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "a.toml"
    path.write_text('[fleet]\nkeys = "../keys"\n')
    config = load_config(path)
    assert config.path(config.fleet.keys) == (tmp_path / "keys").resolve()


@pytest.mark.parametrize(("text", "message"), [
    ('[fleet]\nkeyz = "k"\n', "unknown setting(s) in [fleet]: keyz"),
    ('[flete]\n', "unknown section(s) flete"),
    ('[rounds]\ndeadline_s = "soon"\n', "deadline_s must be float"),
    ('[rounds]\nepochs = true\n', "epochs must be int"),
    ('[rounds]\nmin_participants = 5\ntarget_participants = 2\n', "min_participants"),
    ('[aggregation]\nmax_update_norm = 100.0\n', "(0, 64)"),
    ('[service]\nlog_level = "loud"\n', "log_level"),
    ('not toml at all ][', "not a valid TOML file"),
])
def test_bad_settings_name_what_to_fix(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "a.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def test_cli_reports_config_errors_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["aggregator", "status", "--config", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "init-config" in result.output
    assert "Traceback" not in result.output
    out = tmp_path / "a.toml"
    assert runner.invoke(cli, ["aggregator", "init-config", "--out", str(out),
                               "--keys", "k"]).exit_code == 0
    assert load_config(out).fleet.keys == "k"
    again = runner.invoke(cli, ["aggregator", "init-config", "--out", str(out)])
    assert again.exit_code == 1
    assert "exists" in again.output


def test_an_unknown_strategy_is_a_config_error(tmp_path: Path,
                                               model_dirs: dict[str, Path]) -> None:
    from fedbeat.aggregator.service import build_strategy

    path = tmp_path / "a.toml"
    path.write_text('[aggregation]\nstrategy = "fedmagic"\n')
    with pytest.raises(ConfigError, match="fedmagic"):
        build_strategy(load_config(path))
