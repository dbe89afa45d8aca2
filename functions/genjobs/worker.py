"""The push worker: claim a job under a renewed lease, call the model once, write the outcome."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection

from genjobs import retry, store
from genjobs.crashpoints import crash_point
from genjobs.db import Database
from genjobs.errors import ModelUnavailable, PermanentFailure, StreamStopped
from genjobs.heartbeat import Heartbeat
from genjobs.jobs import Job, Usage
from genjobs.model_client import ModelAnswer, StreamReads, SupportsGenerate
from genjobs.push import (
    PushAnswer,
    PushMessage,
    ServiceVerifier,
    answer_push,
    error_answer,
    job_answer,
    unknown_job_answer,
)
from genjobs.settings import Settings
from genjobs.statuses import Event, Status
from genjobs.store import Delivery, Outcome, Refusal, StreamTail
from genjobs.streaming import DeltaWriter
from genjobs.tasks.base import Message, Task

log = logging.getLogger(__name__)

# Added to a wait for another attempt's lease: the database's clock may run a little ahead.
LEASE_WAIT_SLACK_SECONDS = 0.5
# A delivery watching another attempt's lease looks again this often (one claim statement).
LEASE_LOOK_SECONDS = 1.0


# A refused claim is acked (the push answer's outcome, and why), never nacked: a nack spends
# one of Pub/Sub's delivery attempts and cannot change the refusal. A job deferred by a rate
# limit is published again by the sweeper once due; one running under another delivery's live
# lease (still renewed after a wait for it to run out, see `_process`) is left to that attempt,
# and requeued and republished by the sweeper if it dies.
ACKED_REFUSALS: dict[Refusal, tuple[str, str]] = {
    Refusal.FINISHED: ("already_finished", "duplicate or late delivery of a finished job"),
    Refusal.CANCELLED: ("already_finished", "delivery of a cancelled job"),
    Refusal.DEFERRED: ("deferred", "delivery of a job deferred by a rate limit"),
    Refusal.LEASE_LIVE: ("running_elsewhere", "job is running under another delivery's lease"),
}


def stored_result(task: Task, answer: ModelAnswer) -> Any:
    """What a success stores: free text as {"text": ...}, a structured answer as parsed."""
    return answer.output if task.output_schema else {"text": answer.output}


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
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self._settings = settings
        self._heartbeat = heartbeat or Heartbeat(
            db, interval_seconds=settings.heartbeat_seconds, lease_seconds=settings.lease_seconds
        )
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
        seen_lease: datetime | None = None
        while True:
            with self._db.transaction() as conn:
                lease = self._settings.lease_seconds
                claim = store.claim_job(conn, message.job_id, lease, delivery)
                if claim.claimed:
                    assert claim.job is not None
                    # Submit reserved one attempt's bound; a retry must fit the budget again.
                    affordable = claim.job.attempts <= 1 or store.attempt_within_budget(
                        conn, claim.job.user_id, self._settings.daily_token_budget
                    )
                    break
                wait = self._lease_wait(claim, seen_lease)
                if wait is None:
                    return self._not_claimed(conn, claim, message, delivery)
                seen_lease = claim.job.lease_expires_at if claim.job else None
            # Pub/Sub redelivers a crashed worker's push within seconds: rather than ack it
            # and leave the job to the sweeper, watch the short lease (no connection held
            # between looks) and take the job when it runs out; a live attempt renews it, and
            # a finished one ends the watch at the next look: this delivery is then acked.
            time.sleep(wait)
        # The claim's transaction is closed: no connection is held during the model call.
        assert claim.job is not None
        if not affordable:
            detail = "another attempt could spend more than the user's daily token budget"
            return self._finish(
                claim.job, delivery, Outcome.failed("token_budget_exhausted", detail)
            )
        return self._run(claim.job, delivery)

    def _lease_wait(self, claim: store.ClaimResult, seen_lease: datetime | None) -> float | None:
        """How long to wait before looking again at a job another attempt holds; None: ack now.

        None once that attempt has renewed its lease since the last look (it is alive), or for
        a lease longer than heartbeats take (the sweeper recovers those).
        """
        job = claim.job
        if claim.refused is not Refusal.LEASE_LIVE or job is None or job.lease_expires_at is None:
            return None
        if seen_lease is not None and job.lease_expires_at > seen_lease:
            return None
        left = (job.lease_expires_at - datetime.now(UTC)).total_seconds()
        if left > self._settings.lease_seconds + LEASE_WAIT_SLACK_SECONDS:
            return None
        return min(max(0.0, left) + LEASE_WAIT_SLACK_SECONDS, LEASE_LOOK_SECONDS)

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
            return unknown_job_answer(message.job_id)
        if refused is Refusal.ATTEMPTS_SPENT:
            return self._exhaust(conn, job, delivery)
        outcome, why = ACKED_REFUSALS[refused or Refusal.LEASE_LIVE]
        log.info("%s; delivery acked", why, extra=_extra(job, delivery))
        return job_answer(job, outcome)

    def _exhaust(self, conn: Connection, job: Job, delivery: Delivery) -> PushAnswer:
        failed = store.fail_unfinished(
            conn,
            job.id,
            event=Event.FAILED,
            error_code="attempts_exhausted",
            error_message=f"all {job.max_attempts} attempts used; last error: {job.last_error}",
            delivery=delivery,
        )
        if failed is None:
            return job_answer(job, "already_finished")
        log.warning("job failed: attempts exhausted", extra=_extra(job, delivery))
        return job_answer(failed, "attempts_exhausted")

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
            with self._heartbeat.holding(job) as lost:
                answer, tail = self._call_model(job, task, messages, timeout, lost)
            crash_point("after_model_call")
        except StreamStopped as stopped:
            # Cancelled or taken over while streaming: the call was closed, its tokens billed.
            self._charge(job, stopped.usage)
            log.info("model stream stopped: the attempt lost the job", extra=_extra(job, delivery))
            return job_answer(job, "stopped")
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
        result = stored_result(task, answer)
        outcome = Outcome.succeeded(result, answer.usage, self._since(started), tail)
        return self._finish(job, delivery, outcome)

    def _call_model(
        self, job: Job, task: Task, messages: list[Message], timeout: float, lost: threading.Event
    ) -> tuple[ModelAnswer, StreamTail | None]:
        """Free-text tasks stream, structured ones answer whole; StreamStopped once it is lost.

        Also the streamed text not written yet: it goes with the outcome's write.
        """
        if task.output_schema is not None:
            answer = self._model.generate(task, messages, timeout=timeout)
            if lost.is_set():
                # The heartbeat found the job cancelled or taken over: nothing to write.
                raise StreamStopped(answer.usage)
            return answer, None
        reads = StreamReads()
        writer = DeltaWriter(
            self._db,
            job,
            flush_seconds=self._settings.stream_flush_ms / 1000,
            first_seconds=self._settings.stream_first_flush_ms / 1000,
            lease_seconds=self._settings.lease_seconds,
            lost=lost,
            reads=reads,
            clock=self._clock,
        )
        try:
            answer = self._model.stream(
                task, messages, timeout=timeout, on_text=writer, reads=reads
            )
        except BaseException:
            writer.close()
            raise
        if not writer.owned or lost.is_set():
            raise StreamStopped(answer.usage)
        return answer, writer.take_tail()

    def _charge(self, job: Job, usage: Usage | None) -> None:
        """Bill a call whose outcome is not written with the job (budgets count it)."""
        with self._db.transaction() as conn:
            store.charge_usage(conn, job, usage)

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
            return job_answer(job, "fenced")
        extra = _extra(job, delivery)
        if decision.action is retry.Action.DEFER:
            log.warning("model rate limit; job deferred %.0fs", decision.defer_seconds, extra=extra)
            return job_answer(written, "deferred")
        log.warning("transient model error; job requeued: %s", decision.error_code, extra=extra)
        return error_answer(error)

    def _finish(self, job: Job, delivery: Delivery, outcome: Outcome) -> PushAnswer:
        """Write a final outcome (or a failure the job cannot recover from) and ack."""
        written = self._write(job, delivery, outcome)
        if written is None:
            return job_answer(job, "fenced")
        crash_point("after_commit")
        extra = {**_extra(job, delivery), "error_code": outcome.error_code}
        if outcome.status is Status.SUCCEEDED:
            log.info("job succeeded", extra={**extra, "latency_ms": outcome.latency_ms})
        else:
            log.warning("job failed: %s", outcome.error_code, extra=extra)
        return job_answer(written, outcome.status.value)

    def _write(self, job: Job, delivery: Delivery, outcome: Outcome) -> Job | None:
        """The guarded write; None when a cancel or a takeover got there first (logged)."""
        with self._db.transaction() as conn:
            written = store.finish_attempt(conn, job, outcome, delivery)
        if written is None:
            log.warning(
                "outcome discarded: the job was cancelled or taken over meanwhile",
                extra=_extra(job, delivery),
            )
            # The call's tokens are billed all the same, and a cancelled job's attempt settled.
            self._charge(job, outcome.usage)
        return written

    def _release(self, job: Job, delivery: Delivery, decision: retry.RetryDecision) -> None:
        """After an unexpected error, requeue at once rather than wait out the lease."""
        try:
            self._write(job, delivery, Outcome.retry(decision.error_code, decision.detail))
        except Exception:
            log.exception("could not requeue the job after an error", extra=_extra(job, delivery))

    def _since(self, started: float) -> int:
        return max(0, round((self._clock() - started) * 1000))


def _extra(job: Job, delivery: Delivery) -> dict[str, Any]:
    return {**job.log_context(), **delivery.log_context()}
