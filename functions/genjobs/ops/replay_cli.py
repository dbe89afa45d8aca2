"""`genjobs replay`: wiring, tqdm's progress line on the terminal and the summary at the end."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import TextIO

from tqdm import tqdm

from genjobs.jobs import MAX_ATTEMPTS
from genjobs.ops.replay import Action, Replayer, ReplayResult, Summary
from genjobs.ops.replay_sources import DEAD_LETTER_SUBSCRIPTION, JobFilter

DATABASE = "database"
DEAD_LETTER = "dead-letter"


@dataclass(frozen=True)
class ReplayOptions:
    """What `genjobs replay` was asked to do."""

    source: str  # DATABASE or DEAD_LETTER
    selection: JobFilter
    dry_run: bool = False
    budget: int = MAX_ATTEMPTS
    subscription: str = DEAD_LETTER_SUBSCRIPTION
    concurrency: int = 4
    as_json: bool = False
    verbose: bool = False


class Progress:
    """tqdm's progress line on stderr, with the outcomes so far; silent when not a terminal."""

    def __init__(self, stream: TextIO, label: str, total: int | None = None) -> None:
        self._bar = tqdm(
            total=total,
            desc=label,
            unit="job",
            file=stream,
            disable=not stream.isatty(),
            dynamic_ncols=True,
        )

    def set_total(self, total: int) -> None:
        """The number of jobs, once known."""
        self._bar.total = total
        self._bar.refresh()

    def update(self, summary: Summary) -> None:
        """Advance to the summary's count (tqdm redraws at most every 0.1 s)."""
        counts = summary.counts()
        parts = ", ".join(f"{a.value.replace('_', ' ')} {counts[a]}" for a in Action if counts[a])
        self._bar.set_postfix_str(parts, refresh=False)
        self._bar.update(sum(counts.values()) - self._bar.n)

    def finish(self, summary: Summary) -> None:
        """Draw the final state and end the line."""
        self.update(summary)
        self._bar.close()


def run_replay(options: ReplayOptions, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Replay, print the summary; exit status 1 when some job could not be handled."""
    out, err = out or sys.stdout, err or sys.stderr
    from genjobs.db import create_database
    from genjobs.ops.replay_sources import (
        DeadLetterSubscription,
        replay_from_database,
        replay_from_dead_letter,
    )
    from genjobs.publisher import PubSubJobPublisher
    from genjobs.settings import load_settings

    settings = load_settings("cli")
    if settings.is_local:
        # Beside `make run`, the local stack's emulator (what its functions are given).
        port = os.environ.get("PUBSUB_EMULATOR_PORT", "8085")
        os.environ.setdefault("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
    db = create_database(settings)
    replayer = Replayer(
        db, PubSubJobPublisher(settings), budget=options.budget, dry_run=options.dry_run
    )
    summary = Summary(source=options.source, dry_run=options.dry_run)
    progress = Progress(err, "replay", options.selection.limit)
    try:
        if options.source == DATABASE:
            replay_from_database(
                db,
                replayer,
                options.selection,
                summary=summary,
                concurrency=options.concurrency,
                on_result=progress.update,
                on_total=progress.set_total,
            )
        else:
            queue = DeadLetterSubscription(settings.google_cloud_project, options.subscription)
            try:
                replay_from_dead_letter(
                    queue,
                    replayer,
                    summary=summary,
                    limit=options.selection.limit,
                    job_ids=options.selection.job_ids,
                    concurrency=options.concurrency,
                    on_result=progress.update,
                )
            finally:
                queue.close()
    finally:
        progress.finish(summary)
        db.dispose()
    if options.as_json:
        out.write(json.dumps(summary.as_dict(), indent=2) + "\n")
    else:
        if options.verbose or options.dry_run:
            for result in summary.results:
                out.write(format_result(result) + "\n")
        out.write(format_summary(summary, options) + "\n")
    return 1 if summary.counts()[Action.ERROR] else 0


def format_result(result: ReplayResult) -> str:
    """One line per job: action, id, task, previous error, why."""
    job = str(result.job_id) if result.job_id else "-" * 36
    why = f"  ({result.reason})" if result.reason else ""
    line = f"{result.action.value:<15} {job}  {result.task or '-':<18} "
    return f"{line}{result.previous_error or '-':<22}{why}".rstrip()


def format_summary(summary: Summary, options: ReplayOptions) -> str:
    """The end-of-run summary: replayed, skipped (and why), publish failures, messages acked."""
    counts = summary.counts()
    where = (
        f"dead-letter subscription {options.subscription}"
        if options.source == DEAD_LETTER
        else "database (failed jobs)"
    )
    title = "dry run: nothing was changed" if summary.dry_run else "replay finished"
    lines = [f"{title}; source: {where}"]

    def row(label: str, action: Action, note: str = "") -> None:
        reasons = summary.reasons(action) if action is Action.SKIPPED else {}
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        extra = f"  ({detail})" if detail else ""
        lines.append(f"  {label:<26}{counts[action]:>7}{extra}{note if counts[action] else ''}")

    if summary.dry_run:
        row("would replay", Action.WOULD_REPLAY)
    else:
        row("replayed", Action.REPLAYED)
    row("skipped", Action.SKIPPED)
    if options.source == DEAD_LETTER:
        row("deferred", Action.DEFERRED, "  job not marked failed yet; message kept")
    row("failed to publish", Action.PUBLISH_FAILED, "  queued: the sweeper publishes them")
    row("errors", Action.ERROR, "  see the warnings above; run again")
    if options.source == DEAD_LETTER:
        lines.append(f"  {'dead-letter messages acked':<26}{summary.acked:>7}")
    return "\n".join(lines)
