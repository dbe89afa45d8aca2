"""Cloud Logging structured JSON on stdout: severity, message, trace and job fields."""

from __future__ import annotations

import json
import logging
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

# Fields callers pass through `extra=` (or `log_context`) that belong in the JSON line.
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

_NOTHING: Mapping[str, Any] = MappingProxyType({})
# What the current request or push delivery is about; read by the formatter for every line,
# so code deep inside a request needs no `extra=` to be found by its trace id or job id.
_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar("genjobs_log_context", default=_NOTHING)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (trace_id, job_id, task, attempt, …) to every log line inside the block."""
    given = {key: value for key, value in fields.items() if value is not None}
    token = _CONTEXT.set({**_CONTEXT.get(), **given})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_log_context() -> Mapping[str, Any]:
    """The fields `log_context` has set for this thread or task."""
    return _CONTEXT.get()


def current_trace_id() -> str | None:
    """The trace id `log_context` has set, if any."""
    trace = _CONTEXT.get().get("trace_id")
    return str(trace) if trace else None


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
        context = _CONTEXT.get()
        for field in _EXTRA_FIELDS:
            # A value passed with `extra=` is more specific than the request's context.
            value = getattr(record, field, None)
            if value is None:
                value = context.get(field)
            if value is not None:
                entry[field] = str(value)
        trace = getattr(record, "trace_id", None) or context.get("trace_id")
        if trace:
            entry[TRACE_KEY] = self.trace_name(str(trace))
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)

    def trace_name(self, trace_id: str) -> str:
        """The full trace resource name Cloud Logging links to Cloud Trace."""
        return f"projects/{self.project}/traces/{trace_id}" if self.project else trace_id


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
        trace = cloud.split("/", 1)[0].split(";", 1)[0].strip()
        if _is_hex(trace, 32):
            return str(trace).lower()
    parent = headers.get("traceparent")
    if parent:
        parts = parent.split("-")
        if len(parts) >= 4 and _is_hex(parts[1], 32):
            return str(parts[1]).lower()
    return None


def new_trace_id() -> str:
    """A fresh 32-hex-digit trace id, for requests that arrive without one (local runs)."""
    return secrets.token_hex(16)


def _is_hex(value: str, length: int) -> bool:
    return (
        len(value) == length
        and all(c in "0123456789abcdefABCDEF" for c in value)
        and value.strip("0") != ""  # all zeros is W3C's "invalid trace id"
    )


# Keys every line has; the terminal view shows them in its own layout, not as key=value.
_LAYOUT_KEYS = frozenset({"severity", "message", "time", "logger", TRACE_KEY, "stack_trace"})
_SEVERITY_COLOURS = {"DEBUG": "2", "WARNING": "33", "ERROR": "31;1", "CRITICAL": "31;1"}


def render_for_terminal(line: str, *, colour: bool = False) -> str:
    """A CloudJsonFormatter line as one compact readable line (and its stack trace, if any);
    any other line unchanged. For people watching `make run`, never for Cloud Logging."""
    entry = _json_log_entry(line)
    if entry is None:
        return line
    severity = str(entry.get("severity", "DEFAULT"))
    head = f"{severity:<7}"
    if colour and severity in _SEVERITY_COLOURS:
        head = f"\x1b[{_SEVERITY_COLOURS[severity]}m{head}\x1b[0m"
    parts = [_clock(entry.get("time")), head, str(entry.get("message", ""))]
    logger = str(entry.get("logger", ""))
    if logger and not logger.startswith("genjobs"):
        parts.append(f"[{logger}]")
    parts += [f"{key}={value}" for key, value in entry.items() if key not in _LAYOUT_KEYS]
    trace = entry.get(TRACE_KEY)
    if trace:
        # The id's first 8 digits tell lines of one request apart; grep the JSON for all 32.
        parts.append(f"trace={str(trace).rsplit('/', 1)[-1][:8]}")
    rendered = " ".join(part for part in parts[:3] if part)
    if len(parts) > 3:
        rendered += "  " + " ".join(parts[3:])
    stack = entry.get("stack_trace")
    return f"{rendered}\n{str(stack).rstrip()}" if stack else rendered


def _json_log_entry(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        entry = json.loads(text)
    except ValueError:
        return None
    if not isinstance(entry, dict) or "severity" not in entry or "message" not in entry:
        return None
    return entry


def _clock(value: Any) -> str:
    """HH:MM:SS.mmm in the viewer's time zone, or nothing if the time is missing."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return ""
    return moment.astimezone().strftime("%H:%M:%S.%f")[:-3]
