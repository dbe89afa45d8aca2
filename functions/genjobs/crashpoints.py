"""Named points where the local fault suite kills a function at the worst moment.

Inert unless GENJOBS_ENV=local and GENJOBS_CRASH_DIR names a folder: a file there named
after a point is removed by the first process to reach that point, which then dies with
SIGKILL, process group and all, as an instance would on the platform.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def crash_point(name: str) -> None:
    """Die here if the fault suite asked for it (once per request file)."""
    folder = os.environ.get("GENJOBS_CRASH_DIR")
    if not folder or os.environ.get("GENJOBS_ENV", "local") != "local":
        return
    try:
        (Path(folder) / name).unlink()
    except FileNotFoundError:
        return
    os.killpg(os.getpgrp(), signal.SIGKILL)
