"""Local stand-in for Cloud Scheduler: calls the sweeper on a short interval with an OIDC token."""

from __future__ import annotations

import logging
import threading

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.signing import google_id_token
from genjobs.settings import LOCAL_SCHEDULER_SERVICE_ACCOUNT

log = logging.getLogger("devstack.scheduler")


class LocalScheduler:
    """A daemon thread POSTing to `url` every `interval` seconds until `stop()`."""

    def __init__(self, url: str, key: rsa.RSAPrivateKey, interval: float) -> None:
        self.url = url
        self.key = key
        self.interval = interval
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="local-scheduler", daemon=True)

    def start(self) -> LocalScheduler:
        """Begin calling the sweeper."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current call."""
        self._stop.set()
        self._thread.join(timeout=self.interval + 35)

    def _loop(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.wait(self.interval):
                token = google_id_token(
                    self.key, audience=self.url, email=LOCAL_SCHEDULER_SERVICE_ACCOUNT
                )
                try:
                    response = client.post(self.url, headers={"Authorization": f"Bearer {token}"})
                except httpx.HTTPError as error:
                    # The sweeper may be restarting; the next tick tries again, as Scheduler would.
                    log.debug("sweeper call failed: %s", error)
                    continue
                self.runs += 1
                if response.status_code != 200:
                    log.warning("sweeper answered %s: %s", response.status_code, response.text)
