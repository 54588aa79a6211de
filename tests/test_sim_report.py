"""The simulation report: written from a run directory, self-contained, and robust to gaps."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import pytest
from sim_run_testing import CONFIG, CONFUSION, make_run, record

from fedbeat.tools.sim_report import SYNTHETIC_BANNER, ReportDataError, write_report


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


def assert_self_contained(page: str) -> None:
    """The page opens offline: it fetches nothing and runs nothing."""
    assert "http://" not in page
    assert "https://" not in page
    assert not re.search(r"""(href|src)=["']?//""", page)
    assert not re.search(r"<(script|link|img|iframe)\b", page)
    assert "url(" not in page
    assert "@import" not in page


def test_report_is_self_contained(tmp_path: Path) -> None:
    page = write_report(make_run(tmp_path, [record(r) for r in (1, 2, 3)], CONFIG)).read_text()
    assert_self_contained(page)


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


def test_secure_rounds_get_an_overhead_section_and_plain_runs_do_not(tmp_path: Path) -> None:
    secure = [dict(record(r), secagg={
        "bytes_in": 400_000 * r, "bytes_out": 300_000, "compute_s": 0.05,
        "stages": {"advertised": 10, "shared": 9, "masked": 8, "revealed": 8},
        "contributors": 8, "epsilon_round": 1.5, "epsilon_total": 1.5 * r,
        "reason": "" if r < 3 else "only 1 of dev-3's neighbours survive"}) for r in (1, 2, 3)]
    html = write_report(make_run(tmp_path, secure, CONFIG)).read_text()
    assert "Secure aggregation overhead" in html
    section = html[html.index("Secure aggregation overhead"):]
    assert "Secure-aggregation traffic per round" in section
    assert "<td>9</td>" in section           # devices that shared keys
    assert "<td>4.50</td>" in section        # ε of the sum after round 3
    assert "only 1 of dev-3&#x27;s neighbours survive" in section
    plain = tmp_path / "plain"
    plain.mkdir()
    html = write_report(make_run(plain, [record(1), record(2)], CONFIG)).read_text()
    assert "Secure aggregation overhead" not in html
