"""The push worker on real Postgres, with the stub model over real HTTP."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from devstack.stub_model import StubModelServer
from genjobs import store
from genjobs.db import Database
from genjobs.errors import ModelUnavailable, Unauthenticated
from genjobs.model_client import ModelAnswer, ModelClient, StreamReads, SupportsGenerate
from genjobs.push import PushAnswer
from genjobs.settings import Settings
from genjobs.statuses import Status
from genjobs.tasks import TASKS, Task
from genjobs.tasks.base import Message
from genjobs.worker import Worker
from tests.factories import JobFactory
from tests.integration.jobs import events, reload

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOKEN = "Bearer good-push-token"


class FakeVerifier:
    """Accepts exactly one token, like a verified Pub/Sub OIDC token."""

    def verify(self, authorization_header: str | None) -> object:
        if authorization_header != TOKEN:
            raise Unauthenticated("bad token", realm="test")
        return object()


class Around:
    """The real model client, with `during` run after its answer and before it is returned."""

    def __init__(self, inner: SupportsGenerate, during: Callable[[], None]) -> None:
        self.inner = inner
        self.during = during

    def generate(self, task: Task, messages: Sequence[Message], *, timeout: float) -> ModelAnswer:
        generation = self.inner.generate(task, messages, timeout=timeout)
        self.during()
        return generation

    def stream(
        self,
        task: Task,
        messages: Sequence[Message],
        *,
        timeout: float,
        on_text: Callable[[str], bool],
        reads: StreamReads | None = None,
    ) -> ModelAnswer:
        generation = self.inner.stream(
            task, messages, timeout=timeout, on_text=on_text, reads=reads
        )
        self.during()
        return generation


class RaisingModel:
    """A model whose every call, whole or streamed, raises a new `error()`; counts the calls."""

    def __init__(self, error: Callable[[], Exception]) -> None:
        self.error = error
        self.calls = 0

    def generate(self, task: Task, messages: Sequence[Message], *, timeout: float) -> ModelAnswer:
        self.calls += 1
        raise self.error()

    def stream(
        self,
        task: Task,
        messages: Sequence[Message],
        *,
        timeout: float,
        on_text: Callable[[str], bool],
        reads: StreamReads | None = None,
    ) -> ModelAnswer:
        return self.generate(task, messages, timeout=timeout)


@pytest.fixture(scope="module")
def stub() -> Iterator[StubModelServer]:
    server = StubModelServer(hang_seconds=5).start()
    yield server
    server.stop()


@pytest.fixture
def model(stub: StubModelServer) -> ModelClient:
    return ModelClient(api_key=None, base_url=stub.url)


@pytest.fixture
def worker(settings: Settings, clean_db: Database, model: ModelClient) -> Worker:
    return make_worker(settings, clean_db, model)


def make_worker(settings: Settings, db: Database, model: SupportsGenerate) -> Worker:
    return Worker(settings=settings, db=db, model=model, tasks=TASKS, verifier=FakeVerifier())


def unique(text: str) -> str:
    """A prompt no other test (or parametrized run) shares: stub counters are per prompt."""
    return f"{text} [{uuid.uuid4().hex[:8]}]"


def envelope(job_id: uuid.UUID, message_id: str = "m-1", attempt: int = 1) -> bytes:
    data: dict[str, Any] = json.loads((FIXTURES / "push_envelope_job.json").read_text())
    data["message"]["data"] = base64.b64encode(str(job_id).encode()).decode()
    data["message"]["messageId"] = data["message"]["message_id"] = message_id
    data["deliveryAttempt"] = attempt
    return json.dumps(data).encode()


def log_count(db: Database) -> int:
    with db.transaction() as conn:
        return int(conn.execute(text("SELECT count(*) FROM generation_logs")).scalar_one())


def test_success_writes_result_usage_and_log_rows(
    worker: Worker, clean_db: Database, job_factory: JobFactory
) -> None:
    job = job_factory(unique("the quick brown fox"))
    answer = worker.handle(TOKEN, envelope(job.id, "m-ok", 1))
    assert answer.status == 200 and answer.body["outcome"] == "succeeded"
    done = reload(clean_db, job.id)
    assert done.status is Status.SUCCEEDED and done.attempts == 1
    assert "quick brown fox" in done.result["text"] and set(done.result) == {"text"}
    assert done.model == TASKS["summarize"].model and (done.prompt_tokens or 0) > 0
    assert events(clean_db, job.id) == ["queued", "started", "succeeded"]
    with clean_db.transaction() as conn:
        row = conn.execute(
            text(
                "SELECT message_id, delivery_attempt, latency_ms, completion_tokens "
                "FROM generation_logs WHERE generation_id = :id AND event = 'succeeded'"
            ),
            {"id": job.id},
        ).one()
    assert row.message_id == "m-ok" and row.delivery_attempt == 1
    assert row.latency_ms >= 0 and row.completion_tokens > 0


def test_structured_task_stores_the_parsed_object(
    worker: Worker, clean_db: Database, job_factory: JobFactory
) -> None:
    job = job_factory(unique("Ada Lovelace met Charles Babbage"), task="extract_entities")
    assert worker.handle(TOKEN, envelope(job.id)).status == 200
    assert isinstance(reload(clean_db, job.id).result["entities"], list)


def test_rate_limit_requeues_then_next_delivery_succeeds(
    worker: Worker,
    clean_db: Database,
    stub: StubModelServer,
    job_factory: JobFactory,
) -> None:
    prompt = unique("busy stub:fail=429x1")
    job = job_factory(prompt)
    first = worker.handle(TOKEN, envelope(job.id, "m-1", 1))
    assert first.status == 503 and first.headers["Retry-After"] == "1"
    requeued = reload(clean_db, job.id)
    assert requeued.status is Status.QUEUED and requeued.error is not None
    assert requeued.error["code"] == "rate_limited"
    second = worker.handle(TOKEN, envelope(job.id, "m-1", 2))
    assert second.status == 200
    done = reload(clean_db, job.id)
    assert done.status is Status.SUCCEEDED and done.attempts == 2 and done.error is None
    assert events(clean_db, job.id) == ["queued", "started", "retry", "started", "succeeded"]
    assert len(stub.calls(prompt)) == 2


def test_refusal_fails_the_job_after_exactly_one_call(
    worker: Worker,
    clean_db: Database,
    stub: StubModelServer,
    job_factory: JobFactory,
) -> None:
    prompt = unique("something bad stub:refuse")
    job = job_factory(prompt)
    assert worker.handle(TOKEN, envelope(job.id)).status == 200
    again = worker.handle(TOKEN, envelope(job.id, attempt=2))
    assert again.status == 200 and again.body["outcome"] == "already_finished"
    failed = reload(clean_db, job.id)
    assert failed.status is Status.FAILED and failed.error is not None
    assert failed.error["code"] == "content_policy_violation"
    assert events(clean_db, job.id) == ["queued", "started", "failed"]
    assert len(stub.calls(prompt)) == 1


def test_concurrent_duplicate_deliveries_call_the_model_once(
    worker: Worker,
    clean_db: Database,
    stub: StubModelServer,
    job_factory: JobFactory,
) -> None:
    prompt = unique("slow enough to overlap stub:sleep=0.5")
    job = job_factory(prompt)
    body = envelope(job.id, "m-dup")
    start = threading.Barrier(10)
    answers: list[PushAnswer] = []
    lock = threading.Lock()

    def deliver() -> None:
        start.wait()
        answer = worker.handle(TOKEN, body)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=deliver) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    outcomes = [str(a.body.get("outcome", a.body.get("error"))) for a in answers]
    assert len(answers) == 10 and outcomes.count("succeeded") == 1
    assert {a.status for a in answers if a.body.get("outcome") != "succeeded"} <= {200, 409}
    assert len(stub.calls(prompt)) == 1
    assert events(clean_db, job.id) == ["queued", "started", "succeeded"]


def test_cancelled_job_is_never_sent_to_the_model(
    worker: Worker,
    clean_db: Database,
    stub: StubModelServer,
    job_factory: JobFactory,
) -> None:
    prompt = unique("cancel me first")
    job = job_factory(prompt)
    with clean_db.transaction() as conn:
        assert store.cancel_job(conn, job.id, job.user_id) is not None
    answer = worker.handle(TOKEN, envelope(job.id))
    assert answer.status == 200 and answer.body["outcome"] == "already_finished"
    assert stub.calls(prompt) == []


def test_cancel_during_the_call_refuses_the_late_write(
    settings: Settings,
    clean_db: Database,
    model: ModelClient,
    job_factory: JobFactory,
) -> None:
    job = job_factory(unique("cancelled while running"))

    def cancel() -> None:
        with clean_db.transaction() as conn:
            store.cancel_job(conn, job.id, job.user_id)

    answer = make_worker(settings, clean_db, Around(model, cancel)).handle(TOKEN, envelope(job.id))
    # Its outcome (with the stream's last text) is refused, and its tokens are billed.
    assert answer.status == 200 and answer.body["outcome"] == "fenced"
    cancelled = reload(clean_db, job.id)
    assert cancelled.status is Status.CANCELLED and cancelled.result is None
    assert events(clean_db, job.id) == ["queued", "started", "cancelled"]
    assert (cancelled.prompt_tokens or 0) > 0 and (cancelled.completion_tokens or 0) > 0


def test_lease_expiry_takeover_fences_the_first_worker(
    settings: Settings,
    clean_db: Database,
    model: ModelClient,
    stub: StubModelServer,
    job_factory: JobFactory,
) -> None:
    prompt = unique("taken over")
    job = job_factory(prompt)
    second = make_worker(settings, clean_db, model)
    taken: list[PushAnswer] = []

    def expire_and_redeliver() -> None:
        with clean_db.transaction() as conn:
            conn.execute(
                text(
                    "UPDATE generations SET lease_expires_at = now() - interval '1 second' "
                    "WHERE id = :id"
                ),
                {"id": job.id},
            )
        taken.append(second.handle(TOKEN, envelope(job.id, "m-1", 2)))

    first = make_worker(settings, clean_db, Around(model, expire_and_redeliver))
    answer = first.handle(TOKEN, envelope(job.id, "m-1", 1))
    # Its writes are refused, fenced by the attempt number: the outcome with the stream's
    # text ("fenced"), or first the first-text timer's write, which fires during the takeover
    # ("stopped").
    assert answer.status == 200 and answer.body["outcome"] in ("fenced", "stopped")
    assert taken[0].status == 200 and taken[0].body["outcome"] == "succeeded"
    done = reload(clean_db, job.id)
    assert done.status is Status.SUCCEEDED and done.attempts == 2
    assert events(clean_db, job.id) == ["queued", "started", "started", "succeeded"]
    assert len(stub.calls(prompt)) == 2


def test_delivery_under_a_live_lease_is_acked_without_a_model_call(
    worker: Worker,
    clean_db: Database,
    job_factory: JobFactory,
) -> None:
    # A nack would spend one of Pub/Sub's delivery attempts; the sweeper recovers the job
    # if the running attempt dies.
    job = job_factory(unique("running elsewhere"))
    with clean_db.transaction() as conn:
        assert store.claim_job(conn, job.id, 60, store.Delivery("m-other", 1)).claimed
    answer = worker.handle(TOKEN, envelope(job.id))
    assert answer.status == 200 and answer.body["outcome"] == "running_elsewhere"
    assert events(clean_db, job.id) == ["queued", "started"]


@pytest.mark.parametrize(
    "body",
    [
        (FIXTURES / "push_envelope_no_message.json").read_bytes(),
        (FIXTURES / "push_envelope_not_a_job_id.json").read_bytes(),
        b"\x00\xffnot json",
    ],
)
def test_poison_messages_are_acked_and_write_nothing(
    worker: Worker,
    clean_db: Database,
    body: bytes,
    job_factory: JobFactory,
) -> None:
    job_factory(unique("bystander"))
    before = log_count(clean_db)
    answer = worker.handle(TOKEN, body)
    assert answer.status == 200 and answer.body["outcome"] == "poison_message"
    assert log_count(clean_db) == before


def test_unknown_job_is_acked_and_writes_nothing(worker: Worker, clean_db: Database) -> None:
    answer = worker.handle(TOKEN, envelope(uuid.uuid4()))
    assert answer.status == 200 and answer.body["outcome"] == "unknown_job"
    assert log_count(clean_db) == 0


def test_bad_token_is_refused_before_anything_is_read(
    worker: Worker,
    clean_db: Database,
    stub: StubModelServer,
    job_factory: JobFactory,
) -> None:
    prompt = unique("unauthenticated")
    job = job_factory(prompt)
    answer = worker.handle("Bearer forged", envelope(job.id))
    assert answer.status == 401 and "WWW-Authenticate" in answer.headers
    assert reload(clean_db, job.id).status is Status.QUEUED and stub.calls(prompt) == []


def test_spent_attempts_fail_the_job_without_another_call(
    worker: Worker,
    clean_db: Database,
    stub: StubModelServer,
    job_factory: JobFactory,
) -> None:
    prompt = unique("always down stub:500")
    job = job_factory(prompt, max_attempts=1)
    assert worker.handle(TOKEN, envelope(job.id, attempt=1)).status == 503
    answer = worker.handle(TOKEN, envelope(job.id, attempt=2))
    assert answer.status == 200 and answer.body["outcome"] == "attempts_exhausted"
    failed = reload(clean_db, job.id)
    assert failed.status is Status.FAILED and failed.error is not None
    assert failed.error["code"] == "attempts_exhausted"
    assert "model_server_error" in failed.error["message"]
    assert events(clean_db, job.id) == ["queued", "started", "retry", "failed"]
    assert len(stub.calls(prompt)) == 1


@pytest.mark.parametrize(
    ("task", "raw_input", "code"),
    [
        ("retired_task", {"text": "x"}, "unknown_task"),
        ("summarize", {"text": "x", "max_words": 1}, "invalid_input"),
    ],
)
def test_unrunnable_jobs_fail_without_a_call(
    worker: Worker,
    clean_db: Database,
    stub: StubModelServer,
    task: str,
    raw_input: dict[str, Any],
    code: str,
    job_factory: JobFactory,
) -> None:
    calls = len(stub.calls())
    job = job_factory(task=task, raw_input=raw_input)
    assert worker.handle(TOKEN, envelope(job.id)).status == 200
    failed = reload(clean_db, job.id)
    assert failed.status is Status.FAILED and failed.error is not None
    assert failed.error["code"] == code
    assert len(stub.calls()) == calls


def test_task_timeout_is_capped_by_the_lease_settings(
    settings: Settings,
    clean_db: Database,
    model: ModelClient,
    job_factory: JobFactory,
) -> None:
    # A 3 s ack deadline and 1 s margins leave 1 s for the call, whatever the task allows.
    tight = dataclasses.replace(settings, ack_deadline_seconds=3, lease_margin_seconds=1)
    job = job_factory(unique("never answers stub:hang"))
    answer = make_worker(tight, clean_db, model).handle(TOKEN, envelope(job.id))
    assert answer.status == 503
    requeued = reload(clean_db, job.id)
    assert requeued.status is Status.QUEUED and requeued.error is not None
    assert requeued.error["code"] == "model_timeout"


def test_no_connection_is_held_during_the_model_call(
    settings: Settings,
    clean_db: Database,
    model: ModelClient,
    job_factory: JobFactory,
) -> None:
    held: list[int] = []
    pool = clean_db.engine.pool

    def count() -> None:
        held.append(pool.checkedout())  # type: ignore[attr-defined]

    job = job_factory(unique("pool check"))
    assert (
        make_worker(settings, clean_db, Around(model, count)).handle(TOKEN, envelope(job.id)).status
        == 200
    )
    assert held == [0]


def test_database_down_nacks_with_503(settings: Settings, model: ModelClient) -> None:
    down = Database(create_engine("postgresql+pg8000://postgres@127.0.0.1:9/none"))
    try:
        answer = make_worker(settings, down, model).handle(TOKEN, envelope(uuid.uuid4()))
    finally:
        down.dispose()
    assert answer.status == 503 and answer.headers["Retry-After"]


def test_unexpected_error_nacks_and_requeues_at_once(
    settings: Settings,
    clean_db: Database,
    caplog: pytest.LogCaptureFixture,
    job_factory: JobFactory,
) -> None:
    job = job_factory(unique("hits a bug"))
    broken = RaisingModel(lambda: RuntimeError("a bug"))
    answer = make_worker(settings, clean_db, broken).handle(TOKEN, envelope(job.id))
    assert answer.status == 500
    requeued = reload(clean_db, job.id)
    assert requeued.status is Status.QUEUED and requeued.error is not None
    assert requeued.error["code"] == "worker_error"
    assert any(r.exc_info for r in caplog.records)


def test_logs_carry_the_job_and_never_the_token(
    worker: Worker,
    clean_db: Database,
    caplog: pytest.LogCaptureFixture,
    job_factory: JobFactory,
) -> None:
    caplog.set_level(logging.INFO, logger="genjobs")
    job = job_factory(unique("log me"))
    worker.handle(TOKEN, envelope(job.id))
    worker.handle(TOKEN, envelope(job.id))
    records = [r for r in caplog.records if r.name.startswith("genjobs")]
    assert any(
        getattr(r, "job_id", None) == str(job.id) and getattr(r, "attempt", None) == 1
        for r in records
    )
    assert all(TOKEN not in str(vars(r)) for r in caplog.records)


def rate_limited(retry_after: float) -> RaisingModel:
    """The model answering 429 with a reset far beyond Pub/Sub's minimum backoff."""
    return RaisingModel(
        lambda: ModelUnavailable("rate limited", retry_after=retry_after, code="rate_limited")
    )


def test_long_rate_limit_defers_the_job_without_spending_its_attempt(
    settings: Settings,
    clean_db: Database,
    job_factory: JobFactory,
) -> None:
    model = rate_limited(retry_after=120)
    worker = make_worker(settings, clean_db, model)
    job = job_factory(unique("rate limited for two minutes"), max_attempts=5)
    first = worker.handle(TOKEN, envelope(job.id))
    # Acked: a nack would spend a delivery attempt long before the limit resets.
    assert first.status == 200 and first.body["outcome"] == "deferred"
    deferred = reload(clean_db, job.id)
    assert deferred.status is Status.QUEUED and deferred.not_before is not None
    assert deferred.attempts == 1 and deferred.max_attempts == 6
    # A duplicate delivery before the reset is acked without calling the model.
    again = worker.handle(TOKEN, envelope(job.id, "m-dup"))
    assert again.status == 200 and again.body["outcome"] == "deferred" and model.calls == 1


def test_short_rate_limit_is_left_to_pubsub_backoff(
    settings: Settings, clean_db: Database, job_factory: JobFactory
) -> None:
    worker = make_worker(settings, clean_db, rate_limited(retry_after=2))
    job = job_factory(unique("rate limited briefly"))
    answer = worker.handle(TOKEN, envelope(job.id))
    assert answer.status == 503 and answer.headers["Retry-After"] == "2"
    assert reload(clean_db, job.id).not_before is None
