"""Both Pub/Sub emulators as real processes on free loopback ports, always stopped as a group."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import grpc

from devstack.supervisor import free_port

ROOT = Path(__file__).resolve().parents[2]
Kind = Literal["ours", "google"]
START_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 5.0
GCLOUD_ABSENT = (
    "Google's Pub/Sub emulator NOT RUN: gcloud is not on PATH, so this project's emulator is "
    "not proven against Google's here. Install the Google Cloud SDK with the "
    "pubsub-emulator component and Java to run it. This skip is deliberate in CI (CI=true) "
    "too: a later CI image may not ship gcloud; where gcloud is present, CI runs these tests "
    "and a failure to start Google's emulator fails them."
)


class EmulatorStartError(RuntimeError):
    """An emulator process exited or did not answer in time; the message has its log."""


@dataclass
class EmulatorProcess:
    """A started emulator: `host` is the PUBSUB_EMULATOR_HOST value."""

    kind: Kind
    host: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    stopped: bool = False

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process's output, for failure messages."""
        self.log_file.flush()
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the whole process group (gcloud's Python and its Java child); idempotent."""
        if self.stopped:
            return
        self.stopped = True
        atexit.unregister(self.stop)
        _signal_group(self.process.pid, signal.SIGTERM)
        end = time.monotonic() + STOP_GRACE_SECONDS
        while _exit_status(self.process.pid) is None and time.monotonic() < end:
            time.sleep(0.05)
        # gcloud may exit on SIGTERM before its Java child does: kill what is left of the
        # group while the unreaped leader still holds the group id, so it cannot be reused.
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log_file.close()
        # Orphaned members linger as zombies until init reaps them.
        end = time.monotonic() + STOP_GRACE_SECONDS
        while self.group_alive() and time.monotonic() < end:
            time.sleep(0.05)

    def group_alive(self) -> bool:
        """Whether any process of the group still exists."""
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _exit_status(pid: int) -> int | None:
    """A child's exit status without reaping it (its zombie keeps the group id ours), or None."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return None if info is None else info.si_status


def _spawn(
    kind: Kind, command: list[str], port: int, env: dict[str, str], workdir: Path
) -> EmulatorProcess:
    log_path = workdir / f"{kind}-emulator.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stop() reaches the JVM too
    )
    started = EmulatorProcess(kind, f"127.0.0.1:{port}", process, log_path, log_file)
    atexit.register(started.stop)  # a safety net should the test session end abruptly
    try:
        _wait_ready(started)
    except BaseException:
        started.stop()
        raise
    return started


def _wait_ready(emulator: EmulatorProcess) -> None:
    """Wait until the gRPC port completes an HTTP/2 handshake, or the process exits."""
    end = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < end:
        status = _exit_status(emulator.process.pid)
        if status is not None:
            raise EmulatorStartError(
                f"{emulator.kind} emulator exited with {status}:\n{emulator.log_tail()}"
            )
        with grpc.insecure_channel(emulator.host) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                continue
    raise EmulatorStartError(
        f"{emulator.kind} emulator not ready on {emulator.host} within "
        f"{START_TIMEOUT_SECONDS:.0f}s:\n{emulator.log_tail()}"
    )


def start_ours(workdir: Path, project: str) -> EmulatorProcess:
    """This project's emulator with no topology: the scenarios create what they use."""
    topology = workdir / "empty-topology.yaml"
    topology.write_text("topics: {}\nsubscriptions: {}\n")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "devstack.pubsub_emulator",
        "--project",
        project,
        "--topology",
        str(topology),
        "--http-port",
        str(free_port()),
        "--port",
        str(port),
    ]
    return _spawn("ours", command, port, dict(os.environ), workdir)


def start_google(workdir: Path, project: str, gcloud: str) -> EmulatorProcess:
    """Google's emulator through gcloud, with a throwaway gcloud configuration directory."""
    env = {
        **os.environ,
        # gcloud writes to its configuration directory: never the developer's own.
        "CLOUDSDK_CONFIG": str(workdir / "gcloud-config"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        # The emulator's own launcher reads this: a client-style JIT and GC start the JVM
        # about 2 s sooner on a small machine.
        "CLOUD_PUBSUB_EMULATOR_OPTS": os.environ.get(
            "CLOUD_PUBSUB_EMULATOR_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
        ),
    }
    data_dir = workdir / "google-data"
    data_dir.mkdir()
    port = free_port()
    command = [
        gcloud,
        "beta",
        "emulators",
        "pubsub",
        "start",
        f"--project={project}",
        f"--data-dir={data_dir}",
        f"--host-port=127.0.0.1:{port}",
    ]
    return _spawn("google", command, port, env, workdir)


def find_gcloud() -> str | None:
    """gcloud's path, or None where the Google Cloud SDK is not installed."""
    return shutil.which("gcloud")
