"""Pub/Sub resource names: building, parsing and validating them as the real service does."""

from __future__ import annotations

import re

from devstack.pubsub_emulator.errors import InvalidArgument

# Google's rule for topic and subscription IDs: 3-255 chars, a letter first, no `goog` prefix.
_RESOURCE_ID = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
_TOPIC = re.compile(r"projects/(?P<project>[^/]+)/topics/(?P<id>[^/]+)")
_SUBSCRIPTION = re.compile(r"projects/(?P<project>[^/]+)/subscriptions/(?P<id>[^/]+)")
_PROJECT = re.compile(r"projects/(?P<project>[^/]+)")

# What Google reports as a subscription's topic once that topic has been deleted.
DELETED_TOPIC = "_deleted-topic_"


def topic_name(project: str, topic_id: str) -> str:
    """Return `projects/{project}/topics/{topic_id}`."""
    return f"projects/{project}/topics/{topic_id}"


def subscription_name(project: str, subscription_id: str) -> str:
    """Return `projects/{project}/subscriptions/{subscription_id}`."""
    return f"projects/{project}/subscriptions/{subscription_id}"


def _check_id(kind: str, resource_id: str, name: str) -> None:
    if not _RESOURCE_ID.fullmatch(resource_id) or resource_id.lower().startswith("goog"):
        raise InvalidArgument(f"Invalid [{kind}] name: ({name})")


def parse_topic(name: str) -> tuple[str, str]:
    """Split a full topic name into (project, topic id), or raise InvalidArgument."""
    match = _TOPIC.fullmatch(name)
    if match is None:
        raise InvalidArgument(f"Invalid [topics] name: ({name})")
    _check_id("topics", match["id"], name)
    return match["project"], match["id"]


def parse_subscription(name: str) -> tuple[str, str]:
    """Split a full subscription name into (project, subscription id), or raise InvalidArgument."""
    match = _SUBSCRIPTION.fullmatch(name)
    if match is None:
        raise InvalidArgument(f"Invalid [subscriptions] name: ({name})")
    _check_id("subscriptions", match["id"], name)
    return match["project"], match["id"]


def parse_project(name: str) -> str:
    """Return the project of `projects/{project}`, or raise InvalidArgument."""
    match = _PROJECT.fullmatch(name)
    if match is None:
        raise InvalidArgument(f"Invalid [projects] name: ({name})")
    return match["project"]
