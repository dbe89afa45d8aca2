"""Figure 4: cold start, process start → first useful answer, and each entry point's import."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import baseline
from bench.load import first_success, wait_for_close, wait_for_listen
from bench.sizes import Size
from bench.stack import Stack, spawn, terminate
from bench.submit import sink_env
from devstack.supervisor import ROOT, free_port, function_service

POLL_SECONDS = 0.005
# The bare app, and the same app importing what the api or the worker needs before answering;
# the connect floors also open the first connections each needs (in `baseline_main`).
BASELINES = ("baseline", "api_floor", "worker_floor")
CONNECT_FLOORS = {"api_connect_floor": "api", "worker_connect_floor": "worker"}


@dataclass(frozen=True)
class ColdStart:
    """Median seconds from process start, with every run."""

    seconds: float
    runs: list[float]
    listening_seconds: float | None  # median: process start → port accepting
    idle_before: list[float]  # the CPUs' idle share just before each repetition


def measure(stack: Stack, size: Size, logs: Path) -> dict[str, ColdStart]:
    """Median seconds from process start for a new bare app, api and worker."""
    # Each repetition runs all three back to back, so they see the same machine.
    worker = stack.service("worker")
    stack.supervisor.pause("worker")
    # The arbiter is gone; its worker process may hold the socket a moment longer.
    wait_for_close(worker.port, timeout=10)
    names = (*BASELINES, *CONNECT_FLOORS, "api", "worker")
    runs: dict[str, list[float]] = {name: [] for name in names}
    listening: dict[str, list[float]] = {"api": [], "worker": []}
    idle: list[float] = []
    # The connect floors reach what the functions reach: the api's floor publishes to the
    # sink topic, as the cold api does; the worker's calls the stack's stub model.
    envs = {
        name: {k: v for k, v in env.items() if k != "FUNCTION_TARGET"}
        for name, env in (("api", sink_env(stack)), ("worker", stack.service("worker").env))
    }
    try:
        for attempt in range(size.cold_starts):
            idle.append(wait_for_quiet())
            for target in BASELINES:
                runs[target].append(baseline.cold_start(logs, target))
            for target, function in CONNECT_FLOORS.items():
                runs[target].append(baseline.cold_start(logs, target, envs[function]))
            for name, once in (("api", _api_once), ("worker", _worker_once)):
                seconds, listen = once(stack, attempt, logs)
                runs[name].append(seconds)
                listening[name].append(listen)
    finally:
        stack.supervisor.resume("worker")
    return {
        name: ColdStart(
            statistics.median(times),
            times,
            statistics.median(listening[name]) if listening.get(name) else None,
            idle,
        )
        for name, times in runs.items()
    }


def wait_for_quiet(idle: float = 0.8, window: float = 0.5, timeout: float = 30.0) -> float:
    """Wait until the machine's CPUs are mostly idle over a window; that share.

    A cold start is one process's CPU work: on two shared vCPUs, whatever else still runs
    after the load figures would lengthen the function's starts and the floors' unevenly.
    Gives up after `timeout` and measures anyway; the share is in the figure's details.
    """
    deadline = time.monotonic() + timeout
    while True:
        before = _cpu_times()
        time.sleep(window)
        after = _cpu_times()
        busy, total = after[0] - before[0], after[1] - before[1]
        share = 1 - busy / total if total else 1.0
        if share >= idle or time.monotonic() > deadline:
            return round(share, 3)


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (Linux)."""
    try:
        # user nice system idle iowait irq softirq steal (guest time is already in user)
        first = Path("/proc/stat").read_text().split("\n", 1)[0]
        fields = [int(x) for x in first.split()[1:9]]
    except OSError:
        return (0, 0)  # not Linux: measure at once
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle, sum(fields))


def _api_once(stack: Stack, attempt: int, logs: Path) -> tuple[float, float]:
    """A new api process: start → its first 202 to an authenticated submit."""
    port = free_port()
    env = sink_env(stack)  # its job is not for the worker standing in for a cold one
    started = time.monotonic()
    process = spawn(function_service("api", port, env), logs / "api-cold.log")
    try:
        listening = wait_for_listen(port, timeout=60) - started
        request = stack.submit_request(attempt, "cold-start-api")
        return first_success(port, request, timeout=60) - started, listening
    finally:
        terminate(process)


def _worker_once(stack: Stack, attempt: int, logs: Path) -> tuple[float, float]:
    """A new worker in the paused stack worker's place: process start → first job succeeded."""
    # The job is submitted (to the warm api) once the worker listens, so the time also covers
    # one submit and one push, as for a job waiting on a worker scaled to zero.
    service = stack.service("worker")
    phase = f"cold-start-worker-{attempt}"
    started = time.monotonic()
    process = spawn(service, logs / "worker-cold.log")
    try:
        listening = wait_for_listen(service.port, timeout=60) - started
        first_success(stack.ports.api, stack.submit_request(attempt, phase), timeout=10)
        counts = stack.wait_for_phase(phase, 1, timeout=60, interval=POLL_SECONDS)
        seconds = time.monotonic() - started
    finally:
        terminate(process)
        wait_for_close(service.port, timeout=10)
    if counts.get("succeeded") != 1:
        raise RuntimeError(f"the cold worker's first job did not succeed: {counts}")
    return seconds, listening


_IMPORT = """
import json, sys, time
started = time.perf_counter()
import {module}
print(json.dumps(time.perf_counter() - started))
"""


def import_seconds(
    modules: dict[str, tuple[str, Path, dict[str, str]]], runs: int
) -> dict[str, tuple[float, list[tuple[str, float]]]]:
    """Per name: median seconds to import its module afresh, and its slowest direct imports."""
    # The modules take turns, so all see the same machine; `-X importtime` names the slow parts.
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(runs):
        for name, (module, directory, env) in modules.items():
            done = _python(["-c", _IMPORT.format(module=module)], directory, env)
            times[name].append(float(json.loads(done.stdout.strip().splitlines()[-1])))
    result = {}
    for name, (module, directory, env) in modules.items():
        traced = _python(["-X", "importtime", "-c", f"import {module}"], directory, env)
        result[name] = (statistics.median(times[name]), top_imports(traced.stderr, module))
    return result


def _python(
    args: list[str], directory: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env, "PYTHONPATH": str(directory)}
    return subprocess.run(
        [sys.executable, *args],
        cwd=directory,
        env=full_env,
        capture_output=True,
        text=True,
        check=True,
    )


def top_imports(importtime: str, module: str, count: int = 6) -> list[tuple[str, float]]:
    """The direct imports of `module` that took longest (cumulative seconds)."""
    children: list[tuple[str, float]] = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        # One space, then two more per nesting level; children are printed before parents.
        level = (len(name) - len(name.lstrip()) - 1) // 2
        if level == 0 and name.strip() == module:
            return sorted(children, key=lambda item: -item[1])[:count]
        if level == 0:
            children = []
        elif level == 1:
            children.append((name.strip(), int(cumulative) / 1e6))
    return []


def entry_points(stack: Stack, size: Size) -> dict[str, tuple[float, list[tuple[str, float]]]]:
    """Import times of `main` per target, of the bare app, and of the SDKs imported lazily."""
    functions = ROOT / "functions"
    return import_seconds(
        {
            "baseline": ("baseline_main", ROOT / "bench", {}),
            "api": ("main", functions, dict(stack.service("api").env)),
            "worker": ("main", functions, dict(stack.service("worker").env)),
            # Imported on first use: by the api's first publish, the worker's first model call.
            "google.cloud.pubsub_v1": ("google.cloud.pubsub_v1", functions, {}),
            "openai": ("openai", functions, {}),
        },
        size.cold_starts,
    )
