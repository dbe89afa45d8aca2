"""JSON and problem+json responses, and CORS."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Response

from genjobs.errors import GenJobsError

CORS_ALLOWED_HEADERS = (
    "authorization, apikey, x-client-info, content-type, idempotency-key, last-event-id"
)
CORS_EXPOSED_HEADERS = "location, idempotent-replayed, retry-after"


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response (compact, UTF-8)."""
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)
    return Response(
        payload, status=status, headers=dict(headers or {}), mimetype="application/json"
    )


def problem_response(error: GenJobsError) -> Response:
    """RFC 9457 problem details for one of our errors."""
    body = {
        "type": error.type_uri,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        **error.extensions(),
    }
    response = json_response(body, error.status, error.headers())
    response.mimetype = "application/problem+json"
    return response


def apply_cors(response: Response, origin: str | None, allowed: Sequence[str]) -> Response:
    """Let allowed browser origins read the response."""
    if origin and origin in allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")
    return response


def preflight_response(origin: str | None, allowed: Sequence[str], methods: str) -> Response:
    """Answer a CORS preflight: 204 for allowed origins, 403 otherwise."""
    if not origin or origin not in allowed:
        return Response(status=403)
    response = Response(status=204)
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Methods"] = methods
    response.headers["Access-Control-Allow-Headers"] = CORS_ALLOWED_HEADERS
    response.headers["Access-Control-Max-Age"] = "600"
    response.headers["Vary"] = "Origin"
    return response
