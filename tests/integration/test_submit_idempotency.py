"""An Idempotency-Key taken by a concurrent insert is replayed, never a 409, on real Postgres."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from genjobs import store
from genjobs.api.submit import SubmitService, request_hash
from genjobs.db import Database, pg8000_url
from genjobs.errors import IdempotencyKeyReused
from genjobs.settings import Settings
from genjobs.tasks import TASKS
from tests.ops.helpers import RecordingPublisher, events

BODY = {"task": "summarize", "input": {"text": "One key, one job."}}


def new_job(user: uuid.UUID, key: str, body_hash: str) -> store.NewJob:
    """The job a writer that skips the per-user lock inserts."""
    return store.NewJob(
        user_id=user,
        task="summarize",
        input={"text": "One key, one job."},
        metadata={},
        idempotency_key=key,
        request_hash=body_hash,
        trace_id=None,
        max_attempts=5,
    )


def wait_until_someone_waits_for_a_lock(database_url: str, timeout: float = 10) -> None:
    """Return once a session of this database waits for a lock (the other insert's key).

    It asks Postgres directly, not through the pool under test: behind PgBouncer the two
    transactions it watches already hold two of the pooler's three server connections.
    """
    url, connect_args = pg8000_url(database_url)
    engine = create_engine(url, connect_args=connect_args, poolclass=NullPool)
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + timeout
    try:
        with engine.connect() as conn:
            while time.monotonic() < deadline:
                if conn.execute(waiting).scalar_one():
                    return
                conn.rollback()  # a new snapshot of pg_stat_activity
                time.sleep(0.02)
            sessions = conn.execute(
                text(
                    "SELECT state, wait_event_type, wait_event, left(query, 80) AS query"
                    " FROM pg_stat_activity WHERE datname = current_database()"
                )
            ).all()
    finally:
        engine.dispose()
    raise AssertionError(f"the submit never waited for the other insert; sessions: {sessions}")


@pytest.mark.parametrize("same_body", [True, False])
def test_a_key_inserted_concurrently_without_the_lock_is_replayed(
    settings: Settings, clean_db: Database, database_url: str, same_body: bool
) -> None:
    service = SubmitService(settings, clean_db, RecordingPublisher(), TASKS)
    user, key = uuid.uuid4(), "raced"
    data = TASKS["summarize"].input_model.model_validate(BODY["input"])
    normalized = data.model_dump(mode="json", exclude_none=True)
    fingerprint = request_hash("summarize", normalized, {}) if same_body else "another body"
    with ThreadPoolExecutor(1) as pool:
        with clean_db.transaction() as other:
            job = store.insert_job(other, new_job(user, key, fingerprint))  # no user_usage()
            assert job is not None
            answer = pool.submit(service.submit, user, BODY, key, None)
            wait_until_someone_waits_for_a_lock(database_url)  # ON CONFLICT waits for our commit
        if same_body:
            submitted = answer.result(timeout=10)
            assert submitted.replayed and submitted.job.id == job.id
        else:
            with pytest.raises(IdempotencyKeyReused):
                answer.result(timeout=10)
    with clean_db.transaction() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM generations WHERE user_id = :u"), {"u": user}
        ).scalar_one()
    assert count == 1


def published_at(db: Database, job_id: uuid.UUID) -> object:
    with db.transaction() as conn:
        job = store.get_job(conn, job_id)
    assert job is not None
    return job.published_at


def test_a_submit_is_one_write_and_a_failed_publish_leaves_the_job_to_the_sweeper(
    settings: Settings, clean_db: Database
) -> None:
    user = uuid.uuid4()
    publisher = RecordingPublisher()
    service = SubmitService(settings, clean_db, publisher, TASKS)
    stored = service.submit(user, BODY, "published", None).job
    assert publisher.ids() == [stored.id]
    # Stored counted as published; nothing is written after the publish.
    assert stored.published_at is not None
    assert events(clean_db, stored.id) == ["queued"]

    publisher.fail = True
    other = {**BODY, "input": {"text": "No Pub/Sub."}}
    failed = service.submit(user, other, "lost", None).job
    assert published_at(clean_db, failed.id) is None


def test_replaying_a_job_that_never_started_publishes_it_again(
    settings: Settings, clean_db: Database
) -> None:
    # What an api that died between its commit and its publish leaves: stored, never sent.
    user, key = uuid.uuid4(), "api-died"
    data = TASKS["summarize"].input_model.model_validate(BODY["input"])
    fingerprint = request_hash("summarize", data.model_dump(mode="json", exclude_none=True), {})
    with clean_db.transaction() as conn:
        job = store.insert_job(conn, new_job(user, key, fingerprint))
    assert job is not None and job.published_at is not None
    publisher = RecordingPublisher(fail=True)
    service = SubmitService(settings, clean_db, publisher, TASKS)
    # The client's retry: when that publish fails too, the sweeper's grace takes the job.
    assert service.submit(user, BODY, key, None).replayed
    assert published_at(clean_db, job.id) is None
    publisher.fail = False
    assert service.submit(user, BODY, key, None).replayed
    assert publisher.ids() == [job.id]
    assert events(clean_db, job.id) == ["queued", "published"]
