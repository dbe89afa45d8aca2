"""`genjobs dev` / `make run`: the whole pipeline on one machine, no cloud account."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devstack.database import prepare_database
from devstack.demo.server import demo_origin, origins_with_demo
from devstack.ports import busy_port_report
from devstack.scheduler import LocalScheduler
from devstack.signing import load_or_create_key
from devstack.supervisor import ROOT, Service, Supervisor, function_service
from genjobs.settings import LOCAL_PUSH_SERVICE_ACCOUNT, LOCAL_SCHEDULER_SERVICE_ACCOUNT

TOPOLOGY = ROOT / "infra" / "pubsub.yaml"
WORKER_SUBSCRIPTION = "generation-jobs-worker"
PROJECT = "local-project"
STUB_API_KEY = "local-stub-key"


@dataclass(frozen=True)
class Ports:
    """Where each local process listens (DESIGN.md's fixed local contract).

    worker, dead_letter and sweeper are the Cloud Run-like front end's ports (their URLs and
    token audiences); the functions themselves listen on the `*_container` ports behind it.
    """

    api: int = 8080
    worker: int = 8081
    dead_letter: int = 8082
    sweeper: int = 8083
    pubsub: int = 8085
    pubsub_http: int = 8086
    stub_model: int = 8090
    demo: int = 8070
    worker_container: int = 18081
    dead_letter_container: int = 18082
    sweeper_container: int = 18083

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Ports:
        """Each port overridable by an env var (API_PORT, WORKER_PORT, …)."""
        defaults = cls()
        names = {
            "api": "API_PORT",
            "worker": "WORKER_PORT",
            "dead_letter": "DEAD_LETTER_PORT",
            "sweeper": "SWEEPER_PORT",
            "pubsub": "PUBSUB_EMULATOR_PORT",
            "pubsub_http": "PUBSUB_EMULATOR_HTTP_PORT",
            "stub_model": "STUB_MODEL_PORT",
            "demo": "DEMO_PORT",
            "worker_container": "WORKER_CONTAINER_PORT",
            "dead_letter_container": "DEAD_LETTER_CONTAINER_PORT",
            "sweeper_container": "SWEEPER_CONTAINER_PORT",
        }
        return cls(**{k: int(env.get(v, getattr(defaults, k))) for k, v in names.items()})


@dataclass(frozen=True)
class StackConfig:
    """Everything that differs between `make run` and a test's private stack."""

    database_url: str
    # The local "Google" key: signs push tokens (emulator) and scheduler tokens.
    signing_key: Path = ROOT / ".local" / "push-signing-key.pem"
    ports: Ports = field(default_factory=Ports)
    openai_api_key: str | None = None
    emulator_flags: tuple[str, ...] = ()
    stub_flags: tuple[str, ...] = ()
    # Settings for every function (e.g. shorter sweeper thresholds in tests).
    env: Mapping[str, str] = field(default_factory=dict)
    worker_env: Mapping[str, str] = field(default_factory=dict)
    worker_threads: int = 64
    sweep_interval: float = 5.0


def _worker_subscription(topology: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(topology.read_text())
    subscription: dict[str, Any] = document["subscriptions"][WORKER_SUBSCRIPTION]
    return subscription


def ack_deadline_seconds(topology: Path = TOPOLOGY) -> int:
    """The worker subscription's ack deadline: the one place the timing budget starts."""
    return int(_worker_subscription(topology)["ack_deadline_seconds"])


def retry_min_backoff_seconds(topology: Path = TOPOLOGY) -> int:
    """The worker subscription's minimum backoff (`10s` in the topology), in seconds."""
    return int(str(_worker_subscription(topology)["retry_policy"]["minimum_backoff"]).rstrip("s"))


def cloud_run_frontend(config: StackConfig, timeouts: Mapping[str, float]) -> Service:
    """What Cloud Run puts before the private functions: the invoker check (see the module)."""
    p = config.ports
    invokers = {
        "worker": (LOCAL_PUSH_SERVICE_ACCOUNT, p.worker, p.worker_container),
        "dead_letter": (LOCAL_PUSH_SERVICE_ACCOUNT, p.dead_letter, p.dead_letter_container),
        "sweeper": (LOCAL_SCHEDULER_SERVICE_ACCOUNT, p.sweeper, p.sweeper_container),
    }
    argv = [sys.executable, "-m", "devstack.cloud_run_frontend"]
    argv += ["--signing-key", str(config.signing_key)]
    for name, (invoker, port, container) in invokers.items():
        argv += ["--service", f"{name}={port}:{container}:{timeouts[name]:g}:{invoker}"]
    return Service("cloud-run", argv, p.worker)


def build_services(config: StackConfig) -> list[Service]:
    """The emulator, the stub model (unless a real key is given), the demo page and the four
    functions."""
    p = config.ports
    url = "http://127.0.0.1:{}/".format
    common = {
        "GENJOBS_ENV": "local",
        "DATABASE_URL": config.database_url,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{p.pubsub}",
        "PUSH_CERTS_URL": f"http://127.0.0.1:{p.pubsub_http}/oauth2/v3/certs",
        "ACK_DEADLINE_SECONDS": str(ack_deadline_seconds()),
        "RETRY_MIN_BACKOFF_SECONDS": str(retry_min_backoff_seconds()),
        # Locally the sweeper runs every few seconds, so it may act sooner than in the cloud.
        "SWEEP_PUBLISH_GRACE_SECONDS": "5",
        **config.env,
    }
    model_env = (
        {"OPENAI_API_KEY": config.openai_api_key}
        if config.openai_api_key
        else {
            "OPENAI_API_KEY": STUB_API_KEY,
            "OPENAI_BASE_URL": f"http://127.0.0.1:{p.stub_model}/v1",
        }
    )
    emulator_argv = [
        *(sys.executable, "-m", "devstack.pubsub_emulator"),
        *("--port", str(p.pubsub), "--http-port", str(p.pubsub_http)),
        *("--project", PROJECT, "--topology", str(TOPOLOGY)),
        *("--endpoint", f"worker={url(p.worker)}"),
        *("--endpoint", f"dead_letter={url(p.dead_letter)}"),
        *("--signing-key", str(config.signing_key)),
        *config.emulator_flags,
    ]
    services = [Service("pubsub-emulator", emulator_argv, p.pubsub, env=common)]
    if not config.openai_api_key:
        stub_argv = [
            *(sys.executable, "-m", "devstack.stub_model", "--port", str(p.stub_model)),
            *config.stub_flags,
        ]
        services.append(Service("stub-model", stub_argv, p.stub_model))
    demo_argv = [sys.executable, "-m", "devstack.demo", "--port", str(p.demo)]
    services.append(Service("demo", [*demo_argv, "--api-url", url(p.api)], p.demo))
    # The page calls the api cross-origin from its own port, wherever DEMO_PORT puts it.
    given_origins = common.get("ALLOWED_ORIGINS", os.environ.get("ALLOWED_ORIGINS"))
    api_env = {**common, "ALLOWED_ORIGINS": origins_with_demo(given_origins, p.demo)}
    # Behind the front end, as on Cloud Run: the audience is the front end's URL.
    private = {**common, "PLATFORM_INVOKER_CHECK": "true"}
    worker_env = {
        **private,
        **model_env,
        "PUSH_AUDIENCE": url(p.worker),
        "THREADS": str(config.worker_threads),
        **config.worker_env,
    }
    ack_deadline = float(worker_env["ACK_DEADLINE_SECONDS"])
    services += [
        function_service("api", p.api, api_env),
        function_service("worker", p.worker_container, worker_env),
        function_service(
            "dead_letter", p.dead_letter_container, {**private, "PUSH_AUDIENCE": url(p.dead_letter)}
        ),
        function_service(
            "sweeper", p.sweeper_container, {**private, "PUSH_AUDIENCE": url(p.sweeper)}
        ),
        cloud_run_frontend(config, {"worker": ack_deadline, "dead_letter": 60, "sweeper": 60}),
    ]
    return services


def banner(config: StackConfig) -> str:
    """What `make run` prints once everything listens: URLs, model, a token and a curl line."""
    from genjobs.auth.minting import mint_user_token
    from genjobs.settings import LOCAL_JWT_SECRET, LOCAL_SUPABASE_URL

    p = config.ports
    token = mint_user_token(
        secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL, ttl_seconds=24 * 3600
    )
    model = (
        "OpenAI (OPENAI_API_KEY is set: jobs cost real money)"
        if config.openai_api_key
        else f"LOCAL STUB MODEL at http://127.0.0.1:{p.stub_model}/v1 "
        "(set OPENAI_API_KEY to use OpenAI)"
    )
    return f"""
================================================================================
 genjobs local stack is up
   api           http://127.0.0.1:{p.api}      (OpenAPI: /openapi.json)
   demo page     {demo_origin(p.demo)}      (pick a task, watch it stream)
   worker        http://127.0.0.1:{p.worker}      (Pub/Sub push only)
   dead_letter   http://127.0.0.1:{p.dead_letter}
   sweeper       http://127.0.0.1:{p.sweeper}      (every {config.sweep_interval:g}s)
                 (these three behind a Cloud Run-like invoker check, as deployed)
   Pub/Sub       emulator on 127.0.0.1:{p.pubsub} (PUBSUB_EMULATOR_HOST)
   model         {model}
   database      {_safe_url(config.database_url)}

 A token for the demo user (24 h; `make token` prints another):
   export TOKEN={token}

 Submit a job, then read it:
   curl -s -X POST http://127.0.0.1:{p.api}/v1/generations \\
     -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
     -d '{{"task":"summarize","input":{{"text":"Pub/Sub pushes each job to the worker."}}}}'
   curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:{p.api}/v1/generations

 Ctrl-C stops everything.
================================================================================
"""


def _safe_url(url: str) -> str:
    """The URL without its password."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':')[0]}@{host}"


def run_dev(fault_profile: bool = False) -> int:
    """Prepare the database, start and supervise the stack until Ctrl-C."""
    ports = Ports.from_env(os.environ)
    openai_api_key = os.environ.get("OPENAI_API_KEY") or None
    wanted = {k: v for k, v in asdict(ports).items() if openai_api_key is None or k != "stub_model"}
    busy = busy_port_report(wanted)
    if busy:  # said once, before anything starts: a restart loop would only repeat it
        print("\n".join(f"[dev] {line}" for line in busy), file=sys.stderr)
        print("[dev] stop it, or move genjobs with the *_PORT variables (README)", file=sys.stderr)
        return 1
    database_url = prepare_database()
    flags: tuple[str, ...] = ()
    if fault_profile:
        flags = ("--duplicate-rate", "0.1", "--delay-rate", "0.1", "--max-delay", "2")
    config = StackConfig(
        database_url=database_url,
        ports=ports,
        openai_api_key=openai_api_key,
        emulator_flags=flags,
    )
    load_or_create_key(config.signing_key)
    supervisor = Supervisor(build_services(config))
    with supervisor.stopping_on_signals():
        supervisor.start()
        scheduler = start_scheduler(config)
        try:
            print(banner(config), flush=True)
            supervisor.supervise()
        finally:
            scheduler.stop()
    with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
        print("[dev] stopped", flush=True)
    return 0


def start_scheduler(config: StackConfig) -> LocalScheduler:
    """Call the sweeper every `sweep_interval` seconds with a scheduler token."""
    url = f"http://127.0.0.1:{config.ports.sweeper}/"
    key = load_or_create_key(config.signing_key)
    return LocalScheduler(url, key, config.sweep_interval).start()
