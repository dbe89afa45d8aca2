"""The bench's private stack: its own database, the devstack processes on free ports, clients."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import Engine, create_engine, text

from bench.load import Request
from devstack.database import admin_execute, prepare_database, with_database
from devstack.dev import Ports, StackConfig, build_services
from devstack.signing import load_or_create_key
from devstack.supervisor import ROOT, Service, Supervisor, free_port
from genjobs.auth.minting import mint_user_token
from genjobs.db import embedded_database_url, pg8000_url
from genjobs.settings import LOCAL_JWT_SECRET, LOCAL_SUPABASE_URL

# psutil (it comes with pgserver) ships no type stubs.
psutil: Any = importlib.import_module("psutil")

EMBEDDED_DIR = ROOT / ".local" / "bench-pgdata"
SUBMIT_PATH = "/v1/generations"
# The api and the bare baseline are served with the same gunicorn thread count.
API_THREADS = 8
# Enough for 100 concurrent 5 s generations on one worker instance.
WORKER_THREADS = 128
# The emulator caps push requests in flight per subscription (64 by default); Pub/Sub has no
# such fixed cap, and the concurrency figure needs 100 in flight.
MAX_OUTSTANDING_PUSHES = 128
APP_NAME = "genjobs-bench-{}".format
FUNCTIONS = ("api", "worker", "dead_letter", "sweeper")


def with_query(url: str, **params: str) -> str:
    """The URL with query parameters added (e.g. application_name, to tell connections apart)."""
    parts = urlsplit(url)
    query = {**dict(parse_qsl(parts.query)), **params}
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def engine_for(url: str, **options: Any) -> Engine:
    """A SQLAlchemy engine on a libpq-style URL (pg8000, as the functions use)."""
    pg_url, connect_args = pg8000_url(url)
    return create_engine(pg_url, connect_args=connect_args, **options)


@dataclass
class BenchDatabase:
    """A database of its own on BENCH_DATABASE_URL's server or the embedded Postgres."""

    server_url: str
    name: str
    url: str
    engine: Engine

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run one query in its own transaction and return its rows."""
        with self.engine.begin() as conn:
            return [dict(row) for row in conn.execute(text(sql), dict(params or {})).mappings()]


@contextlib.contextmanager
def bench_database() -> Iterator[BenchDatabase]:
    """Create and migrate a fresh database; drop it afterwards."""
    server = os.environ.get("BENCH_DATABASE_URL") or embedded_database_url(str(EMBEDDED_DIR))
    name = f"genjobs_bench_{uuid.uuid4().hex[:10]}"
    admin_execute(server, f'CREATE DATABASE "{name}"')
    url = with_database(server, name)
    engine: Engine | None = None
    try:
        prepare_database(url)
        engine = engine_for(with_query(url, application_name=APP_NAME("client")), pool_size=2)
        yield BenchDatabase(server, name, url, engine)
    finally:
        if engine is not None:
            engine.dispose()
        admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_ports() -> Ports:
    """Every port of a stack, unused (the bench runs beside `make run` and the tests)."""
    return Ports(**{f.name: free_port() for f in dataclasses.fields(Ports)})


@dataclass
class Stack:
    """A running stack (emulator, stub model, api, worker, dead_letter) and what it talks to."""

    ports: Ports
    supervisor: Supervisor
    logs: Path
    db: BenchDatabase
    tokens: list[str] = field(default_factory=list)

    def service(self, name: str) -> Service:
        """One of the stack's services by name."""
        return next(s for s in self.supervisor.services if s.name == name)

    def pid(self, name: str) -> int:
        """The process id of a running service (the gunicorn arbiter for functions)."""
        process = self.service(name).process
        assert process is not None
        return process.pid

    def users(self, count: int) -> None:
        """Mint tokens for `count` distinct users (each user stays under the per-user limits)."""
        self.tokens = [
            mint_user_token(
                secret=LOCAL_JWT_SECRET,
                supabase_url=LOCAL_SUPABASE_URL,
                sub=uuid.uuid4(),
                ttl_seconds=3600,
            )
            for _ in range(count)
        ]

    def submit_request(self, index: int, phase: str, prompt: str = "") -> Request:
        """An authenticated submit of a summarize job, user chosen round-robin by `index`."""
        body = {
            "task": "summarize",
            "input": {"text": f"{prompt} bench job {index}".strip()},
            "metadata": {"bench": phase},
        }
        return Request(
            "POST",
            SUBMIT_PATH,
            json.dumps(body).encode(),
            (
                ("Authorization", f"Bearer {self.tokens[index % len(self.tokens)]}"),
                ("Content-Type", "application/json"),
            ),
            expect=(202,),
        )

    def phase_counts(self, phase: str) -> dict[str, int]:
        """How many of a phase's jobs are in each status."""
        rows = self.db.rows(
            "SELECT ai_status, count(*) AS n FROM generations "
            "WHERE metadata->>'bench' = :phase GROUP BY ai_status",
            {"phase": phase},
        )
        return {str(row["ai_status"]): int(row["n"]) for row in rows}

    def wait_for_phase(
        self, phase: str, expected: int, timeout: float, interval: float = 0.05
    ) -> dict[str, int]:
        """Poll until `expected` jobs of the phase have ended (or the timeout); their counts."""
        deadline = time.monotonic() + timeout
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            counts = self.phase_counts(phase)
            ended = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
            if ended >= expected:
                break
            time.sleep(interval)
        return counts


def publisher(stack: Stack, batch: int = 1) -> Any:
    """A PublisherClient on the stack's emulator, sending up to `batch` messages per request."""
    # batch=1 is the api's setting: each publish goes out at once.
    # The client reads the emulator address from the environment, as the functions do.
    os.environ["PUBSUB_EMULATOR_HOST"] = f"127.0.0.1:{stack.ports.pubsub}"
    from google.cloud.pubsub_v1 import PublisherClient, types

    settings = types.BatchSettings(max_messages=batch, max_latency=0.05, max_bytes=10**6)
    return PublisherClient(batch_settings=settings)


def stack_config(database_url: str, ports: Ports, logs: Path) -> StackConfig:
    """The bench's stack settings: fixed thread counts, the emulator's push cap raised."""
    return StackConfig(
        database_url=database_url,
        signing_key=logs / "push-signing-key.pem",
        ports=ports,
        emulator_flags=("--max-outstanding-pushes", str(MAX_OUTSTANDING_PUSHES)),
        env={"THREADS": str(API_THREADS), "LOG_LEVEL": "INFO"},
        worker_threads=WORKER_THREADS,
    )


def start_stack(
    db: BenchDatabase,
    logs: Path,
    *,
    database_urls: Mapping[str, str] | None = None,
) -> Stack:
    """Start the devstack services on free ports; `database_urls` overrides a function's URL."""
    # Each function's connections carry an application_name: pg_stat_activity tells them apart.
    logs.mkdir(parents=True, exist_ok=True)
    config = stack_config(db.url, free_ports(), logs)
    load_or_create_key(config.signing_key)
    services = build_services(config)
    urls = database_urls or {}
    for index, service in enumerate(services):
        if "DATABASE_URL" in service.env and service.name in FUNCTIONS:
            url = with_query(
                urls.get(service.name, db.url), application_name=APP_NAME(service.name)
            )
            services[index] = replace(service, env={**service.env, "DATABASE_URL": url})
    supervisor = Supervisor(services, output_dir=logs)
    supervisor.start()
    return Stack(config.ports, supervisor, logs, db)


def baseline_service(
    port: int,
    threads: int = API_THREADS,
    target: str = "baseline",
    env: Mapping[str, str] | None = None,
) -> Service:
    """A bench/baseline_main.py target, served by the same CLI and thread count as the api."""
    argv = [
        sys.executable,
        "-m",
        "functions_framework",
        "--source",
        str(ROOT / "bench" / "baseline_main.py"),
        "--target",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return Service(target, argv, port, env={**(env or {}), "THREADS": str(threads)}, restart=False)


def spawn(service: Service, log: Path) -> subprocess.Popen[bytes]:
    """Start one service now, without waiting for its port (cold-start timing starts here)."""
    with log.open("ab") as output:
        return subprocess.Popen(
            list(service.argv),
            env={**os.environ, **service.env},
            cwd=ROOT,
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def terminate(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop a spawned process group."""
    if process.poll() is not None:
        return  # reaped: its pid (and group id) may belong to someone else by now
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds so far, per process, of the services, the bench's backends and the bench."""
    # Postgres backends are found by the database name in their title (local servers only).
    groups: dict[str, list[Any]] = {}
    for service in stack.supervisor.services:
        if service.process is not None and service.process.poll() is None:
            groups[service.name] = process_tree(service.process.pid)
    groups["postgres"] = database_backends(stack.db.name)
    groups["bench"] = [psutil.Process()]
    return group_cpu(groups)


def database_backends(database: str) -> list[Any]:
    """The Postgres backends connected to a database, by its name in their process title."""
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and database in " ".join(p.info["cmdline"])
    ]


def process_tree(pid: int) -> list[Any]:
    """A process and its descendants (empty once it has exited)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


def group_cpu(groups: Mapping[str, list[Any]]) -> dict[str, float]:
    """CPU seconds so far of each process, keyed `group:pid` for `cpu_delta`."""
    totals: dict[str, float] = {}
    for name, processes in groups.items():
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                key = f"{name}:{process.pid}"
                totals[key] = times.user + times.system
    return totals


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per group between two `cpu_seconds` readings (new processes count whole)."""
    groups: dict[str, float] = {}
    for key, seconds in after.items():
        name = key.split(":", 1)[0]
        groups[name] = groups.get(name, 0.0) + seconds - before.get(key, 0.0)
    return groups


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its descendants."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
    return total


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its descendants, in bytes."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total
