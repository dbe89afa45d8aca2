"""Extract named entities as structured JSON that follows a schema."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from genjobs.tasks.base import Message, Task, TaskInput

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["entities"],
    "properties": {
        "entities": {
            "type": "array",
            "maxItems": 100,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "type"],
                "properties": {
                    "name": {"type": "string", "maxLength": 200},
                    "type": {
                        "type": "string",
                        "enum": ["person", "organization", "location", "date", "other"],
                    },
                },
            },
        }
    },
}


class ExtractEntitiesInput(TaskInput):
    """A text to find people, organizations, places and dates in."""

    text: Annotated[str, Field(min_length=1, max_length=20_000)]


def build_messages(data: ExtractEntitiesInput) -> list[Message]:
    """Instructions as system content; the text as user content."""
    return [
        {
            "role": "system",
            "content": "List the named entities in the user's text, each with its type.",
        },
        {"role": "user", "content": data.text},
    ]


TASK = Task(
    name="extract_entities",
    description="Extract named entities as JSON: {entities: [{name, type}]}.",
    input_model=ExtractEntitiesInput,
    build_messages=build_messages,
    model="gpt-4o-mini",
    max_output_tokens=1_500,
    timeout_seconds=90,
    output_schema=OUTPUT_SCHEMA,
)
