"""Reading jobs back in integration tests."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from genjobs import store
from genjobs.db import Database
from genjobs.jobs import Job


def reload(db: Database, job_id: uuid.UUID) -> Job:
    """The job as stored now."""
    with db.transaction() as conn:
        job = store.get_job(conn, job_id)
    assert job is not None
    return job


def events(db: Database, job_id: uuid.UUID) -> list[str]:
    """The job's logged events, in order."""
    with db.transaction() as conn:
        rows = conn.execute(
            text("SELECT event FROM generation_logs WHERE generation_id = :id ORDER BY id"),
            {"id": job_id},
        )
        return [r.event for r in rows]
