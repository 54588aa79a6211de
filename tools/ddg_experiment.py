"""``fedbeat experiment ddg``: distributed DP under secure aggregation against central DP.

The claim of distributed DP (Kairouz, Liu & Steinke 2021) is that devices that each add only a
share of the noise, summed under SecAgg, give the model what a *trusted* aggregator adding the
whole Gaussian to the sum would give, at the same ε. This measures that claim on real patients:
MIT-BIH DS1 devices train with the device :class:`~fedbeat.device.trainer.Trainer` (one device
per patient, or each patient's recording split over several devices), every delta is clipped to
``C``, and three variants aggregate the same kind of round:

- ``clipped``: the mean of the clipped deltas, no noise (what DP costs is measured against it);
- ``central``: the mean plus N(0, (zC)²)/n per coordinate, in float64, added by the aggregator
  (central DP: the aggregator must be trusted with every update);
- ``ddg``: every device encodes its delta with :class:`~fedbeat.device.privacy.ddg.DdgEncoder`
  (rotation, stochastic rounding, its share N_Z(0, (zC)²/n) of the noise, ring of ``bits``), the
  encodings go through the real SecAgg protocol (``broker/secagg/loopback.py``: keys, shares,
  masks, unmasking), and the aggregator decodes only the sum.

Each variant's global model is scored on DS2 after every round; the ε of ``central`` (Gaussian
RDP) and of ``ddg`` (Theorem 1 of the paper, with the actual number of contributors) are
reported side by side. MQTT and persistence are left out on purpose (tested elsewhere).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from fedbeat.aggregator.strategies import AggregateResult, create_server_optimizer
from fedbeat.aggregator.strategies.aggregate import clip_scale
from fedbeat.broker.secagg.loopback import run_round
from fedbeat.broker.secagg.params import RoundContext
from fedbeat.device.ecg.mitdb import patient_of
from fedbeat.device.ecg.records import RecordBeats
from fedbeat.device.privacy.accountant import epsilon_from_rdp, rdp_gaussian
from fedbeat.device.privacy.ddg import DdgEncoder, DdgParams
from fedbeat.device.privacy.ddg_accounting import ddg_epsilon
from fedbeat.device.privacy.noise import RandomSource, SecureRandom
from fedbeat.device.trainer import Trainer
from fedbeat.models.manifest import ModelDir
from fedbeat.models.metrics import AamiMetrics
from fedbeat.models.params import ParamLayout, Params
from fedbeat.models.zoo import ARCHITECTURES, create_architecture
from fedbeat.tools.cli_evaluate import warn_synthetic
from fedbeat.tools.datasets import DATA_ENV, load_dataset, stack
from fedbeat.tools.output import emit_json, progress_bar, stderr, stdout
from fedbeat.tools.partition import split_patients
from fedbeat.tools.robust_experiment import (
    Device,
    RobustConfig,
    balanced_training,
    headline,
    scorer,
)

VARIANTS = ("clipped", "central", "ddg")
DELTA = 1e-5


@dataclass(frozen=True)
class DdgConfig:
    """The privacy side of a run (training is :class:`RobustConfig`'s fields)."""

    noise_multiplier: float = 1.0
    clip_norm: float = 2.0
    bits: int = 20
    devices_per_patient: int = 1

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and self.clip_norm > 0):
            raise ValueError("noise_multiplier and clip_norm must be positive")
        if self.devices_per_patient < 1:
            raise ValueError("devices_per_patient must be at least 1")


@dataclass
class Run:
    """One variant's global model and its per-round scores."""

    name: str
    params: np.ndarray
    scores: list[dict[str, float | None]] = field(default_factory=list)
    final: AamiMetrics | None = None


def devices_of(records: Sequence[RecordBeats], trainer: Trainer, per_patient: int) -> list[Device]:
    """Each DS1 patient's beats over ``per_patient`` devices (consecutive stretches)."""
    windows, rr, labels = stack(list(records))
    groups = np.repeat([r.record for r in records], [len(r.labels) for r in records])
    patients = len({patient_of(str(r.record)) for r in records})
    parts = split_patients(groups, patients * per_patient, patient_of=patient_of)
    return [Device(f"dev-{i:04d}", trainer.beats(windows[idx], rr[idx], labels[idx]))
            for i, idx in enumerate(parts)]


def ddg_params(privacy: DdgConfig, layout: ParamLayout, devices: int) -> DdgParams:
    """The DDG parameters of a round of ``devices``, all of which contribute."""
    return DdgParams(dim=layout.size, clip_norm=privacy.clip_norm,
                     noise_multiplier=privacy.noise_multiplier, min_devices=devices,
                     max_devices=devices, bits=privacy.bits)


def aggregate(name: str, deltas: dict[str, np.ndarray], privacy: DdgConfig, layout: ParamLayout,
              round_index: int, seed: int, *,
              source: Callable[[], RandomSource] = SecureRandom) -> np.ndarray:
    """The variant's mean update for one round (float64, in layout order).

    ``source`` makes the noise: a fresh cryptographic source per use by default; tests pass
    seeded ones to compare the variants' noise distributions reproducibly.
    """
    n = len(deltas)
    if name != "ddg":       # the DDG encoder clips on the device itself
        total = np.zeros(layout.size)
        for delta in deltas.values():
            update = delta.astype(np.float64)
            total += update * clip_scale(float(np.linalg.norm(update)), privacy.clip_norm)
        if name == "central":
            total += source().normal((layout.size,),
                                     privacy.noise_multiplier * privacy.clip_norm)
        return total / n
    params = ddg_params(privacy, layout, n)
    encoder = DdgEncoder(params, f"{seed}/{round_index}".encode())
    inputs = {d: encoder.encode(v, source()) for d, v in deltas.items()}
    context = RoundContext("experiment", round_index, params.padded_dim, params.bits)
    secure_sum = run_round(inputs, context, min_participants=max(2, n // 2))
    return encoder.decode_sum(secure_sum.vector) / len(secure_sum.contributors)


def run_experiment(model_dir: ModelDir, train: Sequence[RecordBeats],
                   test: Sequence[RecordBeats], training: RobustConfig, privacy: DdgConfig, *,
                   advance: Callable[[], None] | None = None) -> dict[str, Any]:
    layout = model_dir.manifest.layout
    initial = Params.initial(create_architecture(model_dir.manifest.model), seed=training.seed)
    trainer = Trainer(model_dir, threads=1, params=initial)
    devices = devices_of(train, trainer, privacy.devices_per_patient)
    local = balanced_training(trainer, devices, training)
    score = scorer(trainer, test)
    runs = [Run(name, initial.to_flat()) for name in VARIANTS]
    optimizers = {name: create_server_optimizer("sgd") for name in VARIANTS}
    norms: list[float] = []
    for round_index in range(training.rounds):
        for run in runs:
            deltas = {d: v for d, v in local.deltas(run.params, round_index).items()
                      if not isinstance(v, str)}
            if run.name == "clipped":
                norms.append(float(np.median([np.linalg.norm(v) for v in deltas.values()])))
            mean = aggregate(run.name, deltas, privacy, layout, round_index, training.seed)
            result = AggregateResult(dict(Params.from_flat(layout, mean)),
                                     {name: len(deltas) for name in layout.names},
                                     float(len(deltas)))
            run.params = optimizers[run.name].step(run.params, result, layout)
            metrics = score(run.params)
            run.scores.append(headline(metrics))
            run.final = metrics
            if advance:
                advance()
    n = len(devices)
    central_eps = epsilon_from_rdp(rdp=rdp_gaussian(
        noise_multiplier=privacy.noise_multiplier) * training.rounds, delta=DELTA)[0]
    return {
        "devices": n, "rounds": training.rounds, "noise_multiplier": privacy.noise_multiplier,
        "clip_norm": privacy.clip_norm, "bits": privacy.bits, "delta": DELTA,
        "median_update_norm_per_round": norms,
        "epsilon": {"central": central_eps,
                    "ddg": ddg_epsilon(ddg_params(privacy, layout, n), [n] * training.rounds,
                                       DELTA)},
        "variants": {run.name: {"ds2": headline(run.final) if run.final else None,
                                "aami": run.final.to_json() if run.final else None,
                                "per_round": run.scores} for run in runs},
    }


@click.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help=f"MIT-BIH directory [default ${DATA_ENV}]; without it, simulated patients.")
@click.option("--model", "name", type=click.Choice(sorted(ARCHITECTURES)), default="ecg-cnn-s",
              show_default=True)
@click.option("--rounds", type=click.IntRange(1, 200), default=10, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True, help="Local learning rate.")
@click.option("--epochs", "local_epochs", type=click.IntRange(1, 100), default=1,
              show_default=True, help="Local epochs per round.")
@click.option("--sigma", "noise_multiplier", type=float, default=1.0, show_default=True,
              help="Noise multiplier z: the sum's noise std is z x clip.")
@click.option("--clip", "clip_norm", type=float, default=2.0, show_default=True,
              help="L2 bound C on each device's update (user-level sensitivity).")
@click.option("--bits", type=click.IntRange(2, 20), default=20, show_default=True,
              help="Ring bits per value for ddg.")
@click.option("--devices-per-patient", type=click.IntRange(1, 1000), default=1,
              show_default=True, help="Split each patient's recording over this many devices.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def ddg(data_dir: Path | None, name: str, rounds: int, lr: float, local_epochs: int,
        noise_multiplier: float,
        clip_norm: float, bits: int, devices_per_patient: int, seed: int,
        as_json: bool) -> None:
    """Distributed DP (DDG under SecAgg) against central DP, same ε, MIT-BIH DS1 → DS2.

    \b
    Variants: clipped (no noise), central (a trusted aggregator adds the Gaussian
    to the sum), ddg (each device adds a discrete Gaussian share; real SecAgg).

    \b
    Examples:
      fedbeat experiment ddg --data $FEDBEAT_DATA --rounds 10 --sigma 0.5 --json
      fedbeat experiment ddg --data $FEDBEAT_DATA --devices-per-patient 10 --sigma 1.0

    One core; about (3 x rounds) local epochs over DS1. Results: docs/results.md.
    """
    from fedbeat.models.graph.export import build_model_dir
    from fedbeat.models.manifest import load_model_dir

    started = time.perf_counter()
    training = RobustConfig(rounds=rounds, local_epochs=local_epochs, lr=lr, seed=seed)
    privacy = DdgConfig(noise_multiplier, clip_norm, bits, devices_per_patient)
    dataset = load_dataset(data_dir, seed=seed)
    if dataset.synthetic:
        warn_synthetic()
    with tempfile.TemporaryDirectory(prefix="fedbeat-ddg-") as scratch:
        build_model_dir(name, Path(scratch) / "model", optimizers=("sgd",))
        model_dir = load_model_dir(Path(scratch) / "model")
        total = len(VARIANTS) * rounds
        with progress_bar("variant-rounds", total) as bar:
            done = iter(range(1, total + 1))
            report = run_experiment(model_dir, dataset.train, dataset.test, training, privacy,
                                    advance=lambda: bar(next(done), total))
    report.update(model=name, data=dataset.source, synthetic=dataset.synthetic,
                  seed=seed, lr=lr, local_epochs=local_epochs,
                  seconds=time.perf_counter() - started)
    if as_json:
        emit_json(report)
        return
    table = Table(title=f"{name}, {report['devices']} devices, {rounds} rounds, z = "
                        f"{noise_multiplier:g}, C = {clip_norm:g}: "
                        f"{'SYNTHETIC ' if dataset.synthetic else ''}test set")
    for column in ("variant", "ε (δ=1e-5)", "macro-F1 NSVF", "macro-F1 NSV", "F1 S", "F1 V"):
        table.add_column(column)
    for variant, result in report["variants"].items():
        ds2 = result["ds2"] or {}
        eps = report["epsilon"].get(variant)
        table.add_row(variant, "∞" if eps is None else f"{eps:.2f}",
                      *(f"{ds2.get(k):.3f}" if ds2.get(k) is not None else "—"
                        for k in ("macro_f1_nsvf", "macro_f1_nsv", "f1_s", "f1_v")))
    stdout.print(table)
    stderr.print(f"{report['seconds']:.0f} s; median update norm per round: "
                 + ", ".join(f"{v:.2f}" for v in report["median_update_norm_per_round"]))
