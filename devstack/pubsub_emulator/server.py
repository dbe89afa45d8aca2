"""The Publisher and Subscriber gRPC services, as generic handlers over the broker."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1 import types

from devstack.pubsub_emulator import convert
from devstack.pubsub_emulator.broker import Broker
from devstack.pubsub_emulator.errors import EmulatorError, InjectedFault, InvalidArgument
from devstack.pubsub_emulator.model import DEFAULT_ACK_DEADLINE, MAX_ACK_DEADLINE

log = logging.getLogger(__name__)

# An empty unary Pull returns after this long at most (clients treat it as "nothing yet").
PULL_WAIT_SECONDS = 1.0
# ...and this long before the client's deadline: a message taken for a client that has given
# up would be lost until its ack deadline passed. Google's emulator keeps about a second.
PULL_DEADLINE_MARGIN_SECONDS = 0.5
# How often a StreamingPull notices a cancelled stream when no message arrives.
STREAM_POLL_SECONDS = 0.5
STREAM_BATCH = 100
MAX_GRPC_MESSAGE_BYTES = 20 * 1024 * 1024
# Pull and StreamingPull hold a thread while they wait; leave room for many of them.
GRPC_WORKERS = 64

_EMPTY = empty_pb2.Empty()
Handler = Callable[[Any], Any]
ContextHandler = Callable[[Any, grpc.ServicerContext], Any]


def _status(error: EmulatorError) -> grpc.StatusCode:
    name = error.fault_status if isinstance(error, InjectedFault) else error.status
    return grpc.StatusCode[name]


def _unary(fn: Handler, request_type: Any) -> grpc.RpcMethodHandler:
    """Wrap `fn(request) -> response`, turning emulator errors into gRPC statuses."""
    return _unary_in_context(lambda request, context: fn(request), request_type)


def _unary_in_context(fn: ContextHandler, request_type: Any) -> grpc.RpcMethodHandler:
    """Wrap `fn(request, context) -> response`, turning emulator errors into gRPC statuses."""

    def call(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(request, context)
        except EmulatorError as exc:
            context.abort(_status(exc), str(exc))

    return grpc.unary_unary_rpc_method_handler(
        call,
        request_deserializer=request_type.pb().FromString,
        response_serializer=lambda message: message.SerializeToString(),
    )


class PublisherService:
    """google.pubsub.v1.Publisher."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def create_topic(self, request: Any) -> Any:
        """CreateTopic."""
        return convert.topic_to_pb(self._broker.create_topic(convert.topic_from_pb(request)))

    def get_topic(self, request: Any) -> Any:
        """GetTopic."""
        return convert.topic_to_pb(self._broker.get_topic(request.topic))

    def list_topics(self, request: Any) -> Any:
        """ListTopics."""
        topics, token = self._broker.list_topics(
            request.project, request.page_size, request.page_token
        )
        return types.ListTopicsResponse.pb()(
            topics=[convert.topic_to_pb(topic) for topic in topics], next_page_token=token
        )

    def list_topic_subscriptions(self, request: Any) -> Any:
        """ListTopicSubscriptions."""
        names, token = self._broker.list_topic_subscriptions(
            request.topic, request.page_size, request.page_token
        )
        return types.ListTopicSubscriptionsResponse.pb()(subscriptions=names, next_page_token=token)

    def delete_topic(self, request: Any) -> Any:
        """DeleteTopic."""
        self._broker.delete_topic(request.topic)
        return _EMPTY

    def publish(self, request: Any) -> Any:
        """Publish."""
        ids = self._broker.publish(
            request.topic, [convert.message_from_pb(message) for message in request.messages]
        )
        return types.PublishResponse.pb()(message_ids=ids)

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler serving this service."""
        return grpc.method_handlers_generic_handler(
            "google.pubsub.v1.Publisher",
            {
                "CreateTopic": _unary(self.create_topic, types.Topic),
                "GetTopic": _unary(self.get_topic, types.GetTopicRequest),
                "ListTopics": _unary(self.list_topics, types.ListTopicsRequest),
                "ListTopicSubscriptions": _unary(
                    self.list_topic_subscriptions, types.ListTopicSubscriptionsRequest
                ),
                "DeleteTopic": _unary(self.delete_topic, types.DeleteTopicRequest),
                "Publish": _unary(self.publish, types.PublishRequest),
            },
        )


class SubscriberService:
    """google.pubsub.v1.Subscriber."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def create_subscription(self, request: Any) -> Any:
        """CreateSubscription."""
        settings = self._broker.create_subscription(convert.subscription_from_pb(request))
        return convert.subscription_to_pb(settings)

    def get_subscription(self, request: Any) -> Any:
        """GetSubscription."""
        return convert.subscription_to_pb(self._broker.get_subscription(request.subscription))

    def list_subscriptions(self, request: Any) -> Any:
        """ListSubscriptions."""
        subscriptions, token = self._broker.list_subscriptions(
            request.project, request.page_size, request.page_token
        )
        return types.ListSubscriptionsResponse.pb()(
            subscriptions=[convert.subscription_to_pb(sub) for sub in subscriptions],
            next_page_token=token,
        )

    def delete_subscription(self, request: Any) -> Any:
        """DeleteSubscription."""
        self._broker.delete_subscription(request.subscription)
        return _EMPTY

    def modify_push_config(self, request: Any) -> Any:
        """ModifyPushConfig."""
        self._broker.modify_push_config(
            request.subscription, convert.push_config_from_pb(request.push_config)
        )
        return _EMPTY

    def pull(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Pull: whatever is available now, else wait briefly (return_immediately is ignored)."""
        wait = PULL_WAIT_SECONDS
        remaining = context.time_remaining()
        if remaining is not None:
            wait = max(0.0, min(wait, remaining - PULL_DEADLINE_MARGIN_SECONDS))
        received = self._broker.pull(request.subscription, request.max_messages, wait=wait)
        return types.PullResponse.pb()(
            received_messages=[convert.received_to_pb(message) for message in received]
        )

    def acknowledge(self, request: Any) -> Any:
        """Acknowledge."""
        self._broker.acknowledge(request.subscription, list(request.ack_ids))
        return _EMPTY

    def modify_ack_deadline(self, request: Any) -> Any:
        """ModifyAckDeadline."""
        self._broker.modify_ack_deadline(
            request.subscription, list(request.ack_ids), request.ack_deadline_seconds
        )
        return _EMPTY

    def _apply_stream_request(self, subscription: str, request: Any) -> None:
        if request.ack_ids:
            self._broker.acknowledge(subscription, list(request.ack_ids))
        if len(request.modify_deadline_ack_ids) != len(request.modify_deadline_seconds):
            raise InvalidArgument("modify_deadline_ack_ids and modify_deadline_seconds differ")
        by_deadline: defaultdict[int, list[str]] = defaultdict(list)
        for ack_id, seconds in zip(
            request.modify_deadline_ack_ids, request.modify_deadline_seconds, strict=True
        ):
            by_deadline[seconds].append(ack_id)
        for seconds, ack_ids in by_deadline.items():
            self._broker.modify_ack_deadline(subscription, ack_ids, seconds)

    def streaming_pull(
        self, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        """StreamingPull: stream messages while a reader thread applies acks and modacks."""
        first = next(requests, None)
        if first is None:
            return
        subscription = first.subscription
        deadline = first.stream_ack_deadline_seconds
        batch = min(first.max_outstanding_messages or STREAM_BATCH, STREAM_BATCH)
        try:
            if not DEFAULT_ACK_DEADLINE <= deadline <= MAX_ACK_DEADLINE:
                raise InvalidArgument("stream_ack_deadline_seconds must be between 10 and 600")
            self._broker.get_subscription(subscription)
            self._apply_stream_request(subscription, first)
        except EmulatorError as exc:
            context.abort(_status(exc), str(exc))

        ended = threading.Event()

        def read_requests() -> None:
            try:
                for request in requests:
                    self._apply_stream_request(subscription, request)
            except Exception as exc:  # the stream's end surfaces as any error
                log.debug("StreamingPull on %s: request stream ended: %s", subscription, exc)
            finally:
                ended.set()

        threading.Thread(target=read_requests, name="streaming-pull-reader", daemon=True).start()
        response_type = types.StreamingPullResponse.pb()
        while context.is_active() and not ended.is_set() and not self._broker.closed:
            try:
                received = self._broker.pull(
                    subscription, batch, wait=STREAM_POLL_SECONDS, ack_deadline=deadline
                )
            except EmulatorError as exc:
                context.abort(_status(exc), str(exc))
            if received:
                yield response_type(
                    received_messages=[convert.received_to_pb(message) for message in received]
                )

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler serving this service."""
        streaming = grpc.stream_stream_rpc_method_handler(
            self.streaming_pull,
            request_deserializer=types.StreamingPullRequest.pb().FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )
        return grpc.method_handlers_generic_handler(
            "google.pubsub.v1.Subscriber",
            {
                "CreateSubscription": _unary(self.create_subscription, types.Subscription),
                "GetSubscription": _unary(self.get_subscription, types.GetSubscriptionRequest),
                "ListSubscriptions": _unary(
                    self.list_subscriptions, types.ListSubscriptionsRequest
                ),
                "DeleteSubscription": _unary(
                    self.delete_subscription, types.DeleteSubscriptionRequest
                ),
                "ModifyPushConfig": _unary(self.modify_push_config, types.ModifyPushConfigRequest),
                "Pull": _unary_in_context(self.pull, types.PullRequest),
                "Acknowledge": _unary(self.acknowledge, types.AcknowledgeRequest),
                "ModifyAckDeadline": _unary(
                    self.modify_ack_deadline, types.ModifyAckDeadlineRequest
                ),
                "StreamingPull": streaming,
            },
        )


def build_server(broker: Broker, host: str, port: int) -> tuple[grpc.Server, int]:
    """Create (not start) the gRPC server; return it with the port actually bound."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="pubsub-grpc"),
        handlers=[PublisherService(broker).handler(), SubscriberService(broker).handler()],
        options=[
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
            # One emulator per port: refuse to share it silently with a stale instance.
            ("grpc.so_reuseport", 0),
        ],
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # how recent grpcio versions report a failed bind
        raise OSError(f"cannot listen on {address} (is the port already in use?)") from exc
    if bound == 0:  # how older grpcio versions report it
        raise OSError(f"cannot listen on {address} (is the port already in use?)")
    return server, bound
