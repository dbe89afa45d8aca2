"""The OpenAPI 3.1 document, generated from the same pydantic models the routes use."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from genjobs.api.schemas import (
    Health,
    JobPage,
    JobView,
    Problem,
    SubmitRequest,
    TaskList,
)
from genjobs.tasks import Task

REF = "#/components/schemas/{model}"
PROBLEM = "application/problem+json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(name: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref(name)}},
    }
    if headers:
        response["headers"] = headers
    return response


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM: {"schema": _ref("Problem")}},
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
_WWW_AUTH = {"WWW-Authenticate": {"schema": {"type": "string"}}}
_LOCATION = {"Location": {"schema": {"type": "string"}, "description": "The job's URL."}}

_AUTH_ERRORS = {
    "401": _problem("Missing or invalid access token.", _WWW_AUTH),
    "403": _problem(
        "A valid token of an anonymous user, where ALLOW_ANONYMOUS_USERS is off.", _WWW_AUTH
    ),
    "503": _problem(
        "Database unavailable, or signing keys unreachable (or not refreshed for over an hour);"
        " retry.",
        _RETRY_AFTER,
    ),
}
_ID_PARAM = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The job id (a UUID; anything else is 404).",
}


def _paths() -> dict[str, Any]:
    return {
        "/v1/generations": {
            "post": {
                "operationId": "submitGeneration",
                "summary": "Submit a generation job.",
                "security": [{"supabase": []}],
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "description": "Per user. Same key and body again: the same job (200,"
                        " Idempotent-Replayed: true), also when sent concurrently (the later"
                        " request waits for the first); same key, other body: 422.",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SubmitRequest")}},
                },
                "responses": {
                    "202": _json("JobView", "Stored and queued.", _LOCATION),
                    "200": _json(
                        "JobView",
                        "Replay of an earlier request with the same Idempotency-Key and body;"
                        " one sent while the first is still running waits for it, then replays.",
                        {**_LOCATION, "Idempotent-Replayed": {"schema": {"type": "string"}}},
                    ),
                    "400": _problem("Body is not JSON."),
                    "413": _problem(
                        "Body or metadata too large, or a job that could spend more than the "
                        "daily token budget."
                    ),
                    "415": _problem("Body is not application/json."),
                    "422": _problem("Validation failed or Idempotency-Key reused."),
                    "429": _problem("Rate limit, active jobs or token budget.", _RETRY_AFTER),
                    **_AUTH_ERRORS,
                },
            },
            "get": {
                "operationId": "listGenerations",
                "summary": "The caller's jobs, newest first.",
                "security": [{"supabase": []}],
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "enum": ["queued", "processing", "succeeded", "failed", "cancelled"],
                        },
                    },
                    {"name": "task", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json("JobPage", "A page of jobs."),
                    "422": _problem("Invalid query parameters."),
                    **_AUTH_ERRORS,
                },
            },
        },
        "/v1/generations/{job_id}": {
            "get": {
                "operationId": "getGeneration",
                "summary": "One of the caller's jobs.",
                "security": [{"supabase": []}],
                "parameters": [_ID_PARAM],
                "responses": {
                    "200": _json("JobView", "The job."),
                    "404": _problem("No such job for this caller."),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/generations/{job_id}/cancel": {
            "post": {
                "operationId": "cancelGeneration",
                "summary": "Cancel a job that has not ended.",
                "security": [{"supabase": []}],
                "parameters": [_ID_PARAM],
                "responses": {
                    "200": _json("JobView", "The cancelled job."),
                    "404": _problem("No such job for this caller."),
                    "409": _problem("The job has already ended."),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/generations/{job_id}/events": {
            "get": {
                "operationId": "followGeneration",
                "summary": "The job as Server-Sent Events, until it ends.",
                "description": (
                    "Events: `status` ({status, attempt, error?}), `delta` ({attempt, seq, "
                    "text}: text the running attempt appended), `reset` ({attempt}: a new "
                    "attempt starts, drop the partial text), `usage`, and one terminal event "
                    "named `succeeded`, `failed` or `cancelled` whose data is the job view. "
                    "Every event has an `id`; send the last one as `Last-Event-ID` to resume "
                    "with no gap and no duplicate. Comment lines are heartbeats. A stream "
                    "ends after STREAM_MAX_SECONDS without a terminal event: resume it. An "
                    "ended job answers its terminal event at once."
                ),
                "security": [{"supabase": []}],
                "parameters": [
                    _ID_PARAM,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
                        "description": "The id of the last event received, to resume after it.",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The event stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "404": _problem("No such job for this caller."),
                    "422": _problem("Last-Event-ID is not an id this stream sent."),
                    "429": _problem("Too many open event streams.", _RETRY_AFTER),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/tasks": {
            "get": {
                "operationId": "listTasks",
                "summary": "Registered tasks and their input schemas.",
                "responses": {"200": _json("TaskList", "The tasks.")},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness and a cheap database check.",
                "responses": {
                    "200": _json("Health", "Healthy."),
                    "503": _json("Health", "Database unavailable.", _RETRY_AFTER),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


def _submit_request(tasks: dict[str, Task], schemas: dict[str, Any]) -> dict[str, Any]:
    """SubmitRequest as one variant per task, each with that task's input schema."""
    envelope = schemas["SubmitRequest"]
    variants: dict[str, str] = {}
    for name, task in sorted(tasks.items()):
        component = f"Submit_{name}"
        schemas[component] = {
            **envelope,
            "title": f"Submit {name}",
            "properties": {
                **envelope["properties"],
                "task": {"const": name},
                "input": _ref(task.input_model.__name__),
            },
        }
        variants[name] = REF.format(model=component)
    return {
        "title": "SubmitRequest",
        "description": envelope.get("description", ""),
        "oneOf": [{"$ref": ref} for ref in variants.values()],
        "discriminator": {"propertyName": "task", "mapping": variants},
    }


def openapi_document(tasks: dict[str, Task]) -> dict[str, Any]:
    """The whole document; SubmitRequest has one variant per registered task."""
    responses: list[type[BaseModel]] = [JobView, JobPage, TaskList, Health, Problem]
    requests: list[type[BaseModel]] = [SubmitRequest, *(t.input_model for t in tasks.values())]
    modes: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "serialization") for m in responses),
        *((m, "validation") for m in requests),
    ]
    _, definitions = models_json_schema(modes, ref_template=REF)
    schemas = definitions.get("$defs", {})
    schemas["SubmitRequest"] = _submit_request(tasks, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "genjobs api",
            "version": "1.0.0",
            "description": "Submit AI generation jobs and follow them until they end.",
        },
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "supabase": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The user's Supabase access token.",
                }
            },
        },
    }
