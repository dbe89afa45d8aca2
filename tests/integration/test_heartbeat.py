"""The worker's heartbeat on real Postgres: a running attempt's short lease lives while it works."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from genjobs import store
from genjobs.db import Database
from genjobs.heartbeat import Heartbeat
from genjobs.model_client import ModelClient
from genjobs.push import PushAnswer
from genjobs.settings import Settings
from genjobs.statuses import Status
from genjobs.streaming import DeltaWriter
from genjobs.tasks import TASKS
from genjobs.worker import Worker
from tests.factories import JobFactory
from tests.integration.jobs import reload
from tests.integration.test_worker import TOKEN, FakeVerifier, envelope, model, stub, unique

__all__ = ["model", "stub"]  # module fixtures shared with test_worker

HEARTBEAT = 1  # seconds: the lease is three of them


@pytest.fixture
def heartbeat(clean_db: Database) -> Iterator[Heartbeat]:
    beat = Heartbeat(clean_db, interval_seconds=HEARTBEAT, lease_seconds=3 * HEARTBEAT)
    yield beat
    beat.stop()


def short_lease_worker(
    settings: Settings, db: Database, model: ModelClient, heartbeat: Heartbeat
) -> Worker:
    short = dataclasses.replace(settings, heartbeat_seconds=HEARTBEAT)
    return Worker(
        settings=short,
        db=db,
        model=model,
        tasks=TASKS,
        verifier=FakeVerifier(),
        heartbeat=heartbeat,
    )


def lease_left(db: Database, job_id: uuid.UUID) -> tuple[str, float]:
    """The job's status and how many seconds its lease has left (negative: expired)."""
    with db.transaction() as conn:
        row = conn.execute(
            text(
                "SELECT ai_status, extract(epoch FROM lease_expires_at - now()) AS left_s"
                " FROM generations WHERE id = :id"
            ),
            {"id": job_id},
        ).one()
    return str(row.ai_status), float(row.left_s) if row.left_s is not None else -1.0


def in_background(worker: Worker, job_id: uuid.UUID) -> tuple[threading.Thread, list[PushAnswer]]:
    answers: list[PushAnswer] = []
    thread = threading.Thread(
        target=lambda: answers.append(worker.handle(TOKEN, envelope(job_id))), daemon=True
    )
    thread.start()
    return thread, answers


def test_lease_is_renewed_during_the_model_call_and_expires_once_renewal_stops(
    settings: Settings,
    clean_db: Database,
    model: ModelClient,
    heartbeat: Heartbeat,
    job_factory: JobFactory,
) -> None:
    # No text for 10 s: nothing but the heartbeat keeps the lease alive.
    job = job_factory(unique("stub:sleep=10 a model that thinks before it speaks"))
    worker = short_lease_worker(settings, clean_db, model, heartbeat)
    thread, answers = in_background(worker, job.id)
    samples: list[tuple[str, float]] = []
    until = time.monotonic() + 3.5  # longer than the 3 s lease taken at the claim
    while time.monotonic() < until:
        samples.append(lease_left(clean_db, job.id))
        time.sleep(0.25)
    running = [left for status, left in samples if status == "processing"]
    assert len(running) >= len(samples) - 2, samples  # claimed at once, still running
    assert all(0 < left <= 3 * HEARTBEAT + 0.1 for left in running), samples
    assert heartbeat.running() == 1

    # The process stops renewing (as a killed one does): the lease runs out within a lease.
    heartbeat.stop()
    stopped = time.monotonic()
    while lease_left(clean_db, job.id)[1] > 0:
        assert time.monotonic() - stopped < 3 * HEARTBEAT + 0.5, "the lease was still renewed"
        time.sleep(0.05)
    with clean_db.transaction() as conn:
        takeover = store.claim_job(conn, job.id, 30, store.Delivery("m-2", 2))
    assert takeover.claimed and takeover.job is not None and takeover.job.attempts == 2
    thread.join(timeout=15)
    # The first attempt's answer is fenced off by the takeover: at its outcome's write when
    # the answer came whole, or at a text write ("stopped") if the stream outlasted the
    # first-text window.
    assert answers and answers[0].body["outcome"] in ("fenced", "stopped"), answers
    assert reload(clean_db, job.id).status is Status.PROCESSING


def test_one_statement_renews_every_attempt_and_tells_those_that_lost_their_job(
    clean_db: Database, heartbeat: Heartbeat, job_factory: JobFactory
) -> None:
    jobs = [job_factory(unique(f"job {n}")) for n in range(3)]
    claimed = []
    for job in jobs:
        with clean_db.transaction() as conn:
            result = store.claim_job(conn, job.id, 1, store.Delivery())
        assert result.job is not None
        claimed.append(result.job)
    with clean_db.transaction() as conn:
        store.cancel_job(conn, jobs[0].id, jobs[0].user_id)
    with (
        heartbeat.holding(claimed[0]) as cancelled,
        heartbeat.holding(claimed[1]) as first,
        heartbeat.holding(claimed[2]) as second,
    ):
        heartbeat.beat()
        assert cancelled.is_set() and not first.is_set() and not second.is_set()
        for job in claimed[1:]:
            status, left = lease_left(clean_db, job.id)
            assert status == "processing" and 2 < left <= 3 * HEARTBEAT
    assert heartbeat.running() == 0


def test_heartbeat_stops_an_attempt_whose_job_was_cancelled_during_a_whole_answer_call(
    settings: Settings,
    clean_db: Database,
    model: ModelClient,
    heartbeat: Heartbeat,
    job_factory: JobFactory,
) -> None:
    # A structured task answers whole: only the heartbeat can learn the job is gone.
    job = job_factory(unique("stub:sleep=3 Ada met Charles"), task="extract_entities")
    worker = short_lease_worker(settings, clean_db, model, heartbeat)
    thread, answers = in_background(worker, job.id)
    deadline = time.monotonic() + 5
    while lease_left(clean_db, job.id)[0] != "processing":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with clean_db.transaction() as conn:
        store.cancel_job(conn, job.id, job.user_id)
    thread.join(timeout=15)
    assert answers and answers[0].body["outcome"] == "stopped", answers
    assert reload(clean_db, job.id).status is Status.CANCELLED


def test_redelivery_outwaits_a_dead_attempts_short_lease_and_takes_the_job_over(
    settings: Settings, clean_db: Database, model: ModelClient, job_factory: JobFactory
) -> None:
    # A worker claimed the job and died: its 2 s lease is never renewed. Pub/Sub redelivers
    # within seconds; acking that delivery would leave the job to the sweeper.
    job = job_factory(unique("taken over after a crash"))
    with clean_db.transaction() as conn:
        assert store.claim_job(conn, job.id, 2, store.Delivery("m-dead", 1)).claimed
    worker = Worker(
        settings=settings, db=clean_db, model=model, tasks=TASKS, verifier=FakeVerifier()
    )
    started = time.monotonic()
    answer = worker.handle(TOKEN, envelope(job.id, "m-redelivered", 2))
    assert answer.body["outcome"] == "succeeded", answer.body
    assert time.monotonic() - started < 2 + settings.lease_seconds
    assert reload(clean_db, job.id).attempts == 2


def test_a_stream_stops_at_its_next_text_once_the_heartbeat_finds_the_job_lost(
    clean_db: Database, job_factory: JobFactory
) -> None:
    job = job_factory(unique("streamed, then taken over"))
    with clean_db.transaction() as conn:
        claimed = store.claim_job(conn, job.id, 30, store.Delivery()).job
    assert claimed is not None
    lost = threading.Event()
    writer = DeltaWriter(clean_db, claimed, flush_seconds=0, lease_seconds=30, lost=lost)
    assert writer("first words ") is True
    lost.set()
    # No write is tried: the model call is closed at once.
    assert writer("more words") is False and writer.flush() is False
    with clean_db.transaction() as conn:
        texts = conn.execute(
            text("SELECT text FROM generation_deltas WHERE generation_id = :id"), {"id": job.id}
        ).scalars()
        assert list(texts) == ["first words "]
