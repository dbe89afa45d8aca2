"""Statements inside explicit transactions survive a transaction-mode pooler under contention."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from genjobs import store
from genjobs.db import Database, create_database
from genjobs.settings import Settings, load_settings

THREADS = 20
ROUNDS = 25


def test_many_threads_share_few_connections_without_errors(
    settings: Settings, app_database_url: str, clean_db: Database
) -> None:
    # More client threads than pooled connections, and (through PgBouncer) more pooled
    # connections than server connections: the failure DESIGN.md saw with autocommit.
    pool = create_database(
        load_settings(
            "cli",
            {
                "DATABASE_URL": app_database_url,
                "DB_POOL_SIZE": "10",
                "DB_POOL_TIMEOUT_SECONDS": "30",
            },
        )
    )
    user = uuid.uuid4()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            for i in range(ROUNDS):
                with pool.transaction() as conn:
                    job = store.insert_job(
                        conn,
                        store.NewJob(
                            user_id=user,
                            task="summarize",
                            input={"text": f"{n}-{i}"},
                            metadata={},
                            idempotency_key=f"{n}-{i}",
                            request_hash="h",
                            trace_id=None,
                            max_attempts=5,
                        ),
                    )
                    assert job is not None
                    assert (
                        conn.execute(
                            text("SELECT count(*) FROM generations WHERE id = :id"), {"id": job.id}
                        ).scalar_one()
                        == 1
                    )
        except BaseException as error:  # collected and asserted below
            with lock:
                errors.append(error)

    try:
        with ThreadPoolExecutor(THREADS) as executor:
            list(executor.map(work, range(THREADS)))
    finally:
        pool.dispose()
    assert errors == []
    with clean_db.transaction() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM generations WHERE user_id = :u"), {"u": user}
        ).scalar_one()
    assert count == THREADS * ROUNDS
