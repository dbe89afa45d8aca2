"""The sweeper on real Postgres: what it republishes, recovers and expires, and only once."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from genjobs import store
from genjobs.db import Database
from genjobs.errors import Unauthenticated
from genjobs.settings import Settings
from genjobs.statuses import Status
from genjobs.sweeper import SweepCounts, Sweeper
from tests.factories import JobFactory
from tests.integration.jobs import reload

TOKEN = "Bearer scheduler-token"


class RecordingPublisher:
    """Stands in for Pub/Sub at the edge: records what was published, or fails on request."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.published: list[uuid.UUID] = []
        self.lock = threading.Lock()

    def publish(self, job_id: uuid.UUID, attributes: dict[str, str]) -> str:
        if self.fail:
            raise RuntimeError("Pub/Sub unavailable")
        with self.lock:
            self.published.append(job_id)
            return f"m-{len(self.published)}"


class SchedulerVerifier:
    def verify(self, authorization_header: str | None) -> object:
        if authorization_header != TOKEN:
            raise Unauthenticated("bad token", realm="test")
        return object()


def make_sweeper(settings: Settings, db: Database, publisher: RecordingPublisher) -> Sweeper:
    return Sweeper(settings=settings, db=db, publisher=publisher, verifier=SchedulerVerifier())


def age(db: Database, job_id: uuid.UUID, column: str, seconds: int) -> None:
    """Move a timestamp into the past, as if that much time had gone by."""
    with db.transaction() as conn:
        conn.execute(
            text(
                f"UPDATE generations SET {column} = now() - make_interval(secs => :s) "
                "WHERE id = :id"
            ),
            {"s": seconds, "id": job_id},
        )


def test_job_whose_publish_failed_is_published_after_the_grace_period(
    settings: Settings,
    clean_db: Database,
    job_factory: JobFactory,
) -> None:
    publisher = RecordingPublisher()
    sweeper = make_sweeper(settings, clean_db, publisher)
    fresh, old = job_factory(publish_failed=True), job_factory(publish_failed=True)
    age(clean_db, old.id, "updated_at", settings.sweep_publish_grace_seconds + 1)
    assert sweeper.sweep() == SweepCounts(published=1)
    assert publisher.published == [old.id] and reload(clean_db, old.id).published_at is not None
    assert reload(clean_db, fresh.id).published_at is None
    assert sweeper.sweep() == SweepCounts()  # idempotent: nothing left to do


def test_published_but_never_started_is_published_again(
    settings: Settings,
    clean_db: Database,
    job_factory: JobFactory,
) -> None:
    publisher = RecordingPublisher()
    job = job_factory()
    with clean_db.transaction() as conn:
        store.mark_published(conn, job.id, "m-0")
    age(clean_db, job.id, "updated_at", settings.republish_after_seconds + 1)
    assert make_sweeper(settings, clean_db, publisher).sweep().published == 1
    assert publisher.published == [job.id]


def test_expired_lease_is_requeued_and_published_or_failed_when_spent(
    settings: Settings,
    clean_db: Database,
    job_factory: JobFactory,
) -> None:
    publisher = RecordingPublisher()
    retry, spent = job_factory(), job_factory(max_attempts=1)
    for job in (retry, spent):
        with clean_db.transaction() as conn:
            assert store.claim_job(conn, job.id, 60, store.Delivery()).claimed
        age(clean_db, job.id, "lease_expires_at", 1)
    counts = make_sweeper(settings, clean_db, publisher).sweep()
    assert counts.leases_requeued == 1 and counts.leases_failed == 1
    assert publisher.published == [retry.id]
    assert reload(clean_db, retry.id).status is Status.QUEUED
    failed = reload(clean_db, spent.id)
    assert failed.status is Status.FAILED and failed.error == {
        "code": "attempts_exhausted",
        "message": "attempt 1 did not finish within its lease",
    }


def test_jobs_past_the_maximum_age_fail(
    settings: Settings, clean_db: Database, job_factory: JobFactory
) -> None:
    job = job_factory()
    age(clean_db, job.id, "created_at", settings.max_job_age_seconds + 1)
    assert make_sweeper(settings, clean_db, RecordingPublisher()).sweep().expired == 1
    expired = reload(clean_db, job.id)
    assert expired.status is Status.FAILED and expired.error is not None
    assert expired.error["code"] == "expired"


def test_old_job_running_under_a_live_lease_is_left_to_finish(
    settings: Settings, clean_db: Database, job_factory: JobFactory
) -> None:
    running, dead = job_factory(), job_factory()
    for job in (running, dead):
        with clean_db.transaction() as conn:
            assert store.claim_job(conn, job.id, 30, store.Delivery()).claimed
        age(clean_db, job.id, "created_at", settings.max_job_age_seconds + 1)
    # The dead one's worker stopped renewing its lease.
    age(clean_db, dead.id, "lease_expires_at", 1)
    assert make_sweeper(settings, clean_db, RecordingPublisher()).sweep().expired == 1
    assert reload(clean_db, running.id).status is Status.PROCESSING
    expired = reload(clean_db, dead.id)
    assert expired.status is Status.FAILED and expired.error is not None
    assert expired.error["code"] == "expired"


def test_deferred_job_is_published_once_due(
    settings: Settings, clean_db: Database, job_factory: JobFactory
) -> None:
    publisher = RecordingPublisher()
    job = job_factory()
    with clean_db.transaction() as conn:
        conn.execute(
            text("UPDATE generations SET not_before = now() + interval '1 hour' WHERE id = :id"),
            {"id": job.id},
        )
    sweeper = make_sweeper(settings, clean_db, publisher)
    age(clean_db, job.id, "updated_at", settings.republish_after_seconds + 1)
    assert sweeper.sweep().published == 0  # not due yet, however old
    age(clean_db, job.id, "not_before", 1)
    assert sweeper.sweep().published == 1
    assert reload(clean_db, job.id).not_before is None


def test_failed_publish_leaves_the_job_for_the_next_sweep(
    settings: Settings,
    clean_db: Database,
    job_factory: JobFactory,
) -> None:
    job = job_factory(publish_failed=True)
    age(clean_db, job.id, "updated_at", settings.sweep_publish_grace_seconds + 1)
    counts = make_sweeper(settings, clean_db, RecordingPublisher(fail=True)).sweep()
    assert counts.publish_failed == 1 and reload(clean_db, job.id).published_at is None
    age(clean_db, job.id, "updated_at", settings.sweep_publish_grace_seconds + 1)
    publisher = RecordingPublisher()
    assert make_sweeper(settings, clean_db, publisher).sweep().published == 1


def test_concurrent_sweepers_publish_each_job_once(
    settings: Settings, clean_db: Database, job_factory: JobFactory
) -> None:
    publisher = RecordingPublisher()
    jobs = [job_factory(publish_failed=True) for _ in range(40)]
    for job in jobs:
        age(clean_db, job.id, "updated_at", settings.sweep_publish_grace_seconds + 1)
    sweepers = [make_sweeper(settings, clean_db, publisher) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda s: s.sweep(), sweepers))
    assert sum(c.published for c in counts) == 40
    assert sorted(publisher.published) == sorted(j.id for j in jobs)


@pytest.mark.parametrize("authorization", [None, "Bearer forged"])
def test_only_the_scheduler_may_sweep(
    settings: Settings,
    clean_db: Database,
    authorization: str | None,
    job_factory: JobFactory,
) -> None:
    job = job_factory(publish_failed=True)
    age(clean_db, job.id, "updated_at", settings.sweep_publish_grace_seconds + 1)
    publisher = RecordingPublisher()
    answer = make_sweeper(settings, clean_db, publisher).handle(authorization)
    assert answer.status == 401 and publisher.published == []
    ok = make_sweeper(settings, clean_db, publisher).handle(TOKEN)
    assert ok.status == 200 and ok.body["published"] == 1
