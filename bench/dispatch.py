"""Figure 6: dispatch latency, submit → worker start, against the emulator's own push latency."""

from __future__ import annotations

import functools
import json
import operator
import threading
import time
from base64 import b64decode
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.end_to_end import dispatch_ms
from bench.load import first_success, percentile, wait_for_close
from bench.sizes import Size
from bench.stack import Stack, publisher
from devstack.dev import PROJECT

PHASE = "dispatch"
# Unloaded: one job at a time, a pause between, so queueing does not count.
PAUSE_SECONDS = 0.05
JOBS_TOPIC = "generation-jobs"


@dataclass(frozen=True)
class Latencies:
    """p50 and p95 in milliseconds, and how many samples."""

    p50_ms: float
    p95_ms: float
    samples: int

    @classmethod
    def of(cls, values: list[float]) -> Latencies:
        """Percentiles of `values`."""
        return cls(percentile(values, 0.5), percentile(values, 0.95), len(values))


def measure(stack: Stack, size: Size) -> Latencies:
    """Submit jobs one by one and read each one's dispatch latency from the database."""
    for index in range(size.dispatch_jobs):
        first_success(stack.ports.api, stack.submit_request(index, PHASE), timeout=10)
        stack.wait_for_phase(PHASE, index + 1, timeout=30)
        time.sleep(PAUSE_SECONDS)
    return Latencies.of(dispatch_ms(stack, PHASE))


def emulator_baseline(stack: Stack, size: Size) -> Latencies:
    """Publish → push received, by a bare endpoint standing in for the worker (paused)."""
    arrivals: dict[str, float] = {}
    arrived = threading.Condition()

    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body: dict[str, Any] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            key = b64decode(body["message"]["data"]).decode()
            with arrived:
                arrivals[key] = time.monotonic()
                arrived.notify_all()
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    client = publisher(stack)
    topic = client.topic_path(PROJECT, JOBS_TOPIC)
    stack.supervisor.pause("worker")
    wait_for_close(stack.ports.worker_container, timeout=10)
    server = ThreadingHTTPServer(("127.0.0.1", stack.ports.worker_container), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    latencies = []
    try:
        client.publish(topic, b"warm-up").result(timeout=10)
        for index in range(size.dispatch_jobs):
            key = f"bench-baseline-{index}"
            started = time.monotonic()
            client.publish(topic, key.encode()).result(timeout=10)
            with arrived:
                arrived.wait_for(functools.partial(operator.contains, arrivals, key), timeout=10)
            if key in arrivals:
                latencies.append((arrivals[key] - started) * 1000)
            time.sleep(PAUSE_SECONDS)
    finally:
        server.shutdown()
        server.server_close()
        stack.supervisor.resume("worker")
    return Latencies.of(latencies)
