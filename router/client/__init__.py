"""A typed Python client of the router API, for chatbots (Rasa actions), scripts and integrations.

Requests and answers are the service's own msgspec contracts (``schemas.api``, ``schemas.events``),
so a field the service adds or renames shows up in the type checker, not in production. Install with
the ``client`` extra (``pip install 'router[client]'``: httpx). Both flavours share one error type::

    from router.client import RouterClient
    from schemas.api import ClassifyRequest, CustomerRef

    with RouterClient("https://router.example.com", api_key=KEY) as router:
        decision = router.classify(ClassifyRequest(customer=CustomerRef(customer_id="C000042"), channel="chat"))
        print(decision.tier, decision.escalation.queue, decision.reasons)

In a Rasa custom action (``async def run(...)``), use :class:`AsyncRouterClient` and keep one per
process. Method names are the OpenAPI document's operationIds.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import msgspec

from schemas.api import (
    ClassifyRequest,
    Decision,
    ErrorBody,
    EventBatch,
    EventsAccepted,
    EventsRejected,
    HandoffDecision,
    HandoffRequest,
    IngestEvent,
    ScreenPop,
    ScreenPopRequest,
)

__all__ = ["AsyncRouterClient", "RouterClient", "RouterError"]

T = TypeVar("T")
_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    tp: msgspec.json.Decoder(tp) for tp in (Decision, ScreenPop, HandoffDecision, EventsAccepted)
}
_error_decoder = msgspec.json.Decoder(EventsRejected)
DEFAULT_TIMEOUT_S = 5.0


class RouterError(Exception):
    """An answer other than success: the status, the service's error code and message.

    ``items`` lists the invalid events of a rejected batch (index and problem); ``retry_after``
    is the seconds to wait after a 429 or 503, when the service said.
    """

    def __init__(
        self,
        status_code: int,
        error: str,
        detail: str,
        *,
        items: list[Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status_code} {error}: {detail}")
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.items = items or []
        self.retry_after = retry_after


def _headers(api_key: str) -> dict[str, str]:
    return {"X-API-Key": api_key, "Content-Type": "application/json", "Accept": "application/json"}


def _answer(response: httpx.Response, tp: type[T]) -> T:
    if response.is_success:
        result: T = _decoders[tp].decode(response.content)
        return result
    retry = response.headers.get("retry-after")
    try:
        body: ErrorBody | EventsRejected = _error_decoder.decode(response.content)
    except (msgspec.ValidationError, msgspec.DecodeError):
        raise RouterError(response.status_code, "http_error", response.reason_phrase) from None
    items = list(body.items) if isinstance(body, EventsRejected) else []
    raise RouterError(
        response.status_code,
        body.error,
        body.detail,
        items=items,
        retry_after=float(retry) if retry and retry.isdigit() else None,
    )


def _batch(events: Sequence[IngestEvent]) -> bytes:
    return _encoder.encode(EventBatch(events=list(events)))


class RouterClient:
    """Blocking client (httpx.Client underneath; thread-safe, keep one per process)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout_s, transport=transport)

    def classify(self, request: ClassifyRequest) -> Decision:
        """Route a ticket, call or chat (``POST /v1/classify``)."""
        return _answer(self._http.post("/v1/classify", content=_encoder.encode(request)), Decision)

    def screenpop(self, phone: str | None) -> ScreenPop:
        """The caller card for a number or ``tel:`` URI (sent in the body: never in a URL)."""
        body = _encoder.encode(ScreenPopRequest(phone=phone))
        return _answer(self._http.post("/v1/screenpop", content=body), ScreenPop)

    def handoff(self, request: HandoffRequest) -> HandoffDecision:
        """Should the bot hand over to a person now, and to whom (``POST /v1/handoff``)."""
        return _answer(self._http.post("/v1/handoff", content=_encoder.encode(request)), HandoffDecision)

    def send_events(self, events: Sequence[IngestEvent]) -> EventsAccepted:
        """Produce events (``POST /v1/events``); returns once Kafka acknowledged all of them.

        A :class:`RouterError` with ``items`` names the invalid ones (nothing was produced); after a
        503 the same batch may be sent again.
        """
        return _answer(self._http.post("/v1/events", content=_batch(events)), EventsAccepted)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncRouterClient:
    """The same methods, awaitable (httpx.AsyncClient underneath; for Rasa actions and asyncio services)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout_s, transport=transport
        )

    async def classify(self, request: ClassifyRequest) -> Decision:
        return _answer(await self._http.post("/v1/classify", content=_encoder.encode(request)), Decision)

    async def screenpop(self, phone: str | None) -> ScreenPop:
        body = _encoder.encode(ScreenPopRequest(phone=phone))
        return _answer(await self._http.post("/v1/screenpop", content=body), ScreenPop)

    async def handoff(self, request: HandoffRequest) -> HandoffDecision:
        return _answer(await self._http.post("/v1/handoff", content=_encoder.encode(request)), HandoffDecision)

    async def send_events(self, events: Sequence[IngestEvent]) -> EventsAccepted:
        return _answer(await self._http.post("/v1/events", content=_batch(events)), EventsAccepted)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
