"""``fedbeat aggregator``: run the service, write its configuration, inspect and roll back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from fedbeat.aggregator.config import AggregatorConfig, example_config, load_config
from fedbeat.tools.logs import configure_logging, stop_on_signals, write_example_config
from fedbeat.tools.output import emit_json, stderr, stdout

_CONFIG = click.option("--config", "config_path", required=True,
                       type=click.Path(dir_okay=False, path_type=Path),
                       help="Aggregator configuration (TOML; `fedbeat aggregator init-config`).")


@click.group()
def aggregator() -> None:
    """The aggregator service: rounds, robust aggregation, signed models, crash recovery.

    \b
      fedbeat aggregator init-config --out aggregator.toml
      fedbeat aggregator run --config aggregator.toml
      fedbeat aggregator status --config aggregator.toml --json
      fedbeat aggregator rollback 3 --config aggregator.toml
    """


@aggregator.command("init-config")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here instead of printing (refuses to overwrite).")
@click.option("--keys", default=None, help="Fleet key directory to put in [fleet] keys.")
@click.option("--broker", "broker_url", default=None, help="Broker URL for [fleet] broker.")
@click.option("--model-dir", default=None, help="Built model directory for [model] dir.")
def init_config(out: Path | None, keys: str | None, broker_url: str | None,
                model_dir: str | None) -> None:
    """Write a commented configuration with every setting and its default."""
    overrides = {k: v for k, v in (("fleet.keys", keys), ("fleet.broker", broker_url),
                                   ("model.dir", model_dir)) if v is not None}
    write_example_config(example_config(**overrides), out)


@aggregator.command()
@_CONFIG
def run(config_path: Path) -> None:
    """Run the aggregator until SIGTERM/Ctrl-C (or the configured number of rounds).

    Safe to kill at any moment: a restart resumes the open round with every accepted update.
    """
    from fedbeat.aggregator.service import AggregatorService

    config = load_config(config_path)
    configure_logging(config.service.log_level, as_json=config.service.log_json)
    stop = stop_on_signals("fedbeat.aggregator")
    service = AggregatorService(config)
    try:
        service.start()
        service.run(stop)
    finally:
        service.close()


def _status_table(doc: dict[str, Any]) -> Table:
    table = Table("round", "state", "model", "result", "reason", title="recent rounds")
    for r in doc["rounds"][:20]:
        table.add_row(str(r["round_id"]), r["state"], f"v{r['model_version']}",
                      f"v{r['result_version']}" if r["result_version"] else "-", r["reason"])
    return table


@aggregator.command()
@_CONFIG
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: Path, as_json: bool) -> None:
    """Rounds, per-round metrics, rejections by reason and devices (read-only)."""
    from fedbeat.aggregator.service import status as read_status

    doc = read_status(load_config(config_path))
    if as_json:
        emit_json(doc)
        return
    stdout.print(_status_table(doc))
    stdout.print(f"rejections: {doc['rejections'] or 'none'}")


def _models_root(config: AggregatorConfig) -> tuple[Path, Path]:
    from fedbeat.aggregator.service import MODELS

    return config.path(config.fleet.state_dir) / MODELS, config.path(config.model.dir)


@aggregator.command()
@_CONFIG
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(config_path: Path, as_json: bool) -> None:
    """The global model's version history."""
    from fedbeat.aggregator.model_store import history_command

    rows = history_command(*_models_root(load_config(config_path)))
    if as_json:
        emit_json(rows)
        return
    table = Table("version", "reason", "round", "parent", "sha256", title="model versions")
    for row in rows:
        mark = " (current)" if row.get("current") else ""
        table.add_row(f"v{row['version']}{mark}", str(row.get("reason", row.get("error"))),
                      str(row.get("round_id")), str(row.get("parent")),
                      str(row.get("params_sha256", ""))[:12])
    stdout.print(table)


@aggregator.command()
@click.argument("version", type=click.IntRange(1))
@_CONFIG
@click.option("--note", default="", help="Why (kept with the new version).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def rollback(version: int, config_path: Path, note: str, as_json: bool) -> None:
    """Make VERSION's parameters current again, as a new version.

    Version numbers only grow, so devices always install it. A running service aborts its open
    round (devices trained from the model being replaced), publishes the new version and opens
    the next round from it.
    """
    from fedbeat.aggregator.model_store import rollback_command

    config = load_config(config_path)
    root, model_dir = _models_root(config)
    row = rollback_command(root, model_dir, version, note=note,
                           keep=config.model.keep_versions or None)
    if as_json:
        emit_json(row)
    else:
        stderr.print(f"v{row['version']} is current: the parameters of v{version}")
