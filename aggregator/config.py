"""The aggregator's configuration: one TOML file, every field with a default and a meaning.

Each section is a frozen dataclass whose fields carry their documentation in ``metadata``;
:func:`example_config` renders the commented example that ``fedbeat aggregator init-config``
writes, so the docs and the defaults cannot drift apart. Unknown sections or keys are errors
(a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints


class ConfigError(Exception):
    """The configuration file is missing, not TOML, or has an unknown or invalid setting."""


def _f(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class FleetSection:
    keys: str = _f("keys", "fleet key directory written by `fedbeat keys init`")
    broker: str = _f("mqtts://localhost:8883",
                     "broker URL: mqtts:// (TLS), wss:// (TLS over WebSockets) or mqtt:// "
                     "(plaintext, the embedded simulation broker only)")
    state_dir: str = _f("aggregator-state", "SQLite database and model versions live here")


@dataclass(frozen=True)
class ModelSection:
    dir: str = _f("model", "built model directory (`fedbeat model build --out DIR`)")
    keep_versions: int = _f(0, "model versions kept on disk; 0 keeps all (rollback needs them)")


@dataclass(frozen=True)
class RoundsSection:
    rounds: int = _f(0, "rounds to run before stopping; 0 runs until stopped")
    min_participants: int = _f(2, "a round closes at its deadline only with at least this many")
    target_participants: int = _f(10, "a round closes as soon as this many updates are in")
    deadline_s: float = _f(600.0, "seconds a round stays open")
    max_extensions: int = _f(2, "deadline extensions when too few arrived, before aborting")
    participation_fraction: float = _f(1.0, "probability that a device is asked to train, "
                                            "decided by each device from a seeded hash")
    epochs: int = _f(1, "local epochs per round")
    batch_size: int = _f(32, "local batch size")
    learning_rate: float = _f(0.01, "local learning rate")
    optimizer: str = _f("sgd", "local optimizer: sgd, adam or adamw")
    fedprox_mu: float = _f(0.0, "FedProx proximal term (0 = FedAvg)")
    dp_mode: str = _f("none", "local DP: none, update (clip + Gaussian noise on the update) "
                              "or dpsgd (per-example clipping and noise in training)")
    clip_norm: float = _f(1.0, "DP clipping norm C")
    noise_multiplier: float = _f(0.0, "DP noise multiplier sigma (noise std = sigma * C)")


@dataclass(frozen=True)
class AggregationSection:
    strategy: str = _f("fedavg", "fedavg, trimmed-mean, median, krum or fedbuff")
    trim_fraction: float = _f(0.1, "trimmed-mean: fraction cut at each end per coordinate")
    krum_byzantine: int = _f(1, "krum: number of malicious updates f to tolerate")
    krum_keep: int = _f(0, "krum: updates averaged (Multi-Krum m); 0 = n - f")
    max_update_norm: float = _f(10.0, "updates with a larger L2 norm are rejected "
                                      "(norm_exceeded); also what norm bounding clips to")
    norm_bound: bool = _f(False, "clip every update to max_update_norm before aggregating "
                                 "instead of only rejecting larger ones")
    server_optimizer: str = _f("sgd", "sgd (FedAvg when server_lr = 1), fedadam or fedyogi")
    server_lr: float = _f(1.0, "server learning rate (eta)")
    buffer_size: int = _f(10, "fedbuff: updates per new model version")
    max_staleness: int = _f(10, "fedbuff: oldest base version accepted, in versions behind")


@dataclass(frozen=True)
class EvaluationSection:
    data: str = _f("", "MIT-BIH directory for server-side evaluation after every round; "
                       "empty disables it")
    split: str = _f("ds2", "records to evaluate on: ds2 (inter-patient test set) or ds1")
    max_beats: int = _f(0, "evaluate on at most this many beats (0 = all)")


@dataclass(frozen=True)
class ServiceSection:
    log_json: bool = _f(False, "one JSON object per log line (for journald, Loki, …)")
    log_level: str = _f("info", "debug, info, warning or error")
    max_skew_s: float = _f(300.0, "accepted clock difference between devices and us")
    seed: int = _f(0, "seeds the participation rule and anything random on the server")


SECTIONS: dict[str, type] = {
    "fleet": FleetSection, "model": ModelSection, "rounds": RoundsSection,
    "aggregation": AggregationSection, "evaluation": EvaluationSection,
    "service": ServiceSection,
}


@dataclass(frozen=True)
class AggregatorConfig:
    fleet: FleetSection = field(default_factory=FleetSection)
    model: ModelSection = field(default_factory=ModelSection)
    rounds: RoundsSection = field(default_factory=RoundsSection)
    aggregation: AggregationSection = field(default_factory=AggregationSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    service: ServiceSection = field(default_factory=ServiceSection)
    base_dir: Path = Path(".")     # relative paths in the file are relative to the file

    def path(self, value: str) -> Path:
        """A path setting resolved against the configuration file's directory."""
        return (self.base_dir / value).resolve() if value else Path()

    def validate(self) -> None:
        r, a = self.rounds, self.aggregation
        checks = [
            (1 <= r.min_participants <= r.target_participants,
             "rounds.min_participants must be >= 1 and <= target_participants"),
            (r.deadline_s > 0, "rounds.deadline_s must be positive"),
            (0 < r.participation_fraction <= 1, "rounds.participation_fraction must be in (0, 1]"),
            (r.max_extensions >= 0 and r.rounds >= 0, "rounds counts must be >= 0"),
            (0 < a.max_update_norm < 64,
             "aggregation.max_update_norm must be in (0, 64): exact aggregation represents "
             "each coordinate in fixed point below 64"),
            (0 <= a.trim_fraction < 0.5, "aggregation.trim_fraction must be in [0, 0.5)"),
            (self.service.log_level in ("debug", "info", "warning", "error"),
             "service.log_level must be debug, info, warning or error"),
            (self.evaluation.split in ("ds1", "ds2"), "evaluation.split must be ds1 or ds2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def _section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{name}]: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    for key, value in values.items():
        kind = hints[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            values[key], ok = float(value), True
        if not ok:
            raise ConfigError(f"[{name}] {key} must be {kind.__name__}, got {value!r}")
    return cls(**values)


def load_config(path: Path) -> AggregatorConfig:
    """Read and check ``path``; raises :class:`ConfigError` with what to fix."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (write one with `fedbeat aggregator "
                          "init-config`)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{path}: not a valid TOML file ({exc})") from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)} "
                          f"(known: {', '.join(SECTIONS)})")
    sections = {name: _section(name, cls, dict(data.get(name, {})))
                for name, cls in SECTIONS.items()}
    config = AggregatorConfig(**sections, base_dir=Path(path).resolve().parent)
    config.validate()
    return config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def example_config(**overrides: Any) -> str:
    """A complete, commented TOML configuration with every default (``section.key`` overrides)."""
    lines = ["# fedbeat aggregator configuration. Every setting is optional; shown are the",
             "# defaults. Relative paths are relative to this file.", ""]
    for name, cls in SECTIONS.items():
        lines.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            value = overrides.get(f"{name}.{f.name}", f.default)
            lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
