"""What happens to an attempt that raised: retry, defer or fail. Decided here and only here.

- 429 `rate_limited` with a Retry-After longer than RETRY_MIN_BACKOFF_SECONDS: DEFER. The job
  is queued until the reset and the push acked; the sweeper republishes it then, and the
  attempt does not count against the job's budget (a nack would only burn delivery attempts).
- Any other ModelUnavailable: a shorter 429, `model_quota_exceeded`, 5xx, 408/409, timeout,
  connection error, our credentials refused: RETRY. Queued again and nacked; Pub/Sub's
  backoff decides when the next delivery comes.
- A PermanentFailure (the model refused, or answered outside the task's contract): FAIL.
- Anything unexpected (a bug): RETRY as `worker_error`, then a 500.

How an HTTP answer becomes one of these errors: model_client.map_api_error. A retried job
whose attempts are spent is failed (`attempts_exhausted`) by the next delivery's claim
(store.Refusal.ATTEMPTS_SPENT) or by the sweeper once its lease expires: the attempt number
does not change the decision, so it is not an input here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from genjobs.errors import ModelUnavailable, PermanentFailure

UNEXPECTED_CODE = "worker_error"


class RetrySettings(Protocol):
    """The setting the decision reads (genjobs.settings.Settings has it)."""

    @property
    def retry_min_backoff_seconds(self) -> int:
        """The jobs subscription's minimum backoff."""
        ...


class Action(StrEnum):
    """What the worker does with the job after the attempt."""

    RETRY = "retry"  # queued again at once; the push is nacked
    DEFER = "defer"  # queued, not before `defer_seconds`; the push is acked
    FAIL = "fail"  # failed for good


@dataclass(frozen=True)
class RetryDecision:
    """The action, and the error code and detail the job and its log row record."""

    action: Action
    error_code: str
    detail: str
    defer_seconds: float | None = None


def decide(error: Exception, settings: RetrySettings) -> RetryDecision:
    """The decision for an error raised by an attempt (see the table above)."""
    if isinstance(error, PermanentFailure):
        return RetryDecision(Action.FAIL, error.code, error.detail)
    if isinstance(error, ModelUnavailable):
        # A reset later than Pub/Sub's backoff would only burn delivery attempts.
        if error.code == "rate_limited" and error.retry_after > settings.retry_min_backoff_seconds:
            return RetryDecision(Action.DEFER, error.code, error.detail, error.retry_after)
        return RetryDecision(Action.RETRY, error.code, error.detail)
    return RetryDecision(Action.RETRY, UNEXPECTED_CODE, "unexpected worker error")
