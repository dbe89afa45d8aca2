"""Each status-changing statement, run from every status, against statuses.TRANSITIONS."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, text

from genjobs import store
from genjobs.db import Database
from genjobs.jobs import Job, Usage
from genjobs.sql import query
from genjobs.statuses import TRANSITIONS, Event, Status

USER = uuid.UUID("00000000-0000-4000-8000-0000000000e1")
NO_DELIVERY = store.Delivery()
NEW = store.NewJob(USER, "summarize", {"text": "x"}, {}, None, "h", None, 5)


@dataclass(frozen=True)
class Step:
    """One statement that may change a job's status, and the event it logs when it does."""

    name: str
    event: Event
    run: Callable[[Connection, Job], None]
    # Columns set before the run, so the statement's other conditions hold.
    arrange: dict[str, Any] = field(default_factory=dict)


def _claim(conn: Connection, job: Job) -> None:
    store.claim_job(conn, job.id, 60, NO_DELIVERY)


def _finish(outcome: store.Outcome) -> Callable[[Connection, Job], None]:
    return lambda conn, job: store.finish_attempt(conn, job, outcome, NO_DELIVERY) and None


def _fail(event: Event) -> Callable[[Connection, Job], None]:
    def run(conn: Connection, job: Job) -> None:
        store.fail_unfinished(
            conn, job.id, event=event, error_code="x", error_message="x", delivery=NO_DELIVERY
        )

    return run


def _sweep(name: str, **params: Any) -> Callable[[Connection, Job], None]:
    return lambda conn, job: conn.execute(query(name), {"batch": 10, **params}) and None


def _replay(conn: Connection, job: Job) -> None:
    params = {"id": job.id, "since": datetime.now(UTC), "budget": 5, "source": "test"}
    conn.execute(query("replay_job"), {**params, "message_id": None})


OLD_AND_EXPIRED = {"created_at": "now() - interval '2 days'"}
SPENT = {"attempts": "5", "max_attempts": "5"}
STEPS = [
    Step("claim_job", Event.STARTED, _claim),
    Step(
        "finish succeeded",
        Event.SUCCEEDED,
        _finish(store.Outcome.succeeded("x", Usage("m", 1, 1), 1)),
    ),
    Step("finish failed", Event.FAILED, _finish(store.Outcome.failed("x", "x"))),
    Step("finish retry", Event.RETRY, _finish(store.Outcome.retry("x", "x"))),
    Step("finish deferred", Event.RETRY, _finish(store.Outcome.retry("x", "x", 1, 60.0))),
    Step("fail_unfinished", Event.FAILED, _fail(Event.FAILED)),
    Step("fail_unfinished dead letter", Event.DEAD_LETTERED, _fail(Event.DEAD_LETTERED)),
    Step(
        "cancel_job",
        Event.CANCELLED,
        lambda conn, job: store.cancel_job(conn, job.id, USER) and None,
    ),
    Step(
        "mark_published", Event.PUBLISHED, lambda conn, job: store.mark_published(conn, job.id, "m")
    ),
    Step(
        "sweep_expire_old", Event.FAILED, _sweep("sweep_expire_old", max_age=86400), OLD_AND_EXPIRED
    ),
    Step("sweep_expired_leases", Event.RETRY, _sweep("sweep_expired_leases")),
    Step("sweep_expired_leases spent", Event.FAILED, _sweep("sweep_expired_leases"), SPENT),
    Step("replay_job", Event.REPLAYED, _replay),
]


def _arrange(db: Database, status: Status, columns: dict[str, Any]) -> Job:
    """A job in `status` with an expired lease, one attempt used, nothing deferring it."""
    values = {
        "ai_status": f"'{status.value}'",
        "attempts": "1",
        "lease_expires_at": "now() - interval '1 second'",
        "not_before": "NULL",
        **columns,
    }
    assignments = ", ".join(f"{column} = {value}" for column, value in values.items())
    with db.transaction() as conn:
        conn.execute(text("TRUNCATE generation_deltas, generation_logs, generations"))
        job = store.insert_job(conn, NEW)
        assert job is not None
        conn.execute(text(f"UPDATE generations SET {assignments} WHERE id = :id"), {"id": job.id})
        arranged = store.get_job(conn, job.id)
    assert arranged is not None
    return arranged


def _logged(conn: Connection, job_id: uuid.UUID) -> list[tuple[str, str]]:
    rows = conn.execute(
        text(
            "SELECT event, ai_status FROM generation_logs "
            "WHERE generation_id = :id AND event <> 'queued' ORDER BY id"
        ),
        {"id": job_id},
    )
    return [(r.event, r.ai_status) for r in rows]


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_statement_moves_only_along_its_transition(clean_db: Database, step: Step) -> None:
    transition = TRANSITIONS[step.event]
    accepted: set[Status] = set()
    for status in Status:
        job = _arrange(clean_db, status, step.arrange)
        with clean_db.transaction() as conn:
            step.run(conn, job)
            after = store.get_job(conn, job.id)
            logged = _logged(conn, job.id)
        assert after is not None
        if not logged:
            assert after.status is status, f"{step.name} changed {status} without a log row"
            continue
        accepted.add(status)
        assert status in transition.sources, f"{step.name} moved a {status} job"
        assert after.status in transition.targets, f"{step.name}: {status} → {after.status}"
        assert logged == [(step.event.value, after.status.value)]
    assert accepted, f"{step.name} never changed a job"


def test_every_source_of_every_transition_is_taken_by_some_statement(clean_db: Database) -> None:
    taken: dict[Event, set[Status]] = {event: set() for event in Event}
    for step in STEPS:
        for status in TRANSITIONS[step.event].sources:
            job = _arrange(clean_db, status, step.arrange)
            with clean_db.transaction() as conn:
                step.run(conn, job)
                if _logged(conn, job.id):
                    taken[step.event].add(status)
    for event, transition in TRANSITIONS.items():
        if event is Event.QUEUED:
            continue  # creation: covered by the insert below
        assert taken[event] == transition.sources, event
    with clean_db.transaction() as conn:
        created = store.insert_job(conn, NEW)
    assert created is not None and created.status in TRANSITIONS[Event.QUEUED].targets


LIVE = {"ai_status": "'processing'", "lease_expires_at": "now() + interval '1 minute'"}
REFUSALS = [
    ({"ai_status": "'succeeded'"}, store.Refusal.FINISHED),
    ({"ai_status": "'failed'"}, store.Refusal.FINISHED),
    ({"ai_status": "'cancelled'"}, store.Refusal.CANCELLED),
    (
        {"ai_status": "'queued'", "not_before": "now() + interval '1 minute'"},
        store.Refusal.DEFERRED,
    ),
    (LIVE, store.Refusal.LEASE_LIVE),
    ({**LIVE, **SPENT}, store.Refusal.LEASE_LIVE),
    ({"ai_status": "'queued'", **SPENT}, store.Refusal.ATTEMPTS_SPENT),
    ({"ai_status": "'processing'", **SPENT}, store.Refusal.ATTEMPTS_SPENT),
]


@pytest.mark.parametrize(("columns", "refusal"), REFUSALS)
def test_claim_says_why_it_was_refused(
    clean_db: Database, columns: dict[str, Any], refusal: store.Refusal
) -> None:
    job = _arrange(clean_db, Status.QUEUED, columns)
    with clean_db.transaction() as conn:
        claim = store.claim_job(conn, job.id, 60, NO_DELIVERY)
    assert not claim.claimed and claim.refused is refusal
    assert claim.job is not None and claim.job.id == job.id


def test_claim_of_a_missing_job_is_refused_as_not_found(clean_db: Database) -> None:
    with clean_db.transaction() as conn:
        claim = store.claim_job(conn, uuid.uuid4(), 60, NO_DELIVERY)
    assert claim.refused is store.Refusal.NOT_FOUND and claim.job is None
