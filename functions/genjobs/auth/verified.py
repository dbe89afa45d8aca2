"""A bounded memo of verified tokens, never trusted longer than the keys that verified them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from genjobs.auth.jwks import JwksCache
from genjobs.errors import RetryLater, Unauthenticated

T = TypeVar("T")

# The JWKS cache TTL: a verification is not remembered longer than the key set is trusted.
MAX_AGE_SECONDS = 600.0


class VerifiedTokens(Generic[T]):
    """Token → what it proved, until `exp` or `max_age_seconds`; cleared whole when full."""

    def __init__(
        self,
        limit: int,
        *,
        max_age_seconds: float = MAX_AGE_SECONDS,
        key_set: JwksCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._max_age = max_age_seconds
        self._key_set = key_set
        self._clock = clock
        self._lock = threading.Lock()
        # token -> (value, deadline on `clock`, kid of the JWKS key that verified it or None)
        self._entries: dict[str, tuple[T, float, str | None]] = {}
        if key_set is not None:
            key_set.on_keys_removed(self.drop_kids)

    def get(self, token: str) -> T | None:
        """What the token proved, if verified here recently and its key is still trusted."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        value, deadline, kid = entry
        if self._clock() >= deadline or not self._key_still_trusted(kid):
            self._entries.pop(token, None)
            return None  # the caller verifies afresh and gets the precise 401 or 503
        return value

    def put(self, token: str, value: T, expires_at: float, *, kid: str | None = None) -> None:
        """Remember a token just verified; `expires_at` is its `exp` (Unix time)."""
        lifetime = min(self._max_age, expires_at - time.time())
        if lifetime <= 0:
            return
        with self._lock:
            if len(self._entries) >= self._limit:
                self._entries.clear()
            self._entries[token] = (value, self._clock() + lifetime, kid)

    def drop_kids(self, kids: Iterable[str]) -> None:
        """Forget every token verified by one of these keys (they left the key set)."""
        gone = set(kids)
        with self._lock:
            for token, (_, _, kid) in list(self._entries.items()):
                if kid in gone:
                    self._entries.pop(token, None)  # get() may have dropped it meanwhile

    def __len__(self) -> int:
        return len(self._entries)

    def _key_still_trusted(self, kid: str | None) -> bool:
        """Whether the key set still lists `kid` and is fresh enough (a dict lookup when fresh)."""
        if kid is None or self._key_set is None:
            return True
        try:
            self._key_set.get_key(kid)  # refreshes a set past its TTL, like any new token would
        except (Unauthenticated, RetryLater):
            return False
        return True
