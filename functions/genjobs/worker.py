"""The push worker: claim a job under a lease, call the model once, write the outcome."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection

from genjobs import store
from genjobs.crashpoints import crash_point
from genjobs.db import Database
from genjobs.errors import ModelUnavailable, PermanentFailure
from genjobs.jobs import Job
from genjobs.model_client import InvalidAnswer, RefusedAnswer, SupportsGenerate, Usage
from genjobs.push import PushAnswer, PushMessage, ServiceVerifier, answer_push, error_answer
from genjobs.settings import Settings
from genjobs.statuses import Event, Status
from genjobs.tasks.base import Message, Task

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Worker:
    """Handles one Pub/Sub push delivery of a job id."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        model: SupportsGenerate,
        tasks: Mapping[str, Task],
        verifier: ServiceVerifier,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._settings = settings
        self._db = db
        self._model = model
        self._tasks = tasks
        self._verifier = verifier
        self._clock = clock
        self._now = now
        for task in tasks.values():
            if task.timeout_seconds > settings.max_task_timeout_seconds:
                log.warning(
                    "task %s: timeout %ss capped at %ss to finish inside the lease",
                    task.name,
                    task.timeout_seconds,
                    settings.max_task_timeout_seconds,
                )

    def handle(self, authorization: str | None, body: bytes) -> PushAnswer:
        """The answer to one push request: 2xx acks, anything else asks for a retry."""
        return answer_push(self._verifier, authorization, body, self._process, log)

    def _process(self, message: PushMessage) -> PushAnswer:
        delivery = store.Delivery(message.message_id, message.delivery_attempt)
        with self._db.transaction() as conn:
            claim = store.claim_job(conn, message.job_id, self._settings.lease_seconds, delivery)
            if not claim.claimed:
                return self._not_claimed(conn, claim.job, message, delivery)
        # The claim's transaction is closed: no connection is held during the model call.
        assert claim.job is not None
        return self._run(claim.job, delivery)

    def _not_claimed(
        self, conn: Connection, job: Job | None, message: PushMessage, delivery: store.Delivery
    ) -> PushAnswer:
        if job is None:
            # No row: nothing to mark failed. Acked so it never loops.
            log.warning(
                "push for a job that does not exist acked",
                extra={"job_id": str(message.job_id), "message_id": message.message_id},
            )
            return PushAnswer(200, {"outcome": "unknown_job", "job_id": str(message.job_id)})
        extra = _extra(job, delivery)
        if job.status.is_terminal:
            log.info("duplicate or late delivery of a finished job acked", extra=extra)
            return _answer(job, "already_finished")
        if job.status is Status.QUEUED and job.not_before is not None:
            # Deferred by a rate limit: the sweeper publishes it again once it is due.
            log.info("delivery of a deferred job acked", extra=extra)
            return _answer(job, "deferred")
        if job.attempts >= job.max_attempts and not self._lease_live(job):
            return self._exhaust(conn, job, delivery)
        # Running under another delivery's live lease. Acked, not nacked: every nack spends
        # one of Pub/Sub's delivery attempts, and a crashed worker holds its lease longer
        # than the remaining attempts last. If that attempt dies, the sweeper requeues the
        # job once the lease expires and publishes it again.
        log.info("job is running under another delivery's lease; duplicate acked", extra=extra)
        return _answer(job, "running_elsewhere")

    def _lease_live(self, job: Job) -> bool:
        return job.status is Status.PROCESSING and self._lease_left(job) > 0

    def _lease_left(self, job: Job) -> float:
        if job.lease_expires_at is None:
            return 0.0
        return max(0.0, (job.lease_expires_at - self._now()).total_seconds())

    def _exhaust(self, conn: Connection, job: Job, delivery: store.Delivery) -> PushAnswer:
        failed = store.fail_unfinished(
            conn,
            job.id,
            event=Event.FAILED,
            error_code="attempts_exhausted",
            error_message=f"all {job.max_attempts} attempts used; last error: {_last_error(job)}",
            delivery=delivery,
        )
        if failed is None:
            return _answer(job, "already_finished")
        log.warning("job failed: attempts exhausted", extra=_extra(job, delivery))
        return _answer(failed, "attempts_exhausted")

    def _run(self, job: Job, delivery: store.Delivery) -> PushAnswer:
        task = self._tasks.get(job.task)
        if task is None:
            outcome = _failure("unknown_task", f"task {job.task!r} is not registered")
            return self._finish(job, delivery, outcome)
        try:
            messages = task.messages_for(job.input)
        except ValidationError as error:
            count = error.error_count()
            detail = f"the stored input is no longer valid for {task.name!r} ({count} errors)"
            return self._finish(job, delivery, _failure("invalid_input", detail))
        return self._generate(job, task, messages, delivery)

    def _generate(
        self, job: Job, task: Task, messages: list[Message], delivery: store.Delivery
    ) -> PushAnswer:
        """The one model call of this attempt, and its outcome written under the fence."""
        timeout = min(task.timeout_seconds, self._settings.max_task_timeout_seconds)
        started = self._clock()
        try:
            generation = self._model.generate(task, messages, timeout=timeout)
            crash_point("after_model_call")
        except ModelUnavailable as error:
            return self._retry(job, delivery, error, self._since(started))
        except PermanentFailure as error:
            outcome = _failure(error.error_code, error.detail, _billed(error), self._since(started))
            return self._finish(job, delivery, outcome)
        except Exception:
            self._release(job, delivery)
            raise
        # Free text is stored as {"text": ...}; structured answers as the parsed object.
        result = generation.output if task.output_schema else {"text": generation.output}
        outcome = store.Outcome(
            Status.SUCCEEDED,
            Event.SUCCEEDED,
            result=result,
            model=generation.model,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            latency_ms=self._since(started),
        )
        return self._finish(job, delivery, outcome)

    def _retry(
        self, job: Job, delivery: store.Delivery, error: ModelUnavailable, latency_ms: int
    ) -> PushAnswer:
        """Back to `queued`, then a nack: Pub/Sub's backoff decides when to try again.

        A rate limit that resets later than that backoff would only burn delivery attempts:
        such a job is deferred until the reset (acked; the sweeper republishes it then).
        """
        defer = (
            error.retry_after
            if error.error_code == "rate_limited"
            and error.retry_after > self._settings.retry_min_backoff_seconds
            else None
        )
        outcome = store.Outcome(
            Status.QUEUED,
            Event.RETRY,
            error_code=error.error_code,
            error_message=error.detail,
            latency_ms=latency_ms,
            defer_seconds=defer,
        )
        written = self._write(job, delivery, outcome)
        if written is None:
            return _answer(job, "fenced")
        extra = _extra(job, delivery)
        if defer is not None:
            log.warning("model rate limit; job deferred %.0fs", defer, extra=extra)
            return _answer(written, "deferred")
        log.warning("transient model error; job requeued: %s", error.error_code, extra=extra)
        return error_answer(error)

    def _finish(self, job: Job, delivery: store.Delivery, outcome: store.Outcome) -> PushAnswer:
        """Write a final outcome (or a failure the job cannot recover from) and ack."""
        written = self._write(job, delivery, outcome)
        if written is None:
            return _answer(job, "fenced")
        crash_point("after_commit")
        extra = {**_extra(job, delivery), "error_code": outcome.error_code}
        if outcome.status is Status.SUCCEEDED:
            log.info("job succeeded", extra={**extra, "latency_ms": outcome.latency_ms})
        else:
            log.warning("job failed: %s", outcome.error_code, extra=extra)
        return _answer(written, outcome.status.value)

    def _write(self, job: Job, delivery: store.Delivery, outcome: store.Outcome) -> Job | None:
        """The guarded write; None when a cancel or a takeover got there first (logged)."""
        with self._db.transaction() as conn:
            written = store.finish_attempt(conn, job, outcome, delivery)
        if written is None:
            log.warning(
                "outcome discarded: the job was cancelled or taken over meanwhile",
                extra=_extra(job, delivery),
            )
        return written

    def _release(self, job: Job, delivery: store.Delivery) -> None:
        """After an unexpected error, requeue at once rather than wait out the lease."""
        outcome = store.Outcome(
            Status.QUEUED,
            Event.RETRY,
            error_code="worker_error",
            error_message="unexpected worker error",
        )
        try:
            self._write(job, delivery, outcome)
        except Exception:
            log.exception("could not requeue the job after an error", extra=_extra(job, delivery))

    def _since(self, started: float) -> int:
        return max(0, round((self._clock() - started) * 1000))


def _failure(
    code: str, detail: str, usage: Usage | None = None, latency_ms: int | None = None
) -> store.Outcome:
    return store.Outcome(
        Status.FAILED,
        Event.FAILED,
        error_code=code,
        error_message=detail,
        model=usage.model if usage else None,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        latency_ms=latency_ms,
    )


def _billed(error: PermanentFailure) -> Usage | None:
    """Tokens the model billed for an answer we rejected (they count against budgets)."""
    return error.usage if isinstance(error, RefusedAnswer | InvalidAnswer) else None


def _last_error(job: Job) -> str:
    if not job.error:
        return "none recorded"
    return f"{job.error.get('code', 'unknown')}: {job.error.get('message', '')}"


def _answer(job: Job, outcome: str) -> PushAnswer:
    return PushAnswer(200, {"outcome": outcome, "job_id": str(job.id), "status": job.status.value})


def _extra(job: Job, delivery: store.Delivery) -> dict[str, Any]:
    return {
        "job_id": str(job.id),
        "attempt": job.attempts,
        "task": job.task,
        "message_id": delivery.message_id,
        "delivery_attempt": delivery.delivery_attempt,
    }
