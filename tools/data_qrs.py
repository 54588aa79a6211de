"""``fedbeat data qrs-eval``: how well the streaming QRS detector finds the annotated beats."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from fedbeat.tools.datasets import DATA_ENV, find_mitdb
from fedbeat.tools.errors import UsageError
from fedbeat.tools.output import emit_json, progress_bar, stdout
from fedbeat.tools.qrs_eval import MATCH_WINDOW_S, Score, evaluate_records, gross, select_records

PROTOCOL = (f"AAMI EC57 beat-by-beat: match window +/-{MATCH_WINDOW_S * 1000:.0f} ms, whole "
            "records at their native rate, ventricular flutter episodes ([ ... ]) excluded")


@click.command("qrs-eval")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              envvar=DATA_ENV, help=f"MIT-BIH directory (or its parent); default ${DATA_ENV}.")
@click.option("--records", default=None, metavar="LIST",
              help="Comma-separated record names, e.g. 100,101 (default: every annotated record).")
@click.option("--chunk-s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Feed the detector this many seconds at a time, as a device does (default: "
              "whole records). Detections are identical; only the speed differs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def qrs_eval(data_dir: Path | None, records: str | None, chunk_s: float | None,
             as_json: bool) -> None:
    """Score the streaming QRS detector against MIT-BIH reference beats (Se, +P).

    Runs the device's detector over lead MLII (channel 0 where MLII is absent) of each record
    and matches its beats to the reference annotations the AAMI EC57 way; prints a row per
    record and the gross totals, and the detector's real-time factor.
    """
    if data_dir is None:
        raise UsageError(f"no MIT-BIH directory: pass --data or set ${DATA_ENV}")
    root = find_mitdb(data_dir)
    names = select_records(root, records)
    with progress_bar("detecting QRS", len(names), enabled=not as_json) as advance:
        scores = evaluate_records(root, names, chunk_s=chunk_s, progress=advance)
    total = gross(scores)
    if as_json:
        emit_json({"data": str(root), "protocol": PROTOCOL, "chunk_s": chunk_s,
                   "records": [s.to_json() for s in scores], "gross": total.to_json()})
        return
    stdout.print(_table(scores, total))
    speed = total.realtime_factor
    stdout.print(f"{PROTOCOL}\ngross Se {100 * total.sensitivity:.2f} %, "
                 f"+P {100 * total.positive_predictivity:.2f} % over {total.tp + total.fn:,} "
                 "beats" + ("" if speed is None else f"; detector {speed:,.0f}x real time"))


def _table(scores: list[Score], total: Score) -> Table:
    table = Table("record", "beats", "TP", "FN", "FP", "Se %", "+P %")
    for score in [*scores, total]:
        table.add_row(score.record, f"{score.tp + score.fn:,}", f"{score.tp:,}", f"{score.fn:,}",
                      f"{score.fp:,}", f"{100 * score.sensitivity:.2f}",
                      f"{100 * score.positive_predictivity:.2f}",
                      end_section=score is scores[-1])
    return table
