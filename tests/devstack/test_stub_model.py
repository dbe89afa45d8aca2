"""The stub model through the real openai SDK and plain HTTP."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from devstack.stub_model import StubModelServer, count_tokens, schema_instance

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server() -> Iterator[StubModelServer]:
    with StubModelServer(port=0, hang_seconds=30) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _clean(server: StubModelServer) -> None:
    server.reset()


@pytest.fixture
def client(server: StubModelServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.url, api_key="stub", max_retries=0, timeout=10) as c:
        yield c


def ask(client: OpenAI, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}], **kwargs
    )


# ---------------------------------------------------------------- answers


def test_answer_with_usage(client: OpenAI, server: StubModelServer) -> None:
    resp = client.chat.completions.create(
        model="gpt-4.1-mini",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Summarise the plot of Hamlet."},
        ],
        max_completion_tokens=200,
    )
    assert resp.object == "chat.completion"
    assert resp.model == "gpt-4.1-mini"
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content is not None
    assert choice.message.content.startswith("Stub answer: Summarise the plot of Hamlet.")
    usage = resp.usage
    assert usage is not None
    assert usage.prompt_tokens == count_tokens("You are terse.\nSummarise the plot of Hamlet.")
    assert usage.completion_tokens == count_tokens(choice.message.content)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    [call] = server.calls()
    assert call["prompt"] == "You are terse.\nSummarise the plot of Hamlet."
    assert call["model"] == "gpt-4.1-mini"
    assert call["status"] == 200
    assert abs(call["at"] - time.time()) < 10


def test_deterministic(client: OpenAI) -> None:
    first, second = ask(client, "same question"), ask(client, "same question")
    other = ask(client, "another question")
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage == second.usage
    assert other.choices[0].message.content != first.choices[0].message.content


def test_content_parts_are_read(client: OpenAI, server: StubModelServer) -> None:
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": [{"type": "text", "text": "parts stub:500"}]}],
        )
    assert server.calls()[0]["prompt"] == "parts stub:500"


def test_streaming_with_usage(client: OpenAI) -> None:
    expected = ask(client, "stream this answer please, in several chunks")
    chunks = list(
        ask(
            client,
            "stream this answer please, in several chunks",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    *body, last = chunks
    assert last.choices == []
    assert last.usage == expected.usage
    assert all(c.usage is None for c in body)


def test_streaming_without_usage(client: OpenAI) -> None:
    chunks = list(ask(client, "no usage", stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_completion_tokens_truncates(client: OpenAI) -> None:
    resp = ask(client, "a long enough question to exceed the limit", max_completion_tokens=3)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 3
    assert resp.choices[0].message.content == "Stub answer:"
    legacy = ask(client, "a long enough question to exceed the limit", max_tokens=4)
    assert legacy.usage.completion_tokens == 4
    chunks = list(
        ask(
            client,
            "stream cut",
            max_completion_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 2


def test_tokens_directive(client: OpenAI) -> None:
    resp = ask(client, "stub:tokens=50 go")
    assert resp.usage.completion_tokens == 50
    assert count_tokens(resp.choices[0].message.content) == 50
    assert resp.choices[0].finish_reason == "stop"
    capped = ask(client, "stub:tokens=50 go", max_completion_tokens=10)
    assert capped.usage.completion_tokens == 10
    assert capped.choices[0].finish_reason == "length"


# ---------------------------------------------------------------- streaming (a real process)


@pytest.fixture(scope="module")
def stub_process() -> Iterator[str]:
    """The stub model as its own process (python -m devstack.stub_model); yields its /v1 URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.stub_model", "--quiet", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("stub model ready:")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def streaming(stub_process: str) -> Iterator[OpenAI]:
    httpx.post(stub_process.removesuffix("/v1") + "/_stub/reset")
    with OpenAI(base_url=stub_process, api_key="stub", max_retries=0, timeout=10) as c:
        yield c


def stream(client: OpenAI, text: str, **kwargs: Any) -> Any:
    return ask(client, text, stream=True, stream_options={"include_usage": True}, **kwargs)


def stub_calls(client: OpenAI, contains: str) -> list[dict[str, Any]]:
    root = str(client.base_url).rstrip("/").removesuffix("/v1")
    calls: list[dict[str, Any]] = httpx.get(
        f"{root}/_stub/calls", params={"contains": contains}
    ).json()
    return calls


def test_stream_wire_format_is_the_apis(stub_process: str) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "wire stub:tokens=3"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    auth = {"Authorization": "Bearer k"}
    url = f"{stub_process}/chat/completions"
    with httpx.stream("POST", url, json=body, headers=auth) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    keys = ["id", "object", "created", "model", "service_tier", "system_fingerprint", "choices"]
    assert all(list(c)[:7] == keys and list(c)[7:] == ["usage", "obfuscation"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    tokens = [c["choices"][0]["delta"]["content"] for c in chunks[1:4]]
    assert tokens == ["Stub", " answer", ":"]  # one token per chunk, leading space kept
    assert chunks[4]["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert chunks[5]["choices"] == [] and chunks[5]["usage"]["completion_tokens"] == 3
    assert all(c["usage"] is None for c in chunks[:5])
    assert all(isinstance(c["obfuscation"], str) and c["obfuscation"] for c in chunks)
    body["stream_options"] = {"include_obfuscation": False}
    plain = httpx.post(url, json=body, headers=auth).text.split("\n\n")[:-2]
    assert all(set(json.loads(e[6:])) == set(keys) for e in plain)  # no usage, no obfuscation


def test_stream_pace_and_usage(streaming: OpenAI) -> None:
    arrivals: list[float] = []
    chunks = []
    for chunk in stream(streaming, "paced stub:tokens=20 stub:pace=50"):
        arrivals.append(time.monotonic())
        chunks.append(chunk)
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 20
    assert count_tokens("".join(c.choices[0].delta.content for c in content)) == 20
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    spread = arrivals[-1] - arrivals[0]
    assert spread >= 0.9, spread  # 20 tokens at 50 ms each, not one burst
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals[1:21]))  # token to token
    assert gaps[len(gaps) // 2] >= 0.04, gaps  # the median gap is the pace


def test_stream_cut_is_a_broken_stream_then_transient(streaming: OpenAI) -> None:
    prompt = "cut me stub:tokens=30 stub:pace=5 stub:cut=7"
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError) as info:
        for chunk in stream(streaming, prompt):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert isinstance(info.value.__cause__, Exception)
    assert "incomplete chunked read" in str(info.value.__cause__)
    assert len(received) == 7
    whole = list(stream(streaming, prompt))  # the retry of the same prompt streams whole
    assert whole[-1].usage.completion_tokens == 30
    text = "".join(c.choices[0].delta.content or "" for c in whole if c.choices)
    assert text.startswith("".join(received))
    calls = stub_calls(streaming, "cut me")
    assert [c["cut"] for c in calls] == [True, False]
    # Billed as a provider does: the prompt, and each token generated before the cut.
    prompt_tokens = whole[-1].usage.prompt_tokens
    assert [c["billed_tokens"] for c in calls] == [prompt_tokens + 7, prompt_tokens + 30]


def test_stream_cut_past_the_end_still_breaks(streaming: OpenAI) -> None:
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream(streaming, "short stub:tokens=4 stub:cut=99"):
            received.append(chunk)
    assert len([c for c in received if c.choices and c.choices[0].delta.content]) == 4
    assert all(c.choices and c.choices[0].finish_reason is None for c in received)


def test_cut_several_calls_and_not_streamed(streaming: OpenAI) -> None:
    prompt = "twice stub:cut=0x2"
    for _ in range(2):
        with pytest.raises(openai.APIConnectionError):
            ask(streaming, prompt)  # a non-streamed answer is lost whole
    assert ask(streaming, prompt).choices[0].finish_reason == "stop"
    assert [c["cut"] for c in stub_calls(streaming, "twice")] == [True, True, False]


def test_errors_before_a_stream_are_http_errors(streaming: OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        stream(streaming, "stub:429 stub:pace=10")
    assert info.value.response.headers["retry-after"] == "1"
    assert [c["billed_tokens"] for c in stub_calls(streaming, "stub:429 stub:pace=10")] == [0]
    with pytest.raises(openai.InternalServerError):
        stream(streaming, "once stub:fail=500x1 stub:cut=2")
    with pytest.raises(openai.APIConnectionError):  # stub:cut counts answers, not failures
        list(stream(streaming, "once stub:fail=500x1 stub:cut=2"))
    assert list(stream(streaming, "once stub:fail=500x1 stub:cut=2"))[-1].usage is not None
    with pytest.raises(openai.InternalServerError):
        stream(streaming, "stub:500 stub:pace=10")
    with pytest.raises(openai.APITimeoutError):
        stream(streaming.with_options(timeout=0.3), "stub:hang stub:pace=10")
    started = time.monotonic()
    first = next(iter(stream(streaming, "late stub:sleep=0.3")))
    assert time.monotonic() - started >= 0.3
    assert first.choices[0].delta.role == "assistant"


def test_client_closing_a_stream_stops_the_answer(streaming: OpenAI) -> None:
    chunks = stream(streaming, "long stub:tokens=500 stub:pace=20")
    assert len(list(itertools.islice(chunks, 3))) == 3
    chunks.close()  # what the worker does when a cancel arrives
    deadline = time.monotonic() + 3
    while stub_calls(streaming, "long")[0]["status"] != 499 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stub_calls(streaming, "long")[0]["status"] == 499  # stopped long before 10 s


# ---------------------------------------------------------------- structured output

SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 3, "maxLength": 20},
            "score": {"type": "integer", "minimum": 5, "maximum": 9},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "ok": {"type": "boolean"},
            "kind": {"enum": ["alpha", "beta"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "when": {"type": "string", "format": "date-time"},
            "email": {"type": "string", "format": "email"},
            "code": {"type": "string", "pattern": "^[0-9]+$"},
            "nested": {
                "type": "object",
                "properties": {"x": {"type": ["null", "integer"], "multipleOf": 7, "minimum": 1}},
                "required": ["x"],
                "additionalProperties": False,
            },
            "optional": {"type": "string"},
        },
        "required": [
            "title",
            "score",
            "ratio",
            "ok",
            "kind",
            "tags",
            "when",
            "email",
            "code",
            "nested",
        ],
        "additionalProperties": False,
    },
    {
        "$defs": {
            "item": {
                "type": "object",
                "properties": {"id": {"type": "integer"}},
                "required": ["id"],
            },
            "alias": {"$ref": "#/$defs/item"},
        },
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {"$ref": "#/$defs/alias"},
                "minItems": 3,
                "uniqueItems": True,
            },
            "choice": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/item"}]},
            "both": {
                "allOf": [
                    {"$ref": "#/$defs/item"},
                    {"properties": {"n": {"const": 4}}, "required": ["n"]},
                ]
            },
            "pair": {
                "type": "array",
                "prefixItems": [{"type": "string"}, {"type": "number"}],
                "minItems": 2,
            },
        },
        "required": ["items", "choice", "both", "pair"],
    },
    {"type": "array", "items": {"type": "integer"}, "minItems": 1},
    {"type": "string", "enum": ["only"]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_schema_instance_is_valid(schema: dict[str, Any]) -> None:
    instance = schema_instance(schema, "text")
    jsonschema_rs.validate(schema, instance, validate_formats=True)


@pytest.mark.parametrize("schema", SCHEMAS[:2])
def test_json_schema_response_validates(client: OpenAI, schema: dict[str, Any]) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}
    resp = ask(client, "give me json", response_format=fmt)
    assert resp.choices[0].finish_reason == "stop"
    jsonschema_rs.validate(
        schema, json.loads(resp.choices[0].message.content), validate_formats=True
    )


class Child(BaseModel):
    flag: bool
    size: int


class Report(BaseModel):
    title: str
    children: list[Child]
    best: Child | None
    score: float


def test_sdk_parse_with_pydantic(client: OpenAI) -> None:
    resp = client.chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "report please"}],
        response_format=Report,
    )
    parsed = resp.choices[0].message.parsed
    assert isinstance(parsed, Report)
    assert parsed.title.startswith("Stub answer: report please")
    assert isinstance(parsed.best, Child)


def test_json_object(client: OpenAI) -> None:
    resp = ask(client, "json object", response_format={"type": "json_object"})
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


# ---------------------------------------------------------------- directives


def test_rate_limit(client: OpenAI, server: StubModelServer) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        ask(client, "please stub:429 now")
    exc = info.value
    assert exc.status_code == 429
    assert exc.code == "rate_limit_exceeded"
    assert exc.response.headers["retry-after"] == "1"
    assert exc.response.headers["x-ratelimit-reset-requests"] == "1s"
    assert server.calls()[0]["status"] == 429


def test_server_error(client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        ask(client, "stub:500")
    assert info.value.status_code == 500
    assert info.value.type == "server_error"


def test_refuse(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "stub:refuse", stream=True)
    assert info.value.code == "content_policy_violation"
    assert info.value.type == "invalid_request_error"


def test_hang_times_out_and_is_released(client: OpenAI, server: StubModelServer) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "stub:hang"}]
        )
    assert time.monotonic() - started < 2
    deadline = time.monotonic() + 2
    while server.calls()[0]["status"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.calls()[0]["status"] == 499  # the handler noticed the client left


def test_sleep(client: OpenAI) -> None:
    started = time.monotonic()
    resp = ask(client, "stub:sleep=0.3 then answer")
    assert time.monotonic() - started >= 0.3
    assert resp.choices[0].message.content.startswith("Stub answer:")


def test_fail_then_succeed(client: OpenAI, server: StubModelServer) -> None:
    prompt = "job 1 stub:fail=500x2"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            ask(client, prompt)
    assert ask(client, prompt).choices[0].finish_reason == "stop"
    assert ask(client, prompt).choices[0].finish_reason == "stop"
    with pytest.raises(openai.InternalServerError):  # counters are per exact prompt
        ask(client, "job 2 stub:fail=500x2")
    assert [c["status"] for c in server.calls(contains="job 1")] == [500, 500, 200, 200]
    server.reset()
    with pytest.raises(openai.InternalServerError):
        ask(client, prompt)


def test_fail_429(client: OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        ask(client, "stub:fail=429x1")
    assert info.value.response.headers["retry-after"] == "1"
    assert ask(client, "stub:fail=429x1").choices[0].finish_reason == "stop"


def test_sdk_retries_through_failures(server: StubModelServer) -> None:
    with OpenAI(base_url=server.url, api_key="stub", max_retries=2) as retrying:
        resp = ask(retrying, "retry me stub:fail=503x2")
    assert resp.choices[0].finish_reason == "stop"
    assert [c["status"] for c in server.calls()] == [503, 503, 200]


def test_concurrent_slow_requests(client: OpenAI) -> None:
    def one(i: int) -> str:
        return str(ask(client, f"parallel {i} stub:sleep=1").choices[0].message.content)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(one, range(100)))
    elapsed = time.monotonic() - started
    assert len(set(answers)) == 100
    assert elapsed < 2.5, elapsed


# ---------------------------------------------------------------- HTTP surface


def test_auth_required(server: StubModelServer) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
        resp = httpx.post(f"{server.url}/chat/completions", json=body, headers=headers)
        assert resp.status_code == 401
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=server.url, api_key="stub", max_retries=0).models.list(
            extra_headers={"Authorization": ""}
        )
    assert server.calls() == []


def test_bad_requests(server: StubModelServer) -> None:
    auth = {"Authorization": "Bearer x"}
    url = f"{server.url}/chat/completions"
    bad = httpx.post(url, content=b"{nope", headers=auth)
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    no_model = httpx.post(url, json={"messages": [{"role": "user", "content": "x"}]}, headers=auth)
    assert no_model.status_code == 400
    assert no_model.json()["error"]["param"] == "model"
    no_name = httpx.post(
        url,
        json={
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"schema": {}}},
        },
        headers=auth,
    )
    assert no_name.status_code == 400
    assert httpx.get(f"{server.url}/nope", headers=auth).status_code == 404


def test_models_health_and_admin(client: OpenAI, server: StubModelServer) -> None:
    assert "gpt-4o-mini" in [m.id for m in client.models.list()]
    assert client.models.retrieve("any-model").id == "any-model"
    assert httpx.get(f"{server.root_url}/healthz").json() == {"status": "ok"}
    ask(client, "alpha one")
    ask(client, "beta two")
    every = httpx.get(f"{server.root_url}/_stub/calls").json()
    assert [c["prompt"] for c in every] == ["alpha one", "beta two"]
    assert set(every[0]) >= {"prompt", "model", "status", "at"}
    some = httpx.get(f"{server.root_url}/_stub/calls", params={"contains": "beta"}).json()
    assert [c["prompt"] for c in some] == ["beta two"]
    assert httpx.post(f"{server.root_url}/_stub/reset").status_code == 200
    assert httpx.get(f"{server.root_url}/_stub/calls").json() == []


def test_stop_is_not_blocked_by_hanging_requests() -> None:
    srv = StubModelServer(port=0).start()
    errors: list[BaseException] = []

    def hang() -> None:
        with OpenAI(base_url=srv.url, api_key="stub", max_retries=0, timeout=30) as c:
            try:
                ask(c, "stub:hang")
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=hang) for _ in range(3)]
    for t in threads:
        t.start()
    while len(srv.calls()) < 3:
        time.sleep(0.02)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2
    for t in threads:
        t.join(timeout=5)
    assert len(errors) == 3
    assert all(isinstance(e, openai.APIConnectionError) for e in errors)


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_stops_on_signal(sig: signal.Signals) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "STUB_MODEL_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.stub_model", "--quiet"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.strip() == f"stub model ready: http://127.0.0.1:{port}/v1"
        with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0) as c:
            assert ask(c, "cli").choices[0].finish_reason == "stop"
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
