"""Signed helpdesk webhooks. Authenticated by their HMAC signature, not by API key."""

from __future__ import annotations

from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_200_OK

from router.api.responses import SIGNED, errors
from router.serving.webhooks import (
    ROUTER_SIGNATURE,
    ROUTER_TIMESTAMP,
    ZENDESK_SIGNATURE,
    ZENDESK_TIMESTAMP,
    WebhookService,
)
from schemas.api import Decision, HelpdeskRouting

__all__ = ["WebhookController"]


class WebhookController(Controller):
    path = "/v1/webhooks"
    tags = ("webhooks",)

    @post(
        "/zendesk",
        status_code=HTTP_200_OK,
        summary="Zendesk ticket webhook",
        responses=errors(SIGNED),
        description="Verified as Zendesk signs it: `X-Zendesk-Webhook-Signature` = base64 HMAC-SHA256 over "
        "`X-Zendesk-Webhook-Signature-Timestamp` + raw body. Stale (> max age) or replayed requests are "
        'rejected (401/409). Body: `{"ticket": {"id", "requester": {"external_id"|"email"|"phone"}, '
        '"priority", "channel", "category"}}`. Answers group, priority and tags for a trigger.',
    )
    async def zendesk(
        self, request: Request[object, object, State], webhooks: NamedDependency[WebhookService]
    ) -> HelpdeskRouting:
        body = await request.body()
        h = request.headers
        return await webhooks.zendesk(h.get(ZENDESK_SIGNATURE), h.get(ZENDESK_TIMESTAMP), body)

    @post(
        "/generic",
        status_code=HTTP_200_OK,
        summary="Generic signed webhook (other helpdesks)",
        responses=errors(SIGNED),
        description='`X-Router-Signature: sha256=<hex HMAC-SHA256 of timestamp + "." + raw body>` and '
        "`X-Router-Timestamp` (epoch seconds or RFC 3339). Body: a classify request. Answers a decision.",
    )
    async def generic(
        self, request: Request[object, object, State], webhooks: NamedDependency[WebhookService]
    ) -> Decision:
        body = await request.body()
        h = request.headers
        return await webhooks.generic(h.get(ROUTER_SIGNATURE), h.get(ROUTER_TIMESTAMP), body)
