"""infra/ parsed with python-hcl2 and checked against pubsub.yaml and the code's configuration."""

from __future__ import annotations

import ast
import fnmatch
import functools
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import hcl2
import pytest
import yaml

from devstack.dev import retry_min_backoff_seconds
from genjobs.errors import ConfigurationError
from genjobs.settings import Role, load_settings, setting_names
from genjobs.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
ENVS = ("staging", "prod")
FUNCTIONS = {"api", "worker", "dead_letter", "sweeper"}

# Environment variables read by the platform or the functions framework, not by genjobs.settings:
# THREADS sizes the framework's gunicorn thread pool (it must equal the instance's concurrency).
PLATFORM_ENV = {"THREADS"}

# Entry points Terraform deploys before functions/main.py defines them (the sweeper's issue adds
# it); until then the first apply fails on that function, which is why it is listed here.
# The topology keys Terraform reads; any other key in pubsub.yaml would be silently ignored.
TOPIC_KEYS = {"message_retention"}
SUBSCRIPTION_KEYS = {
    "topic",
    "push_endpoint",
    "ack_deadline_seconds",
    "retry_policy",
    "dead_letter_policy",
    "message_retention",
}
SEVEN_DAYS = "604800s"


@dataclass(frozen=True)
class Terraform:
    """The merged top-level blocks of every infra/*.tf file."""

    resources: dict[tuple[str, str], dict[str, Any]]
    data: dict[tuple[str, str], dict[str, Any]]
    variables: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    locals: dict[str, Any]
    terraform: list[dict[str, Any]]

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        """One resource block, failing clearly when it is missing."""
        assert (kind, name) in self.resources, f"infra/ has no resource {kind}.{name}"
        return self.resources[(kind, name)]

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every resource of one type, by name."""
        return {name: body for (k, name), body in self.resources.items() if k == kind}


def load_hcl(path: Path) -> dict[str, Any]:
    """One HCL file as plain Python (quotes stripped, blocks as lists)."""
    options = hcl2.SerializationOptions(
        with_comments=False, explicit_blocks=False, strip_string_quotes=True
    )
    with path.open() as handle:
        loaded: dict[str, Any] = hcl2.load(handle, serialization_options=options)
    return loaded


@functools.cache
def terraform() -> Terraform:
    """Parse infra/*.tf once for the module."""
    resources: dict[tuple[str, str], dict[str, Any]] = {}
    data: dict[tuple[str, str], dict[str, Any]] = {}
    variables: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, Any]] = {}
    local_values: dict[str, Any] = {}
    settings: list[dict[str, Any]] = []
    for path in sorted(INFRA.glob("*.tf")):
        parsed = load_hcl(path)
        for target, key in ((resources, "resource"), (data, "data")):
            for block in parsed.get(key, []):
                for kind, named in block.items():
                    for name, body in named.items():
                        assert (kind, name) not in target, f"{kind}.{name} declared twice"
                        target[(kind, name)] = body
        for target_map, key in ((variables, "variable"), (outputs, "output")):
            for block in parsed.get(key, []):
                target_map.update(block)
        for block in parsed.get("locals", []):
            duplicated = set(block) & set(local_values)
            assert not duplicated, f"locals declared twice: {duplicated}"
            local_values.update(block)
        settings += parsed.get("terraform", [])
    return Terraform(resources, data, variables, outputs, local_values, settings)


@functools.cache
def topology() -> dict[str, Any]:
    """infra/pubsub.yaml, the single source of the Pub/Sub topology."""
    loaded: dict[str, Any] = yaml.safe_load((INFRA / "pubsub.yaml").read_text())
    return loaded


def tfvars(env: str) -> dict[str, Any]:
    """One environment's variable values."""
    return load_hcl(INFRA / "envs" / f"{env}.tfvars")


def expr(value: object) -> str:
    """An HCL expression as python-hcl2 renders it, without the `${...}` wrapper."""
    assert isinstance(value, str), f"expected an expression, got {value!r}"
    text = value.strip()
    if text.startswith("${") and text.endswith("}"):
        text = text[2:-1]
    return re.sub(r"\s+", " ", text)


def block(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The single nested block `name` of a block body."""
    blocks = body.get(name)
    assert isinstance(blocks, list) and len(blocks) == 1, f"expected one {name} block"
    found: dict[str, Any] = blocks[0]
    return found


def dynamic(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The body of `dynamic "name"` inside a block."""
    for entry in body.get("dynamic", []):
        if name in entry:
            found: dict[str, Any] = entry[name]
            return found
    raise AssertionError(f"no dynamic {name} block")


def walk(value: object) -> Iterator[object]:
    """Every nested value of a parsed block."""
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def default_of(name: str) -> Any:
    """A variable's default (python-hcl2 value)."""
    return terraform().variables[name].get("default")


def env_value(env: str, name: str) -> Any:
    """A variable as an environment sets it, else its default."""
    return tfvars(env).get(name, default_of(name))


def push_subscriptions() -> dict[str, dict[str, Any]]:
    """Topology subscriptions that push to a function."""
    subscriptions: dict[str, dict[str, Any]] = topology()["subscriptions"]
    return {name: sub for name, sub in subscriptions.items() if "push_endpoint" in sub}


def worker_ack_deadline() -> int:
    """The ack deadline of the subscription pushing to the worker."""
    (sub,) = [s for s in push_subscriptions().values() if s["push_endpoint"] == "worker"]
    deadline: int = sub["ack_deadline_seconds"]
    return deadline


def seconds(duration: str) -> int:
    """A Pub/Sub duration such as "600s" in seconds."""
    assert re.fullmatch(r"\d+s", duration), f"durations are written as '<n>s', got {duration!r}"
    return int(duration[:-1])


# --- the topology file -------------------------------------------------------------------------


def test_topology_uses_only_keys_terraform_reads() -> None:
    """A key Terraform does not read would make the emulator and the cloud disagree."""
    for name, topic in topology()["topics"].items():
        assert set(topic) <= TOPIC_KEYS, f"topic {name}: unknown keys {set(topic) - TOPIC_KEYS}"
    for name, sub in topology()["subscriptions"].items():
        unknown = set(sub) - SUBSCRIPTION_KEYS
        assert not unknown, f"subscription {name}: unknown keys {unknown}"
        assert set(sub.get("retry_policy", {})) <= {"minimum_backoff", "maximum_backoff"}
        assert set(sub.get("dead_letter_policy", {})) <= {
            "dead_letter_topic",
            "max_delivery_attempts",
        }


def test_topology_values_are_within_pubsub_limits() -> None:
    """Ack deadlines, backoffs, attempts and retention that Pub/Sub accepts."""
    topics = topology()["topics"]
    for name, topic in topics.items():
        if "message_retention" in topic:
            assert 600 <= seconds(topic["message_retention"]) <= 31 * 86400, name
    for name, sub in topology()["subscriptions"].items():
        assert sub["topic"] in topics, f"{name} names an unknown topic"
        assert 10 <= sub["ack_deadline_seconds"] <= 600, name
        retry = sub.get("retry_policy")
        if retry:
            low, high = seconds(retry["minimum_backoff"]), seconds(retry["maximum_backoff"])
            assert 0 <= low <= high <= 600, name
        dead_letter = sub.get("dead_letter_policy")
        if dead_letter:
            assert dead_letter["dead_letter_topic"] in topics, name
            assert dead_letter["dead_letter_topic"] != sub["topic"], name
            assert 5 <= dead_letter["max_delivery_attempts"] <= 100, name
        if "message_retention" in sub:
            assert 600 <= seconds(sub["message_retention"]) <= 7 * 86400, name


def test_push_endpoints_name_deployed_functions() -> None:
    """Each push endpoint is a function Terraform deploys, pushed to by one subscription."""
    endpoints = [sub["push_endpoint"] for sub in push_subscriptions().values()]
    assert set(endpoints) == {"worker", "dead_letter"}
    assert len(endpoints) == len(set(endpoints))
    assert set(endpoints) <= set(terraform().locals["functions"])


def test_every_dead_letter_topic_is_consumed_and_kept_for_replay() -> None:
    """Dead-lettered messages reach the dead_letter handler and a 7-day pull subscription."""
    subscriptions = topology()["subscriptions"].values()
    dead_letter_topics = {
        s["dead_letter_policy"]["dead_letter_topic"]
        for s in subscriptions
        if "dead_letter_policy" in s
    }
    assert dead_letter_topics, "the jobs subscription must dead-letter"
    for topic in dead_letter_topics:
        readers = [s for s in subscriptions if s["topic"] == topic]
        assert any(s.get("push_endpoint") == "dead_letter" for s in readers), topic
        replay = [s for s in readers if "push_endpoint" not in s]
        assert replay, f"{topic} has no pull subscription for replay"
        assert all(s.get("message_retention") == SEVEN_DAYS for s in replay), topic
        assert topology()["topics"][topic].get("message_retention") == SEVEN_DAYS


def test_jobs_subscription_dead_letters() -> None:
    """The worker's subscription has a dead-letter policy and a retry policy."""
    (sub,) = [s for s in push_subscriptions().values() if s["push_endpoint"] == "worker"]
    assert "dead_letter_policy" in sub
    assert "retry_policy" in sub


# --- Terraform reads the topology --------------------------------------------------------------


def test_terraform_reads_the_topology_file() -> None:
    """Topics and subscriptions are for_each over yamldecode(pubsub.yaml), keyed by name."""
    tf = terraform()
    assert expr(tf.locals["topology"]) == 'yamldecode(file("${path.module}/pubsub.yaml"))'
    topic = tf.resource("google_pubsub_topic", "this")
    assert expr(topic["for_each"]) == "local.topology.topics"
    assert expr(topic["name"]) == "each.key"
    assert expr(topic["message_retention_duration"]) == "try(each.value.message_retention, null)"
    sub = tf.resource("google_pubsub_subscription", "this")
    assert expr(sub["for_each"]) == "local.topology.subscriptions"
    assert expr(sub["name"]) == "each.key"
    assert expr(sub["topic"]) == "google_pubsub_topic.this[each.value.topic].id"
    assert expr(sub["ack_deadline_seconds"]) == "each.value.ack_deadline_seconds"
    assert expr(sub["message_retention_duration"]) == "try(each.value.message_retention, null)"
    assert block(sub, "expiration_policy")["ttl"] == "", "idle subscriptions must never expire"
    retry = dynamic(sub, "retry_policy")
    assert expr(retry["for_each"]) == "try([each.value.retry_policy], [])"
    assert {k: expr(v) for k, v in block(retry, "content").items()} == {
        "minimum_backoff": "retry_policy.value.minimum_backoff",
        "maximum_backoff": "retry_policy.value.maximum_backoff",
    }


def test_push_subscriptions_have_oidc_and_dead_letter_policy() -> None:
    """Pushes are signed by the push identity for their endpoint; dead-lettering as in the file."""
    sub = terraform().resource("google_pubsub_subscription", "this")
    push = dynamic(sub, "push_config")
    assert expr(push["for_each"]) == "try([each.value.push_endpoint], [])"
    content = block(push, "content")
    assert expr(content["push_endpoint"]) == "local.function_urls[push_config.value]"
    oidc = block(content, "oidc_token")
    assert expr(oidc["service_account_email"]) == "google_service_account.push.email"
    assert expr(oidc["audience"]) == expr(content["push_endpoint"])
    dead_letter = dynamic(sub, "dead_letter_policy")
    assert expr(dead_letter["for_each"]) == "try([each.value.dead_letter_policy], [])"
    assert {k: expr(v) for k, v in block(dead_letter, "content").items()} == {
        "dead_letter_topic": (
            "google_pubsub_topic.this[dead_letter_policy.value.dead_letter_topic].id"
        ),
        "max_delivery_attempts": "dead_letter_policy.value.max_delivery_attempts",
    }


def test_pubsub_service_agent_can_dead_letter() -> None:
    """The service agent publishes to dead-letter topics and acks the source subscriptions."""
    tf = terraform()
    agent = expr(tf.locals["pubsub_agent"])
    assert agent == "serviceAccount:${google_project_service_identity.pubsub.email}"
    topics = expr(tf.locals["dead_letter_topics"])
    assert "sub.dead_letter_policy.dead_letter_topic" in topics
    assert "local.topology.subscriptions" in topics
    publisher = tf.resource("google_pubsub_topic_iam_member", "dead_letter_publisher")
    assert expr(publisher["for_each"]) == "local.dead_letter_topics"
    assert publisher["role"] == "roles/pubsub.publisher"
    assert expr(publisher["member"]) == "local.pubsub_agent"
    subscriber = tf.resource("google_pubsub_subscription_iam_member", "dead_letter_subscriber")
    assert expr(subscriber["for_each"]) == "local.dead_lettering_subscriptions"
    assert "try(sub.dead_letter_policy, null) != null" in expr(
        tf.locals["dead_lettering_subscriptions"]
    )
    assert subscriber["role"] == "roles/pubsub.subscriber"
    assert expr(subscriber["member"]) == "local.pubsub_agent"
    token = tf.resource("google_service_account_iam_member", "pubsub_token_creator")
    assert expr(token["service_account_id"]) == "google_service_account.push.name"
    assert expr(token["member"]) == "local.pubsub_agent"


# --- functions: timing, env, secrets, scaling -------------------------------------------------


def test_worker_timeout_is_the_ack_deadline_and_tasks_fit_the_lease() -> None:
    """Worker timeout = ack deadline; every task ends inside lease = ack - margin."""
    tf = terraform()
    functions = tf.locals["functions"]
    assert expr(functions["worker"]["timeout"]) == 'local.push_ack_deadline["worker"]'
    assert expr(functions["dead_letter"]["timeout"]) == 'local.push_ack_deadline["dead_letter"]'
    deadlines = expr(tf.locals["push_ack_deadline"])
    assert deadlines.startswith("{for name, sub in local.topology.subscriptions :")
    assert "sub.push_endpoint => sub.ack_deadline_seconds" in deadlines
    service = block(tf.resource("google_cloudfunctions2_function", "this"), "service_config")
    assert expr(service["timeout_seconds"]) == "each.value.timeout"
    assert expr(tf.locals["common_env"]["ACK_DEADLINE_SECONDS"]) == "local.ack_deadline_seconds"
    assert expr(tf.locals["ack_deadline_seconds"]) == 'local.push_ack_deadline["worker"]'
    assert expr(tf.locals["common_env"]["LEASE_MARGIN_SECONDS"]) == "var.lease_margin_seconds"

    ack = worker_ack_deadline()
    for env in ENVS:
        margin = env_value(env, "lease_margin_seconds")
        settings = load_settings(
            "cli", {"ACK_DEADLINE_SECONDS": str(ack), "LEASE_MARGIN_SECONDS": str(margin)}
        )
        assert settings.lease_seconds < ack
        for task in TASKS.values():
            assert task.timeout_seconds <= settings.max_task_timeout_seconds, (
                f"{env}: task {task.name} may run {task.timeout_seconds}s but must end "
                f"{margin}s before the {settings.lease_seconds}s lease"
            )


def test_code_default_ack_deadline_matches_topology() -> None:
    """Where ACK_DEADLINE_SECONDS is not set (local runs), the default is the topology's."""
    assert load_settings("cli", {}).ack_deadline_seconds == worker_ack_deadline()


def function_env_names(function: str) -> set[str]:
    """The env var names Terraform sets on one function (plain and secret)."""
    tf = terraform()
    return (
        set(tf.locals["common_env"])
        | {"PLATFORM_INVOKER_CHECK"}
        | set(tf.locals["function_env"][function])
        | set(tf.locals["function_secrets"][function])
    )


def test_function_env_names_exist_in_settings() -> None:
    """Each env var a function gets is read by genjobs.settings (or the platform)."""
    tf = terraform()
    assert set(tf.locals["functions"]) == FUNCTIONS
    assert set(tf.locals["function_env"]) == FUNCTIONS
    assert set(tf.locals["function_secrets"]) == FUNCTIONS
    known = set(setting_names()) | PLATFORM_ENV
    for function in FUNCTIONS:
        unknown = function_env_names(function) - known
        assert not unknown, f"{function}: {sorted(unknown)} are not read by genjobs.settings"
    service = block(tf.resource("google_cloudfunctions2_function", "this"), "service_config")
    assert expr(service["environment_variables"]) == (
        "{for name, value in merge(local.common_env, local.private_function_env[each.key],"
        " local.function_env[each.key]) : name => tostring(value) if value != null}"
    )
    assert tf.locals["common_env"]["GENJOBS_ENV"] == "cloud"


# A plausible value for every variable Terraform may set, to start each role in cloud mode.
SAMPLE_VALUES = {
    "GENJOBS_ENV": "cloud",
    "GOOGLE_CLOUD_PROJECT": "genjobs-staging",
    "LOG_LEVEL": "INFO",
    "LEASE_MARGIN_SECONDS": "30",
    "THREADS": "4",
    "DB_POOL_SIZE": "4",
    "JOBS_TOPIC": "generation-jobs",
    "SUPABASE_URL": "https://abcdefghijklmnop.supabase.co",
    "ALLOWED_ORIGINS": "https://app.example.com",
    "ALLOW_ANONYMOUS_USERS": "false",
    "SUBMITS_PER_MINUTE": "60",
    "MAX_ACTIVE_JOBS": "20",
    "DAILY_TOKEN_BUDGET": "200000",
    "PUSH_AUDIENCE": "https://genjobs-worker-123456789012.europe-west1.run.app",
    "PUSH_SERVICE_ACCOUNTS": "genjobs-pubsub-push@genjobs-staging.iam.gserviceaccount.com",
    "OPENAI_BASE_URL": "https://api.openai.com/v1",
    "PLATFORM_INVOKER_CHECK": "true",
    "RETRY_MIN_BACKOFF_SECONDS": "10",
    "DATABASE_URL": "postgresql://postgres.ref:pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres",
    "OPENAI_API_KEY": "sk-test",
    "SUPABASE_JWT_SECRET": "a-legacy-hs256-secret-of-at-least-32-characters",
}


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_each_function_starts_in_cloud_mode_with_what_terraform_sets(function: str) -> None:
    """load_settings(role) accepts exactly the names wired for that function."""
    names = function_env_names(function) - {"SUPABASE_JWT_SECRET"}  # optional (HS256 only)
    missing_samples = names - set(SAMPLE_VALUES) - {"ACK_DEADLINE_SECONDS"}
    assert not missing_samples, f"add sample values for {missing_samples}"
    env = {name: SAMPLE_VALUES[name] for name in names if name in SAMPLE_VALUES}
    env["ACK_DEADLINE_SECONDS"] = str(worker_ack_deadline())
    env["K_SERVICE"] = f"genjobs-{function}"  # Cloud Run sets it on every instance
    settings = load_settings(cast(Role, function), env)
    assert settings.environment == "cloud"
    assert settings.database_url is not None


def test_concurrency_threads_and_pool_size_agree() -> None:
    """THREADS and DB_POOL_SIZE are the instance's request concurrency."""
    tf = terraform()
    for function in FUNCTIONS:
        env = tf.locals["function_env"][function]
        scaled = f'var.scaling["{function}"].concurrency'
        assert expr(env["THREADS"]) == scaled, function
        assert expr(env["DB_POOL_SIZE"]) == scaled, function
    service = block(tf.resource("google_cloudfunctions2_function", "this"), "service_config")
    assert expr(service["max_instance_request_concurrency"]) == "var.scaling[each.key].concurrency"
    assert expr(service["max_instance_count"]) == "var.scaling[each.key].max_instances"


def test_database_connections_fit_the_budget_in_every_environment() -> None:
    """Sum of max_instances x concurrency <= db_connection_budget, also enforced at plan time."""
    tf = terraform()
    assert expr(tf.locals["db_connections"]) == (
        "sum([for name, s in var.scaling : s.max_instances * s.concurrency])"
    )
    function = tf.resource("google_cloudfunctions2_function", "this")
    conditions = [expr(p["condition"]) for p in block(function, "lifecycle")["precondition"]]
    assert "local.db_connections <= var.db_connection_budget" in conditions
    for env in ENVS:
        scaling = env_value(env, "scaling")
        assert set(scaling) == FUNCTIONS, env
        total = sum(s["max_instances"] * s["concurrency"] for s in scaling.values())
        budget = env_value(env, "db_connection_budget")
        assert total <= budget, f"{env}: {total} connections > budget {budget}"
        for name, s in scaling.items():
            assert s["concurrency"] == 1 or float(s.get("cpu", "1")) >= 1, (env, name)
            assert s.get("min_instances", 0) <= s["max_instances"], (env, name)


def test_mounted_secrets_exist_and_follow_least_privilege() -> None:
    """Each mounted secret is a declared secret; each function gets only what it reads."""
    tf = terraform()
    secret_ids = tf.locals["secret_ids"]
    assert set(secret_ids) == {"openai-api-key", "database-url", "supabase-jwt-secret"}
    secret = tf.resource("google_secret_manager_secret", "this")
    assert expr(secret["for_each"]) == "toset(local.secret_ids)"
    assert "secret_data" not in str(tf.resources), "secret values must stay out of Terraform"
    assert tf.locals["function_secrets"] == {
        "api": {"DATABASE_URL": "database-url", "SUPABASE_JWT_SECRET": "supabase-jwt-secret"},
        "worker": {"DATABASE_URL": "database-url", "OPENAI_API_KEY": "openai-api-key"},
        "dead_letter": {"DATABASE_URL": "database-url"},
        "sweeper": {"DATABASE_URL": "database-url"},
    }
    mounted = expr(tf.locals["mounted_secrets"])
    assert mounted.startswith("{for fn, secrets in local.function_secrets :")
    assert 'env_name != "SUPABASE_JWT_SECRET" || var.supabase_jwt_secret_enabled' in mounted
    service = block(tf.resource("google_cloudfunctions2_function", "this"), "service_config")
    mounts = dynamic(service, "secret_environment_variables")
    assert expr(mounts["for_each"]) == "local.mounted_secrets[each.key]"
    content = block(mounts, "content")
    assert expr(content["key"]) == "secret_environment_variables.key"
    assert expr(content["secret"]) == (
        "google_secret_manager_secret.this[secret_environment_variables.value].secret_id"
    )
    assert "for fn, secrets in local.mounted_secrets" in expr(tf.locals["secret_access"])
    access = tf.resource("google_secret_manager_secret_iam_member", "access")
    assert expr(access["for_each"]) == "local.secret_access"
    assert access["role"] == "roles/secretmanager.secretAccessor"


def test_push_and_scheduler_identities_match_what_functions_verify() -> None:
    """PUSH_AUDIENCE / PUSH_SERVICE_ACCOUNTS are the URL and identity that sign the calls."""
    tf = terraform()
    env = tf.locals["function_env"]
    for function in ("worker", "dead_letter"):
        assert expr(env[function]["PUSH_AUDIENCE"]) == f'local.function_urls["{function}"]'
        assert expr(env[function]["PUSH_SERVICE_ACCOUNTS"]) == "google_service_account.push.email"
    assert expr(env["sweeper"]["PUSH_AUDIENCE"]) == 'local.function_urls["sweeper"]'
    assert expr(env["sweeper"]["PUSH_SERVICE_ACCOUNTS"]) == (
        "google_service_account.scheduler.email"
    )
    urls = expr(tf.locals["function_urls"])
    assert "https://${fn.name}-${local.project_number}.${var.region}.run.app" in urls
    job = tf.resource("google_cloud_scheduler_job", "sweeper")
    assert job["schedule"] == "* * * * *"
    target = block(job, "http_target")
    assert expr(target["uri"]) == 'local.function_urls["sweeper"]'
    oidc = block(target, "oidc_token")
    assert expr(oidc["service_account_email"]) == "google_service_account.scheduler.email"
    assert expr(oidc["audience"]) == 'local.function_urls["sweeper"]'
    jobs_topic = expr(tf.locals["jobs_topic"])
    assert jobs_topic == "local.topology.subscriptions[local.worker_subscription].topic"
    for function in ("api", "sweeper"):
        assert expr(env[function]["JOBS_TOPIC"]) == "local.jobs_topic"


def test_entry_points_exist_in_main() -> None:
    """Each deployed entry point is a function in functions/main.py."""
    tree = ast.parse((ROOT / "functions" / "main.py").read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    entry_points = {fn["entry_point"] for fn in terraform().locals["functions"].values()}
    assert entry_points - defined == set(), f"functions/main.py lacks {entry_points - defined}"


# --- access ------------------------------------------------------------------------------------


def test_only_the_api_is_public() -> None:
    """allUsers invokes the api only; the others have internal ingress and named invokers."""
    tf = terraform()
    public = {
        (kind, name)
        for (kind, name), body in tf.resources.items()
        if any(
            isinstance(v, str) and v in {"allUsers", "allAuthenticatedUsers"} for v in walk(body)
        )
    }
    assert public == {("google_cloud_run_service_iam_member", "api_public")}
    api_public = tf.resource("google_cloud_run_service_iam_member", "api_public")
    assert expr(api_public["service"]) == 'google_cloudfunctions2_function.this["api"].name'
    functions = tf.locals["functions"]
    assert {name for name, fn in functions.items() if fn["public"]} == {"api"}
    service = block(tf.resource("google_cloudfunctions2_function", "this"), "service_config")
    assert expr(service["ingress_settings"]) == (
        'each.value.public ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"'
    )

    push = tf.resource("google_cloud_run_service_iam_member", "push_invoker")
    assert expr(push["for_each"]) == "local.push_targets"
    assert expr(tf.locals["push_targets"]) == "toset(keys(local.push_ack_deadline))"
    assert expr(push["member"]) == "serviceAccount:${google_service_account.push.email}"
    scheduler = tf.resource("google_cloud_run_service_iam_member", "scheduler_invoker")
    assert expr(scheduler["service"]) == 'google_cloudfunctions2_function.this["sweeper"].name'
    assert expr(scheduler["member"]) == "serviceAccount:${google_service_account.scheduler.email}"
    invokers = tf.of_kind("google_cloud_run_service_iam_member")
    assert set(invokers) == {"push_invoker", "scheduler_invoker", "api_public"}
    assert all(body["role"] == "roles/run.invoker" for body in invokers.values())


def test_trust_model_the_function_and_terraform_agree_on() -> None:
    """Unsigned tokens are trusted exactly where Cloud Run's invoker check is on.

    A function told PLATFORM_INVOKER_CHECK=true accepts tokens whose signature Cloud Run
    removed: that must be exactly the functions with no public invoker binding (so Cloud Run
    checks every caller) and internal ingress; the public api never trusts one.
    """
    tf = terraform()
    assert expr(tf.locals["private_function_env"]) == (
        "{for key, fn in local.functions : key => {PLATFORM_INVOKER_CHECK = !fn.public}}"
    )
    private = {name for name, fn in tf.locals["functions"].items() if not fn["public"]}
    assert private == {"worker", "dead_letter", "sweeper"}
    # Each private function has a named invoker (test_only_the_api_is_public: no other binding).
    push = tf.resource("google_cloud_run_service_iam_member", "push_invoker")
    assert expr(push["service"]) == "google_cloudfunctions2_function.this[each.key].name"
    assert {*topology_push_targets(), "sweeper"} == private
    assert "PLATFORM_INVOKER_CHECK" not in tf.locals["common_env"]
    for name in FUNCTIONS:
        assert "PLATFORM_INVOKER_CHECK" not in tf.locals["function_env"][name]
    # The code accepts the setting only on Cloud Run, and the deployed value turns it on.
    cloud = {
        "GENJOBS_ENV": "cloud",
        "DATABASE_URL": SAMPLE_VALUES["DATABASE_URL"],
        "PUSH_AUDIENCE": SAMPLE_VALUES["PUSH_AUDIENCE"],
        "PUSH_SERVICE_ACCOUNTS": SAMPLE_VALUES["PUSH_SERVICE_ACCOUNTS"],
        "PLATFORM_INVOKER_CHECK": "true",
    }
    assert load_settings("dead_letter", {**cloud, "K_SERVICE": "x"}).platform_invoker_check
    with pytest.raises(ConfigurationError, match="K_SERVICE is unset"):
        load_settings("dead_letter", cloud)


def topology_push_targets() -> list[str]:
    """The functions the topology pushes to."""
    return [sub["push_endpoint"] for sub in push_subscriptions().values()]


def test_retry_min_backoff_comes_from_the_topology() -> None:
    """The worker's RETRY_MIN_BACKOFF_SECONDS is the jobs subscription's minimum backoff."""
    tf = terraform()
    assert expr(tf.locals["function_env"]["worker"]["RETRY_MIN_BACKOFF_SECONDS"]) == (
        "local.retry_min_backoff_seconds"
    )
    assert expr(tf.locals["retry_min_backoff_seconds"]) == (
        "tonumber(trimsuffix(local.topology.subscriptions[local.worker_subscription]"
        '.retry_policy.minimum_backoff, "s"))'
    )
    (sub,) = [s for s in push_subscriptions().values() if s["push_endpoint"] == "worker"]
    backoff = seconds(sub["retry_policy"]["minimum_backoff"])
    assert retry_min_backoff_seconds() == backoff  # what the local stack passes
    assert load_settings("cli", {}).retry_min_backoff_seconds == backoff  # the code's default


def test_first_apply_creates_grants_before_what_needs_them() -> None:
    """A new project in one apply: agent before its grants, grants (propagated) before builds."""
    tf = terraform()
    identity = tf.resource("google_project_service_identity", "pubsub")
    assert expr(identity["provider"]) == "google-beta"
    assert identity["service"] == "pubsub.googleapis.com"
    assert [expr(d) for d in identity["depends_on"]] == ["google_project_service.this"]
    functions = tf.resource("google_cloudfunctions2_function", "this")
    assert [expr(d) for d in functions["depends_on"]] == ["time_sleep.iam_propagation"]
    wait = tf.resource("time_sleep", "iam_propagation")
    assert seconds(wait["create_duration"]) >= 60
    triggers = {name: expr(value) for name, value in wait["triggers"].items()}
    assert "google_project_iam_member.build" in triggers["build"]
    assert triggers["build_source"] == "google_storage_bucket_iam_member.build_source.id"
    assert "google_secret_manager_secret_iam_member.access" in triggers["secret_access"]
    providers = {
        name: p[name]["source"]
        for t in tf.terraform
        for p in t.get("required_providers", [])
        for name in p
    }
    assert providers["google-beta"] == "hashicorp/google-beta"
    assert providers["time"] == "hashicorp/time"


def test_provider_lock_file_is_committed_not_ignored() -> None:
    """The first init writes infra/.terraform.lock.hcl; git keeps it and CI never rewrites it."""
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "infra/.terraform.lock.hcl"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 1, "infra/.terraform.lock.hcl must not be git-ignored"
    readme = (INFRA / "README.md").read_text()
    assert "terraform providers lock" in readme
    assert "git add infra/.terraform.lock.hcl" in readme


def test_iam_grants_are_narrow() -> None:
    """No basic roles; project-level grants only for the build identity; publishers named."""
    tf = terraform()
    for value in walk(tf.resources):
        if isinstance(value, str):
            assert value not in {"roles/owner", "roles/editor", "roles/viewer"}
    assert set(tf.of_kind("google_project_iam_member")) == {"build"}
    build = tf.resource("google_project_iam_member", "build")
    assert expr(build["for_each"]) == 'toset(["roles/run.builder"])'
    publishers = tf.resource("google_pubsub_topic_iam_member", "jobs_publisher")
    assert expr(publishers["for_each"]) == 'toset(["api", "sweeper"])'
    assert expr(publishers["topic"]) == "google_pubsub_topic.this[local.jobs_topic].name"
    accounts = tf.resource("google_service_account", "function")
    assert expr(accounts["for_each"]) == "local.functions"
    service = block(tf.resource("google_cloudfunctions2_function", "this"), "service_config")
    assert expr(service["service_account_email"]) == (
        "google_service_account.function[each.key].email"
    )


# --- source, monitoring, variables, outputs, backend ------------------------------------------


def test_source_archive_covers_functions_and_requirements() -> None:
    """Every file under functions/ matches the archive's patterns; requirements.txt is added."""
    tf = terraform()
    patterns: list[str] = tf.locals["source_patterns"]
    functions_dir = ROOT / "functions"
    left_out = [
        path.relative_to(functions_dir).as_posix()
        for path in functions_dir.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and not any(part.endswith(".egg-info") for part in path.parts)
        and not any(
            fnmatch.fnmatch(path.relative_to(functions_dir).as_posix(), p) for p in patterns
        )
    ]
    assert not left_out, f"the deployed archive would leave out {left_out}"
    archive = tf.data[("archive_file", "source")]
    static = block(archive, "source")
    assert static["filename"] == "requirements.txt"
    assert expr(static["content"]) == 'file("${path.module}/../requirements.txt")'
    assert "local.source_files" in expr(dynamic(archive, "source")["for_each"])
    obj = tf.resource("google_storage_bucket_object", "source")
    assert "${local.source_hash}" in obj["name"]
    hashed = expr(tf.locals["source_hash"])
    assert "local.source_files" in hashed and "requirements.txt" in hashed


def test_alert_policies_cover_backlog_age_and_errors() -> None:
    """Dead-letter backlog, oldest unacked job and 5xx ratio alerts notify the channels."""
    tf = terraform()
    policies = tf.of_kind("google_monitoring_alert_policy")
    assert set(policies) == {"dead_letter_backlog", "oldest_unacked_job", "function_errors"}
    for policy in policies.values():
        assert expr(policy["notification_channels"]) == "var.notification_channels"
        assert block(policy, "documentation")["content"]

    def condition(name: str) -> dict[str, Any]:
        return block(block(policies[name], "conditions"), "condition_threshold")

    assert expr(policies["dead_letter_backlog"]["for_each"]) == "local.replay_subscriptions"
    assert "subscription/num_undelivered_messages" in condition("dead_letter_backlog")["filter"]
    assert "${local.worker_subscription}" in condition("oldest_unacked_job")["filter"]
    assert "subscription/oldest_unacked_message_age" in condition("oldest_unacked_job")["filter"]
    errors = condition("function_errors")
    assert 'response_code_class = "5xx"' in errors["filter"]
    assert "denominator_filter" in errors


def test_variables_are_typed_and_described() -> None:
    """Every variable has a type and a description."""
    for name, variable in terraform().variables.items():
        assert variable.get("type"), f"variable {name} has no type"
        assert str(variable.get("description", "")).strip(), f"variable {name} has no description"


def test_outputs_are_described() -> None:
    """Every output has a description."""
    for name, output in terraform().outputs.items():
        assert str(output.get("description", "")).strip(), f"output {name} has no description"
    assert expr(terraform().outputs["api_url"]["value"]) == (
        'google_cloudfunctions2_function.this["api"].service_config[0].uri'
    )


@pytest.mark.parametrize("env", ENVS)
def test_tfvars_set_only_declared_variables(env: str) -> None:
    """An environment file sets declared variables; every required one is set or passed."""
    declared = set(terraform().variables)
    values = tfvars(env)
    assert set(values) <= declared, f"{env}.tfvars sets undeclared {set(values) - declared}"
    assert values["environment"] == env
    required = {name for name, v in terraform().variables.items() if "default" not in v}
    passed_by_cloudbuild = {"project_id", "region"}
    missing = required - set(values) - passed_by_cloudbuild
    assert not missing, f"{env}.tfvars leaves required variables unset: {missing}"


@pytest.mark.parametrize("env", ENVS)
def test_backend_is_gcs_with_one_state_per_environment(env: str) -> None:
    """backend "gcs" {} is partial; each environment's file sets its own state prefix."""
    backends = [b for t in terraform().terraform for b in t.get("backend", [])]
    assert backends == [{"gcs": {}}]
    config = load_hcl(INFRA / "envs" / f"{env}.backend.hcl")
    assert config == {"prefix": f"genjobs/{env}"}, "the bucket comes from -backend-config"


def test_google_provider_is_at_least_6() -> None:
    """The google provider constraint starts at 6.0."""
    providers = [p for t in terraform().terraform for p in t.get("required_providers", [])]
    (google,) = [p["google"] for p in providers if "google" in p]
    assert google["source"] == "hashicorp/google"
    assert re.match(r">= ?6\.", google["version"]), google["version"]


def test_readme_enables_every_api() -> None:
    """The README's bootstrap enables the APIs Terraform manages."""
    readme = (INFRA / "README.md").read_text()
    for api in terraform().locals["apis"]:
        assert api in readme, f"infra/README.md does not enable {api}"


# --- layout: what `terraform fmt` would leave unchanged ---------------------------------------


@dataclass
class Line:
    """One source line split like hclwrite's formatter: lead, first `=`, brackets."""

    text: str
    skeleton: str  # the text with string contents blanked, for spacing checks
    net_brackets: int
    assign_at: int | None  # column of an attribute's `=` when its value ends on this line
    comment_at: int | None


def scan(text: str) -> Line:
    """Split one line of HCL (no heredocs, no block comments) into what fmt looks at."""
    brackets = 0
    equals: list[tuple[int, int]] = []  # (column, bracket count before it)
    contexts: list[list[int]] = [[0]]  # per code context (file, each `${`): open `{` count
    in_string: list[bool] = [False]  # per nesting level: inside a string literal?
    comment_at: int | None = None
    skeleton = list(text)
    i = 0
    while i < len(text):
        char = text[i]
        if in_string[-1]:
            escape = 2 if char == "\\" else 3 if text.startswith(("$${", "%%{"), i) else 0
            if escape:
                for j in range(i, min(i + escape, len(text))):
                    skeleton[j] = "_"
                i += escape
                continue
            if text.startswith(("${", "%{"), i):
                brackets += 1
                in_string.append(False)
                contexts.append([0])
                i += 2
                continue
            if char == '"':
                in_string.pop()
            else:
                skeleton[i] = "_"
            i += 1
            continue
        if char == "#" or text.startswith("//", i):
            comment_at = i
            break
        if char == '"':
            in_string.append(True)
        elif char in "([{":
            brackets += 1
            if char == "{":
                contexts[-1][0] += 1
        elif char in ")]}":
            brackets -= 1
            if char == "}":
                if contexts[-1][0] == 0 and len(contexts) > 1:
                    contexts.pop()
                    in_string.pop()
                else:
                    contexts[-1][0] -= 1
        elif (
            char == "="
            and text[i + 1 : i + 2] not in {"=", ">"}
            and (i == 0 or text[i - 1] not in "=!<>")
        ):
            equals.append((i, brackets))
        i += 1
    assign_at = None
    if equals and text[: equals[0][0]].strip():
        column, before = equals[0]
        if brackets - before == 0:
            assign_at = column
    return Line(text, "".join(skeleton), brackets, assign_at, comment_at)


def layout_problems(source: str) -> list[str]:
    """Differences from hclwrite's indentation and `=` alignment, plus whitespace hygiene."""
    problems: list[str] = []
    if not source.endswith("\n") or source.endswith("\n\n"):
        problems.append("the file must end with exactly one newline")
    if "\t" in source or "\r" in source:
        problems.append("tabs or carriage returns")
    lines = [scan(text) for text in source.split("\n")[:-1]]
    indents: list[int] = []
    chain: list[tuple[int, Line]] = []

    def close_chain() -> None:
        if chain:
            widest = max(len(line.text[: line.assign_at].rstrip()) for _, line in chain)
            for number, line in chain:
                assert line.assign_at is not None
                if line.assign_at != widest + 1:
                    problems.append(f"line {number}: `=` not aligned at column {widest + 2}")
            chain.clear()

    for number, line in enumerate(lines, start=1):
        text = line.text
        if text != text.rstrip():
            problems.append(f"line {number}: trailing whitespace")
        if not text.strip():
            close_chain()
            continue
        # hclwrite: a line opening brackets is indented at the current level, then pushes.
        net = line.net_brackets
        if net < 0:
            closed = -net
            while closed > 0 and indents:
                if closed >= indents[-1]:
                    closed -= indents.pop()
                else:
                    indents[-1] -= closed
                    closed = 0
        expected = 2 * len(indents)
        if net > 0:
            indents.append(net)
        actual = len(text) - len(text.lstrip(" "))
        if actual != expected:
            problems.append(f"line {number}: indented {actual}, fmt indents {expected}")
        code_start = actual
        if line.comment_at is not None and line.comment_at > code_start:
            problems.append(f"line {number}: trailing comment (fmt would align it)")
        end = line.comment_at if line.comment_at is not None else len(text)
        code = line.skeleton[code_start:end]
        if "<<" in code or "/*" in code:
            problems.append(f"line {number}: heredocs and block comments are not checked: avoid")
        if line.assign_at is None:
            close_chain()
            if "  " in code.strip():
                problems.append(f"line {number}: double space")
        else:
            chain.append((number, line))
            after = line.skeleton[line.assign_at + 1 : end]
            if not after.startswith(" ") or after.startswith("  "):
                problems.append(f"line {number}: one space after `=`")
            before_value = line.skeleton[code_start : line.assign_at].rstrip()
            if "  " in before_value or "  " in after.strip():
                problems.append(f"line {number}: double space")
    close_chain()
    return problems


def hcl_files() -> list[Path]:
    """Every Terraform file of infra/."""
    return sorted([*INFRA.glob("*.tf"), *(INFRA / "envs").glob("*")])


@pytest.mark.parametrize("path", hcl_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_hcl_layout_is_canonical(path: Path) -> None:
    """Two-space indents and aligned `=` as `terraform fmt` writes them (fmt itself runs in CI)."""
    load_hcl(path)  # parses
    assert layout_problems(path.read_text()) == []


def test_layout_check_catches_misalignment() -> None:
    """The layout check itself: misaligned `=` and wrong indents are reported."""
    good = (
        'resource "a" "b" {\n  name     = "x"\n  location = "y"\n\n'
        '  labels = {\n    k = "v"\n  }\n}\n'
    )
    assert layout_problems(good) == []
    assert layout_problems(good.replace('name     = "x"', 'name = "x"'))
    assert layout_problems(good.replace('    k = "v"', '   k = "v"'))
    interpolated = 'locals {\n  a   = "${join(",", [for x in y : "{${x}}"])}"\n  bcd = 1\n}\n'
    assert layout_problems(interpolated) == []
