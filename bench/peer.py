"""Figure 2's peer: the same zero-latency job through procrastinate, on the same Postgres server."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, text

from bench import peer_app, peer_defer
from bench.stack import (
    WORKER_THREADS,
    Stack,
    cpu_delta,
    database_backends,
    engine_for,
    group_cpu,
    process_tree,
    psutil,
    terminate,
    with_query,
)
from devstack.database import admin_execute, with_database
from devstack.supervisor import ROOT
from genjobs.settings import Settings

NAME = "procrastinate"
QUEUE = "end-to-end"
WARM_UP_QUEUE = "warm-up"
WARM_UP_JOBS = 8
# Our worker's pool and thread count: the peer's worker gets the same pool and concurrency.
POOL_SIZE = Settings.db_pool_size
CONCURRENCY = WORKER_THREADS
ENDED = ("succeeded", "failed", "aborted", "cancelled")


@dataclass(frozen=True)
class PeerRun:
    """The peer's jobs, timed by the database's clock, and the CPU of every process involved."""

    jobs: int
    succeeded: int
    seconds: float
    defer_seconds: float
    cpu_ms_per_job: dict[str, float]

    @property
    def jobs_per_second(self) -> float:
        """Succeeded jobs per second, first deferral to last success."""
        return self.succeeded / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_total(self) -> float:
        """CPU ms per job, all processes together."""
        return round(sum(self.cpu_ms_per_job.values()), 2)

    def summary(self) -> dict[str, Any]:
        """The run and its settings for the JSON document."""
        return {
            "jobs": self.jobs,
            "succeeded": self.succeeded,
            "seconds": round(self.seconds, 3),
            "defer_seconds": round(self.defer_seconds, 3),
            "cpu_ms_per_job": self.cpu_ms_per_job,
            "worker_concurrency": CONCURRENCY,
            "pool_size": POOL_SIZE,
            "listen_notify": True,
        }


@contextlib.contextmanager
def peer_database(server_url: str) -> Iterator[str]:
    """A fresh database of the peer's own on the bench's server; dropped afterwards."""
    # Not a prefix or suffix of the bench's own database name: backends are told apart by it.
    name = f"procrastinate_peer_{uuid.uuid4().hex[:10]}"
    admin_execute(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def peer_env(url: str, stack: Stack, role: str) -> dict[str, str]:
    """Environment of a peer process: its database, pool, connection name and the stub model."""
    return {
        **os.environ,
        peer_app.DATABASE_URL_ENV: url,
        peer_app.POOL_SIZE_ENV: str(POOL_SIZE),
        peer_app.APPLICATION_NAME_ENV: f"procrastinate-bench-{role}",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{stack.ports.stub_model}/v1",
    }


def procrastinate(*args: str) -> list[str]:
    """The procrastinate CLI on the peer app."""
    return [sys.executable, "-m", "procrastinate", "--app", "bench.peer_app.app", *args]


def start(
    argv: list[str], env: Mapping[str, str], log: Path, *, piped: bool = False
) -> subprocess.Popen[bytes]:
    """A peer process in a session of its own (so `terminate` stops its whole group)."""
    with log.open("ab") as output:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
            stdout=subprocess.PIPE if piped else output,
            stderr=output,
        )


def read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The next line the process prints, or an error if it exits or stays silent."""
    stream: IO[bytes] | None = process.stdout
    assert stream is not None
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            raise TimeoutError(f"no line from {process.args!r} in {timeout:g} s")
        chunk = os.read(stream.fileno(), 4096)
        if not chunk:
            raise RuntimeError(f"{process.args!r} exited (code {process.wait()})")
        line += chunk
    return line.decode().strip()


def ended(engine: Engine, queue: str) -> int:
    """How many of a queue's jobs have ended."""
    with engine.begin() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM procrastinate_jobs"
                    " WHERE queue_name = :queue AND status::text = ANY(:ended)"
                ),
                {"queue": queue, "ended": list(ENDED)},
            ).scalar_one()
        )


def wait_for(engine: Engine, queue: str, expected: int, timeout: float) -> None:
    """Poll (as the bench polls our jobs) until `expected` jobs of the queue have ended."""
    deadline = time.monotonic() + timeout
    while ended(engine, queue) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{NAME}: fewer than {expected} {queue} jobs ended in {timeout:g} s")
        time.sleep(0.05)


def span(engine: Engine, queue: str) -> dict[str, Any]:
    """Jobs, successes, and first `deferred` event → last `succeeded` event, in seconds."""
    with engine.begin() as conn:
        return dict(
            conn.execute(
                text(
                    "SELECT count(DISTINCT j.id) AS jobs,"
                    " count(DISTINCT j.id) FILTER (WHERE j.status = 'succeeded') AS succeeded,"
                    " extract(epoch FROM max(e.at) FILTER (WHERE e.type = 'succeeded')"
                    " - min(e.at) FILTER (WHERE e.type = 'deferred')) AS seconds"
                    " FROM procrastinate_jobs j JOIN procrastinate_events e ON e.job_id = j.id"
                    " WHERE j.queue_name = :queue"
                ),
                {"queue": queue},
            )
            .mappings()
            .one()
        )


def measure(stack: Stack, jobs: int, threads: int, logs: Path) -> PeerRun:
    """`jobs` zero-latency jobs deferred from `threads` threads of another process, then run."""
    logs.mkdir(parents=True, exist_ok=True)
    with peer_database(stack.db.server_url) as url:
        subprocess.run(
            procrastinate("schema", "--apply"),
            env=peer_env(url, stack, "schema"),
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=60,
        )
        worker = start(
            procrastinate("worker", "--name", "bench-peer", "--concurrency", str(CONCURRENCY)),
            peer_env(url, stack, "worker"),
            logs / "procrastinate-worker.log",
        )
        deferrer_argv = [
            *(sys.executable, "-m", "bench.peer_defer", "--queue", QUEUE, "--jobs", str(jobs)),
            *("--threads", str(threads), "--warm-up-queue", WARM_UP_QUEUE),
            *("--warm-up-jobs", str(WARM_UP_JOBS)),
        ]
        deferrer = start(
            deferrer_argv,
            peer_env(url, stack, "deferrer"),
            logs / "procrastinate-deferrer.log",
            piped=True,
        )
        engine = engine_for(with_query(url, application_name="procrastinate-bench-client"))
        try:
            if read_line(deferrer, timeout=60) != peer_defer.READY:
                raise RuntimeError(f"{NAME} deferrer did not get ready")
            wait_for(engine, WARM_UP_QUEUE, WARM_UP_JOBS, timeout=60)
            return run_jobs(stack, url, engine, worker, deferrer, jobs)
        finally:
            engine.dispose()
            if deferrer.stdin is not None:
                deferrer.stdin.close()
            terminate(deferrer)
            terminate(worker)


def run_jobs(
    stack: Stack,
    url: str,
    engine: Engine,
    worker: subprocess.Popen[bytes],
    deferrer: subprocess.Popen[bytes],
    jobs: int,
) -> PeerRun:
    """The measured part: CPU of every process involved from `go` until the last job ended."""
    database = url.rsplit("/", 1)[-1].split("?", 1)[0]

    def cpu() -> dict[str, float]:
        return group_cpu(
            {
                "procrastinate worker": process_tree(worker.pid),
                "deferrer": process_tree(deferrer.pid),
                "postgres": database_backends(database),
                "stub-model": process_tree(stack.pid("stub-model")),
                "bench": [psutil.Process()],
            }
        )

    before = cpu()
    started = time.monotonic()
    assert deferrer.stdin is not None
    deferrer.stdin.write(f"{peer_defer.GO}\n".encode())
    deferrer.stdin.flush()
    answer = read_line(deferrer, timeout=60 + jobs / 5)
    defer_seconds = time.monotonic() - started
    if answer != f"{peer_defer.DEFERRED} {jobs}":
        raise RuntimeError(f"{NAME} deferrer answered {answer!r}, expected {jobs} deferred")
    wait_for(engine, QUEUE, jobs, timeout=120 + jobs / 5)
    delta = cpu_delta(before, cpu())
    result = span(engine, QUEUE)
    return PeerRun(
        jobs=int(result["jobs"]),
        succeeded=int(result["succeeded"]),
        seconds=float(result["seconds"] or 0),
        defer_seconds=defer_seconds,
        cpu_ms_per_job={
            name: round(seconds * 1000 / jobs, 2)
            for name, seconds in sorted(delta.items(), key=lambda item: -item[1])
            if seconds > 0
        },
    )
