"""Server-side evaluation: score each new global model on held-out patients.

The aggregator holds no patient's training data, but an operator may give it a validation set
(e.g. MIT-BIH DS2, patients no device trains on). After every round the new model is scored
with the AAMI EC57 metrics of ``fedbeat evaluate`` (``models/metrics.py``); the result goes into
the round's metrics history (``fedbeat aggregator status --json``). The beats are read and
windowed once, with the same streaming pipeline a device runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedbeat.aggregator.config import EvaluationDataError
from fedbeat.device.ecg.errors import RecordError
from fedbeat.device.ecg.mitdb import DS1, DS2, read_record_beats
from fedbeat.device.ecg.synthetic import synthetic_patient
from fedbeat.device.trainer import Trainer
from fedbeat.models.manifest import load_model_dir
from fedbeat.models.metrics import AamiMetrics
from fedbeat.models.params import Params

log = logging.getLogger("fedbeat.aggregator")

SPLITS = {"ds1": DS1, "ds2": DS2}


def find_records_dir(path: Path) -> Path:
    """``path`` or ``path/mitdb``, whichever holds MIT-BIH record 100."""
    for candidate in (path, path / "mitdb"):
        if (candidate / "100.hea").is_file():
            return candidate
    raise EvaluationDataError(f"[evaluation] data = {path} holds no MIT-BIH records "
                              "(expected 100.hea there or in mitdb/)")


SYNTHETIC = "synthetic"
SYNTHETIC_TEST_PATIENTS = 4
SYNTHETIC_TEST_SEED = 10_000    # far from the seeds simulated devices use


class Evaluator:
    """Scores flat parameter vectors on one fixed set of labelled beats.

    ``data_dir`` is an MIT-BIH directory, or the word ``synthetic`` for held-out simulated
    patients (for simulations without real data; every report says so).
    """

    def __init__(self, model_dir: Path, data_dir: Path, split: str, *, max_beats: int = 0,
                 seed: int = 0) -> None:
        started = time.perf_counter()
        if data_dir.name == SYNTHETIC:
            records = [synthetic_patient(SYNTHETIC_TEST_SEED + i)
                       for i in range(SYNTHETIC_TEST_PATIENTS)]
            label = "SYNTHETIC held-out patients"
        else:
            root = find_records_dir(data_dir)
            try:
                records = [read_record_beats(root, name) for name in SPLITS[split]]
            except RecordError as exc:
                raise EvaluationDataError(f"[evaluation] {exc}") from None
            label = f"MIT-BIH {split.upper()}"
        windows = np.concatenate([r.windows for r in records])
        rr = np.concatenate([r.rr for r in records])
        labels = np.concatenate([r.labels for r in records])
        if 0 < max_beats < len(labels):     # a fixed, seeded subset: comparable across rounds
            keep = np.sort(np.random.default_rng(seed).choice(len(labels), max_beats,
                                                              replace=False))
            windows, rr, labels = windows[keep], rr[keep], labels[keep]
        self.trainer = Trainer(load_model_dir(model_dir), threads=1)
        self.beats = self.trainer.beats(windows, rr, labels)
        self.source = f"{label} ({len(records)} records, {len(labels):,} beats)"
        log.info("evaluation data: %s, read in %.1f s", self.source,
                 time.perf_counter() - started)

    def evaluate(self, params: np.ndarray) -> dict[str, Any]:
        """AAMI metrics of ``params`` (flat float32) as JSON-ready data."""
        self.trainer.params = Params.from_flat(self.trainer.manifest.layout, params)
        assert self.beats.labels is not None
        predicted = self.trainer.predict(self.beats).argmax(axis=1)
        metrics = AamiMetrics.from_labels(self.beats.labels, predicted)
        return {"data": self.source, **metrics.to_json()}
