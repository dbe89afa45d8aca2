"""Cold start is single-flight: concurrent first requests build one app, one pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from main import built_once

ROOT = Path(__file__).resolve().parents[2]
FIRST_REQUESTS = 16
POOL_SIZE = 2

# A fresh interpreter, as on a new instance, importing main.py with no FUNCTION_TARGET (so
# nothing is built at import; functions-framework always sets it, other hosts may not) and
# serving the `api` entry point from a plain Flask app; then concurrent first requests.
# It counts the engines built and the connections they open on the real database.
FRESH_INSTANCE = """
import json, sys, threading
import flask
from sqlalchemy import event
import genjobs.db

engines, connections = [], []
create_engine = genjobs.db.create_engine

def counting_create_engine(*args, **kwargs):
    engine = create_engine(*args, **kwargs)
    event.listen(engine, "connect", lambda *_: connections.append(1))
    engines.append(engine)
    return engine

genjobs.db.create_engine = counting_create_engine
import main

host = flask.Flask("host")
host.add_url_rule("/healthz", view_func=lambda: main.api(flask.request))
together = threading.Barrier(int(sys.argv[1]))
statuses = []

def first_request():
    client = host.test_client()
    together.wait()
    statuses.append(client.get("/healthz").status_code)

threads = [threading.Thread(target=first_request) for _ in range(together.parties)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"engines": len(engines), "connections": len(connections), "statuses": statuses}))
"""


def test_concurrent_first_requests_build_one_app_and_one_pool(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FUNCTION_TARGET"}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT / "functions"), str(ROOT)]),
        DATABASE_URL=database_url,
        DB_POOL_SIZE=str(POOL_SIZE),
        LOG_LEVEL="WARNING",
    )
    run = subprocess.run(
        [sys.executable, "-c", FRESH_INSTANCE, str(FIRST_REQUESTS)],
        cwd=ROOT / "functions",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    counts = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"{FIRST_REQUESTS} concurrent first requests: {counts}")
    assert counts["statuses"] == [200] * FIRST_REQUESTS
    assert counts["engines"] == 1
    assert 1 <= counts["connections"] <= POOL_SIZE  # the pool Terraform's budget counts on


def test_a_failed_build_is_retried_by_the_next_request_one_at_a_time() -> None:
    attempts: list[int] = []
    inside = threading.Semaphore(1)  # fails if two builds ever overlap

    def build() -> object:
        assert inside.acquire(blocking=False), "two builds ran at once"
        try:
            attempts.append(1)
            time.sleep(0.05)  # a build takes a while: the other first requests arrive meanwhile
            if len(attempts) == 1:
                raise ConnectionError("Secret Manager unreachable")
            return object()
        finally:
            inside.release()

    instance = built_once(build)
    results: list[object] = []
    errors: list[BaseException] = []
    together = threading.Barrier(8)

    def first_request() -> None:
        together.wait()
        try:
            results.append(instance())
        except ConnectionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(attempts) == 2, "one failed build, then one that every other request shares"
    assert len(errors) == 1 and len(results) == 7
    assert len({id(r) for r in results}) == 1
