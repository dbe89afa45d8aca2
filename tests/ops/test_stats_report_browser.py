"""The HTML stats report rendered by headless Chromium shows its charts and figures."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection

from genjobs.db import Database
from genjobs.ops.stats import collect
from genjobs.ops.stats_html import render_html
from tests.ops.test_stats import known_jobs

DAY1, DAY2 = date(2020, 3, 10), date(2020, 3, 11)
CHROMIUM_PACKAGE = "chromium"  # Debian; .ci/run installs it

# Appended to a copy of the report: measures what the browser laid out and shows.
PROBE = """
<script>
const out = {text: document.body.innerText, charts: {}};
for (const figure of document.querySelectorAll("figure")) {
  const box = figure.querySelector("svg").getBoundingClientRect();
  const drawn = (selector) => [...figure.querySelectorAll(selector)]
    .filter((shape) => shape.getBBox().height > 0).length;
  out.charts[figure.id] = {
    width: box.width, height: box.height,
    points: drawn("circle.point"), bars: drawn("rect.bar"),
    stacked: drawn("rect.prompt[data-day], rect.completion[data-day]"),
    line: figure.querySelector("path.line")?.getTotalLength() ?? 0,
  };
}
document.body.setAttribute("data-probe", JSON.stringify(out));
</script>
"""


def chromium() -> str:
    """The browser's path; in CI a missing browser fails the test instead of skipping it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = f"headless Chromium not found: apt-get install -y {CHROMIUM_PACKAGE}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(f"THE HTML REPORT WAS NOT CHECKED IN A BROWSER: {message}")


def render(browser: str, page: Path, profile: Path) -> dict[str, Any]:
    """Chromium's DOM after layout and scripts, and the probe's measurements."""
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1280,1600",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = re.search(r'data-probe="([^"]*)"', result.stdout)
    assert found, f"the probe did not run: {result.stdout[:500]} {result.stderr[-500:]}"
    probe: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return probe


@pytest.fixture
def conn(db: Database) -> Any:
    with db.engine.connect() as connection:
        transaction = connection.begin()
        try:
            known_jobs(connection, DAY1, DAY2)
            yield connection
        finally:
            transaction.rollback()


def test_report_renders_charts_and_figures_in_chromium(conn: Connection, tmp_path: Path) -> None:
    browser = chromium()
    page = tmp_path / "report.html"
    report_html = render_html(collect(conn, DAY1, DAY2))
    page.write_text(report_html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    probe = render(browser, page, tmp_path / "profile")

    charts = probe["charts"]
    assert set(charts) == {"chart-success-rate", "chart-duration", "chart-tokens"}
    for name, chart in charts.items():
        assert chart["width"] > 300 and chart["height"] > 100, (name, chart)
    assert charts["chart-success-rate"]["points"] == 2  # both days have ended jobs
    assert charts["chart-success-rate"]["line"] > 100
    assert charts["chart-duration"]["bars"] == 3  # the buckets holding 2, 1 and 1 jobs
    assert charts["chart-tokens"]["stacked"] == 4  # prompt + completion on each day

    shown = probe["text"]
    for figure in (
        "57.1%",  # success rate
        "5.50s",  # average duration
        "5.00s",  # p50
        "9.40s",  # p95
        "2.29",  # attempts per job
        "1,260",  # tokens
        "75.0%",  # day 1
        "33.3%",  # day 2
        "dead_lettered",
        "gpt-4o-mini",
    ):
        assert figure in shown, figure
