"""The baseline: a bare functions-framework app (bench/baseline_main.py) measured the same way."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from bench.load import Request, first_success, run_load
from bench.stack import API_THREADS, baseline_service, spawn, terminate, tree_rss
from devstack.supervisor import Supervisor, free_port

PROBE = Request("GET", "/", expect=(200,))


@contextmanager
def bare_app(
    logs: Path,
    threads: int = API_THREADS,
    target: str = "baseline",
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[int, int]]:
    """A running baseline app; yields its port and the pid of its process tree's root."""
    port = free_port()
    supervisor = Supervisor([baseline_service(port, threads, target, env)], output_dir=logs)
    supervisor.start()
    try:
        first_success(port, PROBE, timeout=30)
        process = supervisor.services[0].process
        assert process is not None
        yield port, process.pid
    finally:
        supervisor.stop()


def cold_start(logs: Path, target: str = "baseline", env: Mapping[str, str] | None = None) -> float:
    """Seconds from process start to a baseline app's first 200."""
    port = free_port()
    service = baseline_service(port, target=target, env=env)
    started = time.monotonic()
    process = spawn(service, logs / f"{target}-cold.log")
    try:
        return first_success(port, PROBE, timeout=60) - started
    finally:
        terminate(process)


def peak_rss(logs: Path, *, threads: int, connections: int, seconds: float) -> int:
    """Peak RSS (bytes) of the bare app's process tree while `connections` requests run."""
    with bare_app(logs, threads) as (port, pid):
        peak = tree_rss(pid)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.05):
                peak = max(peak, tree_rss(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        run_load(port, lambda _: PROBE, concurrency=connections, seconds=seconds)
        done.set()
        sampler.join()
        return max(peak, tree_rss(pid))
