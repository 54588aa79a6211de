"""``fedbeat device``: run the device daemon, write its configuration."""

from __future__ import annotations

from pathlib import Path

import click

from fedbeat.device.config import example_device_config, load_device_config
from fedbeat.tools.logs import configure_logging, stop_on_signals, write_example_config


@click.group()
def device() -> None:
    """The device daemon: ECG in, local training with DP, sealed updates out.

    \b
      fedbeat device init-config --out device.toml --keys keys/devices/dev-1
      fedbeat device run --config device.toml
    """


@device.command("init-config")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here instead of printing (refuses to overwrite).")
@click.option("--keys", default=None, help="This device's key directory ([device] keys).")
@click.option("--broker", "broker_url", default=None, help="Broker URL ([broker] url).")
@click.option("--model-dir", default=None, help="Built model directory ([model] dir).")
def init_config(out: Path | None, keys: str | None, broker_url: str | None,
                model_dir: str | None) -> None:
    """Write a commented configuration with every setting and its default."""
    overrides = {k: v for k, v in (("device.keys", keys), ("broker.url", broker_url),
                                   ("model.dir", model_dir)) if v is not None}
    write_example_config(example_device_config(**overrides), out)


@device.command()
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Device configuration (TOML; `fedbeat device init-config`).")
@click.option("--rounds", default=0, show_default=True, type=click.IntRange(0),
              help="Stop after training this many rounds (0: run until stopped).")
def run(config_path: Path, rounds: int) -> None:
    """Run the device until SIGTERM/Ctrl-C: stream beats, train when asked, send updates.

    Safe to stop or kill at any time: beats, the outbox of unanswered updates, the privacy
    ledger and the current and previous global models are on disk.
    """
    from fedbeat.device.runtime.service import DeviceService

    config = load_device_config(config_path)
    configure_logging(config.service.log_level, as_json=config.service.log_json)
    stop = stop_on_signals("fedbeat.device")
    service = DeviceService(config)
    try:
        service.start()
        service.run(stop, max_rounds=rounds)
    finally:
        service.close()
