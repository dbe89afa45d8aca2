"""Figure 7: time to first token through the whole pipeline vs calling the model directly, and
the CPU of each streamed job against the direct call's."""

from __future__ import annotations

import http.client
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bench.load import Request, percentile
from bench.sizes import Size
from bench.sse import TERMINAL, SseStream
from bench.stack import Stack, cpu_delta, cpu_seconds
from genjobs.tasks import TASKS

PHASE = "first-token"
TASK = "summarize"
FIRST_TEXT = frozenset({"delta"})


def stream_prompt(size: Size) -> str:
    """The stub model's directives: `stream_tokens` tokens, `stream_pace_ms` apart."""
    return f"stub:tokens={size.stream_tokens} stub:pace={size.stream_pace_ms:g}"


@dataclass
class FirstToken:
    """Seconds to the first text of each streamed job and of each direct model call."""

    pipeline: list[float] = field(default_factory=list)
    direct: list[float] = field(default_factory=list)
    cpu_pipeline: dict[str, float] = field(default_factory=dict)  # group -> CPU s, all jobs
    cpu_direct: dict[str, float] = field(default_factory=dict)
    succeeded: int = 0

    def ms(self, side: str, fraction: float) -> float:
        """A percentile of one side's samples, in ms."""
        samples = getattr(self, side)
        if not samples:
            return 0.0
        if fraction == 0.5:
            return float(statistics.median(samples)) * 1000
        return percentile(samples, fraction) * 1000

    def cpu_ms_per_job(self, side: str) -> dict[str, float]:
        """CPU per job of every process, by group."""
        cpu: dict[str, float] = getattr(self, f"cpu_{side}")
        jobs = len(getattr(self, side)) or 1
        return {name: round(s * 1000 / jobs, 2) for name, s in cpu.items() if s > 0}


def submit(port: int, request: Request) -> str:
    """POST the request on a new connection; the new job's id."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(request.method, request.path, request.body, dict(request.headers))
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status not in request.expect:
        raise RuntimeError(f"submit: {response.status} {body[:300]!r}")
    return str(json.loads(body)["id"])


def token_of(request: Request) -> str:
    """The bearer token a request carries."""
    value = dict(request.headers)["Authorization"]
    return value.removeprefix("Bearer ")


def pipeline_job(stack: Stack, index: int, prompt: str) -> tuple[float, bool]:
    """Submit, follow its events; seconds from submit to the first `delta`, and success."""
    request = stack.submit_request(index, PHASE, prompt)
    started = time.monotonic()
    job_id = submit(stack.ports.api, request)
    stream = SseStream(stack.ports.api, job_id, token_of(request))
    try:
        first = stream.until(FIRST_TEXT)
        end = stream.until(TERMINAL)
    finally:
        stream.close()
    if first is None:
        raise RuntimeError(f"job {job_id} streamed no text")
    return first.at - started, end is not None and end.name == "succeeded"


def direct_call(client: Any, prompt: str) -> float:
    """The summarize task's call, streamed by the openai client: seconds to its first text."""
    task = TASKS[TASK]
    started = time.monotonic()
    first: float | None = None
    stream = client.chat.completions.create(
        model=task.model,
        messages=task.messages_for({"text": prompt}),
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:  # read to the end, as the worker does
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.monotonic() - started
    if first is None:
        raise RuntimeError("the model streamed no text")
    return first


def measure(stack: Stack, size: Size) -> FirstToken:
    """Alternate streamed jobs and direct calls; CPU of all processes taken around each."""
    from openai import OpenAI

    client = OpenAI(api_key="bench", base_url=f"http://127.0.0.1:{stack.ports.stub_model}/v1")
    prompt = stream_prompt(size)
    result = FirstToken()
    direct_call(client, prompt)  # the SDK's lazy imports and connection, out of the samples
    for index in range(size.stream_jobs):
        before = cpu_seconds(stack)
        seconds, ok = pipeline_job(stack, index, f"{prompt} {PHASE} {index}")
        _add(result.cpu_pipeline, cpu_delta(before, cpu_seconds(stack)))
        result.pipeline.append(seconds)
        result.succeeded += ok
        before = cpu_seconds(stack)
        result.direct.append(direct_call(client, f"{prompt} {PHASE} {index}"))
        _add(result.cpu_direct, cpu_delta(before, cpu_seconds(stack)))
    client.close()
    return result


def _add(total: dict[str, float], more: dict[str, float]) -> None:
    for name, seconds in more.items():
        total[name] = total.get(name, 0.0) + seconds
