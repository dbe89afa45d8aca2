"""`make run`'s output: compact log lines for people, prefixes, and who holds a port."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import sys
from datetime import datetime
from pathlib import Path

import pytest

from devstack.console import Console
from devstack.ports import busy_port_report, holders, port_is_taken
from devstack.supervisor import PortsBusy, Service, Supervisor, free_port
from genjobs.logs import CloudJsonFormatter, log_context, render_for_terminal

TRACE = "0af7651916cd43dd8448eb211c80319c"


def json_line(message: str, level: int = logging.INFO, **extra: object) -> str:
    """A line exactly as the functions print it."""
    record = logging.LogRecord("genjobs.worker", level, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return CloudJsonFormatter("local-project").format(record)


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


class GoneTerminal(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(5, "Input/output error")


def test_a_log_record_renders_as_one_compact_line() -> None:
    with log_context(trace_id=TRACE, job_id="job-1", attempt=2):
        line = json_line("job succeeded", latency_ms=1543)
    rendered = render_for_terminal(line)
    clock = datetime.fromisoformat(json.loads(line)["time"]).astimezone().strftime("%H:%M:%S")
    assert rendered.startswith(clock)
    assert "\n" not in rendered and "{" not in rendered
    assert " INFO " in rendered and "job succeeded  " in rendered
    assert "job_id=job-1" in rendered and "attempt=2" in rendered
    assert "latency_ms=1543" in rendered
    assert rendered.endswith(f"trace={TRACE[:8]}")  # the project-qualified name shortened
    assert "genjobs.worker" not in rendered  # our own loggers go without saying
    assert "\x1b[" not in rendered


def test_errors_keep_their_stack_trace_and_colour_only_when_asked() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("gunicorn.error", logging.ERROR, __file__, 1, "x", None, None)
        record.exc_info = sys.exc_info()
    line = CloudJsonFormatter().format(record)
    first, *stack = render_for_terminal(line).split("\n")
    assert "ERROR" in first and "[gunicorn.error]" in first  # a library's logger is named
    assert stack[0].startswith("Traceback") and stack[-1] == "ValueError: boom"
    coloured = render_for_terminal(line, colour=True).split("\n")[0]
    assert "\x1b[31;1mERROR  \x1b[0m" in coloured


@pytest.mark.parametrize(
    "line",
    [
        "2026-12-03 13:27:03,371 pubsub-emulator INFO pushes to http://127.0.0.1:8081/",
        '{"not": "a log record"}',
        "{broken json}",
        "",
    ],
)
def test_other_lines_pass_through_unchanged(line: str) -> None:
    assert render_for_terminal(line) == line


def test_not_a_terminal_gets_aligned_prefixes_and_the_json_untouched() -> None:
    stream = io.StringIO()
    console = Console(stream, ["api", "pubsub-emulator"])
    line = json_line("job queued")
    console.write("api", line)
    console.write("pubsub-emulator", "listening")
    first, second = stream.getvalue().splitlines()
    assert first == f"{'api':<15} | {line}"  # Cloud Logging parses what follows the prefix
    assert second == "pubsub-emulator | listening"


def test_a_terminal_gets_colour_and_compact_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    stream = TtyStream()
    console = Console(stream, ["api", "worker"])
    console.write("worker", json_line("job succeeded"))
    written = stream.getvalue()
    assert written.startswith("\x1b[35mworker | \x1b[0m") and "job succeeded" in written
    assert '"severity"' not in written
    monkeypatch.setenv("NO_COLOR", "1")
    plain = TtyStream()
    Console(plain, ["api"]).write("api", json_line("job queued"))
    assert plain.getvalue().startswith("api | ") and '"severity"' not in plain.getvalue()


def test_a_closed_terminal_does_not_stop_the_pumps() -> None:
    console = Console(GoneTerminal(), ["api"])
    console.write("api", "first")  # EIO after SIGHUP: swallowed, later lines dropped
    console.write("api", "second")
    assert console.broken


def test_a_port_holder_is_found_with_its_pid_and_command_line() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_is_taken(port)
        found = holders(port)
        assert [h.pid for h in found] == [os.getpid()]
        assert Path(sys.executable).name in found[0].command or "pytest" in found[0].command
        (report,) = busy_port_report({"api": port})
        assert report.startswith(f"port {port} (api) is already in use by pid {os.getpid()}: ")
    assert not port_is_taken(port)
    assert busy_port_report({"api": port}) == []


def test_supervisor_refuses_to_start_beside_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        never_started = tmp_path / "started"
        touch = [sys.executable, "-c", f"open({str(never_started)!r}, 'w')"]
        services = [
            Service("free", touch, free_port()),
            Service("busy", [sys.executable, "-c", "pass"], port),
        ]
        with pytest.raises(PortsBusy, match=rf"port {port} \(busy\) .* pid {os.getpid()}"):
            Supervisor(services, output_dir=tmp_path).start(ready_timeout=1)
    assert all(service.process is None for service in services)
    assert not never_started.exists()
