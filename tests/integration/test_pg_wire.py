"""Statements reach Postgres in one round trip each, with pg8000's results and errors intact."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from bench.pgwire import CountingProxy
from devstack.database import admin_execute
from genjobs import db
from genjobs.db import Database, create_database
from genjobs.settings import load_settings


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
