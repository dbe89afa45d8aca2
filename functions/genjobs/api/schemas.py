"""Request and response models; the OpenAPI document is generated from these."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from genjobs.statuses import Status


class SubmitRequest(BaseModel):
    """`POST /v1/generations` body: a registered task and its input."""

    model_config = ConfigDict(extra="forbid")

    task: Annotated[
        str, Field(min_length=1, max_length=64, description="A name from GET /v1/tasks.")
    ]
    input: Annotated[
        dict[str, Any], Field(description="The task's input; its JSON Schema is in GET /v1/tasks.")
    ]
    metadata: Annotated[
        dict[str, Any] | None,
        Field(description="Free-form client data stored with the job (4 KiB at most)."),
    ] = None


class JobError(BaseModel):
    """Why a job failed or was cancelled."""

    code: str
    message: str


class Usage(BaseModel):
    """Which model ran and the tokens it used."""

    model: str
    prompt_tokens: int
    completion_tokens: int


class JobView(BaseModel):
    """A generation job as the frontend sees it."""

    id: str
    task: str
    status: Status
    input: dict[str, Any]
    metadata: dict[str, Any]
    result: Any = None
    error: JobError | None
    usage: Usage | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(BaseModel):
    """One page of the caller's jobs, newest first."""

    items: list[JobView]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class TaskInfo(BaseModel):
    """A registered task."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    max_output_tokens: int
    timeout_seconds: float


class TaskList(BaseModel):
    """Every registered task."""

    items: list[TaskInfo]


class Health(BaseModel):
    """Liveness and a cheap database check."""

    status: Literal["ok", "degraded"]
    database: Literal["ok", "unavailable"]


class FieldError(BaseModel):
    """One invalid field."""

    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
