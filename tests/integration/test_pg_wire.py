"""Statements reach Postgres in one round trip each, with pg8000's results and errors intact."""

from __future__ import annotations

import datetime
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pg8000.converters
import pg8000.core
import pg8000.dbapi
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from bench.pgwire import CountingProxy
from devstack.database import admin_execute
from genjobs import db, pg_wire
from genjobs.db import Database, create_database
from genjobs.errors import DatabaseUnavailable
from genjobs.settings import load_settings
from tests.integration.tcp_relay import TcpRelay


@pytest.fixture
def counted(app_database_url: str) -> Iterator[tuple[Database, CountingProxy]]:
    """The project's Database reaching Postgres (or PgBouncer) through a counting proxy."""
    proxy = CountingProxy(app_database_url).start()
    database = create_database(load_settings("cli", {"DATABASE_URL": proxy.url()}))
    try:
        yield database, proxy
    finally:
        database.dispose()
        proxy.stop()


def test_a_parameterised_statement_is_one_round_trip(
    counted: tuple[Database, CountingProxy],
) -> None:
    database, proxy = counted
    with database.transaction() as conn:  # connects, warms the pool
        conn.execute(text("SELECT 1"))
    proxy.counts.reset()
    with database.transaction() as conn:
        conn.execute(text("SELECT CAST(:a AS int) + 1"), {"a": 1})
        conn.execute(text("SELECT CAST(:b AS text)"), {"b": "x"})
    counts = proxy.counts.snapshot()
    # BEGIN with the first statement, the second, COMMIT; a connection just returned to the
    # pool is not pinged.
    assert counts["round_trips"] == 3, counts
    assert counts["statement:begin"] == 1, counts
    assert "statement:empty" not in counts, counts


def test_a_connection_idle_past_the_window_is_pinged_and_replaced_if_dead(
    counted: tuple[Database, CountingProxy],
    app_database_url: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database, proxy = counted
    backend_pid = text("SELECT pg_backend_pid()")
    with database.transaction() as conn:
        first_pid = conn.execute(backend_pid).scalar_one()
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
    proxy.counts.reset()
    with database.transaction() as conn:
        conn.execute(backend_pid)
    assert proxy.counts.snapshot()["statement:empty"] == 1  # the ping
    if app_database_url == database_url:  # direct: one pooled connection is one backend
        # Killed while idle in the pool: the ping finds out and the pool opens another.
        admin_execute(database_url, f"SELECT pg_terminate_backend({first_pid})")
        with database.transaction() as conn:
            assert conn.execute(backend_pid).scalar_one() != first_pid


def test_values_and_nulls_come_back_typed(counted: tuple[Database, CountingProxy]) -> None:
    database, _ = counted
    job_id = uuid.uuid4()
    with database.transaction() as conn:
        row = conn.execute(
            text(
                "SELECT CAST(:id AS uuid) AS id, CAST(:doc AS jsonb) AS doc, CAST(:n AS int) AS n,"
                " CAST(:none AS text) AS none, now() AS at, :percent AS percent"
            ),
            {"id": job_id, "doc": '{"a": [1, "é"]}', "n": 7, "none": None, "percent": "100%"},
        ).one()
    assert row.id == job_id
    assert row.doc == {"a": [1, "é"]}
    assert row.n == 7
    assert row.none is None
    assert isinstance(row.at, datetime.datetime) and row.at.tzinfo is not None
    assert row.percent == "100%"


def test_timestamptz_values_read_as_pg8000_reads_them(
    counted: tuple[Database, CountingProxy],
) -> None:
    """The fast reader gives pg8000's values, and hands it what it cannot read."""
    database, _ = counted
    cases = {
        "2026-12-04 17:13:08.123456+00": datetime.datetime(
            2026, 12, 4, 17, 13, 8, 123456, tzinfo=datetime.UTC
        ),
        "2026-12-04 17:13:08+05:30": datetime.datetime(2026, 12, 4, 11, 43, 8, tzinfo=datetime.UTC),
        "infinity": "infinity",
        "-infinity": "-infinity",
    }
    with database.transaction() as conn:
        conn.execute(text("SET LOCAL TimeZone = 'Asia/Kolkata'"))  # output in +05:30
        for value, expected in cases.items():
            got = conn.execute(
                text("SELECT CAST(:v AS timestamptz) AS at"), {"v": value}
            ).scalar_one()
            assert got == expected, value
            assert got == pg8000.converters.timestamptz_in(str(_as_text(conn, value))), value
        # Beyond datetime: pg8000 gives the text back.
        far = conn.execute(text("SELECT CAST('10000-01-01 00:00+00' AS timestamptz)")).scalar_one()
        bc = conn.execute(text("SELECT CAST('0044-03-15 12:00+00 BC' AS timestamptz)")).scalar_one()
    assert isinstance(far, str) and far.startswith("10000-01-01")
    assert isinstance(bc, str) and bc.endswith("BC")


def _as_text(conn: Any, value: str) -> str:
    """How the server writes `value` as timestamptz in this session."""
    return str(
        conn.execute(
            text("SELECT CAST(CAST(:v AS timestamptz) AS text)"), {"v": value}
        ).scalar_one()
    )


def test_an_error_leaves_the_connection_usable(counted: tuple[Database, CountingProxy]) -> None:
    database, _ = counted
    invalid = pytest.raises(sa_exc.DBAPIError, match="invalid input syntax for type uuid")
    with invalid, database.transaction() as conn:
        conn.execute(text("SELECT CAST(:id AS uuid)"), {"id": "not-a-uuid"})
    with pytest.raises(sa_exc.DBAPIError, match="syntax error"), database.transaction() as conn:
        conn.execute(text("SELEC :x"), {"x": 1})
    for _ in range(3):  # every pooled connection answers normally afterwards
        with database.transaction() as conn:
            assert conn.execute(text("SELECT CAST(:x AS int)"), {"x": 5}).scalar_one() == 5


def test_rows_of_many_statements_stay_apart(counted: tuple[Database, CountingProxy]) -> None:
    database, _ = counted
    with database.transaction() as conn:
        many = conn.execute(
            text("SELECT g FROM generate_series(1, CAST(:n AS int)) AS g"), {"n": 1000}
        ).scalars()
        assert list(many) == list(range(1, 1001))
        assert conn.execute(text("SELECT CAST(:n AS int)"), {"n": 2}).scalar_one() == 2


def test_a_rollback_before_the_first_statement_ends_the_transaction(
    counted: tuple[Database, CountingProxy],
) -> None:
    database, _ = counted
    with database.engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        dbapi.execute_simple("begin transaction")  # held back until the next statement
        dbapi.rollback()
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
        assert dbapi._transaction_status == b"T"  # the cursor began a new transaction
        conn.rollback()
        assert dbapi._transaction_status == b"I"


def test_an_error_after_rows_have_streamed_leaves_the_connection_usable(
    counted: tuple[Database, CountingProxy],
) -> None:
    database, _ = counted
    with database.transaction() as conn:
        first_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    # Rows for n = 1 and 2 are on the wire before the division by zero at n = 3.
    failing = text("SELECT 1 / (n - 3) FROM generate_series(1, 5) AS n")
    with pytest.raises(sa_exc.DatabaseError) as caught, database.transaction() as conn:
        conn.execute(failing).all()
    assert not isinstance(caught.value, DatabaseUnavailable)  # a bug in the SQL: no retry
    assert caught.value.orig.args[0]["C"] == "22012", caught.value.orig  # division_by_zero
    assert not caught.value.connection_invalidated
    with database.transaction() as conn:  # same pooled connection, stream aligned
        assert conn.execute(text("SELECT CAST(:x AS int)"), {"x": 5}).scalar_one() == 5
        if database.engine.pool.size() == 1:  # type: ignore[attr-defined]
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == first_pid


@pytest.fixture
def single_connection(database_url: str) -> Iterator[tuple[Database, TcpRelay]]:
    """The project's Database, one pooled connection, through a relay straight to Postgres."""
    relay = TcpRelay(database_url).start()
    settings = load_settings("cli", {"DATABASE_URL": relay.url(), "DB_POOL_SIZE": "1"})
    database = create_database(settings)
    try:
        yield database, relay
    finally:
        database.dispose()
        relay.stop()


def _later(seconds: float, action: Callable[[], object]) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


@pytest.mark.parametrize("drop", ["pg_terminate_backend", "relay_cut"])
@pytest.mark.timeout(60)
def test_a_socket_dropped_mid_exchange_is_discarded_and_the_next_transaction_works(
    single_connection: tuple[Database, TcpRelay], database_url: str, drop: str
) -> None:
    database, relay = single_connection
    with database.transaction() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()

    def drop_now() -> None:
        if drop == "relay_cut":
            relay.cut()
        else:
            admin_execute(database_url, f"SELECT pg_terminate_backend({pid})")

    # The first statement of the transaction: the held-back BEGIN travels with it.
    timer = _later(0.5, drop_now)
    started = time.monotonic()
    try:
        with pytest.raises(DatabaseUnavailable), database.transaction() as conn:
            conn.execute(text("SELECT pg_sleep(CAST(:s AS float))"), {"s": 10})
    finally:
        timer.join()
    assert time.monotonic() - started < 5  # failed when the socket dropped, not at the end
    assert database.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    with database.transaction() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid


def test_the_pinned_pg8000_has_every_internal_pg_wire_uses(
    counted: tuple[Database, CountingProxy],
) -> None:
    database, _ = counted
    with database.engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert pg_wire.missing_internals(dbapi) == []
        assert "execute_unnamed" in vars(dbapi)  # installed


class _ChangedPg8000(pg8000.dbapi.Connection):
    """A pg8000 whose internal execute_unnamed grew a parameter, as a future release might."""

    def execute_unnamed(  # type: ignore[override]
        self,
        statement: str,
        vals: Any = (),
        oids: Any = (),
        stream: Any = None,
        *,
        cached: bool = False,
    ) -> Any:
        return super().execute_unnamed(statement, vals, oids, stream)


def _connect_to(url: str, connection_class: type[pg8000.dbapi.Connection]) -> Any:
    parts = urlsplit(url)
    return connection_class(
        parts.username or "postgres",
        host="127.0.0.1",
        port=parts.port,
        database=parts.path.lstrip("/"),
        password=parts.password,
        ssl_context=False,
    )


def test_changed_pg8000_internals_fall_back_to_stock_pg8000_with_one_warning(
    counted: tuple[Database, CountingProxy], caplog: pytest.LogCaptureFixture
) -> None:
    _, proxy = counted
    pg_wire._warn_once.cache_clear()
    settings = load_settings("cli", {"DB_POOL_SIZE": "2"})
    database = db.database_from_creator(lambda: _connect_to(proxy.url(), _ChangedPg8000), settings)
    try:
        with caplog.at_level(logging.WARNING, logger="genjobs.pg_wire"):
            with database.transaction() as first, database.transaction() as second:
                dbapi = first.connection.dbapi_connection
                assert "execute_unnamed" not in vars(dbapi)  # stock pg8000 kept
                assert second.connection.dbapi_connection is not dbapi
            proxy.counts.reset()
            with database.transaction() as conn:
                value = conn.execute(text("SELECT CAST(:x AS int) + 1"), {"x": 1}).scalar_one()
        assert value == 2
        warnings = [r for r in caplog.records if r.name == "genjobs.pg_wire"]
        assert len(warnings) == 1, warnings  # two connections, one warning
        assert "Connection.execute_unnamed" in warnings[0].getMessage()
        # Stock pg8000: BEGIN alone, Parse, Describe, Bind/Execute apart, then COMMIT.
        assert proxy.counts.snapshot()["round_trips"] > 3
    finally:
        database.dispose()
        pg_wire._warn_once.cache_clear()


def test_a_missing_pg8000_internal_keeps_stock_pg8000(
    counted: tuple[Database, CountingProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, proxy = counted
    connection = _connect_to(proxy.url(), pg8000.dbapi.Connection)
    try:
        monkeypatch.delattr(pg8000.core, "PORTAL")
        assert pg_wire.missing_internals(connection) == ["pg8000.core.PORTAL"]
        pg_wire.install(connection)
        assert "execute_unnamed" not in vars(connection)
        cursor = connection.cursor()
        cursor.execute("SELECT CAST(%s AS int) * 2", (21,))
        assert cursor.fetchone() == [42]
    finally:
        connection.close()
        pg_wire._warn_once.cache_clear()


# --- Statements answered with the next one ------------------------------------------------


def test_a_statement_answered_with_the_next_shares_its_round_trip(
    counted: tuple[Database, CountingProxy],
) -> None:
    database, proxy = counted
    with database.transaction() as conn:
        conn.execute(text("SELECT 1"))
    proxy.counts.reset()
    with database.transaction() as conn:
        with pg_wire.answered_with_next(conn):
            held = conn.execute(text("SELECT pg_advisory_xact_lock(CAST(:k AS bigint))"), {"k": 7})
        assert not held.returns_rows
        assert conn.execute(text("SELECT CAST(:x AS int)"), {"x": 3}).scalar_one() == 3
    counts = proxy.counts.snapshot()
    # BEGIN, the lock and the SELECT in one; COMMIT.
    assert (counts["round_trips"], counts["statements"]) == (2, 4), counts


def test_a_held_statement_runs_before_the_next_takes_its_snapshot(
    counted: tuple[Database, CountingProxy], app_database_url: str
) -> None:
    """The submit's lock: the read after it sees what the lock's last holder committed."""
    database, _ = counted
    table = f"held_{uuid.uuid4().hex[:8]}"
    with database.transaction() as conn:
        conn.execute(text(f"CREATE TABLE {table} (n int)"))
    locked = threading.Event()
    seen: list[int] = []

    def later() -> None:
        locked.wait(5)
        with database.transaction() as conn:
            with pg_wire.answered_with_next(conn):
                conn.execute(text("SELECT pg_advisory_xact_lock(CAST(:k AS bigint))"), {"k": 11})
            seen.append(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())

    try:
        thread = threading.Thread(target=later)
        thread.start()
        with database.transaction() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(CAST(:k AS bigint))"), {"k": 11})
            locked.set()
            time.sleep(0.3)  # the other transaction waits on the lock meanwhile
            conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
        thread.join(5)
        assert seen == [1]
    finally:
        with database.transaction() as conn:
            conn.execute(text(f"DROP TABLE {table}"))


def test_an_error_in_a_held_statement_is_raised_by_the_next_and_the_connection_recovers(
    counted: tuple[Database, CountingProxy],
) -> None:
    database, _ = counted
    invalid = pytest.raises(sa_exc.DBAPIError, match="invalid input syntax for type uuid")
    with invalid, database.transaction() as conn:
        with pg_wire.answered_with_next(conn):
            conn.execute(text("SELECT CAST(:id AS uuid)"), {"id": "not-a-uuid"})
        conn.execute(text("SELECT 1"))  # fails too (aborted); the held one's error is raised
    # Nothing after it: the COMMIT raises it.
    with invalid, database.transaction() as conn, pg_wire.answered_with_next(conn):
        conn.execute(text("SELECT CAST(:id AS uuid)"), {"id": "not-a-uuid"})
    for _ in range(3):
        with database.transaction() as conn:
            assert conn.execute(text("SELECT CAST(:x AS int)"), {"x": 5}).scalar_one() == 5


def test_a_held_statement_is_only_written_by_a_commit_when_nothing_follows(
    counted: tuple[Database, CountingProxy],
) -> None:
    database, proxy = counted
    table = f"held_{uuid.uuid4().hex[:8]}"
    with database.transaction() as conn:
        conn.execute(text(f"CREATE TABLE {table} (n int)"))
    try:
        proxy.counts.reset()
        with database.transaction() as conn, pg_wire.answered_with_next(conn):
            conn.execute(text(f"INSERT INTO {table} VALUES (CAST(:n AS int))"), {"n": 4})
        assert proxy.counts.snapshot()["round_trips"] == 1  # BEGIN, the INSERT, COMMIT
        with database.transaction() as conn:
            assert conn.execute(text(f"SELECT n FROM {table}")).scalar_one() == 4
    finally:
        with database.transaction() as conn:
            conn.execute(text(f"DROP TABLE {table}"))
