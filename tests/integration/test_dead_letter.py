"""The dead-letter handler on real Postgres: fail what Pub/Sub gave up on, touch nothing else."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from genjobs import store
from genjobs.db import Database
from genjobs.dead_letter import DeadLetterHandler
from genjobs.errors import Forbidden
from genjobs.jobs import Job, Usage
from genjobs.statuses import Status
from tests.factories import JobFactory
from tests.integration.jobs import events, reload

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOKEN = "Bearer good-push-token"
USAGE = Usage("m", 1, 1)


class FakeVerifier:
    """Accepts one token; anything else is a service account that may not call."""

    def verify(self, authorization_header: str | None) -> object:
        if authorization_header != TOKEN:
            raise Forbidden("not the push service account")
        return object()


@pytest.fixture
def handler(clean_db: Database) -> DeadLetterHandler:
    return DeadLetterHandler(db=clean_db, verifier=FakeVerifier())


def dead_letter(job_id: uuid.UUID, delivery_count: str | None = "5") -> bytes:
    data: dict[str, Any] = json.loads((FIXTURES / "push_envelope_dead_letter.json").read_text())
    data["message"]["data"] = base64.b64encode(str(job_id).encode()).decode()
    if delivery_count is None:
        data["message"]["attributes"].pop("CloudPubSubDeadLetterSourceDeliveryCount")
    else:
        data["message"]["attributes"]["CloudPubSubDeadLetterSourceDeliveryCount"] = delivery_count
    return json.dumps(data).encode()


def retried_once(db: Database, job: Job) -> None:
    """One attempt that ended in a transient error, as the worker leaves it."""
    with db.transaction() as conn:
        claim = store.claim_job(conn, job.id, 60, store.Delivery("m-1", 1))
        assert claim.job is not None
        outcome = store.Outcome.retry("rate_limited", "slow down")
        assert store.finish_attempt(conn, claim.job, outcome, store.Delivery("m-1", 1))


def test_dead_letter_fails_the_job_with_its_last_error(
    handler: DeadLetterHandler,
    clean_db: Database,
    job_factory: JobFactory,
) -> None:
    job = job_factory()
    retried_once(clean_db, job)
    answer = handler.handle(TOKEN, dead_letter(job.id))
    assert answer.status == 200 and answer.body["outcome"] == "dead_lettered"
    failed = reload(clean_db, job.id)
    assert failed.status is Status.FAILED and failed.error == {
        "code": "dead_lettered",
        "message": "gave up after 5 delivery attempts; last error: rate_limited: slow down",
    }
    assert events(clean_db, job.id) == ["queued", "started", "retry", "dead_lettered"]


def test_without_the_pubsub_count_the_job_attempts_are_reported(
    handler: DeadLetterHandler,
    clean_db: Database,
    job_factory: JobFactory,
) -> None:
    job = job_factory()
    assert handler.handle(TOKEN, dead_letter(job.id, delivery_count=None)).status == 200
    error = reload(clean_db, job.id).error
    assert error is not None
    assert error["message"] == "gave up after 0 delivery attempts; last error: none recorded"


def test_a_job_running_under_a_live_lease_is_left_to_its_attempt(
    handler: DeadLetterHandler,
    clean_db: Database,
    job_factory: JobFactory,
) -> None:
    job = job_factory()
    with clean_db.transaction() as conn:
        claim = store.claim_job(conn, job.id, 60, store.Delivery("m-1", 5))
    assert claim.job is not None
    answer = handler.handle(TOKEN, dead_letter(job.id))
    assert answer.status == 200 and answer.body["outcome"] == "not_failed"
    done = store.Outcome.succeeded({"text": "in time"}, USAGE, latency_ms=1)
    with clean_db.transaction() as conn:
        assert store.finish_attempt(conn, claim.job, done, store.Delivery("m-1", 5)) is not None
    assert reload(clean_db, job.id).status is Status.SUCCEEDED


def test_a_job_whose_lease_expired_is_failed_and_its_late_write_refused(
    handler: DeadLetterHandler,
    clean_db: Database,
    job_factory: JobFactory,
) -> None:
    job = job_factory()
    with clean_db.transaction() as conn:
        claim = store.claim_job(conn, job.id, 60, store.Delivery("m-1", 5))
        conn.execute(text("UPDATE generations SET lease_expires_at = now() - interval '1 second'"))
    assert claim.job is not None
    assert handler.handle(TOKEN, dead_letter(job.id)).body["outcome"] == "dead_lettered"
    late = store.Outcome.succeeded({"text": "too late"}, USAGE, latency_ms=1)
    with clean_db.transaction() as conn:
        assert store.finish_attempt(conn, claim.job, late, store.Delivery("m-1", 5)) is None
    assert reload(clean_db, job.id).status is Status.FAILED


def test_a_finished_job_is_left_untouched(
    handler: DeadLetterHandler, clean_db: Database, job_factory: JobFactory
) -> None:
    job = job_factory()
    with clean_db.transaction() as conn:
        claim = store.claim_job(conn, job.id, 60, store.Delivery("m-1", 1))
        assert claim.job is not None
        done = store.Outcome.succeeded({"text": "ok"}, USAGE, latency_ms=1)
        store.finish_attempt(conn, claim.job, done, store.Delivery("m-1", 1))
    before = reload(clean_db, job.id)
    answer = handler.handle(TOKEN, dead_letter(job.id))
    assert answer.status == 200 and answer.body["outcome"] == "already_finished"
    assert reload(clean_db, job.id) == before
    assert events(clean_db, job.id) == ["queued", "started", "succeeded"]


def test_duplicate_dead_letters_write_once(
    handler: DeadLetterHandler, clean_db: Database, job_factory: JobFactory
) -> None:
    job = job_factory()
    assert handler.handle(TOKEN, dead_letter(job.id)).body["outcome"] == "dead_lettered"
    assert handler.handle(TOKEN, dead_letter(job.id)).body["outcome"] == "already_finished"
    assert events(clean_db, job.id) == ["queued", "dead_lettered"]


@pytest.mark.parametrize(
    "body",
    [
        (FIXTURES / "push_envelope_no_message.json").read_bytes(),
        (FIXTURES / "push_envelope_not_a_job_id.json").read_bytes(),
    ],
)
def test_poison_and_unknown_jobs_are_acked_and_write_nothing(
    handler: DeadLetterHandler, clean_db: Database, body: bytes
) -> None:
    assert handler.handle(TOKEN, body).status == 200
    assert handler.handle(TOKEN, dead_letter(uuid.uuid4())).body["outcome"] == "unknown_job"
    with clean_db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM generation_logs")).scalar_one() == 0


def test_forbidden_caller_is_refused(
    handler: DeadLetterHandler, clean_db: Database, job_factory: JobFactory
) -> None:
    job = job_factory()
    assert handler.handle("Bearer someone-else", dead_letter(job.id)).status == 403
    assert reload(clean_db, job.id).status is Status.QUEUED


def test_database_down_nacks_with_503() -> None:
    down = Database(create_engine("postgresql+pg8000://postgres@127.0.0.1:9/none"))
    try:
        answer = DeadLetterHandler(db=down, verifier=FakeVerifier()).handle(
            TOKEN, dead_letter(uuid.uuid4())
        )
    finally:
        down.dispose()
    assert answer.status == 503 and answer.headers["Retry-After"]
