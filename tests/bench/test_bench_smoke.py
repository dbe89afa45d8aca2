"""The bench runs end to end at its tiny size and writes every figure with its baseline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    "submit_rps",
    "submit_cpu_ms",
    "end_to_end_jobs_per_s",
    "peer_procrastinate_jobs_per_s",
    "peer_procrastinate_cpu_ms_per_job",
    "end_to_end_vs_procrastinate_ratio",
    "transactions_per_job",
    "statements_per_job",
    "round_trips_per_job",
    "api_cold_start_s",
    "worker_cold_start_s",
    "api_cold_start_floor_s",
    "worker_cold_start_floor_s",
    "api_cold_start_connect_floor_s",
    "worker_cold_start_connect_floor_s",
    "api_cold_start_vs_floor",
    "worker_cold_start_vs_floor",
    "api_cold_start_vs_connect_floor",
    "worker_cold_start_vs_connect_floor",
    "api_import_s",
    "worker_import_s",
    "concurrency_ratio",
    "concurrency_vs_library_floor",
    "concurrency_peak_rss_mib",
    "concurrency_peak_db_connections",
    "dispatch_p50_ms",
    "dispatch_p95_ms",
    "recovery_after_kill_p50_s",
    "recovery_after_kill_p95_s",
    "first_token_p50_ms",
    "first_token_p95_ms",
    "streamed_job_cpu_ms",
    "streamed_job_statements",
    "streamed_concurrency_ratio",
    "streamed_concurrency_peak_rss_mib",
    "streamed_concurrency_peak_db_connections",
    "open_stream_statements_per_s",
    "open_stream_cpu_ms_per_s",
}


@pytest.mark.e2e
@pytest.mark.timeout(170)
def test_tiny_bench_writes_every_figure_next_to_its_baseline(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    env = dict(os.environ)
    # On CI the tests' Postgres server also hosts the bench's throwaway database.
    if os.environ.get("TEST_DATABASE_URL") and not os.environ.get("BENCH_DATABASE_URL"):
        env["BENCH_DATABASE_URL"] = os.environ["TEST_DATABASE_URL"]
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "tiny", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=160,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-12000:]
    document = json.loads(out.read_text())
    figures = {figure["key"]: figure for figure in document["figures"]}
    assert set(figures) == FIGURES
    for key, figure in figures.items():
        assert math.isfinite(figure["value"]) and figure["value"] >= 0, key
        assert figure["baseline"] > 0 and figure["baseline_name"], key
        assert figure["ratio"] == pytest.approx(figure["value"] / figure["baseline"]), key
        assert figure["passed"] in (True, False, None), key
    # Every submit was accepted: the bench spreads them over users below the per-user limits.
    assert figures["submit_rps"]["details"]["api"]["errors"] == 0
    # The peer ran as many jobs as our pipeline did, every one of them to success.
    peer = figures["peer_procrastinate_jobs_per_s"]["details"]
    assert peer["jobs"] == peer["succeeded"] == figures["end_to_end_jobs_per_s"]["details"]["jobs"]
    # Every streamed job reached its first text over SSE, later than the model's own first chunk.
    first = figures["first_token_p50_ms"]
    assert first["details"]["succeeded"] == len(first["details"]["samples_s"]) > 0
    assert first["value"] > first["baseline"]
    # Streamed jobs wrote their text (delta rows) and the held streams polled the database.
    assert figures["streamed_job_statements"]["details"]["delta_rows_per_job"] >= 1
    assert figures["open_stream_statements_per_s"]["value"] > 0
    assert figures["streamed_concurrency_ratio"]["details"]["succeeded"] > 0
    # Figure 5's floors: the bare apps in the worker's place answered every push of the burst,
    # each held as long as a job's model call (slept, or a streamed call the stub holds), so
    # never faster than the ideal.
    concurrency = figures["concurrency_ratio"]["details"]
    assert concurrency["floor_pushes"] == concurrency["library_floor_pushes"]
    assert concurrency["floor_pushes"] == concurrency["succeeded"]
    assert 0 < concurrency["floor_ratio"] <= 1
    assert 0 < concurrency["library_floor_ratio"] <= 1
    assert document["size"] == "tiny" and document["machine"]["cpus"] >= 1
    assert "1. submit req/s" in done.stdout
