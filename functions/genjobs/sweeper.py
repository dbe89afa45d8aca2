"""The sweeper: nothing accepted is lost, nothing stays unfinished (run by Cloud Scheduler)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass

from sqlalchemy import text

from genjobs import store
from genjobs.db import Database
from genjobs.errors import DatabaseUnavailable, GenJobsError
from genjobs.publisher import JobPublisher
from genjobs.push import PushAnswer, ServiceVerifier, error_answer
from genjobs.settings import Settings

log = logging.getLogger(__name__)

# Each step locks its rows with SKIP LOCKED and moves them on in the same statement, so
# sweepers running at once never take the same job, and running twice changes nothing more.
_EXPIRE_OLD = text(
    f"""
    WITH old AS (
      SELECT id FROM generations
      WHERE ai_status IN ('queued', 'processing')
        AND created_at < now() - make_interval(secs => :max_age)
        -- A replayed job's age starts again at its replay (`genjobs replay`, days later).
        AND NOT EXISTS (
          SELECT 1 FROM generation_logs l
          WHERE l.generation_id = generations.id AND l.event = 'replayed'
            AND l.created_at >= now() - make_interval(secs => :max_age))
      ORDER BY created_at LIMIT :batch
      FOR UPDATE SKIP LOCKED
    ), failed AS (
      UPDATE generations g
      SET ai_status = 'failed', lease_expires_at = NULL, not_before = NULL,
          finished_at = now(), updated_at = now(),
          error = jsonb_build_object('code', 'expired',
                                     'message', 'not finished within the maximum job age')
      FROM old WHERE g.id = old.id
      RETURNING g.*
    ), log AS (
      INSERT INTO generation_logs ({store.LOG_COLUMNS})
      SELECT id, user_id, 'failed', 'failed', attempts, NULL, NULL,
             NULL, NULL, NULL, NULL, 'expired', 'not finished within the maximum job age'
      FROM failed
    )
    SELECT count(*) FROM failed
    """
)

_EXPIRED_LEASES = text(
    f"""
    WITH expired AS (
      SELECT id FROM generations
      WHERE ai_status = 'processing' AND lease_expires_at < now()
      ORDER BY lease_expires_at LIMIT :batch
      FOR UPDATE SKIP LOCKED
    ), moved AS (
      UPDATE generations g
      SET ai_status = CASE WHEN g.attempts >= g.max_attempts THEN 'failed' ELSE 'queued' END,
          finished_at = CASE WHEN g.attempts >= g.max_attempts THEN now() END,
          lease_expires_at = NULL, updated_at = now(),
          error = jsonb_build_object(
            'code', CASE WHEN g.attempts >= g.max_attempts THEN 'attempts_exhausted'
                         ELSE 'lease_expired' END,
            'message', 'attempt ' || g.attempts || ' did not finish within its lease')
      FROM expired WHERE g.id = expired.id
      RETURNING g.*
    ), log AS (
      INSERT INTO generation_logs ({store.LOG_COLUMNS})
      SELECT id, user_id, CASE WHEN ai_status = 'failed' THEN 'failed' ELSE 'retry' END,
             ai_status, attempts, NULL, NULL, NULL, NULL, NULL, NULL,
             error ->> 'code', error ->> 'message'
      FROM moved
    )
    SELECT id, task, trace_id, ai_status FROM moved
    """
)

# Queued jobs to publish: never published (after a grace period that leaves the api its own
# publish), deferred by a rate limit and now due, or published long ago and never started.
_DUE_FOR_PUBLISH = text(
    """
    WITH due AS (
      SELECT id FROM generations
      WHERE ai_status = 'queued' AND (
        (not_before IS NOT NULL AND not_before <= now())
        OR (not_before IS NULL AND published_at IS NULL
            AND updated_at < now() - make_interval(secs => :grace))
        OR (not_before IS NULL AND published_at IS NOT NULL
            AND updated_at < now() - make_interval(secs => :stale))
      )
      ORDER BY updated_at LIMIT :batch
      FOR UPDATE SKIP LOCKED
    )
    UPDATE generations g SET not_before = NULL, updated_at = now()
    FROM due WHERE g.id = due.id
    RETURNING g.id, g.task, g.trace_id
    """
)

_UNPUBLISHED = text(
    "UPDATE generations SET published_at = NULL WHERE id = :id AND ai_status = 'queued'"
)


@dataclass(frozen=True)
class SweepCounts:
    """What one sweep did."""

    expired: int = 0
    leases_requeued: int = 0
    leases_failed: int = 0
    published: int = 0
    publish_failed: int = 0


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
                    _EXPIRE_OLD, {"max_age": s.max_job_age_seconds, "batch": s.sweep_batch_size}
                ).scalar_one()
            )
        with self._db.transaction() as conn:
            moved = conn.execute(_EXPIRED_LEASES, {"batch": s.sweep_batch_size}).all()
            due = conn.execute(
                _DUE_FOR_PUBLISH,
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
                    conn.execute(_UNPUBLISHED, {"id": job_id})
                continue
            with self._db.transaction() as conn:
                store.mark_published(conn, job_id, message_id)
            published += 1
        return published, failed
