"""The registered tasks; adding one is one module plus one line here."""

from __future__ import annotations

from genjobs.tasks import chat, extract_entities, summarize
from genjobs.tasks.base import Task, TaskInput

TASKS: dict[str, Task] = {t.name: t for t in (summarize.TASK, chat.TASK, extract_entities.TASK)}

__all__ = ["TASKS", "Task", "TaskInput"]
