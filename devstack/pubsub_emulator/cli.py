"""Command line: `python -m devstack.pubsub_emulator`, configured by flags or environment."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TypeVar

from devstack.pubsub_emulator.emulator import (
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_PORT,
    DEFAULT_PROJECT,
    Emulator,
    EmulatorConfig,
)
from devstack.pubsub_emulator.errors import TopologyError
from devstack.pubsub_emulator.faults import (
    DEFAULT_PUBLISH_FAILURE_CODE,
    PUBLISH_FAILURE_CODES,
    FaultConfig,
)
from devstack.pubsub_emulator.push import DEFAULT_MAX_OUTSTANDING_PUSHES, DEFAULT_SERVICE_ACCOUNT
from devstack.pubsub_emulator.topology import DEFAULT_TOPOLOGY_PATH, Topology

T = TypeVar("T")
ENV_PREFIX = "PUBSUB_EMULATOR_"


def _env(name: str, parse: Callable[[str], T], default: T) -> T:
    """Read a default from the environment, naming the variable if its value is invalid."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise SystemExit(f"pubsub emulator: invalid {name}={raw!r}: {exc}") from exc


def _endpoint(value: str) -> tuple[str, str]:
    name, sep, url = value.partition("=")
    if not sep or not name or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected NAME=http(s)://..., got {value!r}")
    return name, url


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with defaults taken from the environment."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack.pubsub_emulator",
        description="Local Pub/Sub emulator (gRPC v1 API, push with OIDC, dead-lettering).",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface for gRPC and HTTP")
    parser.add_argument(
        "--port",
        type=int,
        default=_env(f"{ENV_PREFIX}PORT", int, DEFAULT_PORT),
        help="gRPC port (env PUBSUB_EMULATOR_PORT; 0 picks one)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=_env(f"{ENV_PREFIX}HTTP_PORT", int, DEFAULT_HTTP_PORT),
        help="port of the push-token certs endpoint (env PUBSUB_EMULATOR_HTTP_PORT)",
    )
    parser.add_argument(
        "--project",
        default=os.environ.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT,
        help="project of the topology's resources (env GOOGLE_CLOUD_PROJECT)",
    )
    parser.add_argument(
        "--topology",
        default=str(DEFAULT_TOPOLOGY_PATH),
        help="topology YAML shared with Terraform (default: the repository's infra/pubsub.yaml)",
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        type=_endpoint,
        default=[],
        metavar="NAME=URL",
        help="URL of the function a topology push_endpoint names (repeatable)",
    )
    parser.add_argument(
        "--push-service-account",
        default=_env(f"{ENV_PREFIX}PUSH_SERVICE_ACCOUNT", str, DEFAULT_SERVICE_ACCOUNT),
        help="`email` claim of push tokens",
    )
    parser.add_argument(
        "--signing-key",
        type=Path,
        default=None,
        metavar="PEM_FILE",
        help="RSA private key that signs push tokens (default: a new key each start)",
    )
    parser.add_argument(
        "--push-audience",
        default=_env(f"{ENV_PREFIX}PUSH_AUDIENCE", str, ""),
        help="`aud` claim of every push token (default: the push endpoint URL)",
    )
    parser.add_argument(
        "--max-outstanding-pushes",
        type=int,
        default=DEFAULT_MAX_OUTSTANDING_PUSHES,
        help="concurrent push requests per subscription",
    )
    faults = parser.add_argument_group("fault injection and time scaling")
    rate_flags = (
        ("--duplicate-rate", "DUPLICATE_RATE", "fraction of pushes sent twice"),
        ("--delay-rate", "DELAY_RATE", "fraction of messages held back before the first push"),
        ("--max-delay", "MAX_DELAY", "longest hold-back, in seconds"),
        ("--publish-failure-rate", "PUBLISH_FAILURE_RATE", "fraction of Publish calls failing"),
    )
    for flag, env, text in rate_flags:
        faults.add_argument(
            flag,
            type=float,
            default=_env(f"{ENV_PREFIX}{env}", float, 0.0),
            help=f"{text} (env {ENV_PREFIX}{env})",
        )
    faults.add_argument(
        "--publish-failure-code",
        choices=sorted(PUBLISH_FAILURE_CODES),
        default=_env(f"{ENV_PREFIX}PUBLISH_FAILURE_CODE", str, DEFAULT_PUBLISH_FAILURE_CODE),
        help="gRPC status of injected Publish failures; the default is one the publisher "
        "client does not retry (env PUBSUB_EMULATOR_PUBLISH_FAILURE_CODE)",
    )
    for flag, env, text in (
        ("--backoff-scale", "BACKOFF_SCALE", "multiplies retry-policy backoffs"),
        ("--ack-deadline-scale", "ACK_DEADLINE_SCALE", "multiplies subscription ack deadlines"),
    ):
        faults.add_argument(
            flag,
            type=float,
            default=_env(f"{ENV_PREFIX}{env}", float, 1.0),
            help=f"{text} (env {ENV_PREFIX}{env})",
        )
    faults.add_argument(
        "--seed",
        type=int,
        default=_env(f"{ENV_PREFIX}SEED", int, None),
        help="seed of the fault dice (env PUBSUB_EMULATOR_SEED)",
    )
    parser.add_argument(
        "--log-level",
        default=_env(f"{ENV_PREFIX}LOG_LEVEL", str, "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="stderr log level; INFO logs every push outcome",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Build the emulator configuration from parsed arguments."""
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        project=args.project,
        topology=Topology.load(args.topology),
        endpoints=dict(args.endpoint),
        push_service_account=args.push_service_account,
        push_audience=args.push_audience,
        signing_key_pem=args.signing_key.read_bytes() if args.signing_key else b"",
        max_outstanding_pushes=args.max_outstanding_pushes,
        faults=FaultConfig(
            duplicate_rate=args.duplicate_rate,
            delay_rate=args.delay_rate,
            max_delay=args.max_delay,
            backoff_scale=args.backoff_scale,
            ack_deadline_scale=args.ack_deadline_scale,
            publish_failure_rate=args.publish_failure_rate,
            publish_failure_code=args.publish_failure_code,
            seed=args.seed,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT or SIGTERM."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format="%(asctime)s pubsub-emulator %(levelname)s %(message)s",
    )
    try:
        emulator = Emulator(config_from_args(args)).start()
    except (TopologyError, ValueError, OSError) as exc:
        print(f"pubsub emulator: {exc}", file=sys.stderr)
        return 2

    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print(
        f"pubsub emulator listening on {emulator.emulator_host} "
        f"(push auth certs at {emulator.certs_url})",
        flush=True,
    )
    # A timed wait keeps the main thread responsive to signals on every platform.
    while not stopping.wait(1.0):
        pass
    emulator.stop()
    return 0
