"""Figure 1: authenticated submits per second, by one api instance."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api_core.exceptions import AlreadyExists

from bench.baseline import bare_app
from bench.load import LoadResult, Request, run_load
from bench.sizes import Size
from bench.stack import Stack, publisher, tree_cpu
from devstack.dev import PROJECT
from devstack.supervisor import Supervisor, free_port, function_service

# A topic without subscriptions: the api publishes as always, but nothing is pushed on this
# machine (in the cloud Pub/Sub and the workers run elsewhere), so the api is measured alone.
SINK_TOPIC = "bench-submit-sink"
PHASE = "submit"
SIDES = ("api", "bare", "one_transaction")


def sink_env(stack: Stack) -> dict[str, str]:
    """The stack api's environment, publishing to the sink topic (created on first use)."""
    client = publisher(stack)
    with contextlib.suppress(AlreadyExists):  # made by an earlier phase on this stack
        client.create_topic(name=client.topic_path(PROJECT, SINK_TOPIC))
    return {**stack.service("api").env, "JOBS_TOPIC": SINK_TOPIC}


@contextmanager
def sink_api(stack: Stack, logs: Path) -> Iterator[tuple[int, int]]:
    """A second api instance publishing to the sink topic; yields its port and pid."""
    port = free_port()
    env = sink_env(stack)
    supervisor = Supervisor([function_service("api", port, env, name="api-sink")], output_dir=logs)
    supervisor.start()
    try:
        process = supervisor.services[0].process
        assert process is not None
        yield port, process.pid
    finally:
        supervisor.stop()


@dataclass(frozen=True)
class Throughput:
    """Requests per second under load, and the server's CPU time per request."""

    load: LoadResult
    cpu_seconds: float

    @property
    def cpu_ms_per_request(self) -> float:
        """Server CPU per successful request: independent of what else the machine runs."""
        return self.cpu_seconds * 1000 / self.load.requests if self.load.requests else 0.0

    def summary(self) -> dict[str, Any]:
        """For the JSON document."""
        return {**self.load.summary(), "cpu_ms_per_request": round(self.cpu_ms_per_request, 3)}


def measure(stack: Stack, size: Size, logs: Path) -> dict[str, Throughput]:
    """Req/s of the api, the bare app and the one-transaction app, on the same requests."""
    # Alternating rounds, so all three see the same machine; same connections and threads.
    results: dict[str, list[LoadResult]] = {name: [] for name in SIDES}
    cpu = dict.fromkeys(SIDES, 0.0)
    with contextlib.ExitStack() as running:
        bare = running.enter_context(bare_app(logs))
        floor = running.enter_context(
            bare_app(logs, target="one_transaction", env=stack.service("api").env)
        )
        api = running.enter_context(sink_api(stack, logs))
        targets = (
            ("bare", *bare, _bare),
            ("one_transaction", *floor, _bare),
            ("api", *api, _submit),
        )
        for round_ in range(size.rounds):
            for name, port, pid, make in targets:
                if round_ == 0:
                    run_load(
                        port,
                        functools.partial(make, stack),
                        concurrency=size.connections,
                        seconds=size.warmup_seconds,
                    )
                before = tree_cpu(pid)
                results[name].append(
                    run_load(
                        port,
                        functools.partial(make, stack),
                        concurrency=size.connections,
                        seconds=size.load_seconds,
                    )
                )
                cpu[name] += tree_cpu(pid) - before
    return {name: Throughput(LoadResult.merge(results[name]), cpu[name]) for name in SIDES}


def _submit(stack: Stack, index: int) -> Request:
    return stack.submit_request(index, PHASE)


def _bare(stack: Stack, index: int) -> Request:
    """The same request, which the bare app answers with 200."""
    return dataclasses.replace(stack.submit_request(index, "bare"), expect=(200,))
