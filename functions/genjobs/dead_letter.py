"""The dead-letter handler: a message Pub/Sub gave up on marks its job failed, once."""

from __future__ import annotations

import logging
from typing import Any

from genjobs import store
from genjobs.db import Database
from genjobs.jobs import Job
from genjobs.push import (
    PushAnswer,
    PushMessage,
    ServiceVerifier,
    answer_push,
    job_answer,
    unknown_job_answer,
)
from genjobs.statuses import Event

log = logging.getLogger(__name__)

# Set by Pub/Sub on every dead-lettered message: deliveries to the source subscription.
SOURCE_DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"


class DeadLetterHandler:
    """Handles one push from the dead-letter subscription."""

    def __init__(self, *, db: Database, verifier: ServiceVerifier) -> None:
        self._db = db
        self._verifier = verifier

    def handle(self, authorization: str | None, body: bytes) -> PushAnswer:
        """Always 2xx once handled; 503 only when the database is unavailable."""
        return answer_push(self._verifier, authorization, body, self._process, log)

    def _process(self, message: PushMessage) -> PushAnswer:
        delivery = store.Delivery(message.message_id, message.delivery_attempt)
        extra: dict[str, Any] = {"job_id": str(message.job_id), "message_id": message.message_id}
        with self._db.transaction() as conn:
            job = store.get_job(conn, message.job_id)
            if job is None:
                log.warning("dead letter for a job that does not exist acked", extra=extra)
                return unknown_job_answer(message.job_id)
            if job.status.is_terminal:
                log.info("dead letter for a finished job acked; job untouched", extra=extra)
                return job_answer(job, "already_finished")
            if message.publish_time and store.replayed_since(conn, job.id, message.publish_time):
                # A late or duplicate copy from before `genjobs replay` queued the job again.
                log.info(
                    "dead letter older than its job's replay acked; job untouched", extra=extra
                )
                return job_answer(job, "stale")
            failed = store.fail_unfinished(
                conn,
                job.id,
                event=Event.DEAD_LETTERED,
                error_code="dead_lettered",
                error_message=_reason(job, message),
                delivery=delivery,
            )
        if failed is None:
            # Finished meanwhile, or an attempt holds a live lease: that attempt decides.
            log.info("job finished or running; dead letter acked, job untouched", extra=extra)
            return job_answer(job, "not_failed")
        log.error("job dead-lettered and marked failed", extra={**extra, "attempt": job.attempts})
        return job_answer(failed, "dead_lettered")


def _reason(job: Job, message: PushMessage) -> str:
    """What the job's error will say: how many deliveries, and the last error seen."""
    count = message.attributes.get(SOURCE_DELIVERY_COUNT, "")
    deliveries = int(count) if count.isdigit() else job.attempts
    return f"gave up after {deliveries} delivery attempts; last error: {job.last_error}"
