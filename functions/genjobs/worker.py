"""The push worker: claim a job under a lease, call the model once, write the outcome."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection

from genjobs import retry, store
from genjobs.crashpoints import crash_point
from genjobs.db import Database
from genjobs.errors import ModelUnavailable, PermanentFailure, StreamStopped
from genjobs.jobs import Job, Usage
from genjobs.model_client import Generation, SupportsGenerate
from genjobs.push import PushAnswer, PushMessage, ServiceVerifier, answer_push, error_answer
from genjobs.settings import Settings
from genjobs.statuses import Event, Status
from genjobs.store import Delivery, Outcome, Refusal
from genjobs.streaming import DeltaWriter
from genjobs.tasks.base import Message, Task

log = logging.getLogger(__name__)


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
    ) -> None:
        self._settings = settings
        self._db = db
        self._model = model
        self._tasks = tasks
        self._verifier = verifier
        self._clock = clock
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
        delivery = Delivery(message.message_id, message.delivery_attempt)
        with self._db.transaction() as conn:
            claim = store.claim_job(conn, message.job_id, self._settings.lease_seconds, delivery)
            if not claim.claimed:
                return self._not_claimed(conn, claim, message, delivery)
        # The claim's transaction is closed: no connection is held during the model call.
        assert claim.job is not None
        return self._run(claim.job, delivery)

    def _not_claimed(
        self, conn: Connection, claim: store.ClaimResult, message: PushMessage, delivery: Delivery
    ) -> PushAnswer:
        job, refused = claim.job, claim.refused
        if job is None:
            # No row: nothing to mark failed. Acked so it never loops.
            log.warning(
                "push for a job that does not exist acked",
                extra={"job_id": str(message.job_id), "message_id": message.message_id},
            )
            return PushAnswer(200, {"outcome": "unknown_job", "job_id": str(message.job_id)})
        extra = _extra(job, delivery)
        if refused in (Refusal.FINISHED, Refusal.CANCELLED):
            log.info("duplicate or late delivery of a finished job acked", extra=extra)
            return _answer(job, "already_finished")
        if refused is Refusal.DEFERRED:
            # Deferred by a rate limit: the sweeper publishes it again once it is due.
            log.info("delivery of a deferred job acked", extra=extra)
            return _answer(job, "deferred")
        if refused is Refusal.ATTEMPTS_SPENT:
            return self._exhaust(conn, job, delivery)
        # Running under another delivery's live lease. Acked, not nacked: every nack spends
        # one of Pub/Sub's delivery attempts, and a crashed worker holds its lease longer
        # than the remaining attempts last. If that attempt dies, the sweeper requeues the
        # job once the lease expires and publishes it again.
        log.info("job is running under another delivery's lease; duplicate acked", extra=extra)
        return _answer(job, "running_elsewhere")

    def _exhaust(self, conn: Connection, job: Job, delivery: Delivery) -> PushAnswer:
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

    def _run(self, job: Job, delivery: Delivery) -> PushAnswer:
        task = self._tasks.get(job.task)
        if task is None:
            outcome = Outcome.failed("unknown_task", f"task {job.task!r} is not registered")
            return self._finish(job, delivery, outcome)
        try:
            messages = task.messages_for(job.input)
        except ValidationError as error:
            count = error.error_count()
            detail = f"the stored input is no longer valid for {task.name!r} ({count} errors)"
            return self._finish(job, delivery, Outcome.failed("invalid_input", detail))
        return self._generate(job, task, messages, delivery)

    def _generate(
        self, job: Job, task: Task, messages: list[Message], delivery: Delivery
    ) -> PushAnswer:
        """The one model call of this attempt, and its outcome written under the fence."""
        timeout = min(task.timeout_seconds, self._settings.max_task_timeout_seconds)
        started = self._clock()
        try:
            answer = self._call_model(job, task, messages, timeout)
            crash_point("after_model_call")
        except StreamStopped as stopped:
            # Cancelled or taken over while streaming: the call was closed, its tokens billed.
            self._charge(job, stopped.usage)
            log.info("model stream stopped: the attempt lost the job", extra=_extra(job, delivery))
            return _answer(job, "stopped")
        except Exception as error:
            if isinstance(error, ModelUnavailable) and error.usage is not None:
                self._charge(job, error.usage)
            decision = retry.decide(error, self._settings)
            if decision.action is retry.Action.FAIL:
                billed = error.usage if isinstance(error, PermanentFailure) else None
                failed = Outcome.failed(
                    decision.error_code, decision.detail, billed, self._since(started)
                )
                return self._finish(job, delivery, failed)
            if not isinstance(error, ModelUnavailable):
                # Requeued at once rather than after the lease; the error is logged as a 500.
                self._release(job, delivery, decision)
                raise
            return self._retry(job, delivery, error, decision, self._since(started))
        # Free text is stored as {"text": ...}; structured answers as the parsed object.
        result = answer.output if task.output_schema else {"text": answer.output}
        outcome = Outcome.succeeded(result, answer.usage, self._since(started))
        return self._finish(job, delivery, outcome)

    def _call_model(
        self, job: Job, task: Task, messages: list[Message], timeout: float
    ) -> Generation:
        """Free-text tasks stream (clients follow the text); structured ones answer whole."""
        if task.output_schema is not None:
            return self._model.generate(task, messages, timeout=timeout)
        writer = DeltaWriter(
            self._db,
            job,
            flush_seconds=self._settings.stream_flush_ms / 1000,
            lease_seconds=self._settings.lease_seconds,
            clock=self._clock,
        )
        answer = self._model.stream(task, messages, timeout=timeout, on_text=writer)
        if not writer.flush():
            raise StreamStopped(answer.usage)
        return answer

    def _charge(self, job: Job, usage: Usage) -> None:
        """Bill a call whose outcome is not written with the job (budgets count it)."""
        with self._db.transaction() as conn:
            store.charge_usage(conn, job.id, usage)

    def _retry(
        self,
        job: Job,
        delivery: Delivery,
        error: ModelUnavailable,
        decision: retry.RetryDecision,
        latency_ms: int,
    ) -> PushAnswer:
        """Back to `queued`: nacked so Pub/Sub's backoff decides when, or deferred and acked."""
        outcome = Outcome.retry(
            decision.error_code, decision.detail, latency_ms, decision.defer_seconds
        )
        written = self._write(job, delivery, outcome)
        if written is None:
            return _answer(job, "fenced")
        extra = _extra(job, delivery)
        if decision.action is retry.Action.DEFER:
            log.warning("model rate limit; job deferred %.0fs", decision.defer_seconds, extra=extra)
            return _answer(written, "deferred")
        log.warning("transient model error; job requeued: %s", decision.error_code, extra=extra)
        return error_answer(error)

    def _finish(self, job: Job, delivery: Delivery, outcome: Outcome) -> PushAnswer:
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

    def _write(self, job: Job, delivery: Delivery, outcome: Outcome) -> Job | None:
        """The guarded write; None when a cancel or a takeover got there first (logged)."""
        with self._db.transaction() as conn:
            written = store.finish_attempt(conn, job, outcome, delivery)
        if written is None:
            log.warning(
                "outcome discarded: the job was cancelled or taken over meanwhile",
                extra=_extra(job, delivery),
            )
        return written

    def _release(self, job: Job, delivery: Delivery, decision: retry.RetryDecision) -> None:
        """After an unexpected error, requeue at once rather than wait out the lease."""
        try:
            self._write(job, delivery, Outcome.retry(decision.error_code, decision.detail))
        except Exception:
            log.exception("could not requeue the job after an error", extra=_extra(job, delivery))

    def _since(self, started: float) -> int:
        return max(0, round((self._clock() - started) * 1000))


def _last_error(job: Job) -> str:
    if not job.error:
        return "none recorded"
    return f"{job.error.get('code', 'unknown')}: {job.error.get('message', '')}"


def _answer(job: Job, outcome: str) -> PushAnswer:
    return PushAnswer(200, {"outcome": outcome, "job_id": str(job.id), "status": job.status.value})


def _extra(job: Job, delivery: Delivery) -> dict[str, Any]:
    return {
        "job_id": str(job.id),
        "attempt": job.attempts,
        "task": job.task,
        "message_id": delivery.message_id,
        "delivery_attempt": delivery.delivery_attempt,
    }
