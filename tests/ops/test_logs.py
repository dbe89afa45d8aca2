"""Cloud Logging JSON, and one trace from api through message to worker."""

from __future__ import annotations

import io
import json
import logging
import threading
import uuid
from typing import Any

import pytest

from genjobs.logs import (
    TRACE_KEY,
    CloudJsonFormatter,
    log_context,
    new_trace_id,
    trace_id_from_headers,
)
from tests.stack import Stack

# A whole stack: run through PgBouncer only, where that variant runs (tests/conftest.py).
pytestmark = pytest.mark.one_database_path

TRACE = "0af7651916cd43dd8448eb211c80319c"


def capture(project: str | None = "proj") -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudJsonFormatter(project))
    logger = logging.getLogger(f"test.{uuid.uuid4().hex}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_context_fields_and_trace_reach_every_line_inside_the_block() -> None:
    logger, stream = capture()
    with log_context(trace_id=TRACE, job_id="j-1", task="summarize"):
        logger.warning("inside %s", "block", extra={"attempt": 2})
        with log_context(attempt=3, job_id=None):  # None keeps the outer value
            logger.info("nested")
        logger.info("overridden", extra={"job_id": "j-2"})
    logger.error("outside")
    first, nested, overridden, outside = lines(stream)
    assert first["severity"] == "WARNING" and first["message"] == "inside block"
    assert first[TRACE_KEY] == f"projects/proj/traces/{TRACE}"
    assert (first["job_id"], first["task"], first["attempt"]) == ("j-1", "summarize", "2")
    assert (nested["job_id"], nested["attempt"]) == ("j-1", "3")
    assert overridden["job_id"] == "j-2"  # `extra=` is more specific than the context
    assert TRACE_KEY not in outside and "job_id" not in outside


def test_contexts_do_not_leak_between_threads() -> None:
    logger, stream = capture(project=None)
    ready, done = threading.Event(), threading.Event()

    def other() -> None:
        with log_context(job_id="other"):
            ready.set()
            done.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    ready.wait(5)
    logger.info("main thread")
    done.set()
    thread.join()
    assert "job_id" not in lines(stream)[0]


def test_exceptions_carry_their_stack_trace() -> None:
    logger, stream = capture()
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    (entry,) = lines(stream)
    assert entry["severity"] == "ERROR" and "ValueError: boom" in entry["stack_trace"]


def test_trace_id_from_cloud_and_w3c_headers() -> None:
    assert trace_id_from_headers({"X-Cloud-Trace-Context": f"{TRACE}/123;o=1"}) == TRACE
    assert trace_id_from_headers({"X-Cloud-Trace-Context": TRACE.upper()}) == TRACE
    assert trace_id_from_headers({"traceparent": f"00-{TRACE}-b7ad6b7169203331-01"}) == TRACE
    assert trace_id_from_headers({"X-Cloud-Trace-Context": "nothex/1"}) is None
    assert trace_id_from_headers({"traceparent": f"00-{'0' * 32}-b7ad6b7169203331-01"}) is None
    assert trace_id_from_headers({}) is None
    fresh = new_trace_id()
    assert trace_id_from_headers({"X-Cloud-Trace-Context": fresh}) == fresh


def json_lines(stack: Stack, service: str) -> list[dict[str, Any]]:
    """The service's output lines that are JSON objects (its log records)."""
    found = []
    for line in (stack.logs / f"{service}.log").read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line[line.index("{") :]) if "{" in line else None
        except ValueError:
            continue
        if isinstance(entry, dict):
            found.append(entry)
    return found


def test_one_jobs_lines_share_its_trace_across_api_and_worker(stack: Stack) -> None:
    trace = new_trace_id()
    client = stack.client()
    response = client.post(
        "/v1/generations",
        json={"task": "summarize", "input": {"text": f"trace me {trace}"}},
        headers={"X-Cloud-Trace-Context": f"{trace}/1;o=1"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert stack.wait_for(client, job_id)["status"] == "succeeded"
    stack.wait_for_log("worker", "job succeeded")
    expected = f"projects/local-project/traces/{trace}"
    for service in ("api", "worker"):
        mine = [e for e in json_lines(stack, service) if e.get(TRACE_KEY) == expected]
        assert mine, f"no {service} line carries trace {trace}"
        assert {e.get("job_id") for e in mine} == {job_id}, mine
    worker = [e for e in json_lines(stack, "worker") if e.get(TRACE_KEY) == expected]
    assert any(e["message"] == "job succeeded" and e.get("task") == "summarize" for e in worker)
