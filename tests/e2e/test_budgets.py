"""Token budgets end to end: a private stack with a small DAILY_TOKEN_BUDGET, what the stub
model billed as the measure of spend, and a user who tries to spend past it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from devstack.dev import StackConfig
from genjobs.db import Database, create_database
from genjobs.settings import load_settings
from genjobs.tasks import TASKS
from tests.conftest import fresh_database
from tests.stack import Stack, free_ports, running_stack

BUDGET = 5_000
CHAT = TASKS["chat"]
ENTITIES = TASKS["extract_entities"]


@pytest.fixture(scope="module")
def budget_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Database]]:
    """The whole pipeline with a 5,000-token daily budget, and a handle on its database."""
    logs = tmp_path_factory.mktemp("budget-stack-logs")
    with fresh_database("genjobs_budget") as url:
        config = StackConfig(
            database_url=url,
            signing_key=logs / "push-signing-key.pem",
            ports=free_ports(),
            emulator_flags=("--backoff-scale", "0.01"),
            env={
                "LOG_LEVEL": "INFO",
                "DB_POOL_SIZE": "5",
                "DAILY_TOKEN_BUDGET": str(BUDGET),
                # Only the token budget may refuse these users.
                "SUBMITS_PER_MINUTE": "1000",
                "MAX_ACTIVE_JOBS": "100",
                "STREAM_FLUSH_MS": "100",
            },
            worker_threads=32,
            sweep_interval=1.0,
        )
        db = create_database(load_settings("cli", {"DATABASE_URL": url, "DB_POOL_SIZE": "2"}))
        try:
            with running_stack(config, logs) as stack:
                yield stack, db
        finally:
            db.dispose()


def chat_input(content: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


def billed(stack: Stack, marker: str, timeout: float = 60) -> int:
    """Tokens the model billed for every call carrying `marker`, once none is in flight."""
    deadline = time.monotonic() + timeout
    while True:
        calls = stack.model_calls(marker)
        if all(c["status"] is not None for c in calls) or time.monotonic() > deadline:
            assert all(c["status"] is not None for c in calls), "model calls still running"
            return sum(int(c["billed_tokens"]) for c in calls)
        time.sleep(0.2)


def settled_charges(db: Database, user: uuid.UUID, timeout: float = 60) -> int:
    """The user's charged tokens once every job has ended and every attempt has settled."""
    deadline = time.monotonic() + timeout
    while True:
        with db.transaction() as conn:
            row = conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE ai_status IN ('queued', 'processing') "
                    "    OR lease_expires_at IS NOT NULL) AS open, "
                    "  coalesce(sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)"
                    "    + coalesce(reserve_charged_tokens, 0)), 0) AS charged "
                    "FROM generations WHERE user_id = :user"
                ),
                {"user": user},
            ).one()
        if row.open == 0:
            return int(row.charged)
        assert time.monotonic() < deadline, f"{row.open} jobs never settled"
        time.sleep(0.2)


def seconds_to_utc_midnight() -> float:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def submit(client: httpx.Client, task: str, raw_input: dict[str, Any]) -> httpx.Response:
    return client.post("/v1/generations", json={"task": task, "input": raw_input})


@pytest.mark.parametrize(
    ("task", "directives"),
    [
        # Streamed: the cancel stops the stream at its next write; what streamed is billed.
        ("chat", "stub:tokens=900 stub:pace=2"),
        # Not streamed: the call runs to its end after the cancel; its write is refused.
        ("extract_entities", "stub:tokens=1400 stub:sleep=1.5"),
    ],
)
def test_cancelling_each_job_while_it_runs_cannot_spend_past_the_budget(
    budget_stack: tuple[Stack, Database], task: str, directives: str
) -> None:
    stack, db = budget_stack
    user = uuid.uuid4()
    marker = uuid.uuid4().hex
    refused: httpx.Response | None = None
    admitted: list[tuple[str, int]] = []  # (job id, its bound)
    with stack.client(user) as client:
        for round_ in range(15):
            content = f"spend {round_} {marker} {directives}"
            raw = chat_input(content) if task == "chat" else {"text": content}
            response = submit(client, task, raw)
            if response.status_code == 429:
                refused = response
                break
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            admitted.append((job_id, TASKS[task].token_bound(raw)))
            stack.wait_for(client, job_id, lambda job: job["status"] != "queued")
            time.sleep(1.0)  # the model has produced hundreds of tokens by now
            cancel = client.post(f"/v1/generations/{job_id}/cancel")
            assert cancel.status_code in (200, 409), cancel.text
    spent = billed(stack, marker)
    charged = settled_charges(db, user)
    largest = max(bound for _, bound in admitted)
    each = [billed(stack, f"spend {n} {marker}") for n in range(len(admitted))]
    print(
        f"cancel exploit ({task}): {len(admitted)} jobs admitted of 15 tried, "
        f"model billed {spent} tokens, charged {charged}, budget {BUDGET} "
        f"(+ one job's bound {largest})"
    )
    assert refused is not None, f"never refused after {len(admitted)} jobs: spent {spent}"
    problem = refused.json()
    assert problem["type"].endswith("/token-budget-exhausted")
    # Retry-After points at the next UTC midnight.
    assert abs(int(refused.headers["Retry-After"]) - seconds_to_utc_midnight()) < 5
    assert spent <= BUDGET + largest
    # Each job was admitted only while what the earlier ones spent, plus its own bound, fit
    # (the worker estimates a prompt it never got usage for: a few tokens per job either way).
    for n, (_, bound) in enumerate(admitted):
        assert sum(each[:n]) + bound <= BUDGET + 10 * n, (n, each[:n], bound)
    # Every token the model billed is charged to the user (streamed text cut short is
    # estimated by the worker: within a few tokens per job).
    assert charged >= spent - 10 * len(admitted)


def test_twenty_concurrent_submits_stay_within_the_budget(
    budget_stack: tuple[Stack, Database],
) -> None:
    stack, db = budget_stack
    user = uuid.uuid4()
    marker = uuid.uuid4().hex
    inputs = [chat_input(f"burst {n} {marker} stub:tokens=900 stub:pace=2") for n in range(20)]

    def one(raw: dict[str, Any]) -> httpx.Response:
        with stack.client(user) as client:
            return submit(client, "chat", raw)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(one, inputs))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {202, 429}, statuses
    admitted = [raw for raw, r in zip(inputs, responses, strict=True) if r.status_code == 202]
    bounds = [CHAT.token_bound(raw) for raw in admitted]
    with stack.client(user) as client:
        for response in responses:
            if response.status_code == 202:
                assert stack.wait_for(client, response.json()["id"])["status"] == "succeeded"
    spent = billed(stack, marker)
    charged = settled_charges(db, user)
    print(
        f"20 concurrent submits: {len(admitted)} admitted (bounds {sum(bounds)}), "
        f"{statuses.count(429)} refused with 429; model billed {spent} tokens, charged "
        f"{charged}, budget {BUDGET}"
    )
    assert admitted, "the first job fits the budget and must be admitted"
    assert sum(bounds) <= BUDGET
    assert spent <= BUDGET + max(bounds)
    assert charged == spent  # whole answers: the model's own usage
