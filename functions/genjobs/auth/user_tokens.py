"""Verify Supabase Auth access tokens (legacy HS256 secret or asymmetric signing keys)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from genjobs.auth.jwks import (
    JwksCache,
    bearer_token,
    rejection,
    signing_key,
    unverified_header,
)
from genjobs.auth.verified import VerifiedTokens
from genjobs.errors import ConfigurationError, Forbidden, Unauthenticated

REALM = "genjobs"
AUDIENCE = "authenticated"
USER_ROLE = "authenticated"
API_KEY_ROLES = frozenset({"anon", "service_role"})
ASYMMETRIC_ALGORITHMS = frozenset({"ES256", "RS256"})
# Supabase refuses shorter JWT secrets; HS256 wants at least its 32-byte digest size.
MIN_SECRET_BYTES = 32
# Browsers send the same access token with every call until it is refreshed (about hourly).
MAX_CACHED_TOKENS = 4096


class AnonymousUserRefused(Forbidden):
    """A valid token of an anonymous sign-in where only real accounts may call (RFC 6750 §3.1)."""

    def headers(self) -> dict[str, str]:
        reason = self.detail.replace('"', "'")
        return {
            "WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope", '
            f'error_description="{reason}"'
        }


@dataclass(frozen=True)
class User:
    """The caller a verified access token names."""

    id: uuid.UUID
    role: str
    email: str | None
    is_anonymous: bool
    session_id: str | None


class UserTokenVerifier:
    """Turns an `Authorization` header carrying a Supabase access token into a User."""

    def __init__(
        self,
        *,
        supabase_url: str,
        jwt_secret: str | None,
        allow_anonymous: bool = False,
        jwks: JwksCache | None = None,
        leeway_seconds: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if jwt_secret is not None and len(jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigurationError(f"the Supabase JWT secret must be {MIN_SECRET_BYTES}+ bytes")
        self.supabase_url = supabase_url.rstrip("/")
        self.issuer = f"{self.supabase_url}/auth/v1"
        self._secret = jwt_secret
        self._allow_anonymous = allow_anonymous
        # Built now, fetched on the first asymmetric token (HS256-only projects never fetch).
        self.key_set = jwks or JwksCache(f"{self.issuer}/.well-known/jwks.json", clock=clock)
        self._leeway = leeway_seconds
        # A hit re-checks the token's kid against the key set, so a revoked key ends its tokens.
        self._verified: VerifiedTokens[User] = VerifiedTokens(
            MAX_CACHED_TOKENS, key_set=self.key_set, clock=clock
        )

    def verify(self, authorization_header: str | None) -> User:
        """The User behind the header; Unauthenticated (401) or Forbidden (403) otherwise."""
        token = bearer_token(authorization_header, realm=REALM)
        cached = self._verified.get(token)
        if cached is not None:
            return cached
        header = unverified_header(token, realm=REALM)
        alg = header.get("alg")
        key: jwt.PyJWK | str
        kid: str | None = None
        if alg == "HS256":
            if self._secret is None:
                raise Unauthenticated("HS256 tokens are not accepted here", realm=REALM)
            key = self._secret  # only the shared secret: never a public key as HMAC key
        elif isinstance(alg, str) and alg in ASYMMETRIC_ALGORITHMS:
            key = signing_key(self.key_set, alg, header, realm=REALM)
            kid = key.key_id
        else:
            raise Unauthenticated("token algorithm is not allowed", realm=REALM)
        try:
            # aud/iss/sub are checked below, after the role, so API keys get a clear answer.
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                leeway=self._leeway,
                options={"require": ["exp"], "verify_aud": False, "verify_iss": False},
            )
        except jwt.PyJWTError as exc:
            raise rejection(exc, realm=REALM) from None
        user = self._user(claims)
        self._verified.put(token, user, float(claims["exp"]), kid=kid)
        return user

    def _user(self, claims: Mapping[str, Any]) -> User:
        """Check the claims of a token whose signature and lifetime are already verified."""
        role = claims.get("role")
        if role in API_KEY_ROLES:
            raise Unauthenticated(
                "API keys (anon/service_role) are not user tokens: send the user's access token",
                realm=REALM,
            )
        for claim in ("sub", "aud", "iss"):
            if claims.get(claim) is None:
                raise Unauthenticated(f"token is missing the '{claim}' claim", realm=REALM)
        if claims["iss"] != self.issuer:
            raise Unauthenticated("token was issued by another issuer", realm=REALM)
        if not _has_audience(claims["aud"], AUDIENCE):
            raise Unauthenticated(f"token audience is not '{AUDIENCE}'", realm=REALM)
        if role != USER_ROLE:
            raise Unauthenticated(f"token role is not '{USER_ROLE}'", realm=REALM)
        user_id = _uuid(claims["sub"])
        if user_id is None:
            raise Unauthenticated("token subject is not a user id", realm=REALM)
        is_anonymous = claims.get("is_anonymous", False)
        if not isinstance(is_anonymous, bool):
            raise Unauthenticated("token claim 'is_anonymous' is not a boolean", realm=REALM)
        if is_anonymous and not self._allow_anonymous:
            # Valid credentials, but this deployment wants a signed-in account.
            raise AnonymousUserRefused("anonymous users may not use this API; sign in first")
        return User(
            id=user_id,
            role=USER_ROLE,
            email=_optional_str(claims.get("email")),
            is_anonymous=is_anonymous,
            session_id=_optional_str(claims.get("session_id")),
        )


def _has_audience(aud: Any, expected: str) -> bool:
    """Whether `aud` (a string or a list of strings) is or contains `expected`."""
    if isinstance(aud, str):
        return aud == expected
    return isinstance(aud, list) and expected in aud


def _uuid(value: Any) -> uuid.UUID | None:
    """`value` as a UUID, or None."""
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _optional_str(value: Any) -> str | None:
    """A non-empty string claim, else None (Supabase sends "" for absent email/phone)."""
    return value if isinstance(value, str) and value else None
