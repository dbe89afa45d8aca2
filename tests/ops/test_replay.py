"""Replay from the database: the guarded transition, every filter, dry runs, idempotence."""

from __future__ import annotations

import base64
import io
import json
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from genjobs import store
from genjobs.db import Database
from genjobs.dead_letter import DeadLetterHandler
from genjobs.ops.cli import build_parser, main
from genjobs.ops.replay import Action, Replayer, ReplayResult, Summary
from genjobs.ops.replay_cli import Progress
from genjobs.ops.replay_sources import JobFilter, replay_from_database
from genjobs.settings import Settings
from genjobs.statuses import Status
from genjobs.store import replayed_since
from tests.factories import insert_row
from tests.ops.helpers import RecordingPublisher, events, job_row, log_rows

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def run(
    db: Database, publisher: RecordingPublisher, dry_run: bool = False, **filters: Any
) -> Summary:
    """One database replay run."""
    replayer = Replayer(db, publisher, dry_run=dry_run)
    summary = Summary(source="database", dry_run=dry_run)
    return replay_from_database(db, replayer, JobFilter(**filters), summary=summary)


def by_action(summary: Summary) -> dict[Action, set[uuid.UUID | None]]:
    result: dict[Action, set[uuid.UUID | None]] = {}
    for r in summary.results:
        result.setdefault(r.action, set()).add(r.job_id)
    return result


def test_replay_requeues_with_attempts_kept_budget_renewed_and_a_replayed_row(
    clean_db: Database,
) -> None:
    with clean_db.transaction() as conn:
        job_id = insert_row(conn, attempts=5, trace_id="ab" * 16)
    publisher = RecordingPublisher()
    summary = run(clean_db, publisher)
    assert summary.counts() == Counter({Action.REPLAYED: 1})
    row = job_row(clean_db, job_id)
    assert row["ai_status"] == "queued"
    assert row["attempts"] == 5 and row["max_attempts"] == 10  # fencing numbers keep growing
    assert row["error"] is None and row["finished_at"] is None
    assert row["lease_expires_at"] is None and row["published_at"] is not None
    assert publisher.published == [(job_id, {"task": "summarize", "trace_id": "ab" * 16})]
    replayed = [r for r in log_rows(clean_db, job_id) if r["event"] == "replayed"]
    assert len(replayed) == 1
    assert replayed[0]["ai_status"] == "queued" and replayed[0]["attempt"] == 5
    assert replayed[0]["error_code"] == "dead_lettered"
    assert "previous error: dead_lettered: dead_lettered (test)" in replayed[0]["detail"]
    assert events(clean_db, job_id)[-2:] == ["replayed", "published"]
    # The worker can claim it again, with the next fencing number.
    with clean_db.transaction() as conn:
        claim = store.claim_job(conn, job_id, 60, store.Delivery("m", 1))
    assert claim.claimed and claim.job is not None and claim.job.attempts == 6


def test_every_filter_selects_only_matching_failed_jobs(clean_db: Database) -> None:
    alice = uuid.uuid4()
    with clean_db.transaction() as conn:
        old = insert_row(conn, finished_at=T0 - timedelta(days=2))
        chat = insert_row(conn, task="chat", finished_at=T0)
        refused = insert_row(conn, error_code="content_policy_violation", finished_at=T0)
        alices = insert_row(conn, user_id=alice, finished_at=T0 + timedelta(hours=1))
        late = insert_row(conn, finished_at=T0 + timedelta(days=1, hours=2))
        for status in ("succeeded", "cancelled", "queued", "processing"):
            insert_row(conn, status=status, finished_at=T0)
    everything = {old, chat, refused, alices, late}

    def selected(**filters: Any) -> set[uuid.UUID | None]:
        return by_action(run(clean_db, RecordingPublisher(), dry_run=True, **filters)).get(
            Action.WOULD_REPLAY, set()
        )

    assert selected() == everything
    assert selected(task="chat") == {chat}
    assert selected(error_code="content_policy_violation") == {refused}
    assert selected(since=T0) == everything - {old}
    assert selected(until=T0) == {old}
    assert selected(since=T0, until=T0 + timedelta(days=1)) == {chat, refused, alices}
    assert selected(user_id=alice) == {alices}
    assert selected(job_ids=(chat, late)) == {chat, late}
    assert selected(limit=1) == {old}  # oldest failure first
    assert selected(task="chat", user_id=alice) == set()


def test_dry_run_changes_nothing_and_publishes_nothing(clean_db: Database) -> None:
    with clean_db.transaction() as conn:
        job_id = insert_row(conn)
    before = job_row(clean_db, job_id)
    publisher = RecordingPublisher()
    summary = run(clean_db, publisher, dry_run=True)
    assert summary.counts() == Counter({Action.WOULD_REPLAY: 1})
    assert job_row(clean_db, job_id) == before
    assert publisher.published == [] and events(clean_db, job_id) == []


def test_replaying_the_same_set_twice_replays_each_job_once(clean_db: Database) -> None:
    with clean_db.transaction() as conn:
        jobs = {insert_row(conn) for _ in range(3)}
    publisher = RecordingPublisher()
    first = run(clean_db, publisher)
    second = run(clean_db, publisher, job_ids=tuple(jobs))
    assert by_action(first) == {Action.REPLAYED: jobs}
    assert second.results == []  # none of them is failed any more
    assert sorted(publisher.ids()) == sorted(jobs)
    for job_id in jobs:
        assert events(clean_db, job_id).count("replayed") == 1


def test_concurrent_runs_replay_each_job_exactly_once(clean_db: Database) -> None:
    with clean_db.transaction() as conn:
        jobs = {insert_row(conn) for _ in range(12)}
    publisher = RecordingPublisher()
    barrier = threading.Barrier(3)
    summaries: list[Summary] = []

    def one_run() -> None:
        barrier.wait()
        summaries.append(run(clean_db, publisher))

    threads = [threading.Thread(target=one_run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    replayed = [r.job_id for s in summaries for r in s.results if r.action is Action.REPLAYED]
    assert sorted(replayed, key=str) == sorted(jobs, key=str)  # each once, whoever got it
    others = {r.reason for s in summaries for r in s.results if r.action is not Action.REPLAYED}
    assert others <= {"already_replayed", "not_failed"}
    assert sorted(publisher.ids()) == sorted(jobs)
    for job_id in jobs:
        assert events(clean_db, job_id).count("replayed") == 1


def test_one_job_replayed_from_many_threads_at_once_is_replayed_once(clean_db: Database) -> None:
    with clean_db.transaction() as conn:
        job_id = insert_row(conn)
    publisher = RecordingPublisher()
    replayer = Replayer(clean_db, publisher)
    since = datetime.now(UTC) - timedelta(minutes=1)
    barrier = threading.Barrier(8)
    results = []

    def replay() -> None:
        barrier.wait()
        results.append(replayer.replay(job_id, since=since, source="test"))

    threads = [threading.Thread(target=replay) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(r.action for r in results) == Counter({Action.REPLAYED: 1, Action.SKIPPED: 7})
    assert {r.reason for r in results if r.action is Action.SKIPPED} == {"already_replayed"}
    assert publisher.ids() == [job_id]


def test_a_request_older_than_the_last_replay_is_skipped_but_a_new_failure_replays(
    clean_db: Database,
) -> None:
    with clean_db.transaction() as conn:
        job_id = insert_row(conn)
    replayer = Replayer(clean_db, RecordingPublisher())
    asked_at = datetime.now(UTC) - timedelta(seconds=5)
    assert replayer.replay(job_id, since=asked_at, source="test").action is Action.REPLAYED
    # It fails again; a request made before that replay (a stale dead-letter message) is moot.
    with clean_db.transaction() as conn:
        conn.execute(
            text(
                "UPDATE generations SET ai_status = 'failed', finished_at = now(), "
                'error = \'{"code": "dead_lettered"}\' WHERE id = :id'
            ),
            {"id": job_id},
        )
    stale = replayer.replay(job_id, since=asked_at, source="test")
    assert (stale.action, stale.reason) == (Action.SKIPPED, "already_replayed")
    fresh = replayer.replay(job_id, since=datetime.now(UTC), source="test")
    assert fresh.action is Action.REPLAYED
    assert events(clean_db, job_id).count("replayed") == 2


def test_a_late_copy_of_its_dead_letter_leaves_a_replayed_job_alone(clean_db: Database) -> None:
    """Push is at-least-once: the dead_letter handler may see the message again after the
    replay; it must not fail the job that is running again."""
    with clean_db.transaction() as conn:
        job_id = insert_row(conn)
    dead_lettered_at = datetime.now(UTC) - timedelta(minutes=1)
    replayer = Replayer(clean_db, RecordingPublisher())
    assert replayer.replay(job_id, since=dead_lettered_at, source="t").action is Action.REPLAYED
    with clean_db.transaction() as conn:
        assert replayed_since(conn, job_id, dead_lettered_at)
        assert not replayed_since(conn, job_id, datetime.now(UTC) + timedelta(seconds=1))
    moment = dead_lettered_at.isoformat().replace("+00:00", "Z")
    body = {
        "message": {
            "data": base64.b64encode(str(job_id).encode()).decode(),
            "messageId": "77",
            "publishTime": moment,
            "attributes": {"CloudPubSubDeadLetterSourceDeliveryCount": "5"},
        },
        "subscription": "projects/local-project/subscriptions/generation-jobs-dead-letter-handler",
    }
    handler = DeadLetterHandler(db=clean_db, verifier=AnyCaller())
    answer = handler.handle("Bearer push", json.dumps(body).encode())
    assert answer.acks
    assert job_row(clean_db, job_id)["ai_status"] == "queued"
    assert events(clean_db, job_id)[-1] != "dead_lettered"


def test_the_sweeper_does_not_expire_a_replayed_job_for_its_creation_age(
    clean_db: Database, settings: Settings
) -> None:
    """Jobs are replayed days after an outage; their age counts from the replay."""
    from genjobs.sweeper import Sweeper

    with clean_db.transaction() as conn:
        job_id = insert_row(conn, created_at=datetime.now(UTC) - timedelta(days=3))
    replayer = Replayer(clean_db, RecordingPublisher())
    assert replayer.replay(job_id, since=datetime.now(UTC), source="t").action is Action.REPLAYED
    sweeper = Sweeper(
        settings=settings, db=clean_db, publisher=RecordingPublisher(), verifier=AnyCaller()
    )
    assert sweeper.sweep().expired == 0
    assert job_row(clean_db, job_id)["ai_status"] == "queued"


class AnyCaller:
    """A push verifier that lets every caller in."""

    def verify(self, authorization_header: str | None) -> object:
        return object()


def test_finished_and_unfinished_jobs_are_left_alone(clean_db: Database) -> None:
    with clean_db.transaction() as conn:
        done = insert_row(conn, status="succeeded")
        running = insert_row(conn, status="processing")
    replayer = Replayer(clean_db, RecordingPublisher())
    now = datetime.now(UTC)
    assert replayer.replay(done, since=now, source="t").reason == "succeeded"
    assert replayer.replay(running, since=now, source="t").reason == "not_failed"
    deferred = replayer.replay(running, since=now, source="t", defer_unfinished=True)
    assert deferred.action is Action.DEFERRED
    assert replayer.replay(uuid.uuid4(), since=now, source="t").reason == "unknown_job"
    assert job_row(clean_db, done)["ai_status"] == "succeeded"
    assert job_row(clean_db, running)["ai_status"] == "processing"


def test_publish_failure_leaves_the_job_queued_and_unpublished_for_the_sweeper(
    clean_db: Database,
) -> None:
    with clean_db.transaction() as conn:
        job_id = insert_row(conn)
    summary = run(clean_db, RecordingPublisher(fail=True))
    assert summary.counts() == Counter({Action.PUBLISH_FAILED: 1})
    row = job_row(clean_db, job_id)
    assert row["ai_status"] == Status.QUEUED.value and row["published_at"] is None
    assert events(clean_db, job_id) == ["replayed"]


def test_cli_replays_from_the_database_and_prints_a_summary(
    clean_db: Database, settings_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with clean_db.transaction() as conn:
        chat = insert_row(conn, task="chat")
        insert_row(conn, task="summarize")
    # Dry run: one line per job and the summary; nothing changes.
    assert main(["replay", "--task", "chat", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would_replay    {chat}" in out
    assert "dry run: nothing was changed" in out and "would replay" in out
    assert job_row(clean_db, chat)["ai_status"] == "failed"


def test_cli_rejects_database_filters_with_the_dead_letter_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["replay", "--from", "dead-letter", "--task", "chat"])
    assert exit_info.value.code == 2
    assert "select from the database" in capsys.readouterr().err


def test_cli_arguments() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["replay", "--since", "2026-03-01", "--until", "2026-03-02T10:00", "--limit", "3"]
    )
    assert args.since == datetime(2026, 3, 1, tzinfo=UTC)
    assert args.until == datetime(2026, 3, 2, 10, tzinfo=UTC)
    assert args.limit == 3 and args.source is None and args.attempts == 5
    with pytest.raises(SystemExit):
        parser.parse_args(["replay", "--status", "succeeded"])
    with pytest.raises(SystemExit):
        parser.parse_args(["replay", "--limit", "0"])


def test_progress_line_redraws_in_place_on_a_terminal_only() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    summary = Summary(source="database")
    for action in (Action.REPLAYED, Action.REPLAYED, Action.SKIPPED):
        summary.add(ReplayResult(uuid.uuid4(), action))
    terminal = Terminal()
    progress = Progress(terminal, "replay", total=4)
    progress.update(summary)
    progress.finish(summary)
    last = terminal.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith("replay:  75%") and "| 3/4 [" in last
    assert last.endswith(", replayed 2, skipped 1]") and "job/s" in last
    assert terminal.getvalue().endswith("\n")
    pipe = io.StringIO()
    Progress(pipe, "replay").finish(summary)
    assert pipe.getvalue() == ""
