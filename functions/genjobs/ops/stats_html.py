"""The stats report as one self-contained HTML file: inline CSS and SVG charts, no scripts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, date, datetime
from html import escape

from genjobs.ops.stats import (
    FIGURE_COLUMNS,
    Figures,
    Report,
    figure_cells,
    number,
    percent,
    seconds,
)

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 20, 44
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
# Beyond this many columns, value labels would overlap: the tooltips still carry them.
MAX_LABELLED = 31
MAX_X_LABELS = 12

CSS = """
:root { color-scheme: light; --ink: #1d2733; --muted: #5b6b7d; --line: #d8dee6;
        --ok: #2f7d32; --bar: #3b6ea5; --prompt: #8fb3dc; --completion: #2d5d8f; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); margin: 0; padding: 24px; background: #f6f8fa; }
main { max-width: 1080px; margin: 0 auto; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.muted { color: var(--muted); }
.kpis { display: grid; grid-template-columns: repeat(auto-fit, minmax(140px, 1fr));
        gap: 12px; margin: 20px 0; }
.kpi { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
.kpi .label { display: block; color: var(--muted); font-size: 12px; text-transform: uppercase; }
.kpi .value { display: block; font-size: 22px; font-weight: 600; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 16px; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px;
         padding: 12px; }
figcaption { font-weight: 600; margin-bottom: 6px; }
svg { width: 100%; height: auto; display: block; }
svg text { font: 11px system-ui, sans-serif; fill: var(--muted); }
svg .value { fill: var(--ink); font-weight: 600; }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .axis { stroke: var(--muted); stroke-width: 1; }
svg .line { fill: none; stroke: var(--ok); stroke-width: 2; }
svg .point { fill: var(--ok); }
svg .bar { fill: var(--bar); }
svg .prompt { fill: var(--prompt); } svg .completion { fill: var(--completion); }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: right;
         white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #eef2f6; font-weight: 600; }
.empty { color: var(--muted); padding: 24px; text-align: center; }
"""


def render_html(report: Report, generated_at: datetime | None = None) -> str:
    """The whole report page."""
    moment = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    scope = f", task {escape(report.task)}" if report.task else ""
    title = f"genjobs stats {report.since} to {report.until}"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>Generation jobs</h1>
<p class="muted">Jobs created {report.since} to {report.until} (UTC){scope}. Generated {moment}.</p>
{_kpis(report.overall)}
<section class="charts">
{_figure("chart-success-rate", "Success rate per day", success_rate_chart(report))}
{
        _figure(
            "chart-duration",
            "Duration of succeeded jobs (created → finished)",
            duration_chart(report),
        )
    }
{_figure("chart-tokens", "Tokens per day", tokens_chart(report))}
</section>
<h2>By day</h2>
{_figures_table("table-by-day", "day", [(str(d), f) for d, f in report.by_day.items()])}
<h2>By task</h2>
{_figures_table("table-by-task", "task", list(report.by_task.items()))}
<h2>By model</h2>
{_figures_table("table-by-model", "model", list(report.by_model.items()))}
<h2>Top error codes</h2>
{_errors_table(report)}
</main>
</body>
</html>
"""


def _kpis(o: Figures) -> str:
    items = [
        ("jobs", "Jobs", number(o.jobs)),
        ("success-rate", "Success rate", percent(o.success_rate)),
        ("avg-duration", "Average duration", seconds(o.avg_duration)),
        ("p50-duration", "p50 duration", seconds(o.p50_duration)),
        ("p95-duration", "p95 duration", seconds(o.p95_duration)),
        ("attempts", "Attempts per job", number(o.avg_attempts, 2)),
        ("tokens", "Tokens", number(o.tokens)),
    ]
    cells = "".join(
        f'<div class="kpi" id="kpi-{key}"><span class="label">{label}</span>'
        f'<span class="value">{escape(value)}</span></div>'
        for key, label, value in items
    )
    return f'<section class="kpis">{cells}</section>'


def _figure(element_id: str, caption: str, svg: str) -> str:
    return f'<figure id="{element_id}"><figcaption>{escape(caption)}</figcaption>{svg}</figure>'


def _svg(label: str, body: str) -> str:
    return (
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def _empty(label: str) -> str:
    return _svg(
        label,
        f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no jobs in this range</text>',
    )


def _y_axis(top: float, label: str = "{:g}", ticks: int = 4) -> str:
    """Horizontal grid lines with labels from 0 to `top`."""
    parts = []
    for i in range(ticks + 1):
        value = top * i / ticks
        y = TOP + PLOT_H - PLOT_H * i / ticks
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(label.format(value))}</text>"
        )
    axis = (
        f'<line class="axis" x1="{LEFT}" x2="{LEFT + PLOT_W}" '
        f'y1="{TOP + PLOT_H}" y2="{TOP + PLOT_H}"/>'
    )
    return "".join(parts) + axis


def _x_labels(labels: Sequence[str]) -> str:
    """Column labels under the plot, thinned out so they never overlap."""
    step = max(1, math.ceil(len(labels) / MAX_X_LABELS))
    slot = PLOT_W / max(len(labels), 1)
    return "".join(
        f'<text x="{LEFT + slot * (i + 0.5):.1f}" y="{TOP + PLOT_H + 16}" '
        f'text-anchor="middle">{escape(label)}</text>'
        for i, label in enumerate(labels)
        if i % step == 0
    )


def _nice_top(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^n at or above `value` (a round top for the y axis)."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    return next(m * magnitude for m in (1.0, 2.0, 5.0, 10.0) if m * magnitude >= value)


def _day_label(day: date) -> str:
    return day.strftime("%m-%d")


def success_rate_chart(report: Report) -> str:
    """A line over the days that have ended jobs; days without are gaps."""
    days = report.days()
    label = "Success rate per day"
    rates = [report.by_day.get(day, Figures()).success_rate for day in days]
    if all(rate is None for rate in rates):
        return _empty(label)
    slot = PLOT_W / len(days)
    points: list[str] = []
    path: list[str] = []
    pen_down = False
    for i, (day, rate) in enumerate(zip(days, rates, strict=True)):
        if rate is None:
            pen_down = False
            continue
        f = report.by_day[day]
        x, y = LEFT + slot * (i + 0.5), TOP + PLOT_H * (1 - rate)
        path.append(f"{'L' if pen_down else 'M'}{x:.1f},{y:.1f}")
        pen_down = True
        tip = f"{day}: {percent(rate)} ({f.succeeded} of {f.succeeded + f.failed} ended jobs)"
        points.append(
            f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="4" data-day="{day}">'
            f"<title>{escape(tip)}</title></circle>"
        )
        if len(days) <= MAX_LABELLED:
            points.append(
                f'<text class="value" x="{x:.1f}" y="{y - 9:.1f}" text-anchor="middle">'
                f"{percent(rate)}</text>"
            )
    body = (
        _y_axis(100, "{:.0f}%")
        + f'<path class="line" d="{" ".join(path)}"/>'
        + "".join(points)
        + _x_labels([_day_label(d) for d in days])
    )
    return _svg(label, body)


def duration_chart(report: Report) -> str:
    """A histogram of succeeded jobs' durations."""
    label = "Duration of succeeded jobs"
    most = max((n for _, n in report.histogram), default=0)
    if not most:
        return _empty(label)
    top = _nice_top(most)
    slot = PLOT_W / len(report.histogram)
    bars = []
    for i, (bucket, count) in enumerate(report.histogram):
        h = PLOT_H * count / top
        x, y = LEFT + slot * i + slot * 0.15, TOP + PLOT_H - h
        bars.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" '
            f'height="{h:.1f}" data-bucket="{escape(bucket)}" data-jobs="{count}">'
            f"<title>{escape(bucket)}: {count} jobs</title></rect>"
            f'<text class="value" x="{x + slot * 0.35:.1f}" y="{y - 5:.1f}" '
            f'text-anchor="middle">{count}</text>'
        )
    body = _y_axis(top) + "".join(bars) + _x_labels([b for b, _ in report.histogram])
    return _svg(label, body)


def tokens_chart(report: Report) -> str:
    """Prompt and completion tokens per day, stacked."""
    days = report.days()
    label = "Tokens per day"
    totals = [report.by_day.get(day, Figures()) for day in days]
    most = max((f.tokens for f in totals), default=0)
    if not most:
        return _empty(label)
    top = _nice_top(most)
    slot = PLOT_W / len(days)
    width = max(slot * 0.7, 1.0)
    bars = []
    for i, (day, f) in enumerate(zip(days, totals, strict=True)):
        if not f.tokens:
            continue
        x = LEFT + slot * i + (slot - width) / 2
        base = float(TOP + PLOT_H)
        for kind, value in (("prompt", f.prompt_tokens), ("completion", f.completion_tokens)):
            h = PLOT_H * value / top
            base -= h
            bars.append(
                f'<rect class="{kind}" x="{x:.1f}" y="{base:.1f}" width="{width:.1f}" '
                f'height="{h:.1f}" data-day="{day}" data-tokens="{value}">'
                f"<title>{day}: {number(value)} {kind} tokens</title></rect>"
            )
        if len(days) <= MAX_LABELLED:
            bars.append(
                f'<text class="value" x="{x + width / 2:.1f}" y="{base - 5:.1f}" '
                f'text-anchor="middle">{number(f.tokens)}</text>'
            )
    legend = (
        f'<rect class="prompt" x="{LEFT + 8}" y="{TOP - 14}" width="10" height="10"/>'
        f'<text x="{LEFT + 22}" y="{TOP - 5}">prompt</text>'
        f'<rect class="completion" x="{LEFT + 76}" y="{TOP - 14}" width="10" height="10"/>'
        f'<text x="{LEFT + 90}" y="{TOP - 5}">completion</text>'
    )
    axis = _y_axis(top, "{:,.0f}")
    return _svg(label, axis + "".join(bars) + legend + _x_labels([_day_label(d) for d in days]))


def _figures_table(element_id: str, key: str, rows: list[tuple[str, Figures]]) -> str:
    if not rows:
        return f'<p class="empty" id="{element_id}">no jobs in this range</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in (key, *FIGURE_COLUMNS))
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in (name, *figure_cells(f))) + "</tr>"
        for name, f in rows
    )
    return f'<table id="{element_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _errors_table(report: Report) -> str:
    if not report.error_codes:
        return '<p class="empty" id="table-errors">no failed jobs in this range</p>'
    failed = report.overall.failed
    body = "".join(
        f"<tr><td>{escape(code)}</td><td>{number(n)}</td>"
        f"<td>{percent(n / failed if failed else None)}</td></tr>"
        for code, n in report.error_codes
    )
    return (
        '<table id="table-errors"><thead><tr><th>error code</th><th>jobs</th>'
        f"<th>share of failed</th></tr></thead><tbody>{body}</tbody></table>"
    )
