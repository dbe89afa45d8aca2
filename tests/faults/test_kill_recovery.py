"""A SIGKILLed worker costs its job seconds: the shipped timing and retry policy, not scaled."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from devstack.dev import StackConfig
from genjobs.settings import Settings
from tests.faults.conftest import FaultDatabase
from tests.faults.test_recovery import event_counts, submit
from tests.stack import Stack, free_ports, running_stack

# What it tests is the shipped lease timing, not the database path: one path is enough
# (PgBouncer's where it runs, tests/conftest.py).
pytestmark = pytest.mark.one_database_path


@pytest.fixture(scope="module")
def shipped_stack(
    fault_database: FaultDatabase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Heartbeat, lease and Pub/Sub backoff as shipped; the local sweeper's few seconds."""
    logs = tmp_path_factory.mktemp("kill-recovery-logs")
    config = StackConfig(
        database_url=fault_database.app_url,
        signing_key=logs / "push-signing-key.pem",
        ports=free_ports(),
        env={"LOG_LEVEL": "INFO"},
    )
    with running_stack(config, logs) as stack:
        stack.supervisor.watch()
        yield stack


def test_sigkilled_workers_job_succeeds_within_a_minute(
    shipped_stack: Stack, fault_database: FaultDatabase
) -> None:
    client, job_id, marker = submit(shipped_stack, "stub:sleep=3")
    shipped_stack.wait_for(client, job_id, lambda job: job["status"] == "processing")
    killed = time.monotonic()
    shipped_stack.supervisor.kill("worker")
    # Before heartbeats the job waited out a 270 s lease taken at the claim.
    job = shipped_stack.wait_for(client, job_id, timeout=90)
    took = time.monotonic() - killed
    print(f"SIGKILL → succeeded in {took:.1f}s (lease {Settings().lease_seconds}s)")
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    assert took < 60
    # The stub records a call once answered: the killed one never was.
    assert len(shipped_stack.model_calls(marker)) == 1
    counts = event_counts(fault_database, job_id)
    assert counts["started"] == 2 and counts["succeeded"] == 1
