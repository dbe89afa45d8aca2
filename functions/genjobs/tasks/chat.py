"""Answer the next turn of a short conversation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from genjobs.tasks.base import Message, Task, TaskInput

SYSTEM_PROMPT = "You are a helpful assistant. Answer concisely."


class ChatMessage(BaseModel):
    """One earlier turn; the browser cannot send system messages."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: Annotated[str, Field(min_length=1, max_length=8_000)]


class ChatInput(TaskInput):
    """The conversation so far, ending with the user's turn."""

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=40)]


def build_messages(data: ChatInput) -> list[Message]:
    """The server's system prompt, then the conversation."""
    return [{"role": "system", "content": SYSTEM_PROMPT}] + [
        {"role": m.role, "content": m.content} for m in data.messages
    ]


TASK = Task(
    name="chat",
    description="Answer the next turn of a conversation (at most 40 turns).",
    input_model=ChatInput,
    build_messages=build_messages,
    model="gpt-4o-mini",
    max_output_tokens=1_000,
    timeout_seconds=90,
)
