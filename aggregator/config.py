"""The aggregator's configuration: one TOML file, every field with a default and a meaning.

Each section is a frozen dataclass whose fields carry their documentation in ``metadata``;
:func:`example_config` renders the commented example that ``fedbeat aggregator init-config``
writes, so the docs and the defaults cannot drift apart. Unknown sections or keys are errors
(a typo must not silently fall back to a default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedbeat.aggregator.strategies.aggregate import MAX_ABS_DELTA
from fedbeat.broker.rounds import DP_MODES, MAX_SECAGG_BITS
from fedbeat.broker.tensors import COMPRESSIONS, compressor_from_name
from fedbeat.device.settings import (
    ConfigError,
    example_text,
    load_config_file,
    parses,
    require,
    setting,
)

__all__ = ["SECTIONS", "AggregatorConfig", "ConfigError", "EvaluationDataError",
           "example_config", "load_config"]


class EvaluationDataError(Exception):
    """The configured evaluation data cannot be read; the message says what to fix."""


@dataclass(frozen=True)
class FleetSection:
    keys: str = setting("keys", "fleet key directory written by `fedbeat keys init`")
    broker: str = setting("mqtts://localhost:8883",
                     "broker URL: mqtts:// (TLS), wss:// (TLS over WebSockets) or mqtt:// "
                     "(plaintext, the embedded simulation broker only)")
    state_dir: str = setting("aggregator-state", "SQLite database and model versions live here")


@dataclass(frozen=True)
class ModelSection:
    dir: str = setting("model", "built model directory (`fedbeat model build --out DIR`)")
    keep_versions: int = setting(0, "model versions kept on disk; 0 keeps all "
                                    "(rollback needs them)")


@dataclass(frozen=True)
class RoundsSection:
    rounds: int = setting(0, "rounds to run before stopping; 0 runs until stopped")
    min_participants: int = setting(2, "a round closes at its deadline only with at least "
                                       "this many")
    target_participants: int = setting(10, "a round closes as soon as this many updates are in")
    deadline_s: float = setting(600.0, "seconds a round stays open")
    max_extensions: int = setting(2, "deadline extensions when too few arrived, before aborting")
    participation_fraction: float = setting(1.0, "probability that a device is asked to train, "
                                            "decided by each device from a seeded hash")
    epochs: int = setting(1, "local epochs per round")
    batch_size: int = setting(32, "local batch size")
    learning_rate: float = setting(0.01, "local learning rate")
    optimizer: str = setting("sgd", "local optimizer: sgd, adam or adamw")
    fedprox_mu: float = setting(0.0, "FedProx proximal term (0 = FedAvg)")
    dp_mode: str = setting("none", "DP: none, update (clip + Gaussian noise on the update), "
                              "dpsgd (per-example clipping and noise in training) or ddg "
                              "(distributed discrete Gaussian: needs [secagg] enabled)")
    clip_norm: float = setting(1.0, "DP clipping norm C")
    noise_multiplier: float = setting(0.0, "DP noise multiplier sigma (noise std = sigma * C)")
    class_weight: str = setting("", "loss weight per class, comma-separated in the model's "
                                    "class order (N,S,V,F,Q), shared with every device; "
                                    "empty: each device balances its own labels")
    compression: str = setting("f32", "how devices encode their update: f32 (lossless), f16, i8 "
                                      "(per-tensor scale) or topk:FRACTION (largest entries "
                                      "only, e.g. topk:0.1)")


@dataclass(frozen=True)
class AggregationSection:
    strategy: str = setting("fedavg", "fedavg, trimmed-mean, median, krum or fedbuff")
    trim_fraction: float = setting(0.1, "trimmed-mean: fraction cut at each end per coordinate")
    krum_byzantine: int = setting(1, "krum: number of malicious updates f to tolerate")
    krum_keep: int = setting(0, "krum: updates averaged (Multi-Krum m); 0 = n - f")
    max_update_norm: float = setting(10.0, "updates with a larger L2 norm are rejected "
                                      "(norm_exceeded); also what norm bounding clips to")
    norm_bound: bool = setting(False, "clip every update to max_update_norm before aggregating "
                                 "instead of only rejecting larger ones")
    server_optimizer: str = setting("sgd", "sgd (FedAvg when server_lr = 1), fedavgm (server "
                                           "momentum 0.9: steadier on non-IID fleets), "
                                           "fedadagrad, fedadam or fedyogi")
    server_lr: float = setting(1.0, "server learning rate (eta)")
    buffer_size: int = setting(10, "fedbuff: updates per new model version")
    max_staleness: int = setting(10, "fedbuff: oldest base version accepted, in versions behind")


@dataclass(frozen=True)
class SecAggSection:
    enabled: bool = setting(False, "secure aggregation: the aggregator learns only the sum of "
                                   "the updates (needs aggregation.strategy = fedavg without "
                                   "norm_bound: robust rules must see each update)")
    bits: int = setting(20, "ring bits per value (2-20): updates are clipped to "
                            "rounds.clip_norm and quantised into Z_(2^bits)")
    dropout_tolerance: float = setting(0.3, "fraction of devices that may drop out mid-protocol "
                                            "before a round must abort; sets the neighbour "
                                            "graph's degree")
    stage_timeout_s: float = setting(30.0, "seconds each protocol stage after training waits "
                                           "for devices")


@dataclass(frozen=True)
class EvaluationSection:
    data: str = setting("", "MIT-BIH directory for server-side evaluation after every round, "
                            "or synthetic (held-out simulated patients); empty disables it")
    split: str = setting("ds2", "records to evaluate on: ds2 (inter-patient test set) or ds1")
    max_beats: int = setting(0, "evaluate on at most this many beats (0 = all)")


@dataclass(frozen=True)
class ServiceSection:
    log_json: bool = setting(False, "one JSON object per log line (for journald, Loki, …)")
    log_level: str = setting("info", "debug, info, warning or error")
    max_skew_s: float = setting(300.0, "accepted clock difference between devices and us")
    seed: int = setting(0, "seeds the participation rule and anything random on the server")
    metrics_port: int = setting(0, "Prometheus metrics on http://metrics_bind:PORT/metrics "
                                   "(needs the server extra); 0 turns them off")
    metrics_bind: str = setting("127.0.0.1", "address the metrics endpoint listens on; "
                                             "0.0.0.0 exposes it beyond this host")


SECTIONS: dict[str, type] = {
    "fleet": FleetSection, "model": ModelSection, "rounds": RoundsSection,
    "aggregation": AggregationSection, "secagg": SecAggSection,
    "evaluation": EvaluationSection, "service": ServiceSection,
}


@dataclass(frozen=True)
class AggregatorConfig:
    fleet: FleetSection = field(default_factory=FleetSection)
    model: ModelSection = field(default_factory=ModelSection)
    rounds: RoundsSection = field(default_factory=RoundsSection)
    aggregation: AggregationSection = field(default_factory=AggregationSection)
    secagg: SecAggSection = field(default_factory=SecAggSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    service: ServiceSection = field(default_factory=ServiceSection)
    base_dir: Path = Path(".")     # relative paths in the file are relative to the file

    def path(self, value: str) -> Path:
        """A path setting resolved against the configuration file's directory."""
        return (self.base_dir / value).resolve() if value else Path()

    def validate(self) -> None:
        r, a, s = self.rounds, self.aggregation, self.secagg
        checks = [
            (r.dp_mode in DP_MODES, f"rounds.dp_mode must be one of {', '.join(DP_MODES)}"),
            (r.dp_mode != "ddg" or s.enabled,
             "rounds.dp_mode = ddg adds each device's share of the noise to a secure sum: "
             "set [secagg] enabled = true"),
            (not s.enabled or r.dp_mode != "update",
             "with [secagg] enabled use rounds.dp_mode = ddg (distributed noise on the sum) "
             "instead of update (noise on every update)"),
            (not s.enabled or 2 <= s.bits <= MAX_SECAGG_BITS,
             f"secagg.bits must be between 2 and {MAX_SECAGG_BITS}"),
            (0 <= s.dropout_tolerance < 0.5 and 0 < s.stage_timeout_s <= 86_400,
             "secagg.dropout_tolerance must be in [0, 0.5) and stage_timeout_s in (0, 86400]"),
            (1 <= r.min_participants <= r.target_participants,
             "rounds.min_participants must be >= 1 and <= target_participants"),
            (r.deadline_s > 0, "rounds.deadline_s must be positive"),
            (0 < r.participation_fraction <= 1, "rounds.participation_fraction must be in (0, 1]"),
            (r.max_extensions >= 0 and r.rounds >= 0, "rounds counts must be >= 0"),
            (0 < a.max_update_norm < MAX_ABS_DELTA,
             f"aggregation.max_update_norm must be in (0, {MAX_ABS_DELTA:g}): exact "
             f"aggregation represents each value in fixed point below {MAX_ABS_DELTA:g}"),
            (0 <= a.trim_fraction < 0.5, "aggregation.trim_fraction must be in [0, 0.5)"),
            (a.strategy != "krum" or r.min_participants >= 2 * a.krum_byzantine + 3,
             f"krum tolerating {a.krum_byzantine} malicious updates needs at least "
             f"{2 * a.krum_byzantine + 3} per round (Blanchard et al. 2017: n >= 2f + 3): "
             "raise rounds.min_participants or lower aggregation.krum_byzantine"),
            (self.service.log_level in ("debug", "info", "warning", "error"),
             "service.log_level must be debug, info, warning or error"),
            (self.evaluation.split in ("ds1", "ds2"), "evaluation.split must be ds1 or ds2"),
            (0 <= self.service.metrics_port <= 65535, "service.metrics_port must be 0-65535"),
            (parses(compressor_from_name, r.compression),
             f"rounds.compression must be {COMPRESSIONS}"),
            (parses(class_weights, r.class_weight),
             "rounds.class_weight must be empty or comma-separated non-negative numbers, "
             "e.g. 0.3,8.6,3.4,10,10"),
        ]
        require(checks)



def class_weights(text: str) -> tuple[float, ...]:
    """``rounds.class_weight`` as numbers; raises ``ValueError`` for anything else."""
    if not text.strip():
        return ()
    weights = tuple(float(part) for part in text.split(","))
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise ValueError(f"class weights must be non-negative numbers, not all zero; got "
                         f"{text!r}")
    return weights


def load_config(path: Path) -> AggregatorConfig:
    """Read and check ``path``; raises :class:`ConfigError` with what to fix."""
    return load_config_file(path, AggregatorConfig, SECTIONS,
                            init_command="fedbeat aggregator init-config")


def example_config(**overrides: Any) -> str:
    """A complete, commented TOML configuration with every default (``section.key`` overrides)."""
    return example_text("fedbeat aggregator configuration", SECTIONS, overrides)
