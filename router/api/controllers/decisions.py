"""Decisions for tickets, calls and chats: classify, telephony screen-pop, chatbot handoff."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from litestar import Controller, MediaType, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK

from router.api.auth import KEY_REQUIRED
from router.api.responses import BODY, KEYED, errors
from router.serving.decisions import DecisionService
from router.serving.handoff import HandoffService
from router.serving.screenpop import ScreenPopService, render_card
from schemas.api import ClassifyRequest, Decision, HandoffDecision, HandoffRequest, ScreenPop, ScreenPopRequest

__all__ = ["DecisionController"]

Phone = Annotated[
    str | None,
    QueryParameter(
        name="phone",
        description="Caller number in any common notation or as a `tel:` URI (normalised to E.164, looked up by keyed "
        "hash, never logged). A raw `+` that URL decoding turned into a leading space is read as `+`.",
    ),
]


class DecisionController(Controller):
    path = "/v1"
    tags = ("decisions",)
    opt = KEY_REQUIRED
    security = ({"ApiKey": []},)

    @post(
        "/classify",
        operation_id="classify",
        status_code=HTTP_200_OK,
        summary="Route a ticket, call or chat",
        opt={"scopes": frozenset({"helpdesk", "telephony", "chatbot"})},
        responses=errors(KEYED, BODY),
        description="Scopes: helpdesk, telephony, chatbot. Never a 5xx for an infrastructure fault: "
        "a fallback answer is marked `degraded` with its cause.",
    )
    async def classify(self, data: JSONBody[ClassifyRequest], state: State) -> Response[Decision]:
        """SLA tier with deadline, escalation target, next-best-actions and the reasons behind them."""
        # The hot path: the service straight from app state (a NamedDependency costs a provider call
        # and a second signature-model parse per request), and a Response (Litestar's handler for
        # plain return values builds one anyway, with more steps). Same OpenAPI document, same bytes.
        decisions: DecisionService = state.services.decisions
        return Response(await decisions.classify(data), media_type=MediaType.JSON)

    @get(
        "/screenpop",
        operation_id="screenpop_get",
        summary="Caller card for telephony (JSON)",
        responses=errors(KEYED),
        opt={"scopes": frozenset({"telephony"})},
        description="Scope: telephony. An unknown or withheld number gives an `unknown`/`withheld` card, not an error.",
    )
    async def screenpop(self, screenpop: NamedDependency[ScreenPopService], phone: Phone = None) -> ScreenPop:
        return await screenpop.lookup(phone, from_url=True)

    @post(
        "/screenpop",
        operation_id="screenpop",
        status_code=HTTP_200_OK,
        summary="Caller card for telephony (JSON), number in the body",
        responses=errors(KEYED, BODY),
        opt={"scopes": frozenset({"telephony"})},
        description="Scope: telephony. The same card as `GET /v1/screenpop`, with the number in a JSON body "
        '(`{"phone": "+14155550100"}` or a `tel:` URI), so it never appears in a URL or a proxy log.',
    )
    async def screenpop_post(
        self, data: JSONBody[ScreenPopRequest], screenpop: NamedDependency[ScreenPopService]
    ) -> ScreenPop:
        return await screenpop.lookup(data.phone)

    @get(
        "/screenpop/card",
        operation_id="screenpop_card",
        summary="Caller card for telephony (HTML for the CTI pane)",
        responses=errors(KEYED),
        media_type=MediaType.HTML,
        opt={"scopes": frozenset({"telephony"}), "query_key": True},
        description="Scope: telephony. The key may also be passed as `?key=` because a CTI opening a URL "
        "cannot set headers; the service writes no access log, keep it out of proxy logs too.",
    )
    async def screenpop_card(self, screenpop: NamedDependency[ScreenPopService], phone: Phone = None) -> Response[str]:
        card = await screenpop.lookup(phone, from_url=True)
        return Response(
            render_card(card, datetime.now(UTC)),
            media_type=MediaType.HTML,
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            },
        )

    @post(
        "/handoff",
        operation_id="handoff",
        status_code=HTTP_200_OK,
        summary="Chatbot: hand over to a person now?",
        opt={"scopes": frozenset({"chatbot"})},
        responses=errors(KEYED, BODY),
        description="Scope: chatbot. VIP customers who ask for a person are always handed over.",
    )
    async def handoff(
        self, data: JSONBody[HandoffRequest], handoff: NamedDependency[HandoffService]
    ) -> HandoffDecision:
        return await handoff.decide(data)
