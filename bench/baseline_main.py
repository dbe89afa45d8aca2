"""Baselines served by functions-framework: a bare handler, one that runs one transaction, and
cold-start floors that import what each function cannot work without before answering."""

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
    from genjobs.db import Database


@functions_framework.http
def baseline(request: Request) -> tuple[str, int]:
    """Answer 200 with a constant, whatever the request."""
    return "ok", 200


@functools.cache
def _database() -> Database:
    # Imported here: the bare `baseline` target must not pay for SQLAlchemy at cold start.
    from genjobs.db import create_database
    from genjobs.settings import load_settings

    return create_database(load_settings("api"))


@functions_framework.http
def one_transaction(request: Request) -> tuple[str, int]:
    """A constant after one trivial transaction: the floor of a handler that uses the database."""
    from sqlalchemy import text

    with _database().transaction() as conn:
        conn.execute(text("SELECT :one"), {"one": 1}).scalar_one()
    return "ok", 200


# The libraries each function needs for its first useful answer (a 202; a finished job).
API_LIBRARIES = ("sqlalchemy", "pg8000", "pydantic", "jwt", "google.cloud.pubsub_v1")
WORKER_LIBRARIES = ("sqlalchemy", "pg8000", "pydantic", "jwt", "openai")


def _imported(libraries: tuple[str, ...]) -> tuple[str, int]:
    for name in libraries:
        importlib.import_module(name)
    return "ok", 200


@functions_framework.http
def api_floor(request: Request) -> tuple[str, int]:
    """A constant, once the api's libraries are imported: no api can start faster."""
    return _imported(API_LIBRARIES)


@functions_framework.http
def worker_floor(request: Request) -> tuple[str, int]:
    """A constant, once the worker's libraries are imported: no worker can start faster."""
    return _imported(WORKER_LIBRARIES)


# Figure 5's floor: each push held as long as the stub model holds a job, nothing else done.
_pushes: list[tuple[float, float]] = []


@functions_framework.http
def push_sleep(request: Request) -> tuple[str, int, dict[str, str]]:
    """A push (POST) answered 200 after FLOOR_SLEEP_SECONDS, its start and end wall-clock
    times kept; GET: those times as JSON `[[start, end], ...]`."""
    if request.method != "POST":
        return json.dumps(_pushes), 200, {"Content-Type": "application/json"}
    started = time.time()
    time.sleep(float(os.environ.get("FLOOR_SLEEP_SECONDS", "5")))
    _pushes.append((started, time.time()))  # one append: atomic under the GIL
    return "ok", 200, {}
