"""free_port: a stack's ports are all chosen before any is bound, so none may repeat."""

from __future__ import annotations

import itertools

import pytest

from devstack import supervisor


def test_a_port_is_never_handed_out_twice_even_when_chance_picks_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    picks = itertools.chain([5, 5, 5], itertools.repeat(7))
    monkeypatch.setattr(supervisor, "_handed_out", set())
    monkeypatch.setattr(supervisor.secrets, "randbelow", lambda _bound: next(picks))
    first, second = supervisor.free_port(), supervisor.free_port()
    assert first != second
    assert first - second == 2  # the repeated pick was skipped, not bound twice
