"""``POST /v1/classify`` without Litestar's per-request machinery, for the requests that need none of it.

The hot path of the service. Litestar's own time was 17-21 % of a classify's CPU samples: routing,
the handler's signature model, dependency resolution and its response object (BENCHMARKS.md,
"Peer: Feast"). :class:`FastClassify` sits in front of the app's ASGI handler and answers a classify
itself when everything about it is ordinary: the key, in ``X-API-Key`` (``Authorization`` is left
to Litestar), is known, unexpired, has a scope of the route and a token in its bucket; the body
is declared JSON, has a ``content-length`` within the limit (no ``transfer-encoding``) and decodes
strictly into :class:`~schemas.api.ClassifyRequest`; the host header is valid; there is no
``Origin`` header while CORS is on; no header the checks read appears twice. Any other request, or a request that fails
any of those checks, goes to Litestar unchanged (the body already read is replayed), so every
error answer (401, 403, 413, 415, 429, 400 with its field) is Litestar's own, byte for byte.

A request answered here still runs through the route's own middleware (:class:`RequestMetricsMiddleware`:
request id, metrics under ``route="/v1/classify"``) and Litestar's exception handling with the
route's exception handlers, and it calls the very service the Litestar handler calls
(``DecisionService.classify``: degraded mode, overrides, audit). ``create_app`` installs it only
when the app has no hook or middleware this path does not reproduce (``ROUTER_API_FAST_CLASSIFY``
turns it off), and ``tests/integration/api/test_fast_classify.py`` sends the same requests to both
paths and compares the answers.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

try:  # Litestar's own pieces this path reuses, so that it checks and answers as Litestar does
    from litestar._asgi.utils import is_valid_host, wrap_in_exception_handler
    from litestar.middleware._internal.cors import CORSMiddleware
    from litestar.middleware._internal.exceptions import ExceptionHandlerMiddleware
    from litestar.utils.scope.state import ScopeState

    _INTERNALS = True
except ImportError:  # private modules: a Litestar that moved them keeps classify on its own path
    _INTERNALS = False

from router.api.auth import ApiKey, Authenticator
from router.api.middleware import RequestMetricsMiddleware
from router.errors import RouterError
from schemas.api import ClassifyRequest

__all__ = ["PATH", "FastClassify", "install"]

log = logging.getLogger("router.api")

PATH = "/v1/classify"
_JSON_TYPES = frozenset({"application/json", ""})
_REQUEST_KEY = "router.fast_classify"
"""Where the decoded request waits in the ASGI scope for the inner app (one dict per request anyway)."""


def install(app: Litestar, before_request: Callable[..., Any]) -> str | None:
    """Put :class:`FastClassify` in front of ``app``; the reason it cannot, or ``None`` when it did.

    ``before_request`` is the app's hook (key and media type checks) that the fast path stands
    in for; anything else on the route that it does not reproduce keeps the route on Litestar.
    """
    if not _INTERNALS:
        return "this Litestar lacks the internals it mirrors"
    handler = None
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path == PATH and "POST" in route.route_handler_map:
            handler = route.route_handler_map["POST"][0]
    if handler is None:
        return "no POST /v1/classify route"
    problems = {
        "middleware other than RequestMetricsMiddleware": list(handler.resolve_middleware())
        != [RequestMetricsMiddleware],
        "guards": bool(handler.resolve_guards()),
        "another before_request hook": handler.resolve_before_request() is not before_request,
        "after_request/after_response hooks": any(layer.after_request for layer in handler.ownership_layers)
        or handler.resolve_after_response() is not None,
        "response headers or cookies": bool(handler.resolve_response_headers() or handler.resolve_response_cookies()),
        "before_send hooks": bool(app.before_send),
        "CSRF, compression, allowed hosts or response cache": bool(
            app.csrf_config or app.compression_config or app.allowed_hosts or handler.cache
        ),
        "an ASGI wrapper other than CORS": not isinstance(
            app.asgi_handler, ExceptionHandlerMiddleware | CORSMiddleware
        ),
    }
    reasons = [name for name, present in problems.items() if present]
    if reasons:
        return ", ".join(reasons)
    scopes = handler.opt.get("scopes")
    if not scopes:
        return "the route names no scopes"
    app.asgi_handler = FastClassify(app, handler, frozenset(scopes))
    return None


class FastClassify:
    """ASGI app: ordinary ``POST /v1/classify`` requests answered directly, the rest by ``app``'s handler."""

    def __init__(self, app: Litestar, handler: Any, scopes: frozenset[str]) -> None:
        self.app = app
        self.litestar: ASGIApp = app.asgi_handler
        self.handler = handler
        self.scopes = scopes
        self.auth: Authenticator = app.state.auth
        limit = handler.resolve_request_max_body_size()
        self.max_body: float = limit if limit is not None else float("inf")
        self.exception_handlers = handler.resolve_exception_handlers()
        self.cors = app.cors_config is not None
        self.decoder = msgspec.json.Decoder(ClassifyRequest)
        self.encoder = msgspec.json.Encoder()
        # The route's own stack, as Litestar builds it: its middleware around the exception handling.
        self.respond: ASGIApp = RequestMetricsMiddleware(wrap_in_exception_handler(self._classify))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type: str = scope["type"]
        if scope_type != "http" or scope["path"] != PATH or scope.get("method") != "POST" or scope.get("root_path"):
            await self.litestar(scope, receive, send)
            return
        admitted = self._admit(scope)
        if admitted is None:
            await self.litestar(scope, receive, send)
            return
        key, length = admitted
        received: list[ReceiveMessage] = []
        request = await self._read(receive, length, received)
        if request is not None:
            try:
                self.auth.take(key.name)
            except RouterError:
                request = None
        if request is None:  # Litestar answers, reading the same messages (its 400/413/429)
            await self.litestar(scope, _replay(received, receive), send)
            return
        scope["route_handler"] = self.handler
        scope["path_template"] = PATH
        scope["path_params"] = {}
        scope["state"]["caller"] = key  # as router.api.auth.require_key leaves it
        ScopeState.from_scope(scope).exception_handlers = self.exception_handlers
        scope[_REQUEST_KEY] = request  # type: ignore[literal-required]
        await self.respond(scope, receive, send)

    def _admit(self, scope: Scope) -> tuple[ApiKey, int] | None:
        """(key, content length) when the headers are ordinary and the key may classify; no side effect."""
        presented = content_type = length = host = None
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                if presented is not None:
                    return None
                presented = value
            elif name == b"authorization":
                return None  # Bearer and Basic: Litestar's (rare on this route)
            elif name == b"content-type":
                if content_type is not None:
                    return None
                content_type = value
            elif name == b"content-length":
                if length is not None:
                    return None
                length = value
            elif name == b"host":
                if host is not None or not is_valid_host(value):
                    return None
                host = value
            elif name == b"transfer-encoding" or (name == b"origin" and self.cors):
                return None
        if presented is None or length is None or not length.isdigit():
            return None
        size = int(length)
        if size == 0 or size > self.max_body:
            return None
        media = (content_type or b"").decode("latin-1").split(";", 1)[0].strip().lower()
        if media not in _JSON_TYPES and not media.endswith("+json"):
            return None
        try:
            key = self.auth.check(presented.decode("latin-1"), self.scopes)
        except RouterError:
            return None
        return key, size

    async def _read(self, receive: Receive, length: int, received: list[ReceiveMessage]) -> ClassifyRequest | None:
        """The body, decoded strictly; ``None`` (Litestar's turn) for anything else. Every message is kept."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > length:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        try:
            request: ClassifyRequest = self.decoder.decode(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        except Exception:  # msgspec's errors, UnicodeDecodeError, RecursionError: Litestar words them
            return None
        return request

    async def _classify(self, scope: Scope, receive: Receive, send: Send) -> None:
        request: ClassifyRequest = scope.pop(_REQUEST_KEY)  # type: ignore[misc]
        decisions = self.app.state.services.decisions
        body = self.encoder.encode(await decisions.classify(request))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _replay(received: list[ReceiveMessage], receive: Receive) -> Receive:
    """``receive`` that first hands out the messages already read."""
    pending = deque(received)

    async def replay() -> ReceiveMessage:
        if pending:
            return pending.popleft()
        return await receive()

    return replay
