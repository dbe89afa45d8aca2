"""The sweeper: nothing accepted is lost, nothing stays unfinished (run by Cloud Scheduler)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass

from genjobs import store
from genjobs.db import Database
from genjobs.errors import DatabaseUnavailable, GenJobsError
from genjobs.publisher import JobPublisher
from genjobs.push import PushAnswer, ServiceVerifier, error_answer
from genjobs.settings import Settings
from genjobs.sql import query

log = logging.getLogger(__name__)


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
        requeued = [(r.id, r.task, r.trace_id) for r in moved if r.ai_status == "queued"]
        to_publish = {job_id: (task, trace) for job_id, task, trace in requeued}
        to_publish.update({r.id: (r.task, r.trace_id) for r in due})
        published, failed = self._publish_all(to_publish)
        counts = SweepCounts(
            expired=expired,
            leases_requeued=len(requeued),
            leases_failed=len(moved) - len(requeued),
            published=published,
            publish_failed=failed,
            stream_rows_deleted=swept,
        )
        if counts != SweepCounts():
            log.info("sweep: %s", asdict(counts))
        return counts

    def _publish_all(self, jobs: dict[uuid.UUID, tuple[str, str | None]]) -> tuple[int, int]:
        published = failed = 0
        for job_id, (task, trace_id) in jobs.items():
            attributes = {"task": task, **({"trace_id": trace_id} if trace_id else {})}
            try:
                message_id = self._publisher.publish(job_id, attributes)
            except Exception:
                failed += 1
                log.warning("republish failed", exc_info=True, extra={"job_id": job_id})
                # Unpublished again, so the next sweep takes it after the grace period.
                with self._db.transaction() as conn:
                    store.unmark_published(conn, job_id)
                continue
            with self._db.transaction() as conn:
                store.mark_published(conn, job_id, message_id)
            published += 1
        return published, failed
