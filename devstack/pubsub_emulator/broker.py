"""In-memory Pub/Sub state: topics, subscriptions and the delivery bookkeeping of every message."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from devstack.pubsub_emulator.errors import (
    AlreadyExists,
    InjectedFault,
    InvalidArgument,
    NotFound,
    OutOfRange,
)
from devstack.pubsub_emulator.faults import FaultInjector
from devstack.pubsub_emulator.model import (
    DEFAULT_ACK_DEADLINE,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_DELIVERY_ATTEMPTS,
    MAX_ACK_DEADLINE,
    MAX_DELIVERY_ATTEMPTS,
    MAX_RETENTION,
    MIN_DELIVERY_ATTEMPTS,
    MIN_RETENTION,
    Message,
    OutgoingMessage,
    PushConfig,
    PushTask,
    ReceivedMessage,
    Settlement,
    SubscriptionSettings,
    TopicSettings,
    rfc3339,
)
from devstack.pubsub_emulator.names import (
    DELETED_TOPIC,
    parse_project,
    parse_subscription,
    parse_topic,
)

log = logging.getLogger(__name__)

# Without a retry policy Pub/Sub redelivers "immediately"; a short pause keeps a failing
# endpoint from being hammered in a tight loop.
NO_RETRY_POLICY_DELAY = 0.1
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024


@dataclass(eq=False, slots=True)
class _Delivery:
    """One message in one subscription."""

    message: Message
    expires_at: float
    attempts: int = 0
    ack_id: str = ""
    deadline: float = 0.0
    # Its key in the ready queue when last queued: (available_at, tie-breaker).
    queued: tuple[float, int] = (0.0, 0)


class _Subscription:
    """A subscription's settings and queues; only touched with the broker's lock held."""

    __slots__ = ("deadlines", "outstanding", "pushing", "ready", "settings")

    def __init__(self, settings: SubscriptionSettings) -> None:
        self.settings = settings
        # (available_at, tie-breaker, delivery): what may be delivered once its time has come.
        self.ready: list[tuple[float, int, _Delivery]] = []
        # ack id -> delivery handed out and not yet acked, nacked or expired.
        self.outstanding: dict[str, _Delivery] = {}
        # (deadline, ack id) with stale entries skipped lazily, so extending a deadline is O(log n).
        self.deadlines: list[tuple[float, str]] = []
        # Ack ids of push requests still on the wire; bounds the concurrency per subscription.
        self.pushing: set[str] = set()

    def attempt_for_api(self, delivery: _Delivery) -> int:
        """The `delivery_attempt` clients see: only counted with a dead-letter policy."""
        return delivery.attempts if self.settings.dead_letter_policy is not None else 0


class Broker:
    """Thread-safe topics and subscriptions with Pub/Sub's delivery semantics."""

    def __init__(
        self,
        faults: FaultInjector,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._faults = faults
        self._clock = clock
        self._cond = threading.Condition()
        self._topics: dict[str, TopicSettings] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._topic_subscriptions: dict[str, set[str]] = {}
        self._order = itertools.count()
        self._ack_ids = itertools.count(1)
        # Numeric ids like Google's, starting from the clock so a restarted emulator never
        # reuses one: consumers may deduplicate on messageId.
        self._message_ids = itertools.count(time.time_ns() // 1000)
        self._closed = False
        # Bumped on every change, so the dispatcher cannot miss one between looking and waiting.
        self._version = 0
        self._stats: Counter[str] = Counter()

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Wake every waiter so blocked Pull and StreamingPull calls return."""
        with self._cond:
            self._closed = True
            self._changed()

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    # -- topics ---------------------------------------------------------------------------

    def create_topic(self, settings: TopicSettings) -> TopicSettings:
        """Create a topic."""
        parse_topic(settings.name)
        if settings.message_retention is not None:
            _check_retention(settings.message_retention)
        with self._cond:
            if settings.name in self._topics:
                raise AlreadyExists("Topic already exists")
            self._topics[settings.name] = settings
            self._topic_subscriptions[settings.name] = set()
        return settings

    def get_topic(self, name: str) -> TopicSettings:
        """Return a topic."""
        parse_topic(name)
        with self._cond:
            return self._topic(name)

    def list_topics(
        self, project: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[TopicSettings], str]:
        """Return a page of the project's topics and the next page token."""
        prefix = f"projects/{parse_project(project)}/topics/"
        with self._cond:
            names, token = _page(
                (name for name in self._topics if name.startswith(prefix)), page_size, page_token
            )
            return [self._topics[name] for name in names], token

    def delete_topic(self, name: str) -> None:
        """Delete a topic; its subscriptions live on, detached, as in Pub/Sub."""
        parse_topic(name)
        with self._cond:
            self._topic(name)
            del self._topics[name]
            for sub_name in self._topic_subscriptions.pop(name):
                sub = self._subscriptions[sub_name]
                sub.settings = replace(sub.settings, topic=DELETED_TOPIC)

    def list_topic_subscriptions(
        self, topic: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[str], str]:
        """Return a page of the names of a topic's subscriptions and the next page token."""
        parse_topic(topic)
        with self._cond:
            self._topic(topic)
            return _page(self._topic_subscriptions[topic], page_size, page_token)

    def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Store messages for every current subscription of the topic; return their ids."""
        parse_topic(topic)
        if not messages:
            raise InvalidArgument("The request must contain at least one message.")
        for message in messages:
            _check_message(message)
        with self._cond:
            self._topic(topic)
            if self._faults.fail_publish():
                raise InjectedFault(
                    "Publish failed on purpose (--publish-failure-rate)",
                    self._faults.config.publish_failure_code,
                )
            ids = self._publish_locked(topic, messages, self._clock())
            self._changed()
            return ids

    # -- subscriptions --------------------------------------------------------------------

    def create_subscription(self, settings: SubscriptionSettings) -> SubscriptionSettings:
        """Create a subscription; it receives only messages published from now on."""
        settings = _normalized(settings)
        with self._cond:
            if settings.name in self._subscriptions:
                raise AlreadyExists("Subscription already exists")
            self._topic(settings.topic)
            if settings.dead_letter_policy is not None:
                self._topic(settings.dead_letter_policy.dead_letter_topic)
            self._subscriptions[settings.name] = _Subscription(settings)
            self._topic_subscriptions[settings.topic].add(settings.name)
            self._changed()
        return settings

    def get_subscription(self, name: str) -> SubscriptionSettings:
        """Return a subscription's settings."""
        parse_subscription(name)
        with self._cond:
            return self._subscription(name).settings

    def list_subscriptions(
        self, project: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[SubscriptionSettings], str]:
        """Return a page of the project's subscriptions and the next page token."""
        prefix = f"projects/{parse_project(project)}/subscriptions/"
        with self._cond:
            names, token = _page(
                (name for name in self._subscriptions if name.startswith(prefix)),
                page_size,
                page_token,
            )
            return [self._subscriptions[name].settings for name in names], token

    def delete_subscription(self, name: str) -> None:
        """Delete a subscription and its backlog; in-flight pushes are then ignored."""
        parse_subscription(name)
        with self._cond:
            sub = self._subscription(name)
            del self._subscriptions[name]
            self._topic_subscriptions.get(sub.settings.topic, set()).discard(name)
            self._changed()

    def modify_push_config(self, name: str, push: PushConfig | None) -> None:
        """Switch a subscription between push and pull, or change its endpoint."""
        parse_subscription(name)
        _check_push(push)
        with self._cond:
            sub = self._subscription(name)
            sub.settings = replace(sub.settings, push=push)
            self._changed()

    def pull(
        self,
        name: str,
        max_messages: int,
        *,
        wait: float = 0.0,
        ack_deadline: float | None = None,
    ) -> list[ReceivedMessage]:
        """Hand out up to `max_messages` available messages, waiting up to `wait` s for one."""
        parse_subscription(name)
        if max_messages <= 0:
            raise InvalidArgument("max_messages must be greater than 0")
        with self._cond:
            end = self._clock() + wait
            while True:
                sub = self._subscription(name)
                now = self._clock()
                self._expire_locked(now)
                taken = self._take_locked(sub, max_messages, now, ack_deadline)
                if taken:
                    self._changed()  # new deadlines: the dispatcher must schedule their expiry
                if taken or now >= end or self._closed:
                    return [
                        ReceivedMessage(d.ack_id, d.message, sub.attempt_for_api(d)) for d in taken
                    ]
                timeout = end - now
                for queue in (sub.ready, sub.deadlines):
                    if queue:
                        timeout = min(timeout, max(queue[0][0] - now, 0.001))
                self._cond.wait(timeout)

    def acknowledge(self, name: str, ack_ids: Sequence[str]) -> None:
        """Acknowledge; stale ack ids are ignored as Pub/Sub does, ones never handed out refused."""
        parse_subscription(name)
        _check_ack_ids(name, ack_ids)
        with self._cond:
            sub = self._subscription(name)
            for ack_id in ack_ids:
                if sub.outstanding.pop(ack_id, None) is not None:
                    self._stats["acked"] += 1

    def modify_ack_deadline(self, name: str, ack_ids: Sequence[str], seconds: int) -> None:
        """Extend deadlines; 0 nacks now (redelivery follows the retry policy)."""
        parse_subscription(name)
        _check_ack_ids(name, ack_ids)
        if not 0 <= seconds <= MAX_ACK_DEADLINE:
            raise InvalidArgument(f"ack_deadline_seconds must be between 0 and {MAX_ACK_DEADLINE}")
        with self._cond:
            sub = self._subscription(name)
            now = self._clock()
            for ack_id in ack_ids:
                delivery = sub.outstanding.get(ack_id)
                if delivery is None:
                    continue
                if seconds == 0:
                    del sub.outstanding[ack_id]
                    self._stats["nacked"] += 1
                    self._fail_locked(sub, delivery, now, "nacked")
                else:
                    # Explicit deadlines are honoured as sent: the streaming client's lease
                    # management would fight a scaled value.
                    delivery.deadline = now + seconds
                    heapq.heappush(sub.deadlines, (delivery.deadline, ack_id))
            self._changed()

    def backlog(self, name: str) -> int:
        """Messages not yet acknowledged (waiting, or handed out); for tests and diagnostics."""
        with self._cond:
            sub = self._subscription(name)
            return len(sub.ready) + len(sub.outstanding)

    def stats(self) -> dict[str, int]:
        """Counters of what happened to messages so far."""
        with self._cond:
            return dict(self._stats)

    # -- push -----------------------------------------------------------------------------

    def due_pushes(self, max_in_flight: int) -> tuple[list[PushTask], float | None, int]:
        """Expire deadlines and take due push deliveries.

        Returns the tasks, the seconds until something else falls due (None: nothing
        scheduled) and the state version to pass to `wait_for_change`.
        """
        with self._cond:
            now = self._clock()
            self._expire_locked(now)
            tasks: list[PushTask] = []
            wake: float | None = None
            for sub in self._subscriptions.values():
                push = sub.settings.push
                if sub.deadlines:
                    wake = _earliest(wake, sub.deadlines[0][0])
                if push is None:
                    continue
                room = max_in_flight - len(sub.pushing)
                if room <= 0:
                    continue  # finish_push wakes the dispatcher when a slot frees up
                for delivery in self._take_locked(sub, room, now, None):
                    sub.pushing.add(delivery.ack_id)
                    tasks.append(
                        PushTask(
                            subscription=sub.settings.name,
                            push=push,
                            ack_id=delivery.ack_id,
                            message=delivery.message,
                            attempt=delivery.attempts,
                            delivery_attempt=sub.attempt_for_api(delivery),
                            timeout=delivery.deadline - now,
                        )
                    )
                    wake = _earliest(wake, delivery.deadline)
                if sub.ready and len(sub.pushing) < max_in_flight:
                    wake = _earliest(wake, sub.ready[0][0])
            return tasks, None if wake is None else max(wake - now, 0.0), self._version

    def finish_push(self, task: PushTask, acked: bool) -> Settlement:
        """Record a push outcome and say what became of the message."""
        with self._cond:
            sub = self._subscriptions.get(task.subscription)
            if sub is None or task.ack_id not in sub.pushing:
                return Settlement("ignored", "subscription deleted")
            sub.pushing.discard(task.ack_id)
            self._changed()
            delivery = sub.outstanding.pop(task.ack_id, None)
            if delivery is None:
                return Settlement("ignored", "ack deadline had passed, already redelivered")
            if acked:
                self._stats["acked"] += 1
                return Settlement("acked", "acked")
            self._stats["nacked"] += 1
            return self._fail_locked(sub, delivery, self._clock(), "nacked")

    def wait_for_change(self, version: int, timeout: float) -> None:
        """Block until the state moves past `version` or `timeout` s pass."""
        with self._cond:
            if not self._closed and self._version == version:
                self._cond.wait(timeout)

    # -- internals (lock held) ------------------------------------------------------------

    def _changed(self) -> None:
        self._version += 1
        self._cond.notify_all()

    def _topic(self, name: str) -> TopicSettings:
        topic = self._topics.get(name)
        if topic is None:
            raise NotFound(f"Topic not found: {name}")
        return topic

    def _subscription(self, name: str) -> _Subscription:
        sub = self._subscriptions.get(name)
        if sub is None:
            raise NotFound(f"Subscription does not exist: {name}")
        return sub

    def _publish_locked(
        self, topic: str, messages: Sequence[OutgoingMessage], now: float
    ) -> list[str]:
        published = datetime.now(UTC)
        # Millisecond precision, as Pub/Sub's own publish times have in push requests.
        published = published.replace(microsecond=published.microsecond // 1000 * 1000)
        subscriptions = [self._subscriptions[name] for name in self._topic_subscriptions[topic]]
        ids = []
        for outgoing in messages:
            message = Message(
                message_id=str(next(self._message_ids)),
                data=outgoing.data,
                attributes=dict(outgoing.attributes),
                publish_time=published,
                ordering_key=outgoing.ordering_key,
            )
            ids.append(message.message_id)
            self._stats["published"] += 1
            for sub in subscriptions:
                delay = self._faults.first_delivery_delay() if sub.settings.push else 0.0
                delivery = _Delivery(message, expires_at=now + sub.settings.message_retention)
                self._queue_locked(sub, delivery, now + delay)
        return ids

    def _take_locked(
        self, sub: _Subscription, limit: int, now: float, ack_deadline: float | None
    ) -> list[_Delivery]:
        if ack_deadline is None:
            ack_deadline = self._faults.scale_ack_deadline(sub.settings.ack_deadline_seconds)
        taken: list[_Delivery] = []
        while sub.ready and len(taken) < limit and sub.ready[0][0] <= now:
            _, _, delivery = heapq.heappop(sub.ready)
            if delivery.expires_at <= now:
                log.info(
                    "%s: message %s dropped, past the retention period",
                    sub.settings.name,
                    delivery.message.message_id,
                )
                continue
            delivery.attempts += 1
            delivery.ack_id = f"{sub.settings.name.rsplit('/', 1)[-1]}:{next(self._ack_ids)}"
            delivery.deadline = now + ack_deadline
            sub.outstanding[delivery.ack_id] = delivery
            heapq.heappush(sub.deadlines, (delivery.deadline, delivery.ack_id))
            taken.append(delivery)
            self._stats["delivered"] += 1
        return taken

    def _expire_locked(self, now: float) -> None:
        for sub in self._subscriptions.values():
            while sub.deadlines and sub.deadlines[0][0] <= now:
                deadline, ack_id = heapq.heappop(sub.deadlines)
                delivery = sub.outstanding.get(ack_id)
                if delivery is None or delivery.deadline != deadline:
                    continue  # acked, nacked, or extended since
                del sub.outstanding[ack_id]
                self._stats["expired"] += 1
                outcome = self._fail_locked(
                    sub, delivery, now, "ack deadline exceeded", keep_place=True
                )
                log.info(
                    "%s msg=%s attempt=%d: %s",
                    sub.settings.name.rsplit("/", 1)[-1],
                    delivery.message.message_id,
                    delivery.attempts,
                    outcome.detail,
                )

    def _queue_locked(self, sub: _Subscription, delivery: _Delivery, available_at: float) -> None:
        delivery.queued = (available_at, next(self._order))
        heapq.heappush(sub.ready, (*delivery.queued, delivery))

    def _fail_locked(
        self,
        sub: _Subscription,
        delivery: _Delivery,
        now: float,
        why: str,
        *,
        keep_place: bool = False,
    ) -> Settlement:
        """Redeliver after the backoff, or dead-letter once the attempts are used up.

        Without a retry policy an expired message (`keep_place`) is due again at once, in its
        old place in the queue, and a nacked one goes to the back: Google's emulator does so.
        """
        delivery.ack_id = ""
        policy = sub.settings.dead_letter_policy
        if policy is not None and delivery.attempts >= policy.max_delivery_attempts:
            settlement = self._dead_letter_locked(sub, delivery, now)
            return Settlement(settlement.kind, f"{why}; {settlement.detail}")
        if sub.settings.retry_policy is None and keep_place:
            heapq.heappush(sub.ready, (*delivery.queued, delivery))
            self._changed()
            return Settlement("retry", f"{why}; due again at once")
        if sub.settings.retry_policy is None:
            delay = NO_RETRY_POLICY_DELAY
        else:
            delay = self._faults.scale_backoff(sub.settings.retry_policy.backoff(delivery.attempts))
        self._queue_locked(sub, delivery, now + delay)
        self._changed()
        return Settlement("retry", f"{why}; retry in {delay:.3g}s")

    def _dead_letter_locked(
        self, sub: _Subscription, delivery: _Delivery, now: float
    ) -> Settlement:
        policy = sub.settings.dead_letter_policy
        assert policy is not None
        target = policy.dead_letter_topic
        if target not in self._topics:
            # Pub/Sub loses the message too when it cannot publish to the dead-letter topic.
            self._stats["dropped"] += 1
            return Settlement("dropped", f"dropped: dead-letter topic {target} does not exist")
        project, sub_id = parse_subscription(sub.settings.name)
        message = delivery.message
        attributes = {
            **message.attributes,
            "CloudPubSubDeadLetterSourceDeliveryCount": str(delivery.attempts),
            "CloudPubSubDeadLetterSourceSubscription": sub_id,
            "CloudPubSubDeadLetterSourceSubscriptionProject": project,
            "CloudPubSubDeadLetterSourceTopicPublishTime": rfc3339(message.publish_time),
        }
        outgoing = OutgoingMessage(message.data, attributes, message.ordering_key)
        (new_id,) = self._publish_locked(target, [outgoing], now)
        self._stats["dead_lettered"] += 1
        self._changed()
        return Settlement("dead_lettered", f"dead-lettered to {target} as message {new_id}")


def _earliest(current: float | None, candidate: float) -> float:
    return candidate if current is None else min(current, candidate)


def _page(names: Iterable[str], page_size: int, page_token: str) -> tuple[list[str], str]:
    """Sort names and cut a page after `page_token`; the token is the last name returned."""
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative")
    ordered = sorted(name for name in names if name > page_token)
    if page_size == 0 or len(ordered) <= page_size:
        return ordered, ""
    page = ordered[:page_size]
    return page, page[-1]


def _check_ack_ids(subscription: str, ack_ids: Sequence[str]) -> None:
    """Refuse ack ids this subscription never handed out, as Google's emulator does.

    Well-formed ones that are stale (acked, expired, from before a restart) are ignored.
    """
    if not ack_ids:
        raise InvalidArgument("ack_ids must not be empty")
    own_id = subscription.rsplit("/", 1)[-1]
    for ack_id in ack_ids:
        sub_id, _, number = ack_id.rpartition(":")
        if sub_id != own_id or not number.isdigit():
            raise InvalidArgument(f"Subscription {subscription} received an invalid ack id")


def _check_retention(seconds: float) -> None:
    if not MIN_RETENTION <= seconds <= MAX_RETENTION:
        raise InvalidArgument(
            f"message_retention_duration must be between {MIN_RETENTION:.0f}s and "
            f"{MAX_RETENTION:.0f}s"
        )


def _check_message(message: OutgoingMessage) -> None:
    if not message.data and not message.attributes:
        raise InvalidArgument(
            "Some messages in the publish request are empty. Each message must contain a "
            "non-empty data field, or at least one attribute."
        )
    if len(message.data) > MAX_MESSAGE_BYTES:
        raise InvalidArgument("A message is larger than the 10 MB limit.")
    if len(message.attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"A message has more than {MAX_ATTRIBUTES} attributes.")
    for key, value in message.attributes.items():
        if not key or len(key.encode()) > MAX_ATTRIBUTE_KEY_BYTES:
            raise InvalidArgument(f"Invalid attribute key: {key!r}")
        if key.lower().startswith("goog"):
            raise InvalidArgument(f"Attribute keys starting with 'goog' are reserved: {key!r}")
        if len(value.encode()) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise InvalidArgument(f"The value of attribute {key!r} is too long.")


def _check_push(push: PushConfig | None) -> None:
    if push is not None and not push.endpoint.startswith(("http://", "https://")):
        raise InvalidArgument(f"Invalid push endpoint: {push.endpoint!r}")


def _normalized(settings: SubscriptionSettings) -> SubscriptionSettings:
    """Validate a subscription the way the API does and fill in its defaults."""
    parse_subscription(settings.name)
    parse_topic(settings.topic)
    ack_deadline = settings.ack_deadline_seconds or DEFAULT_ACK_DEADLINE
    if not DEFAULT_ACK_DEADLINE <= ack_deadline <= MAX_ACK_DEADLINE:
        raise InvalidArgument(
            f"ack_deadline_seconds must be between {DEFAULT_ACK_DEADLINE} and {MAX_ACK_DEADLINE}"
        )
    _check_push(settings.push)
    retry = settings.retry_policy
    if retry is not None and not (
        0 <= retry.minimum_backoff <= retry.maximum_backoff <= DEFAULT_MAX_BACKOFF
    ):
        raise InvalidArgument("retry_policy needs 0 <= minimum_backoff <= maximum_backoff <= 600s")
    dead_letter = settings.dead_letter_policy
    if dead_letter is not None:
        parse_topic(dead_letter.dead_letter_topic)
        attempts = dead_letter.max_delivery_attempts or DEFAULT_MAX_DELIVERY_ATTEMPTS
        # Google's status and wording for this bound.
        if attempts < MIN_DELIVERY_ATTEMPTS:
            raise OutOfRange(
                f"The value for max_delivery_attempts is too small. You passed {attempts} in "
                f"the request, but the minimum value is {MIN_DELIVERY_ATTEMPTS}."
            )
        if attempts > MAX_DELIVERY_ATTEMPTS:
            raise OutOfRange(
                f"The value for max_delivery_attempts is too large. You passed {attempts} in "
                f"the request, but the maximum value is {MAX_DELIVERY_ATTEMPTS}."
            )
        dead_letter = replace(dead_letter, max_delivery_attempts=attempts)
    _check_retention(settings.message_retention)
    return replace(settings, ack_deadline_seconds=ack_deadline, dead_letter_policy=dead_letter)
