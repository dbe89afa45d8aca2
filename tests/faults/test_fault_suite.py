"""Everything failing at once: every accepted job still ends exactly once.

300 jobs (FAULT_SUITE_JOBS; FAULT_SUITE_LONG=1 for 3,000) submitted over 20 s while the
worker is SIGKILLed three times (between the model call and the commit, between the commit and
the 2xx, and at a random moment), the api once between a job's commit and its publish,
Postgres restarts once, the emulator duplicates 10% of
deliveries, delays 10% and fails 5% of publishes, and the model answers 429 (20%), 500 (10%)
or hangs past the timeout (5%).
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.faults.conftest import FaultDatabase, fault_config
from tests.stack import TERMINAL, Stack, running_stack

JOBS = int(
    os.environ.get("FAULT_SUITE_JOBS", "3000" if os.environ.get("FAULT_SUITE_LONG") else "300")
)
USERS = 30
SUBMITTERS = 8
# Submissions are spread over this window, and the disasters with them.
SUBMIT_SECONDS = max(20.0, JOBS / 15)
DRAIN_TIMEOUT = 120 + JOBS * 0.2


@pytest.fixture(scope="module")
def suite_stack(
    fault_database: FaultDatabase, crash_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The fault stack with every random fault switched on."""
    logs = tmp_path_factory.mktemp("fault-suite-logs")
    config = fault_config(
        fault_database,
        logs,
        emulator_flags=(
            *("--duplicate-rate", "0.1", "--delay-rate", "0.1", "--max-delay", "2"),
            *("--publish-failure-rate", "0.05", "--seed", "7"),
        ),
        stub_flags=("--chaos", "429=0.2,500=0.1,hang=0.05", "--seed", "11", "--quiet"),
        crash_dir=crash_dir,
    )
    with running_stack(config, logs) as stack:
        stack.supervisor.watch()
        yield stack


class Submitter:
    """Submits like a well-behaved client: retries 429/503/network errors with its key."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.users = [uuid.uuid4() for _ in range(USERS)]
        self.clients = [stack.client(user) for user in self.users]
        self.accepted: dict[int, str] = {}
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def submit(self, index: int) -> None:
        time.sleep(max(0.0, self.started + index * SUBMIT_SECONDS / JOBS - time.monotonic()))
        client = self.clients[index % USERS]
        body = {"task": "summarize", "input": {"text": f"fault suite job {index}"}}
        headers = {"Idempotency-Key": f"fault-suite-{index}"}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                response = client.post("/v1/generations", json=body, headers=headers)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if response.status_code in {200, 202}:
                with self.lock:
                    self.accepted[index] = response.json()["id"]
                return
            assert response.status_code in {429, 503}, response.text
            time.sleep(0.2)
        raise AssertionError(f"job {index} was never accepted")


def wreck(stack: Stack, database: FaultDatabase, crash_dir: Path) -> list[str]:
    """The disasters, spread over the submission window as they would be over a day."""
    done = []
    at = SUBMIT_SECONDS / 5
    time.sleep(at)
    (crash_dir / "after_model_call").touch()
    done.append(f"{at:.0f}s: worker armed to die between model call and commit")
    time.sleep(at)
    database.postgres.stop()
    time.sleep(1)
    database.postgres.start()
    done.append(f"{2 * at:.0f}s: Postgres restarted")
    time.sleep(at / 2)
    (crash_dir / "api_after_commit").touch()
    done.append(f"{2.5 * at:.0f}s: api armed to die between a commit and its publish")
    time.sleep(at / 2)
    (crash_dir / "after_commit").touch()
    done.append(f"{3 * at:.0f}s: worker armed to die between commit and 2xx")
    time.sleep(random.Random(3).uniform(0.5, 1) * at)
    stack.supervisor.kill("worker")
    done.append("then: worker SIGKILLed")
    return done


def job_rows(database: FaultDatabase, ids: list[str]) -> dict[str, dict[str, Any]]:
    with database.db.transaction() as conn:
        rows = conn.execute(
            text(
                """
                SELECT g.id::text AS id, g.ai_status, g.error ->> 'code' AS error_code,
                       extract(epoch FROM g.finished_at - g.created_at) AS seconds,
                       (g.result IS NOT NULL) AS has_result,
                       count(*) FILTER (WHERE l.event = 'started') AS started,
                       count(*) FILTER (WHERE l.event = 'succeeded') AS succeeded_events,
                       count(*) FILTER (WHERE l.event IN ('retry')) AS retries
                FROM generations g LEFT JOIN generation_logs l ON l.generation_id = g.id
                WHERE g.id::text = ANY(:ids)
                GROUP BY g.id
                """
            ),
            {"ids": ids},
        ).mappings()
        return {r["id"]: dict(r) for r in rows}


def wait_drained(database: FaultDatabase, ids: list[str]) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        try:
            rows = job_rows(database, ids)
        except Exception:  # the database may still be coming back
            rows = {}
        unfinished = [r for r in rows.values() if r["ai_status"] not in TERMINAL]
        if rows and len(rows) == len(ids) and not unfinished:
            return rows
        if time.monotonic() > deadline:
            return rows
        time.sleep(1)


def test_every_accepted_job_ends_exactly_once(
    suite_stack: Stack,
    fault_database: FaultDatabase,
    crash_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    submitter = Submitter(suite_stack)
    started = time.monotonic()
    disasters: list[str] = []
    chaos = threading.Thread(
        target=lambda: disasters.extend(wreck(suite_stack, fault_database, crash_dir)),
        daemon=True,
    )
    chaos.start()
    with ThreadPoolExecutor(SUBMITTERS) as pool:
        list(pool.map(submitter.submit, range(JOBS)))
    chaos.join(timeout=60)
    ids = list(submitter.accepted.values())
    rows = wait_drained(fault_database, ids)
    elapsed = time.monotonic() - started

    calls = Counter[str]()
    for call in httpx.get(f"{suite_stack.stub_url}/_stub/calls", timeout=30).json():
        if "fault suite job " in call["prompt"]:
            calls[call["prompt"].rsplit("fault suite job ", 1)[-1].split()[0]] += 1
    index_of = {job_id: index for index, job_id in submitter.accepted.items()}

    lost = [i for i in ids if i not in rows]
    stuck = [r["id"] for r in rows.values() if r["ai_status"] not in TERMINAL]
    doubled = [
        r["id"]
        for r in rows.values()
        if r["succeeded_events"] > 1
        or (r["ai_status"] == "succeeded") != (r["succeeded_events"] == 1)
    ]
    overcalled = [r["id"] for r in rows.values() if calls[str(index_of[r["id"]])] > r["started"]]
    durations = sorted(r["seconds"] for r in rows.values() if r["seconds"] is not None)
    statuses = Counter(r["ai_status"] for r in rows.values())
    errors = Counter(r["error_code"] for r in rows.values() if r["ai_status"] == "failed")
    total_calls = sum(calls[str(index_of[i])] for i in rows)
    total_retries = sum(r["retries"] for r in rows.values())
    crash_points_left = sorted(p.name for p in crash_dir.iterdir())

    with capsys.disabled():
        print(
            "\n"
            f"fault suite: {JOBS} jobs in {elapsed:.0f}s; {'; '.join(disasters)}; "
            f"crash points not reached: {crash_points_left or 'none'}\n"
            f"  accepted {len(ids)}  lost {len(lost)}  stuck {len(stuck)}  doubled {len(doubled)}\n"
            f"  final statuses {dict(statuses)}  failure codes {dict(errors)}\n"
            f"  model calls per job {total_calls / max(1, len(rows)):.2f} "
            f"vs transient failures per job {total_retries / max(1, len(rows)):.2f} "
            f"(jobs with more calls than attempts: {len(overcalled)})\n"
            f"  time to terminal p50 {percentile(durations, 50):.2f}s "
            f"p95 {percentile(durations, 95):.2f}s"
        )
    assert len(ids) == JOBS
    assert lost == [] and stuck == [] and doubled == [], (lost[:5], stuck[:5], doubled[:5])
    assert overcalled == [], overcalled[:5]
    assert crash_points_left == [], "a crash point was never reached"
    assert len(disasters) == 5


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile of sorted values (0 when empty)."""
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1])
