"""No connection hangs forever: a network gone silent fails the statement, frees the pool slot.

Every way a connection is opened is exercised through a real TCP relay in front of real
Postgres: pg8000 opening the socket itself (DATABASE_URL); a plain socket opened by someone else
and handed to pg8000 with `sock=` (the connector's own pg8000 helper); and the real Cloud SQL
connector through `cloud_sql_creator`, against a loopback Admin API and a TLS server-side proxy.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from google.cloud.sql.connector.pg8000 import connect as connector_pg8000_connect
from sqlalchemy import text

from genjobs.db import Database, cloud_sql_creator, create_database, database_from_creator
from genjobs.db_transport import KEEPALIVE_COUNT, KEEPALIVE_IDLE_SECONDS
from genjobs.errors import DatabaseUnavailable
from genjobs.settings import load_settings
from tests.conftest import server_url
from tests.integration.fake_cloud_sql import FakeCloudSql
from tests.integration.tcp_relay import TcpRelay

TIMEOUT_SECONDS = 1.0
_BACKEND_PID = text("SELECT pg_backend_pid()")


def connector_style_creator(url: str, opened: list[socket.socket]) -> Callable[[], Any]:
    """Open a plain socket (no timeout, no keepalive) and hand it over as the connector does."""
    parts = urlsplit(url)

    def create() -> Any:
        sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432))
        opened.append(sock)
        return connector_pg8000_connect(
            "127.0.0.1",
            sock,  # type: ignore[arg-type]  # the connector's is TLS to its proxy; plain here
            user=parts.username,
            db=parts.path.lstrip("/"),
            password=parts.password,
        )

    return create


@pytest.fixture(params=["pg8000", "socket_handed_over", "cloud_sql_connector"])
def through_relay(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Database, TcpRelay, list[socket.socket]]]:
    """The project's Database (one pooled connection) through a relay, opened each way."""
    environment = {
        "DB_SOCKET_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
        "DB_POOL_SIZE": "1",
        "DB_POOL_TIMEOUT_SECONDS": "2",
    }
    opened: list[socket.socket] = []
    if request.param == "cloud_sql_connector":
        cloud_sql = FakeCloudSql(server_url()).start()
        cloud_sql.dial_here(monkeypatch)
        connector = cloud_sql.connector()
        settings = load_settings("cli", {**environment, "CLOUD_SQL_INSTANCE": cloud_sql.instance})
        database = database_from_creator(cloud_sql_creator(settings, connector), settings)
        try:
            yield database, cloud_sql.proxy, opened
        finally:
            database.dispose()
            connector.close()
            cloud_sql.stop()
        return
    relay = TcpRelay(server_url()).start()
    settings = load_settings("cli", {**environment, "DATABASE_URL": relay.url()})
    if request.param == "pg8000":
        database = create_database(settings)
    else:
        database = database_from_creator(connector_style_creator(relay.url(), opened), settings)
    try:
        yield database, relay, opened
    finally:
        database.dispose()
        relay.stop()


def test_every_socket_gets_the_timeout_and_keepalive(
    through_relay: tuple[Database, TcpRelay, list[socket.socket]],
) -> None:
    database, _, opened = through_relay
    with database.engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        sock: socket.socket = dbapi._usock
        assert sock.gettimeout() == TIMEOUT_SECONDS
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            tcp = socket.IPPROTO_TCP
            assert sock.getsockopt(tcp, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE_SECONDS
            assert sock.getsockopt(tcp, socket.TCP_KEEPCNT) == KEEPALIVE_COUNT
    if opened:  # the connector's way: the socket pg8000 was handed is the one now hardened
        assert opened == [sock]


@pytest.mark.timeout(30)  # without the socket timeout, the connector's way hangs right here
def test_a_silent_network_fails_the_statement_in_time_and_frees_the_pool_slot(
    through_relay: tuple[Database, TcpRelay, list[socket.socket]],
) -> None:
    database, relay, _ = through_relay
    with pytest.raises(DatabaseUnavailable), database.transaction() as conn:
        first_pid = conn.execute(_BACKEND_PID).scalar_one()
        relay.stall()  # mid-transaction: the peer stops answering, the socket stays open
        started = time.monotonic()
        try:
            conn.execute(text("SELECT 1"))
        finally:
            waited = time.monotonic() - started
    assert TIMEOUT_SECONDS * 0.9 <= waited < TIMEOUT_SECONDS + 2, waited
    assert database.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    # The only pool slot is free again: the next transaction gets a fresh, working connection.
    with database.transaction() as conn:
        assert conn.execute(_BACKEND_PID).scalar_one() != first_pid
