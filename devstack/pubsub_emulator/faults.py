"""Fault injection and time scaling: the knobs that let tests provoke at-least-once behaviour."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

# The publisher client retries UNAVAILABLE, INTERNAL, ABORTED, ... on Publish, so an injected
# failure with one of those codes is usually invisible to the caller (it succeeds on retry).
# The default is a code the client does not retry, so the failure reaches the application;
# pass `--publish-failure-code UNAVAILABLE` to exercise the client's own retries instead.
DEFAULT_PUBLISH_FAILURE_CODE = "FAILED_PRECONDITION"
PUBLISH_FAILURE_CODES = frozenset(
    {
        "ABORTED",
        "CANCELLED",
        "DEADLINE_EXCEEDED",
        "FAILED_PRECONDITION",
        "INTERNAL",
        "NOT_FOUND",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
        "UNKNOWN",
    }
)
# A duplicate is sent within this many seconds of the original: concurrently, or just after.
DUPLICATE_SPREAD_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Fault rates (0..1) and time scales; the defaults reproduce Pub/Sub faithfully."""

    duplicate_rate: float = 0.0
    delay_rate: float = 0.0
    max_delay: float = 0.0
    backoff_scale: float = 1.0
    ack_deadline_scale: float = 1.0
    publish_failure_rate: float = 0.0
    publish_failure_code: str = DEFAULT_PUBLISH_FAILURE_CODE
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("duplicate_rate", "delay_rate", "publish_failure_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in ("backoff_scale", "ack_deadline_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_delay < 0:
            raise ValueError("max_delay cannot be negative")
        if self.publish_failure_code not in PUBLISH_FAILURE_CODES:
            choices = ", ".join(sorted(PUBLISH_FAILURE_CODES))
            raise ValueError(f"publish_failure_code must be one of {choices}")


class FaultInjector:
    """Seeded, thread-safe dice for the configured faults."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._random = random.Random(config.seed)  # noqa: S311 - test dice, not cryptography
        self._lock = threading.Lock()

    def _roll(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        with self._lock:
            return self._random.random() < rate

    def _uniform(self, high: float) -> float:
        with self._lock:
            return self._random.uniform(0.0, high)

    def fail_publish(self) -> bool:
        """Whether this Publish call fails."""
        return self._roll(self.config.publish_failure_rate)

    def first_delivery_delay(self) -> float:
        """How long to hold a new message back before its first push (usually 0)."""
        if self.config.max_delay <= 0 or not self._roll(self.config.delay_rate):
            return 0.0
        return self._uniform(self.config.max_delay)

    def duplicate_delay(self) -> float | None:
        """Seconds after the original to push a duplicate, or None for no duplicate."""
        if not self._roll(self.config.duplicate_rate):
            return None
        return self._uniform(DUPLICATE_SPREAD_SECONDS)

    def scale_backoff(self, seconds: float) -> float:
        """Apply `backoff_scale` to a retry-policy delay."""
        return seconds * self.config.backoff_scale

    def scale_ack_deadline(self, seconds: float) -> float:
        """Apply `ack_deadline_scale` to an ack deadline (also the push HTTP timeout)."""
        return seconds * self.config.ack_deadline_scale
