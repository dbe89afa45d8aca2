"""Jobs written straight into the database in any state, and a publisher that records."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from genjobs.db import Database

_INSERT = text(
    """
    INSERT INTO generations
      (id, user_id, task, input, ai_status, error, attempts, max_attempts, model,
       prompt_tokens, completion_tokens, trace_id, created_at, updated_at, started_at,
       finished_at)
    VALUES
      (:id, :user_id, :task, CAST(:input AS jsonb), :status, CAST(:error AS jsonb), :attempts,
       :max_attempts, :model, :prompt_tokens, :completion_tokens, :trace_id,
       coalesce(:created_at, now()), now(), :started_at,
       coalesce(:finished_at, CASE WHEN :status IN ('succeeded', 'failed', 'cancelled')
                                   THEN now() END))
    """
)


def insert_job(
    conn: Connection,
    *,
    status: str = "failed",
    task: str = "summarize",
    error_code: str | None = "dead_lettered",
    attempts: int = 5,
    user_id: uuid.UUID | None = None,
    created_at: datetime | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    model: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    text_input: str = "replay me",
    trace_id: str | None = None,
) -> uuid.UUID:
    """A job row as the pipeline would have left it (attempts used, error recorded)."""
    job_id = uuid.uuid4()
    error = (
        {"code": error_code, "message": f"{error_code} (test)"}
        if status == "failed" and error_code
        else None
    )
    conn.execute(
        _INSERT,
        {
            "id": job_id,
            "user_id": user_id or uuid.uuid4(),
            "task": task,
            "input": json.dumps({"text": f"{text_input} {job_id.hex}"}),
            "status": status,
            "error": json.dumps(error) if error else None,
            "attempts": attempts,
            "max_attempts": max(attempts, 5),
            "model": model,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "trace_id": trace_id,
            "created_at": created_at,
            "started_at": started_at,
            "finished_at": finished_at,
        },
    )
    return job_id


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
