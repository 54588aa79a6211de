"""What a fleet simulation runs: a scenario, from a TOML file, flags, or both.

A scenario is five documented sections (the same strict settings machinery as the device and
aggregator files: an unknown key or a wrong type is an error naming what to fix, never a silent
default). ``fedbeat simulate --write-scenario FILE`` writes the commented example; flags override
the file, key by key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedbeat.aggregator.config import class_weights
from fedbeat.broker.tensors import COMPRESSIONS, compressor_from_name
from fedbeat.device.settings import (
    ConfigError,
    example_text,
    load_sections,
    parses,
    require,
    setting,
)

PARTITIONS = ("patient", "dirichlet", "iid")
ATTACKS = ("sign-flip", "scale", "gaussian", "label-flip")
STRATEGIES = ("fedavg", "trimmed-mean", "median", "krum", "fedbuff")
SERVER_OPTIMIZERS = ("sgd", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


@dataclass(frozen=True)
class FleetSection:
    devices: int = setting(8, "devices; with MIT-BIH and partition = patient, up to 22 get one "
                              "DS1 patient each and more split patients' recordings in time")
    rounds: int = setting(5, "federated rounds (with fedbuff: model versions)")
    model: str = setting("ecg-cnn-s", "ecg-cnn-s (wearable class) or ecg-cnn-m (Pi class)")
    data: str = setting("", "MIT-BIH directory (DS1 trains, DS2 tests); empty: simulated "
                            "patients, labelled SYNTHETIC everywhere")
    partition: str = setting("patient", "patient (one patient per device, or a patient split "
                                        "over several), dirichlet (label skew) or iid")
    alpha: float = setting(0.5, "dirichlet: concentration; smaller means more label skew")
    workers: int = setting(1, "device processes (1: devices run beside the aggregator; use "
                              "the number of cores for large fleets)")
    broker: str = setting("auto", "auto (Mosquitto with TLS if installed), mosquitto or "
                                  "embedded")
    seed: int = setting(0, "seeds the model, the partition, the faults and the attackers")


@dataclass(frozen=True)
class TrainingSection:
    epochs: int = setting(1, "local epochs per round")
    batch_size: int = setting(32, "local batch size")
    learning_rate: float = setting(0.01, "local learning rate")
    optimizer: str = setting("sgd", "local optimizer: sgd, adam or adamw")
    fedprox_mu: float = setting(0.0, "FedProx proximal term (0 = FedAvg)")
    class_weight: str = setting("global", "global: every device weighs classes by the "
                                          "fleet's class counts (announced in the round, as a "
                                          "secure sum of device histograms would give them); "
                                          "local: each device balances its own labels; or "
                                          "N,S,V,F,Q weights")
    min_beats: int = setting(20, "a device with fewer labelled beats sits rounds out")


@dataclass(frozen=True)
class PrivacySection:
    dp: str = setting("none", "none, dpsgd (per-example clipping and noise on the device), "
                              "update (clip the whole update and add noise: user-level) or "
                              "ddg (each device adds a share of central noise to a secure "
                              "sum: needs aggregation.secagg)")
    noise_multiplier: float = setting(1.0, "sigma: noise std = sigma x clip_norm")
    clip_norm: float = setting(1.0, "clipping norm C")
    epsilon_budget: float = setting(10.0, "each device refuses rounds beyond this epsilon")
    delta: float = setting(1e-5, "delta of the (epsilon, delta) guarantee")


@dataclass(frozen=True)
class AggregationSection:
    strategy: str = setting("fedavg", "fedavg, trimmed-mean, median, krum (Multi-Krum), or "
                                      "fedbuff: asynchronous buffered aggregation, a new model "
                                      "every buffer_size updates, stale ones down-weighted")
    norm_bound: bool = setting(False, "clip every update to max_update_norm before aggregating "
                                      "(instead of only rejecting larger ones)")
    server_optimizer: str = setting("sgd", "sgd (plain averaging at server_lr 1), fedavgm "
                                           "(server momentum 0.9), fedadam, fedyogi or "
                                           "fedadagrad")
    server_lr: float = setting(1.0, "server learning rate")
    max_update_norm: float = setting(10.0, "updates with a larger L2 norm are rejected")
    buffer_size: int = setting(10, "fedbuff: updates per model version")
    compression: str = setting("f32", f"update encoding: {COMPRESSIONS}")
    participation: float = setting(1.0, "fraction of devices asked each round")
    deadline_s: float = setting(120.0, "seconds a round stays open")
    secagg: bool = setting(False, "secure aggregation: the aggregator learns only the sum of "
                                  "the clipped, quantised updates (strategy fedavg only)")
    secagg_bits: int = setting(20, "secure aggregation: ring bits per value (2-20)")
    secagg_stage_timeout_s: float = setting(5.0, "secure aggregation: seconds each protocol "
                                                 "stage waits for devices")


@dataclass(frozen=True)
class FaultsSection:
    dropout: float = setting(0.0, "probability that a device is offline for a round")
    straggler_median_s: float = setting(0.0, "median extra delay before a device trains "
                                             "(log-normal); 0 = none")
    straggler_sigma: float = setting(1.0, "spread of the log-normal delay")
    malicious: float = setting(0.0, "fraction of devices that attack, chosen by the seed")
    attack: str = setting("sign-flip", "sign-flip (send -k x update), scale (k x update), "
                                       "gaussian (noise of k x the update's norm) or "
                                       "label-flip (train on N<->V, S and F as N)")
    attack_scale: float = setting(4.0, "k for sign-flip, scale and gaussian")
    secagg_dropout: float = setting(0.0, "secure aggregation: probability that a device goes "
                                         "silent mid-protocol, at a random stage after "
                                         "advertising its keys")


SECTIONS: dict[str, type] = {"fleet": FleetSection, "training": TrainingSection,
                             "privacy": PrivacySection, "aggregation": AggregationSection,
                             "faults": FaultsSection}


@dataclass(frozen=True)
class Scenario:
    """One simulation; every default finishes in a few minutes on a laptop."""

    fleet: FleetSection = field(default_factory=FleetSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    aggregation: AggregationSection = field(default_factory=AggregationSection)
    faults: FaultsSection = field(default_factory=FaultsSection)

    @property
    def synthetic(self) -> bool:
        return not self.fleet.data

    @property
    def attackers(self) -> int:
        return round(self.faults.malicious * self.fleet.devices)

    def replace(self, overrides: Mapping[str, Any]) -> Scenario:
        """A copy with ``section.key`` values replaced (``None`` values are ignored)."""
        sections = {name: getattr(self, name) for name in SECTIONS}
        for dotted, value in overrides.items():
            if value is None:
                continue
            name, _, key = dotted.partition(".")
            if name not in SECTIONS or key not in {f.name for f in
                                                   dataclasses.fields(SECTIONS[name])}:
                raise ConfigError(f"unknown scenario setting {dotted!r}")
            sections[name] = dataclasses.replace(sections[name], **{key: value})
        return Scenario(**sections)

    def to_json(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that cannot work."""
        f, t, p, a, x = self.fleet, self.training, self.privacy, self.aggregation, self.faults
        require([
            (1 <= f.devices <= 100_000, "fleet.devices must be 1-100000"),
            (1 <= f.rounds <= 10_000, "fleet.rounds must be 1-10000"),
            (f.partition in PARTITIONS, f"fleet.partition must be {', '.join(PARTITIONS)}"),
            (f.alpha > 0, "fleet.alpha must be positive"),
            (1 <= f.workers <= 64, "fleet.workers must be 1-64"),
            (f.broker in ("auto", "mosquitto", "embedded"),
             "fleet.broker must be auto, mosquitto or embedded"),
            (1 <= t.epochs <= 100 and 1 <= t.batch_size <= 65536,
             "training.epochs must be 1-100 and batch_size 1-65536"),
            (0 < t.learning_rate < 10, "training.learning_rate must be in (0, 10)"),
            (t.optimizer in ("sgd", "adam", "adamw"), "training.optimizer must be sgd, adam "
                                                      "or adamw"),
            (t.class_weight in ("global", "local") or (
                parses(class_weights, t.class_weight)
                and len(class_weights(t.class_weight)) == 5),
             "training.class_weight must be global, local or five numbers N,S,V,F,Q"),
            (t.fedprox_mu >= 0 and t.min_beats >= 1,
             "training.fedprox_mu must be >= 0 and min_beats >= 1"),
            (p.dp in ("none", "dpsgd", "update", "ddg"),
             "privacy.dp must be none, dpsgd, update or ddg"),
            (p.dp != "ddg" or a.secagg, "privacy.dp = ddg needs aggregation.secagg (--secagg): "
                                        "the noise shares only protect a secure sum"),
            (not a.secagg or (a.strategy == "fedavg" and not a.norm_bound),
             "secure aggregation reveals only the sum: robust strategies and norm bounding "
             "must see each update; use --strategy fedavg without --norm-bound"),
            (not a.secagg or p.dp != "update",
             "with secure aggregation use --dp ddg (distributed noise) instead of update"),
            (2 <= a.secagg_bits <= 20, "aggregation.secagg_bits must be between 2 and 20"),
            (a.secagg_stage_timeout_s > 0, "aggregation.secagg_stage_timeout_s must be positive"),
            (0 <= x.secagg_dropout < 1, "faults.secagg_dropout must be in [0, 1)"),
            (p.noise_multiplier >= 0 and p.clip_norm > 0,
             "privacy.noise_multiplier must be >= 0 and clip_norm > 0"),
            (p.epsilon_budget > 0 and 0 < p.delta < 1,
             "privacy.epsilon_budget must be > 0 and delta in (0, 1)"),
            (a.strategy in STRATEGIES, f"aggregation.strategy must be {', '.join(STRATEGIES)}"),
            (a.server_optimizer in SERVER_OPTIMIZERS,
             f"aggregation.server_optimizer must be {', '.join(SERVER_OPTIMIZERS)}"),
            (a.server_lr > 0 and a.max_update_norm > 0,
             "aggregation.server_lr and max_update_norm must be positive"),
            (a.buffer_size >= 1, "aggregation.buffer_size must be >= 1"),
            (parses(compressor_from_name, a.compression),
             f"aggregation.compression must be {COMPRESSIONS}"),
            (0 < a.participation <= 1, "aggregation.participation must be in (0, 1]"),
            (a.deadline_s > 0, "aggregation.deadline_s must be positive"),
            (0 <= x.dropout < 1, "faults.dropout must be in [0, 1)"),
            (x.straggler_median_s >= 0 and x.straggler_sigma >= 0,
             "faults.straggler_median_s and straggler_sigma must be >= 0"),
            (0 <= x.malicious < 0.5, "faults.malicious must be in [0, 0.5): a majority of "
                                     "attackers defeats every aggregation rule by definition"),
            (x.attack in ATTACKS, f"faults.attack must be {', '.join(ATTACKS)}"),
            (x.attack_scale > 0, "faults.attack_scale must be positive"),
            (a.strategy != "krum" or f.devices >= 2 * max(1, self.attackers) + 3,
             f"krum tolerating {max(1, self.attackers)} attackers needs at least "
             f"{2 * max(1, self.attackers) + 3} devices (n >= 2f + 3)"),
        ])



def load_scenario(path: Path | None, overrides: Mapping[str, Any] | None = None) -> Scenario:
    """The scenario in ``path`` (defaults without one), with ``overrides``, validated."""
    base = Scenario() if path is None else Scenario(**load_sections(
        path, SECTIONS, init_command="fedbeat simulate --write-scenario FILE"))
    scenario = base.replace(overrides or {})
    scenario.validate()
    return scenario


def scenario_text(scenario: Scenario | None = None) -> str:
    """``scenario`` (default: the defaults) as the commented TOML ``--scenario`` reads."""
    values = (scenario or Scenario()).to_json()
    return example_text("fedbeat fleet simulation scenario (fedbeat simulate --scenario FILE)",
                        SECTIONS, {f"{name}.{key}": value for name, section in values.items()
                                   for key, value in section.items()})
