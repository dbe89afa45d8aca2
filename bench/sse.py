"""A minimal Server-Sent Events client over `http.client`: what a browser's fetch stream reads."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Event:
    """One event as it arrived (`at`: time.monotonic())."""

    name: str
    data: Any
    at: float


class SseStream:
    """One open `GET /v1/generations/{id}/events` on its own connection."""

    def __init__(self, port: int, job_id: str, token: str, timeout: float = 120.0) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self._connection.request(
            "GET",
            f"/v1/generations/{job_id}/events",
            headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
        )
        self._response = self._connection.getresponse()
        if self._response.status != 200:
            body = self._response.read()[:500]
            self.close()
            raise RuntimeError(f"events of {job_id}: {self._response.status} {body!r}")

    def events(self) -> Iterator[Event]:
        """Events as they arrive, until the server ends the stream (comments skipped)."""
        fields: dict[str, str] = {}
        while True:
            raw = self._response.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            if line.startswith(":"):
                continue
            if line == "":
                if "data" in fields:
                    yield Event(fields.get("event", "message"), json.loads(fields["data"]), _now())
                fields = {}
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")

    def until(self, names: frozenset[str]) -> Event | None:
        """Read on to the first event named in `names` (None if the stream ended first)."""
        return next((event for event in self.events() if event.name in names), None)

    def close(self) -> None:
        """Drop the connection (the server stops the stream at its next write)."""
        self._connection.close()


def _now() -> float:
    return time.monotonic()
