"""`make run`'s terminal: every service's lines, each prefixed with the service's name."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import IO

from genjobs.logs import render_for_terminal

# Foreground colours that read on dark and light terminals: cyan, magenta, blue, green, yellow.
_PALETTE = ("36", "35", "34", "32", "33", "96", "95", "94", "92")


class Console:
    """Writes lines as `name   | text`; on a terminal, in colour and with JSON logs compacted."""

    def __init__(self, stream: IO[str], names: Iterable[str]) -> None:
        self.stream = stream
        names = list(names)
        self.width = max((len(name) for name in names), default=0)
        self._colours = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(names)}
        tty = _is_tty(stream)
        # Cloud Logging parses the JSON: only a person at a terminal gets the compact form.
        self.compact = tty
        self.colour = tty and "NO_COLOR" not in os.environ
        self._lock = threading.Lock()
        self.broken = False

    def write(self, name: str, line: str) -> None:
        """Print one line (or a rendered log entry) from `name`."""
        text = render_for_terminal(line, colour=self.colour) if self.compact else line
        prefix = self._prefix(name)
        block = "".join(f"{prefix}{part}\n" for part in text.split("\n"))
        with self._lock:
            if self.broken:
                return
            try:
                self.stream.write(block)
                self.stream.flush()
            except (OSError, ValueError):
                # The terminal went away (SIGHUP): keep draining pipes so services never block.
                self.broken = True

    def pump(self, name: str, pipe: IO[bytes]) -> threading.Thread:
        """Copy a process's output to the console, line by line, until it closes."""

        def copy() -> None:
            with pipe:
                for raw in pipe:
                    self.write(name, raw.decode(errors="replace").rstrip("\r\n"))

        thread = threading.Thread(target=copy, name=f"output-{name}", daemon=True)
        thread.start()
        return thread

    def _prefix(self, name: str) -> str:
        label = f"{name:<{self.width}} | "
        if not self.colour:
            return label
        return f"\x1b[{self._colours.get(name, '0')}m{label}\x1b[0m"


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
