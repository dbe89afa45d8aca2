"""Jobs for tests: submitted the way the api submits them, or written in any state."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from genjobs import store
from genjobs.db import Database
from genjobs.jobs import MAX_ATTEMPTS, Job

TEST_USER = uuid.UUID("00000000-0000-4000-8000-0000000000f1")


def new_job(
    text_: str = "hello",
    *,
    task: str = "summarize",
    user_id: uuid.UUID = TEST_USER,
    raw_input: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    trace_id: str | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    reserved_tokens: int = 0,
) -> store.NewJob:
    """A validated submission, as the api hands it to store.insert_job."""
    return store.NewJob(
        user_id=user_id,
        task=task,
        input=raw_input or {"text": text_},
        metadata={},
        idempotency_key=idempotency_key,
        request_hash="h",
        trace_id=trace_id,
        max_attempts=max_attempts,
        reserved_tokens=reserved_tokens,
    )


class JobFactory:
    """The `job_factory` fixture: call it to submit a queued job, `.row()` for any state."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def __call__(self, text_: str = "hello", *, publish_failed: bool = False, **kwargs: Any) -> Job:
        """A job as a submit stores it; `publish_failed`: as its failed publish leaves it."""
        with self.db.transaction() as conn:
            job = store.insert_job(conn, new_job(text_, **kwargs))
            assert job is not None
            if publish_failed:
                store.unmark_published(conn, job.id)
                job = store.get_job(conn, job.id)
        assert job is not None
        return job

    def row(self, **kwargs: Any) -> uuid.UUID:
        """A job row as the pipeline would have left it (see insert_row)."""
        with self.db.transaction() as conn:
            return insert_row(conn, **kwargs)


_INSERT_ROW = text(
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


def insert_row(
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
    """A job row in any state, without its log rows (attempts used, error recorded)."""
    job_id = uuid.uuid4()
    error = (
        {"code": error_code, "message": f"{error_code} (test)"}
        if status == "failed" and error_code
        else None
    )
    conn.execute(
        _INSERT_ROW,
        {
            "id": job_id,
            "user_id": user_id or uuid.uuid4(),
            "task": task,
            "input": json.dumps({"text": f"{text_input} {job_id.hex}"}),
            "status": status,
            "error": json.dumps(error) if error else None,
            "attempts": attempts,
            "max_attempts": max(attempts, MAX_ATTEMPTS),
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
