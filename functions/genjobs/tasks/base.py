"""What a task is: the only way a browser's input becomes a model call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

Message = dict[str, str]


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
