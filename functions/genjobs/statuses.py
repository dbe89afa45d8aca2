"""The job's state machine: its statuses (`ai_status`), events, and each event's from → to."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """Where a job is: queued → processing → succeeded | failed | cancelled."""

    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Terminal statuses change again only through a replay (failed → queued)."""
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
UNFINISHED = frozenset({Status.QUEUED, Status.PROCESSING})


class Event(StrEnum):
    """One `generation_logs` row per event."""

    QUEUED = "queued"
    PUBLISHED = "published"
    STARTED = "started"
    RETRY = "retry"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"
    REPLAYED = "replayed"


@dataclass(frozen=True)
class Transition:
    """An event moves a job from one of `sources` to one of `targets` (no source: created)."""

    sources: frozenset[Status]
    targets: frozenset[Status]
    by: str  # who writes it, and in which statement of genjobs/sql/queries.sql

    @property
    def target(self) -> Status:
        """The one status this event leads to (only for events with a single target)."""
        (only,) = self.targets
        return only


def _t(sources: set[Status], targets: set[Status], by: str) -> Transition:
    return Transition(frozenset(sources), frozenset(targets), by)


_Q, _P, _S, _F, _C = (Status.QUEUED, Status.PROCESSING, Status.SUCCEEDED, Status.FAILED,
                      Status.CANCELLED)  # fmt: skip

# Every status change there is. tests/integration/test_transitions.py runs each statement from
# every status and checks it against this table.
TRANSITIONS: dict[Event, Transition] = {
    Event.QUEUED: _t(set(), {_Q}, "api submit: insert_job"),
    # Not a change: a message for the unfinished job reached Pub/Sub.
    Event.PUBLISHED: _t({_Q, _P}, {_Q, _P}, "api, sweeper, replay: mark_published"),
    # From processing only once the lease has expired (the worker that held it died).
    Event.STARTED: _t({_Q, _P}, {_P}, "worker: claim_job"),
    Event.RETRY: _t({_P}, {_Q}, "worker: finish_attempt; sweeper: sweep_expired_leases"),
    Event.SUCCEEDED: _t({_P}, {_S}, "worker: finish_attempt"),
    Event.FAILED: _t(
        {_Q, _P},
        {_F},
        "worker: finish_attempt, fail_unfinished (attempts spent); "
        "sweeper: sweep_expired_leases, sweep_expire_old",
    ),
    Event.DEAD_LETTERED: _t({_Q, _P}, {_F}, "dead_letter: fail_unfinished"),
    Event.CANCELLED: _t({_Q, _P}, {_C}, "api cancel: cancel_job"),
    Event.REPLAYED: _t({_F}, {_Q}, "genjobs replay: replay_job"),
}
