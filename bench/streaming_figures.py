"""Figures 7 to 10, the streaming path: time to first token, work per streamed job, many streamed
generations on one worker, open streams on one api."""

from __future__ import annotations

import sys
from pathlib import Path

from bench import baseline, concurrency, first_token, stream_work
from bench.report import Figure
from bench.sizes import Size
from bench.stack import WORKER_THREADS, BenchDatabase, Stack
from genjobs.settings import Settings

ORDER = (
    "first_token_p50_ms",
    "first_token_p95_ms",
    "streamed_job_cpu_ms",
    "streamed_job_statements",
    "streamed_concurrency_ratio",
    "streamed_concurrency_peak_rss_mib",
    "streamed_concurrency_peak_db_connections",
    "open_stream_statements_per_s",
    "open_stream_cpu_ms_per_s",
)
STREAMED_PHASE = "concurrency-streamed"
CLIENT = "bench"  # cpu_seconds' group of the bench's own process


def log(message: str) -> None:
    """Progress on stderr, as bench/run.py does."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def on_stack(stack: Stack, size: Size, logs: Path) -> list[Figure]:
    """Figures 7 and 9, on the main stack."""
    log("7. time to first token, against the model called directly")
    stack.users(size.users)
    first = first_token.measure(stack, size)
    cpu_pipeline = first.cpu_ms_per_job("pipeline")
    cpu_direct = first.cpu_ms_per_job("direct")
    # The bench is the client (SSE reader, openai SDK): the figure is every other process.
    served = sum(ms for name, ms in cpu_pipeline.items() if name != CLIENT)
    served_direct = sum(ms for name, ms in cpu_direct.items() if name != CLIENT)
    figures = [
        Figure(
            "first_token_p50_ms",
            "7. time to first token p50",
            first.ms("pipeline", 0.5),
            "ms",
            first.ms("direct", 0.5),
            "openai client → model, first chunk",
            details={
                "overhead_p50_ms": round(first.ms("pipeline", 0.5) - first.ms("direct", 0.5), 1),
                "overhead_target_ms": 150,
                "overhead_passed": first.ms("pipeline", 0.5) - first.ms("direct", 0.5) <= 150,
                "prompt": first_token.stream_prompt(size),
                "succeeded": first.succeeded,
                "samples_s": [round(x, 4) for x in first.pipeline],
                "baseline_samples_s": [round(x, 4) for x in first.direct],
            },
        ),
        Figure(
            "first_token_p95_ms",
            "7. time to first token p95",
            first.ms("pipeline", 0.95),
            "ms",
            first.ms("direct", 0.95),
            "openai client → model, first chunk",
        ),
        Figure(
            "streamed_job_cpu_ms",
            "8. CPU per streamed job, all processes but the client",
            served,
            "ms",
            served_direct or 0.01,
            "the same call, direct",
            details={"pipeline": cpu_pipeline, "direct": cpu_direct},
        ),
    ]
    log("9. concurrent streamed generations on one worker")
    stack.users(size.users)
    tokens = max(1, round(size.sleep_seconds * 1000 / size.stream_pace_ms))
    prompt = f"stub:tokens={tokens} stub:pace={size.stream_pace_ms:g}"
    bare_rss = baseline.peak_rss(
        logs,
        threads=WORKER_THREADS,
        connections=size.concurrent_jobs,
        seconds=max(1.0, size.load_seconds / 2),
    )
    conc = concurrency.measure(stack, size, logs, prompt=prompt, phase=STREAMED_PHASE)
    figures += concurrency.figures(
        conc,
        bare_rss,
        Settings.db_pool_size,
        key="streamed_concurrency",
        title=f"9. {conc.jobs} concurrent streamed {conc.sleep_seconds:g} s jobs",
        target=0.9,
        details={"prompt": prompt, "stream_flush_ms": Settings.stream_flush_ms},
    )
    return figures


def on_counted_stack(db: BenchDatabase, size: Size, logs: Path) -> list[Figure]:
    """Figures 8 (statements) and 10, on a stack whose api and worker are counted on the wire."""
    log("8. database work per streamed job; 10. open streams on one api")
    with stream_work.proxied_stack(db, logs) as (stack, proxies):
        stack.users(size.users)
        work = stream_work.measure_work(stack, proxies, size)
        held = stream_work.measure_open(stack, size, logs)
    total = stream_work.StreamWork.total
    return [
        Figure(
            "streamed_job_statements",
            "8. DB statements per streamed job (followed)",
            total(work.followed, "statements"),
            "",
            total(work.unfollowed, "statements"),
            "same job unpaced, unfollowed",
            details={
                "jobs": work.jobs,
                "prompt": first_token.stream_prompt(size),
                "delta_rows_per_job": work.delta_rows_per_job,
                "commits_per_job": total(work.followed, "statement:commit"),
                "baseline_commits_per_job": total(work.unfollowed, "statement:commit"),
                "followed": work.followed,
                "unfollowed": work.unfollowed,
            },
        ),
        Figure(
            "open_stream_statements_per_s",
            f"10. api DB statements/s per open stream ({held.streams} open)",
            held.stream_statements_per_s,
            "/s",
            held.poll_statements_per_s,
            f"a client polling GET every {Settings.stream_poll_ms} ms",
            details={
                "streams": held.streams,
                "selects_per_s_per_stream": round(held.stream_selects_per_s, 2),
                "window_s": held.seconds,
                "poll_requests_per_s_per_client": round(held.poll_requests_per_s, 2),
            },
        ),
        Figure(
            "open_stream_cpu_ms_per_s",
            "10. api CPU ms/s per open stream",
            held.stream_cpu_ms_per_s,
            "ms/s",
            held.poll_cpu_ms_per_s or 0.01,
            "a polling client",
        ),
    ]
