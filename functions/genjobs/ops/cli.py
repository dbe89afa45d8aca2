"""The `genjobs` console script: local stack, tokens and operator tools."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from genjobs.errors import CommandLineError, GenJobsError


def _token(args: argparse.Namespace) -> int:
    from genjobs.auth.minting import DEMO_USER_ID, mint_user_token
    from genjobs.settings import LOCAL_JWT_SECRET, load_settings

    settings = load_settings("cli")
    secret = settings.supabase_jwt_secret.reveal() if settings.supabase_jwt_secret else None
    token = mint_user_token(
        secret=secret or LOCAL_JWT_SECRET,
        supabase_url=settings.supabase_url,
        sub=args.sub or DEMO_USER_ID,
        ttl_seconds=args.ttl,
        email=args.email,
    )
    print(token)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from devstack.database import prepare_database

    url = prepare_database(apply_shim=not args.no_shim)
    print(f"database migrated to head ({url.split('@')[-1]})")
    return 0


def _dev(args: argparse.Namespace) -> int:
    from devstack.dev import run_dev

    return run_dev(fault_profile=args.faults)


def _replay(args: argparse.Namespace) -> int:
    from genjobs.ops.replay_cli import DATABASE, DEAD_LETTER, ReplayOptions, run_replay
    from genjobs.ops.replay_sources import JobFilter

    database_filters = [args.status, args.task, args.error_code, args.since, args.until, args.user]
    source = args.source or (DATABASE if any(f is not None for f in database_filters) else None)
    if source == DEAD_LETTER and any(f is not None for f in database_filters):
        raise CommandLineError(
            "--status/--task/--error-code/--since/--until/--user select from the "
            "database: use them without --from dead-letter"
        )
    selection = JobFilter(
        task=args.task,
        error_code=args.error_code,
        since=args.since,
        until=args.until,
        user_id=args.user,
        job_ids=tuple(args.job or ()),
        limit=args.limit,
    )
    options = ReplayOptions(
        source=source or DEAD_LETTER,
        selection=selection,
        dry_run=args.dry_run,
        budget=args.attempts,
        subscription=args.subscription,
        concurrency=args.concurrency,
        as_json=args.json,
        verbose=args.verbose,
    )
    return run_replay(options)


def _stats(args: argparse.Namespace) -> int:
    from genjobs.db import create_database
    from genjobs.ops.stats import collect, render_text
    from genjobs.settings import load_settings

    until = args.until or datetime.now(UTC).date()
    since = args.since or until - timedelta(days=args.days - 1)
    if since > until:
        raise CommandLineError(f"--since {since} is after --until {until}")
    db = create_database(load_settings("cli"))
    try:
        with db.transaction() as conn:
            report = collect(conn, since, until, args.task)
    finally:
        db.dispose()
    print(json.dumps(report.as_dict(), indent=2) if args.json else render_text(report))
    if args.html:
        from genjobs.ops.stats_html import render_html

        Path(args.html).write_text(render_html(report), encoding="utf-8")
        print(f"HTML report written to {args.html}", file=sys.stderr)
    return 0


def _instant(value: str) -> datetime:
    """An ISO date or date-time; without a time zone, UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or date-time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _until(value: str) -> datetime:
    """Like `_instant`, but a bare date means the end of that day (it includes the day)."""
    moment = _instant(value)
    return moment + timedelta(days=1) if len(value.strip()) == len("YYYY-MM-DD") else moment


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date (YYYY-MM-DD): {value!r}") from None


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
    return number


def _add_replay(commands: Any) -> None:
    replay = commands.add_parser(
        "replay",
        help="put failed jobs back in the queue (dead-letter subscription or database)",
        description="Replay failed jobs: each goes back to queued with a renewed attempt budget, "
        "gets a `replayed` event and is republished. Safe to run twice or concurrently. "
        "Without database filters, replays what the dead-letter replay subscription holds; "
        "a dead-letter message is acked only once its job is queued again.",
    )
    replay.add_argument(
        "--from",
        dest="source",
        choices=["dead-letter", "database"],
        help="where to find the jobs (default: dead-letter, or database when a filter is given)",
    )
    replay.add_argument(
        "--limit", type=_positive, metavar="N", help="at most N jobs (default: all)"
    )
    replay.add_argument(
        "--job", action="append", type=uuid.UUID, metavar="ID", help="only this job (repeatable)"
    )
    filters = replay.add_argument_group("database filters (imply --from database)")
    filters.add_argument(
        "--status", choices=["failed"], help="jobs in this status (only failed jobs are replayed)"
    )
    filters.add_argument("--task", help="only jobs of this task")
    filters.add_argument("--error-code", help="only jobs that failed with this error code")
    filters.add_argument(
        "--since", type=_instant, help="failed at or after this ISO date/date-time (UTC)"
    )
    filters.add_argument(
        "--until", type=_until, help="failed before this date-time (a date includes its day)"
    )
    filters.add_argument("--user", type=uuid.UUID, help="only this user's jobs")
    replay.add_argument("--dry-run", action="store_true", help="show what would happen only")
    replay.add_argument(
        "--attempts",
        type=_positive,
        default=5,
        metavar="N",
        help="attempts each replayed job gets (5, as a new job)",
    )
    replay.add_argument(
        "--subscription",
        default="generation-jobs-dead-letter-replay",
        help="the dead-letter pull subscription",
    )
    replay.add_argument(
        "--concurrency", type=_positive, default=4, metavar="N", help="jobs at a time (4)"
    )
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    replay.add_argument("-v", "--verbose", action="store_true", help="one line per job")
    replay.set_defaults(handler=_replay)


def _add_stats(commands: Any) -> None:
    stats = commands.add_parser(
        "stats",
        help="success rate, durations, attempts, tokens and error codes",
        description="Figures from the metrics views for jobs created in a range of days (UTC).",
    )
    stats.add_argument("--since", type=_day, help="first day (default: --days before --until)")
    stats.add_argument("--until", type=_day, help="last day, included (default: today, UTC)")
    stats.add_argument("--days", type=_positive, default=30, metavar="N", help="days to show (30)")
    stats.add_argument("--task", help="only this task")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    stats.add_argument(
        "--html", metavar="FILE", help="also write a self-contained HTML report with charts"
    )
    stats.set_defaults(handler=_stats)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and --help)."""
    parser = argparse.ArgumentParser(prog="genjobs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run the whole pipeline locally (what `make run` runs)")
    dev.add_argument(
        "--faults",
        action="store_true",
        help="emulator duplicates and delays deliveries (at-least-once, for trying failure modes)",
    )
    dev.set_defaults(handler=_dev)

    token = commands.add_parser("token", help="print a local Supabase access token")
    token.add_argument("--sub", type=uuid.UUID, help="user id (default: the demo user)")
    token.add_argument("--email", default="demo@example.com")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.set_defaults(handler=_token)

    migrate = commands.add_parser("migrate", help="apply the Alembic migrations to the database")
    migrate.add_argument(
        "--no-shim",
        action="store_true",
        help="do not create Supabase's roles and auth.uid() on a plain Postgres",
    )
    migrate.set_defaults(handler=_migrate)
    _add_replay(commands)
    _add_stats(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except CommandLineError as error:
        parser.error(str(error))
    except GenJobsError as error:
        print(f"genjobs: {error.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
