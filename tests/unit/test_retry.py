"""The retry decision, without Postgres or a model: one case per row of retry.py's table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from genjobs.errors import InvalidModelOutput, ModelRefused, ModelUnavailable
from genjobs.jobs import Usage
from genjobs.retry import UNEXPECTED_CODE, Action, decide


@dataclass(frozen=True)
class Policy:
    retry_min_backoff_seconds: int = 10


def test_a_429_resetting_after_the_minimum_backoff_defers_the_job() -> None:
    error = ModelUnavailable("HTTP 429", code="rate_limited", retry_after=30)
    decision = decide(error, Policy())
    assert decision.action is Action.DEFER and decision.defer_seconds == 30
    assert decision.error_code == "rate_limited" and decision.detail == "HTTP 429"


@pytest.mark.parametrize("retry_after", [1, 10])
def test_a_429_resetting_within_the_backoff_is_retried(retry_after: float) -> None:
    error = ModelUnavailable("HTTP 429", code="rate_limited", retry_after=retry_after)
    decision = decide(error, Policy())
    assert decision.action is Action.RETRY and decision.defer_seconds is None


@pytest.mark.parametrize(
    "code", ["model_quota_exceeded", "model_server_error", "model_timeout", "model_auth_error"]
)
def test_other_transient_errors_are_retried_however_long_they_ask(code: str) -> None:
    decision = decide(ModelUnavailable("x", code=code, retry_after=300), Policy())
    assert decision.action is Action.RETRY and decision.error_code == code


def test_the_minimum_backoff_setting_moves_the_line() -> None:
    error = ModelUnavailable("HTTP 429", code="rate_limited", retry_after=30)
    assert decide(error, Policy(retry_min_backoff_seconds=60)).action is Action.RETRY


def test_permanent_failures_fail_with_their_code() -> None:
    refused = decide(ModelRefused("no", code="content_policy_violation"), Policy())
    assert refused.action is Action.FAIL and refused.error_code == "content_policy_violation"
    invalid = InvalidModelOutput("bad json", code="invalid_model_output", usage=Usage("m", 1, 2))
    assert decide(invalid, Policy()).action is Action.FAIL


def test_an_unexpected_error_is_retried_as_a_worker_error() -> None:
    decision = decide(RuntimeError("bug"), Policy())
    assert decision.action is Action.RETRY and decision.error_code == UNEXPECTED_CODE
