"""Cloud Logging structured JSON on stdout: severity, message, trace and job fields."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Fields callers pass through `extra=` that belong in the JSON line.
_EXTRA_FIELDS = (
    "job_id",
    "task",
    "attempt",
    "user_id",
    "message_id",
    "status",
    "event",
    "delivery_attempt",
    "error_code",
    "latency_ms",
)
TRACE_KEY = "logging.googleapis.com/trace"


class CloudJsonFormatter(logging.Formatter):
    """One JSON object per line, as Cloud Logging parses it from stdout."""

    def __init__(self, project: str | None = None) -> None:
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname if record.levelname != "WARN" else "WARNING",
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        for field in _EXTRA_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = str(value)
        trace = getattr(record, "trace_id", None)
        if trace:
            entry[TRACE_KEY] = f"projects/{self.project}/traces/{trace}" if self.project else trace
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", project: str | None = None) -> None:
    """Route the root logger to stdout as Cloud Logging JSON (idempotent)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, CloudJsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CloudJsonFormatter(project))
    root.handlers = [handler]
    root.setLevel(level)
    # The HTTP clients log every request at INFO; our own lines already say what happened.
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def trace_id_from_headers(headers: Any) -> str | None:
    """The trace id from X-Cloud-Trace-Context (`TRACE/SPAN;o=1`) or W3C traceparent."""
    cloud = headers.get("X-Cloud-Trace-Context")
    if cloud:
        trace = cloud.split("/", 1)[0].strip()
        if _is_hex(trace, 32):
            return str(trace)
    parent = headers.get("traceparent")
    if parent:
        parts = parent.split("-")
        if len(parts) >= 4 and _is_hex(parts[1], 32):
            return str(parts[1])
    return None


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(c in "0123456789abcdefABCDEF" for c in value)
