"""The final figures of a run, for ``--json`` and scripts that check a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedbeat.tools.sim_compare import summarize
from fedbeat.tools.sim_report import METRICS_NAME, REPORT_NAME, read_metrics


def final_metrics(run_dir: Path) -> dict[str, Any]:
    """``macro_f1`` (N, S, V, F), ``macro_f1_nsv``, ``accuracy``, ``per_class``, ``data``,
    ``epsilon_max``, ``bytes_total``, ``rounds`` (one line per round as in ``metrics.jsonl``),
    ``report`` and ``run_dir``: the figures :func:`~fedbeat.tools.sim_compare.summarize` puts
    into a comparison, under the names scripts check. Metrics are ``None`` when no round was
    evaluated."""
    s = summarize(run_dir.name, run_dir, run_dir.parent)
    return {
        "run_dir": str(run_dir), "report": str(run_dir / REPORT_NAME),
        "macro_f1": s["macro_f1_nsvf"], "macro_f1_nsv": s["macro_f1_nsv"],
        "accuracy": s["accuracy"], "per_class": s["per_class"], "data": s["evaluation_data"],
        "epsilon_max": s["epsilon_max"] or 0.0, "bytes_total": int(s["bytes_total"]),
        "rounds": read_metrics(run_dir / METRICS_NAME),
    }
