"""The round announcement: what the aggregator asks of devices, and the participation rule.

Both roles use this module: the aggregator builds and signs an :class:`Announcement` (retained
on ``fedbeat/<fleet>/round``); a device verifies it, checks :func:`participates` for itself and,
if selected, trains with the announced configuration. The rule is a keyed hash that every
device evaluates on its own, so the aggregator never addresses devices and a device cannot
bias its own selection (the seed changes every round).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fedbeat.broker import cbor
from fedbeat.broker.errors import Rejected, RejectReason
from fedbeat.broker.tensors import compressor_from_name

ROUND_STATES = ("open", "closed", "aborted")
ROUND_MODES = ("sync", "async", "secagg")
DP_MODES = ("none", "update", "dpsgd", "ddg")
MAX_SECAGG_BITS = 20


MAX_CLASSES = 16


@dataclass(frozen=True)
class TrainingConfig:
    """Local training a device runs for one round (see ``fedbeat.device.trainer``)."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    optimizer: str = "sgd"
    fedprox_mu: float = 0.0
    # "none", "update" (clip + noise the update), "dpsgd", or "ddg" (distributed discrete
    # Gaussian shares under secure aggregation: each device adds a share of the central noise)
    dp_mode: str = "none"
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    compression: str = "f32"          # how the update's tensors travel (broker/tensors.py)
    # Loss weight per class shared by the whole fleet; empty: each device balances its own
    # labels (which, with patients that hold few arrhythmic beats, loses rare classes).
    class_weight: tuple[float, ...] = ()

    def validate(self) -> None:
        if not (1 <= self.epochs <= 1000 and 1 <= self.batch_size <= 65536):
            raise ValueError("epochs must be 1-1000 and batch_size 1-65536")
        if not (0 < self.learning_rate < 10 and self.fedprox_mu >= 0):
            raise ValueError("learning_rate must be in (0, 10) and fedprox_mu >= 0")
        if self.dp_mode not in DP_MODES:
            raise ValueError(f"dp_mode must be one of {', '.join(DP_MODES)}, got "
                             f"{self.dp_mode!r}")
        if not (self.clip_norm > 0 and self.noise_multiplier >= 0):
            raise ValueError("clip_norm must be > 0 and noise_multiplier >= 0")
        compressor_from_name(self.compression)
        if self.class_weight and (len(self.class_weight) > MAX_CLASSES or not all(
                math.isfinite(w) and w >= 0 for w in self.class_weight)
                or not any(self.class_weight)):
            raise ValueError(f"class_weight must be at most {MAX_CLASSES} non-negative numbers, "
                             "not all zero")


def _floats(mapping: Mapping[Any, Any], key: str) -> tuple[float, ...]:
    items = cbor.as_sequence(cbor.field(mapping, key, list, "training"), f"training {key}")
    if len(items) > MAX_CLASSES:
        raise Rejected(RejectReason.MALFORMED, f"training {key}: more than {MAX_CLASSES} values")
    return tuple(cbor.field({key: item}, key, float, "training") for item in items)


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation for a ``mode = "secagg"`` round (``broker/secagg``, protocol.md §10).

    ``bits``: the ring Z_(2^bits) updates are quantised into; ``dropout_tolerance``: the
    fraction of devices that may drop out at any stage before the round has to abort (it sets
    the neighbour graph's degree); ``stage_timeout_s``: how long the aggregator waits for each
    protocol stage after training.
    """

    bits: int = 0
    dropout_tolerance: float = 0.3
    stage_timeout_s: float = 30.0

    def validate(self) -> None:
        if not 0 <= self.bits <= MAX_SECAGG_BITS:
            raise ValueError(f"secagg bits must be between 2 and {MAX_SECAGG_BITS}")
        if not 0.0 <= self.dropout_tolerance < 0.5:
            raise ValueError("secagg dropout_tolerance must be in [0, 0.5)")
        if not (math.isfinite(self.stage_timeout_s) and 0 < self.stage_timeout_s <= 86_400):
            raise ValueError("secagg stage_timeout_s must be in (0, 86400]")


@dataclass(frozen=True)
class Announcement:
    """One round, as devices see it. ``state`` moves open → closed or aborted (with ``reason``)."""

    round: int
    model_version: int
    model_sha256: str
    deadline_ms: int
    min_participants: int
    target_participants: int
    participation_fraction: float
    participation_seed: str
    training: TrainingConfig = field(default_factory=TrainingConfig)
    state: str = "open"
    reason: str = ""
    # "sync": train from model_version and answer this round only. "async" (FedBuff): train
    # whenever possible from any version at most max_staleness behind; the round id names the
    # buffer being filled.
    # "secagg": like "sync", but the aggregator learns only the sum of the updates (SecAgg).
    mode: str = "sync"
    max_staleness: int = 0
    secagg: SecAggConfig = field(default_factory=SecAggConfig)

    def to_body(self) -> dict[str, Any]:
        body = asdict(self)
        body["training"] = asdict(self.training)
        body["secagg"] = asdict(self.secagg)
        return body

    @classmethod
    def from_body(cls, body: Mapping[Any, Any]) -> Announcement:
        """Strictly typed parse of a verified round message's payload."""
        expected = {f for f in cls.__dataclass_fields__}
        if set(body) != expected:
            raise Rejected(RejectReason.MALFORMED, "round announcement has unexpected fields")
        training_map = cbor.as_mapping(body["training"], "training")
        if set(training_map) != set(TrainingConfig.__dataclass_fields__):
            raise Rejected(RejectReason.MALFORMED, "training config has unexpected fields")
        training = TrainingConfig(
            epochs=cbor.field(training_map, "epochs", int, "training"),
            batch_size=cbor.field(training_map, "batch_size", int, "training"),
            learning_rate=cbor.field(training_map, "learning_rate", float, "training"),
            optimizer=cbor.field(training_map, "optimizer", str, "training"),
            fedprox_mu=cbor.field(training_map, "fedprox_mu", float, "training"),
            dp_mode=cbor.field(training_map, "dp_mode", str, "training"),
            clip_norm=cbor.field(training_map, "clip_norm", float, "training"),
            noise_multiplier=cbor.field(training_map, "noise_multiplier", float, "training"),
            compression=cbor.field(training_map, "compression", str, "training"),
            class_weight=_floats(training_map, "class_weight"))
        announcement = cls(
            round=cbor.bounded_int(body, "round", "round", lo=0, hi=2**53 - 1),
            model_version=cbor.bounded_int(body, "model_version", "round", lo=0, hi=2**53 - 1),
            model_sha256=cbor.field(body, "model_sha256", str, "round"),
            deadline_ms=cbor.bounded_int(body, "deadline_ms", "round", lo=0, hi=2**53 - 1),
            min_participants=cbor.bounded_int(body, "min_participants", "round", lo=1,
                                              hi=2**31),
            target_participants=cbor.bounded_int(body, "target_participants", "round", lo=1,
                                                 hi=2**31),
            participation_fraction=cbor.field(body, "participation_fraction", float, "round"),
            participation_seed=cbor.field(body, "participation_seed", str, "round"),
            training=training,
            state=cbor.field(body, "state", str, "round"),
            reason=cbor.field(body, "reason", str, "round"),
            mode=cbor.field(body, "mode", str, "round"),
            max_staleness=cbor.bounded_int(body, "max_staleness", "round", lo=0, hi=2**31),
            secagg=_secagg_config(body["secagg"]))
        try:
            announcement.validate()
        except ValueError as exc:
            raise Rejected(RejectReason.MALFORMED, str(exc)) from None
        return announcement

    def validate(self) -> None:
        self.training.validate()
        if self.state not in ROUND_STATES:
            raise ValueError(f"round state must be one of {ROUND_STATES}")
        if self.mode not in ROUND_MODES:
            raise ValueError(f"round mode must be one of {', '.join(ROUND_MODES)}")
        self.secagg.validate()
        if (self.mode == "secagg") != (self.secagg.bits >= 2):
            raise ValueError("a secagg round needs secagg bits (2-20); other rounds none")
        if self.training.dp_mode == "ddg" and self.mode != "secagg":
            raise ValueError("dp_mode ddg needs a secagg round")
        if self.mode == "secagg" and self.training.dp_mode == "update":
            raise ValueError("update-level DP noise under secagg is superseded by dp_mode ddg")
        if not 0.0 < self.participation_fraction <= 1.0 or \
                not math.isfinite(self.participation_fraction):
            raise ValueError("participation_fraction must be in (0, 1]")
        if self.min_participants > self.target_participants:
            raise ValueError("min_participants exceeds target_participants")
        if len(self.model_sha256) != 64 or len(self.participation_seed) > 128 or \
                len(self.reason) > 512:
            raise ValueError("model hash, seed or reason has the wrong length")


def _secagg_config(value: object) -> SecAggConfig:
    mapping = cbor.as_mapping(value, "secagg")
    if set(mapping) != set(SecAggConfig.__dataclass_fields__):
        raise Rejected(RejectReason.MALFORMED, "secagg config has unexpected fields")
    return SecAggConfig(bits=cbor.bounded_int(mapping, "bits", "secagg", lo=0, hi=64),
                        dropout_tolerance=cbor.field(mapping, "dropout_tolerance", float,
                                                     "secagg"),
                        stage_timeout_s=cbor.field(mapping, "stage_timeout_s", float, "secagg"))


def participates(device_id: str, round_id: int, seed: str, fraction: float) -> bool:
    """True if ``device_id`` takes part in ``round_id``: SHA-256(seed ‖ round ‖ id) < fraction.

    The first 8 bytes of the hash, read as a big-endian integer over 2^64, are uniform on
    [0, 1), so each device is selected with probability ``fraction``, independently per round.
    """
    if fraction >= 1.0:
        return True
    digest = hashlib.sha256(f"{seed}\x00{round_id}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2.0**64
