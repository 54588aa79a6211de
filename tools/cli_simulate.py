"""``fedbeat simulate``: a fleet on one machine — broker, aggregator, devices — and a report."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedbeat.device.settings import ConfigError
from fedbeat.tools.datasets import DATA_ENV, find_mitdb
from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, stderr
from fedbeat.tools.sim_scenario import ATTACKS, PARTITIONS, SERVER_OPTIMIZERS, STRATEGIES

OVERRIDES = {
    "devices": "fleet.devices", "rounds": "fleet.rounds", "model": "fleet.model",
    "partition": "fleet.partition", "alpha": "fleet.alpha", "workers": "fleet.workers",
    "broker": "fleet.broker", "seed": "fleet.seed", "epochs": "training.epochs",
    "batch_size": "training.batch_size", "learning_rate": "training.learning_rate",
    "fedprox_mu": "training.fedprox_mu", "class_weight": "training.class_weight",
    "dp_mode": "privacy.dp",
    "noise_multiplier": "privacy.noise_multiplier", "clip_norm": "privacy.clip_norm",
    "epsilon_budget": "privacy.epsilon_budget", "strategy": "aggregation.strategy",
    "server_optimizer": "aggregation.server_optimizer", "server_lr": "aggregation.server_lr",
    "norm_bound": "aggregation.norm_bound", "compression": "aggregation.compression",
    "max_update_norm": "aggregation.max_update_norm",
    "participation": "aggregation.participation", "deadline_s": "aggregation.deadline_s",
    "dropout": "faults.dropout", "straggler_median_s": "faults.straggler_median_s",
    "malicious": "faults.malicious", "attack": "faults.attack",
    "attack_scale": "faults.attack_scale", "secagg": "aggregation.secagg",
    "secagg_bits": "aggregation.secagg_bits", "secagg_dropout": "faults.secagg_dropout",
}
"""Flag (parameter name) → scenario setting it overrides."""


def _options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The scenario flags; each overrides the --scenario file only when given."""
    flags = [
        click.option("--devices", type=click.IntRange(1, 100_000),
                     help="Devices [default 8]. With MIT-BIH, up to 22 get a DS1 patient each; "
                          "more split patients' recordings."),
        click.option("--rounds", type=click.IntRange(1, 10_000), help="Rounds [default 5]."),
        click.option("--model", help="ecg-cnn-s (wearable class, default) or ecg-cnn-m."),
        click.option("--partition", type=click.Choice(PARTITIONS),
                     help="How beats are dealt to devices [default patient]."),
        click.option("--alpha", type=float, help="Dirichlet concentration [default 0.5]."),
        click.option("--workers", type=click.IntRange(1, 64),
                     help="Device processes [default 1]; use the core count for big fleets."),
        click.option("--broker", type=click.Choice(["auto", "mosquitto", "embedded"]),
                     help="auto [default]: Mosquitto with TLS if installed, else embedded."),
        click.option("--seed", type=int, help="Seeds model, partition, faults [default 0]."),
        click.option("--epochs", type=click.IntRange(1, 100), help="Local epochs [default 1]."),
        click.option("--batch-size", type=click.IntRange(1, 65536),
                     help="Local batch size [default 32]."),
        click.option("--lr", "learning_rate", type=float,
                     help="Local learning rate [default 0.01]."),
        click.option("--fedprox-mu", type=float, help="FedProx proximal term [default 0]."),
        click.option("--class-weight", help="global [default]: the fleet's balanced class "
                                            "weights, announced; local: each device balances "
                                            "its own labels; or N,S,V,F,Q."),
        click.option("--dp", "dp_mode", type=click.Choice(["none", "dpsgd", "update", "ddg"]),
                     help="DP: dpsgd (sample-level), update (user-level, local) or ddg "
                          "(user-level, distributed noise; needs --secagg) [none]."),
        click.option("--sigma", "noise_multiplier", type=float,
                     help="DP noise multiplier [default 1.0]."),
        click.option("--clip", "clip_norm", type=float, help="DP clipping norm [default 1.0]."),
        click.option("--epsilon-budget", type=float,
                     help="Per-device privacy budget [default 10]."),
        click.option("--strategy", type=click.Choice(STRATEGIES),
                     help="Aggregation [fedavg]; fedbuff is asynchronous."),
        click.option("--async", "async_mode", is_flag=True, default=None,
                     help="Asynchronous rounds (same as --strategy fedbuff)."),
        click.option("--server-optimizer", type=click.Choice(SERVER_OPTIMIZERS),
                     help="Server optimizer [sgd]."),
        click.option("--server-lr", type=float, help="Server learning rate [1.0]."),
        click.option("--max-update-norm", type=float,
                     help="Updates with a larger L2 norm are refused [10]."),
        click.option("--norm-bound", is_flag=True, default=None,
                     help="Clip updates to the norm bound before aggregating."),
        click.option("--compression", help="f32 [default], f16, i8 or topk:FRACTION."),
        click.option("--secagg", is_flag=True, default=None,
                     help="Secure aggregation (SecAgg+): the aggregator sees only the sum."),
        click.option("--secagg-bits", type=click.IntRange(2, 20),
                     help="Ring bits per value under --secagg [20]."),
        click.option("--secagg-dropout", type=click.FloatRange(0.0, 0.99),
                     help="Probability a device goes silent mid-protocol under --secagg [0]."),
        click.option("--participation", type=click.FloatRange(0.01, 1.0),
                     help="Fraction of devices asked each round [1.0]."),
        click.option("--deadline", "deadline_s", type=float,
                     help="Seconds a round stays open [120]."),
        click.option("--dropout", type=click.FloatRange(0.0, 0.99),
                     help="Probability a device is offline for a round [0]."),
        click.option("--stragglers", "straggler_median_s", type=click.FloatRange(0.0),
                     help="Median extra delay of a device, seconds (log-normal) [0]."),
        click.option("--malicious", type=click.FloatRange(0.0, 0.49),
                     help="Fraction of attacking devices [0]."),
        click.option("--attack", type=click.Choice(ATTACKS), help="What attackers do "
                                                                  "[sign-flip]."),
        click.option("--attack-scale", type=float, help="k of the attack [4]."),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command


@click.command()
@click.option("--scenario", "scenario_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Scenario TOML; flags override it (--write-scenario writes an example).")
@click.option("--write-scenario", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the commented example scenario (with the given flags) and exit.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help=f"MIT-BIH directory [default ${DATA_ENV}]: DS1 patients train on devices, "
                   "DS2 tests. Without it: simulated patients.")
@click.option("--synthetic", is_flag=True, help="Use simulated patients even if data is set.")
@_options
@click.option("--compare", help="Run variants on the same data and seeds, one report: "
                                "e.g. centralized,fedavg,fedavg+dp (see below).")
@click.option("--role", type=click.Choice(["all", "aggregator", "devices"]), default="all",
              show_default=True, help="aggregator: broker and aggregator only; devices: host "
                                      "devices of a run prepared by an aggregator role.")
@click.option("--listen", default="", help="aggregator role: address Mosquitto binds to and "
                                           "puts in its certificate (e.g. this host's name).")
@click.option("--broker-url", default="", help="devices role: the aggregator's broker URL.")
@click.option("--shard", default="1/1", show_default=True,
              help="devices role: host every n-th device starting at the i-th (i/n).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory [default: runs/<timestamp>]; devices role: the run "
                   "directory copied from the aggregator host.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the final metrics as JSON (macro_f1, per_class, rounds, ...).")
def simulate(scenario_file: Path | None, write_scenario: Path | None, data_dir: Path | None,
             synthetic: bool, compare: str | None, role: str, listen: str, broker_url: str,
             shard: str, out: Path | None, as_json: bool, **flags: Any) -> None:
    """Simulate a federation on this machine and write a report.

    A real broker, the aggregator service and DEVICES device daemons (each its own MQTT client
    with its own keys, store, outbox and privacy ledger) run ROUNDS rounds; the global model is
    evaluated after every round. Writes metrics.jsonl, config.json, the final model and a
    self-contained report.html into runs/<timestamp>/.

    \b
      fedbeat simulate                                 # simulated patients, a few minutes
      fedbeat simulate --data $FEDBEAT_DATA --devices 22 --rounds 20
      fedbeat simulate --dp dpsgd --sigma 1.1 --malicious 0.2 --strategy krum
      fedbeat simulate --secagg --dp ddg --sigma 1.0 --clip 0.5
      fedbeat simulate --devices 1000 --partition iid --workers 2
      fedbeat simulate --compare centralized,fedavg,fedavg+dp,krum+attack --malicious 0.2

    \b
    --compare variants: a base (centralized, fedavg, trimmed-mean, median, krum,
    fedbuff) and modifiers: +dp[=SIGMA] (DP-SGD on the devices), +ldp[=SIGMA]
    (user-level: clip and noise the update), +secagg (secure aggregation),
    +ddg[=SIGMA] (secure aggregation with distributed discrete Gaussian
    noise), +fedprox[=MU], +fedavgm[=LR]
    (server momentum), +normbound,
    +lr=LR, +epochs=E, +attack (only variants marked +attack get the
    scenario's attackers).

    \b
    Across machines: `--role aggregator --listen HOST` on one (it prints the
    broker URL); copy its run directory to the others and run
    `--role devices --out RUN_DIR --broker-url URL --shard i/n` there.
    """
    from fedbeat.tools.sim_scenario import load_scenario, scenario_text

    overrides = {OVERRIDES[k]: v for k, v in flags.items() if k in OVERRIDES}
    if flags.get("async_mode"):
        overrides["aggregation.strategy"] = "fedbuff"
    data = _data_setting(data_dir, synthetic, scenario_file)
    if data is not None:
        overrides["fleet.data"] = data
    try:
        scenario = load_scenario(scenario_file, overrides)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if write_scenario is not None:
        write_scenario.write_text(scenario_text(scenario), encoding="utf-8")
        stderr.print(f"wrote {write_scenario}; run it with: fedbeat simulate --scenario "
                     f"{write_scenario}")
        return
    if role == "devices":
        _run_devices_role(out, broker_url, shard)
        return
    run_dir = out or Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if run_dir.exists():
        raise UsageError(f"{run_dir} already exists: choose another --out (runs are never "
                         "overwritten)")
    if scenario.synthetic:
        stderr.print("[bold yellow]SYNTHETIC DATA[/bold yellow]: simulated patients, not "
                     f"clinical ECG (point --data or ${DATA_ENV} at MIT-BIH for real records)")
    if compare:
        from fedbeat.tools.sim_variants import run_comparison

        result = run_comparison(scenario, run_dir, compare, _progress(as_json))
    else:
        result = _run_one(scenario, run_dir, role, listen, as_json)
    if as_json:
        emit_json(result)
    else:
        stderr.print(f"report: {result['report']}")


def _data_setting(data_dir: Path | None, synthetic: bool, scenario_file: Path | None) -> str | None:
    """The fleet.data override: flag, then the environment (unless the file names data)."""
    if synthetic:
        return ""
    if data_dir is not None:
        return str(find_mitdb(data_dir))
    env = os.environ.get(DATA_ENV)
    if env and scenario_file is None:
        return str(find_mitdb(Path(env)))
    return None




def _progress(quiet: bool) -> Any:
    """A factory of per-run progress callbacks sharing one rich bar."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    return Progress(*columns, console=stderr, transient=True, disable=quiet)


def _run_one(scenario: Any, run_dir: Path, role: str, listen: str, quiet: bool) -> dict[str, Any]:
    from fedbeat.tools.sim_results import final_metrics
    from fedbeat.tools.simulate import run_simulation

    lines: list[dict[str, Any]] = []
    with _progress(quiet) as bar:
        task = bar.add_task(f"{scenario.fleet.devices} devices, rounds",
                            total=scenario.fleet.rounds)

        def on_round(line: dict[str, Any]) -> None:
            lines.append(line)
            bar.update(task, completed=len(lines))
            evaluation = line.get("evaluation") or {}
            f1 = evaluation.get("macro_f1_nsvf")
            stderr.print(f"round {line['round']} {line['state']}: {line['participants']} "
                         f"updates, macro-F1 {f1 if f1 is None else round(f1, 3)}")

        if role == "aggregator":
            stderr.print(f"aggregator role: the broker's URL will be in {run_dir}/broker-url; "
                         f"copy {run_dir} to the device hosts and run there: fedbeat simulate "
                         f"--role devices --out {run_dir} --broker-url URL --shard i/n")
        run_simulation(scenario, run_dir, on_round, with_devices=role == "all", listen=listen)
    return final_metrics(run_dir)


def _run_devices_role(run_dir: Path | None, broker_url: str, shard: str) -> None:
    from fedbeat.tools.logs import stop_on_signals
    from fedbeat.tools.simulate import run_devices

    if run_dir is None or not broker_url:
        raise UsageError("--role devices needs --out RUN_DIR (copied from the aggregator host) "
                         "and --broker-url URL")
    try:
        index, count = (int(part) for part in shard.split("/"))
    except ValueError:
        raise UsageError(f"--shard must be i/n, e.g. 1/2; got {shard!r}") from None
    if not 1 <= index <= count:
        raise UsageError(f"--shard {shard}: need 1 <= i <= n")
    stop = stop_on_signals("fedbeat.simulate")
    hosted = run_devices(run_dir, broker_url, (index, count), stop)
    stderr.print(f"hosted {hosted} devices until the run ended")
