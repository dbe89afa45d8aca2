"""schemathesis against the served /openapi.json of a real api: no 5xx, answers as documented."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation

from tests.security.conftest import SCHEMATHESIS, SecurityStack

MIN_REQUESTS = 1_000
# Of the requests that carry schemathesis's own (random) bearer token, this one in N keeps
# it, fuzzing the token parser; the others get a valid token for a new user.
KEEP_GENERATED_TOKEN_EVERY = 6
# (operation, mode) -> max examples. Negative mode breaks the document's own rules (types,
# enums, lengths, required fields and headers); parameterless routes have nothing to break.
# The document's own route is left out by schemathesis when it loads the document from it.
RUNS = {
    ("POST /v1/generations", GenerationMode.POSITIVE): 300,
    ("POST /v1/generations", GenerationMode.NEGATIVE): 300,
    ("GET /v1/generations", GenerationMode.POSITIVE): 150,
    ("GET /v1/generations", GenerationMode.NEGATIVE): 200,
    ("GET /v1/generations/{job_id}", GenerationMode.POSITIVE): 100,
    ("GET /v1/generations/{job_id}", GenerationMode.NEGATIVE): 75,
    ("POST /v1/generations/{job_id}/cancel", GenerationMode.POSITIVE): 100,
    ("POST /v1/generations/{job_id}/cancel", GenerationMode.NEGATIVE): 75,
    ("GET /v1/generations/{job_id}/events", GenerationMode.POSITIVE): 50,
    ("GET /v1/generations/{job_id}/events", GenerationMode.NEGATIVE): 50,
    ("GET /v1/tasks", GenerationMode.POSITIVE): 5,
    ("GET /healthz", GenerationMode.POSITIVE): 5,
}
CONFIG = {
    "checks": {
        # Every built-in check but one: the document states some limits only in prose
        # (metadata bytes, per-user rates, whitespace-only text), so a schema-valid
        # request may rightly get a 4xx.
        "positive_data_acceptance": {"enabled": False},
        # 413 (body or metadata over its limit) is a rejection too.
        "negative_data_rejection": {
            "expected-statuses": [400, 401, 403, 404, 405, 409, 413, 415, 422, 429]
        },
    },
    # Failure reports quote the request; a 100 KiB body must not flood the output.
    "output": {"truncation": {"enabled": True, "max-payload-size": 512, "max-lines": 10}},
}
_case_numbers = itertools.count()


@pytest.fixture(scope="module")
def served_schema(security_stack: SecurityStack) -> Any:
    """The document exactly as the running api serves it."""
    return schemathesis.openapi.from_url(
        f"{security_stack.api_url}/openapi.json", config=schemathesis.Config.from_dict(CONFIG)
    )


def test_every_served_operation_is_fuzzed(served_schema: Any) -> None:
    """A route added to the document without a run here fails, rather than go unfuzzed."""
    served = {result.ok().label for result in served_schema.get_all_operations()}
    assert served == {label for label, _ in RUNS}


@pytest.mark.parametrize(
    ("label", "mode"), list(RUNS), ids=[f"{label} {mode.value}" for label, mode in RUNS]
)
def test_generated_requests_get_documented_answers(
    served_schema: Any, security_stack: SecurityStack, label: str, mode: GenerationMode
) -> None:
    """No 5xx; status, content type, headers and body as the document says."""
    operation = served_schema.find_operation_by_label(label)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=RUNS[label, mode],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case[Any]) -> None:
        header_info = case.meta.components.get(ParameterLocation.HEADER) if case.meta else None
        headers_negated = header_info is not None and header_info.mode is GenerationMode.NEGATIVE
        headers = {}
        generated_token = "Authorization" in (case.headers or {})
        # A new user per request keeps per-user limits out of the way of coverage.
        if (
            generated_token
            and not headers_negated
            and next(_case_numbers) % KEEP_GENERATED_TOKEN_EVERY
        ):
            headers["Authorization"] = f"Bearer {security_stack.token()}"
        SCHEMATHESIS.operations[label] += 1
        response = case.call(base_url=security_stack.api_url, headers=headers)
        SCHEMATHESIS.statuses[response.status_code] += 1
        try:
            case.validate_response(
                response,
                headers=headers,
                transport_kwargs={"base_url": security_stack.api_url, "headers": headers},
            )
        except BaseException:
            SCHEMATHESIS.failures += 1
            raise

    run()


def test_at_least_a_thousand_requests_were_generated() -> None:
    """The runs above sent enough requests to mean something, and none failed."""
    assert SCHEMATHESIS.requests >= MIN_REQUESTS, SCHEMATHESIS
    assert SCHEMATHESIS.failures == 0, SCHEMATHESIS
    assert not any(status >= 500 for status in SCHEMATHESIS.statuses), SCHEMATHESIS
    assert SCHEMATHESIS.statuses[202] > 0, "schemathesis never made a valid submission"


def test_framework_404_is_problem_json(security_stack: SecurityStack) -> None:
    """A path the framework's router refuses still answers problem+json."""
    response = httpx.get(f"{security_stack.api_url}/v1/generations/a%0Ab", timeout=10)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"
