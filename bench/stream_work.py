"""Figures 8 and 10: database work of a streamed job, and what open streams cost one api.

Both run on a stack of their own whose api and worker reach Postgres through counting proxies
(bench/pgwire.py), as figure 3 does.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench import first_token
from bench.load import Request, run_load
from bench.pgwire import CountingProxy
from bench.sizes import Size
from bench.sse import TERMINAL, SseStream
from bench.stack import APP_NAME, BenchDatabase, Stack, start_stack, tree_cpu, with_query
from devstack.supervisor import Supervisor, free_port, function_service
from genjobs.settings import Settings

ROLES = ("api", "worker")
STREAMED = "stream-work"
UNFOLLOWED = "stream-work-unfollowed"
HELD = "open-streams"
# The held streams follow jobs that write text about once a second for longer than the window.
HELD_PROMPT = "stub:tokens=600 stub:pace=1000"
POLL_SECONDS = Settings.stream_poll_ms / 1000


@dataclass(frozen=True)
class StreamWork:
    """Per job, what api and worker sent; `followed` with an SSE client, `unfollowed` without."""

    jobs: int
    followed: dict[str, dict[str, float]]  # role -> counter -> per job
    unfollowed: dict[str, dict[str, float]]
    delta_rows_per_job: float

    @staticmethod
    def total(side: dict[str, dict[str, float]], counter: str) -> float:
        """One counter summed over the roles."""
        return sum(counts.get(counter, 0.0) for counts in side.values())


@dataclass(frozen=True)
class OpenStreams:
    """One api instance holding `streams` open streams, against as many polling clients."""

    streams: int
    seconds: float
    stream_statements_per_s: float  # per open stream
    stream_selects_per_s: float  # the polls themselves (each in BEGIN … COMMIT)
    stream_cpu_ms_per_s: float
    poll_statements_per_s: float  # per client polling GET /v1/generations/{id}
    poll_cpu_ms_per_s: float
    poll_requests_per_s: float


@contextlib.contextmanager
def proxied_stack(
    db: BenchDatabase, logs: Path
) -> Iterator[tuple[Stack, dict[str, CountingProxy]]]:
    """A stack whose api and worker are counted on the wire."""
    proxies = {role: CountingProxy(db.url).start() for role in ROLES}
    stack = start_stack(db, logs, database_urls={role: p.url() for role, p in proxies.items()})
    try:
        yield stack, proxies
    finally:
        stack.supervisor.stop()
        for proxy in proxies.values():
            proxy.stop()


def measure_work(stack: Stack, proxies: dict[str, CountingProxy], size: Size) -> StreamWork:
    """The same jobs unfollowed (no pace), then streamed (paced) and each followed over SSE."""
    prompt = first_token.stream_prompt(size)
    plain = f"stub:tokens={size.stream_tokens}"
    _unfollowed(stack, f"{UNFOLLOWED}-warm-up", plain, 2)
    before = _snapshot(proxies)
    jobs = _unfollowed(stack, UNFOLLOWED, plain, size.stream_jobs)
    unfollowed = _per_job(before, _snapshot(proxies), jobs)
    _followed(stack, f"{STREAMED}-warm-up", prompt, 2)
    before = _snapshot(proxies)
    _followed(stack, STREAMED, prompt, jobs)
    followed = _per_job(before, _snapshot(proxies), jobs)
    rows = stack.db.rows(
        "SELECT count(*) AS n FROM generation_deltas d JOIN generations g"
        " ON g.id = d.generation_id WHERE g.metadata->>'bench' = :phase",
        {"phase": STREAMED},
    )[0]
    return StreamWork(jobs, followed, unfollowed, int(rows["n"]) / jobs)


def _unfollowed(stack: Stack, phase: str, prompt: str, jobs: int) -> int:
    load = run_load(
        stack.ports.api,
        lambda i: stack.submit_request(i, phase, prompt),
        concurrency=1,
        limit_per_thread=jobs,
    )
    _wait_all_succeeded(stack, phase, load.requests)
    return load.requests


def _followed(stack: Stack, phase: str, prompt: str, jobs: int) -> None:
    def one(index: int) -> None:
        request = stack.submit_request(index, phase, f"{prompt} {phase} {index}")
        job_id = first_token.submit(stack.ports.api, request)
        stream = SseStream(stack.ports.api, job_id, first_token.token_of(request))
        try:
            stream.until(TERMINAL)
        finally:
            stream.close()

    # Fewer followers at once than the api has threads: a stream holds one for its duration.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, range(jobs)))
    _wait_all_succeeded(stack, phase, jobs)


def _wait_all_succeeded(stack: Stack, phase: str, jobs: int) -> None:
    counts = stack.wait_for_phase(phase, jobs, timeout=60 + jobs)
    if counts.get("succeeded") != jobs:
        raise RuntimeError(f"{phase}: not every job succeeded: {counts}")


def _snapshot(proxies: dict[str, CountingProxy]) -> dict[str, dict[str, int]]:
    return {role: proxy.counts.snapshot() for role, proxy in proxies.items()}


def _per_job(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], jobs: int
) -> dict[str, dict[str, float]]:
    return {
        role: {
            key: round((value - before[role].get(key, 0)) / jobs, 2)
            for key, value in sorted(after[role].items())
            if value != before[role].get(key, 0)
        }
        for role in after
    }


def measure_open(stack: Stack, size: Size, logs: Path) -> OpenStreams:
    """An api instance holding `size.open_streams` streams of running jobs; then as many
    clients polling the same jobs every stream poll interval, on the same instance."""
    n = size.open_streams
    proxy = CountingProxy(stack.db.url).start()
    port = free_port()
    env = {
        **stack.service("api").env,
        "DATABASE_URL": with_query(proxy.url(), application_name=APP_NAME("api-streams")),
        "THREADS": str(n + 4),  # a stream holds a request thread
        "MAX_STREAMS_PER_USER": str(n),
    }
    supervisor = Supervisor(
        [function_service("api", port, env, name="api-streams")], output_dir=logs
    )
    supervisor.start()
    ids: list[str] = []
    requests: list[Request] = []
    try:
        process = supervisor.services[0].process
        assert process is not None
        for index in range(n):
            requests.append(stack.submit_request(index, HELD, f"{HELD_PROMPT} {index}"))
            ids.append(first_token.submit(stack.ports.api, requests[-1]))
        tokens = [first_token.token_of(r) for r in requests]
        # Polling first: streams closed by their clients keep polling until their next write.
        polled = _poll(port, ids, tokens, size.stream_window_seconds, proxy, process.pid)
        streamed = _hold(port, ids, tokens, size.stream_window_seconds, proxy, process.pid)
    finally:
        for job_id, request in zip(ids, requests, strict=False):
            _cancel(stack.ports.api, job_id, first_token.token_of(request))
        supervisor.stop()
        proxy.stop()
    window = size.stream_window_seconds
    return OpenStreams(
        streams=n,
        seconds=window,
        stream_statements_per_s=streamed[0] / window / n,
        stream_selects_per_s=streamed[2] / window / n,
        stream_cpu_ms_per_s=streamed[1] * 1000 / window / n,
        poll_statements_per_s=polled[0] / window / n,
        poll_cpu_ms_per_s=polled[1] * 1000 / window / n,
        poll_requests_per_s=polled[2] / window / n,
    )


def _measured(
    proxy: CountingProxy, pid: int, seconds: float, done: threading.Event
) -> tuple[float, float, float]:
    """Statements, CPU seconds and SELECTs of the api over `seconds`, then `done` is set."""
    before, cpu = proxy.counts.snapshot(), tree_cpu(pid)
    time.sleep(seconds)
    after = proxy.counts.snapshot()
    cpu = tree_cpu(pid) - cpu
    done.set()
    statements = after.get("statements", 0) - before.get("statements", 0)
    selects = after.get("statement:select", 0) - before.get("statement:select", 0)
    return statements, cpu, selects


def _poll(
    port: int, ids: list[str], tokens: list[str], seconds: float, proxy: CountingProxy, pid: int
) -> tuple[float, float, int]:
    """Each client GETs its job every poll interval on a keep-alive connection."""
    done = threading.Event()
    started = threading.Barrier(len(ids) + 1)
    sent = [0] * len(ids)

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {tokens[index]}"}
        started.wait()
        try:
            while not done.is_set():
                connection.request("GET", f"/v1/generations/{ids[index]}", headers=headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"poll: {response.status}")
                sent[index] += 1
                done.wait(POLL_SECONDS)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        futures = [pool.submit(client, index) for index in range(len(ids))]
        started.wait()
        time.sleep(POLL_SECONDS)  # every client has sent its first request
        sent_before = sum(sent)
        statements, cpu, _ = _measured(proxy, pid, seconds, done)
        sent_in_window = sum(sent) - sent_before
        for future in futures:
            future.result()
    return statements, cpu, sent_in_window


def _hold(
    port: int, ids: list[str], tokens: list[str], seconds: float, proxy: CountingProxy, pid: int
) -> tuple[float, float, float]:
    """Every stream open and past its first text, then the api's work over the window."""
    done = threading.Event()
    texting = threading.Barrier(len(ids) + 1, timeout=60)

    def follower(index: int) -> None:
        stream = SseStream(port, ids[index], tokens[index])
        try:
            stream.until(first_token.FIRST_TEXT)
            texting.wait()
            done.wait()
        finally:
            stream.close()

    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        futures = [pool.submit(follower, index) for index in range(len(ids))]
        texting.wait()
        measured = _measured(proxy, pid, seconds, done)
        for future in futures:
            future.result()
    return measured


def _cancel(port: int, job_id: str, token: str) -> None:
    """Stop a held job's model call (the worker learns it at its next write)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        connection.request("POST", f"/v1/generations/{job_id}/cancel", headers=headers)
        connection.getresponse().read()
    finally:
        connection.close()
