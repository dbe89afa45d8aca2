"""Value types shared by the topology loader, the broker and the gRPC layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

# Google's defaults and limits, in seconds unless said otherwise.
DEFAULT_ACK_DEADLINE = 10
MAX_ACK_DEADLINE = 600
DEFAULT_MIN_BACKOFF = 10.0
DEFAULT_MAX_BACKOFF = 600.0
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5
MIN_DELIVERY_ATTEMPTS = 5
MAX_DELIVERY_ATTEMPTS = 100
DEFAULT_RETENTION = 7 * 24 * 3600.0
MIN_RETENTION = 600.0
MAX_RETENTION = 31 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff between redeliveries of a nacked or expired message."""

    minimum_backoff: float = DEFAULT_MIN_BACKOFF
    maximum_backoff: float = DEFAULT_MAX_BACKOFF

    def backoff(self, failed_attempts: int) -> float:
        """Delay before the next delivery after `failed_attempts` failures (1 = first failure)."""
        exponent = min(max(failed_attempts - 1, 0), 32)
        return float(min(self.maximum_backoff, self.minimum_backoff * 2**exponent))


@dataclass(frozen=True, slots=True)
class DeadLetterPolicy:
    """Where a message goes after `max_delivery_attempts` failed deliveries."""

    dead_letter_topic: str
    max_delivery_attempts: int = DEFAULT_MAX_DELIVERY_ATTEMPTS


@dataclass(frozen=True, slots=True)
class PushConfig:
    """A push endpoint and the identity its OIDC token carries."""

    endpoint: str
    # Empty means the endpoint URL, which is what Google puts in `aud` by default.
    audience: str = ""
    service_account_email: str = ""


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """A topic as created."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    message_retention: float | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionSettings:
    """A subscription as created; `push` is None for a pull subscription."""

    name: str
    topic: str
    push: PushConfig | None = None
    ack_deadline_seconds: int = DEFAULT_ACK_DEADLINE
    retry_policy: RetryPolicy | None = None
    dead_letter_policy: DeadLetterPolicy | None = None
    message_retention: float = DEFAULT_RETENTION
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Message:
    """A published message, shared read-only by every subscription of its topic."""

    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    publish_time: datetime
    ordering_key: str = ""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """What a publisher sends: the server assigns the id and publish time."""

    data: bytes
    attributes: Mapping[str, str] = field(default_factory=dict)
    ordering_key: str = ""


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message handed to a puller, with its ack id."""

    ack_id: str
    message: Message
    # 0 unless the subscription has a dead-letter policy, as in the real API.
    delivery_attempt: int


@dataclass(frozen=True, slots=True)
class PushTask:
    """One push request to make: the broker decides it, the dispatcher performs it."""

    subscription: str
    push: PushConfig
    ack_id: str
    message: Message
    # How many times this message has been handed out, this push included.
    attempt: int
    # What the push envelope carries: `attempt` with a dead-letter policy, else 0 (omitted).
    delivery_attempt: int
    timeout: float


@dataclass(frozen=True, slots=True)
class Settlement:
    """What became of a message after a push outcome or a nack."""

    kind: Literal["acked", "retry", "dead_lettered", "dropped", "ignored"]
    detail: str


def rfc3339(moment: datetime) -> str:
    """Format a UTC time the way Pub/Sub's JSON does: millisecond precision and a `Z`."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
