"""`genjobs stats` figures against a known set of jobs with fixed timestamps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from devstack.supervisor import ROOT
from genjobs.db import Database
from genjobs.ops.stats import Figures, bucket_labels, collect, render_text
from tests.factories import insert_row

DAY1 = date(2020, 1, 10)
DAY2 = date(2020, 1, 11)
A, B = "gpt-4o-mini", "gpt-4o"


def at(day: date, second: float) -> datetime:
    """`second` seconds after 10:00 UTC on `day`."""
    return datetime(day.year, day.month, day.day, 10, tzinfo=UTC) + timedelta(seconds=second)


def job(
    conn: Connection,
    day: date,
    status: str,
    *,
    task: str = "summarize",
    duration: float | None = None,
    attempts: int = 1,
    model: str | None = None,
    tokens: tuple[int, int] | None = None,
    error_code: str | None = None,
) -> uuid.UUID:
    """A job created at 10:00 on `day`, started a second later, finished after `duration`."""
    ended = status in {"succeeded", "failed", "cancelled"}
    return insert_row(
        conn,
        status=status,
        task=task,
        error_code=error_code,
        attempts=attempts,
        created_at=at(day, 0),
        started_at=at(day, 1) if status != "cancelled" else None,
        finished_at=at(day, duration if duration is not None else 60) if ended else None,
        model=model,
        prompt_tokens=tokens[0] if tokens else None,
        completion_tokens=tokens[1] if tokens else None,
    )


def log(conn: Connection, job_id: uuid.UUID, event: str, day: date, times: int = 1) -> None:
    for _ in range(times):
        conn.execute(
            text(
                "INSERT INTO generation_logs (generation_id, user_id, event, ai_status, "
                "created_at) SELECT id, user_id, :event, ai_status, :at FROM generations "
                "WHERE id = :id"
            ),
            {"id": job_id, "event": event, "at": at(day, 30)},
        )


def known_jobs(conn: Connection, day1: date, day2: date, unfinished: bool = True) -> list[Any]:
    """Nine jobs over two days (eight without the unfinished one); the figures are in
    the tests below, worked out by hand."""
    j1 = job(conn, day1, "succeeded", duration=2, model=A, tokens=(100, 50))
    j2 = job(conn, day1, "succeeded", duration=4, attempts=2, model=A, tokens=(200, 100))
    j3 = job(conn, day1, "failed", attempts=5, error_code="dead_lettered")
    job(conn, day1, "succeeded", task="chat", duration=10, model=B, tokens=(300, 300))
    job(conn, day2, "failed", task="chat", model=B, tokens=(10, 0), error_code="refused")
    job(conn, day2, "cancelled", task="chat")
    if unfinished:
        job(conn, day2, "queued")
    job(conn, day2, "succeeded", duration=6, model=A, tokens=(100, 100))
    j9 = job(conn, day2, "failed", attempts=5, error_code="dead_lettered")
    log(conn, j1, "started", day1)
    log(conn, j2, "started", day1, 2)
    log(conn, j2, "retry", day1)
    log(conn, j3, "started", day1, 5)
    log(conn, j3, "retry", day1, 4)
    log(conn, j3, "dead_lettered", day1)
    log(conn, j9, "replayed", day2)
    return [j1, j2, j3, j9]


@pytest.fixture
def conn(db: Database) -> Iterator[Connection]:
    """A transaction rolled back afterwards: the known jobs are seen by this test alone."""
    with db.engine.connect() as connection:
        transaction = connection.begin()
        try:
            known_jobs(connection, DAY1, DAY2)
            yield connection
        finally:
            transaction.rollback()


def test_overall_figures(conn: Connection) -> None:
    o = collect(conn, DAY1, DAY2).overall
    assert (o.jobs, o.succeeded, o.failed, o.cancelled, o.unfinished) == (9, 4, 3, 1, 1)
    assert o.success_rate == pytest.approx(4 / 7)
    # Durations (created → finished) of the succeeded jobs: 2, 4, 10 and 6 seconds.
    assert o.avg_duration == pytest.approx(5.5)
    assert o.p50_duration == pytest.approx(5.0)
    assert o.p95_duration == pytest.approx(6 + 0.85 * 4)  # percentile_cont, interpolated
    assert o.avg_run == pytest.approx(4.5)  # started one second after creation
    assert o.avg_attempts == pytest.approx(16 / 7)  # over ended jobs: 1+2+5+1+1+1+5
    assert (o.prompt_tokens, o.completion_tokens, o.tokens) == (710, 550, 1260)


def test_figures_by_day_task_and_model(conn: Connection) -> None:
    report = collect(conn, DAY1, DAY2)
    assert list(report.by_day) == [DAY1, DAY2]
    day1, day2 = report.by_day[DAY1], report.by_day[DAY2]
    assert (day1.jobs, day1.success_rate, day1.p50_duration) == (4, 0.75, 4.0)
    assert day1.avg_duration == pytest.approx(16 / 3)
    assert (day2.jobs, day2.avg_duration) == (5, 6.0)
    assert day2.success_rate == pytest.approx(1 / 3)
    assert (day1.tokens, day2.tokens) == (1050, 210)
    assert list(report.by_task) == ["summarize", "chat"]  # most jobs first
    summarize, chat = report.by_task["summarize"], report.by_task["chat"]
    assert (summarize.jobs, summarize.success_rate) == (6, 0.6)
    assert (chat.jobs, chat.success_rate, chat.cancelled) == (3, 0.5, 1)
    assert {m: f.jobs for m, f in report.by_model.items()} == {
        "(no model call)": 4,
        A: 3,
        B: 2,
    }
    assert report.by_model[A].tokens == 650 and report.by_model[A].success_rate == 1.0


def test_error_codes_histogram_and_log_events(conn: Connection) -> None:
    report = collect(conn, DAY1, DAY2)
    assert report.error_codes == [("dead_lettered", 2), ("refused", 1)]
    histogram = dict(report.histogram)
    assert list(histogram) == bucket_labels()
    assert histogram == {
        "<1s": 0,
        "1s-2s": 0,
        "2s-5s": 2,  # 2 s and 4 s
        "5s-10s": 1,
        "10s-30s": 1,
        "30s-1m": 0,
        "1m-2m": 0,
        "2m-5m": 0,
        ">=5m": 0,
    }
    assert report.events_by_day == {
        DAY1: {"started": 8, "retry": 5, "dead_lettered": 1, "replayed": 0},
        DAY2: {"started": 0, "retry": 0, "dead_lettered": 0, "replayed": 1},
    }


def test_range_and_task_narrow_the_figures(conn: Connection) -> None:
    assert collect(conn, DAY2, DAY2).overall.jobs == 5
    chat = collect(conn, DAY1, DAY2, task="chat")
    assert chat.overall.jobs == 3 and list(chat.by_task) == ["chat"]
    assert chat.error_codes == [("refused", 1)]
    empty = collect(conn, DAY2 + timedelta(days=1), DAY2 + timedelta(days=3))
    assert empty.overall == Figures() and empty.by_day == {} and empty.error_codes == []
    assert "(none)" in render_text(empty)


def test_facts_agree_with_the_daily_metrics_view(conn: Connection) -> None:
    rows = conn.execute(
        text("SELECT * FROM generation_daily_metrics WHERE day BETWEEN :a AND :b"),
        {"a": DAY1, "b": DAY2},
    ).mappings()
    for row in rows:
        f = collect(conn, row["day"], row["day"], task=row["task"]).overall
        assert f.jobs == row["jobs"] and f.succeeded == row["succeeded"]
        for mine, theirs in (
            (f.success_rate, row["success_rate"]),
            (f.avg_duration, row["avg_duration_seconds"]),
            (f.p50_duration, row["p50_duration_seconds"]),
            (f.p95_duration, row["p95_duration_seconds"]),
            (f.avg_attempts, row["avg_attempts"]),
        ):
            assert (mine is None) == (theirs is None)
            assert mine is None or mine == pytest.approx(float(theirs), abs=1e-4)
        assert f.tokens == row["prompt_tokens"] + row["completion_tokens"]


def test_terminal_table(conn: Connection) -> None:
    out = render_text(collect(conn, DAY1, DAY2))
    assert "success rate 57.1%" in out
    assert "duration avg 5.50s, p50 5.00s, p95 9.40s" in out
    assert "tokens 1,260 (prompt 710, completion 550)" in out
    day_line = next(line for line in out.splitlines() if line.strip().startswith("2020-01-10"))
    assert day_line.split() == [
        "2020-01-10", "4", "3", "1", "75.0%", "5.33s", "4.00s", "9.40s", "2.25", "1,050",
        "5", "1", "0",
    ]  # fmt: skip
    assert "dead_lettered" in out and "66.7%" in out  # share of failed


@pytest.fixture
def committed(db: Database) -> Iterator[tuple[date, date]]:
    """The known jobs (none unfinished, so no sweeper changes them) on days of their own."""
    day1, day2 = date(2020, 2, 10), date(2020, 2, 11)
    with db.transaction() as c:
        known_jobs(c, day1, day2, unfinished=False)
    yield day1, day2
    with db.transaction() as c:
        c.execute(
            text("DELETE FROM generations WHERE created_at >= :a AND created_at < :b"),
            {"a": at(day1, -3600), "b": at(day2 + timedelta(days=1), -3600)},
        )


def stats_cli(app_database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": f"{ROOT / 'functions'}:{ROOT}",
        "DATABASE_URL": app_database_url,
        "GENJOBS_ENV": "local",
    }
    return subprocess.run(
        [sys.executable, "-m", "genjobs.ops.cli", "stats", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=True,
    )


def test_cli_prints_the_table_json_and_writes_html(
    committed: tuple[date, date], app_database_url: str, tmp_path: Any
) -> None:
    day1, day2 = committed
    span = ["--since", str(day1), "--until", str(day2)]
    table = stats_cli(app_database_url, *span).stdout
    assert "genjobs stats 2020-02-10 to 2020-02-11" in table and "success rate 57.1%" in table
    figures = json.loads(stats_cli(app_database_url, *span, "--json").stdout)
    assert figures["overall"]["jobs"] == 8 and figures["overall"]["tokens"] == 1260
    assert figures["by_day"]["2020-02-10"]["success_rate"] == 0.75
    html_file = tmp_path / "report.html"
    stats_cli(app_database_url, *span, "--task", "chat", "--html", str(html_file))
    page = html_file.read_text()
    assert page.startswith("<!doctype html>") and "task chat" in page
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )


def test_only_the_backend_reads_the_facts_view(db: Database) -> None:
    with db.engine.connect() as connection:
        transaction = connection.begin()
        try:
            connection.execute(text("SET LOCAL ROLE authenticated"))
            with pytest.raises(DBAPIError, match="permission denied"):
                connection.execute(text("SELECT count(*) FROM generation_job_facts"))
        finally:
            transaction.rollback()
