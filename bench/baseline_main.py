"""Baselines served by functions-framework: a bare handler, one that runs one transaction, and
cold-start floors that import what each function cannot work without before answering (and,
the `*_connect_floor` targets, also make the first connections each function makes)."""

from __future__ import annotations

import functools
import importlib
import json
import os
import time
from typing import TYPE_CHECKING

import functions_framework
from flask import Request

if TYPE_CHECKING:
    from collections.abc import Callable

    from openai import OpenAI

    from genjobs.db import Database
    from genjobs.settings import Role


@functions_framework.http
def baseline(request: Request) -> tuple[str, int]:
    """Answer 200 with a constant, whatever the request."""
    return "ok", 200


@functools.cache
def _database(role: Role = "api") -> Database:
    # Imported here: the bare `baseline` target must not pay for SQLAlchemy at cold start.
    from genjobs.db import create_database
    from genjobs.settings import load_settings

    return create_database(load_settings(role))


def _trivial_transaction(role: Role = "api") -> None:
    from sqlalchemy import text

    with _database(role).transaction() as conn:
        conn.execute(text("SELECT :one"), {"one": 1}).scalar_one()


@functions_framework.http
def one_transaction(request: Request) -> tuple[str, int]:
    """A constant after one trivial transaction: the floor of a handler that uses the database."""
    _trivial_transaction()
    return "ok", 200


# The libraries each function needs for its first useful answer (a 202; a finished job).
API_LIBRARIES = ("sqlalchemy", "pg8000", "pydantic", "jwt", "google.cloud.pubsub_v1")
WORKER_LIBRARIES = ("sqlalchemy", "pg8000", "pydantic", "jwt", "openai")


def _imported(libraries: tuple[str, ...]) -> tuple[str, int]:
    for name in libraries:
        importlib.import_module(name)
    if "pydantic" in libraries:
        _one_model()
    return "ok", 200


def _one_model() -> None:
    """One pydantic model defined and used: the least that validates with pydantic.

    `import pydantic` (v2) loads a shim; its core loads with the first model: here 105
    modules and 0.07-0.11 s for a one-field model, against 0.5 ms for the second. A floor
    that only imports it leaves that to the function.
    """
    from pydantic import BaseModel

    class Floor(BaseModel):
        x: int

    Floor.model_validate({"x": 1})


@functions_framework.http
def api_floor(request: Request) -> tuple[str, int]:
    """A constant, once the api's libraries are imported: no api can start faster."""
    return _imported(API_LIBRARIES)


@functions_framework.http
def worker_floor(request: Request) -> tuple[str, int]:
    """A constant, once the worker's libraries are imported: no worker can start faster."""
    return _imported(WORKER_LIBRARIES)


# A function's first answer also needs its first connections, which a floor that only imports
# never opens: these floors open them the plainest way the same libraries allow, in order.


def _one_statement() -> None:
    """A new SQLAlchemy engine on pg8000, one connection, one `SELECT 1`.

    The function's own URL goes through genjobs.db's translation for pg8000 (a Unix socket
    such as the embedded Postgres's, sslmode): its import adds about 0.01 s to this floor.
    """
    from sqlalchemy import create_engine, text

    from genjobs.db import pg8000_url

    url, connect_args = pg8000_url(os.environ["DATABASE_URL"])
    engine = create_engine(url, connect_args=connect_args, pool_size=1, max_overflow=0)
    with engine.begin() as conn:
        conn.execute(text("SELECT 1")).scalar_one()


def _one_publish() -> None:
    """A new Pub/Sub client (emulator from PUBSUB_EMULATOR_HOST), one message to JOBS_TOPIC."""
    from google.cloud.pubsub_v1 import PublisherClient
    from google.pubsub_v1 import PubsubMessage
    from google.pubsub_v1.services.publisher.client import PublisherClient as Generated

    client = PublisherClient()
    topic = client.topic_path(os.environ["GOOGLE_CLOUD_PROJECT"], os.environ["JOBS_TOPIC"])
    # The generated Publish call, as the api makes it (no batching thread).
    Generated.publish(client, topic=topic, messages=[PubsubMessage(data=b"floor")])


def _one_model_call() -> None:
    """A new openai client, one chat completion from OPENAI_BASE_URL (the stub model)."""
    from openai import OpenAI
    from openai.types.chat import ChatCompletion

    client = OpenAI(api_key="floor", base_url=os.environ["OPENAI_BASE_URL"], max_retries=0)
    client.post(
        "/chat/completions",
        body={"model": "stub", "messages": [{"role": "user", "content": "floor"}]},
        cast_to=ChatCompletion,
    )


@functools.cache
def _connected(libraries: tuple[str, ...], *first_uses: Callable[[], None]) -> None:
    # Once per process: like the functions, later answers reuse what the first one opened.
    _imported(libraries)
    for use in first_uses:
        use()


@functions_framework.http
def api_connect_floor(request: Request) -> tuple[str, int]:
    """A constant, once the api's libraries are imported, one statement run and one message
    published: the api's first 202 needs at least that much."""
    _connected(API_LIBRARIES, _one_statement, _one_publish)
    return "ok", 200


@functions_framework.http
def worker_connect_floor(request: Request) -> tuple[str, int]:
    """A constant, once the worker's libraries are imported, one statement run and one model
    call made: the worker's first finished job needs at least that much."""
    _connected(WORKER_LIBRARIES, _one_statement, _one_model_call)
    return "ok", 200


# Figure 5's floors: each push held as long as the stub model holds a job, either doing nothing
# else (`push_sleep`) or only what the worker's libraries do for a job (`push_libraries`).
_pushes: list[tuple[float, float]] = []


def _timed_push(
    request: Request, work: Callable[[float], None], prepare: Callable[[], None] = lambda: None
) -> tuple[str, int, dict[str, str]]:
    """A push (POST) answered 200 after `work(FLOOR_SLEEP_SECONDS)`, its start and end
    wall-clock times kept; GET: those times as JSON `[[start, end], ...]`, after `prepare()`
    (the bench GETs before the burst: a warmed-up app meets it, as the worker does)."""
    if request.method != "POST":
        prepare()
        return json.dumps(_pushes), 200, {"Content-Type": "application/json"}
    started = time.time()
    work(float(os.environ.get("FLOOR_SLEEP_SECONDS", "5")))
    _pushes.append((started, time.time()))  # one append: atomic under the GIL
    return "ok", 200, {}


@functions_framework.http
def push_sleep(request: Request) -> tuple[str, int, dict[str, str]]:
    """Each push only sleeps: what the emulator, the front end and the threads allow."""
    return _timed_push(request, time.sleep)


@functools.cache
def _model() -> OpenAI:
    from openai import OpenAI

    return OpenAI(api_key="floor", base_url=os.environ["OPENAI_BASE_URL"], max_retries=0)


def _library_job(seconds: float) -> None:
    """A job's work in the worker's libraries alone: a transaction (the claim), a streamed call
    the stub model holds `seconds`, read chunk by chunk, a transaction (the outcome)."""
    from openai import Stream

    _trivial_transaction("worker")
    stream = _model().post(
        "/chat/completions",
        body={
            "model": "stub",
            "stream": True,
            "messages": [{"role": "user", "content": f"floor stub:sleep={seconds:g}"}],
        },
        cast_to=object,
        stream=True,
        stream_cls=Stream[object],
    )
    with stream:
        for _chunk in stream:
            pass
    _trivial_transaction("worker")


@functions_framework.http
def push_libraries(request: Request) -> tuple[str, int, dict[str, str]]:
    """Each push does a job's work in the worker's libraries and nothing of ours: its floor."""
    return _timed_push(request, _library_job, _prepare_library_job)


def _prepare_library_job() -> None:
    """The database pool and the model client, built and used once."""
    _trivial_transaction("worker")
    _model().models.list()
