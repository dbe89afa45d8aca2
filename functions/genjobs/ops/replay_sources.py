"""Where replays come from: failed jobs selected in the database, or dead-lettered messages."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection

from genjobs.db import Database
from genjobs.errors import GenJobsError
from genjobs.ops.replay import Action, Replayer, ReplayResult, Summary
from genjobs.sql import query

DEAD_LETTER_SUBSCRIPTION = "generation-jobs-dead-letter-replay"  # infra/pubsub.yaml
PULL_BATCH = 100
PULL_TIMEOUT_SECONDS = 10.0
LOGGED_DATA_BYTES = 1024

log = logging.getLogger(__name__)

OnResult = Callable[[Summary], None]


@dataclass(frozen=True)
class JobFilter:
    """Which failed jobs to replay from the database; every field narrows the selection."""

    task: str | None = None
    error_code: str | None = None
    since: datetime | None = None  # failed at or after
    until: datetime | None = None  # failed before
    user_id: uuid.UUID | None = None
    job_ids: tuple[uuid.UUID, ...] = ()
    limit: int | None = None


def select_failed(conn: Connection, selection: JobFilter) -> tuple[list[uuid.UUID], datetime]:
    """The matching failed jobs, oldest failure first, and the database's time of selection."""
    params = {
        "task": selection.task,
        "error_code": selection.error_code,
        "since": selection.since,
        "until": selection.until,
        "user_id": selection.user_id,
        "any_job": not selection.job_ids,
        "job_ids": [str(job_id) for job_id in selection.job_ids],
        "limit": selection.limit,
    }
    selected_at: datetime = conn.execute(query("database_now")).scalar_one()
    return list(conn.execute(query("select_failed_jobs"), params).scalars()), selected_at


def replay_from_database(
    db: Database,
    replayer: Replayer,
    selection: JobFilter,
    *,
    summary: Summary,
    concurrency: int = 4,
    on_result: OnResult | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Summary:
    """Replay every selected job; a job replayed since the selection began is left alone."""
    with db.transaction() as conn:
        job_ids, selected_at = select_failed(conn, selection)
    if on_total is not None:
        on_total(len(job_ids))

    def one(job_id: uuid.UUID) -> ReplayResult:
        return replayer.replay(job_id, since=selected_at, source="replayed from the database")

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for result in pool.map(one, job_ids):
            summary.add(result)
            if on_result is not None:
                on_result(summary)
    return summary


@dataclass(frozen=True)
class DeadLetter:
    """One message pulled from the dead-letter subscription."""

    ack_id: str
    message_id: str
    job_id: uuid.UUID | None  # None: not a job message
    published_at: datetime
    data: bytes


class DeadLetterQueue(Protocol):
    """Unary pull, ack and release on a pull subscription."""

    def pull(self, max_messages: int) -> list[DeadLetter]:
        """Up to `max_messages` messages; an empty list when none is waiting."""
        ...

    def ack(self, ack_ids: Sequence[str]) -> None:
        """Acknowledge: the messages are gone for good."""
        ...

    def release(self, ack_ids: Sequence[str]) -> None:
        """Give the messages back for redelivery now."""
        ...


class DeadLetterSubscription:
    """The dead-letter replay subscription through the real google-cloud-pubsub client."""

    def __init__(
        self, project: str, subscription: str = DEAD_LETTER_SUBSCRIPTION, *, client: Any = None
    ) -> None:
        if client is None:
            from google.cloud.pubsub_v1 import SubscriberClient

            client = SubscriberClient()
        self._client = client
        self.path: str = client.subscription_path(project, subscription)

    def pull(self, max_messages: int) -> list[DeadLetter]:
        """Unary pull; a wait that times out means nothing is waiting."""
        from google.api_core.exceptions import DeadlineExceeded, GoogleAPIError

        try:
            response = self._client.pull(
                request={"subscription": self.path, "max_messages": max_messages},
                timeout=PULL_TIMEOUT_SECONDS,
            )
        except DeadlineExceeded:
            return []
        except GoogleAPIError as error:
            raise GenJobsError(f"cannot pull from {self.path}: {error}") from error
        return [
            DeadLetter(
                ack_id=received.ack_id,
                message_id=received.message.message_id,
                job_id=job_id_from_data(received.message.data),
                published_at=received.message.publish_time,
                data=bytes(received.message.data),
            )
            for received in response.received_messages
        ]

    def ack(self, ack_ids: Sequence[str]) -> None:
        """Acknowledge; a failure only means the messages come back (their jobs are skipped)."""
        from google.api_core.exceptions import GoogleAPIError

        if not ack_ids:
            return
        try:
            self._client.acknowledge(request={"subscription": self.path, "ack_ids": list(ack_ids)})
        except GoogleAPIError as error:
            raise GenJobsError(f"cannot acknowledge on {self.path}: {error}") from error

    def release(self, ack_ids: Sequence[str]) -> None:
        """A zero ack deadline: redeliver now (to the next run)."""
        from google.api_core.exceptions import GoogleAPIError

        if not ack_ids:
            return
        try:
            self._client.modify_ack_deadline(
                request={
                    "subscription": self.path,
                    "ack_ids": list(ack_ids),
                    "ack_deadline_seconds": 0,
                }
            )
        except GoogleAPIError:
            # Harmless: they come back anyway once their ack deadline passes.
            log.warning("could not release %d held messages", len(ack_ids), exc_info=True)

    def close(self) -> None:
        """Close the gRPC channel."""
        self._client.close()


def job_id_from_data(data: bytes) -> uuid.UUID | None:
    """The job id a message carries (bare, or as {"job_id": …}); None if it carries none."""
    try:
        text = bytes(data).decode().strip()
    except UnicodeDecodeError:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    job_id = value.get("job_id") if isinstance(value, dict) else None
    try:
        return uuid.UUID(job_id) if isinstance(job_id, str) else None
    except ValueError:
        return None


def replay_from_dead_letter(
    queue: DeadLetterQueue,
    replayer: Replayer,
    *,
    summary: Summary,
    limit: int | None = None,
    job_ids: Iterable[uuid.UUID] = (),
    concurrency: int = 4,
    on_result: OnResult | None = None,
) -> Summary:
    """Replay dead-lettered jobs; each message is acked only once its job is queued again
    (or needs nothing more). Messages kept back are released for a later run at the end."""
    wanted = set(job_ids)
    seen: set[str] = set()
    done: set[str] = set()  # settled message ids: acked
    held: dict[str, str] = {}  # message id → newest ack id, released at the end
    handled = 0
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            while limit is None or handled < limit:
                batch = queue.pull(min(PULL_BATCH, limit - handled) if limit else PULL_BATCH)
                fresh = [m for m in batch if m.message_id not in seen]
                # Seen before and back again (ack deadline passed, or a duplicate delivery):
                # ack it again if settled, else keep holding it under its newest ack id.
                again = [m for m in batch if m.message_id in seen]
                queue.ack([m.ack_id for m in again if m.message_id in done])
                held.update({m.message_id: m.ack_id for m in again if m.message_id not in done})
                seen.update(m.message_id for m in batch)
                if not fresh:
                    break
                mine = [m for m in fresh if not wanted or m.job_id in wanted]
                results = list(pool.map(lambda m: _replay_message(replayer, m), mine))
                settled = {
                    m.message_id
                    for m, result in zip(mine, results, strict=True)
                    if result.settles_message and not summary.dry_run
                }
                held.update({m.message_id: m.ack_id for m in fresh if m.message_id not in settled})
                queue.ack([m.ack_id for m in mine if m.message_id in settled])
                done |= settled
                summary.count_acked(len(settled))
                for result in results:
                    summary.add(result)
                    if on_result is not None:
                        on_result(summary)
                handled += len(mine)
                if wanted and wanted <= {r.job_id for r in summary.results}:
                    break
    finally:
        queue.release(list(held.values()))
    return summary


def _replay_message(replayer: Replayer, message: DeadLetter) -> ReplayResult:
    if message.job_id is None:
        # Nothing of ours publishes such a message: logged with its data, then acked.
        log.warning(
            "dead-letter message %s carries no job id; acked. data: %r",
            message.message_id,
            message.data[:LOGGED_DATA_BYTES],
        )
        return ReplayResult(None, Action.SKIPPED, "not_a_job_message")
    return replayer.replay(
        message.job_id,
        since=message.published_at,
        source=f"replayed from dead-letter message {message.message_id}",
        message_id=message.message_id,
        defer_unfinished=True,
    )
