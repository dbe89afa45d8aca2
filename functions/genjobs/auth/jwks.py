"""Signing keys (a cached JWKS) and the bearer-token plumbing both verifiers share."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from genjobs.errors import RetryLater, Unauthenticated

log = logging.getLogger(__name__)

# A key set is a few KiB; anything far bigger is not one, and must not fill memory.
MAX_JWKS_BYTES = 1 << 20

# Real access tokens are a few KiB even with rich metadata; refuse to parse more.
MAX_TOKEN_CHARS = 16 * 1024
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

Fetch = Callable[[str, float], bytes]


class KeySetUnavailable(RetryLater):
    """The signing keys could not be fetched; the token may well be valid."""

    code = "key_set_unavailable"
    title = "Signing keys temporarily unavailable"


def fetch_url(url: str, timeout: float) -> bytes:
    """GET `url` with the standard library and return the body (200 only)."""
    if not url.startswith(("https://", "http://")):
        raise ValueError("JWKS URL must be http(s)")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        if response.status != 200:
            raise OSError(f"JWKS endpoint answered HTTP {response.status}")
        body: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("JWKS document is too large")
    return body


def parse_jwks(document: bytes) -> dict[str, jwt.PyJWK]:
    """Usable signing keys of a JWKS document by `kid`; raises ValueError if there are none."""
    data = json.loads(document)
    entries = data.get("keys") if isinstance(data, dict) else None
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not _is_public_signing_jwk(entry):
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue  # an algorithm we do not support; other keys stay usable
    if not keys:
        raise ValueError("JWKS document has no usable signing keys")
    return keys


def _is_public_signing_jwk(entry: Any) -> bool:
    """Whether a JWKS entry is an asymmetric signing key with a `kid`."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("kid"), str)
        and entry.get("kty") in ("EC", "RSA", "OKP")  # never a shared secret ("oct")
        and entry.get("use", "sig") == "sig"
    )


class JwksCache:
    """Signing keys by `kid`, cached up to `ttl_seconds` and refetched on an unknown `kid`.

    A set that cannot be refreshed still serves for up to `max_stale_seconds` after it was
    fetched (an outage of the key endpoint should not log everybody out); older, it is not
    trusted at all (503), since a revoked key would otherwise stay valid for the outage.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: float = 600,
        max_stale_seconds: float = 3600,
        min_refetch_interval: float = 30,
        timeout: float = 5,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < ttl_seconds <= max_stale_seconds:
            raise ValueError("need 0 < ttl_seconds <= max_stale_seconds")
        self.url = url
        self._ttl = ttl_seconds
        self._max_stale = max_stale_seconds
        self._min_interval = min_refetch_interval
        self._timeout = timeout
        self._fetch = fetch or fetch_url
        self._clock = clock
        self._lock = threading.Lock()
        # (keys, time they were fetched): replaced as one tuple so readers need no lock.
        self._cached: tuple[dict[str, jwt.PyJWK], float] | None = None
        self._last_attempt: float | None = None
        self._last_attempt_failed = False
        self._on_removed: list[Callable[[frozenset[str]], None]] = []

    def on_keys_removed(self, callback: Callable[[frozenset[str]], None]) -> None:
        """Call `callback` with the kids a refresh no longer lists (revoked or rotated out)."""
        self._on_removed.append(callback)

    def get_key(self, kid: str) -> jwt.PyJWK:
        """The key for `kid`; raises Unauthenticated (unknown key) or KeySetUnavailable."""
        cached = self._cached
        if cached is not None and kid in cached[0] and self._clock() - cached[1] < self._ttl:
            return cached[0][kid]
        with self._lock:
            return self._get_key_locked(kid)

    def _get_key_locked(self, kid: str) -> jwt.PyJWK:
        """Slow path: refresh if stale or `kid` is unknown, within the refetch budget."""
        now = self._clock()
        cached = self._cached  # another thread may have refreshed while we waited
        fresh = cached is not None and now - cached[1] < self._ttl
        if fresh and cached is not None and kid in cached[0]:
            return cached[0][kid]
        if self._may_fetch(now, fresh=fresh):
            self._refresh(now)
            cached = self._cached
        if cached is None or (self._last_attempt_failed and kid not in cached[0]):
            raise KeySetUnavailable(
                "signing keys are unavailable, retry shortly", retry_after=self._wait(now)
            )
        if now - cached[1] >= self._max_stale:
            raise KeySetUnavailable(
                f"signing keys are over {self._max_stale:.0f} s old and cannot be refreshed,"
                " retry shortly",
                retry_after=self._wait(now),
            )
        if kid in cached[0]:
            return cached[0][kid]  # fresh, or stale within max_stale while the endpoint fails
        raise Unauthenticated("unknown signing key")

    def _may_fetch(self, now: float, *, fresh: bool) -> bool:
        """Whether a fetch may be tried now."""
        # Stale keys are refetched at once; an unknown kid, or a retry after a failure,
        # only once per interval: random kids or a dead endpoint must not make every
        # request wait on (and hammer) the endpoint.
        if self._last_attempt is None or now - self._last_attempt >= self._min_interval:
            return True
        return not fresh and not self._last_attempt_failed

    def _wait(self, now: float) -> float:
        """Seconds until the next fetch may be tried."""
        if self._last_attempt is None:
            return 1
        return max(1.0, self._last_attempt + self._min_interval - now)

    def _refresh(self, now: float) -> None:
        """Fetch and parse the key set; on failure keep what was cached."""
        self._last_attempt = now
        try:
            keys = parse_jwks(self._fetch(self.url, self._timeout))
        except Exception as exc:  # any failure of the endpoint or its document
            self._last_attempt_failed = True
            log.warning("JWKS fetch from %s failed: %s", self.url, type(exc).__name__)
            return
        self._last_attempt_failed = False
        previous = self._cached
        self._cached = (keys, now)
        removed = frozenset(previous[0].keys() - keys.keys()) if previous else frozenset()
        if removed:
            log.info("signing keys left the key set at %s: %s", self.url, sorted(removed))
            for callback in self._on_removed:
                callback(removed)


def bearer_token(authorization_header: str | None, *, realm: str) -> str:
    """The JWT from an `Authorization: Bearer <jwt>` header, or Unauthenticated."""
    if authorization_header is None:
        raise Unauthenticated("missing Authorization header", realm=realm)
    if not authorization_header.strip():
        raise Unauthenticated("Authorization header is empty", realm=realm)
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("Authorization scheme must be Bearer", realm=realm)
    token = token.strip()
    if not token:
        raise Unauthenticated("Bearer token is empty", realm=realm)
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated("token is too large", realm=realm)
    if not _JWT_SHAPE.fullmatch(token):
        raise Unauthenticated("token is not a JWT (three base64url parts)", realm=realm)
    return token


def unverified_header(token: str, *, realm: str) -> dict[str, Any]:
    """The token's JOSE header, to pick the key; nothing in it is trusted yet."""
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthenticated("token header is malformed", realm=realm) from None


def rejection(exc: jwt.PyJWTError, *, realm: str) -> Unauthenticated:
    """A PyJWT failure as a 401 whose detail never echoes the token's content."""
    detail = "token is invalid"
    if isinstance(exc, jwt.ExpiredSignatureError):
        detail = "token has expired"
    elif isinstance(exc, jwt.ImmatureSignatureError):
        detail = "token is not valid yet"
    elif isinstance(exc, jwt.InvalidSignatureError):
        detail = "token signature is invalid"
    elif isinstance(exc, jwt.InvalidAudienceError):
        detail = "token audience is not accepted"
    elif isinstance(exc, jwt.InvalidIssuerError):
        detail = "token issuer is not accepted"
    elif isinstance(exc, jwt.MissingRequiredClaimError):
        detail = f"token is missing the '{exc.claim}' claim"  # a name from our own list
    elif isinstance(exc, jwt.InvalidAlgorithmError):
        detail = "token algorithm is not allowed"
    elif isinstance(exc, jwt.DecodeError):
        detail = "token is malformed"
    return Unauthenticated(detail, realm=realm)


# The key type each asymmetric algorithm we accept must be verified with.
_KTY_BY_ALG = {"ES256": "EC", "RS256": "RSA"}


def signing_key(jwks: JwksCache, alg: str, header: Mapping[str, Any], *, realm: str) -> jwt.PyJWK:
    """The JWKS key named by the header's `kid`, checked to fit the (allowed) `alg`."""
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthenticated("token names no signing key (kid)", realm=realm)
    try:
        key = jwks.get_key(kid)
    except Unauthenticated as exc:
        raise Unauthenticated(exc.detail, realm=realm) from None
    # PyJWT also binds a PyJWK to its own algorithm; checking here gives a clear answer.
    if key.algorithm_name != alg or key.key_type != _KTY_BY_ALG.get(alg):
        raise Unauthenticated("token algorithm does not match its signing key", realm=realm)
    return key
