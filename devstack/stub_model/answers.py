"""Pure logic of the stub model: directives, request checks, answers and wire objects."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
import string
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

_TOKEN_RE: Final = re.compile(r"\w+|[^\w\s]")
_FLAG_RE: Final = re.compile(r"stub:(429|500|refuse|hang)\b")
_SLEEP_RE: Final = re.compile(r"stub:sleep=(\d+(?:\.\d+)?|\.\d+)")
_FAIL_RE: Final = re.compile(r"stub:fail=([45]\d\d)x(\d+)")
_TOKENS_RE: Final = re.compile(r"stub:tokens=(\d+)")
_PACE_RE: Final = re.compile(r"stub:pace=(\d+(?:\.\d+)?|\.\d+)")
_CUT_RE: Final = re.compile(r"stub:cut=(\d+)(?:x(\d+))?")
_OBFUSCATION_ALPHABET: Final = string.ascii_letters + string.digits
_FILLER: Final = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


class ApiError(Exception):
    """An OpenAI-style error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The wire body, as the real API sends it."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def rate_limit_error(model: str) -> ApiError:
    """A 429 like the API's requests-per-minute limit, with its retry headers."""
    return ApiError(
        429,
        f"Rate limit reached for {model} in organization org-stub on requests per min (RPM):"
        " Limit 1, Used 1, Requested 1. Please try again in 1s.",
        type_="requests",
        code="rate_limit_exceeded",
        headers={
            "retry-after": "1",
            "x-ratelimit-limit-requests": "1",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
        },
    )


def status_error(status: int, model: str) -> ApiError:
    """An error with the body the API sends for that HTTP status."""
    if status == 429:
        return rate_limit_error(model)
    if status == 500:
        return ApiError(
            500,
            "The server had an error while processing your request. Sorry about that!",
            type_="server_error",
        )
    if status == 503:
        return ApiError(
            503, "The engine is currently overloaded, please try again later.", type_="server_error"
        )
    if status == 401:
        return ApiError(401, "Incorrect API key provided (stub).", code="invalid_api_key")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return ApiError(status, f"{phrase} (scripted by stub:fail).", type_=kind)


def refusal_error() -> ApiError:
    """The 400 a content-policy rejection gets."""
    return ApiError(
        400,
        "Your request was rejected as a result of our safety system. Your request may contain"
        " content that is not allowed by our safety system.",
        code="content_policy_violation",
    )


@dataclass(frozen=True, slots=True)
class Directives:
    """The ``stub:`` directives found in a prompt."""

    hang: bool = False
    rate_limit: bool = False
    server_error: bool = False
    refuse: bool = False
    sleep: float = 0.0
    fail: tuple[int, int] | None = None  # (status, first N calls)
    tokens: int | None = None
    pace_ms: float = 0.0  # time per streamed token
    cut: tuple[int, int] | None = None  # (after N tokens, the first M calls)

    @classmethod
    def parse(cls, text: str) -> Directives:
        """Read the directives from the prompt text (first occurrence of each wins)."""
        flags = set(_FLAG_RE.findall(text))
        sleep = _SLEEP_RE.search(text)
        fail = _FAIL_RE.search(text)
        tokens = _TOKENS_RE.search(text)
        pace = _PACE_RE.search(text)
        cut = _CUT_RE.search(text)
        return cls(
            hang="hang" in flags,
            rate_limit="429" in flags,
            server_error="500" in flags,
            refuse="refuse" in flags,
            sleep=float(sleep.group(1)) if sleep else 0.0,
            fail=(int(fail.group(1)), int(fail.group(2))) if fail else None,
            tokens=int(tokens.group(1)) if tokens else None,
            pace_ms=float(pace.group(1)) if pace else 0.0,
            cut=(int(cut.group(1)), int(cut.group(2) or 1)) if cut else None,
        )


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat completion request the stub uses."""

    model: str
    prompt: str  # all message contents joined by newlines: what directives are read from
    last_user: str
    stream: bool
    include_usage: bool
    include_obfuscation: bool
    max_tokens: int | None
    response_format: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Completion:
    """A generated answer."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict[str, Any]:
        """The usage object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


# ---------------------------------------------------------------- request parsing


def _message_text(content: object) -> str:
    """Text of a message content: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def parse_chat_request(body: object) -> ChatRequest:
    """Validate a chat completion body the way the API does (the parts that matter here)."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "Missing required parameter: 'messages'.", param="messages")
    texts: list[str] = []
    last_user = ""
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(
                400,
                f"Missing required parameter: 'messages[{index}].role'.",
                param=f"messages[{index}].role",
            )
        text = _message_text(message.get("content"))
        texts.append(text)
        if message["role"] == "user":
            last_user = text
    prompt = "\n".join(texts)

    max_tokens: int | None = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(
                400,
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1.",
                param=name,
                code="integer_below_min_value",
            )
        max_tokens = value
        break

    response_format = body.get("response_format")
    if response_format is not None:
        _check_response_format(response_format)

    stream = body.get("stream") is True
    stream_options = body.get("stream_options")
    if stream_options is not None and not stream:
        raise ApiError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    options = stream_options if isinstance(stream_options, dict) else {}
    return ChatRequest(
        model=model,
        prompt=prompt,
        last_user=last_user or prompt,
        stream=stream,
        include_usage=options.get("include_usage") is True,
        include_obfuscation=options.get("include_obfuscation") is not False,  # on by default
        max_tokens=max_tokens,
        response_format=response_format,
    )


def _check_response_format(response_format: object) -> None:
    """Reject response_format values the API would reject."""
    if not isinstance(response_format, dict):
        raise ApiError(400, "Invalid type for 'response_format'.", param="response_format")
    kind = response_format.get("type")
    if kind in ("text", "json_object"):
        return
    if kind != "json_schema":
        raise ApiError(
            400,
            f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object', and"
            " 'json_schema'.",
            param="response_format.type",
            code="invalid_value",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise ApiError(
            400,
            "Missing required parameter: 'response_format.json_schema'.",
            param="response_format.json_schema",
            code="missing_required_parameter",
        )
    if not isinstance(spec.get("name"), str):
        raise ApiError(
            400,
            "Missing required parameter: 'response_format.json_schema.name'.",
            param="response_format.json_schema.name",
            code="missing_required_parameter",
        )
    if "schema" in spec and not isinstance(spec["schema"], dict):
        raise ApiError(
            400,
            "Invalid type for 'response_format.json_schema.schema': expected an object.",
            param="response_format.json_schema.schema",
            code="invalid_type",
        )


# ---------------------------------------------------------------- answers


def count_tokens(text: str) -> int:
    """Deterministic token estimate: words and punctuation marks."""
    return len(_TOKEN_RE.findall(text))


def stub_answer(request: ChatRequest) -> str:
    """The plain-text answer: a summary of the last user message plus a prompt digest."""
    words = request.last_user.split()
    summary = " ".join(words[:12]) + (" ..." if len(words) > 12 else "")
    digest = hashlib.sha256(request.prompt.encode()).hexdigest()[:12]
    return f"Stub answer: {summary or '(empty prompt)'} [{digest}]"


def _exactly_tokens(text: str, n: int) -> str:
    """The text cut or padded (with filler words) to exactly n tokens."""
    spans = list(_TOKEN_RE.finditer(text))
    if len(spans) >= n:
        return text[: spans[n - 1].end()] if n else ""
    filler = (_FILLER[i % len(_FILLER)] for i in range(n - len(spans)))
    return " ".join([text, *filler])


def complete(request: ChatRequest, directives: Directives) -> Completion:
    """Build the deterministic completion for a request."""
    answer = stub_answer(request)
    fmt = request.response_format or {}
    if fmt.get("type") == "json_schema":
        schema = fmt["json_schema"].get("schema") or {}
        content = json.dumps(schema_instance(schema, answer), ensure_ascii=False)
    elif fmt.get("type") == "json_object":
        content = json.dumps({"answer": answer}, ensure_ascii=False)
    elif directives.tokens is not None:
        content = _exactly_tokens(answer, directives.tokens)
    else:
        content = answer
    # stub:tokens=N sets the reported figure even when the content is structured JSON.
    produced = directives.tokens if directives.tokens is not None else count_tokens(content)
    finish_reason = "stop"
    limit = request.max_tokens
    if limit is not None and produced > limit:
        content = _exactly_tokens(content, limit) if count_tokens(content) > limit else content
        produced = limit
        finish_reason = "length"
    return Completion(
        content=content,
        finish_reason=finish_reason,
        prompt_tokens=max(1, count_tokens(request.prompt)),
        completion_tokens=produced,
    )


# ---------------------------------------------------------------- JSON Schema instances

_STRING_FORMATS: Final[Mapping[str, str]] = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00Z",
    "duration": "PT1S",
    "email": "stub@example.com",
    "idn-email": "stub@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uri": "https://example.com/stub",
    "iri": "https://example.com/stub",
    "uri-reference": "https://example.com/stub",
    "url": "https://example.com/stub",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
_MAX_DEPTH: Final = 32


def schema_instance(schema: Mapping[str, Any], text: str = "stub") -> Any:
    """A minimal JSON value valid against the schema; plain strings carry ``text``."""
    return _Instances(schema, text).build(schema, 0)


class _Instances:
    """Builds instances for one root schema (for ``$ref`` resolution)."""

    def __init__(self, root: Mapping[str, Any], text: str) -> None:
        self.root = root
        self.text = text

    def build(self, schema: object, depth: int) -> Any:
        """A value for a (sub)schema."""
        if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
            return None  # `true` / `{}`-like schemas accept null; also ends runaway recursion
        schema = self._deref(schema)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        combined = self._combined(schema)
        if combined is not None:
            return self.build(combined, depth + 1)
        return self._typed(schema, depth)

    def _combined(self, schema: Mapping[str, Any]) -> dict[str, Any] | None:
        """allOf merged, or anyOf/oneOf narrowed to one option; None without these."""
        if isinstance(schema.get("allOf"), list):
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            return self._merge([rest, *(self._deref(part) for part in schema["allOf"])])
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                rest = {k: v for k, v in schema.items() if k != key}
                return self._merge([rest, self._pick(options)])
        return None

    def _typed(self, schema: Mapping[str, Any], depth: int) -> Any:
        """A value for a schema without combinators."""
        kind = self._type(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "string":
            return self._string(schema)
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        return True if kind == "boolean" else None

    def _resolve(self, ref: str) -> Mapping[str, Any]:
        """Follow a local JSON pointer (``#/$defs/X``)."""
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for raw in ref[1:].split("/"):
            if not raw:
                continue
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping):
                node = node.get(key, {})
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return {}
        return node if isinstance(node, Mapping) else {}

    def _deref(self, schema: object) -> Mapping[str, Any]:
        """The schema with top-level ``$ref``s followed."""
        if not isinstance(schema, Mapping):
            return {}
        for _ in range(_MAX_DEPTH):  # chains of refs; bounded against ref cycles
            ref = schema.get("$ref")
            if not isinstance(ref, str):
                return schema
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = self._merge([self._resolve(ref), rest])
        return {}

    def _pick(self, options: Sequence[object]) -> Mapping[str, Any]:
        """The first option that is not just ``null`` (a more useful answer)."""
        resolved = [self._deref(option) for option in options]
        for option in resolved:
            if option.get("type") != "null":
                return option
        return resolved[0]

    @staticmethod
    def _merge(schemas: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Shallow merge of schemas that must all hold (properties and required combined)."""
        merged: dict[str, Any] = {}
        for schema in schemas:
            for key, value in schema.items():
                if key == "properties" and isinstance(merged.get(key), dict):
                    merged[key] = {**merged[key], **value}
                elif key == "required" and isinstance(merged.get(key), list):
                    merged[key] = [*merged[key], *(v for v in value if v not in merged[key])]
                else:
                    merged[key] = value
        return merged

    @staticmethod
    def _type(schema: Mapping[str, Any]) -> str | None:
        """The declared type (first non-null of a list) or one inferred from keywords."""
        declared = schema.get("type")
        if isinstance(declared, list):
            non_null = [t for t in declared if t != "null"]
            declared = non_null[0] if non_null else "null"
        if isinstance(declared, str):
            return declared
        keys = schema.keys()
        if keys & {"properties", "required", "additionalProperties", "minProperties"}:
            return "object"
        if keys & {"items", "prefixItems", "minItems", "maxItems", "uniqueItems"}:
            return "array"
        if keys & {"minLength", "maxLength", "pattern", "format"}:
            return "string"
        if keys & {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}:
            return "number"
        return None

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        """Required properties only, plus optional ones up to minProperties."""
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        required = schema.get("required")
        names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
        min_properties = schema.get("minProperties")
        if isinstance(min_properties, int):
            extra = [n for n in properties if n not in names]
            names += extra[: max(0, min_properties - len(names))]
        extra_schema = schema.get("additionalProperties", True)
        result: dict[str, Any] = {}
        for name in names:
            sub = properties.get(name, extra_schema)
            result[name] = self.build(sub, depth + 1)
        return result

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        """``minItems`` items (prefixItems first), varied when they must be unique."""
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        min_items = schema.get("minItems")
        count = min_items if isinstance(min_items, int) and min_items > 0 else 0
        result = [
            self.build(prefix[i] if i < len(prefix) else items, depth + 1) for i in range(count)
        ]
        if schema.get("uniqueItems") is True:
            result = [_vary(value, index) for index, value in enumerate(result)]
        return result

    def _string(self, schema: Mapping[str, Any]) -> str:
        """The answer text, or a value fitting format/pattern/length constraints."""
        fmt = schema.get("format")
        value = _STRING_FORMATS.get(fmt, self.text) if isinstance(fmt, str) else self.text
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            value = _matching(pattern, value)
        min_length = schema.get("minLength")
        if isinstance(min_length, int) and len(value) < min_length:
            value += "x" * (min_length - len(value))
        max_length = schema.get("maxLength")
        if isinstance(max_length, int) and len(value) > max_length:
            value = value[:max_length]
        return value


def _matching(pattern: str, preferred: str) -> str:
    """The preferred string if it matches, else a simple candidate that does."""
    try:
        regex = re.compile(pattern)
    except re.error:
        return preferred
    for candidate in (preferred, "stub", "a", "A", "0", "", "a0", "stub-0", "00000000"):
        if regex.search(candidate):
            return candidate
    return preferred  # best effort: arbitrary regexes are not generated


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    """The value closest to zero (or just above the lower bound) within the bounds."""

    def bound(key: str) -> float | None:
        value = schema.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None  # draft 4 boolean exclusive bounds are ignored
        return float(value)

    low, high = bound("minimum"), bound("maximum")
    x_low, x_high = bound("exclusiveMinimum"), bound("exclusiveMaximum")
    value = 0.0
    if low is not None and value < low:
        value = low
    if x_low is not None and value <= x_low:
        value = x_low + 1
        upper = min(v for v in (high, x_high, math.inf) if v is not None)
        if not integer and value >= upper:
            value = (x_low + upper) / 2
    if high is not None and value > high:
        value = high
    if x_high is not None and value >= x_high:
        value = x_high - 1
    multiple = bound("multipleOf")
    if multiple:
        value = math.ceil(value / multiple) * multiple
    if integer:
        return math.ceil(value)
    return int(value) if value.is_integer() else value


def _vary(value: Any, index: int) -> Any:
    """Make the index-th array item distinct from the others where the type allows."""
    if index == 0:
        return value
    varied: Any = value
    if isinstance(value, bool):
        varied = not value if index == 1 else value
    elif isinstance(value, str):
        varied = f"{value}-{index}"
    elif isinstance(value, int | float):
        varied = value + index
    elif isinstance(value, dict):
        for key, item in value.items():
            if (changed := _vary(item, index)) != item:
                varied = {**value, key: changed}
                break
    elif isinstance(value, list) and value:
        varied = [_vary(value[0], index), *value[1:]]
    return varied


# ---------------------------------------------------------------- wire objects


def model_object(model_id: str) -> dict[str, Any]:
    """A model object."""
    return {"id": model_id, "object": "model", "created": 1_700_000_000, "owned_by": "stub"}


def completion_object(model: str, completion: Completion) -> dict[str, Any]:
    """A chat.completion object."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": completion.content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": completion.usage(),
        "service_tier": "default",
        "system_fingerprint": "fp_stub",
    }


@dataclass(frozen=True, slots=True)
class ChunkStream:
    """The chat.completion.chunk objects of a streamed answer, one token per content chunk."""

    opening: dict[str, Any]  # the role chunk
    tokens: list[dict[str, Any]]
    closing: list[dict[str, Any]]  # finish_reason chunk, then the usage chunk if asked for


def completion_chunks(request: ChatRequest, completion: Completion) -> ChunkStream:
    """Chunks in the API's key order, with ``usage: null`` and ``obfuscation`` as it sends them."""
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    # The API pads each chunk's JSON to a per-stream size with random characters.
    padded_to = random.randint(6, 16)  # noqa: S311 (padding, not security)

    def chunk(
        choices: list[dict[str, Any]], text: str = "", usage: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": request.model,
            "service_tier": "default",
            "system_fingerprint": "fp_stub",
            "choices": choices,
        }
        if request.include_usage:
            body["usage"] = usage  # null on all but the last chunk, as the API does
        if request.include_obfuscation:
            size = max(1, padded_to - len(text))
            body["obfuscation"] = "".join(random.choices(_OBFUSCATION_ALPHABET, k=size))  # noqa: S311
        return body

    def delta(fields: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": fields, "logprobs": None, "finish_reason": finish_reason}
        return chunk([choice], str(fields.get("content") or ""))

    content = completion.content
    ends = [m.end() for m in _TOKEN_RE.finditer(content)]
    bounds = [0, *ends[:-1], len(content)]  # each piece: one token with its leading space
    pieces = [content[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    closing = [delta({}, completion.finish_reason)]
    if request.include_usage:
        closing.append(chunk([], "usage", completion.usage()))
    return ChunkStream(
        opening=delta({"role": "assistant", "content": "", "refusal": None}),
        tokens=[delta({"content": piece}) for piece in pieces],
        closing=closing,
    )
