"""Parsing push envelopes: every malformed body is a PoisonMessage, and nothing else."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genjobs.errors import DatabaseUnavailable, Forbidden, PoisonMessage, Unauthenticated
from genjobs.push import PushAnswer, PushMessage, answer_push, parse_push

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
JOB_ID = uuid.UUID("5f1c2a9e-8b7d-4c3e-9a21-0d6f4b8e7c12")
TOKEN = "Bearer header.payload.signature-never-logged"


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return loaded


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def with_message(**changes: Any) -> bytes:
    envelope = fixture("push_envelope_job")
    envelope["message"].update(changes)
    return encode(envelope)


def test_google_style_envelope() -> None:
    message = parse_push((FIXTURES / "push_envelope_job.json").read_bytes())
    assert message == PushMessage(
        job_id=JOB_ID,
        message_id="2070443601311540",
        delivery_attempt=1,
        attributes={"task": "summarize"},
        subscription="projects/local-project/subscriptions/generation-jobs-worker",
        publish_time=datetime(2021, 2, 26, 19, 13, 55, 749000, tzinfo=UTC),
    )


def test_dead_letter_envelope_keeps_pubsub_attributes() -> None:
    message = parse_push((FIXTURES / "push_envelope_dead_letter.json").read_bytes())
    assert message.job_id == JOB_ID and message.delivery_attempt is None
    assert message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"


def test_snake_case_message_id_and_minimal_envelope() -> None:
    body = encode({"message": {"data": b64(str(JOB_ID)), "message_id": "m-1"}})
    message = parse_push(body)
    assert (message.message_id, message.subscription, message.attributes) == ("m-1", "", {})
    assert message.publish_time is None and message.delivery_attempt is None


def test_job_id_as_json_object_and_nanosecond_publish_time() -> None:
    body = with_message(
        data=b64(json.dumps({"job_id": str(JOB_ID)})), publishTime="2024-01-02T03:04:05.123456789Z"
    )
    message = parse_push(body)
    assert message.job_id == JOB_ID and message.publish_time is not None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("push_envelope_no_message", "message is missing"),
        ("push_envelope_not_a_job_id", "not a job id"),
    ],
)
def test_poison_fixtures(name: str, reason: str) -> None:
    with pytest.raises(PoisonMessage, match=reason):
        parse_push((FIXTURES / f"{name}.json").read_bytes())


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b'{"message": ', "not JSON"),
        (b"[1, 2]", "push body must be a JSON object"),
        (b'{"message": "hi"}', "message must be a JSON object, not a string"),
        (with_message(data=None), "message.data is missing"),
        (with_message(data=""), "message.data is missing"),
        (with_message(data=12), "base64 string, not a number"),
        (with_message(data="!!not base64!!"), "not base64"),
        (with_message(data=base64.b64encode(b"\xff\xfe").decode()), "not base64 of UTF-8"),
        (with_message(data=b64("42")), "not a job id"),
        (with_message(data=b64('{"job_id": 42}')), "no string job_id"),
        (with_message(data=b64('{"job_id": "nope"}')), "not a UUID"),
        (with_message(data=b64("{broken")), "neither a job id nor JSON"),
        (with_message(data=b64("x" * 2000)), "over 1024 bytes"),
        (with_message(messageId=None, message_id=None), "messageId must be a non-empty"),
        (with_message(messageId=7), "messageId must be a non-empty string, not a number"),
        (with_message(messageId="m\u0000"), "Postgres"),
        (with_message(messageId="x" * 300), "over 256"),
        (with_message(attributes=["a"]), "attributes must be a JSON object"),
        (with_message(attributes={"a": 1}), "must be a string"),
        (with_message(attributes={"a": "v" * 2000}), "over 1024 bytes"),
        (with_message(attributes={"k" * 300: "v"}), "name is over 256"),
        (with_message(attributes={str(i): "v" for i in range(101)}), "101 entries"),
        (with_message(publishTime="yesterday"), "not a timestamp"),
        (with_message(publishTime="2021-02-26T19:13:55"), "no time zone"),
        (with_message(publishTime=3), "publishTime must be a string"),
        (encode({**fixture("push_envelope_job"), "deliveryAttempt": "2"}), "deliveryAttempt"),
        (encode({**fixture("push_envelope_job"), "deliveryAttempt": True}), "deliveryAttempt"),
        (encode({**fixture("push_envelope_job"), "deliveryAttempt": 0}), "deliveryAttempt"),
        (encode({**fixture("push_envelope_job"), "subscription": ["s"]}), "subscription must"),
        (b"[" * 100_000, "100000 bytes, over 65536"),
        (b"[" * 60_000, "not JSON"),
    ],
)
def test_each_malformation_has_a_precise_reason(body: bytes, reason: str) -> None:
    with pytest.raises(PoisonMessage, match=reason):
        parse_push(body)


# --- Fuzzing: whatever arrives, the parser answers a message or PoisonMessage -------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
VALID = (FIXTURES / "push_envelope_job.json").read_bytes()
FIELDS = st.sampled_from(["data", "messageId", "message_id", "attributes", "publishTime"])


def parses_or_poison(body: bytes) -> None:
    try:
        message = parse_push(body)
    except PoisonMessage as error:
        assert error.detail
    else:
        assert isinstance(message.job_id, uuid.UUID) and message.message_id


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(body: bytes) -> None:
    parses_or_poison(body)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(VALID) - 1))
def test_fuzz_truncated_envelope(cut: int) -> None:
    compact = encode(json.loads(VALID))
    with pytest.raises(PoisonMessage):
        parse_push(compact[: cut % len(compact)])


@settings(max_examples=300, deadline=None)
@given(FIELDS, JSON_VALUES)
def test_fuzz_wrong_types_in_message_fields(field: str, value: Any) -> None:
    parses_or_poison(with_message(**{field: value}))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["message", "deliveryAttempt", "subscription"]), JSON_VALUES)
def test_fuzz_wrong_types_in_envelope_fields(field: str, value: Any) -> None:
    parses_or_poison(encode({**json.loads(VALID), field: value}))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()))
def test_fuzz_data_field(data: str) -> None:
    parses_or_poison(with_message(data=data))


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=400), st.text(max_size=3000), min_size=1, max_size=120
    )
)
def test_fuzz_huge_attributes(attributes: dict[str, str]) -> None:
    parses_or_poison(with_message(attributes=attributes))


@settings(max_examples=200, deadline=None)
@given(st.sets(st.sampled_from(["data", "messageId", "message_id", "publishTime", "attributes"])))
def test_fuzz_missing_fields(missing: set[str]) -> None:
    envelope = json.loads(VALID)
    for name in missing:
        envelope["message"].pop(name)
    parses_or_poison(encode(envelope))


# --- answer_push: what Pub/Sub is told ---------------------------------------------------


class Verifier:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.seen: list[str | None] = []

    def verify(self, authorization_header: str | None) -> object:
        self.seen.append(authorization_header)
        if self.error is not None:
            raise self.error
        return object()


def ok(message: PushMessage) -> PushAnswer:
    return PushAnswer(200, {"job_id": str(message.job_id)})


LOG = logging.getLogger("test_push")


def test_valid_push_is_processed() -> None:
    answer = answer_push(Verifier(), TOKEN, VALID, ok, LOG)
    assert answer.acks and answer.body == {"job_id": str(JOB_ID)}


@pytest.mark.parametrize(
    ("error", "status"), [(Unauthenticated("no token"), 401), (Forbidden("not you"), 403)]
)
def test_token_refusals_nack_and_never_parse(error: Exception, status: int) -> None:
    def never(message: PushMessage) -> PushAnswer:
        raise AssertionError("processed an unauthenticated push")

    answer = answer_push(Verifier(error), TOKEN, VALID, never, LOG)
    assert answer.status == status and not answer.acks
    if status == 401:
        assert "WWW-Authenticate" in answer.headers


def test_poison_is_acked_and_logged_without_the_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answer = answer_push(Verifier(), TOKEN, b'{"message": {}}', ok, LOG)
    assert answer.status == 200 and answer.body["outcome"] == "poison_message"
    assert "message.data is missing" in caplog.text and '{"message": {}}' in caplog.text
    assert all(TOKEN not in str(vars(record)) for record in caplog.records)


def test_database_unavailable_nacks_with_retry_after() -> None:
    def down(message: PushMessage) -> PushAnswer:
        raise DatabaseUnavailable("down")

    answer = answer_push(Verifier(), TOKEN, VALID, down, LOG)
    assert answer.status == 503 and answer.headers["Retry-After"]


def test_unexpected_error_nacks_with_500_and_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def broken(message: PushMessage) -> PushAnswer:
        raise KeyError("bug")

    answer = answer_push(Verifier(), TOKEN, VALID, broken, LOG)
    assert answer.status == 500
    assert any(record.exc_info for record in caplog.records)
