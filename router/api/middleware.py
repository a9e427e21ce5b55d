"""Request metrics and ids: a pure ASGI middleware around the Litestar app.

It counts requests and times them per route template and status class, and gives each
request an id (``X-Request-ID``, taken from the caller when sane, else generated) that every
log line written while serving it carries.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from router.ops import metrics
from router.ops.logs import bind_request, unbind_request

__all__ = ["RequestMetricsMiddleware"]

access_log = logging.getLogger("router.access")

_UNMATCHED = "unmatched"
_REQUEST_ID_HEADER = b"x-request-id"
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class RequestMetricsMiddleware:
    """Counts and times HTTP requests by route template and status class; binds a request id.

    Use it as Litestar middleware (``middleware=[RequestMetricsMiddleware]``; there it sees
    matched routes only) or wrap the whole app with it (``RequestMetricsMiddleware(app)``;
    then unmatched paths count under ``route="unmatched"``). The route label is the
    template (``/v1/customers/{id}``), never the raw path, so it stays low-cardinality and
    free of identifiers. ``access_log=True`` writes one JSON line per request; it is off by
    default because the hot path should not pay for it.
    """

    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log
        # labels() takes a lock and hashes the label tuple; the children are reused instead.
        self._counters: dict[tuple[str, str], Any] = {}
        self._histograms: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type: str = scope["type"]
        if scope_type != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _incoming_request_id(scope.get("headers", ())) or secrets.token_hex(8)
        tokens = bind_request(request_id)
        status = 500
        encoded_id = request_id.encode()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_REQUEST_ID_HEADER, encoded_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = str(scope.get("path_template") or _UNMATCHED)
            self._observe(route, status, elapsed)
            if self.access_log:
                access_log.info(
                    "request",
                    extra={
                        "method": scope.get("method", ""),
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )
            unbind_request(tokens)

    def _observe(self, route: str, status: int, elapsed: float) -> None:
        status_class = f"{min(max(status // 100, 1), 5)}xx"
        counter = self._counters.get((route, status_class))
        if counter is None:
            # First request on this route: create every status class at zero, so an error
            # ratio has a denominator and a numerator series before the first error.
            for cls in metrics.STATUS_CLASSES:
                self._counters[(route, cls)] = metrics.REQUESTS.labels(route, cls)
            counter = self._counters.setdefault((route, status_class), metrics.REQUESTS.labels(route, status_class))
        counter.inc()
        histogram = self._histograms.get(route)
        if histogram is None:
            histogram = self._histograms[route] = metrics.REQUEST_SECONDS.labels(route)
        histogram.observe(elapsed)


def _incoming_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == _REQUEST_ID_HEADER:
            text = value.decode("latin-1")
            # A caller's id is kept for correlation only if it cannot smuggle anything in.
            return text if _SAFE_ID.fullmatch(text) else None
    return None
