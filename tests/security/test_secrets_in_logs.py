"""No secret in any process's output or in anything stored, after runs that fail every way."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from genjobs.auth.minting import mint_user_token
from genjobs.db import Database
from genjobs.settings import LOCAL_JWT_SECRET, load_settings
from tests.security.conftest import DB_PASSWORD, JWT_SECRET, OPENAI_KEY, SecurityStack

SECRETS = {"OPENAI_API_KEY": OPENAI_KEY, "DB password": DB_PASSWORD, "JWT secret": JWT_SECRET}
TERMINAL = {"succeeded", "failed", "cancelled"}
# Every way a job can go: success, refusal, server errors until dead-lettered, and
# providers answering 400/401/500 with our key echoed in their error message.
PROMPTS = {
    "ok": ("succeeded", None),
    "stub:refuse": ("failed", "content_policy_violation"),
    "stub:500": ("failed", "dead_lettered"),
    "stub:fail=429x1": ("succeeded", None),
    "proxy:echo-key=400": ("failed", "model_refused"),
    "proxy:echo-key=401": ("failed", "dead_lettered"),
    "proxy:echo-key=500": ("failed", "dead_lettered"),
}


def submit(stack: SecurityStack, prompt: str) -> tuple[str, str]:
    """Submit as a new user; returns (job id, that user's token)."""
    token = stack.token()
    response = httpx.post(
        f"{stack.api_url}/v1/generations",
        headers={"Authorization": f"Bearer {token}"},
        json={"task": "summarize", "input": {"text": f"{prompt} {uuid.uuid4().hex}"}},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return response.json()["id"], token


def wait_terminal(
    stack: SecurityStack, jobs: dict[str, str], timeout: float = 60
) -> dict[str, Any]:
    """Each job's final view, by id (jobs: id -> its owner's token)."""
    done: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(jobs) and time.monotonic() < deadline:
        for job_id, token in jobs.items():
            if job_id in done:
                continue
            view = httpx.get(
                f"{stack.api_url}/v1/generations/{job_id}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            ).json()
            if view["status"] in TERMINAL:
                done[job_id] = view
        time.sleep(0.2)
    assert len(done) == len(jobs), f"unfinished: {set(jobs) - set(done)}"
    return done


def refused_requests(stack: SecurityStack) -> list[httpx.Response]:
    """Requests that fail before or around a job: bad tokens, bad bodies, no database."""
    url = f"{stack.api_url}/v1/generations"
    bearer = {"Authorization": f"Bearer {stack.token()}"}
    json_type = {**bearer, "Content-Type": "application/json"}
    bad_tokens = [
        mint_user_token(secret=JWT_SECRET, supabase_url=stack.keys.url, ttl_seconds=-300),
        mint_user_token(secret=LOCAL_JWT_SECRET, supabase_url=stack.keys.url),
        "not.a.jwt",
    ]
    responses = [
        httpx.get(url, headers={"Authorization": f"Bearer {t}"}, timeout=10) for t in bad_tokens
    ]
    responses += [
        httpx.post(url, headers=json_type, content=b'{"task": "summarize", "inp', timeout=10),
        httpx.post(url, headers=json_type, content=b'{"a": NaN}', timeout=10),
        httpx.post(url, headers=bearer, json={"task": "nope", "input": {}}, timeout=10),
        httpx.post(url, headers=bearer, data={"task": "summarize"}, timeout=10),
        httpx.post(
            f"{stack.dead_db_api_url}/v1/generations",
            headers=bearer,
            json={"task": "summarize", "input": {"text": "no database"}},
            timeout=30,
        ),
        httpx.get(f"{stack.dead_db_api_url}/healthz", timeout=30),
        httpx.post(stack.function_url("worker"), content=b"{}", timeout=10),
        httpx.post(
            stack.function_url("worker"),
            headers={"Authorization": f"Bearer {stack.token()}"},
            content=b"{}",
            timeout=10,
        ),
    ]
    statuses = [r.status_code for r in responses]
    assert statuses == [401, 401, 401, 400, 400, 422, 415, 503, 503, 401, 401], statuses
    return responses


@pytest.fixture(scope="module")
def finished_run(security_stack: SecurityStack) -> Iterator[dict[str, Any]]:
    """Every job scenario run to its end, plus the refused requests and their answers."""
    jobs = dict(submit(security_stack, prompt) for prompt in PROMPTS)
    prompts = dict(zip(jobs, PROMPTS, strict=True))
    answers = refused_requests(security_stack)
    views = wait_terminal(security_stack, jobs)
    yield {"views": views, "prompts": prompts, "tokens": list(jobs.values()), "answers": answers}


def test_every_scenario_ended_as_expected(finished_run: dict[str, Any]) -> None:
    """The run really went through success, refusals, retries and dead-lettering."""
    for job_id, view in finished_run["views"].items():
        status, code = PROMPTS[finished_run["prompts"][job_id]]
        assert view["status"] == status, view
        assert (view["error"] or {}).get("code") == code, view


def test_the_secrets_were_really_in_use(
    security_stack: SecurityStack, finished_run: dict[str, Any]
) -> None:
    """Not vacuous: the worker sent our key, the api verified our secret, the URL had a password."""
    assert security_stack.model.keys_seen == {OPENAI_KEY}
    assert DB_PASSWORD in security_stack.config.database_url
    echoed = [
        v
        for job_id, v in finished_run["views"].items()
        if finished_run["prompts"][job_id] == "proxy:echo-key=400"
    ]
    assert "[redacted]" in echoed[0]["error"]["message"]  # the key came back, and was cut


def test_no_secret_or_user_token_in_any_process_output(
    security_stack: SecurityStack, finished_run: dict[str, Any]
) -> None:
    """Every output file of every process (DEBUG level), whole."""
    files = security_stack.log_files()
    names = {f.name for f in files}
    assert {"api.log", "worker.log", "dead_letter.log", "api-dead-db.log"} <= names
    needles = {**SECRETS, **{f"user token {i}": t for i, t in enumerate(finished_run["tokens"])}}
    for path in files:
        output = path.read_text(errors="replace")
        for what, value in needles.items():
            assert value not in output, f"{what} found in {path.name}"
    worker = (security_stack.logs / "worker.log").read_text(errors="replace")
    assert '"severity": "DEBUG"' in worker and "job succeeded" in worker


def test_no_secret_or_request_header_in_what_is_stored(
    security_db: Database, finished_run: dict[str, Any]
) -> None:
    """Stored errors and log details hold no secret, token or header."""
    with security_db.transaction() as conn:
        stored = [
            *conn.execute(text("SELECT coalesce(error::text, '') FROM generations")).scalars(),
            *conn.execute(
                text("SELECT concat_ws(' ', detail, error_code) FROM generation_logs")
            ).scalars(),
        ]
    assert len(stored) > len(PROMPTS)
    needles = [*SECRETS.values(), *finished_run["tokens"]]
    for value in stored:
        lowered = value.lower()
        assert "authorization" not in lowered and "bearer " not in lowered, value
        for needle in needles:
            assert needle not in value


def test_no_secret_in_any_answer(finished_run: dict[str, Any]) -> None:
    """Problem details (including the database-down 503) never carry a secret."""
    for response in finished_run["answers"]:
        for value in SECRETS.values():
            assert value not in response.text
            assert value not in str(response.headers)
    for view in finished_run["views"].values():
        for value in SECRETS.values():
            assert value not in str(view)


def test_settings_repr_masks_the_secrets() -> None:
    """The settings object a traceback or debugger might print shows none of them."""
    settings = load_settings(
        "worker",
        {
            "DATABASE_URL": f"postgresql://app:{DB_PASSWORD}@db:6543/postgres",
            "OPENAI_API_KEY": OPENAI_KEY,
            "SUPABASE_JWT_SECRET": JWT_SECRET,
        },
    )
    shown = repr(settings) + str(settings)
    for value in SECRETS.values():
        assert value not in shown
