"""Publishing jobs: publish_job (the one way) and the real google-cloud-pubsub client."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from genjobs import store
from genjobs.db import Database
from genjobs.settings import Settings

log = logging.getLogger(__name__)


class JobPublisher(Protocol):
    """Anything that can publish a job id and return the message id."""

    def publish(self, job_id: uuid.UUID, attributes: dict[str, str]) -> str:
        """Publish and wait for the server's message id; raise on failure."""
        ...


class PubSubJobPublisher:
    """One PublisherClient per instance, created on first use (it is slow to import).

    Each submit waits for its own publish, so the client's batching (a batch object and a
    commit thread per message) is skipped: the message goes out through the generated
    Publish call of the same client, with a retry bounded by the publish timeout.
    """

    def __init__(self, settings: Settings) -> None:
        self._project = settings.google_cloud_project
        self._topic_name = settings.jobs_topic
        self._timeout = settings.publish_timeout_seconds
        self._publish: Callable[[bytes, dict[str, str]], str] | None = None
        self._lock = threading.Lock()

    def _ensure_client(self) -> Callable[[bytes, dict[str, str]], str]:
        if self._publish is None:
            with self._lock:
                if self._publish is None:
                    self._publish = self._connect()
        return self._publish

    def _connect(self) -> Callable[[bytes, dict[str, str]], str]:
        from google.api_core import exceptions, retry
        from google.cloud.pubsub_v1 import PublisherClient
        from google.pubsub_v1 import PubsubMessage
        from google.pubsub_v1.services.publisher.client import PublisherClient as Generated

        client = PublisherClient()  # reads PUBSUB_EMULATOR_HOST, as every client here does
        topic = client.topic_path(self._project, self._topic_name)
        # Pub/Sub's own list of retryable publish errors, within this submit's time budget.
        bounded = retry.Retry(
            predicate=retry.if_exception_type(
                exceptions.Aborted,
                exceptions.Cancelled,
                exceptions.DeadlineExceeded,
                exceptions.InternalServerError,
                exceptions.ResourceExhausted,
                exceptions.ServiceUnavailable,
                exceptions.Unknown,
            ),
            initial=0.05,
            maximum=1.0,
            timeout=self._timeout,
        )

        def publish(data: bytes, attributes: dict[str, str]) -> str:
            response = Generated.publish(
                client,
                topic=topic,
                messages=[PubsubMessage(data=data, attributes=attributes)],
                retry=bounded,
                timeout=self._timeout,
            )
            message_id: str = response.message_ids[0]
            return message_id

        return publish

    def publish(self, job_id: uuid.UUID, attributes: dict[str, str]) -> str:
        """Publish the job id as the message data; the database stays the source of truth."""
        return self._ensure_client()(str(job_id).encode(), attributes)


@dataclass(frozen=True)
class PublishResult:
    """A publish's message id, or the error that left the job to the sweeper."""

    message_id: str | None
    error: Exception | None = None


def publish_job(
    db: Database,
    publisher: JobPublisher,
    job_id: uuid.UUID,
    *,
    task: str,
    trace_id: str | None,
    was_published: bool = False,
    record: bool = True,
) -> PublishResult:
    """Publish a committed job; on failure leave it to the sweeper.

    `record` writes `published_at` and a `published` event after the publish. A submit does
    not: its row was stored counted as published (a failure clears that, `was_published`),
    and the delivery that claims the job records its message id.
    """
    # The only way jobs are published (submit, replay, sweeper). A failed publish of a job
    # published before clears `published_at`, so the sweeper takes it after the grace period
    # rather than the republish interval; a job never published needs no write for that.
    attributes = {"task": task, **({"trace_id": trace_id} if trace_id else {})}
    extra = {"job_id": str(job_id), "task": task}
    try:
        message_id = publisher.publish(job_id, attributes)
    except Exception as error:
        log.warning("publish failed; the sweeper will publish this job", exc_info=True, extra=extra)
        if was_published:
            with db.transaction() as conn:
                store.unmark_published(conn, job_id)
        return PublishResult(None, error)
    if not record:
        return PublishResult(message_id)
    try:
        with db.transaction() as conn:
            store.mark_published(conn, job_id, message_id)
    except Exception:
        # The message is out: a missing `published` row only risks one more publish later.
        log.warning("could not record a publish", exc_info=True, extra=extra)
    return PublishResult(message_id)
