"""Text of a running attempt, written as it streams so clients can follow it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from genjobs import store
from genjobs.db import Database
from genjobs.jobs import Job
from genjobs.store import StreamTail


class DeltaWriter:
    """`on_text` for a model stream: the first text is written at once, then at most every
    `flush_seconds`. Each write is fenced by the attempt (and renews its lease); once one is
    refused, or the heartbeat has set `lost`, the attempt no longer owns the job and the writer
    answers False to stop the call.
    """

    def __init__(
        self,
        db: Database,
        job: Job,
        *,
        flush_seconds: float,
        lease_seconds: float,
        lost: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._lost = lost or threading.Event()
        self._job = job
        self._flush_seconds = flush_seconds
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._pending: list[str] = []
        self._seq = 0
        self._last_write = 0.0
        self.owned = True

    def __call__(self, text: str) -> bool:
        """Take a piece of text; False once the attempt has lost the job."""
        if self._lost.is_set():
            self.owned = False
        self._pending.append(text)
        if self._seq == 0 or self._clock() - self._last_write >= self._flush_seconds:
            return self.flush()
        return self.owned

    def take_tail(self) -> StreamTail | None:
        """The text not written yet, for the outcome's own write; None if none is pending."""
        if not self._pending:
            return None
        tail = StreamTail(self._seq, "".join(self._pending))
        self._pending.clear()
        return tail

    def flush(self) -> bool:
        """Write what is pending; False once the attempt has lost the job."""
        if self._lost.is_set():
            self.owned = False
        if not self._pending or not self.owned:
            return self.owned
        text = "".join(self._pending)
        self._pending.clear()
        with self._db.transaction() as conn:
            written = store.append_delta(conn, self._job, self._seq, text, self._lease_seconds)
        self._seq += 1
        self._last_write = self._clock()
        self.owned = written is not None
        return self.owned
