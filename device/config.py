"""The device daemon's configuration (``fedbeat device init-config`` writes a commented one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedbeat.device.settings import example_text, load_config_file, require, setting

SOURCES = ("record", "csv", "serial", "synthetic", "beats")


class SourceError(Exception):
    """The configured ECG source cannot be opened or read; the message says what to fix."""


@dataclass(frozen=True)
class DeviceSection:
    keys: str = setting("device", "this device's directory from `fedbeat keys add-device` "
                                  "(its id, keys, certificate and the fleet's CA)")
    state_dir: str = setting("state", "local beat store, outbox, privacy ledger and models")
    tier: str = setting("pi", "pi (ONNX Runtime, trains the whole model) or wearable "
                              "(TFLite inference, trains the classifier head only)")
    threads: int = setting(1, "onnxruntime threads for training and inference")
    tflite_precision: str = setting("int8", "wearable: int8 (quantised on the device with its "
                                            "own beats; 3x smaller) or float32")


@dataclass(frozen=True)
class BrokerSection:
    url: str = setting("mqtts://localhost:8883", "the fleet's broker: mqtts:// or wss:// "
                                                 "(mqtt:// only for a local simulation)")
    protocol: str = setting("auto", "MQTT version: auto (5, else 3.1.1), 5 or 3.1.1 (set 3.1.1 "
                                    "for the embedded broker: it never answers an MQTT 5 "
                                    "hello, which costs auto 3 s at every start)")


@dataclass(frozen=True)
class ModelSection:
    dir: str = setting("model", "built model directory (the graphs every device of the fleet "
                                "runs); global parameters arrive from the aggregator")


@dataclass(frozen=True)
class DataSection:
    source: str = setting("record", "record (replay a WFDB record), csv, serial, synthetic or "
                                    "beats (labelled beats already cut, in a .npz file)")
    path: str = setting("", "record: WFDB directory; csv or beats: file; serial: port (e.g. "
                            "/dev/ttyUSB0)")
    record: str = setting("100", "record: the record to replay")
    lead: str = setting("", "record: lead name (default MLII, else V5)")
    speed: float = setting(1.0, "record/csv/synthetic/beats: replay speed as a multiple of "
                                "real time (0 = as fast as possible)")
    labels: bool = setting(True, "record: use the record's annotations as labels (beats "
                                 "without labels are used for inference only)")
    rate_hz: float = setting(360.0, "csv/serial: sampling rate of the samples")
    seed: int = setting(0, "synthetic: which simulated patient")


@dataclass(frozen=True)
class StoreSection:
    max_beats: int = setting(200_000, "beats kept on the device; the oldest are evicted first")


@dataclass(frozen=True)
class TrainingSection:
    min_labelled_beats: int = setting(200, "skip a round with fewer labelled beats than this")
    max_beats: int = setting(20_000, "train on at most this many of the newest labelled beats")
    epsilon_budget: float = setting(10.0, "total privacy budget (classic RDP conversion, "
                                          "docs/privacy.md); the device refuses DP rounds that "
                                          "would exceed it")
    delta: float = setting(1e-5, "DP delta for the budget")
    require_dp: bool = setting(False, "refuse rounds that ask for no differential privacy")
    power_hook: str = setting("", "command that must exit 0 before training (e.g. check that "
                                  "the device is charging); empty: always train")


@dataclass(frozen=True)
class ServiceSection:
    log_json: bool = setting(False, "one JSON object per log line (journald-friendly)")
    log_level: str = setting("info", "debug, info, warning or error")
    retry_min_s: float = setting(2.0, "first retry of an unanswered update")
    retry_max_s: float = setting(300.0, "retries back off up to this interval")


SECTIONS: dict[str, type] = {
    "device": DeviceSection, "broker": BrokerSection, "model": ModelSection,
    "data": DataSection, "store": StoreSection, "training": TrainingSection,
    "service": ServiceSection,
}


@dataclass(frozen=True)
class DeviceConfig:
    device: DeviceSection = field(default_factory=DeviceSection)
    broker: BrokerSection = field(default_factory=BrokerSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    store: StoreSection = field(default_factory=StoreSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    service: ServiceSection = field(default_factory=ServiceSection)
    base_dir: Path = Path(".")

    def path(self, value: str) -> Path:
        return (self.base_dir / value).resolve() if value else Path()

    def validate(self) -> None:
        checks = [
            (self.device.tier in ("pi", "wearable"), "device.tier must be pi or wearable"),
            (self.device.threads >= 1, "device.threads must be at least 1"),
            (self.device.tflite_precision in ("int8", "float32"),
             "device.tflite_precision must be int8 or float32"),
            (self.broker.protocol in ("auto", "5", "3.1.1"), "broker.protocol must be auto, 5 or "
                                                            "3.1.1"),
            (self.data.source in SOURCES, f"data.source must be one of {', '.join(SOURCES)}"),
            (self.data.speed >= 0, "data.speed must be >= 0"),
            (self.data.rate_hz > 0, "data.rate_hz must be positive"),
            (self.store.max_beats >= 1, "store.max_beats must be at least 1"),
            (self.training.epsilon_budget > 0 and 0 < self.training.delta < 1,
             "training.epsilon_budget must be > 0 and delta in (0, 1)"),
            (0 < self.service.retry_min_s <= self.service.retry_max_s,
             "service.retry_min_s must be positive and at most retry_max_s"),
            (self.service.log_level in ("debug", "info", "warning", "error"),
             "service.log_level must be debug, info, warning or error"),
            (self.data.source not in ("csv", "serial", "beats") or bool(self.data.path),
             "data.path is required for csv, serial and beats sources"),
        ]
        require(checks)


def load_device_config(path: Path) -> DeviceConfig:
    """Read and check a device configuration; raises ``ConfigError`` with what to fix."""
    return load_config_file(path, DeviceConfig, SECTIONS,
                            init_command="fedbeat device init-config")


def example_device_config(**overrides: Any) -> str:
    return example_text("fedbeat device configuration", SECTIONS, overrides)
