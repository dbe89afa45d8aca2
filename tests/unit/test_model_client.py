"""The model client against real HTTP: the stub model, and a scripted server for odd answers."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from devstack.stub_model import StubModelServer
from genjobs.errors import InvalidModelOutput, ModelRefused, ModelUnavailable
from genjobs.model_client import (
    DEFAULT_RETRY_AFTER_SECONDS,
    ModelClient,
    retry_after_seconds,
)
from genjobs.secrets import Secret
from genjobs.tasks import TASKS

KEY = "sk-test-never-show-me-0123456789"
SUMMARIZE = TASKS["summarize"]
ENTITIES = TASKS["extract_entities"]


@pytest.fixture(scope="module")
def stub() -> Iterator[StubModelServer]:
    server = StubModelServer(hang_seconds=5).start()
    yield server
    server.stop()


@pytest.fixture
def client(stub: StubModelServer) -> ModelClient:
    return ModelClient(api_key=Secret(KEY), base_url=stub.url)


def ask(client: ModelClient, text: str, timeout: float = 5.0, task: Any = SUMMARIZE) -> Any:
    return client.generate(task, task.messages_for({"text": text}), timeout=timeout)


def test_free_text_answer_with_usage(client: ModelClient, stub: StubModelServer) -> None:
    generation = ask(client, "the quick brown fox")
    assert isinstance(generation.output, str) and "quick brown fox" in generation.output
    assert generation.model == SUMMARIZE.model
    assert generation.prompt_tokens > 0 and generation.completion_tokens > 0
    assert len(stub.calls("the quick brown fox")) == 1


def test_structured_answer_is_parsed_and_valid(client: ModelClient) -> None:
    generation = ask(client, "Ada Lovelace met Charles Babbage in London", task=ENTITIES)
    assert isinstance(generation.output, dict) and isinstance(generation.output["entities"], list)


def test_rate_limit_is_transient_with_retry_after(
    client: ModelClient, stub: StubModelServer
) -> None:
    with pytest.raises(ModelUnavailable) as caught:
        ask(client, "limit me stub:429")
    assert caught.value.code == "rate_limited"
    assert caught.value.retry_after == 1.0
    assert len(stub.calls("limit me stub:429")) == 1  # the SDK's own retries are off


@pytest.mark.parametrize(
    ("directive", "code"),
    [("stub:500", "model_server_error"), ("stub:fail=503x1", "model_server_error")],
)
def test_server_errors_are_transient(
    client: ModelClient, stub: StubModelServer, directive: str, code: str
) -> None:
    text = f"server trouble {directive}"
    with pytest.raises(ModelUnavailable) as caught:
        ask(client, text)
    assert caught.value.code == code
    assert len(stub.calls(text)) == 1


def test_fail_n_times_then_succeeds(client: ModelClient) -> None:
    with pytest.raises(ModelUnavailable):
        ask(client, "flaky stub:fail=500x1")
    assert ask(client, "flaky stub:fail=500x1").output


def test_timeout_is_transient(client: ModelClient) -> None:
    with pytest.raises(ModelUnavailable) as caught:
        ask(client, "never answers stub:hang", timeout=0.3)
    assert caught.value.code == "model_timeout"


def test_connection_refused_is_transient() -> None:
    client = ModelClient(api_key=Secret(KEY), base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ModelUnavailable) as caught:
        ask(client, "nobody listens")
    assert caught.value.code == "model_connection_error"


def test_policy_refusal_is_permanent(client: ModelClient) -> None:
    with pytest.raises(ModelRefused) as caught:
        ask(client, "something bad stub:refuse")
    assert caught.value.code == "content_policy_violation"


def test_other_client_errors_are_refusals(client: ModelClient) -> None:
    with pytest.raises(ModelRefused) as caught:
        ask(client, "no such thing stub:fail=404x1")
    assert caught.value.code == "model_refused"


@pytest.mark.parametrize("status", [401, 403])
def test_credential_errors_are_transient_and_hide_the_key(client: ModelClient, status: int) -> None:
    with pytest.raises(ModelUnavailable) as caught:
        ask(client, f"bad key stub:fail={status}x1")
    assert caught.value.code == "model_auth_error"
    assert KEY not in str(caught.value) and KEY not in repr(client)


def test_local_mode_without_a_key_uses_a_placeholder(stub: StubModelServer) -> None:
    client = ModelClient(api_key=None, base_url=stub.url)
    assert ask(client, "keyless local run").output


# --- A scripted server: answers the stub never gives ------------------------------------


class Scripted(ThreadingHTTPServer):
    """Answers every POST with `status`, `body` and `headers`; records the requests."""

    status = 200
    body: Any = None
    headers: dict[str, str] = {}
    events: list[Any] = []  # a streamed request gets these as server-sent events, then [DONE]
    seen: list[tuple[dict[str, str], Any]]


class _Handler(BaseHTTPRequestHandler):
    server: Scripted

    def do_POST(self) -> None:
        sent = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        self.server.seen.append(({k.lower(): v for k, v in self.headers.items()}, sent))
        if sent.get("stream"):
            self._stream()
            return
        data = json.dumps(self.server.body).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in self.server.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self) -> None:
        data = b"".join(
            f"data: {json.dumps(event)}\n\n".encode() for event in [*self.server.events, "[DONE]"]
        ).replace(b'data: "[DONE]"', b"data: [DONE]")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def scripted() -> Iterator[Scripted]:
    server = Scripted(("127.0.0.1", 0), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def answer(
    scripted: Scripted,
    content: str | None,
    *,
    finish_reason: str = "stop",
    refusal: str | None = None,
    task: Any = ENTITIES,
) -> Any:
    scripted.status, scripted.headers = 200, {}
    scripted.body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16},
    }
    port = scripted.server_address[1]
    client = ModelClient(api_key=Secret(KEY), base_url=f"http://127.0.0.1:{port}/v1")
    return ask(client, "anything", task=task)


def test_schema_violation_is_invalid_output_with_billed_usage(scripted: Scripted) -> None:
    with pytest.raises(InvalidModelOutput) as caught:
        answer(scripted, json.dumps({"entities": [{"name": "Ada", "type": "robot"}]}))
    assert caught.value.code == "invalid_model_output"
    assert "output schema" in caught.value.detail
    assert (
        isinstance(caught.value, InvalidModelOutput)
        and caught.value.usage is not None
        and caught.value.usage.completion_tokens == 9
    )


def test_non_json_structured_answer_is_invalid_output(scripted: Scripted) -> None:
    with pytest.raises(InvalidModelOutput, match="not JSON"):
        answer(scripted, "Sure! Here are the entities: Ada")


def test_truncated_structured_answer_is_invalid_output(scripted: Scripted) -> None:
    with pytest.raises(InvalidModelOutput) as caught:
        answer(scripted, '{"entities": [', finish_reason="length")
    assert caught.value.code == "output_truncated"


def test_oversize_answer_is_invalid_output(scripted: Scripted) -> None:
    with pytest.raises(InvalidModelOutput) as caught:
        answer(scripted, "x" * (64 * 1024 + 1), task=SUMMARIZE)
    assert caught.value.code == "output_too_large"


def test_empty_answer_is_invalid_output(scripted: Scripted) -> None:
    with pytest.raises(InvalidModelOutput) as caught:
        answer(scripted, None, task=SUMMARIZE)
    assert caught.value.code == "empty_output"


def test_content_filter_finish_is_a_refusal(scripted: Scripted) -> None:
    with pytest.raises(ModelRefused) as caught:
        answer(scripted, "partial", finish_reason="content_filter", task=SUMMARIZE)
    assert caught.value.code == "content_policy_violation"
    assert (
        isinstance(caught.value, ModelRefused)
        and caught.value.usage is not None
        and caught.value.usage.prompt_tokens == 7
    )


def test_model_refusal_message_is_a_refusal(scripted: Scripted) -> None:
    with pytest.raises(ModelRefused, match="cannot help"):
        answer(scripted, None, refusal="I cannot help with that.")


def test_request_shape_and_no_sdk_retries(scripted: Scripted) -> None:
    scripted.seen.clear()
    answer(scripted, json.dumps({"entities": []}))
    assert len(scripted.seen) == 1
    headers, sent = scripted.seen[0]
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers.get("x-stainless-retry-count", "0") == "0"
    assert sent["model"] == ENTITIES.model
    assert sent["max_completion_tokens"] == ENTITIES.max_output_tokens
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": ENTITIES.name, "schema": ENTITIES.output_schema, "strict": True},
    }


def test_api_message_echoing_the_key_is_redacted(scripted: Scripted) -> None:
    scripted.status = 400
    scripted.body = {"error": {"message": f"bad request for key {KEY}", "code": None}}
    port = scripted.server_address[1]
    client = ModelClient(api_key=Secret(KEY), base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ModelRefused) as caught:
        ask(client, "anything")
    assert KEY not in str(caught.value) and "[redacted]" in caught.value.detail
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_insufficient_quota_is_its_own_transient_code(scripted: Scripted) -> None:
    scripted.status = 429
    scripted.body = {"error": {"message": "quota", "code": "insufficient_quota"}}
    scripted.headers = {}
    port = scripted.server_address[1]
    client = ModelClient(api_key=Secret(KEY), base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ModelUnavailable) as caught:
        ask(client, "anything")
    assert caught.value.code == "model_quota_exceeded"
    assert caught.value.retry_after == DEFAULT_RETRY_AFTER_SECONDS


# --- Retry-After parsing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "2500"}, 2.5),
        ({"retry-after-ms": "2500", "retry-after": "9"}, 2.5),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0"}, 1.0),
        ({"retry-after": "99999"}, 600.0),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "1m30s"}, 90.0),
        ({"x-ratelimit-reset-requests": "20ms"}, 1.0),
        ({"retry-after": "soon", "x-ratelimit-reset-requests": "3s"}, 3.0),
        ({"x-ratelimit-reset-requests": "3 fortnights"}, DEFAULT_RETRY_AFTER_SECONDS),
        ({}, DEFAULT_RETRY_AFTER_SECONDS),
    ],
)
def test_retry_after_headers(headers: dict[str, str], seconds: float) -> None:
    assert retry_after_seconds(headers) == pytest.approx(seconds)


def test_retry_after_http_date() -> None:
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 1.0


# --- Streamed chunks, read as the JSON they are -----------------------------------------


def chunk(delta: Any, *, finish_reason: str | None = None, usage: Any = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini-2024",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        "usage": usage,
    }


def stream(scripted: Scripted, events: list[Any]) -> tuple[Any, list[str]]:
    scripted.events = events
    port = scripted.server_address[1]
    client = ModelClient(api_key=Secret(KEY), base_url=f"http://127.0.0.1:{port}/v1")
    texts: list[str] = []
    messages = SUMMARIZE.messages_for({"text": "anything"})

    def on_text(text: str) -> bool:
        texts.append(text)
        return True

    return client.stream(SUMMARIZE, messages, timeout=5, on_text=on_text), texts


def test_a_stream_adds_up_its_text_and_takes_the_usage_of_its_last_chunk(
    scripted: Scripted,
) -> None:
    generation, texts = stream(
        scripted,
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hello"}),
            chunk({"content": " world"}, finish_reason="stop"),
            {**chunk({}), "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}},
        ],
    )
    assert texts == ["Hello", " world"]
    assert (generation.output, generation.model) == ("Hello world", "gpt-4o-mini-2024")
    assert (generation.prompt_tokens, generation.completion_tokens) == (7, 2)


def test_odd_chunks_add_no_text_and_a_stream_without_usage_is_estimated(
    scripted: Scripted,
) -> None:
    """Fields of the wrong type or shape are ignored, as absent ones are; nothing raises."""
    generation, texts = stream(
        scripted,
        [
            chunk({"content": 42}),
            chunk(["not", "a", "delta"]),
            {**chunk({}), "choices": "none"},
            {**chunk({}), "choices": [7]},
            [1, 2],
            chunk({"content": "ok"}),
            {**chunk({}), "choices": [], "usage": {"prompt_tokens": "7"}},
        ],
    )
    assert texts == ["ok"]
    assert generation.output == "ok"
    # Usage figures that are not counts are estimated, as if none had come: never unbilled.
    prompt = SUMMARIZE.messages_for({"text": "anything"})
    assert generation.prompt_tokens == sum(len(m["content"]) // 4 + 4 for m in prompt)
    assert generation.completion_tokens == 1


def test_a_streamed_refusal_is_a_refusal(scripted: Scripted) -> None:
    with pytest.raises(ModelRefused):
        stream(scripted, [chunk({"refusal": "I can't"}, finish_reason="stop")])


def test_a_stream_cut_mid_answer_is_transient_and_bills_what_came(client: ModelClient) -> None:
    texts: list[str] = []
    messages = SUMMARIZE.messages_for({"text": f"cut {uuid.uuid4()} stub:tokens=20 stub:cut=5"})
    with pytest.raises(ModelUnavailable) as caught:
        client.stream(SUMMARIZE, messages, timeout=5, on_text=lambda t: texts.append(t) or True)
    assert caught.value.code == "model_connection_error"
    assert len(texts) == 5
    assert caught.value.usage is not None and caught.value.usage.completion_tokens == 5
