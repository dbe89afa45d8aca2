"""Migrations upgrade, downgrade and upgrade again on real Postgres; models match them; the
version table moves out of the API-exposed schema without losing its revision."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, inspect, text

from devstack.database import admin_execute, with_database
from genjobs.db import pg8000_url
from tests.conftest import ROOT, SHIM, server_url

HEAD = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()


def test_upgrade_downgrade_upgrade_and_no_drift() -> None:
    base = server_url()
    name = f"genjobs_migrations_{uuid.uuid4().hex[:8]}"
    admin_execute(base, f'CREATE DATABASE "{name}"')
    url, args = pg8000_url(with_database(base, name))
    engine = create_engine(url, connect_args=args)
    config = Config(str(ROOT / "alembic.ini"))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(SHIM.read_text())
            # On Supabase the publication exists: the migration must add the table to it.
            conn.exec_driver_sql("CREATE PUBLICATION supabase_realtime")
        for target in ("head", "base", "head"):
            with engine.begin() as conn:
                config.attributes["connection"] = conn
                if target == "base":
                    command.downgrade(config, target)
                else:
                    command.upgrade(config, target)
            tables = set(inspect(engine).get_table_names())
            expected = (
                {"generations", "generation_logs", "generation_deltas"}
                if target == "head"
                else set()
            )
            assert tables == expected  # Alembic's own table is not in public
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.check(config)  # raises when models and migrations disagree
            published = (
                conn.execute(
                    text(
                        "SELECT tablename FROM pg_publication_tables "
                        "WHERE pubname = 'supabase_realtime'"
                    )
                )
                .scalars()
                .all()
            )
            views = set(inspect(conn).get_view_names())
        assert published == ["generations"]
        assert {"generation_daily_metrics", "generation_error_codes"} <= views
    finally:
        engine.dispose()
        admin_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def supabase_like_database() -> Iterator[Engine]:
    """A new database with the shim (Supabase's roles and default privileges); dropped after."""
    base = server_url()
    name = f"genjobs_layout_{uuid.uuid4().hex[:8]}"
    admin_execute(base, f'CREATE DATABASE "{name}"')
    url, args = pg8000_url(with_database(base, name))
    engine = create_engine(url, connect_args=args)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(SHIM.read_text())
        yield engine
    finally:
        engine.dispose()
        admin_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(engine: Engine, target: str) -> None:
    """`alembic upgrade target` on the engine's database, in one transaction."""
    config = Config(str(ROOT / "alembic.ini"))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, target)


def stamp_old_layout(engine: Engine, revision: str) -> None:
    """Put the deployment back as the old env.py left it: Alembic's default table in public."""
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA genjobs CASCADE"))
        script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
        MigrationContext.configure(conn).stamp(script, revision)


def version_tables(conn: Connection) -> dict[str, list[str]]:
    """Each alembic_version table in the database, with its revisions."""
    found: dict[str, list[str]] = {}
    for schema in conn.execute(
        text(
            "SELECT table_schema FROM information_schema.tables "
            "WHERE table_name = 'alembic_version' ORDER BY 1"
        )
    ).scalars():
        rows = conn.execute(text(f'SELECT version_num FROM "{schema}".alembic_version'))
        found[schema] = list(rows.scalars())
    return found


def test_an_old_layout_deployment_keeps_its_revision_and_leaves_public() -> None:
    with supabase_like_database() as engine:
        migrate(engine, "0003")
        stamp_old_layout(engine, "0003")
        with engine.begin() as conn:
            assert version_tables(conn) == {"public": ["0003"]}
            # What Supabase's advisor flagged: anon reads and deletes it through the Data API.
            assert conn.execute(
                text("SELECT has_table_privilege('anon', 'public.alembic_version', 'DELETE')")
            ).scalar_one()
        migrate(engine, "head")
        with engine.begin() as conn:
            assert version_tables(conn) == {"genjobs": [HEAD]}
            granted = conn.execute(
                text(
                    "SELECT grantee FROM information_schema.role_table_grants "
                    "WHERE table_schema = 'genjobs' AND table_name = 'alembic_version' "
                    "AND grantee IN ('anon', 'authenticated', 'service_role')"
                )
            ).scalars()
            assert list(granted) == []


def test_another_projects_version_table_in_public_is_left_alone() -> None:
    with supabase_like_database() as engine:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)"))
            conn.execute(text("INSERT INTO alembic_version VALUES ('f00dcafe')"))
        migrate(engine, "head")
        with engine.begin() as conn:
            assert version_tables(conn) == {"public": ["f00dcafe"], "genjobs": [HEAD]}


def test_two_version_tables_of_ours_stop_the_upgrade() -> None:
    with supabase_like_database() as engine:
        migrate(engine, "0003")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE public.alembic_version (version_num varchar(32))"))
            conn.execute(text("INSERT INTO public.alembic_version VALUES ('0002')"))
        with pytest.raises(SystemExit, match=r"both public\.alembic_version and genjobs"):
            migrate(engine, "head")
        with engine.begin() as conn:
            assert version_tables(conn) == {"public": ["0002"], "genjobs": ["0003"]}
