"""The state machine table: complete, and consistent with which statuses are terminal."""

from __future__ import annotations

import pytest

from genjobs.statuses import TERMINAL, TRANSITIONS, Event, Status
from genjobs.store import Outcome


def test_every_event_has_a_transition_and_only_replay_leaves_a_terminal_status() -> None:
    assert set(TRANSITIONS) == set(Event)
    for event, transition in TRANSITIONS.items():
        assert transition.targets, event
        if event is not Event.REPLAYED:
            assert not transition.sources & TERMINAL, event
    assert TRANSITIONS[Event.REPLAYED].sources == {Status.FAILED}


def test_every_status_is_reachable() -> None:
    reachable = set().union(*(t.targets for t in TRANSITIONS.values()))
    assert reachable == set(Status)


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (Outcome.failed("x", "y"), Status.FAILED),
        (Outcome.retry("x", "y"), Status.QUEUED),
        (Outcome.retry("x", "y", defer_seconds=30), Status.QUEUED),
    ],
)
def test_outcomes_take_their_status_from_their_event(outcome: Outcome, status: Status) -> None:
    assert outcome.status is status is TRANSITIONS[outcome.event].target
