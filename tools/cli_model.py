"""``fedbeat model``: list architectures, build graph directories, inspect them, train."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from fedbeat.models.metrics import AamiMetrics
from fedbeat.models.zoo import ARCHITECTURES, create_architecture
from fedbeat.tools.cli_evaluate import print_metrics, warn_synthetic
from fedbeat.tools.datasets import DATA_ENV, load_dataset, stack
from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, progress_bar, stderr, stdout

OPTIMIZER_NAMES = ("sgd", "adam", "adamw")


@click.group()
def model() -> None:
    """Build, inspect and train the ECG models."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_models(as_json: bool) -> None:
    """List the model architectures and their sizes."""
    sizes = {name: create_architecture(name).num_params() for name in ARCHITECTURES}
    if as_json:
        emit_json([{"model": name, "params": size} for name, size in sizes.items()])
        return
    table = Table("model", "parameters", "float32 update")
    for name, size in sizes.items():
        table.add_row(name, f"{size:,}", f"{4 * size / 1024:.1f} KiB")
    stdout.print(table)


@model.command()
@click.option("--model", "name", required=True, type=click.Choice(sorted(ARCHITECTURES)),
              help="Architecture to build.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write graphs, initial parameters and manifest.json into.")
@click.option("--seed", default=0, show_default=True, help="Seed of the initial parameters.")
@click.option("--optimizer", "optimizers", multiple=True, type=click.Choice(OPTIMIZER_NAMES),
              help="Optimizers to build training graphs for (repeatable; default: all).")
@click.option("--tflite/--no-tflite", default=False, show_default=True,
              help="Also write model.tflite (needs the 'tflite' extra).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def build(name: str, out_dir: Path, seed: int, optimizers: tuple[str, ...], tflite: bool,
          as_json: bool) -> None:
    """Generate the ONNX graphs a device trains with, off-device.

    Writes inference.onnx, train_<optimizer>.onnx (forward, loss, backward and update in one
    graph), dpsgd.onnx (per-example clipped gradients), apply_<optimizer>.onnx, params.bin and
    manifest.json (hashes, shapes, opset, input spec). Devices load these with plain
    onnxruntime and never import onnx.
    """
    from fedbeat.models.graph.export import build_model_dir

    started = time.perf_counter()
    manifest = build_model_dir(name, out_dir, seed=seed, optimizers=optimizers or OPTIMIZER_NAMES)
    result: dict[str, Any] = {
        "model": name, "out": str(out_dir), "num_params": manifest.num_params,
        "files": {role: path for role, (path, _) in manifest.files.items()},
        "opset": manifest.opset, "tflite": None,
    }
    if tflite:
        try:
            from fedbeat.models.tflite_export import write_tflite
        except ImportError:
            raise UsageError("--tflite needs the tflite extra: "
                             "pip install 'fedbeat[tflite]'") from None
        from fedbeat.models.manifest import load_model_dir

        write_tflite(create_architecture(name), load_model_dir(out_dir).initial_params(),
                     out_dir / "model.tflite")
        result["tflite"] = "model.tflite"
    result["seconds"] = round(time.perf_counter() - started, 3)
    if as_json:
        emit_json(result)
    else:
        stderr.print(f"[green]built[/] {name} ({manifest.num_params:,} parameters) in {out_dir}")


@model.command()
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(model_dir: Path, as_json: bool) -> None:
    """Verify a model directory's hashes and show its manifest."""
    from fedbeat.models.manifest import load_model_dir

    loaded = load_model_dir(model_dir)
    if as_json:
        emit_json(loaded.manifest.to_json())
        return
    m = loaded.manifest
    stdout.print(f"{m.model}: {m.num_params:,} parameters, opset {m.opset}, "
                 f"optimizers {', '.join(m.optimizers)}; all {len(m.files)} files verified")


@model.command()
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              envvar=DATA_ENV, help=f"MIT-BIH directory (or its parent); default ${DATA_ENV}. "
              "Without it, synthetic patients are used.")
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=0.01, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(OPTIMIZER_NAMES))
@click.option("--dp-noise", type=click.FloatRange(min=0), default=None,
              help="Enable DP-SGD with this noise multiplier sigma.")
@click.option("--dp-clip", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="DP-SGD per-example clipping norm C.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out_params", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the trained parameters (raw float32, manifest layout) here.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def train(model_dir: Path, data_dir: Path | None, epochs: int, batch_size: int, lr: float,
          optimizer: str, dp_noise: float | None, dp_clip: float, threads: int, seed: int,
          out_params: Path | None, as_json: bool) -> None:
    """Train a built model on one machine and report the AAMI EC57 metrics on the test set.

    With MIT-BIH data this is the inter-patient protocol (train DS1, test DS2); without, a
    synthetic cohort (clearly labelled as such).
    """
    from fedbeat.device.trainer import DpSgdConfig, TrainConfig, Trainer, balanced_class_weight

    trainer = Trainer(model_dir, threads=threads)
    dataset = load_dataset(data_dir, seed=seed)
    if dataset.synthetic and not as_json:
        warn_synthetic()
    train_beats = trainer.beats(*stack(dataset.train))
    test_beats = trainer.beats(*stack(dataset.test))
    if train_beats.labels is None or test_beats.labels is None:
        raise UsageError("training and test data must be labelled")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                         class_weight=balanced_class_weight(
                             train_beats.labels, len(trainer.manifest.inputs.classes)),
                         seed=seed)
    dp = None if dp_noise is None else DpSgdConfig(noise_multiplier=dp_noise, clip_norm=dp_clip)
    started = time.perf_counter()
    with progress_bar("training", 1, enabled=not as_json) as advance:
        result = trainer.fit(train_beats, config, dp=dp, progress=advance)
    seconds = time.perf_counter() - started
    metrics = AamiMetrics.from_labels(test_beats.labels,
                                      trainer.predict(test_beats).argmax(axis=1))
    losses = result.losses[np.isfinite(result.losses)]
    summary: dict[str, Any] = {
        "model": trainer.manifest.model, "data": dataset.source, "synthetic": dataset.synthetic,
        "train_beats": len(train_beats), "test_beats": len(test_beats), "steps": result.steps,
        "loss_first": float(losses[: max(1, len(losses) // 10)].mean()),
        "loss_last": float(losses[-max(1, len(losses) // 10):].mean()),
        "test_accuracy": metrics.accuracy, "aami": metrics.to_json(),
        "samples_per_s": result.examples_seen / seconds, "seconds": seconds,
        "dp": None if result.dp is None else vars(result.dp),
    }
    if out_params is not None:
        result.params.save(out_params)
        summary["params_out"] = str(out_params)
    if as_json:
        emit_json(summary)
        return
    stdout.print(f"{summary['data']}\n{result.steps} steps in {seconds:.1f} s; loss "
                 f"{summary['loss_first']:.3f} -> {summary['loss_last']:.3f}; "
                 f"test accuracy {summary['test_accuracy']:.3f}")
    print_metrics(metrics, "test set", synthetic=dataset.synthetic)


def _calibration_beats(source: Path, records: str | None, count: int,
                       seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Representative beats from an .npz (``windows``, ``rr``) or MIT-BIH DS1 records."""
    from fedbeat.models.tflite_quant import CalibrationError, representative_beats
    from fedbeat.tools.cli_evaluate import load_split

    if source.is_file():
        try:
            with np.load(source) as arrays:
                windows, rr = arrays["windows"], arrays["rr"]
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"--calibration {source}: need an .npz with arrays 'windows' and "
                             f"'rr' ({exc})") from None
        where = str(source)
    else:
        split = load_split(source, "ds1", records, seed=seed)
        windows, rr, _ = stack(split.records)
        where = split.source
    try:
        windows, rr = representative_beats(windows, rr, count=count, seed=seed)
    except CalibrationError as exc:
        raise UsageError(f"--calibration {source}: {exc}") from None
    return windows, rr, where


@model.command("export-tflite")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Trained parameters (raw float32, manifest layout); default: the "
              "directory's initial parameters.")
@click.option("--out", "out_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The .tflite file to write.")
@click.option("--int8", "int8", is_flag=True,
              help="Full-integer int8 post-training quantization (needs --calibration).")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path),
              help="Representative beats for --int8: an MIT-BIH directory (its DS1 records are "
              "used, never DS2) or an .npz with arrays 'windows' and 'rr'.")
@click.option("--calibration-records",
              help="Comma-separated DS1 records to calibrate on (default: all of DS1).")
@click.option("--calibration-beats", default=2000, show_default=True, type=click.IntRange(1),
              help="Beats drawn (seeded, uniformly) from the calibration data.")
@click.option("--io", "io", type=click.Choice(["float32", "int8"]), default="float32",
              show_default=True, help="With --int8: float32 inputs/outputs around the int8 "
              "body, or int8 inputs/outputs.")
@click.option("--groupnorm", type=click.Choice(["int16", "float", "int8"]), default="int16",
              show_default=True, help="With --int8: GroupNorm statistics in int16 (integer-only), "
              "float32, or int8 like the rest (less accurate; see docs/wearable.md).")
@click.option("--coverage", type=click.FloatRange(0.5, 1.0, min_open=True), default=None,
              help="With --int8: share of each activation's calibration values its int8 range "
              "covers (default: 1.0, or 0.999 with --groupnorm int8).")
@click.option("--fixed-batch", is_flag=True, help="A fixed batch of 1 (the wearable case).")
@click.option("--seed", default=0, show_default=True, help="Seed of the calibration sample.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def export_tflite_command(model_dir: Path, params_path: Path | None, out_path: Path, int8: bool,
                          calibration: Path | None, calibration_records: str | None,
                          calibration_beats: int, io: str, groupnorm: str,
                          coverage: float | None, fixed_batch: bool, seed: int,
                          as_json: bool) -> None:
    """Write a model's parameters as a TFLite file for wearable-class devices.

    float32 by default; with --int8 an int8 model (per-channel int8 conv weights, int8
    activations from calibration ranges, int32 biases), calibrated on training beats.
    """
    from fedbeat.models.manifest import load_model_dir
    from fedbeat.models.params import ParamError, Params

    try:
        from fedbeat.models.tflite_export import write_tflite
        from fedbeat.models.tflite_quant import write_tflite_int8
    except ImportError:
        raise UsageError("TFLite export needs the tflite extra: "
                         "pip install 'fedbeat[tflite]'") from None
    if int8 != (calibration is not None):
        raise UsageError("--int8 needs --calibration (representative training beats), and "
                         "--calibration is only for --int8")
    if (io != "float32" or groupnorm != "int16" or coverage is not None) and not int8:
        raise UsageError("--io, --groupnorm and --coverage go with --int8")
    loaded = load_model_dir(model_dir)
    try:
        params = (loaded.initial_params() if params_path is None
                  else Params.load(loaded.manifest.layout, params_path))
    except ParamError as exc:
        raise UsageError(f"--params {params_path}: {exc}") from None
    arch = create_architecture(loaded.manifest.model)
    started = time.perf_counter()
    result: dict[str, Any] = {"model": arch.name, "out": str(out_path),
                              "precision": "int8" if int8 else "float32", "io": io,
                              "dynamic_batch": not fixed_batch}
    if calibration is not None:
        windows, rr, where = _calibration_beats(calibration, calibration_records,
                                                calibration_beats, seed)
        write_tflite_int8(arch, params, out_path, windows, rr, dynamic_batch=not fixed_batch,
                          io=io, groupnorm=groupnorm, coverage=coverage)
        result.update(calibration=where, calibration_beats=int(windows.shape[0]),
                      groupnorm=groupnorm)
    else:
        write_tflite(arch, params, out_path, dynamic_batch=not fixed_batch)
    result["bytes"] = out_path.stat().st_size
    result["seconds"] = round(time.perf_counter() - started, 3)
    if as_json:
        emit_json(result)
    else:
        stderr.print(f"[green]wrote[/] {out_path} ({result['precision']}, "
                     f"{result['bytes']:,} bytes)")
