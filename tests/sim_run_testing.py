"""Run directories for the simulation-report tests: fake but well-formed metrics lines.

Imported as ``sim_run_testing`` (``tests`` is on ``pythonpath``) by ``test_sim_report.py`` and
``test_report_browser.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CLASSES = ["N", "S", "V", "F", "Q"]
CONFUSION = [[9012, 41, 17, 3, 0], [123, 456, 7, 0, 0], [28, 5, 789, 11, 0],
             [30, 0, 12, 67, 0], [1, 0, 2, 0, 4]]
CONFIG = {"synthetic": True, "devices": 5, "rounds": 3, "model": "ecg-cnn-s",
          "dp": {"mode": "sample", "epsilon": 8.0}, "note": "<script>alert(1)</script>"}


def evaluation(scale: float) -> dict[str, Any]:
    per_class = {c: {"support": 10, "f1": 0.5 * scale + 0.1 * i, "sensitivity": 0.6,
                     "positive_predictivity": 0.7, "specificity": 0.95}
                 for i, c in enumerate(CLASSES)}
    per_class["Q"]["f1"] = None  # undefined values come as null
    return {"accuracy": 0.9 * scale, "macro_f1_nsvf": 0.6 * scale, "macro_f1_nsv": 0.7 * scale,
            "beats": 10607, "classes": CLASSES, "per_class": per_class,
            "confusion_matrix": CONFUSION, "data": "synthetic <test> patients"}


def record(round_: int, *, evaluated: bool = True, epsilon: bool = True,
           rounds: int = 3) -> dict[str, Any]:
    """Round ``round_`` of a ``rounds``-round run; scores reach their top in the last round."""
    return {"round": round_, "model_version": round_, "participants": 5 - round_ % 2,
            "dropouts": round_ % 2, "rejections": {"stale": round_, "bad-signature": 1},
            "bytes": 180_000 * round_, "loss": None if round_ == 2 else 1.0 / round_,
            "epsilon": {f"dev-{d}": 0.5 * round_ + d for d in range(3)} if epsilon else {},
            "seconds": 1.5, "evaluation": evaluation(round_ / rounds) if evaluated else None}


def make_run(tmp_path: Path, records: list[dict[str, Any]], config: dict[str, Any]) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "config.json").write_text(json.dumps(config))
    return run
