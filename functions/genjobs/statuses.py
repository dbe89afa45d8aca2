"""Job statuses (`ai_status`) and the events logged for them."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where a job is: queued → processing → succeeded | failed | cancelled."""

    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Terminal statuses never change again."""
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class Event(StrEnum):
    """One `generation_logs` row per event."""

    QUEUED = "queued"
    PUBLISHED = "published"
    STARTED = "started"
    RETRY = "retry"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"
    REPLAYED = "replayed"
