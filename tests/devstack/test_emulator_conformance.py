"""One Pub/Sub scenario set, run against this project's emulator and Google's, both as processes.

Every scenario drives the real google-cloud-pubsub client. Where the emulators differ, the
scenario asserts what each one does through `Emu.expect`; README.md ("The Pub/Sub emulator
against Google's") says why each difference is kept.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from unittest import mock

import jwt
import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.pubsub_v1 import ReceivedMessage

from devstack.pubsub_emulator.broker import NO_RETRY_POLICY_DELAY
from devstack.pubsub_emulator.server import PULL_WAIT_SECONDS
from tests.devstack.pubsub_processes import (
    GCLOUD_ABSENT,
    EmulatorStartError,
    Kind,
    find_gcloud,
    start_google,
    start_ours,
)

PROJECT = "conformance-project"
PUSH_ACCOUNT = "pusher@conformance-project.iam.gserviceaccount.com"
PUSH_AUDIENCE = "https://conformance.example/push"
T = TypeVar("T")


def rfc3339_millis(moment: datetime) -> str:
    """A publish time as Pub/Sub writes it in JSON and dead-letter attributes."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Emu:
    """One running emulator and real clients bound to it."""

    kind: Kind
    publisher: pubsub_v1.PublisherClient
    subscriber: pubsub_v1.SubscriberClient
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def expect(self, *, ours: T, google: T) -> T:
        """What this emulator does where the two differ (each difference is in the README)."""
        return ours if self.kind == "ours" else google

    def topic(self, label: str, **fields: Any) -> str:
        """Create a topic with a name no other scenario uses."""
        name = f"projects/{PROJECT}/topics/{label}-{next(self._ids)}"
        return str(self.publisher.create_topic(request={"name": name, **fields}).name)

    def subscription(self, label: str, topic: str, **fields: Any) -> str:
        """Create a subscription with a name no other scenario uses."""
        name = f"projects/{PROJECT}/subscriptions/{label}-{next(self._ids)}"
        request = {"name": name, "topic": topic, **fields}
        return str(self.subscriber.create_subscription(request=request).name)

    def publish(self, topic: str, data: bytes, **attributes: str) -> str:
        """Publish one message and return its id."""
        return str(self.publisher.publish(topic, data, **attributes).result(timeout=10))

    def pull(self, subscription: str, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Pull until `count` messages arrived, in arrival order; fail after `timeout` s."""
        received: list[ReceivedMessage] = []
        end = time.monotonic() + timeout
        while len(received) < count:
            remaining = end - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"{self.kind}: {len(received)} of {count} messages in {timeout}s")
            received += self.pull_once(subscription, count - len(received), min(remaining, 5.0))
        return received

    def pull_nothing(self, subscription: str, seconds: float) -> None:
        """Assert that nothing is delivered for `seconds`."""
        end = time.monotonic() + seconds
        while (remaining := end - time.monotonic()) > 0:
            got = self.pull_once(subscription, 10, remaining)
            assert not got, f"{self.kind}: unexpected {[m.message.data for m in got]}"

    def pull_once(self, subscription: str, limit: int, timeout: float) -> list[ReceivedMessage]:
        """One Pull call; a deadline exceeded counts as nothing delivered."""
        try:
            response = self.subscriber.pull(
                subscription=subscription, max_messages=limit, timeout=timeout
            )
        except gexc.DeadlineExceeded:
            return []
        if not response.received_messages:
            time.sleep(0.01)  # Google's answers at once when the deadline is under a second
        return list(response.received_messages)

    def ack(self, subscription: str, messages: Sequence[ReceivedMessage]) -> None:
        """Acknowledge messages."""
        self.subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in messages])

    def modack(self, subscription: str, messages: Sequence[ReceivedMessage], seconds: int) -> None:
        """Set the ack deadline of messages; 0 nacks them."""
        self.subscriber.modify_ack_deadline(
            subscription=subscription,
            ack_ids=[m.ack_id for m in messages],
            ack_deadline_seconds=seconds,
        )


@pytest.fixture(scope="module", params=["ours", "google"])
def emu(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emu]:
    """Each emulator started once for the module, as a process group that is always killed."""
    kind: Kind = request.param
    workdir = tmp_path_factory.mktemp(f"pubsub-{kind}")
    if kind == "ours":
        process = start_ours(workdir, PROJECT)
    else:
        gcloud = find_gcloud()
        if gcloud is None:
            pytest.skip(GCLOUD_ABSENT)
        try:
            process = start_google(workdir, PROJECT, gcloud)
        except EmulatorStartError as exc:
            if os.environ.get("CI"):
                pytest.fail(f"CI has gcloud, so Google's Pub/Sub emulator must run: {exc}")
            pytest.skip(
                "Google's Pub/Sub emulator NOT RUN: gcloud is installed but its emulator did not "
                f"start (install the pubsub-emulator component and Java; in CI this fails): {exc}"
            )
    try:
        # The clients read PUBSUB_EMULATOR_HOST when they are created, and only then.
        with mock.patch.dict(os.environ, {"PUBSUB_EMULATOR_HOST": process.host}):
            publisher = pubsub_v1.PublisherClient()
            subscriber = pubsub_v1.SubscriberClient()
        try:
            yield Emu(kind, publisher, subscriber)
        finally:
            publisher.stop()
            publisher.transport.close()
            subscriber.close()
    finally:
        process.stop()
    assert not process.group_alive(), f"{kind} emulator outlived its process group's SIGKILL"


# -- publish, pull, ack ---------------------------------------------------------------------


def test_publish_pull_and_ack(emu: Emu) -> None:
    topic = emu.topic("basic")
    subscription = emu.subscription("basic", topic)
    before = datetime.now(UTC)
    ids = [emu.publish(topic, f"m{i}".encode(), n=str(i)) for i in range(3)]
    assert len(set(ids)) == 3 and all(i.isdecimal() for i in ids), ids
    # Ours numbers messages from the clock, so a restart never reuses an id; Google's from 1.
    assert (int(ids[0]) > 10**12) == emu.expect(ours=True, google=False), ids

    received = emu.pull(subscription, 3)
    # Both hand out in publish order (Pub/Sub itself promises none without ordering keys).
    assert [m.message.message_id for m in received] == ids
    for i, m in enumerate(received):
        assert m.message.data == f"m{i}".encode()
        assert dict(m.message.attributes) == {"n": str(i)}
        assert m.delivery_attempt == 0  # only counted with a dead-letter policy
        published = m.message.publish_time
        assert published.microsecond % 1000 == 0  # millisecond precision
        assert before - timedelta(seconds=1) <= published <= datetime.now(UTC)
    emu.ack(subscription, received)

    # An empty Pull: ours answers within PULL_WAIT_SECONDS, Google's holds it until about a
    # second before the client's deadline.
    started = time.monotonic()
    response = emu.subscriber.pull(subscription=subscription, max_messages=10, timeout=4.0)
    waited = time.monotonic() - started
    assert not response.received_messages
    low, high = emu.expect(ours=(PULL_WAIT_SECONDS * 0.9, 2.0), google=(2.5, 4.0))
    assert low <= waited < high, waited


def test_subscription_sees_only_messages_published_after_it(emu: Emu) -> None:
    topic = emu.topic("late")
    emu.publish(topic, b"before")
    late = emu.subscription("late", topic)
    emu.pull_nothing(late, 1.0)
    emu.publish(topic, b"after")
    assert [m.message.data for m in emu.pull(late, 1)] == [b"after"]


def test_a_pull_that_timed_out_takes_no_message(emu: Emu) -> None:
    topic = emu.topic("gave-up")
    subscription = emu.subscription("gave-up", topic)
    started = time.monotonic()
    assert emu.pull_once(subscription, 1, timeout=0.5) == []
    # Published after the client gave up but within the server's usual 1 s wait: a server
    # still waiting would hand it to nobody, and it would be lost for the 10 s ack deadline.
    time.sleep(max(0.0, 0.7 - (time.monotonic() - started)))
    emu.publish(topic, b"late")
    (received,) = emu.pull(subscription, 1, timeout=3)
    assert received.message.data == b"late"


# -- nack, ack ids, modify-ack-deadline ---------------------------------------------------


def test_nack_redelivers_and_stale_or_foreign_ack_ids(emu: Emu) -> None:
    topic = emu.topic("nack")
    subscription = emu.subscription("nack", topic)
    other = emu.subscription("nack-other", topic)
    message_id = emu.publish(topic, b"again")

    (first,) = emu.pull(subscription, 1)
    nacked_at = time.monotonic()
    emu.modack(subscription, [first], 0)
    (second,) = emu.pull(subscription, 1)
    gap = time.monotonic() - nacked_at
    assert second.message.message_id == message_id and second.ack_id != first.ack_id
    # No retry policy: Google's redelivers at once; ours pauses so that a failing push
    # endpoint is not hammered in a tight loop.
    low = emu.expect(ours=NO_RETRY_POLICY_DELAY * 0.9, google=0.0)
    assert low <= gap < 1.0, gap

    emu.ack(subscription, [first])  # a stale ack id is ignored without an error...
    emu.modack(subscription, [second], 0)  # ...and acked nothing: the current one still works
    (third,) = emu.pull(subscription, 1)
    assert third.message.message_id == message_id

    (elsewhere,) = emu.pull(other, 1)
    for ack_ids in (["not-an-ack-id"], [elsewhere.ack_id]):  # never handed out by this one
        with pytest.raises(gexc.InvalidArgument):
            emu.subscriber.acknowledge(subscription=subscription, ack_ids=ack_ids)
        with pytest.raises(gexc.InvalidArgument):
            emu.subscriber.modify_ack_deadline(
                subscription=subscription, ack_ids=ack_ids, ack_deadline_seconds=10
            )
    emu.ack(subscription, [third])
    emu.ack(other, [elsewhere])
    emu.pull_nothing(subscription, 1.0)


def test_modify_ack_deadline_extends_and_expiry_counts_an_attempt(emu: Emu) -> None:
    dead_letter = emu.topic("modack-dl")
    topic = emu.topic("modack")
    policy = {"dead_letter_topic": dead_letter, "max_delivery_attempts": 5}
    subscription = emu.subscription("modack", topic, dead_letter_policy=policy)
    emu.publish(topic, b"slow")

    (first,) = emu.pull(subscription, 1)
    assert first.delivery_attempt == 1
    emu.modack(subscription, [first], 1)
    emu.modack(subscription, [first], 2)  # the later deadline replaces the earlier one
    extended_at = time.monotonic()
    emu.pull_nothing(subscription, 1.3)
    (second,) = emu.pull(subscription, 1)
    assert 1.9 <= time.monotonic() - extended_at < 3.5
    assert second.delivery_attempt == 2  # an expired deadline counts as a delivery attempt

    with pytest.raises(gexc.InvalidArgument):
        emu.modack(subscription, [second], -1)
    # Above the documented 600 s: ours refuses, Google's accepts.
    if emu.expect(ours=True, google=False):
        with pytest.raises(gexc.InvalidArgument):
            emu.modack(subscription, [second], 601)
    else:
        emu.modack(subscription, [second], 601)
    emu.ack(subscription, [second])
    emu.pull_nothing(subscription, 1.0)


# -- push ---------------------------------------------------------------------------------


@dataclass
class Push:
    """One request the push endpoint received."""

    at: float
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@pytest.fixture
def push_endpoint() -> Iterator[tuple[str, list[Push]]]:
    """A real HTTP endpoint: 500 for messages with attribute verdict=fail, else 204."""
    pushes: list[Push] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            pushes.append(Push(time.monotonic(), self.path, dict(self.headers), body))
            failing = body["message"].get("attributes", {}).get("verdict") == "fail"
            self.send_response(500 if failing else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/push?token=conformance", pushes
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class FailingPush:
    """A push subscription with one message its endpoint acks and one it always fails."""

    subscription: str
    dead_letter_pull: str
    topic: str
    ok_id: str
    bad_id: str


def start_failing_push(emu: Emu, url: str) -> FailingPush:
    """Create the subscriptions and publish; Pub/Sub pushes from then on."""
    dead_letter = emu.topic("push-dl")
    dead_letter_pull = emu.subscription("push-dl", dead_letter)
    topic = emu.topic("push")
    subscription = emu.subscription(
        "push",
        topic,
        push_config={
            "push_endpoint": url,
            "oidc_token": {"service_account_email": PUSH_ACCOUNT, "audience": PUSH_AUDIENCE},
        },
        dead_letter_policy={"dead_letter_topic": dead_letter, "max_delivery_attempts": 5},
        retry_policy={"minimum_backoff": timedelta(seconds=0.2), "maximum_backoff": "0.4s"},
    )
    ok_id = emu.publish(topic, b"fine", verdict="ok")
    bad_id = emu.publish(topic, b"broken", verdict="fail")
    return FailingPush(subscription, dead_letter_pull, topic, ok_id, bad_id)


def check_failing_push(emu: Emu, case: FailingPush, pushes: list[Push]) -> None:
    """The envelope of every push, the retries, the dead letter, then a switch to pull."""
    subscription, ok_id = case.subscription, case.ok_id
    (dead,) = emu.pull(case.dead_letter_pull, 1, timeout=30)
    emu.ack(case.dead_letter_pull, [dead])

    assert [p.body["message"]["messageId"] for p in pushes].count(ok_id) == 1  # 204 acks
    failed = [p for p in pushes if p.body["message"]["messageId"] == case.bad_id]
    assert len(failed) == 5
    for push in pushes:
        assert push.path == "/push?token=conformance"
        assert push.headers["Content-Type"] == "application/json"
        message = push.body["message"]
        ok = message["messageId"] == ok_id
        assert message == {
            "attributes": {"verdict": "ok" if ok else "fail"},
            "data": base64.b64encode(b"fine" if ok else b"broken").decode(),
            "messageId": message["messageId"],
            "message_id": message["messageId"],
            "publishTime": message["publishTime"],
            "publish_time": message["publishTime"],
        }
        assert message["publishTime"] == rfc3339_millis(
            datetime.fromisoformat(message["publishTime"])
        )
        assert push.body["subscription"] == subscription
        # Google's sends no OIDC token; ours signs one as Pub/Sub does.
        token = push.headers.get("Authorization", "").removeprefix("Bearer ")
        if emu.expect(ours=True, google=False):
            claims = jwt.decode(token, options={"verify_signature": False})
            assert (claims["aud"], claims["email"]) == (PUSH_AUDIENCE, PUSH_ACCOUNT)
        else:
            assert not token
    # With a dead-letter policy Pub/Sub adds deliveryAttempt to the body; Google's does not.
    assert [p.body.get("deliveryAttempt") for p in failed] == emu.expect(
        ours=[1, 2, 3, 4, 5], google=[None] * 5
    )
    # Ours follows the retry policy; Google's retries on its own schedule (about 1 s, then 3 s).
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(failed)]
    if emu.expect(ours=True, google=False):
        for gap, expected in zip(gaps, [0.2, 0.4, 0.4, 0.4], strict=True):
            assert expected * 0.9 <= gap < expected + 0.4, gaps
    else:
        assert min(gaps) > 0.5, gaps

    assert dead.message.data == b"broken"
    attributes = dict(dead.message.attributes)
    assert attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    original_publish_time = failed[0].body["message"]["publishTime"]
    assert attributes["CloudPubSubDeadLetterSourceTopicPublishTime"] == original_publish_time

    # An empty push config turns the subscription into a pull one.
    emu.subscriber.modify_push_config(subscription=subscription, push_config={})
    emu.publish(case.topic, b"pulled now", verdict="ok")
    (pulled,) = emu.pull(subscription, 1)
    assert pulled.message.data == b"pulled now"
    emu.ack(subscription, [pulled])
    assert len(pushes) == 6


# -- delivery attempts and dead-lettering -------------------------------------------------


def nack_until_dead_lettered(emu: Emu) -> None:
    """Five deliveries by pull, each nacked, then the dead letter and its attributes."""
    dead_letter = emu.topic("pull-dl")
    dead_letter_pull = emu.subscription("pull-dl", dead_letter)
    topic = emu.topic("poison")
    subscription = emu.subscription(
        "poison",
        topic,
        dead_letter_policy={"dead_letter_topic": dead_letter, "max_delivery_attempts": 5},
        retry_policy={"minimum_backoff": timedelta(seconds=0.3), "maximum_backoff": "0.6s"},
    )
    message_id = emu.publish(topic, b"poison", origin="conformance")

    attempts: list[int] = []
    gaps: list[float] = []
    nacked_at = 0.0
    for _ in range(5):
        (received,) = emu.pull(subscription, 1, timeout=15)
        if nacked_at:
            gaps.append(time.monotonic() - nacked_at)
        assert received.message.message_id == message_id
        attempts.append(received.delivery_attempt)
        emu.modack(subscription, [received], 0)
        nacked_at = time.monotonic()
    assert attempts == [1, 2, 3, 4, 5]
    # Ours follows the retry policy (0.3 s doubling up to 0.6 s); Google's ignores it and
    # redelivers the first nack at once (later ones after about 2-3 s).
    if emu.expect(ours=True, google=False):
        for gap, expected in zip(gaps, [0.3, 0.6, 0.6, 0.6], strict=True):
            assert expected * 0.9 <= gap < expected + 0.4, gaps
    else:
        assert gaps[0] < 0.3, gaps

    if emu.expect(ours=False, google=True):
        # Google's moves the message to the dead-letter topic only once its subscription is
        # pulled after the redelivery falls due (its schedule: about 3 s); ours (and Google's
        # own push subscriptions) at the last failure.
        emu.pull_nothing(dead_letter_pull, 3.5)
        dead_letters: list[ReceivedMessage] = []
        end = time.monotonic() + 10
        while not dead_letters and time.monotonic() < end:
            emu.pull_nothing(subscription, 0.5)
            dead_letters = emu.pull_once(dead_letter_pull, 1, 0.5)
        assert len(dead_letters) == 1, "pulling the subscription did not dead-letter it"
        (dead,) = dead_letters
    else:
        (dead,) = emu.pull(dead_letter_pull, 1)
    assert dead.message.data == b"poison"
    assert dead.message.message_id != message_id
    assert dead.delivery_attempt == 0
    assert dict(dead.message.attributes) == {
        "origin": "conformance",
        "CloudPubSubDeadLetterSourceDeliveryCount": "5",
        "CloudPubSubDeadLetterSourceSubscription": subscription.rsplit("/", 1)[-1],
        "CloudPubSubDeadLetterSourceSubscriptionProject": PROJECT,
        "CloudPubSubDeadLetterSourceTopicPublishTime": rfc3339_millis(
            received.message.publish_time
        ),
    }
    emu.ack(dead_letter_pull, [dead])
    emu.pull_nothing(subscription, 1.0)  # no sixth delivery


def test_dead_letter_after_max_attempts_by_pull_and_by_push(
    emu: Emu, push_endpoint: tuple[str, list[Push]]
) -> None:
    """Both at once: Google's emulator spends about 10 s on each, whatever the retry policy."""
    url, pushes = push_endpoint
    push = start_failing_push(emu, url)
    nack_until_dead_lettered(emu)
    check_failing_push(emu, push, pushes)


def test_streaming_pull_nack_then_ack(emu: Emu) -> None:
    dead_letter = emu.topic("stream-dl")
    topic = emu.topic("stream")
    policy = {"dead_letter_topic": dead_letter, "max_delivery_attempts": 5}
    subscription = emu.subscription("stream", topic, dead_letter_policy=policy)
    message_id = emu.publish(topic, b"streamed")
    seen: list[tuple[str, int | None]] = []
    acked = threading.Event()

    def callback(message: pubsub_v1.subscriber.message.Message) -> None:
        seen.append((message.message_id, message.delivery_attempt))
        if message.delivery_attempt == 1:
            message.nack()
        else:
            message.ack()
            acked.set()

    future = emu.subscriber.subscribe(subscription, callback)
    try:
        assert acked.wait(10), seen
    finally:
        future.cancel()
        future.result(timeout=10)
    assert seen == [(message_id, 1), (message_id, 2)]
    emu.pull_nothing(subscription, 1.0)


# -- ordering of redeliveries -------------------------------------------------------------


def test_order_of_redeliveries(emu: Emu) -> None:
    topic = emu.topic("order")
    subscription = emu.subscription("order", topic)

    def data(messages: Sequence[ReceivedMessage]) -> list[str]:
        return [m.message.data.decode() for m in messages]

    for i in range(4):
        emu.publish(topic, f"m{i}".encode())
    delivered = emu.pull(subscription, 4)
    assert data(delivered) == ["m0", "m1", "m2", "m3"]
    for message in reversed(delivered):  # nacks put a message at the back, in nack order
        emu.modack(subscription, [message], 0)
    redelivered = emu.pull(subscription, 4)
    assert data(redelivered) == ["m3", "m2", "m1", "m0"]

    # Expired deadlines: each message is due again in its old place, whenever it expired.
    emu.modack(subscription, redelivered[2:], 1)
    time.sleep(0.5)
    emu.modack(subscription, redelivered[:2], 1)
    time.sleep(1.4)
    expired = emu.pull(subscription, 4)
    assert data(expired) == ["m3", "m2", "m1", "m0"]
    emu.ack(subscription, expired)

    # An expired message keeps its place ahead of one published after it...
    emu.publish(topic, b"X")
    (x,) = emu.pull(subscription, 1)
    emu.publish(topic, b"Y")
    emu.modack(subscription, [x], 1)
    time.sleep(1.4)
    first_two = emu.pull(subscription, 2)
    assert data(first_two) == ["X", "Y"]
    # ...while a nacked one goes behind one published before the nack.
    emu.ack(subscription, first_two[1:])
    emu.publish(topic, b"Z")
    emu.modack(subscription, first_two[:1], 0)
    time.sleep(0.3)
    assert data(emu.pull(subscription, 2)) == ["Z", "X"]


# -- settings, bounds and errors ----------------------------------------------------------


def test_settings_round_trip_and_retention(emu: Emu) -> None:
    dead_letter = emu.topic("settings-dl")
    topic = emu.topic("settings", message_retention_duration=timedelta(hours=1))
    assert emu.publisher.get_topic(topic=topic).message_retention_duration == timedelta(hours=1)
    plain = emu.subscriber.get_subscription(subscription=emu.subscription("plain", topic))
    assert plain.ack_deadline_seconds == 10
    assert plain.message_retention_duration == timedelta(days=7)
    assert not plain.push_config.push_endpoint
    assert not plain.retry_policy and not plain.dead_letter_policy
    # Ours reports the state Pub/Sub does; Google's leaves it unset.
    assert plain.state == emu.expect(ours=plain.State.ACTIVE, google=plain.State.STATE_UNSPECIFIED)

    tuned = emu.subscriber.get_subscription(
        subscription=emu.subscription(
            "tuned",
            topic,
            ack_deadline_seconds=30,
            message_retention_duration=timedelta(hours=2),
            retry_policy={"minimum_backoff": timedelta(seconds=5)},
            dead_letter_policy={"dead_letter_topic": dead_letter},
        )
    )
    assert tuned.ack_deadline_seconds == 30
    assert tuned.message_retention_duration == timedelta(hours=2)
    assert tuned.retry_policy.minimum_backoff == timedelta(seconds=5)
    assert tuned.retry_policy.maximum_backoff == timedelta(seconds=600)  # the default
    assert tuned.dead_letter_policy.max_delivery_attempts == 5  # the default

    for retention in (timedelta(minutes=9), timedelta(days=32)):
        with pytest.raises(gexc.InvalidArgument):
            emu.topic("retention", message_retention_duration=retention)
    with pytest.raises(gexc.InvalidArgument):
        emu.subscription("retention", topic, message_retention_duration=timedelta(minutes=9))
    # Eight days: the API allows up to 31 (so does ours); Google's emulator still caps at 7.
    eight_days = {"message_retention_duration": timedelta(days=8)}
    if emu.expect(ours=True, google=False):
        emu.subscription("eight-days", topic, **eight_days)
    else:
        with pytest.raises(gexc.InvalidArgument):
            emu.subscription("eight-days", topic, **eight_days)


def test_invalid_requests_get_the_same_errors(emu: Emu) -> None:
    topic = emu.topic("errors")
    subscription = emu.subscription("errors", topic)
    missing_topic = f"projects/{PROJECT}/topics/missing"
    with pytest.raises(gexc.NotFound):
        emu.publish(missing_topic, b"x")
    with pytest.raises(gexc.NotFound):
        emu.subscription("orphan", missing_topic)
    with pytest.raises(gexc.NotFound):
        emu.subscriber.pull(
            subscription=f"projects/{PROJECT}/subscriptions/missing", max_messages=1, timeout=5
        )
    with pytest.raises(gexc.AlreadyExists):
        emu.subscriber.create_subscription(name=subscription, topic=topic)
    with pytest.raises(gexc.NotFound):
        emu.subscription("dl", topic, dead_letter_policy={"dead_letter_topic": missing_topic})
    for attempts in (4, 101):
        with pytest.raises(gexc.OutOfRange):
            emu.subscription(
                "dl",
                topic,
                dead_letter_policy={"dead_letter_topic": topic, "max_delivery_attempts": attempts},
            )
    with pytest.raises(gexc.InvalidArgument):
        emu.subscription("backoff", topic, retry_policy={"minimum_backoff": "601s"})
    with pytest.raises(gexc.InvalidArgument):
        emu.subscription("deadline", topic, ack_deadline_seconds=601)
    with pytest.raises(gexc.InvalidArgument):
        emu.publisher.publish(topic, b"").result(timeout=10)


def test_what_ours_refuses_and_googles_accepts(emu: Emu) -> None:
    topic = emu.topic("lenient")
    refused_by_ours: list[tuple[Callable[[], object], type[Exception]]] = [
        # Below the documented 10 s minimum.
        (lambda: emu.subscription("hasty", topic, ack_deadline_seconds=5), gexc.InvalidArgument),
        # Attribute keys starting with "goog" are reserved.
        (lambda: emu.publish(topic, b"x", googkey="1"), gexc.InvalidArgument),
        # Features ours does not emulate: refused loudly rather than silently ignored.
        (
            lambda: emu.subscription("ordered", topic, enable_message_ordering=True),
            gexc.MethodNotImplemented,
        ),
        (
            lambda: emu.subscription("filtered", topic, filter='attributes.k = "v"'),
            gexc.MethodNotImplemented,
        ),
        (
            lambda: emu.subscription("once", topic, enable_exactly_once_delivery=True),
            gexc.MethodNotImplemented,
        ),
    ]
    for call, error in refused_by_ours:
        if emu.expect(ours=True, google=False):
            with pytest.raises(error):
                call()
        else:
            call()
