"""No connection hangs forever: a network gone silent fails the statement, frees the pool slot.

Both ways a connection is opened are exercised through a real TCP relay in front of real
Postgres: pg8000 opening the socket itself (DATABASE_URL), and a socket opened by someone else
and handed to pg8000 with `sock=`, which is what the Cloud SQL connector does (its own pg8000
helper is called here; only the TLS to Google's server-side proxy is missing).
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

from genjobs.db import Database, create_database, database_from_creator
from genjobs.db_transport import KEEPALIVE_COUNT, KEEPALIVE_IDLE_SECONDS
from genjobs.errors import DatabaseUnavailable
from genjobs.settings import load_settings
from tests.conftest import server_url
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


@pytest.fixture
def relay() -> Iterator[TcpRelay]:
    """A loopback relay in front of the test server."""
    relay = TcpRelay(server_url()).start()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture(params=["pg8000", "connector"])
def through_relay(
    request: pytest.FixtureRequest, relay: TcpRelay
) -> Iterator[tuple[Database, TcpRelay, list[socket.socket]]]:
    """The project's Database (one pooled connection) through the relay, opened either way."""
    settings = load_settings(
        "cli",
        {
            "DATABASE_URL": relay.url(),
            "DB_SOCKET_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS),
            "DB_POOL_SIZE": "1",
            "DB_POOL_TIMEOUT_SECONDS": "2",
        },
    )
    opened: list[socket.socket] = []
    if request.param == "pg8000":
        database = create_database(settings)
    else:
        database = database_from_creator(connector_style_creator(relay.url(), opened), settings)
    try:
        yield database, relay, opened
    finally:
        database.dispose()


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
