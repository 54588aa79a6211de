"""Variants side by side: the centralized yardstick, and one page comparing finished runs.

``fedbeat simulate --compare centralized,fedavg,fedavg+dp`` runs every variant on the same data
and seeds, each into its own run directory, then calls :func:`write_comparison` on them.

:func:`train_centralized` is the yardstick: the union of the devices' training beats trained
on one machine with the device's own :class:`~fedbeat.device.trainer.Trainer`, one epoch per
"round", and scored after every epoch by the aggregator's
:class:`~fedbeat.aggregator.evaluation.Evaluator`. Its run directory has the same files and
``metrics.jsonl`` schema as a federated run, so every number compares to the digit.

:func:`write_comparison` reads the run directories (with :mod:`fedbeat.tools.sim_report`'s
readers) and writes ``report.html`` (self-contained, inline SVG, offline) and
``comparison.json``, the same figures for scripts: ``format``, ``report``, ``synthetic``,
``reference`` (the centralized variant's name, if any), ``classes`` and ``variants``, one
object each in the given order with ``name``, ``run_dir`` and ``report`` (relative paths),
``centralized``, ``synthetic``, ``rounds``, ``evaluated_round``, ``evaluation_data``,
``macro_f1_nsvf``, ``macro_f1_nsv``, ``accuracy``, ``per_class`` (class → ``support``,
``sensitivity``, ``positive_predictivity``, ``f1``), ``epsilon_max``, ``bytes_total``,
``macro_f1_nsvf_vs_centralized``, ``curve`` (``round``, ``macro_f1_nsvf``, ``macro_f1_nsv``,
``f1`` by class) and ``config``. Figures are the last evaluated round's; ``null`` where a run
has none.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from fedbeat.tools.sim_report import (
    AAMI_CLASSES,
    CONFIG_NAME,
    METRICS_NAME,
    PALETTE,
    REPORT_NAME,
    SMALL_CANVAS,
    Record,
    Series,
    class_metrics,
    classes_of,
    config_text,
    empty,
    esc,
    evaluations,
    facts,
    final_epsilon,
    flatten,
    fmt,
    fmt_bytes,
    line_chart,
    number,
    numbers_table,
    page,
    read_config,
    read_metrics,
    sections,
    synthetic_banner,
    total_bytes,
    write_atomic,
    write_report,
)

CENTRALIZED = "centralized"
COMPARISON_NAME = "comparison.json"
COMPARISON_FORMAT = 1
FINAL_MODEL = "final-model"
CLASS_KEYS = ("support", "sensitivity", "positive_predictivity", "f1")

EpochDone = Callable[[dict[str, Any]], None]
"""Called with each epoch's ``metrics.jsonl`` line, right after it is written."""


# --- the centralized yardstick --------------------------------------------------------------

def _ignore(line: dict[str, Any]) -> None:
    """The default ``on_epoch``: nothing to show."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling and dropout seed of one epoch, derived from the run's seed."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_centralized(windows: np.ndarray, rr: np.ndarray, labels: np.ndarray, *,
                      model_dir: Path, evaluation_data: str, evaluation_split: str,
                      epochs: int, batch_size: int, learning_rate: float, seed: int,
                      out: Path, evaluation_max_beats: int = 0,
                      on_epoch: EpochDone = _ignore) -> Path:
    """Train on all the beats in one place, evaluating after every epoch; returns ``out``.

    Parameters
    ----------
    windows, rr, labels
        The union of the devices' training beats, as in :class:`fedbeat.device.beats.Beats`:
        windows (n, W) or (n, 1, W) float32, rr (n, F) float32, labels int AAMI codes.
    model_dir
        A built model directory; training starts from its initial parameters, as the
        federated runs do.
    evaluation_data, evaluation_split, evaluation_max_beats
        The aggregator's ``[evaluation]`` settings (``"synthetic"`` or a MIT-BIH directory;
        ``ds1``/``ds2``); the evaluator is seeded with ``seed`` like the aggregator's.
    epochs, batch_size, learning_rate, seed
        One epoch is one "round". The optimizer (SGD, the device defaults otherwise) and the
        class weights (:func:`~fedbeat.device.trainer.balanced_class_weight` over all beats)
        are the devices'; the optimizer state restarts every epoch, as it does every round on
        a device.
    out
        Created if needed; gets ``metrics.jsonl`` (one line per epoch, the schema of
        :class:`fedbeat.tools.simulate.RoundRecorder`: ``participants`` 1, no bytes, no ε,
        ``loss`` the epoch's mean step loss), ``config.json``, ``final-model/`` and
        ``report.html``.
    on_epoch
        Called with each line after it is written (for progress).

    Raises
    ------
    ValueError
        ``epochs`` below 1.
    FileExistsError
        ``out`` already holds a ``metrics.jsonl``.
    """
    # Training and evaluation need onnxruntime: imported here, so reading and comparing
    # finished runs does not.
    from fedbeat.aggregator.evaluation import SYNTHETIC, Evaluator
    from fedbeat.device.trainer import TrainConfig, Trainer, balanced_class_weight
    from fedbeat.models.manifest import load_model_dir

    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    out = Path(out)
    metrics_path = out / METRICS_NAME
    if metrics_path.exists():
        raise FileExistsError(f"{metrics_path} already exists: give a new output directory")
    model = load_model_dir(Path(model_dir))
    trainer = Trainer(model)
    beats = trainer.beats(windows, rr, labels)
    assert beats.labels is not None
    classes = model.manifest.inputs.classes
    train = TrainConfig(epochs=1, batch_size=batch_size, lr=learning_rate, seed=seed,
                        class_weight=balanced_class_weight(beats.labels, len(classes)))
    evaluator = Evaluator(model.path, Path(evaluation_data), evaluation_split,
                          max_beats=evaluation_max_beats, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    counts = np.bincount(beats.labels, minlength=len(classes))
    mix = ", ".join(f"{c} {int(k):,}" for c, k in zip(classes, counts, strict=True))
    config = {
        "variant": CENTRALIZED, "synthetic": evaluation_data == SYNTHETIC,
        "model": model.manifest.model,
        "data_note": f"the union of the devices' training beats, pooled on one machine "
                     f"({len(beats):,} beats: {mix}); one round is one epoch over them",
        "train_beats": len(beats), "rounds": epochs, "epochs": 1, "batch_size": batch_size,
        "learning_rate": learning_rate, "optimizer": train.optimizer,
        "momentum": train.momentum, "weight_decay": train.weight_decay,
        "class_weight": list(train.class_weight or ()), "seed": seed,
        "evaluation": {"data": evaluation_data, "split": evaluation_split,
                       "max_beats": evaluation_max_beats, "source": evaluator.source}}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2), encoding="utf-8")
    started = time.monotonic()
    for epoch in range(1, epochs + 1):
        result = trainer.fit(beats, dataclasses.replace(train, seed=epoch_seed(seed, epoch)))
        losses = result.losses[np.isfinite(result.losses)]
        evaluation = evaluator.evaluate(trainer.params.to_flat())
        now = time.monotonic()
        line = {"round": epoch, "state": "closed", "model_version": epoch, "participants": 1,
                "dropouts": 0, "rejections": {}, "bytes": 0,
                "loss": float(losses.mean()) if losses.size else None, "epsilon": {},
                "seconds": round(now - started, 3), "evaluation": evaluation}
        started = now
        with metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        on_epoch(line)
    final = out / FINAL_MODEL
    final.mkdir(exist_ok=True)
    shutil.copy2(model.file("inference"), final / "inference.onnx")
    (final / "params.bin").write_bytes(trainer.params.to_flat().astype("<f4").tobytes())
    write_report(out)
    return out


# --- reading the variants -------------------------------------------------------------------

def _relative(target: Path, base: Path) -> str:
    return Path(os.path.relpath(target, base)).as_posix()


def _is_centralized(name: str, config: Record) -> bool:
    return config.get("variant") == CENTRALIZED or (name == CENTRALIZED
                                                    and "variant" not in config)


def _class_value(key: str, value: Any) -> int | float | None:
    """A per-class figure: ``support`` is a count, the rest are finite floats or ``None``."""
    if key == "support":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    return number(value)


def summarize(name: str, run_dir: Path, out: Path) -> dict[str, Any]:
    """One variant's figures as they go into ``comparison.json`` and the tables.

    Raises
    ------
    ReportDataError
        ``metrics.jsonl`` is missing or unreadable, or ``config.json`` is unreadable.
    """
    records = read_metrics(run_dir / METRICS_NAME, missing_ok=False)
    config = read_config(run_dir / CONFIG_NAME)
    evaluated = evaluations(records)
    ev: Record = evaluated[-1][1] if evaluated else {}
    spent = final_epsilon(records)
    per_class = {c: {k: _class_value(k, class_metrics(ev, c).get(k)) for k in CLASS_KEYS}
                 for c in classes_of(ev)} if evaluated else {}
    return {
        "name": name, "run_dir": _relative(run_dir, out),
        "report": (_relative(run_dir / REPORT_NAME, out) if (run_dir / REPORT_NAME).is_file()
                   else None),
        "centralized": _is_centralized(name, config),
        "synthetic": config.get("synthetic") is True, "rounds": len(records),
        "evaluated_round": evaluated[-1][0] if evaluated else None,
        "evaluation_data": ev.get("data"),
        "macro_f1_nsvf": number(ev.get("macro_f1_nsvf")),
        "macro_f1_nsv": number(ev.get("macro_f1_nsv")),
        "accuracy": number(ev.get("accuracy")), "per_class": per_class,
        "epsilon_max": max(spent) if spent else None, "bytes_total": total_bytes(records),
        "curve": {"round": [r for r, _ in evaluated],
                  "macro_f1_nsvf": [number(e.get("macro_f1_nsvf")) for _, e in evaluated],
                  "macro_f1_nsv": [number(e.get("macro_f1_nsv")) for _, e in evaluated],
                  "f1": {c: [number(class_metrics(e, c).get("f1")) for _, e in evaluated]
                         for c in per_class}},
        "config": config,
    }


def _classes(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """The AAMI classes in order, then any other class a variant reported."""
    seen = [c for s in summaries for c in s["per_class"]]
    return [c for c in AAMI_CLASSES if c in seen or not seen] + sorted(
        {c for c in seen if c not in AAMI_CLASSES})


def comparison(variants: Sequence[tuple[str, Path]], out: Path) -> dict[str, Any]:
    """What ``comparison.json`` holds (see :func:`write_comparison`)."""
    names = [name for name, _ in variants]
    if not names:
        raise ValueError("nothing to compare: no variants given")
    if any(not name for name in names) or len(set(names)) != len(names):
        raise ValueError(f"variant names must be distinct and non-empty, got {names}")
    summaries = [summarize(name, Path(run_dir), out) for name, run_dir in variants]
    reference = next((s for s in summaries if s["centralized"]), None)
    yardstick = reference["macro_f1_nsvf"] if reference else None
    for s in summaries:
        s["macro_f1_nsvf_vs_centralized"] = (
            s["macro_f1_nsvf"] - yardstick
            if yardstick is not None and s["macro_f1_nsvf"] is not None else None)
    return {"format": COMPARISON_FORMAT, "report": REPORT_NAME,
            "synthetic": any(s["synthetic"] for s in summaries),
            "reference": reference["name"] if reference else None,
            "classes": _classes(summaries), "variants": summaries}


# --- the comparison page --------------------------------------------------------------------

def _colors(summaries: Sequence[dict[str, Any]]) -> list[str]:
    return [PALETTE[i % len(PALETTE)] for i in range(len(summaries))]


def _x_label(summaries: Sequence[dict[str, Any]]) -> str:
    return "round (epoch, for centralized)" if any(s["centralized"] for s in summaries) \
        else "round"


def _curve_chart(title: str, summaries: Sequence[dict[str, Any]],
                 values: Callable[[dict[str, Any]], list[float | None]], *,
                 small: bool = False) -> str:
    series = [Series(s["name"], list(zip(map(float, s["curve"]["round"]), values(s),
                                         strict=True)), color)
              for s, color in zip(summaries, _colors(summaries), strict=True)]
    if small:
        return line_chart(title, series, x_label=_x_label(summaries), y_label="F1",
                          y_max=1.0, canvas=SMALL_CANVAS)
    return line_chart(title, series, x_label=_x_label(summaries), y_label="macro-F1",
                      y_max=1.0)


def curves_section(data: dict[str, Any]) -> str:
    summaries = data["variants"]
    chart = _curve_chart("Macro-F1 (N, S, V, F) per round, by variant", summaries,
                         lambda s: s["curve"]["macro_f1_nsvf"])
    silent = [s["name"] for s in summaries if s["evaluated_round"] is None]
    note = (f'<p class="note">Not evaluated: {esc(", ".join(silent))}.</p>' if silent else "")
    return chart + note


def _class_f1(name: str) -> Callable[[dict[str, Any]], list[float | None]]:
    def values(s: dict[str, Any]) -> list[float | None]:
        curve = s["curve"]
        return list(curve["f1"].get(name, [None] * len(curve["round"])))
    return values


def multiples_section(data: dict[str, Any]) -> str:
    summaries = data["variants"]
    panels = [("Macro-F1 (N, S, V)", _curve_chart("Macro-F1 (N, S, V) per round", summaries,
                                                  lambda s: s["curve"]["macro_f1_nsv"],
                                                  small=True))]
    panels += [(f"Class {c}", _curve_chart(f"F1 of class {c} per round", summaries,
                                           _class_f1(c), small=True))
               for c in data["classes"]]
    figures = "".join(f"<figure><figcaption>{esc(caption)}</figcaption>{chart}</figure>"
                      for caption, chart in panels)
    return f'<div class="multiples">{figures}</div>'


def _variant_cell(s: dict[str, Any]) -> str:
    name = esc(s["name"])
    return f'<a href="{esc(quote(s["report"]))}">{name}</a>' if s["report"] else name


def final_table(data: dict[str, Any]) -> str:
    summaries = data["variants"]
    best = max((s["macro_f1_nsvf"] for s in summaries if s["macro_f1_nsvf"] is not None),
               default=None)
    head = ["Variant", "Rounds", "Macro-F1 (N, S, V, F)", "Macro-F1 (N, S, V)", "Accuracy",
            "Max ε per device", "Update bytes", "Evaluated after round"]
    if data["reference"]:
        head.insert(3, f"Δ vs {data['reference']}")
    rows = []
    for s in summaries:
        f1 = esc(fmt(s["macro_f1_nsvf"]))
        row = [_variant_cell(s), str(s["rounds"]),
               f"<strong>{f1}</strong>" if best is not None and s["macro_f1_nsvf"] == best
               else f1, esc(fmt(s["macro_f1_nsv"])), esc(fmt(s["accuracy"])),
               esc(fmt(s["epsilon_max"], 2)), esc(fmt_bytes(s["bytes_total"])),
               esc(fmt(s["evaluated_round"]))]
        if data["reference"]:
            delta = s["macro_f1_nsvf_vs_centralized"]
            row.insert(3, "—" if delta is None else f"{delta:+.3f}")
        rows.append(row)
    note = ('<p class="note">Each variant\'s global model after its last evaluated round; the '
            "best macro-F1 is in bold. A variant's name links to its own report.</p>")
    return numbers_table(head, rows) + note + _data_warning(summaries)


def _data_warning(summaries: Sequence[dict[str, Any]]) -> str:
    sources = sorted({str(s["evaluation_data"]) for s in summaries
                      if s["evaluation_data"] is not None})
    if len(sources) < 2:
        return ""
    return (f'<p class="warning">The variants were evaluated on different data '
            f'({esc("; ".join(sources))}): their figures do not compare.</p>')


def per_class_table(data: dict[str, Any]) -> str:
    summaries = data["variants"]
    if not any(s["per_class"] for s in summaries):
        return empty("No variant was evaluated: no per-class metrics to show.")
    rows = [[esc(c), esc(s["name"]),
             *(esc(fmt(s["per_class"].get(c, {}).get(k))) for k in CLASS_KEYS)]
            for c in data["classes"] for s in summaries]
    return numbers_table(("Class", "Variant", "Support", "Se", "+P", "F1"), rows)


def config_comparison(data: dict[str, Any]) -> str:
    summaries = data["variants"]
    flat = [dict(flatten(s["config"])) for s in summaries]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    if not keys:
        return empty("No configuration recorded.")
    rows = []
    for key in keys:
        shown = [config_text(f[key]) if key in f else "—" for f in flat]
        cells = [f"<mark>{esc(v)}</mark>" if len(set(shown)) > 1 else esc(v) for v in shown]
        rows.append([esc(key), *cells])
    return (numbers_table(["Setting", *(s["name"] for s in summaries)], rows,
                          css_class="config")
            + '<p class="note">Highlighted settings differ between variants.</p>')


def render_comparison(out: Path, data: dict[str, Any]) -> str:
    summaries = data["variants"]
    banner = ""
    if data["synthetic"]:
        generated = ", ".join(s["name"] for s in summaries if s["synthetic"])
        banner = synthetic_banner(f"Generated patients in: {generated}. These figures say "
                                  "nothing about arrhythmia detection on real ECG.")
    scored = [s for s in summaries if s["macro_f1_nsvf"] is not None]
    top = max(scored, key=lambda s: s["macro_f1_nsvf"]) if scored else None
    headline = facts([("Variants", str(len(summaries))),
                      ("Best macro-F1 (N, S, V, F)",
                       f"{top['name']}: {fmt(top['macro_f1_nsvf'])}" if top else "—")])
    body = headline + sections([
        ("Final metrics", final_table(data)),
        ("Macro-F1 per round", curves_section(data)),
        ("Per-class F1 per round", multiples_section(data)),
        ("Per-class metrics", per_class_table(data)),
        ("Configurations", config_comparison(data))])
    return page(f"fedbeat comparison — {out.name}", body, banner=banner)


def write_comparison(variants: Sequence[tuple[str, Path]], out: Path) -> Path:
    """Write ``out/report.html`` and ``out/comparison.json`` comparing finished runs.

    Parameters
    ----------
    variants
        (name, run directory) in display order; each directory holds ``metrics.jsonl`` and
        ``config.json`` (as ``fedbeat simulate`` or :func:`train_centralized` write them).
    out
        Created if needed; links to each variant's ``report.html`` are relative to it.

    Returns
    -------
    Path
        The page's path.

    Raises
    ------
    ValueError
        No variants, or names that are empty or repeated.
    ReportDataError
        A variant has no ``metrics.jsonl``, or an unreadable one or ``config.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = comparison(variants, out)
    write_atomic(out / COMPARISON_NAME, json.dumps(data, indent=2) + "\n")
    return write_atomic(out / REPORT_NAME, render_comparison(out, data))
