"""``fedbeat train``: the centralized baseline (train on DS1, select by patient-wise CV).

Each seed trains its own model; after every seed's epoch count has been chosen inside DS1,
the models are scored on the report split (DS2 by default) and summarised as mean and spread.
"""

from __future__ import annotations

import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from fedbeat.models.metrics import AamiMetrics
from fedbeat.models.spec import CLASSES
from fedbeat.models.zoo import ARCHITECTURES
from fedbeat.tools.baseline import BaselineConfig, run_baseline
from fedbeat.tools.cli_evaluate import Split, load_split, warn_synthetic
from fedbeat.tools.datasets import DATA_ENV, stack
from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, progress_bar, stderr, stdout


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError("--seeds needs at least one seed and no repeats")
    return seeds


def _parse_rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise UsageError(f"--lr must be comma-separated numbers, got {text!r}") from None
    if not rates or min(rates) <= 0 or len(set(rates)) != len(rates):
        raise UsageError("--lr needs positive, distinct learning rates")
    return rates


def _train_seed(model_path: Path, split: Split, config: BaselineConfig,
                out: Path) -> dict[str, Any]:
    """One seed, start to finish; runs in a worker process when --workers > 1."""
    from fedbeat.models.manifest import load_model_dir

    result = run_baseline(load_model_dir(model_path), split.records, config)
    seed_dir = out / f"seed-{config.seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    result.params.save(seed_dir / "params.bin")
    report = {"seed": config.seed, "config": asdict(config), **result.to_json(),
              "params": str(seed_dir / "params.bin")}
    (seed_dir / "selection.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _score(model_path: Path, params_path: Path, split: Split) -> AamiMetrics:
    from fedbeat.device.trainer import Trainer
    from fedbeat.models.manifest import load_model_dir
    from fedbeat.models.params import Params

    loaded = load_model_dir(model_path)
    trainer = Trainer(loaded, params=Params.load(loaded.manifest.layout, params_path))
    windows, rr, labels = stack(split.records)
    predicted = trainer.predict(trainer.beats(windows, rr)).argmax(axis=1)
    return AamiMetrics.from_labels(labels, predicted)


def _mean_sd(values: list[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "sd": None}
    return {"mean": statistics.fmean(present),
            "sd": statistics.stdev(present) if len(present) > 1 else 0.0}


def summarise(per_seed: list[AamiMetrics]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every per-class figure and both macros."""
    classes = {}
    for name in CLASSES:
        rows = [m.per_class[name] for m in per_seed]
        classes[name] = {
            "f1": _mean_sd([r.f1 for r in rows]),
            "se": _mean_sd([r.sensitivity for r in rows]),
            "ppv": _mean_sd([r.positive_predictivity for r in rows]),
            "support": rows[0].support,
        }
    return {"seeds": len(per_seed), "per_class": classes,
            "accuracy": _mean_sd([m.accuracy for m in per_seed]),
            "macro_f1_nsvf": _mean_sd([m.macro_f1_nsvf for m in per_seed]),
            "macro_f1_nsv": _mean_sd([m.macro_f1_nsv for m in per_seed])}


def _fmt(stat: dict[str, float | None]) -> str:
    return "-" if stat["mean"] is None else f"{stat['mean']:.3f} ± {stat['sd']:.3f}"


def _summary_table(summary: dict[str, Any], title: str) -> Table:
    table = Table("class", "F1", "Se", "+P", "beats", title=title)
    for name, row in summary["per_class"].items():
        table.add_row(name, _fmt(row["f1"]), _fmt(row["se"]), _fmt(row["ppv"]),
                      str(row["support"]))
    return table


@click.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              envvar=DATA_ENV, help=f"MIT-BIH directory (or its parent); default ${DATA_ENV}. "
              "Without it, synthetic patients are used.")
@click.option("--split", default="ds1", show_default=True, type=click.Choice(["ds1"]),
              help="Training records: DS1 of de Chazal et al. 2004. Model selection never "
              "sees the report split.")
@click.option("--model", "name", default="ecg-cnn-m", show_default=True,
              type=click.Choice(sorted(ARCHITECTURES)))
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the model graphs, each seed's parameters and the summary.")
@click.option("--seeds", default="0,1,2", show_default=True,
              help="Comma-separated seeds; each trains its own model (results vary by seed).")
@click.option("--folds", default=3, show_default=True, type=click.IntRange(2),
              help="Patient-wise cross-validation folds inside the training split.")
@click.option("--max-epochs", default=15, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--lr", "learning_rates", default="0.01", show_default=True,
              help="Learning rate, or comma-separated candidates that the cross-validation "
              "inside the training split chooses from (with the epoch count).")
@click.option("--weight-decay", default=0.0, show_default=True, type=click.FloatRange(0),
              help="L2 weight decay of the SGD step (added to the gradient, as torch.optim.SGD).")
@click.option("--class-weight-cap", default=10.0, show_default=True, type=click.FloatRange(1),
              help="Cap on the inverse-frequency class weights, so a handful of rare beats "
              "cannot dominate the loss.")
@click.option("--average-epochs", default=1, show_default=True, type=click.IntRange(1),
              help="Score and keep the average of the parameters at the ends of the last N "
              "epochs (tail weight averaging); 1 keeps the last epoch's parameters.")
@click.option("--report-split", default="ds2", show_default=True,
              type=click.Choice(["ds2", "none"]),
              help="Score every seed's final model here once selection is done.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Seeds trained in parallel processes (one core each).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def train(data_dir: Path | None, split: str, name: str, out_dir: Path, seeds: str, folds: int,
          max_epochs: int, batch_size: int, learning_rates: str, weight_decay: float,
          class_weight_cap: float, average_epochs: int, report_split: str, workers: int,
          as_json: bool) -> None:
    """Train the centralized baseline on DS1 and report it on DS2.

    For each seed: split DS1's patients into folds, train on all but one fold and score
    macro-F1 (N, S, V, F) on the held-out patients after every epoch, for every candidate
    learning rate; pick the (learning rate, epoch count) with the best mean, then train on all
    of DS1 with them. Only then are the
    seeds' models scored on DS2, as mean ± standard deviation over seeds.
    """
    from fedbeat.models.graph.export import build_model_dir

    seed_list = _parse_seeds(seeds)
    rates = _parse_rates(learning_rates)
    training = load_split(data_dir, split, None, seed=0)
    if training.synthetic and not as_json:
        warn_synthetic()
    model_path = out_dir / "model"
    build_model_dir(name, model_path, optimizers=("sgd",))
    configs = [BaselineConfig(folds=folds, max_epochs=max_epochs, batch_size=batch_size,
                              learning_rates=rates, weight_decay=weight_decay,
                              class_weight_cap=class_weight_cap, average_epochs=average_epochs,
                              seed=s) for s in seed_list]
    reports = []
    with progress_bar("seeds", len(configs), enabled=not as_json) as advance, \
            ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_train_seed, model_path, training, c, out_dir) for c in configs]
        for done, future in enumerate(futures, start=1):
            reports.append(future.result())
            advance(done, len(configs))
    summary: dict[str, Any] = {"model": name, "data": training.source,
                               "synthetic": training.synthetic, "seeds": reports}
    if report_split != "none":
        test = load_split(data_dir, report_split, None, seed=0)
        per_seed = [_score(model_path, Path(r["params"]), test) for r in reports]
        summary["report"] = {"split": report_split, "source": test.source,
                             **summarise(per_seed),
                             "per_seed": [m.to_json() for m in per_seed]}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        emit_json(summary)
        return
    for report in reports:
        stderr.print(f"seed {report['seed']}: lr {report['lr']}, {report['epochs']} epochs "
                     f"chosen by {folds}-fold patient-wise CV")
    if "report" in summary:
        report = summary["report"]
        stdout.print(_summary_table(report, f"{name} on {report['source']}: mean ± sd over "
                                            f"{len(reports)} seeds"))
        stdout.print(f"macro-F1 (N,S,V,F) {_fmt(report['macro_f1_nsvf'])}   "
                     f"macro-F1 (N,S,V) {_fmt(report['macro_f1_nsv'])}   "
                     f"accuracy {_fmt(report['accuracy'])}")
    stdout.print(f"written to {out_dir} (summary.json, seed-*/params.bin)")


