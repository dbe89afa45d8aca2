"""Baselines served by functions-framework: a bare handler, and one that runs one transaction."""

from __future__ import annotations

import functools
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
