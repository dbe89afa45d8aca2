"""Starts local processes, restarts the ones that die, and stops them all together."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from devstack.console import Console
from devstack.ports import busy_port_report

ROOT = Path(__file__).resolve().parents[1]
# Ways a person ends `genjobs dev`: Ctrl-C, `kill`, closing the terminal.
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class PortsBusy(RuntimeError):
    """Some service's port is already taken: starting would only crash-loop."""


class ShutdownRequested(BaseException):
    """Raised in the main thread by the first shutdown signal (like KeyboardInterrupt)."""


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


_handed_out: set[int] = set()


def free_port() -> int:
    """An unused local TCP port (for tests running a stack beside `make run`).

    Taken below the kernel's ephemeral range: a port from the range (what binding port 0
    gives) can become some outgoing connection's source port before its service binds it,
    and under a bench's connection churn that happened. Never the same port twice in one
    process: a stack's ports are all chosen before any is bound, and two of its services on
    one port left one of them dead.
    """
    low = _ephemeral_range_start()
    for _ in range(200):
        port = low - 1 - secrets.randbelow(min(12000, low - 1024))
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port below {low}")


def _ephemeral_range_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems start theirs higher


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
        # Tests keep each process's output in a file of its own; `make run` shows it all,
        # each line prefixed with the service's name.
        self.output_dir = output_dir
        self.console = (
            Console(sys.stdout, [*(s.name for s in self.services), "dev"])
            if output_dir is None
            else None
        )
        self._pumps: list[threading.Thread] = []
        self._stopping = False
        self._shutdown_requested = False
        self._stopped = threading.Event()

    def start(self, ready_timeout: float = 30) -> None:
        """Start every service and wait until each listens on its port."""
        busy = busy_port_report({s.name: s.port for s in self.services})
        if busy:
            raise PortsBusy("; ".join(busy))
        for service in self.services:
            self._spawn(service)
        for service in self.services:
            if not wait_for_port(service.port, ready_timeout):
                code = service.process.poll() if service.process else None
                self.stop()
                exited = f" (it exited with {code})" if code is not None else ""
                raise RuntimeError(f"{service.name} did not listen on port {service.port}{exited}")

    def _spawn(self, service: Service) -> None:
        env = {**os.environ, **service.env}
        output: IO[bytes] | int | None = subprocess.PIPE if self.console else None
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
                # Safe beside our threads: it takes no lock, imports nothing, only syscalls.
                preexec_fn=_die_with_parent(),  # noqa: PLW1509
            )
        finally:
            if self.output_dir is not None and output is not None and not isinstance(output, int):
                output.close()
        if self.console is not None and service.process.stdout is not None:
            self._pumps.append(self.console.pump(service.name, service.process.stdout))

    def say(self, message: str) -> None:
        """A line from the supervisor itself."""
        if self.console is not None:
            self.console.write("dev", message)
        else:
            print(f"[dev] {message}", file=self.log, flush=True)

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
                self.say(
                    f"{service.name} exited with {process.returncode}; restarting in {delay:.1f}s"
                )
            elif now >= service.next_start:
                service.restarts += 1
                service.next_start = 0.0
                self._spawn(service)

    def watch(self, interval: float = 0.25) -> None:
        """Restart dead services from a background thread until `stop()` (fault tests)."""

        def loop() -> None:
            # Lives until `stop()` has finished: the services this thread restarted get the
            # parent-death SIGKILL when it ends, and should get stop()'s SIGTERM first.
            while not self._stopped.is_set():
                self.check()
                self._stopped.wait(interval)

        threading.Thread(target=loop, name="supervisor-watch", daemon=True).start()

    def supervise(self, interval: float = 0.25) -> None:
        """Restart dead services until a shutdown signal (see `stopping_on_signals`)."""
        while True:
            self.check()
            time.sleep(interval)

    @contextlib.contextmanager
    def stopping_on_signals(self) -> Iterator[None]:
        """Inside the block, Ctrl-C, SIGTERM or SIGHUP (terminal closed) ends the block and
        stops every service; a second one kills them at once. Main thread only."""

        def handle(signum: int, _frame: FrameType | None) -> None:
            if not self._stopping and not self._shutdown_requested:
                self._shutdown_requested = True
                raise ShutdownRequested
            self.kill_all()
            os._exit(128 + signum)

        self._shutdown_requested = False
        previous = {sig: signal.signal(sig, handle) for sig in SHUTDOWN_SIGNALS}
        try:
            yield
        except ShutdownRequested:
            self.say("stopping every service (Ctrl-C again kills them at once)")
        finally:
            try:
                self.stop()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

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
        for pump in self._pumps:  # the services' last lines, e.g. why one failed to stop
            pump.join(timeout=1)
        self._stopped.set()

    def kill_all(self) -> None:
        """SIGKILL every service's process group now (a second Ctrl-C)."""
        self._stopping = True
        for service in self.services:
            if service.process is not None:
                _signal_group(service.process, signal.SIGKILL)


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has Linux SIGKILL the child when the supervisor dies, even by SIGKILL
    (nothing else would stop it: the child leads its own session). None off Linux.

    Linux sends it when the *thread* that started the child ends: spawn from the main thread
    or from a thread that lives as long as the services (`watch`)."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolved before fork: the child may only make the one system call.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return set_parent_death_signal


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    # Once the leader is reaped its pid may belong to someone else (a Postgres postmaster is
    # its own group leader too): only signal a group whose leader is still ours.
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
