"""The final figures of a run, for ``--json`` and scripts that check a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedbeat.tools.sim_report import (
    METRICS_NAME,
    REPORT_NAME,
    evaluations,
    final_epsilon,
    read_metrics,
    total_bytes,
)


def final_metrics(run_dir: Path) -> dict[str, Any]:
    """``macro_f1`` (N, S, V, F), ``macro_f1_nsv``, ``per_class``, ``rounds`` (one line per
    round as in ``metrics.jsonl``), ``epsilon_max``, ``bytes_total``, ``report``, ``run_dir``.
    Metrics are ``None`` when no round was evaluated."""
    records = read_metrics(run_dir / METRICS_NAME)
    evaluated = evaluations(records)
    last = evaluated[-1][1] if evaluated else {}
    spent = final_epsilon(records)
    return {
        "run_dir": str(run_dir),
        "report": str(run_dir / REPORT_NAME),
        "macro_f1": last.get("macro_f1_nsvf"),
        "macro_f1_nsv": last.get("macro_f1_nsv"),
        "accuracy": last.get("accuracy"),
        "per_class": last.get("per_class", {}),
        "data": last.get("data"),
        "epsilon_max": max(spent) if spent else 0.0,
        "bytes_total": int(total_bytes(records)),
        "rounds": records,
    }
