"""Signed webhooks. Authenticated by their signature, not by API key."""

from __future__ import annotations

from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_200_OK

from router.api.bodies import read_body
from router.api.responses import SIGNED, errors
from router.ops import metrics
from router.serving.inbound import InboundWebhooks
from router.serving.stripe import StripeService
from router.serving.webhooks import (
    ROUTER_SIGNATURE,
    ROUTER_TIMESTAMP,
    ZENDESK_SIGNATURE,
    ZENDESK_TIMESTAMP,
    WebhookService,
)
from router.settings import Settings
from schemas.api import Decision, HelpdeskRouting, IntercomReceipt, StripeReceipt

__all__ = ["WebhookController"]

DEPRECATION = {"Deprecation": "true", "Link": '<https://www.standardwebhooks.com/>; rel="successor-version"'}
"""Sent with answers to the deprecated ``X-Router-Signature``: ``Deprecation: true`` as the IETF draft wrote it, and the successor."""


class WebhookController(Controller):
    path = "/v1/webhooks"
    tags = ("webhooks",)

    @post(
        "/zendesk",
        operation_id="zendesk_webhook",
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
        operation_id="generic_webhook",
        status_code=HTTP_200_OK,
        summary="Generic signed webhook (Standard Webhooks)",
        responses=errors(SIGNED),
        description="Signed as standardwebhooks.com specifies: `webhook-id`, `webhook-timestamp` (Unix seconds) and "
        '`webhook-signature: v1,<base64 HMAC-SHA256 of id + "." + timestamp + "." + raw body>` (several '
        "space-separated signatures allowed; the key is the base64 part of the `whsec_` secret). A `webhook-id` "
        "seen before within the window gets 409. Body: a classify request. Answers a decision. "
        'Deprecated, for one more release: `X-Router-Signature: sha256=<hex HMAC-SHA256 of timestamp + "." + body>` '
        "with `X-Router-Timestamp`; its answers carry `Deprecation: true`.",
    )
    async def generic(
        self,
        request: Request[object, object, State],
        webhooks: NamedDependency[WebhookService],
        inbound: NamedDependency[InboundWebhooks],
    ) -> Response[Decision]:
        body = await request.body()
        h = request.headers
        if h.get(ROUTER_SIGNATURE) is not None and h.get("webhook-signature") is None:
            metrics.WEBHOOK_LEGACY_SIGNATURES.inc()
            decision = await webhooks.generic(h.get(ROUTER_SIGNATURE), h.get(ROUTER_TIMESTAMP), body)
            return Response(decision, headers=DEPRECATION)
        decision = await inbound.standard(
            h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature"), body
        )
        return Response(decision)

    @post(
        "/intercom",
        operation_id="intercom_webhook",
        status_code=HTTP_200_OK,
        summary="Intercom notification (conversation or ticket)",
        responses=errors(SIGNED),
        description="Verified as Intercom signs it: `X-Hub-Signature: sha1=<hex HMAC-SHA1 of the raw body>` keyed by "
        "the app's client secret. Notifications older than a day (by `created_at`) are stale (401), a repeated "
        "notification `id` gets 409. `conversation.user.created` and `ticket.created` are routed (the customer is "
        "the contact's `external_id`, else an e-mail; else the default routing); other topics are acknowledged.",
        request_max_body_size=None,  # read_body applies ROUTER_API_EVENTS_MAX_BODY_BYTES
    )
    async def intercom(
        self, request: Request[object, object, State], inbound: NamedDependency[InboundWebhooks]
    ) -> IntercomReceipt:
        settings: Settings = request.app.state.settings
        body = await read_body(request, settings.api.events_max_body_bytes)  # conversations carry their parts
        return await inbound.intercom(request.headers.get("x-hub-signature"), body)

    @post(
        "/stripe",
        operation_id="stripe_webhook",
        status_code=HTTP_200_OK,
        summary="Stripe billing events",
        responses=errors(SIGNED, 422, 503),
        description='Verified as Stripe documents it: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of t + "." + '
        "raw body>` (any of several `v1` may match) within the max age. `customer.subscription.created|updated|"
        "deleted` become `subscription_changed` (MRR delta from price x quantity per month), `invoice.paid`, "
        "`invoice.payment_succeeded` and `invoice.payment_failed` become `payment` events, produced to the "
        "events topic (answered once Kafka acknowledged; 503 if it did not). Event ids derive from Stripe's ids, "
        "so a retried delivery changes nothing and is answered 200 again. Other types are acknowledged.",
        request_max_body_size=None,
    )
    async def stripe(
        self, request: Request[object, object, State], stripe: NamedDependency[StripeService]
    ) -> StripeReceipt:
        settings: Settings = request.app.state.settings
        body = await read_body(request, settings.api.events_max_body_bytes)
        return await stripe.receive(request.headers.get("stripe-signature"), body)
