"""pg8000 with libpq's round trips: one per statement, instead of three (and a BEGIN).

pg8000 (1.31) sends Parse, then Describe, then Bind/Execute, each followed by Sync and a wait
for the server: three round trips per statement, which on the submit path cost more CPU in
both the function and Postgres than the SQL itself. libpq's PQexecParams pipelines Parse,
Bind, Describe (portal), Execute and one Sync: the same messages answered in one round trip.
With a single Sync the group is also one unit for a transaction-mode pooler (PgBouncer,
Supavisor), which cannot hand the Bind to another server connection than the Parse. The
BEGIN pg8000 sends on its own before a transaction's first statement travels with it.

pg8000's legacy cursor also re-scans the SQL text character by character on every execute
to turn `%s` into `$1`; the result only depends on the text, so it is cached. And timestamptz
values are read with `datetime.fromisoformat` instead of `strptime`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from struct import Struct
from typing import Any

import pg8000.dbapi
import pg8000.legacy
from pg8000 import converters, core
from sqlalchemy import Connection

log = logging.getLogger(__name__)

_COUNT = Struct("!h")
_LENGTH = Struct("!i")

# The pg8000 internals this module builds on (checked at install; pinned in requirements.txt).
_CORE_NAMES = (
    "_create_message",
    "_flush",
    "Context",
    "InterfaceError",
    "BIND",
    "DESCRIBE",
    "EXECUTE_MSG",
    "IN_TRANSACTION",
    "NULL_BYTE",
    "PARSE",
    "PORTAL",
    "QUERY",
    "SYNC_MSG",
)
_METHOD_PARAMETERS = {
    "execute_unnamed": ("self", "statement", "vals", "oids", "stream"),
    "execute_simple": ("self", "statement"),
    "handle_messages": ("self", "context"),
}
_CONNECTION_ATTRIBUTES = (
    "_sock",
    "_client_encoding",
    "_transaction_status",
    "py_types",
    "register_in_adapter",
)
_TIMESTAMPTZ = 1184  # the type's oid


def install(dbapi_connection: Any) -> None:
    """Make this connection send each statement, and the BEGIN before it, in one round trip."""
    missing = missing_internals(dbapi_connection)
    if missing:
        _warn_once(tuple(missing))
        return  # stock pg8000: three round trips per statement, same results
    pipeline = _Pipeline(dbapi_connection)
    dbapi_connection.execute_unnamed = pipeline.execute_unnamed
    dbapi_connection.execute_simple = pipeline.execute_simple
    dbapi_connection.register_in_adapter(_TIMESTAMPTZ, _timestamptz_in)
    # Process-wide and the same on every call: one conversion cache serves all connections.
    pg8000.legacy.convert_paramstyle = _cached_convert_paramstyle


def missing_internals(dbapi_connection: Any) -> list[str]:
    """What this module relies on that this pg8000 (or this connection) lacks."""
    missing = [f"pg8000.core.{name}" for name in _CORE_NAMES if not hasattr(core, name)]
    if not hasattr(converters, "make_params"):
        missing.append("pg8000.converters.make_params")
    for module in (pg8000.legacy, pg8000.dbapi):
        if not callable(getattr(module, "convert_paramstyle", None)):
            missing.append(f"{module.__name__}.convert_paramstyle")
    for name, expected in _METHOD_PARAMETERS.items():
        method = getattr(type(dbapi_connection), name, None)
        if not callable(method) or _parameters(method) != expected:
            missing.append(f"Connection.{name}{expected}")
    missing += [
        f"Connection.{name}"
        for name in _CONNECTION_ATTRIBUTES
        if not hasattr(dbapi_connection, name)
    ]
    return missing


def _parameters(method: Any) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return ()


@functools.cache
def _warn_once(missing: tuple[str, ...]) -> None:
    log.warning(
        "pg8000 lacks what the one-round-trip exchange needs (%s): using stock pg8000",
        ", ".join(missing),
    )


def _timestamptz_in(data: str) -> Any:
    """A timestamptz column: `datetime.fromisoformat` reads Postgres's ISO output about 80 times
    faster than pg8000's strptime (15 µs a value; a job's row has up to eight); pg8000's own parser
    takes what it cannot (infinity, BC dates, years past 9999)."""
    try:
        return datetime.fromisoformat(data)
    except ValueError:
        return converters.timestamptz_in(data)


@functools.cache
def _tail() -> bytes:
    """Describe (portal), Execute, Sync: what follows every Parse and Bind."""
    describe_portal = core._create_message(core.DESCRIBE, core.PORTAL + core.NULL_BYTE)
    tail: bytes = describe_portal + core.EXECUTE_MSG + core.SYNC_MSG
    return tail


# What pg8000's legacy cursor sends before the first statement of a transaction.
_IMPLICIT_BEGIN = "begin transaction"


@functools.cache
def _begin_message() -> bytes:
    message: bytes = core._create_message(core.QUERY, _IMPLICIT_BEGIN.encode() + core.NULL_BYTE)
    return message


class _Pipeline:
    """Replaces one connection's `execute_unnamed` and `execute_simple`.

    Some messages are held back and sent with the next statement, their answers read before
    its own: the BEGIN (pg8000 always sends a statement right after it; the connection already
    reports itself in a transaction, so a rollback before that statement still sends what ends
    it), and statements run under `answered_with_next`.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.held: list[tuple[bytes, Any]] = []  # (message, its context), in order
        self.answer_later = False

    def execute_simple(self, statement: str) -> Any:
        if statement == _IMPLICIT_BEGIN and not self.held:  # a BEGIN is always held first
            self.connection._transaction_status = core.IN_TRANSACTION
            return self._hold(statement, _begin_message())
        message = core._create_message(
            core.QUERY, statement.encode(self.connection._client_encoding) + core.NULL_BYTE
        )
        return self._exchange(statement, message)

    def execute_unnamed(
        self, statement: str, vals: Any = (), oids: Any = (), stream: Any = None
    ) -> Any:
        connection = self.connection
        if stream is not None:  # COPY keeps pg8000's own exchange
            self._read(self._send(b""))
            return type(connection).execute_unnamed(connection, statement, vals, oids, stream)
        encoding = connection._client_encoding
        parse = bytearray(core.NULL_BYTE + statement.encode(encoding) + core.NULL_BYTE)
        parse += _COUNT.pack(len(oids))
        for oid in oids:
            parse += _LENGTH.pack(0 if oid == -1 else oid)
        params = converters.make_params(connection.py_types, vals)
        # Unnamed portal and statement; parameters and results in text format.
        bind = bytearray(
            core.NULL_BYTE + core.NULL_BYTE + _COUNT.pack(0) + _COUNT.pack(len(params))
        )
        for value in params:
            if value is None:
                bind += _LENGTH.pack(-1)
            else:
                encoded = value.encode(encoding)
                bind += _LENGTH.pack(len(encoded)) + encoded
        bind += _COUNT.pack(0)
        message = core._create_message(core.PARSE, bytes(parse))
        message += core._create_message(core.BIND, bytes(bind)) + _tail()
        if self.answer_later:
            return self._hold(statement, message)
        return self._exchange(statement, message)

    def _hold(self, statement: str, message: bytes) -> Any:
        """Keep `message` for the next write; what the caller gets back has no rows."""
        context = core.Context(statement)
        self.held.append((message, context))
        return context

    def _exchange(self, statement: str, message: bytes) -> Any:
        context = core.Context(statement)
        self._read([*self._send(message), context])
        return context

    def _read(self, contexts: list[Any]) -> None:
        """Read every answer, even after an error (the stream stays aligned); raise the first."""
        first_error: Exception | None = None
        for context in contexts:
            try:
                self.connection.handle_messages(context)
            except Exception as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    def _send(self, message: bytes) -> list[Any]:
        """Write what is held, then `message`, and flush; the held statements' contexts."""
        held, self.held = self.held, []
        message = b"".join(m for m, _ in held) + message
        waiting = [context for _, context in held]
        if not message:
            return waiting
        sock = self.connection._sock
        if sock is None:
            raise core.InterfaceError("connection is closed")
        try:
            sock.write(message)
        except ValueError as error:  # the socket file was closed under us
            raise core.InterfaceError("connection is closed") from error
        except OSError as error:
            raise core.InterfaceError("network error") from error
        core._flush(sock)
        return waiting


@contextmanager
def answered_with_next(conn: Connection) -> Iterator[None]:
    """Statements run in the block are sent with the next one, saving a round trip each.

    For statements whose rows nobody reads (a lock): their results have no rows, and an error
    in one is raised by the next statement, which then fails too (the transaction is
    aborted). Each still runs alone, in order, with a snapshot of its own. On stock pg8000
    (see `install`) the block changes nothing.
    """
    pipeline = getattr(conn.connection.dbapi_connection, "execute_unnamed", None)
    owner = getattr(pipeline, "__self__", None)
    if not isinstance(owner, _Pipeline):
        yield
        return
    owner.answer_later = True
    try:
        yield
    finally:
        owner.answer_later = False


@functools.lru_cache(maxsize=1024)
def _format_to_numeric(query: str) -> str:
    converted: str = pg8000.dbapi.convert_paramstyle("format", query, ())[0]
    return converted


def _cached_convert_paramstyle(style: str, query: str, args: Any) -> tuple[str, Any]:
    if style == "format":  # SQLAlchemy's pg8000 dialect: the values pass through unchanged
        return _format_to_numeric(query), args
    result: tuple[str, Any] = pg8000.dbapi.convert_paramstyle(style, query, args)
    return result
