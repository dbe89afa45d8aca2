"""Replay from the dead-letter pull subscription: against the emulator, and end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.supervisor import ROOT
from genjobs.db import Database
from genjobs.ops.replay import Action, Replayer, Summary
from genjobs.ops.replay_sources import (
    DeadLetter,
    DeadLetterSubscription,
    job_id_from_data,
    replay_from_dead_letter,
)
from tests.factories import insert_row
from tests.ops.helpers import RecordingPublisher, events, job_row
from tests.stack import Stack

PROJECT = "local-project"
DEAD_LETTER_TOPIC = f"projects/{PROJECT}/topics/generation-jobs-dead-letter"
MAX_DELIVERY_ATTEMPTS = 5  # infra/pubsub.yaml, generation-jobs-worker


@pytest.fixture
def queue(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[DeadLetterSubscription]:
    """The replay subscription of the stack's emulator, emptied of what other tests on the
    shared stack dead-lettered; each test here leaves it empty (drained after a failure)."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{stack.ports.pubsub}")
    subscription = DeadLetterSubscription(PROJECT)
    while batch := subscription.pull(100):
        subscription.ack([m.ack_id for m in batch])
    yield subscription
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        while batch := subscription.pull(100):
            subscription.ack([m.ack_id for m in batch])
    subscription.close()


def dead_letter(stack: Stack, *payloads: bytes) -> None:
    """Publish to the dead-letter topic as Pub/Sub does after the last delivery attempt."""
    from google.cloud.pubsub_v1 import PublisherClient

    client = PublisherClient()
    for data in payloads:
        client.publish(
            DEAD_LETTER_TOPIC, data, CloudPubSubDeadLetterSourceDeliveryCount="5"
        ).result(timeout=10)


def failed_jobs(stack: Stack, db: Database, count: int) -> list[uuid.UUID]:
    """Failed jobs with their dead-letter messages, once the dead_letter handler has seen them
    (it leaves a failed job untouched; waiting keeps it from racing the replay)."""
    with db.transaction() as conn:
        jobs = [insert_row(conn) for _ in range(count)]
    dead_letter(stack, *(str(job_id).encode() for job_id in jobs))
    for job_id in jobs:
        stack.wait_for_log("dead_letter", str(job_id))
    return jobs


def replay(
    db: Database,
    queue: Any,
    publisher: RecordingPublisher | None = None,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    job_ids: Sequence[uuid.UUID] = (),
) -> Summary:
    replayer = Replayer(db, publisher or RecordingPublisher(), dry_run=dry_run)
    summary = Summary(source="dead-letter", dry_run=dry_run)
    return replay_from_dead_letter(queue, replayer, summary=summary, limit=limit, job_ids=job_ids)


def replayed(summary: Summary) -> list[uuid.UUID | None]:
    return sorted((r.job_id for r in summary.results if r.action is Action.REPLAYED), key=str)


@pytest.mark.one_database_path  # a whole stack (tests/conftest.py)
def test_dry_run_then_all_messages_replayed_and_acked(
    stack: Stack, db: Database, queue: DeadLetterSubscription
) -> None:
    jobs = failed_jobs(stack, db, 3)
    publisher = RecordingPublisher()
    dry = replay(db, queue, publisher, dry_run=True)
    assert {(r.job_id, r.action) for r in dry.results} == {
        (job_id, Action.WOULD_REPLAY) for job_id in jobs
    }
    assert dry.acked == 0 and publisher.published == []
    assert {job_row(db, j)["ai_status"] for j in jobs} == {"failed"}

    summary = replay(db, queue, publisher)  # the dry run gave every message back
    assert replayed(summary) == sorted(jobs, key=str)
    assert summary.acked == 3
    assert sorted(publisher.ids(), key=str) == sorted(jobs, key=str)
    assert {job_row(db, j)["ai_status"] for j in jobs} == {"queued"}
    assert replay(db, queue).results == []  # the messages are gone


@pytest.mark.one_database_path  # a whole stack (tests/conftest.py)
def test_limit_replays_that_many_and_leaves_the_rest(
    stack: Stack, db: Database, queue: DeadLetterSubscription
) -> None:
    jobs = failed_jobs(stack, db, 3)
    first = replay(db, queue, limit=2)
    assert len(replayed(first)) == 2 and first.acked == 2
    rest = replay(db, queue)
    assert replayed(rest) == sorted(set(jobs) - set(replayed(first)), key=str)


@pytest.mark.one_database_path  # a whole stack (tests/conftest.py)
def test_one_job_replayed_and_the_other_messages_released(
    stack: Stack, db: Database, queue: DeadLetterSubscription
) -> None:
    wanted, other = failed_jobs(stack, db, 2)
    only = replay(db, queue, job_ids=[wanted])
    assert replayed(only) == [wanted] and only.acked == 1
    assert job_row(db, other)["ai_status"] == "failed"
    # The other message was given back at once: the next run finds it.
    assert replayed(replay(db, queue)) == [other]


class FakeQueue:
    """Messages handed out once each (then redelivered if released), acks recorded."""

    def __init__(self, messages: list[DeadLetter]) -> None:
        self.waiting = list(messages)
        self.acked: list[str] = []
        self.released: list[str] = []

    def pull(self, max_messages: int) -> list[DeadLetter]:
        batch, self.waiting = self.waiting[:max_messages], self.waiting[max_messages:]
        return batch

    def ack(self, ack_ids: Sequence[str]) -> None:
        self.acked += ack_ids

    def release(self, ack_ids: Sequence[str]) -> None:
        self.released += ack_ids


def message(job_id: uuid.UUID | None, published_at: datetime, data: bytes = b"") -> DeadLetter:
    name = uuid.uuid4().hex
    return DeadLetter(f"ack-{name}", f"msg-{name}", job_id, published_at, data)


def test_messages_are_acked_only_when_their_job_needs_nothing_more(clean_db: Database) -> None:
    now = datetime.now(UTC)
    with clean_db.transaction() as conn:
        failed = insert_row(conn)
        waiting = insert_row(conn, status="queued")  # the dead_letter handler has not run yet
        done = insert_row(conn, status="succeeded")
    messages = {
        "failed": message(failed, now),
        "duplicate": message(failed, now),  # Pub/Sub delivers at least once
        "waiting": message(waiting, now),
        "done": message(done, now),
        "unknown": message(uuid.uuid4(), now),
        "poison": message(None, now, b"not a job id"),
    }
    fake = FakeQueue(list(messages.values()))
    summary = replay(clean_db, fake)
    outcome = {
        name: (r.action, r.reason) for name, r in zip(messages, summary.results, strict=True)
    }
    # The two copies run at once: one replays the job, the other finds it replayed.
    assert {outcome.pop("failed"), outcome.pop("duplicate")} == {
        (Action.REPLAYED, ""),
        (Action.SKIPPED, "already_replayed"),
    }
    assert outcome == {
        "waiting": (Action.DEFERRED, "not_failed_yet"),
        "done": (Action.SKIPPED, "succeeded"),
        "unknown": (Action.SKIPPED, "unknown_job"),
        "poison": (Action.SKIPPED, "not_a_job_message"),
    }
    assert set(fake.released) == {messages["waiting"].ack_id}
    assert set(fake.acked) == {m.ack_id for name, m in messages.items() if name != "waiting"}
    assert summary.acked == 5
    assert events(clean_db, failed).count("replayed") == 1


def test_a_message_older_than_the_jobs_last_replay_is_acked_without_replaying(
    clean_db: Database,
) -> None:
    with clean_db.transaction() as conn:
        job_id = insert_row(conn)
    old = datetime.now(UTC) - timedelta(minutes=5)
    assert replayed(replay(clean_db, FakeQueue([message(job_id, old)]))) == [job_id]
    with clean_db.transaction() as conn:  # it failed again meanwhile
        conn.exec_driver_sql(f"UPDATE generations SET ai_status = 'failed' WHERE id = '{job_id}'")
    stale = FakeQueue([message(job_id, old)])  # redelivered after a crash before its ack
    summary = replay(clean_db, stale)
    assert [(r.action, r.reason) for r in summary.results] == [(Action.SKIPPED, "already_replayed")]
    assert len(stale.acked) == 1
    fresh = FakeQueue([message(job_id, datetime.now(UTC))])  # its new dead letter
    assert replayed(replay(clean_db, fresh)) == [job_id]


class Redelivering(FakeQueue):
    """Hands out prepared batches in order: the same message may come back."""

    def __init__(self, batches: list[list[DeadLetter]]) -> None:
        super().__init__([])
        self.batches = batches

    def pull(self, max_messages: int) -> list[DeadLetter]:
        return self.batches.pop(0) if self.batches else []


def test_a_message_that_comes_back_within_a_run_is_handled_once(clean_db: Database) -> None:
    with clean_db.transaction() as conn:
        failed = insert_row(conn)
        waiting = insert_row(conn, status="queued")
    now = datetime.now(UTC)
    first, held = message(failed, now), message(waiting, now)
    # Pub/Sub delivers both again under new ack ids (a duplicate; a passed ack deadline).
    first_again = DeadLetter("ack-again-1", first.message_id, failed, now, b"")
    held_again = DeadLetter("ack-again-2", held.message_id, waiting, now, b"")
    queue = Redelivering([[first, held], [first_again, held_again]])
    summary = replay(clean_db, queue)
    assert [(r.job_id, r.action) for r in summary.results] == [
        (failed, Action.REPLAYED),
        (waiting, Action.DEFERRED),
    ]
    assert queue.acked == [first.ack_id, first_again.ack_id]
    assert queue.released == [held_again.ack_id]  # under its newest ack id
    assert summary.acked == 1


def test_message_data_forms() -> None:
    job_id = uuid.uuid4()
    assert job_id_from_data(str(job_id).encode()) == job_id
    assert job_id_from_data(json.dumps({"job_id": str(job_id)}).encode()) == job_id
    assert job_id_from_data(b"\xff") is None
    assert job_id_from_data(b"[1]") is None
    assert job_id_from_data(b'{"job_id": 3}') is None


def cli(stack: Stack, db_url: str, *args: str) -> dict[str, Any]:
    """`genjobs replay … --json` as a real process against the stack's emulator."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": f"{ROOT / 'functions'}:{ROOT}",
        "DATABASE_URL": db_url,
        "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{stack.ports.pubsub}",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "GENJOBS_ENV": "local",
    }
    result = subprocess.run(
        [sys.executable, "-m", "genjobs.ops.cli", "replay", *args, "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


@pytest.mark.one_database_path  # a whole stack (tests/conftest.py)
def test_dead_lettered_job_succeeds_after_replay_end_to_end(
    stack: Stack, stack_db: Database, queue: DeadLetterSubscription, stack_database_url: str
) -> None:
    marker = uuid.uuid4().hex
    client = stack.client()
    submitted = client.post(
        "/v1/generations",
        json={
            "task": "summarize",
            "input": {"text": f"stub:fail=500x{MAX_DELIVERY_ATTEMPTS} {marker}"},
        },
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    failed = stack.wait_for(client, job_id, timeout=60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "dead_lettered"
    assert len(stack.model_calls(marker)) == MAX_DELIVERY_ATTEMPTS

    summary = cli(stack, stack_database_url, "--job", job_id)
    assert summary["counts"]["replayed"] == 1 and summary["acked"] == 1

    job = stack.wait_for(client, job_id, timeout=30)
    assert job["status"] == "succeeded" and job["result"]["text"]
    assert job["error"] is None
    assert job["attempts"] == MAX_DELIVERY_ATTEMPTS + 1
    assert len(stack.model_calls(marker)) == MAX_DELIVERY_ATTEMPTS + 1
    history = events(stack_db, uuid.UUID(job_id))
    assert history.count("replayed") == 1 and history.count("succeeded") == 1
    assert history.index("dead_lettered") < history.index("replayed") < history.index("succeeded")

    # Replaying again, from either source, finds nothing to do: no second run, no second result.
    again = cli(stack, stack_database_url, "--job", job_id)
    assert again["jobs"] == [] and again["acked"] == 0
    assert cli(stack, stack_database_url, "--from", "database", "--job", job_id)["jobs"] == []
    assert Counter(events(stack_db, uuid.UUID(job_id)))["succeeded"] == 1
    assert len(stack.model_calls(marker)) == MAX_DELIVERY_ATTEMPTS + 1
