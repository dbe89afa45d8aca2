"""A closed-loop HTTP load generator: threads, each with its own keep-alive connection."""

from __future__ import annotations

import http.client
import itertools
import socket
import statistics
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    """One request to send; `expect` lists the statuses that count as a success."""

    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    expect: Collection[int] = (200,)


@dataclass(frozen=True)
class LoadResult:
    """What a load run achieved; `latencies` are the successful requests' seconds."""

    requests: int
    errors: int
    seconds: float
    statuses: dict[int, int]
    latencies: tuple[float, ...] = field(default=(), repr=False)

    @property
    def rps(self) -> float:
        """Successful requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        """Median latency of the successful requests."""
        return statistics.median(self.latencies) * 1000 if self.latencies else 0.0

    @property
    def p95_ms(self) -> float:
        """95th percentile latency of the successful requests."""
        return percentile(list(self.latencies), 0.95) * 1000

    def summary(self) -> dict[str, Any]:
        """The result for the JSON document (without the raw latencies)."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p95_ms": round(self.p95_ms, 2),
            "statuses": self.statuses,
        }

    @classmethod
    def merge(cls, results: Sequence[LoadResult]) -> LoadResult:
        """Several runs as one: their requests over their summed durations."""
        statuses: dict[int, int] = {}
        for result in results:
            for status, count in result.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        return cls(
            requests=sum(r.requests for r in results),
            errors=sum(r.errors for r in results),
            seconds=sum(r.seconds for r in results),
            statuses=statuses,
            latencies=tuple(x for r in results for x in r.latencies),
        )


# Numbers the requests of every run in this process, so `make(n)` can pick the n-th user in
# turn: consecutive requests never share a user (the api limits each user's submits).
_SEQUENCE = itertools.count()


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank); 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


class _Worker(threading.Thread):
    def __init__(
        self,
        host: str,
        port: int,
        make: Callable[[int], Request],
        stop_at: list[float],
        start: threading.Event,
        limit: int | None,
    ) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.make = host, port, make
        self.stop_at, self.start_event, self.limit = stop_at, start, limit
        self.latencies: list[float] = []
        self.errors = 0
        self.statuses: dict[int, int] = {}

    def run(self) -> None:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        self.start_event.wait()
        while time.monotonic() < self.stop_at[0]:
            if self.limit is not None and len(self.latencies) + self.errors >= self.limit:
                break
            request = self.make(next(_SEQUENCE))
            started = time.monotonic()
            try:
                connection.request(
                    request.method, request.path, body=request.body, headers=dict(request.headers)
                )
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                self.errors += 1
                connection.close()
                connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
                continue
            self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
            if response.status in request.expect:
                self.latencies.append(time.monotonic() - started)
            else:
                self.errors += 1
        connection.close()


def run_load(
    port: int,
    make: Callable[[int], Request],
    *,
    concurrency: int,
    seconds: float = float("inf"),
    warmup: float = 0.0,
    host: str = "127.0.0.1",
    limit_per_thread: int | None = None,
) -> LoadResult:
    """Keep `concurrency` requests in flight for `seconds` or `limit_per_thread` each."""
    if warmup > 0:
        run_load(port, make, concurrency=concurrency, seconds=warmup, host=host)
    start = threading.Event()
    stop_at = [float("inf")]
    workers = [
        _Worker(host, port, make, stop_at, start, limit_per_thread) for _ in range(concurrency)
    ]
    for worker in workers:
        worker.start()
    began = time.monotonic()
    stop_at[0] = began + seconds
    start.set()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - began
    latencies = tuple(x for w in workers for x in w.latencies)
    statuses: dict[int, int] = {}
    for worker in workers:
        for status, count in worker.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    return LoadResult(
        requests=len(latencies),
        errors=sum(w.errors for w in workers),
        seconds=elapsed,
        statuses=statuses,
        latencies=latencies,
    )


def first_success(port: int, request: Request, *, timeout: float, interval: float = 0.002) -> float:
    """Send `request` on a new connection until it gets an expected status; when it did."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            connection.request(
                request.method, request.path, body=request.body, headers=dict(request.headers)
            )
            response = connection.getresponse()
            body = response.read()
            if response.status in request.expect:
                return time.monotonic()
            last = f"HTTP {response.status} {body[:300]!r}"
        except (OSError, http.client.HTTPException) as error:
            last = repr(error)
        finally:
            connection.close()
        time.sleep(interval)
    raise TimeoutError(
        f"no {sorted(request.expect)} from port {port} within {timeout}s; last: {last}"
    )


def wait_for_listen(port: int, *, timeout: float, interval: float = 0.002) -> float:
    """Poll until the port accepts TCP connections; when it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return time.monotonic()
        except OSError:
            time.sleep(interval)
    raise TimeoutError(f"port {port} did not listen within {timeout}s")


def wait_for_close(port: int, *, timeout: float, interval: float = 0.01) -> None:
    """Poll until nothing accepts connections on the port (a killed server's children too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError:
            return
        time.sleep(interval)
    raise TimeoutError(f"port {port} still accepts connections after {timeout}s")
