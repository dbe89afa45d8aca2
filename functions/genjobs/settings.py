"""One typed, frozen settings object built from the environment at cold start."""

# Why not pydantic-settings (measured 2026-12, issue 12 item 10): dead_letter and sweeper never
# import pydantic, and a BaseSettings there adds ~95-125 ms CPU to a ~0.8 s cold start
# (+12-15%); api and worker already load pydantic (api schemas, task models, openai): +20 ms.
# What it would replace is small: this reader already reports every bad variable at once,
# and `NAME_SECRET` (Secret Manager, read lazily) would be a custom source anyway. Revisit
# if every function comes to import pydantic.

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

from genjobs.errors import ConfigurationError
from genjobs.secrets import Secret, secret_manager_loader

# The Supabase CLI's local stack (`supabase start`) defaults, so a local frontend works unchanged.
LOCAL_SUPABASE_URL = "http://127.0.0.1:54321"
LOCAL_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"  # noqa: S105
LOCAL_PUSH_SERVICE_ACCOUNT = "pubsub-push@local-project.iam.gserviceaccount.com"
LOCAL_SCHEDULER_SERVICE_ACCOUNT = "scheduler@local-project.iam.gserviceaccount.com"
# Frontends' dev servers (React/Next, Vite) anywhere; locally also the demo page `make run` serves.
DEFAULT_ALLOWED_ORIGINS = ("http://localhost:3000", "http://localhost:5173")
LOCAL_DEMO_ORIGIN = "http://localhost:8070"
LOCAL_ALLOWED_ORIGINS = (*DEFAULT_ALLOWED_ORIGINS, LOCAL_DEMO_ORIGIN)
LOCAL_PUSH_CERTS_URL = "http://127.0.0.1:8086/oauth2/v3/certs"
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v3/certs"

Role = Literal["api", "worker", "dead_letter", "sweeper", "cli"]
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Everything the functions and tools read from the environment."""

    environment: Literal["local", "cloud"] = "local"
    log_level: str = "INFO"
    sentry_dsn: str | None = None

    # Database: DATABASE_URL, else a Cloud SQL instance, else (local only) embedded Postgres.
    database_url: Secret | None = None
    cloud_sql_instance: str | None = None
    db_user: str = "postgres"
    db_password: Secret | None = None
    db_name: str = "postgres"
    db_iam_auth: bool = False
    db_pool_size: int = 5
    db_pool_timeout_seconds: float = 5.0
    # A statement or connect that hangs this long (server gone, pooler waiting) fails fast.
    db_socket_timeout_seconds: float = 10.0
    embedded_pg_dir: str = ".local/pgdata"

    # Pub/Sub.
    google_cloud_project: str = "local-project"
    jobs_topic: str = "generation-jobs"
    publish_timeout_seconds: float = 5.0

    # Model.
    openai_api_key: Secret | None = None
    openai_base_url: str | None = None

    # Browser auth (Supabase).
    supabase_url: str = LOCAL_SUPABASE_URL
    supabase_jwt_secret: Secret | None = None
    allow_anonymous_users: bool = False

    # Service auth (Pub/Sub push, Cloud Scheduler).
    push_audience: str | None = None
    push_service_accounts: tuple[str, ...] = ()
    push_certs_url: str = GOOGLE_CERTS_URL
    # Cloud Run's invoker check runs in front (Terraform sets this beside the invoker bindings):
    # tokens whose signature it removed are accepted on their claims.
    platform_invoker_check: bool = False

    # HTTP api.
    allowed_origins: tuple[str, ...] = DEFAULT_ALLOWED_ORIGINS
    max_body_bytes: int = 1024 * 1024
    max_metadata_bytes: int = 4096
    submits_per_minute: int = 60
    max_active_jobs: int = 20
    daily_token_budget: int = 200_000

    # Streaming. The worker writes text at most every flush interval: 200 ms reads as
    # continuous typing yet bounds a running job to 5 writes a second. An SSE stream polls the
    # database every poll interval (one query), ends after its longest duration (inside the
    # api's 60 s request timeout; clients resume with Last-Event-ID) and sends a comment
    # heartbeat when idle so proxies keep it open.
    stream_flush_ms: int = 200
    # The first text waits this long for more (and, in the worker, until the stream waits on
    # the network) before it is written: an answer that arrives whole is then written once,
    # with its outcome, and a slow stream's first words still show within it.
    stream_first_flush_ms: int = 25
    stream_poll_ms: int = 250
    # Until a stream's first text arrives, it polls this often (time to first token).
    stream_first_poll_ms: int = 50
    stream_max_seconds: int = 50
    stream_heartbeat_seconds: int = 15
    max_streams_per_user: int = 5
    # Streamed text is kept this long after a job ends (to resume), then the sweeper deletes it.
    stream_retention_seconds: int = 600

    # Worker timing (checked in `check_timing`): task timeout = ack deadline - 2 * margin; a
    # running attempt renews its lease every heartbeat; the lease is three heartbeats (≤ the
    # margin), so a crashed worker's job is free again within 30 s while two missed renewals
    # are forgiven.
    ack_deadline_seconds: int = 300
    lease_margin_seconds: int = 30
    heartbeat_seconds: int = 10
    # The jobs subscription's minimum backoff: a model's Retry-After longer than this defers
    # the job (acked, republished by the sweeper) instead of spending a delivery attempt.
    retry_min_backoff_seconds: int = 10

    # Sweeper.
    sweep_publish_grace_seconds: int = 30
    republish_after_seconds: int = 900
    max_job_age_seconds: int = 86_400
    sweep_batch_size: int = 200

    @property
    def lease_seconds(self) -> int:
        """How long a claim or a renewal holds the job: three heartbeats."""
        return 3 * self.heartbeat_seconds

    @property
    def max_task_timeout_seconds(self) -> int:
        """The longest a model call may take: its outcome is written inside the ack deadline."""
        return self.ack_deadline_seconds - 2 * self.lease_margin_seconds

    @property
    def is_local(self) -> bool:
        """True on a developer machine (emulators, stub model, embedded Postgres)."""
        return self.environment == "local"


class _Reader:
    """Parses environment values, collecting every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return value.strip() if value is not None and value.strip() != "" else None

    def parse(self, name: str, convert: Callable[[str], T], what: str) -> T | None:
        value = self.raw(name)
        if value is None:
            return None
        try:
            return convert(value)
        except ValueError:
            self.problems.append(f"{name} must be {what} (got {value!r})")
            return None

    def secret(self, name: str) -> Secret | None:
        """`NAME` itself, or `NAME_SECRET` naming a Secret Manager secret to read lazily."""
        value = self.raw(name)
        if value is not None:
            return Secret(value)
        resource = self.raw(f"{name}_SECRET")
        if resource is None:
            return None
        if not resource.startswith("projects/") or "/secrets/" not in resource:
            self.problems.append(
                f"{name}_SECRET must be a Secret Manager name 'projects/P/secrets/S[/versions/V]'"
            )
            return None
        return Secret(loader=secret_manager_loader(resource), source=resource)


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(value)


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(value)
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(value)
    return number


def _csv(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _environment(value: str) -> Literal["local", "cloud"]:
    if value == "local":
        return "local"
    if value == "cloud":
        return "cloud"
    raise ValueError(value)


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(value)
    return value.rstrip("/")


# env var -> (field, converter, description); secrets are read separately.
_PLAIN: dict[str, tuple[str, Callable[[str], object], str]] = {
    "GENJOBS_ENV": ("environment", _environment, "'local' or 'cloud'"),
    "LOG_LEVEL": ("log_level", str.upper, "a log level"),
    "SENTRY_DSN": ("sentry_dsn", _url, "an http(s) URL"),
    "CLOUD_SQL_INSTANCE": ("cloud_sql_instance", str, "PROJECT:REGION:INSTANCE"),
    "DB_USER": ("db_user", str, "a user name"),
    "DB_NAME": ("db_name", str, "a database name"),
    "DB_IAM_AUTH": ("db_iam_auth", _bool, "a boolean"),
    "DB_POOL_SIZE": ("db_pool_size", _positive_int, "a positive integer"),
    "DB_POOL_TIMEOUT_SECONDS": ("db_pool_timeout_seconds", _positive_float, "a positive number"),
    "DB_SOCKET_TIMEOUT_SECONDS": (
        "db_socket_timeout_seconds",
        _positive_float,
        "a positive number",
    ),
    "EMBEDDED_PG_DIR": ("embedded_pg_dir", str, "a folder"),
    "GOOGLE_CLOUD_PROJECT": ("google_cloud_project", str, "a project id"),
    "JOBS_TOPIC": ("jobs_topic", str, "a topic name"),
    "PUBLISH_TIMEOUT_SECONDS": ("publish_timeout_seconds", _positive_float, "a positive number"),
    "OPENAI_BASE_URL": ("openai_base_url", _url, "an http(s) URL"),
    "SUPABASE_URL": ("supabase_url", _url, "an http(s) URL"),
    "ALLOW_ANONYMOUS_USERS": ("allow_anonymous_users", _bool, "a boolean"),
    "PUSH_AUDIENCE": ("push_audience", str, "a URL"),
    "PUSH_SERVICE_ACCOUNTS": ("push_service_accounts", _csv, "comma-separated emails"),
    "PUSH_CERTS_URL": ("push_certs_url", _url, "an http(s) URL"),
    "PLATFORM_INVOKER_CHECK": ("platform_invoker_check", _bool, "true or false"),
    "ALLOWED_ORIGINS": ("allowed_origins", _csv, "comma-separated origins"),
    "MAX_BODY_BYTES": ("max_body_bytes", _positive_int, "a positive integer"),
    "MAX_METADATA_BYTES": ("max_metadata_bytes", _positive_int, "a positive integer"),
    "SUBMITS_PER_MINUTE": ("submits_per_minute", _positive_int, "a positive integer"),
    "MAX_ACTIVE_JOBS": ("max_active_jobs", _positive_int, "a positive integer"),
    "DAILY_TOKEN_BUDGET": ("daily_token_budget", _positive_int, "a positive integer"),
    "STREAM_FLUSH_MS": ("stream_flush_ms", _positive_int, "a positive integer"),
    "STREAM_FIRST_FLUSH_MS": ("stream_first_flush_ms", _positive_int, "a positive integer"),
    "STREAM_POLL_MS": ("stream_poll_ms", _positive_int, "a positive integer"),
    "STREAM_FIRST_POLL_MS": ("stream_first_poll_ms", _positive_int, "a positive integer"),
    "STREAM_MAX_SECONDS": ("stream_max_seconds", _positive_int, "a positive integer"),
    "STREAM_HEARTBEAT_SECONDS": ("stream_heartbeat_seconds", _positive_int, "a positive integer"),
    "MAX_STREAMS_PER_USER": ("max_streams_per_user", _positive_int, "a positive integer"),
    "STREAM_RETENTION_SECONDS": ("stream_retention_seconds", _positive_int, "a positive integer"),
    "ACK_DEADLINE_SECONDS": ("ack_deadline_seconds", _positive_int, "a positive integer"),
    "LEASE_MARGIN_SECONDS": ("lease_margin_seconds", _positive_int, "a positive integer"),
    "HEARTBEAT_SECONDS": ("heartbeat_seconds", _positive_int, "a positive integer"),
    "RETRY_MIN_BACKOFF_SECONDS": ("retry_min_backoff_seconds", _positive_int, "a positive integer"),
    "SWEEP_PUBLISH_GRACE_SECONDS": (
        "sweep_publish_grace_seconds",
        _positive_int,
        "a positive integer",
    ),
    "REPUBLISH_AFTER_SECONDS": ("republish_after_seconds", _positive_int, "a positive integer"),
    "MAX_JOB_AGE_SECONDS": ("max_job_age_seconds", _positive_int, "a positive integer"),
    "SWEEP_BATCH_SIZE": ("sweep_batch_size", _positive_int, "a positive integer"),
}
_SECRETS = {
    "DATABASE_URL": "database_url",
    "DB_PASSWORD": "db_password",
    "OPENAI_API_KEY": "openai_api_key",
    "SUPABASE_JWT_SECRET": "supabase_jwt_secret",
}

# What each function cannot start without outside local mode.
_REQUIRED_IN_CLOUD: dict[Role, tuple[str, ...]] = {
    "api": ("SUPABASE_URL",),
    "worker": ("PUSH_AUDIENCE", "PUSH_SERVICE_ACCOUNTS", "OPENAI_API_KEY"),
    "dead_letter": ("PUSH_AUDIENCE", "PUSH_SERVICE_ACCOUNTS"),
    "sweeper": ("PUSH_AUDIENCE", "PUSH_SERVICE_ACCOUNTS"),
    "cli": (),
}


def load_settings(role: Role = "cli", env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `env` (default `os.environ`); raise one error listing every problem."""
    reader = _Reader(os.environ if env is None else env)
    values: dict[str, object] = {}
    for name, (attr, convert, what) in _PLAIN.items():
        parsed = reader.parse(name, convert, what)
        if parsed is not None:
            values[attr] = parsed
    for name, attr in _SECRETS.items():
        secret = reader.secret(name)
        if secret is not None:
            values[attr] = secret

    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.is_local and "allowed_origins" not in values:
        settings = replace(settings, allowed_origins=LOCAL_ALLOWED_ORIGINS)
    if not settings.is_local:
        _check_cloud_requirements(settings, role, reader)
    elif settings.supabase_jwt_secret is None and role == "api":
        settings = replace(settings, supabase_jwt_secret=Secret(LOCAL_JWT_SECRET))
    if settings.is_local and role in {"worker", "dead_letter", "sweeper"}:
        settings = _local_push_defaults(settings, role)
    problem = check_timing(settings)
    if problem:
        reader.problems.append(problem)
    if reader.problems:
        raise ConfigurationError(
            "invalid configuration:\n" + "\n".join(f"  - {p}" for p in reader.problems)
        )
    return settings


def _check_cloud_requirements(settings: Settings, role: Role, reader: _Reader) -> None:
    if settings.database_url is None and settings.cloud_sql_instance is None:
        reader.problems.append(
            "DATABASE_URL (or DATABASE_URL_SECRET, or CLOUD_SQL_INSTANCE) is required"
        )
    if role == "api" and settings.supabase_url == LOCAL_SUPABASE_URL:
        reader.problems.append("SUPABASE_URL must name the project, not the local default")
    present = {
        "SUPABASE_URL": settings.supabase_url,
        "PUSH_AUDIENCE": settings.push_audience,
        "PUSH_SERVICE_ACCOUNTS": settings.push_service_accounts,
        "OPENAI_API_KEY": settings.openai_api_key,
    }
    if settings.platform_invoker_check and not reader.raw("K_SERVICE"):
        # Cloud Run sets K_SERVICE; anywhere else nothing checks the token before the function.
        reader.problems.append(
            "PLATFORM_INVOKER_CHECK=true but this is not Cloud Run (K_SERVICE is unset): "
            "nothing in front would have checked the tokens"
        )
    for name in _REQUIRED_IN_CLOUD[role]:
        if not present.get(name):
            suffix = " (or OPENAI_API_KEY_SECRET)" if name == "OPENAI_API_KEY" else ""
            reader.problems.append(f"{name}{suffix} is required when GENJOBS_ENV=cloud")


def _local_push_defaults(settings: Settings, role: Role) -> Settings:
    """Locally, tokens are signed with the emulator's key for the local service accounts."""
    changes: dict[str, object] = {}
    if not settings.push_service_accounts:
        caller = (
            LOCAL_SCHEDULER_SERVICE_ACCOUNT if role == "sweeper" else LOCAL_PUSH_SERVICE_ACCOUNT
        )
        changes["push_service_accounts"] = (caller,)
    if settings.push_certs_url == GOOGLE_CERTS_URL:
        changes["push_certs_url"] = LOCAL_PUSH_CERTS_URL
    return replace(settings, **changes)  # type: ignore[arg-type]


def check_timing(settings: Settings) -> str | None:
    """Task timeout and lease (3 heartbeats) < ack deadline ≤ 600 s, or what is wrong."""
    if not 10 <= settings.ack_deadline_seconds <= 600:
        return "ACK_DEADLINE_SECONDS must be between 10 and 600 (Pub/Sub's limits)"
    if settings.max_task_timeout_seconds <= 0:
        return (
            f"LEASE_MARGIN_SECONDS={settings.lease_margin_seconds} leaves no time for a task "
            f"inside ACK_DEADLINE_SECONDS={settings.ack_deadline_seconds}"
        )
    if settings.lease_seconds > settings.lease_margin_seconds:
        # A redelivery may outwait a crashed attempt's lease before its own call: both must
        # fit in the ack deadline (wait + task timeout ≤ ack deadline - margin).
        return (
            f"HEARTBEAT_SECONDS={settings.heartbeat_seconds} makes a lease of "
            f"{settings.lease_seconds}s, longer than LEASE_MARGIN_SECONDS="
            f"{settings.lease_margin_seconds}"
        )
    if settings.republish_after_seconds <= settings.ack_deadline_seconds:
        return "REPUBLISH_AFTER_SECONDS must be longer than ACK_DEADLINE_SECONDS"
    return None


def setting_names() -> list[str]:
    """Every environment variable read here (the README's table is checked against this)."""
    names = list(_PLAIN)
    for name in _SECRETS:
        names += [name, f"{name}_SECRET"]
    return sorted(names)
