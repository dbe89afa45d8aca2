"""Pub/Sub push requests: the envelope parsed strictly, and the answer Pub/Sub reads."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from genjobs.errors import DatabaseUnavailable, GenJobsError, PoisonMessage
from genjobs.jobs import Job
from genjobs.logs import log_context

# Our messages carry only a job id; anything near this size was not published by us.
MAX_BODY_BYTES = 64 * 1024
MAX_DATA_BYTES = 1024
# How much of a poison body the log keeps, so it stays inspectable after the ack.
LOGGED_BODY_BYTES = 1024
# Pub/Sub's own limits on attributes.
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class PushMessage:
    """One push delivery: which job, and which delivery it is (for the log)."""

    job_id: uuid.UUID
    message_id: str
    delivery_attempt: int | None
    attributes: dict[str, str]
    subscription: str
    publish_time: datetime | None


@dataclass(frozen=True)
class PushAnswer:
    """The HTTP answer to a push: 2xx acks, anything else asks Pub/Sub to retry."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def acks(self) -> bool:
        """True when Pub/Sub will consider the message delivered."""
        return 200 <= self.status < 300


class ServiceVerifier(Protocol):
    """Checks the push request's OIDC token (genjobs.auth.ServiceTokenVerifier)."""

    def verify(self, authorization_header: str | None) -> object:
        """The caller's identity, or Unauthenticated (401) / Forbidden (403)."""
        ...


def answer_push(
    verifier: ServiceVerifier,
    authorization: str | None,
    body: bytes,
    process: Callable[[PushMessage], PushAnswer],
    log: logging.Logger,
) -> PushAnswer:
    """Verify, parse and process one push; every outcome becomes an answer, never a crash."""
    try:
        verifier.verify(authorization)
        message = parse_push(body)
    except PoisonMessage as error:
        # Acked: a retry cannot fix it. The log keeps it inspectable.
        log.warning(
            "poison push message acked: %s; body (first %d bytes): %r",
            error.detail,
            LOGGED_BODY_BYTES,
            body[:LOGGED_BODY_BYTES],
        )
        return PushAnswer(200, {"outcome": "poison_message", "detail": error.detail})
    except GenJobsError as error:
        log.warning("push request refused: %s", error.detail, extra={"status": error.status})
        return error_answer(error)
    # Every line logged while handling it carries the job id and the trace the api started.
    with log_context(
        trace_id=message.attributes.get("trace_id"),
        job_id=str(message.job_id),
        message_id=message.message_id,
        delivery_attempt=message.delivery_attempt,
    ):
        try:
            return process(message)
        except DatabaseUnavailable as error:
            log.warning("database unavailable; push nacked", extra=_ids(message))
            return error_answer(error)
        except Exception:
            log.exception("unexpected error; push nacked", extra=_ids(message))
            return PushAnswer(500, {"error": "internal", "detail": "unexpected error; will retry"})


def job_answer(job: Job, outcome: str) -> PushAnswer:
    """Acked: what became of the pushed job, and its status now."""
    return PushAnswer(200, {"outcome": outcome, "job_id": str(job.id), "status": job.status.value})


def unknown_job_answer(job_id: uuid.UUID) -> PushAnswer:
    """Acked: no such job, so nothing to do and nothing a redelivery could change."""
    return PushAnswer(200, {"outcome": "unknown_job", "job_id": str(job_id)})


def error_answer(error: GenJobsError, status: int | None = None) -> PushAnswer:
    """The answer for one of our errors (its status unless overridden, and its headers)."""
    return PushAnswer(
        status or error.status, {"error": error.code, "detail": error.detail}, error.headers()
    )


def _ids(message: PushMessage) -> dict[str, Any]:
    return {"job_id": str(message.job_id), "message_id": message.message_id}


def parse_push(body: bytes) -> PushMessage:
    """The push envelope's message, or PoisonMessage saying exactly what is wrong."""
    if len(body) > MAX_BODY_BYTES:
        raise PoisonMessage(f"push body is {len(body)} bytes, over {MAX_BODY_BYTES}")
    envelope = _object(_json(body), "push body")
    message = _object(envelope.get("message"), "message")
    return PushMessage(
        job_id=_job_id(message.get("data")),
        message_id=_message_id(message),
        delivery_attempt=_delivery_attempt(envelope.get("deliveryAttempt")),
        attributes=_attributes(message.get("attributes")),
        subscription=_optional_str(envelope.get("subscription"), "subscription") or "",
        publish_time=_publish_time(message),
    )


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise PoisonMessage("push body is not JSON") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        raise PoisonMessage(f"{what} is missing")
    if not isinstance(value, dict):
        raise PoisonMessage(f"{what} must be a JSON object, not {_kind(value)}")
    return value


def _job_id(data: Any) -> uuid.UUID:
    """The job id in `message.data`: a UUID, bare or as {"job_id": UUID}."""
    if data is None or data == "":
        raise PoisonMessage("message.data is missing: no job id")
    if not isinstance(data, str):
        raise PoisonMessage(f"message.data must be a base64 string, not {_kind(data)}")
    if len(data) > MAX_DATA_BYTES * 4 // 3 + 4:
        raise PoisonMessage(f"message.data is over {MAX_DATA_BYTES} bytes")
    try:
        text = base64.b64decode(data, validate=True).decode().strip()
    except (binascii.Error, ValueError):
        raise PoisonMessage("message.data is not base64 of UTF-8 text") from None
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    if text.startswith("{"):
        return _job_id_from_json(text)
    raise PoisonMessage(f"message.data is not a job id: {text[:60]!r}")


def _job_id_from_json(text: str) -> uuid.UUID:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise PoisonMessage("message.data is neither a job id nor JSON") from None
    job_id = value.get("job_id") if isinstance(value, dict) else None
    if not isinstance(job_id, str):
        raise PoisonMessage("message.data JSON has no string job_id")
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise PoisonMessage(f"message.data job_id is not a UUID: {job_id[:60]!r}") from None


def _message_id(message: dict[str, Any]) -> str:
    """`messageId` (what Pub/Sub sends) or its duplicate `message_id`."""
    value = message.get("messageId", message.get("message_id"))
    if not isinstance(value, str) or not value.strip():
        raise PoisonMessage(f"message.messageId must be a non-empty string, not {_kind(value)}")
    if len(value) > MAX_ID_CHARS:
        raise PoisonMessage(f"message.messageId is over {MAX_ID_CHARS} characters")
    if not _storable(value):
        raise PoisonMessage("message.messageId has characters Postgres text cannot hold")
    return value


def _delivery_attempt(value: Any) -> int | None:
    """Present only on subscriptions with a dead-letter policy."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise PoisonMessage(f"deliveryAttempt must be a positive integer, not {value!r:.40}")
    return value


def _attributes(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    attributes = _object(value, "message.attributes")
    if len(attributes) > MAX_ATTRIBUTES:
        raise PoisonMessage(
            f"message.attributes has {len(attributes)} entries, over {MAX_ATTRIBUTES}"
        )
    for key, item in attributes.items():
        if not isinstance(item, str):
            raise PoisonMessage(f"message.attributes[{key[:40]!r}] must be a string")
        if len(key.encode(errors="replace")) > MAX_ATTRIBUTE_KEY_BYTES:
            raise PoisonMessage(f"an attribute name is over {MAX_ATTRIBUTE_KEY_BYTES} bytes")
        if len(item.encode(errors="replace")) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise PoisonMessage(
                f"message.attributes[{key[:40]!r}] is over {MAX_ATTRIBUTE_VALUE_BYTES} bytes"
            )
    return dict(attributes)


def _publish_time(message: dict[str, Any]) -> datetime | None:
    value = _optional_str(message.get("publishTime", message.get("publish_time")), "publishTime")
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise PoisonMessage(f"message.publishTime is not a timestamp: {value[:40]!r}") from None
    if moment.tzinfo is None:
        raise PoisonMessage("message.publishTime has no time zone")
    return moment


def _optional_str(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PoisonMessage(f"{what} must be a string, not {_kind(value)}")
    if len(value) > MAX_ID_CHARS:
        raise PoisonMessage(f"{what} is over {MAX_ID_CHARS} characters")
    return value


def _storable(text: str) -> bool:
    """Valid UTF-8 without NUL: what a Postgres text column accepts (the log stores the id)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _kind(value: Any) -> str:
    """The JSON type name of a value, for messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return names.get(type(value), type(value).__name__)
