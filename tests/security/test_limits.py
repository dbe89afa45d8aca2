"""What one user may cost: every limit, set to a non-default value, answered as documented."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from genjobs.db import Database
from tests.openapi_check import assert_conforms
from tests.security.conftest import LIMITS, OVERSIZE_BYTES, SecurityStack

PROBLEM = "https://genjobs.dev/problems/"
TEXT_LIMIT = 20_000  # summarize / extract_entities input.text max_length
SUMMARIZE_MAX_OUTPUT_TOKENS = 800


def summarize(text_: str = "Limits are per user.", **extra: Any) -> dict[str, Any]:
    """A summarize submission."""
    return {"task": "summarize", "input": {"text": text_}, **extra}


def problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    """The response is a problem+json of this status and type; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM + kind and body["status"] == status
    return body


@pytest.fixture
def client(security_stack: SecurityStack) -> Iterator[httpx.Client]:
    """A client for a new user (limits are per user)."""
    with security_stack.client() as fresh:
        yield fresh


def test_body_over_the_limit_is_413_with_or_without_content_length(
    client: httpx.Client, openapi_document: dict[str, Any]
) -> None:
    """MAX_BODY_BYTES: at the limit accepted; one byte over refused, even streamed."""
    limit = LIMITS["MAX_BODY_BYTES"]
    compact = json.dumps(summarize()).encode()
    at_limit = compact[:-1] + b" " * (limit - len(compact)) + b"}"
    assert len(at_limit) == limit
    headers = {"Content-Type": "application/json"}
    accepted = client.post("/v1/generations", content=at_limit, headers=headers)
    assert accepted.status_code == 202, accepted.text
    over = client.post("/v1/generations", content=at_limit + b" ", headers=headers)
    problem(over, 413, "payload-too-large")
    assert_conforms(openapi_document, over)

    def chunks() -> Iterator[bytes]:
        yield at_limit[:-1]
        yield b"  }"  # no Content-Length: the limit holds while reading

    streamed = client.post("/v1/generations", content=chunks(), headers=headers)
    problem(streamed, 413, "payload-too-large")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (summarize("x" * (TEXT_LIMIT + 1)), "input.text"),
        ({"task": "extract_entities", "input": {"text": "x" * (TEXT_LIMIT + 1)}}, "input.text"),
        (
            {"task": "chat", "input": {"messages": [{"role": "user", "content": "x" * 8_001}]}},
            "input.messages.0.content",
        ),
        (
            {"task": "chat", "input": {"messages": [{"role": "user", "content": "hi"}] * 41}},
            "input.messages",
        ),
        ({"task": "summarize", "input": {"text": "x", "max_words": 501}}, "input.max_words"),
        ({"task": "summarize", "input": {"text": "x", "language": "x" * 33}}, "input.language"),
    ],
    ids=["summarize-text", "entities-text", "chat-turn", "chat-turns", "max-words", "language"],
)
def test_input_over_its_task_limit_is_422_naming_the_field(
    client: httpx.Client, openapi_document: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    """Each task's input model bounds what reaches the model (and the bill)."""
    response = client.post("/v1/generations", json=body)
    details = problem(response, 422, "validation-error")
    assert field in {e["field"] for e in details["errors"]}
    assert_conforms(openapi_document, response)


def test_input_at_its_task_limit_is_accepted(security_stack: SecurityStack) -> None:
    """The limits are exactly where the document says (maxLength / maxItems)."""
    bodies = [
        summarize("x" * TEXT_LIMIT),
        {"task": "chat", "input": {"messages": [{"role": "user", "content": "x" * 8_000}] * 2}},
        {"task": "chat", "input": {"messages": [{"role": "user", "content": "hi"}] * 40}},
    ]
    for body in bodies:
        with security_stack.client() as fresh:
            response = fresh.post("/v1/generations", json=body)
            assert response.status_code == 202, response.text


def test_metadata_over_its_limit_is_413(
    client: httpx.Client, openapi_document: dict[str, Any]
) -> None:
    """MAX_METADATA_BYTES counts the compact JSON; one byte over is refused."""
    room = LIMITS["MAX_METADATA_BYTES"] - len('{"k":""}')
    accepted = client.post("/v1/generations", json=summarize(metadata={"k": "m" * room}))
    assert accepted.status_code == 202, accepted.text
    over = client.post("/v1/generations", json=summarize(metadata={"k": "m" * (room + 1)}))
    assert "metadata" in problem(over, 413, "payload-too-large")["detail"]
    assert_conforms(openapi_document, over)


def test_submit_rate_is_limited_per_user_with_retry_after(
    security_stack: SecurityStack, client: httpx.Client, openapi_document: dict[str, Any]
) -> None:
    """SUBMITS_PER_MINUTE: the next submit is 429 rate-limited; reads and others go on."""
    for _ in range(LIMITS["SUBMITS_PER_MINUTE"]):
        job = client.post("/v1/generations", json=summarize())
        assert job.status_code == 202, job.text
        # Ended at once (cancelled, or already done: 409), so active jobs stay out of the way.
        cancel = client.post(f"/v1/generations/{job.json()['id']}/cancel")
        assert cancel.status_code in {200, 409}
    limited = client.post("/v1/generations", json=summarize())
    problem(limited, 429, "rate-limited")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert_conforms(openapi_document, limited)
    assert client.get("/v1/generations").status_code == 200
    with security_stack.client() as other:
        assert other.post("/v1/generations", json=summarize()).status_code == 202


def test_unfinished_jobs_are_limited_per_user(
    client: httpx.Client, openapi_document: dict[str, Any]
) -> None:
    """MAX_ACTIVE_JOBS: one more is 429 too-many-active-jobs, until one ends."""
    ids = []
    for _ in range(LIMITS["MAX_ACTIVE_JOBS"]):
        job = client.post("/v1/generations", json=summarize("stub:sleep=10 slow"))
        assert job.status_code == 202, job.text
        ids.append(job.json()["id"])
    limited = client.post("/v1/generations", json=summarize())
    problem(limited, 429, "too-many-active-jobs")
    assert int(limited.headers["Retry-After"]) >= 1
    assert_conforms(openapi_document, limited)
    assert client.post(f"/v1/generations/{ids.pop()}/cancel").status_code == 200
    assert client.post("/v1/generations", json=summarize()).status_code == 202
    for job_id in ids:
        client.post(f"/v1/generations/{job_id}/cancel")


def test_spent_daily_token_budget_is_429_with_its_own_type(
    security_stack: SecurityStack, client: httpx.Client, openapi_document: dict[str, Any]
) -> None:
    """DAILY_TOKEN_BUDGET: a job whose bound no longer fits is refused until UTC midnight."""
    budget = LIMITS["DAILY_TOKEN_BUDGET"]
    # About 9,000 prompt tokens and 700 more of answer: over a third of the budget.
    expensive = client.post("/v1/generations", json=summarize("a " * 9_000 + "stub:tokens=700"))
    assert expensive.status_code == 202, expensive.text
    job = security_stack.wait_for(client, expensive.json()["id"])
    assert job["status"] == "succeeded", job
    spent = job["usage"]["prompt_tokens"] + job["usage"]["completion_tokens"]
    assert spent > budget // 3
    # A full-size input may use more tokens than are left: refused, although some are.
    refused = client.post("/v1/generations", json=summarize("x" * TEXT_LIMIT))
    body = problem(refused, 429, "token-budget-exhausted")
    assert f"{budget - spent} of the daily budget of {budget} are left" in body["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 24 * 3600 + 1
    assert_conforms(openapi_document, refused)
    assert client.post("/v1/generations", json=summarize()).status_code == 202  # still fits
    with security_stack.client() as other:
        fresh = other.post("/v1/generations", json=summarize("x" * TEXT_LIMIT))
        assert fresh.status_code == 202


def test_a_job_that_could_spend_more_than_the_whole_budget_is_413(
    client: httpx.Client, openapi_document: dict[str, Any]
) -> None:
    """Its bound (input bytes plus max output) is over the budget: a retry cannot help."""
    turns = [{"role": "user", "content": "x" * 8_000}] * 4  # about 33,000 tokens at most
    response = client.post("/v1/generations", json={"task": "chat", "input": {"messages": turns}})
    body = problem(response, 413, "payload-too-large")
    assert f"more than the daily budget of {LIMITS['DAILY_TOKEN_BUDGET']}" in body["detail"]
    assert_conforms(openapi_document, response)


def test_max_output_tokens_is_sent_and_caps_the_bill(
    security_stack: SecurityStack, client: httpx.Client
) -> None:
    """The task's max_output_tokens reaches the model; usage never goes above it."""
    marker = f"cap-{uuid.uuid4().hex}"
    created = client.post("/v1/generations", json=summarize(f"stub:tokens=5000 {marker}"))
    job = security_stack.wait_for(client, created.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["usage"]["completion_tokens"] == SUMMARIZE_MAX_OUTPUT_TOKENS
    calls = security_stack.model.calls_with(marker)
    assert [c["max_completion_tokens"] for c in calls] == [SUMMARIZE_MAX_OUTPUT_TOKENS]


def stored(db: Database, job_id: str) -> tuple[Any, list[tuple[str | None, str | None]]]:
    """The job's stored result, and its log rows' (error_code, detail)."""
    with db.transaction() as conn:
        result = conn.execute(
            text("SELECT result FROM generations WHERE id = :id"), {"id": job_id}
        ).scalar_one()
        rows = conn.execute(
            text("SELECT error_code, detail FROM generation_logs WHERE generation_id = :id"),
            {"id": job_id},
        ).all()
    return result, [(r.error_code, r.detail) for r in rows]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (summarize("proxy:oversize"), "output_too_large"),
        (
            {"task": "extract_entities", "input": {"text": "proxy:badschema"}},
            "invalid_model_output",
        ),
        ({"task": "extract_entities", "input": {"text": "proxy:notjson"}}, "invalid_model_output"),
        (
            {"task": "extract_entities", "input": {"text": "stub:tokens=5000 cut short"}},
            "output_truncated",
        ),
    ],
    ids=["oversize", "schema-violation", "not-json", "truncated-json"],
)
def test_bad_model_output_fails_the_job_and_is_never_stored(
    security_stack: SecurityStack,
    security_db: Database,
    client: httpx.Client,
    body: dict[str, Any],
    code: str,
) -> None:
    """Over the size limit or off the task's schema: failed once, clear code, nothing kept."""
    created = client.post("/v1/generations", json=body)
    assert created.status_code == 202, created.text
    job = security_stack.wait_for(client, created.json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == code, job
    assert job["result"] is None and job["attempts"] == 1  # permanent: no retry, no new bill
    assert job["usage"] is not None  # the rejected answer's tokens still count
    result, logs = stored(security_db, job["id"])
    assert result is None
    assert code in {error_code for error_code, _ in logs}
    for _, detail in logs:
        assert len(detail or "") < 1_000 and "A" * 100 not in (detail or "")
    assert len(json.dumps(job)) < OVERSIZE_BYTES // 10


def test_model_output_postgres_cannot_store_fails_the_job_at_once(
    security_stack: SecurityStack, client: httpx.Client
) -> None:
    """An answer with a NUL character is invalid output, like any other the store refuses."""
    created = client.post("/v1/generations", json=summarize("proxy:nul in the answer"))
    job = security_stack.wait_for(client, created.json()["id"], timeout=8)
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_model_output", job
