"""cloudbuild.yaml's structure: ids, waitFor, substitutions, secrets and the deploy order."""

from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"

# Substitutions Cloud Build provides itself.
BUILT_INS = {
    "PROJECT_ID",
    "PROJECT_NUMBER",
    "BUILD_ID",
    "LOCATION",
    "TRIGGER_NAME",
    "TRIGGER_BUILD_CONFIG_PATH",
    "COMMIT_SHA",
    "SHORT_SHA",
    "REVISION_ID",
    "REPO_NAME",
    "REPO_FULL_NAME",
    "BRANCH_NAME",
    "TAG_NAME",
    "REF_NAME",
    "SERVICE_ACCOUNT_EMAIL",
    "SERVICE_ACCOUNT",
}
TERRAFORM_IMAGE = re.compile(r"^hashicorp/terraform:\$\{_TF_VERSION\}$")
PYTHON_IMAGE = "python:3.11"
GCLOUD_IMAGE = "gcr.io/google.com/cloudsdktool/cloud-sdk:slim"
# `$$` is a literal dollar; `${NAME}` and `$NAME` are substitutions.
SUBSTITUTION = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@functools.cache
def build() -> dict[str, Any]:
    """The parsed cloudbuild.yaml."""
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    return loaded


def steps() -> list[dict[str, Any]]:
    """The build steps in file order."""
    found: list[dict[str, Any]] = build()["steps"]
    return found


def step(step_id: str) -> dict[str, Any]:
    """One step by id."""
    (found,) = [s for s in steps() if s.get("id") == step_id]
    return found


def strings(value: object) -> list[str]:
    """Every string inside a parsed YAML value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


def script(step_id: str) -> str:
    """A step's arguments as one line of text."""
    return " ".join(strings(step(step_id).get("args", [])))


@functools.cache
def prerequisites() -> dict[str, set[str]]:
    """Step id -> every step it (transitively) waits for; no waitFor means all earlier steps."""
    before: dict[str, set[str]] = {}
    for index, current in enumerate(steps()):
        waits = current.get("waitFor")
        if waits is None:
            direct = {s["id"] for s in steps()[:index]}
        else:
            direct = {w for w in waits if w != "-"}
        closure = set(direct)
        for dependency in direct:
            closure |= before[dependency]
        before[current["id"]] = closure
    return before


def runs_before(first: str, then: str) -> bool:
    """True when `then` cannot start before `first` has finished."""
    return first in prerequisites()[then]


def test_every_step_has_a_unique_id() -> None:
    """Each step is named, once."""
    ids = [s.get("id") for s in steps()]
    assert all(isinstance(i, str) and i for i in ids), "every step needs an id"
    assert len(ids) == len(set(ids))


def test_wait_for_names_only_earlier_steps() -> None:
    """waitFor lists "-" or ids of steps defined above."""
    seen: set[str] = set()
    for current in steps():
        for wait in current.get("waitFor", []):
            assert wait == "-" or wait in seen, f"{current['id']} waits for unknown {wait!r}"
        seen.add(current["id"])


def test_substitutions_are_declared_and_user_defined_ones_start_with_underscore() -> None:
    """Every ${X} is a built-in or a declared _X."""
    declared = build().get("substitutions", {})
    for name in declared:
        assert re.fullmatch(r"_[A-Z0-9_]+", name), f"user substitution {name} must be _UPPER"
    secret_envs = {s["env"] for s in build()["availableSecrets"]["secretManager"]}
    used: set[str] = set()
    for text in strings(build()):
        for match in SUBSTITUTION.finditer(text):
            name = match.group(1) or match.group(2)
            if name:
                used.add(name)
        assert "$" not in SUBSTITUTION.sub("", text), f"a bare $ in {text!r}: write $$"
    unknown = used - set(declared) - BUILT_INS
    assert not unknown, f"undeclared substitutions {unknown} (write $$ for a shell $)"
    assert not used & secret_envs, "secrets are shell variables: write $$NAME, not ${NAME}"
    assert set(declared) <= used, f"unused substitutions {set(declared) - used}"


def test_substitutions_are_documented_at_the_top() -> None:
    """The header comment explains each substitution."""
    header = (ROOT / "cloudbuild.yaml").read_text().split("\nsubstitutions:")[0]
    for name in build()["substitutions"]:
        assert re.search(rf"^#\s+{name}\s+\S", header, re.MULTILINE), f"{name} is not documented"


def test_secret_env_names_are_available_secrets() -> None:
    """secretEnv names come from availableSecrets; each available secret is used."""
    available = build()["availableSecrets"]["secretManager"]
    names = {entry["env"] for entry in available}
    for entry in available:
        assert re.fullmatch(
            r"projects/\$\{PROJECT_ID\}/secrets/[^/]+/versions/(latest|\d+)", entry["versionName"]
        )
    used = {name for s in steps() for name in s.get("secretEnv", [])}
    assert used <= names, f"secretEnv names {used - names} are not in availableSecrets"
    assert names <= used, f"available secrets {names - used} are never used"
    assert {s["id"] for s in steps() if s.get("secretEnv")} == {"migrate"}


def test_steps_run_in_the_safe_order() -> None:
    """Checks before migrations, migrations before apply, the smoke test last."""
    for check in ("ruff", "mypy", "tests"):
        assert runs_before("install", check)
        assert runs_before(check, "migrate")
        assert runs_before(check, "terraform-apply")
    chain = ["terraform-fmt", "terraform-init", "terraform-validate", "terraform-plan"]
    for first, then in itertools.pairwise(chain):
        assert runs_before(first, then)
    assert runs_before("terraform-plan", "migrate")
    assert runs_before("migrate", "terraform-apply")
    assert runs_before("terraform-apply", "smoke-test")
    assert steps()[-1]["id"] == "smoke-test"
    others = {s["id"] for s in steps()} - {"smoke-test"}
    assert prerequisites()["smoke-test"] == others


def test_images() -> None:
    """Terraform steps use the pinned hashicorp/terraform image, the rest python:3.11."""
    for current in steps():
        if current["id"].startswith("terraform-") or current["id"] == "api-url":
            assert TERRAFORM_IMAGE.match(current["name"]), current["id"]
            assert current.get("dir") == "infra", current["id"]
        elif current["id"] == "cpu-boost":
            assert current["name"] == GCLOUD_IMAGE
        else:
            assert current["name"] == PYTHON_IMAGE, current["id"]


def test_install_and_checks() -> None:
    """The install uses the project's requirement files; lint, types and tests run."""
    install = script("install")
    for requirement in re.findall(r"-r (\S+)", install):
        assert (ROOT / requirement).is_file(), f"install names missing {requirement}"
    assert "-r requirements-dev.txt" in install
    assert "-e ." in install
    assert "ruff check ." in script("ruff") and "ruff format --check ." in script("ruff")
    assert script("mypy").endswith(".venv/bin/mypy")
    assert "pytest" in script("tests")
    env = step("tests").get("env", [])
    assert not any(e.startswith("CI=") for e in env), "CI=... demands the PgBouncer variant"
    assert any(e.startswith("CHECKOV=") for e in env), "checkov must run, not be skipped"


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_terraform_steps_use_the_environment_files(env: str) -> None:
    """init/plan name files that exist for every environment; apply applies the saved plan."""
    assert (INFRA / "envs" / f"{env}.backend.hcl").is_file()
    assert (INFRA / "envs" / f"{env}.tfvars").is_file()
    assert (INFRA / "envs" / f"{build()['substitutions']['_ENV']}.tfvars").is_file()
    assert step("terraform-fmt")["args"][:2] == ["fmt", "-check"]
    init = step("terraform-init")["args"]
    assert init[0] == "init"
    assert "-backend-config=envs/${_ENV}.backend.hcl" in init
    assert "-backend-config=bucket=${_STATE_BUCKET}" in init
    # Providers exactly as the committed infra/.terraform.lock.hcl pins them.
    assert "-lockfile=readonly" in init
    assert step("terraform-validate")["args"] == ["validate"]
    plan = step("terraform-plan")["args"]
    assert plan[0] == "plan"
    assert "-var-file=envs/${_ENV}.tfvars" in plan
    assert "-out=tfplan" in plan
    assert step("terraform-apply")["args"] == ["apply", "-input=false", "tfplan"]


def test_plan_passes_only_declared_variables() -> None:
    """-var=NAME=... names variables declared in infra/variables.tf."""
    declared = set(re.findall(r'^variable "([^"]+)"', (INFRA / "variables.tf").read_text(), re.M))
    passed = {
        arg.split("=")[1] for arg in step("terraform-plan")["args"] if arg.startswith("-var=")
    }
    assert passed == {"project_id", "region"}
    assert passed <= declared


def test_migrations_and_smoke_test() -> None:
    """alembic gets DATABASE_URL from Secret Manager; the smoke test fails on a bad /healthz."""
    migrate = step("migrate")
    assert "alembic upgrade head" in script("migrate")
    assert migrate["secretEnv"] == ["DATABASE_URL"]
    assert "GENJOBS_ENV=cloud" in migrate.get("env", [])
    assert "terraform output -raw api_url" in script("api-url")
    assert re.search(r'^output "api_url"', (INFRA / "outputs.tf").read_text(), re.M)
    smoke = script("smoke-test")
    assert "curl -fsS" in smoke
    assert "/healthz" in smoke


def test_startup_cpu_boost_is_turned_on_for_every_function_after_apply() -> None:
    """google_cloudfunctions2_function cannot set it: gcloud sets it on each service."""
    assert runs_before("terraform-apply", "terraform-services")
    assert runs_before("terraform-services", "cpu-boost")
    assert runs_before("cpu-boost", "smoke-test")
    services = script("terraform-services")
    assert "terraform output -raw cloud_run_services > /workspace/cloud_run_services" in services
    boost = script("cpu-boost")
    assert "for service in $$(cat /workspace/cloud_run_services)" in boost
    assert re.search(r'gcloud run services update "\$\$service" --cpu-boost', boost)
    assert "--region=${_REGION}" in boost and "--project=${PROJECT_ID}" in boost
    # The output names every function's service (the resource's for_each, all four).
    outputs = (INFRA / "outputs.tf").read_text()
    assert re.search(
        r'output "cloud_run_services" \{[^}]*for function in '
        r"google_cloudfunctions2_function\.this : function\.name",
        outputs,
    )
    assert "startup_cpu_boost" not in (INFRA / "functions.tf").read_text()
