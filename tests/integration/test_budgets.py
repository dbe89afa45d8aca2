"""Token budgets on real Postgres: every call charged, reservations counted and settled,
dead attempts charged their bound, retries checked again, and the day is UTC's."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, text

from devstack.stub_model import StubModelServer
from genjobs import store
from genjobs.db import Database
from genjobs.jobs import Job
from genjobs.model_client import ModelClient
from genjobs.settings import Settings
from genjobs.sql import query
from genjobs.statuses import Event, Status
from genjobs.store import Delivery
from tests.factories import JobFactory, insert_row
from tests.integration.jobs import reload
from tests.integration.test_worker import TOKEN, Around, envelope, make_worker, unique

USER = uuid.UUID("00000000-0000-4000-8000-00000000b0d9")
BOUND = 500


@pytest.fixture(scope="module")
def stub() -> Iterator[StubModelServer]:
    server = StubModelServer(hang_seconds=5).start()
    yield server
    server.stop()


@pytest.fixture
def model(stub: StubModelServer) -> ModelClient:
    return ModelClient(api_key=None, base_url=stub.url)


def committed(db: Database, user: uuid.UUID = USER) -> int:
    """What the submit check counts for the user: charged today plus live reservations."""
    with db.transaction() as conn:
        return store.user_usage(conn, user, None).tokens_committed


def charged(job: Job) -> int:
    return (job.prompt_tokens or 0) + (job.completion_tokens or 0)


def reserve_charged(db: Database, job_id: uuid.UUID) -> int:
    with db.transaction() as conn:
        value = conn.execute(
            text("SELECT reserve_charged_tokens FROM generations WHERE id = :id"), {"id": job_id}
        ).scalar_one()
    return int(value or 0)


def claim(db: Database, job_id: uuid.UUID, message: str = "m-1") -> store.ClaimResult:
    with db.transaction() as conn:
        return store.claim_job(conn, job_id, 60, Delivery(message, 1))


def expire_lease(db: Database, job_id: uuid.UUID) -> None:
    with db.transaction() as conn:
        conn.execute(
            text(
                "UPDATE generations SET lease_expires_at = now() - interval '1 second' "
                "WHERE id = :id"
            ),
            {"id": job_id},
        )


def test_a_queued_job_reserves_its_bound_and_a_finished_one_counts_what_it_was_charged(
    clean_db: Database, job_factory: JobFactory
) -> None:
    job = job_factory(unique("reserve"), user_id=USER, reserved_tokens=BOUND)
    assert committed(clean_db) == BOUND
    assert claim(clean_db, job.id).claimed
    assert committed(clean_db) == BOUND  # running: still reserved
    with clean_db.transaction() as conn:
        running = store.get_job(conn, job.id)
        assert running is not None
        outcome = store.Outcome.succeeded({"text": "x"}, store.Usage("m", 30, 40), 5)
        assert store.finish_attempt(conn, running, outcome, Delivery()) is not None
    assert committed(clean_db) == 70  # settled: the reservation is gone, the usage counts


def test_a_structured_answer_refused_after_a_cancel_is_still_charged(
    settings: Settings, clean_db: Database, model: ModelClient, job_factory: JobFactory
) -> None:
    # Not streamed: the call runs to its end after the cancel, and its final write is refused.
    job = job_factory(
        unique("Ada met Charles"), task="extract_entities", user_id=USER, reserved_tokens=BOUND
    )

    def cancel() -> None:
        with clean_db.transaction() as conn:
            assert store.cancel_job(conn, job.id, job.user_id) is not None
        # The attempt is still running: its reservation keeps counting after the cancel.
        assert committed(clean_db) == BOUND

    worker = make_worker(settings, clean_db, Around(model, cancel))
    answer = worker.handle(TOKEN, envelope(job.id))
    assert answer.status == 200 and answer.body["outcome"] == "fenced"
    cancelled = reload(clean_db, job.id)
    assert cancelled.status is Status.CANCELLED and cancelled.result is None
    assert (cancelled.prompt_tokens or 0) > 0 and (cancelled.completion_tokens or 0) > 0
    assert cancelled.lease_expires_at is None  # settled
    assert committed(clean_db) == charged(cancelled)


def test_a_cancelled_attempt_that_never_settles_counts_as_charged_its_bound(
    clean_db: Database, job_factory: JobFactory
) -> None:
    job = job_factory(unique("crash after cancel"), user_id=USER, reserved_tokens=BOUND)
    assert claim(clean_db, job.id).claimed
    with clean_db.transaction() as conn:
        assert store.cancel_job(conn, job.id, USER) is not None
    expire_lease(clean_db, job.id)  # its worker died after the call: nothing was charged
    assert committed(clean_db) == BOUND


def test_a_takeover_charges_the_dead_attempts_reservation(
    clean_db: Database, job_factory: JobFactory
) -> None:
    job = job_factory(unique("dies mid-call"), user_id=USER, reserved_tokens=BOUND)
    assert claim(clean_db, job.id, "m-1").claimed
    expire_lease(clean_db, job.id)
    taken = claim(clean_db, job.id, "m-2")
    assert taken.claimed and taken.job is not None and taken.job.attempts == 2
    assert reserve_charged(clean_db, job.id) == BOUND
    # The dead attempt's bound is charged; the new attempt holds the reservation.
    assert committed(clean_db) == 2 * BOUND


@pytest.mark.parametrize("step", ["sweep_expired_leases", "sweep_expire_old", "dead_letter"])
def test_the_sweeper_and_dead_letter_charge_a_dead_attempts_reservation(
    step: str, clean_db: Database, job_factory: JobFactory
) -> None:
    job = job_factory(unique(f"dead under {step}"), user_id=USER, reserved_tokens=BOUND)
    assert claim(clean_db, job.id).claimed
    expire_lease(clean_db, job.id)
    with clean_db.transaction() as conn:
        if step == "sweep_expired_leases":
            assert conn.execute(query(step), {"batch": 10}).all()
        elif step == "sweep_expire_old":
            assert conn.execute(query(step), {"max_age": 0, "batch": 10}).scalar_one() == 1
        else:
            failed = store.fail_unfinished(
                conn,
                job.id,
                event=Event.DEAD_LETTERED,
                error_code="dead_lettered",
                error_message="test",
                delivery=Delivery(),
            )
            assert failed is not None
    assert reserve_charged(clean_db, job.id) == BOUND
    requeued = reload(clean_db, job.id).status is Status.QUEUED
    # Requeued, the job also holds a reservation for its next attempt; failed, it does not.
    assert committed(clean_db) == BOUND * (2 if requeued else 1)
    # A second pass charges nothing more.
    with clean_db.transaction() as conn:
        conn.execute(query("sweep_expired_leases"), {"batch": 10})
    assert reserve_charged(clean_db, job.id) == BOUND


def test_a_retry_that_no_longer_fits_the_budget_fails_without_calling_the_model(
    settings: Settings,
    clean_db: Database,
    model: ModelClient,
    stub: StubModelServer,
    job_factory: JobFactory,
) -> None:
    budget = 2_000
    worker = make_worker(
        settings=dataclasses.replace(settings, daily_token_budget=budget),
        db=clean_db,
        model=model,
    )
    prompt = unique("flaky stub:fail=500x1")
    job = job_factory(prompt, user_id=USER, reserved_tokens=BOUND)
    assert worker.handle(TOKEN, envelope(job.id, "m-1", 1)).status == 503  # requeued
    # Meanwhile another job of the user's spent most of the day's budget.
    with clean_db.transaction() as conn:
        insert_row(conn, status="succeeded", user_id=USER, model="m", completion_tokens=1_600)
    answer = worker.handle(TOKEN, envelope(job.id, "m-1", 2))
    assert answer.status == 200 and answer.body["outcome"] == "failed"
    failed = reload(clean_db, job.id)
    assert failed.error is not None and failed.error["code"] == "token_budget_exhausted"
    assert len(stub.calls(prompt)) == 1  # the first attempt's only
    assert committed(clean_db) == 1_600


def test_a_retry_that_fits_runs(
    settings: Settings, clean_db: Database, model: ModelClient, job_factory: JobFactory
) -> None:
    worker = make_worker(dataclasses.replace(settings, daily_token_budget=BOUND), clean_db, model)
    job = job_factory(unique("flaky stub:fail=500x1"), user_id=USER, reserved_tokens=BOUND)
    assert worker.handle(TOKEN, envelope(job.id, "m-1", 1)).status == 503
    answer = worker.handle(TOKEN, envelope(job.id, "m-1", 2))
    assert answer.status == 200 and answer.body["outcome"] == "succeeded"


def usage_in(conn: Connection, timezone: str) -> int:
    """The user's tokens today as the submit check sees them, on a session in `timezone`."""
    conn.execute(text(f"SET LOCAL TimeZone = '{timezone}'"))
    return store.user_usage(conn, USER, None).tokens_committed


@pytest.mark.parametrize("timezone", ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_the_budget_day_starts_at_utc_midnight_whatever_the_session_timezone(
    timezone: str, clean_db: Database
) -> None:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with clean_db.transaction() as conn:
        for created, tokens in [
            (midnight, 100),  # today's first moment: counted
            (midnight - timedelta(microseconds=1), 10_000),  # yesterday's last: not
            (midnight - timedelta(hours=13), 20_000),
        ]:
            insert_row(
                conn,
                status="succeeded",
                user_id=USER,
                model="m",
                completion_tokens=tokens,
                created_at=created,
            )
    with clean_db.transaction() as conn:
        assert usage_in(conn, timezone) == 100
