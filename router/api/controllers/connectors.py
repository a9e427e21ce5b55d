"""Connected helpdesks: Freshdesk's webhook (token, not API key) and the connectors' health view."""

from __future__ import annotations

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_200_OK

from router.api.auth import KEY_REQUIRED
from router.api.responses import KEYED, SIGNED, errors
from router.connectors.freshdesk import TOKEN_HEADER
from router.connectors.service import ConnectorService
from schemas.api import ConnectorStatus, HelpdeskRouting

__all__ = ["ConnectorController", "FreshdeskWebhookController"]


class FreshdeskWebhookController(Controller):
    path = "/v1/webhooks"
    tags = ("webhooks",)

    @post(
        "/freshdesk",
        operation_id="freshdesk_webhook",
        status_code=HTTP_200_OK,
        summary="Freshdesk automation webhook",
        responses=errors(SIGNED, 503),
        description="Freshdesk does not sign webhooks: send the shared token as `X-Router-Token` or as the "
        "Basic password (`ROUTER_CONNECTORS_FRESHDESK_INBOUND_TOKEN`; none configured: 403). Body: "
        '`{"ticket": {"id", "requester": {"external_id"|"email"|"phone"}, "priority", "source", "category"}}`; '
        "blank values are absent, display text (Medium, Portal) is understood. Answers the routing; when "
        "Freshdesk is connected the decision is written back to the ticket by `router connect` (503: it "
        "could not be queued, send again).",
    )
    async def freshdesk(
        self, request: Request[object, object, State], connectors: NamedDependency[ConnectorService]
    ) -> HelpdeskRouting:
        body = await request.body()
        h = request.headers
        return await connectors.freshdesk(h.get(TOKEN_HEADER), h.get("authorization"), body)


class ConnectorController(Controller):
    path = "/v1/connectors"
    tags = ("connectors",)
    opt = KEY_REQUIRED
    security = ({"ApiKey": []},)

    @get(
        "",
        operation_id="connector_status",
        summary="Connected helpdesks and their write-backs",
        responses=errors(KEYED, 503),
        opt={"scopes": frozenset({"ops", "admin"})},
        description="Scopes: ops, admin. Per connected helpdesk: write-backs queued, in flight, waiting for a "
        "retry and dead-lettered, the last landing and the last failure (request and status, never "
        "credentials), and for RT the last poll and the highest ticket routed.",
    )
    async def status(self, connectors: NamedDependency[ConnectorService]) -> list[ConnectorStatus]:
        return await connectors.status()
