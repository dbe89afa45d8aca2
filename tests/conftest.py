"""Shared fixtures: a real, migrated Postgres database and a local stack for the session."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import text

from devstack.database import admin_execute, prepare_database, with_database
from devstack.dev import StackConfig
from genjobs.db import Database, create_database, embedded_database_url
from genjobs.settings import Settings, load_settings
from tests.factories import JobFactory
from tests.stack import Stack, free_ports, running_stack

ROOT = Path(__file__).resolve().parents[1]
SHIM = ROOT / "devstack" / "supabase_shim.sql"

# pgserver logs at INFO from its exit handler, after pytest has closed the streams a test's
# handlers write to ("--- Logging error ---" at the end of the run): keep it to itself.
logging.getLogger("pgserver").propagate = False


def server_url() -> str:
    """TEST_DATABASE_URL (any database on the server), else the embedded Postgres."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        return given
    return embedded_database_url(str(ROOT / ".local" / "test-pgdata"))


def with_host_port(url: str, hostport: str) -> str:
    """The same URL through another host:port (PgBouncer)."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, user + hostport, parts.path, parts.query, ""))


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new, migrated database on the test server; dropped afterwards."""
    base = server_url()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_execute(base, f'CREATE DATABASE "{name}"')
    url = with_database(base, name)
    try:
        prepare_database(url)  # Supabase's roles and auth.uid(), then migrations to head
        yield url
    finally:
        admin_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated database for this test session; dropped afterwards."""
    with fresh_database("genjobs_test") as url:
        yield url


@pytest.fixture(scope="session", params=["direct", "pgbouncer"])
def app_database_url(request: pytest.FixtureRequest, database_url: str) -> str:
    """The functions' URL: straight to Postgres, and through PgBouncer in transaction mode."""
    if request.param == "direct":
        return database_url
    bouncer = os.environ.get("TEST_PGBOUNCER")
    if not bouncer:
        if os.environ.get("CI"):
            pytest.fail("CI must also run the database tests through PgBouncer: set TEST_PGBOUNCER")
        pytest.skip(
            "PgBouncer variant not run: start one with `devstack/pgbouncer.sh start` "
            "and set TEST_PGBOUNCER=127.0.0.1:6432 (needs TEST_DATABASE_URL on 127.0.0.1:5432)"
        )
    return with_host_port(database_url, bouncer)


@pytest.fixture(scope="session")
def settings(app_database_url: str) -> Settings:
    """Local settings pointing at the test database."""
    return load_settings("cli", {"DATABASE_URL": app_database_url, "DB_POOL_SIZE": "3"})


@pytest.fixture(scope="session")
def db(settings: Settings) -> Iterator[Database]:
    """The project's Database on the test database."""
    database = create_database(settings)
    yield database
    database.dispose()


@pytest.fixture
def clean_db(db: Database) -> Database:
    """The database with no jobs left by earlier tests."""
    with db.transaction() as conn:
        conn.execute(text("TRUNCATE generation_deltas, generation_logs, generations"))
    return db


@pytest.fixture
def job_factory(clean_db: Database) -> JobFactory:
    """Makes jobs in the clean test database (tests/factories.py)."""
    return JobFactory(clean_db)


@pytest.fixture(scope="session")
def stack_database_url(app_database_url: str) -> Iterator[str]:
    """The stack's own database, reached like `app_database_url`: its sweeper and worker never
    touch the rows other tests arrange (or truncate) in theirs."""
    with fresh_database("genjobs_stack") as direct:
        yield with_database(app_database_url, urlsplit(direct).path.lstrip("/"))


@pytest.fixture(scope="session")
def stack_db(stack_database_url: str) -> Iterator[Database]:
    """The project's Database on the stack's database."""
    database = create_database(load_settings("cli", {"DATABASE_URL": stack_database_url}))
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def stack(stack_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Start the stack once per database variant; its processes' output lands in files."""
    logs = tmp_path_factory.mktemp("stack-logs")
    config = StackConfig(
        database_url=stack_database_url,
        signing_key=logs / "push-signing-key.pem",
        ports=free_ports(),
        # Pub/Sub's 10 s..600 s backoff, scaled down so retries and dead-lettering take seconds.
        emulator_flags=("--backoff-scale", "0.01"),
        env={
            "LOG_LEVEL": "INFO",
            "DB_POOL_SIZE": "5",
            "SWEEP_PUBLISH_GRACE_SECONDS": "2",
            # Short enough for the streaming tests to see a heartbeat and a stream's end.
            "STREAM_HEARTBEAT_SECONDS": "1",
            "STREAM_MAX_SECONDS": "8",
        },
        worker_threads=32,
        sweep_interval=0.5,
    )
    with running_stack(config, logs) as running:
        yield running


@pytest.fixture(autouse=True)
def _show_stack_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the processes' recent output when a test here fails."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    for name in request.fixturenames:
        if not name.endswith("stack"):
            continue
        stack = request.getfixturevalue(name)
        if not isinstance(stack, Stack):
            continue
        for log in sorted(stack.logs.glob("*.log")):
            print(f"----- {log.name} (last 40 lines) -----")
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


# Whole-stack tests (functions, emulator and stub model as processes) marked `one_database_path`
# run on one database path: through PgBouncer where that variant runs (production's path:
# Supabase's pooler in transaction mode), else straight to Postgres. What differs between the
# paths is the database layer, which its own tests and the fault suite run on both.
_PGBOUNCER_RUNS = {
    "app_database_url": lambda: bool(os.environ.get("TEST_PGBOUNCER")),
    "fault_database": lambda: shutil.which("pgbouncer") is not None,
}
_ONE_PATH = "one_database_path"
_left_out = pytest.StashKey[int]()


def _direct_variant_left_out(item: pytest.Item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return item.get_closest_marker(_ONE_PATH) is not None and any(
        params.get(name) == "direct" and pgbouncer_runs()
        for name, pgbouncer_runs in _PGBOUNCER_RUNS.items()
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the direct variant of `one_database_path` tests whose PgBouncer variant runs."""
    left_out = [item for item in items if _direct_variant_left_out(item)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        dropped = set(left_out)
        items[:] = [item for item in items if item not in dropped]
        config.stash[_left_out] = len(left_out)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say why tests were deselected, so nobody takes it for a skip."""
    count = terminalreporter.config.stash.get(_left_out, 0)
    if count:
        terminalreporter.write_line(
            f"{_ONE_PATH}: {count} direct variants of whole-stack tests deselected; "
            "they ran through PgBouncer (tests/conftest.py says why)"
        )
