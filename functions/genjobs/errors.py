"""One error hierarchy, ordered by what the caller should do next."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from genjobs.jobs import Usage

PROBLEM_BASE = "https://genjobs.dev/problems/"


class GenJobsError(Exception):
    """Base of every error this project raises on purpose."""

    status: ClassVar[int] = 500
    # What went wrong, in one word: the problem `type`, the push answer's `error`, the job's
    # `error.code`. Each class has a default; an instance may name a narrower one.
    code: str = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, *, code: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code:
            self.code = code

    @property
    def type_uri(self) -> str:
        """RFC 9457 `type` for this error."""
        return PROBLEM_BASE + self.code.replace("_", "-")

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers the answer must carry."""
        return {}

    def extensions(self) -> dict[str, Any]:
        """Extra problem+json members."""
        return {}


# --- The client must change the request -------------------------------------------------


class ClientError(GenJobsError):
    """The request cannot succeed as sent."""

    status = 400
    code = "bad_request"
    title = "Bad request"


class InvalidRequest(ClientError):
    """The body or a parameter fails validation; `errors` names each field."""

    status = 422
    code = "validation_error"
    title = "Request validation failed"

    def __init__(self, detail: str | None = None, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(detail)
        self.errors = [dict(e) for e in errors]

    def extensions(self) -> dict[str, Any]:
        return {"errors": self.errors} if self.errors else {}


class MalformedBody(ClientError):
    """The body is not the JSON object expected."""

    status = 400
    code = "malformed_body"
    title = "Malformed request body"


class Unauthenticated(ClientError):
    """No valid credentials were presented."""

    status = 401
    code = "unauthenticated"
    title = "Authentication required"

    def __init__(self, detail: str | None = None, *, realm: str = "genjobs") -> None:
        super().__init__(detail)
        self.realm = realm

    def headers(self) -> dict[str, str]:
        reason = self.detail.replace('"', "'")
        return {
            "WWW-Authenticate": f'Bearer realm="{self.realm}", error="invalid_token", '
            f'error_description="{reason}"'
        }


class Forbidden(ClientError):
    """Valid credentials that may not do this."""

    status = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(ClientError):
    """No such resource visible to the caller."""

    status = 404
    code = "not_found"
    title = "Not found"


class MethodNotAllowed(ClientError):
    """The route exists but not with this method."""

    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"

    def __init__(self, allowed: Sequence[str]) -> None:
        super().__init__(f"Allowed methods: {', '.join(allowed)}")
        self.allowed = list(allowed)

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class Conflict(ClientError):
    """The resource's state forbids this now."""

    status = 409
    code = "conflict"
    title = "Conflict"


class IdempotencyKeyReused(ClientError):
    """The Idempotency-Key was used before with another body."""

    status = 422
    code = "idempotency_key_reused"
    title = "Idempotency-Key reused with a different request"


class PayloadTooLarge(ClientError):
    """The body or one of its fields is over its size limit."""

    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class UnsupportedMediaType(ClientError):
    """The body is not JSON."""

    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class RateLimited(ClientError):
    """Too many requests or too much spent; retry after `retry_after` seconds."""

    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(
        self, detail: str | None = None, *, retry_after: int, code: str | None = None
    ) -> None:
        super().__init__(detail, code=code)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


# --- Retry later: nothing wrong with the request --------------------------------------


class RetryLater(GenJobsError):
    """A dependency is unavailable for now; the same request may succeed later."""

    status = 503
    code = "unavailable"
    title = "Service temporarily unavailable"

    def __init__(
        self, detail: str | None = None, *, retry_after: float = 5, code: str | None = None
    ) -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class DatabaseUnavailable(RetryLater):
    """The database cannot be reached or refused the connection."""

    code = "database_unavailable"
    title = "Database unavailable"


class ModelUnavailable(RetryLater):
    """The model API failed transiently (429, 5xx, timeout, connection)."""

    code = "model_unavailable"
    title = "Model temporarily unavailable"

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: float = 5,
        code: str | None = None,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(detail, retry_after=retry_after, code=code)
        # What a stream billed before it broke (it counts against budgets).
        self.usage = usage


class StreamStopped(GenJobsError):
    """The attempt lost its job while the model streamed (cancelled, taken over): stopped."""

    code = "stream_stopped"
    title = "Generation stopped"

    def __init__(self, usage: Usage) -> None:
        super().__init__("the attempt no longer owns the job")
        # What the model billed up to the stop (it counts against budgets).
        self.usage = usage


# --- The job cannot succeed: record and stop --------------------------------------------


class PermanentFailure(GenJobsError):
    """Retrying cannot help; the job is failed with `code`."""

    status = 422
    code = "permanent_failure"
    title = "Generation failed"

    def __init__(
        self, detail: str | None = None, *, code: str | None = None, usage: Usage | None = None
    ) -> None:
        super().__init__(detail, code=code)
        # What the model billed for an answer we rejected (it counts against budgets).
        self.usage = usage


class ModelRefused(PermanentFailure):
    """The model API rejected the request, or answered with a refusal (`usage`: billed)."""

    code = "model_refused"
    title = "Model refused the request"


class InvalidModelOutput(PermanentFailure):
    """The model's answer does not fit the task's contract (`usage`: what it billed)."""

    code = "invalid_model_output"
    title = "Model output was invalid"


class PoisonMessage(PermanentFailure):
    """A push message that names no job we can run."""

    code = "poison_message"
    title = "Malformed or unknown message"


# --- The operator must fix the deployment ------------------------------------------------


class ConfigurationError(GenJobsError):
    """Settings are missing or malformed; raised at cold start."""

    code = "configuration_error"
    title = "Configuration error"


class CommandLineError(GenJobsError):
    """`genjobs` arguments that parse but do not make sense together."""

    code = "command_line_error"
    title = "Invalid command line"
