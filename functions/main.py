"""Cloud Functions entry points. Thin: each wires its real dependencies once per instance."""

from __future__ import annotations

import gc
import json
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import functions_framework
from flask import Request, Response

if TYPE_CHECKING:
    from genjobs.api.app import ApiApp
    from genjobs.dead_letter import DeadLetterHandler
    from genjobs.push import PushAnswer
    from genjobs.settings import Role, Settings
    from genjobs.sweeper import Sweeper
    from genjobs.worker import Worker

T = TypeVar("T")


class built_once(Generic[T]):
    """`build` run once per process even when first requests race (single-flight cold start).

    Each build opens a connection pool sized to Terraform's per-instance share of the
    database's connection budget; two would overshoot it. functions-framework builds at
    import (below); a host that imports without FUNCTION_TARGET builds on first requests.
    A failed build is not kept: the next request tries again, still one at a time.
    """

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._built: list[T] = []

    @property
    def built(self) -> bool:
        """Whether this process has built it."""
        return bool(self._built)

    def __call__(self) -> T:
        if self._built:  # warm path: no lock
            return self._built[0]
        with self._lock:
            if not self._built:
                self._built.append(self._build())
            return self._built[0]


def _settings(role: Role) -> Settings:
    from genjobs.logs import configure_logging
    from genjobs.settings import load_settings

    settings = load_settings(role)
    configure_logging(settings.log_level, settings.google_cloud_project)
    if settings.sentry_dsn:
        from genjobs.sentry import configure_sentry

        configure_sentry(
            settings.sentry_dsn,
            environment=settings.environment,
            role=role,
            release=os.environ.get("K_REVISION"),
        )
    return settings


def _push_verifier(settings: Settings) -> Any:
    from genjobs.auth import ServiceTokenVerifier

    return ServiceTokenVerifier(
        audience=settings.push_audience or "",
        allowed_emails=settings.push_service_accounts,
        certs_url=settings.push_certs_url,
        platform_checked=settings.platform_invoker_check,
    )


@built_once
def _api() -> ApiApp:
    from genjobs.api.app import ApiApp
    from genjobs.auth import UserTokenVerifier
    from genjobs.db import create_database
    from genjobs.publisher import PubSubJobPublisher
    from genjobs.tasks import TASKS

    settings = _settings("api")
    secret = settings.supabase_jwt_secret
    verifier = UserTokenVerifier(
        supabase_url=settings.supabase_url,
        jwt_secret=secret.reveal() if secret else None,
        allow_anonymous=settings.allow_anonymous_users,
    )
    return ApiApp(
        settings, create_database(settings), PubSubJobPublisher(settings), verifier, TASKS
    )


@built_once
def _worker() -> Worker:
    from genjobs.db import create_database
    from genjobs.model_client import ModelClient
    from genjobs.tasks import TASKS
    from genjobs.worker import Worker

    settings = _settings("worker")
    return Worker(
        settings=settings,
        db=create_database(settings),
        model=ModelClient.from_settings(settings),
        tasks=TASKS,
        verifier=_push_verifier(settings),
    )


@built_once
def _dead_letter() -> DeadLetterHandler:
    from genjobs.db import create_database
    from genjobs.dead_letter import DeadLetterHandler

    settings = _settings("dead_letter")
    return DeadLetterHandler(db=create_database(settings), verifier=_push_verifier(settings))


@built_once
def _sweeper() -> Sweeper:
    from genjobs.db import create_database
    from genjobs.publisher import PubSubJobPublisher
    from genjobs.sweeper import Sweeper

    settings = _settings("sweeper")
    return Sweeper(
        settings=settings,
        db=create_database(settings),
        publisher=PubSubJobPublisher(settings),
        verifier=_push_verifier(settings),
    )


def _push_response(answer: PushAnswer) -> Response:
    return Response(
        json.dumps(answer.body),
        status=answer.status,
        headers=answer.headers,
        mimetype="application/json",
    )


@functions_framework.http
def api(request: Request) -> Response:
    """The public HTTP api (frontend)."""
    return _api()(request)


@functions_framework.http
def worker(request: Request) -> Response:
    """Pub/Sub push endpoint of the jobs subscription."""
    answer = _worker().handle(request.headers.get("Authorization"), request.get_data())
    return _push_response(answer)


@functions_framework.http
def dead_letter(request: Request) -> Response:
    """Pub/Sub push endpoint of the dead-letter subscription."""
    answer = _dead_letter().handle(request.headers.get("Authorization"), request.get_data())
    return _push_response(answer)


@functions_framework.http
def sweeper(request: Request) -> Response:
    """Cloud Scheduler's target: republish, recover leases, expire old jobs."""
    return _push_response(_sweeper().handle(request.headers.get("Authorization")))


def _not_found(_error: Exception) -> Response:
    """Paths the framework's own router refuses (a newline in them) answer like ours."""
    from genjobs.api.responses import problem_response
    from genjobs.errors import NotFound

    return problem_response(NotFound("no such route"))


# functions-framework answers these itself, in HTML, before any entry point runs.
functions_framework.errorhandler(404)(_not_found)

_FACTORIES: dict[str, Callable[[], object]] = {
    "api": _api,
    "worker": _worker,
    "dead_letter": _dead_letter,
    "sweeper": _sweeper,
}

# Cold start builds the instance's function at import, so bad settings fail the deploy
# (with every problem listed) instead of the first request.
if os.environ.get("FUNCTION_TARGET") in _FACTORIES:
    _FACTORIES[os.environ["FUNCTION_TARGET"]]()
    # What the imports and the build made lives as long as the process: frozen, no later
    # collection walks it again, those during the first request's lazy imports (the Pub/Sub
    # client, the openai SDK) included: the api's collections from process start to its first
    # 202 took 0.14 s here, 0.07 s frozen. Before the fork, as Python's gc docs advise.
    gc.freeze()
