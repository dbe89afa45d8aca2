"""Sentry: off unless configured; what reaches it has no secret key, value, header or body."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from genjobs.sentry import FILTERED, configure_sentry, scrub_event, secret_values_from_env

OPENAI_KEY = "sk-live-abcdefghijklmnopqrstuvwxyz"
# The event a Flask request that failed would carry, with a secret in every place one can hide.
EVENT: dict[str, Any] = {
    "message": "request failed",
    "request": {
        "headers": {"Authorization": "Bearer eyJabc.def.ghi", "User-Agent": "curl/8"},
        "cookies": {"sb": "x"},
        "data": {"input": {"text": "a user's prompt"}},
    },
    "exception": {"values": [{"type": "APIError", "value": f"no to key {OPENAI_KEY}"}]},
    "extra": {
        "dsn": "https://k@sentry.example/1",
        "url": "postgresql://app:hunter22@db/x",
        "job": {"openai_api_key": "held-in-a-nested-dict", "job_id": "job-1"},
    },
    "breadcrumbs": {"values": [{"message": "token eyJhbGciOi.eyJzdWIi.c2ln sent"}]},
}


def test_scrub_event_drops_headers_bodies_and_secret_text() -> None:
    scrubbed = scrub_event(json.loads(json.dumps(EVENT)), [OPENAI_KEY])
    assert scrubbed["request"] == {"headers": {"User-Agent": "curl/8"}}
    assert scrubbed["exception"]["values"][0]["value"] == f"no to key {FILTERED}"
    assert scrubbed["extra"]["url"] == f"postgresql://app:{FILTERED}@db/x"
    assert scrubbed["breadcrumbs"]["values"][0]["message"] == f"token {FILTERED} sent"
    assert "hunter22" not in json.dumps(scrubbed) and OPENAI_KEY not in json.dumps(scrubbed)


def test_secret_values_come_from_secret_named_variables() -> None:
    env = {"OPENAI_API_KEY": "sk-123456789", "DATABASE_URL": "postgresql://u:p@h/d", "HOME": "/r"}
    assert secret_values_from_env(env) == {"sk-123456789", "postgresql://u:p@h/d"}


def test_sentry_is_off_without_dsn_or_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    assert configure_sentry(None, environment="local", role="api") is False
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)  # not installed
    assert configure_sentry("https://k@sentry.example/1", environment="local", role="api") is False


class SentryIngest(BaseHTTPRequestHandler):
    """Sentry's envelope endpoint: keeps every item it is sent."""

    items: list[tuple[dict[str, Any], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.items.extend(envelope_items(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


def envelope_items(body: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
    """(item header, payload) pairs of a Sentry envelope: header line, then header + payload."""
    _, rest = body.split(b"\n", 1)
    while rest.strip():
        header_line, rest = rest.split(b"\n", 1)
        header = json.loads(header_line)
        length = header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:].lstrip(b"\n")
        yield header, payload


@contextmanager
def sentry_ingest() -> Iterator[tuple[str, list[tuple[dict[str, Any], bytes]]]]:
    items: list[tuple[dict[str, Any], bytes]] = []
    handler = type("Handler", (SentryIngest,), {"items": items})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://publickey@127.0.0.1:{server.server_address[1]}/1", items
    finally:
        server.shutdown()
        server.server_close()


# A function process with SENTRY_DSN: the real sentry-sdk, configured as main.py does.
REPORTER = textwrap.dedent(
    """
    import json, sys
    import sentry_sdk
    from genjobs.sentry import configure_sentry

    assert configure_sentry(sys.argv[1], environment="cloud", role="worker")
    sentry_sdk.capture_event(json.load(sys.stdin))
    sentry_sdk.flush(timeout=10)
    """
)


def test_events_reach_sentry_without_secret_keys_values_headers_or_bodies() -> None:
    with sentry_ingest() as (dsn, items):
        env = {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": OPENAI_KEY}
        result = subprocess.run(
            [sys.executable, "-W", "error::DeprecationWarning:sentry_sdk", "-c", REPORTER, dsn],
            input=json.dumps(EVENT),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    events = [json.loads(payload) for header, payload in items if header.get("type") == "event"]
    assert len(events) == 1, items
    event = events[0]
    raw = json.dumps(event)
    assert event["tags"]["function"] == "worker" and event["environment"] == "cloud"
    # Key names: Sentry's EventScrubber, with our names beside its own, at any depth.
    assert event["extra"]["dsn"] == FILTERED
    assert event["extra"]["job"] == {"openai_api_key": FILTERED, "job_id": "job-1"}
    assert "held-in-a-nested-dict" not in raw
    # Values, headers and bodies: ours.
    assert event["request"] == {"headers": {"User-Agent": "curl/8"}}
    assert event["exception"]["values"][0]["value"] == f"no to key {FILTERED}"
    assert event["extra"]["url"] == f"postgresql://app:{FILTERED}@db/x"
    assert event["breadcrumbs"]["values"][0]["message"] == f"token {FILTERED} sent"
    for secret in (OPENAI_KEY, "hunter22", "eyJabc", "a user's prompt", "publickey"):
        assert secret not in raw
