"""Where training data comes from: MIT-BIH records if a data directory is given, else synthetic."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedbeat.device.ecg.mitdb import (
    DS1,
    DS2,
    RecordBeats,
    RecordError,
    read_record_beats,
)
from fedbeat.device.ecg.synthetic import synthetic_patient
from fedbeat.tools.errors import UsageError

DATA_ENV = "FEDBEAT_DATA"


@dataclass(frozen=True)
class Dataset:
    """Training and test patients, and a human-readable note on where they came from."""

    train: list[RecordBeats]
    test: list[RecordBeats]
    source: str
    synthetic: bool


def find_mitdb(path: Path) -> Path:
    """Accept either the database directory or a parent holding ``mitdb/``."""
    for candidate in (path, path / "mitdb"):
        if (candidate / "100.hea").is_file():
            return candidate
    raise UsageError(f"{path} holds no MIT-BIH records (expected 100.hea there or in mitdb/); "
                     "download them with 'fedbeat data download mitdb --dir DIR' or point --data / "
                     f"${DATA_ENV} at a local copy")


def default_data_dir() -> Path | None:
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


def stack(records: list[RecordBeats]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.concatenate([r.windows for r in records]), np.concatenate([r.rr for r in records]),
            np.concatenate([r.labels for r in records]))


def load_dataset(data_dir: Path | None, *, train_records: tuple[str, ...] = DS1,
                 test_records: tuple[str, ...] = DS2, synthetic_patients: int = 12,
                 seed: int = 0) -> Dataset:
    """MIT-BIH inter-patient split if ``data_dir`` is set, else synthetic patients.

    The default is de Chazal et al.'s DS1/DS2 exactly as published, so results compare with
    the literature, although it puts record 201 in DS1 and record 202, the same patient, in
    DS2 (see docs/data.md). Federated device grouping uses ``patient_of`` instead.
    """
    if data_dir is not None:
        root = find_mitdb(data_dir)
        return Dataset(_read_records(root, train_records), _read_records(root, test_records),
                       f"MIT-BIH Arrhythmia Database at {root} (train {len(train_records)} "
                       f"records, test {len(test_records)})", synthetic=False)
    patients = [synthetic_patient(seed * 1000 + i) for i in range(synthetic_patients)]
    split = max(1, synthetic_patients * 3 // 4)
    return Dataset(patients[:split], patients[split:],
                   f"SYNTHETIC ECG ({synthetic_patients} simulated patients; not clinical data)",
                   synthetic=True)


def _read_records(root: Path, records: tuple[str, ...]) -> list[RecordBeats]:
    try:
        return [read_record_beats(root, r) for r in records]
    except RecordError as exc:
        raise UsageError(str(exc)) from None
