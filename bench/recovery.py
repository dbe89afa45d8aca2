"""Figure 7: time from SIGKILL of the worker to its jobs succeeding, shipped retry policy."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench.load import first_success, percentile
from bench.sizes import Size
from bench.stack import BenchDatabase, Stack, free_ports
from devstack.dev import StackConfig, build_services, start_scheduler
from devstack.signing import load_or_create_key
from devstack.supervisor import Supervisor
from genjobs.settings import Settings


@dataclass(frozen=True)
class Plan:
    """How many jobs are in flight at each kill, how many kills, how slow the model is."""

    jobs: int
    kills: int
    model_seconds: float
    # None: the shipped heartbeat. The tiny size scales it down to stay a smoke test.
    heartbeat_seconds: int | None


PLANS = {"tiny": Plan(jobs=2, kills=1, model_seconds=1.0, heartbeat_seconds=1)}
DEFAULT_PLAN = Plan(jobs=10, kills=3, model_seconds=5.0, heartbeat_seconds=None)


@dataclass(frozen=True)
class Recovery:
    """Per job: SIGKILL → `succeeded` (killed), and submit → `succeeded` (undisturbed)."""

    plan: Plan
    lease_seconds: int
    sweep_interval: float
    killed_seconds: list[float]
    baseline_seconds: list[float]
    unfinished: int

    def details(self) -> dict[str, object]:
        """What the figure's JSON carries beside the value."""
        return {
            "jobs_per_kill": self.plan.jobs,
            "kills": self.plan.kills,
            "model_seconds": self.plan.model_seconds,
            "lease_seconds": self.lease_seconds,
            "heartbeat_seconds": self.lease_seconds // 3,
            "sweep_interval_s": self.sweep_interval,
            "unfinished": self.unfinished,
            "killed_p50_s": percentile(self.killed_seconds, 0.5),
            "baseline_p95_s": percentile(self.baseline_seconds, 0.95),
        }


def measure(db: BenchDatabase, size: Size, logs: Path) -> Recovery:
    """On a stack of its own: undisturbed jobs, then jobs in flight when the worker is killed."""
    plan = PLANS.get(size.name, DEFAULT_PLAN)
    heartbeat = plan.heartbeat_seconds or Settings.heartbeat_seconds
    env = {"LOG_LEVEL": "INFO", "HEARTBEAT_SECONDS": str(heartbeat)}
    # The emulator keeps the topology's retry policy (minimum backoff 10 s), as deployed.
    config = StackConfig(
        database_url=db.url, signing_key=logs / "push-signing-key.pem", ports=free_ports(), env=env
    )
    logs.mkdir(parents=True, exist_ok=True)
    load_or_create_key(config.signing_key)
    supervisor = Supervisor(build_services(config), output_dir=logs)
    supervisor.start()
    supervisor.watch()  # a killed worker is started again, as the platform does
    scheduler = start_scheduler(config)
    try:
        stack = Stack(config.ports, supervisor, logs, db)
        stack.users(plan.jobs)
        prompt = f"stub:sleep={plan.model_seconds:g}"
        baseline = _undisturbed(stack, plan, prompt)
        killed: list[float] = []
        unfinished = 0
        for kill in range(plan.kills):
            phase = f"recovery-{kill}"
            _submit(stack, plan, phase, prompt)
            _wait_until_running(stack, phase, plan.jobs)
            killed_at = stack.db.rows("SELECT now() AS t")[0]["t"]
            supervisor.kill("worker")
            counts = stack.wait_for_phase(phase, plan.jobs, timeout=180, interval=0.2)
            unfinished += plan.jobs - counts.get("succeeded", 0)
            since_kill = "finished_at - CAST(:t AS timestamptz)"
            killed += _seconds(stack, phase, since_kill, {"t": killed_at})
    finally:
        scheduler.stop()
        supervisor.stop()
    return Recovery(plan, 3 * heartbeat, config.sweep_interval, killed, baseline, unfinished)


def _undisturbed(stack: Stack, plan: Plan, prompt: str) -> list[float]:
    # One job first: the worker's lazy imports and pools are not part of the baseline.
    first_success(stack.ports.api, stack.submit_request(0, "recovery-warm-up"), timeout=60)
    stack.wait_for_phase("recovery-warm-up", 1, timeout=60, interval=0.1)
    phase = "recovery-baseline"
    _submit(stack, plan, phase, prompt)
    stack.wait_for_phase(phase, plan.jobs, timeout=60, interval=0.1)
    return _seconds(stack, phase, "finished_at - created_at", {})


def _submit(stack: Stack, plan: Plan, phase: str, prompt: str) -> None:
    for index in range(plan.jobs):
        first_success(stack.ports.api, stack.submit_request(index, phase, prompt), timeout=60)


def _wait_until_running(stack: Stack, phase: str, jobs: int, timeout: float = 30) -> None:
    """Until every job of the phase is inside its model call (the worker has claimed them)."""
    deadline = time.monotonic() + timeout
    while stack.phase_counts(phase).get("processing", 0) < jobs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{phase}: the jobs never all started: {stack.phase_counts(phase)}")
        time.sleep(0.05)


def _seconds(stack: Stack, phase: str, span: str, params: dict[str, object]) -> list[float]:
    rows = stack.db.rows(
        f"SELECT extract(epoch FROM {span}) AS s FROM generations"
        " WHERE metadata->>'bench' = :phase AND ai_status = 'succeeded'",
        {"phase": phase, **params},
    )
    return [float(row["s"]) for row in rows]
