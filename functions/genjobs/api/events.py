"""`GET /v1/generations/{id}/events`: a job as Server-Sent Events, read from its event log and
streamed text (one id order for both), so `Last-Event-ID` resumes with no gap or duplicate."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from typing import Any

from genjobs import store
from genjobs.db import Database
from genjobs.errors import InvalidRequest, RateLimited
from genjobs.jobs import Job
from genjobs.settings import Settings
from genjobs.statuses import Event

# Rows read per poll: a client far behind catches up over several polls.
BATCH = 500
# How long a browser waits before reconnecting after the stream ends (the SSE `retry:` field).
RECONNECT_MS = 1000


def sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One Server-Sent Event (data as one line of compact JSON)."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"{head}data: {payload}\n\n".encode()


def last_event_id(header: str | None) -> int:
    """Where a reconnecting client left off (0: from the start)."""
    if header is None or not header.strip():
        return 0
    value = header.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 19):
        raise InvalidRequest(
            "invalid Last-Event-ID",
            [{"field": "Last-Event-ID", "message": "an event id this stream sent"}],
        )
    return int(value)


class StreamSlots:
    """Open streams per user on this instance, bounded (each holds a request thread)."""

    def __init__(self, per_user: int) -> None:
        self._per_user = per_user
        self._open: Counter[uuid.UUID] = Counter()
        self._lock = threading.Lock()

    def take(self, user_id: uuid.UUID) -> None:
        """Count one more open stream for the user, or RateLimited (429)."""
        with self._lock:
            if self._open[user_id] >= self._per_user:
                raise RateLimited(
                    f"at most {self._per_user} open event streams per user",
                    retry_after=5,
                    code="too_many_streams",
                )
            self._open[user_id] += 1

    def give_back(self, user_id: uuid.UUID) -> None:
        """The stream ended."""
        with self._lock:
            self._open[user_id] -= 1
            if self._open[user_id] <= 0:
                del self._open[user_id]


class ClosingStream:
    """A response body that calls `on_close` once when the server closes it (WSGI `close`)."""

    def __init__(self, chunks: Generator[bytes, None, None], on_close: Callable[[], None]) -> None:
        self._chunks = chunks
        self._on_close: Callable[[], None] | None = on_close

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        """Stop the stream and run `on_close` (once)."""
        self._chunks.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


class JobEvents:
    """Polls one job's events and text, as SSE, until it ends or the stream's time is up."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self._db = db
        self._clock = clock
        self._sleep = sleep

    def stream(self, job: Job, after: int) -> Generator[bytes, None, None]:
        """The events after `after`; an ended job answers its terminal event at once."""
        if job.status.is_terminal:
            with self._db.transaction() as conn:
                event_id = store.last_event_id(conn, job.id)
            yield sse(job.status.value, job.view(), event_id)
            return
        yield f"retry: {RECONNECT_MS}\n\n".encode()
        started = last_sent = self._clock()
        text_seen = False
        s = self._settings
        while self._clock() - started < s.stream_max_seconds:
            with self._db.transaction() as conn:
                rows = store.events_since(conn, job.id, after, BATCH)
                ended = next((r for r in rows if _ends(r)), None)
                final = store.get_job(conn, job.id) if ended is not None else None
            for row in rows:
                yield from _render(row, final)
                after = row.id
                if row is ended:
                    return
            if rows:
                last_sent = self._clock()
            elif self._clock() - last_sent >= s.stream_heartbeat_seconds:
                yield b": keep-alive\n\n"
                last_sent = self._clock()
            if any(r.event is None for r in rows):
                text_seen = True
            if len(rows) < BATCH:
                # Until the first text the wait is what a user feels most: poll faster then.
                poll_ms = s.stream_poll_ms if text_seen else s.stream_first_poll_ms
                self._sleep(poll_ms / 1000)


def _ends(row: store.StreamEvent) -> bool:
    return row.status is not None and row.status.is_terminal and row.event is not Event.PUBLISHED


def _render(row: store.StreamEvent, final: Job | None) -> Iterator[bytes]:
    """The SSE events one row stands for (none for internal ones such as `published`)."""
    if row.event is None:
        data = {"attempt": row.attempt, "seq": row.seq, "text": row.text}
        yield sse("delta", data, row.id)
        return
    if row.usage is not None:
        usage = {
            "attempt": row.attempt,
            "model": row.usage.model,
            "prompt_tokens": row.usage.prompt_tokens,
            "completion_tokens": row.usage.completion_tokens,
        }
        yield sse("usage", usage, row.id)
    if row.event is Event.STARTED:
        # A new attempt: a client drops the text the previous one streamed.
        yield sse("reset", {"attempt": row.attempt}, row.id)
    if _ends(row) and final is not None and row.status is not None:
        yield sse(row.status.value, final.view(), row.id)
    elif row.event is not Event.PUBLISHED and row.status is not None:
        status: dict[str, Any] = {"status": row.status.value, "attempt": row.attempt}
        if row.error_code:
            status["error"] = row.error_code
        yield sse("status", status, row.id)
