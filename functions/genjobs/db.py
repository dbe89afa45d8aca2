"""Database engine and transactions (pg8000; every statement inside an explicit transaction)."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc

from genjobs import pg_wire
from genjobs.db_transport import harden_socket, tls_connect_args
from genjobs.errors import ConfigurationError, DatabaseUnavailable
from genjobs.settings import Settings

log = logging.getLogger(__name__)

# Connection-level failures: the database is down, restarting or unreachable.
_UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300", "08000", "08001", "08003", "08006"}


class Database:
    """A small pool and explicit transactions; nothing else holds connections."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction (BEGIN … COMMIT): the only way statements reach the pooler."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa_exc.DBAPIError as error:
            if is_unavailable(error):
                raise DatabaseUnavailable("the database is unavailable; retry shortly") from error
            raise
        except (sa_exc.TimeoutError, OSError) as error:
            # Pool exhausted, or pg8000's raw socket errors while the server goes away.
            raise DatabaseUnavailable("the database is unavailable; retry shortly") from error

    def dispose(self) -> None:
        """Close pooled connections (tests, shutdown)."""
        self.engine.dispose()


def is_unavailable(error: sa_exc.DBAPIError) -> bool:
    """True for errors a retry can fix: connection lost or refused, server shutting down."""
    if error.connection_invalidated or isinstance(error, sa_exc.InterfaceError):
        return True
    original = error.orig
    args = getattr(original, "args", ())
    sqlstate = args[0].get("C") if args and isinstance(args[0], dict) else None
    if sqlstate in _UNAVAILABLE_SQLSTATES:
        return True
    # pg8000 reports socket failures as InterfaceError/OperationalError without a SQLSTATE.
    return sqlstate is None and isinstance(error, sa_exc.OperationalError)


def create_database(settings: Settings) -> Database:
    """The engine for DATABASE_URL, a Cloud SQL instance, or (locally) embedded Postgres."""
    if settings.database_url is not None:
        url, connect_args = pg8000_url(settings.database_url.reveal())
    elif settings.cloud_sql_instance:
        return database_from_creator(cloud_sql_creator(settings), settings)
    elif settings.is_local:
        url, connect_args = pg8000_url(embedded_database_url(settings.embedded_pg_dir))
    else:
        raise ConfigurationError("no database configured: set DATABASE_URL or CLOUD_SQL_INSTANCE")
    connect_args["timeout"] = settings.db_socket_timeout_seconds
    return _database(url, settings, connect_args=connect_args)


def database_from_creator(creator: Callable[[], Any], settings: Settings) -> Database:
    """The engine over connections something else opens (the Cloud SQL connector's sockets)."""
    return _database("postgresql+pg8000://", settings, creator=creator)


def _database(url: str, settings: Settings, **connect: Any) -> Database:
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_pre_ping=True,
        pool_recycle=300,
        **connect,
    )
    timeout = settings.db_socket_timeout_seconds

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        harden_socket(dbapi_connection, timeout)
        pg_wire.install(dbapi_connection)

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "checkin", _note_return)
    ping = _pinger(engine.dialect.do_ping)
    engine.dialect.do_ping = ping  # type: ignore[method-assign, assignment]
    return Database(engine)


# A connection back in the pool within this long is trusted without the pre-ping: under load
# each checkout would otherwise cost a round trip. One idle longer (a pooler's idle timeout, a
# restart while quiet) is pinged, and replaced if dead. A restart inside the window fails one
# transaction per pooled connection (503, or a nack), and that failure recycles the pool.
PING_AFTER_IDLE_SECONDS = 1.0
_RETURNED_AT = "_genjobs_returned_at"


def _note_return(dbapi_connection: Any, _record: Any) -> None:
    if dbapi_connection is not None:  # None: invalidated on its way back
        setattr(dbapi_connection, _RETURNED_AT, time.monotonic())


def _pinger(ping: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def ping_if_idle(dbapi_connection: Any) -> bool:
        returned_at = getattr(dbapi_connection, _RETURNED_AT, None)
        if returned_at is not None and time.monotonic() - returned_at < PING_AFTER_IDLE_SECONDS:
            return True
        return ping(dbapi_connection)

    return ping_if_idle


def pg8000_url(url: str) -> tuple[str, dict[str, Any]]:
    """Turn a libpq-style URL (postgres://…?sslmode=require) into pg8000's URL and arguments."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if scheme not in {"postgres", "postgresql"}:
        raise ConfigurationError("DATABASE_URL must be a postgres:// or postgresql:// URL")
    query = dict(parse_qsl(parts.query))
    # libpq's default is prefer; to loopback, where TLS buys nothing, we skip the SSLRequest.
    sslmode = query.pop("sslmode", "disable" if parts.hostname in _LOCAL_HOSTS else "prefer")
    sslrootcert = query.pop("sslrootcert", None)
    if "host" in query and query["host"].startswith("/"):
        # libpq's socket directory form, as printed by pgserver. As in libpq, a Unix socket
        # never carries TLS, whatever sslmode says.
        socket_path = f"{query.pop('host')}/.s.PGSQL.{parts.port or 5432}"
        tls_connect_args(sslmode, sslrootcert)  # still reject a misspelt mode
        connect_args: dict[str, Any] = {"unix_sock": socket_path, "ssl_context": False}
    else:
        connect_args = tls_connect_args(sslmode, sslrootcert)
    rebuilt = urlunsplit(("postgresql+pg8000", parts.netloc, parts.path, urlencode(query), ""))
    return rebuilt, connect_args


_LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1"}


def embedded_database_url(data_dir: str) -> str:
    """Start (or join) the embedded pgserver Postgres; data stays in a git-ignored folder."""
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir on import, which warns when
        # XDG_RUNTIME_DIR is unset (containers, CI, ssh): harmless, it falls back to /tmp.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        try:
            from pgserver import get_server  # type: ignore[attr-defined]
        except ImportError as error:
            raise ConfigurationError(
                "no DATABASE_URL and the embedded Postgres (pgserver) is not installed"
            ) from error
        server = get_server(str(path), cleanup_mode=None)
    uri: str = server.get_uri()
    return uri


def cloud_sql_creator(settings: Settings, connector: Any = None) -> Callable[[], Any]:
    """Connections through the Cloud SQL connector (a test may pass one of its own)."""
    if connector is None:
        # Imported here: only Cloud SQL deployments pay for the connector at cold start.
        from google.cloud.sql.connector import Connector

        connector = Connector(refresh_strategy="lazy")
    instance = settings.cloud_sql_instance or ""
    password = settings.db_password.reveal() if settings.db_password else None

    def connect() -> Any:
        return connector.connect(
            instance,
            "pg8000",
            user=settings.db_user,
            password=password,
            db=settings.db_name,
            enable_iam_auth=settings.db_iam_auth,
        )

    return connect
