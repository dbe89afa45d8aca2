"""Operations tests: the shared `stack` fixture comes from tests/conftest.py."""

from __future__ import annotations

import pytest


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, app_database_url: str) -> None:
    """The environment `genjobs` commands read, pointing at the test database."""
    monkeypatch.setenv("DATABASE_URL", app_database_url)
    monkeypatch.setenv("GENJOBS_ENV", "local")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "local-project")
    # Nothing listens there: a test that needs Pub/Sub points this at the stack's emulator.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:9")
