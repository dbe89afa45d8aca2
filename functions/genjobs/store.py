"""Every read and guarded status change of a job: one statement each, with its log row."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, TextClause, text

from genjobs.errors import InvalidRequest
from genjobs.jobs import Job
from genjobs.statuses import Event, Status

# Inserted by each transition's CTE: the status change and its event are one atomic write.
LOG_COLUMNS = (
    "generation_id, user_id, event, ai_status, attempt, message_id, delivery_attempt, "
    "model, prompt_tokens, completion_tokens, latency_ms, error_code, detail"
)


def _sql(statement: str) -> TextClause:
    return text(statement)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class UserUsage:
    """What a user has in flight and has spent, for the submit limits."""

    submitted_last_minute: int
    active_jobs: int
    tokens_today: int
    existing: Job | None


@dataclass(frozen=True)
class NewJob:
    """A validated submission."""

    user_id: uuid.UUID
    task: str
    input: dict[str, Any]
    metadata: dict[str, Any]
    idempotency_key: str | None
    request_hash: str
    trace_id: str | None
    max_attempts: int


@dataclass(frozen=True)
class Delivery:
    """Which push delivery a worker transition belongs to (for the log)."""

    message_id: str | None = None
    delivery_attempt: int | None = None


@dataclass(frozen=True)
class ClaimResult:
    """A claim: `claimed` is True when this delivery now owns the job under a lease."""

    claimed: bool
    job: Job | None


# Its own statement: a statement's snapshot is taken when it starts, so counts read in the
# statement that waited for the lock would miss what the lock holder just committed.
_LOCK_USER = _sql("SELECT pg_advisory_xact_lock(hashtextextended(CAST(:user_id AS text), 7))")

_USAGE = _sql(
    """
    SELECT
      (SELECT count(*) FROM generations
        WHERE user_id = :user_id AND created_at > now() - interval '1 minute') AS recent,
      (SELECT count(*) FROM generations
        WHERE user_id = :user_id AND ai_status IN ('queued', 'processing')) AS active,
      (SELECT coalesce(sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)), 0)
        FROM generations
        WHERE user_id = :user_id AND created_at >= date_trunc('day', now())) AS tokens,
      (SELECT row_to_json(g) FROM generations g
        WHERE g.user_id = :user_id AND g.idempotency_key = :key) AS existing
    """
)


def user_usage(conn: Connection, user_id: uuid.UUID, idempotency_key: str | None) -> UserUsage:
    """Lock the user's submissions for this transaction and read their limits' counters."""
    conn.execute(_LOCK_USER, {"user_id": user_id})
    row = conn.execute(_USAGE, {"user_id": user_id, "key": idempotency_key}).one()
    existing = _job_from_json(row.existing) if row.existing is not None else None
    return UserUsage(row.recent, row.active, int(row.tokens), existing)


_INSERT = _sql(
    f"""
    WITH job AS (
      INSERT INTO generations
        (user_id, task, input, metadata, idempotency_key, request_hash, trace_id, max_attempts)
      VALUES (:user_id, :task, CAST(:input AS jsonb), CAST(:metadata AS jsonb), :key, :hash,
              :trace_id, :max_attempts)
      ON CONFLICT (user_id, idempotency_key) DO NOTHING
      RETURNING *
    ), log AS (
      INSERT INTO generation_logs ({LOG_COLUMNS})
      SELECT id, user_id, 'queued', 'queued', 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
      FROM job
    )
    SELECT * FROM job
    """
)


def insert_job(conn: Connection, new: NewJob) -> Job | None:
    """Insert a queued job and its `queued` event; None when the idempotency key already exists."""
    row = (
        conn.execute(
            _INSERT,
            {
                "user_id": new.user_id,
                "task": new.task,
                "input": _json(new.input),
                "metadata": _json(new.metadata),
                "key": new.idempotency_key,
                "hash": new.request_hash,
                "trace_id": new.trace_id,
                "max_attempts": new.max_attempts,
            },
        )
        .mappings()
        .first()
    )
    return Job.from_row(row) if row is not None else None


def find_by_key(conn: Connection, user_id: uuid.UUID, key: str) -> Job | None:
    """The user's job created with this idempotency key."""
    row = (
        conn.execute(
            _sql("SELECT * FROM generations WHERE user_id = :user_id AND idempotency_key = :key"),
            {"user_id": user_id, "key": key},
        )
        .mappings()
        .first()
    )
    return Job.from_row(row) if row is not None else None


_MARK_PUBLISHED = _sql(
    f"""
    WITH job AS (
      UPDATE generations SET published_at = now(), updated_at = now()
      WHERE id = :id AND ai_status IN ('queued', 'processing')
      RETURNING id, user_id, ai_status, attempts
    )
    INSERT INTO generation_logs ({LOG_COLUMNS})
    SELECT id, user_id, 'published', ai_status, attempts, :message_id, NULL,
           NULL, NULL, NULL, NULL, NULL, NULL
    FROM job
    """
)


def mark_published(conn: Connection, job_id: uuid.UUID, message_id: str) -> None:
    """Record that a message for the job reached Pub/Sub (the sweeper republishes the rest)."""
    conn.execute(_MARK_PUBLISHED, {"id": job_id, "message_id": message_id})


def get_job(conn: Connection, job_id: uuid.UUID, user_id: uuid.UUID | None = None) -> Job | None:
    """The job by id; with `user_id`, only if it belongs to that user."""
    if user_id is None:
        statement = _sql("SELECT * FROM generations WHERE id = :id")
    else:
        statement = _sql("SELECT * FROM generations WHERE id = :id AND user_id = :user_id")
    row = conn.execute(statement, {"id": job_id, "user_id": user_id}).mappings().first()
    return Job.from_row(row) if row is not None else None


def list_jobs(
    conn: Connection,
    user_id: uuid.UUID,
    *,
    limit: int,
    status: Status | None = None,
    task: str | None = None,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """The user's jobs, newest first, by keyset pagination; returns the next cursor."""
    clauses = ["user_id = :user_id"]
    params: dict[str, Any] = {"user_id": user_id, "limit": limit + 1}
    if status is not None:
        clauses.append("ai_status = :status")
        params["status"] = status.value
    if task is not None:
        clauses.append("task = :task")
        params["task"] = task
    if cursor is not None:
        created_at, last_id = decode_cursor(cursor)
        clauses.append("(created_at, id) < (:cursor_created_at, :cursor_id)")
        params.update(cursor_created_at=created_at, cursor_id=last_id)
    statement = _sql(
        f"SELECT * FROM generations WHERE {' AND '.join(clauses)} "
        "ORDER BY created_at DESC, id DESC LIMIT :limit"
    )
    rows = conn.execute(statement, params).mappings().all()
    jobs = [Job.from_row(row) for row in rows[:limit]]
    next_cursor = encode_cursor(jobs[-1]) if len(rows) > limit else None
    return jobs, next_cursor


def encode_cursor(job: Job) -> str:
    """An opaque cursor pointing just past `job`."""
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Parse a cursor from `encode_cursor`; a bad one is the client's error."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, job_id = raw.split("|")
        # A zone is required, and pg8000 sends times in UTC: a naive time, or one that
        # overflows there, would raise mid-statement and leave the pooled connection unusable.
        moment = datetime.fromisoformat(created_at).astimezone(UTC)
        return moment, uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError, OverflowError) as error:
        raise InvalidRequest(
            "invalid cursor",
            errors=[{"field": "cursor", "message": "not a cursor returned by this API"}],
        ) from error


_CANCEL = _sql(
    f"""
    WITH job AS (
      UPDATE generations
      SET ai_status = 'cancelled', cancel_requested_at = now(), finished_at = now(),
          lease_expires_at = NULL, updated_at = now(),
          error = jsonb_build_object('code', 'cancelled', 'message', 'cancelled by the user')
      WHERE id = :id AND user_id = :user_id AND ai_status IN ('queued', 'processing')
      RETURNING *
    ), log AS (
      INSERT INTO generation_logs ({LOG_COLUMNS})
      SELECT id, user_id, 'cancelled', 'cancelled', attempts, NULL, NULL,
             NULL, NULL, NULL, NULL, NULL, NULL
      FROM job
    )
    SELECT * FROM job
    """
)


def cancel_job(conn: Connection, job_id: uuid.UUID, user_id: uuid.UUID) -> Job | None:
    """Cancel an unfinished job of the user's; None if it has ended or is not theirs."""
    row = conn.execute(_CANCEL, {"id": job_id, "user_id": user_id}).mappings().first()
    return Job.from_row(row) if row is not None else None


_CLAIM = _sql(
    f"""
    WITH claimed AS (
      UPDATE generations
      SET ai_status = 'processing', attempts = attempts + 1,
          lease_expires_at = now() + make_interval(secs => :lease_seconds),
          started_at = coalesce(started_at, now()), updated_at = now()
      WHERE id = :id AND attempts < max_attempts
        AND (not_before IS NULL OR not_before <= now())
        AND (ai_status = 'queued' OR (ai_status = 'processing' AND lease_expires_at < now()))
      RETURNING *
    ), log AS (
      INSERT INTO generation_logs ({LOG_COLUMNS})
      SELECT id, user_id, 'started', 'processing', attempts, :message_id, :delivery_attempt,
             NULL, NULL, NULL, NULL, NULL, NULL
      FROM claimed
    )
    SELECT true AS claimed, * FROM claimed
    UNION ALL
    SELECT false AS claimed, * FROM generations
    WHERE id = :id AND NOT EXISTS (SELECT 1 FROM claimed)
    """
)


def claim_job(
    conn: Connection, job_id: uuid.UUID, lease_seconds: float, delivery: Delivery
) -> ClaimResult:
    """Take the job under a lease and a new fencing attempt number, if it is free to run."""
    row = (
        conn.execute(
            _CLAIM,
            {
                "id": job_id,
                "lease_seconds": lease_seconds,
                "message_id": delivery.message_id,
                "delivery_attempt": delivery.delivery_attempt,
            },
        )
        .mappings()
        .first()
    )
    if row is None:
        return ClaimResult(claimed=False, job=None)
    return ClaimResult(claimed=bool(row["claimed"]), job=Job.from_row(row))


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as written to the job and its log row."""

    status: Status
    event: Event
    result: Any = None
    error_code: str | None = None
    error_message: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int | None = None
    # A rate-limited attempt waits this long, and does not count against the job's budget.
    defer_seconds: float | None = None


_FINISH_ATTEMPT = _sql(
    f"""
    WITH job AS (
      UPDATE generations
      SET ai_status = :status,
          result = CASE WHEN :status = 'succeeded' THEN CAST(:result AS jsonb) ELSE result END,
          error = CASE WHEN CAST(:error_code AS text) IS NULL THEN NULL
                  ELSE jsonb_build_object('code', CAST(:error_code AS text),
                                          'message', CAST(:error_message AS text)) END,
          model = coalesce(CAST(:model AS text), model),
          prompt_tokens = coalesce(prompt_tokens, 0) + coalesce(CAST(:prompt_tokens AS int), 0),
          completion_tokens = coalesce(completion_tokens, 0)
                              + coalesce(CAST(:completion_tokens AS int), 0),
          lease_expires_at = NULL,
          not_before = CASE WHEN CAST(:defer AS float8) IS NULL THEN NULL
                       ELSE now() + make_interval(secs => CAST(:defer AS float8)) END,
          max_attempts = max_attempts + CASE WHEN CAST(:defer AS float8) IS NULL THEN 0 ELSE 1 END,
          finished_at = CASE WHEN :status = 'queued' THEN NULL ELSE now() END,
          updated_at = now()
      WHERE id = :id AND ai_status = 'processing' AND attempts = :attempt
      RETURNING *
    ), log AS (
      INSERT INTO generation_logs ({LOG_COLUMNS})
      SELECT id, user_id, :event, :status, attempts, :message_id, :delivery_attempt,
             :model, :prompt_tokens, :completion_tokens, :latency_ms, :error_code, :error_message
      FROM job
    )
    SELECT * FROM job
    """
)


def finish_attempt(conn: Connection, job: Job, outcome: Outcome, delivery: Delivery) -> Job | None:
    """Write an attempt's outcome if this attempt still owns the job (fencing); else None."""
    row = (
        conn.execute(
            _FINISH_ATTEMPT,
            {
                "id": job.id,
                "attempt": job.attempts,
                "status": outcome.status.value,
                "event": outcome.event.value,
                "result": _json(outcome.result),
                "error_code": outcome.error_code,
                "error_message": outcome.error_message,
                "model": outcome.model,
                "prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens,
                "latency_ms": outcome.latency_ms,
                "defer": outcome.defer_seconds,
                "message_id": delivery.message_id,
                "delivery_attempt": delivery.delivery_attempt,
            },
        )
        .mappings()
        .first()
    )
    return Job.from_row(row) if row is not None else None


_FAIL_UNFINISHED = _sql(
    f"""
    WITH job AS (
      UPDATE generations
      SET ai_status = 'failed', lease_expires_at = NULL, finished_at = now(), updated_at = now(),
          error = jsonb_build_object('code', CAST(:error_code AS text),
                                     'message', CAST(:error_message AS text))
      WHERE id = :id AND ai_status IN ('queued', 'processing')
        AND (lease_expires_at IS NULL OR lease_expires_at < now())
      RETURNING *
    ), log AS (
      INSERT INTO generation_logs ({LOG_COLUMNS})
      SELECT id, user_id, :event, 'failed', attempts, :message_id, :delivery_attempt,
             NULL, NULL, NULL, NULL, :error_code, :error_message
      FROM job
    )
    SELECT * FROM job
    """
)


def fail_unfinished(
    conn: Connection,
    job_id: uuid.UUID,
    *,
    event: Event,
    error_code: str,
    error_message: str,
    delivery: Delivery,
) -> Job | None:
    """Fail an unfinished job no attempt is running (dead letter, spent attempts); else None."""
    row = (
        conn.execute(
            _FAIL_UNFINISHED,
            {
                "id": job_id,
                "event": event.value,
                "error_code": error_code,
                "error_message": error_message,
                "message_id": delivery.message_id,
                "delivery_attempt": delivery.delivery_attempt,
            },
        )
        .mappings()
        .first()
    )
    return Job.from_row(row) if row is not None else None


def _job_from_json(value: Any) -> Job:
    """A Job from `row_to_json(generations)` (timestamps and ids arrive as strings)."""
    data = json.loads(value) if isinstance(value, str) else dict(value)
    for key in ("id", "user_id"):
        data[key] = uuid.UUID(data[key])
    for key in (
        "created_at",
        "started_at",
        "finished_at",
        "lease_expires_at",
        "published_at",
        "cancel_requested_at",
        "not_before",
    ):
        if data.get(key) is not None:
            data[key] = datetime.fromisoformat(data[key])
    return Job.from_row(data)
