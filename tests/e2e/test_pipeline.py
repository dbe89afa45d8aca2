"""The whole pipeline through real processes: api → Pub/Sub emulator → worker → stub model."""

from __future__ import annotations

import base64
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from genjobs import store
from genjobs.db import Database
from tests.stack import Stack

# A whole stack: run through PgBouncer only, where that variant runs (tests/conftest.py).
pytestmark = pytest.mark.one_database_path

MAX_DELIVERY_ATTEMPTS = 5  # infra/pubsub.yaml, generation-jobs-worker


def submit(stack: Stack, prompt: str, user: uuid.UUID | None = None) -> tuple[Any, str]:
    """Submit a summarize job whose text carries `prompt` (and a unique marker)."""
    marker = uuid.uuid4().hex
    client = stack.client(user)
    response = client.post(
        "/v1/generations", json={"task": "summarize", "input": {"text": f"{prompt} {marker}"}}
    )
    assert response.status_code == 202, response.text
    return client, response.json()["id"]


def log_rows(db: Database, job_id: str) -> list[dict[str, Any]]:
    with db.transaction() as conn:
        rows = conn.execute(
            text(
                "SELECT event, ai_status, attempt, message_id, delivery_attempt, error_code "
                "FROM generation_logs WHERE generation_id = :id ORDER BY id"
            ),
            {"id": uuid.UUID(job_id)},
        ).mappings()
        return [dict(r) for r in rows]


def events(db: Database, job_id: str, published: int | None = 0) -> list[str]:
    """The job's events in order, `published` set aside (counted here): a submit's publish
    writes none (the `started` row has its message id), the sweeper's and replay's do."""
    all_events = [r["event"] for r in log_rows(db, job_id)]
    if published is not None:
        assert all_events.count("published") == published, all_events
    return [e for e in all_events if e != "published"]


def test_submitted_job_succeeds_with_result_usage_and_log_rows(
    stack: Stack, stack_db: Database
) -> None:
    client, job_id = submit(stack, "Summarize this please.")
    job = stack.wait_for(client, job_id)
    assert job["status"] == "succeeded", job
    assert job["result"]["text"]
    assert job["usage"]["model"] == "gpt-4o-mini" and job["usage"]["completion_tokens"] > 0
    assert job["attempts"] == 1 and job["started_at"] and job["finished_at"]
    assert events(stack_db, job_id) == ["queued", "started", "succeeded"]
    started = next(r for r in log_rows(stack_db, job_id) if r["event"] == "started")
    assert started["message_id"] and started["delivery_attempt"] == 1


def test_one_rate_limit_then_success_on_attempt_two(stack: Stack, stack_db: Database) -> None:
    client, job_id = submit(stack, "stub:fail=429x1")
    job = stack.wait_for(client, job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert events(stack_db, job_id) == ["queued", "started", "retry", "started", "succeeded"]
    rows = [r for r in log_rows(stack_db, job_id) if r["event"] != "published"]
    assert rows[2]["error_code"] == "rate_limited" and rows[2]["ai_status"] == "queued"
    assert [r["delivery_attempt"] for r in rows if r["event"] == "started"] == [1, 2]
    assert len(stack.model_calls(job_id_marker(job))) == 2


def job_id_marker(job: dict[str, Any]) -> str:
    """The unique marker `submit` put at the end of the job's text."""
    return str(job["input"]["text"].split()[-1])


def test_refusal_fails_once_without_retry(stack: Stack, stack_db: Database) -> None:
    client, job_id = submit(stack, "stub:refuse")
    job = stack.wait_for(client, job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "content_policy_violation"
    assert events(stack_db, job_id) == ["queued", "started", "failed"]
    assert len(stack.model_calls(job_id_marker(job))) == 1


def test_persistent_server_errors_are_dead_lettered(stack: Stack, stack_db: Database) -> None:
    client, job_id = submit(stack, "stub:500")
    job = stack.wait_for(client, job_id, timeout=60)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "dead_lettered"
    assert "model_server_error" in job["error"]["message"]
    rows = log_rows(stack_db, job_id)
    assert [r["event"] for r in rows].count("started") == MAX_DELIVERY_ATTEMPTS
    assert rows[-1]["event"] == "dead_lettered"
    assert len(stack.model_calls(job_id_marker(job))) == MAX_DELIVERY_ATTEMPTS


def test_cancel_while_queued_never_calls_the_model(stack: Stack, stack_db: Database) -> None:
    # With the worker down the message waits in Pub/Sub, so the job is surely still queued.
    stack.supervisor.pause("worker")
    try:
        client, job_id = submit(stack, "cancel me")
        cancelled = client.post(f"/v1/generations/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    finally:
        stack.supervisor.resume("worker")
    marker = job_id_marker(cancelled.json())
    # The redelivered message is acked without a claim: no `started` row, no model call.
    stack.wait_for_log("worker", job_id)
    assert events(stack_db, job_id) == ["queued", "cancelled"]
    assert stack.model_calls(marker) == []
    assert client.get(f"/v1/generations/{job_id}").json()["status"] == "cancelled"


def test_one_message_pushed_ten_times_at_once_runs_the_model_once(
    stack: Stack, stack_db: Database
) -> None:
    user = uuid.uuid4()
    marker = uuid.uuid4().hex
    with stack_db.transaction() as conn:  # stored, not published: our pushes deliver it
        job = store.insert_job(
            conn,
            store.NewJob(
                user, "summarize", {"text": f"stub:sleep=0.5 {marker}"}, {}, None, "h", None, 5
            ),
        )
    assert job is not None
    body = json.dumps(
        {
            "message": {
                "data": base64.b64encode(str(job.id).encode()).decode(),
                "messageId": "424242",
                "message_id": "424242",
                "publishTime": "2026-11-26T10:00:00.000Z",
                "publish_time": "2026-11-26T10:00:00.000Z",
            },
            "subscription": "projects/local-project/subscriptions/generation-jobs-worker",
            "deliveryAttempt": 1,
        }
    )
    headers = {
        "Authorization": f"Bearer {stack.push_token(stack.worker_url)}",
        "Content-Type": "application/json",
    }

    def push(_: int) -> int:
        return httpx.post(stack.worker_url, content=body, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(push, range(10)))
    assert statuses.count(200) >= 1 and set(statuses) <= {200, 409}, statuses
    with stack.client(user) as client:
        done = stack.wait_for(client, str(job.id))
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert len(stack.model_calls(marker)) == 1
    # (The sweeper may publish it meanwhile too; that delivery finds it running or done.)
    assert events(stack_db, str(job.id), published=None) == ["queued", "started", "succeeded"]
