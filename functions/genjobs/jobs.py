"""The job as the rest of the code sees it: a frozen snapshot of one `generations` row."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from genjobs.statuses import Status

# Attempts a job gets: at submit, and again on top of those used when it is replayed.
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class Usage:
    """Which model answered and the tokens it billed."""

    model: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Job:
    """One generation job."""

    id: uuid.UUID
    user_id: uuid.UUID
    task: str
    status: Status
    input: dict[str, Any]
    metadata: dict[str, Any]
    result: Any
    error: dict[str, Any] | None
    attempts: int
    max_attempts: int
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    idempotency_key: str | None
    request_hash: str | None
    trace_id: str | None
    lease_expires_at: datetime | None
    published_at: datetime | None
    cancel_requested_at: datetime | None
    not_before: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Job:
        """Build from a `generations` row mapping."""
        return cls(
            id=row["id"],
            user_id=row["user_id"],
            task=row["task"],
            status=Status(row["ai_status"]),
            input=row["input"],
            metadata=row["metadata"] or {},
            result=row["result"],
            error=row["error"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            model=row["model"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            idempotency_key=row["idempotency_key"],
            request_hash=row["request_hash"],
            trace_id=row["trace_id"],
            lease_expires_at=row["lease_expires_at"],
            published_at=row["published_at"],
            cancel_requested_at=row["cancel_requested_at"],
            not_before=row.get("not_before"),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )

    @property
    def last_error(self) -> str:
        """The job's last error as `code: message`, for the messages that quote it."""
        if not self.error:
            return "none recorded"
        return f"{self.error.get('code', 'unknown')}: {self.error.get('message', '')}"

    def log_context(self) -> dict[str, Any]:
        """The fields a log line about this job carries."""
        return {"job_id": str(self.id), "task": self.task, "attempt": self.attempts}

    def view(self) -> dict[str, Any]:
        """The job as the HTTP API shows it."""
        usage = None
        if self.model is not None:
            usage = {
                "model": self.model,
                "prompt_tokens": self.prompt_tokens or 0,
                "completion_tokens": self.completion_tokens or 0,
            }
        error = None
        if self.error is not None:
            error = {
                "code": self.error.get("code", "unknown"),
                "message": self.error.get("message", ""),
            }
        return {
            "id": str(self.id),
            "task": self.task,
            "status": self.status.value,
            "input": self.input,
            "metadata": self.metadata,
            "result": self.result,
            "error": error,
            "usage": usage,
            "attempts": self.attempts,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None
