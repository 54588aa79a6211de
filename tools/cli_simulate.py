"""``fedbeat simulate``: a fleet on one machine — broker, aggregator, devices — and a report."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedbeat.tools.datasets import DATA_ENV, find_mitdb
from fedbeat.tools.output import emit_json, stderr


@click.command()
@click.option("--devices", default=8, show_default=True, type=click.IntRange(1, 1000),
              help="Devices (with MIT-BIH: the first DS1 patients; at most 22).")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--model", default="ecg-cnn-s", show_default=True,
              help="ecg-cnn-s (wearable class) or ecg-cnn-m (Pi class).")
@click.option("--data", "data_dir", envvar=DATA_ENV, type=click.Path(file_okay=False,
              path_type=Path), help=f"MIT-BIH directory (default ${DATA_ENV}): DS1 patients "
              "become devices, DS2 is the test set. Without it: simulated patients.")
@click.option("--synthetic", is_flag=True, help="Use simulated patients even if data is set.")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(1, 100),
              help="Local epochs per round.")
@click.option("--lr", "learning_rate", default=0.01, show_default=True, type=float,
              help="Local learning rate.")
@click.option("--strategy", default="fedavg", show_default=True,
              type=click.Choice(["fedavg", "trimmed-mean", "median", "krum", "fedbuff"]))
@click.option("--dp", "dp_mode", default="none", show_default=True,
              type=click.Choice(["none", "update", "dpsgd"]), help="Local differential privacy.")
@click.option("--sigma", "noise_multiplier", default=1.0, show_default=True, type=float,
              help="DP noise multiplier (with --dp).")
@click.option("--clip", "clip_norm", default=1.0, show_default=True, type=float,
              help="DP clipping norm C (with --dp).")
@click.option("--participation", default=1.0, show_default=True,
              type=click.FloatRange(0.01, 1.0), help="Fraction of devices asked each round.")
@click.option("--broker", default="auto", show_default=True,
              type=click.Choice(["auto", "mosquitto", "embedded"]),
              help="auto: Mosquitto with TLS if installed, else the embedded broker.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory [default: runs/<timestamp>].")
@click.option("--json", "as_json", is_flag=True, help="Print the per-round metrics as JSON.")
def simulate(devices: int, rounds: int, model: str, data_dir: Path | None, synthetic: bool,
             epochs: int, learning_rate: float, strategy: str, dp_mode: str,
             noise_multiplier: float, clip_norm: float, participation: float, broker: str,
             seed: int, out: Path | None, as_json: bool) -> None:
    """Simulate a federation on this machine and write a report.

    A real broker, the aggregator service and DEVICES device daemons (each its own MQTT client
    with its own keys, store, outbox and privacy ledger) run ROUNDS rounds; the global model is
    evaluated after every round. Writes metrics.jsonl, config.json, the final model and a
    self-contained report.html into runs/<timestamp>/.

    \b
      fedbeat simulate                                 # simulated patients, a few minutes
      fedbeat simulate --data $FEDBEAT_DATA --devices 22 --rounds 20
      fedbeat simulate --dp dpsgd --sigma 1.1 --strategy krum
    """
    from fedbeat.tools.simulate import Scenario, run_simulation

    data = "" if synthetic or data_dir is None else str(find_mitdb(data_dir))
    scenario = Scenario(devices=devices, rounds=rounds, model=model, data=data, epochs=epochs,
                        learning_rate=learning_rate, strategy=strategy, dp_mode=dp_mode,
                        noise_multiplier=noise_multiplier if dp_mode != "none" else 0.0,
                        clip_norm=clip_norm, participation=participation, broker=broker,
                        seed=seed)
    run_dir = out or Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if scenario.synthetic:
        stderr.print("[bold yellow]SYNTHETIC DATA[/bold yellow]: simulated patients, not "
                     f"clinical ECG (point --data or ${DATA_ENV} at MIT-BIH for real records)")
    lines: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"{devices} devices, rounds", total=rounds)

        def on_round(line: dict[str, Any]) -> None:
            lines.append(line)
            bar.update(task, completed=len(lines))
            evaluation = line.get("evaluation") or {}
            f1 = evaluation.get("macro_f1_nsvf")
            stderr.print(f"round {line['round']} {line['state']}: {line['participants']} "
                         f"updates, macro-F1 {f1 if f1 is None else round(f1, 3)}")

        run_simulation(scenario, run_dir, on_round)
    if as_json:
        emit_json({"run_dir": str(run_dir), "rounds": lines})
    else:
        stderr.print(f"report: {run_dir / 'report.html'}")
