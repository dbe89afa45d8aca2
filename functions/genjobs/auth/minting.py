"""Mint Supabase-shaped tokens for the local stack and tests (never used in production)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import jwt

DEMO_USER_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
# The CLI's demo anon/service_role keys expire then (2032-11-11).
API_KEY_EXPIRY = 1983812996


def mint_user_token(
    *,
    secret: str,
    supabase_url: str,
    sub: str | uuid.UUID = DEMO_USER_ID,
    ttl_seconds: int = 3600,
    email: str | None = None,
    is_anonymous: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """An HS256 access token with the claims Supabase Auth puts in one; `extra` overrides."""
    now = int(time.time())
    provider = "anonymous" if is_anonymous else "email"
    claims: dict[str, Any] = {
        "iss": f"{supabase_url.rstrip('/')}/auth/v1",
        "sub": str(sub),
        "aud": "authenticated",
        "exp": now + ttl_seconds,
        "iat": now,
        "email": email or "",
        "phone": "",
        "app_metadata": {"provider": provider, "providers": [provider]},
        "user_metadata": {},
        "role": "authenticated",
        "aal": "aal1",
        "amr": [{"method": "anonymous" if is_anonymous else "password", "timestamp": now}],
        "session_id": str(uuid.uuid4()),
        "is_anonymous": is_anonymous,
    }
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "JWT"})


def mint_api_key(*, secret: str, role: Literal["anon", "service_role"]) -> str:
    """A project API key shaped like the CLI's demo anon/service_role keys."""
    claims = {"iss": "supabase-demo", "role": role, "exp": API_KEY_EXPIRY}
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "JWT"})
