"""A private stack with its own secrets, limits and key servers; fuzzing case counts."""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from devstack.dev import StackConfig
from devstack.signing import key_id
from devstack.supervisor import Supervisor, free_port, function_service
from genjobs.auth.minting import mint_user_token
from genjobs.db import Database, create_database
from genjobs.settings import load_settings
from tests.stack import Stack, free_ports, running_stack

# Distinct per run, so finding one in a log can only mean it leaked from this run.
JWT_SECRET = f"security-jwt-{secrets.token_hex(16)}"
OPENAI_KEY = f"sk-security-{secrets.token_hex(16)}"
DB_PASSWORD = f"dbpw{secrets.token_hex(12)}"

# The private stack's limits: none is the shipped default, so each test proves it is read.
LIMITS = {
    "MAX_BODY_BYTES": 128 * 1024,
    "MAX_METADATA_BYTES": 512,
    "SUBMITS_PER_MINUTE": 5,
    "MAX_ACTIVE_JOBS": 3,
    # Above the bound of the largest input the limit tests submit (summarize at 20,000 chars).
    "DAILY_TOKEN_BUDGET": 25_000,
}
PROXY_MARKER = re.compile(r"proxy:(oversize|badschema|notjson|nul|echo-key=(\d{3}))")
OVERSIZE_BYTES = 64 * 1024 + 1  # genjobs.model_client.MAX_OUTPUT_BYTES + 1


def with_password(url: str, password: str) -> str:
    """The database URL with a password (the test server trusts local connections)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{parts.username or 'postgres'}:{password}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """Serve `handler` on a free local port from a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return server


class SupabaseKeys:
    """`SUPABASE_URL/auth/v1/.well-known/jwks.json` with signing keys added at run time."""

    JWKS_PATH = "/auth/v1/.well-known/jwks.json"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._private: dict[str, tuple[str, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]] = {}
        self._published: list[dict[str, Any]] = []
        self.fetches: list[float] = []  # time.monotonic() of each key set fetch
        keys = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != SupabaseKeys.JWKS_PATH:
                    self.send_error(404)
                    return
                with keys._lock:
                    keys.fetches.append(time.monotonic())
                    body = json.dumps({"keys": keys._published}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _serve(Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.add("es-1", "ES256")
        self.add("rs-1", "RS256")
        self.add("es-retiring", "ES256")  # revoked by the rotation test

    @property
    def issuer(self) -> str:
        """What `iss` must be for this project."""
        return f"{self.url}/auth/v1"

    def add(self, kid: str, alg: str) -> None:
        """Generate a key and publish its public half (as Supabase does when rotating)."""
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if alg == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
            public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        with self._lock:
            self._private[kid] = (alg, key)
            self._published.append({**public, "kid": kid, "alg": alg, "use": "sig"})

    def revoke(self, kid: str) -> None:
        """Stop publishing `kid` (its private half is kept, as a leaked key would be)."""
        with self._lock:
            self._published = [k for k in self._published if k["kid"] != kid]

    def sign(self, claims: Mapping[str, Any], kid: str = "es-1") -> str:
        """A token signed by the published key `kid`."""
        alg, key = self._private[kid]
        return jwt.encode(dict(claims), key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})

    def public_pem(self, kid: str) -> bytes:
        """The published key as PEM (what an algorithm-confusion attacker has)."""
        _, key = self._private[kid]
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwks_document(self) -> bytes:
        """The published key set, as served."""
        with self._lock:
            return json.dumps({"keys": self._published}).encode()

    def claims(self, sub: uuid.UUID | str | None = None, **overrides: Any) -> dict[str, Any]:
        """Access-token claims as Supabase Auth issues them; None in overrides drops a claim."""
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "sub": str(sub or uuid.uuid4()),
            "aud": "authenticated",
            "exp": now + 600,
            "iat": now,
            "email": "user@example.com",
            "role": "authenticated",
            "is_anonymous": False,
            "session_id": str(uuid.uuid4()),
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


class ModelProxy:
    """An OpenAI-compatible endpoint before the stub model that misbehaves on `proxy:` cues."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.keys_seen: set[str] = set()
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                authorization = self.headers.get("Authorization", "")  # any case
                status, headers, payload = proxy.answer(self.path, authorization, body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _serve(Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer(
        self, path: str, authorization: str, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """A scripted answer for `proxy:` cues; anything else is the stub model's."""
        request = json.loads(body or b"{}")
        prompt = "\n".join(str(m.get("content", "")) for m in request.get("messages", []))
        with self._lock:
            self.keys_seen.add(authorization.removeprefix("Bearer "))
            self.calls.append(
                {
                    "prompt": prompt,
                    "max_completion_tokens": request.get("max_completion_tokens"),
                    "response_format": (request.get("response_format") or {}).get("type"),
                }
            )
        cue = PROXY_MARKER.search(prompt)
        if cue is None:
            return self._forward(path, authorization, body)
        model = str(request.get("model", "gpt-4o-mini"))
        if cue.group(2):
            # Providers have echoed the caller's key in error messages.
            message = f"Incorrect API key provided: {authorization.removeprefix('Bearer ')}."
            error = {"message": message, "type": "invalid_request_error", "code": "bad_key"}
            return int(cue.group(2)), _JSON, json.dumps({"error": error}).encode()
        content = {
            "oversize": "A" * OVERSIZE_BYTES,
            "badschema": json.dumps({"entities": [{"name": "Ada", "type": "alien"}]}),
            "notjson": "Here are the entities: Ada (person).",
            "nul": "an answer with a \u0000 in it",
        }[cue.group(1)]
        if request.get("stream"):
            return 200, _SSE, _streamed(model, content)
        return 200, _JSON, json.dumps(_completion(model, content)).encode()

    def _forward(
        self, path: str, authorization: str, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(
            self.upstream + path,
            data=body,
            headers={"Authorization": authorization, "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, _relayed(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, _relayed(error.headers), error.read()

    def calls_with(self, needle: str) -> list[dict[str, Any]]:
        """Recorded calls whose prompt contains `needle`."""
        with self._lock:
            return [c for c in self.calls if needle in c["prompt"]]

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


_JSON = {"Content-Type": "application/json"}
_SSE = {"Content-Type": "text/event-stream"}
# Streamed answers come in pieces of this many characters (the API's come token by token).
_PIECE = 4096


def _relayed(headers: Any) -> dict[str, str]:
    """The upstream headers a client reads (type and retry hints)."""
    return {
        name: value
        for name, value in headers.items()
        if name.lower() == "content-type" or name.lower().startswith(("retry-after", "x-ratelimit"))
    }


def _streamed(model: str, content: str) -> bytes:
    """`content` as the API streams it: chunks, a finish chunk, usage, then [DONE]."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk"}
    base |= {"created": int(time.time()), "model": model}

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        return f"data: {json.dumps({**base, 'choices': choices, 'usage': usage})}\n\n".encode()

    pieces = [content[i : i + _PIECE] for i in range(0, len(content), _PIECE)]
    out = [
        chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        for piece in pieces
    ]
    out.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    usage = {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}
    out.append(chunk([], usage))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _completion(model: str, content: str) -> dict[str, Any]:
    """A chat completion carrying `content`."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46},
    }


@dataclass
class SecurityStack(Stack):
    """The private stack plus its key server, model proxy and extra api processes."""

    keys: SupabaseKeys = field(kw_only=True)
    model: ModelProxy = field(kw_only=True)
    extra: Supervisor = field(kw_only=True)
    anon_api_url: str = field(kw_only=True)
    dead_db_api_url: str = field(kw_only=True)

    def token(self, user: uuid.UUID | None = None, **claims: Any) -> str:
        """An HS256 access token for `user` signed with this stack's JWT secret."""
        return mint_user_token(
            secret=JWT_SECRET, supabase_url=self.keys.url, sub=user or uuid.uuid4(), extra=claims
        )

    def client(self, user: uuid.UUID | None = None) -> httpx.Client:
        """An api client authenticated as `user` (a new user by default)."""
        return httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {self.token(user)}"},
            timeout=30,
        )

    def function_url(self, name: str) -> str:
        """The URL (and OIDC audience) of worker, dead_letter or sweeper: the front end's."""
        return f"http://127.0.0.1:{getattr(self.ports, name)}/"

    def container_url(self, name: str) -> str:
        """Where the function itself listens, behind the Cloud Run-like front end."""
        return f"http://127.0.0.1:{getattr(self.ports, name + '_container')}/"

    def google_token(self, claims: Mapping[str, Any]) -> str:
        """An OIDC token signed with the key the functions trust (the emulator's)."""
        return jwt.encode(
            dict(claims), self.push_key, algorithm="RS256", headers={"kid": key_id(self.push_key)}
        )

    def log_files(self) -> list[Path]:
        """Every process's output file."""
        return sorted(self.logs.glob("*.log"))


@pytest.fixture(scope="session")
def security_stack(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecurityStack]:
    """The whole pipeline with distinct secrets, small limits and a local Supabase key set."""
    logs = tmp_path_factory.mktemp("security-stack-logs")
    ports = free_ports()
    keys = SupabaseKeys()
    model = ModelProxy(f"http://127.0.0.1:{ports.stub_model}")
    env = {
        # DEBUG: the most an operator might turn on must still not show a secret.
        "LOG_LEVEL": "DEBUG",
        "DB_POOL_SIZE": "5",
        "SUPABASE_URL": keys.url,
        "SUPABASE_JWT_SECRET": JWT_SECRET,
        "SWEEP_PUBLISH_GRACE_SECONDS": "2",
        **{name: str(value) for name, value in LIMITS.items()},
    }
    config = StackConfig(
        database_url=with_password(database_url, DB_PASSWORD),
        signing_key=logs / "push-signing-key.pem",
        ports=ports,
        emulator_flags=("--backoff-scale", "0.01"),
        env=env,
        # The worker talks to the stub through the proxy, with a key of its own.
        worker_env={"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": f"{model.url}/v1"},
        worker_threads=16,
        sweep_interval=1.0,
    )
    anon_port, dead_db_port = free_port(), free_port()
    try:
        with running_stack(config, logs) as stack:
            api_env = dict(next(s for s in stack.supervisor.services if s.name == "api").env)
            dead_db = f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:{free_port()}/nowhere"
            extra = Supervisor(
                [
                    function_service(
                        "api",
                        anon_port,
                        {**api_env, "ALLOW_ANONYMOUS_USERS": "true"},
                        name="api-anon",
                        restart=False,
                    ),
                    function_service(
                        "api",
                        dead_db_port,
                        {**api_env, "DATABASE_URL": dead_db, "DB_POOL_TIMEOUT_SECONDS": "2"},
                        name="api-dead-db",
                        restart=False,
                    ),
                ],
                output_dir=logs,
            )
            extra.start()
            try:
                yield SecurityStack(
                    stack.config,
                    stack.supervisor,
                    stack.logs,
                    stack.push_key,
                    keys=keys,
                    model=model,
                    extra=extra,
                    anon_api_url=f"http://127.0.0.1:{anon_port}",
                    dead_db_api_url=f"http://127.0.0.1:{dead_db_port}",
                )
            finally:
                extra.stop()
    finally:
        model.close()
        keys.close()


@pytest.fixture(scope="session")
def security_db(database_url: str) -> Iterator[Database]:
    """The security stack's database, for checking what was (not) stored."""
    database = create_database(
        load_settings("cli", {"DATABASE_URL": database_url, "DB_POOL_SIZE": "2"})
    )
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def openapi_document(security_stack: SecurityStack) -> dict[str, Any]:
    """The OpenAPI document the api serves."""
    response = httpx.get(f"{security_stack.api_url}/openapi.json", timeout=10)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture(autouse=True)
def _show_security_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the private stack's recent output when a test using it fails."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "security_stack" in request.fixturenames:
        stack: SecurityStack = request.getfixturevalue("security_stack")
        for log in stack.log_files():
            print(f"----- {log.name} (last 30 lines) -----")
            print("\n".join(log.read_text(errors="replace").splitlines()[-30:]))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, for the log printer above."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


# --- Run counts: what the fuzzers generated, printed at the end of `make test` -------------


@dataclass
class SchemathesisTally:
    """Requests schemathesis generated against the served document, and what came back."""

    operations: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: int = 0

    @property
    def requests(self) -> int:
        """Generated requests sent."""
        return sum(self.operations.values())


SCHEMATHESIS = SchemathesisTally()
# Hypothesis runs nested in a test (not seen by hypothesis's plugin): cases per description.
NESTED_HYPOTHESIS: Counter[str] = Counter()
_HYPOTHESIS_STATS = "_hypothesis_stats"  # where hypothesis's pytest plugin keeps them
_CASES = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid test cases")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move tests marked `run_last` (key rotation waits out the key set's refetch interval,
    which the tests before it have mostly spent) to the end of the security tests."""
    last = [i for i in items if i.get_closest_marker("run_last") and "tests/security/" in i.nodeid]
    for item in last:
        items.remove(item)
    ours = [n for n, item in enumerate(items) if "tests/security/" in item.nodeid]
    end = ours[-1] + 1 if ours else len(items)
    items[end:end] = last


def hypothesis_cases(reports: Any) -> dict[str, tuple[int, int]]:
    """Hypothesis test cases run per test file, as (cases, tests), from the plugin's stats."""
    totals: dict[str, tuple[int, int]] = {}
    for report_list in reports:
        for report in report_list:
            stats = getattr(report, "__dict__", {}).get(_HYPOTHESIS_STATS)
            if not stats or "test_schemathesis" in report.nodeid:
                continue  # schemathesis is counted by request, below
            cases = sum(sum(map(int, m)) for m in _CASES.findall(stats))
            path = report.nodeid.split("::")[0]
            done, tests = totals.get(path, (0, 0))
            totals[path] = (done + cases, tests + 1)
    return totals


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print how many cases schemathesis and hypothesis generated in this run."""
    lines = []
    tally = SCHEMATHESIS
    if tally.requests:
        by_operation = ", ".join(f"{op} {n}" for op, n in sorted(tally.operations.items()))
        by_status = ", ".join(f"{s}: {n}" for s, n in sorted(tally.statuses.items()))
        lines += [
            f"schemathesis: {tally.requests} generated requests against /openapi.json, "
            f"{tally.failures} failing",
            f"  per operation: {by_operation}",
            f"  per status: {by_status}",
        ]
    hypothesis = hypothesis_cases(terminalreporter.stats.values())
    if hypothesis or NESTED_HYPOTHESIS:
        total = sum(cases for cases, _ in hypothesis.values()) + NESTED_HYPOTHESIS.total()
        lines.append(f"hypothesis: {total} generated test cases")
        lines += [
            f"  {path}: {cases} cases in {tests} property tests"
            for path, (cases, tests) in sorted(hypothesis.items())
        ]
        lines += [f"  {what}: {cases} cases" for what, cases in sorted(NESTED_HYPOTHESIS.items())]
    if lines:
        terminalreporter.section("fuzzing: generated cases")
        for line in lines:
            terminalreporter.write_line(line)
