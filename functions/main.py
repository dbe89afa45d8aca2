"""Cloud Functions entry points. Thin: each wires its real dependencies once per instance."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import functions_framework
from flask import Request, Response

if TYPE_CHECKING:
    from genjobs.api.app import ApiApp


@functools.cache
def _api() -> ApiApp:
    from genjobs.api.app import ApiApp
    from genjobs.auth import UserTokenVerifier
    from genjobs.db import create_database
    from genjobs.logs import configure_logging
    from genjobs.publisher import PubSubJobPublisher
    from genjobs.settings import load_settings
    from genjobs.tasks import TASKS

    settings = load_settings("api")
    configure_logging(settings.log_level, settings.google_cloud_project)
    secret = settings.supabase_jwt_secret
    verifier = UserTokenVerifier(
        supabase_url=settings.supabase_url,
        jwt_secret=secret.reveal() if secret else None,
        allow_anonymous=settings.allow_anonymous_users,
    )
    return ApiApp(settings, create_database(settings), PubSubJobPublisher(settings), verifier, TASKS)


@functions_framework.http
def api(request: Request) -> Response:
    """The public HTTP api (frontend)."""
    return _api()(request)
