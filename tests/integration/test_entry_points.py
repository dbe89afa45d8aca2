"""functions/main.py in-process, through functions-framework's own app: wiring, error
handlers and the cold-start build, as the platform runs them (without a server)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from functions_framework import create_app

MAIN = Path(__file__).resolve().parents[2] / "functions" / "main.py"
TARGETS = ("api", "worker", "dead_letter", "sweeper")
FACTORY = {"api": "_api", "worker": "_worker", "dead_letter": "_dead_letter", "sweeper": "_sweeper"}


@pytest.fixture
def cold_start(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> Callable[..., tuple[Flask, Any]]:
    """Start one function as the platform does (FUNCTION_TARGET set); its app and main module."""

    def start(target: str, **env: str) -> tuple[Flask, Any]:
        monkeypatch.setenv("FUNCTION_TARGET", target)
        monkeypatch.setenv("GENJOBS_ENV", "local")
        monkeypatch.setenv("DATABASE_URL", database_url)
        monkeypatch.setenv("DB_POOL_SIZE", "1")
        monkeypatch.setenv("PUSH_AUDIENCE", "https://functions.test/push")
        monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never called here
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        app = create_app(target, str(MAIN))
        return app, sys.modules["main"]

    return start


@pytest.mark.parametrize("target", TARGETS)
def test_cold_start_builds_the_function_before_the_first_request(
    cold_start: Callable[..., tuple[Flask, Any]], target: str
) -> None:
    _, main = cold_start(target)
    for name, factory in FACTORY.items():
        assert getattr(main, factory).built == (name == target), name


def test_bad_settings_fail_the_cold_start_with_every_problem(
    cold_start: Callable[..., tuple[Flask, Any]],
) -> None:
    with pytest.raises(Exception, match="ACK_DEADLINE_SECONDS") as caught:
        cold_start("worker", ACK_DEADLINE_SECONDS="soon", DB_POOL_SIZE="none")
    assert "DB_POOL_SIZE" in str(caught.value)


def test_api_answers_through_the_framework(cold_start: Callable[..., tuple[Flask, Any]]) -> None:
    app, _ = cold_start("api")
    client = app.test_client()
    health = client.get("/healthz")
    assert health.status_code == 200
    anonymous = client.get("/v1/generations")
    assert anonymous.status_code == 401
    assert anonymous.content_type == "application/problem+json"
    assert anonymous.get_json()["type"].endswith("/unauthenticated")


def test_paths_the_framework_refuses_answer_as_problem_json(
    cold_start: Callable[..., tuple[Flask, Any]],
) -> None:
    app, _ = cold_start("api")
    refused = app.test_client().get("/v1/generations%0A")
    assert refused.status_code == 404
    assert refused.content_type == "application/problem+json"
    assert refused.get_json()["status"] == 404


@pytest.mark.parametrize("target", ["worker", "dead_letter", "sweeper"])
def test_push_entry_points_refuse_a_caller_without_a_token(
    cold_start: Callable[..., tuple[Flask, Any]], target: str
) -> None:
    app, _ = cold_start(target)
    answer = app.test_client().post("/", data=b"{}", content_type="application/json")
    assert answer.status_code == 401
    assert answer.content_type == "application/json"
    assert answer.get_json()["error"] == "unauthenticated"
