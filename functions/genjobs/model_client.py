"""The model API boundary: one chat completion per call, its errors mapped to ours."""

from __future__ import annotations

import email.utils
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from genjobs.errors import (
    ConfigurationError,
    InvalidModelOutput,
    ModelRefused,
    ModelUnavailable,
    PermanentFailure,
    StreamStopped,
)
from genjobs.jobs import Usage
from genjobs.secrets import Secret
from genjobs.settings import Settings
from genjobs.tasks.base import Message, Task

if TYPE_CHECKING:
    import jsonschema_rs
    from openai import OpenAI
    from openai.types.chat import ChatCompletion

MAX_OUTPUT_BYTES = 64 * 1024
# How long a 429 may ask us to wait, at most: Pub/Sub's own maximum backoff.
MAX_RETRY_AFTER_SECONDS = 600.0
DEFAULT_RETRY_AFTER_SECONDS = 5.0
MAX_DETAIL_CHARS = 500
# The stub model (local mode without OPENAI_API_KEY) needs a non-empty bearer token.
LOCAL_PLACEHOLDER_KEY = "local-stub-key"

# Statuses the openai SDK itself treats as retryable; we leave the retrying to Pub/Sub.
_TRANSIENT_STATUSES = {408, 409, 429}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


@dataclass(frozen=True)
class ModelAnswer:
    """What the model returned: text for free-text tasks, the parsed JSON for structured ones."""

    output: Any
    model: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def usage(self) -> Usage:
        """The billed usage of this answer."""
        return Usage(self.model, self.prompt_tokens, self.completion_tokens)


class SupportsGenerate(Protocol):
    """What the worker needs from a model client."""

    def generate(self, task: Task, messages: Sequence[Message], *, timeout: float) -> ModelAnswer:
        """One model call for `task`, or a ModelUnavailable / ModelRefused / InvalidModelOutput."""
        ...

    def stream(
        self,
        task: Task,
        messages: Sequence[Message],
        *,
        timeout: float,
        on_text: Callable[[str], bool],
        reads: StreamReads | None = None,
    ) -> ModelAnswer:
        """`generate`, handing text to `on_text` as it comes; its False raises StreamStopped.

        `reads`, if given, follows the stream's network reads.
        """
        ...


class ModelClient:
    """The real openai SDK, built lazily once per instance, with the SDK's retries off."""

    def __init__(
        self,
        *,
        api_key: Secret | None,
        base_url: str | None = None,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
    ) -> None:
        if api_key is None and base_url is None:
            raise ConfigurationError("OPENAI_API_KEY is required unless OPENAI_BASE_URL is set")
        self._api_key = api_key
        self._base_url = base_url
        self._max_output_bytes = max_output_bytes
        self._client: OpenAI | None = None
        self._validators: dict[str, jsonschema_rs.Validator] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelClient:
        """The client for OPENAI_API_KEY and OPENAI_BASE_URL."""
        return cls(api_key=settings.openai_api_key, base_url=settings.openai_base_url)

    def __repr__(self) -> str:
        return f"ModelClient(base_url={self._base_url!r})"

    def generate(self, task: Task, messages: Sequence[Message], *, timeout: float) -> ModelAnswer:
        """One chat completion for `task`, validated against its output contract."""
        completion = self._complete(task, messages, timeout)
        return self._read(task, completion)

    def _openai(self) -> OpenAI:
        with self._lock:
            if self._client is None:
                # Imported here: the SDK is heavy and only the worker pays for it, once.
                from openai import OpenAI

                key = self._api_key.reveal() if self._api_key else LOCAL_PLACEHOLDER_KEY
                self._client = OpenAI(api_key=key, base_url=self._base_url, max_retries=0)
            return self._client

    def _body(self, task: Task, messages: Sequence[Message]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": task.model,
            "messages": list(messages),
            "max_completion_tokens": task.max_output_tokens,
        }
        if task.output_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": task.name, "schema": task.output_schema, "strict": True},
            }
        return body

    def _complete(self, task: Task, messages: Sequence[Message], timeout: float) -> ChatCompletion:
        import openai
        from openai.types.chat import ChatCompletion

        client = self._openai()
        try:
            # The SDK's documented way to send a body as it is: `chat.completions.create` first
            # walks it against its TypedDicts (a quarter of the worker's CPU in a burst of
            # pushes) to rename and reformat fields these plain strings and numbers don't have.
            return client.post(
                "/chat/completions",
                body=self._body(task, messages),
                cast_to=ChatCompletion,
                options={"timeout": timeout, "security": {"bearer_auth": True}},
            )
        except openai.APIError as error:
            raise map_api_error(error, secret=self._api_key) from None

    def stream(
        self,
        task: Task,
        messages: Sequence[Message],
        *,
        timeout: float,
        on_text: Callable[[str], bool],
        reads: StreamReads | None = None,
    ) -> ModelAnswer:
        """One streamed chat completion; each piece of text goes to `on_text` as it arrives.

        `on_text` answering False stops the call: the stream is closed (the model stops
        generating, so spending stops) and StreamStopped carries what was billed so far.
        """
        import openai
        from openai import Stream
        from openai.types.chat import ChatCompletion

        body = {
            **self._body(task, messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        answer = _StreamedAnswer(task.model, _prompt_estimate(messages))
        deadline = time.monotonic() + timeout
        try:
            stream = self._openai().post(
                "/chat/completions",
                body=body,
                cast_to=ChatCompletion,
                stream=True,
                # Chunks as sent (JSON objects): the SDK's typed chunk costs about 0.1 ms of
                # CPU each to build, most of a stream's parse, and only four fields are read.
                stream_cls=Stream[object],
                options={"timeout": timeout, "security": {"bearer_auth": True}},
            )
            if reads is not None:
                reads.follow(stream.response)
            with stream:
                for chunk in stream:
                    text = answer.add(chunk)
                    if not _storable(text):
                        raise InvalidModelOutput(
                            "the answer has text Postgres cannot store (NUL or unpaired "
                            "surrogates)",
                            code="invalid_model_output",
                            usage=answer.usage(),
                        )
                    if answer.size > self._max_output_bytes:
                        # Refused as soon as it is too long: no more text is written or paid for.
                        raise InvalidModelOutput(
                            f"the answer is over {self._max_output_bytes} bytes",
                            code="output_too_large",
                            usage=answer.usage(),
                        )
                    if text and not on_text(text):
                        raise StreamStopped(answer.usage())
                    if time.monotonic() > deadline:
                        raise ModelUnavailable(
                            "the model call timed out",
                            code="model_timeout",
                            usage=answer.usage(),
                        )
        except openai.APIError as error:
            mapped = map_api_error(error, secret=self._api_key)
            if isinstance(mapped, ModelUnavailable | PermanentFailure):
                mapped.usage = answer.usage() if answer.chunks else None
            raise mapped from None
        return self._read(task, answer.completion())

    def _read(self, task: Task, completion: ChatCompletion) -> ModelAnswer:
        usage = _usage(completion, task)
        content, truncated = self._content(completion, usage)
        if task.output_schema is None:
            output: Any = content
        elif truncated:
            raise InvalidModelOutput(
                f"the answer hit max_output_tokens={task.max_output_tokens} before the JSON ended",
                code="output_truncated",
                usage=usage,
            )
        else:
            output = self._structured(task.name, task.output_schema, content, usage)
        if not _storable(output):
            # jsonb refuses NUL and unpaired surrogates: the result write would fail on every
            # delivery. Refused here, the job fails once with a clear code instead.
            raise InvalidModelOutput(
                "the answer has text Postgres cannot store (NUL or unpaired surrogates)",
                code="invalid_model_output",
                usage=usage,
            )
        return ModelAnswer(output, usage.model, usage.prompt_tokens, usage.completion_tokens)

    def _content(self, completion: ChatCompletion, usage: Usage) -> tuple[str, bool]:
        """The answer's text and whether it was cut at max_output_tokens."""
        if not completion.choices:
            raise InvalidModelOutput(
                "the model returned no choices", code="empty_output", usage=usage
            )
        choice = completion.choices[0]
        if choice.finish_reason == "content_filter":
            raise ModelRefused(
                "the model's answer was stopped by its content filter",
                code="content_policy_violation",
                usage=usage,
            )
        if choice.message.refusal:
            raise ModelRefused(
                f"the model refused: {_shorten(choice.message.refusal)}",
                code="model_refused",
                usage=usage,
            )
        content = choice.message.content or ""
        if len(content.encode()) > self._max_output_bytes:
            raise InvalidModelOutput(
                f"the answer is over {self._max_output_bytes} bytes",
                code="output_too_large",
                usage=usage,
            )
        if not content.strip():
            raise InvalidModelOutput("the model returned no text", code="empty_output", usage=usage)
        return content, choice.finish_reason == "length"

    def _structured(self, name: str, schema: dict[str, Any], content: str, usage: Usage) -> Any:
        """The answer parsed as JSON and checked against the task's output schema."""
        try:
            parsed = json.loads(content)
        except ValueError as error:
            raise InvalidModelOutput(
                f"the answer is not JSON: {error}", code="invalid_model_output", usage=usage
            ) from None
        errors = self._validator(name, schema).iter_errors(parsed)
        problems = [str(e.message) for _, e in zip(range(3), errors, strict=False)]
        if problems:
            raise InvalidModelOutput(
                "the answer does not match the output schema: " + _shorten("; ".join(problems)),
                code="invalid_model_output",
                usage=usage,
            )
        return parsed

    def _validator(self, name: str, schema: dict[str, Any]) -> jsonschema_rs.Validator:
        with self._lock:
            validator = self._validators.get(name)
            if validator is None:
                import jsonschema_rs

                validator = jsonschema_rs.validator_for(schema)
                self._validators[name] = validator
            return validator


def map_api_error(error: Exception, *, secret: Secret | None = None) -> Exception:
    """Our error for an openai SDK error: transient → ModelUnavailable, else ModelRefused."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return ModelUnavailable("the model call timed out", code="model_timeout")
    if isinstance(error, openai.APIConnectionError):
        return ModelUnavailable("could not reach the model API", code="model_connection_error")
    if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
        # An operator problem (revoked key, no model access): retry with backoff, then the
        # dead-letter topic keeps the job for a replay once the key is fixed. The API's own
        # message may echo part of the key, so it is not repeated.
        status = error.status_code
        return ModelUnavailable(
            f"the model API rejected our credentials (HTTP {status})", code="model_auth_error"
        )
    if isinstance(error, openai.APIStatusError):
        return _status_error(error, secret)
    if isinstance(error, openai.APIError):
        return ModelUnavailable(
            f"model API error: {_scrub(error.message, secret)}", code="model_error"
        )
    return error


def _status_error(error: Any, secret: Secret | None) -> Exception:
    status: int = error.status_code
    detail = f"HTTP {status}: {_scrub(_api_message(error), secret)}"
    if status == 429:
        quota = error.code == "insufficient_quota"
        return ModelUnavailable(
            detail,
            code="model_quota_exceeded" if quota else "rate_limited",
            retry_after=retry_after_seconds(error.response.headers),
        )
    if status >= 500:
        return ModelUnavailable(
            detail,
            code="model_server_error",
            retry_after=retry_after_seconds(error.response.headers),
        )
    if status in _TRANSIENT_STATUSES:
        return ModelUnavailable(detail, code="model_server_error")
    if error.code == "content_policy_violation":
        return ModelRefused(detail, code="content_policy_violation")
    return ModelRefused(detail, code="model_refused")


def retry_after_seconds(headers: Mapping[str, str]) -> float:
    """How long the API asks us to wait: retry-after-ms, retry-after, x-ratelimit-reset-*."""
    for parse in (_retry_after_ms, _retry_after, _ratelimit_reset):
        seconds = parse(headers)
        if seconds is not None:
            return min(max(seconds, 1.0), MAX_RETRY_AFTER_SECONDS)
    return DEFAULT_RETRY_AFTER_SECONDS


def _retry_after_ms(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after-ms")
    try:
        return float(value) / 1000 if value is not None else None
    except ValueError:
        return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return moment.timestamp() - time.time()


def _ratelimit_reset(headers: Mapping[str, str]) -> float | None:
    """Durations like `1s`, `6m0s`, `20ms`: the later of the request and token resets."""
    found = [
        _duration(value)
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if (value := headers.get(name)) is not None
    ]
    seconds = [s for s in found if s is not None]
    return max(seconds) if seconds else None


def _duration(value: str) -> float | None:
    text = value.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def _api_message(error: Any) -> str:
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(error.message)


def _scrub(text: str, secret: Secret | None) -> str:
    """Shorten an API message and make sure it never carries our key."""
    if secret is not None:
        key = secret.reveal()
        if key:
            text = text.replace(key, "[redacted]")
    return _shorten(text)


def _storable(value: Any) -> bool:
    """Whether every string (and key) in `value` is valid UTF-8 without NUL."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return False
            try:
                item.encode()
            except UnicodeEncodeError:
                return False
    return True


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


def _usage(completion: ChatCompletion, task: Task) -> Usage:
    usage = completion.usage
    return Usage(
        model=completion.model or task.model,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
    )


class StreamReads:
    """Whether a model stream is waiting on the network now (in a read), for the thread that
    writes its text: text it is still parsing has already arrived."""

    def __init__(self) -> None:
        self.followed = False
        self.waiting = False

    def follow(self, response: Any) -> None:
        """Follow `response`'s reads: the SDK's Stream asks it for `iter_bytes()` when it
        starts reading, after this."""
        read = response.iter_bytes
        response.iter_bytes = lambda *args, **kwargs: self._watch(read(*args, **kwargs))
        self.followed = True

    def _watch(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        iterator = iter(chunks)
        while True:
            self.waiting = True
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            finally:
                self.waiting = False
            yield chunk


class _StreamedAnswer:
    """Chunks of a streamed completion, put together as the completion they add up to."""

    def __init__(self, model: str, prompt_estimate: int) -> None:
        self.model = model
        self.prompt_estimate = prompt_estimate
        self.parts: list[str] = []
        self.refusal: list[str] = []
        self.chunks = 0
        self.size = 0  # bytes of text so far
        self.finish_reason: str | None = None
        self.final_usage: dict[str, Any] | None = None

    def add(self, chunk: object) -> str:
        """Take one chunk (its JSON, as sent); the text it adds ("" for none)."""
        if not isinstance(chunk, dict):
            return ""
        self.model = _string(chunk.get("model")) or self.model
        if isinstance(chunk.get("usage"), dict):
            self.final_usage = chunk["usage"]
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        self.finish_reason = _string(choice.get("finish_reason")) or self.finish_reason
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return ""
        if refusal := _string(delta.get("refusal")):
            self.refusal.append(refusal)
        text = _string(delta.get("content"))
        if text:
            self.chunks += 1
            self.parts.append(text)
            self.size += len(text.encode())
        return text

    def usage(self) -> Usage:
        """What the model billed: its own figures once sent, else an estimate of the stream
        so far (about one token per content chunk, the prompt by its length)."""
        final = self.final_usage or {}
        prompt, completion = final.get("prompt_tokens"), final.get("completion_tokens")
        if _is_count(prompt) and _is_count(completion):
            return Usage(self.model, prompt, completion)
        return Usage(self.model, self.prompt_estimate, self.chunks)

    def completion(self) -> ChatCompletion:
        """The whole answer, as the non-streaming call would have returned it."""
        from openai.types.chat import ChatCompletion

        usage = self.usage()
        return ChatCompletion.model_validate(
            {
                "id": "streamed",
                "object": "chat.completion",
                "created": 0,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": self.finish_reason or "stop",
                        "message": {
                            "role": "assistant",
                            "content": "".join(self.parts),
                            "refusal": "".join(self.refusal) or None,
                        },
                    }
                ],
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                },
            }
        )


def _string(value: object) -> str:
    """A chunk's text field: "" when it is absent, null or not text."""
    return value if isinstance(value, str) else ""


def _is_count(value: object) -> TypeGuard[int]:
    """A usage figure the model sent as a whole number."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _prompt_estimate(messages: Sequence[Message]) -> int:
    """Prompt tokens by length (about four characters a token, plus each message's framing),
    for a stream cut before the model sent its usage."""
    return sum(len(m.get("content", "")) // 4 + 4 for m in messages)
