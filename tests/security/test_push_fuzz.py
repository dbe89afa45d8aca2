"""Hypothesis against the running worker and dead_letter: whatever a caller pushes, no 5xx."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.conftest import NESTED_HYPOTHESIS, SecurityStack
from tests.security.test_service_auth import signed

MAX_PUSH_BODY_BYTES = 64 * 1024  # genjobs.push.MAX_BODY_BYTES
ACKED = {"poison_message", "unknown_job"}

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


def envelope(**message: Any) -> dict[str, Any]:
    """A push envelope as Pub/Sub sends it, for a job that does not exist."""
    base = {
        "data": base64.b64encode(str(uuid.uuid4()).encode()).decode(),
        "messageId": "2070443601311540",
        "publishTime": "2021-02-26T19:13:55.749Z",
        "attributes": {"task": "summarize"},
    }
    return {
        "message": {**base, **message},
        "subscription": "projects/local-project/subscriptions/generation-jobs-worker",
        "deliveryAttempt": 1,
    }


VALID = json.dumps(envelope()).encode()
BODIES = st.one_of(
    st.binary(max_size=300),  # anything at all
    st.integers(0, len(VALID) - 1).map(lambda cut: VALID[:cut]),  # truncated JSON
    st.text(alphabet="ABC!@#$%=-_ \n", max_size=60).map(  # bad base64
        lambda data: json.dumps(envelope(data=data)).encode()
    ),
    st.tuples(st.sampled_from(["data", "messageId", "publishTime", "attributes"]), JSON_VALUES).map(
        lambda pair: json.dumps(envelope(**{pair[0]: pair[1]})).encode()  # wrong types
    ),
    st.integers(1, 200).map(  # huge attributes, past Pub/Sub's limits and the body limit
        lambda n: json.dumps(envelope(attributes={f"k{i}": "v" * 700 for i in range(n)})).encode()
    ),
    st.sets(st.sampled_from(["message", "data", "messageId", "subscription"])).map(
        lambda drop: json.dumps(
            {
                k: v
                for k, v in envelope(**{f: None for f in drop - {"message"}}).items()
                if k not in drop
            }
        ).encode()  # missing fields
    ),
)


@pytest.fixture(scope="module")
def push_clients(security_stack: SecurityStack) -> Iterator[dict[str, httpx.Client]]:
    """One client per push endpoint, each with that endpoint's valid token."""
    clients = {
        name: httpx.Client(
            base_url=security_stack.function_url(name),
            headers={"Authorization": signed(security_stack, name)},
            timeout=30,
        )
        for name in ("worker", "dead_letter")
    }
    yield clients
    for client in clients.values():
        client.close()


@pytest.mark.parametrize("name", ["worker", "dead_letter"])
def test_any_push_body_is_acked_or_refused_never_a_server_error(
    push_clients: dict[str, httpx.Client], name: str
) -> None:
    """Truncated JSON, bad base64, wrong types, huge attributes, missing fields: a clean 2xx."""
    client = push_clients[name]

    @given(body=BODIES)
    @settings(
        max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def push(body: bytes) -> None:
        NESTED_HYPOTHESIS[f"push envelopes over HTTP to the running {name}"] += 1
        response = client.post("", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 200, (body[:200], response.status_code, response.text)
        assert response.json()["outcome"] in ACKED
        if len(body) > MAX_PUSH_BODY_BYTES:
            assert "over 65536" in response.json()["detail"]

    push()
    alive = client.post("", content=VALID)  # the process survived all of it
    assert alive.status_code == 200 and alive.json()["outcome"] == "unknown_job"
