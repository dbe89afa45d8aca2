"""Object level authorization: nobody reaches, lists, cancels or replays another user's job."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from genjobs.db import Database
from tests.openapi_check import assert_conforms
from tests.security.conftest import SecurityStack


def summarize(text_: str) -> dict[str, Any]:
    """A summarize submission."""
    return {"task": "summarize", "input": {"text": text_}}


@pytest.fixture
def owner(security_stack: SecurityStack) -> Iterator[httpx.Client]:
    """A user with jobs."""
    with security_stack.client() as client:
        yield client


@pytest.fixture
def stranger(security_stack: SecurityStack) -> Iterator[httpx.Client]:
    """Another user, with a valid token of their own."""
    with security_stack.client() as client:
        yield client


def create(client: httpx.Client, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    """Submit and return the created job."""
    response = client.post("/v1/generations", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def listed_ids(client: httpx.Client, **params: Any) -> list[str]:
    """Every id the list shows, following next_cursor, one job per page."""
    ids: list[str] = []
    cursor = None
    while True:
        page = client.get(
            "/v1/generations",
            params={"limit": 1, **params, **({"cursor": cursor} if cursor else {})},
        )
        assert page.status_code == 200, page.text
        ids += [job["id"] for job in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return ids


def test_lists_show_only_the_callers_jobs(
    security_stack: SecurityStack, owner: httpx.Client, stranger: httpx.Client
) -> None:
    """Whatever the filter or page, each user's list is exactly their own jobs."""
    mine = [create(owner, summarize(f"owner {i}"))["id"] for i in range(2)]
    mine.append(
        create(owner, {"task": "chat", "input": {"messages": [{"role": "user", "content": "hi"}]}})[
            "id"
        ]
    )
    theirs = [create(stranger, summarize(f"stranger {i}"))["id"] for i in range(2)]
    for job_id in mine:
        security_stack.wait_for(owner, job_id)
    assert listed_ids(owner) == list(reversed(mine))
    assert listed_ids(stranger) == list(reversed(theirs))
    for params in ({"task": "summarize"}, {"status": "succeeded"}, {"task": "chat"}):
        assert set(listed_ids(owner, **params)) <= set(mine)
        assert set(listed_ids(stranger, **params)) <= set(theirs)


def test_another_users_cursor_pages_only_your_own_jobs(
    owner: httpx.Client, stranger: httpx.Client
) -> None:
    """A cursor is a position, not a capability: replayed by someone else it shows their jobs."""
    for i in range(3):
        create(owner, summarize(f"paged {i}"))
    theirs = {create(stranger, summarize("older"))["id"]}
    cursor = owner.get("/v1/generations", params={"limit": 1}).json()["next_cursor"]
    assert cursor
    page = stranger.get("/v1/generations", params={"cursor": cursor, "limit": 100})
    assert page.status_code == 200
    assert {job["id"] for job in page.json()["items"]} <= theirs


@pytest.mark.parametrize(
    "spelling",
    [str, lambda u: str(u).upper(), lambda u: u.hex, lambda u: f"{{{u}}}", lambda u: u.urn],
    ids=["canonical", "upper", "hex", "braces", "urn"],
)
def test_another_users_job_is_404_however_its_id_is_spelled(
    owner: httpx.Client,
    stranger: httpx.Client,
    openapi_document: dict[str, Any],
    spelling: Any,
) -> None:
    """Read and cancel of someone else's job: 404 (never 403), problem+json, as documented."""
    job = create(owner, summarize("stub:sleep=3 private"))
    path_id = spelling(uuid.UUID(job["id"]))
    for response in (
        stranger.get(f"/v1/generations/{path_id}"),
        stranger.post(f"/v1/generations/{path_id}/cancel"),
    ):
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert job["id"] not in response.text
        assert_conforms(openapi_document, response)
    assert owner.get(f"/v1/generations/{job['id']}").status_code == 200


def test_cancel_of_another_users_job_leaves_it_untouched(
    security_stack: SecurityStack,
    security_db: Database,
    owner: httpx.Client,
    stranger: httpx.Client,
) -> None:
    """The stranger's cancel writes nothing: the job runs on and succeeds."""
    job = create(owner, summarize("stub:sleep=2 keep going"))
    assert stranger.post(f"/v1/generations/{job['id']}/cancel").status_code == 404
    with security_db.transaction() as conn:
        row = conn.execute(
            text(
                "SELECT ai_status, cancel_requested_at, "
                "(SELECT count(*) FROM generation_logs l "
                " WHERE l.generation_id = g.id AND l.event = 'cancelled') AS cancels "
                "FROM generations g WHERE id = :id"
            ),
            {"id": job["id"]},
        ).one()
    assert row.ai_status in {"queued", "processing"}
    assert row.cancel_requested_at is None and row.cancels == 0
    assert security_stack.wait_for(owner, job["id"])["status"] == "succeeded"


def test_an_idempotency_key_is_per_user(owner: httpx.Client, stranger: httpx.Client) -> None:
    """The same key from another user makes their own job: no replay, no conflict, no leak."""
    key = f"shared-{uuid.uuid4()}"
    first = create(owner, summarize("same body"), **{"Idempotency-Key": key})
    again = stranger.post(
        "/v1/generations", json=summarize("same body"), headers={"Idempotency-Key": key}
    )
    assert again.status_code == 202 and "Idempotent-Replayed" not in again.headers
    assert again.json()["id"] != first["id"]
    other_body = stranger.post(
        "/v1/generations", json=summarize("other body"), headers={"Idempotency-Key": f"{key}-2"}
    )
    assert other_body.status_code == 202


@pytest.mark.parametrize("field", ["user_id", "id", "status", "result", "attempts"])
def test_a_body_cannot_set_owner_or_state(
    security_db: Database, owner: httpx.Client, field: str
) -> None:
    """Mass assignment: server-owned fields in the body are refused, nothing is stored."""
    victim = uuid.uuid4()
    value: Any = str(victim) if field in {"user_id", "id"} else "succeeded"
    response = owner.post("/v1/generations", json={**summarize("x"), field: value})
    assert response.status_code == 422
    assert field in {e["field"] for e in response.json()["errors"]}
    with security_db.transaction() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM generations WHERE user_id = :u OR id = :u"), {"u": victim}
        ).scalar_one()
    assert count == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/replay"),
        ("POST", "/replay"),
        ("POST", "/v1/generations/{id}/replay"),
        ("POST", "/v1/admin/replay"),
        ("GET", "/v1/admin/generations"),
        ("POST", "/v1/generations/{id}/retry"),
        ("DELETE", "/v1/generations/{id}"),
        ("PATCH", "/v1/generations/{id}"),
    ],
)
def test_operator_actions_are_not_http_routes(owner: httpx.Client, method: str, path: str) -> None:
    """Replay is an operator command: no route for it, nor to change or delete a job."""
    job = create(owner, summarize("operators only"))
    response = owner.request(method, path.format(id=job["id"]))
    assert response.status_code in {404, 405}, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert owner.get(f"/v1/generations/{job['id']}").json()["status"] != "cancelled"
