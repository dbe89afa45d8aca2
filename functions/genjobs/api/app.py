"""Routes of the api function; every error becomes problem+json, never a 500 for client input."""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from flask import Request, Response
from sqlalchemy import text
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound
from werkzeug.routing import Map, Rule

from genjobs import store
from genjobs.api.events import ClosingStream, JobEvents, StreamSlots, last_event_id
from genjobs.api.openapi import openapi_document
from genjobs.api.responses import apply_cors, json_response, preflight_response, problem_response
from genjobs.api.submit import SubmitService
from genjobs.db import Database
from genjobs.errors import (
    Conflict,
    DatabaseUnavailable,
    GenJobsError,
    InvalidRequest,
    MalformedBody,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from genjobs.logs import current_trace_id, log_context, new_trace_id, trace_id_from_headers
from genjobs.publisher import JobPublisher
from genjobs.settings import Settings
from genjobs.statuses import Status
from genjobs.tasks import Task

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_TASK_NAME_LENGTH = 64

ROUTES = Map(
    [
        Rule("/v1/generations", endpoint="submit", methods=["POST"]),
        Rule("/v1/generations", endpoint="list", methods=["GET"]),
        Rule("/v1/generations/<job_id>", endpoint="get", methods=["GET"]),
        Rule("/v1/generations/<job_id>/cancel", endpoint="cancel", methods=["POST"]),
        Rule("/v1/generations/<job_id>/events", endpoint="events", methods=["GET"]),
        Rule("/v1/tasks", endpoint="tasks", methods=["GET"]),
        Rule("/healthz", endpoint="health", methods=["GET"]),
        Rule("/openapi.json", endpoint="openapi", methods=["GET"]),
    ],
    strict_slashes=False,
)


class UserVerifier(Protocol):
    """Turns an Authorization header into the calling user (or raises Unauthenticated)."""

    def verify(self, authorization_header: str | None) -> Any:
        """The user; its `id` is the token's `sub`."""
        ...


class ApiApp:
    """The api function: one instance per process, dependencies passed in."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        publisher: JobPublisher,
        verifier: UserVerifier,
        tasks: dict[str, Task],
    ) -> None:
        self.settings = settings
        self.db = db
        self.verifier = verifier
        self.tasks = tasks
        self.submitter = SubmitService(settings, db, publisher, tasks)
        self.events = JobEvents(settings, db)
        self.stream_slots = StreamSlots(settings.max_streams_per_user)
        self._openapi = json.dumps(openapi_document(tasks))
        self._handlers: dict[str, Callable[[Request, dict[str, str]], Response]] = {
            "submit": self.submit,
            "list": self.list_jobs,
            "get": self.get_job,
            "cancel": self.cancel_job,
            "events": self.job_events,
            "tasks": self.list_tasks,
            "health": self.health,
            "openapi": self.openapi,
        }

    def __call__(self, request: Request) -> Response:
        """Route, answer, and add CORS headers; every line logged meanwhile carries the trace."""
        with log_context(trace_id=trace_id_from_headers(request.headers) or new_trace_id()):
            return self._answer(request)

    def _answer(self, request: Request) -> Response:
        """Route, answer, and add CORS headers."""
        origin = request.headers.get("Origin")
        adapter = ROUTES.bind("api", path_info=request.path)
        if request.method == "OPTIONS":
            try:
                methods = adapter.allowed_methods()
            except WerkzeugNotFound:
                methods = []
            if not methods:
                return problem_response(NotFound("no such route"))
            return preflight_response(origin, self.settings.allowed_origins, ", ".join(methods))
        try:
            endpoint, args = adapter.match(method=request.method)
            response = self._handlers[str(endpoint)](request, dict(args))
        except WerkzeugNotFound:
            response = problem_response(NotFound("no such route"))
        except WerkzeugMethodNotAllowed as error:
            response = problem_response(MethodNotAllowed(sorted(error.valid_methods or [])))
        except GenJobsError as error:
            response = problem_response(error)
        except Exception:
            log.exception("unhandled error in api")
            response = problem_response(GenJobsError("an unexpected error occurred"))
        return apply_cors(response, origin, self.settings.allowed_origins)

    # --- routes -------------------------------------------------------------------------

    def submit(self, request: Request, _: dict[str, str]) -> Response:
        """POST /v1/generations."""
        user = self.verifier.verify(request.headers.get("Authorization"))
        body = self._json_body(request)
        submitted = self.submitter.submit(
            user.id,
            body,
            request.headers.get("Idempotency-Key"),
            current_trace_id(),
        )
        job = submitted.job
        headers = {"Location": f"/v1/generations/{job.id}"}
        if submitted.replayed:
            headers["Idempotent-Replayed"] = "true"
            return json_response(job.view(), 200, headers)
        log.info("job queued", extra={"job_id": job.id, "task": job.task, "trace_id": job.trace_id})
        return json_response(job.view(), 202, headers)

    def get_job(self, request: Request, args: dict[str, str]) -> Response:
        """GET /v1/generations/{id}: the caller's own job, else 404."""
        user = self.verifier.verify(request.headers.get("Authorization"))
        job_id = _job_id(args["job_id"])
        with self.db.transaction() as conn:
            job = store.get_job(conn, job_id, user.id)
        if job is None:
            raise NotFound("no such job")
        return json_response(job.view())

    def list_jobs(self, request: Request, _: dict[str, str]) -> Response:
        """GET /v1/generations: the caller's jobs, newest first."""
        user = self.verifier.verify(request.headers.get("Authorization"))
        status, task, limit = self._list_filters(request)
        with self.db.transaction() as conn:
            jobs, cursor = store.list_jobs(
                conn,
                user.id,
                limit=limit,
                status=status,
                task=task,
                cursor=request.args.get("cursor") or None,
            )
        return json_response({"items": [j.view() for j in jobs], "next_cursor": cursor})

    def cancel_job(self, request: Request, args: dict[str, str]) -> Response:
        """POST /v1/generations/{id}/cancel: 200 with the job, 409 once it has ended."""
        user = self.verifier.verify(request.headers.get("Authorization"))
        job_id = _job_id(args["job_id"])
        with self.db.transaction() as conn:
            job = store.cancel_job(conn, job_id, user.id)
            if job is None:
                existing = store.get_job(conn, job_id, user.id)
                if existing is None:
                    raise NotFound("no such job")
                raise Conflict(f"the job has already ended ({existing.status.value})")
        log.info("job cancelled", extra={"job_id": job.id})
        return json_response(job.view())

    def job_events(self, request: Request, args: dict[str, str]) -> Response:
        """GET /v1/generations/{id}/events: the caller's job as Server-Sent Events."""
        user = self.verifier.verify(request.headers.get("Authorization"))
        job_id = _job_id(args["job_id"])
        after = last_event_id(request.headers.get("Last-Event-ID"))
        with self.db.transaction() as conn:
            job = store.get_job(conn, job_id, user.id)
        if job is None:
            raise NotFound("no such job")
        self.stream_slots.take(user.id)
        # The server closes the body when the stream ends or the client goes: the slot is
        # given back then, whether or not the body was ever read.
        body = ClosingStream(
            self.events.stream(job, after), lambda: self.stream_slots.give_back(user.id)
        )
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return Response(body, mimetype="text/event-stream", headers=headers)

    def list_tasks(self, _request: Request, _: dict[str, str]) -> Response:
        """GET /v1/tasks: names and input schemas."""
        items = [
            {
                "name": t.name,
                "description": t.description,
                "input_schema": t.input_schema(),
                "output_schema": t.output_schema,
                "max_output_tokens": t.max_output_tokens,
                "timeout_seconds": t.timeout_seconds,
            }
            for t in self.tasks.values()
        ]
        return json_response({"items": items})

    def health(self, _request: Request, _: dict[str, str]) -> Response:
        """GET /healthz: liveness plus `SELECT 1`."""
        try:
            with self.db.transaction() as conn:
                conn.execute(text("SELECT 1"))
        except DatabaseUnavailable:
            return json_response(
                {"status": "degraded", "database": "unavailable"}, 503, {"Retry-After": "5"}
            )
        return json_response({"status": "ok", "database": "ok"})

    def openapi(self, _request: Request, _: dict[str, str]) -> Response:
        """GET /openapi.json."""
        return Response(self._openapi, mimetype="application/json")

    # --- helpers ------------------------------------------------------------------------

    def _json_body(self, request: Request) -> Any:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"the body is over {limit} bytes")
        if request.mimetype not in {"application/json", ""} and not request.mimetype.endswith(
            "+json"
        ):
            raise UnsupportedMediaType("send the body as application/json")
        raw = request.stream.read(limit + 1)
        if len(raw) > limit:
            raise PayloadTooLarge(f"the body is over {limit} bytes")
        try:
            return json.loads(raw, parse_constant=_not_json, parse_float=_finite_float)
        # ValueError covers bad UTF-8, bad syntax, NaN/Infinity and over-long integers;
        # RecursionError very deep nesting: the client's error, never a 500.
        except (ValueError, RecursionError) as error:
            raise MalformedBody(f"the body is not valid JSON: {error}") from error

    def _list_filters(self, request: Request) -> tuple[Status | None, str | None, int]:
        errors = []
        status = None
        raw_status = request.args.get("status")
        # Present means given: `?status=` is not a status (the document lists an enum).
        if raw_status is not None:
            try:
                status = Status(raw_status)
            except ValueError:
                errors.append(
                    {"field": "status", "message": f"one of: {', '.join(s.value for s in Status)}"}
                )
        task = request.args.get("task") or None
        if task is not None and (len(task) > MAX_TASK_NAME_LENGTH or "\x00" in task):
            # Postgres text cannot hold NUL; no task name is longer.
            errors.append({"field": "task", "message": "a task name from GET /v1/tasks"})
        limit = DEFAULT_PAGE_SIZE
        raw_limit = request.args.get("limit")
        if raw_limit is not None:
            # "²" and "٣" are isdigit() too; 5,000 digits would make int() raise.
            digits = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 3
            if digits and 1 <= int(raw_limit) <= MAX_PAGE_SIZE:
                limit = int(raw_limit)
            else:
                errors.append({"field": "limit", "message": f"an integer 1..{MAX_PAGE_SIZE}"})
        cursor = request.args.get("cursor") or None
        if cursor is not None and not _is_cursor(cursor):
            errors.append({"field": "cursor", "message": "not a cursor returned by this API"})
        if errors:
            raise InvalidRequest("invalid query parameters", errors)
        return status, task, limit


def _is_cursor(cursor: str) -> bool:
    """Whether `cursor` decodes as one of ours."""
    try:
        store.decode_cursor(cursor)
    except InvalidRequest:
        return False
    return True


def _not_json(constant: str) -> Any:
    """NaN and Infinity are not JSON (and jsonb refuses them)."""
    raise ValueError(f"{constant} is not a JSON value")


def _finite_float(text: str) -> float:
    """A JSON number as a float; 1e999 would become infinity, which jsonb refuses."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _job_id(raw: str) -> uuid.UUID:
    """Ids that are not UUIDs cannot name a job: 404, as for any unknown id."""
    try:
        return uuid.UUID(raw)
    except ValueError as error:
        raise NotFound("no such job") from error
