"""How much work each run does: `tiny` proves the bench runs, `full` gives the figures."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    """Durations and counts of one bench run."""

    name: str
    rounds: int  # throughput is measured in rounds, alternating subject and baseline
    load_seconds: float  # each round's duration, per side
    warmup_seconds: float
    connections: int  # load generator connections kept busy
    users: int  # distinct users, so nobody reaches the per-user submit limits
    e2e_jobs: int
    db_jobs: int
    cold_starts: int  # repetitions; the median is reported
    concurrent_jobs: int
    sleep_seconds: float  # model latency of the concurrency figure (stub:sleep)
    dispatch_jobs: int
    stream_jobs: int  # streamed jobs followed over SSE, one at a time (time to first token)
    stream_tokens: int  # their length, in stub tokens
    stream_pace_ms: float  # time per token (also the streamed concurrency figure's pace)
    open_streams: int  # SSE streams held open on one api instance
    stream_window_seconds: float  # how long their work is measured


TINY = Size(
    name="tiny",
    rounds=1,
    load_seconds=1.0,
    warmup_seconds=0.3,
    connections=8,
    users=400,
    e2e_jobs=16,
    db_jobs=8,
    cold_starts=1,
    concurrent_jobs=10,
    sleep_seconds=1.0,
    dispatch_jobs=5,
    stream_jobs=3,
    stream_tokens=5,
    stream_pace_ms=20,
    open_streams=4,
    stream_window_seconds=1.0,
)
FULL = Size(
    name="full",
    rounds=5,
    load_seconds=2.0,
    warmup_seconds=2.0,
    connections=16,
    users=5000,
    e2e_jobs=1024,
    db_jobs=200,
    cold_starts=7,
    concurrent_jobs=100,
    sleep_seconds=5.0,
    dispatch_jobs=100,
    stream_jobs=20,
    stream_tokens=20,
    stream_pace_ms=50,
    open_streams=100,
    stream_window_seconds=5.0,
)
SIZES = {size.name: size for size in (TINY, FULL)}
