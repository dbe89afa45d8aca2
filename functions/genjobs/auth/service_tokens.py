"""Verify Google-signed OIDC tokens on Pub/Sub push and Cloud Scheduler requests.

Trust model (README, "Security"): Cloud Run's invoker check runs in front of worker,
dead_letter and sweeper. Having verified a Google ID token, Cloud Run forwards it with its
signature replaced by `SIGNATURE_REMOVED_BY_GOOGLE`, so behind it the function can check only
the claims. It accepts such a token only when told the platform check is on
(`PLATFORM_INVOKER_CHECK`, set by Terraform beside the invoker bindings); a token that still
carries a signature is always verified in full.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from genjobs.auth.jwks import JwksCache, bearer_token, rejection, signing_key, unverified_header
from genjobs.auth.verified import VerifiedTokens
from genjobs.errors import ConfigurationError, Forbidden, Unauthenticated

MAX_CACHED_TOKENS = 64

REALM = "genjobs-internal"
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v3/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
# What Cloud Run puts where the signature was, after its invoker check verified the token.
SIGNATURE_REMOVED = "SIGNATURE_REMOVED_BY_GOOGLE"
_REQUIRED_CLAIMS = ["exp", "iat", "aud", "iss", "sub"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceIdentity:
    """The service account a verified OIDC token speaks for."""

    email: str
    subject: str


def is_signature_removed(token: str) -> bool:
    """True for a token whose signature the platform replaced after checking it."""
    return token.rpartition(".")[2] == SIGNATURE_REMOVED


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
        platform_checked: bool = False,
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
        self.platform_checked = platform_checked
        self._jwks = jwks or JwksCache(certs_url)
        # Pub/Sub reuses a token for many pushes: one check per token until it expires.
        self._verified: VerifiedTokens[ServiceIdentity] = VerifiedTokens(MAX_CACHED_TOKENS)
        self._leeway = leeway_seconds
        self._warned_unsigned = False

    def verify(self, authorization_header: str | None) -> ServiceIdentity:
        """The caller's identity; Unauthenticated (401) or Forbidden (403) otherwise."""
        token = bearer_token(authorization_header, realm=REALM)
        cached = self._verified.get(token)
        if cached is not None:
            return cached
        header = unverified_header(token, realm=REALM)
        if header.get("alg") != "RS256":
            raise Unauthenticated("token algorithm is not allowed (RS256 only)", realm=REALM)
        claims = self._claims_checked_by_platform(token) if is_signature_removed(token) else None
        if claims is None:
            claims = self._decode(token, signing_key(self._jwks, "RS256", header, realm=REALM))
        email = claims.get("email")
        if not isinstance(email, str) or email.lower() not in self.allowed_emails:
            raise Forbidden("this service account may not call this endpoint")
        # Google sends a JSON boolean; some older token formats used the string "true".
        if claims.get("email_verified") not in (True, "true"):
            raise Forbidden("the service account email is not verified")
        identity = ServiceIdentity(email=email, subject=claims["sub"])
        self._verified.put(token, identity, float(claims["exp"]))
        return identity

    def _claims_checked_by_platform(self, token: str) -> dict[str, Any]:
        """The claims of a token whose signature Cloud Run verified and then removed."""
        if not self.platform_checked:
            if not self._warned_unsigned:
                self._warned_unsigned = True
                log.warning(
                    "refused a token whose signature the platform removed: set "
                    "PLATFORM_INVOKER_CHECK=true only where Cloud Run's invoker check guards "
                    "this function"
                )
            raise Unauthenticated("token is not signed", realm=REALM)
        return self._decode(token, None)

    def _decode(self, token: str, key: jwt.PyJWK | None) -> dict[str, Any]:
        """Claims checked for audience, issuer and time; the signature too when a key is given."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key or "",
                algorithms=["RS256"],
                audience=self.audience,
                issuer=self.issuers,
                leeway=self._leeway,
                # Without a signature check PyJWT skips the others unless they are named.
                options={
                    "require": _REQUIRED_CLAIMS,
                    "verify_signature": key is not None,
                    "verify_aud": True,
                    "verify_iss": True,
                    "verify_exp": True,
                    "verify_iat": True,
                    "verify_nbf": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise rejection(exc, realm=REALM) from None
        return claims
