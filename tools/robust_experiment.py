"""``fedbeat experiment robust``: aggregation rules against poisoned updates, on real patients.

Why this exists: the robust rules in :mod:`fedbeat.aggregator.strategies` are unit-tested on
synthetic vectors, which says they stay near the honest mean; it does not say what a
federation of real, very non-IID patients (MIT-BIH DS1, one device per patient) ends up with
on unseen patients (DS2) when a fifth of the devices lie. Robust rules also have a price without
any attack — a median of 22 patients' updates is not their mean — and only a measurement on
the real split shows it. So this runs the library's real code paths end to end, in one process:
the device :class:`~fedbeat.device.trainer.Trainer` trains each patient's update from the
current global parameters, attackers transform theirs, the real strategy aggregates
(``create_strategy(...).begin/add/result``) and the real server optimizer steps. MQTT, crypto
and persistence are left out on purpose: they are tested elsewhere and would change nothing here.

Threat model (Blanchard et al. 2017; Yin et al. 2018; Sun et al. 2019): a fixed, seeded 20 % of
devices train honestly and then send ``−k·Δ`` (sign flip) or ``k·Δ`` (scaling) instead of their
delta ``Δ``, every round, with their honest sample counts. They stay inside the wire format's
value range (``|Δ| < 64``, :data:`~fedbeat.aggregator.strategies.aggregate.MAX_ABS_DELTA`):
an update beyond it is refused at ingest by every rule, which would be no attack at all.

Compute: one core (onnxruntime with one thread, no process pool). Local training depends only on
(global parameters, round, device), so the deltas of a round are computed once per distinct
global model and shared between the variants that hold it — in round 1 that is every variant;
later, only variants whose global models are bit-identical share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from fedbeat.aggregator.strategies import (
    AggregateResult,
    ClientUpdate,
    Strategy,
    create_server_optimizer,
    create_strategy,
)
from fedbeat.aggregator.strategies.aggregate import MAX_ABS_DELTA, l2_norm
from fedbeat.device.beats import Beats
from fedbeat.device.ecg.mitdb import patient_of
from fedbeat.device.ecg.records import RecordBeats
from fedbeat.device.trainer import (
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    balanced_class_weight,
)
from fedbeat.models.manifest import ModelDir
from fedbeat.models.metrics import AamiMetrics
from fedbeat.models.params import ParamLayout, Params
from fedbeat.models.zoo import ARCHITECTURES, create_architecture
from fedbeat.tools.cli_evaluate import warn_synthetic
from fedbeat.tools.datasets import DATA_ENV, load_dataset, stack
from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, progress_bar, stderr, stdout
from fedbeat.tools.partition import per_patient

RULES = ("fedavg", "median", "trimmed-mean", "krum", "norm-bounded")
"""Aggregation rules compared; ``norm-bounded`` is FedAvg behind :class:`NormBounded`."""
ATTACKS = ("none", "sign-flip", "scale")
"""What the attacking devices send: their honest delta, ``−k·Δ``, or ``k·Δ``."""
DEFAULT_VARIANTS = tuple((rule, attack) for rule in RULES for attack in ATTACKS)
"""Every rule clean and under each attack (15 variants): a robust rule's price without attack
is part of the answer."""

Advance = Callable[[], None]
"""Called once per variant-round, for a progress bar."""


@dataclass(frozen=True)
class Variant:
    """One aggregation rule facing one attack."""

    rule: str
    attack: str

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r}; choose from {', '.join(RULES)}")
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}; choose from {', '.join(ATTACKS)}")

    @property
    def name(self) -> str:
        return f"{self.rule}/{self.attack}"


@dataclass(frozen=True)
class RobustConfig:
    """Everything that decides the outcome of a run, besides the data and the model.

    ``attacker_fraction`` of the devices (rounded, at least one) attack. Robust rules are set for
    that many attackers whether or not the variant's attackers act, as a deployment would be:
    trimmed mean drops exactly that many values per end, Multi-Krum takes ``f`` = that many.
    ``max_norm`` is norm bounding's fixed clip; ``None`` clips each round at the median norm of
    the updates received that round (which a server can compute, and which stays an honest
    device's norm while fewer than half attack).
    """

    rounds: int = 8
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    attacker_fraction: float = 0.2
    flip_factor: float = 5.0
    scale_factor: float = 100.0
    max_norm: float | None = None
    seed: int = 0
    eval_every_round: bool = True

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise ValueError("rounds, local_epochs and batch_size must be at least 1")
        if not 0 < self.attacker_fraction < 0.5:
            raise ValueError("attacker_fraction must be in (0, 0.5): robust rules assume an "
                             "honest majority")
        if self.flip_factor <= 0 or self.scale_factor <= 0:
            raise ValueError("flip_factor and scale_factor must be positive")
        if self.max_norm is not None and not (math.isfinite(self.max_norm)
                                              and self.max_norm > 0):
            raise ValueError("max_norm must be a positive finite number")


@dataclass(frozen=True)
class Device:
    """One patient's device: an id (the patient) and its labelled beats."""

    device_id: str
    beats: Beats

    @property
    def num_samples(self) -> int:
        return len(self.beats)


@dataclass
class RoundLog:
    """What happened in one round of one variant."""

    round: int
    median_update_norm: float
    max_norm: float | None = None
    rejected: dict[str, str] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    attack_factors: dict[str, float] = field(default_factory=dict)
    metrics: AamiMetrics | None = None

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "median_update_norm": self.median_update_norm,
                "max_norm": self.max_norm, "rejected": self.rejected,
                "dropped": list(self.dropped), "attack_factors": self.attack_factors,
                "ds2": None if self.metrics is None else headline(self.metrics)}


@dataclass
class VariantRun:
    """A variant's global model as rounds go by."""

    variant: Variant
    params: np.ndarray
    rounds: list[RoundLog] = field(default_factory=list)
    final: AamiMetrics | None = None


@dataclass
class ExperimentResult:
    """All variants of one run, plus what a reader needs to trust and reproduce them."""

    runs: list[VariantRun]
    devices: list[Device]
    attackers: tuple[str, ...]
    config: RobustConfig
    local_fits: int
    shared_fits: int
    seconds: dict[str, float] = field(default_factory=dict)


def headline(metrics: AamiMetrics) -> dict[str, float | None]:
    """The figures the results table shows: accuracy, both macro-F1s, S and V F1."""
    per_class = metrics.per_class
    return {"accuracy": metrics.accuracy, "macro_f1_nsvf": metrics.macro_f1_nsvf,
            "macro_f1_nsv": metrics.macro_f1_nsv, "f1_s": per_class["S"].f1,
            "f1_v": per_class["V"].f1}


# -- the fleet -------------------------------------------------------------------------------

def fleet(records: Sequence[RecordBeats], trainer: Trainer) -> list[Device]:
    """One device per patient (MIT-BIH 201 and 202 are one patient), sorted by device id."""
    windows, rr, labels = stack(list(records))
    groups = np.repeat([r.record for r in records], [len(r.labels) for r in records])
    devices = [Device(patient_of(str(groups[idx[0]])),
                      trainer.beats(windows[idx], rr[idx], labels[idx]))
               for idx in per_patient(groups, patient_of=patient_of)]
    return sorted(devices, key=lambda d: d.device_id)


def choose_attackers(device_ids: Sequence[str], fraction: float, *, seed: int) -> tuple[str, ...]:
    """A seeded, fixed choice of ``round(fraction · n)`` devices (at least one), sorted.

    Raises
    ------
    ValueError
        If that leaves no honest majority.
    """
    count = max(1, round(fraction * len(device_ids)))
    if 2 * count >= len(device_ids):
        raise ValueError(f"{count} attackers among {len(device_ids)} devices leave no honest "
                         "majority")
    rng = np.random.default_rng([seed, 0xA77AC4])
    chosen = rng.choice(len(device_ids), size=count, replace=False)
    return tuple(sorted(device_ids[i] for i in chosen))


def poison(delta: np.ndarray, attack: str, config: RobustConfig) -> tuple[np.ndarray, float]:
    """An attacker's update and the factor it applied (``delta`` itself for ``none``).

    The factor is reduced if needed so every value stays below the wire format's bound
    (:data:`MAX_ABS_DELTA`): an attacker that knows the format sends the largest update that is
    still accepted.
    """
    if attack == "none":
        return delta, 1.0
    factor = -config.flip_factor if attack == "sign-flip" else config.scale_factor
    peak = float(np.max(np.abs(delta))) if delta.size else 0.0
    limit = 0.999 * MAX_ABS_DELTA
    if peak * abs(factor) >= limit:
        factor = math.copysign(limit / peak, factor)
    return (delta.astype(np.float64) * factor).astype(np.float32), factor


def make_strategy(rule: str, *, num_attackers: int, num_devices: int,
                  max_norm: float | None) -> Strategy:
    """The library strategy for ``rule``, configured for ``num_attackers`` of ``num_devices``.

    Trimmed mean's β is chosen so that ``floor(β·n)`` equals the attacker count (the smallest
    trim that can remove every attacker's value at each end); Multi-Krum gets ``f`` = attacker
    count and keeps ``n − f`` updates. ``norm-bounded`` needs ``max_norm``.
    """
    if rule == "trimmed-mean":
        return create_strategy(rule, trim_fraction=(num_attackers + 0.5) / num_devices)
    if rule == "krum":
        return create_strategy(rule, num_byzantine=num_attackers)
    if rule == "norm-bounded":
        if max_norm is None:
            raise ValueError("norm-bounded needs max_norm")
        return create_strategy("fedavg", max_norm=max_norm)
    return create_strategy(rule)


# -- local training, shared between variants holding the same global model -------------------

Deltas = dict[str, np.ndarray | str]
"""Device id → flat float32 delta, or the reason the device produced none."""


class LocalTraining:
    """Each device's delta from a given global model, computed once per distinct model.

    The deltas depend only on the global parameters, the round (the local shuffling seed) and
    the device, so a cache keyed by (round, SHA-256 of the parameters) shares work exactly where
    the results would be identical, and nowhere else.
    """

    def __init__(self, trainer: Trainer, devices: Sequence[Device], config: RobustConfig,
                 class_weight: tuple[float, ...]) -> None:
        self.trainer = trainer
        self.devices = list(devices)
        self.config = config
        self.class_weight = class_weight
        self.fits = 0
        self.shared = 0
        self._cache: dict[tuple[int, str], Deltas] = {}

    def deltas(self, params: np.ndarray, round_index: int) -> Deltas:
        """Every device's delta (trained − ``params``) in round ``round_index``."""
        key = (round_index, hashlib.sha256(params.tobytes()).hexdigest())
        if key in self._cache:
            self.shared += len(self.devices)
            return self._cache[key]
        self._cache = {k: v for k, v in self._cache.items() if k[0] == round_index}
        layout = self.trainer.manifest.layout
        out: Deltas = {}
        for index, device in enumerate(self.devices):
            self.trainer.params = Params.from_flat(layout, params)
            config = TrainConfig(epochs=self.config.local_epochs,
                                 batch_size=self.config.batch_size, lr=self.config.lr,
                                 momentum=self.config.momentum, class_weight=self.class_weight,
                                 seed=self.config.seed * 1_000_003 + round_index * 1_009 + index)
            try:
                out[device.device_id] = self.trainer.fit(device.beats, config).update.to_flat()
            except TrainingDivergedError as exc:
                out[device.device_id] = f"diverged: {exc}"
            self.fits += 1
        self._cache[key] = out
        return out


def balanced_training(trainer: Trainer, devices: Sequence[Device],
                      config: RobustConfig) -> LocalTraining:
    """Local training with the fleet's balanced class weights, shared by every device (the
    weights a secure sum of the devices' label histograms would give the aggregator)."""
    labels = np.concatenate([d.beats.labels for d in devices if d.beats.labels is not None])
    weights = balanced_class_weight(labels, len(trainer.manifest.inputs.classes))
    return LocalTraining(trainer, devices, config, weights)


def scorer(trainer: Trainer, test: Sequence[RecordBeats]) -> Callable[[np.ndarray], AamiMetrics]:
    """A function that scores flat global parameters on ``test`` (AAMI metrics)."""
    windows, rr, test_labels = stack(list(test))
    test_beats = trainer.beats(windows, rr)
    layout = trainer.manifest.layout

    def score(params: np.ndarray) -> AamiMetrics:
        trainer.params = Params.from_flat(layout, params)
        return AamiMetrics.from_labels(test_labels, trainer.predict(test_beats).argmax(axis=1))

    return score


# -- one round of one variant ----------------------------------------------------------------

def _tensors(layout: ParamLayout, flat: np.ndarray) -> dict[str, np.ndarray]:
    return {name: flat[s].reshape(shape) for name, shape, s in layout.slices()}


def aggregate_round(run: VariantRun, deltas: Deltas, devices: Sequence[Device],
                    attackers: tuple[str, ...], round_index: int, config: RobustConfig,
                    layout: ParamLayout) -> tuple[RoundLog, AggregateResult | None]:
    """Poison the attackers' deltas, aggregate with the variant's rule, log what happened.

    An update the rule refuses is logged with its reason and left out, as the aggregator's
    ingest would; a round the rule cannot close leaves the global model unchanged.
    """
    sizes = {d.device_id: d.num_samples for d in devices}
    updates: dict[str, np.ndarray] = {}
    rejected: dict[str, str] = {}
    factors: dict[str, float] = {}
    for device_id, delta in deltas.items():
        if isinstance(delta, str):
            rejected[device_id] = delta
            continue
        if device_id in attackers and run.variant.attack != "none":
            delta, factors[device_id] = poison(delta, run.variant.attack, config)
        updates[device_id] = delta
    norms = [l2_norm([u]) for u in updates.values()]
    median_norm = statistics.median(norms) if norms else 0.0
    max_norm = (config.max_norm or median_norm) if run.variant.rule == "norm-bounded" else None
    log = RoundLog(round_index + 1, median_norm, max_norm, rejected, attack_factors=factors)
    strategy = make_strategy(run.variant.rule, num_attackers=len(attackers),
                             num_devices=len(devices), max_norm=max_norm)
    aggregation = strategy.begin(layout, round_index)
    for device_id, delta in updates.items():
        try:
            aggregation.add(ClientUpdate(device_id, sizes[device_id], _tensors(layout, delta),
                                         round_index))
        except ValueError as exc:
            rejected[device_id] = str(exc)
    try:
        result = aggregation.result()
    except ValueError as exc:
        log.rejected["(round)"] = f"not aggregated: {exc}"
        return log, None
    log.dropped = result.dropped
    return log, result


# -- the experiment --------------------------------------------------------------------------

def run_experiment(model_dir: ModelDir, train: Sequence[RecordBeats],
                   test: Sequence[RecordBeats], variants: Sequence[Variant],
                   config: RobustConfig, *, advance: Advance | None = None,
                   on_round: Callable[[VariantRun], None] | None = None) -> ExperimentResult:
    """Federated training of every variant from one initialisation; score each on ``test``.

    Round-major (every variant's round r before any round r + 1) so that the local-training
    cache needs to hold one round only. ``test`` is only ever scored, never used for a choice:
    the reported model is the one after the last round.
    """
    started = time.perf_counter()
    layout = model_dir.manifest.layout
    initial = Params.initial(create_architecture(model_dir.manifest.model), seed=config.seed)
    trainer = Trainer(model_dir, threads=1, params=initial)
    devices = fleet(train, trainer)
    if len(devices) < 3:
        raise ValueError(f"{len(devices)} devices are too few for an honest majority")
    attackers = choose_attackers([d.device_id for d in devices], config.attacker_fraction,
                                 seed=config.seed)
    training = balanced_training(trainer, devices, config)
    score = scorer(trainer, test)
    runs = [VariantRun(v, initial.to_flat()) for v in variants]
    optimizers = {v.name: create_server_optimizer("sgd") for v in variants}
    seconds = {"train": 0.0, "aggregate": 0.0, "evaluate": 0.0}
    for round_index in range(config.rounds):
        for run in runs:
            tick = time.perf_counter()
            deltas = training.deltas(run.params, round_index)
            seconds["train"] += time.perf_counter() - tick
            tick = time.perf_counter()
            log, result = aggregate_round(run, deltas, devices, attackers, round_index, config,
                                          layout)
            if result is not None:
                run.params = optimizers[run.variant.name].step(run.params, result, layout)
            seconds["aggregate"] += time.perf_counter() - tick
            tick = time.perf_counter()
            last = round_index == config.rounds - 1
            if config.eval_every_round or last:
                log.metrics = score(run.params)
            if last:
                run.final = log.metrics
            seconds["evaluate"] += time.perf_counter() - tick
            run.rounds.append(log)
            if on_round:
                on_round(run)
            if advance:
                advance()
    seconds["total"] = time.perf_counter() - started
    return ExperimentResult(runs, devices, attackers, config, training.fits, training.shared,
                            seconds)


def result_json(result: ExperimentResult) -> dict[str, Any]:
    """The whole run as plain JSON types."""
    return {
        "config": dataclasses.asdict(result.config),
        "devices": [{"id": d.device_id, "beats": d.num_samples} for d in result.devices],
        "attackers": list(result.attackers),
        "local_fits": result.local_fits, "shared_fits": result.shared_fits,
        "seconds": result.seconds,
        "variants": [{"rule": r.variant.rule, "attack": r.variant.attack,
                      "ds2": None if r.final is None else headline(r.final),
                      "aami": None if r.final is None else r.final.to_json(),
                      "rounds": [log.to_json() for log in r.rounds]} for r in result.runs],
    }


# -- the command -----------------------------------------------------------------------------

def parse_list(text: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    """Comma-separated names, each one of ``allowed``, no repeats (``all`` = every one)."""
    if text.strip() == "all":
        return allowed
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown or not names or len(set(names)) != len(names):
        raise UsageError(f"{option} takes distinct comma-separated names from "
                         f"{', '.join(allowed)} (or 'all'), got {text!r}")
    return names


def select_variants(rules: str | None, attacks: str | None) -> list[Variant]:
    """The default variants, or every given rule under every given attack."""
    if rules is None and attacks is None:
        return [Variant(rule, attack) for rule, attack in DEFAULT_VARIANTS]
    return [Variant(rule, attack)
            for rule in parse_list(rules or "all", RULES, "--rules")
            for attack in parse_list(attacks or "all", ATTACKS, "--attacks")]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _results_table(result: ExperimentResult, title: str) -> Table:
    table = Table("rule", "attack", "accuracy", "macro-F1 NSVF", "macro-F1 NSV", "S F1", "V F1",
                  "Krum dropped attackers", title=title)
    for run in result.runs:
        figures = headline(run.final) if run.final else {}
        caught = "-"
        if run.variant.rule == "krum":
            mean = statistics.fmean(len(set(log.dropped) & set(result.attackers))
                                    for log in run.rounds)
            caught = f"{mean:.1f} of {len(result.attackers)} per round"
        table.add_row(run.variant.rule, run.variant.attack,
                      *(_fmt(figures.get(k)) for k in ("accuracy", "macro_f1_nsvf",
                                                       "macro_f1_nsv", "f1_s", "f1_v")), caught)
    return table


def _round_line(run: VariantRun) -> None:
    log = run.rounds[-1]
    figures = headline(log.metrics) if log.metrics else {}
    stderr.print(f"round {log.round} {run.variant.name:<24} acc {_fmt(figures.get('accuracy'))}"
                 f"  macro-F1 {_fmt(figures.get('macro_f1_nsvf'))}"
                 f"  S {_fmt(figures.get('f1_s'))}  V {_fmt(figures.get('f1_v'))}"
                 + (f"  rejected {len(log.rejected)}" if log.rejected else ""))


@click.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              envvar=DATA_ENV, help=f"MIT-BIH directory (or its parent); default ${DATA_ENV}. "
              "Without it, synthetic patients are used (a wiring check, not a result).")
@click.option("--model", "name", default="ecg-cnn-s", show_default=True,
              type=click.Choice(sorted(ARCHITECTURES)))
@click.option("--rounds", default=8, show_default=True, type=click.IntRange(1),
              help="Federated rounds; every device takes part in every round.")
@click.option("--local-epochs", default=1, show_default=True, type=click.IntRange(1),
              help="Epochs each device trains per round (SGD, momentum 0.9, batch 32).")
@click.option("--lr", default=0.01, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Device learning rate (the centralized baseline's, chosen on DS1 by CV).")
@click.option("--rules", help=f"Comma-separated rules from {', '.join(RULES)} (or 'all'); with "
              "--attacks, every rule runs under every attack.")
@click.option("--attacks", help=f"Comma-separated attacks from {', '.join(ATTACKS)} (or 'all').")
@click.option("--attackers", "attacker_fraction", default=0.2, show_default=True,
              type=click.FloatRange(0, 0.5, min_open=True, max_open=True),
              help="Fraction of devices that attack (rounded; a fixed seeded choice).")
@click.option("--flip-factor", default=5.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Sign-flip attackers send −k·Δ with this k.")
@click.option("--scale-factor", default=100.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Scaling attackers send k·Δ with this k (capped to stay below |Δ| < 64, the "
              "largest value an update may carry).")
@click.option("--max-norm", type=click.FloatRange(min=0, min_open=True),
              help="Norm-bounded FedAvg's clip C (default: each round, the median norm of the "
              "updates received).")
@click.option("--seed", default=0, show_default=True,
              help="Initialisation, attacker choice and local shuffling.")
@click.option("--final-only", is_flag=True,
              help="Score DS2 only after the last round (default: after every round, for the "
              "curves; DS2 is never used for any choice either way).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write robust.json and each variant's final params-<rule>-<attack>.bin "
              "(with the model graphs in DIR/model, for `fedbeat evaluate`).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def robust(data_dir: Path | None, name: str, rounds: int, local_epochs: int, lr: float,
           rules: str | None, attacks: str | None, attacker_fraction: float,
           flip_factor: float, scale_factor: float, max_norm: float | None, seed: int,
           final_only: bool, out_dir: Path | None, as_json: bool) -> None:
    """Robust aggregation under attack: MIT-BIH DS1 devices, scored on DS2.

    One device per DS1 patient (22) trains locally each round from the global model with the
    device Trainer; a fixed 20 % of them send sign-flipped (−k·Δ) or scaled (k·Δ) updates.
    The aggregator library combines the updates with each rule, and each variant's global
    model is scored on the DS2 patients with the AAMI metrics.

    \b
    Rules (aggregator.strategies): fedavg; median; trimmed-mean (β trims as many
    values per end as there are attackers); krum (Multi-Krum, f = attackers);
    norm-bounded (FedAvg behind NormBounded, clip = median update norm of the round).
    Default: every rule clean and under each attack (15 variants).

    \b
    Examples:
      fedbeat experiment robust --data $FEDBEAT_DATA --rounds 8 --json > robust.json
      fedbeat experiment robust --rules fedavg,median --attacks none,scale --rounds 2

    Uses one core: the default on MIT-BIH is about 8 minutes of CPU, most of it local
    training (20 minutes wall on a busy 2-core machine); --final-only saves a sixth.
    Progress goes to stderr. Results and how to read them: docs/results.md.
    """
    from fedbeat.models.graph.export import build_model_dir
    from fedbeat.models.manifest import load_model_dir

    started = time.perf_counter()
    config = RobustConfig(rounds=rounds, local_epochs=local_epochs, lr=lr,
                          attacker_fraction=attacker_fraction, flip_factor=flip_factor,
                          scale_factor=scale_factor, max_norm=max_norm, seed=seed,
                          eval_every_round=not final_only)
    variants = select_variants(rules, attacks)
    dataset = load_dataset(data_dir, seed=seed)
    if dataset.synthetic:
        warn_synthetic()
    stderr.print(f"{dataset.source}: {len(variants)} variants × {rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="fedbeat-robust-") as scratch:
        model_path = (out_dir or Path(scratch)) / "model"
        build_model_dir(name, model_path, optimizers=("sgd",))
        with progress_bar("variant-rounds", len(variants) * rounds) as bar:
            done = iter(range(1, len(variants) * rounds + 1))
            loaded = load_model_dir(model_path)
            result = run_experiment(loaded, dataset.train, dataset.test,
                                    variants, config,
                                    advance=lambda: bar(next(done), len(variants) * rounds),
                                    on_round=_round_line)
    result.seconds["wall"] = time.perf_counter() - started
    report = {"model": name, "data": dataset.source, "synthetic": dataset.synthetic,
              "test_records": [r.record for r in dataset.test], **result_json(result)}
    if out_dir is not None:
        _write(out_dir, result, report, loaded.manifest.layout)
    if as_json:
        emit_json(report)
        return
    stdout.print(_results_table(result, f"{name}, {len(result.devices)} devices, attackers "
                                        f"{', '.join(result.attackers)}, {rounds} rounds: "
                                        f"{'SYNTHETIC ' if dataset.synthetic else ''}test set"))
    stdout.print(f"{result.local_fits} local fits ({result.shared_fits} shared between "
                 f"variants) in {result.seconds['wall']:.0f} s")


def _write(out_dir: Path, result: ExperimentResult, report: dict[str, Any],
           layout: ParamLayout) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "robust.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    for run in result.runs:
        Params.from_flat(layout, run.params).save(
            out_dir / f"params-{run.variant.rule}-{run.variant.attack}.bin")
