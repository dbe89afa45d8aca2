"""The worker's stream writer on real Postgres: when streamed text is written, and by whom."""

from __future__ import annotations

import threading
import time
import uuid

from sqlalchemy import text

from devstack.stub_model import StubModelServer
from genjobs import store
from genjobs.db import Database
from genjobs.jobs import Job
from genjobs.model_client import ModelClient, StreamReads
from genjobs.streaming import DeltaWriter
from genjobs.tasks import TASKS
from tests.factories import JobFactory


def claimed(db: Database, job_factory: JobFactory) -> Job:
    job = job_factory(f"streamed {uuid.uuid4().hex}")
    with db.transaction() as conn:
        running = store.claim_job(conn, job.id, 30, store.Delivery()).job
    assert running is not None
    return running


def deltas(db: Database, job_id: uuid.UUID) -> list[tuple[int, str]]:
    with db.transaction() as conn:
        rows = conn.execute(
            text("SELECT seq, text FROM generation_deltas WHERE generation_id = :id ORDER BY seq"),
            {"id": job_id},
        )
        return [(r.seq, r.text) for r in rows]


def wait_for_first_words(db: Database, job_id: uuid.UUID, timeout: float = 5) -> None:
    """Until the job has a delta row (the first-text timer wrote it)."""
    deadline = time.monotonic() + timeout
    while not deltas(db, job_id):
        assert time.monotonic() < deadline, "the first words were never written"
        time.sleep(0.02)


def test_an_answer_that_arrives_whole_is_left_for_the_outcome(
    clean_db: Database, job_factory: JobFactory
) -> None:
    job = claimed(clean_db, job_factory)
    writer = DeltaWriter(clean_db, job, flush_seconds=0.2, lease_seconds=30, first_seconds=5)
    assert all(writer(piece) for piece in ["One ", "whole ", "answer."])
    tail = writer.take_tail()
    assert tail is not None and (tail.seq, tail.text) == (0, "One whole answer.")
    assert deltas(clean_db, job.id) == []


def test_first_words_followed_by_silence_are_written_by_the_timer(
    clean_db: Database, job_factory: JobFactory
) -> None:
    job = claimed(clean_db, job_factory)
    writer = DeltaWriter(clean_db, job, flush_seconds=0.2, lease_seconds=30, first_seconds=0.05)
    assert writer("First words") is True
    assert deltas(clean_db, job.id) == []  # not at once: more may be on its way
    wait_for_first_words(clean_db, job.id)
    assert deltas(clean_db, job.id) == [(0, "First words")]
    # What follows goes in order after them, here with the outcome.
    assert writer(", then more.") is True
    tail = writer.take_tail()
    assert tail is not None and (tail.seq, tail.text) == (1, ", then more.")


def test_text_after_the_first_window_is_written_at_most_every_flush_interval(
    clean_db: Database, job_factory: JobFactory
) -> None:
    job = claimed(clean_db, job_factory)
    now = [0.0]
    writer = DeltaWriter(
        clean_db,
        job,
        flush_seconds=0.2,
        lease_seconds=30,
        first_seconds=60,  # the timer never fires within this test
        clock=lambda: now[0],
    )
    writer("a")
    now[0] = 60.0
    writer("b")  # the first window is over: "ab" is written
    now[0] = 60.1
    writer("c")  # within the flush interval: kept
    now[0] = 60.2
    writer("d")  # written with "c"
    assert deltas(clean_db, job.id) == [(0, "ab"), (1, "cd")]
    assert writer.take_tail() is None


def test_the_timer_writes_nothing_once_the_outcome_took_the_text(
    clean_db: Database, job_factory: JobFactory
) -> None:
    job = claimed(clean_db, job_factory)
    writer = DeltaWriter(clean_db, job, flush_seconds=0.2, lease_seconds=30, first_seconds=0.05)
    writer("All of it.")
    tail = writer.take_tail()
    assert tail is not None and tail.text == "All of it."
    time.sleep(0.3)  # the first-text deadline passes
    assert deltas(clean_db, job.id) == []


# --- With the stream's network reads followed (the worker's case) ----------------------------


def followed(*, waiting: bool) -> StreamReads:
    reads = StreamReads()
    reads.followed, reads.waiting = True, waiting
    return reads


def test_text_still_being_parsed_is_not_split_however_long_parsing_takes(
    clean_db: Database, job_factory: JobFactory
) -> None:
    """A busy worker parsing an answer it has already read: the window passes, nothing is
    written, the timer keeps looking; the outcome takes it all."""
    job = claimed(clean_db, job_factory)
    now = [0.0]
    reads = followed(waiting=False)
    writer = DeltaWriter(
        clean_db,
        job,
        flush_seconds=0.2,
        lease_seconds=30,
        first_seconds=0.05,
        reads=reads,
        clock=lambda: now[0],
    )
    writer("One ")
    now[0] = 1.0  # long past the window
    assert writer("whole ") and writer("answer.")
    time.sleep(0.3)  # the timer fires, finds the stream parsing, and looks again
    assert deltas(clean_db, job.id) == []
    tail = writer.take_tail()
    assert tail is not None and (tail.seq, tail.text) == (0, "One whole answer.")


def test_first_words_are_written_once_the_stream_waits_on_the_network(
    clean_db: Database, job_factory: JobFactory
) -> None:
    job = claimed(clean_db, job_factory)
    reads = followed(waiting=False)
    writer = DeltaWriter(
        clean_db, job, flush_seconds=0.2, lease_seconds=30, first_seconds=0.05, reads=reads
    )
    writer("First words")
    time.sleep(0.2)
    assert deltas(clean_db, job.id) == []  # still parsing: nothing yet
    reads.waiting = True
    wait_for_first_words(clean_db, job.id)
    assert deltas(clean_db, job.id) == [(0, "First words")]
    assert writer.take_tail() is None


def test_a_stream_found_waiting_is_looked_at_again_before_its_first_words_are_written(
    clean_db: Database, job_factory: JobFactory
) -> None:
    """Found in a read at the window's end, then text comes (the read had it already): the
    first words are not written alone; they go with that text once the stream waits again."""
    job = claimed(clean_db, job_factory)
    reads = followed(waiting=True)
    writer = DeltaWriter(
        clean_db, job, flush_seconds=0.2, lease_seconds=30, first_seconds=1.0, reads=reads
    )
    writer("First")
    time.sleep(1.05)  # the timer has found it waiting once; it looks again 0.2 s later
    writer(" words")
    wait_for_first_words(clean_db, job.id)
    assert deltas(clean_db, job.id) == [(0, "First words")]


def test_the_model_client_tells_when_its_stream_waits_on_the_network() -> None:
    """The SDK's own reads are followed: waiting between paced tokens, not once it has ended."""
    stub = StubModelServer().start()
    try:
        client = ModelClient(api_key=None, base_url=stub.url)
        task = TASKS["summarize"]
        reads = StreamReads()
        first = threading.Event()
        seen: list[bool] = []

        def look() -> None:
            first.wait(5)
            time.sleep(0.1)  # the next token is 0.3 s away
            seen.append(reads.waiting)

        looker = threading.Thread(target=look)
        looker.start()
        messages = task.messages_for({"text": "paced stub:tokens=3 stub:pace=300"})
        answer = client.stream(
            task, messages, timeout=10, on_text=lambda _: first.set() or True, reads=reads
        )
        looker.join(5)
    finally:
        stub.stop()
    assert reads.followed and answer.completion_tokens == 3
    assert seen == [True]
    assert reads.waiting is False
