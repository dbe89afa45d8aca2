"""Operations tests share the end-to-end tests' private stack (emulator, stub model, functions)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import (  # noqa: F401 (fixtures and the hook pytest looks up here)
    _show_stack_logs_on_failure,
    pytest_runtest_makereport,
    stack,
)


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, app_database_url: str) -> None:
    """The environment `genjobs` commands read, pointing at the test database."""
    monkeypatch.setenv("DATABASE_URL", app_database_url)
    monkeypatch.setenv("GENJOBS_ENV", "local")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "local-project")
    # Nothing listens there: a test that needs Pub/Sub points this at the stack's emulator.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
