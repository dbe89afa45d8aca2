"""Figure 3: database work per job, end to end: transactions, statements and round trips."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.pool import NullPool

from bench.load import run_load
from bench.pgwire import CountingProxy
from bench.sizes import Size
from bench.stack import FUNCTIONS, BenchDatabase, Stack, engine_for, start_stack

PHASE = "db-work"
WARM_PHASE = "db-work-warm-up"
CONNECTIONS = 4
ROLES = FUNCTIONS
COMMIT = "statement:commit"
CONNECTIONS_KEY = "connections"


@dataclass(frozen=True)
class DbWork:
    """Per job: server-side commits, and what each function sent on the wire."""

    jobs: int
    xact_commit_per_job: float
    wire: dict[str, dict[str, float]]  # role -> counter -> per job

    @property
    def statements_per_job(self) -> float:
        """Statements the functions sent per job (BEGIN, COMMIT and pings included)."""
        return sum(counts.get("statements", 0.0) for counts in self.wire.values())

    @property
    def round_trips_per_job(self) -> float:
        """Times the functions waited for the server, per job."""
        return sum(counts.get("round_trips", 0.0) for counts in self.wire.values())

    @property
    def wire_commits_per_job(self) -> float:
        """COMMITs the functions sent per job."""
        return sum(counts.get(COMMIT, 0.0) for counts in self.wire.values())


def _stats(engine: Engine) -> dict[str, Any]:
    with engine.begin() as conn:
        row = conn.execute(
            text(
                "SELECT xact_commit,"
                " (SELECT count(*) FROM pg_stat_activity"
                "   WHERE datname = current_database() AND pid <> pg_backend_pid()) AS others"
                " FROM pg_stat_database WHERE datname = current_database()"
            )
        ).one()
        return dict(row._mapping)


def measure(db: BenchDatabase, size: Size, logs: Path) -> DbWork:
    """Run jobs on a stack whose functions reach Postgres through counting proxies."""
    # Backends publish their statistics lazily (up to 10 s late) but always when they exit, so
    # pg_stat_database is read with no other connection open, before and after the phase; what
    # the bench itself and the warm-up committed (counted on the wire) is taken out.
    proxies = {role: CountingProxy(db.url).start() for role in (*ROLES, "bench")}
    own = engine_for(proxies["bench"].url(), pool_size=2)
    reader = engine_for(proxies["bench"].url(), poolclass=NullPool)
    db.engine.dispose()
    before = _quiet_stats(reader)
    proxies["bench"].counts.reset()
    stack = start_stack(
        dataclasses.replace(db, engine=own),
        logs,
        database_urls={role: proxies[role].url() for role in ROLES},
    )
    try:
        stack.users(size.users)
        # Warm-up: SQLAlchemy's first-connect queries and lazy imports stay out of the counts.
        _run(stack, WARM_PHASE, 2 * CONNECTIONS)
        warm = {role: proxies[role].counts.snapshot() for role in ROLES}
        jobs = _run(stack, PHASE, size.db_jobs)
    finally:
        stack.supervisor.stop()
        own.dispose()
    after = _quiet_stats(reader, before_read=proxies["bench"].counts.snapshot)
    counted = {role: proxies[role].counts.snapshot() for role in ROLES}
    for proxy in proxies.values():
        proxy.stop()
    reader.dispose()
    wire = {
        role: {
            key: (value - warm[role].get(key, 0)) / jobs
            for key, value in sorted(counted[role].items())
        }
        for role in ROLES
    }
    warm_commits = sum(c.get(COMMIT, 0) + c.get(CONNECTIONS_KEY, 0) for c in warm.values())
    # Also not the functions': the first read's own commit and the last read's connection.
    commits = (
        after["xact_commit"] - before["xact_commit"] - after["bench_commits"] - warm_commits - 2
    )
    return DbWork(jobs, commits / jobs, wire)


def _quiet_stats(
    reader: Engine, before_read: Callable[[], dict[str, int]] | None = None
) -> dict[str, Any]:
    """pg_stat_database once no other backend is connected (all have flushed their stats)."""
    deadline = time.monotonic() + 30
    while _stats(reader)["others"] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the last backend to leave may still be writing its statistics
    bench = before_read() if before_read else {}
    # A new connection commits once on the server too (its startup reads the catalogs).
    own = bench.get(COMMIT, 0) + bench.get(CONNECTIONS_KEY, 0)
    return {**_stats(reader), "bench_commits": own}


def _run(stack: Stack, phase: str, jobs: int) -> int:
    per_connection = max(1, jobs // CONNECTIONS)
    load = run_load(
        stack.ports.api,
        lambda i: stack.submit_request(i, phase),
        concurrency=CONNECTIONS,
        limit_per_thread=per_connection,
    )
    counts = stack.wait_for_phase(phase, load.requests, timeout=60 + load.requests / 5)
    if counts.get("succeeded") != load.requests:
        raise RuntimeError(f"{phase}: not every job succeeded: {counts}")
    return load.requests
