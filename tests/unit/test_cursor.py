"""List cursors: opaque, round-trip, and a forged one is the client's error."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import pytest

from genjobs.errors import InvalidRequest
from genjobs.store import decode_cursor


def forge(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def test_a_cursor_round_trips_in_utc() -> None:
    job_id = uuid.uuid4()
    moment = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)
    assert decode_cursor(forge(f"{moment.isoformat()}|{job_id}")) == (moment, job_id)


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64 at all!",
        forge("no separator"),
        forge(f"yesterday|{uuid.uuid4()}"),
        forge("2026-11-26T10:00:00+00:00|not-a-uuid"),
        # Year 1 at +14:00 is before datetime.min once in UTC: it used to break the connection.
        forge(f"0001-01-01T00:00:00+14:00|{uuid.uuid4()}"),
    ],
)
def test_forged_cursors_are_invalid_requests(cursor: str) -> None:
    with pytest.raises(InvalidRequest):
        decode_cursor(cursor)
