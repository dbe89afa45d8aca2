"""`genjobs stats`: success rate, durations, attempts, tokens and error codes from the views."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Connection, RowMapping

from genjobs.sql import query

# Upper bounds (seconds) of the duration histogram's buckets; the last one is open-ended.
DURATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300)
# generation_logs events counted per day: attempts, retries, dead letters, replays.
LOG_EVENTS = ("started", "retry", "dead_lettered", "replayed")
TOP_ERROR_CODES = 10


@dataclass(frozen=True)
class Figures:
    """The figures of one group of jobs."""

    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    unfinished: int = 0
    avg_duration: float | None = None
    p50_duration: float | None = None
    p95_duration: float | None = None
    avg_run: float | None = None
    avg_attempts: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def success_rate(self) -> float | None:
        """Succeeded over ended (succeeded + failed); cancelled and unfinished do not count."""
        ended = self.succeeded + self.failed
        return self.succeeded / ended if ended else None

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_row(cls, row: RowMapping) -> Figures:
        """From a `stats_figures` row."""
        return cls(
            jobs=int(row["jobs"]),
            succeeded=int(row["succeeded"]),
            failed=int(row["failed"]),
            cancelled=int(row["cancelled"]),
            unfinished=int(row["unfinished"]),
            avg_duration=_float(row["avg_duration"]),
            p50_duration=_float(row["p50_duration"]),
            p95_duration=_float(row["p95_duration"]),
            avg_run=_float(row["avg_run"]),
            avg_attempts=_float(row["avg_attempts"]),
            prompt_tokens=int(row["prompt_tokens"] or 0),
            completion_tokens=int(row["completion_tokens"] or 0),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form, with the derived figures."""
        return {**asdict(self), "success_rate": self.success_rate, "tokens": self.tokens}


@dataclass(frozen=True)
class Report:
    """Everything `genjobs stats` shows for a range of days (by the jobs' creation day, UTC)."""

    since: date
    until: date
    task: str | None
    overall: Figures
    by_day: dict[date, Figures]
    by_task: dict[str, Figures]
    by_model: dict[str, Figures]
    error_codes: list[tuple[str, int]]
    histogram: list[tuple[str, int]]
    events_by_day: dict[date, dict[str, int]] = field(default_factory=dict)

    def days(self) -> list[date]:
        """Every day of the range, oldest first (for charts with gaps)."""
        return [self.since + timedelta(days=n) for n in range((self.until - self.since).days + 1)]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "task": self.task,
            "overall": self.overall.as_dict(),
            "by_day": {d.isoformat(): f.as_dict() for d, f in self.by_day.items()},
            "by_task": {t: f.as_dict() for t, f in self.by_task.items()},
            "by_model": {m: f.as_dict() for m, f in self.by_model.items()},
            "error_codes": [{"error_code": c, "jobs": n} for c, n in self.error_codes],
            "duration_histogram": [{"bucket": b, "jobs": n} for b, n in self.histogram],
            "events_by_day": {d.isoformat(): e for d, e in self.events_by_day.items()},
        }


NO_MODEL = "(no model call)"


def collect(conn: Connection, since: date, until: date, task: str | None = None) -> Report:
    """Read the report's figures for jobs created from `since` to `until` (inclusive)."""
    params: dict[str, Any] = {"since": since, "until": until, "task": task}
    overall = Figures()
    by_day: dict[date, Figures] = {}
    by_task: dict[str, Figures] = {}
    by_model: dict[str, Figures] = {}
    for row in conn.execute(query("stats_figures"), params).mappings():
        figures = Figures.from_row(row)
        if not row["by_day_off"]:
            by_day[row["day"]] = figures
        elif not row["by_task_off"]:
            by_task[row["task"]] = figures
        elif not row["by_model_off"]:
            by_model[row["model"] or NO_MODEL] = figures
        else:
            overall = figures
    errors = [
        (str(r.error_code), int(r.jobs))
        for r in conn.execute(query("stats_error_codes"), {**params, "top": TOP_ERROR_CODES})
    ]
    buckets = {
        int(r.bucket): int(r.jobs)
        for r in conn.execute(
            query("stats_duration_histogram"), {**params, "bounds": list(DURATION_BUCKETS)}
        )
    }
    events: dict[date, dict[str, int]] = {}
    for r in conn.execute(query("stats_events_by_day"), params):
        events.setdefault(r.day, dict.fromkeys(LOG_EVENTS, 0))[r.event] = int(r.events)
    return Report(
        since=since,
        until=until,
        task=task,
        overall=overall,
        by_day=dict(sorted(by_day.items())),
        by_task=_by_jobs(by_task),
        by_model=_by_jobs(by_model),
        error_codes=errors,
        histogram=[(label, buckets.get(i, 0)) for i, label in enumerate(bucket_labels())],
        events_by_day=dict(sorted(events.items())),
    )


def bucket_labels() -> list[str]:
    """Labels of the histogram buckets: `<1s`, `1-2s`, ..., `>=5m`."""
    bounds = DURATION_BUCKETS
    labels = [f"<{_short(bounds[0])}"]
    labels += [f"{_short(lo)}-{_short(hi)}" for lo, hi in itertools.pairwise(bounds)]
    return [*labels, f">={_short(bounds[-1])}"]


def _short(seconds: int) -> str:
    return f"{seconds // 60}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds}s"


def _by_jobs(groups: Mapping[str, Figures]) -> dict[str, Figures]:
    return dict(sorted(groups.items(), key=lambda item: (-item[1].jobs, item[0])))


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None


# --- Formatting (shared with the HTML report) ----------------------------------------------


def percent(rate: float | None) -> str:
    """`66.7%`, or an em dash when there is nothing to divide."""
    return "—" if rate is None else f"{rate * 100:.1f}%"


def seconds(value: float | None) -> str:
    """A duration: `0.85s`, `12.3s`, `2m05s`."""
    if value is None:
        return "—"
    if value < 10:
        return f"{value:.2f}s"
    if value < 60:
        return f"{value:.1f}s"
    minutes, rest = divmod(round(value), 60)
    return f"{minutes}m{rest:02d}s"


def number(value: float | None, digits: int = 0) -> str:
    """Thousands separated; an em dash for None."""
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


FIGURE_COLUMNS = ("jobs", "ok", "failed", "success", "avg", "p50", "p95", "attempts", "tokens")


def figure_cells(f: Figures) -> list[str]:
    """One table row's cells for FIGURE_COLUMNS."""
    return [
        number(f.jobs),
        number(f.succeeded),
        number(f.failed),
        percent(f.success_rate),
        seconds(f.avg_duration),
        seconds(f.p50_duration),
        seconds(f.p95_duration),
        number(f.avg_attempts, 2),
        number(f.tokens),
    ]


def render_text(report: Report) -> str:
    """The report as plain-text tables for the terminal."""
    o = report.overall
    scope = f" for task {report.task}" if report.task else ""
    lines = [
        f"genjobs stats {report.since} to {report.until} (UTC, by creation day){scope}",
        "",
        f"  jobs {number(o.jobs)}: succeeded {number(o.succeeded)}, failed {number(o.failed)}, "
        f"cancelled {number(o.cancelled)}, unfinished {number(o.unfinished)}",
        f"  success rate {percent(o.success_rate)}   duration avg {seconds(o.avg_duration)}, "
        f"p50 {seconds(o.p50_duration)}, p95 {seconds(o.p95_duration)}   "
        f"run avg {seconds(o.avg_run)}",
        f"  attempts avg {number(o.avg_attempts, 2)}   tokens {number(o.tokens)} "
        f"(prompt {number(o.prompt_tokens)}, completion {number(o.completion_tokens)})",
    ]
    event_columns = ("retries", "dead-lettered", "replayed")
    by_day = [
        [str(day), *figure_cells(f), *_event_cells(report.events_by_day.get(day))]
        for day, f in report.by_day.items()
    ]
    sections: list[tuple[str, Sequence[str], list[list[str]]]] = [
        ("By day", ("day", *FIGURE_COLUMNS, *event_columns), by_day),
        (
            "By task",
            ("task", *FIGURE_COLUMNS),
            [[t, *figure_cells(f)] for t, f in report.by_task.items()],
        ),
        (
            "By model",
            ("model", *FIGURE_COLUMNS),
            [[m, *figure_cells(f)] for m, f in report.by_model.items()],
        ),
        (
            "Top error codes",
            ("error code", "jobs", "share of failed"),
            [
                [code, number(n), percent(n / o.failed if o.failed else None)]
                for code, n in report.error_codes
            ],
        ),
        ("Duration of succeeded jobs", ("duration", "jobs", ""), _histogram_rows(report)),
    ]
    for title, headers, rows in sections:
        bars = title.startswith("Duration")
        lines += ["", title, *(table(headers, rows, bar_last=bars) if rows else ["  (none)"])]
    return "\n".join(lines)


def _event_cells(events: dict[str, int] | None) -> list[str]:
    events = events or {}
    return [number(events.get(name, 0)) for name in ("retry", "dead_lettered", "replayed")]


def _histogram_rows(report: Report) -> list[list[str]]:
    most = max((n for _, n in report.histogram), default=0)
    if not most:
        return []
    return [[label, number(n), "█" * round(30 * n / most)] for label, n in report.histogram]


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, bar_last: bool = False
) -> list[str]:
    """Aligned columns: labels left, figures right (and a last column of bars left)."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    last = len(widths) - 1

    def line(cells: Sequence[str]) -> str:
        out = [
            str(c).ljust(w) if i == 0 or (bar_last and i == last) else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  " + "  ".join(out).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return [line(headers), rule, *(line(r) for r in rows)]
