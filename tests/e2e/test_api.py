"""The api function over real HTTP: every route, every client error, checked against OpenAPI."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from devstack.supervisor import Supervisor, free_port, function_service
from genjobs import store
from genjobs.api.submit import request_hash
from genjobs.auth.minting import mint_api_key, mint_user_token
from genjobs.db import Database
from genjobs.jobs import MAX_ATTEMPTS
from genjobs.settings import LOCAL_JWT_SECRET, LOCAL_SUPABASE_URL
from genjobs.tasks import TASKS
from tests.openapi_check import assert_conforms
from tests.stack import Stack

# A whole stack: run through PgBouncer only, where that variant runs (tests/conftest.py).
pytestmark = pytest.mark.one_database_path

SUMMARIZE = {"task": "summarize", "input": {"text": "Pub/Sub pushes each job to the worker."}}


@pytest.fixture(scope="module")
def openapi(stack: Stack) -> dict[str, Any]:
    response = httpx.get(f"{stack.api_url}/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    assert doc["openapi"].startswith("3.1")
    return doc


def test_submit_then_get_and_list(stack: Stack, openapi: dict[str, Any]) -> None:
    with stack.client() as client:
        created = client.post("/v1/generations", json={**SUMMARIZE, "metadata": {"page": "home"}})
        assert created.status_code == 202, created.text
        assert_conforms(openapi, created)
        job = created.json()
        assert job["status"] == "queued" and job["task"] == "summarize"
        assert job["metadata"] == {"page": "home"}
        assert created.headers["Location"] == f"/v1/generations/{job['id']}"

        fetched = client.get(created.headers["Location"])
        assert fetched.status_code == 200
        assert_conforms(openapi, fetched)
        assert fetched.json()["id"] == job["id"]

        listed = client.get("/v1/generations")
        assert listed.status_code == 200
        assert_conforms(openapi, listed)
        assert [j["id"] for j in listed.json()["items"]] == [job["id"]]


def test_list_paginates_newest_first_with_filters(stack: Stack, openapi: dict[str, Any]) -> None:
    with stack.client() as client:
        ids = [client.post("/v1/generations", json=SUMMARIZE).json()["id"] for _ in range(5)]
        chat = client.post(
            "/v1/generations",
            json={"task": "chat", "input": {"messages": [{"role": "user", "content": "hi"}]}},
        ).json()["id"]
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2, "task": "summarize", **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/generations", params=params)
            assert_conforms(openapi, page)
            body = page.json()
            assert len(body["items"]) <= 2
            seen += [j["id"] for j in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(ids)) and chat not in seen
        bad = client.get("/v1/generations", params={"limit": 0, "status": "nope"})
        assert bad.status_code == 422
        assert_conforms(openapi, bad)
        assert {e["field"] for e in bad.json()["errors"]} == {"limit", "status"}
        assert client.get("/v1/generations", params={"cursor": "garbage!"}).status_code == 422


def test_idempotency_key_replays_and_rejects_other_bodies(
    stack: Stack, openapi: dict[str, Any]
) -> None:
    with stack.client() as client:
        key = {"Idempotency-Key": str(uuid.uuid4())}
        first = client.post("/v1/generations", json=SUMMARIZE, headers=key)
        again = client.post("/v1/generations", json=SUMMARIZE, headers=key)
        other = client.post(
            "/v1/generations", json={**SUMMARIZE, "input": {"text": "other"}}, headers=key
        )
        too_long = client.post(
            "/v1/generations", json=SUMMARIZE, headers={"Idempotency-Key": "k" * 256}
        )
    assert first.status_code == 202
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert_conforms(openapi, again)
    assert other.status_code == 422 and other.json()["type"].endswith("idempotency-key-reused")
    assert too_long.status_code == 422
    assert_conforms(openapi, other)


def test_concurrent_submits_with_one_key_make_one_job_and_replay_it(
    stack: Stack, openapi: dict[str, Any]
) -> None:
    user = uuid.uuid4()
    key = {"Idempotency-Key": "same-key"}
    together = threading.Barrier(8)

    def submit(_: int) -> httpx.Response:
        with stack.client(user) as client:
            together.wait(10)
            return client.post("/v1/generations", json=SUMMARIZE, headers=key)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(submit, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 7 + [202], statuses  # never 409: the later ones wait, then replay
    for response in responses:
        assert_conforms(openapi, response)
        replayed = response.headers.get("Idempotent-Replayed")
        assert replayed == ("true" if response.status_code == 200 else None)
    assert len({r.json()["id"] for r in responses}) == 1
    with stack.client(user) as client:
        assert len(client.get("/v1/generations").json()["items"]) == 1


def test_a_submit_waits_for_the_one_in_flight_with_its_key_then_replays_it(
    stack: Stack, stack_db: Database, openapi: dict[str, Any]
) -> None:
    """The first submit is held open mid-transaction; the second waits on it, not 409."""
    user, key = uuid.uuid4(), "in-flight"
    data = TASKS["summarize"].input_model.model_validate(SUMMARIZE["input"])
    normalized = data.model_dump(mode="json", exclude_none=True)
    with ThreadPoolExecutor(1) as pool, stack_db.transaction() as first:
        # What SubmitService does up to its commit: take the user's lock, insert the job.
        store.user_usage(first, user, key)
        job = store.insert_job(
            first,
            store.NewJob(
                user_id=user,
                task="summarize",
                input=normalized,
                metadata={},
                idempotency_key=key,
                request_hash=request_hash("summarize", normalized, {}),
                trace_id=None,
                max_attempts=MAX_ATTEMPTS,
            ),
        )
        assert job is not None

        def second() -> httpx.Response:
            with stack.client(user) as client:
                return client.post(
                    "/v1/generations", json=SUMMARIZE, headers={"Idempotency-Key": key}
                )

        answer = pool.submit(second)
        wait_until_a_lock_is_awaited(stack_db)
        assert not answer.done()
    response = answer.result(timeout=30)  # the first committed: the second goes on
    assert response.status_code == 200, response.text
    assert response.headers["Idempotent-Replayed"] == "true"
    assert response.json()["id"] == str(job.id)
    assert_conforms(openapi, response)


def wait_until_a_lock_is_awaited(db: Database, timeout: float = 20) -> None:
    """Return once some session waits for an advisory lock (the api's per-user lock)."""
    awaited = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.transaction() as conn:
            if conn.execute(awaited).scalar_one() > 0:
                return
        time.sleep(0.05)
    raise AssertionError("the second submit never waited for the first one's lock")


def test_other_users_jobs_are_not_found(stack: Stack, openapi: dict[str, Any]) -> None:
    with stack.client() as owner:
        job_id = owner.post("/v1/generations", json=SUMMARIZE).json()["id"]
    with stack.client() as stranger:
        for response in (
            stranger.get(f"/v1/generations/{job_id}"),
            stranger.post(f"/v1/generations/{job_id}/cancel"),
            stranger.get(f"/v1/generations/{uuid.uuid4()}"),
            stranger.get("/v1/generations/not-a-uuid"),
        ):
            assert response.status_code == 404
            assert response.headers["content-type"] == "application/problem+json"
            assert_conforms(openapi, response)
        assert stranger.get("/v1/generations").json()["items"] == []


def test_cancel_queued_then_conflict_once_ended(stack: Stack, openapi: dict[str, Any]) -> None:
    with stack.client() as client:
        job = client.post(
            "/v1/generations", json={"task": "summarize", "input": {"text": "stub:sleep=5"}}
        ).json()
        cancelled = client.post(f"/v1/generations/{job['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert_conforms(openapi, cancelled)
        assert cancelled.json()["status"] == "cancelled"
        again = client.post(f"/v1/generations/{job['id']}/cancel")
        assert again.status_code == 409
        assert_conforms(openapi, again)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": "nope", "input": {}}, "task"),
        ({"task": "summarize"}, "input"),
        ({"task": "summarize", "input": {"text": ""}}, "input.text"),
        ({"task": "summarize", "input": {"text": "x", "max_words": "many"}}, "input.max_words"),
        ({"task": "summarize", "input": {"text": "x", "model": "gpt-4"}}, "input.model"),
        ({"task": 5, "input": {"text": "x"}}, "task"),
        ({**SUMMARIZE, "extra": 1}, "extra"),
        ([1, 2], "body"),
    ],
)
def test_invalid_bodies_name_the_field(
    stack: Stack, openapi: dict[str, Any], body: Any, field: str
) -> None:
    with stack.client() as client:
        response = client.post("/v1/generations", json=body)
    assert response.status_code == 422, response.text
    assert_conforms(openapi, response)
    assert field in {e["field"] for e in response.json()["errors"]}


def test_malformed_oversize_and_wrong_media_type(stack: Stack, openapi: dict[str, Any]) -> None:
    with stack.client() as client:
        headers = {"Content-Type": "application/json"}
        malformed = client.post("/v1/generations", content=b'{"task": ', headers=headers)
        not_utf8 = client.post("/v1/generations", content=b"\xff\xfe", headers=headers)
        oversize = client.post(
            "/v1/generations", content=b"{" + b" " * (1024 * 1024 + 10) + b"}", headers=headers
        )
        big_metadata = client.post(
            "/v1/generations", json={**SUMMARIZE, "metadata": {"x": "y" * 5000}}
        )
        form = client.post("/v1/generations", data={"task": "summarize"})
    assert malformed.status_code == 400 and not_utf8.status_code == 400
    assert oversize.status_code == 413 and big_metadata.status_code == 413
    assert form.status_code == 415
    for response in (malformed, not_utf8, oversize, big_metadata, form):
        assert_conforms(openapi, response)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-jwt",
        "Bearer "
        + mint_user_token(
            secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL, ttl_seconds=-120
        ),
        "Bearer "
        + mint_user_token(
            secret="another-secret-that-is-at-least-32-bytes!", supabase_url=LOCAL_SUPABASE_URL
        ),
        "Bearer " + mint_api_key(secret=LOCAL_JWT_SECRET, role="anon"),
        "Bearer " + mint_api_key(secret=LOCAL_JWT_SECRET, role="service_role"),
    ],
    ids=["missing", "basic", "garbage", "expired", "wrong-secret", "anon-key", "service-key"],
)
def test_bad_tokens_get_401_with_www_authenticate(
    stack: Stack, openapi: dict[str, Any], authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in (
        ("POST", "/v1/generations"),
        ("GET", "/v1/generations"),
        ("GET", f"/v1/generations/{uuid.uuid4()}"),
    ):
        response = httpx.request(method, stack.api_url + path, headers=headers, json=SUMMARIZE)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")
        assert_conforms(openapi, response)


def test_tasks_health_and_unknown_routes(stack: Stack, openapi: dict[str, Any]) -> None:
    tasks = httpx.get(f"{stack.api_url}/v1/tasks")
    assert_conforms(openapi, tasks)
    names = {t["name"] for t in tasks.json()["items"]}
    assert {"summarize", "chat", "extract_entities"} <= names
    structured = next(t for t in tasks.json()["items"] if t["name"] == "extract_entities")
    assert structured["output_schema"]["type"] == "object"
    health = httpx.get(f"{stack.api_url}/healthz")
    assert health.json() == {"status": "ok", "database": "ok"}
    assert_conforms(openapi, health)
    assert httpx.get(f"{stack.api_url}/nope").status_code == 404
    wrong = httpx.delete(f"{stack.api_url}/v1/tasks")
    assert wrong.status_code == 405 and "GET" in wrong.headers["Allow"]


def test_cors_preflight_and_origin_allow_list(stack: Stack) -> None:
    allowed = httpx.options(
        f"{stack.api_url}/v1/generations",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    for header in ("authorization", "apikey", "x-client-info", "content-type", "idempotency-key"):
        assert header in allowed.headers["Access-Control-Allow-Headers"]
    denied = httpx.options(
        f"{stack.api_url}/v1/generations",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert denied.status_code == 403 and "Access-Control-Allow-Origin" not in denied.headers
    with stack.client() as client:
        listed = client.get("/v1/generations", headers={"Origin": "http://localhost:3000"})
        assert listed.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_rate_limit_answers_429_with_retry_after(stack: Stack, openapi: dict[str, Any]) -> None:
    with stack.client() as client:
        statuses = []
        for _ in range(61):
            response = client.post("/v1/generations", json=SUMMARIZE)
            statuses.append(response)
            if response.status_code == 202:
                # Ended at once, so the unfinished-jobs limit (20) stays out of the way.
                client.post(f"/v1/generations/{response.json()['id']}/cancel")
    assert [r.status_code for r in statuses[:60]] == [202] * 60
    limited = statuses[60]
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["type"].endswith("/rate-limited")
    assert_conforms(openapi, limited)


def test_database_down_gives_503_and_stores_nothing(tmp_path: Any) -> None:
    # An api whose database refuses connections: every route that needs it answers 503.
    port, dead_db = free_port(), free_port()
    service = function_service(
        "api",
        port,
        {
            "GENJOBS_ENV": "local",
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{dead_db}/x",
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{free_port()}",
        },
        name="api-no-db",
        restart=False,
    )
    supervisor = Supervisor([service], output_dir=tmp_path)
    supervisor.start()
    try:
        token = mint_user_token(secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL)
        headers = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{port}"
        submit = httpx.post(f"{base}/v1/generations", json=SUMMARIZE, headers=headers, timeout=30)
        health = httpx.get(f"{base}/healthz", timeout=30)
    finally:
        supervisor.stop()
    assert submit.status_code == 503, submit.text
    assert submit.headers["content-type"] == "application/problem+json"
    assert int(submit.headers["Retry-After"]) >= 1
    assert health.status_code == 503 and health.json()["database"] == "unavailable"
