"""Optional error reporting to Sentry (`SENTRY_DSN`), with secrets and user data scrubbed."""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

FILTERED = "[Filtered]"
# Environment variables whose values are secrets wherever they turn up in an event.
_SECRET_ENV_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|DSN|DATABASE_URL", re.IGNORECASE)
# Key names (any case, at any depth) whose values Sentry's EventScrubber replaces with
# [Filtered], on top of its own list (password, secret, token, api_key, authorization, cookie…).
SECRET_KEY_NAMES = (
    "dsn",
    "sentry_dsn",
    "database_url",
    "database_url_secret",
    "db_password",
    "openai_api_key",
    "openai_api_key_secret",
    "supabase_jwt_secret",
    "jwt",
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "api-key",
    "x-api-key",
    "x-goog-iap-jwt-assertion",
)
# Secret-shaped text: bearer tokens, JWTs, OpenAI keys, passwords inside URLs.
_SECRET_TEXT = (
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), f"Bearer {FILTERED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), FILTERED),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), FILTERED),
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+@"), rf"\1{FILTERED}@"),
)
# Request headers worth keeping; every other header (Authorization, Cookie, …) is dropped.
_SAFE_HEADERS = frozenset(
    {"content-type", "content-length", "user-agent", "x-cloud-trace-context", "traceparent"}
)
# Short values would blank out unrelated text ("postgres", "5432").
_MIN_SECRET_LENGTH = 8


def secret_values_from_env(env: Mapping[str, str]) -> set[str]:
    """Values of variables named like secrets (OPENAI_API_KEY, DATABASE_URL, …)."""
    return {
        value
        for name, value in env.items()
        if _SECRET_ENV_NAME.search(name) and len(value) >= _MIN_SECRET_LENGTH
    }


def scrub_event(event: dict[str, Any], secrets: Iterable[str]) -> dict[str, Any]:
    """The event without request headers, cookies, bodies or any secret-looking text (secret
    key names are the EventScrubber's job, before this runs)."""
    request = event.get("request")
    if isinstance(request, dict):
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {
                k: v for k, v in headers.items() if str(k).lower() in _SAFE_HEADERS
            }
        # Bodies carry users' prompts; cookies and env carry credentials.
        for key in ("cookies", "data", "env"):
            request.pop(key, None)
    known = sorted((s for s in secrets if len(s) >= _MIN_SECRET_LENGTH), key=len, reverse=True)
    scrubbed: dict[str, Any] = _scrub(event, known)
    return scrubbed


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return _scrub_text(value, secrets)
    if isinstance(value, dict):
        return {key: _scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item, secrets) for item in value]
    return value


def _scrub_text(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, FILTERED)
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def configure_sentry(
    dsn: str | None,
    *,
    environment: str,
    role: str,
    release: str | None = None,
    secret_values: Iterable[str] = (),
) -> bool:
    """Send errors to Sentry when a DSN is set and sentry-sdk is installed; True if enabled."""
    if not dsn:
        return False
    try:
        # Not a dependency: a deployment that wants Sentry adds sentry-sdk to its image.
        sentry_sdk: Any = importlib.import_module("sentry_sdk")
        scrubber: Any = importlib.import_module("sentry_sdk.scrubber")
    except ImportError:
        log.warning("SENTRY_DSN is set but sentry-sdk is not installed: errors stay in the logs")
        return False
    known = {*secret_values, *secret_values_from_env(os.environ), dsn}
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        # No PII is the SDK's default (its send_default_pii is deprecated: left unset).
        event_scrubber=scrubber.EventScrubber(
            denylist=[*scrubber.DEFAULT_DENYLIST, *SECRET_KEY_NAMES], recursive=True
        ),
        include_local_variables=False,
        max_request_body_size="never",
        before_send=_before_send(known),
        before_breadcrumb=_before_send(known),
    )
    sentry_sdk.set_tag("function", role)
    return True


def _before_send(secrets: set[str]) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    def before_send(event: dict[str, Any], _hint: Any) -> dict[str, Any]:
        return scrub_event(event, secrets)

    return before_send
