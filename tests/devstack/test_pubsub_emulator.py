"""The Pub/Sub emulator through the real google-cloud-pubsub clients and a real push endpoint."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.pubsub_v1 import PublisherClient as GapicPublisherClient
from google.pubsub_v1 import PubsubMessage

from devstack.pubsub_emulator import Emulator, EmulatorConfig, FaultConfig, Topology
from devstack.pubsub_emulator.broker import Broker
from devstack.pubsub_emulator.faults import FaultInjector
from devstack.pubsub_emulator.model import OutgoingMessage, SubscriptionSettings, TopicSettings
from devstack.pubsub_emulator.topology import DEFAULT_TOPOLOGY_PATH

PROJECT = "test-project"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RFC3339_MILLIS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def topic_path(name: str) -> str:
    return f"projects/{PROJECT}/topics/{name}"


def sub_path(name: str) -> str:
    return f"projects/{PROJECT}/subscriptions/{name}"


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until `predicate()` holds, failing the test after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.01)


# -- a real HTTP push endpoint ------------------------------------------------------------


@dataclass
class PushRequest:
    """One request the push endpoint received."""

    at: float
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class PushEndpoint:
    """An http.server that records pushes and answers as `script(body)` says: (status, delay)."""

    server: ThreadingHTTPServer
    requests: list[PushRequest] = field(default_factory=list)
    script: Callable[[dict[str, Any]], tuple[int, float]] = lambda body: (204, 0.0)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/push"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[PushRequest]:
        wait_until(lambda: len(self.requests) >= count, timeout)
        with self.lock:
            return list(self.requests)

    def bodies_for(self, message_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r.body for r in self.requests if r.body["message"]["messageId"] == message_id]


@pytest.fixture
def endpoint() -> Iterator[PushEndpoint]:
    holder: list[PushEndpoint] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state = holder[0]
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            body = json.loads(raw)
            with state.lock:
                state.requests.append(PushRequest(time.monotonic(), dict(self.headers), body))
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            status, delay = state.script(body)
            try:
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the emulator gave up waiting: that is the point of a slow answer
            finally:
                with state.lock:
                    state.in_flight -= 1

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # the default 5 would serialize concurrent pushes

    server = Server(("127.0.0.1", 0), Handler)
    holder.append(PushEndpoint(server))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()


# -- the emulator and clients -------------------------------------------------------------


class Harness:
    """Starts in-process emulators on ephemeral ports; clients are made once one runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch
        self.emulators: list[Emulator] = []
        self._publisher: pubsub_v1.PublisherClient | None = None
        self._subscriber: pubsub_v1.SubscriberClient | None = None

    def start(
        self, topology: str = "", endpoints: dict[str, str] | None = None, **settings: Any
    ) -> Emulator:
        config = EmulatorConfig(
            port=0,
            http_port=0,
            project=PROJECT,
            topology=Topology.parse(textwrap.dedent(topology)),
            endpoints=endpoints or {},
            **settings,
        )
        emulator = Emulator(config).start()
        self.emulators.append(emulator)
        # Set before any client exists: the clients read it when they are created.
        self._monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.emulator_host)
        return emulator

    @property
    def publisher(self) -> pubsub_v1.PublisherClient:
        if self._publisher is None:
            self._publisher = pubsub_v1.PublisherClient()
        return self._publisher

    @property
    def subscriber(self) -> pubsub_v1.SubscriberClient:
        if self._subscriber is None:
            self._subscriber = pubsub_v1.SubscriberClient()
        return self._subscriber

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.stop()
            self._publisher.transport.close()
        if self._subscriber is not None:
            self._subscriber.close()
        for emulator in self.emulators:
            emulator.stop()


@pytest.fixture
def pubsub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    harness = Harness(monkeypatch)
    yield harness
    harness.close()


def pull_all(
    subscriber: pubsub_v1.SubscriberClient, subscription: str, max_messages: int = 100
) -> list[Any]:
    response = subscriber.pull(
        request={"subscription": subscription, "max_messages": max_messages}, timeout=5
    )
    return list(response.received_messages)


PULL_TOPOLOGY = """
    topics:
      jobs: {}
    subscriptions:
      jobs-pull:
        topic: jobs
"""


# -- startup ------------------------------------------------------------------------------


def test_starts_from_the_repository_topology_in_well_under_a_second() -> None:
    config = EmulatorConfig(
        port=0,
        http_port=0,
        topology=Topology.load(DEFAULT_TOPOLOGY_PATH),
        endpoints={"worker": "http://127.0.0.1:9/", "dead_letter": "http://127.0.0.1:9/"},
    )
    started = time.perf_counter()
    emulator = Emulator(config).start()
    elapsed = time.perf_counter() - started
    try:
        assert elapsed < 1.0
        worker = emulator.broker.get_subscription(
            "projects/local-project/subscriptions/generation-jobs-worker"
        )
        assert worker.push is not None and worker.push.endpoint == "http://127.0.0.1:9/"
        assert emulator.port > 0 and emulator.http_port > 0
    finally:
        emulator.stop()


# -- admin operations and errors ------------------------------------------------------------


def test_topic_admin_operations_and_their_errors(pubsub: Harness) -> None:
    pubsub.start()
    for name in ("alpha", "beta", "gamma"):
        created = pubsub.publisher.create_topic(request={"name": topic_path(name)})
        assert created.name == topic_path(name)

    publisher = pubsub.publisher
    assert publisher.get_topic(request={"topic": topic_path("beta")}).name == topic_path("beta")
    # page_size 1 makes the client follow next_page_token through every page.
    listed = publisher.list_topics(request={"project": f"projects/{PROJECT}", "page_size": 1})
    assert [topic.name for topic in listed] == [topic_path(n) for n in ("alpha", "beta", "gamma")]

    with pytest.raises(gexc.AlreadyExists):
        pubsub.publisher.create_topic(request={"name": topic_path("alpha")})
    with pytest.raises(gexc.InvalidArgument):
        publisher.create_topic(request={"name": topic_path("x")})  # IDs have 3 chars or more
    with pytest.raises(gexc.InvalidArgument):
        pubsub.publisher.create_topic(request={"name": topic_path("goog-reserved")})

    pubsub.publisher.delete_topic(request={"topic": topic_path("beta")})
    with pytest.raises(gexc.NotFound):
        pubsub.publisher.get_topic(request={"topic": topic_path("beta")})
    with pytest.raises(gexc.NotFound):
        pubsub.publisher.delete_topic(request={"topic": topic_path("beta")})
    with pytest.raises(gexc.NotFound):
        pubsub.publisher.publish(topic_path("beta"), b"lost").result(timeout=5)


def test_subscription_admin_operations_and_their_errors(pubsub: Harness) -> None:
    pubsub.start(PULL_TOPOLOGY)
    created = pubsub.subscriber.create_subscription(
        request={
            "name": sub_path("made-by-api"),
            "topic": topic_path("jobs"),
            "ack_deadline_seconds": 30,
            "retry_policy": {"minimum_backoff": timedelta(seconds=5)},
        }
    )
    assert created.ack_deadline_seconds == 30
    assert created.retry_policy.minimum_backoff == timedelta(seconds=5)
    assert created.retry_policy.maximum_backoff == timedelta(seconds=600)  # Google's default

    fetched = pubsub.subscriber.get_subscription(request={"subscription": sub_path("jobs-pull")})
    assert fetched.topic == topic_path("jobs")
    assert fetched.ack_deadline_seconds == 10
    assert not fetched.push_config.push_endpoint
    listed = pubsub.subscriber.list_subscriptions(request={"project": f"projects/{PROJECT}"})
    assert {sub.name for sub in listed} == {sub_path("jobs-pull"), sub_path("made-by-api")}
    names = pubsub.publisher.list_topic_subscriptions(request={"topic": topic_path("jobs")})
    assert set(names) == {sub_path("jobs-pull"), sub_path("made-by-api")}

    with pytest.raises(gexc.AlreadyExists):
        pubsub.subscriber.create_subscription(name=sub_path("jobs-pull"), topic=topic_path("jobs"))
    with pytest.raises(gexc.NotFound):
        pubsub.subscriber.create_subscription(name=sub_path("orphan"), topic=topic_path("missing"))
    with pytest.raises(gexc.InvalidArgument):
        pubsub.subscriber.create_subscription(
            request={
                "name": sub_path("hasty"),
                "topic": topic_path("jobs"),
                "ack_deadline_seconds": 5,
            }
        )
    with pytest.raises(gexc.OutOfRange):  # Google's status for this bound
        pubsub.subscriber.create_subscription(
            request={
                "name": sub_path("bad-dlq"),
                "topic": topic_path("jobs"),
                "dead_letter_policy": {
                    "dead_letter_topic": topic_path("jobs"),
                    "max_delivery_attempts": 2,
                },
            }
        )
    with pytest.raises(gexc.InvalidArgument):
        pubsub.subscriber.pull(request={"subscription": sub_path("jobs-pull"), "max_messages": 0})

    pubsub.subscriber.delete_subscription(request={"subscription": sub_path("made-by-api")})
    with pytest.raises(gexc.NotFound):
        pubsub.subscriber.get_subscription(request={"subscription": sub_path("made-by-api")})
    with pytest.raises(gexc.NotFound):
        pubsub.subscriber.pull(request={"subscription": sub_path("made-by-api"), "max_messages": 1})


def test_invalid_publish_requests_are_rejected(pubsub: Harness) -> None:
    pubsub.start(PULL_TOPOLOGY)
    # The generated client sends requests as given, without the batching client's checks.
    client = GapicPublisherClient()
    with pytest.raises(gexc.InvalidArgument):
        client.publish(topic=topic_path("jobs"), messages=[PubsubMessage()])
    with pytest.raises(gexc.InvalidArgument):
        client.publish(topic=topic_path("jobs"), messages=[])
    with pytest.raises(gexc.InvalidArgument):
        client.publish(
            topic=topic_path("jobs"),
            messages=[PubsubMessage(data=b"x", attributes={"googx": "1"})],
        )
    client.transport.close()


# -- pull ---------------------------------------------------------------------------------


def test_publish_pull_and_acknowledge(pubsub: Harness) -> None:
    emulator = pubsub.start(PULL_TOPOLOGY)
    before = datetime.now(UTC) - timedelta(seconds=1)
    ids = [
        pubsub.publisher.publish(topic_path("jobs"), f"job-{i}".encode(), n=str(i)).result(5)
        for i in range(3)
    ]
    assert len(set(ids)) == 3 and all(i.isdigit() for i in ids)

    first = pull_all(pubsub.subscriber, sub_path("jobs-pull"), max_messages=2)
    second = pull_all(pubsub.subscriber, sub_path("jobs-pull"))
    received = first + second
    assert len(first) == 2 and len(second) == 1
    assert [r.message.message_id for r in received] == ids
    assert [r.message.data for r in received] == [b"job-0", b"job-1", b"job-2"]
    assert [dict(r.message.attributes) for r in received] == [{"n": "0"}, {"n": "1"}, {"n": "2"}]
    assert all(before <= r.message.publish_time <= datetime.now(UTC) for r in received)
    # Without a dead-letter policy Pub/Sub does not count delivery attempts.
    assert all(r.delivery_attempt == 0 for r in received)

    pubsub.subscriber.acknowledge(
        request={"subscription": sub_path("jobs-pull"), "ack_ids": [r.ack_id for r in received]}
    )
    assert emulator.broker.backlog(sub_path("jobs-pull")) == 0
    started = time.monotonic()
    assert pull_all(pubsub.subscriber, sub_path("jobs-pull")) == []
    assert time.monotonic() - started < 1.5  # an empty pull does not hang


def test_messages_published_before_a_subscription_exists_are_not_delivered_to_it(
    pubsub: Harness,
) -> None:
    pubsub.start(PULL_TOPOLOGY)
    pubsub.publisher.publish(topic_path("jobs"), b"early").result(timeout=5)
    pubsub.subscriber.create_subscription(name=sub_path("late"), topic=topic_path("jobs"))
    pubsub.publisher.publish(topic_path("jobs"), b"on time").result(timeout=5)
    assert [r.message.data for r in pull_all(pubsub.subscriber, sub_path("late"))] == [b"on time"]


def test_modify_ack_deadline_zero_redelivers_at_once(pubsub: Harness) -> None:
    pubsub.start(PULL_TOPOLOGY)
    message_id = pubsub.publisher.publish(topic_path("jobs"), b"again").result(timeout=5)
    (first,) = pull_all(pubsub.subscriber, sub_path("jobs-pull"))
    pubsub.subscriber.modify_ack_deadline(
        request={
            "subscription": sub_path("jobs-pull"),
            "ack_ids": [first.ack_id],
            "ack_deadline_seconds": 0,
        }
    )
    (second,) = pull_all(pubsub.subscriber, sub_path("jobs-pull"))
    assert second.message.message_id == message_id
    assert second.ack_id != first.ack_id


def test_unacknowledged_pull_is_redelivered_after_the_ack_deadline(pubsub: Harness) -> None:
    # A 10 s deadline scaled to 0.3 s.
    pubsub.start(PULL_TOPOLOGY, faults=FaultConfig(ack_deadline_scale=0.03))
    message_id = pubsub.publisher.publish(topic_path("jobs"), b"slow").result(timeout=5)
    (first,) = pull_all(pubsub.subscriber, sub_path("jobs-pull"))
    taken = time.monotonic()
    (again,) = pull_all(pubsub.subscriber, sub_path("jobs-pull"))
    assert again.message.message_id == message_id
    assert time.monotonic() - taken >= 0.25
    # The expired ack id no longer acknowledges anything; the new one does.
    pubsub.subscriber.acknowledge(subscription=sub_path("jobs-pull"), ack_ids=[first.ack_id])
    pubsub.subscriber.modify_ack_deadline(
        subscription=sub_path("jobs-pull"), ack_ids=[again.ack_id], ack_deadline_seconds=60
    )
    assert pull_all(pubsub.subscriber, sub_path("jobs-pull")) == []


def test_a_message_past_its_retention_is_dropped_not_redelivered() -> None:
    """Retention is 10 minutes at least, too long for the conformance run: a fake clock here."""
    now = [1000.0]
    broker = Broker(FaultInjector(FaultConfig()), clock=lambda: now[0])
    broker.create_topic(TopicSettings(topic_path("jobs")))
    broker.create_subscription(
        SubscriptionSettings(sub_path("short"), topic_path("jobs"), message_retention=600.0)
    )
    broker.publish(topic_path("jobs"), [OutgoingMessage(b"old")])
    (first,) = broker.pull(sub_path("short"), 10)
    broker.modify_ack_deadline(sub_path("short"), [first.ack_id], 0)
    now[0] += 599.0
    broker.publish(topic_path("jobs"), [OutgoingMessage(b"young")])
    now[0] += 1.0  # "old" is 600 s old: past retention, counted from its publish
    assert [m.message.data for m in broker.pull(sub_path("short"), 10)] == [b"young"]
    assert broker.backlog(sub_path("short")) == 1  # "young", handed out and not yet acked


def test_streaming_pull_through_subscribe(pubsub: Harness) -> None:
    emulator = pubsub.start(PULL_TOPOLOGY)
    received: list[bytes] = []
    done = threading.Event()

    def callback(message: Any) -> None:
        received.append(message.data)
        message.ack()
        if len(received) == 3:
            done.set()

    future = pubsub.subscriber.subscribe(sub_path("jobs-pull"), callback)
    try:
        for i in range(3):
            pubsub.publisher.publish(topic_path("jobs"), f"streamed-{i}".encode()).result(timeout=5)
        assert done.wait(5)
        wait_until(lambda: emulator.broker.backlog(sub_path("jobs-pull")) == 0)
    finally:
        future.cancel()
        # A cancelled stream ends with CancelledError or returns, depending on timing.
        with contextlib.suppress(FutureTimeout, Exception):
            future.result(timeout=5)
    assert sorted(received) == [b"streamed-0", b"streamed-1", b"streamed-2"]


def test_injected_publish_failures_reach_the_publisher(pubsub: Harness) -> None:
    pubsub.start(PULL_TOPOLOGY, faults=FaultConfig(publish_failure_rate=1.0))
    with pytest.raises(gexc.FailedPrecondition):
        pubsub.publisher.publish(topic_path("jobs"), b"doomed").result(timeout=5)


# -- push ---------------------------------------------------------------------------------


def push_topology(
    *,
    ack_deadline: int = 10,
    retry: str = "",
    dead_letter: str = "",
) -> str:
    return f"""
        topics:
          jobs: {{}}
          jobs-dead-letter: {{}}
        subscriptions:
          jobs-push:
            topic: jobs
            push_endpoint: worker
            ack_deadline_seconds: {ack_deadline}
            {retry}
            {dead_letter}
          jobs-dead-letter-pull:
            topic: jobs-dead-letter
    """


RETRY_10S_40S = "retry_policy: {minimum_backoff: 10s, maximum_backoff: 40s}"
DEAD_LETTER_5 = (
    "dead_letter_policy: {dead_letter_topic: jobs-dead-letter, max_delivery_attempts: 5}"
)


def shape(value: Any, key: str = "") -> Any:
    """Keys and value types of a JSON document; `attributes` is a map, so only its types count."""
    if isinstance(value, dict):
        if key == "attributes":
            return {type(k).__name__: shape(v) for k, v in value.items()}
        return {k: shape(v, k) for k, v in value.items()}
    return type(value).__name__


def test_push_envelope_matches_googles_documented_sample(
    pubsub: Harness,
    endpoint: PushEndpoint,
) -> None:
    pubsub.start(push_topology(), {"worker": endpoint.url})
    message_id = pubsub.publisher.publish(topic_path("jobs"), b"job-42", task="summarize").result(5)

    (request,) = endpoint.wait_for(1)
    sample = json.loads((FIXTURES / "push_envelope_google_sample.json").read_text())
    assert shape(request.body) == shape(sample)
    assert request.headers["Content-Type"] == "application/json"
    message = request.body["message"]
    assert base64.b64decode(message["data"]) == b"job-42"
    assert message["attributes"] == {"task": "summarize"}
    assert message["messageId"] == message["message_id"] == message_id
    assert RFC3339_MILLIS_Z.fullmatch(message["publishTime"])
    assert message["publishTime"] == message["publish_time"]
    assert request.body["subscription"] == sub_path("jobs-push")


def test_push_envelope_omits_empty_attributes(
    pubsub: Harness,
    endpoint: PushEndpoint,
) -> None:
    pubsub.start(push_topology(), {"worker": endpoint.url})
    pubsub.publisher.publish(topic_path("jobs"), b"plain").result(5)
    (request,) = endpoint.wait_for(1)
    assert "attributes" not in request.body["message"]
    assert "deliveryAttempt" not in request.body


@pytest.mark.parametrize("status", [102, 200, 201, 202, 204])
def test_success_statuses_acknowledge(
    status: int,
    pubsub: Harness,
    endpoint: PushEndpoint,
) -> None:
    emulator = pubsub.start(push_topology(), {"worker": endpoint.url})
    endpoint.script = lambda body: (status, 0.0)
    pubsub.publisher.publish(topic_path("jobs"), b"fine").result(5)
    endpoint.wait_for(1)
    wait_until(lambda: emulator.broker.backlog(sub_path("jobs-push")) == 0)
    time.sleep(0.3)  # longer than the 0.1 s redelivery delay: nothing more comes
    assert len(endpoint.requests) == 1


@pytest.mark.parametrize("status", [404, 500])
def test_other_statuses_nack_and_the_message_is_redelivered(
    status: int,
    pubsub: Harness,
    endpoint: PushEndpoint,
) -> None:
    emulator = pubsub.start(push_topology(), {"worker": endpoint.url})
    answers = iter([status, status, 204])
    endpoint.script = lambda body: (next(answers), 0.0)
    message_id = pubsub.publisher.publish(topic_path("jobs"), b"flaky").result(5)
    requests = endpoint.wait_for(3)
    assert {r.body["message"]["messageId"] for r in requests} == {message_id}
    wait_until(lambda: emulator.broker.backlog(sub_path("jobs-push")) == 0)


def test_no_answer_within_the_ack_deadline_is_a_nack(
    pubsub: Harness,
    endpoint: PushEndpoint,
) -> None:
    # ack deadline 10 s scaled to 0.4 s; the first answer would come after 1.5 s.
    emulator = pubsub.start(
        push_topology(), {"worker": endpoint.url}, faults=FaultConfig(ack_deadline_scale=0.04)
    )
    delays = iter([1.5, 0.0])
    endpoint.script = lambda body: (204, next(delays))
    pubsub.publisher.publish(topic_path("jobs"), b"hang").result(5)
    first, second = endpoint.wait_for(2)
    assert 0.35 <= second.at - first.at < 1.0  # redelivered before the slow answer came
    wait_until(lambda: emulator.broker.backlog(sub_path("jobs-push")) == 0)
    assert emulator.stats()["expired"] == 1


def test_retries_back_off_exponentially_then_dead_letter_with_the_message_intact(
    pubsub: Harness,
    endpoint: PushEndpoint,
) -> None:
    # Backoff 10 s..40 s scaled by 0.01: 0.1, 0.2, 0.4, then capped at 0.4.
    emulator = pubsub.start(
        push_topology(retry=RETRY_10S_40S, dead_letter=DEAD_LETTER_5),
        {"worker": endpoint.url},
        faults=FaultConfig(backoff_scale=0.01),
    )
    endpoint.script = lambda body: (500, 0.0)
    message_id = pubsub.publisher.publish(topic_path("jobs"), b"poison", origin="test").result(5)

    requests = endpoint.wait_for(5)
    assert [r.body["deliveryAttempt"] for r in requests] == [1, 2, 3, 4, 5]
    assert {r.body["message"]["messageId"] for r in requests} == {message_id}
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(requests)]
    for gap, expected in zip(gaps, [0.1, 0.2, 0.4, 0.4], strict=True):
        assert expected * 0.9 <= gap < expected + 0.25, gaps

    wait_until(lambda: emulator.broker.backlog(sub_path("jobs-dead-letter-pull")) == 1)
    (dead,) = pull_all(pubsub.subscriber, sub_path("jobs-dead-letter-pull"))
    assert dead.message.data == b"poison"
    attributes = dict(dead.message.attributes)
    original_publish_time = attributes.pop("CloudPubSubDeadLetterSourceTopicPublishTime")
    assert datetime.fromisoformat(original_publish_time) == datetime.fromisoformat(
        requests[0].body["message"]["publishTime"]
    )
    assert attributes == {
        "origin": "test",
        "CloudPubSubDeadLetterSourceDeliveryCount": "5",
        "CloudPubSubDeadLetterSourceSubscription": "jobs-push",
        "CloudPubSubDeadLetterSourceSubscriptionProject": PROJECT,
    }
    assert emulator.broker.backlog(sub_path("jobs-push")) == 0
    time.sleep(0.5)  # past the longest backoff: no sixth push
    assert len(endpoint.requests) == 5


def test_dead_letter_push_envelope_adds_delivery_attempt_to_the_sample_shape(
    pubsub: Harness,
    endpoint: PushEndpoint,
) -> None:
    pubsub.start(push_topology(dead_letter=DEAD_LETTER_5), {"worker": endpoint.url})
    pubsub.publisher.publish(topic_path("jobs"), b"job", key="value").result(5)
    (request,) = endpoint.wait_for(1)
    expected = shape(json.loads((FIXTURES / "push_envelope_google_sample.json").read_text()))
    expected["deliveryAttempt"] = "int"
    assert shape(request.body) == expected
    assert request.body["deliveryAttempt"] == 1


def test_push_token_verifies_against_the_served_jwks(
    pubsub: Harness,
    endpoint: PushEndpoint,
) -> None:
    emulator = pubsub.start(push_topology(), {"worker": endpoint.url})
    pubsub.publisher.publish(topic_path("jobs"), b"signed").result(5)
    (request,) = endpoint.wait_for(1)
    scheme, _, token = request.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"

    signing_key = jwt.PyJWKClient(emulator.certs_url).get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        signing_key.key,
        algorithms=["RS256"],
        audience=endpoint.url,
        issuer="https://accounts.google.com",
    )
    assert claims["email"] == "pubsub-push@local-project.iam.gserviceaccount.com"
    assert claims["email_verified"] is True
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["sub"] == claims["azp"] and claims["sub"].isdigit()
    assert jwt.get_unverified_header(token)["kid"] == signing_key.key_id

    # The same key in Google's older PEM-certificate format (google-auth's default).
    with urllib.request.urlopen(emulator.certs_url.replace("/v3/", "/v1/"), timeout=5) as resp:
        certificates = json.load(resp)
    pem = certificates[signing_key.key_id].encode()
    public_key = x509.load_pem_x509_certificate(pem).public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert jwt.decode(token, public_key, algorithms=["RS256"], audience=endpoint.url)


def test_push_audience_and_service_account_overrides(
    pubsub: Harness,
    endpoint: PushEndpoint,
) -> None:
    emulator = pubsub.start(
        push_topology(),
        {"worker": endpoint.url},
        push_audience="https://worker.example.run.app",
        push_service_account="pusher@test-project.iam.gserviceaccount.com",
    )
    pubsub.publisher.publish(topic_path("jobs"), b"signed").result(5)
    (request,) = endpoint.wait_for(1)
    token = request.headers["Authorization"].removeprefix("Bearer ")
    key = jwt.PyJWKClient(emulator.certs_url).get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token, key.key, algorithms=["RS256"], audience="https://worker.example.run.app"
    )
    assert claims["email"] == "pusher@test-project.iam.gserviceaccount.com"


def test_slow_pushes_are_delivered_concurrently(
    pubsub: Harness,
    endpoint: PushEndpoint,
) -> None:
    emulator = pubsub.start(push_topology(), {"worker": endpoint.url})
    endpoint.script = lambda body: (200, 0.5)
    futures = [pubsub.publisher.publish(topic_path("jobs"), f"{i}".encode()) for i in range(30)]
    for future in futures:
        future.result(5)
    requests = endpoint.wait_for(30)
    assert requests[-1].at - requests[0].at < 0.4  # all started before the first answered
    assert endpoint.max_in_flight == 30
    wait_until(lambda: emulator.broker.backlog(sub_path("jobs-push")) == 0)


def test_duplicate_rate_one_pushes_every_message_twice(
    pubsub: Harness,
    endpoint: PushEndpoint,
) -> None:
    emulator = pubsub.start(
        push_topology(), {"worker": endpoint.url}, faults=FaultConfig(duplicate_rate=1.0, seed=7)
    )
    futures = [pubsub.publisher.publish(topic_path("jobs"), f"{i}".encode()) for i in range(3)]
    ids = [future.result(5) for future in futures]
    endpoint.wait_for(6)
    for message_id in ids:
        bodies = endpoint.bodies_for(message_id)
        assert len(bodies) == 2
        assert bodies[0] == bodies[1]
    assert emulator.stats()["push_duplicates"] == 3


def test_delay_rate_holds_messages_back_before_the_first_push(
    pubsub: Harness,
    endpoint: PushEndpoint,
) -> None:
    pubsub.start(
        push_topology(),
        {"worker": endpoint.url},
        faults=FaultConfig(delay_rate=1.0, max_delay=0.6, seed=3),
    )
    published = time.monotonic()
    futures = [pubsub.publisher.publish(topic_path("jobs"), f"{i}".encode()) for i in range(10)]
    ids = [future.result(5) for future in futures]
    requests = endpoint.wait_for(10)
    arrivals = [r.at - published for r in requests]
    assert max(arrivals) < 0.6 + 0.3
    assert max(arrivals) - min(arrivals) > 0.1  # spread out, not delivered as one batch
    assert [r.body["message"]["messageId"] for r in requests] != ids  # and so out of order
