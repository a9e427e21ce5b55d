"""The application factory: routes, dependencies, error handling and lifespans, in that order."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, MediaType, Request, Response, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ControllerRouterHandler

from router.api.auth import SCOPES, ApiKey, Authenticator, ConfigError, require_key
from router.api.bodies import document_raw_bodies
from router.api.controllers import health
from router.api.controllers.admin import AdminController
from router.api.controllers.connectors import ConnectorController, FreshdeskWebhookController
from router.api.controllers.customers import CustomerController
from router.api.controllers.decisions import DecisionController
from router.api.controllers.events import EventController
from router.api.controllers.webhooks import WebhookController
from router.api.fast import install as install_fast_classify
from router.api.lifespans import Services, services
from router.api.middleware import RequestMetricsMiddleware
from router.api.openapi import refine
from router.console.controllers import console_router
from router.errors import RouterError, UnsupportedMediaType, without_values
from router.ops.logs import litestar_logging_config, logging_config, setup_logging
from router.ops.metrics import prepare_multiprocess
from router.serving.intake import BatchRejected
from router.serving.signatures import parse_standard_secret
from router.serving.stripe import parse_rates
from router.settings import Secret, Settings, require_safe
from schemas.api import ErrorBody, EventsRejected

__all__ = ["UVICORN_HTTP", "UVICORN_LOOP", "create_app", "serve"]

log = logging.getLogger("router.api")

UVICORN_LOOP = "uvloop"
UVICORN_HTTP = "httptools"
"""Event loop and HTTP parser of every API worker (``serve`` and the benchmark's server)."""


def create_app(settings: Settings) -> Litestar:
    """Build the API. Nothing connects until the app starts (lifespans).

    Refuses (``SystemExit``) when no API key is configured outside dev mode, when dev mode
    would listen beyond loopback, and when a secret is a placeholder: a service that routes on
    customer value must not start open to anyone who can reach it. Once the keys are parsed only
    their digests stay in memory: the settings the app keeps no longer hold ``ROUTER_AUTH_KEYS``.
    """
    require_safe(settings, binds_api=True)
    try:
        auth = Authenticator(settings.auth)
        _check_webhooks(settings)
    except (ConfigError, ValueError) as exc:
        raise SystemExit(f"invalid configuration: {exc}") from None
    settings = msgspec.structs.replace(settings, auth=msgspec.structs.replace(settings.auth, keys=_PARSED_KEYS))

    # --- routes ---------------------------------------------------------------------------
    handlers: list[ControllerRouterHandler] = [
        DecisionController,
        EventController,
        WebhookController,
        FreshdeskWebhookController,
        ConnectorController,
        CustomerController,
        AdminController,
        health.live,
        health.ready,
        health.detail,
        health.metrics_endpoint,
        console_router(),  # /console: its own sign-in, sessions and CSRF (router.console.sessions)
    ]
    if settings.api.bench_endpoints:
        from router.api.controllers.bench import bench_route_handlers

        handlers += bench_route_handlers()

    # --- dependencies ---------------------------------------------------------------------
    # Services are built once per process by the lifespan (router.api.lifespans.Services);
    # providers only hand them out, by the name a handler's parameter asks for.
    def provide_caller(request: Request[object, object, State]) -> ApiKey:
        caller: ApiKey = request.state.caller  # set by router.api.auth.require_key
        return caller

    names = (
        "decisions",
        "screenpop",
        "handoff",
        "webhooks",
        "inbound",
        "stripe",
        "intake",
        "customers",
        "portfolio",
        "reloads",
        "connectors",
    )
    dependencies = {name: Provide(_service(name), sync_to_thread=False) for name in names}
    dependencies["caller"] = Provide(provide_caller, sync_to_thread=False)

    # --- errors ---------------------------------------------------------------------------
    exception_handlers = {
        RouterError: _router_error,
        BatchRejected: _batch_rejected,
        ValidationException: _validation_error,
        HTTPException: _http_error,
        # msgspec lets these through undecorated; they are the caller's fault, not ours
        UnicodeDecodeError: _undecodable,
        RecursionError: _undecodable,
    }

    # --- lifespans ------------------------------------------------------------------------
    app = Litestar(
        route_handlers=handlers,
        dependencies=dependencies,
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        middleware=[RequestMetricsMiddleware],
        before_request=_before_request,
        logging_config=dataclasses.replace(
            litestar_logging_config(settings.api.log_level), disable_stack_trace=_CALLERS_FAULTS
        ),
        lifespan=[services(settings)],
        state=State({"settings": settings, "auth": auth, "services": None}),
        request_max_body_size=settings.api.max_body_bytes,
        cors_config=_cors(settings),
        openapi_config=OpenAPIConfig(
            title="router: value-aware support routing",
            version="1",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
            # Open by default (the contract, no data); with ROUTER_API_SCHEMA_REQUIRES_KEY any scope reads it.
            openapi_router=Router(
                path="/schema",
                route_handlers=[],
                include_in_schema=False,
                opt={"scopes": SCOPES} if settings.api.schema_requires_key else {},
            ),
            description=_API_DESCRIPTION,
            components=Components(
                security_schemes={
                    "ApiKey": SecurityScheme(
                        type="apiKey",
                        name="X-API-Key",
                        security_scheme_in="header",
                        description="API key with scopes (helpdesk, telephony, chatbot, events, ops, admin).",
                    ),
                    "Bearer": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="The same API key as `Authorization: Bearer <key>` (when both are sent, "
                        "`X-API-Key` counts).",
                    ),
                    "Basic": SecurityScheme(
                        type="http",
                        scheme="basic",
                        description="The same API key as the password of HTTP Basic, any user name (for callers "
                        "that can only put credentials into a URL).",
                    ),
                }
            ),
        ),
        debug=False,
    )

    # --- OpenAPI: the contracts' own rules, which the generated document cannot see -------
    refine(app.openapi_schema)
    document_raw_bodies(app.openapi_schema)

    # --- hot path: ordinary classify requests skip Litestar's per-request machinery -------
    if settings.api.fast_classify:
        reason = install_fast_classify(app, _before_request)
        if reason is not None:
            log.warning("POST /v1/classify stays on Litestar's path: %s", reason)
    return app


def _check_webhooks(settings: Settings) -> None:
    """Secrets and rates that cannot be used stop the start (``ValueError``), not the first webhook."""
    hooks = settings.webhooks
    if hooks.standard_secret:
        parse_standard_secret(hooks.standard_secret)
    parse_rates(hooks.stripe_currency, hooks.stripe_rates)


def _cors(settings: Settings) -> CORSConfig | None:
    """Cross-origin access for browser-based CTI and agent tools: off unless origins are configured."""
    origins = [o.strip() for o in settings.api.cors_origins.split(",") if o.strip()]
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "POST", "PUT", "DELETE"],
        allow_headers=["X-API-Key", "Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=["Retry-After", "X-Request-ID"],
        allow_credentials=False,
        max_age=600,
    )


_PARSED_KEYS = Secret("<parsed: only SHA-256 digests are kept>")
"""What the app's settings hold instead of ``ROUTER_AUTH_KEYS`` (not parseable as keys, on purpose)."""


_API_DESCRIPTION = """Answers, for a ticket, call or chat: SLA tier and deadline, escalation target,
next-best-actions and why. Every endpoint but health, metrics and the signed webhooks needs an
API key (`X-API-Key`, `Authorization: Bearer <key>`, or HTTP Basic with the key as password) with
one of the scopes its description names; a missing or unknown key gets 401, a key without the
scope 403, a key over its rate limit 429 (`Retry-After`). Bodies above the configured size get
413, malformed ones 400 naming the field (never the value), unknown fields included.
"""


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response[ErrorBody]:
    """Every error answer: the one body the OpenAPI document declares (router.api.responses)."""
    return Response(ErrorBody(status, code, detail), status_code=status, media_type=MediaType.JSON, headers=headers)


def _router_error(request: Request[object, object, State], exc: RouterError) -> Response[ErrorBody]:
    return _error(exc.status_code, exc.code, exc.message, exc.headers or None)


def _batch_rejected(request: Request[object, object, State], exc: BatchRejected) -> Response[EventsRejected]:
    """The error body plus every invalid item of the batch (``POST /v1/events``)."""
    return Response(exc.body(), status_code=exc.status_code, media_type=MediaType.JSON)


_CALLERS_FAULTS: set[int | type[Exception]] = {400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 503}
_CALLERS_FAULTS |= {UnicodeDecodeError, RecursionError}
"""Answered as 4xx (or 503 for a dependency of an admin action): the caller's business, so no
ERROR line and no traceback in the log. Real 500s still log theirs."""


def _service(name: str) -> Callable[[State], Any]:
    def provide(state: State) -> Any:
        services: Services = state.services
        return getattr(services, name)

    return provide


_JSON_TYPES = frozenset({"application/json", ""})


async def _before_request(request: Request[object, object, State]) -> None:
    """Every request, before its body is read: the API key (401/403/429), then the media type (415).

    Async on purpose: Litestar runs a sync ``before_request`` hook in a worker thread.
    """
    require_key(request)
    _require_json(request)


def _require_json(request: Request[object, object, State]) -> None:
    """415 for a body that is not declared as JSON: it must not be parsed as JSON anyway."""
    headers = request.headers
    if request.method in ("GET", "HEAD", "DELETE", "OPTIONS") or headers.get("content-length") == "0":
        return
    if "content-length" not in headers and "transfer-encoding" not in headers:
        return
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in _JSON_TYPES and not media.endswith("+json"):
        # A RouterError, not HTTPException(status_code=415): Litestar decides whether to log an
        # exception by its class's status code, and HTTPException's is 500 (an ERROR per request).
        raise UnsupportedMediaType("send the body as JSON with content-type: application/json")


def _undecodable(request: Request[object, object, State], exc: Exception) -> Response[ErrorBody]:
    detail = "body is not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else "body is nested too deeply"
    return _error(400, "bad_request", detail)


def _validation_error(request: Request[object, object, State], exc: ValidationException) -> Response[ErrorBody]:
    # Say which field is wrong and why; never echo the submitted value (it may be personal data).
    problems = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            key = item.get("key")
            key = "body" if key == "data" else key
            message = without_values(str(item.get("message", "invalid")))
            problems.append(f"{key}: {message}" if key else message)
    return _error(400, "bad_request", "; ".join(problems) or exc.detail)


def _http_error(request: Request[object, object, State], exc: HTTPException) -> Response[ErrorBody]:
    if exc.status_code >= 500:
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        detail = "internal error"
    else:
        detail = exc.detail
    return _error(exc.status_code, _CODES.get(exc.status_code, "error"), detail)


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def serve(settings: Settings) -> None:
    """Run the API under uvicorn (``router serve``)."""
    setup_logging(settings.api.log_level)
    prepare_multiprocess(settings.api.workers)  # before the workers start: they inherit the directory
    uvicorn.run(
        "router.api.app:app_from_env",
        factory=True,
        # Named, not "auto": auto silently falls back to pure-Python asyncio + h11 when a wheel is
        # missing, which costs a third more CPU per request; a missing one must fail the start.
        loop=UVICORN_LOOP,
        http=UVICORN_HTTP,
        host=settings.api.host,
        port=settings.api.port,
        workers=settings.api.workers,
        access_log=False,
        log_level=settings.api.log_level,
        log_config=logging_config(settings.api.log_level),
        lifespan="on",
    )


def app_from_env() -> Litestar:
    """uvicorn factory: each worker reads the environment once."""
    return create_app(Settings.from_env())
