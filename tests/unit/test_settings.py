"""Settings: one frozen object, one error naming every problem, secrets never shown."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from genjobs.errors import ConfigurationError
from genjobs.secrets import Secret
from genjobs.settings import LOCAL_JWT_SECRET, load_settings, setting_names

README = Path(__file__).resolve().parents[2] / "README.md"


def test_local_defaults_need_nothing() -> None:
    settings = load_settings("api", {})
    assert settings.is_local and settings.supabase_url == "http://127.0.0.1:54321"
    assert settings.supabase_jwt_secret is not None
    assert settings.supabase_jwt_secret.reveal() == LOCAL_JWT_SECRET
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_body_bytes = 1  # type: ignore[misc]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(
            "worker",
            {
                "GENJOBS_ENV": "cloud",
                "DB_POOL_SIZE": "zero",
                "ALLOW_ANONYMOUS_USERS": "maybe",
                "OPENAI_API_KEY_SECRET": "not-a-resource-name",
            },
        )
    message = caught.value.detail
    for expected in (
        "DB_POOL_SIZE",
        "ALLOW_ANONYMOUS_USERS",
        "OPENAI_API_KEY_SECRET",
        "DATABASE_URL",
        "PUSH_AUDIENCE",
        "PUSH_SERVICE_ACCOUNTS",
    ):
        assert expected in message


def test_secrets_are_masked_in_repr_and_errors() -> None:
    settings = load_settings(
        "cli",
        {
            "DATABASE_URL": "postgresql://app:hunter2-db@db:6543/postgres",
            "OPENAI_API_KEY": "sk-live-very-secret",
        },
    )
    shown = repr(settings) + str(settings)
    assert "hunter2-db" not in shown and "sk-live-very-secret" not in shown
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.reveal() == "sk-live-very-secret"


def test_secret_manager_names_are_read_lazily() -> None:
    settings = load_settings(
        "cli", {"OPENAI_API_KEY_SECRET": "projects/p/secrets/openai-api-key/versions/3"}
    )
    secret = settings.openai_api_key
    assert isinstance(secret, Secret)
    assert "projects/p/secrets/openai-api-key/versions/3" in repr(secret)


def test_timing_budget_is_checked_at_start() -> None:
    with pytest.raises(ConfigurationError, match="ACK_DEADLINE_SECONDS"):
        load_settings("worker", {"ACK_DEADLINE_SECONDS": "900"})
    with pytest.raises(ConfigurationError, match="LEASE_MARGIN_SECONDS"):
        load_settings("worker", {"ACK_DEADLINE_SECONDS": "60", "LEASE_MARGIN_SECONDS": "30"})
    with pytest.raises(ConfigurationError, match="HEARTBEAT_SECONDS=11 makes a lease of 33s"):
        load_settings("worker", {"HEARTBEAT_SECONDS": "11"})
    settings = load_settings("worker", {"ACK_DEADLINE_SECONDS": "300"})
    assert settings.max_task_timeout_seconds < 300
    # A short lease renewed by the heartbeat: a crashed worker's job is free within 30 s.
    assert settings.lease_seconds == 3 * settings.heartbeat_seconds == 30


def test_readme_documents_every_setting() -> None:
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", README.read_text()))
    assert set(setting_names()) - documented == set()
