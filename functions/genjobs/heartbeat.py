"""The worker's heartbeat: one thread per process renews the lease of every running attempt."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from genjobs import store
from genjobs.db import Database
from genjobs.jobs import Job

log = logging.getLogger(__name__)

AttemptKey = tuple[uuid.UUID, int]


class Heartbeat:
    """Renews the leases of this process's running attempts, all in one statement per beat.

    A lease is a few beats long, so a crashed process's jobs are free again within a lease
    while a beat or two lost to a slow database are forgiven. An attempt whose renewal finds
    it no longer owns its job (cancelled, finished, taken over) has its `lost` event set.
    """

    def __init__(self, db: Database, *, interval_seconds: float, lease_seconds: float) -> None:
        self._db = db
        self._interval = interval_seconds
        self._lease_seconds = lease_seconds
        self._running: dict[AttemptKey, threading.Event] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @contextmanager
    def holding(self, job: Job) -> Iterator[threading.Event]:
        """Keep the attempt's lease alive while the block runs; yields its `lost` event."""
        key = (job.id, job.attempts)
        lost = threading.Event()
        with self._lock:
            self._running[key] = lost
            self._start()
        try:
            yield lost
        finally:
            with self._lock:
                self._running.pop(key, None)

    def running(self) -> int:
        """How many attempts it keeps alive now."""
        with self._lock:
            return len(self._running)

    def beat(self) -> None:
        """Renew every running attempt's lease once; tell those that lost their job."""
        with self._lock:
            running = dict(self._running)
        if not running:
            return
        try:
            with self._db.transaction() as conn:
                owned = store.renew_leases(conn, list(running), self._lease_seconds)
        except Exception:
            # The next beat tries again; the lease outlasts a couple of missed beats.
            log.warning("lease renewal failed for %d attempts", len(running), exc_info=True)
            return
        for key, lost in running.items():
            if key not in owned:
                lost.set()

    def stop(self) -> None:
        """End the thread (tests; a process's thread otherwise dies with it)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _start(self) -> None:
        # Started on first use, so it runs in the process that serves (after a fork).
        if self._thread is None or not self._thread.is_alive():
            self._stopped.clear()
            self._thread = threading.Thread(target=self._loop, name="lease-heartbeat", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval):
            self.beat()
