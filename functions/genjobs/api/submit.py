"""Submitting a job: validate, enforce the user's limits, store, then publish."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection

from genjobs import store
from genjobs.api.schemas import SubmitRequest
from genjobs.crashpoints import crash_point
from genjobs.db import Database
from genjobs.errors import (
    IdempotencyKeyReused,
    InvalidRequest,
    PayloadTooLarge,
    RateLimited,
)
from genjobs.jobs import MAX_ATTEMPTS, Job
from genjobs.publisher import JobPublisher, publish_job
from genjobs.settings import Settings
from genjobs.statuses import Status
from genjobs.tasks import Task

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY_LENGTH = 255


@dataclass(frozen=True)
class Submitted:
    """The job and whether it was created now or replayed for an idempotency key."""

    job: Job
    replayed: bool


def field_errors(error: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """Pydantic errors as problem+json `errors` entries (`field`, `message`)."""
    result = []
    for item in error.errors(include_url=False, include_input=False):
        path = ".".join(str(p) for p in item["loc"])
        field = f"{prefix}.{path}" if prefix and path else (prefix or path or "body")
        result.append({"field": field, "message": item["msg"]})
    return result


def parse_submission(
    body: Any, tasks: dict[str, Task], settings: Settings
) -> tuple[Task, dict[str, Any], dict[str, Any]]:
    """Validate the body and the task's input; return the task, normalized input and metadata."""
    unstorable = _unstorable_string(body)
    if unstorable is not None:
        raise InvalidRequest(
            "the request body has text Postgres cannot store",
            [{"field": unstorable, "message": "no NUL (\\u0000) or unpaired surrogates"}],
        )
    try:
        request = SubmitRequest.model_validate(body)
    except ValidationError as error:
        raise InvalidRequest("the request body is invalid", field_errors(error)) from error
    task = tasks.get(request.task)
    if task is None:
        known = ", ".join(sorted(tasks))
        raise InvalidRequest(
            f"unknown task {request.task!r}",
            [{"field": "task", "message": f"must be one of: {known}"}],
        )
    metadata = request.metadata or {}
    if len(_canonical(metadata)) > settings.max_metadata_bytes:
        raise PayloadTooLarge(
            f"metadata is over {settings.max_metadata_bytes} bytes",
        )
    try:
        normalized = task.input_model.model_validate(request.input).model_dump(
            mode="json", exclude_none=True
        )
    except ValidationError as error:
        raise InvalidRequest("the task input is invalid", field_errors(error, "input")) from error
    return task, normalized, metadata


def _unstorable_string(body: Any) -> str | None:
    """The path of the first key or string jsonb cannot hold (NUL, lone surrogate), else None."""
    # Iterative: a body nested hundreds deep is valid JSON and must not hit the recursion limit.
    pending: list[tuple[str, Any]] = [("", body)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, str):
            if not _storable(value):
                return path or "body"
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                if not _storable(key):
                    return path or "body"
                pending.append((child, item))
        elif isinstance(value, list):
            pending.extend((f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value))
    return None


def _storable(text: str) -> bool:
    """Postgres text and jsonb take valid UTF-8 without NUL."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_idempotency_key(key: str | None) -> str | None:
    """Keys are 1 to 255 printable ASCII characters."""
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise InvalidRequest(
            "invalid Idempotency-Key",
            [{"field": "Idempotency-Key", "message": "1 to 255 printable ASCII characters"}],
        )
    return key


def request_hash(task: str, data: dict[str, Any], metadata: dict[str, Any]) -> str:
    """A fingerprint of what was asked, to tell a replay from a reused key."""
    return hashlib.sha256(
        _canonical({"task": task, "input": data, "metadata": metadata})
    ).hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def same_request(existing: Job, fingerprint: str) -> Job:
    """The job made earlier with this Idempotency-Key, if it was asked with the same body."""
    if existing.request_hash != fingerprint:
        raise IdempotencyKeyReused("this Idempotency-Key was used with a different request body")
    return existing


def check_limits(usage: store.UserUsage, bound: int, settings: Settings, now: datetime) -> None:
    """Refuse a submit over the user's rate, unfinished jobs or daily tokens (429): the job's
    token `bound` must fit beside what is charged today and reserved by unfinished jobs."""
    s = settings
    if usage.submitted_last_minute >= s.submits_per_minute:
        raise RateLimited(
            f"at most {s.submits_per_minute} submissions per minute",
            retry_after=60,
            code="rate_limited",
        )
    if usage.active_jobs >= s.max_active_jobs:
        raise RateLimited(
            f"at most {s.max_active_jobs} unfinished jobs at a time",
            retry_after=5,
            code="too_many_active_jobs",
        )
    if usage.tokens_committed + bound > s.daily_token_budget:
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        left = max(0, s.daily_token_budget - usage.tokens_committed)
        raise RateLimited(
            f"this job may use up to {bound} tokens; {left} of the daily budget of "
            f"{s.daily_token_budget} are left (spent or reserved by unfinished jobs)",
            retry_after=int((midnight - now).total_seconds()) + 1,
            code="token_budget_exhausted",
        )


def token_bound(task: Task, data: dict[str, Any], settings: Settings) -> int:
    """The job's token bound; a job that alone could spend more than the budget is too large."""
    bound = task.token_bound(data)
    if bound > settings.daily_token_budget:
        # Retrying cannot help (a 429 would say it can): the input has to shrink.
        raise PayloadTooLarge(
            f"this job may use up to {bound} tokens (its input's UTF-8 bytes plus "
            f"{task.max_output_tokens} output tokens), more than the daily budget of "
            f"{settings.daily_token_budget}"
        )
    return bound


class SubmitService:
    """Stores a job (durable from then on) and publishes its id."""

    def __init__(
        self, settings: Settings, db: Database, publisher: JobPublisher, tasks: dict[str, Task]
    ) -> None:
        self.settings = settings
        self.db = db
        self.publisher = publisher
        self.tasks = tasks

    def submit(
        self, user_id: uuid.UUID, body: Any, idempotency_key: str | None, trace_id: str | None
    ) -> Submitted:
        """Create the job or replay the one made with the same key and body.

        Concurrent submits with one key do not conflict: the per-user lock makes the later
        one wait for the first to commit, and it then replays that job.
        """
        key = check_idempotency_key(idempotency_key)
        task, data, metadata = parse_submission(body, self.tasks, self.settings)
        new = store.NewJob(
            user_id=user_id,
            task=task.name,
            input=data,
            metadata=metadata,
            idempotency_key=key,
            request_hash=request_hash(task.name, data, metadata),
            trace_id=trace_id,
            max_attempts=MAX_ATTEMPTS,
            reserved_tokens=token_bound(task, data, self.settings),
        )
        with self.db.transaction() as conn:
            job, replayed = self._store(conn, new)
        if replayed:
            if job.status is Status.QUEUED and job.attempts == 0 and job.not_before is None:
                # Never started: perhaps its api died before publishing (the client retries
                # with its key because that submit never answered). Another message costs
                # at most a duplicate delivery; the sweeper would wait REPUBLISH_AFTER.
                self._publish(job, record=True)
            return Submitted(job, replayed=True)
        crash_point("api_after_commit")
        # Stored is accepted. The row already counts as published, so a successful publish
        # writes nothing more.
        self._publish(job, record=False)
        return Submitted(job, replayed=False)

    def _publish(self, job: Job, *, record: bool) -> None:
        """Publish a stored job; a failure clears its `published_at` for the sweeper's grace."""
        publish_job(
            self.db,
            self.publisher,
            job.id,
            task=job.task,
            trace_id=job.trace_id,
            was_published=True,  # stored counted as published
            record=record,
        )

    def _store(self, conn: Connection, new: store.NewJob) -> tuple[Job, bool]:
        """The new job, stored, or the one the same key already made (True)."""
        usage = store.user_usage(conn, new.user_id, new.idempotency_key)
        if usage.existing is not None:
            return same_request(usage.existing, new.request_hash), True
        check_limits(usage, new.reserved_tokens, self.settings, datetime.now(UTC))
        job = store.insert_job(conn, new)
        if job is None:
            # Unreachable while every insert holds the per-user lock. Were one not to,
            # ON CONFLICT has waited for it to commit, so a new statement sees its job.
            key = new.idempotency_key
            existing = store.find_by_key(conn, new.user_id, key) if key is not None else None
            if existing is None:
                raise RuntimeError("the insert conflicted but no job holds its key")
            return same_request(existing, new.request_hash), True
        return job, False
