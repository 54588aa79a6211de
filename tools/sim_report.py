"""The simulation report: one self-contained HTML page from a run directory.

:func:`write_report` reads ``metrics.jsonl`` (one JSON object per round) and ``config.json``
from a run directory and writes ``report.html`` beside them. The page opens offline: no
scripts, no external stylesheets or fonts; every plot is inline SVG drawn here (standard
library only). Every piece of text from the run is escaped.

The readers, charts, tables and page shell are shared with the comparison page
(:mod:`fedbeat.tools.sim_compare`).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_NAME = "report.html"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
SYNTHETIC_BANNER = "SYNTHETIC DATA — not clinical"
AAMI_CLASSES = ("N", "S", "V", "F", "Q")

Record = dict[str, Any]

# Colour-blind-friendly palette (Okabe–Ito), then greys for anything beyond it.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")
MANY_DEVICES = 8
"""Above this many devices, ε is drawn as light lines plus the maximum instead of a legend."""


class ReportDataError(ValueError):
    """The run directory holds a file the report cannot read."""


# --- reading the run ------------------------------------------------------------------------

def read_metrics(path: Path, *, missing_ok: bool = True) -> list[Record]:
    """The per-round records; a truncated last line is ignored.

    A missing file is no rounds, or with ``missing_ok=False`` a :class:`ReportDataError`.
    """
    if not path.exists():
        if missing_ok:
            return []
        raise ReportDataError(f"{path}: no such file (the run recorded no rounds)")
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[Record] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # a run stopped mid-write: keep what was complete
                break
            raise ReportDataError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise ReportDataError(f"{path}:{number}: expected a JSON object per line")
        records.append(record)
    return records


def read_config(path: Path) -> Record:
    """The run's configuration; a missing file is an empty configuration."""
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportDataError(f"{path}: not JSON ({exc.msg})") from exc
    if not isinstance(config, dict):
        raise ReportDataError(f"{path}: expected a JSON object")
    return config


def number(value: Any) -> float | None:
    """A finite float, or ``None`` for null, non-numbers, booleans, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def round_of(record: Record, index: int) -> int:
    value = record.get("round")
    return value if isinstance(value, int) and not isinstance(value, bool) else index + 1


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


# --- formatting -----------------------------------------------------------------------------

def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def empty(text: str) -> str:
    return f'<p class="empty">{esc(text)}</p>'


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` places, ``—`` for undefined values."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def fmt_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def fmt_tick(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:g}"


# --- SVG charts -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Canvas:
    """A chart's size and margins in px; the right margin holds the legend."""

    width: int = 720
    height: int = 280
    left: int = 64
    right: int = 170
    top: int = 14
    bottom: int = 44


CANVAS = Canvas()
SMALL_CANVAS = Canvas(width=460, height=230, right=120)
"""For small multiples, two to a row."""
MARKERS_UP_TO = 40
"""Draw point markers when a line has at most this many points."""


@dataclass(frozen=True)
class Series:
    """One line (or one group of bars): ``None`` values leave a gap."""

    name: str
    values: Sequence[tuple[float, float | None]]
    color: str
    width: float = 2.0
    dash: str = ""
    opacity: float = 1.0
    legend: bool = True


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """About ``count`` round-numbered ticks covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


@dataclass(frozen=True)
class Frame:
    """Maps data to pixels and draws the axes, grid and labels."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    canvas: Canvas = CANVAS

    def x(self, value: float) -> float:
        c = self.canvas
        span = self.x_hi - self.x_lo or 1.0
        return c.left + (value - self.x_lo) / span * (c.width - c.left - c.right)

    def y(self, value: float) -> float:
        c = self.canvas
        span = self.y_hi - self.y_lo or 1.0
        return c.height - c.bottom - (value - self.y_lo) / span * (c.height - c.top - c.bottom)

    def axes(self, y_ticks: Sequence[float], y_label: str, x_label: str) -> list[str]:
        c = self.canvas
        parts = []
        for tick in y_ticks:
            y = self.y(tick)
            parts.append(f'<line class="grid" x1="{c.left}" x2="{c.width - c.right}" '
                         f'y1="{y:.1f}" y2="{y:.1f}"/>'
                         f'<text class="tick" x="{c.left - 6}" y="{y + 4:.1f}" '
                         f'text-anchor="end">{esc(fmt_tick(tick))}</text>')
        bottom = c.height - c.bottom
        parts.append(f'<line class="axis" x1="{c.left}" x2="{c.width - c.right}" '
                     f'y1="{bottom}" y2="{bottom}"/><line class="axis" x1="{c.left}" '
                     f'x2="{c.left}" y1="{c.top}" y2="{bottom}"/>')
        middle = (c.top + bottom) / 2
        parts.append(f'<text class="label" x="{(c.left + c.width - c.right) / 2:.0f}" '
                     f'y="{c.height - 6}" text-anchor="middle">{esc(x_label)}</text>'
                     f'<text class="label" transform="translate(14 {middle:.0f}) rotate(-90)" '
                     f'text-anchor="middle">{esc(y_label)}</text>')
        return parts


def svg(title: str, body: Sequence[str], canvas: Canvas = CANVAS) -> str:
    return (f'<svg class="chart" viewBox="0 0 {canvas.width} {canvas.height}" role="img" '
            f'aria-label="{esc(title)}"><title>{esc(title)}</title>{"".join(body)}</svg>')


def legend(entries: Sequence[tuple[str, str, str]], canvas: Canvas = CANVAS) -> list[str]:
    """Legend rows (name, colour, dash) in the right margin."""
    parts = []
    x = canvas.width - canvas.right + 14
    for i, (name, color, dash) in enumerate(entries):
        y = canvas.top + 10 + i * 18
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<line x1="{x}" x2="{x + 20}" y1="{y}" y2="{y}" stroke="{color}" '
                     f'stroke-width="3"{dash_attr}/><text class="tick" x="{x + 26}" '
                     f'y="{y + 4}">{esc(name)}</text>')
    return parts


def y_range(values: Sequence[float], y_max: float | None) -> tuple[float, float]:
    lo = min([0.0, *values])
    top = max([0.0, *values])
    hi = max(y_max, top) if y_max is not None else top * 1.05
    return lo, hi if hi > lo else lo + 1


def line_chart(title: str, series: Sequence[Series], *, x_label: str, y_label: str,
               y_max: float | None = None, canvas: Canvas = CANVAS) -> str:
    """Lines over rounds; a single point or an isolated value is drawn as a dot."""
    xs = [x for s in series for x, _ in s.values]
    ys = [y for s in series for _, y in s.values if y is not None]
    if not ys:
        return empty(f"{title}: nothing recorded.")
    x_lo, x_hi = min(xs), max(xs)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = y_range(ys, y_max)
    frame = Frame(x_lo, x_hi, y_lo, y_hi, canvas)
    x_ticks = nice_ticks(x_lo, x_hi, 8 if canvas.width >= CANVAS.width else 5, integer=True)
    body = frame.axes(nice_ticks(y_lo, y_hi), y_label, x_label)
    body += [f'<text class="tick" x="{frame.x(t):.1f}" y="{canvas.height - canvas.bottom + 16}"'
             f' text-anchor="middle">{esc(fmt_tick(t))}</text>' for t in x_ticks]
    for s in series:
        style = (f'stroke="{s.color}" stroke-width="{s.width}" stroke-opacity="{s.opacity}"'
                 + (f' stroke-dasharray="{s.dash}"' if s.dash else ""))
        segments: list[list[tuple[float, float]]] = [[]]
        for x, y in s.values:
            if y is None:
                segments.append([])
            else:
                segments[-1].append((frame.x(x), frame.y(y)))
        for segment in segments:
            if len(segment) > 1:
                points = " ".join(f"{px:.1f},{py:.1f}" for px, py in segment)
                body.append(f'<polyline fill="none" {style} points="{points}"/>')
            markers = len(s.values) <= MARKERS_UP_TO and s.legend
            if len(segment) == 1 or markers:
                body += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.8" fill="{s.color}" '
                         f'fill-opacity="{s.opacity}"/>' for px, py in segment]
    body += legend([(s.name, s.color, s.dash) for s in series if s.legend], canvas)
    return svg(title, body, canvas)


def bar_chart(title: str, categories: Sequence[str], series: Sequence[Series], *,
              x_label: str, y_label: str, value_format: Callable[[float], str] = fmt_tick,
              scale: float = 1.0) -> str:
    """Grouped bars, one group per category; series values are indexed like ``categories``.

    Values are divided by ``scale`` for the axis; hovering a bar shows the unscaled value.
    """
    values = [y for s in series for _, y in s.values if y is not None]
    if not categories or not values:
        return empty(f"{title}: nothing recorded.")
    y_lo, y_hi = y_range([v / scale for v in values], None)
    frame = Frame(0, len(categories), y_lo, y_hi)
    body = frame.axes(nice_ticks(y_lo, y_hi), y_label, x_label)
    slot = (CANVAS.width - CANVAS.left - CANVAS.right) / len(categories)
    bar = slot * 0.8 / len(series)
    label_every = math.ceil(len(categories) / 16)
    for i, category in enumerate(categories):
        if i % label_every == 0:
            body.append(f'<text class="tick" x="{frame.x(i + 0.5):.1f}" '
                        f'y="{CANVAS.height - CANVAS.bottom + 16}" '
                        f'text-anchor="middle">{esc(category)}</text>')
    for j, s in enumerate(series):
        for i, (_, value) in enumerate(s.values):
            if value is None:
                continue
            top, base = frame.y(max(value / scale, 0)), frame.y(min(value / scale, 0))
            x = frame.x(i) + slot * 0.1 + j * bar
            tip = f"{categories[i]} · {s.name}: {value_format(value)}"
            body.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{max(bar, 0.5):.1f}" '
                        f'height="{max(base - top, 0.5):.1f}" fill="{s.color}">'
                        f'<title>{esc(tip)}</title></rect>')
            if len(categories) * len(series) <= 12:
                body.append(f'<text class="tick" x="{x + bar / 2:.1f}" y="{top - 4:.1f}" '
                            f'text-anchor="middle">{esc(value_format(value))}</text>')
    if len(series) > 1:
        body += legend([(s.name, s.color, "") for s in series])
    return svg(title, body)


# --- what a run's records say ---------------------------------------------------------------

def evaluations(records: Sequence[Record]) -> list[tuple[int, Record]]:
    """(round, evaluation) for every round that has one, in order."""
    return [(round_of(r, i), r["evaluation"]) for i, r in enumerate(records)
            if isinstance(r.get("evaluation"), dict)]


def classes_of(evaluation: Mapping[str, Any]) -> list[str]:
    classes = evaluation.get("classes")
    if isinstance(classes, list) and classes:
        return [str(c) for c in classes]
    return list(AAMI_CLASSES)


def class_metrics(evaluation: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """One class's entry of ``per_class`` (empty if absent)."""
    return mapping(mapping(evaluation.get("per_class")).get(name))


def final_epsilon(records: Sequence[Record]) -> list[float]:
    """Each device's ε spent by the last round (the recorder carries it forward)."""
    return [v for v in map(number, mapping(records[-1].get("epsilon")).values())
            if v is not None] if records else []


def total_bytes(records: Sequence[Record]) -> float:
    return sum(number(r.get("bytes")) or 0.0 for r in records)


# --- HTML pieces ----------------------------------------------------------------------------

def numbers_table(head: Sequence[str], rows: Sequence[Sequence[str]], *,
                  css_class: str = "numbers") -> str:
    """A table with a header row; each row's first cell is a row header.

    ``head`` is plain text; ``rows`` hold HTML (callers escape what came from the run).
    """
    header = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join(f"<tr><th>{row[0]}</th>" + "".join(f"<td>{cell}</td>" for cell in row[1:])
                   + "</tr>" for row in rows)
    return (f'<table class="{css_class}"><thead><tr>{header}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def pairs_table(pairs: Sequence[tuple[str, str]], *, css_class: str) -> str:
    """A two-column table of (name, value), both plain text."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs)
    return f'<table class="{css_class}"><tbody>{rows}</tbody></table>'


def facts(pairs: Sequence[tuple[str, str]]) -> str:
    """Headline figures as a row of boxes."""
    return '<dl class="facts">' + "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>"
                                         for k, v in pairs) + "</dl>"


def flatten(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items += flatten(value, name + ".")
        else:
            items.append((name, value))
    return items


def config_text(value: Any) -> str:
    """A configuration value as shown: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def synthetic_banner(detail: str) -> str:
    return f'<div class="banner">{esc(SYNTHETIC_BANNER)}<small>{esc(detail)}</small></div>'


def sections(parts: Sequence[tuple[str, str]]) -> str:
    return "".join(f"<section><h2>{esc(title)}</h2>{content}</section>"
                   for title, content in parts)


CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #111;
       max-width: 980px; margin: 0 auto; padding: 1.5em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.banner { background: #b00020; color: #fff; font-weight: 700; font-size: 1.3em;
          padding: 0.6em 1em; border-radius: 4px; text-align: center; }
.banner small { display: block; font-weight: 400; font-size: 0.7em; }
.facts { display: flex; flex-wrap: wrap; gap: 0.6em; padding: 0; }
.facts div { background: #f3f5f7; border-radius: 4px; padding: 0.4em 0.8em; }
.facts dt { font-size: 0.8em; color: #555; } .facts dd { margin: 0; font-weight: 600; }
.chart { width: 100%; max-width: 720px; height: auto; display: block; }
.chart .grid { stroke: #e5e5e5; } .chart .axis { stroke: #333; }
.chart text { font: 11px system-ui, sans-serif; fill: #333; } .chart .label { font-size: 12px; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; }
thead th { background: #f3f5f7; }
.numbers td { text-align: right; font-variant-numeric: tabular-nums; }
.confusion td.diagonal { font-weight: 700; outline: 2px solid #333; outline-offset: -2px; }
.config td { font-family: ui-monospace, monospace; font-size: 0.9em; }
.empty, .note { color: #555; font-style: italic; }
.warning { color: #b00020; font-weight: 600; }
.multiples { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr));
             gap: 0.4em 1em; }
.multiples figure { margin: 0; } .multiples figcaption { font-weight: 600; }
.multiples .chart { max-width: 100%; }
mark { background: #fff3b0; }
"""


def page(title: str, body: str, *, banner: str = "") -> str:
    """A whole self-contained page: the banner (if any) above the title, then ``body``."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"{banner}<h1>{esc(title)}</h1>{body}</body></html>\n")


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` beside ``path`` and rename it into place: readers never see half."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path


# --- the report's sections ------------------------------------------------------------------

def f1_chart(records: Sequence[Record]) -> str:
    evaluated = evaluations(records)
    if not evaluated:
        return empty("The global model was not evaluated in this run.")
    classes = classes_of(evaluated[-1][1])
    series = [Series(f"F1 {name}", [(x, number(class_metrics(ev, name).get("f1")))
                                    for x, ev in evaluated],
                     PALETTE[i % len(PALETTE)], width=1.5) for i, name in enumerate(classes)]
    series += [Series("macro-F1 NSVF", [(x, number(ev.get("macro_f1_nsvf")))
                                        for x, ev in evaluated], "#000000", width=3),
               Series("macro-F1 NSV", [(x, number(ev.get("macro_f1_nsv")))
                                       for x, ev in evaluated], "#555555", width=2, dash="6 4")]
    return line_chart("Per-class F1 and macro-F1 per round", series, x_label="round",
                      y_label="F1", y_max=1.0)


def loss_chart(records: Sequence[Record]) -> str:
    points = [(float(round_of(r, i)), number(r.get("loss"))) for i, r in enumerate(records)]
    return line_chart("Mean local training loss per round",
                      [Series("loss", points, PALETTE[0])], x_label="round", y_label="loss")


def epsilon_chart(records: Sequence[Record]) -> str:
    per_round = [(float(round_of(r, i)), mapping(r.get("epsilon"))) for i, r in enumerate(records)]
    devices = sorted({str(d) for _, eps in per_round for d in eps})
    if not devices:
        return empty("No privacy budget was recorded (differential privacy off).")
    lines = {d: [(x, number(eps.get(d))) for x, eps in per_round] for d in devices}
    peak: list[tuple[float, float | None]] = []
    for x, eps in per_round:
        spent = [v for v in map(number, eps.values()) if v is not None]
        peak.append((x, max(spent) if spent else None))
    if len(devices) <= MANY_DEVICES:
        series = [Series(d, lines[d], PALETTE[i % len(PALETTE)])
                  for i, d in enumerate(devices)]
    else:
        series = [Series(d, lines[d], "#7f8c9a", width=1, opacity=0.35, legend=False)
                  for d in devices]
        series += [Series(f"each device ({len(devices)})", [], "#7f8c9a", width=1),
                   Series("max over devices", peak, "#D55E00", width=3)]
    return line_chart("Privacy budget ε spent per device", series, x_label="round",
                      y_label="ε spent")


def bytes_chart(records: Sequence[Record]) -> str:
    rounds = [str(round_of(r, i)) for i, r in enumerate(records)]
    values = [number(r.get("bytes")) for r in records]
    peak = max([v for v in values if v is not None], default=0.0)
    scale, unit = next(((s, u) for s, u in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"))
                        if peak >= s), (1.0, "B"))
    series = [Series("bytes", list(enumerate(values)), PALETTE[0])]
    return bar_chart("Update bytes received per round", rounds, series, x_label="round",
                     y_label=f"received ({unit})", value_format=fmt_bytes, scale=scale)


def participation_chart(records: Sequence[Record]) -> str:
    rounds = [str(round_of(r, i)) for i, r in enumerate(records)]
    series = [Series("participants", [(i, number(r.get("participants")))
                                      for i, r in enumerate(records)], PALETTE[2]),
              Series("dropouts", [(i, number(r.get("dropouts")))
                                  for i, r in enumerate(records)], PALETTE[3])]
    return bar_chart("Participants and dropouts per round", rounds, series, x_label="round",
                     y_label="devices")


def rejections_chart(records: Sequence[Record]) -> str:
    final = mapping(records[-1].get("rejections")) if records else {}
    reasons = sorted(final, key=lambda reason: (-(number(final[reason]) or 0), reason))
    if not reasons or not any(number(final[r]) for r in reasons):
        return empty("No updates were rejected.")
    series = [Series("rejected", [(i, number(final[r])) for i, r in enumerate(reasons)],
                     PALETTE[3])]
    return bar_chart("Rejected updates by reason (whole run)", reasons, series,
                     x_label="reason", y_label="updates")


def secagg_section(records: Sequence[Record]) -> str:
    """What secure aggregation cost per round: protocol traffic through the aggregator, its
    compute, how many devices reached each stage, and the ε of the DDG sum."""
    secured = [(str(round_of(r, i)), mapping(r.get("secagg"))) for i, r in enumerate(records)
               if mapping(r.get("secagg"))]
    if not secured:
        return ""
    rounds = [name for name, _ in secured]
    traffic = [Series(label, [(i, number(m.get(key))) for i, (_, m) in enumerate(secured)],
                      PALETTE[j]) for j, (label, key) in enumerate(
                          (("devices → aggregator", "bytes_in"),
                           ("aggregator → devices", "bytes_out")))]
    peak = max((number(m.get(k)) or 0.0 for _, m in secured for k in ("bytes_in", "bytes_out")),
               default=0.0)
    scale, unit = next(((s, u) for s, u in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"))
                        if peak >= s), (1.0, "B"))
    chart = bar_chart("Secure-aggregation traffic per round", rounds, traffic,
                      x_label="round", y_label=f"bytes ({unit})", value_format=fmt_bytes,
                      scale=scale)
    rows = []
    for name, m in secured:
        stages = mapping(m.get("stages"))
        rows.append([esc(name), *(esc(fmt(stages.get(k))) for k in
                                  ("advertised", "shared", "masked", "revealed")),
                     esc(fmt_bytes(number(m.get("bytes_in")) or 0.0)),
                     esc(fmt_bytes(number(m.get("bytes_out")) or 0.0)),
                     esc(fmt(m.get("compute_s"))), esc(fmt(m.get("epsilon_total"), 2)),
                     esc(str(m.get("reason") or ""))])
    return chart + numbers_table(
        ("Round", "Keys", "Shares", "Masked", "Unmask", "In", "Out", "Aggregator s", "ε (DDG)",
         "Abort reason"), rows) + (
        '<p class="note">Devices per protocol stage (advertised keys, shared keys, sent a '
        "masked input, answered the unmasking); the aggregator learned only the sum of the "
        "masked devices' updates.</p>")


def aami_table(records: Sequence[Record]) -> str:
    evaluated = evaluations(records)
    if not evaluated:
        return empty("No evaluation: the run has no AAMI metrics to show.")
    round_number, ev = evaluated[-1]
    rows = [[esc(name), *(esc(fmt(class_metrics(ev, name).get(key))) for key in
                          ("support", "sensitivity", "positive_predictivity", "f1",
                           "specificity"))] for name in classes_of(ev)]
    summary = [("Accuracy", fmt(ev.get("accuracy"))),
               ("Macro-F1 (N, S, V, F)", fmt(ev.get("macro_f1_nsvf"))),
               ("Macro-F1 (N, S, V)", fmt(ev.get("macro_f1_nsv"))),
               ("Beats evaluated", fmt(ev.get("beats")))]
    data = f" on {esc(ev['data'])}" if ev.get("data") else ""
    return (f"<p>Global model after round {round_number}{data}.</p>"
            + numbers_table(("Class", "Support", "Se", "+P", "F1", "Sp"), rows)
            + pairs_table(summary, css_class="numbers summary"))


def confusion_table(records: Sequence[Record]) -> str:
    evaluated = evaluations(records)
    matrix = evaluated[-1][1].get("confusion_matrix") if evaluated else None
    if not isinstance(matrix, list) or not matrix:
        return empty("No confusion matrix recorded.")
    classes = classes_of(evaluated[-1][1])
    head = "".join(f"<th>{esc(c)}</th>" for c in classes)
    rows: list[str] = []
    for name, row in zip(classes, matrix, strict=False):
        counts = [number(v) or 0.0 for v in row] if isinstance(row, list) else []
        total = sum(counts)
        cells = []
        for j, count in enumerate(counts):
            share = count / total if total else 0.0
            color = "#fff" if share > 0.55 else "#111"
            cls = ' class="diagonal"' if j == len(rows) else ""
            cells.append(f'<td{cls} style="background:rgba(0,114,178,{share * 0.9:.3f});'
                         f'color:{color}" title="{share:.1%} of true {esc(name)}">'
                         f"{count:.0f}</td>")
        rows.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}<td>{total:.0f}</td></tr>")
    return ('<table class="numbers confusion"><thead><tr><th>true ↓ · predicted →</th>'
            f"{head}<th>total</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            '<p class="note">Rows are the true classes; shading is the share of the row.</p>')


def config_table(config: Mapping[str, Any]) -> str:
    if not config:
        return empty("No configuration recorded.")
    return pairs_table([(k, config_text(v)) for k, v in flatten(config)], css_class="config")


def summary(records: Sequence[Record]) -> str:
    evaluated = evaluations(records)
    final_eps = final_epsilon(records)
    seconds = sum(number(r.get("seconds")) or 0.0 for r in records)
    return facts([("Rounds", str(len(records))),
                  ("Final model version",
                   fmt(records[-1].get("model_version")) if records else "—"),
                  ("Final macro-F1 (N, S, V, F)",
                   fmt(evaluated[-1][1].get("macro_f1_nsvf")) if evaluated else "not evaluated"),
                  ("Max ε spent", fmt(max(final_eps), 2) if final_eps else "—"),
                  ("Update bytes received", fmt_bytes(total_bytes(records))),
                  ("Round time", f"{seconds:.1f} s")])


def render(run_dir: Path, records: Sequence[Record], config: Mapping[str, Any]) -> str:
    """The report page as a string."""
    banner = ""
    if config.get("synthetic") is True:
        banner = synthetic_banner("The devices trained and were evaluated on generated "
                                  "patients: these figures say nothing about arrhythmia "
                                  "detection on real ECG.")
    no_rounds = "" if records else empty("No rounds were recorded.")
    secure = secagg_section(records)
    body = sections([("Per-class F1 and macro-F1", f1_chart(records)),
                     ("Training loss", loss_chart(records)),
                     ("Privacy budget spent", epsilon_chart(records)),
                     ("Update traffic", bytes_chart(records)),
                     *([("Secure aggregation overhead", secure)] if secure else []),
                     ("Participation", participation_chart(records)),
                     ("Rejected updates", rejections_chart(records)),
                     ("Final AAMI metrics", aami_table(records)),
                     ("Confusion matrix", confusion_table(records)),
                     ("Run configuration", config_table(config))])
    return page(f"fedbeat simulation — {run_dir.name}", no_rounds + summary(records) + body,
                banner=banner)


def write_report(run_dir: Path) -> Path:
    """Read ``metrics.jsonl`` and ``config.json`` in ``run_dir``; write ``report.html`` there.

    Returns the report's path. Missing pieces (no evaluation, no ε, a single round, even no
    rounds) are said in the page rather than failing; an unreadable file raises
    :class:`ReportDataError`.
    """
    run_dir = Path(run_dir)
    return write_atomic(run_dir / REPORT_NAME,
                        render(run_dir, read_metrics(run_dir / METRICS_NAME),
                               read_config(run_dir / CONFIG_NAME)))
