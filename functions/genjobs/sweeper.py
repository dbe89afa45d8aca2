"""The sweeper: nothing accepted is lost, nothing stays unfinished (run by Cloud Scheduler)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass

from genjobs.db import Database
from genjobs.errors import DatabaseUnavailable, GenJobsError
from genjobs.publisher import JobPublisher, publish_job
from genjobs.push import PushAnswer, ServiceVerifier, error_answer
from genjobs.settings import Settings
from genjobs.sql import query

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweptJob:
    """A job a sweep step moved: what publishing it needs, and where the step left it."""

    id: uuid.UUID
    task: str
    trace_id: str | None
    ai_status: str
    was_published: bool


@dataclass(frozen=True)
class PublishPlan:
    """What a sweep publishes, and what its lease step did."""

    to_publish: list[SweptJob]
    leases_requeued: int
    leases_failed: int


def plan_publish(leases_moved: list[SweptJob], due: list[SweptJob]) -> PublishPlan:
    """Publish each job requeued from an expired lease and each due one, once; failed ones not."""
    requeued = [job for job in leases_moved if job.ai_status == "queued"]
    unique = {job.id: job for job in [*requeued, *due]}
    return PublishPlan(list(unique.values()), len(requeued), len(leases_moved) - len(requeued))


@dataclass(frozen=True)
class SweepCounts:
    """What one sweep did."""

    expired: int = 0
    leases_requeued: int = 0
    leases_failed: int = 0
    published: int = 0
    publish_failed: int = 0
    stream_rows_deleted: int = 0


class Sweeper:
    """Republishes what Pub/Sub never got, recovers expired leases, fails what is too old."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        publisher: JobPublisher,
        verifier: ServiceVerifier,
    ) -> None:
        self._settings = settings
        self._db = db
        self._publisher = publisher
        self._verifier = verifier

    def handle(self, authorization: str | None) -> PushAnswer:
        """The scheduler's call: verify its OIDC token, sweep, answer with the counts."""
        try:
            self._verifier.verify(authorization)
            counts = self.sweep()
        except DatabaseUnavailable as error:
            log.warning("sweep skipped: database unavailable")
            return error_answer(error)
        except GenJobsError as error:
            log.warning("sweep refused: %s", error.detail)
            return error_answer(error)
        return PushAnswer(200, asdict(counts))

    def sweep(self) -> SweepCounts:
        """One pass: expire old jobs, recover leases, then publish what is due."""
        s = self._settings
        with self._db.transaction() as conn:
            expired = int(
                conn.execute(
                    query("sweep_expire_old"),
                    {"max_age": s.max_job_age_seconds, "batch": s.sweep_batch_size},
                ).scalar_one()
            )
            # Text streamed by jobs that ended a while ago: no client resumes those any more.
            swept = conn.execute(
                query("sweep_stream_text"), {"retention_seconds": s.stream_retention_seconds}
            ).rowcount
        with self._db.transaction() as conn:
            moved = conn.execute(query("sweep_expired_leases"), {"batch": s.sweep_batch_size}).all()
            due = conn.execute(
                query("sweep_due_for_publish"),
                {
                    "grace": s.sweep_publish_grace_seconds,
                    "stale": s.republish_after_seconds,
                    "batch": s.sweep_batch_size,
                },
            ).all()
        plan = plan_publish([SweptJob(*r) for r in moved], [SweptJob(*r) for r in due])
        published, failed = self._publish_all(plan.to_publish)
        counts = SweepCounts(
            expired=expired,
            leases_requeued=plan.leases_requeued,
            leases_failed=plan.leases_failed,
            published=published,
            publish_failed=failed,
            stream_rows_deleted=swept,
        )
        if counts != SweepCounts():
            log.info("sweep: %s", asdict(counts))
        return counts

    def _publish_all(self, jobs: list[SweptJob]) -> tuple[int, int]:
        published = failed = 0
        for job in jobs:
            result = publish_job(
                self._db,
                self._publisher,
                job.id,
                task=job.task,
                trace_id=job.trace_id,
                was_published=job.was_published,
            )
            if result.error is None:
                published += 1
            else:
                failed += 1
        return published, failed
