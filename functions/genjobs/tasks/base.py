"""What a task is: the only way a browser's input becomes a model call."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

Message = dict[str, str]

# Tokens a chat request spends around its messages' text: each message's framing (OpenAI
# documents 3-4 per message) and the reply's priming (3). Generous on purpose: a bound.
TOKENS_PER_MESSAGE = 8
TOKENS_PER_REQUEST = 8


class TaskInput(BaseModel):
    """Base of every task's input model: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


@dataclass(frozen=True)
class Task:
    """A registered task: input model, prompt builder, model and its limits."""

    name: str
    description: str
    input_model: type[TaskInput]
    build_messages: Callable[[Any], list[Message]]
    model: str
    max_output_tokens: int
    timeout_seconds: float
    # A JSON Schema the model's answer must follow; None for free text.
    output_schema: dict[str, Any] | None = None

    def input_schema(self) -> dict[str, Any]:
        """The input's JSON Schema, as published by `GET /v1/tasks`."""
        return self.input_model.model_json_schema()

    def messages_for(self, raw_input: dict[str, Any]) -> list[Message]:
        """Validate stored input again and build the prompt from it."""
        return self.build_messages(self.input_model.model_validate(raw_input))

    def token_bound(self, raw_input: dict[str, Any]) -> int:
        """The most tokens one model call for this input can bill: prompt plus max output."""
        # No token is shorter than one UTF-8 byte, so the prompt's bytes bound its tokens;
        # a structured task's JSON Schema is sent, and billed, with the prompt.
        prompt = sum(
            len(m["role"].encode()) + len(m["content"].encode()) + TOKENS_PER_MESSAGE
            for m in self.messages_for(raw_input)
        )
        if self.output_schema is not None:
            prompt += len(json.dumps(self.output_schema).encode())
        return prompt + TOKENS_PER_REQUEST + self.max_output_tokens
