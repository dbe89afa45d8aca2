"""Worker, dead_letter and sweeper answer only Google-signed tokens of their own caller."""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import text

from devstack.cloud_run_frontend import SIGNATURE_REMOVED, PrivateService, serve
from devstack.signing import key_id
from devstack.supervisor import ROOT, Supervisor, free_port, function_service, wait_for_port
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


def call(
    stack: SecurityStack,
    name: str,
    authorization: str | None,
    body: bytes,
    *,
    container: bool = False,
) -> httpx.Response:
    """POST a push (or scheduler call) to one of the internal functions.

    By default through the Cloud Run-like front end, as production delivers it; `container`
    goes straight to the function behind it (what the function itself refuses).
    """
    headers = {"Authorization": authorization} if authorization is not None else {}
    url = stack.container_url(name) if container else stack.function_url(name)
    return httpx.post(url, headers=headers, content=body, timeout=30)


def signature_removed(authorization: str) -> str:
    """The token as Cloud Run forwards it after its invoker check."""
    return authorization.rpartition(".")[0] + "." + SIGNATURE_REMOVED


def assert_refused_by_frontend(response: httpx.Response, status: int) -> None:
    """Cloud Run's own refusal page: the function never saw the request."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("text/html")
    assert "WWW-Authenticate" not in response.headers


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("case", sorted(UNAUTHENTICATED))
def test_tokens_that_prove_nothing_never_reach_the_function(
    security_stack: SecurityStack, name: str, case: str
) -> None:
    """The front end answers 401 itself, as Cloud Run's invoker check does."""
    response = call(security_stack, name, UNAUTHENTICATED[case](security_stack, name), POISON)
    assert_refused_by_frontend(response, 401)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("case", sorted(FORBIDDEN))
def test_callers_without_invoker_never_reach_the_function(
    security_stack: SecurityStack, name: str, case: str
) -> None:
    """A valid Google token of an identity without run.invoker: 403 from the front end."""
    response = call(security_stack, name, FORBIDDEN[case](security_stack, name), POISON)
    assert_refused_by_frontend(response, 403)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_right_caller_is_accepted(security_stack: SecurityStack, name: str) -> None:
    """The positive control, through the front end: the function gets and accepts the push."""
    response = call(security_stack, name, signed(security_stack, name), POISON)
    assert response.status_code == 200, response.text
    if name != "sweeper":
        assert response.json()["outcome"] == "poison_message"


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("case", sorted(UNAUTHENTICATED))
def test_function_refuses_signed_tokens_that_prove_nothing(
    security_stack: SecurityStack, name: str, case: str
) -> None:
    """Behind the front end, a token that still has a signature is verified in full: 401."""
    bad = UNAUTHENTICATED[case](security_stack, name)
    response = call(security_stack, name, bad, POISON, container=True)
    assert response.status_code == 401, (name, case, response.text)
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="genjobs-internal"')
    assert response.json()["error"] == "unauthenticated"


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("case", sorted(FORBIDDEN))
def test_function_refuses_the_wrong_caller(
    security_stack: SecurityStack, name: str, case: str
) -> None:
    """Google-signed, right audience, but another or an unverified service account: 403."""
    bad = FORBIDDEN[case](security_stack, name)
    for authorization in (bad, signature_removed(bad)):
        response = call(security_stack, name, authorization, POISON, container=True)
        assert response.status_code == 403, (name, case, response.text)
        assert response.json()["error"] == "forbidden"


# Claims the platform does not judge for us once the signature is gone (Cloud Run checks the
# audience too, but a function must not rely on another service's audience being refused).
BAD_CLAIMS: dict[str, dict[str, Any]] = {
    "wrong-audience-api": {"aud": "http://127.0.0.1:1/"},
    "expired": {"exp": int(time.time()) - 300, "iat": int(time.time()) - 900},
    "issuer-not-google": {"iss": "https://evil.example"},
    "no-subject": {"sub": None},
}


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("case", sorted(BAD_CLAIMS))
def test_function_checks_every_claim_of_a_token_the_platform_unsigned(
    security_stack: SecurityStack, name: str, case: str
) -> None:
    """Signature removed by the platform: audience, issuer, expiry and subject still decide."""
    token = signature_removed(signed(security_stack, name, **BAD_CLAIMS[case]))
    response = call(security_stack, name, token, POISON, container=True)
    assert response.status_code == 401, (name, case, response.text)
    assert response.json()["error"] == "unauthenticated"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_accepts_what_the_platform_forwards(
    security_stack: SecurityStack, name: str
) -> None:
    """The token as Cloud Run forwards it (signature removed), with the right claims: handled."""
    token = signature_removed(signed(security_stack, name))
    response = call(security_stack, name, token, POISON, container=True)
    assert response.status_code == 200, response.text


def test_frontend_forwards_the_token_without_its_signature(security_stack: SecurityStack) -> None:
    """What reaches the function is what Cloud Run forwards: the claims, no signature."""
    seen: list[str] = []

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.headers["Authorization"])
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    service = PrivateService(
        "echo", free_port(), port, frozenset({LOCAL_PUSH_SERVICE_ACCOUNT}), timeout_seconds=5
    )
    frontends = serve([service], security_stack.push_key.public_key())
    try:
        token = security_stack.push_token(service.url)
        response = httpx.post(service.url, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 204
        assert seen == [signature_removed(f"Bearer {token}")]
        refused = httpx.post(
            service.url, headers={"Authorization": signature_removed(f"Bearer {token}")}
        )
        assert_refused_by_frontend(refused, 401)
        assert len(seen) == 1
    finally:
        for frontend in (*frontends, server):
            frontend.shutdown()
            frontend.server_close()


def test_unsigned_token_refused_where_no_platform_check_is_known(
    security_stack: SecurityStack,
) -> None:
    """A function not told that Cloud Run's check is in front refuses a forged unsigned token."""
    port = free_port()
    env = dict(next(s for s in security_stack.supervisor.services if s.name == "dead_letter").env)
    env.pop("PLATFORM_INVOKER_CHECK")
    env["PUSH_AUDIENCE"] = f"http://127.0.0.1:{port}/"
    direct = Supervisor(
        [function_service("dead_letter", port, env, name="dead_letter-direct", restart=False)],
        output_dir=security_stack.logs,
    )
    direct.start()
    try:
        token = signed(security_stack, "dead_letter", aud=env["PUSH_AUDIENCE"])
        url = env["PUSH_AUDIENCE"]
        unsigned = {"Authorization": signature_removed(token)}
        forged = httpx.post(url, headers=unsigned, content=POISON)
        assert forged.status_code == 401, forged.text
        assert forged.json()["detail"] == "token is not signed"
        control = httpx.post(url, headers={"Authorization": token}, content=POISON)
        assert control.status_code == 200, control.text
    finally:
        direct.stop()


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
                token = bad(security_stack, name)
                for container in (False, True):
                    response = call(security_stack, name, token, envelope, container=container)
                    assert response.status_code in {401, 403}
            for claims in BAD_CLAIMS.values():
                token = signature_removed(signed(security_stack, name, **claims))
                response = call(security_stack, name, token, envelope, container=True)
                assert response.status_code == 401
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


CONFIGURED = {
    **CLOUD,
    "PUSH_AUDIENCE": "https://dead-letter.example/",
    "PUSH_SERVICE_ACCOUNTS": LOCAL_PUSH_SERVICE_ACCOUNT,
}


def test_platform_check_is_refused_off_cloud_run() -> None:
    """Trusting Cloud Run's check where no Cloud Run is (no K_SERVICE) stops the cold start."""
    finished = run_function("dead_letter", {**CONFIGURED, "PLATFORM_INVOKER_CHECK": "true"})
    output = finished.stdout + finished.stderr
    assert finished.returncode != 0, output
    assert "PLATFORM_INVOKER_CHECK=true but this is not Cloud Run" in output


@pytest.mark.parametrize(
    "extra",
    [{}, {"PLATFORM_INVOKER_CHECK": "true", "K_SERVICE": "genjobs-dead-letter"}],
    ids=["full-verification", "behind-cloud-run"],
)
def test_cloud_mode_starts_once_configured(extra: dict[str, str]) -> None:
    """The control: with audience and callers set, the same cold start succeeds."""
    env = {**CONFIGURED, **extra}
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
