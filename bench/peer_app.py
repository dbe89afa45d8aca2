"""The peer of figure 2: a procrastinate app whose one task makes our worker's model call."""

from __future__ import annotations

import functools
import os
from typing import Any

from procrastinate import App, PsycopgConnector

from genjobs.model_client import ModelClient
from genjobs.tasks import TASKS

# Set by bench/peer.py for each process it starts (the CLI worker imports this module by path).
DATABASE_URL_ENV = "PEER_DATABASE_URL"
POOL_SIZE_ENV = "PEER_POOL_SIZE"
APPLICATION_NAME_ENV = "PEER_APPLICATION_NAME"
TASK_NAME = "summarize"


def _connector() -> PsycopgConnector:
    """psycopg pool of a fixed size, as our functions' pools are; nothing opens until used."""
    size = int(os.environ.get(POOL_SIZE_ENV, "5"))
    return PsycopgConnector(
        conninfo=os.environ.get(DATABASE_URL_ENV, ""),
        min_size=size,
        max_size=size,
        kwargs={"application_name": os.environ.get(APPLICATION_NAME_ENV, "procrastinate")},
    )


app = App(connector=_connector())


@functools.cache
def _model() -> ModelClient:
    """Our worker's model client (openai SDK, retries off), on the stack's stub model."""
    return ModelClient(api_key=None, base_url=os.environ["OPENAI_BASE_URL"])


@app.task(name=TASK_NAME)
def summarize(text: str) -> None:
    """The worker's zero-latency job: the summarize task's messages to the stub model, checked."""
    task = TASKS[TASK_NAME]
    messages = task.messages_for({"text": text})
    _model().generate(task, messages, timeout=task.timeout_seconds)


def defer_kwargs(index: int) -> dict[str, Any]:
    """The arguments of the index-th job: the same text our bench submits."""
    return {"text": f"bench job {index}"}
