"""Figure 5 alone, in rounds alternating with its floor: `python -m bench.concurrency_rounds`.

`[--rounds N] [--variant NAME:KEY=VALUE,... ...] [--no-floor] [--py-spy DIR]`: one stack
(BENCH_DATABASE_URL as for `python -m bench`); in each round, for each variant (worker settings
over the stack's), a new worker process (as a new instance meets a burst: few request threads
started yet) warmed up with a few jobs runs figure 5's burst; then the floors' bursts
(`bench.concurrency.floor`: the same pushes answered by a bare app that only sleeps, then by
one that does only what the worker's libraries do for a job). Prints
each burst with the load average and CPU seconds per process, then each variant's median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import concurrency
from bench.load import first_success, wait_for_close
from bench.run import show_logs
from bench.sizes import FULL
from bench.stack import Stack, bench_database, cpu_delta, cpu_seconds, start_stack

WARM_UP_JOBS = 8


def fresh_worker(stack: Stack, env: dict[str, str], phase: str) -> None:
    """A new worker process with environment `env`, past its first jobs."""
    service = stack.service("worker")
    stack.supervisor.pause("worker")
    wait_for_close(stack.ports.worker_container, timeout=10)
    service.env = env
    stack.supervisor.resume("worker")
    for index in range(WARM_UP_JOBS):
        first_success(stack.ports.api, stack.submit_request(index, phase), timeout=60)
    stack.wait_for_phase(phase, WARM_UP_JOBS, timeout=60)


def not_succeeded(stack: Stack, phase: str) -> list[dict[str, object]]:
    """Status and error of the phase's jobs that did not succeed, counted."""
    return stack.db.rows(
        "SELECT ai_status, error->>'code' AS code, error->>'message' AS message, count(*) AS n"
        " FROM generations WHERE metadata->>'bench' = :phase AND ai_status <> 'succeeded'"
        " GROUP BY 1, 2, 3",
        {"phase": phase},
    )


def variant(spec: str) -> tuple[str, dict[str, str]]:
    """`NAME[:KEY=VALUE,...]`: a name, and the worker settings it changes."""
    name, _, pairs = spec.partition(":")
    return name, dict(pair.split("=", 1) for pair in pairs.split(",") if pair)


def py_spy(stack: Stack, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy (dev requirements) recording the worker's processes, GIL holders only."""
    argv = [str(Path(sys.executable).with_name("py-spy")), "record", "--gil", "--subprocesses"]
    argv += ["--format", "raw", "--nonblocking", "--rate", "500", "--duration", f"{seconds:g}"]
    argv += ["-o", str(out), "-p", str(stack.pid("worker"))]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def load() -> str:
    """The 1-minute load average, for the printout."""
    return f"{os.getloadavg()[0]:.2f}"


def burst(stack: Stack, logs: Path, phase: str, env: dict[str, str], spy_dir: Path | None) -> float:
    """Figure 5's burst on a new worker with environment `env`; prints it, returns its ratio."""
    fresh_worker(stack, env, f"warm-up-{phase}")
    before = load()
    spy = py_spy(stack, spy_dir / f"{phase}.txt", 20) if spy_dir else None
    cpu = cpu_seconds(stack)
    try:
        conc = concurrency.measure(stack, FULL, logs, phase=phase)
    except RuntimeError as error:  # a process that did not start (the sink api): once more
        print(f"  {error}; again", flush=True)
        phase += "-again"
        conc = concurrency.measure(stack, FULL, logs, phase=phase)
    spent = cpu_delta(cpu, cpu_seconds(stack))
    ratio = conc.jobs_per_second / conc.ideal_jobs_per_second
    print(
        f"{phase}: ratio {ratio:.3f}, span {conc.worker_seconds:.2f} s, start spread"
        f" {conc.start_spread_seconds:.2f} s, {conc.succeeded}/{conc.jobs} ok,"
        f" peak {conc.peak_connections} conns, {conc.peak_rss_bytes / 2**20:.0f} MiB;"
        f" load {before} → {load()}",
        flush=True,
    )
    if conc.succeeded < conc.jobs:
        print(f"  not succeeded: {not_succeeded(stack, phase)}")
    print("  CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in spent.items()), flush=True)
    if spy is not None:
        spy.wait()
    return ratio


def floor_burst(stack: Stack, logs: Path, name: str, *, libraries: bool = False) -> float:
    """A floor's burst; prints it and returns its ratio."""
    before = load()
    low = concurrency.floor(stack, FULL, logs, libraries=libraries)
    print(
        f"{name}: ratio {low.ratio:.3f}, span {low.seconds:.2f} s, start spread"
        f" {low.start_spread_seconds:.2f} s, {low.jobs} pushes; load {before} → {load()}",
        flush=True,
    )
    return low.ratio


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds and print each burst, then each variant's median."""
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency_rounds", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variant",
        type=variant,
        action="append",
        metavar="NAME[:KEY=VALUE,...]",
        help="worker settings to compare, one after the other in each round (default: as shipped)",
    )
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="profile each burst into DIR")
    args = parser.parse_args(argv)
    variants: list[tuple[str, dict[str, str]]] = args.variant or [("shipped", {})]
    floors = ("floor", "library-floor")
    ratios: dict[str, list[float]] = {name: [] for name in [*(n for n, _ in variants), *floors]}
    with tempfile.TemporaryDirectory(prefix="genjobs-fig5-") as workdir, bench_database() as db:
        logs = Path(workdir)
        stack = start_stack(db, logs / "stack")
        shipped = dict(stack.service("worker").env)
        try:
            stack.users(FULL.users)
            for index in range(args.rounds):
                for name, env in variants:
                    phase = f"{name}-{index}"
                    ratio = burst(stack, logs, phase, {**shipped, **env}, args.py_spy)
                    ratios[name].append(ratio)
                if not args.no_floor:
                    for name in floors:
                        ratio = floor_burst(
                            stack, logs, f"{name}-{index}", libraries=name == "library-floor"
                        )
                        ratios[name].append(ratio)
        except BaseException:
            show_logs(logs)  # the work folder goes with the error: say what it saw first
            raise
        finally:
            stack.supervisor.stop()
    for name, values in ratios.items():
        if values:
            print(f"{name}: median ratio {statistics.median(values):.3f} of {len(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
