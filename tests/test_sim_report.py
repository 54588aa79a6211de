"""The simulation report: written from a run directory, self-contained, and robust to gaps."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fedbeat.tools.sim_report import SYNTHETIC_BANNER, ReportDataError, write_report

CLASSES = ["N", "S", "V", "F", "Q"]
CONFUSION = [[9012, 41, 17, 3, 0], [123, 456, 7, 0, 0], [28, 5, 789, 11, 0],
             [30, 0, 12, 67, 0], [1, 0, 2, 0, 4]]


def evaluation(scale: float) -> dict[str, Any]:
    per_class = {c: {"support": 10, "f1": 0.5 * scale + 0.1 * i, "sensitivity": 0.6,
                     "positive_predictivity": 0.7, "specificity": 0.95}
                 for i, c in enumerate(CLASSES)}
    per_class["Q"]["f1"] = None  # undefined values come as null
    return {"accuracy": 0.9 * scale, "macro_f1_nsvf": 0.6 * scale, "macro_f1_nsv": 0.7 * scale,
            "beats": 10607, "classes": CLASSES, "per_class": per_class,
            "confusion_matrix": CONFUSION, "data": "synthetic <test> patients"}


def record(round_: int, *, evaluated: bool = True, epsilon: bool = True) -> dict[str, Any]:
    return {"round": round_, "model_version": round_, "participants": 5 - round_ % 2,
            "dropouts": round_ % 2, "rejections": {"stale": round_, "bad-signature": 1},
            "bytes": 180_000 * round_, "loss": None if round_ == 2 else 1.0 / round_,
            "epsilon": {f"dev-{d}": 0.5 * round_ + d for d in range(3)} if epsilon else {},
            "seconds": 1.5, "evaluation": evaluation(round_ / 3) if evaluated else None}


def make_run(tmp_path: Path, records: list[dict[str, Any]], config: dict[str, Any]) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "config.json").write_text(json.dumps(config))
    return run


CONFIG = {"synthetic": True, "devices": 5, "rounds": 3, "model": "ecg-cnn-s",
          "dp": {"mode": "sample", "epsilon": 8.0}, "note": "<script>alert(1)</script>"}


class Checker(HTMLParser):
    """Fails on unbalanced tags; collects tag names."""

    VOID: ClassVar[frozenset[str]] = frozenset({"meta", "br", "img", "input", "link", "hr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1:] == [tag], f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def parse(page: str) -> Checker:
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == [], f"unclosed: {checker.stack}"
    return checker


def test_full_run_renders_everything(tmp_path: Path) -> None:
    run = make_run(tmp_path, [record(r) for r in (1, 2, 3)], CONFIG)
    path = write_report(run)
    assert path == run / "report.html"
    page = path.read_text(encoding="utf-8")
    tags = parse(page).tags
    assert tags.count("svg") == 6  # F1, loss, ε, bytes, participation, rejections
    assert page.index(SYNTHETIC_BANNER) < page.index("<h1")
    for row in CONFUSION:
        for count in row:
            assert f">{count}</td>" in page
    assert "Macro-F1 (N, S, V, F)" in page
    assert ">0.600<" in page
    for device in ("dev-0", "dev-1", "dev-2"):  # few devices: one legend entry each
        assert device in page
    assert "stale" in page
    assert "bad-signature" in page
    assert "dp.mode" in page
    assert "ecg-cnn-s" in page
    # text from the run is escaped, never markup
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    assert "synthetic &lt;test&gt; patients" in page
    assert not (run / "report.html.partial").exists()


def test_report_is_self_contained(tmp_path: Path) -> None:
    page = write_report(make_run(tmp_path, [record(r) for r in (1, 2, 3)], CONFIG)).read_text()
    assert "http://" not in page
    assert "https://" not in page
    assert not re.search(r"<(script|link|img|iframe)\b", page)
    assert "url(" not in page
    assert "@import" not in page


def test_real_data_has_no_banner(tmp_path: Path) -> None:
    config = {**CONFIG, "synthetic": False}
    page = write_report(make_run(tmp_path, [record(1)], config)).read_text()
    assert SYNTHETIC_BANNER not in page


def test_run_without_evaluation_or_epsilon_still_renders(tmp_path: Path) -> None:
    records = [record(r, evaluated=False, epsilon=False) for r in (1, 2, 3)]
    page = write_report(make_run(tmp_path, records, CONFIG)).read_text()
    parse(page)
    assert "not evaluated" in page
    assert "No evaluation" in page
    assert "No confusion matrix" in page
    assert "differential privacy off" in page
    assert "<svg" in page  # loss, bytes, participation still drawn


def test_single_round_and_many_devices(tmp_path: Path) -> None:
    one = record(1)
    one["epsilon"] = {f"d{i}": 0.1 * i for i in range(50)}
    one["rejections"] = {}
    page = write_report(make_run(tmp_path, [one], {})).read_text()
    parse(page)
    assert "max over devices" in page
    assert "each device (50)" in page
    assert "No updates were rejected" in page
    assert "No configuration recorded" in page
    assert "<circle" in page  # a single round is drawn as dots


def test_empty_run_and_truncated_last_line(tmp_path: Path) -> None:
    run = make_run(tmp_path, [], {})
    page = write_report(run).read_text()
    parse(page)
    assert "No rounds were recorded" in page
    (run / "metrics.jsonl").write_text(json.dumps(record(1)) + "\n" + '{"round": 2, "mod')
    page = write_report(run).read_text()
    assert "Global model after round 1" in page


def test_corrupt_metrics_line_is_an_error(tmp_path: Path) -> None:
    run = make_run(tmp_path, [], {})
    (run / "metrics.jsonl").write_text("not json\n" + json.dumps(record(1)) + "\n")
    with pytest.raises(ReportDataError, match=r"metrics.jsonl:1"):
        write_report(run)
