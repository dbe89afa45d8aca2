"""Stacks for fault tests: short timing budget, a restartable Postgres, crash points armed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.database import prepare_database
from devstack.dev import StackConfig
from genjobs.db import Database, create_database
from genjobs.settings import load_settings
from tests.faults.postgres import RestartablePostgres, pgbouncer_in_front
from tests.stack import Stack, free_ports, running_stack

# Ack deadline 12 s (the topology's 300 s scaled by 0.04): model calls at most 6 s; a running
# attempt's lease of 3 s is renewed every second (the shipped 30 s and 10 s, scaled by 0.1).
ACK_DEADLINE_SCALE = "0.04"
# Backoff 2 s..120 s: five deliveries span 30 s, well beyond a few worker restarts (as on
# Pub/Sub, where they span minutes and a restart takes seconds).
BACKOFF_SCALE = "0.2"
FAULT_ENV = {
    "ACK_DEADLINE_SECONDS": "12",
    "LEASE_MARGIN_SECONDS": "3",
    "HEARTBEAT_SECONDS": "1",
    "SWEEP_PUBLISH_GRACE_SECONDS": "2",
    "REPUBLISH_AFTER_SECONDS": "20",
    "DB_POOL_TIMEOUT_SECONDS": "3",
    "SUBMITS_PER_MINUTE": "10000",
    "MAX_ACTIVE_JOBS": "10000",
    "LOG_LEVEL": "INFO",
}


@dataclass
class FaultDatabase:
    """The restartable server, the URL the functions use, and a direct handle for checks."""

    postgres: RestartablePostgres
    app_url: str
    db: Database


@pytest.fixture(scope="module", params=["direct", "pgbouncer"])
def fault_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultDatabase]:
    """A migrated Postgres of this module's own, straight or through PgBouncer."""
    if request.param == "pgbouncer" and shutil.which("pgbouncer") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the fault tests through PgBouncer: install pgbouncer")
        pytest.skip(
            "PgBouncer variant not run: pgbouncer is not installed (apt-get install pgbouncer)"
        )
    postgres = RestartablePostgres(tmp_path_factory.mktemp("fault-pg") / "data")
    try:
        prepare_database(postgres.url)
        db = create_database(load_settings("cli", {"DATABASE_URL": postgres.url}))
        if request.param == "direct":
            yield FaultDatabase(postgres, postgres.url, db)
        else:
            with pgbouncer_in_front(postgres) as url:
                yield FaultDatabase(postgres, url, db)
        db.dispose()
    finally:
        postgres.cleanup()


def fault_config(
    database: FaultDatabase,
    logs: Path,
    *,
    emulator_flags: tuple[str, ...] = (),
    stub_flags: tuple[str, ...] = (),
    crash_dir: Path | None = None,
) -> StackConfig:
    """A stack with the short timing budget; the functions' crash points armed in `crash_dir`."""
    return StackConfig(
        database_url=database.app_url,
        signing_key=logs / "push-signing-key.pem",
        ports=free_ports(),
        emulator_flags=(
            *("--backoff-scale", BACKOFF_SCALE, "--ack-deadline-scale", ACK_DEADLINE_SCALE),
            *emulator_flags,
        ),
        stub_flags=stub_flags,
        # Every function's: each crash point is named for the one place that reaches it.
        env={**FAULT_ENV, **({"GENJOBS_CRASH_DIR": str(crash_dir)} if crash_dir else {})},
        worker_threads=32,
        sweep_interval=0.5,
    )


@pytest.fixture(scope="module")
def crash_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a test arms a crash point by creating a file named after it."""
    return tmp_path_factory.mktemp("crash-points")


@pytest.fixture(scope="module")
def fault_stack(
    fault_database: FaultDatabase, crash_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A stack whose dead processes are restarted, as the platform restarts instances."""
    logs = tmp_path_factory.mktemp("fault-stack-logs")
    with running_stack(fault_config(fault_database, logs, crash_dir=crash_dir), logs) as stack:
        stack.supervisor.watch()
        yield stack
