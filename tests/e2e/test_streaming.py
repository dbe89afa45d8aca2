"""Following a job over Server-Sent Events, through the real api, worker and stub model."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.stack import Stack

# A whole stack: run through PgBouncer only, where that variant runs (tests/conftest.py).
pytestmark = pytest.mark.one_database_path

TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass(frozen=True)
class Sse:
    """One event as the stream delivered it, with when it arrived."""

    event: str
    id: int | None
    data: Any
    at: float


def read_events(response: httpx.Response, comments: list[str] | None = None) -> Iterator[Sse]:
    """Parse a text/event-stream response as it arrives."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            if comments is not None:
                comments.append(line)
            continue
        if line == "":
            if "data" in fields:
                event_id = int(fields["id"]) if "id" in fields else None
                data = json.loads(fields["data"])
                yield Sse(fields.get("event", "message"), event_id, data, time.monotonic())
            fields = {}
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")


def follow(
    client: httpx.Client, job_id: str, last_id: int | None = None, until: int | None = None
) -> tuple[list[Sse], list[str]]:
    """Events until the terminal one, the stream's end, or `until` deltas."""
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    events: list[Sse] = []
    comments: list[str] = []
    with client.stream(
        "GET", f"/v1/generations/{job_id}/events", headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in read_events(response, comments):
            events.append(event)
            if event.event in TERMINAL:
                break
            if until is not None and sum(e.event == "delta" for e in events) >= until:
                break
    return events, comments


def submit(stack: Stack, text: str, user: uuid.UUID | None = None) -> tuple[httpx.Client, str]:
    client = stack.client(user)
    body = {"task": "summarize", "input": {"text": f"{text} {uuid.uuid4().hex}"}}
    response = client.post("/v1/generations", json=body)
    assert response.status_code == 202, response.text
    return client, str(response.json()["id"])


def text_of(events: list[Sse], attempt: int | None = None) -> str:
    return "".join(
        e.data["text"]
        for e in events
        if e.event == "delta" and (attempt is None or e.data["attempt"] == attempt)
    )


def test_text_streams_while_the_model_writes(stack: Stack) -> None:
    client, job_id = submit(stack, "stub:tokens=40 stub:pace=50")
    events, _ = follow(client, job_id)
    deltas = [e for e in events if e.event == "delta"]
    final = events[-1]
    assert final.event == "succeeded"
    assert len(deltas) >= 3, [e.event for e in events]
    # The first text arrives long before the answer is complete (40 tokens x 50 ms).
    assert final.at - deltas[0].at > 1.0
    assert text_of(events) == final.data["result"]["text"]
    # One id order for events and text; the events one log row stands for share its id.
    ids = [e.id for e in events if e.id is not None]
    assert ids == sorted(ids)
    assert len({e.id for e in deltas}) == len(deltas)
    assert [e.event for e in events if e.event in {"reset", "status"}][:2] == ["status", "reset"]
    usage = [e for e in events if e.event == "usage"]
    assert usage and usage[-1].data["completion_tokens"] == final.data["usage"]["completion_tokens"]


def test_last_event_id_resumes_with_no_gap_and_no_duplicate(stack: Stack) -> None:
    client, job_id = submit(stack, "stub:tokens=60 stub:pace=40")
    first, _ = follow(client, job_id, until=3)
    last = max(e.id for e in first if e.id is not None)
    rest, _ = follow(client, job_id, last_id=last)
    assert all(e.id is not None and e.id > last for e in rest)
    assert rest[-1].event == "succeeded"
    assert text_of(first) + text_of(rest) == rest[-1].data["result"]["text"]


def test_a_stream_cut_mid_answer_resets_then_completes(stack: Stack) -> None:
    client, job_id = submit(stack, "stub:cut=5 stub:tokens=20 stub:pace=20")
    events, _ = follow(client, job_id)
    kinds = [e.event for e in events]
    assert kinds[-1] == "succeeded", kinds
    resets = [e.data["attempt"] for e in events if e.event == "reset"]
    assert resets == [1, 2]
    first_attempt = text_of(events, attempt=1)
    assert first_attempt and len(first_attempt) < len(events[-1].data["result"]["text"])
    # The client drops attempt 1's text at the reset: attempt 2's text is the answer.
    assert text_of(events, attempt=2) == events[-1].data["result"]["text"]
    statuses = [e.data["status"] for e in events if e.event == "status"]
    assert "queued" in statuses[1:], statuses
    # The broken attempt's five tokens are billed to the user with the answer's twenty.
    assert events[-1].data["usage"]["completion_tokens"] == 5 + 20


def test_cancel_mid_stream_stops_the_model_and_bills_what_it_wrote(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    client, job_id = submit(stack, f"stub:tokens=400 stub:pace=25 {marker}")
    first, _ = follow(client, job_id, until=1)
    assert first[-1].event == "delta"
    cancelled_at = time.monotonic()
    assert client.post(f"/v1/generations/{job_id}/cancel").status_code == 200
    rest, _ = follow(client, job_id, last_id=first[-1].id)
    assert rest[-1].event == "cancelled"
    # The worker learns of the cancel at its next write and closes the model stream: the stub
    # sees its client leave long before the 10 s answer would have ended.
    deadline = time.monotonic() + 5
    calls = stack.model_calls(marker)
    while time.monotonic() < deadline and calls[0]["status"] != 499:
        time.sleep(0.05)
        calls = stack.model_calls(marker)
    assert calls[0]["status"] == 499, calls
    assert time.monotonic() - cancelled_at < 5
    job = stack.wait_for(
        client, job_id, lambda j: (j["usage"] or {}).get("completion_tokens", 0) > 0
    )
    assert job["status"] == "cancelled" and job["usage"]["prompt_tokens"] > 0


def test_an_ended_job_answers_its_terminal_event_at_once(stack: Stack) -> None:
    client, job_id = submit(stack, "quick")
    done = stack.wait_for(client, job_id)
    started = time.monotonic()
    events, _ = follow(client, job_id, last_id=0)
    assert [e.event for e in events] == ["succeeded"]
    assert events[0].data == done
    assert time.monotonic() - started < 2


def test_idle_streams_get_heartbeats(stack: Stack) -> None:
    client, job_id = submit(stack, "stub:sleep=3")
    events, comments = follow(client, job_id)
    assert events[-1].event == "succeeded"
    assert comments.count(": keep-alive") >= 1


def test_a_stream_ends_after_its_longest_duration_and_resumes(stack: Stack) -> None:
    client, job_id = submit(stack, "stub:tokens=220 stub:pace=50")  # 11 s, over the 8 s bound
    started = time.monotonic()
    first, _ = follow(client, job_id)
    assert first[-1].event == "delta"  # ended by the server, not by the job
    assert 7 < time.monotonic() - started < 12
    rest, _ = follow(client, job_id, last_id=first[-1].id)
    assert rest[-1].event == "succeeded"
    assert text_of(first) + text_of(rest) == rest[-1].data["result"]["text"]


def test_events_follow_the_same_auth_and_404_rules(stack: Stack) -> None:
    client, job_id = submit(stack, "private")
    anonymous = httpx.get(f"{stack.api_url}/v1/generations/{job_id}/events")
    assert anonymous.status_code == 401
    with stack.client() as stranger:
        response = stranger.get(f"/v1/generations/{job_id}/events")
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
        assert stranger.get(f"/v1/generations/{uuid.uuid4()}/events").status_code == 404
        assert stranger.get("/v1/generations/not-a-uuid/events").status_code == 404
    bad = client.get(f"/v1/generations/{job_id}/events", headers={"Last-Event-ID": "x1"})
    assert bad.status_code == 422


def test_open_streams_per_user_are_bounded(stack: Stack) -> None:
    user = uuid.uuid4()
    client, job_id = submit(stack, "stub:sleep=6", user)
    streams = []
    try:
        for _ in range(5):  # MAX_STREAMS_PER_USER's default
            response = client.send(
                client.build_request("GET", f"/v1/generations/{job_id}/events"), stream=True
            )
            assert response.status_code == 200
            streams.append(response)
        refused = client.get(f"/v1/generations/{job_id}/events")
        assert refused.status_code == 429 and refused.headers["Retry-After"]
        assert refused.json()["type"].endswith("/too-many-streams")
    finally:
        for response in streams:
            response.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        again = client.send(
            client.build_request("GET", f"/v1/generations/{job_id}/events"), stream=True
        )
        status = again.status_code
        again.close()
        if status == 200:
            break
        time.sleep(0.2)
    assert status == 200, "closed streams must give their slots back"


@pytest.mark.parametrize("header", ["last-event-id"])
def test_cors_lets_a_browser_resume(stack: Stack, header: str) -> None:
    response = httpx.options(
        f"{stack.api_url}/v1/generations/{uuid.uuid4()}/events",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": f"authorization, {header}",
        },
    )
    assert response.status_code == 204
    assert header in response.headers["Access-Control-Allow-Headers"]
