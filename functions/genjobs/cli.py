"""The `genjobs` console script: local stack, tokens and operator tools."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence

from genjobs.errors import GenJobsError


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except GenJobsError as error:
        print(f"genjobs: {error.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
