"""Supabase Realtime: a job's events and text are broadcast on `generation:<id>`, which only
its owner may join (the shim's realtime schema stands in for Supabase's)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import Connection, text

from genjobs import store
from genjobs.db import Database
from genjobs.jobs import Job, Usage
from genjobs.store import Delivery, Outcome

OWNER = uuid.uuid4()


def run_a_streamed_job(db: Database) -> Job:
    """Queued, claimed, two pieces of text, succeeded: what the worker writes."""
    new = store.NewJob(
        user_id=OWNER,
        task="summarize",
        input={"text": "broadcast me"},
        metadata={},
        idempotency_key=None,
        request_hash="h",
        trace_id=None,
        max_attempts=5,
    )
    with db.transaction() as conn:
        job = store.insert_job(conn, new)
        assert job is not None
        claimed = store.claim_job(conn, job.id, 60, Delivery("m-1", 1)).job
        assert claimed is not None
        assert store.append_delta(conn, claimed, 0, "Hello", 60) is not None
        assert store.append_delta(conn, claimed, 1, " world", 60) is not None
        outcome = Outcome.succeeded({"text": "Hello world"}, Usage("gpt-4o-mini", 12, 2), 5)
        done = store.finish_attempt(conn, claimed, outcome, Delivery("m-1", 1))
        assert done is not None
    return done


# The order of the events one log row stands for, as the SSE endpoint sends them.
WITHIN_ROW = {"usage": 0, "reset": 1}


def messages(conn: Connection, topic: str) -> list[tuple[str, dict[str, Any]]]:
    """The topic's broadcasts in event id order (the terminal one names its id `event_id`)."""
    rows = conn.execute(
        text("SELECT event, payload FROM realtime.messages WHERE topic = :topic"),
        {"topic": topic},
    ).all()
    sent = [(row.event, row.payload) for row in rows]
    return sorted(sent, key=lambda m: (event_id(m[1]), WITHIN_ROW.get(m[0], 2)))


def event_id(payload: dict[str, Any]) -> int:
    return int(payload.get("event_id", payload["id"]))


def as_client(conn: Connection, role: str, user: uuid.UUID | None, topic: str) -> None:
    """What Realtime sets before it evaluates the join policy for a client's JWT and topic."""
    conn.execute(text(f"SET LOCAL ROLE {role}"))
    claims = json.dumps({"sub": str(user), "role": role}) if user else ""
    conn.execute(text("SELECT set_config('request.jwt.claims', :c, true)"), {"c": claims})
    conn.execute(text("SELECT set_config('realtime.topic', :t, true)"), {"t": topic})


def test_every_event_and_piece_of_text_is_broadcast_on_the_jobs_topic(clean_db: Database) -> None:
    job = run_a_streamed_job(clean_db)
    with clean_db.transaction() as conn:
        sent = messages(conn, f"generation:{job.id}")
    events = [event for event, _ in sent]
    assert events == [
        "status",  # queued
        "reset",  # attempt 1 starts
        "status",  # processing
        "delta",
        "delta",
        "usage",
        "succeeded",
    ]
    payloads = dict(enumerate(p for _, p in sent))
    assert payloads[0]["status"] == "queued" and payloads[2]["status"] == "processing"
    assert [p["text"] for e, p in sent if e == "delta"] == ["Hello", " world"]
    assert payloads[5]["completion_tokens"] == 2
    final = payloads[6]
    view = job.view()
    assert {k: final[k] for k in ("id", "status", "result", "usage", "attempts")} == {
        k: view[k] for k in ("id", "status", "result", "usage", "attempts")
    }
    # The same ids as the SSE stream's, so a client can merge both without duplicates.
    assert len({event_id(p) for e, p in sent if e == "delta"}) == 2


def test_only_the_owner_may_join_the_topic(clean_db: Database) -> None:
    job = run_a_streamed_job(clean_db)
    other = run_a_streamed_job(clean_db)
    topic = f"generation:{job.id}"
    visible = {}
    for name, role, user, joined in [
        ("owner", "authenticated", OWNER, topic),
        ("another user", "authenticated", uuid.uuid4(), topic),
        ("anon", "anon", None, topic),
        ("owner, malformed topic", "authenticated", OWNER, "generation:not-a-uuid"),
    ]:
        with clean_db.transaction() as conn:
            as_client(conn, role, user, joined)
            visible[name] = conn.execute(
                text("SELECT count(*) FROM realtime.messages WHERE topic = :t"), {"t": joined}
            ).scalar_one()
    assert visible == {
        "owner": 7,
        "another user": 0,
        "anon": 0,
        "owner, malformed topic": 0,
    }
    # Joined to one of their jobs, the owner reads that topic's messages only.
    with clean_db.transaction() as conn:
        as_client(conn, "authenticated", OWNER, topic)
        topics = conn.execute(text("SELECT DISTINCT topic FROM realtime.messages")).scalars()
        assert set(topics) == {topic}
    assert other.id != job.id
