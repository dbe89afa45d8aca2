"""Starts local processes, restarts the ones that die, and stops them all together."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Service:
    """One local process: what to run, where it listens, and whether to restart it."""

    name: str
    argv: Sequence[str]
    port: int
    env: Mapping[str, str] = field(default_factory=dict)
    restart: bool = True
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """True once something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def free_port() -> int:
    """An unused local TCP port (for tests running a stack beside `make run`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def function_service(
    target: str, port: int, env: Mapping[str, str], *, name: str | None = None, restart: bool = True
) -> Service:
    """functions-framework serving one entry point of functions/main.py, as the platform does
    (FUNCTION_TARGET in the environment)."""
    argv = [
        sys.executable,
        "-m",
        "functions_framework",
        "--source",
        str(ROOT / "functions" / "main.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return Service(
        name or target, argv, port, env={**env, "FUNCTION_TARGET": target}, restart=restart
    )


class Supervisor:
    """Runs services as process groups; `stop()` leaves nothing running."""

    def __init__(
        self,
        services: Sequence[Service],
        log: IO[str] | None = None,
        output_dir: Path | None = None,
    ) -> None:
        self.services = list(services)
        self.log = log or sys.stderr
        # Tests keep each process's output in a file of its own; `make run` shows it all.
        self.output_dir = output_dir
        self._stopping = False

    def start(self, ready_timeout: float = 30) -> None:
        """Start every service and wait until each listens on its port."""
        for service in self.services:
            self._spawn(service)
        for service in self.services:
            if not wait_for_port(service.port, ready_timeout):
                self.stop()
                raise RuntimeError(f"{service.name} did not listen on port {service.port}")

    def _spawn(self, service: Service) -> None:
        env = {**os.environ, **service.env}
        output = None
        if self.output_dir is not None:
            output = (self.output_dir / f"{service.name}.log").open("ab")
        try:
            service.process = subprocess.Popen(
                list(service.argv),
                env=env,
                cwd=ROOT,
                start_new_session=True,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
            )
        finally:
            if output is not None:
                output.close()

    def check(self) -> None:
        """Restart any service that died, with a growing delay (as the platform would)."""
        now = time.monotonic()
        for service in self.services:
            process = service.process
            if self._stopping or process is None or process.poll() is None or not service.restart:
                continue
            if service.next_start == 0.0:
                delay = min(10.0, 0.5 * 2 ** min(service.restarts, 5))
                service.next_start = now + delay
                print(
                    f"[dev] {service.name} exited with {process.returncode}; "
                    f"restarting in {delay:.1f}s",
                    file=self.log,
                    flush=True,
                )
            elif now >= service.next_start:
                service.restarts += 1
                service.next_start = 0.0
                self._spawn(service)

    def watch(self, interval: float = 0.25) -> None:
        """Restart dead services from a background thread until `stop()` (fault tests)."""

        def loop() -> None:
            while not self._stopping:
                self.check()
                time.sleep(interval)

        threading.Thread(target=loop, name="supervisor-watch", daemon=True).start()

    def run_forever(self) -> None:
        """Supervise until SIGINT/SIGTERM, then stop everything."""
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while True:
                self.check()
                time.sleep(0.25)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def pause(self, name: str) -> None:
        """Stop one service and keep it down until `resume` (fault tests)."""
        service = self._service(name)
        service.restart = False
        if service.process is not None:
            _signal_group(service.process, signal.SIGKILL)
            service.process.wait()

    def resume(self, name: str, ready_timeout: float = 30) -> None:
        """Start a paused service again and wait until it listens."""
        service = self._service(name)
        self._spawn(service)
        service.restart = True
        if not wait_for_port(service.port, ready_timeout):
            raise RuntimeError(f"{service.name} did not listen on port {service.port}")

    def _service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to one service's process group (fault tests)."""
        for service in self.services:
            if service.name == name and service.process is not None:
                _signal_group(service.process, sig)

    def stop(self, grace: float = 5.0) -> None:
        """Terminate every process group, then kill what is left after `grace` seconds."""
        self._stopping = True
        running = [s.process for s in self.services if s.process and s.process.poll() is None]
        for process in running:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    # Once the leader is reaped its pid may belong to someone else (a Postgres postmaster is
    # its own group leader too): only signal a group whose leader is still ours.
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
