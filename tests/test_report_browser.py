"""The simulation report in a real browser: headless Chromium renders it offline, silently.

One Chromium run per page writes a screenshot, the rendered DOM (``--dump-dom``), its log
(``--enable-logging=stderr``: page console messages come as ``CONSOLE`` lines) and a NetLog.
All traffic goes to a proxy on a closed local port, so nothing can be fetched; the NetLog shows
whether the page asked. A second page with a console error, an uncaught exception and an
external stylesheet proves each check can fail. Skips without a browser on ``PATH``, unless
``CI_REQUIRE_BROWSER=1`` (set by ``.ci/run``), where it fails instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image  # comes with the test extras (wfdb -> matplotlib -> pillow)
from sim_run_testing import CONFIG, make_run, record

from fedbeat.tools.sim_report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH, HEIGHT = 1000, 4000
"""The window, hence the screenshot, in CSS px at scale 1: tall enough for the whole report."""
TIMEOUT = 60.0
ROUNDS = 6
CONSOLE = re.compile(r"\bCONSOLE\b|Uncaught")
EXTERNAL = re.compile(r"""\b(?:src|href)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//""", re.I)


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16)


# Colours of sim_report's plots, with the fewest pixels each must cover in the screenshot.
PLOT_COLOURS = {
    "#0072B2": 5000,  # bytes bars; loss, F1 N and ε dev-0 lines
    "#009E73": 5000,  # participant bars; F1 V and ε dev-2 lines
    "#D55E00": 5000,  # dropout and rejection bars; F1 F line
    "#E69F00": 200,  # lines only: F1 S, ε dev-1
    "#000000": 200,  # line only: macro-F1 (N, S, V, F)
}
BANNER = rgb("#b00020")  # the SYNTHETIC banner's background: the page's CSS applied


@pytest.fixture(scope="module")
def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    reason = (f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); "
              "install Debian's chromium to render the report")
    if os.environ.get("CI_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; CI_REQUIRE_BROWSER=1 forbids skipping")
    pytest.skip(reason)


@dataclass(frozen=True)
class Rendered:
    dom: str
    log: str
    screenshot: Path
    page_requests: list[str]
    """URLs the page itself asked the network for (not the browser's own background traffic)."""


def page_requests(netlog: Path) -> list[str]:
    """Requests keyed to the file:// page: the browser's own go out under other sites' keys."""
    log = json.loads(netlog.read_text(encoding="utf-8"))
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [event["params"]["url"] for event in log["events"]
            if event["type"] == start
            and "file://" in event["params"].get("network_isolation_key", "")]


def render(browser: str, page: Path, work: Path) -> Rendered:
    """Load ``page`` once in headless Chromium; fail on a non-zero exit or a hang."""
    work.mkdir()
    screenshot, netlog = work / "screenshot.png", work / "netlog.json"
    with socket.socket() as closed:  # bound, never listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                   "--disable-background-networking", "--disable-component-update",
                   "--hide-scrollbars", "--force-device-scale-factor=1",
                   f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=1000",
                   f"--proxy-server={proxy}", "--proxy-bypass-list=<-loopback>",
                   f"--user-data-dir={work / 'profile'}", f"--log-net-log={netlog}",
                   "--enable-logging=stderr", "--v=0",
                   f"--screenshot={screenshot}", "--dump-dom", page.as_uri()]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True)
        try:
            dom, log = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(f"{browser} did not finish rendering {page} in {TIMEOUT:.0f} s")
    assert process.returncode == 0, f"{browser} exited {process.returncode}:\n{log}"
    return Rendered(dom, log, screenshot, page_requests(netlog))


def console_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if CONSOLE.search(line)]


def pixels(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int(np.all(image == colour, axis=2).sum())


def test_report_renders_offline_with_its_plots(browser: str, tmp_path: Path) -> None:
    records = [record(r, rounds=ROUNDS) for r in range(1, ROUNDS + 1)]
    page = write_report(make_run(tmp_path, records, {**CONFIG, "rounds": ROUNDS}))
    assert EXTERNAL.findall(page.read_text(encoding="utf-8")) == []

    rendered = render(browser, page, tmp_path / "chromium")

    assert console_lines(rendered.log) == []
    assert rendered.page_requests == []
    # the rendered DOM holds the six charts with their marks, and the run's text stays text
    assert rendered.dom.count('<svg class="chart"') == 6
    assert rendered.dom.count("<polyline") >= 10  # F1 ×6 (Q is null), loss, ε ×3
    assert rendered.dom.count("<rect") >= 3 * ROUNDS + 2  # bytes, devices ×2, rejections
    assert "<script" not in rendered.dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.dom
    # the screenshot is the requested size, not blank, and shows every plot colour
    with Image.open(rendered.screenshot) as shot:
        assert shot.size == (WIDTH, HEIGHT)
        image = np.asarray(shot.convert("RGB"))
    inked = np.any(image != 255, axis=2).mean()
    assert inked > 0.05, f"only {inked:.1%} of the screenshot is not white"
    assert pixels(image[:200], BANNER) > 10_000  # the banner at the top, styled
    counts = {colour: pixels(image, rgb(colour)) for colour in PLOT_COLOURS}
    assert all(counts[c] >= least for c, least in PLOT_COLOURS.items()), counts


def test_the_checks_catch_a_broken_page(browser: str, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="stylesheet" '
                    'href="https://example.invalid/style.css"></head><body><p>broken</p>'
                    '<script>console.error("report-error"); throw new Error("report-throw");'
                    "</script></body></html>\n", encoding="utf-8")
    assert EXTERNAL.findall(page.read_text(encoding="utf-8"))

    rendered = render(browser, page, tmp_path / "chromium")

    found = "\n".join(console_lines(rendered.log))
    assert "report-error" in found
    assert "Uncaught Error: report-throw" in found
    assert rendered.page_requests == ["https://example.invalid/style.css"]
    assert rendered.screenshot.exists()
