"""A bounded memo of verified tokens: each is checked once, then trusted until it expires."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

T = TypeVar("T")


class VerifiedTokens(Generic[T]):
    """Token → what it proved, until the token's `exp`; cleared whole when full (rarely)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._entries: dict[str, tuple[T, float]] = {}

    def get(self, token: str) -> T | None:
        """What the token proved, if it was verified here and has not expired since."""
        entry = self._entries.get(token)
        if entry is not None and entry[1] > time.time():
            return entry[0]
        return None

    def put(self, token: str, value: T, expires_at: float) -> None:
        """Remember a token whose signature and claims were just verified."""
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[token] = (value, expires_at)
