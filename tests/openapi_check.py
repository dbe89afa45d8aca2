"""Checks a real HTTP response against the served OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

import httpx
import jsonschema_rs


def _template_for(doc: dict[str, Any], path: str) -> str:
    for template in doc["paths"]:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "/?$"
        if re.match(pattern, path):
            return str(template)
    raise AssertionError(f"{path} is not in the OpenAPI document")


def assert_conforms(doc: dict[str, Any], response: httpx.Response) -> None:
    """The status is documented for the route, and the body matches its schema and media type."""
    request = response.request
    template = _template_for(doc, request.url.path)
    operation = doc["paths"][template].get(request.method.lower())
    assert operation is not None, f"{request.method} {template} is not documented"
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, (
        f"{request.method} {template} answered {response.status_code}, which is not documented"
    )
    media_type = response.headers.get("content-type", "").split(";")[0]
    content = documented.get("content", {})
    assert media_type in content, f"{media_type} not documented for {response.status_code}"
    schema = {"components": doc["components"], **content[media_type]["schema"]}
    errors = [e.message for e in jsonschema_rs.validator_for(schema).iter_errors(response.json())]
    assert errors == [], f"{request.method} {request.url.path} {response.status_code}: {errors}"
    for header in documented.get("headers", {}):
        if header in {"Location", "Retry-After", "WWW-Authenticate"}:
            assert header in response.headers, f"documented header {header} missing"
