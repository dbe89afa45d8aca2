"""The worker's, submit's and sweeper's decisions, without a database or a model."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from genjobs.api.submit import check_limits, same_request, token_bound
from genjobs.errors import IdempotencyKeyReused, PayloadTooLarge, RateLimited
from genjobs.jobs import Job, Usage
from genjobs.model_client import ModelAnswer
from genjobs.settings import load_settings
from genjobs.statuses import Status
from genjobs.store import Refusal, UserUsage
from genjobs.sweeper import SweptJob, plan_publish
from genjobs.tasks import TASKS
from genjobs.worker import ACKED_REFUSALS, stored_result

NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def a_job(**changes: object) -> Job:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "task": "summarize",
        "status": Status.QUEUED,
        "input": {"text": "x"},
        "metadata": {},
        "result": None,
        "error": None,
        "attempts": 0,
        "max_attempts": 5,
        "model": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "idempotency_key": "k",
        "request_hash": "hash-1",
        "trace_id": None,
        "lease_expires_at": None,
        "published_at": None,
        "cancel_requested_at": None,
        "not_before": None,
        "created_at": NOON,
        "started_at": None,
        "finished_at": None,
        **changes,
    }
    return Job(**values)  # type: ignore[arg-type]


# --- worker ------------------------------------------------------------------------------


def test_every_refusal_but_spent_attempts_is_acked_with_an_outcome() -> None:
    handled_elsewhere = {Refusal.ATTEMPTS_SPENT, Refusal.NOT_FOUND}
    assert set(ACKED_REFUSALS) == set(Refusal) - handled_elsewhere
    assert ACKED_REFUSALS[Refusal.CANCELLED][0] == ACKED_REFUSALS[Refusal.FINISHED][0]
    assert ACKED_REFUSALS[Refusal.LEASE_LIVE][0] == "running_elsewhere"


def test_free_text_is_stored_wrapped_and_structured_answers_as_parsed() -> None:
    text = ModelAnswer("a summary", "m", 1, 2)
    assert stored_result(TASKS["summarize"], text) == {"text": "a summary"}
    parsed = ModelAnswer({"entities": []}, "m", 1, 2)
    assert stored_result(TASKS["extract_entities"], parsed) == {"entities": []}
    assert text.usage == Usage("m", 1, 2)


# --- submit ------------------------------------------------------------------------------

LIMITS = load_settings(
    "api", {"SUBMITS_PER_MINUTE": "2", "MAX_ACTIVE_JOBS": "3", "DAILY_TOKEN_BUDGET": "100"}
)


def test_under_every_limit_a_submit_passes() -> None:
    check_limits(UserUsage(1, 2, 90, None), 10, LIMITS, NOON)


def test_a_job_whose_bound_does_not_fit_beside_the_committed_tokens_is_refused() -> None:
    # 90 committed (charged today or reserved by unfinished jobs): a bound of 11 overshoots.
    with pytest.raises(RateLimited) as caught:
        check_limits(UserUsage(0, 0, 90, None), 11, LIMITS, NOON)
    assert caught.value.code == "token_budget_exhausted"
    assert "up to 11 tokens; 10 of the daily budget of 100 are left" in str(caught.value.detail)


@pytest.mark.parametrize(
    ("usage", "code", "retry_after"),
    [
        (UserUsage(2, 0, 0, None), "rate_limited", 60),
        (UserUsage(0, 3, 0, None), "too_many_active_jobs", 5),
        (UserUsage(0, 0, 101, None), "token_budget_exhausted", 12 * 3600 + 1),
    ],
)
def test_each_limit_answers_429_with_its_code_and_wait(
    usage: UserUsage, code: str, retry_after: int
) -> None:
    with pytest.raises(RateLimited) as caught:
        check_limits(usage, 0, LIMITS, NOON)
    assert caught.value.code == code and caught.value.retry_after == retry_after
    assert caught.value.type_uri.endswith("/" + code.replace("_", "-"))


def test_a_reused_key_returns_the_job_only_for_the_same_body() -> None:
    existing = a_job(request_hash="hash-1")
    assert same_request(existing, "hash-1") is existing
    with pytest.raises(IdempotencyKeyReused):
        same_request(existing, "hash-2")


# --- sweeper -----------------------------------------------------------------------------


def swept(status: str = "queued", *, was_published: bool = True) -> SweptJob:
    return SweptJob(uuid.uuid4(), "summarize", None, status, was_published)


def test_requeued_and_due_jobs_are_published_once_and_failed_ones_not() -> None:
    requeued, spent, due = swept(), swept("failed"), swept(was_published=False)
    plan = plan_publish([requeued, spent], [due, requeued])
    assert [job.id for job in plan.to_publish] == [requeued.id, due.id]
    assert (plan.leases_requeued, plan.leases_failed) == (1, 1)


def test_nothing_moved_plans_nothing() -> None:
    plan = plan_publish([], [])
    assert plan.to_publish == [] and plan.leases_requeued == plan.leases_failed == 0


def test_a_jobs_token_bound_covers_its_prompt_bytes_and_max_output() -> None:
    chat = TASKS["chat"]
    short = chat.token_bound({"messages": [{"role": "user", "content": "hi"}]})
    # Each multi-byte character may be a token per byte: the bound counts bytes, not characters.
    wide = chat.token_bound({"messages": [{"role": "user", "content": "hé" * 100}]})
    assert short > chat.max_output_tokens + len("hi")
    assert wide - short == len(("hé" * 100).encode()) - len(b"hi")
    # A structured task's schema is sent, and billed, with the prompt.
    entities = TASKS["extract_entities"]
    assert entities.token_bound({"text": "hi"}) > entities.max_output_tokens + len(
        json.dumps(entities.output_schema)
    )


def test_a_job_whose_bound_alone_exceeds_the_budget_is_too_large_not_rate_limited() -> None:
    summarize = TASKS["summarize"]
    fits = {"text": "x" * 10}
    assert token_bound(summarize, fits, load_settings("api", {"DAILY_TOKEN_BUDGET": "2000"})) > 800
    with pytest.raises(PayloadTooLarge) as caught:
        token_bound(summarize, fits, load_settings("api", {"DAILY_TOKEN_BUDGET": "500"}))
    assert "more than the daily budget of 500" in caught.value.detail
