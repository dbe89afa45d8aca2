"""The topology file (`infra/pubsub.yaml`), shared with Terraform, turned into resources."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devstack.pubsub_emulator.errors import TopologyError
from devstack.pubsub_emulator.model import (
    DEFAULT_ACK_DEADLINE,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_DELIVERY_ATTEMPTS,
    DEFAULT_MIN_BACKOFF,
    DEFAULT_RETENTION,
    MAX_ACK_DEADLINE,
    MAX_DELIVERY_ATTEMPTS,
    MAX_RETENTION,
    MIN_DELIVERY_ATTEMPTS,
    MIN_RETENTION,
    DeadLetterPolicy,
    PushConfig,
    RetryPolicy,
    SubscriptionSettings,
    TopicSettings,
)
from devstack.pubsub_emulator.names import subscription_name, topic_name

log = logging.getLogger(__name__)

# The repository's own topology, found from this package so any working directory works.
DEFAULT_TOPOLOGY_PATH = Path(__file__).resolve().parents[2] / "infra" / "pubsub.yaml"

_DURATION = re.compile(r"(?P<seconds>\d+(?:\.\d{1,9})?)s")
_TOPIC_KEYS = frozenset({"message_retention", "labels"})
_SUBSCRIPTION_KEYS = frozenset(
    {
        "topic",
        "push_endpoint",
        "ack_deadline_seconds",
        "retry_policy",
        "dead_letter_policy",
        "message_retention",
        "labels",
    }
)
_RETRY_KEYS = frozenset({"minimum_backoff", "maximum_backoff"})
_DEAD_LETTER_KEYS = frozenset({"dead_letter_topic", "max_delivery_attempts"})


def parse_duration(value: object, where: str) -> float:
    """Parse a protobuf-JSON duration such as `10s` or `3.5s` (a bare number means seconds)."""
    if isinstance(value, bool):
        raise TopologyError(f"{where}: expected a duration like '10s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match["seconds"])
    else:
        raise TopologyError(f"{where}: expected a duration like '10s', got {value!r}")
    if seconds < 0:
        raise TopologyError(f"{where}: a duration cannot be negative")
    return seconds


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic as the file declares it."""

    id: str
    message_retention: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """A subscription as the file declares it; `push_endpoint` is a function name or a URL."""

    id: str
    topic: str
    push_endpoint: str | None = None
    ack_deadline_seconds: int = DEFAULT_ACK_DEADLINE
    retry_policy: RetryPolicy | None = None
    dead_letter_topic: str | None = None
    max_delivery_attempts: int = DEFAULT_MAX_DELIVERY_ATTEMPTS
    message_retention: float = DEFAULT_RETENTION
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Topology:
    """Topics and subscriptions to create at startup."""

    topics: tuple[TopicSpec, ...] = ()
    subscriptions: tuple[SubscriptionSpec, ...] = ()

    @classmethod
    def load(cls, path: Path | str) -> Topology:
        """Read and validate a topology YAML file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TopologyError(f"cannot read topology file {path}: {exc}") from exc
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, source: str = "<topology>") -> Topology:
        """Validate topology YAML text."""
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TopologyError(f"{source}: invalid YAML: {exc}") from exc
        return cls.from_mapping(document or {}, source=source)

    @classmethod
    def from_mapping(cls, document: object, source: str = "<topology>") -> Topology:
        """Validate an already decoded topology document."""
        root = _mapping(document, source)
        _warn_unknown(root, frozenset({"topics", "subscriptions"}), source)
        topics = tuple(
            _topic(topic_id, body, f"{source}: topics.{topic_id}")
            for topic_id, body in _mapping(root.get("topics") or {}, f"{source}: topics").items()
        )
        subscriptions = tuple(
            _subscription(sub_id, body, f"{source}: subscriptions.{sub_id}")
            for sub_id, body in _mapping(
                root.get("subscriptions") or {}, f"{source}: subscriptions"
            ).items()
        )
        declared = {topic.id for topic in topics}
        for sub in subscriptions:
            for needed in (sub.topic, sub.dead_letter_topic):
                if needed is not None and needed not in declared:
                    raise TopologyError(
                        f"{source}: subscription {sub.id!r} refers to undeclared topic {needed!r}"
                    )
        return cls(topics=topics, subscriptions=subscriptions)

    def endpoint_names(self) -> set[str]:
        """Function names the push subscriptions need resolved to URLs."""
        return {
            sub.push_endpoint
            for sub in self.subscriptions
            if sub.push_endpoint is not None and not _is_url(sub.push_endpoint)
        }

    def resolve(
        self,
        project: str,
        endpoints: Mapping[str, str],
        *,
        service_account_email: str,
    ) -> tuple[list[TopicSettings], list[SubscriptionSettings]]:
        """Build full resource settings, resolving push function names through `endpoints`."""
        missing = sorted(self.endpoint_names() - endpoints.keys())
        if missing:
            flags = " ".join(f"--endpoint {name}=URL" for name in missing)
            raise TopologyError(
                f"push endpoints without a URL: {', '.join(missing)} (pass {flags})"
            )
        topics = [
            TopicSettings(
                name=topic_name(project, topic.id),
                labels=dict(topic.labels),
                message_retention=topic.message_retention,
            )
            for topic in self.topics
        ]
        subscriptions = []
        for sub in self.subscriptions:
            push = None
            if sub.push_endpoint is not None:
                url = sub.push_endpoint
                push = PushConfig(
                    endpoint=url if _is_url(url) else endpoints[url],
                    service_account_email=service_account_email,
                )
            dead_letter = None
            if sub.dead_letter_topic is not None:
                dead_letter = DeadLetterPolicy(
                    dead_letter_topic=topic_name(project, sub.dead_letter_topic),
                    max_delivery_attempts=sub.max_delivery_attempts,
                )
            subscriptions.append(
                SubscriptionSettings(
                    name=subscription_name(project, sub.id),
                    topic=topic_name(project, sub.topic),
                    push=push,
                    ack_deadline_seconds=sub.ack_deadline_seconds,
                    retry_policy=sub.retry_policy,
                    dead_letter_policy=dead_letter,
                    message_retention=sub.message_retention,
                    labels=dict(sub.labels),
                )
            )
        return topics, subscriptions


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise TopologyError(f"{where}: expected a mapping with string keys")
    return value


def _warn_unknown(body: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    # Warn rather than fail: Terraform reads the same file and may grow keys the emulator ignores.
    for key in sorted(body.keys() - known):
        log.warning("%s: key %r is not emulated and is ignored", where, key)


def _labels(value: object, where: str) -> dict[str, str]:
    labels = _mapping(value or {}, where)
    return {key: str(item) for key, item in labels.items()}


def _retention(value: object, where: str) -> float:
    seconds = parse_duration(value, where)
    if not MIN_RETENTION <= seconds <= MAX_RETENTION:
        raise TopologyError(
            f"{where}: must be between {MIN_RETENTION:.0f}s and {MAX_RETENTION:.0f}s"
        )
    return seconds


def _int(value: object, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TopologyError(f"{where}: expected an integer between {low} and {high}, got {value!r}")
    return value


def _topic(topic_id: str, body: object, where: str) -> TopicSpec:
    fields = _mapping(body or {}, where)
    _warn_unknown(fields, _TOPIC_KEYS, where)
    retention = fields.get("message_retention")
    return TopicSpec(
        id=topic_id,
        message_retention=None
        if retention is None
        else _retention(retention, f"{where}.message_retention"),
        labels=_labels(fields.get("labels"), f"{where}.labels"),
    )


def _subscription(sub_id: str, body: object, where: str) -> SubscriptionSpec:
    fields = _mapping(body, where)
    _warn_unknown(fields, _SUBSCRIPTION_KEYS, where)
    topic = fields.get("topic")
    if not isinstance(topic, str) or not topic:
        raise TopologyError(f"{where}.topic: required, the name of a declared topic")
    push_endpoint = fields.get("push_endpoint")
    if push_endpoint is not None and (not isinstance(push_endpoint, str) or not push_endpoint):
        raise TopologyError(f"{where}.push_endpoint: expected a function name or a URL")

    ack_deadline = fields.get("ack_deadline_seconds", DEFAULT_ACK_DEADLINE)
    # 0 means "the default" in the API, as in Terraform.
    ack_deadline = _int(ack_deadline, f"{where}.ack_deadline_seconds", 0, MAX_ACK_DEADLINE)
    if ack_deadline == 0:
        ack_deadline = DEFAULT_ACK_DEADLINE
    elif ack_deadline < DEFAULT_ACK_DEADLINE:
        raise TopologyError(
            f"{where}.ack_deadline_seconds: Pub/Sub accepts 10 to 600 "
            "(shorten it in tests with --ack-deadline-scale instead)"
        )

    retry_policy = None
    if (retry := fields.get("retry_policy")) is not None:
        retry_policy = _retry_policy(retry, f"{where}.retry_policy")

    dead_letter_topic = None
    max_attempts = DEFAULT_MAX_DELIVERY_ATTEMPTS
    if (dead_letter := fields.get("dead_letter_policy")) is not None:
        policy = _mapping(dead_letter, f"{where}.dead_letter_policy")
        _warn_unknown(policy, _DEAD_LETTER_KEYS, f"{where}.dead_letter_policy")
        dead_letter_topic = policy.get("dead_letter_topic")
        if not isinstance(dead_letter_topic, str) or not dead_letter_topic:
            raise TopologyError(f"{where}.dead_letter_policy.dead_letter_topic: required")
        max_attempts = _int(
            policy.get("max_delivery_attempts", DEFAULT_MAX_DELIVERY_ATTEMPTS),
            f"{where}.dead_letter_policy.max_delivery_attempts",
            0,
            MAX_DELIVERY_ATTEMPTS,
        )
        if max_attempts == 0:
            max_attempts = DEFAULT_MAX_DELIVERY_ATTEMPTS
        elif max_attempts < MIN_DELIVERY_ATTEMPTS:
            raise TopologyError(
                f"{where}.dead_letter_policy.max_delivery_attempts: Pub/Sub accepts 5 to 100"
            )

    retention = fields.get("message_retention")
    return SubscriptionSpec(
        id=sub_id,
        topic=topic,
        push_endpoint=push_endpoint,
        ack_deadline_seconds=ack_deadline,
        retry_policy=retry_policy,
        dead_letter_topic=dead_letter_topic,
        max_delivery_attempts=max_attempts,
        message_retention=DEFAULT_RETENTION
        if retention is None
        else _retention(retention, f"{where}.message_retention"),
        labels=_labels(fields.get("labels"), f"{where}.labels"),
    )


def _retry_policy(body: object, where: str) -> RetryPolicy:
    fields = _mapping(body or {}, where)
    _warn_unknown(fields, _RETRY_KEYS, where)
    minimum = parse_duration(
        fields.get("minimum_backoff", DEFAULT_MIN_BACKOFF), f"{where}.minimum_backoff"
    )
    maximum = parse_duration(
        fields.get("maximum_backoff", DEFAULT_MAX_BACKOFF), f"{where}.maximum_backoff"
    )
    if not minimum <= maximum <= DEFAULT_MAX_BACKOFF:
        raise TopologyError(f"{where}: need minimum_backoff <= maximum_backoff <= 600s")
    return RetryPolicy(minimum_backoff=minimum, maximum_backoff=maximum)
