"""Summarize a text in a bounded number of words."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from genjobs.tasks.base import Message, Task, TaskInput


class SummarizeInput(TaskInput):
    """A text to summarize."""

    text: Annotated[str, Field(min_length=1, max_length=20_000)]
    max_words: Annotated[int, Field(ge=10, le=500)] = 120
    language: Annotated[str | None, Field(max_length=32, pattern=r"^[A-Za-z -]+$")] = None


def build_messages(data: SummarizeInput) -> list[Message]:
    """System rules first; the user's text only ever as user content."""
    language = f" Answer in {data.language}." if data.language else ""
    return [
        {
            "role": "system",
            "content": f"Summarize the user's text in at most {data.max_words} words.{language}",
        },
        {"role": "user", "content": data.text},
    ]


TASK = Task(
    name="summarize",
    description="Summarize a text in at most `max_words` words.",
    input_model=SummarizeInput,
    build_messages=build_messages,
    model="gpt-4o-mini",
    max_output_tokens=800,
    timeout_seconds=60,
)
