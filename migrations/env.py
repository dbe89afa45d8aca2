"""Alembic environment: the connection comes from the project's settings."""

from __future__ import annotations

import logging

from alembic import context
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, column, select, table, text

from genjobs.db import create_database
from genjobs.models import Base
from genjobs.settings import load_settings

target_metadata = Base.metadata

# Supabase's Data API exposes `public` (and grants every new table there to anon and
# authenticated): Alembic's bookkeeping lives in a schema it does not expose.
VERSION_SCHEMA = "genjobs"
VERSION_TABLE = "alembic_version"
log = logging.getLogger("alembic.env")


def revoke_api_roles(connection: Connection) -> None:
    """No Supabase API role may read or change the version table (grants survive SET SCHEMA)."""
    roles = connection.execute(
        text(
            "SELECT rolname FROM pg_roles "
            "WHERE rolname IN ('anon', 'authenticated', 'service_role') ORDER BY rolname"
        )
    ).scalars()
    names = ", ".join(roles)
    if names:
        connection.execute(text(f"REVOKE ALL ON {VERSION_SCHEMA}.{VERSION_TABLE} FROM {names}"))


def move_legacy_version_table(connection: Connection) -> None:
    """Move a version table the old layout left in `public`, keeping its revision."""
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {VERSION_SCHEMA}"))
    legacy = connection.execute(text(f"SELECT to_regclass('public.{VERSION_TABLE}')")).scalar()
    if legacy is None:
        return
    legacy_table = table(VERSION_TABLE, column("version_num"), schema="public")
    versions = set(connection.execute(select(legacy_table.c.version_num)).scalars())
    scripts = ScriptDirectory.from_config(context.config)
    ours = {script.revision for script in scripts.walk_revisions()}
    if not versions <= ours:
        return  # another project's Alembic table: not ours to move
    current = connection.execute(
        text(f"SELECT to_regclass('{VERSION_SCHEMA}.{VERSION_TABLE}')")
    ).scalar()
    if current is not None:
        raise SystemExit(
            f"both public.{VERSION_TABLE} and {VERSION_SCHEMA}.{VERSION_TABLE} exist: "
            "keep the one with the true revision, drop the other, and run again"
        )
    connection.execute(text(f"ALTER TABLE public.{VERSION_TABLE} SET SCHEMA {VERSION_SCHEMA}"))
    revoke_api_roles(connection)
    log.info(
        "moved public.%s to %s (revision %s)", VERSION_TABLE, VERSION_SCHEMA, versions or "base"
    )


def run(connection: Connection) -> None:
    """Run migrations on one connection, inside one transaction."""
    move_legacy_version_table(connection)
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        version_table=VERSION_TABLE,
        version_table_schema=VERSION_SCHEMA,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    """Use a connection handed in by the caller (tests) or open one from settings."""
    given = context.config.attributes.get("connection")
    if given is not None:
        run(given)
        return
    if context.is_offline_mode():
        raise SystemExit("offline SQL generation is not supported: migrations need a database")
    database = create_database(load_settings("cli"))
    try:
        with database.engine.connect() as connection:
            run(connection)
            connection.commit()
    finally:
        database.dispose()


main()
