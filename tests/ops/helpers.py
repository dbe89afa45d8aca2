"""Reading jobs back, and a publisher that records."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from sqlalchemy import text

from genjobs.db import Database


def job_row(db: Database, job_id: uuid.UUID) -> dict[str, Any]:
    """The job's row as a dict."""
    with db.transaction() as conn:
        row = conn.execute(text("SELECT * FROM generations WHERE id = :id"), {"id": job_id})
        return dict(row.mappings().one())


def log_rows(db: Database, job_id: uuid.UUID) -> list[dict[str, Any]]:
    """The job's generation_logs rows, oldest first."""
    with db.transaction() as conn:
        rows = conn.execute(
            text("SELECT * FROM generation_logs WHERE generation_id = :id ORDER BY id"),
            {"id": job_id},
        )
        return [dict(r) for r in rows.mappings()]


def events(db: Database, job_id: uuid.UUID) -> list[str]:
    """The job's events, oldest first."""
    return [row["event"] for row in log_rows(db, job_id)]


class RecordingPublisher:
    """A JobPublisher that records what it publishes, or fails when told to."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.published: list[tuple[uuid.UUID, dict[str, str]]] = []
        self._lock = threading.Lock()

    def publish(self, job_id: uuid.UUID, attributes: dict[str, str]) -> str:
        """Record, return a fake message id."""
        if self.fail:
            raise ConnectionError("Pub/Sub is unreachable (test)")
        with self._lock:
            self.published.append((job_id, dict(attributes)))
            return f"test-{len(self.published)}"

    def ids(self) -> list[uuid.UUID]:
        """Job ids published, in order."""
        return [job_id for job_id, _ in self.published]
