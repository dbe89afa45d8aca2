"""Who is calling: Supabase users on the public API, Google service accounts internally."""

from genjobs.auth.jwks import JwksCache, KeySetUnavailable
from genjobs.auth.service_tokens import ServiceIdentity, ServiceTokenVerifier
from genjobs.auth.user_tokens import User, UserTokenVerifier

__all__ = [
    "JwksCache",
    "KeySetUnavailable",
    "ServiceIdentity",
    "ServiceTokenVerifier",
    "User",
    "UserTokenVerifier",
]
