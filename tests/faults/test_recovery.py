"""Each failure on its own: killed worker, lost ack, Postgres restart, publish that never was."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from devstack.supervisor import Supervisor, free_port, function_service
from tests.faults.conftest import FaultDatabase
from tests.stack import Stack


def submit(
    stack: Stack, prompt: str, client: httpx.Client | None = None
) -> tuple[httpx.Client, str, str]:
    """Submit a job whose text is `prompt` plus a unique marker; returns client, id, marker."""
    marker = uuid.uuid4().hex
    client = client or stack.client()
    response = client.post(
        "/v1/generations", json={"task": "summarize", "input": {"text": f"{prompt} {marker}"}}
    )
    assert response.status_code == 202, response.text
    return client, response.json()["id"], marker


def event_counts(database: FaultDatabase, job_id: str) -> dict[str, int]:
    with database.db.transaction() as conn:
        rows = conn.execute(
            text(
                "SELECT event, count(*) AS n FROM generation_logs "
                "WHERE generation_id = :id GROUP BY event"
            ),
            {"id": uuid.UUID(job_id)},
        )
        return {r.event: r.n for r in rows}


def wait_for_job_log(
    stack: Stack, service: str, needle: str, job_id: str, timeout: float = 60
) -> str:
    """The first line of a service's output with `needle` about this job."""
    # The stack is shared: an earlier test's job may log the same message.
    path = stack.logs / f"{service}.log"
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            if needle in line and job_id in line:
                return line
        assert time.monotonic() < deadline, f"{needle!r} for {job_id} not in {service}'s output"
        time.sleep(0.1)


def test_worker_killed_between_model_call_and_commit(
    fault_stack: Stack, fault_database: FaultDatabase, crash_dir: Path
) -> None:
    (crash_dir / "after_model_call").touch()
    client, job_id, marker = submit(fault_stack, "stub:sleep=0.2")
    # The first attempt's answer dies with the worker; after its lease (9 s) a redelivery
    # takes the job over with attempt 2.
    job = fault_stack.wait_for(client, job_id, timeout=60)
    assert not (crash_dir / "after_model_call").exists(), "the crash point was never reached"
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    assert len(fault_stack.model_calls(marker)) == 2
    counts = event_counts(fault_database, job_id)
    assert counts["started"] == 2 and counts["succeeded"] == 1


def test_worker_killed_between_commit_and_ack(
    fault_stack: Stack, fault_database: FaultDatabase, crash_dir: Path
) -> None:
    (crash_dir / "after_commit").touch()
    client, job_id, marker = submit(fault_stack, "commit then die")
    job = fault_stack.wait_for(client, job_id, timeout=60)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    # Pub/Sub never got the 2xx, so it delivers again; that delivery finds the job done.
    line = wait_for_job_log(fault_stack, "worker", "duplicate or late delivery", job_id)
    assert "delivery acked" in line
    assert not (crash_dir / "after_commit").exists()
    assert len(fault_stack.model_calls(marker)) == 1
    assert event_counts(fault_database, job_id)["succeeded"] == 1


def test_postgres_restart_gives_503_then_recovers_and_drains(
    fault_stack: Stack, fault_database: FaultDatabase
) -> None:
    client = fault_stack.client()
    before = [submit(fault_stack, "stub:sleep=1", client)[1] for _ in range(3)]
    fault_database.postgres.stop()
    try:
        refused = client.post(
            "/v1/generations", json={"task": "summarize", "input": {"text": "during outage"}}
        )
        health = httpx.get(f"{fault_stack.api_url}/healthz", timeout=30)
    finally:
        fault_database.postgres.start()
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["Retry-After"]) >= 1
    assert health.status_code == 503
    after = [submit_when_healthy(fault_stack, client) for _ in range(3)]
    for job_id in before + after:
        job = fault_stack.wait_for(client, job_id, timeout=90)
        assert job["status"] == "succeeded", job


def submit_when_healthy(stack: Stack, client: httpx.Client, timeout: float = 30) -> str:
    """Submit as a client would after an outage: retry while the api answers 503."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.post(
            "/v1/generations", json={"task": "summarize", "input": {"text": "after outage"}}
        )
        if response.status_code == 202:
            return str(response.json()["id"])
        assert response.status_code == 503 and time.monotonic() < deadline, response.text
        time.sleep(0.2)


def test_publish_failure_still_accepts_and_the_sweeper_publishes(
    fault_stack: Stack, fault_database: FaultDatabase, tmp_path: Path
) -> None:
    # An api instance whose Pub/Sub is unreachable, on the same database as the stack.
    port = free_port()
    env = {
        "GENJOBS_ENV": "local",
        "DATABASE_URL": fault_database.app_url,
        "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{free_port()}",
        "PUBLISH_TIMEOUT_SECONDS": "1",
    }
    api = Supervisor(
        [function_service("api", port, env, name="api-no-pubsub")], output_dir=tmp_path
    )
    api.start()
    try:
        client = fault_stack.client()
        client.base_url = httpx.URL(f"http://127.0.0.1:{port}")
        response = client.post(
            "/v1/generations", json={"task": "summarize", "input": {"text": "publish fails"}}
        )
    finally:
        api.stop()
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    api_log = (tmp_path / "api-no-pubsub.log").read_text()
    assert "publish failed; the sweeper will publish this job" in api_log
    client.base_url = httpx.URL(fault_stack.api_url)
    job: dict[str, Any] = fault_stack.wait_for(client, job_id, timeout=60)
    assert job["status"] == "succeeded"
    assert event_counts(fault_database, job_id)["published"] == 1


def test_api_killed_between_commit_and_publish_runs_the_job_once(
    fault_stack: Stack, fault_database: FaultDatabase, tmp_path: Path
) -> None:
    # An api instance that dies (SIGKILL, as an instance can) right after the job's commit,
    # before its publish: the client sees no answer, and nothing reached Pub/Sub.
    crashes = tmp_path / "crashes"
    crashes.mkdir()
    (crashes / "api_after_commit").touch()
    port = free_port()
    env = {
        "GENJOBS_ENV": "local",
        "DATABASE_URL": fault_database.app_url,
        "GENJOBS_CRASH_DIR": str(crashes),
    }
    api = Supervisor([function_service("api", port, env, name="api-dies")], output_dir=tmp_path)
    api.start()
    key = f"killed-before-publish-{uuid.uuid4()}"
    body = {"task": "summarize", "input": {"text": f"api dies {uuid.uuid4().hex}"}}
    client = fault_stack.client()
    try:
        client.base_url = httpx.URL(f"http://127.0.0.1:{port}")
        with pytest.raises(httpx.TransportError):
            client.post("/v1/generations", json=body, headers={"Idempotency-Key": key})
    finally:
        api.stop()
    assert not (crashes / "api_after_commit").exists(), "the api never reached its crash point"
    # The client retries with its key on a live instance: the stored job, not a second one,
    # published by that replay because it never started. It runs once.
    client.base_url = httpx.URL(fault_stack.api_url)
    retried = client.post("/v1/generations", json=body, headers={"Idempotency-Key": key})
    assert retried.status_code == 200, retried.text
    job_id = retried.json()["id"]
    job: dict[str, Any] = fault_stack.wait_for(client, job_id, timeout=60)
    assert job["status"] == "succeeded" and job["attempts"] == 1
    counts = event_counts(fault_database, job_id)
    assert counts["published"] == 1 and counts["started"] == 1 and counts["succeeded"] == 1
