"""Migrations upgrade, downgrade and upgrade again on real Postgres; models match them."""

from __future__ import annotations

import uuid

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect, text

from devstack.database import admin_execute, with_database
from genjobs.db import pg8000_url
from tests.conftest import ROOT, SHIM, server_url


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
            expected = {"generations", "generation_logs"} if target == "head" else set()
            assert tables - {"alembic_version"} == expected
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
