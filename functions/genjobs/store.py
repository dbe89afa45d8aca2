"""Every read and guarded status change of a job: one named statement each (genjobs/sql)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection

from genjobs import pg_wire
from genjobs.errors import InvalidRequest
from genjobs.jobs import Job, Usage
from genjobs.sql import query
from genjobs.statuses import TRANSITIONS, Event, Status


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class UserUsage:
    """What a user has in flight and has spent, for the submit limits."""

    submitted_last_minute: int
    active_jobs: int
    tokens_committed: int  # charged today plus the bounds of jobs that may still spend
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
    reserved_tokens: int = 0  # the bound on one attempt's tokens (Task.token_bound)


@dataclass(frozen=True)
class Delivery:
    """Which push delivery a worker transition belongs to (for the log)."""

    message_id: str | None = None
    delivery_attempt: int | None = None

    def log_context(self) -> dict[str, Any]:
        """The fields a log line about this delivery carries."""
        return {"message_id": self.message_id, "delivery_attempt": self.delivery_attempt}


class Refusal(StrEnum):
    """Why a claim did not take the job (worked out by the claim statement itself)."""

    NOT_FOUND = "not_found"
    FINISHED = "finished"  # succeeded or failed
    CANCELLED = "cancelled"
    DEFERRED = "deferred"  # queued until a rate limit resets
    LEASE_LIVE = "lease_live"  # another delivery's attempt is running
    ATTEMPTS_SPENT = "attempts_spent"  # no attempt left and none running


@dataclass(frozen=True)
class ClaimResult:
    """A claim: the job under this delivery's lease, or why it was refused."""

    job: Job | None
    refused: Refusal | None = None

    @property
    def claimed(self) -> bool:
        """True when this delivery now owns the job under a lease."""
        return self.refused is None


def user_usage(conn: Connection, user_id: uuid.UUID, idempotency_key: str | None) -> UserUsage:
    """Lock the user's submissions for this transaction and read their limits' counters."""
    with pg_wire.answered_with_next(conn):  # one round trip for both
        conn.execute(query("lock_user_submissions"), {"user_id": user_id})
    row = conn.execute(query("user_usage"), {"user_id": user_id, "key": idempotency_key}).one()
    existing = _job_from_json(row.existing) if row.existing is not None else None
    return UserUsage(row.recent, row.active, int(row.tokens), existing)


def insert_job(conn: Connection, new: NewJob) -> Job | None:
    """Insert a queued job and its `queued` event; None when the idempotency key already exists."""
    row = (
        conn.execute(
            query("insert_job"),
            {
                "user_id": new.user_id,
                "task": new.task,
                "input": _json(new.input),
                "metadata": _json(new.metadata),
                "key": new.idempotency_key,
                "hash": new.request_hash,
                "trace_id": new.trace_id,
                "max_attempts": new.max_attempts,
                "reserved_tokens": new.reserved_tokens,
            },
        )
        .mappings()
        .first()
    )
    return Job.from_row(row) if row is not None else None


def mark_published(conn: Connection, job_id: uuid.UUID, message_id: str) -> None:
    """Record that a message for the job reached Pub/Sub (the sweeper republishes the rest)."""
    conn.execute(query("mark_published"), {"id": job_id, "message_id": message_id})


def unmark_published(conn: Connection, job_id: uuid.UUID) -> None:
    """Forget a queued job's publish, so the sweeper publishes it after its grace period."""
    conn.execute(query("unmark_published"), {"id": job_id})


def replayed_since(conn: Connection, job_id: uuid.UUID, moment: datetime) -> bool:
    """True if the job was replayed at or after `moment` (a message older than that is stale)."""
    return bool(conn.execute(query("replayed_since"), {"id": job_id, "since": moment}).scalar())


def get_job(conn: Connection, job_id: uuid.UUID, user_id: uuid.UUID | None = None) -> Job | None:
    """The job by id; with `user_id`, only if it belongs to that user."""
    statement = query("get_job" if user_id is None else "get_user_job")
    row = conn.execute(statement, {"id": job_id, "user_id": user_id}).mappings().first()
    return Job.from_row(row) if row is not None else None


def find_by_key(conn: Connection, user_id: uuid.UUID, key: str) -> Job | None:
    """The user's job created with this idempotency key."""
    params = {"user_id": user_id, "key": key}
    row = conn.execute(query("find_job_by_key"), params).mappings().first()
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
    created_at, last_id = decode_cursor(cursor) if cursor is not None else (None, None)
    params = {
        "user_id": user_id,
        "status": status.value if status is not None else None,
        "task": task,
        "cursor_created_at": created_at,
        "cursor_id": last_id,
        "limit": limit + 1,
    }
    rows = conn.execute(query("list_user_jobs"), params).mappings().all()
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


def cancel_job(conn: Connection, job_id: uuid.UUID, user_id: uuid.UUID) -> Job | None:
    """Cancel an unfinished job of the user's; None if it has ended or is not theirs."""
    row = conn.execute(query("cancel_job"), {"id": job_id, "user_id": user_id}).mappings().first()
    return Job.from_row(row) if row is not None else None


def claim_job(
    conn: Connection, job_id: uuid.UUID, lease_seconds: float, delivery: Delivery
) -> ClaimResult:
    """Take the job under a lease and a new fencing attempt number, if it is free to run."""
    row = (
        conn.execute(
            query("claim_job"),
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
        return ClaimResult(None, Refusal.NOT_FOUND)
    refused = row["refused"]
    return ClaimResult(Job.from_row(row), Refusal(refused) if refused is not None else None)


@dataclass(frozen=True)
class StreamTail:
    """The last piece of an attempt's streamed text, and its place in the stream."""

    seq: int
    text: str


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as written to the job and its log row."""

    # Built only by `succeeded`, `failed` and `retry`; the status comes from the event's
    # transition (statuses.TRANSITIONS), so the two cannot disagree.

    event: Event
    result: Any = None
    error_code: str | None = None
    error_message: str | None = None
    usage: Usage | None = None
    latency_ms: int | None = None
    # A rate-limited attempt waits this long, and does not count against the job's budget.
    defer_seconds: float | None = None
    # Streamed text the attempt had not written yet: written with the outcome.
    tail: StreamTail | None = None

    @property
    def status(self) -> Status:
        """The status the event leads to (statuses.TRANSITIONS)."""
        return TRANSITIONS[self.event].target

    @classmethod
    def succeeded(
        cls, result: Any, usage: Usage, latency_ms: int, tail: StreamTail | None = None
    ) -> Outcome:
        """The model answered within the task's contract."""
        return cls(Event.SUCCEEDED, result=result, usage=usage, latency_ms=latency_ms, tail=tail)

    @classmethod
    def failed(
        cls, code: str, detail: str, usage: Usage | None = None, latency_ms: int | None = None
    ) -> Outcome:
        """The job cannot succeed; `usage` is what the model billed for a rejected answer."""
        return cls(
            Event.FAILED, error_code=code, error_message=detail, usage=usage, latency_ms=latency_ms
        )

    @classmethod
    def retry(
        cls,
        code: str,
        detail: str,
        latency_ms: int | None = None,
        defer_seconds: float | None = None,
    ) -> Outcome:
        """Back to queued for another attempt (no earlier than `defer_seconds` from now)."""
        return cls(
            Event.RETRY,
            error_code=code,
            error_message=detail,
            latency_ms=latency_ms,
            defer_seconds=defer_seconds,
        )


def finish_attempt(conn: Connection, job: Job, outcome: Outcome, delivery: Delivery) -> Job | None:
    """Write an attempt's outcome if this attempt still owns the job (fencing); else None."""
    usage = outcome.usage
    row = (
        conn.execute(
            query("finish_attempt"),
            {
                "id": job.id,
                "attempt": job.attempts,
                "status": outcome.status.value,
                "event": outcome.event.value,
                "result": _json(outcome.result),
                "error_code": outcome.error_code,
                "error_message": outcome.error_message,
                "model": usage.model if usage else None,
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None,
                "latency_ms": outcome.latency_ms,
                "defer": outcome.defer_seconds,
                "message_id": delivery.message_id,
                "delivery_attempt": delivery.delivery_attempt,
                "tail_seq": outcome.tail.seq if outcome.tail else None,
                "tail_text": outcome.tail.text if outcome.tail else None,
            },
        )
        .mappings()
        .first()
    )
    return Job.from_row(row) if row is not None else None


def renew_leases(
    conn: Connection, attempts: Collection[tuple[uuid.UUID, int]], lease_seconds: float
) -> set[tuple[uuid.UUID, int]]:
    """Extend the lease of each (job id, attempt) that still owns its job; those that do."""
    ids, numbers = zip(*attempts, strict=True) if attempts else ((), ())
    rows = conn.execute(
        query("renew_leases"),
        {
            "ids": [str(job_id) for job_id in ids],
            "attempts": list(numbers),
            "lease_seconds": lease_seconds,
        },
    ).all()
    return {(uuid.UUID(str(row[0])), int(row[1])) for row in rows}


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
            query("fail_unfinished"),
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


@dataclass(frozen=True)
class StreamEvent:
    """A row of a job's event log or streamed text, in SSE id order."""

    id: int
    event: Event | None  # None for streamed text
    status: Status | None
    attempt: int
    seq: int | None
    text: str | None
    usage: Usage | None
    error_code: str | None


def append_delta(
    conn: Connection, job: Job, seq: int, text: str, lease_seconds: float
) -> int | None:
    """Store streamed text of the attempt that owns the job and renew its lease; else None."""
    params = {
        "id": job.id,
        "attempt": job.attempts,
        "seq": seq,
        "text": text,
        "lease_seconds": lease_seconds,
    }
    written = conn.execute(query("append_delta"), params).scalar()
    return int(written) if written is not None else None


def charge_usage(conn: Connection, job: Job, usage: Usage | None) -> None:
    """Bill tokens whose outcome was not written to the job's user; once the job has ended,
    settle this attempt (its reservation stops counting)."""
    conn.execute(
        query("charge_usage"),
        {
            "id": job.id,
            "attempt": job.attempts,
            "model": usage.model if usage else None,
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
        },
    )


def attempt_within_budget(conn: Connection, user_id: uuid.UUID, budget: int) -> bool:
    """Whether the user's committed tokens, a running job's own bound included, fit `budget`."""
    params = {"user_id": user_id, "budget": budget}
    return bool(conn.execute(query("attempt_within_budget"), params).scalar_one())


def events_since(conn: Connection, job_id: uuid.UUID, after: int, limit: int) -> list[StreamEvent]:
    """The job's events and streamed text after SSE id `after`, oldest first."""
    rows = conn.execute(query("job_events_since"), {"id": job_id, "after": after, "limit": limit})
    events = []
    for row in rows.mappings():
        usage = None
        if row["prompt_tokens"] is not None or row["completion_tokens"] is not None:
            usage = Usage(
                row["model"] or "", row["prompt_tokens"] or 0, row["completion_tokens"] or 0
            )
        events.append(
            StreamEvent(
                id=int(row["id"]),
                event=Event(row["event"]) if row["event"] is not None else None,
                status=Status(row["ai_status"]) if row["ai_status"] is not None else None,
                attempt=int(row["attempt"]),
                seq=row["seq"],
                text=row["text"],
                usage=usage,
                error_code=row["error_code"],
            )
        )
    return events


def last_event_id(conn: Connection, job_id: uuid.UUID) -> int:
    """The SSE id of the job's newest event."""
    return int(conn.execute(query("last_event_id"), {"id": job_id}).scalar_one())
