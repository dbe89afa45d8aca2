"""Push delivery: the wrapped JSON envelope, OIDC-authenticated POSTs, and their outcomes."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from devstack.pubsub_emulator.broker import Broker
from devstack.pubsub_emulator.faults import FaultInjector
from devstack.pubsub_emulator.model import PushTask, rfc3339
from devstack.pubsub_emulator.oidc import TokenIssuer

log = logging.getLogger(__name__)

# Pub/Sub treats these as an acknowledgement and anything else, or no answer, as a nack.
ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
DEFAULT_MAX_OUTSTANDING_PUSHES = 64
DEFAULT_SERVICE_ACCOUNT = "pubsub-push@local-project.iam.gserviceaccount.com"
# What Google's push requests carry, in case an endpoint logs or checks it.
USER_AGENT = "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"
# Safety net: re-check the schedule at least this often even if no change was signalled.
MAX_IDLE_SECONDS = 1.0
MAX_RESPONSE_BYTES = 64 * 1024


def envelope(task: PushTask) -> dict[str, Any]:
    """The wrapped push body, shaped like Google's (empty fields omitted, as in proto JSON)."""
    message = task.message
    body: dict[str, Any] = {}
    if message.attributes:
        body["attributes"] = dict(message.attributes)
    if message.data:
        body["data"] = base64.b64encode(message.data).decode("ascii")
    body["messageId"] = body["message_id"] = message.message_id
    if message.ordering_key:
        body["orderingKey"] = message.ordering_key
    body["publishTime"] = body["publish_time"] = rfc3339(message.publish_time)
    wrapped: dict[str, Any] = {"message": body, "subscription": task.subscription}
    if task.delivery_attempt:
        wrapped["deliveryAttempt"] = task.delivery_attempt
    return wrapped


@dataclass(frozen=True, slots=True)
class PushResponse:
    """How an endpoint answered: an HTTP status, or the error that replaced one."""

    status: int | None
    error: str | None
    seconds: float

    @property
    def acked(self) -> bool:
        """Whether Pub/Sub counts this answer as an acknowledgement."""
        return self.status in ACK_STATUSES

    def describe(self) -> str:
        """A compact form for the log."""
        answer = f"HTTP {self.status}" if self.status is not None else self.error
        return f"{answer} in {self.seconds * 1000:.0f}ms"


def post(url: str, body: bytes, token: str, timeout: float) -> PushResponse:
    """POST a push body; every failure to get a status becomes an error string."""
    started = time.monotonic()
    parts = urlsplit(url)
    connection_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = connection_type(parts.netloc, timeout=max(timeout, 0.001))
    try:
        connection.request(
            "POST",
            path,
            body=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
                "User-Agent": USER_AGENT,
            },
        )
        response = connection.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        return PushResponse(response.status, None, time.monotonic() - started)
    except TimeoutError:
        return PushResponse(None, "no answer within the ack deadline", time.monotonic() - started)
    except (OSError, http.client.HTTPException) as exc:
        error = f"{type(exc).__name__}: {exc}"
        return PushResponse(None, error, time.monotonic() - started)
    finally:
        connection.close()


class PushDispatcher:
    """Runs the schedule: takes due push deliveries and performs each in its own thread."""

    def __init__(
        self,
        broker: Broker,
        issuer: TokenIssuer,
        faults: FaultInjector,
        *,
        service_account_email: str = DEFAULT_SERVICE_ACCOUNT,
        audience_override: str = "",
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING_PUSHES,
    ) -> None:
        self._broker = broker
        self._issuer = issuer
        self._faults = faults
        self._service_account_email = service_account_email
        self._audience_override = audience_override
        self._max_outstanding = max_outstanding
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()

    def start(self) -> None:
        """Start the scheduling thread."""
        self._thread = threading.Thread(target=self._run, name="pubsub-push", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling; pushes already on the wire finish on their own daemon threads."""
        self._stop.set()
        self._broker.close()
        if self._thread is not None:
            self._thread.join()

    def stats(self) -> dict[str, int]:
        """Counters of push requests made."""
        with self._stats_lock:
            return dict(self._stats)

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self._stats[key] += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._schedule()
            except Exception:
                # The schedule must outlive a bug: without it nothing is pushed or expired.
                log.exception("push scheduling failed; retrying")
                self._stop.wait(MAX_IDLE_SECONDS)

    def _schedule(self) -> None:
        """Start the due pushes, or sleep until something may fall due."""
        tasks, wait, version = self._broker.due_pushes(self._max_outstanding)
        for task in tasks:
            # A thread per push: slow endpoints must not hold up the others, and daemon
            # threads let the process exit without waiting out a 600 s ack deadline.
            threading.Thread(
                target=self._deliver, args=(task,), name="pubsub-push-request", daemon=True
            ).start()
            duplicate_after = self._faults.duplicate_delay()
            if duplicate_after is not None:
                threading.Thread(
                    target=self._deliver_duplicate,
                    args=(task, duplicate_after),
                    name="pubsub-push-duplicate",
                    daemon=True,
                ).start()
        if not tasks:
            timeout = MAX_IDLE_SECONDS if wait is None else min(wait, MAX_IDLE_SECONDS)
            self._broker.wait_for_change(version, timeout)

    def _request(self, task: PushTask) -> PushResponse:
        """Make the push request; never raises, so every task is settled."""
        self._count("push_requests")
        try:
            audience = self._audience_override or task.push.audience or task.push.endpoint
            email = task.push.service_account_email or self._service_account_email
            body = json.dumps(envelope(task), separators=(",", ":")).encode()
            token = self._issuer.token(audience, email)
            return post(task.push.endpoint, body, token, task.timeout)
        except Exception as exc:
            log.exception("push to %s failed inside the emulator", task.push.endpoint)
            return PushResponse(None, f"emulator error: {exc}", 0.0)

    def _deliver(self, task: PushTask) -> None:
        response = self._request(task)
        if response.status is None:
            self._count("push_errors")
        settlement = self._broker.finish_push(task, response.acked)
        log.info(
            "push %s msg=%s attempt=%d -> %s: %s",
            task.subscription.rsplit("/", 1)[-1],
            task.message.message_id,
            task.attempt,
            response.describe(),
            settlement.detail,
        )

    def _deliver_duplicate(self, task: PushTask, delay: float) -> None:
        self._stop.wait(delay)
        if self._stop.is_set():
            return
        self._count("push_duplicates")
        response = self._request(task)
        log.info(
            "push %s msg=%s attempt=%d (injected duplicate) -> %s: response ignored",
            task.subscription.rsplit("/", 1)[-1],
            task.message.message_id,
            task.attempt,
            response.describe(),
        )
