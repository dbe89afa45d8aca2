"""Row level security as Supabase's PostgREST applies it: role + request.jwt.claims."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import ProgrammingError

from genjobs import store
from genjobs.db import Database

OWNER = uuid.uuid4()
STRANGER = uuid.uuid4()


def act_as(conn: Connection, role: str, sub: uuid.UUID | None) -> None:
    """What PostgREST does per request: switch role and expose the JWT claims."""
    claims = json.dumps({"sub": str(sub), "role": role} if sub else {"role": role})
    conn.execute(text("SELECT set_config('request.jwt.claims', :c, true)"), {"c": claims})
    conn.execute(text(f"SET LOCAL ROLE {role}"))


@pytest.fixture
def owned_job(clean_db: Database) -> uuid.UUID:
    with clean_db.transaction() as conn:
        job = store.insert_job(
            conn,
            store.NewJob(OWNER, "summarize", {"text": "x"}, {}, None, "h", None, 5),
        )
    assert job is not None
    return job.id


def count_visible(db: Database, role: str, sub: uuid.UUID | None, table: str) -> int:
    with db.transaction() as conn:
        act_as(conn, role, sub)
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


@pytest.mark.parametrize("table", ["generations", "generation_logs"])
def test_authenticated_users_read_only_their_own_rows(
    clean_db: Database, owned_job: uuid.UUID, table: str
) -> None:
    assert count_visible(clean_db, "authenticated", OWNER, table) == 1
    assert count_visible(clean_db, "authenticated", STRANGER, table) == 0


def test_authenticated_users_cannot_write(clean_db: Database, owned_job: uuid.UUID) -> None:
    for statement in (
        "UPDATE generations SET ai_status = 'succeeded'",
        "DELETE FROM generations",
        "INSERT INTO generations (user_id, task, input) "
        "VALUES ((SELECT auth.uid()), 'summarize', '{}')",
    ):
        with (
            pytest.raises(ProgrammingError, match="permission denied"),
            clean_db.transaction() as conn,
        ):
            act_as(conn, "authenticated", OWNER)
            conn.execute(text(statement))


@pytest.mark.parametrize("table", ["generations", "generation_logs", "generation_daily_metrics"])
def test_anon_reads_nothing(clean_db: Database, owned_job: uuid.UUID, table: str) -> None:
    with pytest.raises(ProgrammingError, match="permission denied"):
        count_visible(clean_db, "anon", None, table)


def test_metrics_views_are_for_the_backend_only(clean_db: Database, owned_job: uuid.UUID) -> None:
    with pytest.raises(ProgrammingError, match="permission denied"):
        count_visible(clean_db, "authenticated", OWNER, "generation_daily_metrics")
    assert count_visible(clean_db, "service_role", None, "generation_daily_metrics") == 1
