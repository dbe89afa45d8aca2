"""The local database: DATABASE_URL or embedded Postgres, with Supabase's shim and migrations."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from genjobs.db import embedded_database_url, pg8000_url
from genjobs.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
SHIM = Path(__file__).with_name("supabase_shim.sql")


def local_database_url() -> str:
    """DATABASE_URL if set, else the embedded server (started on first use)."""
    given = os.environ.get("DATABASE_URL")
    if given:
        return given
    return embedded_database_url(load_settings("cli").embedded_pg_dir)


def prepare_database(url: str | None = None, *, apply_shim: bool = True) -> str:
    """Create what Supabase provides (when missing), then migrate to head; return the URL."""
    url = url or local_database_url()
    pg_url, connect_args = pg8000_url(url)
    engine = create_engine(pg_url, connect_args=connect_args)
    try:
        if apply_shim:
            with engine.begin() as conn:
                has_uid = conn.execute(
                    text("SELECT to_regprocedure('auth.uid()') IS NOT NULL")
                ).scalar_one()
                if not has_uid:
                    conn.exec_driver_sql(SHIM.read_text())
        config = Config(str(ROOT / "alembic.ini"))
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    finally:
        engine.dispose()
    return url


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def admin_execute(url: str, *statements: str) -> None:
    """Run statements outside a transaction (CREATE/DROP DATABASE)."""
    pg_url, connect_args = pg8000_url(url)
    engine = create_engine(pg_url, connect_args=connect_args, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()
