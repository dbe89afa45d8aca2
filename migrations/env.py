"""Alembic environment: the connection comes from the project's settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from genjobs.db import create_database
from genjobs.settings import load_settings
from genjobs.tables import Base

target_metadata = Base.metadata


def run(connection: Connection) -> None:
    """Run migrations on one connection, inside one transaction."""
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
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
