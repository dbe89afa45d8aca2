"""`genjobs dev` as a person runs it: prefixed output, and nothing outlives it however it ends."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from devstack.dev import Ports
from devstack.ports import port_is_taken
from genjobs.auth.minting import mint_user_token
from genjobs.settings import LOCAL_JWT_SECRET, LOCAL_SUPABASE_URL
from tests.stack import free_ports

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc; the death signal is Linux's"
)

GENJOBS = Path(sys.executable).with_name("genjobs")
READY = "genjobs local stack is up"
# Ports.from_env's variables; the assertion in `dev_env` says when one is missing here.
PORT_VARIABLES = {
    "api": "API_PORT",
    "worker": "WORKER_PORT",
    "dead_letter": "DEAD_LETTER_PORT",
    "sweeper": "SWEEPER_PORT",
    "pubsub": "PUBSUB_EMULATOR_PORT",
    "pubsub_http": "PUBSUB_EMULATOR_HTTP_PORT",
    "stub_model": "STUB_MODEL_PORT",
    "worker_container": "WORKER_CONTAINER_PORT",
    "dead_letter_container": "DEAD_LETTER_CONTAINER_PORT",
    "sweeper_container": "SWEEPER_CONTAINER_PORT",
    "demo": "DEMO_PORT",
}


@dataclass
class DevRun:
    """A running `genjobs dev` and everything it has printed so far."""

    process: subprocess.Popen[bytes]
    ports: Ports
    output: int  # the fd we read its stdout and stderr from
    lines: list[str] = field(default_factory=list)
    _stop_reading: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None

    def start_reading(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        pending = b""
        while not self._stop_reading.is_set():
            if not select.select([self.output], [], [], 0.1)[0]:
                continue
            try:
                chunk = os.read(self.output, 65536)
            except OSError:  # EIO: the terminal's other side is gone
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines += [raw.decode(errors="replace").rstrip("\r") for raw in complete]

    def close_output(self) -> None:
        """Stop reading and close our side (for a terminal: hang it up, sending SIGHUP)."""
        self._stop_reading.set()
        if self._reader is not None:
            self._reader.join(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self.output)

    def wait_for_line(self, needle: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        tail = "\n".join(self.lines[-40:])
        raise AssertionError(f"no line with {needle!r}; genjobs dev printed:\n{tail}")

    def submit_job(self) -> str:
        """Submit a job through the api; its id."""
        token = mint_user_token(secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL)
        response = httpx.post(
            f"http://127.0.0.1:{self.ports.api}/v1/generations",
            headers={"Authorization": f"Bearer {token}"},
            json={"task": "summarize", "input": {"text": "prefixes say who wrote a line"}},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id


def dev_env(database_url: str) -> tuple[dict[str, str], Ports]:
    """The environment for a `genjobs dev` on free ports against the test database."""
    ports = free_ports()
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["DATABASE_URL"] = database_url
    for name, port in dataclasses.asdict(ports).items():
        env[PORT_VARIABLES[name]] = str(port)
    assert Ports.from_env(env) == ports, "a port has a new variable: add it to PORT_VARIABLES"
    return env, ports


@contextmanager
def genjobs_dev(database_url: str, *, terminal: bool = False) -> Iterator[DevRun]:
    """`genjobs dev` in its own session; its output through a pipe, or a terminal it controls."""
    env, ports = dev_env(database_url)
    if terminal:
        controller, tty = pty.openpty()
        process = subprocess.Popen(
            [str(GENJOBS), "dev"],
            env=env,
            stdin=tty,
            stdout=tty,
            stderr=tty,
            start_new_session=True,
            # The pty becomes its controlling terminal, so closing it sends SIGHUP, as a
            # terminal window's close does.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # noqa: PLW1509 (one syscall)
        )
        os.close(tty)
        output = controller
    else:
        process = subprocess.Popen(
            [str(GENJOBS), "dev"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert process.stdout is not None
        output = os.dup(process.stdout.fileno())
        process.stdout.close()
    run = DevRun(process, ports, output)
    run.start_reading()
    try:
        yield run
    finally:
        descendants = descendants_of(process.pid)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        for pid in descendants:  # a failed test must not leave a stack behind either
            kill_quietly(pid)
        run.close_output()


def descendants_of(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (dead, waiting for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def assert_all_gone(pids: set[int], ports: Ports, within: float) -> float:
    """Wait until every pid is dead and every port free; seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        left = {pid for pid in pids if alive(pid)}
        taken = [p for p in dataclasses.asdict(ports).values() if port_is_taken(p)]
        if not left and not taken:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"still alive after {within}s: pids {sorted(left)}, ports {taken}")


def service_processes(run: DevRun) -> set[int]:
    """The processes `genjobs dev` started: emulator, stub and the functions (with workers)."""
    pids = descendants_of(run.process.pid)
    assert len(pids) >= 6, f"expected the whole stack below genjobs dev, found {sorted(pids)}"
    return pids


def test_sigkill_leaves_no_service_behind_and_lines_say_who_wrote_them(
    database_url: str,
) -> None:
    with genjobs_dev(database_url) as run:
        run.wait_for_line(READY)
        job_id = run.submit_job()
        queued = run.wait_for_line(job_id)
        pids = service_processes(run)

        # Not a terminal: each line is `name | text`, aligned, and the JSON is untouched.
        prefix, _, text = queued.partition(" | ")
        assert prefix.rstrip() == "api"
        entry = json.loads(text)
        assert entry["message"] == "job queued" and entry["job_id"] == job_id
        emulator = run.wait_for_line("pubsub-emulator ")
        assert emulator.index(" | ") == queued.index(" | ") == len("pubsub-emulator")
        assert "\x1b[" not in "\n".join(run.lines)
        # A clean start says nothing a person must wonder about.
        assert not [line for line in run.lines if "Warning" in line or "warnings.warn" in line]

        run.process.send_signal(signal.SIGKILL)
        run.process.wait(timeout=10)
        took = assert_all_gone(pids, run.ports, within=10)
        print(f"after SIGKILL every service was gone in {took:.1f}s")


def test_closing_the_terminal_stops_everything_and_logs_read_as_lines(
    database_url: str,
) -> None:
    with genjobs_dev(database_url, terminal=True) as run:
        run.wait_for_line(READY)
        job_id = run.submit_job()
        queued = run.wait_for_line(job_id)
        pids = service_processes(run)

        # A terminal: the api's JSON record is one compact line, after a coloured prefix.
        assert "\x1b[" in queued and "api" in queued
        assert "job queued" in queued and f"job_id={job_id}" in queued
        assert '"severity"' not in queued

        run.close_output()  # the terminal window closes: the kernel sends SIGHUP
        assert run.process.wait(timeout=20) == 0
        took = assert_all_gone(pids, run.ports, within=10)
        print(f"after the terminal closed every service was gone in {took:.1f}s")


def test_second_ctrl_c_kills_everything_at_once(database_url: str) -> None:
    with genjobs_dev(database_url) as run:
        run.wait_for_line(READY)
        pids = service_processes(run)
        run.process.send_signal(signal.SIGINT)
        run.wait_for_line("Ctrl-C again", timeout=10)
        run.process.send_signal(signal.SIGINT)
        assert run.process.wait(timeout=10) == 128 + signal.SIGINT
        took = assert_all_gone(pids, run.ports, within=10)
        print(f"after two Ctrl-C every service was gone in {took:.1f}s")


def test_busy_port_is_reported_once_with_its_holder_and_nothing_starts(
    database_url: str,
) -> None:
    env, ports = dev_env(database_url)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports.worker))
        squatter.listen()
        started = time.monotonic()
        result = subprocess.run(
            [str(GENJOBS), "dev"], check=False, env=env, capture_output=True, text=True, timeout=60
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    mentions = [line for line in output.splitlines() if str(ports.worker) in line]
    assert len(mentions) == 1, output
    assert "worker" in mentions[0] and f"pid {os.getpid()}" in mentions[0]
    assert "pytest" in mentions[0] or "python" in mentions[0]
    assert READY not in output and "restarting" not in output
    assert time.monotonic() - started < 30
    assert not any(port_is_taken(p) for p in dataclasses.asdict(ports).values())
