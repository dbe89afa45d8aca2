"""Figure 5: many slow generations at once on one worker instance: throughput, memory, DB."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import run_load
from bench.report import Figure
from bench.sizes import Size
from bench.stack import APP_NAME, Stack, publisher, tree_rss
from bench.submit import sink_api
from devstack.dev import PROJECT

MIB = 2**20

PHASE = "concurrency"
SAMPLE_SECONDS = 0.05
SUBMIT_CONNECTIONS = 20
JOBS_TOPIC = "generation-jobs"


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


def figures(
    conc: Concurrency,
    bare_rss: float,
    pool_size: int,
    *,
    key: str,
    title: str,
    target: float,
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
            "ratio>=",
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
