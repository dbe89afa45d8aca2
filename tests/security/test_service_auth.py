"""Worker, dead_letter and sweeper answer only Google-signed tokens of their own caller."""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import text

from devstack.signing import key_id
from devstack.supervisor import ROOT, free_port, function_service, wait_for_port
from genjobs.db import Database
from genjobs.settings import (
    LOCAL_PUSH_SERVICE_ACCOUNT,
    LOCAL_SCHEDULER_SERVICE_ACCOUNT,
    setting_names,
)
from tests.security.conftest import OPENAI_KEY, SecurityStack

FUNCTIONS = ("worker", "dead_letter", "sweeper")
CALLER = {
    "worker": LOCAL_PUSH_SERVICE_ACCOUNT,
    "dead_letter": LOCAL_PUSH_SERVICE_ACCOUNT,
    "sweeper": LOCAL_SCHEDULER_SERVICE_ACCOUNT,
}
OTHER_CALLER = {
    "worker": LOCAL_SCHEDULER_SERVICE_ACCOUNT,
    "dead_letter": LOCAL_SCHEDULER_SERVICE_ACCOUNT,
    "sweeper": LOCAL_PUSH_SERVICE_ACCOUNT,
}


def google_claims(stack: SecurityStack, name: str, **overrides: Any) -> dict[str, Any]:
    """What Pub/Sub push or Cloud Scheduler put in the token; None in overrides drops a claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "aud": stack.function_url(name),
        "azp": "1" * 21,
        "sub": "1" * 21,
        "email": CALLER[name],
        "email_verified": True,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def signed(stack: SecurityStack, name: str, **overrides: Any) -> str:
    """Signed with the key the functions trust (the local stand-in for Google's)."""
    return "Bearer " + stack.google_token(google_claims(stack, name, **overrides))


@functools.cache
def foreign_key() -> rsa.RSAPrivateKey:
    """A key Google never published."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def foreign(stack: SecurityStack, name: str, kid: str | None) -> str:
    """Right claims, but signed by a key Google never published."""
    return "Bearer " + jwt.encode(
        google_claims(stack, name),
        foreign_key(),
        algorithm="RS256",
        headers={"kid": kid or "not-google"},
    )


Bad = Callable[[SecurityStack, str], str | None]
UNAUTHENTICATED: dict[str, Bad] = {
    "missing": lambda s, n: None,
    "basic-scheme": lambda s, n: "Basic dXNlcjpwYXNz",
    "not-a-jwt": lambda s, n: "Bearer not-a-jwt",
    "wrong-audience-api": lambda s, n: signed(s, n, aud=s.api_url + "/"),
    "wrong-audience-other-function": lambda s, n: signed(
        s, n, aud=s.function_url("dead_letter" if n == "worker" else "worker")
    ),
    "expired": lambda s, n: signed(s, n, exp=int(time.time()) - 300, iat=int(time.time()) - 900),
    "issuer-not-google": lambda s, n: signed(s, n, iss="https://evil.example"),
    "signed-by-another-key-same-kid": lambda s, n: foreign(s, n, key_id(s.push_key)),
    "signed-by-another-key-unknown-kid": lambda s, n: foreign(s, n, None),
    "hs256-supabase-user-token": lambda s, n: f"Bearer {s.token()}",
    "alg-none": lambda s, n: (
        "Bearer "
        + ".".join(
            base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
            for part in ({"alg": "none"}, google_claims(s, n))
        )
        + "."
    ),
}
FORBIDDEN: dict[str, Bad] = {
    "other-service-account": lambda s, n: signed(
        s, n, email="attacker@evil.iam.gserviceaccount.com"
    ),
    "the-other-internal-caller": lambda s, n: signed(s, n, email=OTHER_CALLER[n]),
    "email-not-verified": lambda s, n: signed(s, n, email_verified=False),
    "email-verified-missing": lambda s, n: signed(s, n, email_verified=None),
    "no-email": lambda s, n: signed(s, n, email=None),
}
POISON = b'{"message": {"data": "bm90IGEgam9iIGlk", "messageId": "m-1"}}'  # "not a job id"


def call(stack: SecurityStack, name: str, authorization: str | None, body: bytes) -> httpx.Response:
    """POST a push (or scheduler call) to one of the internal functions."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    return httpx.post(stack.function_url(name), headers=headers, content=body, timeout=30)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("case", sorted(UNAUTHENTICATED))
def test_tokens_that_prove_nothing_are_401(
    security_stack: SecurityStack, name: str, case: str
) -> None:
    """Missing, malformed, expired, wrong audience or issuer, or not signed by Google: 401."""
    response = call(security_stack, name, UNAUTHENTICATED[case](security_stack, name), POISON)
    assert response.status_code == 401, (name, case, response.text)
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="genjobs-internal"')
    assert response.json()["error"] == "unauthenticated"


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("case", sorted(FORBIDDEN))
def test_valid_tokens_of_the_wrong_caller_are_403(
    security_stack: SecurityStack, name: str, case: str
) -> None:
    """Google-signed, right audience, but another or an unverified service account: 403."""
    response = call(security_stack, name, FORBIDDEN[case](security_stack, name), POISON)
    assert response.status_code == 403, (name, case, response.text)
    assert response.json()["error"] == "forbidden"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_right_caller_is_accepted(security_stack: SecurityStack, name: str) -> None:
    """The positive control: the same request with the caller's own token is handled."""
    response = call(security_stack, name, signed(security_stack, name), POISON)
    assert response.status_code == 200, response.text
    if name != "sweeper":
        assert response.json()["outcome"] == "poison_message"


def job_state(db: Database, job_id: str) -> tuple[str, int, int]:
    """(status, attempts, log rows) of a job."""
    with db.transaction() as conn:
        row = conn.execute(
            text(
                "SELECT ai_status, attempts, "
                "(SELECT count(*) FROM generation_logs WHERE generation_id = g.id) AS logs "
                "FROM generations g WHERE id = :id"
            ),
            {"id": job_id},
        ).one()
    return str(row.ai_status), int(row.attempts), int(row.logs)


def test_refused_pushes_change_nothing(
    security_stack: SecurityStack, security_db: Database
) -> None:
    """Pushes naming a real running job with bad tokens neither claim nor fail it."""
    with security_stack.client() as client:
        job_id = client.post(
            "/v1/generations", json={"task": "summarize", "input": {"text": "stub:sleep=6 hold"}}
        ).json()["id"]
        security_stack.wait_for(client, job_id, lambda job: job["status"] == "processing")
        before = job_state(security_db, job_id)
        data = base64.b64encode(job_id.encode()).decode()
        envelope = json.dumps({"message": {"data": data, "messageId": "forged-1"}}).encode()
        for name in ("worker", "dead_letter"):
            for bad in (*UNAUTHENTICATED.values(), *FORBIDDEN.values()):
                response = call(security_stack, name, bad(security_stack, name), envelope)
                assert response.status_code in {401, 403}
        assert job_state(security_db, job_id) == before
        assert security_stack.wait_for(client, job_id)["status"] == "succeeded"


def run_function(target: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Start one function as the platform would and wait for it to exit (or time out)."""
    service = function_service(target, 0, env)
    # Only what this test sets: none of the runner's own settings may leak in.
    base = {k: v for k, v in os.environ.items() if k not in setting_names()}
    return subprocess.run(
        list(service.argv),
        env={**base, **service.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


CLOUD = {
    "GENJOBS_ENV": "cloud",
    "DATABASE_URL": "postgresql://app:pw@db.example:6543/postgres",
    "OPENAI_API_KEY": OPENAI_KEY,
}


@pytest.mark.parametrize(
    ("target", "extra", "missing"),
    [
        ("worker", {}, {"PUSH_AUDIENCE", "PUSH_SERVICE_ACCOUNTS"}),
        ("dead_letter", {}, {"PUSH_AUDIENCE", "PUSH_SERVICE_ACCOUNTS"}),
        ("sweeper", {}, {"PUSH_AUDIENCE", "PUSH_SERVICE_ACCOUNTS"}),
        ("worker", {"PUSH_AUDIENCE": "https://worker.example/"}, {"PUSH_SERVICE_ACCOUNTS"}),
        (
            "dead_letter",
            {"PUSH_SERVICE_ACCOUNTS": " , "},
            {"PUSH_AUDIENCE", "PUSH_SERVICE_ACCOUNTS"},
        ),
    ],
    ids=["worker", "dead_letter", "sweeper", "worker-no-accounts", "dead_letter-blank-accounts"],
)
def test_cloud_mode_refuses_to_start_without_audience_and_callers(
    target: str, extra: dict[str, str], missing: set[str]
) -> None:
    """GENJOBS_ENV=cloud: the process exits at cold start naming what is missing."""
    finished = run_function(target, {**CLOUD, **extra})
    output = finished.stdout + finished.stderr
    assert finished.returncode != 0, output
    for name in missing:
        assert f"{name} is required when GENJOBS_ENV=cloud" in output
    assert OPENAI_KEY not in output and ":pw@" not in output


def test_cloud_mode_starts_once_configured() -> None:
    """The control: with audience and callers set, the same cold start succeeds."""
    env = {
        **CLOUD,
        "PUSH_AUDIENCE": "https://dead-letter.example/",
        "PUSH_SERVICE_ACCOUNTS": LOCAL_PUSH_SERVICE_ACCOUNT,
    }
    port = free_port()
    service = function_service("dead_letter", port, env)
    base = {k: v for k, v in os.environ.items() if k not in setting_names()}
    process = subprocess.Popen(
        list(service.argv),
        env={**base, **service.env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Cold start builds the function at import: listening means the settings passed.
        assert wait_for_port(port, 30), "the configured function did not start"
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_unknown_job_with_a_valid_token_is_acked_without_effect(
    security_stack: SecurityStack,
) -> None:
    """A forged-looking but validly signed push for no job: acked, nothing to do."""
    data = base64.b64encode(str(uuid.uuid4()).encode()).decode()
    envelope = json.dumps({"message": {"data": data, "messageId": "m-2"}}).encode()
    response = call(security_stack, "worker", signed(security_stack, "worker"), envelope)
    assert response.status_code == 200 and response.json()["outcome"] == "unknown_job"
