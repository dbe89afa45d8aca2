"""Verify Google-signed OIDC tokens on Pub/Sub push and Cloud Scheduler requests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jwt

from genjobs.auth.jwks import JwksCache, bearer_token, rejection, signing_key, unverified_header
from genjobs.auth.verified import VerifiedTokens
from genjobs.errors import ConfigurationError, Forbidden, Unauthenticated

MAX_CACHED_TOKENS = 64

REALM = "genjobs-internal"
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v3/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")


@dataclass(frozen=True)
class ServiceIdentity:
    """The service account a verified OIDC token speaks for."""

    email: str
    subject: str


class ServiceTokenVerifier:
    """Accepts only RS256 tokens from Google (or the local emulator) for our audience."""

    def __init__(
        self,
        *,
        audience: str | Sequence[str],
        allowed_emails: Sequence[str],
        certs_url: str = GOOGLE_CERTS_URL,
        issuers: Sequence[str] = GOOGLE_ISSUERS,
        jwks: JwksCache | None = None,
        leeway_seconds: int = 30,
    ) -> None:
        self.audience = [audience] if isinstance(audience, str) else list(audience)
        # Emails are case-insensitive; an empty list would reject every request.
        self.allowed_emails = frozenset(e.strip().lower() for e in allowed_emails if e.strip())
        self.issuers = list(issuers)
        if not self.audience or not all(self.audience):
            raise ConfigurationError("service token audience is empty")
        if not self.allowed_emails:
            raise ConfigurationError("no service account email is allowed to call")
        if not self.issuers:
            raise ConfigurationError("no token issuer is accepted")
        self._jwks = jwks or JwksCache(certs_url)
        # Pub/Sub reuses a token for many pushes: one RS256 check per token until it expires.
        self._verified: VerifiedTokens[ServiceIdentity] = VerifiedTokens(MAX_CACHED_TOKENS)
        self._leeway = leeway_seconds

    def verify(self, authorization_header: str | None) -> ServiceIdentity:
        """The caller's identity; Unauthenticated (401) or Forbidden (403) otherwise."""
        token = bearer_token(authorization_header, realm=REALM)
        cached = self._verified.get(token)
        if cached is not None:
            return cached
        header = unverified_header(token, realm=REALM)
        if header.get("alg") != "RS256":
            raise Unauthenticated("token algorithm is not allowed (RS256 only)", realm=REALM)
        key = signing_key(self._jwks, "RS256", header, realm=REALM)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self.audience,
                issuer=self.issuers,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "aud", "iss", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise rejection(exc, realm=REALM) from None
        email = claims.get("email")
        if not isinstance(email, str) or email.lower() not in self.allowed_emails:
            raise Forbidden("this service account may not call this endpoint")
        # Google sends a JSON boolean; some older token formats used the string "true".
        if claims.get("email_verified") not in (True, "true"):
            raise Forbidden("the service account email is not verified")
        identity = ServiceIdentity(email=email, subject=claims["sub"])
        self._verified.put(token, identity, float(claims["exp"]))
        return identity
