"""Text of a running attempt, written as it streams so clients can follow it."""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

from genjobs import store
from genjobs.db import Database
from genjobs.jobs import Job
from genjobs.model_client import StreamReads
from genjobs.store import StreamTail

log = logging.getLogger(__name__)

CONFIRM = 0.2  # of the first-text window: how long a stream found waiting is looked at again


class DeltaWriter:
    """`on_text` for a model stream: the first text is written once it is `first_seconds` old,
    then at most every `flush_seconds`; text not written when the stream ends goes with the
    outcome (`take_tail`). So an answer that arrives whole costs no write of its own, while a
    stream's first words still show within `first_seconds` (a timer writes them). With the
    stream's `reads` followed, the timer writes them only once the stream waits on the network:
    an answer already read is not split, however long parsing it takes on a busy worker.
    Each write is fenced by the attempt (and renews its lease); once one is refused, or the
    heartbeat has set `lost`, the attempt no longer owns the job and the writer answers False
    to stop the call.
    """

    def __init__(
        self,
        db: Database,
        job: Job,
        *,
        flush_seconds: float,
        lease_seconds: float,
        first_seconds: float = 0.0,
        lost: threading.Event | None = None,
        reads: StreamReads | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._reads = reads or StreamReads()
        self._lost = lost or threading.Event()
        self._job = job
        self._flush_seconds = flush_seconds
        self._first_seconds = first_seconds
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._lock = threading.Lock()  # the stream's thread and the first-text timer
        self._pending: list[str] = []
        self._seq = 0
        self._first_at: float | None = None
        self._last_write = 0.0
        self._closed = False
        self.owned = True

    def __call__(self, text: str) -> bool:
        """Take a piece of text; False once the attempt has lost the job."""
        with self._lock:
            self._pending.append(text)
            now = self._clock()
            if self._seq == 0:
                if self._first_at is None:
                    self._first_at = now
                    if self._first_seconds > 0:
                        FIRST_TEXT_TIMER.schedule(self._first_seconds, self._flush_first)
                due = self._first_seconds == 0 or (
                    # A followed stream's first words are the timer's to write.
                    not self._reads.followed and now - self._first_at >= self._first_seconds
                )
            else:
                due = now - self._last_write >= self._flush_seconds
            return self._flush() if due else self._still_owned()

    def take_tail(self) -> StreamTail | None:
        """The text not written yet, for the outcome's own write; None if none is pending.

        Ends the writer: nothing is written after this.
        """
        with self._lock:
            self._closed = True
            if not self._pending:
                return None
            tail = StreamTail(self._seq, "".join(self._pending))
            self._pending.clear()
            return tail

    def close(self) -> None:
        """End the writer without a tail (the call failed): nothing is written after this."""
        with self._lock:
            self._closed = True

    def flush(self) -> bool:
        """Write what is pending; False once the attempt has lost the job."""
        with self._lock:
            return self._flush()

    def _flush_first(self, waiting_with: int | None = None) -> None:
        """The timer's write of first words no later text has written, once the stream waits
        on the network; while it is still parsing what it has read, the timer looks again.

        Waiting means found in a read twice, `CONFIRM` of the window apart, with no text in
        between: a read of data already received can also be caught waiting, for the GIL.
        """
        with self._lock:
            if self._seq > 0 or self._closed:
                return
            texts = len(self._pending)
            if not self._reads.followed or (self._reads.waiting and waiting_with == texts):
                self._flush()
                return
            found = texts if self._reads.waiting else None
        delay = self._first_seconds * (CONFIRM if found is not None else 1)
        FIRST_TEXT_TIMER.schedule(delay, functools.partial(self._flush_first, found))

    def _still_owned(self) -> bool:
        if self._lost.is_set():
            self.owned = False
        return self.owned

    def _flush(self) -> bool:
        if not self._still_owned() or not self._pending or self._closed:
            return self.owned
        text = "".join(self._pending)
        with self._db.transaction() as conn:
            written = store.append_delta(conn, self._job, self._seq, text, self._lease_seconds)
        self._pending.clear()
        self._seq += 1
        self._last_write = self._clock()
        self.owned = written is not None
        return self.owned


class _Timer:
    """One thread per process runs every writer's first-text deadline (no thread per job)."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def schedule(self, delay: float, action: Callable[[], None]) -> None:
        """Run `action` on the timer's thread in `delay` seconds."""
        with self._wake:
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._order), action))
            if self._thread is None or not self._thread.is_alive():
                # Started on first use, so it runs in the process that serves (after a fork).
                self._thread = threading.Thread(target=self._loop, name="first-text", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                action = heapq.heappop(self._due)[2]
            try:
                action()
            except Exception:
                # The text stays pending: the stream's next text or its outcome writes it.
                log.warning("writing a stream's first text failed", exc_info=True)


FIRST_TEXT_TIMER = _Timer()
