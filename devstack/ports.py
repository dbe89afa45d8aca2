"""Which local TCP ports are taken, and by which process (read from /proc on Linux)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_LISTEN = "0A"  # TCP state number in /proc/net/tcp


@dataclass(frozen=True)
class Holder:
    """A process listening on a port."""

    pid: int
    command: str


def port_is_taken(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could not bind host:port now (as our services bind it)."""
    with socket.socket() as sock:
        # Servers set SO_REUSEADDR, so a port in TIME_WAIT after a restart is not "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def holders(port: int, proc: Path = PROC) -> list[Holder]:
    """The processes with a socket listening on `port` (those whose fds we may read)."""
    inodes = set(_listening_inodes(port, proc))
    found = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or another user's process
            for fd in (pid_dir / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                    found.append(Holder(int(pid_dir.name), _command_line(pid_dir)))
                    break
    return sorted(found, key=lambda holder: holder.pid)


def busy_port_report(ports: Mapping[str, int]) -> list[str]:
    """One sentence per taken port: which port, what it is for, and what holds it."""
    report = []
    for name, port in ports.items():
        if not port_is_taken(port):
            continue
        found = holders(port)
        held_by = (
            "; ".join(f"pid {holder.pid}: {holder.command}" for holder in found)
            if found
            else "a process this user cannot see (try `ss -ltnp`)"
        )
        report.append(f"port {port} ({name}) is already in use by {held_by}")
    return report


def _listening_inodes(port: int, proc: Path) -> Iterator[int]:
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for row in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = row.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == _LISTEN:
                    yield int(fields[9])


def _command_line(pid_dir: Path) -> str:
    try:
        raw = (pid_dir / "cmdline").read_bytes()
    except OSError:
        return "?"
    command = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
    return _shorten(command) or f"[{pid_dir.name}]"


def _shorten(command: str, limit: int = 200) -> str:
    return command if len(command) <= limit else command[: limit - 1] + "…"
