"""Publishing job ids to the jobs topic with the real google-cloud-pubsub client."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any, Protocol

from genjobs.settings import Settings

log = logging.getLogger(__name__)


class JobPublisher(Protocol):
    """Anything that can publish a job id and return the message id."""

    def publish(self, job_id: uuid.UUID, attributes: dict[str, str]) -> str:
        """Publish and wait for the server's message id; raise on failure."""
        ...


class PubSubJobPublisher:
    """One PublisherClient per instance, created on first use (it is slow to import)."""

    def __init__(self, settings: Settings) -> None:
        self._project = settings.google_cloud_project
        self._topic_name = settings.jobs_topic
        self._timeout = settings.publish_timeout_seconds
        self._client: Any = None
        self._topic = ""
        self._lock = threading.Lock()

    def _ensure_client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from google.cloud.pubsub_v1 import PublisherClient, types

                    # Each submit waits for its own publish: batching would only add latency.
                    client = PublisherClient(batch_settings=types.BatchSettings(max_messages=1))
                    self._topic = client.topic_path(self._project, self._topic_name)
                    self._client = client
        return self._client

    def publish(self, job_id: uuid.UUID, attributes: dict[str, str]) -> str:
        """Publish the job id as the message data; the database stays the source of truth."""
        client = self._ensure_client()
        future = client.publish(self._topic, str(job_id).encode(), **attributes)
        message_id: str = future.result(timeout=self._timeout)
        return message_id
