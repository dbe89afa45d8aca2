"""Figure 5: many slow generations at once on one worker instance: throughput, memory, DB."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import Request, first_success, run_load, wait_for_close
from bench.report import Figure
from bench.sizes import Size
from bench.stack import (
    APP_NAME,
    WORKER_THREADS,
    Stack,
    baseline_service,
    publisher,
    tree_rss,
)
from bench.submit import sink_api
from devstack.dev import PROJECT
from devstack.supervisor import Supervisor

MIB = 2**20

PHASE = "concurrency"
SAMPLE_SECONDS = 0.05
SUBMIT_CONNECTIONS = 20
JOBS_TOPIC = "generation-jobs"
TIMES = Request("GET", "/", expect=(200,))  # the floor app's record of its pushes


@dataclass(frozen=True)
class Concurrency:
    """What one worker instance did with `jobs` concurrent generations of `sleep` seconds."""

    jobs: int
    succeeded: int
    sleep_seconds: float
    worker_seconds: float  # first job started → last job finished
    start_spread_seconds: float  # first job started → last job started
    peak_rss_bytes: int
    peak_connections: int
    peak_active_connections: int

    @property
    def jobs_per_second(self) -> float:
        """Succeeded jobs per second of the worker's span."""
        return self.succeeded / self.worker_seconds if self.worker_seconds else 0.0

    @property
    def ideal_jobs_per_second(self) -> float:
        """Every job running at once: all done after one model latency."""
        return self.jobs / self.sleep_seconds


class _Sampler(threading.Thread):
    """Samples the worker's process tree RSS and its database connections."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.pid = stack.pid("worker")
        self.done = threading.Event()
        self.rss = 0
        self.connections = 0
        self.active = 0

    def run(self) -> None:
        while not self.done.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        self.rss = max(self.rss, tree_rss(self.pid))
        row = self.stack.db.rows(
            "SELECT count(*) AS held, count(*) FILTER (WHERE state <> 'idle') AS active"
            " FROM pg_stat_activity WHERE datname = current_database() AND application_name = :app",
            {"app": APP_NAME("worker")},
        )[0]
        self.connections = max(self.connections, int(row["held"]))
        self.active = max(self.active, int(row["active"]))


def measure(
    stack: Stack,
    size: Size,
    logs: Path,
    *,
    prompt: str | None = None,
    phase: str = PHASE,
) -> Concurrency:
    """Run `size.concurrent_jobs` slow jobs at once on the worker and watch it; `prompt` (the
    stub's directives) must take the model `size.sleep_seconds`, as `stub:sleep` does."""
    # The jobs are created through the api, then their ids published in one batch so all reach
    # the worker together: how fast the api submits is figure 1's business.
    prompt = prompt or f"stub:sleep={size.sleep_seconds:g}"
    connections = min(SUBMIT_CONNECTIONS, size.concurrent_jobs)
    with sink_api(stack, logs) as (port, _):
        run_load(
            port,
            lambda i: stack.submit_request(i, phase, prompt),
            concurrency=connections,
            limit_per_thread=size.concurrent_jobs // connections,
        )
    ids = [
        str(row["id"])
        for row in stack.db.rows(
            "SELECT id FROM generations WHERE metadata->>'bench' = :phase", {"phase": phase}
        )
    ]
    client = publisher(stack, batch=len(ids))
    topic = client.topic_path(PROJECT, JOBS_TOPIC)
    sampler = _Sampler(stack)
    sampler.sample()
    sampler.start()
    try:
        futures = [client.publish(topic, job_id.encode(), task="summarize") for job_id in ids]
        for future in futures:
            future.result(timeout=30)
        stack.wait_for_phase(phase, len(ids), timeout=60 + 3 * size.sleep_seconds)
    finally:
        sampler.done.set()
        sampler.join()
    span = stack.db.rows(
        "SELECT count(*) AS jobs, count(*) FILTER (WHERE ai_status = 'succeeded') AS succeeded,"
        " extract(epoch FROM max(finished_at) - min(started_at)) AS worker,"
        " extract(epoch FROM max(started_at) - min(started_at)) AS starts"
        " FROM generations WHERE metadata->>'bench' = :phase",
        {"phase": phase},
    )[0]
    return Concurrency(
        jobs=int(span["jobs"]),
        succeeded=int(span["succeeded"]),
        sleep_seconds=size.sleep_seconds,
        worker_seconds=float(span["worker"] or 0),
        start_spread_seconds=float(span["starts"] or 0),
        peak_rss_bytes=sampler.rss,
        peak_connections=sampler.connections,
        peak_active_connections=sampler.active,
    )


@dataclass(frozen=True)
class Floor:
    """The same burst of pushes answered by a bare app that only sleeps (figure 5's floor)."""

    jobs: int
    sleep_seconds: float
    seconds: float  # first push started → last push finished
    start_spread_seconds: float

    @property
    def ratio(self) -> float:
        """Of the ideal (every push held exactly `sleep_seconds`, all at once): sleep ÷ span."""
        return self.sleep_seconds / self.seconds if self.seconds else 0.0


def floor(stack: Stack, size: Size, logs: Path, *, libraries: bool = False) -> Floor:
    """Publish the burst to the worker's subscription with a bare functions-framework app
    (the worker's `THREADS`) in the worker's place; the worker is paused meanwhile.

    Same emulator, push subscription and front end as figure 5: what those and gunicorn's threads
    allow on this machine, before any of the worker's own work (`push_sleep`), or with only the
    work its libraries do for a job (`libraries`: `push_libraries`, in the worker's environment).
    """
    port = stack.ports.worker_container
    stack.supervisor.pause("worker")
    wait_for_close(port, timeout=10)
    env = {"FLOOR_SLEEP_SECONDS": f"{size.sleep_seconds:g}"}
    if libraries:
        env = {**stack.service("worker").env, **env}
    target = "push_libraries" if libraries else "push_sleep"
    app = Supervisor([baseline_service(port, WORKER_THREADS, target, env)], output_dir=logs)
    app.start()
    try:
        first_success(port, TIMES, timeout=30)
        client = publisher(stack, batch=size.concurrent_jobs)
        topic = client.topic_path(PROJECT, JOBS_TOPIC)
        futures = [
            client.publish(topic, f"floor-{index}".encode())
            for index in range(size.concurrent_jobs)
        ]
        for future in futures:
            future.result(timeout=30)
        pushes = _wait_for_pushes(port, size.concurrent_jobs, 60 + 3 * size.sleep_seconds)
    finally:
        app.stop()
        stack.supervisor.resume("worker")
    starts = [start for start, _ in pushes]
    return Floor(
        jobs=len(pushes),
        sleep_seconds=size.sleep_seconds,
        seconds=max(end for _, end in pushes) - min(starts) if pushes else 0.0,
        start_spread_seconds=max(starts) - min(starts) if pushes else 0.0,
    )


def _wait_for_pushes(port: int, expected: int, timeout: float) -> list[tuple[float, float]]:
    """The floor app's (start, end) times once `expected` pushes have finished (or the timeout)."""
    deadline = time.monotonic() + timeout
    pushes: list[tuple[float, float]] = []
    while time.monotonic() < deadline:
        pushes = _pushes(port)
        if len(pushes) >= expected:
            break
        time.sleep(0.2)
    return pushes


def _pushes(port: int) -> list[tuple[float, float]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        return [(float(start), float(end)) for start, end in json.loads(conn.getresponse().read())]
    finally:
        conn.close()


def figures(
    conc: Concurrency,
    bare_rss: float,
    pool_size: int,
    *,
    key: str,
    title: str,
    target: float | None,
    details: dict[str, Any],
) -> list[Figure]:
    """Jobs/s against the ideal, peak RSS against the bare app's, connections against the pool.

    `key` prefixes the figures' keys, `title` their names ("5. …"); `details` go with the first.
    """
    number, _, name = title.partition(" ")
    suffix = ", streaming" if "streamed" in name else ""
    return [
        Figure(
            f"{key}_ratio",
            title,
            conc.jobs_per_second,
            "jobs/s",
            conc.ideal_jobs_per_second,
            "ideal",
            target,
            "ratio>=" if target is not None else None,
            {
                **details,
                "succeeded": conc.succeeded,
                "worker_seconds": conc.worker_seconds,
                "start_spread_seconds": conc.start_spread_seconds,
            },
        ),
        Figure(
            f"{key}_peak_rss_mib",
            f"{number} worker peak RSS{suffix}",
            conc.peak_rss_bytes / MIB,
            "MiB",
            bare_rss / MIB,
            "bare app, same threads",
            256,
            "value<=",
        ),
        Figure(
            f"{key}_peak_db_connections",
            f"{number} worker peak DB connections{suffix}",
            conc.peak_connections,
            "",
            pool_size,
            "DB_POOL_SIZE",
            5,
            "value<=",
            {"peak_active": conc.peak_active_connections},
        ),
    ]
