"""``fedbeat evaluate``: AAMI EC57 metrics of a model on MIT-BIH (or synthetic) beats.

Also home of the metric tables that ``fedbeat model train`` prints for its test set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from fedbeat.device.ecg.mitdb import DS1, DS2, RecordBeats, RecordError, read_record_beats
from fedbeat.models.metrics import AamiMetrics
from fedbeat.models.spec import CLASSES
from fedbeat.tools.datasets import DATA_ENV, find_mitdb, load_dataset, stack
from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, stderr, stdout

SPLITS: dict[str, tuple[str, ...]] = {"ds1": DS1, "ds2": DS2, "all": DS1 + DS2}
"""MIT-BIH records of each split (de Chazal et al. 2004 inter-patient protocol)."""

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``predict(windows, rr)`` → class probabilities (n, 5)."""


@dataclass(frozen=True)
class Model:
    """A loaded classifier and how to describe it."""

    predict: Predict
    name: str
    runtime: str
    params: str | None


@dataclass(frozen=True)
class Split:
    """The beats of the records to evaluate on, and where they came from."""

    records: list[RecordBeats]
    source: str
    synthetic: bool


# -- presentation (shared with `fedbeat model train`) ----------------------------------------

def warn_synthetic() -> None:
    """Tell a person, on stderr, that the numbers come from simulated patients."""
    stderr.print("[bold yellow]SYNTHETIC DATA[/]: no MIT-BIH directory given "
                 f"(--data or ${DATA_ENV}); results say nothing about real patients.")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def aami_table(metrics: AamiMetrics, title: str) -> Table:
    """Per class: true and predicted beats, Se, +P, FPR, Sp, F1 ("-" where undefined)."""
    table = Table("class", "beats", "predicted", "Se", "+P", "FPR", "Sp", "F1", title=title)
    for name, m in metrics.per_class.items():
        values = (m.sensitivity, m.positive_predictivity, m.false_positive_rate, m.specificity,
                  m.f1)
        table.add_row(name, f"{m.support:,}", f"{m.predicted:,}", *map(_fmt, values))
    return table


def confusion_table(metrics: AamiMetrics) -> Table:
    """The confusion matrix, rows true and columns predicted."""
    table = Table("true \\ predicted", *CLASSES, "total", title="confusion matrix")
    for name, row in zip(CLASSES, metrics.confusion, strict=True):
        table.add_row(name, *(f"{v:,}" for v in row), f"{sum(row):,}")
    return table


def print_metrics(metrics: AamiMetrics, data_name: str, *, synthetic: bool) -> None:
    """The AAMI table, accuracy and both macro-F1s, and the confusion matrix, on stdout."""
    title = f"{'SYNTHETIC ' if synthetic else ''}{data_name}: AAMI EC57 classes"
    stdout.print(aami_table(metrics, title))
    stdout.print(f"accuracy {_fmt(metrics.accuracy)}   "
                 f"macro-F1 (N,S,V,F) {_fmt(metrics.macro_f1_nsvf)}   "
                 f"macro-F1 (N,S,V) {_fmt(metrics.macro_f1_nsv)}")
    stdout.print(confusion_table(metrics))


# -- models ----------------------------------------------------------------------------------

def load_onnx_model(model_dir: Path, params_path: Path | None, threads: int) -> Model:
    """A model directory run by ONNX Runtime, with its initial or the given parameters."""
    from fedbeat.device.trainer import Trainer
    from fedbeat.models.manifest import load_model_dir
    from fedbeat.models.params import ParamError, Params

    loaded = load_model_dir(model_dir)
    params = None
    if params_path is not None:
        try:
            params = Params.load(loaded.manifest.layout, params_path)
        except ParamError as exc:
            raise UsageError(f"--params {params_path}: {exc} (is it from `fedbeat model train "
                             f"--out` for {loaded.manifest.model}?)") from None
    trainer = Trainer(loaded, threads=threads, params=params)
    _check_num_classes(len(trainer.manifest.inputs.classes), model_dir)
    return Model(lambda windows, rr: trainer.predict(trainer.beats(windows, rr)),
                 loaded.manifest.model, "onnxruntime",
                 None if params_path is None else str(params_path))


def load_tflite_model(path: Path, threads: int) -> Model:
    """A ``.tflite`` file run by the TFLite interpreter (parameters are inside the file)."""
    from fedbeat.device.tflite_model import TFLiteModel

    try:
        model = TFLiteModel(path, threads=threads)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"cannot load {path}: {exc}") from None
    _check_num_classes(model.num_classes, path)
    return Model(model.predict, path.name, "tflite", None)


def _check_num_classes(num_classes: int, where: Path) -> None:
    if num_classes != len(CLASSES):
        raise UsageError(f"{where} predicts {num_classes} classes, not the {len(CLASSES)} AAMI "
                         f"classes {', '.join(CLASSES)}")


def load_model(model_dir: Path | None, params_path: Path | None, tflite_path: Path | None,
               threads: int) -> Model:
    """Whichever of ``--model-dir`` and ``--tflite`` was given (exactly one must be)."""
    if (model_dir is None) == (tflite_path is None):
        raise click.UsageError("give either --model-dir DIR (ONNX Runtime) or --tflite FILE")
    if tflite_path is not None:
        if params_path is not None:
            raise click.UsageError("--params goes with --model-dir; a .tflite file carries its "
                                   "own parameters")
        return load_tflite_model(tflite_path, threads)
    assert model_dir is not None
    return load_onnx_model(model_dir, params_path, threads)


# -- data ------------------------------------------------------------------------------------

def select_records(available: tuple[str, ...], requested: str | None,
                   split: str) -> tuple[str, ...]:
    """The comma-separated ``requested`` records (all of ``available`` if ``None``)."""
    if requested is None:
        return available
    wanted = tuple(dict.fromkeys(r.strip() for r in requested.split(",") if r.strip()))
    unknown = [r for r in wanted if r not in available]
    if unknown or not wanted:
        raise UsageError(f"record(s) {', '.join(unknown) or repr(requested)} not in split "
                         f"{split}; it has {', '.join(available)}")
    return wanted


def load_split(data_dir: Path | None, split: str, records: str | None, *, seed: int) -> Split:
    """MIT-BIH records of ``split`` if ``data_dir`` is set, else synthetic patients.

    Synthetic "ds1" are the synthetic training patients of ``fedbeat model train`` with the
    same seed, "ds2" its test patients.
    """
    if data_dir is None:
        return _synthetic_split(split, records, seed)
    root = find_mitdb(data_dir)
    names = select_records(SPLITS[split], records, split)
    try:
        beats = [read_record_beats(root, name) for name in names]
    except RecordError as exc:
        raise UsageError(str(exc)) from None
    return Split(beats, f"MIT-BIH Arrhythmia Database at {root}, {split.upper()} "
                        f"({len(names)} records)", synthetic=False)


def _synthetic_split(split: str, records: str | None, seed: int) -> Split:
    cohort = load_dataset(None, seed=seed)
    available = {"ds1": cohort.train, "ds2": cohort.test,
                 "all": cohort.train + cohort.test}[split]
    names = select_records(tuple(r.record for r in available), records, split)
    return Split([r for r in available if r.record in names],
                 f"{cohort.source}, {split.upper()} ({len(names)} patients)", synthetic=True)


# -- the command -----------------------------------------------------------------------------

@click.command()
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Model directory from `fedbeat model build` (run with ONNX Runtime).")
@click.option("--params", "params_path",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Trained parameters from `fedbeat model train --out` (default: the model "
              "directory's initial parameters).")
@click.option("--tflite", "tflite_path",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Evaluate this .tflite model (TFLite interpreter) instead of --model-dir.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              envvar=DATA_ENV, help=f"MIT-BIH directory (or its parent); default ${DATA_ENV}. "
              "Without it, synthetic patients are used.")
@click.option("--split", type=click.Choice(sorted(SPLITS)), default="ds2", show_default=True,
              help="Inter-patient split of de Chazal et al. 2004: ds1 (training records), ds2 "
              "(test records) or all.")
@click.option("--records", help="Comma-separated records of the split (default: all of them).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True,
              help="Seed of the synthetic cohort (without MIT-BIH data).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def evaluate(model_dir: Path | None, params_path: Path | None, tflite_path: Path | None,
             data_dir: Path | None, split: str, records: str | None, threads: int, seed: int,
             as_json: bool) -> None:
    """Score a model on a data split with the AAMI EC57 beat-class metrics.

    Per class sensitivity (Se), positive predictivity (+P), false positive rate, specificity
    and F1; accuracy; macro-F1 over N,S,V,F and over N,S,V; the confusion matrix. See
    docs/evaluation.md for the definitions.
    """
    model = load_model(model_dir, params_path, tflite_path, threads)
    data = load_split(data_dir, split, records, seed=seed)
    if data.synthetic and not as_json:
        warn_synthetic()
    windows, rr, labels = stack(data.records)
    metrics = AamiMetrics.from_labels(labels, model.predict(windows, rr).argmax(axis=1))
    result: dict[str, Any] = {
        "model": model.name, "runtime": model.runtime, "params": model.params,
        "data": data.source, "synthetic": data.synthetic, "split": split,
        "records": [r.record for r in data.records], "aami": metrics.to_json(),
    }
    if as_json:
        emit_json(result)
        return
    params = model.params or ("initial parameters" if model.runtime == "onnxruntime"
                              else "parameters in the file")
    stdout.print(f"{data.source}\n{model.name} ({model.runtime}, {params}) on "
                 f"{metrics.total:,} beats")
    print_metrics(metrics, split.upper(), synthetic=data.synthetic)
