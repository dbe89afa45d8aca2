"""Replaying a failed job: back to `queued` with a renewed budget, logged, then republished."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import RowMapping

from genjobs.db import Database
from genjobs.jobs import MAX_ATTEMPTS, Job
from genjobs.publisher import JobPublisher, publish_job
from genjobs.sql import query
from genjobs.statuses import Status

log = logging.getLogger(__name__)


class Action(StrEnum):
    """What a replay did with one job (or dead-letter message)."""

    REPLAYED = "replayed"
    WOULD_REPLAY = "would_replay"
    SKIPPED = "skipped"
    # Dead-letter mode: the job is not marked failed yet; its message stays for a later run.
    DEFERRED = "deferred"
    # Queued again but not republished: the sweeper publishes it.
    PUBLISH_FAILED = "publish_failed"
    ERROR = "error"


@dataclass(frozen=True)
class ReplayResult:
    """The outcome for one job."""

    job_id: uuid.UUID | None
    action: Action
    reason: str = ""
    task: str | None = None
    previous_error: str | None = None
    message_id: str | None = None

    @property
    def settles_message(self) -> bool:
        """True when its dead-letter message may be acked: the job needs nothing more from it."""
        return self.action in {Action.REPLAYED, Action.PUBLISH_FAILED, Action.SKIPPED}

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "job_id": str(self.job_id) if self.job_id else None,
            "action": self.action.value,
            "reason": self.reason,
            "task": self.task,
            "previous_error": self.previous_error,
            "message_id": self.message_id,
        }


@dataclass
class Summary:
    """What a replay run did; safe to add to from several threads."""

    source: str
    dry_run: bool = False
    results: list[ReplayResult] = field(default_factory=list)
    acked: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, result: ReplayResult) -> None:
        """Record one job's outcome."""
        with self._lock:
            self.results.append(result)

    def count_acked(self, count: int) -> None:
        """Record dead-letter messages acknowledged."""
        with self._lock:
            self.acked += count

    def counts(self) -> Counter[Action]:
        """Jobs per action."""
        with self._lock:
            return Counter(result.action for result in self.results)

    def reasons(self, action: Action) -> Counter[str]:
        """Why jobs got `action` (e.g. why they were skipped)."""
        with self._lock:
            return Counter(r.reason for r in self.results if r.action is action)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form, with every job's outcome."""
        counts = self.counts()
        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "counts": {action.value: counts.get(action, 0) for action in Action},
            "skipped_reasons": dict(self.reasons(Action.SKIPPED)),
            "acked": self.acked,
            "jobs": [result.as_dict() for result in self.results],
        }


class Replayer:
    """Replays one job at a time; safe to call from several threads and processes at once."""

    def __init__(
        self,
        db: Database,
        publisher: JobPublisher,
        *,
        budget: int = MAX_ATTEMPTS,
        dry_run: bool = False,
    ) -> None:
        if budget <= 0:
            raise ValueError("the attempt budget must be positive")
        self._db = db
        self._publisher = publisher
        self._budget = budget
        self._dry_run = dry_run

    def replay(
        self,
        job_id: uuid.UUID,
        *,
        since: datetime,
        source: str,
        message_id: str | None = None,
        defer_unfinished: bool = False,
    ) -> ReplayResult:
        """Queue the job again and publish it, unless it is not failed or was replayed `since`.

        `defer_unfinished`: a job still queued or processing is waiting for the dead_letter
        handler to mark it failed (DEFERRED), rather than having nothing to replay (SKIPPED).
        """
        try:
            row = self._transition(job_id, since, source, message_id)
        except Exception as error:
            log.warning("replay failed", exc_info=True, extra={"job_id": str(job_id)})
            return ReplayResult(job_id, Action.ERROR, f"{type(error).__name__}: {error}")
        if row is None:
            return ReplayResult(job_id, Action.SKIPPED, "unknown_job")
        job = Job.from_row(row)
        previous = _error_code(row["previous_error"])
        if row["replayed"]:
            return self._publish(job, previous)
        if job.status is Status.FAILED and not row["replayed_since"]:
            if self._dry_run:
                return ReplayResult(job.id, Action.WOULD_REPLAY, "", job.task, previous)
            # Lost the row lock to a concurrent replay: the statement's snapshot predates it.
            return ReplayResult(job.id, Action.SKIPPED, "already_replayed", job.task, previous)
        return _not_replayed(job, bool(row["replayed_since"]), defer_unfinished)

    def _transition(
        self, job_id: uuid.UUID, since: datetime, source: str, message_id: str | None
    ) -> RowMapping | None:
        params = {
            "id": job_id,
            "since": since,
            "budget": self._budget,
            "source": source,
            "message_id": message_id,
        }
        with self._db.transaction() as conn:
            statement = query("preview_replay" if self._dry_run else "replay_job")
            return conn.execute(statement, params).mappings().first()

    def _publish(self, job: Job, previous: str | None) -> ReplayResult:
        """Publish after the commit: a failure leaves the job queued for the sweeper."""
        published = publish_job(
            self._db, self._publisher, job.id, task=job.task, trace_id=job.trace_id
        )
        if published.error is not None:
            reason = type(published.error).__name__
            return ReplayResult(job.id, Action.PUBLISH_FAILED, reason, job.task, previous)
        log.info("job replayed", extra=job.log_context())
        return ReplayResult(job.id, Action.REPLAYED, "", job.task, previous, published.message_id)


def _not_replayed(job: Job, replayed_since: bool, defer_unfinished: bool) -> ReplayResult:
    """Why a job was left alone."""
    if replayed_since:
        reason, action = "already_replayed", Action.SKIPPED
    elif job.status.is_terminal:
        reason, action = job.status.value, Action.SKIPPED
    elif defer_unfinished:
        reason, action = "not_failed_yet", Action.DEFERRED
    else:
        reason, action = "not_failed", Action.SKIPPED
    return ReplayResult(job.id, action, reason, job.task, _error_code(job.error))


def _error_code(error: Any) -> str | None:
    return str(error.get("code")) if isinstance(error, dict) and error.get("code") else None
