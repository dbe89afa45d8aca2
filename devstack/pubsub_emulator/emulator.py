"""The emulator as one object: broker, gRPC server, push dispatcher and certs endpoint."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

import grpc

from devstack.pubsub_emulator.broker import Broker
from devstack.pubsub_emulator.faults import FaultConfig, FaultInjector
from devstack.pubsub_emulator.oidc import JWKS_PATH, CertsServer, TokenIssuer
from devstack.pubsub_emulator.push import (
    DEFAULT_MAX_OUTSTANDING_PUSHES,
    DEFAULT_SERVICE_ACCOUNT,
    PushDispatcher,
)
from devstack.pubsub_emulator.server import build_server
from devstack.pubsub_emulator.topology import Topology

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8085
DEFAULT_HTTP_PORT = 8086
DEFAULT_PROJECT = "local-project"


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything the emulator needs; ports may be 0 to let the OS pick."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    http_port: int = DEFAULT_HTTP_PORT
    project: str = DEFAULT_PROJECT
    topology: Topology = field(default_factory=Topology)
    # Function name -> URL, for topology subscriptions whose push_endpoint names a function.
    endpoints: Mapping[str, str] = field(default_factory=dict)
    push_service_account: str = DEFAULT_SERVICE_ACCOUNT
    # Replaces every push token's audience (by default the push endpoint URL, as on Google).
    push_audience: str = ""
    faults: FaultConfig = field(default_factory=FaultConfig)
    max_outstanding_pushes: int = DEFAULT_MAX_OUTSTANDING_PUSHES
    # PEM of the RSA key that signs push tokens; a fresh key per start when empty.
    signing_key_pem: bytes = b""


class Emulator:
    """A running Pub/Sub emulator; use `start()`/`stop()` or a `with` block."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        # One injector shared by everything, so a seed gives one reproducible sequence.
        self._faults = FaultInjector(config.faults)
        self.broker = Broker(self._faults)
        self._server: grpc.Server | None = None
        self._certs: CertsServer | None = None
        self._dispatcher: PushDispatcher | None = None
        self._started = False
        self._running = False
        self.port = 0
        self.http_port = 0

    @property
    def host(self) -> str:
        """The interface both servers listen on."""
        return self.config.host

    @property
    def emulator_host(self) -> str:
        """The value for PUBSUB_EMULATOR_HOST."""
        return f"{self.host}:{self.port}"

    @property
    def certs_url(self) -> str:
        """Where the push tokens' signing key is published (JWKS)."""
        return f"http://{self.host}:{self.http_port}{JWKS_PATH}"

    def start(self) -> Emulator:
        """Create the topology, then start serving gRPC, certs and pushes."""
        if self._started:
            raise RuntimeError("an Emulator starts once; make a new one")
        self._started = True
        config = self.config
        topics, subscriptions = config.topology.resolve(
            config.project,
            config.endpoints,
            service_account_email=config.push_service_account,
        )
        for topic in topics:
            self.broker.create_topic(topic)
        for subscription in subscriptions:
            self.broker.create_subscription(subscription)
            if subscription.push is not None:
                log.info("%s pushes to %s", subscription.name, subscription.push.endpoint)

        issuer = TokenIssuer(private_key_pem=config.signing_key_pem or None)
        self._certs = CertsServer(issuer, config.host, config.http_port)
        self.http_port = self._certs.port
        try:
            self._server, self.port = build_server(self.broker, config.host, config.port)
        except BaseException:
            self._certs.stop()
            raise
        self._dispatcher = PushDispatcher(
            self.broker,
            issuer,
            self._faults,
            service_account_email=config.push_service_account,
            audience_override=config.push_audience,
            max_outstanding=config.max_outstanding_pushes,
        )
        self._certs.start()
        self._server.start()
        self._dispatcher.start()
        self._running = True
        return self

    def stop(self, grace: float = 0.5) -> None:
        """Stop pushing and serving; idempotent."""
        if not self._running:
            return
        self._running = False
        if self._dispatcher is not None:
            self._dispatcher.stop()
        if self._server is not None:
            self._server.stop(grace).wait()
        if self._certs is not None:
            self._certs.stop()

    def stats(self) -> dict[str, int]:
        """Message and push counters, for tests and diagnostics."""
        counters = self.broker.stats()
        if self._dispatcher is not None:
            counters.update(self._dispatcher.stats())
        return counters

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
