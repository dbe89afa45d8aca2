"""Conversions between the Pub/Sub v1 protobuf messages and the emulator's value types."""

from __future__ import annotations

from typing import Any

from google.pubsub_v1 import types

from devstack.pubsub_emulator.errors import Unimplemented
from devstack.pubsub_emulator.model import (
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MIN_BACKOFF,
    DEFAULT_RETENTION,
    DeadLetterPolicy,
    OutgoingMessage,
    PushConfig,
    ReceivedMessage,
    RetryPolicy,
    SubscriptionSettings,
    TopicSettings,
)

# The raw protobuf classes behind the proto-plus wrappers: the gRPC layer serializes them
# directly, which skips proto-plus's marshalling on every call.
TopicPb: Any = types.Topic.pb()
SubscriptionPb: Any = types.Subscription.pb()
PushConfigPb: Any = types.PushConfig.pb()
PubsubMessagePb: Any = types.PubsubMessage.pb()
ReceivedMessagePb: Any = types.ReceivedMessage.pb()

_ACTIVE = 1  # Topic.State.ACTIVE and Subscription.State.ACTIVE


def _seconds(duration: Any) -> float:
    return float(duration.seconds + duration.nanos / 1e9)


def _set_seconds(duration: Any, seconds: float) -> None:
    whole = int(seconds)
    duration.seconds = whole
    duration.nanos = round((seconds - whole) * 1e9)


def topic_from_pb(pb: Any) -> TopicSettings:
    """Read a Topic from a CreateTopic request."""
    retention = None
    if pb.HasField("message_retention_duration"):
        retention = _seconds(pb.message_retention_duration)
    return TopicSettings(name=pb.name, labels=dict(pb.labels), message_retention=retention)


def topic_to_pb(topic: TopicSettings) -> Any:
    """Build a Topic response."""
    pb = TopicPb(name=topic.name, labels=dict(topic.labels), state=_ACTIVE)
    if topic.message_retention is not None:
        _set_seconds(pb.message_retention_duration, topic.message_retention)
    return pb


def push_config_from_pb(pb: Any) -> PushConfig | None:
    """Read a PushConfig; an empty one means pull delivery."""
    if not pb.push_endpoint:
        return None
    if pb.HasField("no_wrapper"):
        raise Unimplemented("Payload unwrapping (no_wrapper) is not emulated")
    return PushConfig(
        endpoint=pb.push_endpoint,
        audience=pb.oidc_token.audience,
        service_account_email=pb.oidc_token.service_account_email,
    )


def subscription_from_pb(pb: Any) -> SubscriptionSettings:
    """Read a Subscription from a CreateSubscription request, refusing what is not emulated."""
    unsupported = {
        "filter": bool(pb.filter),
        "enable_exactly_once_delivery": pb.enable_exactly_once_delivery,
        "enable_message_ordering": pb.enable_message_ordering,
        "retain_acked_messages": pb.retain_acked_messages,
        "bigquery_config": pb.HasField("bigquery_config"),
        "cloud_storage_config": pb.HasField("cloud_storage_config"),
        "bigtable_config": pb.HasField("bigtable_config"),
        "message_transforms": bool(pb.message_transforms),
    }
    refused = [name for name, present in unsupported.items() if present]
    if refused:
        raise Unimplemented(f"Not emulated: {', '.join(refused)}")
    retry = None
    if pb.HasField("retry_policy"):
        policy = pb.retry_policy
        retry = RetryPolicy(
            minimum_backoff=_seconds(policy.minimum_backoff)
            if policy.HasField("minimum_backoff")
            else DEFAULT_MIN_BACKOFF,
            maximum_backoff=_seconds(policy.maximum_backoff)
            if policy.HasField("maximum_backoff")
            else DEFAULT_MAX_BACKOFF,
        )
    dead_letter = None
    if pb.HasField("dead_letter_policy") and pb.dead_letter_policy.dead_letter_topic:
        dead_letter = DeadLetterPolicy(
            dead_letter_topic=pb.dead_letter_policy.dead_letter_topic,
            max_delivery_attempts=pb.dead_letter_policy.max_delivery_attempts,
        )
    return SubscriptionSettings(
        name=pb.name,
        topic=pb.topic,
        push=push_config_from_pb(pb.push_config),
        ack_deadline_seconds=pb.ack_deadline_seconds,
        retry_policy=retry,
        dead_letter_policy=dead_letter,
        message_retention=_seconds(pb.message_retention_duration)
        if pb.HasField("message_retention_duration")
        else DEFAULT_RETENTION,
        labels=dict(pb.labels),
    )


def subscription_to_pb(sub: SubscriptionSettings) -> Any:
    """Build a Subscription response."""
    pb = SubscriptionPb(
        name=sub.name,
        topic=sub.topic,
        ack_deadline_seconds=sub.ack_deadline_seconds,
        labels=dict(sub.labels),
        state=_ACTIVE,
    )
    _set_seconds(pb.message_retention_duration, sub.message_retention)
    if sub.push is not None:
        pb.push_config.push_endpoint = sub.push.endpoint
        pb.push_config.oidc_token.service_account_email = sub.push.service_account_email
        pb.push_config.oidc_token.audience = sub.push.audience
    if sub.retry_policy is not None:
        _set_seconds(pb.retry_policy.minimum_backoff, sub.retry_policy.minimum_backoff)
        _set_seconds(pb.retry_policy.maximum_backoff, sub.retry_policy.maximum_backoff)
    if sub.dead_letter_policy is not None:
        pb.dead_letter_policy.dead_letter_topic = sub.dead_letter_policy.dead_letter_topic
        pb.dead_letter_policy.max_delivery_attempts = sub.dead_letter_policy.max_delivery_attempts
    return pb


def message_from_pb(pb: Any) -> OutgoingMessage:
    """Read a message from a Publish request (ids and times set by a publisher are ignored)."""
    return OutgoingMessage(
        data=bytes(pb.data), attributes=dict(pb.attributes), ordering_key=pb.ordering_key
    )


def received_to_pb(received: ReceivedMessage) -> Any:
    """Build a ReceivedMessage for Pull and StreamingPull responses."""
    message = received.message
    pb = ReceivedMessagePb(
        ack_id=received.ack_id,
        delivery_attempt=received.delivery_attempt,
        message=PubsubMessagePb(
            data=message.data,
            attributes=dict(message.attributes),
            message_id=message.message_id,
            ordering_key=message.ordering_key,
        ),
    )
    pb.message.publish_time.FromDatetime(message.publish_time)
    return pb
