"""Bodies that handlers read as raw bytes: their size limit and their OpenAPI description.

``POST /v1/events`` validates every item itself (so a 400 can name each invalid one), and the
Stripe and Intercom webhooks must verify the exact signed bytes; none lets Litestar decode the
body. Their limit is ``ROUTER_API_EVENTS_MAX_BODY_BYTES`` rather than the app-wide one (a batch
or a Stripe invoice is larger than a classify request), and the document gets their request body
from the contracts' msgspec schemas, so clients and schemathesis see what is accepted.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import msgspec
from litestar import Request
from litestar.datastructures import State
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi.spec import OpenAPI, OpenAPIMediaType, Reference, RequestBody

from schemas.api import EventBatch

__all__ = ["document_raw_bodies", "read_body"]


async def read_body(request: Request[object, object, State], limit: int) -> bytes:
    """The whole body, or 413 as soon as it exceeds ``limit`` bytes (announced or streamed)."""
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        raise RequestEntityTooLarge(detail=f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestEntityTooLarge(detail=f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# What is accepted, no narrower (test tools narrow what they generate, not the document): any
# RFC 3339 time with an offset up to ROUTER_STREAM_MAX_FUTURE_S ahead; the consumer dead-letters an
# event older than the customer's newest by the lateness bound, which is no 4xx of this endpoint.
_WHEN = (
    "RFC 3339 date-time with an offset (stored as UTC). More than ROUTER_STREAM_MAX_FUTURE_S (1 h by "
    "default) ahead of the service's clock gets 400."
)


def _event_components() -> dict[str, dict[str, Any]]:
    """Component schemas of :class:`EventBatch`, with the rules the Structs check in ``__post_init__``."""
    _, defs = msgspec.json.schema_components([EventBatch], ref_template="#/components/schemas/{name}")
    defs = copy.deepcopy(defs)
    for name, schema in defs.items():
        props = schema.get("properties", {})
        if "occurred_at" in props:
            described = props["occurred_at"].get("description")
            props["occurred_at"] = {
                "type": "string",
                "format": "date-time",
                "description": f"{described} {_WHEN}" if described else _WHEN,
            }
        if name == "Payment":
            # days_late only with status "late"
            schema["if"] = {"properties": {"status": {"enum": ["due", "paid"]}}}
            schema["then"] = {"properties": {"days_late": {"const": 0}}}
        if name == "SubscriptionChanged":
            schema["allOf"] = [
                {"if": {"properties": {"change": {"enum": ["new", "upgrade", "add_on"]}}},
                 "then": {"properties": {"mrr_delta": {"minimum": 0}}}},
                {"if": {"properties": {"change": {"enum": ["downgrade", "cancel"]}}},
                 "then": {"properties": {"mrr_delta": {"maximum": 0}}}},
            ]  # fmt: skip
    return defs


_STRIPE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "A Stripe Event object (docs.stripe.com/api/events/object), exactly as Stripe sent and signed it.",
    "required": ["id", "type", "data"],
    "properties": {
        # what the service accepts (router.serving.stripe), not only the evt_... form Stripe sends today
        "id": {"type": "string", "pattern": "^[A-Za-z0-9_.:\\-]{1,128}$", "description": "Stripe's event id (evt_...)"},
        "object": {"type": "string", "enum": ["event"]},
        "type": {
            "type": "string",
            "description": "Mapped: customer.subscription.*, invoice.paid|payment_succeeded|payment_failed",
        },
        "created": {"type": "integer", "description": "Unix seconds"},
        "data": {"type": "object", "properties": {"object": {"type": "object"}}},
    },
}
_INTERCOM_NOTIFICATION: dict[str, Any] = {
    "type": "object",
    "description": "An Intercom notification (developers.intercom.com, webhook models), exactly as Intercom sent "
    "and signed it. `created_at` must lie within a day of now.",
    "required": ["type", "id", "topic", "created_at", "data"],
    "properties": {
        "type": {"type": "string", "enum": ["notification_event"]},
        "id": {"type": "string", "description": "Intercom's notification id (notif_...); the replay key"},
        "topic": {"type": "string", "description": "Routed: conversation.user.created, ticket.created"},
        "created_at": {"type": "integer", "description": "Unix seconds"},
        "data": {"type": "object", "properties": {"item": {"type": "object"}}},
    },
}

_RAW_BODIES: dict[str, tuple[str, str]] = {
    "/v1/events": (
        "EventBatch",
        "A batch of the contract's events (`schemas/events.py`), at most the configured count",
    ),
    "/v1/webhooks/stripe": ("StripeEvent", "The exact bytes Stripe signed"),
    "/v1/webhooks/intercom": ("IntercomNotification", "The exact bytes Intercom signed"),
}


def document_raw_bodies(openapi: OpenAPI) -> None:
    """Give the raw-body operations their request body (in place, before the document is served)."""
    components = cast(dict[str, Any], openapi.components.schemas)
    components.update(_event_components())
    components["StripeEvent"] = _STRIPE_EVENT
    components["IntercomNotification"] = _INTERCOM_NOTIFICATION
    for path, (name, description) in _RAW_BODIES.items():
        item = (openapi.paths or {}).get(path)
        if item is None or item.post is None:
            continue
        item.post.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=Reference(ref=f"#/components/schemas/{name}"))},
            required=True,
            description=description,
        )
