"""Figure 2: jobs per second from submit to `succeeded`, with the zero-latency stub model."""

from __future__ import annotations

from dataclasses import dataclass

from bench.load import LoadResult, percentile, run_load
from bench.sizes import Size
from bench.stack import Stack, cpu_delta, cpu_seconds

PHASE = "end-to-end"


@dataclass(frozen=True)
class EndToEnd:
    """Jobs through the whole pipeline, timed by the database's own clock."""

    jobs: int
    succeeded: int
    seconds: float
    submit: LoadResult
    dispatch_p50_ms: float
    dispatch_p95_ms: float
    cpu_ms_per_job: dict[str, float]

    @property
    def jobs_per_second(self) -> float:
        """Succeeded jobs per second, first submit to last success."""
        return self.succeeded / self.seconds if self.seconds else 0.0


def measure(stack: Stack, size: Size) -> EndToEnd:
    """Submit `size.e2e_jobs` as fast as the load generator can, then wait for every one."""
    per_connection = max(1, size.e2e_jobs // size.connections)
    cpu_before = cpu_seconds(stack)
    submit = run_load(
        stack.ports.api,
        lambda i: stack.submit_request(i, PHASE),
        concurrency=size.connections,
        limit_per_thread=per_connection,
    )
    stack.wait_for_phase(PHASE, submit.requests, timeout=120 + submit.requests / 5)
    cpu = cpu_delta(cpu_before, cpu_seconds(stack))
    span = stack.db.rows(
        "SELECT count(*) FILTER (WHERE ai_status = 'succeeded') AS succeeded, count(*) AS jobs,"
        " extract(epoch FROM max(finished_at) - min(created_at)) AS seconds"
        " FROM generations WHERE metadata->>'bench' = :phase",
        {"phase": PHASE},
    )[0]
    dispatch = dispatch_ms(stack, PHASE)
    return EndToEnd(
        jobs=int(span["jobs"]),
        succeeded=int(span["succeeded"]),
        seconds=float(span["seconds"] or 0),
        submit=submit,
        dispatch_p50_ms=percentile(dispatch, 0.5),
        dispatch_p95_ms=percentile(dispatch, 0.95),
        cpu_ms_per_job={
            name: round(seconds * 1000 / submit.requests, 2)
            for name, seconds in sorted(cpu.items(), key=lambda item: -item[1])
            if seconds > 0
        },
    )


def dispatch_ms(stack: Stack, phase: str) -> list[float]:
    """Per job of a phase: its first `started` log row's time minus its creation, in ms."""
    rows = stack.db.rows(
        "SELECT extract(epoch FROM min(l.created_at) - g.created_at) * 1000 AS ms"
        " FROM generations g JOIN generation_logs l"
        " ON l.generation_id = g.id AND l.event = 'started'"
        " WHERE g.metadata->>'bench' = :phase GROUP BY g.id",
        {"phase": phase},
    )
    return [float(row["ms"]) for row in rows]
