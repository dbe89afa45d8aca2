"""A private local stack (emulator, stub model, the four functions, scheduler) on free ports."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.dev import Ports, StackConfig, build_services, start_scheduler
from devstack.signing import google_id_token, load_or_create_key
from devstack.supervisor import Supervisor, free_port
from genjobs.auth.minting import mint_user_token
from genjobs.settings import LOCAL_JWT_SECRET, LOCAL_PUSH_SERVICE_ACCOUNT, LOCAL_SUPABASE_URL

TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Stack:
    """A running stack and clients for it."""

    config: StackConfig
    supervisor: Supervisor
    logs: Path
    push_key: rsa.RSAPrivateKey

    @property
    def ports(self) -> Ports:
        return self.config.ports

    def push_token(self, audience: str, email: str = LOCAL_PUSH_SERVICE_ACCOUNT) -> str:
        """A push token signed with the emulator's key, as Pub/Sub would send it."""
        return google_id_token(self.push_key, audience=audience, email=email)

    @property
    def worker_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.worker}/"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    @property
    def stub_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.stub_model}"

    def client(self, user: uuid.UUID | None = None) -> httpx.Client:
        """An api client authenticated as `user` (a new user by default)."""
        token = mint_user_token(
            secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL, sub=user or uuid.uuid4()
        )
        return httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def model_calls(self, contains: str) -> list[dict[str, Any]]:
        """Calls the stub model received whose prompt contains `contains`."""
        response = httpx.get(f"{self.stub_url}/_stub/calls", params={"contains": contains})
        response.raise_for_status()
        calls: list[dict[str, Any]] = response.json()
        return calls

    def wait_for_log(self, service: str, needle: str, timeout: float = 30) -> str:
        """The first line of a service's output containing `needle`, once it appears."""
        path = self.logs / f"{service}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                for line in path.read_text(errors="replace").splitlines():
                    if needle in line:
                        return line
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} did not appear in {service}'s output in {timeout}s")

    def wait_for(
        self,
        client: httpx.Client,
        job_id: str,
        done: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """Poll the api until the job satisfies `done` (default: terminal)."""
        check = done or (lambda job: job["status"] in TERMINAL)
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = client.get(f"/v1/generations/{job_id}").json()
            if check(job):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not get there in {timeout}s: {job}")


def free_ports() -> Ports:
    """Every local port on a free one, so tests can run beside `make run`."""
    return Ports(**{f.name: free_port() for f in dataclasses.fields(Ports)})


@contextmanager
def running_stack(config: StackConfig, logs: Path) -> Iterator[Stack]:
    """Start every process and the local scheduler; stop them all afterwards."""
    key = load_or_create_key(config.signing_key)
    supervisor = Supervisor(build_services(config), output_dir=logs)
    supervisor.start()
    scheduler = start_scheduler(config)
    try:
        yield Stack(config, supervisor, logs, key)
    finally:
        scheduler.stop()
        supervisor.stop()
