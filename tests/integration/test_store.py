"""The job store's guarded transitions on real Postgres."""

from __future__ import annotations

import uuid

from genjobs import store
from genjobs.db import Database
from genjobs.jobs import Usage
from genjobs.statuses import Status
from tests.factories import TEST_USER, new_job
from tests.integration.jobs import events

USER = TEST_USER


def test_insert_claim_succeed_writes_one_log_row_per_event(clean_db: Database) -> None:
    with clean_db.transaction() as conn:
        job = store.insert_job(conn, new_job(max_attempts=3))
    assert job is not None and job.status is Status.QUEUED
    with clean_db.transaction() as conn:
        store.mark_published(conn, job.id, "m-1")
        store.mark_published(conn, job.id, "m-2")  # a republish (sweeper) is an event too
    delivery = store.Delivery("m-1", 1)
    with clean_db.transaction() as conn:
        claim = store.claim_job(conn, job.id, 60, delivery)
    assert claim.claimed and claim.job is not None and claim.job.attempts == 1
    with clean_db.transaction() as conn:
        again = store.claim_job(conn, job.id, 60, delivery)
    assert again.refused is store.Refusal.LEASE_LIVE
    assert again.job is not None and again.job.status is Status.PROCESSING
    outcome = store.Outcome.succeeded({"text": "ok"}, Usage("m", 3, 4), latency_ms=5)
    with clean_db.transaction() as conn:
        done = store.finish_attempt(conn, claim.job, outcome, delivery)
    assert done is not None and done.status is Status.SUCCEEDED and done.result == {"text": "ok"}
    with clean_db.transaction() as conn:
        late = store.finish_attempt(conn, claim.job, outcome, delivery)
    assert late is None
    assert events(clean_db, job.id) == ["queued", "published", "published", "started", "succeeded"]


def test_idempotency_key_conflict_returns_none_and_usage_sees_existing(clean_db: Database) -> None:
    with clean_db.transaction() as conn:
        first = store.insert_job(conn, new_job(idempotency_key="k1", max_attempts=3))
        second = store.insert_job(conn, new_job(idempotency_key="k1", max_attempts=3))
        usage = store.user_usage(conn, USER, "k1")
    assert first is not None and second is None
    assert usage.existing is not None and usage.existing.id == first.id
    assert usage.active_jobs == 1 and usage.submitted_last_minute == 1


def test_cancel_only_unfinished_and_fencing_refuses_the_worker(clean_db: Database) -> None:
    with clean_db.transaction() as conn:
        job = store.insert_job(conn, new_job(max_attempts=3))
    assert job is not None
    with clean_db.transaction() as conn:
        claim = store.claim_job(conn, job.id, 60, store.Delivery())
        cancelled = store.cancel_job(conn, job.id, USER)
        assert cancelled is not None and cancelled.status is Status.CANCELLED
        assert store.cancel_job(conn, job.id, USER) is None
    assert claim.job is not None
    outcome = store.Outcome.succeeded("x", Usage("m", 1, 1), latency_ms=1)
    with clean_db.transaction() as conn:
        assert store.finish_attempt(conn, claim.job, outcome, store.Delivery()) is None


def test_list_is_keyset_paginated_newest_first(clean_db: Database) -> None:
    with clean_db.transaction() as conn:
        ids = [
            store.insert_job(conn, new_job(idempotency_key=f"k{i}", max_attempts=3))
            for i in range(5)
        ]
    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        with clean_db.transaction() as conn:
            page, cursor = store.list_jobs(conn, USER, limit=2, cursor=cursor)
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert len(seen) == 5 and set(seen) == {j.id for j in ids if j}
